"""`bnprop grade` stopped by a signal kills the learner's process and removes its folder
(the learner runs in its own session: a killed parent used to leave it running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest


def _grade_children(marker: str) -> list[int]:
    """PIDs of live processes whose command line holds ``marker`` (the learner's file)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if marker in cmd and "_grade_child" in cmd and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the child")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_the_learner_too(tmp_path: Path, signum: int) -> None:
    learner = tmp_path / "endless_learner.py"
    learner.write_text("def gradients(O, W, gamma, beta, dY, eps):\n    while True:\n"
                       "        pass\n")
    before = set(Path(tempfile.gettempdir()).glob("bnprop-grade-*"))
    proc = subprocess.Popen([sys.executable, "-m", "bnprop", "grade", str(learner),
                             "--timeout", "120"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _grade_children(learner.name):
            assert time.monotonic() < deadline and proc.poll() is None, "no learner process"
            time.sleep(0.05)
        time.sleep(0.2)  # inside the learner's endless loop
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum
    assert err.count("\n") == 1 and "grading stopped, the learner's process killed" in err
    deadline = time.monotonic() + 10
    while _grade_children(learner.name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _grade_children(learner.name)
    assert set(Path(tempfile.gettempdir()).glob("bnprop-grade-*")) <= before
    assert os.path.exists(learner)
