"""The default ``bnprop train`` job: bnprop's steps per second against a plain PyTorch script.

The job is :class:`bnprop.train.TrainConfig`'s defaults (784-100-100-100-10, sigmoid, BN,
Adam at the default lr, batches of 60 in :class:`bnprop.train.BatchOrder`'s order, test
accuracy on the whole test split every ``eval_every`` = 1000 steps), on MNIST from
:func:`bnprop.load_dataset` when it is provisioned, else on synthetic data of MNIST's
shape (the result names which). Both sides see the same batches:

* bnprop: ``net = bnprop.MLP(sizes, activation=..., batchnorm=..., dtype=..., seed=...)``,
  ``net.train_step(X[idx], y[idx], bnprop.Adam(lr))``, ``net.accuracy(X_test, y_test)``
  (the public API; ``bnprop train``'s own loop adds checkpoints and progress output).
* PyTorch eager, as a plain script writes it: the same ``Sequential`` (PyTorch's default
  initialization), the training tensors indexed by the same batch indices,
  ``zero_grad``, ``cross_entropy``, ``backward``, ``torch.optim.Adam.step``, ``loss.item()``
  (bnprop's step returns the loss as a float too), and ``model.eval()`` + ``no_grad``
  argmax accuracy every ``eval_every`` steps.

Timing: after a warm-up on throwaway models, the two sides run ``chunks`` chunks of
``chunk_steps`` steps each, interleaved; ``steps_per_s = chunk_steps / median chunk
seconds``, and ``ratio = bnprop steps_per_s / PyTorch steps_per_s`` (above 1: bnprop is
faster). The test accuracy each side reached after its last chunk is reported beside it.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import bnprop
from bnprop._validate import InputError
from bnprop.bench import floor
from bnprop.bench.step import torch_model
from bnprop.bench.timing import PAUSE
from bnprop.train import BatchOrder, TrainConfig

Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def synthetic(dtype: Any, seed: int = 0) -> Data:
    """MNIST's shapes (60000 + 10000 rows of 784 in [0, 1), 10 classes) from a linear teacher."""
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((784, 10)).astype(dtype)
    X = rng.random((70_000, 784), dtype=np.float32).astype(dtype, copy=False)
    y = np.argmax((X - np.asarray(0.5, dtype)) @ teacher, axis=1).astype(np.int64)
    return X[:60_000], y[:60_000], X[60_000:], y[60_000:]


def job_data(config: TrainConfig, data_dir: str | None) -> tuple[Data, str]:
    """``((X, y, X_test, y_test), source)``: the config's dataset, or synthetic data."""
    try:
        X, y = bnprop.load_dataset(config.dataset, "train", data_dir=data_dir)
        Xt, yt = bnprop.load_dataset(config.dataset, "test", data_dir=data_dir)
    except (InputError, OSError):
        return synthetic(config.dtype), "synthetic"
    dt = np.dtype(config.dtype)
    return (X.astype(dt, copy=False), y, Xt.astype(dt, copy=False), yt), config.dataset


def sizes_of(config: TrainConfig, data: Data) -> tuple[int, ...]:
    """The net's layer sizes for the data: inputs, the hidden widths, the classes."""
    X, y, _, yt = data
    return (X.shape[1], *config.hidden, int(max(y.max(), yt.max())) + 1)


