"""What every reproduction takes: its options, checked once, and the data they name.

Every command trains networks of Ioffe & Szegedy's MNIST set-up (2015, sec. 4.1): 784
inputs, hidden layers :data:`HIDDEN` of sigmoid units, 10 outputs with softmax cross-entropy,
batches of :data:`BATCH_SIZE` examples in the order of
:class:`bnprop.train.BatchOrder`. The run of seed ``s`` uses ``s`` for both the initial
weights and the data order; ``seeds=K`` runs ``s = seed, seed + 1, ..., seed + K - 1``.

The state after ``s`` steps is recorded for every ``s`` in::

    record_steps = {0, r, 2r, 3r, ...} | {steps},   r = record_every
    record_every = max(1, steps // 100)             by default (500 for 50,000 steps)

so a short run still records about a hundred points.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bnprop._validate import InputError, check_positive
from bnprop.train import TrainConfig, check_config

#: The paper's hidden layers (sec. 4.1): three fully connected layers of 100 sigmoid units.
HIDDEN = (100, 100, 100)
#: Examples per training step (the paper's 60).
BATCH_SIZE = 60
#: Records per run when ``record_every`` is not given.
DEFAULT_RECORDS = 100


@dataclass(frozen=True)
class ReproduceOptions:
    """The options of every ``bnprop reproduce`` action (fig1, frozen-stats, ics,
    landscape, noisy-bn).

    ``lr=None`` and ``record_every=None`` mean the command's default (see
    :func:`check_options`).
    """

    steps: int = 50_000
    seeds: int = 1
    seed: int = 0
    optimizer: str = "sgd"
    lr: float | None = None
    dataset: str = "mnist"
    data_dir: str | None = None
    record_every: int | None = None
    dtype: str = "float32"

    @property
    def seed_list(self) -> list[int]:
        """``[seed, seed + 1, ..., seed + seeds - 1]``."""
        return [self.seed + k for k in range(self.seeds)]

    def train_config(self, seed: int, *, batchnorm: bool = True,
                     stats: str = "exact") -> TrainConfig:
        """The :class:`~bnprop.train.TrainConfig` of one network of seed ``seed``.

        For options filled in by :func:`check_options` (``lr`` set).
        """
        if self.lr is None:
            raise InputError("lr: not set; pass the options through check_options first.")
        return TrainConfig(
            dataset=self.dataset, hidden=HIDDEN, activation="sigmoid", batchnorm=batchnorm,
            stats=stats, optimizer=self.optimizer, lr=float(self.lr),
            batch_size=BATCH_SIZE, steps=self.steps, dtype=self.dtype, seed=seed,
            data_dir=self.data_dir,
        )

    def to_json(self) -> dict[str, object]:
        """The options as plain JSON types, with the paper's fixed settings."""
        return {**dataclasses.asdict(self), "hidden": list(HIDDEN), "activation": "sigmoid",
                "batch_size": BATCH_SIZE}


def _check_int(value: object, name: str, minimum: int) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r} instead.")
    return int(value)


def check_options(options: ReproduceOptions, default_lr: Mapping[str, float]) -> ReproduceOptions:
    """Validate ``options`` and fill in the command's defaults.

    ``lr=None`` becomes ``default_lr[optimizer]``; ``record_every=None`` becomes
    ``max(1, steps // DEFAULT_RECORDS)``. Every problem is one line naming the option.
    """
    if not isinstance(options, ReproduceOptions):
        raise InputError(
            f"options: expected a ReproduceOptions, got {type(options).__name__} instead."
        )
    steps = _check_int(options.steps, "steps", 1)
    _check_int(options.seeds, "seeds", 1)
    _check_int(options.seed, "seed", 0)
    if options.optimizer not in default_lr:
        raise InputError(
            f"optimizer: expected one of {', '.join(repr(k) for k in default_lr)}. "
            f"Got {options.optimizer!r} instead."
        )
    lr = (default_lr[options.optimizer] if options.lr is None
          else check_positive(options.lr, "lr"))
    record_every = (max(1, steps // DEFAULT_RECORDS) if options.record_every is None
                    else _check_int(options.record_every, "record_every", 1))
    resolved = dataclasses.replace(options, lr=lr, record_every=record_every)
    check_config(resolved.train_config(resolved.seed))  # dataset, optimizer, lr, dtype
    return resolved


def record_steps(steps: int, every: int) -> list[int]:
    """``[0, every, 2 every, ...]`` below ``steps``, then ``steps``."""
    return [*range(0, steps, every), steps]


class Data(NamedTuple):
    """Training and test split in the run's dtype; ``n_classes`` as :func:`bnprop.train.train`."""

    X: np.ndarray
    y: np.ndarray
    Xt: np.ndarray
    yt: np.ndarray
    n_classes: int


def load_data(options: ReproduceOptions) -> Data:
    """Both splits of ``options.dataset`` (verified, never downloaded)."""
    from bnprop.data.datasets import load_dataset

    X, y = load_dataset(options.dataset, "train", data_dir=options.data_dir)
    Xt, yt = load_dataset(options.dataset, "test", data_dir=options.data_dir)
    if X.shape[0] < BATCH_SIZE:
        raise InputError(
            f"dataset: {options.dataset} has {X.shape[0]} training examples, fewer than one "
            f"batch of {BATCH_SIZE}."
        )
    dt = np.dtype(options.dtype)
    n_classes = int(max(y.max(), yt.max())) + 1
    return Data(X.astype(dt, copy=False), y, Xt.astype(dt, copy=False), yt, n_classes)


def default_out(command: str) -> str:
    """``runs/COMMAND-YYYYmmdd-HHMMSS``."""
    return f"runs/{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def claim_out(out: str | Path | None, command: str, files: tuple[str, ...]) -> Path:
    """The output folder, created; a folder holding a previous run's files is refused
    (never overwrite results: choose another --out)."""
    folder = Path(out if out is not None else default_out(command))
    taken = [f for f in files if (folder / f).exists()]
    if taken:
        raise InputError(
            f"{folder}: already holds {', '.join(taken)} from an earlier run; choose another "
            "--out (bnprop never overwrites results)."
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder
