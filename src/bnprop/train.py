"""``bnprop train``: train a batch-normalized MLP on MNIST with checkpoints that resume exactly.

The default run is the MNIST set-up of Ioffe & Szegedy (2015, sec. 4.1): 784 inputs,
three hidden layers of 100 sigmoid units with BN, 10 outputs with softmax cross-entropy,
50,000 steps of 60 examples.

Data order. Step ``s`` (0-based) uses batch ``k = s mod K`` of epoch ``e = s div K``,
where epoch ``e`` visits the training set in the order ``default_rng([seed, e]).permutation(n)``
and ``K = floor(n / B)`` batches of ``B`` examples; the ``n mod B`` examples left over go
into the last batch, which is then larger than ``B``. No batch is ever a single example,
since its batch variance would be undefined. Because the order is a function of
``(seed, step)``, a checkpoint needs no RNG state, and a resumed run sees exactly the
batches of a straight one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from bnprop import checkpoint as ckpt
from bnprop._validate import InputError, check_choice
from bnprop.progress import Progress


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in checkpoints and summary.json).

    The defaults are the paper's MNIST set-up with the optimizer we found best
    (README: "Training on MNIST").
    """

    dataset: str = "mnist"
    hidden: tuple[int, ...] = (100, 100, 100)
    activation: str = "sigmoid"
    batchnorm: bool = True
    stats: str = "exact"
    optimizer: str = "sgd"
    lr: float = 0.5
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"
    batch_size: int = 60
    steps: int = 50_000
    dtype: str = "float32"
    seed: int = 0
    running: str = "ema"
    eval_every: int = 1000
    checkpoint_every: int = 5000
    data_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON types."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_json`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"config: unknown key(s) {', '.join(sorted(unknown))}.")
        d = dict(d)
        if "hidden" in d:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)


#: model.npz also records the run's config under this key, so ``evaluate`` knows the data.
TRAIN_CONFIG_KEY = "train_config"

#: Options a resumed run may change; every other one must match the checkpoint's.
RESUMABLE_OPTIONS = ("steps", "eval_every", "checkpoint_every", "data_dir")


