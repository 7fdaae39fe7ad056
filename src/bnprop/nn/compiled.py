"""When a train step runs compiled whole (:mod:`bnprop.kernels._mlp_compiled`), and its buffers.

A :class:`~bnprop.nn.Sequential` step of small batches is mostly Python: per layer a
dozen NumPy and Numba calls of a few microseconds each, against GEMMs of tens of
microseconds (the Ioffe net at batch 60: 0.33 ms of GEMMs in a 0.65 ms step). A plan of
the form::

    (Linear(bias=False) -> BatchNorm1d -> activation) x L,  L >= 1,  then Linear

in one dtype, on the kernels (``backend="numba"``), one process, trains in three compiled
calls instead: the forward pass (ending with the loss's shift by the row maximum), the
backward pass (starting with the loss's row totals and ``dlogits``; NumPy's ``exp``
runs between the two, its ``log`` after), then the finiteness check, the running update
and the optimizer's update. The numbers are the Python step's: same kernels, same
GEMMs (bnprop's own float32 tiles where :mod:`bnprop.kernels.tile_rule` takes a product,
else NumPy's BLAS on 1 thread as :mod:`bnprop.threads` sets it), same order; tests hold
them bit-identical. (A second BLAS thread was measured too: no faster at
these sizes, 454 against 444 us a step, and on a busy machine 3.4 ms a forward pass;
and the numbers would then depend on the thread count.) With two or more threads the
second core comes from the helper thread of :mod:`bnprop.kernels.team` instead: half of
each ``Z_l``'s GEMM and of ``dW_1``'s, each other ``dW`` beside its ``dO``, half of the
rows of each forward BN pass, half of the gradients' finiteness test, and half of the
optimizer update (436 -> 315 us a step with SGD, where the two vCPUs are separate cores;
then 254-258 us with ``Z_1`` in small blocks, :mod:`bnprop.kernels.small_gemm`, ``dW_1``
cut by rows and the finiteness test in the update's halves), on the same bits; the step reports
its time so that the helper is used only while it is faster (:mod:`bnprop.kernels._helper_thread`).

Which batches it takes (:func:`_takes_rows`): on one thread every batch the Python
step would not walk in chunks (fewer than ``2 * rows.KERNEL_PART_ROWS`` rows); on two
threads also the batches the Python step splits into row parts, while each hidden
layer's ``Z`` has at most :data:`COMPILED_Z_BYTES`. The compiled step's backward BN
passes run on the calling thread alone, so a larger ``Z`` goes back to the Python
step's parts. Measured on 2 cores, the Python step's parts -> the compiled step, a
step (SGD):

=============================  =========  =====  ==========================
net                            batch      dtype  ms
=============================  =========  =====  ==========================
784-100-100-100-10             200        f32    1.42 -> 0.74
784-100-100-100-10             512 / 2048 f32    2.49 -> 1.63 / 8.69 -> 6.21
784-100-100-100-10             4095       f32    15.4 -> 12.9
784-1024x3-10                  64 / 256   f32    10.9 -> 8.2 / 27.1 -> 24.4
784-1024x3-10                  512 / 1024 f32    48.8 -> 46.1 / 93.0 -> 90.1
784-1024x3-10                  1536       f32    138.1 -> 135.0 (``Z`` 6 MiB)
784-1024x3-10                  2048       f32    181.7 -> 209.1 (8 MiB: slower)
784-1024x3-10                  512 / 1024 f64    97.4 -> 93.4 / 183.3 -> 281.0 (8 MiB)
=============================  =========  =====  ==========================

With more threads the Python step keeps every split batch: the compiled step has one
helper thread. The numbers change with the path only by the rounding of the merged
parts (Chan's rule for the moments, per-part sums): the compiled step gives the bits of
the Python step in one part, that is, of one thread. The Python step keeps every other
case: other modules, ``comm``, ``backend="numpy"``, a width of 1 (NumPy calls GEMV
there), and the rest of the batches above.
"""

from __future__ import annotations

import math
import time
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from bnprop import threads
from bnprop.kernels import blas, rows
from bnprop.kernels.activations import ACTIVATION_CODES
from bnprop.kernels.bn import BLOCK_BYTES
from bnprop.kernels.loss import exp_rows, mean_loss, sums_in_numpy_order
from bnprop.nn.batchnorm import BatchNorm1d
from bnprop.nn.module import Linear

if TYPE_CHECKING:
    from bnprop.nn.plan import FlatBuffers, ModuleStep, NormStep
    from bnprop.optim_flat import FlatUpdate


