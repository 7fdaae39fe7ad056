"""The helper thread's life (:mod:`bnprop.kernels.team`): started by the first call that
may use it, asleep when idle, fresh after ``fork``, stopped at exit; and whether calls
use it at all, chosen by measuring.

**Measured, not assumed.** On this project's 2-vCPU virtual machine the two vCPUs
sometimes share one physical core (the host moves them): then the helper's parts run at
half speed and its spinning slows the caller, and the Ioffe step took 560 us with the
helper against 450 without (on separate cores: 335 against 450). So compiled steps
report their time (:func:`report`), and every :data:`CYCLE` reports the way not in use
is tried for :data:`PROBE` calls (first after :data:`WARM` reports with the helper,
decided after :data:`PROBE` calls of each way); the faster way (by the medians of the
last :data:`PROBE` calls of each) is kept. The warm-up keeps the helper's start (a new
thread, its compiled loop loaded: 0.1 to 0.4 ms for the first calls) out of the first
decision, which without it chose the slower way for the public layer functions. Either
way gives the same numbers (a GEMM's split does not depend on it), so switching costs
nothing but the probe's time.
"""

from __future__ import annotations

import atexit
import os
import statistics
import threading
from collections.abc import Hashable

import numpy as np
from numba import njit

from bnprop import _aligned, threads
from bnprop.kernels import _warm
from bnprop.kernels._atomics import cas, load_acquire, pause, store_release
from bnprop.kernels._cblas import F32, F64, _code_of
from bnprop.kernels._jit import JIT_OPTIONS
from bnprop.kernels._row_workers import spins
from bnprop.kernels._tasks import (
    CLAIM,
    DESC,
    DONE,
    PARTS,
    SLOTS,
    STATE,
    STOP,
    run_posted,
)

ASLEEP, AWAKE = 0, 1
#: Seconds the helper spins without work before it sleeps.
IDLE_SECONDS = 0.002
#: Longest wait of a caller that wakes the helper for it to be up (:meth:`_Helper.start_or_wake`).
WAKE_WAIT_SECONDS = 0.002

#: Reports between two probes of the other way, and calls a probe lasts.
CYCLE, PROBE = 1024, 8
#: Reports at the start that use the helper and are not measured.
WARM = 64


@njit(**JIT_OPTIONS)
def helper_loop(ctl, idle_spins, token):  # pragma: no cover - compiled
    """The helper's spin loop for tasks of ``token``'s float type (:func:`run_posted`):
    claim and compute posted parts until ``idle_spins`` spins pass without one (or a stop
    is requested), then mark itself asleep and return -1. An open task of the other
    float type is left unclaimed and its dtype code returned: the thread goes on in that
    type's loop (:meth:`_Helper._main`), compiled when first needed."""
    code = _code_of(token)
    idle = 0
    while load_acquire(ctl, STOP) == 0:
        c = load_acquire(ctl, CLAIM)
        if c > 0 and c % 2 == 0:
            other = ctl[DESC]  # written before the task was offered
            if other != code:
                return other
            if cas(ctl, CLAIM, c, c + 1):
                run_posted(ctl, token)  # the caller waits for DONE == c, so DESC holds
                store_release(ctl, PARTS, ctl[PARTS] + 1)
                store_release(ctl, DONE, c)
                idle = 0
                continue
        idle += 1
        if idle >= idle_spins:
            break
        pause()
    store_release(ctl, STATE, ASLEEP)
    return -1


#: The token of each dtype code that :func:`helper_loop` is compiled for.
_TOKENS = {F32: np.float32(0.0), F64: np.float64(0.0)}


def _new_ctl() -> np.ndarray:
    """A shared array on cache lines, a line free on each side: _tasks' slots sit on
    lines of their own, and no other object shares one with them."""
    return _aligned.zeros(SLOTS + 16, np.int64)[8:8 + SLOTS]


def loop_args(code: int, ctl: np.ndarray | None = None,
              idle_spins: int = 1000) -> tuple[np.ndarray, int, np.floating]:
    """:func:`helper_loop`'s arguments for the dtype ``code`` (a new ``ctl`` if None):
    the types its compiled code is for (:mod:`bnprop.kernels._warm`)."""
    return (_new_ctl() if ctl is None else ctl), idle_spins, _TOKENS[code]


