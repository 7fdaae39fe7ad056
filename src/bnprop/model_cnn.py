"""A batch-normalized convolutional network (``bnprop train --arch cnn``), as a Sequential.

``cnn(channels=(16, 32), hidden=(128,))`` on ``(N, 1, 28, 28)`` images builds, for each
entry ``c`` of ``channels``::

    Conv2d(c_prev, c, 3, padding=1, bias=False) -> BatchNorm2d(c) -> ReLU -> MaxPool2d(2)

then ``Flatten -> [Linear(bias=False) -> BatchNorm1d -> ReLU] per hidden width ->
Linear(n_classes)``. Each conv stage runs as one fused batch-norm stage on the im2col
matrix, its max pool inside it (:class:`~bnprop.nn.plan.ConvNormStep`), each hidden
layer as the handout's layer.
Weights ``N(0, 1/fan_in)`` from ``numpy.random.default_rng(seed)``, module by module.

A saved CNN is a :class:`~bnprop.nn.Sequential` state (``"kind": "Sequential"`` in its
config); :func:`load_net` rebuilds either kind of saved net.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnprop._validate import InputError
from bnprop.nn import (
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    Module,
    ReLU,
    Sequential,
)
from bnprop.nn.convert import read_config


def _widths(values: Sequence[int], name: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if not out or min(out) < 1:
        raise InputError(f"{name}: expected one or more widths >= 1, got {values!r} instead.")
    return out


def cnn(channels: Sequence[int] = (16, 32), hidden: Sequence[int] = (128,), *,
        n_classes: int = 10, in_channels: int = 1, image_size: int = 28,
        dtype: str = "float32", seed: int = 0, stats: str = "exact", running: str = "ema",
        eps: float = 1e-5, momentum: float = 0.1, backend: str = "numba") -> Sequential:
    """The CNN of the module docstring for ``(N, in_channels, image_size, image_size)``.

    Each max pool halves the side (rounding down); the first ``Linear`` takes
    ``channels[-1] * side^2`` features.
    """
    channels, hidden = _widths(channels, "channels"), _widths(hidden, "hidden")
    side = int(image_size)
    for _ in channels:
        side //= 2
    if side < 1:
        raise InputError(f"channels: {len(channels)} max-pool stages halve the {image_size} x "
                         f"{image_size} images to nothing; use at most "
                         f"{int(math.log2(image_size))} entries.")
    rng = np.random.default_rng(seed)
    bn = {"eps": eps, "momentum": momentum, "running": running, "stats": stats, "dtype": dtype}
    mods: list[Module] = []
    c_prev = in_channels
    for c in channels:
        mods += [Conv2d(c_prev, c, 3, padding=1, bias=False, dtype=dtype, rng=rng),
                 BatchNorm2d(c, **bn), ReLU(dtype=dtype), MaxPool2d(2, dtype=dtype)]
        c_prev = c
    mods.append(Flatten(dtype=dtype))
    n_in = c_prev * side * side
    for h in hidden:
        mods += [Linear(n_in, h, bias=False, dtype=dtype, rng=rng), BatchNorm1d(h, **bn),
                 ReLU(dtype=dtype)]
        n_in = h
    mods.append(Linear(n_in, n_classes, dtype=dtype, rng=rng))
    return Sequential(*mods, backend=backend)


def as_images(X: np.ndarray, channels: int = 1) -> np.ndarray:
    """Rows of ``channels * side^2`` pixels (a dataset's ``(n, 784)``) as
    ``(n, channels, side, side)`` images (a view)."""
    side = math.isqrt(X.shape[1] // channels)
    if channels * side * side != X.shape[1]:
        raise InputError(f"X: expected rows of {channels} square image(s), got "
                         f"{X.shape[1]} values a row.")
    return X.reshape(X.shape[0], channels, side, side)


def load_net(state: dict[str, np.ndarray]) -> Any:
    """The net of a saved state: a :class:`~bnprop.nn.Sequential` (a CNN) or an MLP."""
    from bnprop.model import MLP

    if read_config(state, "network").get("kind") == "Sequential":
        return Sequential.from_state(state)
    return MLP.from_state(state)


def net_inputs(net: Any, X: np.ndarray) -> np.ndarray:
    """``X`` as the net takes it: images for a net that starts with image layers."""
    return as_images(X, net.in_features) if getattr(net, "input_ndim", 2) == 4 else X
