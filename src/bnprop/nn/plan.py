"""How a :class:`~bnprop.nn.Sequential` runs its modules: fused steps, flat buffers.

The plan groups the modules into steps, each a forward/backward pair on preallocated
buffers. ``Linear(bias=False) -> BatchNorm1d -> activation`` (the handout's layer) is one
:class:`~bnprop.nn.stage.BNStage`; so is ``BatchNorm1d -> activation`` and a lone
``BatchNorm1d`` (or ``BatchNorm2d``, on the ``(N H W, C)`` view of its NHWC images), and
``Conv2d(bias=False) -> BatchNorm2d -> activation``: the im2col matrix is the stage's
input and the convolution its ``Linear`` (:class:`ConvNormStep`, which takes a
``MaxPool2d`` that follows too). Every other module is a step of its own.

Parameters of one dtype live in one flat array, of which each module's parameters are
views, and so do their gradients (:class:`FlatBuffers`): the optimizer updates all of
them in one pass (:meth:`bnprop.optim.Optimizer.step_flat`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bnprop import _aligned
from bnprop import batchnorm as bn
from bnprop._validate import InputError
from bnprop.kernels import conv as convk
from bnprop.kernels._finite import array_all_finite
from bnprop.nn.batchnorm import BatchNorm1d
from bnprop.nn.batchnorm2d import BatchNorm2d
from bnprop.nn.conv import Conv2d, ConvAsLinear
from bnprop.nn.module import Linear, Module, _Activation
from bnprop.nn.pool import MaxPool2d
from bnprop.nn.stage import BNStage

if TYPE_CHECKING:
    from bnprop.distributed import Communicator


class ModuleStep:
    """One module as a plan step (its trusted ``_forward`` / ``_backward``)."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self.modules = (module,)
        self.norm: BatchNorm1d | None = None

    def forward(self, X: np.ndarray, training: bool, comm: Communicator | None) -> np.ndarray:
        return self.module._forward(X, training)

    def backward(self, dY: np.ndarray, dX: np.ndarray | None,
                 comm: Communicator | None) -> None:
        self.module._backward(dY, dX)

    def commit_running(self) -> None:
        """Nothing to commit: no running statistics."""

    def discard_running(self) -> None:
        """Nothing pending."""

    def running_finite(self) -> bool:
        return True


class NormStep:
    """``[Linear(bias=False)] -> BatchNorm1d -> [activation]`` as one fused stage."""

    def __init__(self, norm: BatchNorm1d, activation: _Activation | None,
                 linear: Linear | None) -> None:
        self.norm = norm
        self.modules = tuple(m for m in (linear, norm, activation) if m is not None)
        self.stage = BNStage(norm, "identity" if activation is None else activation.activation,
                             linear)

    def forward(self, X: np.ndarray, training: bool, comm: Communicator | None) -> np.ndarray:
        if X.ndim == 2:
            return self.stage.forward(X, training, comm)
        return self.stage.forward(X.reshape(-1, X.shape[-1]), training, comm).reshape(X.shape)

    def backward(self, dY: np.ndarray, dX: np.ndarray | None,
                 comm: Communicator | None) -> None:
        if dY.ndim != 2:  # images: the (N H W, C) views
            C = dY.shape[-1]
            dY, dX = dY.reshape(-1, C), None if dX is None else dX.reshape(-1, C)
        self.stage.backward(dY, dX, comm)

    def commit_running(self) -> None:
        self.norm.commit_running(self.stage)

    def discard_running(self) -> None:
        """Drop the pending batch statistics (a step that failed commits nothing)."""
        self.stage.batch_stats = None

    def running_finite(self) -> bool:
        """Whether the pending batch statistics fit the dtype (a float32 variance of
        inputs near its largest value does not)."""
        if self.stage.batch_stats is None:
            return True
        m, mu_B, var_B = self.stage.batch_stats
        dt = self.norm.dtype
        with np.errstate(over="ignore"):
            unbiased = bn.unbiased_var(var_B, m).astype(dt)  # training batches have m >= 2
            return bool(np.isfinite(mu_B.astype(dt)).all() and np.isfinite(unbiased).all())


