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

The settings (:class:`TrainConfig`) and their checks live in :mod:`bnprop.runconfig`; the
run folder (lock, writability, stale temporary files) in :mod:`bnprop.runfolder`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from bnprop import checkpoint as ckpt
from bnprop._validate import InputError
from bnprop.footprint import check_memory
from bnprop.interrupt import Interrupted, StopSignals
from bnprop.nn.sequential import NonFiniteError
from bnprop.progress import Progress
from bnprop.runconfig import (
    DEFAULT_LR,
    RESUMABLE_OPTIONS,
    TRAIN_CONFIG_KEY,
    TrainConfig,
    build_model,
    build_optimizer,
    check_batch_size,
    check_config,
    check_config_fits,
    check_processes,
    merge_resume_config,
    parse_hidden,
    saved_config,
)
from bnprop.runfolder import RunFolder
from bnprop.threads import blas_core, num_threads

if TYPE_CHECKING:
    from bnprop.distributed import Communicator

__all__ = ["DEFAULT_LR", "RESUMABLE_OPTIONS", "TRAIN_CONFIG_KEY", "BatchOrder", "TrainConfig",
           "build_model", "build_optimizer", "check_config", "check_processes", "evaluate",
           "merge_resume_config", "parse_hidden", "train"]


class BatchOrder:
    """Indices of the training batch of each step (see the module docstring)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        check_batch_size(batch_size)
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
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run (or resume) a training run into the folder ``out``.

    Parameters
    ----------
    config : TrainConfig
        For a fresh run. On resume the checkpoint's config is used instead, updated with
        ``given`` (see :func:`merge_resume_config`).
    out : path
        The run folder; created if missing, and locked for the run (:mod:`bnprop.runfolder`:
        a second run into it is refused). A fresh run refuses a folder that already holds
        a run's files (pass ``resume=True`` to continue it, ``overwrite=True`` to replace it).
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
        With one process, a first SIGINT or SIGTERM ends the run after the current step
        with a checkpoint saved, raising :class:`~bnprop.interrupt.Interrupted`.
    overwrite : bool, default=False
        A fresh run may replace the run files ``out`` holds.

    Returns
    -------
    dict
        The summary, also written to ``out/summary.json`` (on every rank).
    """
    from bnprop.distributed import SingleProcess

    comm = SingleProcess() if comm is None else comm
    folder = RunFolder(out) if comm.rank == 0 else None  # rank 0 alone touches the folder
    try:
        return _train(config, folder, Path(out), resume=resume, given=given or {},
                      epochs=epochs, stream=stream, progress=progress, comm=comm,
                      overwrite=overwrite)
    finally:
        if folder is not None:
            folder.release()  # and removes a folder it created for a refused run


def _train(config: TrainConfig, folder: RunFolder | None, out: Path, *, resume: bool,
           given: dict[str, Any], epochs: float | None, stream: TextIO | None,
           progress: bool, comm: Communicator, overwrite: bool) -> dict[str, Any]:
    """:func:`train` with the folder claimed (rank 0) and released around it."""
    from bnprop.distributed import CollectiveError, agree, check_replicas, shard

    rank0 = comm.rank == 0
    # Set-up, in two phases; an error in either ends every rank together (agree).
    # 1. Rank 0 alone: the run's config, and the checkpoint or a folder free for a new run.
    run, error = None, None
    if folder is not None:
        try:
            run = _open_run(config, folder, resume, given, comm.size, overwrite)
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
            sizes = (int(np.prod(X.shape[1:])), *config.hidden,
                     int(max(y.max(), yt.max())) + 1)
            check_memory(sizes, config.batch_size, X.dtype.itemsize,
                         {"adam": 2}.get(config.optimizer, int(config.momentum > 0)))
            net = build_model(config, sizes[0], sizes[-1])
            optimizer = build_optimizer(config)
        else:
            net, optimizer = run["net"], run["optimizer"]
    except (InputError, OSError) as exc:
        error = exc
    agree(comm, error)
    if folder is not None and overwrite:
        folder.remove_run_files()  # every check passed: the old run goes now
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
    diverged_at, saved_at = None, (start if resume else None)

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - t0

    def save(step: int, summary: dict[str, Any] | None = None) -> None:
        """Model, metrics, checkpoint (and summary) of ``step``: all written, or none."""
        nonlocal saved_at
        replicas(f"step {step}")  # the last collective before rank 0 writes
        saved_at = step
        if not rank0:
            return
        model_state = net.get_state()
        ckpt.save_run(
            out, {**model_state, TRAIN_CONFIG_KEY: ckpt.json_array(config.to_json())},
            ckpt.checkpoint_arrays(model_state, optimizer.state_dict(), {
                "step": step, "config": config.to_json(), "loss_sum": loss_sum,
                "loss_count": loss_count, "elapsed": elapsed()}),
            metrics, summary)

    step = start
    # One process: a signal stops the loop after its step (bnprop.interrupt); overflow in a
    # diverging run is reported once, by the loss check, not as NumPy warnings.
    stop = StopSignals(enabled=comm.size == 1)
    with stop, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            while step < config.steps and stop.signum is None:
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
        interrupted = stop.signum is not None and step < config.steps and diverged_at is None
        summary = {
            "test_accuracy": acc if diverged_at is None else None,
            "steps": step,
            "config": config.to_json(),
            "elapsed": round(elapsed(), 3),
            "steps_per_second": round((step - start) / max(time.perf_counter() - t0, 1e-9), 1),
            "threads": num_threads(),  # bnprop.threads: this process's compute threads
            "blas_core": blas_core(),  # the OpenBLAS kernels: they round the GEMMs
            "diverged_at": diverged_at,
            "interrupted_at": step if interrupted else None,
            "metrics": ckpt.METRICS_FILE, "model": ckpt.MODEL_FILE,
        }
        if diverged_at is None:
            save(step, summary)  # a second signal during this save ends the process at once
        elif rank0:
            ckpt.write_summary(out, summary)  # the last checkpoint, if any, is kept
    summary = comm.bcast(summary)
    if interrupted:
        raise Interrupted(f"{stop.name} at step {step}: checkpoint saved in {out}; continue "
                          f"with: bnprop train --out {out} --resume", stop.signum or 0)
    if diverged_at is not None:
        kept = (f"the checkpoint of step {saved_at} in {out} is kept" if saved_at else
                f"no checkpoint was saved before it (the first is at step "
                f"{config.checkpoint_every})")
        message = (f"training diverged at step {diverged_at} (the loss is not finite); "
                   f"{kept}. Try a smaller {config.divergence_hint()}.")
        if comm.size > 1:  # every rank saw the same global loss: end together, no abort
            raise CollectiveError(message, rank=0, origin="InputError")
        raise InputError(message)
    return summary