@cache
def _kernels() -> tuple[Any, Any]:
    """``(_mlp_compiled, team)``, imported on first use (they need NumPy's OpenBLAS; an
    import statement in the step itself costs 0.3 us a call)."""
    from bnprop.kernels import _mlp_compiled, team

    return _mlp_compiled, team


def _eligible_plan(steps: list[Any]) -> bool:
    """The plan is ``NormStep(with Linear, BatchNorm1d) x L, ModuleStep(Linear)``."""
    from bnprop.nn.plan import ModuleStep, NormStep

    if len(steps) < 2 or not isinstance(steps[-1], ModuleStep) \
            or not isinstance(steps[-1].module, Linear):
        return False
    hidden = steps[:-1]
    if not all(type(s) is NormStep and s.stage.linear is not None
               and type(s.norm) is BatchNorm1d for s in hidden):
        return False
    modules = [m for s in steps for m in s.modules]
    dtypes = {m.dtype for m in modules if hasattr(m, "dtype")}
    widths = [s.norm.num_features for s in hidden] + [steps[-1].module.out_features,
                                                      hidden[0].stage.linear.in_features]
    return (len(dtypes) == 1 and dtypes <= {np.dtype(np.float32), np.dtype(np.float64)}
            and all(getattr(m, "backend", "numba") == "numba" for m in modules)
            and min(widths) >= 2)


#: Most bytes of a hidden layer's ``Z`` for which the compiled step takes, on two threads,
#: a batch the Python step would split into row parts (module docstring: 4 MiB was
#: faster in every case measured, 6 MiB about even, 8 MiB 1.15-1.5x slower).
COMPILED_Z_BYTES = 1 << 22


def _takes_rows(m: int, steps: list[Any]) -> bool:
    """Whether the compiled step takes a batch of ``m`` rows (module docstring)."""
    hidden = steps[:-1]
    if m >= 2 * rows.KERNEL_PART_ROWS:
        return False                                         # the Python step's chunks
    n = threads.num_threads()
    if n == 1 or all(rows.unsplit(m, s.norm.num_features, s.norm.dtype.itemsize)
                     and not _splits_gemm(m, s) for s in hidden):
        return True                                          # the Python step in one part
    return n == 2 and all(m * s.norm.num_features * s.norm.dtype.itemsize
                          <= COMPILED_Z_BYTES for s in hidden)


def _splits_gemm(m: int, s: Any) -> bool:
    """Whether the Python step splits one of the layer's GEMMs over threads: ``Z = O W^T``
    and ``dO = dZ W`` their ``m`` rows, ``dW = dZ^T O`` its ``width`` rows, once a part
    has ``rows.GEMM_PART_FLOPS`` (all three have ``2 m n_in width`` flops)."""
    width, n_in = s.norm.num_features, s.stage.linear.in_features
    min_rows = math.ceil(rows.GEMM_PART_FLOPS / (2 * n_in * width))
    return m >= 2 * min_rows or width >= 2 * math.ceil(rows.GEMM_PART_FLOPS / (2 * m * n_in))


