"""``bnprop reproduce frozen-stats``: training with the handout's frozen-statistics gradient.

The handout's part (4) differentiates through the BN layer as if ``mu_B`` and ``var_B``
were constants (``stats="frozen"``). Ioffe & Szegedy (2015, sec. 2) argue that a gradient
step that ignores the normalization can leave the loss unchanged while parameters grow
without bound. Two BN networks of the paper's set-up (:mod:`bnprop.reproduce.options`),
built with the same seed (the same start), train in lockstep on the same batches
(:mod:`bnprop.reproduce.lockstep`): ``"exact"`` and ``"frozen"``. For hidden layer l the
two gradients differ by (docs/math.md; G = dF/dA, row j of W)::

    dW_frozen[j] - dW_exact[j] = gamma_j inv_std_j ( sum_rows(G_j) mean_rows(O)
                                                     + mean_rows(G_j Obar_j) Obar_j^T O )

The first term moves every row of W along the mean input ``mean_rows(O)``, a change the
mean subtraction removes again (sigmoid inputs are positive, so it shows in the row sums
``W 1``); the second moves row j along ``Obar_j^T O = m inv_std_j Cov(O) W_j^T``, roughly
along the row itself: a change of scale, which the division by ``sqrt(var_B + eps)`` removes.
After each recorded step ``s``, for each network::

    loss(s)                 train_loss of lockstep.py (mean batch loss since the last record)
    test_accuracy(s)        on the whole test split, in inference mode
    weight_norms[l](s)      ||W_l||_F
    row_sum_norms[l](s)     ||W_l 1||_2, the norm of the row sums
    grad_rel_diff[l](s)     ||dW_l_frozen - dW_l_exact||_F / ||dW_l_exact||_F

the last from the network's current parameters on the batch it is about to train on,
computed on a throwaway copy (:func:`both_gradients`), so measuring leaves the run alone.

Files written into ``out``:

    frozen_stats.png   (a) loss, (b) test accuracy, (c) weight norms, (d) gradient discrepancy
    frozen_stats.csv   seed, step, <arm>_loss, <arm>_test_accuracy, <arm>_W<l>_norm,
                       <arm>_W<l>_row_sum_norm, <arm>_W<l>_grad_rel_diff (arm = exact, frozen)
    summary.json       "exact" and "frozen": test_accuracy, loss, weight_norms,
                       row_sum_norms, grad_rel_diff (final values; None after a divergence),
                       diverged_at, steps, and "curves" (the same names, aligned with steps);
                       the mean over seeds (records.py), and each seed's under "per_seed"
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

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
from bnprop.reproduce.records import aggregate, json_list, recorded_steps, write_csv

#: The two networks, as named in summary.json and frozen_stats.csv.
ARMS = ("exact", "frozen")
#: The default learning rate of each optimizer.
DEFAULT_LR = {"sgd": 0.5, "adam": 1e-3}
LAYERS = tuple(f"hidden.{l}.W" for l in range(len(HIDDEN)))
#: Curves recorded per layer, as named in summary.json.
PER_LAYER = ("weight_norms", "row_sum_norms", "grad_rel_diff")
FILES = ("frozen_stats.png", "frozen_stats.csv", "summary.json")


def both_gradients(net: Any, X: np.ndarray, y: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """``{"exact": grads, "frozen": grads}`` of ``net`` on the batch ``X, y``.

    Each from a copy of ``net`` (``MLP.from_state``) whose configuration names the stats
    mode; the copies' running statistics absorb the batch, ``net`` is not touched.
    """
    from bnprop.model import MLP

    state = net.get_state()
    config = json.loads(str(state["config"]))
    grads = {}
    for stats in ARMS:
        state["config"] = np.array(json.dumps({**config, "stats": stats}, sort_keys=True))
        grads[stats] = MLP.from_state(state).loss_and_grads(X, y)[1]
    return grads


def _norm(a: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64)))


def measure_weights(net: Any) -> dict[str, float]:
    """``weight_norms/<layer>`` and ``row_sum_norms/<layer>`` of each hidden W."""
    params = net.parameters()
    values = {}
    for layer in LAYERS:
        W = params[layer].astype(np.float64)
        values[f"weight_norms/{layer}"] = _norm(W)
        values[f"row_sum_norms/{layer}"] = _norm(W.sum(axis=1))
    return values


def grad_rel_diff(grads: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """``grad_rel_diff/<layer>``: ``||dW_frozen - dW_exact||_F / ||dW_exact||_F``."""
    out = {}
    for layer in LAYERS:
        exact = grads["exact"][layer].astype(np.float64)
        frozen = grads["frozen"][layer].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"grad_rel_diff/{layer}"] = float(_norm(frozen - exact) / _norm(exact))
    return out


def run_frozen_stats(
    options: ReproduceOptions | None = None,
    out: str | Path | None = None,
    *,
    stream: TextIO | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the exact and the frozen network for every seed; write the three files.

    Parameters
    ----------
    options : ReproduceOptions, optional
        Default: 50,000 steps, SGD at lr 0.5 (``bnprop train``'s default), seed 0.
    out : path, optional
        Output folder, created if missing; default ``runs/frozen-stats-YYYYmmdd-HHMMSS``.
    stream : text stream, optional
        Where the progress bar goes (default stderr).
    progress : bool, default=True

    Returns
    -------
    dict
        The summary, also written to ``out/summary.json``. A network that diverges stops
        (``diverged_at``); the run goes on and the files are written all the same.
    """
    plotting.require_matplotlib()
    opts = check_options(options or ReproduceOptions(), DEFAULT_LR)
    data = load_data(opts)
    out = claim_out(out, "frozen-stats", FILES)

    def measure(arm: Arm, step: int, X_next: np.ndarray, y_next: np.ndarray) -> dict:
        return {"test_accuracy": arm.net.accuracy(data.Xt, data.yt),
                **measure_weights(arm.net),
                **grad_rel_diff(both_gradients(arm.net, X_next, y_next))}

    def arm_result(arm: Arm) -> dict[str, Any]:
        flat = {name: arm.curves.get("train_loss" if name == "loss" else name, [])
                for _, name in _csv_columns()}
        return _arm_result(arm.steps, flat, arm.diverged_at)

    t0 = time.perf_counter()
    per_seed = run_seeds(opts, data, {stats: {"stats": stats} for stats in ARMS},
                         measure=measure, arm_result=arm_result, label="frozen-stats",
                         short={stats: stats for stats in ARMS}, stream=stream,
                         progress=progress)
    summary = summarize(per_seed, ARMS, _aggregate_arm, opts, time.perf_counter() - t0)
    write_csv(out / "frozen_stats.csv", *_csv_table(per_seed))
    write_json(out / "summary.json", summary)
    plotting.save_png(draw_frozen_stats(summary), out / "frozen_stats.png")
    return summary