def _open_run(config: TrainConfig, folder: RunFolder, resume: bool, given: dict[str, Any],
              size: int, overwrite: bool) -> dict[str, Any]:
    """Rank 0's part of the set-up: the config to run, and where to start from. Claims
    the folder (lock, writable, stale temporary files removed). Fresh: checks the config
    and that the folder holds no run (``net`` is None: every rank builds it from the
    seed). Resume: reads and checks the checkpoint, merges ``given`` into its config, and
    returns the net and optimizer it holds, to be broadcast."""
    from bnprop.model_cnn import load_net

    out = folder.path
    if resume and overwrite:
        raise InputError("--overwrite: a resumed run continues its files; give --resume or "
                         "--overwrite, not both.")
    if not resume:
        check_config(config)
        check_processes(config, size)
    folder.claim()
    folder.remove_stale_temps()
    if not resume:
        taken = folder.run_files()
        if taken and not overwrite:
            raise InputError(
                f"{out}: already holds a run ({', '.join(taken)}); pass --resume to "
                "continue it, --overwrite to replace it, or choose another --out."
            )
        config = dataclasses.replace(config, processes=size)
        return {"config": config, "net": None, "optimizer": None, "start": 0, "metrics": [],
                "loss_sum": 0.0, "loss_count": 0, "elapsed": 0.0}
    model_state, optim_state, meta = ckpt.load_checkpoint(out)
    saved = saved_config(meta["config"], where := str(out / ckpt.CHECKPOINT_FILE))
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
    check_config_fits(config, net := load_net(model_state), where)
    optimizer = build_optimizer(config)
    optimizer.load_state_dict(optim_state)
    return {"config": config, "net": net, "optimizer": optimizer, "start": start,
            "metrics": [r for r in ckpt.read_metrics(out) if r["step"] <= start],
            "loss_sum": float(meta["loss_sum"]), "loss_count": int(meta["loss_count"]),
            "elapsed": float(meta["elapsed"])}


def evaluate(folder: str | Path, *, dataset: str | None = None,
             data_dir: str | None = None) -> dict[str, Any]:
    """Test accuracy of ``folder/model.npz`` on its dataset's test split."""
    from bnprop.data.datasets import DATASETS, load_dataset
    from bnprop.model_cnn import load_net, net_inputs

    folder = Path(folder)
    state = ckpt.load_model_state(folder)
    path = folder / ckpt.MODEL_FILE if folder.is_dir() else folder
    saved = state.pop(TRAIN_CONFIG_KEY, None)
    try:
        net = load_net(state)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    if dataset is None and saved is not None:
        what = f"{path}: key {TRAIN_CONFIG_KEY}"
        saved = ckpt.from_json_array(saved, what)
        dataset = saved.get("dataset", "mnist") if isinstance(saved, dict) else None
        if dataset not in DATASETS:
            raise InputError(f"{what}: names the dataset {dataset!r}, expected one of "
                             f"{', '.join(DATASETS)}; pass --dataset to choose one.")
    dataset = dataset or "mnist"
    Xt, yt = load_dataset(dataset, "test", data_dir=data_dir)
    acc = net.accuracy(net_inputs(net, Xt.astype(net.dtype, copy=False)), yt)
    return {"test_accuracy": acc, "dataset": dataset, "examples": int(yt.size)}

