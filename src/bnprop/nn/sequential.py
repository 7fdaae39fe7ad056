"""``Sequential``: modules chained, the loss, and the training step.

``Sequential(m_1, ..., m_L)`` computes ``logits = m_L(... m_1(X))`` and owns the loss, the
mean softmax cross-entropy of :mod:`bnprop.loss`::

    loss = (1/m) sum_i -log softmax(logits_i)[y_i]

A training step runs each step of the plan (:mod:`bnprop.nn.plan`) forward, the loss,
each step backward in reverse, then the optimizer's fused update of the flat parameter
array. Names follow PyTorch: ``named_parameters()`` yields ``"<index>.<name>"`` (e.g.
``"0.W"``, ``"1.gamma"``) in the order and shapes of ``to_torch().parameters()``.

Data parallel (``comm`` given; :mod:`bnprop.distributed`): each of P processes holds rows
``X_p`` of a global batch of ``m = sum_p m_p`` rows and the same parameters::

    sync_bn=True     BatchNorm1d uses the global batch's mu_B, var_B (SyncBN), and its
                     dgamma, dbeta come out global from its own all-reduce
    sync_bn=False    each process normalizes with its own rows' statistics
    loss             (1/m) sum_p sum_{i in p} l_i;   dlogits_p = (P_p - onehot(y_p)) / m
    other gradients  sum_p of the local terms: one packed float64 Allreduce per step

so with ``sync_bn=True`` the step equals one process on the global batch, to rounding.

A step whose loss or gradients are not finite raises :class:`NonFiniteError` before any
update: parameters, optimizer state and running statistics stay as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from bnprop._validate import InputError, check_array
from bnprop.kernels import loss as loss_kernel
from bnprop.kernels._finite import array_all_finite
from bnprop.loss import check_labels, softmax_cross_entropy_inplace
from bnprop.nn.compiled import compiled_step
from bnprop.nn.convert import PREDICT_BLOCK_ROWS, blocked_proba
from bnprop.nn.distributed import check_global_rows, prepare_batch, reduce_step
from bnprop.nn.module import Module, check_backend
from bnprop.nn.plan import FlatBuffers, NormStep, build_plan, check_modules

if TYPE_CHECKING:
    from bnprop.distributed import Communicator

#: Images per block in inference (an image's im2col rows are many).
PREDICT_BLOCK_IMAGES = 256


class NonFiniteError(InputError, ArithmeticError):
    """A training step produced a non-finite loss or gradient; nothing was updated."""

    @classmethod
    def of_step(cls, loss: float) -> NonFiniteError:
        """The error of a step whose loss was ``loss``."""
        return cls(f"the step's loss ({loss}), a gradient or a batch statistic is not finite "
                   "(inf or NaN, or too large for the dtype); nothing was updated. Lower the "
                   "learning rate or check the inputs' scale.")


class Sequential:
    """Modules applied in order; the last one's output are the logits of the loss.

    Parameters
    ----------
    *modules : Module
        Layers of :mod:`bnprop.nn`, all of one dtype, widths that chain.
    backend : {"numba", "numpy"}, default="numba"
        The compiled kernels, or the NumPy reference (for teaching and for tests).

    Examples
    --------
    >>> import numpy as np
    >>> from bnprop import nn, SGD
    >>> net = nn.Sequential(nn.Linear(8, 16, bias=False, rng=0), nn.BatchNorm1d(16),
    ...                     nn.Sigmoid(), nn.Linear(16, 3, rng=1))
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.random((60, 8), dtype=np.float32), rng.integers(0, 3, 60)
    >>> losses = [net.train_step(X, y, SGD(0.5)) for _ in range(50)]
    >>> bool(losses[-1] < losses[0])
    True
    """

    def __init__(self, *modules: Module, backend: str = "numba") -> None:
        width = check_modules(modules)  # features, or channels of images, at the end
        self.modules = list(modules)
        self.dtype = modules[0].dtype
        self.in_features = next((m.in_features for m in modules if m.in_features), None)
        #: 2: rows of features (m, n_features); 4: images (N, C, H, W), C = in_features.
        self.input_ndim = next((m.in_ndim for m in modules if m.in_ndim is not None), 2)
        self.n_classes = width
        self.backend = check_backend(backend)
        for mod in self.modules:
            mod.backend = self.backend
        self.steps = build_plan(self.modules)
        self.flat = FlatBuffers(self._named())
        self._in_shape: tuple[int, ...] | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        """After a copy or an unpickle (a broadcast) the parameters are separate arrays
        again: make them views of a new flat buffer."""
        self.__dict__.update(state)
        self.flat = FlatBuffers(self._named())
        self._compiled = False  # rebuilt on the new arrays when first needed

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_compiled"}

    # ------------------------------------------------------------------ names
    def _prefix(self, index: int) -> str:
        """Name prefix of module ``index``: ``"<index>."`` (PyTorch's)."""
        return f"{index}."

    def _named(self) -> list[tuple[str, Module, str]]:
        return [(self._prefix(i) + p, mod, p) for i, mod in enumerate(self.modules)
                for p in mod.param_names]

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, array)`` of every parameter (live views), in PyTorch's order."""
        for i, mod in enumerate(self.modules):
            yield from mod.named_parameters(self._prefix(i))

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, array)`` of every running statistic (live arrays)."""
        for i, mod in enumerate(self.modules):
            yield from mod.named_buffers(self._prefix(i))

    def parameters(self) -> dict[str, np.ndarray]:
        """The live parameter arrays keyed as :meth:`named_parameters`; updating them in
        place updates the net."""
        return dict(self.named_parameters())

    def buffers(self) -> dict[str, np.ndarray]:
        """The live running statistics keyed as :meth:`named_buffers`."""
        return dict(self.named_buffers())

    def _grad_views(self) -> dict[str, np.ndarray]:
        return {self._prefix(i) + p: mod.grads[p] for i, mod in enumerate(self.modules)
                for p in mod.param_names}

    def __repr__(self) -> str:
        inner = ",\n".join(f"  ({i}): {m!r}" for i, m in enumerate(self.modules))
        return f"{type(self).__name__}(\n{inner}\n)"

    # ------------------------------------------------------------------ checks
    def _check_X(self, X: object, *, training: bool, values: bool = True) -> np.ndarray:
        """``X`` checked, in the internal layout (images: NHWC); ``values=False``: a matrix
        already of the net's dtype, C-contiguous, keeps its values for the caller to test."""
        if (not values and type(X) is np.ndarray and X.ndim == 2 == self.input_ndim
                and X.dtype == self.dtype and X.shape[1] == self.in_features
                and X.flags.c_contiguous and X.shape[0] >= 2):
            return X  # a training batch as check_array would return it (1 us less a step)
        if self.input_ndim == 4:
            from bnprop.conv import to_nhwc
            from bnprop.nn.spatial import check_images

            X = to_nhwc(check_images(X, "X", self.in_features, self.dtype))
            self._shapes(X.shape)  # the spatial sizes fit every module, or one line
        else:
            later = not values and type(X) is np.ndarray and X.dtype == self.dtype \
                and X.flags.c_contiguous  # no conversion: its message needs no source
            X = check_array(X, "X", ndim=2, axes=("m", "n_features"),
                            shape=(None, self.in_features), dtype=self.dtype,
                            allow_nonfinite=later,
                            all_finite=array_all_finite if self.backend == "numba" else None)
        if training and X.shape[0] < 2:
            raise InputError(
                f"X: got a training batch of {X.shape[0]} example"
                f"{'' if X.shape[0] == 1 else 's'}; training needs m >= 2 rows (the batch "
                "variance of one example is always 0, and nets without batch normalization "
                "refuse it too, so that every net accepts the same batches)."
            )
        return X

    def _check_batch(self, X: object, y: object, values: bool) -> tuple[np.ndarray, np.ndarray]:
        X = self._check_X(X, training=True, values=values)
        n_classes = self._classes(X)
        if (self.backend == "numba" and type(y) is np.ndarray and y.dtype == np.intp
                and y.shape == (X.shape[0],)
                and loss_kernel.labels_in_range(y, n_classes)):
            return X, y  # the common case in one compiled pass; any other: check_labels
        return X, check_labels(y, "y", X.shape[0], n_classes)

    def _classes(self, X: np.ndarray) -> int:
        """Classes: the logits' width; when no module sets it (element-wise modules only),
        the width the checked batch ``X`` gives."""
        return self.n_classes if self.n_classes is not None else self._shapes(X.shape)[-1][1]

    # ------------------------------------------------------------------ one step
    def _shapes(self, in_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Output shape of every step for an input of ``in_shape`` (internal layout);
        one line naming the module whose input does not fit."""
        shape, shapes = in_shape, []
        for step in self.steps:
            for mod in step.modules:
                if mod.in_ndim is not None and len(shape) != mod.in_ndim:
                    raise InputError(
                        f"modules[{self.modules.index(mod)}]: {mod!r} expects a "
                        f"{mod.in_ndim}-D input, but the module before it gives shape "
                        f"{shape}.")
                shape = mod.out_shape(shape)
            shapes.append(shape)
        if len(shape) != 2:
            raise InputError(f"modules: the last module gives shape {shape}; the loss "
                             "needs (m, n_classes) logits (end with Flatten and Linear).")
        return shapes

    def _allocate(self, X: np.ndarray) -> None:
        """Buffers of the loss and between steps: ``dH[i]`` is dF/d(output of step i)."""
        m, shapes = X.shape[0], self._shapes(X.shape)
        self.dH = [np.empty(shape, self.dtype) for shape in shapes[:-1]]
        self.logits = np.empty(shapes[-1], self.dtype)  # logits, then dlogits
        self.total, self.S_y, self.log_total = np.empty(m), np.empty(m), np.empty(m)
        self.rowmax = np.empty((m, 1), self.dtype)
        self.rows = np.arange(m)
        self._in_shape = X.shape

    def _forward(self, X: np.ndarray, training: bool,
                 comm: Communicator | None = None) -> np.ndarray:
        """Every step forward (trusted ``X``); the result is the last step's buffer."""
        H = X
        for step in self.steps:
            H = step.forward(H, training, comm if isinstance(step, NormStep) else None)
        return H

    def _step(self, X: np.ndarray, y: np.ndarray, comm: Communicator | None = None,
              sync_bn: bool = True, m_global: int | None = None) -> float:
        """Forward, loss, backward into the modules' gradient views; running statistics
        and parameters untouched. Raises NonFiniteError on a non-finite loss or gradient."""
        bn_comm = comm if sync_bn else None
        if self._in_shape != X.shape:
            self._allocate(X)
        np.copyto(self.logits, self._forward(X, True, bn_comm))
        if bn_comm is not None:
            check_global_rows(self, m_global)
        m_total = X.shape[0] if m_global is None else m_global
        loss = (loss_kernel.softmax_cross_entropy_inplace(  # logits now hold dlogits
            self.logits, y, m_total, self.rowmax, self.total, self.S_y, self.log_total)
            if self.backend == "numba" else softmax_cross_entropy_inplace(
                self.logits, y, m_total, rowmax=self.rowmax, total=self.total, rows=self.rows))
        dY = self.logits
        for i in range(len(self.steps) - 1, -1, -1):
            step = self.steps[i]
            dX = self.dH[i - 1] if i > 0 else None
            step.backward(dY, dX, bn_comm if isinstance(step, NormStep) else None)
            dY = dX  # type: ignore[assignment]
        if comm is not None:
            loss = reduce_step(self, comm, loss, sync_bn)
        if not (np.isfinite(loss) and self.flat.all_finite()
                and all(step.running_finite() for step in self.steps)):
            for step in self.steps:
                step.discard_running()
            raise NonFiniteError.of_step(loss)
        return loss

    def _commit_running(self) -> None:
        for step in self.steps:
            step.commit_running()

    def loss_and_grads(
        self, X: object, y: object, *, comm: Communicator | None = None,
        m_global: int | None = None, sync_bn: bool = True,
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Training-mode forward and backward on one batch; the parameters are not changed.

        Uses the batch statistics and updates the running statistics.

        Parameters
        ----------
        X : array_like of shape (m, n_features), m >= 2
            Or images (N, C, H, W) for a net that starts with image layers (``Conv2d``,
            ``BatchNorm2d``, ``MaxPool2d``). With ``comm``: this process's rows of the
            global batch.
        y : array_like of int, shape (m,)
        comm : Communicator, optional
            Data-parallel step (module docstring).
        m_global : int, optional
            Rows of the global batch; with ``comm`` and not given, found by one more
            (small) collective.
        sync_bn : bool, default=True
            With ``comm``: statistics of the global batch (True) or of this process's rows.

        Returns
        -------
        loss : float
        grads : dict of str to ndarray
            Copies, keyed and ordered as :meth:`named_parameters`.
        """
        X, y, comm, m_global = prepare_batch(self, X, y, comm, m_global, sync_bn)
        loss = self._step(X, y, comm, sync_bn, m_global)
        self._commit_running()
        return loss, {k: g.copy() for k, g in self._grad_views().items()}

    def train_step(
        self, X: object, y: object, optimizer: Any, *, comm: Communicator | None = None,
        m_global: int | None = None, sync_bn: bool = True,
    ) -> float:
        """One step: :meth:`loss_and_grads`, then the optimizer's fused update of the flat
        parameter array (:meth:`bnprop.optim.Optimizer.step_flat`).

        Returns the batch loss (before the update). ``comm``, ``m_global``, ``sync_bn``: a
        data-parallel step; every process takes the same update, so replicas stay equal.
        """
        X, y, comm, m_global = prepare_batch(self, X, y, comm, m_global, sync_bn,
                                             values=False)
        fast = compiled_step(self, X) if comm is None else None
        # Before anything is updated; the compiled step's flat_update_args checks the state.
        self.flat.check_optimizer(optimizer, state=fast is None
                                  or not hasattr(optimizer, "flat_update_args"))
        if fast is None and comm is None and self.input_ndim == 2:
            self._check_X(X, training=True)  # X's values, before anything is computed
        if fast is not None:  # the same numbers, in compiled calls (nn/compiled.py)
            loss, finite, updated = fast.train_step(X, y, self.flat, optimizer)
            if not finite:  # an inf or NaN in X makes the step so (BN's statistics):
                self._check_X(X, training=True)  # then X is named, as before the step
                raise NonFiniteError.of_step(loss)
            if updated:
                return loss
        else:
            loss = self._step(X, y, comm, sync_bn, m_global)
            self._commit_running()
        if hasattr(optimizer, "step_flat"):  # bnprop's optimizers: one fused pass
            optimizer.step_flat(self.flat.params, self.flat.grads, self.flat.layout)
        else:  # any object with step(params, grads), as bnprop.optim's per-name step
            optimizer.step(self.parameters(), self._grad_views())
        return loss

    # ------------------------------------------------------------------ inference
    def __call__(self, X: object, training: bool = False) -> np.ndarray:
        """Logits (a fresh array); inference unless ``training`` (batch statistics, the
        running ones updated, as PyTorch's training-mode forward)."""
        X = self._check_X(X, training=bool(training))
        logits = self._forward(X, bool(training)).copy()
        if training:  # an inference call has no batch statistics to commit
            self._commit_running()
        return logits

    def predict_proba(self, X: object) -> np.ndarray:
        """Class probabilities in inference mode (running statistics), (m, n_classes),
        in blocks of :data:`PREDICT_BLOCK_ROWS` rows."""
        X = self._check_X(X, training=False)
        return blocked_proba(lambda B: self._forward(B, False), X, self._classes(X),
                             PREDICT_BLOCK_ROWS if self.input_ndim == 2 else PREDICT_BLOCK_IMAGES)

    def predict(self, X: object) -> np.ndarray:
        """Predicted labels ``argmax_k P_ik``, int64 (m,)."""
        return self.predict_proba(X).argmax(axis=1)

    def accuracy(self, X: object, y: object) -> float:
        """Fraction of rows whose predicted label equals ``y``."""
        P = self.predict_proba(X)
        y, pred = check_labels(y, "y", P.shape[0], P.shape[1]), P.argmax(axis=1)
        return float(np.mean(pred == y)) if pred.shape[0] else float("nan")

    def fold(self) -> Sequential:
        """The inference network with every ``Linear(bias=False) -> BatchNorm1d`` folded
        into one ``Linear``: ``W_fold = diag(gamma / sqrt(running_var + eps)) W``,
        ``b_fold = beta - gamma * running_mean / sqrt(running_var + eps)``."""
        from bnprop.nn.convert import fold

        return fold(self)

    # ------------------------------------------------------------------ state, torch
    def get_state(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, and ``"config"`` (JSON of the modules)."""
        from bnprop.nn.convert import get_state

        return get_state(self)

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> Sequential:
        """Rebuild the net of :meth:`get_state` exactly; every key and shape is checked."""
        from bnprop.nn.convert import from_state

        return from_state(state)

    def load_arrays(self, state: dict[str, np.ndarray]) -> None:
        """Copy ``state``'s parameters and buffers into the live arrays (checked)."""
        from bnprop.nn.convert import load_arrays

        load_arrays(self, state)

    def to_torch(self) -> Any:
        """The equivalent ``torch.nn.Sequential`` (same numbers, training mode)."""
        from bnprop.interop.torch import sequential_to_torch

        return sequential_to_torch(self)

    @classmethod
    def from_torch(cls, module: Any, *, stats: str = "exact") -> Sequential:
        """The Sequential of a ``torch.nn.Sequential`` (dtype follows the module's)."""
        from bnprop.interop.torch import sequential_from_torch

        return sequential_from_torch(module, stats=stats)
