"""One training step of the ``--arch cnn`` net against PyTorch eager, and where it goes.

The step, the same on both sides: ``model_cnn.cnn((16, 32), (128,))`` on ``(m, 1, 28, 28)``
images (conv 3x3 no bias -> BN2d -> ReLU -> max-pool 2, twice; Flatten -> Linear no bias
-> BN1d -> ReLU -> Linear), mean softmax cross-entropy, SGD with Nesterov momentum 0.9,
one fixed batch.

* bnprop: ``net.train_step(X, y, SGD(lr, momentum=0.9, nesterov=True))``.
* PyTorch eager: ``net.to_torch()``, ``zero_grad(set_to_none=True)``, ``cross_entropy``,
  ``backward``, ``SGD.step``.

Phases (:func:`phases`): each part of bnprop's step timed alone on the step's own shapes
and buffers, as a share of the whole step -- im2col and col2im, the GEMMs (forward
``cols W2^T``, backward ``dZ^T cols`` and ``dZ W2``, the Linear layers'), the BN kernels
(moments, forward apply, backward sums and apply), max pooling forward and backward; the
rest ("other": Flatten, ReLU of the last layer, the loss, the optimizer, Python) is the
step minus their sum. The GEMMs are the floor no rewrite of the other phases removes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bnprop.bench.timing import interleaved
from bnprop.kernels import conv as convk
from bnprop.model_cnn import cnn
from bnprop.nn.plan import ConvNormStep, NormStep
from bnprop.nn.pool import MaxPool2d
from bnprop.optim import SGD

LR = 0.01
CHANNELS, HIDDEN, BATCH = (16, 32), (128,), 128


def cnn_inputs(m: int, dtype: Any = np.float32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch: ``X`` (m, 1, 28, 28) uniform in [0, 1), labels ``y`` (m,)."""
    rng = np.random.default_rng(seed)
    return rng.random((m, 1, 28, 28)).astype(dtype), rng.integers(0, 10, m)


def bnprop_cnn_step(X: np.ndarray, y: np.ndarray) -> tuple[Callable[[], None], Any]:
    """The step as a call, and the net (for :func:`phases`)."""
    net = cnn(CHANNELS, HIDDEN, dtype=X.dtype.name)
    opt = SGD(LR, momentum=0.9, nesterov=True)

    def call() -> None:
        net.train_step(X, y, opt)

    return call, net


def torch_cnn_step(net: Any, X: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    import torch

    model = net.to_torch()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True)
    tX, ty = torch.from_numpy(X), torch.from_numpy(y)

    def call() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(tX), ty).backward()
        opt.step()

    return call


def _phase_calls(net: Any, X_nhwc: np.ndarray) -> dict[str, list[Callable[[], object]]]:
    """Each phase of one step as calls on the buffers the last step left (module docstring)."""
    calls: dict[str, list[Callable[[], object]]] = {
        "im2col": [], "GEMM": [], "BN": [], "pooling": []}
    for i, step in enumerate(net.steps):
        if isinstance(step, NormStep):
            st = step.stage
            O, Z, Y, n = st.O, st.Z, st.Y, st.Z.shape[1]
            mean, M2 = np.empty(n), np.empty(n)
            sG, sGO = np.empty(n), np.empty(n)
            g, b = step.norm.gamma, step.norm.beta
            dZ = np.empty_like(Y)
            calls["BN"] += [
                lambda Z=Z, mean=mean, M2=M2, st=st: st.kernels._moments(
                    Z, st.block_rows, mean, M2),
                lambda Z=Z, Y=Y, st=st, g=g, b=b: st.kernels._forward_apply(
                    Z, st.mean, st.inv_std, g, b, st.act, Z, Y, None),
                lambda Y=Y, Z=Z, st=st, sG=sG, sGO=sGO: st.kernels._backward_sums(
                    Y, Y, Z, st.act, sG, sGO),
                lambda Y=Y, Z=Z, st=st, g=g, dZ=dZ, sG=sG, sGO=sGO: st.kernels._backward_apply(
                    Y, Y, Z, g, st.inv_std, sG, sGO, float(Z.shape[0]), st.act, dZ)]
            if st.linear is not None:
                W = st.linear.W
                calls["GEMM"] += [lambda O=O, W=W, Z=Z: np.matmul(O, W.T, out=Z),
                                  lambda O=O, Y=Y: Y.T @ O]
                if i > 0:
                    calls["GEMM"].append(lambda Y=Y, W=W: Y @ W)
            if isinstance(step, ConvNormStep):  # input: the previous step's buffer shape
                conv = step.conv
                k, s, p = conv.kernel_size, conv.stride, conv.padding
                X_in = net.dH[i - 1] if i > 0 else X_nhwc
                calls["im2col"].append(lambda X_in=X_in, O=O, k=k, s=s, p=p:
                                       convk.im2col_into(X_in, k, s, p, O))
                if i > 0:
                    calls["im2col"].append(lambda X_in=X_in, O=O, k=k, s=s, p=p:
                                           convk.col2im_into(O, k, s, p, X_in))
        elif isinstance(step.modules[0], MaxPool2d):
            pool = step.modules[0]
            Xp, k, s = net.dH[i - 1], pool.kernel_size, pool.stride
            calls["pooling"] += [
                lambda pool=pool, Xp=Xp, k=k, s=s: convk.maxpool_forward_into(
                    Xp, k, s, pool._Y, pool._arg),
                lambda pool=pool, Xp=Xp, k=k, s=s: convk.maxpool_backward_into(
                    pool._Y, pool._arg, k, s, Xp)]
        elif hasattr(step.modules[0], "W"):  # the output Linear
            lin, H = step.modules[0], net.dH[i - 1]
            calls["GEMM"] += [lambda lin=lin, H=H: H @ lin.W.T,
                              lambda lin=lin, H=H: net.logits.T @ H,
                              lambda lin=lin: net.logits @ lin.W]
    return calls