class CompiledStep:
    """The compiled step of one eligible plan (module docstring); buffers per batch size."""

    def __init__(self, steps: list[NormStep | ModuleStep]) -> None:
        self.hidden: list[NormStep] = steps[:-1]  # type: ignore[assignment]
        self.out: Linear = steps[-1].module  # type: ignore[union-attr, assignment]
        self.norms = norms = [s.norm for s in self.hidden]  # the plan's modules, fixed
        self.dtype = norms[0].dtype
        # The flat parameter and gradient arrays, which live as long as the plan (a copy
        # or an unpickle of the Sequential builds a new CompiledStep), and where each
        # layer's parameters lie in them (the output layer's last), its activation, block
        # rows and buffers (_mlp_compiled.W_AT, ...): a handful of arrays to unbox a
        # call, not a view per layer and parameter.
        k, _ = _kernels()
        linears, out = [s.stage.linear for s in self.hidden], self.out
        self.params, places = _flat_plan(
            [(lin.W, n.gamma, n.beta) for lin, n in zip(linears, norms, strict=True)]
            + [(out.W, None, out.b if out.has_bias else None)])
        self.grads, grad_places = _flat_plan(
            [(lin.grads["W"], n.grads["gamma"], n.grads["beta"])
             for lin, n in zip(linears, norms, strict=True)]
            + [(out.grads["W"], None, out.grads["b"] if out.has_bias else None)])
        if not np.array_equal(grad_places, places):  # FlatBuffers lays both out alike
            raise AssertionError("the flat gradients are not laid out as the parameters")
        L = len(norms)
        self.plan = np.zeros((L + 1, k.SPLIT_DW + 1), np.int64)
        self.plan[:, :k.ACT] = places
        self.plan[:L, k.ACT] = [ACTIVATION_CODES[s.stage.activation] for s in self.hidden]
        self.plan[:L, k.BLOCK_ROWS] = [max(1, BLOCK_BYTES // (n.num_features
                                                              * self.dtype.itemsize))
                                       for n in norms]
        # The statistics, then eps and the momenta (_mlp_compiled.MEAN, ..., MOMENTUM).
        self.V = np.empty((k.MOMENTUM + 1, L, max(n.num_features for n in norms)))
        self.kept_settings: tuple[list[float], list[float], list[bool]] | None = None
        self.kept_run: tuple[FlatUpdate | None, tuple[Any, ...]] = (None, ())
        self.takes: dict[tuple[int, int], bool] = {}  # (rows, threads) -> _takes_rows
        self.m: int | None = None

    def _allocate(self, m: int) -> None:
        k, team = _kernels()
        dt, widths = self.dtype, [s.norm.num_features for s in self.hidden]
        n_in = [s.stage.linear.in_features for s in self.hidden] + [widths[-1]]
        n_out = [*widths, self.out.out_features]
        # Which GEMMs run in two parts (the helper thread's share): by shape, and where
        # the parts give the whole GEMM's bits at OpenBLAS's thread count (step re-checks).
        self.plan[:, k.SPLIT_Z] = [team.may_split(dt, team.NT, m, o, i)
                                   for i, o in zip(n_in, n_out, strict=True)]
        self.plan[0, k.SPLIT_DW] = team.may_split(dt, team.TN, widths[0], n_in[0], m)
        self.modes_blas = threads.blas_threads()
        # The helper's measured choice is kept per net shape and batch size.
        self.choice_key = ("step", dt.str, m, *n_in, *n_out)
        # Z, Y, dY of each layer, one after the other (_mlp_compiled._rows).
        self.plan[:-1, k.BUF_AT] = np.cumsum([0] + [3 * m * n for n in widths[:-1]])
        self.buf = np.empty(3 * m * sum(widths), dt)
        self.logits = np.empty((m, self.out.out_features), dt)
        self.rowmax = np.empty((m, 1), dt)
        # The loss's float64 vectors, one array (_mlp_compiled.S_Y, ...).
        self.F = np.empty(3 * m + self.out.out_features)
        self.S_y, self.total, self.log_total = (self.F[i * m:(i + 1) * m]
                                                 for i in (k.S_Y, k.TOTAL, k.LOG_TOTAL))
        self.sums_compiled = sums_in_numpy_order(dt, m, self.out.out_features)
        # The statistics' blocks, for the helper's share (kernels/_team_bn.moments).
        self.scratch = np.empty(max(k.scratch_size(m, n, int(b)) for n, b
                                    in zip(widths, self.plan[:-1, k.BLOCK_ROWS], strict=True)))
        self.m = m

    def train_step(self, X: np.ndarray, y: np.ndarray, flat: FlatBuffers,
                   optimizer: Any) -> tuple[float, bool, bool]:
        """:meth:`step` with the update of one of bnprop's optimizers run in its last
        call (:meth:`bnprop.optim.Optimizer.flat_update_args`), and counted once committed.
        Returns ``(loss, finite, whether the optimizer has updated)``."""
        update = (optimizer.flat_update_args(flat.params, flat.grads, flat.layout)
                  if hasattr(optimizer, "flat_update_args") else None)
        loss, finite = self.step(X, y, next(iter(flat.grads.values())), update)
        if finite and update is not None:
            optimizer.finish_flat(update, flat.layout)
        return loss, finite, update is not None

    def step(self, X: np.ndarray, y: np.ndarray, grads: np.ndarray,
             update: FlatUpdate | None = None) -> tuple[float, bool]:
        """Forward, loss, backward into the modules' gradient views; the running update
        and ``update`` (the optimizer's, :meth:`bnprop.optim.Optimizer.flat_update_args`)
        when everything is finite. Returns ``(loss, finite)``; nothing is committed when
        ``finite`` is False. ``grads`` is the flat array every gradient is a view of."""
        k, team = _kernels()
        if grads is not self.grads:  # the backward call writes where self.plan says
            raise AssertionError("grads: not the flat gradient array of this plan")
        if self.m != X.shape[0] or self.modes_blas != threads.blas_threads():
            self._allocate(X.shape[0])
        # Settings and buffers a user may change or replace between steps are read anew,
        # in one loop, and written into the kept arrays when they changed (1.5 -> 0.7 us).
        eps, momenta, frozen, means, variances, tracked = [], [], [], [], [], []
        for n in self.norms:
            eps.append(n.eps)
            momenta.append(n.momentum if n.running == "ema"
                           else 1.0 / (int(n.num_batches_tracked) + 1))
            frozen.append(n.stats == "frozen")
            means.append(n.running_mean)
            variances.append(n.running_var)
            tracked.append(n.num_batches_tracked)
        plan, V = self.plan, self.V
        if (eps, momenta, frozen) != self.kept_settings:
            V[k.EPS, :, 0], V[k.MOMENTUM, :, 0], plan[:-1, k.FROZEN] = eps, momenta, frozen
            self.kept_settings = (eps, momenta, frozen)
        # The step's time goes to the helper's choice only where a decision reads it.
        ctl, use, timed = team.for_timed_call(self.choice_key)
        start = time.perf_counter() if timed else 0.0
        # The loss (kernels/loss.py) in its stages: the shift at the end of forward, then
        # NumPy's exp, the totals and dlogits at the start of backward, then NumPy's log.
        params, buf, logits, F = self.params, self.buf, self.logits, self.F
        count = k.forward(X, params, plan, buf, V, logits, ctl, use, y, F, self.scratch)
        compiled = exp_rows(logits, self.total, totals_later=True, compiled=self.sums_compiled)
        k.backward(X, params, grads, plan, buf, V, count, logits, ctl, use, y, F, self.rowmax,
                   compiled)
        if timed:  # with or without the helper: which is faster now
            team.report(use, time.perf_counter() - start, self.choice_key)
        if compiled:  # NumPy's log; the commit call takes the mean (kernels/loss.py)
            np.log(self.total, out=self.log_total)
            loss = math.nan
        else:
            loss = mean_loss(self.total, self.S_y, self.log_total, X.shape[0], compiled)
        if update is None:
            run = (-1, grads, grads, grads, grads, grads, 0)
        elif update is self.kept_run[0]:  # the optimizer gave the same update again
            run = self.kept_run[1]
        else:
            run = (team.ADAM if update.kind == "adam" else team.SGD, update.p, update.g,
                   update.a, update.b, update.coef, update.flags)
            self.kept_run = (update, run)
        loss, finite = k.commit(grads, V, count, tuple(means), tuple(variances),
                                tuple(tracked), ctl, use, run, F, X.shape[0], loss)
        return float(loss), bool(finite)


