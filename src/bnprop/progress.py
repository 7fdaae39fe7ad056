"""Progress of a long run: a redrawn bar on a terminal, plain periodic lines otherwise.

The rate and the time left count from the end of the first step: a run's first step
compiles bnprop's kernels on a fresh install (about 40 s on 2 cores, the helper thread's
loop compiled in a second process meanwhile: :mod:`bnprop.kernels._warm`; 100 s before
that loop was compiled per float type), which, counted in, made the first
report of a 50,000-step run read 9.9 steps/s and 83 minutes left when 20 seconds were.
A first step still running after ``notice_after`` seconds says so in one line.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

_now = time.perf_counter  # the clock (tests replace it)


class Progress:
    """Report ``step`` of ``total`` with named fields and the rate in steps/s.

    On a terminal the line is redrawn in place at most ``refresh`` times a second; on
    anything else (a pipe, a log file, CI) a plain line is written every ``every`` steps
    and at the end.

    Parameters
    ----------
    total : int
        Last step.
    start : int, default=0
        First step (a resumed run starts past 0).
    stream : text stream, default=sys.stderr
    every : int, optional
        Steps between plain lines; default: about 20 lines per run.
    label : str, default=""
    enabled : bool, default=True
    notice_after : float or None, default=3.0
        Seconds after which a first step still running is reported, once (None: never).
    """

    def __init__(
        self, total: int, *, start: int = 0, stream: TextIO | None = None,
        every: int | None = None, label: str = "", enabled: bool = True, refresh: float = 4.0,
        notice_after: float | None = 3.0,
    ) -> None:
        self.total, self.start = total, start
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every or max(1, (total - start) // 20)
        self.label = f"{label} " if label else ""
        self.enabled = enabled
        self.min_interval = 1.0 / refresh
        self.t0 = _now()
        self._first: tuple[int, float] | None = None  # (step, time) of the first update
        self._last_draw = 0.0
        self._last_step = start
        self._width = 0
        self._lock = threading.Lock()
        self._notice: threading.Timer | None = None
        if enabled and notice_after is not None and total > start:
            self._notice = threading.Timer(notice_after, self._slow_first_step, (notice_after,))
            self._notice.daemon = True
            self._notice.start()

    def _slow_first_step(self, after: float) -> None:
        with self._lock:
            if self._first is None:
                # Before the first update, so before any bar line: a line of its own.
                self.stream.write(f"{self.label}step {self.start + 1} is still running after "
                                  f"{after:g} s (on a new install the first step compiles "
                                  f"bnprop's kernels, about 40 s on 2 cores; later runs "
                                  f"load them from the cache); the rate counts from its end\n")
                self.stream.flush()

    def rate(self, step: int) -> float:
        """Steps per second from the end of the first reported step (module docstring);
        until a later step, since the start."""
        if self._first is not None and step > self._first[0]:
            first, since = self._first
        else:
            first, since = self.start, self.t0
        dt = _now() - since
        return (step - first) / dt if dt > 0 else 0.0

    def line(self, step: int, fields: dict[str, float | str | None]) -> str:
        """The text of one report."""
        parts = [f"{self.label}step {step}/{self.total}"]
        for name, value in fields.items():
            if value is None:
                continue
            parts.append(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}")
        rate = self.rate(step)
        parts.append(f"{rate:.0f} steps/s" if rate >= 10 else f"{rate:.2f} steps/s")
        if rate > 0 and step < self.total:
            eta = (self.total - step) / rate
            parts.append(f"eta {int(eta // 60)}:{int(eta % 60):02d}")
        return ", ".join(parts)

    def update(self, step: int, **fields: float | str | None) -> None:
        """Report that ``step`` is done."""
        if self._first is None:
            with self._lock:
                self._first = (step, _now())
            if self._notice is not None:
                self._notice.cancel()
        if not self.enabled:
            return
        if self.tty:
            now = _now()
            if now - self._last_draw < self.min_interval and step < self.total:
                return
            self._last_draw = now
            frac = (step - self.start) / max(1, self.total - self.start)
            bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
            text = f"[{bar}] {self.line(step, fields)}"
            pad = max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write("\r" + text + " " * pad)
            self.stream.flush()
        elif step - self._last_step >= self.every or step == self.total:
            self._last_step = step
            self.stream.write(self.line(step, fields) + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End the bar's line on a terminal."""
        if self._notice is not None:
            self._notice.cancel()
        if self.enabled and self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
