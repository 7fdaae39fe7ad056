"""``bnprop reproduce landscape``: the loss landscape along the gradient (Santurkar et al.
2018, Figure 4).

At parameters ``x`` with gradient ``g = grad L(x)`` on the batch ``B`` about to be trained
on, for every step size ``eta`` in ``etas``::

    loss(eta)      L(x - eta g)
    diff(eta)      ||grad L(x) - grad L(x - eta g)||_2     ("gradient predictiveness")
    beta_eff       max over eta of  diff(eta) / ||eta g||_2 ("effective beta-smoothness")

:func:`line_probe` computes them for any ``loss_fn`` / ``grad_fn`` of a flat vector
(for ``L(x) = x^T H x / 2``: ``diff(eta) = eta ||H g||``, ``beta_eff = ||H g|| / ||g|| <=
lambda_max(H)``). On a network, :class:`NetLine` gives them: the training-mode loss
(batch statistics of ``B``) and the arm's own gradient (the frozen arm: the
frozen-statistics one, the direction its optimizer takes) as functions of every parameter
in one float64 vector, on a copy of the network, so the run is untouched. The moved
parameters are rounded to the network's dtype.

Step sizes: the paper's span a range of learning rates; scaled to this network,
``etas = lr * ETA_FACTORS``, 0.5 to 4 times the training rate (0.025 .. 0.2 at the default
lr 0.05).

After each recorded step ``s``, per arm (:mod:`bnprop.reproduce.curves`)::

    loss              L(x), the batch loss at the current parameters
    loss_min, loss_max       min and max of L(x - eta g) over the etas
    grad_diff_min, grad_diff_max   min and max of diff(eta)
    beta_eff          as above
    grad_norm         ||g||
    test_accuracy, train_loss (lockstep.py)

Files written into ``out``:

    landscape.png   (a) loss band, (b) gradient-predictiveness band, (c) beta_eff,
                    (d) test accuracy; each arm against the others
    landscape.csv   seed, step, <arm>_<name> for every arm and curve
    summary.json    per arm: steps, curves, final, diverged_at (curves.py); etas, seeds,
                    options, elapsed, per_seed
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np

from bnprop._validate import InputError
from bnprop.nn import NonFiniteError
from bnprop.reproduce import plotting
from bnprop.reproduce.curves import ARM_CONFIG, ARMS, STYLE, run_arms, series, title_suffix
from bnprop.reproduce.lockstep import Arm
from bnprop.reproduce.options import ReproduceOptions, check_options, claim_out, load_data

#: The default learning rate: fig1's. Only SGD: the probe moves along the raw gradient.
DEFAULT_LR = {"sgd": 0.05}
#: Step sizes as multiples of the training rate.
ETA_FACTORS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
CURVES = ("train_loss", "test_accuracy", "loss", "loss_min", "loss_max", "grad_diff_min",
          "grad_diff_max", "beta_eff", "grad_norm")
FILES = ("landscape.png", "landscape.csv", "summary.json")


class LineProbe(NamedTuple):
    """What :func:`line_probe` measures along ``-g`` (module docstring)."""

    loss: float
    grad_norm: float
    etas: np.ndarray
    losses: np.ndarray
    grad_diffs: np.ndarray
    beta_eff: float


def line_probe(loss_fn: Callable[[np.ndarray], float],
               grad_fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
               etas: Sequence[float]) -> LineProbe:
    """Loss, gradient predictiveness and effective beta-smoothness along ``-grad_fn(x)``.

    Parameters
    ----------
    loss_fn, grad_fn : callable
        ``L(x)`` and ``grad L(x)`` of a 1-D float64 vector.
    x : ndarray of shape (n,)
    etas : sequence of float
        Step sizes, each > 0.

    Returns
    -------
    LineProbe
        ``losses[k] = L(x - etas[k] g)``, ``grad_diffs[k] = ||g - grad L(x - etas[k] g)||``,
        ``beta_eff = max_k grad_diffs[k] / (etas[k] ||g||)`` (NaN when ``g = 0``).
    """
    x = np.asarray(x, dtype=np.float64)
    etas_arr = np.asarray(etas, dtype=np.float64)
    if x.ndim != 1:
        raise InputError(f"x: expected a 1-D vector, got shape {x.shape} instead.")
    if etas_arr.ndim != 1 or etas_arr.size == 0 or not (etas_arr > 0).all():
        raise InputError(f"etas: expected step sizes > 0, got {list(etas)!r} instead.")
    g = np.asarray(grad_fn(x), dtype=np.float64)
    grad_norm = float(np.linalg.norm(g))
    losses = np.empty(etas_arr.size)
    diffs = np.empty(etas_arr.size)
    for k, eta in enumerate(etas_arr):
        moved = x - eta * g
        losses[k] = loss_fn(moved)
        diffs[k] = np.linalg.norm(g - np.asarray(grad_fn(moved), dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = float(np.max(diffs / (etas_arr * grad_norm))) if grad_norm > 0 else float("nan")
    return LineProbe(float(loss_fn(x)), grad_norm, etas_arr, losses, diffs, beta)


class NetLine:
    """A network's training-mode loss and gradient on one batch, as functions of all its
    parameters in one float64 vector (in ``parameters()`` order), on a copy of it.

    ``loss_fn(x)`` and ``grad_fn(x)`` share one forward and backward per point; a point
    whose loss or gradient is not finite gives NaN.
    """

    def __init__(self, net: Any, X: np.ndarray, y: np.ndarray) -> None:
        self.net = copy.deepcopy(net)
        self.X, self.y = X, y
        self.params = self.net.parameters()
        self._at: np.ndarray | None = None
        self._value: tuple[float, np.ndarray] = (float("nan"), np.empty(0))

    def vector(self) -> np.ndarray:
        """The current parameters as one float64 vector."""
        return np.concatenate([p.astype(np.float64).ravel() for p in self.params.values()])

    def _evaluate(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        if self._at is None or not np.array_equal(x, self._at):
            start = 0
            for p in self.params.values():
                p[...] = x[start:start + p.size].reshape(p.shape)
                start += p.size
            try:
                loss, grads = self.net.loss_and_grads(self.X, self.y)
                g = np.concatenate([grads[k].astype(np.float64).ravel() for k in self.params])
            except NonFiniteError:  # the point is off the dtype's range: no value
                loss, g = float("nan"), np.full(x.size, np.nan)
            self._at, self._value = x.copy(), (float(loss), g)
        return self._value

    def loss_fn(self, x: np.ndarray) -> float:
        return self._evaluate(x)[0]

    def grad_fn(self, x: np.ndarray) -> np.ndarray:
        return self._evaluate(x)[1]


def landscape_values(net: Any, X: np.ndarray, y: np.ndarray,
                     etas: Sequence[float]) -> dict[str, float]:
    """The landscape curves of ``net`` on the batch ``X, y`` (module docstring)."""
    line = NetLine(net, X, y)
    probe = line_probe(line.loss_fn, line.grad_fn, line.vector(), etas)
    return {"loss": probe.loss, "loss_min": float(probe.losses.min()),
            "loss_max": float(probe.losses.max()),
            "grad_diff_min": float(probe.grad_diffs.min()),
            "grad_diff_max": float(probe.grad_diffs.max()),
            "beta_eff": probe.beta_eff, "grad_norm": probe.grad_norm}


def run_landscape(
    options: ReproduceOptions | None = None,
    out: str | Path | None = None,
    *,
    stream: TextIO | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the three arms for every seed, probe the landscape at each record; write the
    files.

    Parameters
    ----------
    options : ReproduceOptions, optional
        Default: 50,000 steps, SGD at lr 0.05 (fig1's), seed 0, one seed.
    out : path, optional
        Output folder; default ``runs/landscape-YYYYmmdd-HHMMSS``.
    stream : text stream, optional
    progress : bool, default=True

    Returns
    -------
    dict
        The summary, also written to ``out/summary.json``.
    """
    plotting.require_matplotlib()
    opts = check_options(options or ReproduceOptions(), DEFAULT_LR)
    etas = [float(opts.lr) * f for f in ETA_FACTORS]  # type: ignore[operator]
    data = load_data(opts)
    out = claim_out(out, "landscape", FILES)

    def measure(arm: Arm, step: int, X_next: np.ndarray, y_next: np.ndarray) -> dict:
        return {"test_accuracy": arm.net.accuracy(data.Xt, data.yt),
                **landscape_values(arm.net, X_next, y_next, etas)}

    return run_arms(opts, data, out, FILES, arms=ARM_CONFIG, measure=measure,
                    names=lambda: CURVES, draw=draw_landscape, stream=stream,
                    progress=progress, etas=etas)