def _flat_plan(layers: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]],
               ) -> tuple[np.ndarray, np.ndarray]:
    """The flat array that every layer's ``(W, gamma, beta)`` (or their gradients; the
    output layer's ``(W, None, b or None)``) are views of, and the ``plan`` of
    :mod:`bnprop.kernels._mlp_compiled` (``W_AT, N_OUT, N_IN, GAMMA_AT, BETA_AT`` a
    layer): where each starts in it, in elements (-1: none)."""
    flat = layers[0][0].base
    if not (isinstance(flat, np.ndarray) and flat.ndim == 1 and flat.flags.c_contiguous):
        raise AssertionError("the parameters are not views of one flat array")

    def at(view: np.ndarray | None) -> int:
        if view is None:
            return -1
        if view.base is not flat or not view.flags.c_contiguous:
            raise AssertionError("the parameters are not views of one flat array")
        return (view.__array_interface__["data"][0]
                - flat.__array_interface__["data"][0]) // flat.itemsize

    return flat, np.array([[at(W), W.shape[0], W.shape[1], at(gamma), at(beta)]
                           for W, gamma, beta in layers], np.int64)


def compiled_step(seq: Any, X: np.ndarray) -> CompiledStep | None:
    """The compiled step for ``seq`` on the batch ``X`` (built once per plan), or
    ``None`` when the Python step must run (module docstring)."""
    cached = getattr(seq, "_compiled", False)
    if cached is False:
        steps = seq.steps
        cached = (CompiledStep(steps) if _eligible_plan(steps) and blas.available()
                  and len(seq.flat.grads) == 1 else None)
        seq._compiled = cached
    if cached is None or X.ndim != 2 or not X.flags.c_contiguous:
        return None
    key = (X.shape[0], threads.num_threads())  # what _takes_rows depends on, with the plan
    one = cached.takes.get(key)
    if one is None:
        one = cached.takes[key] = _takes_rows(X.shape[0], seq.steps)
    return cached if one else None
