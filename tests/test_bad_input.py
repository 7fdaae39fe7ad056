"""Hostile inputs answered in one line: huge finite values in `bnprop grad`, outputs that
are the input or a folder, empty --hidden fields, --batch-size, --lr 1e300, FIFOs, zips
with pickles, unknown datasets in a model, and `data path --data-dir`."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bnprop.cli import main
from bnprop.grad import z_limit
from tests.conftest import random_layer


def _err(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def _layer(path: Path, dtype: type = np.float64, o: float = 1.0, w: float = 1.0,
           **override: np.ndarray) -> dict[str, np.ndarray]:
    O, W, gamma, beta, dY = random_layer(np.random.default_rng(0), 8, 5, 4, np.float64)
    arrays = {"O": (O * o).astype(dtype), "W": (W * w).astype(dtype),
              "gamma": gamma.astype(dtype), "beta": beta.astype(dtype),
              "dY": dY.astype(dtype), **override}
    np.savez(path, **arrays)
    return arrays


# ---- bnprop grad on huge but finite values ---------------------------------------------------

@pytest.mark.parametrize(("dtype", "o", "w", "name"), [
    (np.float64, 1e300, 1.0, "O"), (np.float64, 1.0, 1e200, "W"),
    (np.float32, 1e30, 1.0, "O")])
def test_grad_refuses_values_whose_variance_overflows(
        tmp_path: Path, capsys: pytest.CaptureFixture, dtype: type, o: float, w: float,
        name: str) -> None:
    _layer(tmp_path / "in.npz", dtype, o, w)
    out = tmp_path / "out.npz"
    err = _err(["grad", str(tmp_path / "in.npz"), "-o", str(out)], capsys)
    assert f"in.npz: {name}: max|{name}| = " in err
    assert f"is too large for {np.dtype(dtype)}" in err
    assert f"the largest max|{name}| supported with this" in err
    assert not out.exists()
    assert _err(["grad", str(tmp_path / "in.npz")], capsys) == err  # nor printed


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_range_limit_is_the_stated_one(tmp_path: Path, capsys: pytest.CaptureFixture,
                                            dtype: type) -> None:
    """Just below the limit every output is finite; just above it is refused."""
    arrays = _layer(tmp_path / "probe.npz", dtype)
    O64, W64 = arrays["O"].astype(np.float64), arrays["W"].astype(np.float64)
    z_max = float(np.abs(O64 @ W64.T).max())
    limit = z_limit(8, np.dtype(dtype))
    _layer(tmp_path / "below.npz", dtype, o=0.9 * limit / z_max)
    assert main(["grad", str(tmp_path / "below.npz"), "-o", str(tmp_path / "g.npz")]) == 0
    with np.load(tmp_path / "g.npz") as g:
        for key in g.files:
            assert np.isfinite(g[key]).all(), key
        assert float(g["var"].max()) > 0.01 * limit**2  # truly near the range's end
    capsys.readouterr()
    _layer(tmp_path / "above.npz", dtype, o=1.2 * limit / z_max)
    assert "is too large for" in _err(["grad", str(tmp_path / "above.npz")], capsys)


def test_grad_range_follows_the_dtype_the_layer_computes_in(tmp_path: Path) -> None:
    """float32 O and W with a float64 gamma: the layer computes in float64, so values
    beyond float32's limit are accepted (they were refused as "too large for float32")."""
    arrays = _layer(tmp_path / "probe.npz", np.float32)
    z_max = float(np.abs(arrays["O"].astype(float) @ arrays["W"].astype(float).T).max())
    o = 10 * z_limit(8, np.dtype(np.float32)) / z_max  # 10x beyond float32's limit
    _layer(tmp_path / "mixed.npz", np.float32, o=o, gamma=arrays["gamma"].astype(np.float64))
    assert main(["grad", str(tmp_path / "mixed.npz"), "-o", str(tmp_path / "g.npz")]) == 0
    with np.load(tmp_path / "g.npz") as g:
        assert g["var"].dtype == np.float64 and all(np.isfinite(g[k]).all() for k in g.files)