def bnprop_job(config: TrainConfig, data: Data) -> Callable[[int], dict[str, Any]]:
    """``advance(n)``: the next ``n`` steps of the job in bnprop; returns where it stands."""
    X, y, Xt, yt = data
    net = bnprop.MLP(sizes_of(config, data), activation=config.activation,
                     batchnorm=config.batchnorm, dtype=config.dtype, seed=config.seed)
    if config.optimizer == "adam":
        opt: Any = bnprop.Adam(config.lr, weight_decay=config.weight_decay)
    else:
        opt = bnprop.SGD(config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    order = BatchOrder(X.shape[0], config.batch_size, config.seed)
    state: dict[str, Any] = {"steps": 0, "test_accuracy": None, "loss": None}

    def advance(n: int) -> dict[str, Any]:
        for _ in range(n):
            idx = order.indices(state["steps"])
            state["loss"] = net.train_step(X[idx], y[idx], opt)
            state["steps"] += 1
            if state["steps"] % config.eval_every == 0:
                state["test_accuracy"] = net.accuracy(Xt, yt)
        return state

    return advance


def torch_unsupported(config: TrainConfig) -> str | None:
    """Why the PyTorch script cannot run this config (``None``: it can)."""
    if not config.batchnorm or config.schedule != "constant" or config.stats != "exact":
        return ("the PyTorch script covers BN with exact batch statistics and a constant "
                "learning rate only")
    return None


def torch_job(config: TrainConfig, data: Data) -> Callable[[int], dict[str, Any]]:
    """``advance(n)``: the same job as a plain PyTorch eager script (imports torch)."""
    import torch

    X, y, Xt, yt = data
    torch.manual_seed(config.seed)
    model = torch_model(sizes_of(config, data), X.dtype, config.activation)
    if config.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=config.lr,
                               weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
    Xt_t, yt_t = torch.from_numpy(Xt), torch.from_numpy(yt)
    order = BatchOrder(X.shape[0], config.batch_size, config.seed)
    state: dict[str, Any] = {"steps": 0, "test_accuracy": None, "loss": None}

    def advance(n: int) -> dict[str, Any]:
        for _ in range(n):
            idx = torch.from_numpy(order.indices(state["steps"]))
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(X_t[idx]), y_t[idx])
            loss.backward()
            opt.step()
            state["loss"] = loss.item()
            state["steps"] += 1
            if state["steps"] % config.eval_every == 0:
                model.eval()
                with torch.no_grad():
                    pred = model(Xt_t).argmax(dim=1)
                state["test_accuracy"] = (pred == yt_t).double().mean().item()
                model.train()
        return state

    return advance


def run_job(config: TrainConfig, data: Data, *, chunks: int, chunk_steps: int,
            warmup: int, with_torch: bool) -> dict[str, Any]:
    """Interleaved chunks of both sides (module docstring); the ``train_job`` result."""
    makers: dict[str, Callable[..., Callable[[int], dict[str, Any]]]] = {"bnprop": bnprop_job}
    if with_torch:
        makers["torch eager"] = torch_job
    warm = dataclasses.replace(config, eval_every=max(1, warmup))
    for make in makers.values():  # kernels loaded, pools started, outside the timing
        make(warm, data)(warmup)
    sides = {name: make(config, data) for name, make in makers.items()}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    states: dict[str, dict[str, Any]] = {}
    for _ in range(chunks):
        for name, advance in sides.items():
            time.sleep(PAUSE)
            t0 = time.perf_counter()
            states[name] = advance(chunk_steps)
            seconds[name].append(time.perf_counter() - t0)
    sizes = sizes_of(config, data)
    flops = floor.step_flops(sizes, config.batch_size) \
        + floor.forward_flops(sizes, data[2].shape[0]) / config.eval_every
    result: dict[str, Any] = {
        "sizes": list(sizes), "optimizer": config.optimizer, "lr": config.lr,
        "batch_size": config.batch_size, "eval_every": config.eval_every,
        "dtype": config.dtype, "steps": chunks * chunk_steps, "chunk_steps": chunk_steps,
        "gemm_flops_per_step": float(flops), "sides": {},
    }
    for name, ts in seconds.items():
        result["sides"][name] = {
            "steps_per_s": chunk_steps / statistics.median(ts), "chunk_s": ts,
            "test_accuracy": states[name]["test_accuracy"],
            "final_loss": states[name]["loss"],
        }
    if with_torch:
        result["ratio"] = (result["sides"]["bnprop"]["steps_per_s"]
                           / result["sides"]["torch eager"]["steps_per_s"])
    else:
        result["ratio"] = None
    return result
