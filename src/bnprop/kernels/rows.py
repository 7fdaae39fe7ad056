"""Row parts and chunks: how a batch's work is split over bnprop's threads and kept in cache.

A BN layer's work is row-wise except for per-feature reductions, so rows are the unit of
every split (:func:`bnprop.threads.map_rows`): each thread takes a contiguous part of the
rows, runs the GEMMs (OpenBLAS on 1 thread) and the kernels of its part, and the per-part
reductions are merged in row order (Chan's combination for moments, sums for the rest),
exactly as a distributed run merges its ranks. Large batches walk each part in chunks of
:data:`CHUNK_BYTES`, so what a GEMM writes is read from cache by the kernel that follows
it (and the reverse).
"""

from __future__ import annotations

import math

import numpy as np

from bnprop import threads
from bnprop.kernels import small_gemm, tile_gemm

#: Minimum floating-point operations of one part of a split GEMM (smaller GEMMs run whole:
#: handing a part to a worker thread costs 25-50 us, a 16 MFLOP part takes ~0.15 ms). A
#: product is split from ``M N K >= GEMM_PART_FLOPS`` on (two parts of that many flops).
#: 32 MFLOP before: the CNN's Linear 1568 -> 128 at batch 128 (25.7 M multiply-adds a
#: GEMM) now splits its three GEMMs, 0.05-0.32 ms less a step (median 0.2 of 16.3, four
#: in-process A/B runs), the same bits.
GEMM_PART_FLOPS = 16_000_000
#: Minimum bytes of ``Z`` in one part of a split kernel pass (a part must outweigh the
#: 25-50 us of handing it to a worker thread).
KERNEL_PART_BYTES = 1 << 19
#: From ``2 * KERNEL_PART_ROWS`` rows on, each part walks its rows in chunks.
KERNEL_PART_ROWS = 2048
#: Bytes of a chunk of ``Z`` rows: a chunk stays in L2 between the GEMM writing it and the
#: kernel reading it (forward), and between the kernel writing ``dZ`` and the GEMMs.
CHUNK_BYTES = 1 << 20


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = a @ b`` into ``out`` (m, n), its rows split over :func:`bnprop.threads.map_rows`.

    ``a`` (m, k) may be a transposed view; each part computes ``out[r0:r1] = a[r0:r1] @ b``.
    Unsplit, a ``b`` that is the transpose of a C-contiguous array goes through
    :func:`bnprop.kernels.small_gemm.matmul_nt` (a split product is never blocked there).
    """
    m, k = a.shape
    n = b.shape[1]
    min_rows = max(1, math.ceil(GEMM_PART_FLOPS / max(1, 2 * k * n)))
    if m < 2 * min_rows or threads.num_threads() == 1:  # one part: no map_rows call
        if b.T.flags.c_contiguous and not b.flags.c_contiguous:  # a B^T: maybe in blocks
            return small_gemm.matmul_nt(a, b.T, out)
        return tile_gemm.matmul(a, b, out)

    def part(start: int, stop: int) -> None:
        tile_gemm.matmul(a[start:stop], b, out[start:stop], m)

    threads.map_rows(part, m, min_rows=min_rows)
    return out


#: Elements of a product's output up to which ``np.matmul`` keeps the GIL (NumPy releases
#: it for a loop of more than 500; measured: 496 and 500 outputs ran one thread at a time,
#: 510 and 512 side by side).
MATMUL_GIL_OUTPUT = 500


def dW_into(dZ: np.ndarray, O: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = dZ^T O`` (a chunk's term of ``dW``); when ``out`` is as small as
    :data:`MATMUL_GIL_OUTPUT`, through ``np.dot``, which releases the GIL for its BLAS
    call whatever the size. ``np.matmul`` keeps it for such outputs, so two threads'
    parts ran their ``dW`` terms one at a time: 100 products ``(6944 x 16)^T (6944 x 9)``
    (a first convolution's) took 3.3 ms on one thread and 6.7 on two at once through
    ``np.matmul``, 3.3 through ``np.dot``. For ``dZ^T O`` ``np.dot`` makes the same BLAS
    call: the same bits (tested) at the same speed on one thread. Larger outputs keep
    ``np.matmul`` (``np.dot`` was up to 2% slower on some). ``out``: C-contiguous, of
    ``dZ``'s dtype."""
    if tile_gemm.takes(out.dtype.itemsize, tile_gemm.TN, out.shape[0], out.shape[1],
                       dZ.shape[0], tile_gemm.enabled()):
        return tile_gemm.matmul(dZ.T, O, out)
    if out.size <= MATMUL_GIL_OUTPUT:
        return np.dot(dZ.T, O, out=out)
    return np.matmul(dZ.T, O, out=out)


def part_rows(n: int, itemsize: int) -> int:
    """Minimum rows of a kernel part: :data:`KERNEL_PART_BYTES` of an ``(m, n)`` array."""
    return max(1, KERNEL_PART_BYTES // max(1, n * itemsize))


def chunk_rows(n: int, itemsize: int) -> int:
    """Rows of a chunk: :data:`CHUNK_BYTES` of an ``(m, n)`` array."""
    return max(1, CHUNK_BYTES // max(1, n * itemsize))


def chunks(start: int, stop: int, rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` in consecutive ranges of ``rows`` rows (the last may be shorter)."""
    return [(c0, min(stop, c0 + rows)) for c0 in range(start, stop, rows)]


def unsplit(m: int, n: int, itemsize: int) -> bool:
    """Whether the kernel passes over ``m`` rows of an ``(m, n)`` array run in one part and
    one chunk: fewer than ``2 * KERNEL_PART_ROWS`` rows, and one thread or fewer than two
    parts' worth of :data:`KERNEL_PART_BYTES`."""
    if m >= 2 * KERNEL_PART_ROWS:
        return False
    return threads.num_threads() == 1 or m // part_rows(n, itemsize) < 2

