"""bnprop's own float32 GEMM for the small products of a training step.

At a batch of 60 a step's GEMMs are small (the Ioffe net's 11 are 4.7 million
multiply-adds at most), and OpenBLAS runs them far below its peak: it packs both
operands first, and its kernels are the ones its core type names. On this AMD EPYC
(AVX-512) with the environment's ``OPENBLAS_CORETYPE=Haswell``, its AVX2 kernels gave
118 GFLOP/s at ``dW = dZ^T O`` (100 x 784 over 60) and 108 at ``Z = O W^T`` (60 x 100
over 784), one thread; its own SkylakeX kernels 212 and 145. These register tiles of 16
lanes (:mod:`bnprop.kernels._tiles`), without packing, gave 217-227 and 185-234 (1.4 to
2.4x OpenBLAS's Haswell kernels on the other products of that step, 0.8 to 1.05x its
SkylakeX kernels; ``docs/bench.md``). So where :func:`takes` says so, the fast path's
float32 products run here, in compiled code (:func:`bnprop.kernels._cblas.gemm_part`)
and in Python (:func:`matmul`) alike::

    C = A B     (NN)  and  C = A^T B  (TN):  c_ij = fma(A(i, k), B[k, j], c_ij), k = 0 .. K-1
    C = A B^T   (NT):  c_ij = halves-sum over l < 16 of (sum over k = l mod 16, by fma)

Each element's chain of operations is fixed (:mod:`bnprop.kernels._tiles`) whatever tile
holds it, so a part of a product (rows or columns, on any thread) gives the whole one's
bits. They are not always ``np.matmul``'s bits: OpenBLAS sums in its own orders (at the
Ioffe step's shapes its SkylakeX kernels give the same ``dW`` over ``K = 60``, 96.5% of
the same ``dO`` over 100; its Haswell kernels other bits in 5-65% of the elements of
``dW`` and ``dO``); ``Z``'s 16 lanes are more accurate than either (largest error over
``|A| |B|`` 3.1e-8 to 5.4e-8, OpenBLAS's 8.1e-8 to 2.2e-7), and every element is within
rounding of the exact product (``tests/test_tile_gemm.py`` against float64).
``np.matmul`` is the reference.

:func:`takes` (decided on the whole product, fixed for the process): float32, the host
CPU has AVX-512 (Numba compiles for it; a 16-lane vector is then one register),
``M N K < MAX_MNK`` (a product that :mod:`bnprop.kernels.rows` splits over threads stays
with the BLAS, whose packing pays there), and for ``NN``/``TN`` ``K <= MAX_K_OUTER``
(a tile reads ``K`` rows of 64 columns of ``B`` from L1).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bnprop.kernels import _tiles, tile_rule
from bnprop.kernels._atomics import address
from bnprop.kernels._jit import JIT_OPTIONS
from bnprop.kernels.tile_rule import MAX_K_OUTER, MAX_MNK, NN, NT, TN, enabled, takes

_o41, _o42, _o43, _o44 = (_tiles.outer_tile(4, v) for v in (1, 2, 3, 4))
_o11, _o12, _o13, _o14 = (_tiles.outer_tile(1, v) for v in (1, 2, 3, 4))
_d44, _d41 = _tiles.dot_tile(4, 4), _tiles.dot_tile(4, 1)
_d14, _d11 = _tiles.dot_tile(1, 4), _tiles.dot_tile(1, 1)
_W = 4 * _tiles.LANES  # columns of a wide outer tile
__all__ = ["MAX_K_OUTER", "MAX_MNK", "NN", "NT", "TN", "enabled", "matmul", "run", "takes",
           "takes_compiled"]


takes_compiled = njit(**JIT_OPTIONS)(takes)


@njit(**JIT_OPTIONS)
def outer(a, a_rs, a_ks, b, ldb, c, ldc, M, N, K):  # pragma: no cover - compiled
    """``C (M, N) = op(A) B`` at addresses: ``A(i, k)`` at ``a + 4 (i a_rs + k a_ks)``,
    ``B (K, N)`` rows ``ldb`` apart, ``C`` rows ``ldc`` apart (elements)."""
    i = 0
    while i < M:
        four = M - i >= 4
        ar = a + 4 * i * a_rs
        j = 0
        while j < N:  # 64 columns a tile; the last tile 16, 32, 48 or 64, its end masked
            V = min(4, (N - j + _tiles.LANES - 1) // _tiles.LANES)
            last = min(N - j, _W) - (V - 1) * _tiles.LANES
            _outer_tile(four, V, ar, a_rs, a_ks, b + 4 * j, ldb, c + 4 * (i * ldc + j), ldc,
                        K, last)
            j += V * _tiles.LANES
        i += 4 if four else 1


@njit(**JIT_OPTIONS)
def _outer_tile(four, V, a, a_rs, a_ks, b, ldb, c, ldc, K, last):  # pragma: no cover
    """The tile of 4 rows (``four``) or 1 and ``V`` vectors of columns."""
    if four:
        if V == 4:
            _o44(a, a_rs, a_ks, b, ldb, c, ldc, K, last)
        elif V == 3:
            _o43(a, a_rs, a_ks, b, ldb, c, ldc, K, last)
        elif V == 2:
            _o42(a, a_rs, a_ks, b, ldb, c, ldc, K, last)
        else:
            _o41(a, a_rs, a_ks, b, ldb, c, ldc, K, last)
    elif V == 4:
        _o14(a, a_rs, a_ks, b, ldb, c, ldc, K, last)
    elif V == 3:
        _o13(a, a_rs, a_ks, b, ldb, c, ldc, K, last)
    elif V == 2:
        _o12(a, a_rs, a_ks, b, ldb, c, ldc, K, last)
    else:
        _o11(a, a_rs, a_ks, b, ldb, c, ldc, K, last)


@njit(**JIT_OPTIONS)
def dot(a, lda, b, ldb, c, ldc, M, N, K):  # pragma: no cover - compiled
    """``C (M, N) = A B^T`` at addresses: ``A (M, K)``, ``B (N, K)``, ``C`` rows ``lda``,
    ``ldb``, ``ldc`` elements apart."""
    i = 0
    while i < M:
        four = M - i >= 4
        j = 0
        while j < N:
            ar, br, cr = a + 4 * i * lda, b + 4 * j * ldb, c + 4 * (i * ldc + j)
            if N - j >= 4:
                if four:
                    _d44(ar, lda, br, ldb, cr, ldc, K)
                else:
                    _d14(ar, lda, br, ldb, cr, ldc, K)
                j += 4
            else:
                if four:
                    _d41(ar, lda, br, ldb, cr, ldc, K)
                else:
                    _d11(ar, lda, br, ldb, cr, ldc, K)
                j += 1
        i += 4 if four else 1


@njit(**JIT_OPTIONS)
def run(kind, a, lda, b, ldb, c, ldc, M, N, K):  # pragma: no cover - compiled
    """The product of ``kind`` at addresses, in row-major storage: ``A`` stored ``(M, K)``
    (NT, NN) or ``(K, M)`` (TN), ``B`` stored ``(N, K)`` (NT) or ``(K, N)``; leading
    dimensions in elements."""
    if kind == NT:
        dot(a, lda, b, ldb, c, ldc, M, N, K)
    elif kind == TN:
        outer(a, 1, lda, b, ldb, c, ldc, M, N, K)
    else:
        outer(a, lda, 1, b, ldb, c, ldc, M, N, K)


def _stored(x: np.ndarray) -> tuple[bool, int] | None:
    """``(transposed, leading dimension)`` of a float32 matrix view ``(p, q)`` whose rows
    (``False``) or columns (``True``) are contiguous and apart, else None."""
    (p, q), (s0, s1) = x.shape, x.strides
    if (q == 1 or s1 == 4) and (p == 1 or (s0 % 4 == 0 and s0 >= 4 * q)):
        return False, s0 // 4 if p > 1 else q
    if (p == 1 or s0 == 4) and (q == 1 or (s1 % 4 == 0 and s1 >= 4 * p)):
        return True, s1 // 4 if q > 1 else p
    return None


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray, rows: int | None = None,
           ) -> np.ndarray:
    """``out = a @ b`` (``a`` (m, k), ``b`` (k, n), views of float32 matrices) through the
    tiles when :func:`takes` the whole product (``rows``: its rows when ``a`` holds a part
    of them; default ``a``'s), else ``np.matmul``."""
    m, k = a.shape
    n = b.shape[1] if b.ndim == 2 else -1
    if (a.dtype != np.float32 or b.dtype != np.float32 or out.dtype != np.float32
            or b.ndim != 2 or b.shape[0] != k or out.shape != (m, n) or m == 0 or n == 0):
        return np.matmul(a, b, out=out)
    sa, sb, sc = _stored(a), _stored(b), _stored(out)
    if sa is None or sb is None or sc is None or sc[0]:
        return np.matmul(a, b, out=out)
    kind = NT if (not sa[0] and sb[0]) else TN if (sa[0] and not sb[0]) else \
        NN if not (sa[0] or sb[0]) else -1
    whole = m if rows is None else rows
    if (kind < 0 or not takes(4, kind, whole, n, k, tile_rule.enabled())
            or not (a.flags.aligned and b.flags.aligned and out.flags.aligned)
            or np.may_share_memory(out, a) or np.may_share_memory(out, b)):
        return np.matmul(a, b, out=out)
    _run_views(kind, a, sa[1], b, sb[1], out, sc[1], m, n, k)
    return out


@njit(**JIT_OPTIONS)
def _run_views(kind, A, lda, B, ldb, C, ldc, M, N, K):  # pragma: no cover - compiled
    run(kind, address(A), lda, address(B), ldb, address(C), ldc, M, N, K)
