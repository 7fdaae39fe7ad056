"""The base of the image modules: NCHW for users, NHWC inside.

Users and PyTorch hand images as ``(N, C, H, W)``. Inside bnprop they are channels-last,
``(N, H, W, C)``, so that a convolution's im2col GEMM writes ``(N H W, C)`` rows, the
layout the batch-norm kernels read (:mod:`bnprop.conv`). ``forward`` / ``backward``
convert at the boundary; the trusted ``_forward`` / ``_backward`` (what a
:class:`~bnprop.nn.Sequential` calls) take and give NHWC, and :meth:`out_shape` speaks
NHWC too.
"""

from __future__ import annotations

import numpy as np

from bnprop._validate import InputError, check_array
from bnprop.conv import to_nchw, to_nhwc
from bnprop.nn.module import Module


def nchw_str(shape: tuple[int, ...]) -> str:
    """An internal NHWC shape written as the user's NCHW one."""
    N, H, W, C = shape
    return f"({N}, {C}, {H}, {W})"


def check_images(X: object, name: str, channels: int | None, dtype: np.dtype) -> np.ndarray:
    """``X`` as a C-contiguous (N, C, H, W) array of ``dtype``, else one line giving the
    expected ``(N, C, H, W)`` and the received shape."""
    X = check_array(X, name, ndim=4, axes=("N", "C", "H", "W"),
                    shape=(None, channels, None, None), dtype=dtype)
    if 0 in X.shape:
        raise InputError(f"{name}: expected a non-empty (N, C, H, W) array, got shape "
                         f"{X.shape} instead.")
    return X


def fresh_nchw(Y: np.ndarray) -> np.ndarray:
    """A new C-contiguous (N, C, H, W) array of the NHWC ``Y`` (often a buffer a module
    keeps per shape). ``to_nchw`` returns ``Y`` itself when C = 1, whose transpose is
    C-contiguous already: a user's output would change at the next call."""
    return np.array(Y.transpose(0, 3, 1, 2), order="C")


class SpatialModule(Module):
    """A module on images: ``in_channels`` (None: any) in, NHWC inside."""

    in_ndim = 4

    def _check_input(self, X: object, training: bool) -> np.ndarray:
        return check_images(X, "X", self.in_features, self.dtype)

    def forward(self, X: object, training: bool = True) -> np.ndarray:
        """Validate ``X`` (N, C, H, W) and return the output (N, C_out, H_out, W_out)
        (a fresh array)."""
        X = to_nhwc(self._check_input(X, training))
        self.out_shape(X.shape)  # the spatial checks, one line each
        return fresh_nchw(self._forward(X.copy(), bool(training)))

    def backward(self, dY: object) -> np.ndarray:
        """Gradient w.r.t. the input (N, C, H, W) of the last training forward, from
        ``dY`` shaped as its output; fills :attr:`grads`."""
        if self._m is None or not getattr(self, "_trained", False):
            raise InputError(f"{type(self).__name__}.backward: call forward(X, training=True) "
                             "first.")
        N, Ho, Wo, C = self._shape_out
        dY = check_array(dY, "dY", ndim=4, axes=("N", "C", "H", "W"),
                         shape=(N, C, Ho, Wo), dtype=self.dtype)
        self._allocate_grads()
        dX = np.empty(self._shape_in, self.dtype)
        self._backward(to_nhwc(dY).copy(), dX)
        return to_nchw(dX)

    def _remember(self, X: np.ndarray, training: bool) -> None:
        self._m, self._width_in = X.shape[0], X.shape[-1]
        self._shape_in = X.shape
        self._shape_out = self.out_shape(X.shape)
        self._width_out = self._shape_out[-1]
        self._trained = training
