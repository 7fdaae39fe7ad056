"""Layers as modules: the base class, ``Linear`` and the element-wise activations.

Every module owns its parameters (named as the math names them: ``W``, ``b``, ``gamma``,
``beta``), its buffers, and a forward/backward pair::

    forward(X, training=True) -> Y        (m, n_in) -> (m, n_out); keeps what backward needs
    backward(dY) -> dX                     writes the parameter gradients into ``grads``

Rows are examples. Parameters are listed in PyTorch's order and shapes (``W`` is
PyTorch's ``weight``, ``b`` its ``bias``; see :attr:`Module.torch_names`), so
``named_parameters()`` of a :class:`~bnprop.nn.Sequential` lines up with
``to_torch().parameters()``.

``forward`` / ``backward`` validate their input and return fresh arrays (safe to keep).
Inside a :class:`~bnprop.nn.Sequential`, the trusted ``_forward`` / ``_backward`` run on
preallocated buffers, kept per batch shape and overwritten by the next call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from bnprop._validate import (
    InputError,
    _shape_str,
    check_array,
    check_choice,
    check_positive,
)
from bnprop.activations import get_activation
from bnprop.kernels import activations as kernels
from bnprop.kernels.small_gemm import matmul_nt
from bnprop.kernels.tile_gemm import matmul

DTYPES = ("float32", "float64")
BACKENDS = ("numba", "numpy")


class Module:
    """Base of every layer: parameters, buffers, gradients, forward and backward.

    Subclasses set :attr:`param_names` (PyTorch's order), :attr:`buffer_names`, and
    implement ``_forward(X, training)`` and ``_backward(dY, dX)`` on trusted arrays.
    """

    #: Parameter attribute names, in PyTorch's order.
    param_names: tuple[str, ...] = ()
    #: Buffer attribute names (running statistics), in PyTorch's order.
    buffer_names: tuple[str, ...] = ()
    #: bnprop name -> PyTorch's name of the same array.
    torch_names: ClassVar[dict[str, str]] = {}
    #: Features in and out (None: any width, element-wise); channels for image modules.
    in_features: int | None = None
    out_features: int | None = None
    #: Dimensions of the input a module requires (2: (m, features); 4: images; None: any).
    in_ndim: int | None = 2
    #: Counts assignments of a parameter attribute on any module (after the assignment):
    #: :meth:`bnprop.nn.plan.FlatBuffers.check_views` checks its views again only after
    #: one (0.8 -> 0.1 us a step).
    param_epoch: ClassVar[int] = 0

    def __init__(self, dtype: str = "float32") -> None:
        self.dtype = np.dtype(check_choice(dtype, "dtype", DTYPES))
        #: Gradients of the last backward, keyed as :attr:`param_names`.
        self.grads: dict[str, np.ndarray] = {}
        #: "numba" (the kernels, default) or "numpy" (the reference).
        self.backend = "numba"
        self._m: int | None = None  # batch rows the buffers are sized for

    def __setattr__(self, name: str, value: object) -> None:
        if name in FIXED_NAMES and name in self.__dict__:
            raise InputError(
                f"{name}: fixed when the {type(self).__name__} is built (its parameters, "
                f"buffers and the modules around it depend on it); build a new module "
                f"with {name}={value!r} instead.")
        if name in self.param_names or name in self.buffer_names:
            value = _replacement(name, self.__dict__.get(name), value)
        super().__setattr__(name, value)
        if name in self.param_names:
            Module.param_epoch += 1

    # ------------------------------------------------------------------ description
    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        """``(name, array)`` of every parameter, the live arrays, in PyTorch's order."""
        for name in self.param_names:
            yield prefix + name, getattr(self, name)

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        """``(name, array)`` of every buffer (running statistics), the live arrays."""
        for name in self.buffer_names:
            yield prefix + name, getattr(self, name)

    def _allocate_grads(self) -> None:
        """Own gradient arrays (a Sequential replaces them with views of its flat buffer)."""
        for name in self.param_names:
            if name not in self.grads:
                self.grads[name] = np.zeros_like(getattr(self, name))

    def out_width(self, n_in: int) -> int:
        """Width of the output for an input of ``n_in`` features."""
        return n_in if self.out_features is None else self.out_features

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the output for an input of shape ``in_shape`` (bnprop's internal
        layout: images are NHWC); the last axis maps through :meth:`out_width`."""
        if self.in_features is not None and in_shape[-1] != self.in_features:
            raise InputError(f"{self!r}: expects {self.in_features} input features, got an "
                             f"input of shape {in_shape} from the module before it.")
        return (*in_shape[:-1], self.out_width(in_shape[-1]))

    # ------------------------------------------------------------------ public pair
    def forward(self, X: object, training: bool = True) -> np.ndarray:
        """Validate ``X`` (m, in_features) and return the output (a fresh array)."""
        X = self._check_input(X, training)
        return self._forward(X.copy(), bool(training)).copy()

    def __call__(self, X: object, training: bool = True) -> np.ndarray:
        """``forward(X, training)``, as calling a PyTorch module."""
        return self.forward(X, training)

    def backward(self, dY: object) -> np.ndarray:
        """Gradient w.r.t. the input of the last training forward (a fresh array);
        fills :attr:`grads`."""
        if self._m is None or not getattr(self, "_trained", False):
            raise InputError(f"{type(self).__name__}.backward: call forward(X, training=True) "
                             "first.")
        dY = check_array(dY, "dY", ndim=2, axes=("m", "n_out"),
                         shape=(self._m, self._width_out), dtype=self.dtype)
        self._allocate_grads()
        dX = np.empty((self._m, self._width_in), self.dtype)
        self._backward(dY.copy(), dX)
        return dX

    def _check_input(self, X: object, training: bool) -> np.ndarray:
        X = check_array(X, "X", ndim=2, axes=("m", "n_in"),
                        shape=(None, self.in_features), dtype=self.dtype)
        if X.shape[0] == 0:
            raise InputError("X: expected at least one row, got shape (0, n) instead.")
        return X

    def _remember(self, X: np.ndarray, training: bool) -> None:
        """Record the batch shape (for backward's checks)."""
        self._m, self._width_in = X.shape[0], X.shape[-1]
        self._width_out = self.out_width(X.shape[-1])
        self._trained = training

    # ------------------------------------------------------------------ trusted pair
    def _forward(self, X: np.ndarray, training: bool) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _backward(self, dY: np.ndarray, dX: np.ndarray | None) -> None:  # pragma: no cover
        """From ``dY`` (which may be overwritten) fill ``grads`` and, unless None, ``dX``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


#: A module's structure, set once by its constructor: assigning it later is one line (it
#: used to change a repr, or a shape the parameters and the Sequential no longer match).
FIXED_NAMES = frozenset({"dtype", "in_features", "out_features", "num_features", "in_channels",
                         "out_channels", "kernel_size", "stride", "padding", "has_bias",
                         "param_names", "buffer_names"})


def _replacement(name: str, old: object, value: object) -> object:
    """A parameter or buffer assigned anew (``lin.W = array``) keeps its shape and dtype:
    a writeable C-contiguous array of both is kept as it is (a view stays a view); other
    values of that shape that cast to the dtype ("same_kind") become a fresh C-contiguous
    copy (the kernels and the optimizer write into them); anything else is one line. (A
    wrong shape would otherwise fail deep in a product, or be read past its end by a
    kernel.) The constructor's first assignment (no array yet) is not checked."""
    if not isinstance(old, np.ndarray):
        return value
    if (type(value) is np.ndarray and value.shape == old.shape and value.dtype == old.dtype
            and value.flags.c_contiguous and value.flags.writeable):
        return value
    want = f"an array of shape {_shape_str(old.shape)} and dtype {old.dtype}"
    try:
        arr = np.asarray(value)
    except Exception:  # any failed conversion is the same bad input
        arr = None
    if arr is None or arr.shape != old.shape or arr.dtype == object \
            or not np.can_cast(arr.dtype, old.dtype, "same_kind"):
        got = (f"an array of shape {_shape_str(arr.shape)} and dtype {arr.dtype}"
               if arr is not None and arr.dtype.kind in "biufc" else type(value).__name__)
        raise InputError(f"{name}: expected {want} (assign values in place: "
                         f"{name}[...] = values), got {got} instead.")
    return np.array(arr, dtype=old.dtype, order="C")


def _check_width(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"{name}: expected an integer >= 1, got {value!r} instead.")
    return int(value)


class Linear(Module):
    """Affine map ``Z = X W^T + b``, as ``torch.nn.Linear`` (``W`` is its ``weight``).

    Backward, with ``dZ = dF/dZ`` (m, n_out)::

        dW = dZ^T X            (n_out, n_in)
        db = sum_rows(dZ)      (n_out,), accumulated in float64
        dX = dZ W              (m, n_in)

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default=True
        ``False`` in front of a batch normalization, whose ``beta`` is the bias.
    dtype : {"float32", "float64"}, default="float32"
    rng : numpy.random.Generator or int, optional
        Source of the initial weights ``W ~ N(0, init_std^2)``, drawn in float64 then
        cast; ``b = 0``.
    init_std : float, optional
        Default ``1 / sqrt(in_features)``.
    """

    torch_names: ClassVar[dict[str, str]] = {"W": "weight", "b": "bias"}

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 dtype: str = "float32", rng: np.random.Generator | int | None = None,
                 init_std: float | None = None) -> None:
        super().__init__(dtype)
        self.in_features = _check_width(in_features, "in_features")
        self.out_features = _check_width(out_features, "out_features")
        if not isinstance(bias, bool | np.bool_):
            raise InputError(f"bias: expected True or False, got {bias!r} instead.")
        std = (1.0 / np.sqrt(self.in_features) if init_std is None
               else check_positive(init_std, "init_std"))
        gen = check_rng(rng)
        self.W = (gen.standard_normal((self.out_features, self.in_features)) * std
                  ).astype(self.dtype)
        self.has_bias = bool(bias)
        self.param_names = ("W", "b") if self.has_bias else ("W",)
        if self.has_bias:
            self.b = np.zeros(self.out_features, self.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.has_bias}")

    def _forward(self, X: np.ndarray, training: bool) -> np.ndarray:
        m = X.shape[0]
        if self._m != m or self._Z.dtype != self.dtype:
            self._Z = np.empty((m, self.out_features), self.dtype)
        self._remember(X, training)
        self._X = X
        matmul_nt(X, self.W, self._Z)
        if self.has_bias:
            self._Z += self.b
        return self._Z

    def _backward(self, dY: np.ndarray, dX: np.ndarray | None) -> None:
        matmul(dY.T, self._X, self.grads["W"])
        if self.has_bias:
            column_sums(dY, self.grads["b"])
        if dX is not None:
            matmul(dY, self.W, dX)


def column_sums(a: np.ndarray, out: np.ndarray) -> None:
    """``out = sum_rows(a)``, accumulated in float64 and rounded once to ``out``'s dtype."""
    if out.dtype == np.float64:
        np.sum(a, axis=0, dtype=np.float64, out=out)
    else:
        out[...] = a.sum(axis=0, dtype=np.float64)


class _Activation(Module):
    """Element-wise ``Y = sigma(A)``; backward ``dA = sigma'(A) * dY``
    (:mod:`bnprop.activations` holds each sigma and sigma'). Any shape inside a
    Sequential (images too); ``forward`` / ``backward`` take (m, n)."""

    activation = "identity"
    in_ndim = None

    def __init__(self, *, dtype: str = "float32") -> None:
        super().__init__(dtype)
        self._act = get_activation(self.activation)
        self._code = kernels.ACTIVATION_CODES[self.activation]
        self._Y_out: np.ndarray | None = None  # the kernels' output, kept per input shape

    def _forward(self, X: np.ndarray, training: bool) -> np.ndarray:
        self._remember(X, training)
        self._A = X
        if self.backend == "numba" and X.flags.c_contiguous:
            if self._Y_out is None or self._Y_out.shape != X.shape \
                    or self._Y_out.dtype != X.dtype:
                self._Y_out = np.empty_like(X)  # kept per input shape, as Linear's _Z
            kernels.activation_rows(self._code, _rows(X), _rows(self._Y_out))
            self._Y = self._Y_out
        else:
            self._Y = self._act.forward(X)
        return self._Y

    def _backward(self, dY: np.ndarray, dX: np.ndarray | None) -> None:
        if dX is None:
            return
        if self.backend == "numba" and dY.flags.c_contiguous and dX.flags.c_contiguous \
                and self._Y.flags.c_contiguous:
            kernels.derivative_rows(self._code, _rows(dY), _rows(self._Y), _rows(dX))
        else:
            dX[...] = self._act.backward(dY, self._A, self._Y)


def _rows(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array as (rows, last axis), a view."""
    return a.reshape(-1, a.shape[-1]) if a.ndim != 2 else a


class Sigmoid(_Activation):
    """``Y = 1 / (1 + exp(-A))``; ``sigma'(A) = Y (1 - Y)``."""

    activation = "sigmoid"


class Tanh(_Activation):
    """``Y = tanh(A)``; ``sigma'(A) = 1 - Y^2``."""

    activation = "tanh"


class ReLU(_Activation):
    """``Y = max(A, 0)``; ``sigma'(A) = [A > 0]``."""

    activation = "relu"


class Identity(_Activation):
    """``Y = A``; ``sigma'(A) = 1``."""

    activation = "identity"


#: Activation name -> module class.
ACTIVATION_MODULES: dict[str, type[_Activation]] = {
    cls.activation: cls for cls in (Sigmoid, Tanh, ReLU, Identity)}


def check_rng(rng: object) -> np.random.Generator:
    """``rng`` itself when a Generator, else ``np.random.default_rng(rng)`` (None, a seed
    >= 0 or a sequence of them); one line for anything else."""
    if isinstance(rng, np.random.Generator):
        return rng
    try:
        if not isinstance(rng, bool):
            return np.random.default_rng(rng)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pass
    raise InputError(f"rng: expected a numpy.random.Generator, None or an integer seed >= 0 "
                     f"(or a sequence of them), got {rng!r} instead.")


def check_backend(backend: object) -> str:
    """``"numba"`` or ``"numpy"``, else one line naming the argument."""
    return check_choice(backend, "backend", BACKENDS)
