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

Several processes (``pip install 'bnprop[mpi]'``)::

    bnprop train --out runs/a                              # one process
    .venv/bin/mpiexec -n 4 bnprop train --out runs/a       # four, data parallel, SyncBN

Under ``mpiexec -n P`` every process loads the data and computes the same batch indices;
``--batch-size`` is the global batch, and process p trains on its share
``indices(step)[shard(len, p, P)]`` (contiguous, shares within one of each other). With
``--sync-bn`` (the default) the statistics are the global batch's and a run equals the
one-process run to rounding (``MLP.loss_and_grads``, "Data parallel"); ``--local-bn``
normalizes each share by itself, as plain data parallelism does. Rank 0 alone evaluates,
reports progress and writes the run folder (its running statistics are the model's; under
``--local-bn`` the other ranks' differ), after checking that every rank holds the same
parameters. Resume: rank 0 reads the checkpoint and broadcasts it. A ``--sync-bn`` run may
resume on any number of processes (the global batches do not depend on P); a ``--local-bn``
run only on the P it was trained with (P sets the statistics of every batch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from bnprop import checkpoint as ckpt
from bnprop._validate import InputError, check_choice
from bnprop.nn.sequential import NonFiniteError
from bnprop.progress import Progress
from bnprop.threads import num_threads

if TYPE_CHECKING:
    from bnprop.distributed import Communicator


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
    for name in ("steps", "eval_every", "checkpoint_every"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{name}: expected an integer >= 1, got {value!r} instead.")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise InputError(f"lr: expected a finite number > 0, got {config.lr!r} instead.")
    if config.optimizer != "sgd" and config.momentum != 0:
        raise InputError(
            f"momentum: applies to --optimizer sgd only, got momentum {config.momentum} with "
            f"{config.optimizer!r}."
        )
    if not 0 <= config.momentum < 1:
        raise InputError(f"momentum: expected a number in [0, 1), got {config.momentum!r}.")
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


def _load_data(config: TrainConfig) -> tuple[np.ndarray, ...]:
    from bnprop.data.datasets import load_dataset

    X, y = load_dataset(config.dataset, "train", data_dir=config.data_dir)
    Xt, yt = load_dataset(config.dataset, "test", data_dir=config.data_dir)
    dt = np.dtype(config.dtype)
    X, Xt = X.astype(dt, copy=False), Xt.astype(dt, copy=False)
    if config.arch == "cnn":
        from bnprop.model_cnn import as_images

        X, Xt = as_images(X), as_images(Xt)
    return X, y, Xt, yt


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    given: dict[str, Any] | None = None,
    epochs: float | None = None,
    stream: TextIO | None = None,
    progress: bool = True,
    comm: Communicator | None = None,
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
    comm : Communicator, optional
        Train data parallel over ``comm.size`` processes, every one calling ``train`` with
        the same arguments (module docstring); default one process. Only rank 0 reads
        ``out`` and writes it. Errors of the set-up (options, files) are raised on every
        rank together, as :class:`~bnprop.distributed.CollectiveError` when P > 1.

    Returns
    -------
    dict
        The summary, also written to ``out/summary.json`` (on every rank).
    """
    from bnprop.distributed import CollectiveError, SingleProcess, agree, check_replicas, shard

    comm = SingleProcess() if comm is None else comm
    rank0, out = comm.rank == 0, Path(out)

    # Set-up, in two phases; an error in either ends every rank together (agree).
    # 1. Rank 0 alone: the run's config, and the checkpoint or a folder free for a new run.
    run, error = None, None
    if rank0:
        try:
            run = _open_run(config, out, resume, given or {}, comm.size)
        except (InputError, OSError) as exc:
            error = exc
    agree(comm, error)
    run = comm.bcast(run)
    config = run["config"]
    # 2. Every rank: the data (each indexes its own shares of it), the net and optimizer.
    try:
        X, y, Xt, yt = _load_data(config)
        order = BatchOrder(X.shape[0], config.batch_size, config.seed)
        if epochs is not None:
            if resume and config.schedule != "constant":
                raise InputError(
                    f"--epochs: the {config.schedule} schedule spans the run's --steps; "
                    "resume it with --steps.")
            if not (epochs > 0 and math.isfinite(epochs)):
                raise InputError(f"epochs: expected a number > 0, got {epochs!r} instead.")
            config.steps = max(1, math.ceil(epochs * order.batches_per_epoch))
            if config.steps < run["start"]:
                raise InputError(
                    f"epochs: the checkpoint in {out} is already at step {run['start']}.")
        if run["net"] is None:
            if rank0:
                out.mkdir(parents=True, exist_ok=True)
            net = build_model(config, int(np.prod(X.shape[1:])),
                              int(max(y.max(), yt.max())) + 1)
            optimizer = build_optimizer(config)
        else:
            net, optimizer = run["net"], run["optimizer"]
    except (InputError, OSError) as exc:
        error = exc
    agree(comm, error)
    start, metrics = run["start"], run["metrics"]
    loss_sum, loss_count, elapsed0 = run["loss_sum"], run["loss_count"], run["elapsed"]

    def replicas(what: str) -> None:
        """Every rank holds the same model and optimizer (a collective; P > 1 only)."""
        if comm.size > 1:
            same = {**net.parameters(), **{f"optim/{k}": v
                                           for k, v in optimizer.state_dict().items()}}
            if config.sync_bn:  # under --local-bn each rank's running statistics are its own
                same.update(net.buffers())
            check_replicas(comm, same, what)

    replicas("the initial model")
    bar = Progress(config.steps, start=start, stream=stream, label="train",
                   enabled=progress and rank0, every=config.eval_every)
    t0 = time.perf_counter()
    acc = metrics[-1]["test_accuracy"] if metrics else None
    diverged_at = None

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - t0

    def save(step: int) -> None:
        replicas(f"step {step}")  # the last collective before rank 0 writes
        if not rank0:
            return
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
            try:  # a non-finite step raises before any update (the same on every rank)
                if comm.size == 1:
                    loss = net.train_step(X[idx], y[idx], optimizer)
                else:  # this rank's share; loss and gradients of the global batch
                    rows = idx[shard(len(idx), comm.rank, comm.size)]
                    loss = net.train_step(X[rows], y[rows], optimizer, comm=comm,
                                          m_global=len(idx), sync_bn=config.sync_bn)
            except NonFiniteError:
                loss = math.nan
            step += 1
            if not math.isfinite(loss):  # the global loss: every rank stops here
                diverged_at = step
                break
            loss_sum += loss
            loss_count += 1
            if step % config.eval_every == 0 or step == config.steps:
                acc = net.accuracy(Xt, yt) if rank0 else None
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
        "threads": num_threads(),  # bnprop.threads: this process's compute threads
        "diverged_at": diverged_at,
        "metrics": ckpt.METRICS_FILE,
        "model": ckpt.MODEL_FILE,
    }
    if rank0:
        ckpt.write_text(out / ckpt.SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    summary = comm.bcast(summary)
    if diverged_at is not None:
        message = (f"training diverged at step {diverged_at} (the loss is not finite); the "
                   f"last checkpoint in {out} is kept. Try a smaller --lr (now {config.lr}).")
        if comm.size > 1:  # every rank saw the same global loss: end together, no abort
            raise CollectiveError(message, rank=0, origin="InputError")
        raise InputError(message)
    return summary


def _open_run(config: TrainConfig, out: Path, resume: bool, given: dict[str, Any],
              size: int) -> dict[str, Any]:
    """Rank 0's part of the set-up: the config to run, and where to start from.

    Fresh: checks the config and that ``out`` holds no run (``net`` is None: every rank
    builds it from the seed). Resume: reads the checkpoint, merges ``given`` into its
    config, and returns the net and optimizer it holds, to be broadcast.
    """
    from bnprop.model_cnn import load_net

    if not resume:
        check_config(config)
        check_processes(config, size)
        if (out / ckpt.CHECKPOINT_FILE).exists():
            raise InputError(
                f"{out}: already holds a run ({ckpt.CHECKPOINT_FILE}); pass --resume to "
                "continue it, or choose another --out."
            )
        config = dataclasses.replace(config, processes=size)
        return {"config": config, "net": None, "optimizer": None, "start": 0, "metrics": [],
                "loss_sum": 0.0, "loss_count": 0, "elapsed": 0.0}
    model_state, optim_state, meta = ckpt.load_checkpoint(out)
    saved = TrainConfig.from_json(meta["config"])
    config = merge_resume_config(saved, given)
    check_config(config)
    check_processes(config, size, saved)
    config.processes = size
    start = int(meta["step"])
    if config.steps < start:
        raise InputError(
            f"steps: the checkpoint in {out} is at step {start}; --steps {config.steps} "
            "would go backwards."
        )
    net = load_net(model_state)
    optimizer = build_optimizer(config)
    optimizer.load_state_dict(optim_state)
    return {"config": config, "net": net, "optimizer": optimizer, "start": start,
            "metrics": [r for r in ckpt.read_metrics(out) if r["step"] <= start],
            "loss_sum": float(meta["loss_sum"]), "loss_count": int(meta["loss_count"]),
            "elapsed": float(meta["elapsed"])}


def evaluate(folder: str | Path, *, dataset: str | None = None,
             data_dir: str | None = None) -> dict[str, Any]:
    """Test accuracy of ``folder/model.npz`` on its dataset's test split."""
    from bnprop.data.datasets import load_dataset
    from bnprop.model_cnn import load_net, net_inputs

    folder = Path(folder)
    state = ckpt.load_model_state(folder)
    saved = state.pop(TRAIN_CONFIG_KEY, None)
    net = load_net(state)
    if dataset is None:
        dataset = "mnist" if saved is None else str(
            ckpt.from_json_array(saved, f"{folder}: {TRAIN_CONFIG_KEY}").get("dataset", "mnist"))
    Xt, yt = load_dataset(dataset, "test", data_dir=data_dir)
    acc = net.accuracy(net_inputs(net, Xt.astype(net.dtype, copy=False)), yt)
    return {"test_accuracy": acc, "dataset": dataset, "examples": int(yt.size)}


def parse_hidden(text: str | Sequence[int], name: str = "hidden") -> tuple[int, ...]:
    """``"100,100,100"`` -> ``(100, 100, 100)`` (``name``: the option, for messages)."""
    if not isinstance(text, str):
        return tuple(int(h) for h in text)
    try:
        hidden = tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError:
        raise InputError(
            f"{name}: expected comma-separated widths like 100,100,100, got {text!r} instead."
        ) from None
    if not hidden or min(hidden) < 1:
        raise InputError(f"{name}: expected widths >= 1 like 100,100,100, got {text!r} instead.")
    return hidden
