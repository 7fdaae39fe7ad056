"""Recorded curves: their mean and range over seeds, thresholds, and the CSV files.

Over K seeds, a curve's value at record i is aggregated as::

    mean_i = (1/K) sum_k v_k,i      lo_i = min_k v_k,i      hi_i = max_k v_k,i

for the records every seed has (a seed whose network diverged has fewer). ``None``
(undefined) values count as NaN. In files, NaN and inf are written as JSON ``null`` and as
an empty CSV cell; every other number is written with ``repr``, so the CSV and JSON files
hold the same floats, bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnprop.files import write_text


def aggregate(curves: Sequence[Sequence[float | None]]) -> tuple[np.ndarray, ...]:
    """``(mean, lo, hi)`` over seeds of the first ``min(len(c))`` entries (float64)."""
    n = min(len(c) for c in curves)
    stack = np.array([[np.nan if v is None else v for v in c[:n]] for c in curves],
                     dtype=np.float64).reshape(len(curves), n)
    with np.errstate(invalid="ignore"):
        return stack.mean(axis=0), stack.min(axis=0), stack.max(axis=0)


def json_number(value: float | None) -> float | None:
    """``value`` as a plain float, or None when undefined (NaN, inf, None)."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def json_list(values: Sequence[float | None] | np.ndarray) -> list[float | None]:
    """:func:`json_number` of each entry."""
    return [json_number(v) for v in values]


def first_step_reaching(steps: Sequence[int], values: Sequence[float | None],
                        threshold: float) -> int | None:
    """The first recorded step whose value is >= ``threshold`` (None if never)."""
    for step, value in zip(steps, values, strict=False):
        if value is not None and value >= threshold:
            return int(step)
    return None


def recorded_steps(per_seed: Sequence[Mapping[str, Any]], arms: Sequence[str],
                   ) -> Iterator[tuple[Mapping[str, Any], int, dict[str, int | None]]]:
    """The rows of a CSV of records: for each seed's result (in order) and each step any
    of ``arms`` recorded (ascending), ``(result, step, index)`` with ``index[arm]`` the
    arm's record at that step, ``None`` where it has none (an empty cell)."""
    for result in per_seed:
        at = {arm: {s: i for i, s in enumerate(result[arm]["steps"])} for arm in arms}
        for step in sorted(set().union(*(at[arm] for arm in arms))):
            yield result, step, {arm: at[arm].get(step) for arm in arms}


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, int | np.integer):
        return str(int(value))
    number = json_number(value)  # type: ignore[arg-type]
    return "" if number is None else repr(number)


def write_csv(path: str | os.PathLike[str], header: Sequence[str],
              rows: Sequence[Sequence[object]]) -> Path:
    """Write a comma-separated file (header line, then one line a row), atomically."""
    lines = [",".join(header)]
    lines += [",".join(_cell(v) for v in row) for row in rows]
    return write_text(path, "\n".join(lines) + "\n")
