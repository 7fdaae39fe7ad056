"""Where a GEMM is cut in two for two threads, so that its parts keep its bits.

:func:`bnprop.kernels.team.gemm` computes ``C = op(A) op(B)`` whole or in two parts, by
rows or by columns of ``C``, one on the calling thread and one on the helper. Each
element is still one dot product over ``K``, but a BLAS's kernels may round it another
way in a part of another size: OpenBLAS takes its tiles from the product's size, and an
element in another tile (or in a tail tile) can be summed in another order. So a GEMM is
cut only where its two parts, checked once per shape and BLAS thread count, give the
whole call's bits (:func:`may_split`), and the step's numbers do not depend on the
thread count or on whether the helper took a part. A GEMM without such a cut runs whole.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bnprop import threads
from bnprop.kernels._jit import JIT_OPTIONS
from bnprop.kernels._tasks import nn, nt, run, tn

#: Minimum flops (``2 M N K``) of a GEMM computed in two parts.
SPLIT_FLOPS = 1_000_000
#: :func:`may_split`'s ``kind``: ``C = A B^T``, ``C = A^T B``, ``C = A B``.
NT, TN, NN = 0, 1, 2

_verified: dict[tuple[str, int, int, int, int, int], int] = {}


@njit(**JIT_OPTIONS)
def parts_of(g, cut):  # pragma: no cover - compiled
    """The parts of GEMM ``g`` (:func:`bnprop.kernels._tasks.nt`) a non-zero ``cut``
    gives: ``(by_rows, h, total)``, the parts ``[0, h)`` and ``[h, total)`` of the rows
    of ``C`` (``cut = h > 0``) or of its columns (``cut = -h < 0``)."""
    if cut > 0:
        return True, cut, g[3]
    return False, -cut, g[4]


@njit(**JIT_OPTIONS)
def _desc(kind, A, B, C):  # pragma: no cover - compiled
    """The GEMM of ``kind`` (:data:`NT`, :data:`TN`, :data:`NN`) into ``C``."""
    return nt(A, B, C) if kind == NT else (tn(A, B, C) if kind == TN else nn(A, B, C))


@njit(**JIT_OPTIONS)
def _whole(kind, A, B, C):  # pragma: no cover - compiled
    g = _desc(kind, A, B, C)
    run(g, False, 0, g[4])


@njit(**JIT_OPTIONS)
def _parts_match(kind, A, B, whole, parts, cut):  # pragma: no cover - compiled
    g = _desc(kind, A, B, parts)
    by_rows, h, total = parts_of(g, cut)  # the two parts bnprop.kernels.team.gemm runs
    run(g, by_rows, 0, h)
    run(g, by_rows, h, total)
    for i in range(whole.shape[0]):
        for j in range(whole.shape[1]):
            if whole[i, j] != parts[i, j]:
                return False
    return True


def preferred_cut(kind: int, M: int, N: int) -> int:
    """Where :func:`bnprop.kernels.team.gemm` would rather cut the GEMM of ``C`` (M, N),
    as its ``cut``: ``C = A^T B`` (a ``dW = dZ^T O``) by its rows from 16 on, any other by
    the longer side of ``C``. A ``dW``'s rows are contiguous in the flat gradient, whose
    halves :func:`~bnprop.kernels.team.all_finite` and :func:`~bnprop.kernels.team.update`
    give the two threads next: the Ioffe step's ``dW_1`` (100 x 784) by rows took 254-259
    us a step, by columns 266-272. Columns are cut at a multiple of 8; rows at the
    multiple of 4 nearest the middle, the upper one on a tie, so that the caller, which
    starts first, takes the larger part: ``dW_1`` cut at row 52 instead of 48 took
    52.7-54.7 us instead of 55.3-56.9."""
    if M >= 16 if kind == TN else M > N:
        return (M // 2 + 2) // 4 * 4
    return -((N // 2 + 4) // 8 * 8)


#: The multiples of rows or columns :func:`cuts` offers after :func:`preferred_cut`, and
#: how many cuts :func:`may_split` tries in all. OpenBLAS's Haswell float32 kernels
#: (``OPENBLAS_CORETYPE=Haswell``, measured on an AMD EPYC that has AVX-512) keep the
#: whole call's bits only for row cuts at multiples of 24: at 512 x 1024 -> 1024 the
#: preferred cut at row 256 changed 3.2% of the elements, a cut at row 264 none, and no
#: column cut kept them.
CUT_STEPS, CUT_TRIES = (8, 16, 24, 32, 48, 64), 8


def cuts(kind: int, M: int, N: int) -> list[int]:
    """The cuts :func:`may_split` tries, in order: :func:`preferred_cut`, then the cuts at
    multiples of :data:`CUT_STEPS` rows or columns between a quarter and three quarters
    of ``C``, the nearest its middle first (rows before columns on a tie); at most
    :data:`CUT_TRIES` in all."""
    first = preferred_cut(kind, M, N)
    more: dict[int, float] = {}
    for total, sign in ((M, 1), (N, -1)):
        for q in CUT_STEPS:
            low = total // 2 // q * q
            for h in (low, low + q):
                if total <= 4 * h <= 3 * total and sign * h != first:
                    more[sign * h] = abs(h / total - 0.5)
    return [first, *sorted(more, key=lambda c: (more[c], -c))][:CUT_TRIES]


def may_split(dtype: np.dtype, kind: int, M: int, N: int, K: int) -> int:
    """How :func:`bnprop.kernels.team.gemm` computes the GEMM of ``C`` (M, N) over ``K``
    (``kind``: NT, TN, NN) now, as its ``cut`` (0: whole). Split only with
    :data:`SPLIT_FLOPS`, at the first of :func:`cuts` whose two parts give the whole
    call's bits on this BLAS at its current thread count, checked once per shape and
    count on random operands (OpenBLAS's kernels may take another path for another size
    or count: float64 parts of 60 x 100 over 784 cut at column 48 differ from the whole
    in 3% of the elements, by 1e-14, where float32 parts match at every cut tried on 1
    thread of its SkylakeX kernels)."""
    count = threads.blas_threads() or 1
    key = (np.dtype(dtype).str, kind, M, N, K, count)
    cut = _verified.get(key)
    if cut is None:
        cut = 0
        if 2.0 * M * N * K >= SPLIT_FLOPS and max(M, N) >= 16:
            rng = np.random.default_rng(M * N + K)
            A = rng.standard_normal((K, M) if kind == TN else (M, K)).astype(dtype)
            B = rng.standard_normal((N, K) if kind == NT else (K, N)).astype(dtype)
            whole, parts = np.empty((M, N), dtype), np.empty((M, N), dtype)
            _whole(kind, A, B, whole)
            cut = next((c for c in cuts(kind, M, N)
                        if _parts_match(kind, A, B, whole, parts, c)), 0)
        _verified[key] = cut
    return cut
