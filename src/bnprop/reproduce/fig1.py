"""``bnprop reproduce fig1``: Figure 1 of Ioffe & Szegedy (2015), measured with bnprop.

Two networks of the paper's MNIST set-up (:mod:`bnprop.reproduce.options`) train in
lockstep (:mod:`bnprop.reproduce.lockstep`): one with BN after every hidden linear map
(``"batchnorm"``), one with a bias in place of beta (``"no_batchnorm"``). Built with the same
seed, they start from the same W matrices, and they see the same batches in the same order.
After each recorded step ``s``::

    test_accuracy(s)   on the whole test split, in inference mode
    p_q(s)             the q-th percentile, q in (15, 50, 85), of A[:, unit] over the
                       whole test split, A = net.hidden_inputs(X_test)[-1]

where ``A`` is the inference-mode input of the last hidden layer's sigmoids: with BN,
``gamma * (O W^T - running_mean) / sqrt(running_var + eps) + beta`` (after gamma and beta);
without, ``O W^T + b``. Percentiles interpolate linearly (``numpy.percentile``'s default).
``unit`` is ``default_rng([seed, UNIT_STREAM]).integers(100)`` for the first seed, unless
given.

The default optimizer is plain SGD (as the paper) at lr 0.05: the lr of the PyTorch
reference the README compares against; ``bnprop train`` defaults to lr 0.5, at which the
network without BN also learns fast and the figure's contrast fades.

Files written into ``out``:

    fig1.png       (a) test accuracy of both networks; (b) p15, p50, p85 without BN;
                   (c) the same with BN; with several seeds, the mean and a min-max band
    fig1.csv       seed, step, <arm>_test_accuracy, <arm>_p15, <arm>_p50, <arm>_p85
                   (arm = batchnorm, no_batchnorm): one row per seed and recorded step
    summary.json   "batchnorm" and "no_batchnorm": test_accuracy (final), accuracy_curve
                   [[step, accuracy], ...], steps, percentiles {"15", "50", "85"} aligned
                   with steps, steps_to_accuracy {"0.95", "0.97"}, diverged_at; the mean
                   over seeds (records.py), and each seed's under "per_seed"
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from bnprop._validate import InputError
from bnprop.files import write_json
from bnprop.reproduce import plotting
from bnprop.reproduce.experiment import run_seeds, summarize
from bnprop.reproduce.lockstep import Arm
from bnprop.reproduce.options import (
    HIDDEN,
    ReproduceOptions,
    check_options,
    claim_out,
    load_data,
)
from bnprop.reproduce.records import (
    aggregate,
    first_step_reaching,
    json_list,
    json_number,
    recorded_steps,
    write_csv,
)

#: The two networks, as named in summary.json and fig1.csv, and the config that sets each
#: apart; their names on the progress bar.
ARM_CONFIG = {"batchnorm": {"batchnorm": True}, "no_batchnorm": {"batchnorm": False}}
ARMS = tuple(ARM_CONFIG)
PROGRESS_NAMES = {"batchnorm": "bn", "no_batchnorm": "no_bn"}
PERCENTILES = (15, 50, 85)
#: Accuracies whose first recorded step summary.json reports.
THRESHOLDS = (0.95, 0.97)
#: The default learning rate of each optimizer.
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3}
#: Second entry of the seed sequence that draws the unit.
UNIT_STREAM = 0xF161
LAYER = f"hidden.{len(HIDDEN) - 1}"
FILES = ("fig1.png", "fig1.csv", "summary.json")


def draw_unit(seed: int, n_units: int = HIDDEN[-1]) -> int:
    """The unit of seed ``seed``: ``default_rng([seed, UNIT_STREAM]).integers(n_units)``."""
    return int(np.random.default_rng([seed, UNIT_STREAM]).integers(n_units))


def check_unit(unit: object, n_units: int = HIDDEN[-1]) -> int:
    """``unit`` if it is an integer in ``0..n_units-1``."""
    if (not isinstance(unit, int | np.integer) or isinstance(unit, bool)
            or not 0 <= unit < n_units):
        raise InputError(
            f"unit: expected an integer in 0..{n_units - 1} (a unit of the last hidden "
            f"layer, {LAYER}), got {unit!r} instead."
        )
    return int(unit)


def sigmoid_input_percentiles(net: Any, X: np.ndarray, unit: int) -> list[float]:
    """``[p15, p50, p85]`` of the last hidden layer's inference-mode input ``A[:, unit]``."""
    A = net.hidden_inputs(X)[-1][:, unit].astype(np.float64)
    return [float(p) for p in np.percentile(A, PERCENTILES)]


