"""``bnprop grad``: files in, every gradient out; bad files get one line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import warnings
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


# ---- -o onto something that is not a regular file: refused, left as it was ----------------


def test_output_onto_a_fifo_is_refused_and_left_a_fifo(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    _write_input(tmp_path / "in.npz")
    fifo = tmp_path / "out.npz"
    os.mkfifo(fifo)
    err = _err(["grad", str(tmp_path / "in.npz"), "-o", str(fifo)], capsys)
    assert err == (f"bnprop grad: error: {fifo}: is a FIFO (named pipe), not a regular file; "
                   "refusing to replace it. Give the path of a regular file (or a new name) "
                   "to write.\n")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "out.npz"]  # no temporaries


def test_output_onto_a_symlink_is_refused_and_left_a_symlink(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_input(tmp_path / "in.npz")
    (tmp_path / "target.npz").write_bytes(b"previous")
    link = tmp_path / "out.npz"
    link.symlink_to("target.npz")
    err = _err(["grad", str(tmp_path / "in.npz"), "-o", str(link)], capsys)
    assert err == (f"bnprop grad: error: {link}: is a symbolic link (to target.npz), not a "
                   "regular file; writing would replace the link itself, not follow it. Give "
                   "the path of a regular file (or a new name) to write.\n")
    assert link.is_symlink() and os.readlink(link) == "target.npz"
    assert (tmp_path / "target.npz").read_bytes() == b"previous"
    # A dangling link and a link to a folder are refused the same way.
    for dest in ("nowhere.npz", str(tmp_path)):
        link.unlink()
        link.symlink_to(dest)
        assert "is a symbolic link" in _err(["grad", str(tmp_path / "in.npz"), "-o", str(link)],
                                            capsys)
        assert link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "out.npz", "target.npz"]


def test_output_onto_a_device_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A character device (``-o /dev/null`` as root replaced /dev/null): simulated by
    ``lstat`` reporting one for a regular file, which must stay untouched."""
    import bnprop._atomic

    _write_input(tmp_path / "in.npz")
    dev = tmp_path / "null"
    dev.write_bytes(b"previous")
    real_lstat = os.lstat

    def fake_lstat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        result = real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]
        if Path(path) != dev:  # type: ignore[arg-type]
            return result
        return os.stat_result((stat.S_IFCHR | 0o666, *tuple(result)[1:]))

    monkeypatch.setattr(bnprop._atomic.os, "lstat", fake_lstat)
    err = _err(["grad", str(tmp_path / "in.npz"), "-o", str(dev)], capsys)
    assert f"{dev}: is a character device, not a regular file; refusing to replace it." in err
    assert dev.read_bytes() == b"previous"


def test_every_atomic_writer_refuses_a_fifo(tmp_path: Path) -> None:
    """The check sits in bnprop._atomic, which every file bnprop writes goes through."""
    from bnprop._atomic import atomic_files
    from bnprop.files import save_npz, write_json, write_text

    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    for write in (lambda: write_text(fifo, "x"), lambda: write_json(fifo, {}),
                  lambda: save_npz(fifo, {"a": np.zeros(1)})):
        with pytest.raises(bnprop.InputError, match=r"f: is a FIFO \(named pipe\), not a regular"):
            write()
    # All or nothing: a FIFO among several files stages none of them.
    (tmp_path / "a").write_bytes(b"old")
    with pytest.raises(bnprop.InputError, match="is a FIFO"), atomic_files() as stage:
        with stage(tmp_path / "a") as f:
            f.write(b"new")
        with stage(fifo) as f:
            f.write(b"new")
    assert (tmp_path / "a").read_bytes() == b"old"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "f"]


def test_a_fifo_appearing_while_writing_is_refused(tmp_path: Path) -> None:
    """The target is checked again just before the rename."""
    from bnprop._atomic import atomic_writer

    target = tmp_path / "out"
    with pytest.raises(bnprop.InputError, match="is a FIFO"), atomic_writer(target) as f:
        f.write(b"new")
        os.mkfifo(target)
    assert stat.S_ISFIFO(os.lstat(target).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ---- O or W that is not real numbers: the Python API's one line, no warning ---------------


NON_NUMERIC = {
    "str": lambda shape: np.full(shape, "a"),
    "bytes": lambda shape: np.full(shape, b"a"),
    "datetime64": lambda shape: np.zeros(shape, dtype="datetime64[s]"),
    "structured": lambda shape: np.zeros(shape, dtype=[("a", "f8"), ("b", "i4")]),
    "complex": lambda shape: np.ones(shape, dtype=np.complex128) + 1j,
}


@pytest.mark.parametrize("key", ["O", "W"])
@pytest.mark.parametrize("kind", list(NON_NUMERIC))
def test_non_numeric_O_or_W_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                        key: str, kind: str) -> None:
    arrays = _write_input(tmp_path / "in.npz")
    bad = NON_NUMERIC[kind](arrays[key].shape)
    _write_input(tmp_path / "in.npz", **{key: bad})
    with pytest.raises(bnprop.InputError) as api:  # what the Python API says
        bnprop.layer_forward(*(bad if k == key else arrays[k] for k in ("O", "W", "gamma", "beta")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ComplexWarning (or any other) fails the test
        err = _err(["grad", str(tmp_path / "in.npz")], capsys)
    assert err == f"bnprop grad: error: {tmp_path / 'in.npz'}: {api.value}\n"
    assert f"{key}: expected a real numeric array, got dtype {bad.dtype} instead." in err
    assert "Traceback" not in err and "Warning" not in err


def test_non_numeric_O_in_a_fresh_process(tmp_path: Path) -> None:
    """The console script itself: exit 2, one line on stderr, no traceback, no warning."""
    arrays = _write_input(tmp_path / "in.npz")
    _write_input(tmp_path / "in.npz", O=np.array([["a", "b", "c"]] * len(arrays["O"])))
    result = subprocess.run([sys.executable, "-W", "error", "-m", "bnprop", "grad",
                             str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (f"bnprop grad: error: {tmp_path / 'in.npz'}: O: expected a real "
                             "numeric array, got dtype <U1 instead.\n")
    assert not (tmp_path / "out.npz").exists()
