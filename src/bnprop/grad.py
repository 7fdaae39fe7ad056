"""``bnprop grad``: every forward quantity and gradient of one layer, for the user's arrays.

Input ``.npz`` keys (rows are examples):

    O      (m, n_in)      input o^(l-1)
    W      (n_out, n_in)  weights
    gamma  (n_out,)       scale
    beta   (n_out,)       shift
    dY     (m, n_out)     dF/dY, the gradient of the objective w.r.t. o^l

Output keys, in the input's dtype: ``Z, mu, var, inv_std, Obar, A, Y`` (forward, see
:func:`bnprop.layer_forward`) and ``dA, dgamma, dbeta, dW, dO`` (backward, see
:func:`bnprop.layer_backward`).
"""

from __future__ import annotations

import os

import numpy as np

from bnprop._validate import InputError
from bnprop.files import load_npz, save_npz
from bnprop.layer import layer_backward, layer_forward

INPUT_KEYS = ("O", "W", "gamma", "beta", "dY")
FORWARD_KEYS = ("Z", "mu", "var", "inv_std", "Obar", "A", "Y")
BACKWARD_KEYS = ("dA", "dgamma", "dbeta", "dW", "dO")
OUTPUT_KEYS = FORWARD_KEYS + BACKWARD_KEYS


def compute(
    arrays: dict[str, np.ndarray], *, stats: str = "exact", activation: str = "sigmoid",
    eps: float = 1e-5,
) -> dict[str, np.ndarray]:
    """Forward and backward of the layer on ``arrays`` (keys ``INPUT_KEYS``).

    Returns
    -------
    dict
        ``OUTPUT_KEYS`` mapped to arrays in the layer's dtype.
    """
    cache = layer_forward(arrays["O"], arrays["W"], arrays["gamma"], arrays["beta"],
                          activation=activation, eps=eps)
    grads = layer_backward(arrays["dY"], cache, stats=stats)
    out = {k: getattr(cache, k) for k in FORWARD_KEYS}
    out.update({k: getattr(grads, k) for k in BACKWARD_KEYS})
    return out


def run_grad(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    *,
    stats: str = "exact",
    activation: str = "sigmoid",
    eps: float = 1e-5,
) -> dict[str, np.ndarray]:
    """Read ``in_path``, compute, and write ``out_path`` atomically when given.

    Errors about an array are prefixed with the file's name.
    """
    arrays = load_npz(in_path, required=INPUT_KEYS, allowed=INPUT_KEYS)
    try:
        out = compute(arrays, stats=stats, activation=activation, eps=eps)
    except InputError as exc:
        raise InputError(f"{in_path}: {exc}") from None
    if out_path is not None:
        save_npz(out_path, out)
    return out


def summary(
    out: dict[str, np.ndarray], *, stats: str, activation: str, eps: float,
) -> str:
    """A readable listing of every output array."""
    m, n_out = out["A"].shape
    n_in = out["dW"].shape[1]
    lines = [
        f"layer: m={m}, n_in={n_in}, n_out={n_out}, activation={activation}, eps={eps:g}, "
        f"stats={stats}, dtype={out['A'].dtype}",
        "forward:  Z = O W^T, Obar = (Z - mu) * inv_std, A = gamma * Obar + beta, Y = sigma(A)",
        "backward: dA = sigma'(A) * dY, dgamma = sum_rows(dA * Obar), dbeta = sum_rows(dA), "
        + ("dZ = gamma * inv_std * (dA - mean_rows(dA) - Obar * mean_rows(dA * Obar))"
           if stats == "exact" else "dZ = gamma * inv_std * dA (statistics held fixed)")
        + ", dW = dZ^T O, dO = dZ W",
    ]
    with np.printoptions(precision=6, threshold=120, linewidth=100, edgeitems=3):
        for key in OUTPUT_KEYS:
            a = out[key]
            body = np.array2string(a, prefix="    ")
            lines.append(f"\n{key} {a.shape}:\n    {body}")
    return "\n".join(lines)

