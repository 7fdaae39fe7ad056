"""Run folders that never lose work: the lock, fresh-run refusals, writability, stale
temporary files, saves that are all-or-nothing on a full disk, refused runs leave nothing."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from bnprop import checkpoint as ckpt
from bnprop._validate import InputError
from bnprop.cli import main
from bnprop.runfolder import LOCK_FILE, RunFolder
from bnprop.train import TrainConfig, train
from tests.fake_mnist import cli_command, fake_env

SMALL = {"hidden": (16,), "batch_size": 20, "optimizer": "sgd", "lr": 0.5, "eval_every": 10,
         "checkpoint_every": 10}
RUN = ["train", "--hidden", "8", "--batch-size", "20", "--eval-every", "10", "--quiet"]


def _config(**kw: object) -> TrainConfig:
    return TrainConfig(**{**SMALL, **kw})


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# ---- the lock ------------------------------------------------------------------------------

def test_a_second_claim_is_refused_naming_the_folder_and_pid(tmp_path: Path) -> None:
    first = RunFolder(tmp_path / "run").claim()
    try:
        with pytest.raises(InputError, match=rf"run: in use by another bnprop run \(PID "
                                             rf"{os.getpid()}\)"):
            RunFolder(tmp_path / "run").claim()
    finally:
        first.release()
    assert not (tmp_path / "run").exists()  # created by the claim, empty: removed
    RunFolder(tmp_path / "run").claim().release()  # free again


def test_two_processes_into_one_folder(data_root: tuple, tmp_path: Path) -> None:
    """A second `bnprop train` into a folder a live run holds is refused with its PID; a
    `kill -9` of the holder releases the lock (the OS does)."""
    root, digests = data_root
    out = tmp_path / "run"
    args = [*RUN, "--steps", "1000000", "--checkpoint-every", "10", "--out", str(out)]
    holder = subprocess.Popen(cli_command(args, digests), env=fake_env(root),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoint.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / "checkpoint.npz").exists()
        second = subprocess.run(cli_command([*RUN, "--steps", "5", "--out", str(out),
                                             "--overwrite"], digests),
                                env=fake_env(root), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1
        assert f"{out}: in use by another bnprop run (PID {holder.pid})" in second.stderr
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert (out / LOCK_FILE).exists()  # kill -9: nobody removed the file, but the OS lock is gone
    third = subprocess.run(cli_command([*RUN, "--steps", "5", "--out", str(out),
                                        "--overwrite"], digests),
                           env=fake_env(root), capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == 5
    assert not (out / LOCK_FILE).exists()


# ---- a fresh run never replaces another run's files ----------------------------------------

@pytest.mark.parametrize("name", ["model.npz", "summary.json", "metrics.jsonl",
                                  "checkpoint.npz"])
def test_fresh_run_refuses_any_run_file(data_root: tuple, tmp_path: Path, name: str,
                                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text("another run's file")
    assert main([*RUN, "--steps", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{out}: already holds a run ({name}); pass --resume" in err and "--overwrite" in err
    assert (out / name).read_text() == "another run's file"
    assert sorted(p.name for p in out.iterdir()) == [name]  # no lock file left either


def test_overwrite_replaces_the_old_run(data_root: tuple, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_config(steps=20), out, progress=False)
    (out / "summary.json").write_text("{}")
    train(_config(steps=10), out, progress=False, overwrite=True)
    assert json.loads((out / "summary.json").read_text())["steps"] == 10
    assert ckpt.load_checkpoint(out)[2]["step"] == 10
    assert [r["step"] for r in ckpt.read_metrics(out)] == [10]
    with pytest.raises(InputError, match="give --resume or --overwrite, not both"):
        train(_config(steps=10), out, progress=False, overwrite=True, resume=True)


# ---- writable before the first step ----------------------------------------------------------

def test_unwritable_folder_is_refused_before_the_first_step(
        data_root: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """As root every folder is writable, so there the refusal is simulated where the folder
    is first written (the lock file)."""
    from bnprop.model import MLP

    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() == 0:
        real_open = os.open

        def denied(path: object, *args: object, **kwargs: object) -> int:
            if str(path).startswith(str(out)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", denied)
    else:
        out.chmod(0o555)
    steps = []
    monkeypatch.setattr(MLP, "train_step", lambda *a, **k: steps.append(1) or 0.0)
    assert main([*RUN, "--steps", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"bnprop train: error: {out}: the run folder is not writable " \
                  "(Permission denied).\n"
    assert steps == []


def test_write_probe_names_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    def full(*args: object, dir: str = "", **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, "No space left on device", f"{dir}/.bnprop-write-check.x.tmp")

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(InputError) as info:
        RunFolder(tmp_path / "run").claim()
    assert str(info.value) == (f"{tmp_path / 'run'}: the run folder is not writable "
                               "(No space left on device).")
    assert not (tmp_path / "run").exists()


# ---- stale temporary files ------------------------------------------------------------------

def test_stale_temporary_files_are_removed_at_start_and_resume(data_root: tuple,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    stale = [".model.npz.k1ll3d.tmp", ".checkpoint.npz.abc.tmp", ".metrics.jsonl.x.tmp",
             ".summary.json.y.tmp", ".bnprop-write-check.z.tmp"]
    keep = [".notes.tmp", "mine.tmp"]
    for name in stale + keep:
        (out / name).write_bytes(b"partial")
    train(_config(steps=10), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*keep, "checkpoint.npz", "metrics.jsonl", "model.npz", "summary.json"])
    for name in stale:
        (out / name).write_bytes(b"partial")
    train(_config(steps=20), out, progress=False, resume=True, given={"steps": 20})
    assert not [p for p in out.iterdir() if p.name in stale]


# ---- refused runs leave no folder -----------------------------------------------------------

def test_network_too_large_is_refused_with_the_estimate(data_root: tuple, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "new" / "run"
    assert main([*RUN, "--hidden", "100000000", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "hidden: the network 784-100000000-10 needs about" in err and "GB" in err
    assert not (tmp_path / "new").exists()


def test_memory_estimate() -> None:
    from bnprop.footprint import check_memory, training_bytes

    sizes = (784, 100, 10)
    params = 784 * 100 + 4 * 100 + 100 * 10 + 4 * 10
    assert training_bytes(sizes, 60, 4, 2) == 4 * (params * 5 + 60 * 894 * 6)
    assert check_memory(sizes, 60, 4, 2, available=10**9) == training_bytes(sizes, 60, 4, 2)
    with pytest.raises(InputError, match=r"needs about 2\.9 MB .* more than the 1\.0 MB"):
        check_memory(sizes, 60, 4, 2, available=10**6)


def test_missing_data_leaves_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "a" / "b"
    assert main(["train", "--data-dir", str(tmp_path / "none"), "--quiet",
                 "--out", str(out)]) == 2
    assert not (tmp_path / "a").exists()


# ---- a full disk: every save is all or nothing, and names the file --------------------------

@pytest.mark.parametrize("failing", ["model.npz", "metrics.jsonl", "summary.json",
                                     "checkpoint.npz"])
def test_disk_full_leaves_model_checkpoint_and_summary_consistent(
        data_root: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture, failing: str) -> None:
    """The last save (step 30) fails when ``failing`` is written; the step-20 set stays."""
    out = tmp_path / "run"
    train(_config(steps=20), out, progress=False)  # a finished run: summary of step 20
    real_fsync, seen = os.fsync, {"n": 0}

    def fsync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{failing}."):
            seen["n"] += 1
            if seen["n"] == (1 if failing == "summary.json" else 2):  # in the last save
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(["train", "--out", str(out), "--resume", "--steps", "40", "--quiet"]) == 2
    assert capsys.readouterr().err == (f"bnprop train: error: {out / failing}: No space left "
                                       "on device\n")
    model, meta = _npz(out / "model.npz"), ckpt.load_checkpoint(out)
    assert meta[2]["step"] == 30  # the checkpoint of step 30 was the save before
    for k, v in meta[0].items():  # model.npz is the checkpoint's model
        np.testing.assert_array_equal(model[k], v, err_msg=k)
    assert json.loads(str(model["train_config"][()]))["steps"] == 40
    assert json.loads((out / "summary.json").read_text())["steps"] == 20  # the run's last end
    assert ckpt.read_metrics(out)[-1]["step"] == 30
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_grad_output_disk_full_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    np.savez(tmp_path / "in.npz", O=[[1.0], [3.0]], W=[[1.0]], gamma=[1.0], beta=[0.0],
             dY=[[1.0], [0.0]])

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert main(["grad", str(tmp_path / "in.npz"), "-o", str(tmp_path / "g.npz")]) == 2
    assert capsys.readouterr().err == (f"bnprop grad: error: {tmp_path / 'g.npz'}: No space "
                                       "left on device\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]
