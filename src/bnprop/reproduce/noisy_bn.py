"""``bnprop reproduce noisy-bn``: BN followed by noise that shifts and scales every unit's
distribution at every step (Santurkar et al. 2018, Figure 2).

Four networks train in lockstep on the same batches from the same W matrices: the three
arms of :mod:`bnprop.reproduce.curves` and ``"noisy_batchnorm"``, the BN network with a
:class:`~bnprop.reproduce.noisy.NoisyUnit` between each BN and its sigmoid (exact
gradient; the noise is off in inference). After each recorded step ``s``, per network::

    test_accuracy(s)   on the whole test split, in inference mode
    p_q(s)             the q-th percentile, q in (15, 50, 85), of A[:, unit] over the probe
                       batch, A = the input of the last hidden layer's sigmoids
    train_loss(s)      lockstep.py (with the noise, for the noisy network)

The probe batch is the first :data:`PROBE_ROWS` test examples (all, if fewer), run in
training mode: batch statistics of the probe and, for the noisy network, the noise its next
training step draws (on a copy: the run is untouched). ``A`` is taken after BN's gamma and
beta and, for the noisy network, after the noise. ``unit`` is fig1's
(:func:`bnprop.reproduce.fig1.draw_unit`) unless given.

Files written into ``out``:

    noisy_bn.png   (a) test accuracy of the four networks, (b)-(e) p15, p50, p85 of each,
                   (f) training loss
    noisy_bn.csv   seed, step, <arm>_<name> for every network and curve
    summary.json   per network: steps, curves, final, diverged_at (curves.py), and
                   steps_to_accuracy {"0.95", "0.97"}; unit, layer, probe_examples, noise,
                   seeds, options, elapsed, per_seed
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

import numpy as np

from bnprop.reproduce import plotting
from bnprop.reproduce.curves import ARM_CONFIG, STYLE, run_arms, series, title_suffix
from bnprop.reproduce.fig1 import PERCENTILES, THRESHOLDS, check_unit, draw_unit
from bnprop.reproduce.lockstep import Arm
from bnprop.reproduce.noisy import activation_inputs, check_number, noisy_mlp
from bnprop.reproduce.options import (
    HIDDEN,
    ReproduceOptions,
    check_options,
    claim_out,
    load_data,
)
from bnprop.reproduce.records import first_step_reaching

ARMS_CONFIG = {**ARM_CONFIG, "noisy_batchnorm": {"batchnorm": True}}
ARMS = tuple(ARMS_CONFIG)
#: The default learning rate of each optimizer (fig1's).
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3}
#: Test examples of the probe batch.
PROBE_ROWS = 1000
CURVES = ("train_loss", "test_accuracy", *(f"p{q}" for q in PERCENTILES))
LAYER = f"hidden.{len(HIDDEN) - 1}"
FILES = ("noisy_bn.png", "noisy_bn.csv", "summary.json")


def run_noisy_bn(
    options: ReproduceOptions | None = None,
    out: str | Path | None = None,
    *,
    unit: int | None = None,
    shift: float = 1.0,
    scale: float = 2.0,
    stream: TextIO | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the four networks for every seed and write the three files.

    Parameters
    ----------
    options : ReproduceOptions, optional
        Default: 50,000 steps, SGD at lr 0.05 (fig1's), seed 0, one seed.
    out : path, optional
        Output folder; default ``runs/noisy-bn-YYYYmmdd-HHMMSS``.
    unit : int, optional
        The last hidden layer's unit whose input is recorded; default fig1's.
    shift, scale : float, default=1.0, 2.0
        The noise: ``b ~ U(-shift, shift)``, ``s ~ U(1, scale)``
        (:class:`~bnprop.reproduce.noisy.NoisyUnit`).
    stream : text stream, optional
    progress : bool, default=True

    Returns
    -------
    dict
        The summary, also written to ``out/summary.json``.
    """
    plotting.require_matplotlib()
    opts = check_options(options or ReproduceOptions(), DEFAULT_LR)
    shift = check_number(shift, "shift", 0.0)
    scale = check_number(scale, "scale", 1.0)
    unit_source = f"drawn with seed {opts.seed}" if unit is None else "given"
    unit = draw_unit(opts.seed) if unit is None else check_unit(unit)
    data = load_data(opts)
    out = claim_out(out, "noisy-bn", FILES)
    probe = data.Xt[:PROBE_ROWS]

    def build(name: str, config: Any, n_in: int, n_classes: int) -> Any:
        from bnprop.train import build_model

        if name != "noisy_batchnorm":
            return build_model(config, n_in, n_classes)
        return noisy_mlp((n_in, *config.hidden, n_classes), activation=config.activation,
                         shift=shift, scale=scale, seed=config.seed, dtype=config.dtype,
                         running=config.running)

    def measure(arm: Arm, step: int, X_next: np.ndarray, y_next: np.ndarray) -> dict:
        A = activation_inputs(arm.net, probe, training=True)[-1][:, unit]
        p = np.percentile(A.astype(np.float64), PERCENTILES)
        return {"test_accuracy": arm.net.accuracy(data.Xt, data.yt),
                **{f"p{q}": float(v) for q, v in zip(PERCENTILES, p, strict=True)}}

    return run_arms(opts, data, out, FILES, arms=ARMS_CONFIG, measure=measure,
                    names=lambda: CURVES, draw=draw_noisy_bn, stream=stream,
                    progress=progress, build=build, finish=with_thresholds, unit=unit,
                    unit_source=unit_source, layer=LAYER,
                    probe_examples=int(probe.shape[0]), noise={"shift": shift, "scale": scale})


