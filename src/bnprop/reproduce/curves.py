"""The three arms of the Santurkar et al. (2018) reproductions and their recorded curves.

``bnprop reproduce ics``, ``landscape`` and ``noisy-bn`` each train, in lockstep on the
same batches from the same W matrices (:mod:`bnprop.reproduce.lockstep`), the networks::

    no_batchnorm   sigma(O W^T + b)                      (Figure 1's network without BN)
    batchnorm      sigma(BN(O W^T)), the exact gradient  (stats="exact")
    frozen         sigma(BN(O W^T)), the gradient with mu_B, var_B held fixed (stats="frozen")

and record, after each recorded step, named values (``measure`` of the command). One arm's
entry of summary.json holds them as flat curves aligned with its steps::

    {"steps": [s_0, s_1, ...], "curves": {name: [v_0, v_1, ...]},
     "final": {name: v_last}, "diverged_at": null or the step}

(``"final"`` values are null after a divergence). With several seeds the top-level entry
is the mean over seeds of every curve (over the records every seed has,
:func:`bnprop.reproduce.records.aggregate`). The CSV file has one row per seed and step
and one column ``<arm>_<name>`` per arm and curve.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from bnprop.files import write_json
from bnprop.reproduce import plotting
from bnprop.reproduce.experiment import run_seeds, summarize
from bnprop.reproduce.lockstep import Arm, Values
from bnprop.reproduce.options import Data, ReproduceOptions
from bnprop.reproduce.records import aggregate, json_list, recorded_steps, write_csv

#: The three arms, as named in summary.json and the CSV files, and the ``TrainConfig``
#: fields that set each apart.
ARM_CONFIG: dict[str, dict[str, Any]] = {
    "no_batchnorm": {"batchnorm": False},
    "batchnorm": {"batchnorm": True},
    "frozen": {"batchnorm": True, "stats": "frozen"},
}
ARMS = tuple(ARM_CONFIG)
#: Names on the progress bar.
PROGRESS_NAMES = {"no_batchnorm": "no_bn", "batchnorm": "bn", "frozen": "frozen",
                  "noisy_batchnorm": "noisy"}
#: Legend labels and colours of the figures.
STYLE = {"no_batchnorm": ("without BN", "tab:blue"),
         "batchnorm": ("BN, exact gradient", "tab:red"),
         "frozen": ("BN, frozen-statistics gradient", "tab:orange"),
         "noisy_batchnorm": ("noisy BN (exact gradient)", "tab:purple")}


def arm_entry(steps: Sequence[int], curves: Mapping[str, Sequence[float | None]],
              diverged_at: int | None) -> dict[str, Any]:
    """One arm's entry of summary.json (module docstring) from its flat curves."""
    flat = {name: json_list(values) for name, values in curves.items()}
    done = diverged_at is None and len(steps) > 0
    return {"steps": [int(s) for s in steps], "curves": flat,
            "final": {name: (values[-1] if done and values else None)
                      for name, values in flat.items()},
            "diverged_at": diverged_at}


def aggregate_arm(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over seeds of one arm's entries (the records every seed has)."""
    names = list(seeds[0]["curves"])
    mean = {name: aggregate([s["curves"][name] for s in seeds])[0] for name in names}
    n = min(len(s["steps"]) for s in seeds)
    diverged = [s["diverged_at"] for s in seeds if s["diverged_at"] is not None]
    return arm_entry(seeds[0]["steps"][:n], mean, min(diverged) if diverged else None)


def csv_table(per_seed: list[dict[str, Any]], arms: Sequence[str],
              ) -> tuple[list[str], list[list[object]]]:
    """Header ``seed, step, <arm>_<name>...`` and one row per seed and recorded step
    (empty cells where an arm has no record)."""
    names = {arm: list(per_seed[0][arm]["curves"]) for arm in arms}
    header = ["seed", "step", *(f"{arm}_{name}" for arm in arms for name in names[arm])]
    rows: list[list[object]] = []
    for result, step, index in recorded_steps(per_seed, arms):
        row: list[object] = [result["seed"], step]
        for arm in arms:
            i = index[arm]
            row += [None if i is None else result[arm]["curves"][name][i] for name in names[arm]]
        rows.append(row)
    return header, rows


def series(summary: dict[str, Any], arm: str, name: str) -> tuple[np.ndarray, ...]:
    """``(steps, mean, lo, hi)`` of one curve: the summary's value and the min and max
    over ``summary["per_seed"]``."""
    _, lo, hi = aggregate([s[arm]["curves"][name] for s in summary["per_seed"]])
    mean = np.array([np.nan if v is None else v for v in summary[arm]["curves"][name]],
                    dtype=np.float64)
    return np.array(summary[arm]["steps"][:len(mean)]), mean, lo, hi


def title_suffix(summary: dict[str, Any]) -> str:
    """``"MNIST, 3 x 100 sigmoid, batch 60, SGD lr 0.05"`` and the seeds of a band."""
    opts, seeds = summary["options"], summary["seeds"]
    hidden = opts["hidden"]
    text = (f"{opts['dataset']}, {len(hidden)} x {hidden[0]} {opts['activation']}, batch "
            f"{opts['batch_size']}, {opts['optimizer'].upper()} lr {opts['lr']:g}")
    return text + (f"; mean, and min-max of seeds {seeds[0]}..{seeds[-1]}"
                   if len(seeds) > 1 else "")


def run_arms(
    opts: ReproduceOptions,
    data: Data,
    out: Path,
    files: tuple[str, str, str],
    *,
    arms: Mapping[str, Mapping[str, Any]],
    measure: Callable[[Arm, int, Any, Any], Values],
    names: Callable[[], Sequence[str]],
    draw: Callable[[dict[str, Any]], Any],
    stream: TextIO | None,
    progress: bool,
    build: Callable[[str, Any, int, int], Any] | None = None,
    finish: Callable[[dict[str, Any]], dict[str, Any]] = lambda entry: entry,
    **extra: Any,
) -> dict[str, Any]:
    """Train ``arms`` for every seed (:func:`~bnprop.reproduce.experiment.run_seeds`), then
    write ``files`` = (PNG of ``draw(summary)``, CSV, summary.json) into ``out``.

    Each arm's entry holds the curves ``names()`` (:func:`arm_entry`), passed through
    ``finish``; ``extra`` goes to the top level of the summary. Returns the summary.
    """
    def result(arm: Arm) -> dict[str, Any]:
        curves = {name: arm.curves.get(name, []) for name in names()}
        return finish(arm_entry(arm.steps, curves, arm.diverged_at))

    label = files[1].removesuffix(".csv").replace("_", "-")
    t0 = time.perf_counter()
    per_seed = run_seeds(opts, data, arms, measure=measure, arm_result=result, label=label,
                         short=PROGRESS_NAMES, stream=stream, progress=progress, build=build)
    summary = summarize(per_seed, tuple(arms), lambda s: finish(aggregate_arm(s)), opts,
                        time.perf_counter() - t0, **extra)
    write_csv(out / files[1], *csv_table(per_seed, tuple(arms)))
    write_json(out / files[2], summary)
    plotting.save_png(draw(summary), out / files[0])
    return summary
