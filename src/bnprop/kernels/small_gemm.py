"""``Z = O W^T`` of a small float32 batch in column blocks that OpenBLAS's small-matrix
kernel takes: faster, on the cores that have that kernel, and rounded another way.

OpenBLAS (``SMALL_MATRIX_OPT``) computes a GEMM without packing its operands when it
"permits" the shape. For row-major ``C = A B^T`` (column-major ``T, N``) on its SkylakeX
kernels (which this AMD EPYC with AVX-512 gets too), measured on NumPy's scipy-openblas
0.3.31: ``M N K <= 10^6``, ``M N <= 1200`` and ``K >= 32``. Otherwise it packs both
operands first, which at a batch of 60 costs about as much as the arithmetic. Measured,
float32, 1 thread, ``Z`` of 60 x 100 over 784 (the Ioffe net's first layer): 129 us in
one call, 92 us as five calls of 20 columns. Over 200 columns (one call's time / the
blocks'): 1.37x at ``M = 60, K = 784``, 1.15x at ``K = 256``, 0.93x at ``K = 128``;
1.7x at ``M = 32``, 2.4x at ``M = 16`` (``K = 784``). float64 gains less and not
everywhere (0.9-1.2x at ``M = 60``): it keeps one call.

The blocks change the numbers: the small kernel sums each dot product in another order
than the packed one (in 92% of the elements of that ``Z``, by up to 4e-2 relative where
the sum nearly cancels; against float64 its largest error is 1.6e-5, the packed call's
8.2e-5). Every element the small kernel computes is the same whatever its block's place
and width and the call's rows (two or more), as long as the block is a multiple of 4
columns wide; in a narrower tail it depends on the row count (measured: every width 1
to 20 against every row count 2 to 60). So the blocks, and any part of them that a
thread takes, give one result. To keep it one result:

* the width is decided on the whole product (:func:`width`), never on a part of it:
  every caller of a part passes the whole one's rows; the blocks sit at multiples of
  the width of the whole ``C``, a multiple of 4, and ``N`` is one too, so every block
  and every piece of one that a part cut at a multiple of 4 takes is 4k columns wide;
* a product big enough to be split over threads by rows (``M N K`` at least
  :data:`bnprop.kernels.rows.GEMM_PART_FLOPS`: two parts of that many flops) is never
  blocked (:data:`MAX_MNK` is that bound), so the thread count
  never decides between the two kernels;
* the compiled calls (:func:`bnprop.kernels._cblas.gemm_part`) and NumPy's
  (:func:`matmul_nt`) cut the same blocks.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from bnprop.kernels import tile_rule

#: OpenBLAS cores whose kernels :func:`width` is measured on (``openblas_get_corename``).
CORES = ("SkylakeX", "Cooperlake", "SapphireRapids")
#: The small kernel's limits for row-major ``A B^T`` on those cores.
SMALL_MNK, SMALL_MN = 1_000_000, 1200
#: Below this ``K`` the blocks are not faster (measured: 0.93x at 128, 1.07x at 192).
MIN_K = 256
#: Narrower blocks (a batch over 75 rows) are not faster: 0.95x at 128 x 256.
MIN_WIDTH = 16
#: From here on ``rows.gemm`` may split the rows over threads (``M N K`` multiply-adds:
#: ``rows.GEMM_PART_FLOPS``, held equal by the tests).
MAX_MNK = 16_000_000


@cache
def enabled() -> bool:
    """Whether NumPy's OpenBLAS runs one of :data:`CORES` here (fixed for the process)."""
    from bnprop.kernels import blas

    return blas.corename() in CORES


def width(itemsize: int, M: int, N: int, K: int, on: bool) -> int:
    """Columns per call of ``C (M, N) = A (M, K) B^T`` in blocks, 0 for one call.

    ``on``: :func:`enabled`. Blocks of a multiple of 4 columns, as wide as the small
    kernel takes, for float32 (``itemsize`` 4) products that it does not already take
    whole, with ``K >= MIN_K``, ``N`` a multiple of 4, a width of at least ``MIN_WIDTH``
    and fewer than ``MAX_MNK`` multiply-adds. Compiled too (:mod:`bnprop.kernels._cblas`).
    """
    if not on or itemsize != 4 or M < 2 or K < MIN_K or M * N * K >= MAX_MNK:
        return 0
    if M * N * K <= SMALL_MNK and M * N <= SMALL_MN:
        return 0
    if N % 4:  # a block's last columns, fewer than 4, would depend on the row count
        return 0
    w = min(SMALL_MNK // (M * K), SMALL_MN // M) // 4 * 4
    return w if MIN_WIDTH <= w < N else 0


def matmul_nt(A: np.ndarray, B: np.ndarray, out: np.ndarray, rows: int | None = None,
              ) -> np.ndarray:
    """``out = A @ B.T`` (``A`` (m, K), ``B`` (N, K)) through NumPy, in :func:`width`'s
    column blocks of the whole product; ``rows``: the whole product's rows when ``A`` is
    a part of them (default: ``A``'s)."""
    M = A.shape[0] if rows is None else rows
    if tile_rule.takes(out.dtype.itemsize, tile_rule.NT, M, B.shape[0], A.shape[1],
                       tile_rule.enabled()):
        from bnprop.kernels import tile_gemm  # compiled code: imported when first taken

        return tile_gemm.matmul(A, B.T, out, M)
    w = width(out.dtype.itemsize, M, B.shape[0], A.shape[1], enabled())
    if w == 0 or out.shape != (A.shape[0], B.shape[0]):  # a misfit: NumPy's error
        return np.matmul(A, B.T, out=out)
    if A.shape[0] == 1:  # NumPy takes one row as a GEMV: two rows keep the kernel
        two = np.empty((2, B.shape[0]), out.dtype)
        matmul_nt(np.concatenate([A, A]), B, two, M)
        out[...] = two[:1]
        return out
    for s in range(0, B.shape[0], w):
        np.matmul(A, B[s:s + w].T, out=out[:, s:s + w])
    return out
