"""One reproduction run: for every seed, its networks trained in lockstep; then the summary.

An experiment names its arms, each a :class:`bnprop.train.TrainConfig` built by
``opts.train_config(seed, **overrides)``: same seed, so the same start and the same batches
(:mod:`bnprop.reproduce.lockstep`). For every seed ``s`` of ``opts.seed_list``,
:func:`run_seeds` trains them and returns one entry::

    {"seed": s, "batches_sha256": <the batches every arm saw>, "elapsed": seconds,
     <arm>: {**arm_result(arm), "initial_W_sha256": <the arm's start>}}

and :func:`summarize` puts the entries under ``"per_seed"`` of a summary whose ``<arm>``
objects are the single seed's (without its hash) or ``aggregate_arm`` of all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from bnprop.progress import Progress
from bnprop.reproduce.lockstep import Arm, Values, run_lockstep
from bnprop.reproduce.options import BATCH_SIZE, ReproduceOptions, record_steps
from bnprop.threads import num_threads


def run_seeds(
    opts: ReproduceOptions,
    data: Any,
    arms: Mapping[str, Mapping[str, Any]],
    *,
    measure: Callable[[Arm, int, Any, Any], Values],
    arm_result: Callable[[Arm], dict[str, Any]],
    label: str,
    short: Mapping[str, str],
    stream: TextIO | None = None,
    progress: bool = True,
    build: Callable[[str, Any, int, int], Any] | None = None,
) -> list[dict[str, Any]]:
    """Train the arms of every seed in lockstep under one progress bar; the per-seed entries.

    Parameters
    ----------
    opts : ReproduceOptions
        Checked options (:func:`~bnprop.reproduce.options.check_options`).
    data : Data
        The splits (:func:`~bnprop.reproduce.options.load_data`).
    arms : mapping
        Arm name -> the ``TrainConfig`` fields that set it apart, in the order of the run.
    measure : callable
        ``measure(arm, step, X_next, y_next) -> {name: value}`` at each recorded step
        (:func:`~bnprop.reproduce.lockstep.run_lockstep`).
    arm_result : callable
        ``arm_result(arm) -> dict``: the arm's entry once its run is over.
    label : str
        The progress bar's name.
    short : mapping
        Arm name -> the prefix of its ``_loss`` and ``_acc`` fields on the progress bar (the
        latter reads the arm's last ``"test_accuracy"``).
    stream : text stream, optional
        Where the progress bar goes (default stderr).
    progress : bool, default=True
    build : callable, optional
        ``build(name, config, n_in, n_classes) -> network`` of an arm; default
        :func:`bnprop.train.build_model` of its config.
    """
    bar = Progress(opts.steps * opts.seeds, stream=stream, label=label, enabled=progress)
    try:
        return [_run_seed(opts, data, arms, seed, measure, arm_result, short, bar, k * opts.steps,
                          build)
                for k, seed in enumerate(opts.seed_list)]
    finally:
        bar.close()


def _run_seed(opts: ReproduceOptions, data: Any, arms: Mapping[str, Mapping[str, Any]],
              seed: int, measure: Callable[[Arm, int, Any, Any], Values],
              arm_result: Callable[[Arm], dict[str, Any]], short: Mapping[str, str],
              bar: Progress, offset: int,
              build: Callable[[str, Any, int, int], Any] | None) -> dict[str, Any]:
    """The arms of one seed, trained in lockstep; the seed's entry (module docstring)."""
    from bnprop.train import BatchOrder, build_model, build_optimizer

    built = []
    for name, overrides in arms.items():
        config = opts.train_config(seed, **overrides)
        n_in, n_out = data.X.shape[1], data.n_classes
        net = (build_model(config, n_in, n_out) if build is None
               else build(name, config, n_in, n_out))
        built.append(Arm(name, net, build_optimizer(config)))

    def on_step(step: int) -> None:
        fields: dict[str, Any] = {"seed": seed} if opts.seeds > 1 else {}
        for arm in built:
            fields[f"{short[arm.name]}_loss"] = arm.last_loss
            fields[f"{short[arm.name]}_acc"] = arm.last("test_accuracy")
        bar.update(offset + step, **fields)

    t0 = time.perf_counter()
    batches = run_lockstep(
        built, data.X, data.y, BatchOrder(data.X.shape[0], BATCH_SIZE, seed),
        steps=opts.steps, record_steps=record_steps(opts.steps, opts.record_every),
        measure=measure, on_step=on_step)
    entry: dict[str, Any] = {"seed": seed, "batches_sha256": batches,
                             "elapsed": round(time.perf_counter() - t0, 3)}
    for arm in built:
        entry[arm.name] = {**arm_result(arm), "initial_W_sha256": arm.initial_W_sha256}
    return entry


def summarize(
    per_seed: list[dict[str, Any]],
    arms: Mapping[str, Any],
    aggregate_arm: Callable[[list[dict[str, Any]]], dict[str, Any]],
    opts: ReproduceOptions,
    elapsed: float,
    **extra: Any,
) -> dict[str, Any]:
    """The summary of a run: each arm's object, then ``extra``, then the run's record
    (seeds, options, compute threads, seconds, the per-seed entries).

    An arm's object is the single seed's entry (without ``initial_W_sha256``) or
    ``aggregate_arm`` of every seed's entries (the mean over seeds).
    """
    summary: dict[str, Any] = {}
    for name in arms:
        entries = [entry[name] for entry in per_seed]
        summary[name] = ({k: v for k, v in entries[0].items() if k != "initial_W_sha256"}
                         if len(entries) == 1 else aggregate_arm(entries))
    summary.update({
        "aggregate": "mean over seeds" if opts.seeds > 1 else "the single seed",
        **extra,
        "seeds": opts.seed_list,
        "options": opts.to_json(),
        "threads": num_threads(),  # bnprop.threads: this process's compute threads
        "elapsed": round(elapsed, 3),
        "per_seed": per_seed,
    })
    return summary
