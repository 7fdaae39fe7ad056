"""The JAX peer of the train step: the same SGD step, jitted, and XLA's CPU threads.

The step (:mod:`bnprop.bench.step`): hidden layers ``sigmoid(BN(O W^T))`` with batch
statistics (``var`` biased, ``eps`` 1e-5), output ``O W^T + b``, mean softmax
cross-entropy, ``p -= lr * g``, running statistics ``0.9 r + 0.1 s`` (the unbiased
variance, as bnprop and PyTorch keep it). ``jax.value_and_grad`` of the loss, the update
and the running statistics are one ``jax.jit`` function (parameter buffers donated); each
call ends in ``block_until_ready``. float32 only (JAX's default; float64 needs x64 mode).

Threads. XLA's CPU runtime has no setting for n intra-op threads: its pool spans the
cores the process may use. :func:`configure_threads` sets nothing when ``--threads``
equals them, sets ``XLA_FLAGS`` to one thread for ``--threads 1`` (before jax is
imported), and otherwise says that JAX runs on more threads than the other sides.
jax is imported only inside these functions; it is an optional peer
(``pip install 'bnprop[bench]'``).
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bnprop.bench.step import LR

#: XLA flags that give the CPU runtime one intra-op thread.
ONE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(n: int) -> str:
    """Give XLA's CPU runtime ``n`` threads where it can; return one line saying what holds."""
    cores = usable_cores()
    if n >= cores:
        return f"XLA CPU pool: its default, the {cores} usable cores"
    if "jax" in sys.modules:
        return (f"XLA CPU pool: jax was imported before the bench, so its pool is as it was "
                f"set then (default: all {cores} cores, more than --threads {n})")
    if n == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} {ONE_THREAD_FLAGS}".strip()
        return f"XLA CPU pool: 1 thread (XLA_FLAGS {ONE_THREAD_FLAGS})"
    return (f"XLA CPU pool: all {cores} usable cores (XLA has no setting for {n} threads; "
            f"JAX runs on more threads than bnprop and PyTorch)")


def jax_step(sizes: tuple[int, ...], X: np.ndarray, y: np.ndarray,
             ) -> tuple[Callable[[], None], float]:
    """``(call, compile_seconds)`` of the jitted JAX step (float32 only); imports jax."""
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
    state: dict[str, Any] = {}
    t0 = time.perf_counter()
    state["params"], state["running"], loss = jitted(params, running, xj, yj)
    loss.block_until_ready()
    first = time.perf_counter() - t0

    def call() -> None:
        state["params"], state["running"], out = jitted(state["params"], state["running"],
                                                        xj, yj)
        out.block_until_ready()

    return call, first
