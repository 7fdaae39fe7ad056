"""The measured GEMM floor of a case: its exact GEMMs, timed alone as bnprop computes them.

:mod:`bnprop.bench.floor` divides a case's GEMM flops by the rate of a large square GEMM.
Small GEMMs never reach that rate (a ``(60, 784) @ (784, 100)`` product runs at a fraction
of it), so for small shapes that floor is out of reach of any implementation. This module
measures the floor that holds: the GEMMs the case must do, at their exact shapes and
layouts as bnprop calls them, each into a preallocated ``C`` through
:func:`bnprop.threads.matmul` (bnprop's own float32 tiles where they take the product,
else ``np.matmul``; a ``Z = O W^T`` as :func:`bnprop.threads.matmul_nt` computes it), and
nothing else.

A BN layer ``(m, n_in) -> (m, n_out)``; rows are examples, ``W`` is ``(n_out, n_in)``
C-contiguous, a ``^T`` is a transposed view (no copy)::

    Z  = O W^T      (m, n_in) x (n_in, n_out)
    dW = dZ^T O     (n_out, m) x (m, n_in)
    dO = dZ W       (m, n_out) x (n_out, n_in)

A train step of ``sizes = (n_0, ..., n_L)`` on ``m`` rows: forward ``Z_l = O_{l-1} W_l^T``
for ``l = 1..L``, then backward from ``l = L`` down to 1: ``dW_l = dZ_l^T O_{l-1}``, and
``dO_{l-1} = dZ_l W_l`` for ``l >= 2`` (nobody needs the gradient of the data). An
operand is one array wherever the step uses it (``O_{l-1}`` feeds the forward and the dW
GEMM of layer ``l``), filled with fixed random numbers of the case's dtype. The flops of
the list equal :func:`bnprop.bench.floor.layer_flops` and
:func:`~bnprop.bench.floor.step_flops`.

The sequence is timed in the same :func:`~bnprop.bench.timing.interleaved` rounds as the
case itself, in each way bnprop can use the run's ``n`` cores (:func:`ways`): one thread
(OpenBLAS on 1 thread where the BLAS computes a product), OpenBLAS on ``n`` threads
(:func:`bnprop.threads.blas_threads_limited`), each GEMM's output rows split in ``n``
parts on 1 BLAS thread each (:func:`bnprop.threads.map_rows`; it keeps its speed when
another process shares the cores, where ``n``-thread OpenBLAS can lose 10x), and as
bnprop's compiled steps run them on two threads (a large GEMM in two parts, a ``dW``
beside its ``dO``, handed to a spinning helper thread:
:func:`bnprop.threads.gemm_sequence`). The fastest is the measured floor (:func:`best`):
the least time these GEMMs alone take, as bnprop computes them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from bnprop import threads
from bnprop.bench import machine


@dataclass(frozen=True)
class Gemm:
    """``out = left[^T] right[^T]``, a ``(rows, inner) x (inner, cols)`` product.

    ``left`` and ``right`` name the operands as they are stored (C-contiguous);
    ``left_t`` / ``right_t``: the GEMM reads that operand through its transposed view.
    """

    out: str
    left: str
    left_t: bool
    right: str
    right_t: bool
    rows: int
    inner: int
    cols: int

    @property
    def flops(self) -> int:
        """``2 rows inner cols``."""
        return 2 * self.rows * self.inner * self.cols

    def shapes(self) -> dict[str, tuple[int, int]]:
        """The stored shape of each operand and of the output."""
        left = (self.inner, self.rows) if self.left_t else (self.rows, self.inner)
        right = (self.cols, self.inner) if self.right_t else (self.inner, self.cols)
        return {self.left: left, self.right: right, self.out: (self.rows, self.cols)}

    def __str__(self) -> str:
        t = {True: "^T", False: ""}
        return f"{self.out} = {self.left}{t[self.left_t]} {self.right}{t[self.right_t]}"


def _forward(layer: str, prev: str, m: int, n_in: int, n_out: int) -> Gemm:
    """``Z_l = O_{l-1} W_l^T`` (``layer``: l as text, ``prev``: l - 1; both "" for a layer
    case)."""
    return Gemm(f"Z{layer}", f"O{prev}", False, f"W{layer}", True, m, n_in, n_out)


def _backward(layer: str, prev: str, m: int, n_in: int, n_out: int,
              with_dO: bool) -> list[Gemm]:
    """``dW_l = dZ_l^T O_{l-1}``, then ``dO_{l-1} = dZ_l W_l`` when asked."""
    gemms = [Gemm(f"dW{layer}", f"dZ{layer}", True, f"O{prev}", False, n_out, m, n_in)]
    if with_dO:
        gemms.append(Gemm(f"dO{prev}", f"dZ{layer}", False, f"W{layer}", False, m, n_out,
                          n_in))
    return gemms


def layer_gemms(m: int, n_in: int, n_out: int) -> list[Gemm]:
    """The three GEMMs of a BN layer's forward + backward (module docstring)."""
    return [_forward("", "", m, n_in, n_out), *_backward("", "", m, n_in, n_out, True)]