class BatchOrder:
    """Indices of the training batch of each step (see the module docstring)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if batch_size < 2:
            raise InputError(
                f"batch_size: expected at least 2, got {batch_size} instead; batch "
                "normalization needs two examples for a batch variance."
            )
        if batch_size > n:
            raise InputError(
                f"batch_size: expected at most the {n} training examples, got {batch_size}."
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.batches_per_epoch = n // batch_size
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def indices(self, step: int) -> np.ndarray:
        """Example indices of step ``step`` (0-based)."""
        epoch, k = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        start = k * self.batch_size
        stop = self.n if k == self.batches_per_epoch - 1 else start + self.batch_size
        return self._perm[start:stop]


def check_config(config: TrainConfig) -> TrainConfig:
    """Validate a config; each problem is one line naming the option."""
    from bnprop.activations import ACTIVATIONS
    from bnprop.data.datasets import DATASETS

    check_choice(config.dataset, "dataset", DATASETS)
    check_choice(config.activation, "activation", tuple(ACTIVATIONS))
    check_choice(config.stats, "stats", ("exact", "frozen"))
    check_choice(config.optimizer, "optimizer", ("sgd", "adam"))
    check_choice(config.dtype, "dtype", ("float32", "float64"))
    check_choice(config.running, "running", ("ema", "average"))
    if not config.hidden or any(int(h) < 1 for h in config.hidden):
        raise InputError(
            f"hidden: expected one or more layer widths >= 1, got {list(config.hidden)} instead."
        )
    for name in ("steps", "eval_every", "checkpoint_every"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{name}: expected an integer >= 1, got {value!r} instead.")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise InputError(f"lr: expected a finite number > 0, got {config.lr!r} instead.")
    if not 0 <= config.momentum < 1:
        raise InputError(f"momentum: expected a number in [0, 1), got {config.momentum!r}.")
    if not (config.weight_decay >= 0 and math.isfinite(config.weight_decay)):
        raise InputError(f"weight_decay: expected a number >= 0, got {config.weight_decay!r}.")
    return config


def build_optimizer(config: TrainConfig) -> Any:
    """The optimizer the config names."""
    from bnprop.optim import SGD, Adam

    if config.optimizer == "sgd":
        return SGD(config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                   schedule=config.schedule, total_steps=config.steps)
    return Adam(config.lr, weight_decay=config.weight_decay, schedule=config.schedule,
                total_steps=config.steps)


def build_model(config: TrainConfig, n_in: int, n_classes: int) -> Any:
    """A fresh network for the config."""
    from bnprop.model import MLP

    return MLP((n_in, *config.hidden, n_classes), activation=config.activation,
               batchnorm=config.batchnorm, stats=config.stats, dtype=config.dtype,
               seed=config.seed, running=config.running)


def merge_resume_config(saved: TrainConfig, given: dict[str, Any]) -> TrainConfig:
    """The checkpoint's config with the options a resume may change.

    ``given`` holds only the options the user set explicitly; setting any other one to a
    value that differs from the checkpoint's is an error (it would silently mean a
    different run).
    """
    merged = dataclasses.replace(saved)
    for name, value in given.items():
        if name in RESUMABLE_OPTIONS:
            setattr(merged, name, value)
        elif getattr(saved, name) != value:
            raise InputError(
                f"--{name.replace('_', '-')}: the checkpoint was trained with "
                f"{getattr(saved, name)!r}, got {value!r}; a resumed run keeps its settings "
                "(only --steps, --eval-every, --checkpoint-every and --data-dir may change)."
            )
    return merged


def _load_data(config: TrainConfig) -> tuple[np.ndarray, ...]:
    from bnprop.data.datasets import load_dataset

    X, y = load_dataset(config.dataset, "train", data_dir=config.data_dir)
    Xt, yt = load_dataset(config.dataset, "test", data_dir=config.data_dir)
    dt = np.dtype(config.dtype)
    return X.astype(dt, copy=False), y, Xt.astype(dt, copy=False), yt


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    given: dict[str, Any] | None = None,
    epochs: float | None = None,
    stream: TextIO | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a training run into the folder ``out``.

    Parameters
    ----------
    config : TrainConfig
        For a fresh run. On resume the checkpoint's config is used instead, updated with
        ``given`` (see :func:`merge_resume_config`).
    out : path
        The run folder; created if missing. A fresh run refuses a folder that already
        holds a checkpoint (pass ``resume=True`` to continue it).
    resume : bool, default=False
    given : dict, optional
        Options the user set explicitly (for resume).
    epochs : float, optional
        Train for this many epochs instead: ``steps = ceil(epochs * floor(n / batch_size))``.
    stream : text stream, optional
        Where progress goes (default stderr).
    progress : bool, default=True

    Returns
    -------
    dict
        The summary, also written to ``out/summary.json``.
    """
    from bnprop.model import MLP

    out = Path(out)
    if resume:
        model_state, optim_state, meta = ckpt.load_checkpoint(out)
        config = merge_resume_config(TrainConfig.from_json(meta["config"]), given or {})
        check_config(config)
        start = int(meta["step"])
        if config.steps < start:
            raise InputError(
                f"steps: the checkpoint in {out} is at step {start}; --steps {config.steps} "
                "would go backwards."
            )
        net = MLP.from_state(model_state)
        optimizer = build_optimizer(config)
        optimizer.load_state_dict(optim_state)
        metrics = [r for r in ckpt.read_metrics(out) if r["step"] <= start]
        loss_sum, loss_count = float(meta["loss_sum"]), int(meta["loss_count"])
        elapsed0 = float(meta["elapsed"])
        X, y, Xt, yt = _load_data(config)
    else:
        check_config(config)
        if (out / ckpt.CHECKPOINT_FILE).exists():
            raise InputError(
                f"{out}: already holds a run ({ckpt.CHECKPOINT_FILE}); pass --resume to "
                "continue it, or choose another --out."
            )
        X, y, Xt, yt = _load_data(config)
        out.mkdir(parents=True, exist_ok=True)
        net = build_model(config, X.shape[1], int(max(y.max(), yt.max())) + 1)
        optimizer = build_optimizer(config)
        start, metrics, loss_sum, loss_count, elapsed0 = 0, [], 0.0, 0, 0.0

    order = BatchOrder(X.shape[0], config.batch_size, config.seed)
    if epochs is not None:
        if not (epochs > 0 and math.isfinite(epochs)):
            raise InputError(f"epochs: expected a number > 0, got {epochs!r} instead.")
        config.steps = max(1, math.ceil(epochs * order.batches_per_epoch))
        if config.steps < start:
            raise InputError(f"epochs: the checkpoint in {out} is already at step {start}.")
    bar = Progress(config.steps, start=start, stream=stream, label="train",
                   enabled=progress, every=config.eval_every)
    t0 = time.perf_counter()
    acc = metrics[-1]["test_accuracy"] if metrics else None
    diverged_at = None

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - t0

    def save(step: int) -> None:
        model_state = net.get_state()
        ckpt.save_model(out / ckpt.MODEL_FILE,
                        {**model_state, TRAIN_CONFIG_KEY: ckpt.json_array(config.to_json())})
        ckpt.write_metrics(out, metrics)
        ckpt.save_checkpoint(out, model_state, optimizer.state_dict(), {
            "step": step, "config": config.to_json(), "loss_sum": loss_sum,
            "loss_count": loss_count, "elapsed": elapsed(),
        })

    step = start
    try:
        while step < config.steps:
            idx = order.indices(step)
            loss = net.train_step(X[idx], y[idx], optimizer)
            step += 1
            if not math.isfinite(loss):
                diverged_at = step
                break
            loss_sum += loss
            loss_count += 1
            if step % config.eval_every == 0 or step == config.steps:
                acc = net.accuracy(Xt, yt)
                metrics.append({"step": step, "train_loss": loss_sum / loss_count,
                                "test_accuracy": acc, "elapsed": round(elapsed(), 3)})
                loss_sum, loss_count = 0.0, 0
            if step % config.checkpoint_every == 0 and step < config.steps:
                save(step)
            bar.update(step, loss=loss, test_acc=acc)
    finally:
        bar.close()
    if diverged_at is None:
        save(step)
    summary = {
        "test_accuracy": acc if diverged_at is None else None,
        "steps": step,
        "config": config.to_json(),
        "elapsed": round(elapsed(), 3),
        "steps_per_second": round((step - start) / max(time.perf_counter() - t0, 1e-9), 1),
        "diverged_at": diverged_at,
        "metrics": ckpt.METRICS_FILE,
        "model": ckpt.MODEL_FILE,
    }
    ckpt.write_text(out / ckpt.SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    if diverged_at is not None:
        raise InputError(
            f"training diverged at step {diverged_at} (the loss is not finite); the last "
            f"checkpoint in {out} is kept. Try a smaller --lr (now {config.lr})."
        )
    return summary


def evaluate(folder: str | Path, *, dataset: str | None = None,
             data_dir: str | None = None) -> dict[str, Any]:
    """Test accuracy of ``folder/model.npz`` on its dataset's test split."""
    from bnprop.data.datasets import load_dataset
    from bnprop.model import MLP

    folder = Path(folder)
    state = ckpt.load_model_state(folder)
    saved = state.pop(TRAIN_CONFIG_KEY, None)
    net = MLP.from_state(state)
    if dataset is None:
        dataset = "mnist" if saved is None else str(
            ckpt.from_json_array(saved, f"{folder}: {TRAIN_CONFIG_KEY}").get("dataset", "mnist"))
    Xt, yt = load_dataset(dataset, "test", data_dir=data_dir)
    acc = net.accuracy(Xt.astype(net.dtype, copy=False), yt)
    return {"test_accuracy": acc, "dataset": dataset, "examples": int(yt.size)}


def parse_hidden(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"100,100,100"`` -> ``(100, 100, 100)``."""
    if not isinstance(text, str):
        return tuple(int(h) for h in text)
    try:
        hidden = tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError:
        raise InputError(
            f"hidden: expected comma-separated widths like 100,100,100, got {text!r} instead."
        ) from None
    if not hidden or min(hidden) < 1:
        raise InputError(f"hidden: expected widths >= 1 like 100,100,100, got {text!r} instead.")
    return hidden
