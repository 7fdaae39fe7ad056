"""One training step of an MLP with BN: bnprop's fast step against PyTorch and JAX.

The step, the same on every side: ``sizes = (n_0, ..., n_L)``, hidden layers
``sigmoid(BN(O W^T))`` (no bias, batch statistics, running statistics updated), output
``O W^T + b``, mean softmax cross-entropy, plain SGD ``p -= lr * g`` (lr = 0.01), one
fixed batch of ``m`` rows.

* bnprop: ``MLP(sizes, dtype).train_step(X, y, SGD(lr), fast=True)`` (:mod:`bnprop.fast`).
* PyTorch eager: ``Sequential(Linear(bias=False), BatchNorm1d, Sigmoid, ..., Linear)``,
  ``zero_grad(set_to_none=True)``, ``cross_entropy``, ``backward``, ``SGD.step``.
* torch.compile: the same step function compiled (``torch.compile``), compile time reported.
* JAX jit: the same forward in ``jax.numpy``, ``jax.value_and_grad``, the SGD update and the
  running statistics in one ``jax.jit`` function (buffers donated).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bnprop.model import MLP
from bnprop.optim import SGD

LR = 0.01
IOFFE = ((784, 100, 100, 100, 10), 60)
WIDE = ((784, 1024, 1024, 1024, 10), 512)


def step_inputs(sizes: tuple[int, ...], m: int, dtype: Any,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch: ``X`` (m, sizes[0]) uniform in [0, 1), labels ``y`` (m,) int64."""
    rng = np.random.default_rng(seed)
    return rng.random((m, sizes[0])).astype(dtype), rng.integers(0, sizes[-1], m)


def bnprop_step(sizes: tuple[int, ...], X: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    net, opt = MLP(sizes, dtype=X.dtype.name), SGD(LR)

    def call() -> None:
        net.train_step(X, y, opt, fast=True)

    return call


def _torch_model(sizes: tuple[int, ...], dtype: Any) -> Any:
    import torch

    layers: list[Any] = []
    for n_in, n_out in itertools.pairwise(sizes[:-1]):
        layers += [torch.nn.Linear(n_in, n_out, bias=False), torch.nn.BatchNorm1d(n_out),
                   torch.nn.Sigmoid()]
    layers.append(torch.nn.Linear(sizes[-2], sizes[-1]))
    return torch.nn.Sequential(*layers).to(torch.float32 if dtype == np.float32
                                           else torch.float64)


def torch_step(sizes: tuple[int, ...], X: np.ndarray, y: np.ndarray,
               compiled: bool = False) -> tuple[Callable[[], None], float]:
    """``(call, compile_seconds)``; compile_seconds is the first call's time."""
    import torch

    model = _torch_model(sizes, X.dtype)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def step(x: Any, target: Any) -> Any:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        return loss

    fn = torch.compile(step) if compiled else step
    t0 = time.perf_counter()
    fn(xt, yt)
    first = time.perf_counter() - t0

    def call() -> None:
        fn(xt, yt)

    return call, first


def jax_step(sizes: tuple[int, ...], X: np.ndarray, y: np.ndarray,
             ) -> tuple[Callable[[], None], float]:
    """``(call, compile_seconds)`` of the jitted JAX step (float32 only)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    params: list[dict[str, Any]] = []
    for n_in, n_out in itertools.pairwise(sizes[:-1]):
        params.append({"W": jnp.asarray(rng.standard_normal((n_out, n_in)) / np.sqrt(n_in),
                                         jnp.float32),
                       "gamma": jnp.ones(n_out, jnp.float32),
                       "beta": jnp.zeros(n_out, jnp.float32)})
    params.append({"W": jnp.asarray(rng.standard_normal((sizes[-1], sizes[-2]))
                                    / np.sqrt(sizes[-2]), jnp.float32),
                   "b": jnp.zeros(sizes[-1], jnp.float32)})
    running = [(jnp.zeros(n, jnp.float32), jnp.ones(n, jnp.float32)) for n in sizes[1:-1]]
    m = X.shape[0]

    def loss_fn(ps: list[dict[str, Any]], x: Any, labels: Any) -> tuple[Any, Any]:
        O, stats = x, []
        for p in ps[:-1]:
            Z = O @ p["W"].T
            mu, var = Z.mean(axis=0), Z.var(axis=0)
            O = jax.nn.sigmoid(p["gamma"] * (Z - mu) * jax.lax.rsqrt(var + 1e-5) + p["beta"])
            stats.append((mu, var))
        logits = O @ ps[-1]["W"].T + ps[-1]["b"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, labels[:, None], axis=1).mean(), stats

    def step(ps: Any, run: Any, x: Any, labels: Any) -> Any:
        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(ps, x, labels)
        ps = jax.tree_util.tree_map(lambda p, d: p - LR * d, ps, g)
        run = [(0.9 * rm + 0.1 * mu, 0.9 * rv + 0.1 * var * (m / (m - 1)))
               for (rm, rv), (mu, var) in zip(run, stats, strict=True)]
        return ps, run, loss

    jitted = jax.jit(step, donate_argnums=(0, 1))
    xj, yj = jnp.asarray(X), jnp.asarray(y.astype(np.int32))
    state = {"params": params, "running": running}
    t0 = time.perf_counter()
    state["params"], state["running"], loss = jitted(params, running, xj, yj)
    loss.block_until_ready()
    first = time.perf_counter() - t0

    def call() -> None:
        state["params"], state["running"], out = jitted(state["params"], state["running"],
                                                        xj, yj)
        out.block_until_ready()

    return call, first
