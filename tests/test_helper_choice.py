"""Whether calls use the helper thread (kernels/_helper_thread.py): measured per kind and
shape of call, probed, pinned for tests; and how a woken helper is placed."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import bnprop
from bnprop import threads
from bnprop.kernels import blas

pytestmark = pytest.mark.skipif(not blas.available(), reason="needs NumPy's scipy-openblas")

if blas.available():
    from bnprop.kernels import team


@pytest.fixture(autouse=True)
def _measured_again_afterwards():  # type: ignore[no-untyped-def]
    yield
    if blas.available():
        team.prefer(None)


def test_the_faster_way_is_kept_and_the_other_is_probed_every_cycle() -> None:
    from bnprop.kernels._helper_thread import CYCLE, PROBE, WARM, _Choice

    choice = _Choice()
    slow_helper = {True: 2.0, False: 1.0}  # the helper's way takes twice as long
    ways = []
    for i in range(3 * CYCLE):
        used = choice.now()
        ways.append(used)
        # the warm-up's times (the helper starting) are not measured: here, very slow
        choice.report(used, 100.0 if i < WARM else slow_helper[used])
    assert choice.use is False  # switched after the first probe of both ways
    assert ways[:WARM] == [True] * WARM  # it warms up with the helper,
    assert ways[WARM:WARM + PROBE] == [False] * PROBE  # probes the other way,
    assert ways[WARM + PROBE:WARM + 2 * PROBE] == [True] * PROBE  # then its own,
    assert not any(ways[WARM + 2 * PROBE:WARM + CYCLE])  # and decides
    # after the switch, the helper is only tried for PROBE calls a cycle
    start = WARM + 2 * CYCLE
    assert ways[start:start + PROBE] == [True] * PROBE
    assert not any(ways[start + PROBE:])
    fast_again = {True: 0.5, False: 1.0}
    for _ in range(2 * CYCLE):
        used = choice.now()
        choice.report(used, fast_again[used])
    assert choice.use is True
    same = _Choice()  # within 5 %: the kept way stays
    for _ in range(2 * CYCLE):
        used = same.now()
        same.report(used, 1.0 if used else 0.97)
    assert same.use is True


def test_a_pinned_choice_holds_and_one_thread_never_uses_the_helper() -> None:
    team.prefer(False)
    with threads.using(2):
        assert team.for_call()[1] is False
    team.prefer(True)
    with threads.using(2):
        assert team.for_call()[1] is True
    with threads.using(1):
        assert team.for_call()[1] is False


def _float32_helper_loop_loaded() -> None:
    """The helper's float32 loop compiled or loaded here, before anything is counted: on a
    cold cache it is compiled by a second process, and no call is measured meanwhile."""
    from numba import typeof

    from bnprop.kernels import _helper_thread

    args = _helper_thread.loop_args(_helper_thread.F32, _helper_thread._helper.ctl, 0)
    _helper_thread.helper_loop.compile(tuple(typeof(a) for a in args))


def test_each_kind_and_shape_of_call_keeps_its_own_choice() -> None:
    """A layer call's time (~25 us) never enters a step's medians (~0.3 ms), nor one
    shape's another's; the layer functions measure their own way (unmeasured, they had
    never used the helper); the optimizer update follows the last measured call."""
    from bnprop.kernels import _helper_thread

    _float32_helper_loop_loaded()
    team.prefer(None)
    rng = np.random.default_rng(3)
    choices = _helper_thread._choices
    with threads.using(2):
        for n_in in (100, 16):
            O = rng.random((60, n_in), dtype=np.float32)
            W = rng.random((100, n_in), dtype=np.float32)
            gamma, beta = np.ones(100, np.float32), np.zeros(100, np.float32)
            for _ in range(3):
                cache = bnprop.layer_forward(O, W, gamma, beta)
                bnprop.layer_backward(np.ones((60, 100), np.float32), cache)
        net = bnprop.MLP([784, 100, 100, 100, 10], seed=0)
        X = rng.random((60, 784), dtype=np.float32)
        for _ in range(2):
            net.train_step(X, rng.integers(0, 10, 60), bnprop.SGD(0.1))
    layer = {k: c.calls for k, c in choices.items() if k[0].startswith("layer")}
    assert layer == {("layer_forward", "<f4", 60, 100, 100): 3,
                     ("layer_backward", "<f4", 60, 100, 100): 3,
                     ("layer_forward", "<f4", 60, 16, 100): 3,
                     ("layer_backward", "<f4", 60, 16, 100): 3}
    steps = [c.calls for k, c in choices.items() if k[0] == "step"]
    assert steps == [2]
    _helper_thread._last_use = False  # the last measured call went without the helper
    with threads.using(2):
        assert team.for_call()[1] is False


def _cpu_of(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[36])


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2
                    or not os.path.exists("/proc/thread-self/stat"),
                    reason="needs Linux and two CPUs")
def test_a_woken_helper_is_kept_off_its_callers_cpu() -> None:
    """Woken on its caller's CPU, it shared it until the scheduler moved one of them."""
    from bnprop.kernels._helper_thread import WAKE_WAIT_SECONDS

    h = team.helper()
    with threads.using(2):
        team.for_call()  # started
        deadline = time.monotonic() + 120.0  # a first start compiles its loop
        while h.ctl[team.STATE] != team.ASLEEP:  # IDLE_SECONDS after its last part
            assert time.monotonic() < deadline
            time.sleep(0.001)
        start = time.perf_counter()
        h.start_or_wake()
        waited = time.perf_counter() - start
        for _ in range(100):  # this thread may move between two reads of its CPU: again
            before = _cpu_of(threading.get_native_id())
            h._place()
            if _cpu_of(threading.get_native_id()) == before:
                break
        allowed = os.sched_getaffinity(h.thread.native_id)
    assert allowed == os.sched_getaffinity(0) - {before}
    # the caller let it take the GIL: it is up, or the caller waited as long as it may
    # (Event.wait's clock is not perf_counter's: measured, it returned 17 us early once)
    assert h.ctl[team.STATE] == team.AWAKE or waited >= 0.9 * WAKE_WAIT_SECONDS


