"""Progress reports (bnprop.progress): plain lines every ``every`` steps, a redrawn bar on a
terminal, a rate and time left that do not count the first step, and one line when the
first step is slow."""

from __future__ import annotations

import io
import time

import pytest

from bnprop import progress
from bnprop.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress, "_now", c)
    return c


def test_plain_lines_every_steps_and_at_the_end(clock: Clock) -> None:
    out = io.StringIO()
    bar = Progress(10, stream=out, every=4, label="train", notice_after=None)
    for step in range(1, 11):
        clock.t += 1.0
        bar.update(step, loss=0.5, acc=None)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "train step 4/10", "train step 8/10", "train step 10/10"]
    assert lines[0] == "train step 4/10, loss 0.5000, 1.00 steps/s, eta 0:06"
    assert lines[-1] == "train step 10/10, loss 0.5000, 1.00 steps/s"  # no eta at the end


def test_the_rate_does_not_count_the_first_step(clock: Clock) -> None:
    """A first step of 95 s (a new install compiling the kernels), then 1024 steps a
    second: the first line reads 1024 steps/s and 47 s left, not 10 steps/s and 80
    minutes."""
    out = io.StringIO()
    bar = Progress(50_000, stream=out, every=1000, notice_after=None)
    clock.t += 95.0
    bar.update(1)
    for step in range(2, 1001):
        clock.t += 1 / 1024  # exact in binary
        bar.update(step)
    assert out.getvalue() == "step 1000/50000, 1024 steps/s, eta 0:47\n"
    assert bar.rate(1000) == 1024.0


def test_a_resumed_run_counts_from_its_first_step(clock: Clock) -> None:
    out = io.StringIO()
    bar = Progress(300, start=200, stream=out, every=50, notice_after=None)
    clock.t += 30.0
    bar.update(201)
    assert bar.rate(201) == pytest.approx(1 / 30)  # one step so far: since the start
    for step in range(202, 251):
        clock.t += 0.5
        bar.update(step)
    assert out.getvalue() == "step 250/300, 2.00 steps/s, eta 0:25\n"


def test_a_terminal_gets_one_redrawn_line(clock: Clock) -> None:
    out = Terminal()
    bar = Progress(4, stream=out, notice_after=None)
    for step in range(1, 5):
        clock.t += 1.0  # more than 1/refresh between updates: every update redraws
        bar.update(step)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "[####################] step 4/4, 1.00 steps/s" in text


def test_a_slow_first_step_is_reported_once() -> None:
    out = io.StringIO()
    bar = Progress(100, stream=out, every=50, label="train", notice_after=0.05)
    deadline = time.monotonic() + 10.0
    while "still running" not in out.getvalue():  # the timer thread writes it
        assert time.monotonic() < deadline, "no notice of the slow first step"
        time.sleep(0.01)
    for step in range(1, 101):
        bar.update(step)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("train step 1 is still running after 0.05 s (on a new "
                               "install the first step compiles bnprop's kernels")
    assert [line.split(",")[0] for line in lines[1:]] == ["train step 50/100",
                                                          "train step 100/100"]


def test_a_quick_first_step_or_a_disabled_bar_says_nothing() -> None:
    quick, off = io.StringIO(), io.StringIO()
    bar = Progress(10, stream=quick, every=100, notice_after=0.05)
    bar.update(1)
    silent = Progress(10, stream=off, enabled=False, notice_after=0.05)
    assert silent._notice is None
    time.sleep(0.2)
    bar.update(2)
    silent.update(1)
    bar.close()
    silent.close()
    assert quick.getvalue() == "" and off.getvalue() == ""
