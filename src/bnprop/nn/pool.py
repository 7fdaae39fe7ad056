"""``MaxPool2d`` and ``Flatten``, as PyTorch's (NCHW outside, NHWC inside).

``MaxPool2d(k, stride=k)``: ``Y[n, c, a, b] = max_{i,j < k} X[n, c, a s + i, b s + j]``;
backward sends each ``dY`` to its window's first maximum (:mod:`bnprop.conv`).

``Flatten()``: ``(N, C, H, W) -> (N, C H W)`` in PyTorch's (C, H, W) order, so the
``Linear`` after it has PyTorch's weight. From the NHWC layout inside that is a transpose
(a copy of the small last feature map), and backward is its inverse.
"""

from __future__ import annotations

import numpy as np

from bnprop import conv as ref
from bnprop._validate import InputError, check_array
from bnprop.kernels import conv as convk
from bnprop.nn.conv import _check_int
from bnprop.nn.spatial import SpatialModule


class MaxPool2d(SpatialModule):
    """Max pooling over ``k x k`` windows with stride ``stride`` (default ``k``), no padding.

    Parameters
    ----------
    kernel_size : int
    stride : int, optional
        Default ``kernel_size`` (PyTorch's).
    dtype : {"float32", "float64"}, default="float32"
    """

    def __init__(self, kernel_size: int, stride: int | None = None, *,
                 dtype: str = "float32") -> None:
        super().__init__(dtype)
        self.kernel_size = _check_int(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else _check_int(stride, "stride", 1)
        self._Y: np.ndarray | None = None

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        N, H, W, C = in_shape
        k, s = self.kernel_size, self.stride
        return (N, ref.out_size(H, k, s, 0, "X"), ref.out_size(W, k, s, 0, "X"), C)

    def _forward(self, X: np.ndarray, training: bool) -> np.ndarray:
        self._prepare(X, training)
        if self.backend == "numpy":
            self._forward_images(X, 0, X.shape[0])
        else:  # split over the threads by images
            convk.maxpool_forward_into(X, self.kernel_size, self.stride, self._Y, self._arg)
        return self._Y

    def _backward(self, dY: np.ndarray, dX: np.ndarray | None) -> None:
        if dX is None:
            return
        if self.backend == "numpy":
            self._backward_images(dY, dX, 0, dX.shape[0])
        else:
            convk.maxpool_backward_into(dY, self._arg, self.kernel_size, self.stride, dX)

    # ---- a batch's images in parts (a fused step runs each part with its own rows)
    def _prepare(self, X: np.ndarray, training: bool) -> None:
        """Remember ``X``'s shape (its values may come later); ``Y`` and ``arg`` buffers
        for it, kept while the shape stays."""
        self._remember(X, training)
        shape = self._shape_out
        if self._Y is None or self._Y.shape != shape or self._Y.dtype != X.dtype:
            self._Y = np.empty(shape, X.dtype)
            self._arg = np.empty(shape, np.int8)

    def _forward_images(self, X: np.ndarray, n0: int, n1: int) -> None:
        """``Y`` and ``arg`` of the images ``[n0, n1)`` of ``X`` (after :meth:`_prepare`)."""
        k, s = self.kernel_size, self.stride
        if self.backend == "numpy":
            self._Y[n0:n1], self._arg[n0:n1] = ref.maxpool_forward(X[n0:n1], k, s)
        else:
            convk.maxpool_forward_images(X, k, s, self._Y, self._arg, n0, n1)

    def _backward_images(self, dY: np.ndarray, dX: np.ndarray, n0: int, n1: int) -> None:
        """``dX`` of the images ``[n0, n1)`` from ``dY`` (after :meth:`_forward_images`)."""
        k, s = self.kernel_size, self.stride
        if self.backend == "numpy":
            dX[n0:n1] = ref.maxpool_backward(dY[n0:n1], self._arg[n0:n1],
                                             (n1 - n0, *dX.shape[1:]), k, s)
        else:
            convk.maxpool_backward_images(dY, self._arg, k, s, dX, n0, n1)


class Flatten(SpatialModule):
    """``(N, C, H, W) -> (N, C H W)``, PyTorch's ``Flatten()`` (``start_dim=1``)."""

    resets_width = True  # what follows takes C H W features, not C channels

    def __init__(self, *, dtype: str = "float32") -> None:
        super().__init__(dtype)
        self._Y: np.ndarray | None = None

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(in_shape) != 4:
            raise InputError(f"{self!r}: expects images (N, C, H, W), got an input of shape "
                             f"{in_shape} from the module before it.")
        N, H, W, C = in_shape
        return (N, C * H * W)

    def forward(self, X: object, training: bool = True) -> np.ndarray:
        """Validate ``X`` (N, C, H, W) and return ``X.reshape(N, -1)`` (a fresh array)."""
        X = self._check_input(X, training)
        self._forward(ref.to_nhwc(X), bool(training))
        return self._Y.copy()  # type: ignore[union-attr]

    def backward(self, dY: object) -> np.ndarray:
        """``dY`` (N, C H W) reshaped to the input's (N, C, H, W)."""
        if self._m is None or not getattr(self, "_trained", False):
            raise InputError("Flatten.backward: call forward(X, training=True) first.")
        dY = check_array(dY, "dY", ndim=2, axes=("N", "CHW"), shape=self._shape_out,
                         dtype=self.dtype)
        dX = np.empty(self._shape_in, self.dtype)
        self._backward(dY, dX)
        return ref.to_nchw(dX)

    def _forward(self, X: np.ndarray, training: bool) -> np.ndarray:
        self._remember(X, training)
        N, H, W, C = X.shape
        if self._Y is None or self._Y.shape != (N, C * H * W) or self._Y.dtype != X.dtype:
            self._Y = np.empty((N, C * H * W), X.dtype)
        if self.backend == "numpy":
            np.copyto(self._Y.reshape(N, C, H, W), X.transpose(0, 3, 1, 2))
        else:
            convk.flatten_into(X, self._Y)
        return self._Y

    def _backward(self, dY: np.ndarray, dX: np.ndarray | None) -> None:
        if dX is not None:
            N, H, W, C = dX.shape
            if self.backend == "numpy":
                np.copyto(dX, dY.reshape(N, C, H, W).transpose(0, 2, 3, 1))
            else:
                convk.unflatten_into(dY, dX)
