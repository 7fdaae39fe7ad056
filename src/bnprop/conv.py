"""Convolution and max-pooling as matrices: the NumPy reference of :mod:`bnprop.kernels.conv`.

Images are channels-last inside bnprop, ``X`` (N, H, W, C) (NHWC); users and PyTorch see
NCHW, converted at the boundary (:func:`to_nhwc`, :func:`to_nchw`). A convolution with
``k x k`` kernels, stride ``s`` and zero padding ``p`` is a GEMM on the im2col matrix::

    Ho = (H + 2p - k) // s + 1,   Wo = (W + 2p - k) // s + 1,   m = N Ho Wo
    cols[(n, a, b), (i, j, c)] = Xpad[n, a s + i, b s + j, c]          (m, k k C)
    Z = cols W2^T (+ b)            W2 = weight_matrix(W)                (m, C_out)

The columns are ordered ``(i, j, c)``: each ``(i, j)`` block is a contiguous run of the
NHWC input, so im2col and col2im copy runs of ``C`` values. ``W2`` is PyTorch's weight
``W`` (C_out, C, k, k) with its axes in that order (a copy of ``C_out k k C`` values).
The rows of ``Z`` are the ``(n, a, b)`` pixels in NHWC order, so ``Z`` is the (m, n)
row-major layout of the batch-norm kernels with ``m = N Ho Wo``. Backward, with ``dZ``
(m, C_out)::

    dW2   = dZ^T cols,  dW = weight_from_matrix(dW2)                   (C_out, k k C)
    db    = sum_rows(dZ)
    dcols = dZ W2                                                      (m, k k C)
    dX    = col2im(dcols): dX[n, a s + i - p, b s + j - p, c] += dcols[(n, a, b), (i, j, c)]

``col2im`` adds the terms of each entry of ``dX`` in the order of the output pixels
``(n, a, b)``, row-major: the offsets ``(i, j)`` in decreasing order.

Max pooling (window ``k``, stride ``s``, no padding) keeps, per window and channel, the
first largest value in row-major window order (PyTorch's choice on ties), and sends the
gradient to it::

    Y[n, a, b, c]  = max_{i, j} X[n, a s + i, b s + j, c]
    dX[n, a s + i*, b s + j*, c] += dY[n, a, b, c]          (i*, j*) = first argmax
"""

from __future__ import annotations

import numpy as np

from bnprop._validate import InputError


def out_size(size: int, kernel: int, stride: int, padding: int, name: str = "X") -> int:
    """``(size + 2 padding - kernel) // stride + 1``; one line when the kernel does not fit."""
    padded = size + 2 * padding
    if kernel > padded:
        raise InputError(
            f"{name}: kernel_size {kernel} is larger than the padded input ({size} + 2*"
            f"{padding} = {padded}); give a larger input or a smaller kernel.")
    return (padded - kernel) // stride + 1


def to_nhwc(X: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, H, W, C), C-contiguous (no copy when already so, e.g. C = 1)."""
    return np.ascontiguousarray(X.transpose(0, 2, 3, 1))


def to_nchw(X: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, C, H, W), C-contiguous."""
    return np.ascontiguousarray(X.transpose(0, 3, 1, 2))


def weight_matrix(W: np.ndarray) -> np.ndarray:
    """PyTorch's weight (C_out, C, k, k) as the GEMM's ``W2`` (C_out, k k C), a copy."""
    return np.ascontiguousarray(W.transpose(0, 2, 3, 1)).reshape(W.shape[0], -1)


def weight_from_matrix(W2: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`weight_matrix`: ``W2`` (C_out, k k C) as ``shape``
    (C_out, C, k, k), a view."""
    C_out, C, k, _ = shape
    return W2.reshape(C_out, k, k, C).transpose(0, 3, 1, 2)


def _windows(Xpad: np.ndarray, k: int, s: int, Ho: int, Wo: int) -> np.ndarray:
    """View (N, Ho, Wo, C, k, k) of the ``k x k`` windows of ``Xpad`` (N, Hp, Wp, C)."""
    N, _, _, C = Xpad.shape
    sn, sh, sw, sc = Xpad.strides
    return np.lib.stride_tricks.as_strided(
        Xpad, (N, Ho, Wo, C, k, k), (sn, sh * s, sw * s, sc, sh, sw), writeable=False)


def im2col(X: np.ndarray, k: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """``cols`` (N Ho Wo, k k C) of ``X`` (N, H, W, C) (module docstring)."""
    N, H, W, C = X.shape
    Ho, Wo = out_size(H, k, stride, padding), out_size(W, k, stride, padding)
    Xpad = np.pad(X, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    win = _windows(Xpad, k, stride, Ho, Wo).transpose(0, 1, 2, 4, 5, 3)  # (.., i, j, c)
    return np.ascontiguousarray(win).reshape(N * Ho * Wo, k * k * C)


def col2im(dcols: np.ndarray, shape: tuple[int, int, int, int], k: int, stride: int = 1,
           padding: int = 0) -> np.ndarray:
    """The adjoint of :func:`im2col`: ``dX`` (N, H, W, C) from ``dcols`` (N Ho Wo, k k C)."""
    N, H, W, C = shape
    Ho, Wo = out_size(H, k, stride, padding), out_size(W, k, stride, padding)
    d = dcols.reshape(N, Ho, Wo, k, k, C)
    dpad = np.zeros((N, H + 2 * padding, W + 2 * padding, C), dcols.dtype)
    for i in reversed(range(k)):  # the order of the output pixels (module docstring)
        for j in reversed(range(k)):
            dpad[:, i:i + stride * Ho:stride, j:j + stride * Wo:stride, :] += d[:, :, :, i, j]
    return np.ascontiguousarray(dpad[:, padding:padding + H, padding:padding + W, :])


def maxpool_forward(X: np.ndarray, k: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """``Y`` (N, Ho, Wo, C) and the window offset ``i* k + j*`` of each maximum (int8)."""
    N, H, W, C = X.shape
    Ho, Wo = out_size(H, k, stride, 0), out_size(W, k, stride, 0)
    win = _windows(X, k, stride, Ho, Wo).reshape(N, Ho, Wo, C, k * k)
    arg = win.argmax(axis=-1)  # the first maximum, row-major in the window
    Y = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    return np.ascontiguousarray(Y), arg.astype(np.int8)


def maxpool_backward(dY: np.ndarray, arg: np.ndarray, shape: tuple[int, int, int, int],
                     k: int, stride: int) -> np.ndarray:
    """``dX`` (N, H, W, C): each ``dY`` added at its window's maximum."""
    _, Ho, Wo, _ = dY.shape
    dX = np.zeros(shape, dY.dtype)
    for i in range(k):
        for j in range(k):
            hit = arg == i * k + j
            dX[:, i:i + stride * Ho:stride, j:j + stride * Wo:stride, :] += np.where(hit, dY, 0)
    return dX
