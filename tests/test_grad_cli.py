"""``bnprop grad``: files in, every gradient out; bad files get one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bnprop
from bnprop.cli import main
from bnprop.grad import OUTPUT_KEYS
from tests.conftest import random_layer


def _write_input(path: Path, dtype: type = np.float64, **override: object) -> dict:
    O, W, gamma, beta, dY = random_layer(np.random.default_rng(0), 5, 3, 2, dtype)
    arrays = {"O": O, "W": W, "gamma": gamma, "beta": beta, "dY": dY, **override}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stats", ["exact", "frozen"])
def test_writes_every_key_in_the_input_dtype(tmp_path: Path, dtype: type, stats: str) -> None:
    arrays = _write_input(tmp_path / "in.npz", dtype)
    out_path = tmp_path / "out.npz"
    assert main(["grad", str(tmp_path / "in.npz"), "-o", str(out_path), "--stats", stats,
                 "--activation", "tanh", "--eps", "1e-3"]) == 0
    with np.load(out_path, allow_pickle=False) as out:
        assert list(out.files) == list(OUTPUT_KEYS)
        cache = bnprop.layer_forward(arrays["O"], arrays["W"], arrays["gamma"], arrays["beta"],
                                     activation="tanh", eps=1e-3)
        grads = bnprop.layer_backward(arrays["dY"], cache, stats=stats)
        for key in OUTPUT_KEYS:
            assert out[key].dtype == dtype, key
            expected = getattr(cache, key) if hasattr(cache, key) else getattr(grads, key)
            np.testing.assert_array_equal(out[key], expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "out.npz"]  # no temporaries


def test_summary_without_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    np.savez(tmp_path / "hand.npz", O=[[1.0], [3.0]], W=[[1.0]], gamma=[1.0], beta=[0.0],
             dY=[[1.0], [0.0]])
    assert main(["grad", str(tmp_path / "hand.npz"), "--activation", "identity"]) == 0
    out = capsys.readouterr().out
    for key in OUTPUT_KEYS:
        assert f"\n{key} (" in out
    assert "mu (1,):\n    [2.]" in out
    assert "var (1,):\n    [1.]" in out
    assert "stats=exact" in out


def test_hand_computation_of_the_readme(tmp_path: Path) -> None:
    """The README's example: two examples, one feature, identity activation."""
    np.savez(tmp_path / "hand.npz", O=[[1.0], [3.0]], W=[[1.0]], gamma=[1.0], beta=[0.0],
             dY=[[1.0], [0.0]])
    for stats in ("exact", "frozen"):
        assert main(["grad", str(tmp_path / "hand.npz"), "-o", str(tmp_path / f"{stats}.npz"),
                     "--activation", "identity", "--stats", stats]) == 0
    inv_std = 1 / np.sqrt(1 + 1e-5)
    with np.load(tmp_path / "frozen.npz") as f, np.load(tmp_path / "exact.npz") as e:
        np.testing.assert_allclose(f["Obar"][:, 0], [-inv_std, inv_std], rtol=1e-15)
        np.testing.assert_allclose(f["dgamma"], [-inv_std], rtol=1e-15)
        np.testing.assert_allclose(f["dbeta"], [1.0])
        np.testing.assert_allclose(f["dW"], [[inv_std]], rtol=1e-15)  # 1 * 1 + 0 * 3
        # Exact: dZ = inv_std * (G - mean(G) - Obar * mean(G * Obar)); with m = 2 only eps remains.
        dZ = inv_std * (np.array([1.0, 0.0]) - 0.5 - np.array([-inv_std, inv_std]) * (-inv_std / 2))
        np.testing.assert_allclose(e["dW"], [[dZ @ [1.0, 3.0]]], rtol=1e-9)
        assert abs(e["dW"][0, 0]) < 2e-5