def test_timing_only_the_calls_a_decision_reads_keeps_every_decision() -> None:
    """A choice that is told the time of only the calls ``timed()`` names (the rest
    counted by ``skip()``) takes the same way at every call, over cycles in which either
    way is the faster, as one told the time of every call."""
    from bnprop.kernels._helper_thread import CYCLE, _Choice

    every, some = _Choice(), _Choice()
    rng = np.random.default_rng(0)
    told, ways = 0, set()
    for cycle in range(8):
        helper_faster = cycle % 3 != 1
        for _ in range(CYCLE):
            used = every.now()
            assert some.now() == used
            seconds = (1.0 if used == helper_faster else 1.3) * (1 + 0.05 * rng.random())
            every.report(used, seconds)
            if some.timed():
                some.report(used, seconds)
                told += 1
            else:
                some.skip()
            assert some.use == every.use and some.calls == every.calls
            ways.add(every.use)
    assert told < 8 * CYCLE // 20  # 2 x PROBE calls a cycle, not every one
    assert ways == {True, False}  # the kept way switched as the times did


def test_a_step_reports_its_time_only_when_a_decision_reads_it() -> None:
    """The compiled step asks ``for_timed_call``: its choice counts every step, and keeps
    times only of the calls that ``timed()`` named."""
    from bnprop.kernels import _helper_thread
    from bnprop.kernels._helper_thread import PROBE, WARM

    team.prefer(None)
    rng = np.random.default_rng(5)
    net = bnprop.MLP([784, 100, 100, 100, 10], seed=0)
    X, opt = rng.random((60, 784), dtype=np.float32), bnprop.SGD(0.1)
    kept: list[int] = []
    with threads.using(2):
        for _ in range(WARM + 3 * PROBE):
            net.train_step(X, rng.integers(0, 10, 60), opt)
            (choice,) = [c for k, c in _helper_thread._choices.items() if k[0] == "step"]
            kept.append(len(choice.recent[True]) + len(choice.recent[False]))
    assert choice.calls == WARM + 3 * PROBE
    assert kept[WARM - 1] == 0  # the warm-up is not timed
    assert kept[WARM + 2 * PROBE - 1] == 2 * PROBE  # the first probe and the calls after it
    assert kept[-1] == 2 * PROBE  # then nothing until the calls before the next probe