def phases(net: Any, X: np.ndarray, step_fn: Callable[[], None], rounds: int,
           budget: float) -> dict[str, float]:
    """Seconds of each phase of one step, timed alone, and of the whole step; ``other``
    is the step minus the phases."""
    step_fn()  # the buffers of this batch shape
    groups = _phase_calls(net, np.ascontiguousarray(X.transpose(0, 2, 3, 1)))
    cases: dict[str, Callable[[], None]] = {"step": step_fn}
    for name, fns in groups.items():
        cases[name] = lambda fns=fns: [fn() for fn in fns]  # type: ignore[misc]
    times = interleaved(cases, rounds, budget)
    times["other"] = times["step"] - sum(times[k] for k in groups)
    return times


#: The phases :func:`phases` times, in the order the table lists them.
PHASES = ("im2col", "GEMM", "BN", "pooling", "other")


def run_cnn(out: dict[str, Any], *, quick: bool, rounds: int, budget: float,
            no_torch: str | None) -> None:
    """The CNN step (float32, batch 128; 16 with ``quick``) against PyTorch eager into
    ``out["comparisons"]`` (section "step", case "cnn ..."), and its phases into
    ``out["cnn_phases"]``: seconds and shares of the step."""
    m = 16 if quick else BATCH
    X, y = cnn_inputs(m)
    ours, net = bnprop_cnn_step(X, y)
    case = f"cnn {'-'.join(map(str, (*CHANNELS, *HIDDEN)))}, batch {m}"
    if no_torch:
        out["unavailable"].append({"section": "step", "case": case, "dtype": "float32",
                                   "peer": "torch eager", "reason": no_torch})
    else:
        times = interleaved({"bnprop": ours, "torch eager": torch_cnn_step(net, X, y)},
                            rounds, budget)
        out["comparisons"].append({
            "section": "step", "case": case, "dtype": "float32", "peer": "torch eager",
            "bnprop_s": times["bnprop"], "peer_s": times["torch eager"],
            "ratio": times["bnprop"] / times["torch eager"]})
    t = phases(net, X, ours, rounds, budget)
    out["cnn_phases"] = {"case": case, "step_s": t["step"],
                         "seconds": {k: t[k] for k in PHASES},
                         "shares": {k: t[k] / t["step"] for k in PHASES}}


def phase_lines(out: dict[str, Any]) -> list[str]:
    """The phases as table lines (none when not run)."""
    ph = out.get("cnn_phases")
    if not ph:
        return []
    lines = ["", f"CNN step phases ({ph['case']}, float32, each timed alone; step "
             f"{ph['step_s'] * 1e3:.1f} ms):", "", "| phase | ms | share of step |",
             "|---|---:|---:|"]
    for k in PHASES:
        lines.append(f"| {k} | {ph['seconds'][k] * 1e3:.2f} | {ph['shares'][k]:.0%} |")
    return lines
