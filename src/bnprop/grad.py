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

Range. Nothing non-finite is ever written or printed: the layer's batch variance sums
``m`` squares of ``Z - mu`` (each at most ``(2 max|Z|)^2``), so :func:`check_range`
refuses, before computing, a ``Z = O W^T`` with ``4 m max|Z|^2`` beyond the dtype's
largest number, naming O or W (the larger) and the largest magnitude it may have; and
:func:`check_outputs` refuses any output that is still not finite (huge ``gamma`` or
``dY``), naming it. BN is scale-invariant in O and W, so dividing either by a power of ten
changes no output but Z, mu and var.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from bnprop._atomic import check_target
from bnprop._validate import InputError, common_float_dtype
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
    check_range(arrays["O"], arrays["W"], arrays["gamma"], arrays["beta"])
    with np.errstate(all="ignore"):  # an overflow is reported once, by check_outputs
        cache = layer_forward(arrays["O"], arrays["W"], arrays["gamma"], arrays["beta"],
                              activation=activation, eps=eps)
        grads = layer_backward(arrays["dY"], cache, stats=stats)
    out = {k: getattr(cache, k) for k in FORWARD_KEYS}
    out.update({k: getattr(grads, k) for k in BACKWARD_KEYS})
    check_outputs(out)
    return out


def z_limit(m: int, dtype: np.dtype) -> float:
    """The largest ``max|Z|`` whose batch variance is finite: ``sqrt(max / (4 m))``."""
    return math.sqrt(float(np.finfo(dtype).max) / (4 * m))


def check_range(O: np.ndarray, W: np.ndarray, *others: np.ndarray) -> None:
    """Refuse O and W whose ``Z = O W^T`` overflows the batch variance (module docstring),
    in the dtype the layer computes in: float32 only when O, W and ``others`` (gamma,
    beta) all are.

    ``max|Z|`` is computed without overflow: ``max|O| max|W| max|(O/max|O|)(W/max|W|)^T|``.
    Arrays that are not real numbers (strings, bytes, dates, records, complex) are left to
    the layer's own validation, which names them, before any conversion could fail or warn.
    """
    O, W = np.asarray(O), np.asarray(W)
    if O.dtype.kind not in "biuf" or W.dtype.kind not in "biuf":
        return  # the layer's own validation names these problems
    O64, W64 = O.astype(np.float64, copy=False), W.astype(np.float64, copy=False)
    if O64.ndim != 2 or W64.ndim != 2 or O64.shape[1] != W64.shape[1] or not O64.size \
            or not W64.size or not (np.isfinite(O64).all() and np.isfinite(W64).all()):
        return  # the layer's own validation names these problems
    dtype = common_float_dtype(O, W, *(a for a in map(np.asarray, others)
                                       if a.dtype.kind in "biuf"))
    o_max, w_max = float(np.abs(O64).max()), float(np.abs(W64).max())
    if o_max == 0 or w_max == 0:
        return
    unit = float(np.abs((O64 / o_max) @ (W64 / w_max).T).max())
    limit = z_limit(O64.shape[0], dtype)
    if unit == 0 or math.log(o_max) + math.log(w_max) + math.log(unit) <= math.log(limit):
        return
    name, big, other = ("O", o_max, w_max) if o_max >= w_max else ("W", w_max, o_max)
    raise InputError(
        f"{name}: max|{name}| = {big:.3g} is too large for {dtype}: Z = O W^T would reach "
        f"{math.exp(math.log(o_max) + math.log(w_max) + math.log(unit)):.3g} and its batch "
        f"variance overflow (4 m max|Z|^2 must stay below {float(np.finfo(dtype).max):.3g}, "
        f"m = {O64.shape[0]}); the largest max|{name}| supported with this "
        f"{'W' if name == 'O' else 'O'} is {limit / (unit * other):.3g}. BN is "
        f"scale-invariant: divide {name} by a power of ten."
    )


def check_outputs(out: dict[str, np.ndarray]) -> None:
    """Refuse results holding inf or NaN (never written, never printed), naming the first."""
    for key in OUTPUT_KEYS:
        bad = ~np.isfinite(out[key])
        if bad.any():
            raise InputError(
                f"{key}: the result overflows {out[key].dtype} ({int(bad.sum())} of "
                f"{bad.size} entries inf or NaN); nothing was written. Scale the inputs "
                "down (gamma, beta or dY are too large for this dtype)."
            )


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
    if out_path is not None:
        check_output_path(in_path, out_path)
    arrays = load_npz(in_path, required=INPUT_KEYS, allowed=INPUT_KEYS)
    try:
        out = compute(arrays, stats=stats, activation=activation, eps=eps)
    except InputError as exc:
        raise InputError(f"{in_path}: {exc}") from None
    if out_path is not None:
        save_npz(out_path, out)
    return out


def check_output_path(in_path: str | os.PathLike[str],
                      out_path: str | os.PathLike[str]) -> None:
    """The output may be neither the input file (it would replace it), nor a folder, nor
    anything else but a regular file (:func:`bnprop._atomic.check_target`, which the write
    itself applies again): checked before the input is read."""
    src, dst = Path(in_path), Path(out_path)
    if dst.is_dir() and not dst.is_symlink():
        raise InputError(f"{dst}: is a folder; -o expects the name of an .npz file to write.")
    same = dst.exists() and src.exists() and os.path.samefile(src, dst)
    if same or src.resolve() == dst.resolve():
        raise InputError(f"{dst}: is the input file; write the results to another file "
                         "(-o would replace your arrays).")
    check_target(dst)


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