def run_fig1(
    options: ReproduceOptions | None = None,
    out: str | Path | None = None,
    *,
    unit: int | None = None,
    stream: TextIO | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train both networks for every seed and write fig1.png, fig1.csv and summary.json.

    Parameters
    ----------
    options : ReproduceOptions, optional
        Default: the paper's 50,000 steps, SGD at lr 0.05, seed 0, one seed.
    out : path, optional
        Output folder, created if missing; default ``runs/fig1-YYYYmmdd-HHMMSS``.
    unit : int, optional
        The last hidden layer's unit of panels (b) and (c); default drawn with the seed.
    stream : text stream, optional
        Where the progress bar goes (default stderr).
    progress : bool, default=True

    Returns
    -------
    dict
        The summary, also written to ``out/summary.json``.
    """
    plotting.require_matplotlib()
    opts = check_options(options or ReproduceOptions(), DEFAULT_LR)
    unit_source = f"drawn with seed {opts.seed}" if unit is None else "given"
    unit = draw_unit(opts.seed) if unit is None else check_unit(unit)
    data = load_data(opts)
    out = claim_out(out, "fig1", FILES)

    def measure(arm: Arm, step: int, X_next: np.ndarray, y_next: np.ndarray) -> dict:
        p15, p50, p85 = sigmoid_input_percentiles(arm.net, data.Xt, unit)
        return {"test_accuracy": arm.net.accuracy(data.Xt, data.yt),
                "p15": p15, "p50": p50, "p85": p85}

    def arm_result(arm: Arm) -> dict[str, Any]:
        return _arm_result(
            arm.steps, arm.curves.get("test_accuracy", []),
            {str(q): arm.curves.get(f"p{q}", []) for q in PERCENTILES}, arm.diverged_at,
            final=arm.last("test_accuracy") if arm.diverged_at is None else None)

    t0 = time.perf_counter()
    per_seed = run_seeds(opts, data, ARM_CONFIG, measure=measure, arm_result=arm_result,
                         label="fig1", short=PROGRESS_NAMES, stream=stream, progress=progress)
    summary = summarize(per_seed, ARMS, _aggregate_arm, opts, time.perf_counter() - t0,
                        unit=unit, unit_source=unit_source, layer=LAYER,
                        percentile_examples=int(data.Xt.shape[0]))
    write_csv(out / "fig1.csv", *_csv_table(per_seed))
    write_json(out / "summary.json", summary)
    plotting.save_png(draw_fig1(summary), out / "fig1.png")
    return summary


def _arm_result(steps: list[int], accuracy: Any, percentiles: dict[str, Any],
                diverged_at: int | None, final: float | None) -> dict[str, Any]:
    """One network's entry of summary.json."""
    accuracy = json_list(accuracy)
    steps = [int(s) for s in steps]
    return {
        "test_accuracy": json_number(final),
        "accuracy_curve": [[s, a] for s, a in zip(steps, accuracy, strict=True)],
        "steps": steps,
        "percentiles": {q: json_list(v) for q, v in percentiles.items()},
        "steps_to_accuracy": {str(t): first_step_reaching(steps, accuracy, t)
                              for t in THRESHOLDS},
        "diverged_at": diverged_at,
    }


def _aggregate_arm(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over seeds of one network's entries (records every seed has)."""
    acc, _, _ = aggregate([[a for _, a in s["accuracy_curve"]] for s in seeds])
    steps = seeds[0]["steps"][:len(acc)]
    percentiles = {q: aggregate([s["percentiles"][q] for s in seeds])[0]
                   for q in seeds[0]["percentiles"]}
    finals = [s["test_accuracy"] for s in seeds]
    final = None if any(f is None for f in finals) else float(np.mean(finals))
    diverged = [s["diverged_at"] for s in seeds if s["diverged_at"] is not None]
    return _arm_result(steps, acc, percentiles, min(diverged) if diverged else None, final)


def _csv_table(per_seed: list[dict[str, Any]]) -> tuple[list[str], list[list[object]]]:
    """fig1.csv: header and one row per seed and recorded step (empty where not recorded)."""
    header = ["seed", "step", *(f"{arm}_test_accuracy" for arm in ARMS),
              *(f"{arm}_p{q}" for arm in ARMS for q in PERCENTILES)]
    rows: list[list[object]] = []
    for result, step, index in recorded_steps(per_seed, ARMS):
        row: list[object] = [result["seed"], step]
        for arm in ARMS:
            i = index[arm]
            row.append(None if i is None else result[arm]["accuracy_curve"][i][1])
        for arm in ARMS:
            i = index[arm]
            row += [None if i is None else result[arm]["percentiles"][str(q)][i]
                    for q in PERCENTILES]
        rows.append(row)
    return header, rows


def draw_fig1(summary: dict[str, Any]) -> Any:
    """The three panels of the paper's Figure 1 from a fig1 summary (a matplotlib Figure).

    Lines are the summary's values (the mean over seeds); with several seeds, a band
    spans each curve's min and max over ``summary["per_seed"]``.
    """
    fig = plotting.new_figure(13.0, 3.9)
    grid = fig.add_gridspec(1, 3, width_ratios=(1.35, 1, 1))
    ax_a = fig.add_subplot(grid[0])
    ax_b = fig.add_subplot(grid[1])
    ax_c = fig.add_subplot(grid[2], sharey=ax_b)
    per_seed = summary["per_seed"]
    band = len(per_seed) > 1
    style = {"no_batchnorm": ("Without BN", "tab:blue", "--"),
             "batchnorm": ("With BN", "tab:red", "-")}
    finals = []
    for arm, (label, color, dash) in style.items():
        steps = summary[arm]["steps"]
        _, lo, hi = aggregate([[a for _, a in s[arm]["accuracy_curve"]] for s in per_seed])
        mean = np.array([np.nan if a is None else a for _, a in summary[arm]["accuracy_curve"]])
        plotting.line_with_band(ax_a, steps, mean, lo, hi, band=band, label=label,
                                color=color, linestyle=dash)
        finals.append(summary[arm]["test_accuracy"])
    if all(f is not None and f >= 0.8 for f in finals):
        ax_a.set_ylim(0.7, 1.0)  # the paper's axis
    ax_a.set_ylabel("test accuracy")
    ax_a.set_title("(a) test accuracy")
    ax_a.grid(alpha=0.3)
    ax_a.legend(loc="lower right")
    colors = {85: "tab:green", 50: "black", 15: "tab:purple"}
    for ax, arm, title in ((ax_b, "no_batchnorm", "(b) without BN"),
                           (ax_c, "batchnorm", "(c) with BN")):
        steps = summary[arm]["steps"]
        for q in sorted(PERCENTILES, reverse=True):
            _, lo, hi = aggregate([s[arm]["percentiles"][str(q)] for s in per_seed])
            mean = np.array([np.nan if v is None else v
                             for v in summary[arm]["percentiles"][str(q)]])
            plotting.line_with_band(ax, steps, mean, lo, hi, band=band,
                                    label=f"{q}th percentile", color=colors[q])
        ax.set_title(f"{title}: input to sigmoid unit {summary['unit']}")
        ax.grid(alpha=0.3)
        plotting.steps_axis(ax)
    ax_b.set_ylabel(f"A of {summary['layer']}, unit {summary['unit']}")
    ax_b.legend(loc="lower right", fontsize="small")
    plotting.steps_axis(ax_a)
    seeds = summary["seeds"]
    fig.suptitle(
        f"MNIST, 3 x 100 sigmoid, batch 60, {summary['options']['optimizer'].upper()} "
        f"lr {summary['options']['lr']:g}; percentiles over {summary['percentile_examples']} "
        "test examples"
        + (f"; mean and min-max of seeds {seeds[0]}..{seeds[-1]}" if band else ""),
        fontsize="medium")
    return fig


def report_line(summary: dict[str, Any], out: str | Path) -> str:
    """One line for the terminal: final accuracies (or divergence) and where the files are."""
    parts = []
    for arm, label in (("batchnorm", "with BN"), ("no_batchnorm", "without BN")):
        entry = summary[arm]
        parts.append(f"{label} diverged at step {entry['diverged_at']}"
                     if entry["diverged_at"] is not None
                     else f"{label} {entry['test_accuracy']:.4f}")
    seeds = len(summary["seeds"])
    return (f"fig1: test accuracy {', '.join(parts)} after {summary['options']['steps']} steps"
            f"{f' (mean of {seeds} seeds)' if seeds > 1 else ''}, {summary['elapsed']:.1f} s; "
            f"{', '.join(FILES)} in {out}")
