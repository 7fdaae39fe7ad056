"""Optimizers over named NumPy parameters, updated in place, with PyTorch's conventions.

Parameters and gradients are ``dict[str, ndarray]`` keyed alike (``MLP.parameters()``
and the grads of ``MLP.loss_and_grads``). ``t = 0, 1, ...`` counts the steps already
taken; step t uses the learning rate ``lr_t = lr * schedule.factor(t)``.

SGD (``torch.optim.SGD``, dampening 0), per parameter p with gradient g::

    g' = g + weight_decay * p
    v  = g'                            at the first step (the buffer starts as the gradient)
    v  = momentum * v + g'             afterwards
    p  = p - lr_t * v                  (v = g' when momentum = 0)
    p  = p - lr_t * (g' + momentum v)  instead, with nesterov=True

Adam (``torch.optim.Adam``, L2 weight decay added to the gradient, no AMSGrad)::

    g' = g + weight_decay * p
    m  = beta1 * m + (1 - beta1) * g'                  m, v start at 0
    v  = beta2 * v + (1 - beta2) * g'^2
    p  = p - (lr_t / (1 - beta1^(t+1))) * m / (sqrt(v) / sqrt(1 - beta2^(t+1)) + eps)

Every buffer has its parameter's dtype, so float32 stays float32. ``state_dict()``
holds ``t`` and the buffers; ``load_state_dict`` of it continues bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from bnprop._validate import CheckedSettings, InputError, check_positive
from bnprop.optim_flat import FlatState, FlatUpdate
from bnprop.schedule import SCHEDULE_KINDS, Schedule, _check_schedule

__all__ = ["SCHEDULE_KINDS", "SGD", "Adam", "Optimizer", "Schedule"]



#: Plain SGD's momentum argument, an empty array per dtype that the kernel never reads
#: (one allocation less a step).
_EMPTY: dict[np.dtype, np.ndarray] = {}


def _no_buffer(dtype: np.dtype) -> np.ndarray:
    empty = _EMPTY.get(dtype)
    if empty is None:
        empty = _EMPTY[dtype] = np.empty(0, dtype)
    return empty


def _check_nonnegative(value: object, name: str, *, below_one: bool = False) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a number >= 0, got {value!r} instead.") from None
    if not np.isfinite(v) or v < 0 or (below_one and v >= 1):
        want = "in [0, 1)" if below_one else ">= 0"
        raise InputError(f"{name}: expected a finite number {want}, got {value!r} instead.")
    return v


def _positive(obj: object, value: object, name: str) -> float:
    return check_positive(value, name)


def _nonnegative(obj: object, value: object, name: str) -> float:
    return _check_nonnegative(value, name)


def _schedule(obj: object, value: object, name: str) -> Schedule:
    return _check_schedule(value, None)


def _step_count(obj: object, value: object, name: str) -> int:
    """``t``: the steps taken, an integer >= 0 (it sets the schedule's factor and Adam's
    bias corrections)."""
    if type(value) is int and value >= 0:  # every step's t += 1: the one test
        return value
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise InputError(f"{name}: expected an integer >= 0 (the steps taken), got {value!r} "
                         "instead.")
    return int(value)


def _momentum(obj: object, value: object, name: str) -> float:
    v = _check_nonnegative(value, name, below_one=True)
    if v == 0 and getattr(obj, "nesterov", False):
        raise InputError(f"{name}: Nesterov momentum needs momentum > 0, got {value!r}; set "
                         "nesterov = False first.")
    return v


def _nesterov(obj: object, value: object, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise InputError(f"{name}: expected True or False, got {value!r} instead.")
    if value and getattr(obj, "momentum", 0.0) == 0:
        raise InputError(f"{name}: Nesterov momentum needs momentum > 0, got momentum 0.")
    return bool(value)


def _betas(obj: object, value: object, name: str) -> tuple[float, float]:
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise InputError(f"{name}: expected a pair (beta1, beta2), got {value!r} instead.")
    return (_check_nonnegative(value[0], f"{name}[0]", below_one=True),
            _check_nonnegative(value[1], f"{name}[1]", below_one=True))


def _check_step_args(params: object, grads: object) -> None:
    """Every gradient has a parameter of its shape and dtype (cheap: no data is read)."""
    if not isinstance(params, dict) or not isinstance(grads, dict):
        raise InputError(
            "params, grads: expected two dicts of arrays keyed by parameter name, got "
            f"{type(params).__name__} and {type(grads).__name__} instead."
        )
    for name, g in grads.items():
        p = params.get(name)
        if p is None:
            raise InputError(f"grads: key {name!r} has no parameter of that name in params.")
        if not isinstance(g, np.ndarray) or g.shape != p.shape or g.dtype != p.dtype:
            got = (f"{g.dtype} array of shape {g.shape}" if isinstance(g, np.ndarray)
                   else type(g).__name__)
            raise InputError(
                f"grads[{name!r}]: expected a {p.dtype} array of shape {p.shape} like its "
                f"parameter, got {got} instead."
            )


class Optimizer(CheckedSettings, FlatState):
    """Shared parts: learning rate and schedule, step count, state (de)serialization; the
    flat buffers and the fused update come from :class:`bnprop.optim_flat.FlatState`.

    The hyperparameters (``lr``, ``weight_decay``, ``schedule`` and each optimizer's own)
    may be changed between steps by assignment, ``opt.lr = 0.01``; each assignment is
    checked as the constructor's argument is (:class:`~bnprop._validate.CheckedSettings`).
    """

    setting_checks: ClassVar[dict[str, Callable[[Any, object, str], object]]] = {
        "lr": _positive, "weight_decay": _nonnegative, "schedule": _schedule,
        "t": _step_count}

    #: Names of the per-parameter buffers, e.g. ``("momentum_buffer",)``.
    buffer_names: tuple[str, ...] = ()

    def __init__(
        self, lr: float, weight_decay: float, schedule: object, total_steps: int | None,
    ) -> None:
        self.lr = lr
        self.weight_decay = weight_decay
        self.schedule = _check_schedule(schedule, total_steps)
        self.t = 0
        self.buffers: dict[str, dict[str, np.ndarray]] = {k: {} for k in self.buffer_names}
        self._scratch: dict[np.dtype, np.ndarray] = {}
        self._flats: dict[tuple[str, np.dtype], np.ndarray] = {}
        self._views: dict[tuple[str, np.dtype], tuple[Any, tuple[np.ndarray, ...]]] = {}

    @property
    def current_lr(self) -> float:
        """``lr_t = lr * schedule.factor(t)``, the rate the next step uses."""
        return self.lr * self.schedule.factor(self.t)

    def _decayed(self, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        """``g' = g + weight_decay * p`` (a new array when weight_decay > 0, else ``g``)."""
        if self.weight_decay == 0.0:
            return g
        return g + self.weight_decay * p

    def _work(self, p: np.ndarray) -> np.ndarray:
        """A work array shaped like ``p``: a view of one buffer per dtype, as large as the
        largest parameter and kept between steps (not part of the state). The updates
        write their temporaries into it instead of allocating them, and one buffer for
        all parameters stays in cache from one parameter to the next."""
        flat = self._scratch.get(p.dtype)
        if flat is None or flat.size < p.size:
            flat = self._scratch[p.dtype] = np.empty(p.size, p.dtype)
        return flat[:p.size].reshape(p.shape)

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Update every parameter that has a gradient, in place; then ``t += 1``."""
        _check_step_args(params, grads)
        lr = self.current_lr
        for name, g in grads.items():
            self._update(name, params[name], g, lr)
        self.t += 1

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        raise NotImplementedError

    def _buffer(self, kind: str, name: str, p: np.ndarray) -> np.ndarray | None:
        """The stored buffer, checked against its parameter (a resumed state may not fit)."""
        buf = self.buffers[kind].get(name)
        if buf is not None and (buf.shape != p.shape or buf.dtype != p.dtype):
            raise InputError(
                f"{kind}.{name}: the optimizer state holds a {buf.dtype} array of shape "
                f"{buf.shape}, but the parameter is {p.dtype} of shape {p.shape}."
            )
        return buf

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{"t": int64 scalar, "<buffer>.<param name>": array, ...}``, copies."""
        state: dict[str, np.ndarray] = {"t": np.array(self.t, dtype=np.int64)}
        for kind, bufs in self.buffers.items():
            for name, buf in bufs.items():
                state[f"{kind}.{name}"] = buf.copy()
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore ``t`` and the buffers from :meth:`state_dict` (arrays are copied)."""
        if not isinstance(state, dict) or "t" not in state:
            raise InputError("state: expected the dict of optimizer.state_dict(), with key 't'.")
        t = np.asarray(state["t"])
        if t.shape != () or t.dtype.kind not in "iu" or int(t) < 0:
            raise InputError(
                f"state['t']: expected an integer scalar >= 0, got {t.dtype} array of "
                f"shape {t.shape} instead."
            )
        buffers: dict[str, dict[str, np.ndarray]] = {k: {} for k in self.buffer_names}
        for key, value in state.items():
            if key == "t":
                continue
            kind, _, name = key.partition(".")
            if kind not in buffers or not name:
                raise InputError(
                    f"state: unexpected key {key!r}; {type(self).__name__} keys are 't' and "
                    + ", ".join(f"'{k}.<param name>'" for k in self.buffer_names) + "."
                )
            arr = np.asarray(value)
            if arr.dtype not in (np.float32, np.float64) or not np.isfinite(arr).all():
                raise InputError(
                    f"state[{key!r}]: expected a finite float32 or float64 array, got "
                    f"dtype {arr.dtype} instead."
                )
            buffers[kind][name] = arr.copy()
        self.t = int(t)
        self.buffers = buffers


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    ``g' = g + weight_decay * p``; ``v = g'`` at the first step, then
    ``v = momentum * v + g'``; ``p -= lr_t * v``.

    Parameters
    ----------
    lr : float
        Learning rate, > 0.
    momentum : float, default=0.0
        In [0, 1).
    weight_decay : float, default=0.0
        L2 penalty coefficient, >= 0 (applied to every parameter, gamma and beta included).
    schedule : None, "constant", "cosine", "step" or Schedule, default=None
        ``lr_t = lr * schedule.factor(t)``; a name is :meth:`Schedule.from_name`.
    total_steps : int, optional
        Length of the run, needed by the names "cosine", "step" and "onecycle".
    nesterov : bool, default=False
        Nesterov momentum, as ``torch.optim.SGD(nesterov=True)``: the step is
        ``g' + momentum * v``; needs ``momentum > 0``.

    Examples
    --------
    >>> import numpy as np
    >>> from bnprop.optim import SGD
    >>> p = {"w": np.ones(2)}
    >>> SGD(0.5).step(p, {"w": np.array([1.0, -1.0])}); p["w"]
    array([0.5, 1.5])
    """

    buffer_names = ("momentum_buffer",)
    setting_checks: ClassVar[dict[str, Callable[[Any, object, str], object]]] = {
        **Optimizer.setting_checks, "momentum": _momentum, "nesterov": _nesterov}
    #: ``(numbers, momentum buffer, update)`` of the last update that adopted nothing.
    _kept: tuple[tuple[float, float, float, bool], np.ndarray | None, FlatUpdate] | None = None

    def __init__(
        self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
        schedule: object = None, *, total_steps: int | None = None, nesterov: bool = False,
    ) -> None:
        super().__init__(lr, weight_decay, schedule, total_steps)
        self.momentum = momentum
        self.nesterov = nesterov

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        d = self._decayed(p, g)
        if self.momentum != 0.0:
            v = self._buffer("momentum_buffer", name, p)
            if v is None:
                v = self.buffers["momentum_buffer"][name] = d.copy()
            else:
                v *= self.momentum
                v += d
            d = d + v * self.momentum if self.nesterov else v
        p -= np.multiply(d, lr, out=self._work(p))

    def _flat_args(self, p: np.ndarray, g: np.ndarray, flats: list[np.ndarray | None],
                   lr: float) -> FlatUpdate:
        (v,) = flats
        numbers = (self.weight_decay, self.momentum, lr, self.nesterov)
        kept = self._kept  # the last update that adopted nothing: the same one again?
        if kept is not None and kept[2].p is p and kept[2].g is g and kept[1] is v \
                and kept[0] == numbers:
            return kept[2]  # 1 us less a step than building it anew
        first = v is None
        if first:
            v = np.empty_like(p) if self.momentum != 0.0 else _no_buffer(p.dtype)
        coef = np.array([self.weight_decay, self.momentum, lr], p.dtype)
        flags = first + 2 * (self.momentum != 0.0) + 4 * bool(self.nesterov)
        adopt = (("momentum_buffer", v),) if first and self.momentum != 0.0 else ()
        update = FlatUpdate("sgd", p, g, v, v, coef, flags, adopt)
        if not adopt:  # its arguments are all that decides it (it reads v, does not adopt)
            self._kept = (numbers, flats[0], update)
        return update

    def __repr__(self) -> str:
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay}, schedule={self.schedule})")


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), as ``torch.optim.Adam`` (L2 decay, no AMSGrad).

    ``g' = g + weight_decay * p``; ``m = beta1 m + (1 - beta1) g'``;
    ``v = beta2 v + (1 - beta2) g'^2``;
    ``p -= lr_t / (1 - beta1^(t+1)) * m / (sqrt(v) / sqrt(1 - beta2^(t+1)) + eps)``.

    Parameters
    ----------
    lr : float, default=1e-3
    betas : (float, float), default=(0.9, 0.999)
        Each in [0, 1).
    eps : float, default=1e-8
    weight_decay : float, default=0.0
    schedule : None, "constant", "cosine", "step" or Schedule, default=None
        As :class:`SGD`.
    total_steps : int, optional
        Length of the run, needed by the names "cosine" and "step".
    """

    buffer_names = ("exp_avg", "exp_avg_sq")
    setting_checks: ClassVar[dict[str, Callable[[Any, object, str], object]]] = {
        **Optimizer.setting_checks, "betas": _betas, "eps": _positive}

    def __init__(
        self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0.0, schedule: object = None, *, total_steps: int | None = None,
    ) -> None:
        super().__init__(lr, weight_decay, schedule, total_steps)
        self.betas = betas
        self.eps = eps

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        beta1, beta2 = self.betas
        d = self._decayed(p, g)
        m = self._buffer("exp_avg", name, p)
        v = self._buffer("exp_avg_sq", name, p)
        if m is None or v is None:
            m = self.buffers["exp_avg"][name] = np.zeros_like(p)
            v = self.buffers["exp_avg_sq"][name] = np.zeros_like(p)
        step = self.t + 1
        work = self._work(p)  # each line: the same operations, without a temporary
        m += np.multiply(np.subtract(d, m, out=work), 1.0 - beta1, out=work)  # torch's lerp:
        v *= beta2                                     # m = beta1 m + (1 - beta1) g'
        v += np.multiply(np.multiply(d, d, out=work), 1.0 - beta2, out=work)
        step_size = lr / (1.0 - beta1**step)
        denom = np.sqrt(v, out=work)
        denom /= math.sqrt(1.0 - beta2**step)
        denom += self.eps
        p -= np.multiply(np.divide(m, denom, out=work), step_size, out=work)

    def _flat_args(self, p: np.ndarray, g: np.ndarray, flats: list[np.ndarray | None],
                   lr: float) -> FlatUpdate:
        m, v = flats
        adopt: tuple[tuple[str, np.ndarray], ...] = ()
        if m is None or v is None:
            m, v = np.zeros_like(p), np.zeros_like(p)
            adopt = (("exp_avg", m), ("exp_avg_sq", v))
        beta1, beta2 = self.betas
        step = self.t + 1
        coef = np.array([self.weight_decay, 1.0 - beta1, beta2, 1.0 - beta2,
                         lr / (1.0 - beta1**step), math.sqrt(1.0 - beta2**step), self.eps],
                        p.dtype)
        return FlatUpdate("adam", p, g, m, v, coef, 0, adopt)

    def __repr__(self) -> str:
        return (f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay}, schedule={self.schedule})")