def _err(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    return captured.err


def test_missing_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_input(tmp_path / "in.npz", dY=None)
    err = _err(["grad", str(tmp_path / "in.npz")], capsys)
    assert "in.npz: missing key(s) dY; the file holds O, W, gamma, beta" in err


def test_unexpected_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_input(tmp_path / "in.npz", dy=np.zeros(2))
    err = _err(["grad", str(tmp_path / "in.npz")], capsys)
    assert "unexpected key(s) dy; expected only O, W, gamma, beta, dY" in err


def test_wrong_shape_names_file_and_array(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_input(tmp_path / "in.npz", gamma=np.ones(3))
    err = _err(["grad", str(tmp_path / "in.npz")], capsys)
    assert "in.npz: gamma: expected shape (2,) with n_out = 2, got shape (3,) instead." in err


def test_nan_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    arrays = _write_input(tmp_path / "in.npz")
    O = arrays["O"].copy()
    O[0, 0] = np.nan
    _write_input(tmp_path / "in.npz", O=O)
    assert "O: contains NaN or inf" in _err(["grad", str(tmp_path / "in.npz")], capsys)


def test_batch_of_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    arrays = _write_input(tmp_path / "in.npz")
    _write_input(tmp_path / "in.npz", O=arrays["O"][:1], dY=arrays["dY"][:1])
    assert "batch of 1 example" in _err(["grad", str(tmp_path / "in.npz")], capsys)


def test_object_array_is_never_unpickled(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    arrays = _write_input(tmp_path / "in.npz")
    np.savez(tmp_path / "in.npz", **{**arrays, "W": np.array([[1, "x"]], dtype=object)})
    err = _err(["grad", str(tmp_path / "in.npz")], capsys)
    assert "key W holds an object array" in err and "unpickling" in err


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "not a valid .npz file"), (b"PK\x03\x04garbage", "not a valid .npz file"),
     (b"hello world", "not a valid .npz file")],
)
def test_corrupt_file(tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes,
                      match: str) -> None:
    (tmp_path / "bad.npz").write_bytes(content)
    assert match in _err(["grad", str(tmp_path / "bad.npz")], capsys)


def test_unknown_format_gets_no_advice_to_unpickle(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    err = _err(["grad", str(tmp_path / "bad.npz")], capsys)
    assert "not a valid .npz file (not a NumPy archive; bnprop never unpickles)." in err
    assert "allow_pickle" not in err


def test_truncated_npz(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_input(tmp_path / "in.npz")
    data = (tmp_path / "in.npz").read_bytes()
    (tmp_path / "in.npz").write_bytes(data[: len(data) // 2])
    err = _err(["grad", str(tmp_path / "in.npz")], capsys)
    assert "in.npz" in err


def test_npy_instead_of_npz(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    np.save(tmp_path / "a.npy", np.zeros(3))
    assert "single .npy array, expected an .npz archive" in _err(
        ["grad", str(tmp_path / "a.npy")], capsys)


def test_missing_and_folder_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "no such file" in _err(["grad", str(tmp_path / "nope.npz")], capsys)
    assert "is a folder" in _err(["grad", str(tmp_path)], capsys)


def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A file the process may not read (as root every file is readable, so the refusal is
    simulated where the file is opened)."""
    _write_input(tmp_path / "in.npz")

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "in.npz"))

    monkeypatch.setattr(np, "load", denied)
    err = _err(["grad", str(tmp_path / "in.npz")], capsys)
    assert "in.npz: cannot be read (permission denied)." in err


def test_output_folder_missing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_input(tmp_path / "in.npz")
    err = _err(["grad", str(tmp_path / "in.npz"), "-o", str(tmp_path / "no" / "o.npz")], capsys)
    assert "does not exist" in err


def test_failed_write_leaves_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Atomic write: an error while writing keeps the old file and leaves no temporary."""
    _write_input(tmp_path / "in.npz")
    out = tmp_path / "out.npz"
    out.write_bytes(b"previous")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    assert main(["grad", str(tmp_path / "in.npz"), "-o", str(out)]) == 2
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "out.npz"]


def test_os_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError the run does not translate still prints one line: file, colon, reason."""
    import bnprop.grad

    def failing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError(2, "No such file or directory", "/proc/nope")

    monkeypatch.setattr(bnprop.grad, "run_grad", failing)
    err = _err(["grad", str(tmp_path / "in.npz")], capsys)
    assert err == "bnprop grad: error: /proc/nope: No such file or directory\n"


def test_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_input(tmp_path / "in.npz")
    for argv in (["--stats", "approx"], ["--activation", "softplus"], ["--eps", "-1"],
                 ["--eps", "nan"]):
        with pytest.raises(SystemExit) as info:
            main(["grad", str(tmp_path / "in.npz"), *argv])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "error: argument" in err


def test_console_script_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "bnprop", "grad", "--help"],
                            capture_output=True, text=True, check=True)
    assert "IN.npz" in result.stdout and "--stats" in result.stdout
