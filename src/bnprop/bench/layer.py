"""The BN layer's forward + backward: bnprop's public layer functions against PyTorch eager.

One call, both sides, rows are examples (m, n_in) -> (m, n_out)::

    Y  = sigmoid(BN(O W^T))          training mode: batch statistics, exact gradient
    dO, dW, dgamma, dbeta            from a fixed dY

bnprop: the public API, ``cache = bnprop.layer_forward(O, W, gamma, beta,
activation="sigmoid", eps=EPS)`` then ``bnprop.layer_backward(dY, cache, stats="exact")``
(whatever path they take inside is what is measured).
PyTorch: ``Sequential(Linear(n_in, n_out, bias=False), BatchNorm1d(n_out), Sigmoid())``,
``y.backward(dY)`` with the input requiring grad (so dO is computed as well).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import bnprop

EPS = 1e-5


def bnprop_layer(O: np.ndarray, W: np.ndarray, dY: np.ndarray) -> Callable[[], None]:
    """A call of bnprop's public layer forward + backward on fixed inputs."""
    n_out = W.shape[0]
    gamma, beta = np.ones(n_out, O.dtype), np.zeros(n_out, O.dtype)

    def call() -> None:
        cache = bnprop.layer_forward(O, W, gamma, beta, activation="sigmoid", eps=EPS)
        bnprop.layer_backward(dY, cache, stats="exact")

    return call


def torch_layer(O: np.ndarray, W: np.ndarray, dY: np.ndarray) -> Callable[[], None]:
    """The same call in PyTorch eager (imports torch)."""
    import torch

    n_out, n_in = W.shape
    module = torch.nn.Sequential(torch.nn.Linear(n_in, n_out, bias=False),
                                 torch.nn.BatchNorm1d(n_out, eps=EPS), torch.nn.Sigmoid())
    module = module.to(torch.float32 if O.dtype == np.float32 else torch.float64)
    with torch.no_grad():
        module[0].weight.copy_(torch.from_numpy(W))
    x = torch.from_numpy(O.copy()).requires_grad_(True)
    dy = torch.from_numpy(dY.copy())
    params = list(module.parameters())

    def call() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        module(x).backward(dy)

    return call


def layer_inputs(m: int, n_in: int, n_out: int, dtype: Any,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``O`` (m, n_in) uniform in [0, 1) (sigmoid outputs), ``W`` ~ N(0, 1/n_in), ``dY``."""
    rng = np.random.default_rng(seed)
    O = rng.random((m, n_in)).astype(dtype)
    W = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(dtype)
    dY = (rng.standard_normal((m, n_out)) / m).astype(dtype)
    return O, W, dY
