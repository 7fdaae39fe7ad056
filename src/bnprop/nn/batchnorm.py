"""``BatchNorm1d``: the handout's normalization as a module, with PyTorch's conventions.

Training (batch statistics of the ``m`` rows; biased variance)::

    mu_B    = (1/m) sum_i Z_i,   var_B = (1/m) sum_i (Z_i - mu_B)^2
    A       = gamma * (Z - mu_B) / sqrt(var_B + eps) + beta

Inference (running statistics)::

    A       = gamma * (Z - running_mean) / sqrt(running_var + eps) + beta

Running statistics, updated by every training forward (``m`` rows, unbiased variance)::

    running="ema"      running_mean = (1 - momentum) * running_mean + momentum * mu_B
                       running_var  = (1 - momentum) * running_var  + momentum * m/(m-1) * var_B
    running="average"  the same with momentum = 1/k at the k-th batch (k = num_batches_tracked)

``momentum`` weights the new batch, as in ``torch.nn.BatchNorm1d`` (Flax's ``momentum``
is the other weight, ``1 - momentum``). ``"ema"`` with momentum 0.1 is PyTorch's default;
``"average"`` is Ioffe & Szegedy's Algorithm 2 and PyTorch's ``momentum=None``. They start
at ``running_mean = 0``, ``running_var = 1``; ``gamma = 1``, ``beta = 0`` (PyTorch's
``weight`` and ``bias``).

Backward (``stats``): ``"exact"`` differentiates through ``mu_B`` and ``var_B``,
``"frozen"`` holds them constant (the handout's part 4); :mod:`bnprop.batchnorm` gives
both equations. The work is done by :class:`~bnprop.nn.stage.BNStage`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from bnprop import batchnorm as bn
from bnprop._validate import CheckedSettings, InputError, check_choice, check_positive
from bnprop.nn.module import Module, _check_width
from bnprop.nn.stage import BNStage

STATS_MODES = ("exact", "frozen")
RUNNING_MODES = ("ema", "average")


def _momentum(obj: object, value: object, name: str) -> float:
    v = check_positive(value, name)
    if v > 1:
        raise InputError(f"{name}: expected a number in (0, 1], got {value!r} instead.")
    return v


def _running(obj: object, value: object, name: str) -> object:
    """A running statistic assigned anew holds finite values (variances >= 0); its shape
    and dtype are checked next (:func:`bnprop.nn.module._replacement`)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return value  # not numbers: the shape and dtype check names it
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: expected finite values, got {arr[~np.isfinite(arr)][0]}.")
    if name == "running_var" and (arr < 0).any():
        raise InputError(f"{name}: expected variances >= 0, got {arr.min()}.")
    return value


def _counter(obj: object, value: object, name: str) -> object:
    try:
        arr = np.asarray(value)
        ok = arr.shape == () and arr.dtype.kind in "iu" and 0 <= int(arr) < 2**63
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise InputError(f"{name}: expected an integer from 0 to 2**63 - 1, got {value!r} "
                         "instead.")
    return value


class BatchNorm1d(CheckedSettings, Module):
    """Batch normalization of ``(m, num_features)`` inputs (module docstring).

    Parameters
    ----------
    num_features : int
    eps : float, default=1e-5
    momentum : float, default=0.1
        In (0, 1]; the weight of the new batch in ``running="ema"``.
    running : {"ema", "average"}, default="ema"
    stats : {"exact", "frozen"}, default="exact"
        Gradient through the batch statistics, or with them held fixed.
    dtype : {"float32", "float64"}, default="float32"
    """

    param_names = ("gamma", "beta")
    buffer_names = ("running_mean", "running_var", "num_batches_tracked")
    torch_names: ClassVar[dict[str, str]] = {"gamma": "weight", "beta": "bias"}
    #: ``eps``, ``momentum``, ``running`` and ``stats`` may be changed between steps by
    #: assignment; each assignment is checked as the constructor's argument is. So are the
    #: buffers' values (then their shape and dtype, as every parameter's and buffer's).
    setting_checks: ClassVar[dict[str, Callable[[Any, object, str], object]]] = {
        "eps": lambda obj, v, name: check_positive(v, name), "momentum": _momentum,
        "running": lambda obj, v, name: check_choice(v, name, RUNNING_MODES),
        "stats": lambda obj, v, name: check_choice(v, name, STATS_MODES),
        "running_mean": _running, "running_var": _running, "num_batches_tracked": _counter}

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, *,
                 running: str = "ema", stats: str = "exact", dtype: str = "float32") -> None:
        super().__init__(dtype)
        self.num_features = _check_width(num_features, "num_features")
        self.in_features = self.out_features = self.num_features
        self.eps = eps
        self.momentum = momentum
        self.running = running
        self.stats = stats
        n, dt = self.num_features, self.dtype
        self.gamma = np.ones(n, dt)
        self.beta = np.zeros(n, dt)
        self.running_mean = np.zeros(n, dt)
        self.running_var = np.ones(n, dt)
        self.num_batches_tracked = np.zeros((), np.int64)
        self.stage = BNStage(self)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"running={self.running!r}, stats={self.stats!r}")

    def _check_input(self, X: object, training: bool) -> np.ndarray:
        X = super()._check_input(X, training)
        if training and X.shape[0] < 2:
            raise InputError(
                f"X: got a training batch of {X.shape[0]} example; the batch variance of "
                "one example is always 0, so batch normalization needs m >= 2 rows."
            )
        return X

    def forward(self, X: object, training: bool = True) -> np.ndarray:
        """Validate ``X`` (m, num_features), normalize it, and (training) update the
        running statistics; returns a fresh array."""
        Y = super().forward(X, training)
        if training:
            self.commit_running()
        return Y

    def _forward(self, X: np.ndarray, training: bool) -> np.ndarray:
        self._remember(X, training)
        return self.stage.forward(X, training)

    def _backward(self, dY: np.ndarray, dX: np.ndarray | None) -> None:
        self.stage.backward(dY, dX)

    def commit_running(self, stage: BNStage | None = None) -> None:
        """Fold the last training batch's statistics into the running ones (in place).

        ``mu_B`` and ``var_B`` are rounded to the dtype first (as the layer's cache holds
        them), then ``running = (1 - momentum) * running + momentum * batch`` with the
        unbiased ``m/(m-1) var_B``; ``momentum = 1/k`` for ``running="average"``.
        """
        stage = self.stage if stage is None else stage
        if stage.batch_stats is None:
            return
        m, mu_B, var_B = stage.batch_stats
        stage.batch_stats = None
        self.num_batches_tracked += 1
        k = int(self.num_batches_tracked)
        momentum = self.momentum if self.running == "ema" else 1.0 / k
        mu_B = mu_B.astype(self.dtype)
        var_B = var_B.astype(self.dtype)
        self.running_mean[...] = bn.running_update(self.running_mean, mu_B, momentum)
        self.running_var[...] = bn.running_update(
            self.running_var, bn.unbiased_var(var_B, m), momentum)

    def fold_into(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inference normalization folded into the map ``W`` before it:
        :func:`bnprop.batchnorm.fold` (``W_fold``, ``b_fold``)."""
        return bn.fold(W, self.gamma, self.beta, self.running_mean, self.running_var,
                       self.eps)
