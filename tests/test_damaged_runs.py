"""Run folders damaged between runs: each is one line naming the file, before any step,
and nothing of the user's is removed first."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bnprop import checkpoint as ckpt
from bnprop._validate import InputError
from bnprop.train import TrainConfig, train

SMALL = {"hidden": (16,), "batch_size": 20, "optimizer": "sgd", "lr": 0.5, "eval_every": 10,
         "checkpoint_every": 10}


def _run(data_root: tuple, tmp_path: Path) -> Path:
    """A finished 10-step run whose checkpoint a 20-step resume continues."""
    out = tmp_path / "run"
    train(TrainConfig(**SMALL, steps=10), out, progress=False)
    return out


def _rewrite_meta(out: Path, **change: object) -> None:
    path = out / ckpt.CHECKPOINT_FILE
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    for key, value in change.items():
        if key.startswith("config."):
            meta["config"][key[len("config."):]] = value
        elif value is KeyError:
            del meta[key]
        else:
            meta[key] = value
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


def _resume(out: Path) -> None:
    train(TrainConfig(**SMALL, steps=20), out, progress=False, resume=True,
          given={"steps": 20})


@pytest.mark.parametrize(("change", "match"), [
    ({"step": "abc"}, r"meta 'step': expected an integer >= 0, got 'abc'"),
    ({"step": None}, r"meta 'step': expected an integer >= 0, got None"),
    ({"step": -5}, r"meta 'step': expected an integer >= 0, got -5"),
    ({"loss_sum": KeyError}, r"meta 'loss_sum': expected a number, got None"),
    ({"loss_count": 1.5}, r"meta 'loss_count': expected an integer >= 0, got 1\.5"),
    ({"elapsed": "x"}, r"meta 'elapsed': expected a number >= 0, got 'x'"),
    ({"config": [1]}, r"meta 'config': expected a JSON object, got list"),
    ({"config.hidden": 5}, r"meta 'config': 'int' object is not iterable"),
    ({"config.lr": "x"}, r"meta 'config': .*"),
    ({"config.seed": "zero"}, r"meta 'config': seed: expected an integer >= 0"),
    ({"config.dtype": "float64"}, r"its config \(dtype float64, hidden \[16\]\) does not "
                                  r"describe its model \(dtype float32"),
    ({"config.hidden": [50, 50]}, r"its config \(dtype float32, hidden \[50, 50\]\) does not"),
])
def test_a_damaged_checkpoint_meta_is_one_line(data_root: tuple, tmp_path: Path,
                                               change: dict, match: str) -> None:
    out = _run(data_root, tmp_path)
    _rewrite_meta(out, **change)
    before = (out / ckpt.MODEL_FILE).read_bytes()
    with pytest.raises(InputError, match=rf"^{out / ckpt.CHECKPOINT_FILE}: {match}") as info:
        _resume(out)
    assert "\n" not in str(info.value) and "damaged" in str(info.value)
    assert (out / ckpt.MODEL_FILE).read_bytes() == before


@pytest.mark.parametrize("line", ["5", '{"x": 1}', '{"step": "3"}', "[1, 2]", '{"step": -1}'])
def test_a_damaged_metrics_line_is_one_line(data_root: tuple, tmp_path: Path,
                                            line: str) -> None:
    out = _run(data_root, tmp_path)
    (out / ckpt.METRICS_FILE).write_text(line + "\n")
    with pytest.raises(InputError, match=rf"^{out / ckpt.METRICS_FILE}: line 1: expected a "
                                         r"JSON object with an integer 'step' >= 0, got "):
        _resume(out)


@pytest.mark.parametrize("how", ["resume", "overwrite", "fresh"])
@pytest.mark.parametrize("name", [ckpt.MODEL_FILE, ckpt.SUMMARY_FILE])
def test_a_run_file_that_is_a_folder_is_refused_before_training(
        data_root: tuple, tmp_path: Path, how: str, name: str) -> None:
    """Found at the claim, not at the first save after the training; --overwrite removes
    nothing first."""
    out = _run(data_root, tmp_path)
    (out / name).unlink()
    (out / name / "x").mkdir(parents=True)
    kept = sorted(p.name for p in out.iterdir())
    with pytest.raises(InputError, match=rf"^{out / name}: is a folder; expected the name of "
                                         r"a file to write\.$"):
        if how == "resume":
            _resume(out)
        else:
            train(TrainConfig(**SMALL, steps=10), out, progress=False,
                  overwrite=how == "overwrite")
    assert sorted(p.name for p in out.iterdir()) == kept
    assert (out / ckpt.CHECKPOINT_FILE).exists()


def test_a_fifo_in_place_of_a_run_file_is_refused(data_root: tuple, tmp_path: Path) -> None:
    out = _run(data_root, tmp_path)
    (out / ckpt.SUMMARY_FILE).unlink()
    os.mkfifo(out / ckpt.SUMMARY_FILE)
    with pytest.raises(InputError, match=r"summary\.json: is a FIFO \(named pipe\), not a "
                                         r"regular file"):
        _resume(out)
