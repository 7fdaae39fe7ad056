"""``Conv2d``: a 2-D convolution as an im2col GEMM, as ``torch.nn.Conv2d`` (NCHW outside).

With ``cols`` the im2col matrix of the NHWC input and ``W2 = weight_matrix(W)``
(PyTorch's weight as (C_out, k k C_in), :mod:`bnprop.conv`)::

    forward    Z = cols W2^T + b                    (N Ho Wo, C_out) = NHWC output
    backward   dW2 = dZ^T cols,  db = sum_rows(dZ),  dcols = dZ W2,  dX = col2im(dcols)
               dW = weight_from_matrix(dW2)

In front of a ``BatchNorm2d`` (``bias=False``) a :class:`~bnprop.nn.Sequential` runs the
convolution inside the fused batch-norm stage, as the ``Linear`` of the handout's layer
(:class:`ConvAsLinear`, :class:`~bnprop.nn.plan.ConvNormStep`).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from bnprop import conv as ref
from bnprop._validate import InputError, check_positive
from bnprop.kernels import conv as convk
from bnprop.kernels.rows import gemm
from bnprop.nn.module import _check_width, check_rng, column_sums
from bnprop.nn.spatial import SpatialModule, nchw_str


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r} instead.")
    return int(value)


class Conv2d(SpatialModule):
    """2-D convolution of (N, C_in, H, W) images with ``k x k`` kernels, zero padding.

    ``W`` (C_out, C_in, k, k) is PyTorch's ``weight``, ``b`` (C_out,) its ``bias``;
    ``Ho = (H + 2 padding - k) // stride + 1`` (likewise ``Wo``).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int
        Square kernels, ``k x k``.
    stride : int, default=1
    padding : int, default=0
    bias : bool, default=True
        ``False`` in front of a ``BatchNorm2d``, whose ``beta`` is the bias.
    dtype : {"float32", "float64"}, default="float32"
    rng : numpy.random.Generator or int, optional
        Source of ``W ~ N(0, init_std^2)``, drawn in float64 then cast; ``b = 0``.
    init_std : float, optional
        Default ``1 / sqrt(in_channels k k)``.
    """

    torch_names: ClassVar[dict[str, str]] = {"W": "weight", "b": "bias"}

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True, *, dtype: str = "float32",
                 rng: np.random.Generator | int | None = None,
                 init_std: float | None = None) -> None:
        super().__init__(dtype)
        self.in_channels = self.in_features = _check_width(in_channels, "in_channels")
        self.out_channels = self.out_features = _check_width(out_channels, "out_channels")
        self.kernel_size = _check_int(kernel_size, "kernel_size", 1)
        self.stride = _check_int(stride, "stride", 1)
        self.padding = _check_int(padding, "padding", 0)
        if not isinstance(bias, bool | np.bool_):
            raise InputError(f"bias: expected True or False, got {bias!r} instead.")
        k = self.kernel_size
        fan_in = self.in_channels * k * k
        std = 1.0 / np.sqrt(fan_in) if init_std is None else check_positive(init_std, "init_std")
        gen = check_rng(rng)
        self.W = (gen.standard_normal((self.out_channels, self.in_channels, k, k)) * std
                  ).astype(self.dtype)
        self.has_bias = bool(bias)
        self.param_names = ("W", "b") if self.has_bias else ("W",)
        if self.has_bias:
            self.b = np.zeros(self.out_channels, self.dtype)
        self._in_shape: tuple[int, ...] | None = None  # of the im2col buffer
        self._Z: np.ndarray | None = None
        self._dcols: np.ndarray | None = None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.has_bias}")

    @property
    def W2(self) -> np.ndarray:
        """``W`` as the (C_out, k k C_in) matrix of the GEMM (a copy: the parameter is
        PyTorch's (C_out, C_in, k, k))."""
        return ref.weight_matrix(self.W)

    def set_dW2(self, dW2: np.ndarray) -> None:
        """``grads["W"]`` from the GEMM's ``dW2`` (C_out, k k C_in)."""
        self.grads["W"][...] = ref.weight_from_matrix(dW2, self.W.shape)

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        N, H, W, C = in_shape
        if C != self.in_channels:
            raise InputError(f"{self!r}: expects {self.in_channels} input channels, got an "
                             f"input of shape {nchw_str(in_shape)} (N, C, H, W).")
        k, s, p = self.kernel_size, self.stride, self.padding
        return (N, ref.out_size(H, k, s, p, "X"), ref.out_size(W, k, s, p, "X"),
                self.out_channels)

    # ------------------------------------------------------------------ im2col
    def _cols(self, X: np.ndarray) -> np.ndarray:
        """The im2col matrix of ``X`` (NHWC), into a buffer kept per input shape."""
        k, s, p = self.kernel_size, self.stride, self.padding
        if self.backend == "numpy":
            return ref.im2col(X, k, s, p)
        if k == 1 and s == 1 and p == 0:
            return X.reshape(-1, X.shape[-1])  # a 1 x 1 convolution: cols is X
        if self._in_shape != X.shape or self._cols_buf.dtype != X.dtype:
            N, Ho, Wo, _ = self.out_shape(X.shape)
            self._cols_buf = np.empty((N * Ho * Wo, self.in_channels * k * k), X.dtype)
            self._in_shape = X.shape
        convk.im2col_into(X, k, s, p, self._cols_buf)
        return self._cols_buf

    def _col2im(self, dcols: np.ndarray, dX: np.ndarray) -> None:
        """``dX`` (NHWC) from ``dcols``: the adjoint of :meth:`_cols`."""
        k, s, p = self.kernel_size, self.stride, self.padding
        if self.backend == "numpy":
            dX[...] = ref.col2im(dcols, dX.shape, k, s, p)
        elif k == 1 and s == 1 and p == 0:
            dX.reshape(dcols.shape)[...] = dcols
        else:
            convk.col2im_into(dcols, k, s, p, dX)

    # ------------------------------------------------------------------ trusted pair
    def _forward(self, X: np.ndarray, training: bool) -> np.ndarray:
        shape = self.out_shape(X.shape)
        self._remember(X, training)
        self._C = cols = self._cols(X)
        m = cols.shape[0]
        if self._Z is None or self._Z.shape != (m, self.out_channels) \
                or self._Z.dtype != X.dtype:
            self._Z = np.empty((m, self.out_channels), X.dtype)
        gemm(cols, self.W2.T, self._Z)
        if self.has_bias:
            self._Z += self.b
        return self._Z.reshape(shape)

    def _backward(self, dY: np.ndarray, dX: np.ndarray | None) -> None:
        dZ = dY.reshape(-1, self.out_channels)
        self.set_dW2(dZ.T @ self._C)
        if self.has_bias:
            column_sums(dZ, self.grads["b"])
        if dX is not None:
            if self._dcols is None or self._dcols.shape != self._C.shape \
                    or self._dcols.dtype != dZ.dtype:
                self._dcols = np.empty(self._C.shape, dZ.dtype)
            gemm(dZ, self.W2, self._dcols)
            self._col2im(self._dcols, dX)


class ConvAsLinear:
    """A ``Conv2d(bias=False)`` seen by :class:`~bnprop.nn.stage.BNStage` as the
    ``Linear`` of its layer: ``W`` is ``W2`` (taken at :meth:`take_weight`, once a step),
    ``grads["W"]`` a ``dW2`` buffer that :meth:`give_grad` turns into the convolution's
    gradient; the stage's input ``O`` is the im2col matrix."""

    def __init__(self, conv: Conv2d) -> None:
        self.conv = conv
        self.W = conv.W2
        self.grads = {"W": np.empty_like(self.W)}

    def take_weight(self) -> None:
        """``W = W2`` of the convolution's current weight."""
        self.W = self.conv.W2
        if self.grads["W"].shape != self.W.shape or self.grads["W"].dtype != self.W.dtype:
            self.grads["W"] = np.empty_like(self.W)

    def give_grad(self) -> None:
        """The convolution's ``grads["W"]`` from the stage's ``dW2``."""
        self.conv.set_dW2(self.grads["W"])
