"""The worker threads of :func:`bnprop.threads.map_rows`: each spins briefly between parts.

``map_rows`` gives part 0 to the calling thread and each other part to a worker. Handed
over through a queue (``ThreadPoolExecutor``), a part waited for two sleeping threads:
the worker, woken by the queue, and the caller, woken by the part's result. On this
project's 2-vCPU virtual machine a thread that has slept more than some tens of
microseconds takes 30-40 us to wake, so an empty ``map_rows`` call on 2 threads took
90-150 us (more the longer the pause before it), and a CNN training step makes 16 such
calls. Here instead (one :class:`_Worker` per extra part)::

    caller   writes the part, then ctl[POSTED] = seq   (a sleeping worker is notified)
             runs part 0
             spins until ctl[DONE] == seq, at most WAIT_SECONDS, then sleeps on it
    worker   spins until ctl[POSTED] changes, at most IDLE_SECONDS, then sleeps on it
             runs its part, then ctl[DONE] = seq and spins for the next one

The spins run in compiled code without the GIL (:func:`_wait_change`), so a spinning
thread never holds up the other one's Python; the worker stores ``DONE`` from there too,
after the GIL is released, so the caller finds it free. The empty call takes 22-46 us
(the worker starts its part about 20 us after the post: the GIL's hand-over). A thread
that spins longer than the budget sleeps on a condition: the sleep-or-notify handshakes
(``sleeping`` under the GIL, ``MAIN_WAITING`` with fenced stores) lose no wake-up. The
budgets are short on purpose: where the two vCPUs share one physical core, a spinning
thread takes time from the other. Measured, the queue -> this, alternated in one process
on 2 threads (medians of rounds of 8 calls): a CNN training step (``--arch cnn``, batch
128) 20.84 -> 20.19 and 26.11 -> 25.33 ms (40 rounds, twice), a layer 4096 x 16 -> 256
(float32) 2.91 -> 2.79 ms, 65536 x 16 -> 256 32.4 -> 31.9 ms (12 rounds).

One caller owns the workers at a time (a non-blocking lock); another caller meanwhile
gets ``None`` and ``map_rows`` uses its queue instead, as does every call after one
interrupted while it waited for a part (which may still be running). An exception in
a part reaches the caller after every part has ended (part 0's first, then the
workers' in row order). After ``fork`` the child starts without workers; at exit they
are stopped.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

from bnprop.kernels._atomics import cas, load_acquire, pause
from bnprop.kernels._jit import JIT_OPTIONS

#: Slots of a worker's int64 array, a cache line apart.
POSTED, DONE, MAIN_WAITING, STOP, SLOTS = 0, 8, 16, 24, 32
#: Seconds a worker spins after a part for the next one before it sleeps.
IDLE_SECONDS = 0.0005
#: Seconds the caller spins for a worker's part to end before it sleeps.
WAIT_SECONDS = 0.0002
#: What :func:`_publish_wait` returns when the caller sleeps and must be notified.
NOTIFY = -1


@njit(**JIT_OPTIONS)
def _fenced_store(ctl, i, value):  # pragma: no cover - compiled
    """``ctl[i] = value`` as a locked exchange: no later load of this thread is done
    before it (a plain x86 store may wait in the store buffer past one)."""
    while True:
        old = load_acquire(ctl, i)
        if cas(ctl, i, old, value):
            return


@njit(**JIT_OPTIONS)
def _wait_change(ctl, i, old, spins):  # pragma: no cover - compiled
    """``ctl[i]`` once it differs from ``old``, or after ``spins`` spins (then maybe
    still ``old``); returns early with ``old`` when a stop is requested."""
    for _ in range(spins):
        v = load_acquire(ctl, i)
        if v != old or load_acquire(ctl, STOP) != 0:
            return v
        pause()
    return load_acquire(ctl, i)


@njit(**JIT_OPTIONS)
def _publish_wait(ctl, seq, spins):  # pragma: no cover - compiled
    """The worker's end of part ``seq``: ``DONE = seq``, then :data:`NOTIFY` if the
    caller sleeps on it, else the next ``POSTED`` (``seq`` if none came in ``spins``)."""
    _fenced_store(ctl, DONE, seq)
    if load_acquire(ctl, MAIN_WAITING) != 0:
        return NOTIFY
    return _wait_change(ctl, POSTED, seq, spins)


@njit(**JIT_OPTIONS)
def _spin(n):  # pragma: no cover - compiled
    for _ in range(n):
        pause()


def spins(seconds: float) -> int:
    """``pause()`` spins in about ``seconds``, at least 100 (the rate measured once per
    process); the spin budgets of these workers and of the compiled calls' helper
    (:mod:`bnprop.kernels._helper_thread`)."""
    global _per_spin
    if _per_spin is None:
        _spin(1)
        t0 = time.perf_counter()
        _spin(20_000)
        _per_spin = max(1e-9, (time.perf_counter() - t0) / 20_000)
    return max(100, int(seconds / _per_spin))


_per_spin: float | None = None


class _Worker:
    """One worker thread, its shared array and the part it runs."""

    def __init__(self) -> None:
        self.ctl = np.zeros(SLOTS, np.int64)
        self.cond = threading.Condition()
        self.sleeping = False
        self.seq = 0
        self.task: tuple[Callable[[int, int], Any], int, int] | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.idle_spins, self.wait_spins = spins(IDLE_SECONDS), spins(WAIT_SECONDS)
        self.thread = threading.Thread(target=self._main, name="bnprop-rows", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        ctl, seen = self.ctl, 0
        v = _wait_change(ctl, POSTED, seen, self.idle_spins)
        while True:
            if v == NOTIFY:
                with self.cond:
                    self.cond.notify_all()
                v = _wait_change(ctl, POSTED, seen, self.idle_spins)
            if v == seen:  # nothing came while spinning: sleep until a part is posted
                with self.cond:
                    self.sleeping = True
                    while ctl[POSTED] == seen and not ctl[STOP]:
                        self.cond.wait()
                    self.sleeping = False
                v = int(ctl[POSTED])
            if ctl[STOP]:
                return
            seen = v
            fn, start, stop = self.task  # type: ignore[misc]
            self.task = None
            try:
                self.result = fn(start, stop)
            except BaseException as exc:  # handed to the caller, which raises it
                self.error = exc
            v = _publish_wait(ctl, seen, self.idle_spins)

    def post(self, fn: Callable[[int, int], Any], start: int, stop: int) -> None:
        self.task, self.result, self.error = (fn, start, stop), None, None
        self.seq += 1
        self.ctl[POSTED] = self.seq
        if self.sleeping:  # read after the store; the worker sets it before its check
            with self.cond:
                self.cond.notify_all()

    def wait(self) -> None:
        """Until the posted part has ended."""
        ctl, seq = self.ctl, self.seq
        if _wait_change(ctl, DONE, seq - 1, self.wait_spins) == seq:
            return
        with self.cond:
            _fenced_store(ctl, MAIN_WAITING, 1)
            try:
                while ctl[DONE] != seq:
                    self.cond.wait()
            finally:
                ctl[MAIN_WAITING] = 0

    def stop(self) -> None:
        self.ctl[STOP] = 1
        with self.cond:
            self.cond.notify_all()


class _Pool:
    """The workers of one process and the lock of the caller that owns them."""

    def __init__(self) -> None:
        self.owner = threading.Lock()
        self.workers: list[_Worker] = []

    def run(self, fn: Callable[[int, int], Any], ranges: list[tuple[int, int]],
            ) -> list[Any] | None:
        """``[fn(start, stop) for each range]``, range 0 on this thread; None when another
        caller owns the workers (module docstring)."""
        if not self.owner.acquire(blocking=False):
            return None
        released = False
        try:
            while len(self.workers) < len(ranges) - 1:
                self.workers.append(_Worker())
            workers = self.workers[:len(ranges) - 1]
            posted: list[_Worker] = []
            try:
                for worker, (start, stop) in zip(workers, ranges[1:], strict=True):
                    worker.post(fn, start, stop)
                    posted.append(worker)
                first = fn(*ranges[0])
            finally:
                for worker in posted:
                    worker.wait()  # interrupted here: the owner lock stays taken
            results, errors = [first], []
            for worker in workers:  # read before another caller may post
                results.append(worker.result)
                if worker.error is not None:
                    errors.append(worker.error)
                worker.result = worker.error = None
            self.owner.release()
            released = True
            if errors:
                raise errors[0]
            return results
        finally:
            if not released and all(w.ctl[DONE] == w.seq for w in self.workers):
                self.owner.release()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


_pool = _Pool()


def run_parts(fn: Callable[[int, int], Any], ranges: list[tuple[int, int]]) -> list[Any] | None:
    """:meth:`_Pool.run` on this process's workers."""
    return _pool.run(fn, ranges)


def _fresh_after_fork() -> None:
    global _pool
    _pool = _Pool()


os.register_at_fork(after_in_child=_fresh_after_fork)
atexit.register(lambda: _pool.stop())