def _arm_result(steps: list[int], flat: dict[str, Any], diverged_at: int | None,
                ) -> dict[str, Any]:
    """One network's entry of summary.json from its flat curves (``name`` or ``name/layer``)."""
    curves: dict[str, Any] = {"loss": json_list(flat["loss"]),
                              "test_accuracy": json_list(flat["test_accuracy"])}
    for name in PER_LAYER:
        curves[name] = {layer: json_list(flat[f"{name}/{layer}"]) for layer in LAYERS}
    done = diverged_at is None and len(steps) > 0

    def final(values: list[float | None]) -> float | None:
        return values[-1] if done else None

    entry: dict[str, Any] = {
        "test_accuracy": final(curves["test_accuracy"]),
        "loss": final(curves["loss"]),
    }
    for name in PER_LAYER:
        entry[name] = {layer: final(curves[name][layer]) for layer in LAYERS}
    entry.update({"diverged_at": diverged_at, "steps": [int(s) for s in steps],
                  "curves": curves})
    return entry


def _flat(entry: dict[str, Any]) -> dict[str, list[float | None]]:
    """Inverse of :func:`_arm_result`'s nesting: ``{name or name/layer: curve}``."""
    curves = entry["curves"]
    flat = {"loss": curves["loss"], "test_accuracy": curves["test_accuracy"]}
    for name in PER_LAYER:
        flat.update({f"{name}/{layer}": curves[name][layer] for layer in LAYERS})
    return flat


