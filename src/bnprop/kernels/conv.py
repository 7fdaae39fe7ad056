"""im2col, col2im and max pooling (Numba), each equal to its reference in :mod:`bnprop.conv`.

Same layout and equations as :mod:`bnprop.conv`: images NHWC (N, H, W, C), the im2col
matrix ``cols`` (N Ho Wo, k k C) with columns ordered ``(i, j, c)``. Each kernel walks the
images ``[n0, n1)`` only, so :func:`bnprop.threads.map_rows` splits a batch over
threads by images (every image's rows of ``cols`` and pixels of ``dX`` belong to one
part, so parts never write the same memory). They move data and add; :func:`_col2im`
adds the terms of each entry of ``dX`` in the reference's order (output pixels
row-major), so the two agree bit for bit. Indexing is scalar: a view per pixel would
cost more than the copy of its values.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bnprop import threads
from bnprop.kernels._jit import JIT_OPTIONS

#: Minimum images of one part of a threaded kernel pass.
PART_IMAGES = 16


@njit(**JIT_OPTIONS)
def _valid_b(j, s, p, W, Wo):  # pragma: no cover - compiled
    """Output columns ``b`` whose input column ``b s + j - p`` lies in ``[0, W)``."""
    b_lo = max(0, (p - j + s - 1) // s)
    b_hi = min(Wo, (W - 1 + p - j) // s + 1)
    return b_lo, max(b_lo, b_hi)


@njit(**JIT_OPTIONS)
def _im2col(X, k, s, p, Ho, Wo, cols, n0, n1):  # pragma: no cover - compiled
    if X.shape[3] > 1:
        _im2col_rows(X, k, s, p, Ho, Wo, cols, n0, n1)
    else:
        _im2col_columns(X, k, s, p, Ho, Wo, cols, n0, n1)


@njit(**JIT_OPTIONS)
def _im2col_rows(X, k, s, p, Ho, Wo, cols, n0, n1):  # pragma: no cover - compiled
    """Row by row of ``cols``, each ``(i, j)`` a run of ``C`` values (many channels)."""
    _, H, W, C = X.shape
    zero = np.zeros(1, X.dtype)[0]
    for n in range(n0, n1):
        for a in range(Ho):
            for b in range(Wo):
                r = (n * Ho + a) * Wo + b
                for i in range(k):
                    h = a * s + i - p
                    for j in range(k):
                        w = b * s + j - p
                        base = (i * k + j) * C
                        if 0 <= h < H and 0 <= w < W:
                            for c in range(C):
                                cols[r, base + c] = X[n, h, w, c]
                        else:
                            for c in range(C):
                                cols[r, base + c] = zero


@njit(**JIT_OPTIONS)
def _im2col_columns(X, k, s, p, Ho, Wo, cols, n0, n1):  # pragma: no cover - compiled
    """Column by column within each output row (one channel: short rows of ``cols``),
    each column a view written through an unsigned index: a signed one from bounds LLVM
    cannot prove >= 0 keeps NumPy's negative-index test in every access (one channel,
    128 x 28 x 28, k = 3, one thread: 1.46 -> 0.90 ms, the same values)."""
    _, H, W, C = X.shape
    zero = np.zeros(1, X.dtype)[0]
    us, up = np.uint64(s), np.uint64(p)
    for n in range(n0, n1):  # branch-free inner loops over b
        for a in range(Ho):
            r0 = (n * Ho + a) * Wo
            for i in range(k):
                h = a * s + i - p
                inside = 0 <= h < H
                for j in range(k):
                    b_lo, b_hi = _valid_b(j, s, p, W, Wo)
                    if not inside:
                        b_lo = b_hi = Wo
                    uj = np.uint64(j)
                    for c in range(C):
                        out = cols[r0:r0 + Wo, (i * k + j) * C + c]
                        for b in range(np.uint64(b_lo)):
                            out[b] = zero
                        if b_lo < b_hi:
                            row = X[n, h, :, c]
                            for b in range(np.uint64(b_lo), np.uint64(b_hi)):
                                out[b] = row[b * us + uj - up]  # b s + j - p >= 0 here
                        for b in range(np.uint64(b_hi), np.uint64(Wo)):
                            out[b] = zero


@njit(**JIT_OPTIONS)
def _col2im(dcols, k, s, p, Ho, Wo, dX, n0, n1):  # pragma: no cover - compiled
    _, H, W, C = dX.shape
    for n in range(n0, n1):
        dX[n] = 0
        for a in range(Ho):  # output pixels in row-major order: the reference's order
            for b in range(Wo):
                r = (n * Ho + a) * Wo + b
                for i in range(k):
                    h = a * s + i - p
                    if h < 0 or h >= H:
                        continue
                    for j in range(k):
                        w = b * s + j - p
                        if w < 0 or w >= W:
                            continue
                        base = (i * k + j) * C
                        for c in range(C):
                            dX[n, h, w, c] += dcols[r, base + c]


@njit(**JIT_OPTIONS)
def _maxpool_forward(X, k, s, Y, arg, n0, n1):  # pragma: no cover - compiled
    _, Ho, Wo, C = Y.shape
    for n in range(n0, n1):
        for a in range(Ho):
            for b in range(Wo):
                for c in range(C):
                    Y[n, a, b, c] = X[n, a * s, b * s, c]
                    arg[n, a, b, c] = 0
                for i in range(k):
                    for j in range(k):
                        if i == 0 and j == 0:
                            continue
                        for c in range(C):
                            x = X[n, a * s + i, b * s + j, c]
                            if x > Y[n, a, b, c]:  # strict: the first maximum wins
                                Y[n, a, b, c] = x
                                arg[n, a, b, c] = i * k + j


@njit(**JIT_OPTIONS)
def _maxpool_backward(dY, arg, k, s, dX, n0, n1):  # pragma: no cover - compiled
    _, Ho, Wo, C = dY.shape
    _, H, W, _ = dX.shape
    zero = np.zeros(1, dX.dtype)[0]
    for n in range(n0, n1):
        if s == k:  # windows tile dX: each entry written once, dY or 0
            if Ho * k != H or Wo * k != W:
                dX[n] = 0  # the rows and columns no window covers
            for a in range(Ho):
                for b in range(Wo):
                    for i in range(k):
                        for j in range(k):
                            off = i * k + j
                            for c in range(C):
                                dX[n, a * k + i, b * k + j, c] = (
                                    dY[n, a, b, c] if arg[n, a, b, c] == off else zero)
            continue
        dX[n] = 0
        if s > k:  # windows do not overlap: one addition per entry of dX at most
            for a in range(Ho):
                for b in range(Wo):
                    for c in range(C):
                        off = arg[n, a, b, c]
                        dX[n, a * s + off // k, b * s + off % k, c] += dY[n, a, b, c]
            continue
        for off in range(k * k):  # overlapping: the reference's order of the additions
            i, j = off // k, off % k
            for a in range(Ho):
                for b in range(Wo):
                    for c in range(C):
                        if arg[n, a, b, c] == off:
                            dX[n, a * s + i, b * s + j, c] += dY[n, a, b, c]


@njit(**JIT_OPTIONS)
def _transpose_images(src, dst, n0, n1):  # pragma: no cover - compiled
    """``dst[n, i, j] = src[n, j, i]`` for the images ``[n0, n1)``, ``dst`` written in
    order (pixels by channels to channels by pixels, or back)."""
    _, I, J = dst.shape
    for n in range(n0, n1):
        for i in range(I):
            for j in range(J):
                dst[n, i, j] = src[n, j, i]


def _over_images(fn, N: int) -> None:  # type: ignore[no-untyped-def]
    """``fn(n0, n1)`` over the images, split by :func:`bnprop.threads.map_rows`."""
    threads.map_rows(fn, N, min_rows=PART_IMAGES)


def im2col_into(X: np.ndarray, k: int, s: int, p: int, cols: np.ndarray) -> None:
    """``cols`` (N Ho Wo, k k C) of ``X`` (N, H, W, C): :func:`bnprop.conv.im2col`."""
    N, H, W, _ = X.shape
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    _over_images(lambda n0, n1: _im2col(X, k, s, p, Ho, Wo, cols, n0, n1), N)


def col2im_into(dcols: np.ndarray, k: int, s: int, p: int, dX: np.ndarray) -> None:
    """``dX`` (N, H, W, C) from ``dcols``: :func:`bnprop.conv.col2im`."""
    N, H, W, _ = dX.shape
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    _over_images(lambda n0, n1: _col2im(dcols, k, s, p, Ho, Wo, dX, n0, n1), N)


def maxpool_forward_into(X: np.ndarray, k: int, s: int, Y: np.ndarray,
                         arg: np.ndarray) -> None:
    """``Y`` and the int8 window offsets ``arg``: :func:`bnprop.conv.maxpool_forward`."""
    _over_images(lambda n0, n1: _maxpool_forward(X, k, s, Y, arg, n0, n1), X.shape[0])


def maxpool_backward_into(dY: np.ndarray, arg: np.ndarray, k: int, s: int,
                          dX: np.ndarray) -> None:
    """``dX``: :func:`bnprop.conv.maxpool_backward`."""
    _over_images(lambda n0, n1: _maxpool_backward(dY, arg, k, s, dX, n0, n1), dX.shape[0])


def flatten_into(X: np.ndarray, Y: np.ndarray) -> None:
    """``Y`` (N, C H W) of NHWC images ``X`` in PyTorch's (C, H, W) order: the copy
    ``np.copyto(Y.reshape(N, C, H, W), X.transpose(0, 3, 1, 2))`` (the reference), split
    by images; the compiled loop writes ``Y`` in order (0.05 against NumPy's 0.07 ms for
    128 x 7 x 7 x 32 on one thread)."""
    N, H, W, C = X.shape
    X3, Y3 = X.reshape(N, H * W, C), Y.reshape(N, C, H * W)
    _over_images(lambda n0, n1: _transpose_images(X3, Y3, n0, n1), N)


def unflatten_into(dY: np.ndarray, dX: np.ndarray) -> None:
    """``dX`` (N, H, W, C) from ``dY`` (N, C H W): the inverse of :func:`flatten_into`
    (reference ``np.copyto(dX, dY.reshape(N, C, H, W).transpose(0, 2, 3, 1))``)."""
    N, H, W, C = dX.shape
    Y3, X3 = dY.reshape(N, C, H * W), dX.reshape(N, H * W, C)
    _over_images(lambda n0, n1: _transpose_images(Y3, X3, n0, n1), N)


def maxpool_forward_images(X: np.ndarray, k: int, s: int, Y: np.ndarray, arg: np.ndarray,
                           n0: int, n1: int) -> None:
    """:func:`maxpool_forward_into` of the images ``[n0, n1)`` only, on this thread (a
    caller that splits the batch itself)."""
    _maxpool_forward(X, k, s, Y, arg, n0, n1)


def maxpool_backward_images(dY: np.ndarray, arg: np.ndarray, k: int, s: int, dX: np.ndarray,
                            n0: int, n1: int) -> None:
    """:func:`maxpool_backward_into` of the images ``[n0, n1)`` only, on this thread."""
    _maxpool_backward(dY, arg, k, s, dX, n0, n1)


#: Bytes of ``dcols`` that :func:`dX_images` forms at a time: a block that stays in a
#: core's L2 cache between its GEMM and its col2im.
DX_BLOCK_BYTES = 1 << 20
#: Multiply-adds a block's GEMM has at least: OpenBLAS computes smaller products
#: (``M N K <= 10^6``) in its small-matrix kernels, which round them another way.
DX_BLOCK_MNK = 1_000_000


def dX_block_images(unit: int, n_in: int, n_out: int, itemsize: int) -> int:
    """Images per block of :func:`dX_images`: ``dcols`` of about
    :data:`DX_BLOCK_BYTES`, and a GEMM of more than :data:`DX_BLOCK_MNK` multiply-adds
    (``unit``: rows of one image, ``Ho Wo``)."""
    by_bytes = DX_BLOCK_BYTES // max(1, unit * n_in * itemsize)
    by_mnk = DX_BLOCK_MNK // max(1, unit * n_in * n_out) + 1
    return max(1, by_bytes, by_mnk)


def dX_images(dZ: np.ndarray, W2: np.ndarray, k: int, s: int, p: int, dX: np.ndarray,
              n0: int, n1: int, buffer: np.ndarray) -> None:
    """``dX`` of the images ``[n0, n1)`` of a convolution's backward pass, on this
    thread: ``dcols = dZ W2`` (``dZ`` (N Ho Wo, C_out), ``W2`` (C_out, k k C_in)), then
    ``dX = col2im(dcols)``, in blocks through ``buffer`` (:func:`dX_buffer_rows` rows of
    ``dcols`` at least): the images cut into as many equal blocks as hold
    :func:`dX_block_images` images each. Each block's ``dcols`` is read back from cache
    instead of memory (conv 16 -> 32 channels, 3 x 3, 64 images of 14 x 14, one thread:
    1.62 -> 1.49 ms), and the batch's whole ``dcols`` is never stored. The values are
    the whole ``dcols``': each of its rows is one row of ``dZ`` times ``W2``, which
    OpenBLAS's packed GEMM on its SkylakeX kernels rounds the same way whatever rows it
    computes beside it (the blocks stay on it), and :func:`_col2im` adds the terms of an
    image in its order. (Its Haswell kernels, ``OPENBLAS_CORETYPE=Haswell``, round a row
    by its place in a tile of 24 rows: there a block's rows equal the whole product's to
    rounding.)"""
    _, H, W, _ = dX.shape
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    unit = Ho * Wo
    blocks = _dX_blocks(unit, W2.shape[1], W2.shape[0], dX.dtype.itemsize, n1 - n0)
    for b0, b1 in threads.row_parts(n1 - n0, blocks):
        dcols = buffer[:(b1 - b0) * unit]
        np.matmul(dZ[(n0 + b0) * unit:(n0 + b1) * unit], W2, out=dcols)
        _col2im(dcols, k, s, p, Ho, Wo, dX[n0 + b0:n0 + b1], 0, b1 - b0)


def dX_buffer_rows(unit: int, n_in: int, n_out: int, itemsize: int, images: int) -> int:
    """Rows of ``dcols`` the largest block of :func:`dX_images` over ``images`` images
    holds (``unit``: rows of one image)."""
    return -(-images // _dX_blocks(unit, n_in, n_out, itemsize, images)) * unit


def _dX_blocks(unit: int, n_in: int, n_out: int, itemsize: int, images: int) -> int:
    """How many equal blocks :func:`dX_images` cuts ``images`` images into."""
    return max(1, images // dX_block_images(unit, n_in, n_out, itemsize))