def draw_landscape(summary: dict[str, Any]) -> Any:
    """The paper's Figure 4 panels for the three arms, and the test accuracy (a Figure).

    (a), (b): the band between the min and the max over the step sizes (the mean over
    seeds of each); (c), (d): lines, with a min-max band over seeds when there are several.
    """
    fig = plotting.new_figure(16.0, 4.2)
    ax_loss, ax_grad, ax_beta, ax_acc = fig.subplots(1, 4)
    band = len(summary["per_seed"]) > 1
    for arm in ARMS:
        label, color = STYLE[arm]
        for ax, lo_name, hi_name in ((ax_loss, "loss_min", "loss_max"),
                                     (ax_grad, "grad_diff_min", "grad_diff_max")):
            steps, lo, _, _ = series(summary, arm, lo_name)
            _, hi, _, _ = series(summary, arm, hi_name)
            ax.fill_between(steps, lo, hi, color=color, alpha=0.35, linewidth=0.6,
                            edgecolor=color, label=label)
        for ax, name in ((ax_beta, "beta_eff"), (ax_acc, "test_accuracy")):
            steps, mean, lo, hi = series(summary, arm, name)
            plotting.line_with_band(ax, steps, mean, lo, hi, band=band, color=color,
                                    label=label)
    etas = summary["etas"]
    ax_loss.set_title(f"(a) loss L(x - eta g), eta in [{etas[0]:g}, {etas[-1]:g}]")
    ax_grad.set_title("(b) gradient predictiveness ||g - grad L(x - eta g)||")
    ax_beta.set_title("(c) effective beta-smoothness")
    ax_acc.set_title("(d) test accuracy")
    for ax in (ax_loss, ax_grad, ax_beta):
        plotting.log_y(ax)
    for ax in (ax_loss, ax_grad, ax_beta, ax_acc):
        ax.grid(alpha=0.3)
        plotting.steps_axis(ax)
    ax_loss.legend(fontsize="small")
    fig.suptitle("Loss landscape along the gradient (Santurkar et al. 2018, Fig. 4); "
                 + title_suffix(summary), fontsize="medium")
    return fig


def _median(entry: dict[str, Any], name: str) -> float:
    values = [v for v in entry["curves"].get(name, []) if v is not None]
    return float(np.median(values)) if values else float("nan")


def report_line(summary: dict[str, Any], out: str | Path) -> str:
    """One line for the terminal: each arm's median beta_eff and the files."""
    parts = []
    for arm in ARMS:
        entry = summary[arm]
        parts.append(f"{arm} diverged at step {entry['diverged_at']}"
                     if entry["diverged_at"] is not None else
                     f"{arm} median beta_eff {_median(entry, 'beta_eff'):.3g}, max grad "
                     f"change {_median(entry, 'grad_diff_max'):.3g}")
    return (f"landscape: {'; '.join(parts)} over {summary['options']['steps']} steps, "
            f"{summary['elapsed']:.1f} s; {', '.join(FILES)} in {out}")
