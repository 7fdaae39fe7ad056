"""im2col, col2im and max pooling (Numba), each equal to its reference in :mod:`bnprop.conv`.

Same layout and equations as :mod:`bnprop.conv`: images NHWC (N, H, W, C), the im2col
matrix ``cols`` (N Ho Wo, C k k) with columns ordered ``(c, i, j)``. Each kernel walks the
images ``[n0, n1)`` only, so :func:`bnprop.threads.map_rows` splits a batch over
threads by images (every image's rows of ``cols`` and pixels of ``dX`` belong to one
part, so parts never write the same memory). They move data and add; the sums of
:func:`_col2im` are over the ``k x k`` offsets in the order of the reference, so the two
agree bit for bit. Indexing is scalar: a view per pixel would cost more than its copy.
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
    """Row by row of ``cols``, each written in order (many channels)."""
    _, H, W, C = X.shape
    kk = k * k
    zero = np.zeros(1, X.dtype)[0]
    for n in range(n0, n1):
        for a in range(Ho):
            h0 = a * s - p
            for b in range(Wo):
                w0 = b * s - p
                r = (n * Ho + a) * Wo + b
                if h0 >= 0 and h0 + k <= H and w0 >= 0 and w0 + k <= W:  # no padding
                    for c in range(C):
                        for i in range(k):
                            for j in range(k):
                                cols[r, c * kk + i * k + j] = X[n, h0 + i, w0 + j, c]
                    continue
                for c in range(C):
                    for i in range(k):
                        h = h0 + i
                        for j in range(k):
                            w = w0 + j
                            if 0 <= h < H and 0 <= w < W:
                                cols[r, c * kk + i * k + j] = X[n, h, w, c]
                            else:
                                cols[r, c * kk + i * k + j] = zero


@njit(**JIT_OPTIONS)
def _im2col_columns(X, k, s, p, Ho, Wo, cols, n0, n1):  # pragma: no cover - compiled
    """Column by column within each output row (one channel: short rows of ``cols``)."""
    _, H, W, C = X.shape
    kk = k * k
    zero = np.zeros(1, X.dtype)[0]
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
                    for c in range(C):
                        col = c * kk + i * k + j
                        for b in range(b_lo):
                            cols[r0 + b, col] = zero
                        for b in range(b_lo, b_hi):
                            cols[r0 + b, col] = X[n, h, b * s + j - p, c]
                        for b in range(b_hi, Wo):
                            cols[r0 + b, col] = zero


@njit(**JIT_OPTIONS)
def _col2im(dcols, k, s, p, Ho, Wo, dX, n0, n1):  # pragma: no cover - compiled
    _, H, W, C = dX.shape
    kk = k * k
    for n in range(n0, n1):
        dX[n] = 0
        for i in range(k):  # the reference's order of the k x k additions
            for j in range(k):
                col = i * k + j
                b_lo, b_hi = _valid_b(j, s, p, W, Wo)
                for a in range(Ho):
                    h = a * s + i - p
                    if h < 0 or h >= H:
                        continue
                    r0 = (n * Ho + a) * Wo
                    for b in range(b_lo, b_hi):
                        w = b * s + j - p
                        for c in range(C):
                            dX[n, h, w, c] += dcols[r0 + b, c * kk + col]


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
    for n in range(n0, n1):
        dX[n] = 0
        if s >= k:  # windows do not overlap: one addition per entry of dX at most
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


def _over_images(fn, N: int) -> None:  # type: ignore[no-untyped-def]
    """``fn(n0, n1)`` over the images, split by :func:`bnprop.threads.map_rows`."""
    threads.map_rows(fn, N, min_rows=PART_IMAGES)


def im2col_into(X: np.ndarray, k: int, s: int, p: int, cols: np.ndarray) -> None:
    """``cols`` (N Ho Wo, C k k) of ``X`` (N, H, W, C): :func:`bnprop.conv.im2col`."""
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