def with_thresholds(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` with ``steps_to_accuracy``: the first recorded step at each threshold."""
    accuracy = entry["curves"]["test_accuracy"]
    entry["steps_to_accuracy"] = {str(t): first_step_reaching(entry["steps"], accuracy, t)
                                  for t in THRESHOLDS}
    return entry


def draw_noisy_bn(summary: dict[str, Any]) -> Any:
    """Test accuracy, the unit's input percentiles per network, training loss (a Figure)."""
    fig = plotting.new_figure(14.0, 7.5)
    axes = fig.subplots(2, 3)
    ax_acc, ax_loss = axes[0][0], axes[1][2]
    dist_axes = (axes[0][1], axes[0][2], axes[1][0], axes[1][1])
    band = len(summary["per_seed"]) > 1
    colors = {85: "tab:green", 50: "black", 15: "tab:purple"}
    for k, arm in enumerate(ARMS):
        label, color = STYLE[arm]
        for ax, name in ((ax_acc, "test_accuracy"), (ax_loss, "train_loss")):
            steps, mean, lo, hi = series(summary, arm, name)
            plotting.line_with_band(ax, steps, mean, lo, hi, band=band, color=color,
                                    label=label)
        ax = dist_axes[k]
        for q in sorted(PERCENTILES, reverse=True):
            steps, mean, lo, hi = series(summary, arm, f"p{q}")
            plotting.line_with_band(ax, steps, mean, lo, hi, band=band, color=colors[q],
                                    label=f"{q}th percentile")
        ax.set_title(f"({'bcde'[k]}) {label}", color=color)
    lows = [series(summary, arm, "p15")[1] for arm in ARMS]
    highs = [series(summary, arm, "p85")[1] for arm in ARMS]
    ylim = (np.nanmin([np.nanmin(v) for v in lows]), np.nanmax([np.nanmax(v) for v in highs]))
    for ax in dist_axes:
        if all(np.isfinite(ylim)):
            ax.set_ylim(ylim[0] - 0.2, ylim[1] + 0.2)
        ax.set_ylabel(f"A of {summary['layer']}, unit {summary['unit']}")
    dist_axes[0].legend(fontsize="small")
    finals = [summary[arm]["final"]["test_accuracy"] for arm in ARMS]
    if all(f is not None and f >= 0.8 for f in finals):
        ax_acc.set_ylim(0.7, 1.0)
    ax_acc.set_title("(a) test accuracy (inference: noise off)")
    ax_acc.legend(fontsize="small", loc="lower right")
    ax_loss.set_title("(f) training loss (with the noise)")
    plotting.log_y(ax_loss)
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
        plotting.steps_axis(ax)
    noise = summary["noise"]
    fig.suptitle(
        f"Noisy BN (Santurkar et al. 2018, Fig. 2): A = s*BN + b, s ~ U(1, {noise['scale']:g}),"
        f" b ~ U(-{noise['shift']:g}, {noise['shift']:g}) per unit and step\npercentiles over "
        f"{summary['probe_examples']} test examples in training mode; "
        + title_suffix(summary), fontsize="medium")
    return fig


def report_line(summary: dict[str, Any], out: str | Path) -> str:
    """One line for the terminal: final test accuracies and where the files are."""
    parts = []
    for arm in ARMS:
        entry = summary[arm]
        parts.append(f"{arm} diverged at step {entry['diverged_at']}"
                     if entry["diverged_at"] is not None
                     else f"{arm} {entry['final']['test_accuracy']:.4f}")
    seeds = len(summary["seeds"])
    return (f"noisy-bn: test accuracy {', '.join(parts)} after {summary['options']['steps']} "
            f"steps{f' (mean of {seeds} seeds)' if seeds > 1 else ''}, "
            f"{summary['elapsed']:.1f} s; {', '.join(FILES)} in {out}")