@pytest.mark.filterwarnings("error")
def test_grad_refuses_a_non_finite_result_naming_it(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    _layer(tmp_path / "in.npz", dY=np.full((8, 4), 1e308))
    err = _err(["grad", str(tmp_path / "in.npz"), "--activation", "identity", "-o",
                str(tmp_path / "out.npz")], capsys)
    assert "in.npz: dgamma: the result overflows float64" in err or \
        "in.npz: dbeta: the result overflows float64" in err
    assert "nothing was written" in err
    assert not (tmp_path / "out.npz").exists()


# ---- grad -o: never the input, never a folder ------------------------------------------------

def test_grad_output_may_not_be_the_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _layer(tmp_path / "in.npz")
    before = (tmp_path / "in.npz").read_bytes()
    (tmp_path / "sub").mkdir()
    os.link(tmp_path / "in.npz", tmp_path / "hard.npz")
    for same in (tmp_path / "in.npz", tmp_path / "sub" / ".." / "in.npz", tmp_path / "hard.npz"):
        err = _err(["grad", str(tmp_path / "in.npz"), "-o", str(same)], capsys)
        assert f"{same}: is the input file" in err
    assert (tmp_path / "in.npz").read_bytes() == before


def test_grad_output_onto_a_folder_names_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _layer(tmp_path / "in.npz")
    (tmp_path / "out").mkdir()
    err = _err(["grad", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out")], capsys)
    assert f"{tmp_path / 'out'}: is a folder" in err and ".tmp" not in err


def test_atomic_writer_refuses_a_folder_naming_it(tmp_path: Path) -> None:
    from bnprop._validate import InputError
    from bnprop.files import write_text

    with pytest.raises(InputError, match=r"out: is a folder; expected the name of a file"):
        (tmp_path / "out").mkdir()
        write_text(tmp_path / "out", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ---- bnprop train options ---------------------------------------------------------------------

@pytest.mark.parametrize("hidden", ["100,,100", "50,", ",50", " , "])
def test_hidden_refuses_empty_fields(data_root: tuple, tmp_path: Path,
                                     capsys: pytest.CaptureFixture, hidden: str) -> None:
    err = _err(["train", "--hidden", hidden, "--out", str(tmp_path / "r"), "--quiet"], capsys)
    assert f"hidden: expected comma-separated widths like 100,100,100, got {hidden!r} " \
           "instead (an empty field)." in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("size", ["0", "1", "-3"])
def test_batch_size_says_two(data_root: tuple, tmp_path: Path, capsys: pytest.CaptureFixture,
                             size: str) -> None:
    err = _err(["train", "--batch-size", size, "--out", str(tmp_path / "r"), "--quiet"], capsys)
    assert f"batch_size: expected at least 2, got {size} instead" in err


def test_huge_lr_is_one_line_and_says_nothing_was_saved(data_root: tuple, tmp_path: Path) -> None:
    root, _ = data_root
    code = ("import sys, json; from bnprop.data import datasets; "
            f"datasets.SHA256['mnist'] = json.loads({json.dumps(json.dumps(data_root[1]))}); "
            "from bnprop.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", code, "train", "--lr", "1e300", "--quiet",
         "--hidden", "8", "--batch-size", "20", "--steps", "30", "--out", str(tmp_path / "r")],
        env={**os.environ, "BNPROP_DATA": str(root)}, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr  # no RuntimeWarning
    assert "training diverged at step" in result.stderr
    assert "no checkpoint was saved before it (the first is at step 5000)" in result.stderr
    assert "is kept" not in result.stderr
    assert result.stderr.rstrip().endswith("Try a smaller --lr (now 1e+300).")


def test_a_divergence_with_weight_decay_names_both_knobs(data_root: tuple,
                                                         tmp_path: Path) -> None:
    from bnprop._validate import InputError
    from bnprop.train import TrainConfig, train

    config = TrainConfig(hidden=(8,), batch_size=20, steps=30, weight_decay=1e308)
    with pytest.raises(InputError, match=r"Try a smaller --lr \(now 0\.003\) or "
                                         r"--weight-decay \(now 1e\+308\)\.$"), \
            np.errstate(all="ignore"):
        train(config, tmp_path / "r", progress=False)


def test_divergence_after_a_checkpoint_names_its_step(data_root: tuple, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from bnprop._validate import InputError
    from bnprop.model import MLP
    from bnprop.train import TrainConfig, train

    real, calls = MLP.train_step, {"n": 0}

    def flaky(self: MLP, *args: object, **kwargs: object) -> float:
        calls["n"] += 1
        loss = real(self, *args, **kwargs)
        return float("nan") if calls["n"] == 15 else loss

    monkeypatch.setattr(MLP, "train_step", flaky)
    config = TrainConfig(hidden=(8,), batch_size=20, steps=30, checkpoint_every=10)
    with pytest.raises(InputError, match=r"the checkpoint of step 10 in .* is kept"):
        train(config, tmp_path / "r", progress=False)


# ---- bnprop evaluate ---------------------------------------------------------------------------

def test_evaluate_refuses_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "model.npz")
    result = subprocess.run([sys.executable, "-m", "bnprop", "evaluate", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == (f"bnprop evaluate: error: {tmp_path / 'model.npz'}: is not a "
                             "regular file (a FIFO, socket or device), expected an .npz file.\n")


@pytest.mark.parametrize(("member", "key"), [("evil.pkl", "evil.pkl"), ("W0.npy", "W0")])
def test_evaluate_on_a_zip_with_a_pickle_names_file_and_key(
        tmp_path: Path, capsys: pytest.CaptureFixture, member: str, key: str) -> None:
    with zipfile.ZipFile(tmp_path / "model.npz", "w") as z:
        z.writestr(member, pickle.dumps({"x": 1}))
    err = _err(["evaluate", str(tmp_path)], capsys)
    assert f"{tmp_path / 'model.npz'}: key {key} is not a NumPy array" in err
    assert "never unpickles" in err


def test_evaluate_unknown_dataset_names_file_and_key(data_root: tuple, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    from bnprop.files import save_npz
    from bnprop.train import TrainConfig, train

    out = tmp_path / "run"
    train(TrainConfig(hidden=(8,), batch_size=20, steps=5), out, progress=False)
    with np.load(out / "model.npz", allow_pickle=False) as f:
        state = {k: f[k] for k in f.files}
    config = json.loads(str(state["train_config"][()]))
    state["train_config"] = np.array(json.dumps({**config, "dataset": "cifar-10"}))
    save_npz(out / "model.npz", state)
    err = _err(["evaluate", str(out)], capsys)
    assert f"{out / 'model.npz'}: key train_config: names the dataset 'cifar-10'" in err
    assert main(["evaluate", str(out), "--dataset", "mnist"]) == 0  # the way out works


# ---- bnprop data path ---------------------------------------------------------------------------

def test_data_path_suggests_fetch_with_the_same_data_dir(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "my data"
    assert main(["data", "path", "--data-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"bnprop data fetch --dataset mnist --data-dir '{folder}'" in out


def test_data_path_says_which_file_is_damaged(data_root: tuple,
                                              capsys: pytest.CaptureFixture) -> None:
    """A file that is there but fails its SHA-256 is named as damaged, not "not
    provisioned" (which would send the user to fetch what is already there)."""
    root, _ = data_root
    victim = sorted((root / "mnist").iterdir())[0]
    data = victim.read_bytes()
    victim.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # the last byte flipped
    assert main(["data", "path"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("mnist:"))
    assert line.startswith(f"mnist: damaged: {victim}: SHA-256 mismatch: expected ")


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--steps", "1.5"], "bnprop train: error: argument --steps: invalid int value: "
                                  "'1.5' (see bnprop train --help)."),
    (["train", "--lr", "fast"], "bnprop train: error: argument --lr: expected a number, got 'fast'"),
    (["trian"], "bnprop: error: argument COMMAND: invalid choice: 'trian'"),
    (["reproduce", "fig1", "--steps", "x"], "bnprop reproduce fig1: error: argument --steps: "),
    ([], "bnprop: error: the following arguments are required: COMMAND (see bnprop --help)."),
])
def test_an_argument_error_is_one_line(capsys: pytest.CaptureFixture, argv: list[str],
                                       message: str) -> None:
    """argparse prints its usage block before the error; bnprop prints the error alone."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(message), err
