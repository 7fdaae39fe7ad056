"""Noise after batch normalization (Santurkar et al. 2018, sec. 2.1): ``NoisyUnit``.

In training, at every forward pass (one per training step), unit ``j`` draws a new scale and
shift from the module's own seeded generator, and the batch's values ``X[:, j]`` become::

    s_tj ~ U(1, scale)           b_tj ~ U(-shift, shift)          (independent draws)
    Y[:, j] = s_tj * X[:, j] + b_tj                                  (every row of the batch)

so after ``BatchNorm1d`` (output mean ``beta_j``, variance ``gamma_j^2`` over the batch)
unit j's batch has mean ``s_tj beta_j + b_tj`` and variance ``s_tj^2 gamma_j^2``: a
non-zero mean and a non-unit variance that change at every step, the "distributional
instability" the paper injects. Backward: ``dX = s_t * dY``. No parameters. In inference
(``training=False``) the noise is off: ``Y = X``.

:func:`noisy_mlp` builds the noisy BN network: ``Linear(bias=False) -> BatchNorm1d ->
NoisyUnit -> sigmoid`` per hidden layer, from the same weights as ``bnprop.MLP`` of the
same seed. :func:`activation_inputs` reads every activation's input on a copy of a
network.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnprop._validate import InputError
from bnprop.nn import BatchNorm1d, Identity, Linear, Module, ReLU, Sequential, Sigmoid, Tanh
from bnprop.nn.module import ACTIVATION_MODULES

#: Second entry of the seed sequence of the noise generators.
NOISE_STREAM = 0x5A27
ACTIVATIONS = (Sigmoid, Tanh, ReLU, Identity)


def check_number(value: object, name: str, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InputError(f"{name}: expected a number >= {minimum:g}, got {value!r} instead.")
    v = float(value)
    if not (np.isfinite(v) and v >= minimum):
        raise InputError(f"{name}: expected a finite number >= {minimum:g}, got {value!r} "
                         "instead.")
    return v


class NoisyUnit(Module):
    """Per-unit noise ``Y = s_t * X + b_t``, redrawn at every training forward (module
    docstring).

    Parameters
    ----------
    num_features : int
    shift : float, default=1.0
        ``b_tj ~ U(-shift, shift)``; >= 0.
    scale : float, default=2.0
        ``s_tj ~ U(1, scale)``; >= 1.
    seed : int or sequence of int, default=0
        Seed of the module's generator (``numpy.random.default_rng``).
    dtype : {"float32", "float64"}, default="float32"
    """

    def __init__(self, num_features: int, *, shift: float = 1.0, scale: float = 2.0,
                 seed: int | Sequence[int] = 0, dtype: str = "float32") -> None:
        super().__init__(dtype)
        if (isinstance(num_features, bool) or not isinstance(num_features, int | np.integer)
                or num_features < 1):
            raise InputError(f"num_features: expected an integer >= 1, got {num_features!r} "
                             "instead.")
        self.in_features = self.out_features = int(num_features)
        self.shift = check_number(shift, "shift", 0.0)
        self.scale = check_number(scale, "scale", 1.0)
        self.rng = np.random.default_rng(seed)
        #: The current draw (ones and zeros before the first training forward).
        self.s = np.ones(self.in_features, self.dtype)
        self.b = np.zeros(self.in_features, self.dtype)
        self.draws = 0

    def extra_repr(self) -> str:
        return f"{self.in_features}, shift={self.shift:g}, scale={self.scale:g}"

    def redraw(self) -> None:
        """``s ~ U(1, scale)``, then ``b ~ U(-shift, shift)``, per unit (float64, cast)."""
        n = self.in_features
        self.s[...] = self.rng.uniform(1.0, self.scale, n)
        self.b[...] = self.rng.uniform(-self.shift, self.shift, n)
        self.draws += 1

    def _forward(self, X: np.ndarray, training: bool) -> np.ndarray:
        self._remember(X, training)
        if not training:
            return X
        self.redraw()
        if getattr(self, "_Y", None) is None or self._Y.shape != X.shape:
            self._Y = np.empty(X.shape, self.dtype)
        np.multiply(X, self.s, out=self._Y)
        self._Y += self.b
        return self._Y

    def _backward(self, dY: np.ndarray, dX: np.ndarray | None) -> None:
        if dX is not None:
            np.multiply(dY, self.s, out=dX)


def noisy_mlp(sizes: Sequence[int], *, activation: str = "sigmoid", shift: float = 1.0,
              scale: float = 2.0, seed: int = 0, dtype: str = "float32",
              running: str = "ema") -> Sequential:
    """``Linear(bias=False), BatchNorm1d, NoisyUnit, activation`` per hidden layer, then
    ``Linear``: the W matrices of ``bnprop.MLP(sizes, seed=seed)`` (drawn from one
    generator, layer by layer); hidden layer l's noise from ``[seed, NOISE_STREAM, l]``."""
    rng = np.random.default_rng(seed)
    pairs = list(itertools.pairwise(sizes))
    modules: list[Module] = []
    for l, (n_in, n_out) in enumerate(pairs):
        last = l == len(pairs) - 1
        modules.append(Linear(n_in, n_out, bias=last, dtype=dtype, rng=rng))
        if last:
            break
        modules += [BatchNorm1d(n_out, running=running, dtype=dtype),
                    NoisyUnit(n_out, shift=shift, scale=scale, seed=[seed, NOISE_STREAM, l],
                              dtype=dtype),
                    ACTIVATION_MODULES[activation](dtype=dtype)]
    return Sequential(*modules)


def activation_inputs(net: Any, X: np.ndarray, *, training: bool) -> list[np.ndarray]:
    """The input of every activation module of ``net`` on ``X``, in order (copies).

    Runs the modules' public ``forward`` one after the other on a copy of ``net``: with
    ``training=True`` batch normalization uses the batch statistics of ``X`` and a
    ``NoisyUnit`` draws its next noise (the draw the network's next training step takes,
    since the copy's generator is in the same state); ``net`` is untouched.
    """
    H = X
    inputs = []
    for module in copy.deepcopy(net).modules:
        if isinstance(module, ACTIVATIONS):
            inputs.append(H.copy())
        H = module.forward(H, training)
    return inputs
