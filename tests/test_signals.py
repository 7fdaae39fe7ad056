"""Ctrl-C and SIGTERM: the run saves a checkpoint, says so, exits 130 or 143, and resuming
from that checkpoint gives the model of an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from bnprop import checkpoint as ckpt
from bnprop.interrupt import Interrupted, StopSignals
from tests.fake_mnist import cli_command, fake_env, run_cli

RUN = ["train", "--hidden", "8,8", "--batch-size", "20", "--eval-every", "10",
       "--optimizer", "adam"]


def _model(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "model.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k != "train_config"}


def _interrupt(out: Path, signum: int, root: Path, digests: dict) -> tuple[int, str]:
    """Start a long run, wait for its first progress line, send ``signum``."""
    proc = subprocess.Popen(cli_command([*RUN, "--steps", "1000000", "--out", str(out)],
                                        digests), env=fake_env(root),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        deadline = time.monotonic() + 60
        for line in proc.stderr:
            if line.startswith("train step") or time.monotonic() > deadline:
                break
        time.sleep(0.2)
        proc.send_signal(signum)
        rest = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, rest


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_resume_is_bit_identical(
        data_root: tuple, tmp_path: Path, signum: int, code: int) -> None:
    root, digests = data_root
    out = tmp_path / "run"
    returncode, stderr = _interrupt(out, signum, root, digests)
    assert returncode == code, stderr
    step = ckpt.load_checkpoint(out)[2]["step"]
    assert step >= 10  # the first progress line is printed at step 10
    name = signal.Signals(signum).name
    last = stderr.strip().splitlines()[-1]
    assert last == (f"bnprop train: {name} at step {step}: checkpoint saved in {out}; "
                    f"continue with: bnprop train --out {out} --resume")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted_at"] == step and summary["steps"] == step

    total = ["--steps", str(step + 15), "--quiet"]
    resumed = run_cli([*RUN, *total, "--out", str(out), "--resume"], root, digests)
    assert resumed.returncode == 0, resumed.stderr
    straight = run_cli([*RUN, *total, "--out", str(tmp_path / "straight")], root, digests)
    assert straight.returncode == 0, straight.stderr
    want = _model(tmp_path / "straight")
    got = _model(out)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_second_signal_does_not_wait() -> None:
    """The first SIGINT is only recorded; the second raises at once (exit 130)."""
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the shell started us with &
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT and stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(SystemExit) as info:
            os.kill(os.getpid(), signal.SIGTERM)
        assert info.value.code == 143
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_stop_signals_off_the_main_thread_do_nothing() -> None:
    import threading

    seen = []
    thread = threading.Thread(target=lambda: seen.append(StopSignals().enabled))
    thread.start()
    thread.join()
    assert seen == [False]


def test_interrupted_exit_codes() -> None:
    assert Interrupted("x", signal.SIGINT).exit_code == 130
    assert Interrupted("x", signal.SIGTERM).exit_code == 143


def test_a_run_ended_by_a_signal_in_process(data_root: tuple, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """train() itself: a signal at step 7 (between checkpoints) saves step 7."""
    from bnprop.model import MLP
    from bnprop.train import TrainConfig, train

    real, calls = MLP.train_step, {"n": 0}

    def step_then_signal(self: MLP, *args: object, **kwargs: object) -> float:
        calls["n"] += 1
        loss = real(self, *args, **kwargs)
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(MLP, "train_step", step_then_signal)
    config = TrainConfig(hidden=(8,), batch_size=20, steps=100, checkpoint_every=50)
    with pytest.raises(Interrupted, match="SIGTERM at step 7: checkpoint saved") as info:
        train(config, tmp_path / "run", progress=False)
    assert info.value.exit_code == 143
    assert ckpt.load_checkpoint(tmp_path / "run")[2]["step"] == 7
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the run