def _aggregate_arm(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over seeds of one network's entries (records every seed has)."""
    flats = [_flat(s) for s in seeds]
    mean = {name: aggregate([f[name] for f in flats])[0] for name in flats[0]}
    steps = seeds[0]["steps"][:len(mean["loss"])]
    diverged = [s["diverged_at"] for s in seeds if s["diverged_at"] is not None]
    return _arm_result(steps, mean, min(diverged) if diverged else None)


def _csv_columns() -> list[tuple[str, str]]:
    """(CSV column suffix, flat curve name) of one network."""
    cols = [("loss", "loss"), ("test_accuracy", "test_accuracy")]
    for l, layer in enumerate(LAYERS):
        cols += [(f"W{l}_norm", f"weight_norms/{layer}"),
                 (f"W{l}_row_sum_norm", f"row_sum_norms/{layer}"),
                 (f"W{l}_grad_rel_diff", f"grad_rel_diff/{layer}")]
    return cols


def _csv_table(per_seed: list[dict[str, Any]]) -> tuple[list[str], list[list[object]]]:
    """frozen_stats.csv: header and one row per seed and recorded step."""
    cols = _csv_columns()
    header = ["seed", "step", *(f"{arm}_{suffix}" for arm in ARMS for suffix, _ in cols)]
    rows: list[list[object]] = []
    flats = {id(result): {arm: _flat(result[arm]) for arm in ARMS} for result in per_seed}
    for result, step, index in recorded_steps(per_seed, ARMS):
        row: list[object] = [result["seed"], step]
        for arm in ARMS:
            i, flat = index[arm], flats[id(result)][arm]
            row += [None if i is None else flat[name][i] for _, name in cols]
        rows.append(row)
    return header, rows


def _series(summary: dict[str, Any], arm: str, name: str) -> tuple[np.ndarray, ...]:
    """(steps, mean, lo, hi) of one flat curve of ``arm`` over the summary's seeds."""
    flats = [_flat(s[arm]) for s in summary["per_seed"]]
    _, lo, hi = aggregate([f[name] for f in flats])
    mean = np.array([np.nan if v is None else v for v in _flat(summary[arm])[name]],
                    dtype=np.float64)
    return np.array(summary[arm]["steps"]), mean, lo, hi


def draw_frozen_stats(summary: dict[str, Any]) -> Any:
    """Loss, accuracy, weight norms and gradient discrepancy of both networks (a Figure).

    Lines are the summary's values (the mean over seeds); with several seeds, a band spans
    each curve's min and max over ``summary["per_seed"]``.
    """
    from matplotlib.lines import Line2D

    fig = plotting.new_figure(12.0, 8.0)
    (ax_loss, ax_acc), (ax_w, ax_g) = fig.subplots(2, 2, sharex=True)
    band = len(summary["per_seed"]) > 1
    shades = {"exact": ("#9ecae1", "#4292c6", "#08306b"),
              "frozen": ("#fc9272", "#ef3b2c", "#67000d")}
    labels = {"exact": "exact gradient", "frozen": "frozen statistics (handout part 4)"}
    for arm in ARMS:
        color = shades[arm][1]
        for ax, name in ((ax_loss, "loss"), (ax_acc, "test_accuracy")):
            steps, mean, lo, hi = _series(summary, arm, name)
            plotting.line_with_band(ax, steps, mean, lo, hi, band=band, color=color,
                                    label=labels[arm])
        for l, layer in enumerate(LAYERS):
            for name, dash in (("weight_norms", "-"), ("row_sum_norms", ":")):
                steps, mean, lo, hi = _series(summary, arm, f"{name}/{layer}")
                plotting.line_with_band(ax_w, steps, mean, lo, hi, band=band,
                                        color=shades[arm][l], linestyle=dash)
            steps, mean, lo, hi = _series(summary, arm, f"grad_rel_diff/{layer}")
            plotting.line_with_band(ax_g, steps, mean, lo, hi, band=band,
                                    color=shades[arm][l], label=f"{arm}: {layer}")
        diverged = summary[arm]["diverged_at"]
        if diverged is not None:
            for ax in (ax_loss, ax_acc, ax_w, ax_g):
                ax.axvline(diverged, color=color, linewidth=0.8, linestyle="-.")
            ax_loss.annotate(f"{arm} diverged at step {diverged}", (diverged, 0.9),
                             xycoords=("data", "axes fraction"), color=color,
                             fontsize="small", ha="right")
    plotting.log_y(ax_loss)
    ax_loss.set_ylabel("training loss (mean since last record)")
    ax_loss.set_title("(a) loss")
    ax_loss.legend(loc="upper right", fontsize="small")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.set_title("(b) test accuracy")
    finals = [summary[arm]["test_accuracy"] for arm in ARMS]
    if all(f is not None and f >= 0.8 for f in finals):
        ax_acc.set_ylim(0.7, 1.0)
    plotting.log_y(ax_w)
    plotting.headroom(ax_w, 6.0)
    ax_w.set_ylabel("norm")
    ax_w.set_title("(c) weight norms: ||W_l|| (solid), ||W_l 1|| (dotted)")
    ax_w.legend(handles=[
        Line2D([], [], color=shades[arm][l], label=f"{arm}: {layer}")
        for arm in ARMS for l, layer in enumerate(LAYERS)], fontsize="x-small", ncol=2,
        loc="upper center")
    plotting.log_y(ax_g)
    plotting.headroom(ax_g, 2.5)
    ax_g.set_ylabel("||dW_frozen - dW_exact|| / ||dW_exact||")
    ax_g.set_title("(d) gradient discrepancy, at each network's parameters")
    ax_g.legend(fontsize="x-small", ncol=2, loc="upper center")
    for ax in (ax_loss, ax_acc, ax_w, ax_g):
        ax.grid(alpha=0.3)
    for ax in (ax_w, ax_g):
        plotting.steps_axis(ax)
    opts = summary["options"]
    fig.suptitle(
        f"BN network, MNIST, 3 x 100 sigmoid, batch 60, {opts['optimizer'].upper()} "
        f"lr {opts['lr']:g}: exact vs frozen-statistics gradient"
        + (f"; mean and min-max of {len(summary['seeds'])} seeds" if band else ""),
        fontsize="medium")
    return fig


def report_line(summary: dict[str, Any], out: str | Path) -> str:
    """One line for the terminal: each network's outcome and where the files are."""
    parts = []
    for arm in ARMS:
        entry = summary[arm]
        if entry["diverged_at"] is not None:
            parts.append(f"{arm} diverged at step {entry['diverged_at']}")
        else:
            parts.append(f"{arm} test accuracy {entry['test_accuracy']:.4f}, loss "
                         f"{entry['loss']:.4f}, ||W|| "
                         + "/".join(f"{entry['weight_norms'][layer]:.1f}" for layer in LAYERS))
    seeds = len(summary["seeds"])
    return (f"frozen-stats: {'; '.join(parts)} after {summary['options']['steps']} steps"
            f"{f' (mean of {seeds} seeds)' if seeds > 1 else ''}, {summary['elapsed']:.1f} s; "
            f"{', '.join(FILES)} in {out}")
