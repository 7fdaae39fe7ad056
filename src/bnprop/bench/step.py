"""One training step of an MLP with BN: bnprop's public ``train_step`` against PyTorch eager.

The step, the same on every side: ``sizes = (n_0, ..., n_L)``, hidden layers
``sigmoid(BN(O W^T))`` (no bias, batch statistics, running statistics updated), output
``O W^T + b``, mean softmax cross-entropy, plain SGD ``p -= lr * g`` (lr = 0.01), one
fixed batch of ``m`` rows.

* bnprop: ``net = bnprop.MLP(sizes, dtype=...)``, ``net.train_step(X, y, bnprop.SGD(lr))``:
  the public call, whatever path it takes inside.
* PyTorch eager: ``Sequential(Linear(bias=False), BatchNorm1d, Sigmoid, ..., Linear)``,
  ``zero_grad(set_to_none=True)``, ``cross_entropy``, ``backward``, ``SGD.step``.
* JAX jit: :mod:`bnprop.bench.jax_peer`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

import bnprop

LR = 0.01
IOFFE = ((784, 100, 100, 100, 10), 60)
WIDE = ((784, 1024, 1024, 1024, 10), 512)


def step_inputs(sizes: tuple[int, ...], m: int, dtype: Any,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch: ``X`` (m, sizes[0]) uniform in [0, 1), labels ``y`` (m,) int64."""
    rng = np.random.default_rng(seed)
    return rng.random((m, sizes[0])).astype(dtype), rng.integers(0, sizes[-1], m)


def bnprop_step(sizes: tuple[int, ...], X: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    """A call of ``MLP.train_step`` with SGD on the fixed batch."""
    net, opt = bnprop.MLP(sizes, dtype=X.dtype.name), bnprop.SGD(LR)

    def call() -> None:
        net.train_step(X, y, opt)

    return call


def torch_model(sizes: tuple[int, ...], dtype: Any, activation: str = "sigmoid") -> Any:
    """``Linear(bias=False), BatchNorm1d, activation`` per hidden layer, then ``Linear``."""
    import torch

    act = {"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU,
           "identity": torch.nn.Identity}[activation]
    layers: list[Any] = []
    for n_in, n_out in itertools.pairwise(sizes[:-1]):
        layers += [torch.nn.Linear(n_in, n_out, bias=False), torch.nn.BatchNorm1d(n_out),
                   act()]
    layers.append(torch.nn.Linear(sizes[-2], sizes[-1]))
    return torch.nn.Sequential(*layers).to(torch.float32 if dtype == np.float32
                                           else torch.float64)


def torch_step(sizes: tuple[int, ...], X: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    """A call of the same SGD step in PyTorch eager."""
    import torch

    model = torch_model(sizes, X.dtype)
    return torch_call(model, torch.optim.SGD(model.parameters(), lr=LR), X, y)


def torch_call(model: Any, opt: Any, X: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    """One PyTorch eager step of ``model`` on the fixed batch: ``zero_grad``, mean
    cross-entropy, ``backward``, ``opt.step()`` (imports torch)."""
    import torch

    xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def call() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()

    return call
