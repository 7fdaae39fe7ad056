"""``bnprop reproduce ics``: internal covariate shift as Santurkar et al. (2018) define it.

Their Definition 2.1: for layer i, on the batch ``B`` about to be trained on, at the
parameters ``theta = (W_1, ..., W_k)`` of step t::

    G_i  = dL/dW_i (theta; B)
    G'_i = dL/dW_i (theta'_1, ..., theta'_{i-1}, theta_i, ..., theta_k; B)
    ICS_i = ||G_i - G'_i||_2          and          cos(G_i, G'_i) = <G_i, G'_i> / (|G_i| |G'_i|)

where ``theta'_j`` is layer j's parameters after the optimizer's update computed from the
gradient at ``theta`` on ``B`` (every parameter of layer j: W and b, or W, gamma and beta):
the gradient of layer i once the layers below it have taken their step and those from i up
have not. Both are training-mode gradients (batch statistics of ``B``); each arm uses its
own gradient (the frozen arm: the frozen-statistics one, as it trains). ``G'`` is a real
forward and backward at the moved parameters, on a copy of the network and the optimizer,
so the run is untouched. Layer 0 has no layer below it (``G'_0 = G_0``): it is not recorded.
A gradient that is not finite (``NonFiniteError``) records NaN (null in the files).

After each recorded step ``s``, per arm (:mod:`bnprop.reproduce.curves`), per layer
``l`` in hidden.1, hidden.2, out::

    <l>_l2     ||G - G'||_2 (Frobenius norm of the matrix difference)
    <l>_cos    cos(G, G')
    <l>_rel    ||G - G'||_2 / ||G||_2
    test_accuracy, train_loss (lockstep.py)

Files written into ``out``:

    ics.png        (a) ||G - G'|| and (b) cos(G, G') for each layer, (c) test accuracy
    ics.csv        seed, step, <arm>_<name> for every arm and curve
    summary.json   per arm: steps, curves, final, diverged_at (curves.py); layers, seeds,
                   options, elapsed, per_seed
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from bnprop.nn import NonFiniteError
from bnprop.reproduce import plotting
from bnprop.reproduce.curves import ARM_CONFIG, ARMS, STYLE, run_arms, series, title_suffix
from bnprop.reproduce.lockstep import Arm
from bnprop.reproduce.options import ReproduceOptions, check_options, claim_out, load_data

#: The default learning rate of each optimizer (fig1's).
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3}
METRICS = ("l2", "cos", "rel")
FILES = ("ics.png", "ics.csv", "summary.json")


def layer_of(name: str) -> str:
    """The layer of a parameter name: ``"hidden.1.gamma" -> "hidden.1"``, ``"3.W" -> "3"``."""
    return name.rsplit(".", 1)[0]


def weight_layers(net: Any) -> list[str]:
    """The layers that have a weight matrix ``<layer>.W``, in order."""
    return [layer_of(name) for name in net.parameters() if name.endswith(".W")]


def ics_gradients(net: Any, optimizer: Any, X: np.ndarray, y: np.ndarray,
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{layer_i: (G_i, G'_i)}`` for every weight layer but the first (module docstring).

    Works on copies of ``net`` and ``optimizer``: neither, nor the running statistics,
    change.
    """
    scratch = copy.deepcopy(net)
    _, grads = scratch.loss_and_grads(X, y)
    params = scratch.parameters()
    theta = {k: v.copy() for k, v in params.items()}
    copy.deepcopy(optimizer).step(params, grads)
    moved = {k: v.copy() for k, v in params.items()}
    layers = weight_layers(net)
    pairs = {}
    for i in range(1, len(layers)):
        below = set(layers[:i])
        for name, p in params.items():
            p[...] = moved[name] if layer_of(name) in below else theta[name]
        _, grads_i = scratch.loss_and_grads(X, y)
        key = f"{layers[i]}.W"
        pairs[layers[i]] = (grads[key], grads_i[key])
    return pairs


