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
step minus their sum. im2col and pooling are split by images as in the step, but the
GEMMs (NumPy's, one BLAS thread) and the BN kernels are timed on one thread, where the
step splits them over its threads: so "other" can be negative (a line under the table
then says so). The GEMMs are the floor no rewrite of the other phases removes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from bnprop.bench.step import torch_call
from bnprop.bench.timing import interleaved, ratio_spread
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
    return torch_call(model, torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9,
                                             nesterov=True), X, y)


def _phase_calls(net: Any, X_nhwc: np.ndarray) -> dict[str, list[Callable[[], object]]]:
    """Each phase of one step as calls on copies of the step's buffers (module
    docstring); every call writes into scratch arrays, so repeating it changes no input."""
    calls: dict[str, list[Callable[[], object]]] = {
        "im2col": [], "GEMM": [], "BN": [], "pooling": []}
    rng = np.random.default_rng(0)

    def like(a: np.ndarray) -> np.ndarray:  # finite stand-in data of a buffer's shape
        return rng.standard_normal(a.shape).astype(a.dtype)

    for i, step in enumerate(net.steps):
        X_in = like(net.dH[i - 1]) if i > 0 else X_nhwc
        if isinstance(step, NormStep):
            st, n = step.stage, step.stage.Z.shape[1]
            O, Obar, Y, dY = st.O.copy(), st.Z.copy(), st.Y.copy(), like(st.Y)
            out, out2 = np.empty_like(Y), np.empty_like(Y)
            mean, M2, sG, sGO = (np.empty(n) for _ in range(4))
            g, b, kern = step.norm.gamma, step.norm.beta, st.kernels
            calls["BN"] += [
                lambda kern=kern, Obar=Obar, st=st, mean=mean, M2=M2: kern._moments(
                    Obar, st.block_rows, mean, M2),
                lambda kern=kern, Obar=Obar, st=st, g=g, b=b, out=out, out2=out2:
                    kern._forward_apply(Obar, st.mean, st.inv_std, g, b, st.act, out, out2,
                                        None),
                lambda kern=kern, dY=dY, Y=Y, Obar=Obar, st=st, sG=sG, sGO=sGO:
                    kern._backward_sums(dY, Y, Obar, st.act, sG, sGO),
                lambda kern=kern, dY=dY, Y=Y, Obar=Obar, st=st, g=g, sG=sG, sGO=sGO, out=out:
                    kern._backward_apply(dY, Y, Obar, g, st.inv_std, sG, sGO,
                                         float(Y.shape[0]), st.act, out)]
            if st.linear is not None:
                W = st.linear.W
                calls["GEMM"] += [lambda O=O, W=W, out=out: np.matmul(O, W.T, out=out),
                                  lambda O=O, dY=dY: dY.T @ O]
                if i > 0:
                    calls["GEMM"].append(lambda dY=dY, W=W: dY @ W)
            if isinstance(step, ConvNormStep):
                conv, cols = step.conv, np.empty_like(O)
                k, s, p = conv.kernel_size, conv.stride, conv.padding
                calls["im2col"].append(lambda X_in=X_in, cols=cols, k=k, s=s, p=p:
                                       convk.im2col_into(X_in, k, s, p, cols))
                if i > 0:
                    dX = np.empty_like(X_in)
                    calls["im2col"].append(lambda O=O, dX=dX, k=k, s=s, p=p:
                                           convk.col2im_into(O, k, s, p, dX))
            if isinstance(step, ConvNormStep) and step.pool is not None:
                calls["pooling"] += _pool_calls(step.pool, like(st.Y).reshape(
                    step.pool._shape_in))
        elif isinstance(step.modules[0], MaxPool2d):
            calls["pooling"] += _pool_calls(step.modules[0], X_in)
        elif hasattr(step.modules[0], "W"):  # the output Linear
            W, dL = step.modules[0].W, like(net.logits)
            calls["GEMM"] += [lambda X_in=X_in, W=W: X_in @ W.T,
                              lambda X_in=X_in, dL=dL: dL.T @ X_in,
                              lambda dL=dL, W=W: dL @ W]
    return calls


def _pool_calls(pool: MaxPool2d, X_in: np.ndarray) -> list[Callable[[], object]]:
    """A max pooling's forward and backward on ``X_in`` (its input's shape), into
    scratch arrays; over the threads by images, as a lone pooling step runs them (a
    fused step runs them inside its BN passes' row parts instead)."""
    k, s, dX = pool.kernel_size, pool.stride, np.empty_like(X_in)
    Yp, arg = np.empty_like(pool._Y), np.empty_like(pool._arg)
    return [lambda: convk.maxpool_forward_into(X_in, k, s, Yp, arg),
            lambda: convk.maxpool_backward_into(Yp, arg, k, s, dX)]


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


def gemm_flops(m: int, side: int = 28) -> int:
    """FLOPs of the CNN step's GEMMs at batch ``m``: per conv (3x3, padding 1) on a
    ``side x side`` image, ``2 (m side^2)(9 c_in) c_out`` for the forward, dW and (but the
    first) dX; then the Linear layers likewise; each pool halves ``side``."""
    flops, c_in, first = 0, 1, True
    for c_out in CHANNELS:
        flops += (2 if first else 3) * 2 * m * side * side * 9 * c_in * c_out
        c_in, side, first = c_out, side // 2, False
    widths = (c_in * side * side, *HIDDEN, 10)
    for n_in, n_out in itertools.pairwise(widths):
        flops += 3 * 2 * m * n_in * n_out
    return flops


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
        per_round: dict[str, list[float]] = {}
        times = interleaved({"bnprop": ours, "torch eager": torch_cnn_step(net, X, y)},
                            rounds, budget, per_round=per_round)
        out["comparisons"].append({
            "section": "step", "case": case, "dtype": "float32", "peer": "torch eager",
            "bnprop_s": times["bnprop"], "peer_s": times["torch eager"],
            "ratio": times["bnprop"] / times["torch eager"],
            "ratio_rounds": ratio_spread(per_round, "bnprop", "torch eager"),
            "gemm_flops": gemm_flops(m),
            # no measured floor (its im2col GEMMs are not listed); see the phases instead
            "measured_gemm_s": None, "measured_gemm_way": None,
            "measured_floor_multiple": None, "peer_gemm_s": None})
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
    if ph["seconds"]["other"] < 0:
        lines += ["", "other is the step less the four phases: negative here, as the phases, "
                  "each timed alone, add up to more than the step (the GEMMs and BN "
                  "kernels run on one thread here; the step splits them over its threads)."]
    return lines
