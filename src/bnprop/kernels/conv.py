"""im2col, col2im and max pooling (Numba), each equal to its reference in :mod:`bnprop.conv`.

Same layout and equations as :mod:`bnprop.conv`: images NHWC (N, H, W, C), the im2col
matrix ``cols`` (N Ho Wo, C k k) with columns ordered ``(c, i, j)``. Each kernel walks the
images ``[n0, n1)`` only, so :func:`bnprop.threads.map_rows` splits a batch over
threads by images (every image's rows of ``cols`` and pixels of ``dX`` belong to one
part, so parts never write the same memory). They move data and add; the sums of
:func:`_col2im` are over the ``k x k`` offsets in the order of the reference, so the two
agree bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bnprop import threads
from bnprop.kernels._jit import JIT_OPTIONS

#: Minimum images of one part of a threaded kernel pass.
PART_IMAGES = 16


@njit(**JIT_OPTIONS)
def _im2col(X, k, s, p, Ho, Wo, cols, n0, n1):  # pragma: no cover - compiled
    _, H, W, C = X.shape
    kk = k * k
    zero = np.zeros(1, X.dtype)[0]
    for n in range(n0, n1):
        for a in range(Ho):
            for b in range(Wo):
                row = cols[(n * Ho + a) * Wo + b]
                for i in range(k):
                    h = a * s + i - p
                    for j in range(k):
                        w = b * s + j - p
                        col = i * k + j
                        if 0 <= h < H and 0 <= w < W:
                            x = X[n, h, w]
                            for c in range(C):
                                row[c * kk + col] = x[c]
                        else:
                            for c in range(C):
                                row[c * kk + col] = zero


@njit(**JIT_OPTIONS)
def _col2im(dcols, k, s, p, Ho, Wo, dX, n0, n1):  # pragma: no cover - compiled
    _, H, W, C = dX.shape
    kk = k * k
    for n in range(n0, n1):
        dX[n] = 0
        for i in range(k):  # the reference's order of the k x k additions
            for j in range(k):
                col = i * k + j
                for a in range(Ho):
                    h = a * s + i - p
                    if h < 0 or h >= H:
                        continue
                    for b in range(Wo):
                        w = b * s + j - p
                        if w < 0 or w >= W:
                            continue
                        row = dcols[(n * Ho + a) * Wo + b]
                        d = dX[n, h, w]
                        for c in range(C):
                            d[c] += row[c * kk + col]


@njit(**JIT_OPTIONS)
def _maxpool_forward(X, k, s, Y, arg, n0, n1):  # pragma: no cover - compiled
    _, Ho, Wo, C = Y.shape
    for n in range(n0, n1):
        for a in range(Ho):
            for b in range(Wo):
                y = Y[n, a, b]
                g = arg[n, a, b]
                x0 = X[n, a * s, b * s]
                for c in range(C):
                    y[c] = x0[c]
                    g[c] = 0
                for i in range(k):
                    for j in range(k):
                        if i == 0 and j == 0:
                            continue
                        x = X[n, a * s + i, b * s + j]
                        for c in range(C):
                            if x[c] > y[c]:  # strict: the first maximum wins
                                y[c] = x[c]
                                g[c] = i * k + j


@njit(**JIT_OPTIONS)
def _maxpool_backward(dY, arg, k, s, dX, n0, n1):  # pragma: no cover - compiled
    _, Ho, Wo, C = dY.shape
    for n in range(n0, n1):
        dX[n] = 0
        if s >= k:  # windows do not overlap: one addition per entry of dX at most
            for a in range(Ho):
                for b in range(Wo):
                    d = dY[n, a, b]
                    g = arg[n, a, b]
                    for c in range(C):
                        off = g[c]
                        dX[n, a * s + off // k, b * s + off % k, c] += d[c]
            continue
        for off in range(k * k):  # overlapping: the reference's order of the additions
            i, j = off // k, off % k
            for a in range(Ho):
                for b in range(Wo):
                    d = dY[n, a, b]
                    g = arg[n, a, b]
                    x = dX[n, a * s + i, b * s + j]
                    for c in range(C):
                        if g[c] == off:
                            x[c] += d[c]


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