def ics_values(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """``<layer>_l2``, ``<layer>_cos`` and ``<layer>_rel`` of each ``(G, G')`` (float64)."""
    values = {}
    for layer, (G, G2) in pairs.items():
        g, g2 = G.astype(np.float64).ravel(), G2.astype(np.float64).ravel()
        norm, norm2 = float(np.linalg.norm(g)), float(np.linalg.norm(g2))
        diff = float(np.linalg.norm(g - g2))
        with np.errstate(divide="ignore", invalid="ignore"):
            values[f"{layer}_l2"] = diff
            values[f"{layer}_cos"] = float(np.dot(g, g2) / (norm * norm2))
            values[f"{layer}_rel"] = float(np.float64(diff) / norm)
    return values


def run_ics(
    options: ReproduceOptions | None = None,
    out: str | Path | None = None,
    *,
    stream: TextIO | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the three arms for every seed, measure ICS at each record; write the files.

    Parameters
    ----------
    options : ReproduceOptions, optional
        Default: 50,000 steps, SGD at lr 0.05 (fig1's), seed 0, one seed.
    out : path, optional
        Output folder; default ``runs/ics-YYYYmmdd-HHMMSS``.
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
    data = load_data(opts)
    out = claim_out(out, "ics", FILES)
    layers: list[str] = []

    def measure(arm: Arm, step: int, X_next: np.ndarray, y_next: np.ndarray) -> dict:
        if not layers:
            layers.extend(weight_layers(arm.net)[1:])
        try:
            values = ics_values(ics_gradients(arm.net, arm.optimizer, X_next, y_next))
        except NonFiniteError:  # a gradient off the dtype's range: no value (NaN, null)
            values = {f"{layer}_{metric}": float("nan") for layer in layers
                      for metric in METRICS}
        return {"test_accuracy": arm.net.accuracy(data.Xt, data.yt), **values}

    def names() -> list[str]:
        return ["train_loss", "test_accuracy",
                *(f"{layer}_{metric}" for layer in layers for metric in METRICS)]

    return run_arms(opts, data, out, FILES, arms=ARM_CONFIG, measure=measure, names=names,
                    draw=draw_ics, stream=stream, progress=progress, layers=layers)


def draw_ics(summary: dict[str, Any]) -> Any:
    """||G - G'|| and cos(G, G') per layer and arm, and the test accuracy (a Figure)."""
    layers = summary["layers"]
    fig = plotting.new_figure(4.0 * (len(layers) + 1), 7.0)
    axes = fig.subplots(2, len(layers) + 1, squeeze=False)
    band = len(summary["per_seed"]) > 1
    for arm in ARMS:
        label, color = STYLE[arm]
        for k, layer in enumerate(layers):
            for row, metric in ((0, "l2"), (1, "cos")):
                name = f"{layer}_{metric}"
                if name not in summary[arm]["curves"]:
                    continue
                steps, mean, lo, hi = series(summary, arm, name)
                plotting.line_with_band(axes[row][k], steps, mean, lo, hi, band=band,
                                        color=color, label=label)
        for row, name in ((0, "test_accuracy"), (1, "train_loss")):
            steps, mean, lo, hi = series(summary, arm, name)
            plotting.line_with_band(axes[row][-1], steps, mean, lo, hi, band=band,
                                    color=color, label=label)
    for k, layer in enumerate(layers):
        axes[0][k].set_title(f"{layer}.W: ||G - G'||")
        plotting.log_y(axes[0][k])
        axes[1][k].set_title(f"{layer}.W: cos(G, G')")
    axes[0][-1].set_title("test accuracy")
    axes[1][-1].set_title("training loss")
    plotting.log_y(axes[1][-1])
    axes[0][0].legend(fontsize="small")
    for row in axes:
        for ax in row:
            ax.grid(alpha=0.3)
            plotting.steps_axis(ax)
    fig.suptitle("Internal covariate shift (Santurkar et al. 2018, Def. 2.1): G' = the "
                 "gradient after the layers below took their step\n" + title_suffix(summary),
                 fontsize="medium")
    return fig


def report_line(summary: dict[str, Any], out: str | Path) -> str:
    """One line for the terminal: each arm's median ICS of the last layer, the files."""
    last = summary["layers"][-1] if summary["layers"] else None
    parts = []
    for arm in ARMS:
        entry = summary[arm]
        if entry["diverged_at"] is not None:
            parts.append(f"{arm} diverged at step {entry['diverged_at']}")
            continue
        l2 = [v for v in entry["curves"].get(f"{last}_l2", []) if v is not None]
        cos = [v for v in entry["curves"].get(f"{last}_cos", []) if v is not None]
        parts.append(f"{arm} median ||G-G'|| {np.median(l2):.3g}, cos {np.median(cos):.3f}"
                     if l2 and cos else f"{arm} no record")
    return (f"ics ({last}.W): {'; '.join(parts)} over {summary['options']['steps']} steps, "
            f"{summary['elapsed']:.1f} s; {', '.join(FILES)} in {out}")
