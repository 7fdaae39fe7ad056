"""Figures without pyplot: matplotlib imported on first use, drawn on its Agg canvas.

No global backend is switched (``matplotlib.use`` is never called), so drawing a figure
from a notebook leaves the notebook's own plotting alone. matplotlib is the optional
extra ``plot``; without it the commands stop before training, in one line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnprop._validate import InputError
from bnprop.files import atomic_write

INSTALL_HINT = "pip install 'bnprop[plot]'"


def require_matplotlib() -> None:
    """Raise :class:`InputError` (one line, the install command) if matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError(f"matplotlib is needed to draw the figures: {INSTALL_HINT}") from None


def new_figure(width: float, height: float) -> Any:
    """A ``matplotlib.figure.Figure`` on an Agg canvas, constrained layout."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def line_with_band(ax: Any, steps: Sequence[int], mean: np.ndarray, lo: np.ndarray,
                   hi: np.ndarray, *, band: bool, **line: Any) -> None:
    """Draw ``mean`` against ``steps``; with ``band``, shade ``lo..hi`` in the line's color."""
    n = len(mean)
    (drawn,) = ax.plot(steps[:n], mean, **line)
    if band:
        ax.fill_between(steps[:n], lo, hi, color=drawn.get_color(), alpha=0.2, linewidth=0)


def steps_axis(ax: Any) -> None:
    """Label ``ax``'s x axis "training step", ticks as 10K, 20K, ..."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xlabel("training step")
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda x, _: f"{x / 1000:g}K" if abs(x) >= 1000 else f"{x:g}"))


def log_y(ax: Any) -> None:
    """Log-scale y axis with plain tick labels (0.1, 4, 300 rather than 1e-01, 4 x 10^0)."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):  # LogFormatter picks which ticks get a label; %g writes it
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return f"{x:g}"

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(Plain(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(2, 0.4)))


def headroom(ax: Any, factor: float) -> None:
    """Raise a log axis' top by ``factor`` so a legend fits above the curves."""
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top * factor)


def save_png(fig: Any, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``path``, atomically."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