class ConvNormStep(NormStep):
    """``Conv2d(bias=False) -> BatchNorm2d -> [activation] -> [MaxPool2d]`` as one fused
    stage::

        forward    cols = im2col(X);  Y = stage(cols) = sigma(BN(cols W2^T))   (N Ho Wo, C_out)
                   P = maxpool(Y)                          (each part's images, see below)
        backward   dY = maxpool'(dP);  stage: dW2, dgamma, dbeta;
                   per part: dcols = dZ W2 and dX = col2im(dcols), a block of images at a time

    The stage's row parts hold whole images (``row_unit = Ho Wo``), so each part pools its
    own images right after forming their ``Y``, and forms their ``dY`` right before its
    backward sums read it: one split of the batch each way instead of two, and ``Y`` and
    ``dY`` read back from the part's cache. Likewise each part forms its images' ``dX``
    once its rows of ``dZ`` are final (:func:`bnprop.kernels.conv.dX_images`: ``dcols``
    of about 1 MB at a time, read back from cache; a 1 x 1 convolution writes ``dZ W2``
    into ``dX`` itself): the CNN step of ``bnprop bench`` (batch 128, 2 threads, SGD),
    alternated with the whole ``dcols`` and a col2im pass after it in one process,
    13.67 -> 12.84 ms, the same bits.
    """

    def __init__(self, conv: Conv2d, norm: BatchNorm2d, activation: _Activation | None,
                 pool: MaxPool2d | None = None) -> None:
        self.conv, self.norm, self.pool = conv, norm, pool
        self.modules = tuple(m for m in (conv, norm, activation, pool) if m is not None)
        self.stage = BNStage(norm, "identity" if activation is None else activation.activation,
                             ConvAsLinear(conv))  # type: ignore[arg-type]
        self._dcols: np.ndarray | None = None  # the reference backend's whole dcols
        self._dX_buffers: dict[int, np.ndarray] = {}  # per row part (its first row)
        self._dY: np.ndarray | None = None  # dF/dY of the stage, with a pool after it

    def forward(self, X: np.ndarray, training: bool, comm: Communicator | None) -> np.ndarray:
        shape = self.conv.out_shape(X.shape)
        self.stage.linear.take_weight()
        self.stage.row_unit = shape[1] * shape[2]
        cols = self.conv._cols(X)
        if self.pool is None:
            return self.stage.forward(cols, training, comm).reshape(shape)
        pool, unit = self.pool, self.stage.row_unit
        self.stage.buffers(cols)
        Y = self.stage.Y.reshape(shape)
        pool._prepare(Y, training)
        self.stage.forward(cols, training, comm,
                           after_apply=lambda start, stop: pool._forward_images(
                               Y, start // unit, stop // unit))
        return pool._Y

    def backward(self, dY: np.ndarray, dX: np.ndarray | None,
                 comm: Communicator | None) -> None:
        before_sums = None
        if self.pool is not None:  # dY is dF/dP: the stage's dY is formed part by part
            dP, pool, unit, Y = dY, self.pool, self.stage.row_unit, self.stage.Y
            if self._dY is None or self._dY.shape != Y.shape or self._dY.dtype != Y.dtype:
                self._dY = np.empty_like(Y)
            dY = self._dY.reshape(pool._shape_in)

            def before_sums(start: int, stop: int) -> None:
                pool._backward_images(dP, dY, start // unit, stop // unit)
        dY2 = dY.reshape(-1, dY.shape[-1])
        if dX is None:  # the first layer: no dcols GEMM, no col2im
            self.stage.backward(dY2, None, comm, before_sums)
            self.stage.linear.give_grad()
            return
        cols, conv = self.stage.O, self.conv
        if conv.backend != "numpy" and self.norm.backend != "numpy" \
                and dX.flags.c_contiguous:  # per part, from dZ
            if conv.kernel_size == 1 and conv.stride == 1 and conv.padding == 0:
                self.stage.backward(dY2, dX.reshape(cols.shape), comm, before_sums)
            else:
                self.stage.backward(dY2, None, comm, before_sums,
                                    dO_rows=lambda start, stop: self._dX_rows(
                                        dY2, dX, start, stop))
                starts = self.stage._starts  # the parts of this batch keep their buffers
                self._dX_buffers = {k: b for k, b in self._dX_buffers.items() if k in starts}
            self.stage.linear.give_grad()
            return
        if self._dcols is None or self._dcols.shape != cols.shape \
                or self._dcols.dtype != cols.dtype:
            self._dcols = np.empty(cols.shape, cols.dtype)
        self.stage.backward(dY2, self._dcols, comm, before_sums)
        self.stage.linear.give_grad()
        conv._col2im(self._dcols, dX)

    def _dX_rows(self, dZ: np.ndarray, dX: np.ndarray, start: int, stop: int) -> None:
        """``dX`` of the images of dZ's rows ``[start, stop)`` (a row part), through a
        buffer of ``dcols`` blocks kept per part (:func:`bnprop.kernels.conv.dX_images`)."""
        conv, unit = self.conv, self.stage.row_unit
        n0, n1 = start // unit, stop // unit
        W2 = self.stage.linear.W
        rows = convk.dX_buffer_rows(unit, W2.shape[1], W2.shape[0], dX.dtype.itemsize, n1 - n0)
        buffer = self._dX_buffers.get(start)
        if buffer is None or buffer.shape != (rows, W2.shape[1]) or buffer.dtype != dX.dtype:
            buffer = self._dX_buffers[start] = np.empty((rows, W2.shape[1]), dX.dtype)
        convk.dX_images(dZ, W2, conv.kernel_size, conv.stride, conv.padding, dX, n0, n1,
                        buffer)


def build_plan(modules: list[Module]) -> list[ModuleStep | NormStep]:
    """Group ``modules`` into steps (module docstring)."""
    steps: list[ModuleStep | NormStep] = []
    i = 0
    while i < len(modules):
        mod = modules[i]
        nxt = modules[i + 1] if i + 1 < len(modules) else None
        if isinstance(mod, Conv2d) and not mod.has_bias and isinstance(nxt, BatchNorm2d):
            i += 2
            act = (modules[i] if i < len(modules) and isinstance(modules[i], _Activation)
                   else None)
            i += act is not None
            pool = (modules[i] if i < len(modules) and isinstance(modules[i], MaxPool2d)
                    else None)
            i += pool is not None
            steps.append(ConvNormStep(mod, nxt, act, pool))
            continue
        if isinstance(mod, Linear) and not mod.has_bias and type(nxt) is BatchNorm1d:
            linear, norm, i = mod, nxt, i + 2
        elif isinstance(mod, BatchNorm1d):
            linear, norm, i = None, mod, i + 1
        else:
            steps.append(ModuleStep(mod))
            i += 1
            continue
        act = modules[i] if i < len(modules) and isinstance(modules[i], _Activation) else None
        if act is not None:
            i += 1
        steps.append(NormStep(norm, act, linear))
    return steps


def check_modules(modules: tuple[object, ...]) -> int | None:
    """Modules of one dtype whose widths chain, each object once (a module keeps its own
    inputs and gradients for backward, so a second place would overwrite them); one line
    naming the first that is not. Returns the width (features or channels) at the end,
    None when no module sets it."""
    if not modules:
        raise InputError("modules: expected at least one module, got none.")
    place: dict[int, int] = {}  # id(module) -> its first index
    for i, mod in enumerate(modules):
        if not isinstance(mod, Module):
            raise InputError(f"modules[{i}]: expected a bnprop.nn module, got "
                             f"{type(mod).__name__} instead.")
        first = place.setdefault(id(mod), i)
        if first != i:
            raise InputError(f"modules[{i}]: the same {type(mod).__name__} object as "
                             f"modules[{first}]; each place needs its own module (it keeps its "
                             "inputs and gradients for backward): create another one.")
    dtypes = {mod.dtype for mod in modules}  # type: ignore[attr-defined]
    if len(dtypes) > 1:
        raise InputError(f"modules: expected one dtype for every module, got "
                         f"{sorted(str(d) for d in dtypes)}.")
    width = None
    for i, mod in enumerate(modules):
        n_in, n_out = mod.in_features, mod.out_features  # type: ignore[attr-defined]
        if n_in is not None and width is not None and n_in != width:
            raise InputError(f"modules[{i}]: {mod!r} expects {n_in} input features, but the "
                             f"module before it gives {width}.")
        width = (None if getattr(mod, "resets_width", False) else
                 n_out if n_out is not None else width)
    return width


class FlatBuffers:
    """One flat parameter array and one flat gradient array per dtype; each module's
    parameters and gradients become views of them (values are copied in once).

    ``layout[dtype]`` lists ``(name, start, stop, shape)`` in ``named_parameters`` order.
    """

    def __init__(self, named: list[tuple[str, Module, str]]) -> None:
        sizes: dict[np.dtype, int] = {}
        for _, module, pname in named:
            p = getattr(module, pname)
            sizes[p.dtype] = sizes.get(p.dtype, 0) + p.size
        # On cache lines: the first W starts there (bnprop._aligned: the small batches'
        # GEMMs run 5-10% faster on it).
        self.params = {dt: _aligned.zeros(n, dt) for dt, n in sizes.items()}
        self.grads = {dt: _aligned.zeros(n, dt) for dt, n in sizes.items()}
        self.layout: dict[np.dtype, list[tuple[str, int, int, tuple[int, ...]]]] = {
            dt: [] for dt in sizes}
        offsets = dict.fromkeys(sizes, 0)
        self._views: list[tuple[str, Module, str, np.ndarray]] = []
        self._epoch = -1  # Module.param_epoch at the last check that passed
        for name, module, pname in named:
            p = getattr(module, pname)
            dt, start = p.dtype, offsets[p.dtype]
            stop = start + p.size
            self.params[dt][start:stop] = p.reshape(-1)
            setattr(module, pname, self.params[dt][start:stop].reshape(p.shape))
            module.grads[pname] = self.grads[dt][start:stop].reshape(p.shape)
            self.layout[dt].append((name, start, stop, p.shape))
            self._views.append((name, module, pname, self.params[dt]))
            offsets[dt] = stop

    def check_views(self) -> None:
        """One line unless every module's parameter is still a view of these arrays (a
        module given to another Sequential, or an array replaced, would silently not train:
        the optimizer updates these arrays, the forward pass reads the module's)."""
        epoch = Module.param_epoch  # read first: an assignment during the check bumps it
        if epoch == self._epoch:
            return
        for name, module, pname, flat in self._views:
            if getattr(module, pname).base is not flat:
                raise InputError(
                    f"{name}: no longer this Sequential's parameter (its module was given to "
                    f"another Sequential, or the array was replaced); assign values in place "
                    f"({pname}[...] = value), and give each Sequential its own modules.")
        self._epoch = epoch

    def check_optimizer(self, optimizer: object, state: bool = True) -> None:
        """One line unless ``optimizer`` is an instance with ``step(params, grads)`` whose
        state (if it keeps flat buffers: ``check_flat``; ``state=False``: left to the
        caller) fits these arrays."""
        if isinstance(optimizer, type) or not callable(getattr(optimizer, "step", None)):
            got = (f"the class {optimizer.__name__}" if isinstance(optimizer, type)
                   else type(optimizer).__name__)
            raise InputError(f"optimizer: expected an instance such as bnprop.SGD(0.1) or "
                             f"bnprop.Adam(1e-3), or an object with step(params, grads), got "
                             f"{got} instead.")
        if state and callable(getattr(optimizer, "check_flat", None)):
            optimizer.check_flat(self.params, self.layout)

    def all_finite(self) -> bool:
        """Whether every gradient is finite: one compiled pass per flat array over the
        exponent bits (2.9M float32: 0.22 ms, against 1.6 ms for ``isfinite`` of a
        float64 sum)."""
        return all(array_all_finite(g) for g in self.grads.values())
