"""The settings of a training run: :class:`TrainConfig`, their checks, the network and
optimizer they build, and how a resume may change them.

A config is stored as JSON in ``checkpoint.npz`` and in ``model.npz`` (under
``TRAIN_CONFIG_KEY``), so a resumed run and ``bnprop evaluate`` know what was trained.
Every check answers in one line naming the option.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bnprop._validate import InputError, check_choice, check_seed

#: Learning rate when none is given: measured best for the default run (README).
DEFAULT_LR = {"adam": 3e-3, "sgd": 0.5}


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in checkpoints and summary.json).

    The defaults are the paper's MNIST set-up with the optimizer we found best
    (README: "Training on MNIST").
    """

    dataset: str = "mnist"
    arch: str = "mlp"       # "mlp" or "cnn" (bnprop.arch: arch_defaults, model_cnn.cnn)
    channels: tuple[int, ...] = (16, 32)  # --arch cnn: one conv stage each
    hidden: tuple[int, ...] = (100, 100, 100)
    activation: str = "sigmoid"
    batchnorm: bool = True
    stats: str = "exact"
    optimizer: str = "adam"
    lr: float | None = None  # None: DEFAULT_LR[optimizer]
    momentum: float = 0.0
    nesterov: bool = False
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
    sync_bn: bool = True    # several processes: statistics of the global batch, or each its own
    processes: int = 1      # set by train() to the processes that ran (last) it; not an option

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = DEFAULT_LR.get(self.optimizer, DEFAULT_LR["sgd"])

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON types."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["channels"] = list(self.channels)
        return d

    def divergence_hint(self) -> str:
        """What to make smaller when a run diverges: the rate, and the weight decay if any."""
        decay = f" or --weight-decay (now {self.weight_decay})" if self.weight_decay else ""
        return f"--lr (now {self.lr}){decay}"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_json`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"config: unknown key(s) {', '.join(sorted(unknown))}.")
        d = dict(d)
        for key in ("hidden", "channels"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def saved_config(d: object, where: str) -> TrainConfig:
    """The config a checkpoint saved, checked as a fresh run's is; one line naming
    ``where`` (the checkpoint) when it is damaged."""
    try:
        return check_config(TrainConfig.from_json(d))  # type: ignore[arg-type]
    except (TypeError, ValueError, AttributeError) as exc:  # InputError is a ValueError
        raise InputError(f"{where}: meta 'config': {exc}; the checkpoint is damaged.") from None


def check_config_fits(config: TrainConfig, net: Any, where: str) -> None:
    """The checkpoint's config describes its model: the dtype, and an MLP's widths."""
    sizes = getattr(net, "sizes", None)
    if str(net.dtype) != config.dtype or (
            config.arch == "mlp" and sizes is not None and tuple(sizes[1:-1]) != config.hidden):
        raise InputError(f"{where}: its config (dtype {config.dtype}, hidden "
                         f"{list(config.hidden)}) does not describe its model (dtype "
                         f"{net.dtype}, sizes {sizes}); the checkpoint is damaged.")


#: model.npz also records the run's config under this key, so ``evaluate`` knows the data.
TRAIN_CONFIG_KEY = "train_config"


#: Options a resumed run may change; every other one must match the checkpoint's.
RESUMABLE_OPTIONS = ("steps", "eval_every", "checkpoint_every", "data_dir")


def check_batch_size(batch_size: object) -> None:
    """Two examples at least: a batch of one has no batch variance."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise InputError(
            f"batch_size: expected at least 2, got {batch_size!r} instead; batch "
            "normalization needs two examples for a batch variance."
        )


def check_config(config: TrainConfig) -> TrainConfig:
    """Validate a config; each problem is one line naming the option."""
    from bnprop.activations import ACTIVATIONS
    from bnprop.arch import check_arch
    from bnprop.data.datasets import DATASETS

    check_choice(config.dataset, "dataset", DATASETS)
    check_arch(config)
    check_choice(config.activation, "activation", tuple(ACTIVATIONS))
    check_choice(config.stats, "stats", ("exact", "frozen"))
    check_choice(config.optimizer, "optimizer", ("sgd", "adam"))
    check_choice(config.dtype, "dtype", ("float32", "float64"))
    check_choice(config.running, "running", ("ema", "average"))
    if not config.hidden or any(int(h) < 1 for h in config.hidden):
        raise InputError(
            f"hidden: expected one or more layer widths >= 1, got {list(config.hidden)} instead."
        )
    check_batch_size(config.batch_size)
    for name in ("steps", "eval_every", "checkpoint_every"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{name}: expected an integer >= 1, got {value!r} instead.")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise InputError(f"lr: expected a finite number > 0, got {config.lr!r} instead.")
    if not 0 <= config.momentum < 1:  # first: a NaN is out of range whatever the optimizer
        raise InputError(f"momentum: expected a number in [0, 1), got {config.momentum!r}.")
    if config.optimizer != "sgd" and config.momentum != 0:
        raise InputError(
            f"momentum: applies to --optimizer sgd only, got momentum {config.momentum} with "
            f"{config.optimizer!r}."
        )
    check_seed(config.seed)
    if not (config.weight_decay >= 0 and math.isfinite(config.weight_decay)):
        raise InputError(f"weight_decay: expected a number >= 0, got {config.weight_decay!r}.")
    if not isinstance(config.sync_bn, bool):
        raise InputError(f"sync_bn: expected True or False, got {config.sync_bn!r} instead.")
    if isinstance(config.processes, bool) or not isinstance(config.processes, int) \
            or config.processes < 1:
        raise InputError(f"processes: expected an integer >= 1, got {config.processes!r}.")
    return config


def check_processes(config: TrainConfig, size: int, saved: TrainConfig | None = None) -> None:
    """Can ``size`` processes run (or resume, ``saved``) this config? One line if not.

    Every process needs one example of each global batch, two under ``--local-bn`` (its
    own batch variance). A ``--local-bn`` run resumes only on the P it was trained with.
    """
    local_bn = config.batchnorm and not config.sync_bn
    per_process = 2 if local_bn and size > 1 else 1
    if config.batch_size < per_process * size:
        raise InputError(
            f"batch_size: expected at least {per_process * size} for {size} processes "
            f"({per_process} example{'s' if per_process > 1 else ''} of every global batch "
            f"each{', for its own batch variance under --local-bn' if per_process > 1 else ''})"
            f", got {config.batch_size} instead."
        )
    if saved is not None and local_bn and saved.processes != size:
        raise InputError(
            f"--resume: the checkpoint was trained on {saved.processes} process"
            f"{'es' if saved.processes > 1 else ''} with --local-bn, each normalizing over "
            f"its own share of every batch; {size} would change every batch's statistics. "
            f"Resume it with mpiexec -n {saved.processes} (a --sync-bn run resumes on any "
            "number of processes)."
        )


def build_optimizer(config: TrainConfig) -> Any:
    """The optimizer the config names."""
    from bnprop.optim import SGD, Adam

    if config.optimizer == "sgd":
        return SGD(config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                   schedule=config.schedule, total_steps=config.steps,
                   nesterov=config.nesterov)
    return Adam(config.lr, weight_decay=config.weight_decay, schedule=config.schedule,
                total_steps=config.steps)


def build_model(config: TrainConfig, n_in: int, n_classes: int) -> Any:
    """A fresh network for the config (``n_in`` pixels of square one-channel images
    for ``arch="cnn"``)."""
    from bnprop.arch import build_cnn
    from bnprop.model import MLP

    if config.arch == "cnn":
        return build_cnn(config, n_in, n_classes)
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
    if merged.schedule != "constant" and merged.steps != saved.steps:
        raise InputError(
            f"--steps: the {saved.schedule} schedule of this run spans its {saved.steps} "
            f"steps; resuming to {merged.steps} would change the learning rates already "
            "used. Resume with the same --steps (a constant schedule may be extended)."
        )
    return merged


def parse_hidden(text: str | Sequence[int], name: str = "hidden") -> tuple[int, ...]:
    """``"100,100,100"`` -> ``(100, 100, 100)`` (``name``: the option, for messages)."""
    if not isinstance(text, str):
        return tuple(int(h) for h in text)
    fields = text.split(",")
    if any(not h.strip() for h in fields):
        raise InputError(
            f"{name}: expected comma-separated widths like 100,100,100, got {text!r} instead "
            "(an empty field)."
        )
    try:
        hidden = tuple(int(h) for h in fields)
    except ValueError:
        raise InputError(
            f"{name}: expected comma-separated widths like 100,100,100, got {text!r} instead."
        ) from None
    if not hidden or min(hidden) < 1:
        raise InputError(f"{name}: expected widths >= 1 like 100,100,100, got {text!r} instead.")
    return hidden