def step_gemms(sizes: Sequence[int], m: int) -> list[Gemm]:
    """The GEMMs of a train step on ``m`` rows, in the order the step runs them."""
    layers = list(enumerate(itertools.pairwise(sizes), start=1))
    forward = [_forward(str(i), str(i - 1), m, a, b) for i, (a, b) in layers]
    backward = [g for i, (a, b) in reversed(layers)
                for g in _backward(str(i), str(i - 1), m, a, b, i > 1)]
    return forward + backward


def total_flops(gemms: Sequence[Gemm]) -> int:
    """The flops of a list of GEMMs."""
    return sum(g.flops for g in gemms)


def operands(gemms: Sequence[Gemm], dtype: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """One C-contiguous array per operand and output name, fixed random numbers of
    ``dtype`` (outputs too: they are overwritten)."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for g in gemms:
        for name, shape in g.shapes().items():
            if name not in arrays:
                arrays[name] = rng.standard_normal(shape).astype(dtype)
            elif arrays[name].shape != shape:
                raise ValueError(f"gemms: operand {name} is {arrays[name].shape} in one "
                                 f"GEMM and {shape} in {g} instead.")
    return arrays


def sequence(gemms: Sequence[Gemm], arrays: dict[str, np.ndarray],
             parts: int = 1) -> Callable[[], None]:
    """A call that runs every GEMM once, in order, as bnprop computes ``C = A B`` on
    ``arrays`` (:func:`operands`), reading a ``^T`` operand through its transposed view.

    ``parts > 1``: each GEMM's output rows are split into ``parts`` blocks,
    ``C[s:e] = A[s:e] B``, run concurrently by :func:`bnprop.threads.map_rows` (the way
    bnprop splits a step over its threads; no block needs a reduction, and the flops are
    the same). Call it inside ``bnprop.threads.using(parts)``.
    """

    def view(name: str, transposed: bool) -> np.ndarray:
        return arrays[name].T if transposed else arrays[name]

    calls = [(view(g.left, g.left_t), view(g.right, g.right_t), arrays[g.out])
             for g in gemms]
    if parts == HELPER:  # a dW beside the dO that follows it (the same dZ), as the step
        beside = [g.out.startswith("dW") and nxt.out.startswith("dO") and g.left == nxt.left
                  for g, nxt in zip(gemms, [*gemms[1:], gemms[0]], strict=True)]
        helper = threads.gemm_sequence([(*c, b) for c, b in zip(calls, beside, strict=True)])
        if helper is not None:
            return helper
    if parts in (1, HELPER):
        def call() -> None:
            for a, b, c in calls:
                _product(a, b, c)
        return call

    blocks = [(lambda s, e, a=a, b=b, c=c: _product(a[s:e], b, c[s:e], c.shape[0]),
               c.shape[0]) for a, b, c in calls]

    def split_call() -> None:
        for block, rows in blocks:
            threads.map_rows(block, rows, min_rows=1)

    return split_call


def _product(a: np.ndarray, b: np.ndarray, c: np.ndarray, rows: int | None = None) -> None:
    """``c = a @ b`` as bnprop computes it (:func:`bnprop.threads.matmul`; ``rows``: the
    whole product's)."""
    threads.matmul(a, b, c, rows)


#: ``parts`` of :func:`sequence` and :func:`ways` for the helper thread's way.
HELPER = 0
HELPER_WAY = "2 threads as the step (helper) x 1 BLAS thread"


def ways(n_threads: int) -> dict[str, tuple[int, int]]:
    """The ways the floor runs the sequence on ``n_threads`` cores, each as ``(row parts,
    BLAS threads)``: OpenBLAS on ``n_threads`` threads, on 1 thread, ``n_threads`` row
    parts on 1 BLAS thread each, and the way bnprop's compiled steps use two threads
    (``parts = HELPER``: :func:`bnprop.threads.gemm_sequence`; on 1 BLAS thread where it
    is not available). In the order they are timed: the idle workers of ``n``-thread
    OpenBLAS spin for up to 0.1 s after it, and while the 1-thread sequence runs beside
    them, the two-thread ways wait until they sleep (:func:`_threads`)."""
    if n_threads == 1:
        return {"1 BLAS thread": (1, 1)}
    return {f"{n_threads} BLAS threads": (1, n_threads), "1 BLAS thread": (1, 1),
            f"{n_threads} row parts x 1 BLAS thread": (n_threads, 1), HELPER_WAY: (HELPER, 1)}


@contextmanager
def _threads(parts: int, blas_threads: int) -> Iterator[None]:
    """The threads of a way (:func:`ways`). A way of two bnprop threads (row parts, the
    helper) first waits until OpenBLAS's workers of an earlier call on several threads
    no longer spin (:func:`bnprop.bench.machine.settle_blas_workers`): beside a spinning
    worker it times one core's speed, not two."""
    if parts != 1:
        machine.settle_blas_workers()
    try:
        with threads.using(parts or 2), threads.blas_threads_limited(blas_threads):
            yield
    finally:
        machine.blas_threads_used(blas_threads)


def case_name(way: str) -> str:
    """The name of the GEMM sequence run ``way`` among the timed cases."""
    return f"GEMMs, {way}"


def cases(gemms: Sequence[Gemm], dtype: Any, n_threads: int,
          arrays: dict[str, np.ndarray] | None = None) -> tuple[
        dict[str, Callable[[], None]], dict[str, Callable[[], AbstractContextManager]]]:
    """The sequence once per way (:func:`ways`), as cases for
    :func:`~bnprop.bench.timing.interleaved`, and the contexts that set their threads;
    on ``arrays`` (:func:`operands`, made here when None)."""
    arrays = operands(gemms, dtype) if arrays is None else arrays
    calls, contexts = {}, {}
    for way, (parts, blas_threads) in ways(n_threads).items():
        calls[case_name(way)] = sequence(gemms, arrays, parts)
        contexts[case_name(way)] = partial(_threads, parts, blas_threads)
    return calls, contexts


#: The case name of the same GEMMs through PyTorch (:func:`torch_sequence`).
TORCH_CASE = "GEMMs, PyTorch"


def torch_sequence(gemms: Sequence[Gemm], arrays: dict[str, np.ndarray]) -> Callable[[], None]:
    """The GEMMs once each through PyTorch, ``torch.matmul(A, B, out=C)`` on tensors that
    share ``arrays``' memory (:func:`operands`; a ``^T`` through a transposed view, as
    above), on PyTorch's own threads: what the peer's BLAS (MKL in its CPU wheels) takes
    for the case's GEMMs alone, beside :func:`best` (imports torch)."""
    import torch

    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    calls = [(tensors[g.left].T if g.left_t else tensors[g.left],
              tensors[g.right].T if g.right_t else tensors[g.right], tensors[g.out])
             for g in gemms]

    def call() -> None:
        for a, b, c in calls:
            torch.matmul(a, b, out=c)

    return call


def best(times: dict[str, float], n_threads: int) -> tuple[float, str]:
    """The measured floor: the fastest time of the sequence, and the way that ran it."""
    way = min(ways(n_threads), key=lambda w: times[case_name(w)])
    return times[case_name(way)], way
