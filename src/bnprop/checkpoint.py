"""What a training run leaves in its folder, and how it is read back.

A run folder ``DIR`` holds:

    model.npz        the network: parameters, running statistics, its config (JSON)
    checkpoint.npz   model.npz's arrays under ``model/``, the optimizer's under ``optim/``,
                     and ``meta``: step, the run's config, the train-loss accumulator
    metrics.jsonl    one JSON object per evaluation: step, train_loss, test_accuracy, elapsed
    summary.json     written when the run ends: test_accuracy, steps, config, ...

Every file is replaced atomically (temporary file, fsync, rename), so a ``kill -9`` at any
moment leaves each one complete: the previous version or the new one. A save writes its
files as one group (:func:`save_run`): all are written and fsync'ed to temporary files
before any is renamed, so a save that fails (a full disk) leaves the previous set, which
agrees with itself. Nothing is pickled: configs are JSON strings stored as NumPy unicode
scalars.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bnprop._atomic import atomic_files
from bnprop._validate import InputError
from bnprop.files import load_npz, npz_writer, save_npz, write_text

MODEL_FILE = "model.npz"
CHECKPOINT_FILE = "checkpoint.npz"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"

#: The files of a run: a fresh run refuses a folder holding any of them.
RUN_FILES = (MODEL_FILE, CHECKPOINT_FILE, METRICS_FILE, SUMMARY_FILE)


def json_array(obj: Any) -> np.ndarray:
    """``obj`` as JSON in a 0-d NumPy unicode array (readable with allow_pickle=False)."""
    return np.array(json.dumps(obj))


def from_json_array(arr: np.ndarray, what: str) -> Any:
    """Inverse of :func:`json_array`; ``what`` names the source in errors."""
    try:
        return json.loads(str(arr[()]))
    except (json.JSONDecodeError, TypeError, IndexError) as exc:
        raise InputError(f"{what}: not valid JSON ({exc}).") from None


def save_model(path: str | os.PathLike[str], state: Mapping[str, np.ndarray]) -> Path:
    """Write a model's state (from ``MLP.get_state()``) to ``path``, atomically."""
    return save_npz(path, state)


def load_model_state(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a model state written by :func:`save_model`; a missing file names the folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such folder or file.")
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.exists():
        raise InputError(f"{path}: no such file; is {path.parent} a bnprop training folder?")
    return load_npz(path)


def save_run(
    folder: str | os.PathLike[str],
    model: Mapping[str, np.ndarray],
    checkpoint: Mapping[str, np.ndarray],
    metrics: list[dict[str, Any]],
    summary: Mapping[str, Any] | None = None,
) -> None:
    """One save of a run, all files or none: model.npz, metrics.jsonl, summary.json (when
    given) and checkpoint.npz, renamed into place in that order once all are written.

    ``model`` is :func:`save_model`'s state; ``checkpoint`` :func:`checkpoint_arrays`'.
    """
    folder = Path(folder)
    with atomic_files() as stage:
        with stage(folder / MODEL_FILE) as f:
            npz_writer(model)(f)
        with stage(folder / METRICS_FILE) as f:
            f.write(metrics_text(metrics).encode("utf-8"))
        if summary is not None:
            with stage(folder / SUMMARY_FILE) as f:
                f.write(summary_text(summary).encode("utf-8"))
        with stage(folder / CHECKPOINT_FILE) as f:
            npz_writer(checkpoint)(f)


def summary_text(summary: Mapping[str, Any]) -> str:
    """The content of ``summary.json``."""
    return json.dumps(dict(summary), indent=2) + "\n"


def write_summary(folder: str | os.PathLike[str], summary: Mapping[str, Any]) -> Path:
    """Write ``summary.json`` alone (a run that diverged: its checkpoint is kept)."""
    return write_text(Path(folder) / SUMMARY_FILE, summary_text(summary))


def checkpoint_arrays(
    model_state: Mapping[str, np.ndarray],
    optim_state: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
) -> dict[str, np.ndarray]:
    """The arrays of ``checkpoint.npz``: ``model/...``, ``optim/...`` and ``meta``."""
    arrays = {f"model/{k}": v for k, v in model_state.items()}
    arrays.update({f"optim/{k}": v for k, v in optim_state.items()})
    arrays["meta"] = json_array(dict(meta))
    return arrays


def load_checkpoint(
    folder: str | os.PathLike[str],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """Read ``checkpoint.npz``: (model state, optimizer state, meta)."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.exists():
        raise InputError(f"{path}: no checkpoint to resume from in {folder}.")
    arrays = load_npz(path, required=("meta",))
    meta = from_json_array(arrays.pop("meta"), f"{path}: meta")
    if not isinstance(meta, dict) or "step" not in meta or "config" not in meta:
        raise InputError(f"{path}: meta lacks 'step' or 'config'; the checkpoint is damaged.")
    _check_meta(meta, path)
    model = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    optim = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    return model, optim, meta


#: What ``meta`` holds besides ``config`` (a JSON object), and which values each may take.
_META_FIELDS = {"step": "an integer >= 0", "loss_sum": "a number",
                "loss_count": "an integer >= 0", "elapsed": "a number >= 0"}


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    """One line naming the first field of a damaged ``meta`` (resume trusts them)."""
    for key, want in _META_FIELDS.items():
        value = meta.get(key)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = number and (key == "loss_sum" or value >= 0) and (
            isinstance(value, int) if "integer" in want else math.isfinite(value))
        if not ok:
            raise InputError(f"{path}: meta {key!r}: expected {want}, got {value!r}; the "
                             "checkpoint is damaged.")
    if not isinstance(meta["config"], dict):
        raise InputError(f"{path}: meta 'config': expected a JSON object, got "
                         f"{type(meta['config']).__name__}; the checkpoint is damaged.")


def metrics_text(rows: list[dict[str, Any]]) -> str:
    """The content of ``metrics.jsonl``: one JSON object a line."""
    return "".join(json.dumps(r) + "\n" for r in rows)


def read_metrics(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl`` (an empty list when absent)."""
    path = Path(folder) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {n} is not JSON ({exc.msg}).") from None
        step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise InputError(f"{path}: line {n}: expected a JSON object with an integer "
                             f"'step' >= 0, got {line.strip()[:60]!r}.")
        rows.append(row)
    return rows