class _Helper:
    """The helper thread and its shared array (one per process)."""

    def __init__(self) -> None:
        self.ctl = _new_ctl()
        self.wake = threading.Event()
        self.awake = threading.Event()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.idle_spins = 0
        self.code = F32  # the float type of the helper's loop (helper_loop)
        self.looked_up: set[int] = set()  # the codes whose loop this process has sought
        self.warming = False  # its loop compiles in a second process (kernels/_warm.py)

    def _main(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            if self.ctl[STOP]:
                return
            self.ctl[STATE] = AWAKE  # the helper alone writes its state: no lost wake-up
            self.awake.set()  # the waker goes on: the loop below runs without the GIL
            while True:  # ends by storing ASLEEP
                args = loop_args(self.code, self.ctl, self.idle_spins)
                if self.code not in self.looked_up:  # a cold cache: compiled apart
                    self.looked_up.add(self.code)
                    if not _warm.in_mpi_job() and _warm.cold(helper_loop, args):
                        self.warming = True
                        try:
                            _warm.compile_apart(self.code)
                        finally:
                            self.warming = False
                        if self.ctl[STOP]:  # the process is exiting: no compile now
                            return
                got = helper_loop(*args)
                if got < 0:
                    break
                self.code = F64 if got == F64 else F32  # the other dtype's loop

    def start_or_wake(self) -> None:
        """Start the thread if it is not running yet, and wake it. Safe against an
        interrupt anywhere: the next call finds the state asleep and does it again."""
        with self.lock:
            if self.ctl[STOP]:
                return
            if self.thread is None:
                self.idle_spins = max(1000, spins(IDLE_SECONDS))
                self.thread = threading.Thread(target=self._main, name="bnprop-helper",
                                               daemon=True)
            if self.thread.ident is None:  # made, not started yet
                self.thread.start()
        self._place()
        self.awake.clear()
        self.wake.set()
        # Hand the helper the GIL now: it needs it for the few lines before its compiled
        # loop, and a caller that holds it between short compiled calls can keep it from
        # the helper for the interpreter's switch interval (5 ms; measured: 1 wake-up in
        # 5 after a 30 ms pause took 8 ms, 43 layer calls without the helper).
        self.awake.wait(WAKE_WAIT_SECONDS)
        self._place()  # this thread may have come back on the helper's CPU after the wait

    def _place(self) -> None:
        """Keep the helper off the CPU the waking thread runs on (Linux): woken from
        sleep, it was often put on that CPU and shared it with its caller until the
        scheduler moved one of them, 3 to 12 ms later (measured: in 11 of 20 wake-ups
        after a 30 ms pause the first part was taken only after 4 to 45 layer calls; with
        the helper kept off the caller's CPU, at the first call in 20 of 20)."""
        thread = self.thread
        try:
            allowed = os.sched_getaffinity(0)
            if thread is None or thread.native_id is None or len(allowed) < 2:
                return
            with open("/proc/thread-self/stat", "rb") as f:
                cpu = int(f.read().rsplit(b")", 1)[1].split()[36])  # field 39: the CPU
            os.sched_setaffinity(thread.native_id, allowed - {cpu})
        except (OSError, AttributeError, ValueError, IndexError):
            pass  # no such interface here: the scheduler places it

    def stop(self) -> None:
        self.ctl[STOP] = 1
        _warm.stop()  # after STOP: the helper, woken from its wait, then returns
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=1.0)


_helper = _Helper()


def _fresh_after_fork() -> None:
    """A forked child: a new, sleeping helper, and every call measured afresh (the
    parent's pinned or measured choices were the parent's)."""
    global _helper, _pinned, _last_use
    _helper, _pinned, _last_use = _Helper(), None, True
    _choices.clear()


os.register_at_fork(after_in_child=_fresh_after_fork)


atexit.register(lambda: _helper.stop())


