"""Ctrl-C and SIGTERM during training: finish the step, save a checkpoint, say so, exit.

Inside :class:`StopSignals` the first SIGINT or SIGTERM only records itself
(``signum``); the training loop checks it after each step, saves a checkpoint and raises
:class:`Interrupted`, which the command line prints and turns into the conventional exit
status ``128 + signum`` (130 for SIGINT, 143 for SIGTERM). A second signal does not wait:
SIGINT raises ``KeyboardInterrupt`` (exit 130), SIGTERM ``SystemExit(143)``, at once.

Handlers can only be installed from the main thread; elsewhere (a run on a thread)
:class:`StopSignals` does nothing and the signals keep their default behaviour.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

#: The signals a run stops cleanly on.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):  # noqa: N818 (the run was interrupted; not an error)
    """The run stopped on a signal after saving; ``exit_code`` is ``128 + signum``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """Record the first SIGINT/SIGTERM instead of dying; ``with StopSignals(enabled):``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            return
        self._restore()  # a second signal: no more grace
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    @property
    def name(self) -> str:
        """``SIGINT`` or ``SIGTERM`` (the first signal received)."""
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._restore()
