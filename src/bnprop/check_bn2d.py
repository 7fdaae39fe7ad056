"""``bnprop check --layer bn2d``: the handout's statements for a BatchNorm2d layer.

The layer is ``Conv2d(C_in, C_out, k, padding=k//2, bias=False) -> BatchNorm2d -> sigma``
on ``(N, C_in, H, W)`` images. With ``O = im2col(X)`` (``m = N H W`` rows of
``k k C_in``) and ``W2 = weight_matrix(W)`` (C_out, k k C_in) it *is* the handout's layer
``sigma(BN(O W2^T))`` with one feature per channel, its statistics over the ``N H W``
values of each channel (:mod:`bnprop.conv`). So each statement of :mod:`bnprop.check` is
measured on it the same way -- the Jacobians (1)-(4) of every example row against
central finite differences, and the per-channel training Jacobian
``dA[:, c]/dZ[:, c] = gamma_c inv_std_c (I - 1 1^T/m - Obar_c Obar_c^T/m)`` (m = N H W)
-- and, with torch, against autograd of PyTorch's own ``conv2d -> batch_norm`` (4-D,
training mode; statistics detached for "4-frozen"). ``dX`` (through col2im) is checked
against finite differences of the 4-D function and autograd.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnprop import conv as ref
from bnprop import jacobians as jac
from bnprop._validate import InputError, check_seed
from bnprop.activations import get_activation
from bnprop.check import (
    CLAIMS,
    FD_TOL,
    CheckReport,
    Statement,
    _measure,
    _torch_version,
)
from bnprop.layer import _backward, _forward

#: Default image batch: N, C_in, H, W; and C_out, k.
SHAPE, C_OUT, KERNEL = (2, 2, 3, 3), 3, 3


def _torch_bn2d(X: np.ndarray, W: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                dY: np.ndarray, activation: str, eps: float, frozen: bool) -> dict[str, Any]:
    """Autograd of ``sigma(batch_norm(conv2d(X, W)))`` with ``F = sum(dY * Y)`` (NCHW)."""
    import torch

    F = torch.nn.functional
    acts = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
            "identity": lambda x: x}
    tX, tW, tg, tb = (torch.tensor(a, requires_grad=True) for a in (X, W, gamma, beta))
    Z = F.conv2d(tX, tW, padding=W.shape[-1] // 2)
    if frozen:
        with torch.no_grad():
            mu = Z.mean(dim=(0, 2, 3), keepdim=True)
            var = Z.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        A = tg[None, :, None, None] * ((Z - mu) / torch.sqrt(var + eps)) + tb[None, :, None, None]
    else:
        A = F.batch_norm(Z, None, None, tg, tb, training=True, eps=eps)
    A.retain_grad()
    (acts[activation](A) * torch.tensor(dY)).sum().backward()
    return {"dA": A.grad.numpy(), "dgamma": tg.grad.numpy(), "dbeta": tb.grad.numpy(),
            "dW": tW.grad.numpy(), "dX": tX.grad.numpy()}


def run_check_bn2d(*, seed: int = 0, shape: tuple[int, int, int, int] = SHAPE,
                   c_out: int = C_OUT, kernel_size: int = KERNEL, activation: str = "sigmoid",
                   trials: int = 5, eps: float = 1e-5, use_torch: bool = True) -> CheckReport:
    """The handout's statements on ``trials`` random BatchNorm2d layers (module docstring).

    Returns a :class:`~bnprop.check.CheckReport` (no errata: those are the 1-D check's).
    """
    act = get_activation(activation)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise InputError(f"trials: expected an integer >= 1, got {trials!r} instead.")
    N, C_in, H, W_ = shape
    k, p = kernel_size, kernel_size // 2
    if N * H * W_ < 2:
        raise InputError(f"shape: N H W = {N * H * W_}; a channel needs 2 values for a batch "
                         "variance.")
    seed = check_seed(seed)
    torch_version = _torch_version() if use_torch else None
    rng = np.random.default_rng(seed)
    keys = (*CLAIMS, "dX")
    errs: dict[str, dict[str, list[float]]] = {
        key: {"finite_differences": [], "autograd": []} for key in keys}
    exact: dict[str, list[float]] = {"dW vs FD": [], "dO vs FD": [], "dA/dZ vs FD": []}
    for _ in range(trials):
        X = rng.standard_normal((N, C_in, H, W_))
        Wc = rng.standard_normal((c_out, C_in, k, k))
        gamma, beta = rng.uniform(0.5, 2.0, c_out), rng.normal(0.0, 0.5, c_out)
        dY = rng.standard_normal((N, c_out, H, W_))

        def rows(a: np.ndarray) -> np.ndarray:
            return ref.to_nhwc(a).reshape(-1, a.shape[1])

        cache = _forward(ref.im2col(ref.to_nhwc(X), k, 1, p), ref.weight_matrix(Wc), gamma,
                         beta, act.name, eps)
        _measure(cache, rows(dY), errs, exact, with_torch=False)
        true = _backward(rows(dY), cache, "exact")
        dX = ref.to_nchw(ref.col2im(true.dO, (N, H, W_, C_in), k, 1, p))

        def F_of_X(x: np.ndarray, Wc: np.ndarray = Wc, gamma: np.ndarray = gamma,
                   beta: np.ndarray = beta, dY: np.ndarray = dY) -> float:
            c = _forward(ref.im2col(ref.to_nhwc(x), k, 1, p), ref.weight_matrix(Wc), gamma,
                         beta, act.name, eps)
            return float(np.sum(rows(dY) * c.Y))

        errs["dX"]["finite_differences"].append(
            jac.max_rel_error(dX, jac.central_difference(F_of_X, X)))
        if torch_version:
            frozen = _backward(rows(dY), cache, "frozen")
            tt = _torch_bn2d(X, Wc, gamma, beta, dY, act.name, eps, frozen=False)
            tf = _torch_bn2d(X, Wc, gamma, beta, dY, act.name, eps, frozen=True)
            ag = {"1": (true.dA, rows(tt["dA"])), "2": (true.dgamma, tt["dgamma"]),
                  "3": (true.dbeta, tt["dbeta"]),
                  "4-frozen": (frozen.dW, ref.weight_matrix(tf["dW"])),
                  "4-training": (frozen.dW, ref.weight_matrix(tt["dW"])), "dX": (dX, tt["dX"])}
            for key, (ours, theirs) in ag.items():
                errs[key]["autograd"].append(jac.max_rel_error(ours, theirs))
    claims = {**CLAIMS, "dX": "dX = col2im(dO): the exact gradient reaches the images"}
    statements = []
    for key, claim in claims.items():
        found = {name: max(v) for name, v in errs[key].items() if v}
        holds = found["finite_differences"] <= FD_TOL and found.get("autograd", 0.0) <= 1e-10
        statements.append(Statement(key, f"{claim} [per channel, m = N H W]" if key != "dX"
                                    else claim, bool(holds), max(found.values()), found))
    return CheckReport(
        statements=statements,
        errata=[],
        exact={name: max(v) for name, v in exact.items()},
        config={"seed": seed, "sizes": (N * H * W_, C_in * k * k, c_out),
                "activation": act.name, "trials": trials, "eps": eps,
                "torch": torch_version, "layer": "bn2d",
                "shape": (N, C_in, H, W_), "c_out": c_out, "kernel_size": k},
    )


def to_text(report: CheckReport) -> str:
    """The table of :meth:`~bnprop.check.CheckReport.to_text`, headed for images."""
    cfg = report.config
    N, C_in, H, W = cfg["shape"]
    lines = report.to_text().splitlines()
    lines[0] = (f"The handout's statements on {cfg['trials']} random BatchNorm2d layers: "
                f"Conv2d({C_in}, {cfg['c_out']}, {cfg['kernel_size']}, padding="
                f"{cfg['kernel_size'] // 2}, bias=False) -> BatchNorm2d -> {cfg['activation']} "
                f"on ({N}, {C_in}, {H}, {W}) images, m = N H W = {N * H * W} values a channel "
                f"(seed {cfg['seed']}, float64, eps {cfg['eps']:g}).")
    return "\n".join(lines[:lines.index("Errata (docs/math.md), measured here:") - 1])