class _Choice:
    """Whether calls use the helper (module docstring): the kept way, probes of the other."""

    def __init__(self) -> None:
        self.use, self.calls = True, 0
        self.recent: dict[bool, list[float]] = {True: [], False: []}

    def now(self) -> bool:
        """The way for the next call: the other one during a probe."""
        phase = self.calls - WARM
        return self.use != (phase >= 0 and phase % CYCLE < PROBE)

    def timed(self) -> bool:
        """Whether the next call's time can enter a decision. A decision reads the last
        :data:`PROBE` times of each way, which are the :data:`PROBE` calls of the probe
        before it and the :data:`PROBE` calls before the probe (the first decision: the
        first probe and the calls after it); every other call is only counted
        (:meth:`skip`), and the decisions are the same."""
        phase = self.calls - WARM
        return phase >= 0 and (phase < 2 * PROBE or (phase + PROBE) % CYCLE < 2 * PROBE)

    def skip(self) -> None:
        """Count a call whose time no decision reads (:meth:`timed` False)."""
        self.calls += 1

    def report(self, used: bool, seconds: float) -> None:
        self.calls += 1
        phase = self.calls - WARM
        if phase <= 0:
            return
        recent = self.recent[used]
        recent.append(seconds)
        del recent[:-PROBE]
        decide = phase % CYCLE == PROBE or phase == 2 * PROBE  # the first: early
        if decide and all(len(r) == PROBE for r in self.recent.values()):
            other = statistics.median(self.recent[not self.use])
            if other < 0.95 * statistics.median(self.recent[self.use]):
                self.use = not self.use


#: One measured choice per kind and shape of call whose time is reported: a compiled
#: train step of one net and batch size, a public layer call of one shape. Kept apart
#: because their times differ (a 0.3 ms step, a 25 us layer call): mixed, one shape's
#: probe would be weighed against another's times.
_choices: dict[Hashable, _Choice] = {}
#: At most this many are kept (then all are measured afresh).
MAX_CHOICES = 256
#: ``prefer``'s pin (None: measured), and the way the last measured call took.
_pinned: bool | None = None
_last_use = True


def helper() -> _Helper:
    """This process's helper."""
    return _helper


def for_call(key: Hashable | None = None) -> tuple[np.ndarray, bool]:
    """``(ctl, use)`` for a compiled call: ``use`` when this context has two or more
    threads (:func:`bnprop.threads.num_threads`) and the helper is the faster way now
    for calls of ``key`` (the kind and shape of the call, whose time :func:`report`
    gets; ``None``: an unmeasured call takes the way of the last measured one) (module
    docstring). The helper is then started or
    woken (the call does not wait for it: parts it does not claim, the caller computes)."""
    ctl, use, _ = _way(key)
    return ctl, use


def for_timed_call(key: Hashable) -> tuple[np.ndarray, bool, bool]:
    """:func:`for_call` of a call of ``key`` that :func:`report`s its time only when the
    third value says so: ``(ctl, use, timed)``. A call not timed is counted here
    (:meth:`_Choice.skip`) and must not be reported; a compiled step or layer call so
    saves its two clock reads and the report, on all but 2 x :data:`PROBE` calls a cycle."""
    ctl, use, choice = _way(key)
    if choice is None or _helper.warming:  # pinned, one thread, or a helper compiling
        return ctl, use, False  # apart (it takes no part yet): nothing is measured
    if choice.timed():
        return ctl, use, True
    choice.skip()
    return ctl, use, False


def _way(key: Hashable | None) -> tuple[np.ndarray, bool, _Choice | None]:
    """:func:`for_call`'s ``(ctl, use)``, and the measured choice that decided ``use``
    (None: one thread, a pinned choice or no key)."""
    global _last_use
    h, choice = _helper, None
    if threads.num_threads() < 2:
        return h.ctl, False, None
    if _pinned is not None:
        use = _pinned
    elif key is None:
        use = _last_use
    else:
        choice = _choices.get(key)
        if choice is None:
            if len(_choices) >= MAX_CHOICES:
                _choices.clear()
            choice = _choices[key] = _Choice()
        use = _last_use = choice.now()
    if use and h.ctl[STATE] != AWAKE:
        h.start_or_wake()
    return h.ctl, use, choice


def prefer(use: bool | None) -> None:
    """Pin every call's choice (``True``: always the helper, ``False``: never), or
    ``None`` to measure again from the start (module docstring); for tests and
    measurements."""
    global _pinned, _last_use
    _pinned, _last_use = use, True if use is None else use
    _choices.clear()


def report(used: bool, seconds: float, key: Hashable) -> None:
    """A compiled call's time, with (``used``) or without the helper, for calls of
    ``key`` (:func:`for_call`); nothing while the choice is pinned."""
    choice = _choices.get(key)
    if _pinned is None and choice is not None:
        choice.report(used, seconds)


def parts_done() -> int:
    """How many parts the helper has computed in this process (for tests and the bench)."""
    return int(_helper.ctl[PARTS])
