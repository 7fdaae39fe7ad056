"""map_rows's spinning worker threads (bnprop.kernels._row_workers): every part runs once,
results come back in row order, errors reach the caller, and no wake-up is lost whether
a worker or the caller spins or sleeps."""

from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest

from bnprop import threads
from bnprop.kernels import _row_workers as rw


def _where(start: int, stop: int) -> tuple[int, int, str]:
    return start, stop, threading.current_thread().name


def _within(seconds: float, fn) -> object:  # type: ignore[no-untyped-def]
    """``fn()`` on a thread of 3 compute threads; fails (instead of hanging) if it has
    not returned after ``seconds`` (a lost wake-up)."""
    out: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        with threads.using(3):
            try:
                out.append(fn())
            except BaseException as exc:  # raised again in the test's thread
                errors.append(exc)

    t = threading.Thread(target=run, name="caller", daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "map_rows did not return: a wake-up was lost"
    if errors:
        raise errors[0]
    return out[0]


def test_parts_run_on_the_workers_in_row_order() -> None:
    def calls() -> list[list[tuple[int, int, str]]]:
        return [threads.map_rows(_where, 9000, min_rows=1000) for _ in range(200)]

    for parts in _within(30, calls):  # back to back: the workers are still spinning
        assert [p[:2] for p in parts] == threads.row_parts(9000, 3)
        assert parts[0][2] == "caller"
        assert [p[2] for p in parts[1:]] == ["bnprop-rows", "bnprop-rows"]


def test_a_sleeping_worker_and_a_sleeping_caller_are_woken() -> None:
    def rested() -> list[tuple[int, int]]:
        threads.map_rows(_where, 100, min_rows=1)
        deadline = time.monotonic() + 5  # every worker goes to sleep after its spin
        while not all(w.sleeping for w in rw._pool.workers):
            assert time.monotonic() < deadline, "a worker never went to sleep"
            time.sleep(rw.IDLE_SECONDS)
        time.sleep(rw.IDLE_SECONDS)  # and is blocked on its condition by now
        return [p[:2] for p in threads.map_rows(_where, 100, min_rows=1)]

    for _ in range(5):
        assert _within(10, rested) == threads.row_parts(100, 3)

    def slow_workers(start: int, stop: int) -> int:  # the caller outlasts its spin
        if start > 0:
            time.sleep(50 * rw.WAIT_SECONDS)
        return stop - start

    for _ in range(5):
        assert _within(10, lambda: threads.map_rows(slow_workers, 90, min_rows=1)) \
            == [30, 30, 30]


def _raised(fn) -> BaseException | None:  # type: ignore[no-untyped-def]
    try:
        fn()
    except BaseException as exc:  # returned to the test, which checks it
        return exc
    return None


def test_errors_reach_the_caller_after_every_part_ended() -> None:
    ended: list[int] = []

    def worker_fails(start: int, stop: int) -> int:
        if start > 0:
            time.sleep(0.01)
            ended.append(start)
            raise ValueError(f"part {start}")
        return start

    error = _within(30, lambda: _raised(lambda: threads.map_rows(worker_fails, 9000,
                                                                  min_rows=1000)))
    assert isinstance(error, ValueError) and str(error) == "part 3000"  # the first one
    assert sorted(ended) == [3000, 6000]

    def caller_fails(start: int, stop: int) -> int:
        if start == 0:
            raise KeyError("part 0")
        time.sleep(0.01)
        ended.append(start)
        return start

    ended.clear()
    error = _within(30, lambda: _raised(lambda: threads.map_rows(caller_fails, 9000,
                                                                  min_rows=1000)))
    assert isinstance(error, KeyError) and sorted(ended) == [3000, 6000]
    # the workers are free again and keep no result of a failed call
    assert _within(30, lambda: threads.map_rows(lambda a, b: a, 9000, min_rows=1000)) \
        == [0, 3000, 6000]
    assert all(w.result is None and w.error is None for w in rw._pool.workers)


def test_two_callers_at_once_each_get_their_own_parts() -> None:
    Z = np.random.default_rng(3).standard_normal((6000, 8))
    expected = [Z[a:b].sum(axis=0) for a, b in threads.row_parts(6000, 3)]

    def calls() -> int:
        wrong = 0
        for _ in range(200):
            got = threads.map_rows(lambda a, b: Z[a:b].sum(axis=0), 6000, min_rows=1000)
            wrong += not all(np.array_equal(g, e) for g, e in zip(got, expected, strict=True))
        return wrong

    results: list[object] = []
    callers = [threading.Thread(target=lambda: results.append(_within(60, calls)))
               for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(90)
    assert results == [0, 0, 0, 0]


def test_a_part_that_calls_map_rows_gets_the_queue() -> None:
    """The caller owns the workers meanwhile: its part's own call splits through the
    queue; a worker's part has its thread's count (1: one part)."""
    def outer(start: int, stop: int) -> list[tuple[int, int]]:
        return threads.map_rows(lambda a, b: (start + a, start + b), stop - start, min_rows=1)

    nested = _within(30, lambda: threads.map_rows(outer, 30, min_rows=1))
    assert nested == [[(0, 3), (3, 6), (6, 10)], [(10, 20)], [(20, 30)]]
    assert _within(30, lambda: threads.map_rows(_where, 30, min_rows=1))[1][2] \
        == "bnprop-rows"


def _child_maps_rows(queue) -> None:  # type: ignore[no-untyped-def]
    with threads.using(2):
        queue.put(threads.map_rows(lambda a, b: (a, b), 10, min_rows=1))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # jax, when another test loaded it
def test_a_forked_child_starts_its_own_workers() -> None:
    _within(30, lambda: threads.map_rows(_where, 100, min_rows=1))  # the parent's workers run
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_maps_rows, args=(queue,))
    child.start()
    assert queue.get(timeout=60) == [(0, 5), (5, 10)]
    child.join(timeout=30)
    assert child.exitcode == 0


class _StopError(Exception):
    pass


def test_a_caller_interrupted_while_it_waits_leaves_the_workers_to_the_queue() -> None:
    """An exception from a signal handler while the caller waits for a part (Ctrl-C):
    the part may still be running, so later calls take the queue, and get right results."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")

    def raise_stop(signum: int, frame: object) -> None:
        raise _StopError

    slow_started = threading.Event()

    def slow_worker(start: int, stop: int) -> int:
        if start > 0:
            slow_started.set()
            time.sleep(1.0)
        return start

    previous = signal.signal(signal.SIGALRM, raise_stop)
    try:
        with threads.using(2):
            threads.map_rows(_where, 10, min_rows=1)  # the workers exist
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(_StopError):
                threads.map_rows(slow_worker, 10, min_rows=1)
            assert slow_started.is_set()
        assert rw._pool.owner.locked()  # kept: the interrupted call's part ran on
        parts = _within(30, lambda: threads.map_rows(_where, 30, min_rows=1))
        assert [p[:2] for p in parts] == threads.row_parts(30, 3)
        assert all(p[2].startswith("bnprop-rows_") for p in parts[1:])  # the queue's threads
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        rw._fresh_after_fork()  # a fresh pool for the tests after this one
