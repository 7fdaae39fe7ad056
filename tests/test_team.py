"""The helper thread (bnprop.kernels.team): parts give the whole result's bits, whoever
computes them; the caller never waits for a part nobody runs; the helper sleeps when idle."""

from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest

import bnprop
from bnprop import threads
from bnprop.kernels import blas

pytestmark = pytest.mark.skipif(not blas.available(), reason="needs NumPy's scipy-openblas")


@pytest.fixture(autouse=True)
def _always_the_helper():  # type: ignore[no-untyped-def]
    """The helper takes parts whatever this machine measures (its choice: a test below)."""
    if blas.available():
        team.prefer(True)
    yield
    if blas.available():
        team.prefer(None)

if blas.available():
    from numba import njit

    from bnprop.kernels import _atomics, _cblas, _cuts, optim, team

    @njit
    def _team_gemm(kind, A, B, C, ctl, use, cut):  # type: ignore[no-untyped-def]
        owned = team.acquire(ctl, use)
        if kind == 0:
            team.gemm(team.nt(A, B, C), ctl, owned, cut)
        elif kind == 1:
            team.gemm(team.tn(A, B, C), ctl, owned, cut)
        else:
            team.gemm(team.nn(A, B, C), ctl, owned, cut)
        team.release(ctl, owned)

    @njit
    def _team_beside(A, B, C, D, E, ctl, use):  # type: ignore[no-untyped-def]
        owned = team.acquire(ctl, use)
        team.gemm_beside(team.tn(A, B, C), team.nn(A, D, E), ctl, owned)
        team.release(ctl, owned)

    @njit
    def _whole(kind, A, B, C):  # type: ignore[no-untyped-def]
        if kind == 0:
            _cblas.gemm_nt(A, B, C)
        elif kind == 1:
            _cblas.gemm_tn(A, B, C)
        else:
            _cblas.gemm_nn(A, B, C)

    @njit
    def _atomic_ops(a):  # type: ignore[no-untyped-def]
        won = _atomics.cas(a, 0, 5, 7)        # a[0] == 5: swapped
        lost = _atomics.cas(a, 0, 5, 9)       # a[0] == 7 now: not swapped
        _atomics.store_release(a, 1, 11)
        _atomics.pause()
        return won, lost, _atomics.load_acquire(a, 0), _atomics.load_acquire(a, 1)


SHAPES = [(60, 784, 100), (60, 100, 100), (61, 101, 99), (100, 60, 784), (17, 300, 5),
          (300, 17, 400), (60, 100, 784), (40, 60, 784)]  # the last two: Z in small blocks


def _operands(kind: int, M: int, N: int, K: int, dtype: type, rng: np.random.Generator):
    A = rng.standard_normal((K, M) if kind == 1 else (M, K)).astype(dtype)
    B = rng.standard_normal((N, K) if kind == 0 else (K, N)).astype(dtype)
    return A, B


def test_atomics_do_what_they_say() -> None:
    a = np.array([5, 0], np.int64)
    assert _atomic_ops(a) == (True, False, 7, 11)
    assert a.tolist() == [7, 11]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", [0, 1, 2], ids=["nt", "tn", "nn"])
def test_a_gemm_is_split_only_where_the_parts_give_the_whole_bits(kind: int,
                                                                  dtype: type) -> None:
    """``may_split`` checked each shape on its own random operands; other operands (other
    values, scales, signs) must give the whole call's bits too."""
    rng = np.random.default_rng(kind)
    ctl = np.zeros(team.SLOTS, np.int64)  # no helper behind it: the caller runs both parts
    for M, N, K in SHAPES:
        split = team.may_split(np.dtype(dtype), kind, M, N, K)
        assert split == (team.may_split(np.dtype(dtype), kind, M, N, K))  # cached
        if 2 * M * N * K < team.SPLIT_FLOPS:
            assert not split
        for scale in (1.0, 1e-3, 1e5):
            A, B = _operands(kind, M, N, K, dtype, rng)
            A *= dtype(scale)
            whole, parts = np.empty((M, N), dtype), np.full((M, N), np.nan, dtype)
            _whole(kind, A, B, whole)
            _team_gemm(kind, A, B, parts, ctl, False, split)
            np.testing.assert_array_equal(parts, whole, err_msg=f"{(M, N, K)}")
            a, b = (A, B.T) if kind == 0 else (A.T, B) if kind == 1 else (A, B)
            assert np.array_equal(whole, threads.matmul(a, b, np.empty_like(whole)))


def test_the_first_layer_of_the_ioffe_step_is_split_in_float32() -> None:
    """Where the speed comes from (if this BLAS ever stops matching, the step stays
    correct and only loses the helper's share of its two largest GEMMs). On 1 OpenBLAS
    thread, as in a step on two of bnprop's threads."""
    with threads.blas_threads_limited(1):
        assert team.may_split(np.dtype(np.float32), team.NT, 60, 100, 784)
        assert team.may_split(np.dtype(np.float32), team.TN, 100, 784, 60)
        assert not team.may_split(np.dtype(np.float32), team.NT, 60, 10, 100)


@pytest.mark.parametrize(("M", "h"), [(100, 52), (16, 8), (18, 8), (20, 12), (784, 392),
                                      (101, 52), (99, 48)])
def test_a_dw_is_cut_by_rows_near_the_middle_the_caller_taking_the_larger_part(
        M: int, h: int) -> None:
    """``C = A^T B`` split by rows at the multiple of 4 nearest ``M / 2`` (upper on a
    tie): the calling thread, which starts first, computes rows ``[0, h)``."""
    assert team.preferred_cut(team.TN, M, 784) == h
    assert team.preferred_cut(team.NT, 60, 100) == -48  # Z = O W^T (60 x 100): columns


def test_the_cuts_tried_are_near_the_middle_the_preferred_first() -> None:
    assert team.cuts(team.NT, 60, 100) == [-48, 32, -56, 24, -64, -32, -72, 16]
    for kind, M, N in [(team.NT, 512, 1024), (team.TN, 1024, 1024), (team.NN, 61, 7),
                       (team.TN, 4096, 256)]:
        tried = team.cuts(kind, M, N)
        assert tried[0] == team.preferred_cut(kind, M, N)
        assert len(set(tried)) == len(tried) <= _cuts.CUT_TRIES
        sides = [M if c > 0 else N for c in tried[1:]]
        assert all(s <= 4 * abs(c) <= 3 * s for c, s in zip(tried[1:], sides, strict=True))
        off = [abs(abs(c) / s - 0.5) for c, s in zip(tried[1:], sides, strict=True)]
        assert off == sorted(off)


def test_a_cut_that_changes_the_bits_gives_way_to_the_next(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Where the preferred cut does not keep the bits (OpenBLAS's Haswell float32
    kernels: only row cuts at multiples of 24 do), the next cut that does is taken, and
    without any the GEMM runs whole."""
    from bnprop.kernels import _cuts

    real = _cuts._parts_match
    refused = {team.preferred_cut(team.NT, 60, 100), 32}
    monkeypatch.setattr(_cuts, "_parts_match", lambda kind, A, B, whole, parts, cut: (
        cut not in refused and real(kind, A, B, whole, parts, cut)))
    monkeypatch.setattr(_cuts, "_verified", {})
    shape = (np.dtype(np.float64), team.NT, 60, 100, 784)
    with threads.blas_threads_limited(1):
        cut = team.may_split(*shape)
        assert cut not in refused and team.cuts(team.NT, 60, 100).index(cut) >= 2
        rng = np.random.default_rng(3)
        A, B = _operands(0, 60, 100, 784, np.float64, rng)
        whole, parts = np.empty((60, 100)), np.full((60, 100), np.nan)
        _whole(0, A, B, whole)
        _team_gemm(0, A, B, parts, np.zeros(team.SLOTS, np.int64), False, cut)
        np.testing.assert_array_equal(parts, whole)
        monkeypatch.setattr(_cuts, "_parts_match", lambda *args: False)
        monkeypatch.setattr(_cuts, "_verified", {})
        assert team.may_split(*shape) == 0


def test_an_awake_helper_that_never_comes_does_not_block_the_caller() -> None:
    """``ctl`` says the helper is awake, but no thread reads it: every posted part is
    claimed back by the caller."""
    ctl = np.zeros(team.SLOTS, np.int64)
    ctl[team.STATE] = team.AWAKE
    rng = np.random.default_rng(1)
    A, B = _operands(0, 60, 100, 784, np.float32, rng)
    whole, parts = np.empty((60, 100), np.float32), np.empty((60, 100), np.float32)
    with threads.blas_threads_limited(1):
        cut = team.may_split(np.dtype(np.float32), team.NT, 60, 100, 784)
        assert cut != 0
        _whole(0, A, B, whole)
        _team_gemm(0, A, B, parts, ctl, True, cut)
    np.testing.assert_array_equal(parts, whole)
    assert ctl[team.SEQ] == 1 and ctl[team.CLAIM] == 3 and ctl[team.OWNER] == 0


def _until_helper_works(fn, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    # a hang guard: the helper's first use compiles its loop (over 10 s from a cold cache)
    start, deadline = team.parts_done(), time.monotonic() + timeout
    while team.parts_done() == start:
        assert time.monotonic() < deadline, "the helper never took a part"
        fn()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_helper_takes_parts_and_the_bits_stay(dtype: type) -> None:
    with threads.using(2):  # OpenBLAS on 1 thread: the whole GEMMs of the comparison too
        _helper_takes_parts(dtype)


def _helper_takes_parts(dtype: type) -> None:
    rng = np.random.default_rng(2)
    cases = []
    for kind in (0, 1, 2):
        A, B = _operands(kind, 60, 100, 784, dtype, rng)
        whole = np.empty((60, 100), dtype)
        _whole(kind, A, B, whole)
        cases.append((kind, A, B, whole))
    dZ, O = rng.standard_normal((60, 100)).astype(dtype), rng.standard_normal((60, 50))
    O, W = O.astype(dtype), rng.standard_normal((100, 50)).astype(dtype)
    dW_ref, dO_ref = np.empty((100, 50), dtype), np.empty((60, 50), dtype)
    _whole(1, dZ, O, dW_ref)
    _whole(2, dZ, W, dO_ref)

    def work() -> None:
        for kind, A, B, whole in cases:
            ctl, use = team.for_call()
            out = np.empty_like(whole)
            split = team.may_split(np.dtype(dtype), kind, 60, 100, 784)
            _team_gemm(kind, A, B, out, ctl, use, split)
            np.testing.assert_array_equal(out, whole)
        ctl, use = team.for_call()
        dW, dO = np.empty((100, 50), dtype), np.empty((60, 50), dtype)
        _team_beside(dZ, O, dW, W, dO, ctl, use)
        np.testing.assert_array_equal(dW, dW_ref)
        np.testing.assert_array_equal(dO, dO_ref)

    _until_helper_works(work)
    for _ in range(50):
        work()


def test_the_helper_runs_the_loop_of_each_tasks_dtype() -> None:
    """The helper's loop is compiled for one float type at a time (so a process compiles
    only the types it uses): a task of the other type sends the thread to that type's
    loop, both ways, and every part keeps its bits."""
    with threads.using(2):
        for dtype in (np.float64, np.float32, np.float64, np.float32):
            _helper_takes_parts(dtype)  # until the helper has taken a part of this type
            assert team.helper().code == (_cblas.F64 if dtype is np.float64 else _cblas.F32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [10, team.SPLIT_ELEMENTS - 1, 99_131] if blas.available() else [])
@pytest.mark.parametrize("kind", ["adam", "sgd", "sgd-nesterov-first"])
def test_update_parts_give_the_whole_update_bits(kind: str, n: int, dtype: type) -> None:
    rng = np.random.default_rng(n)
    p, g = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    a, b = rng.standard_normal(n).astype(dtype), rng.random(n).astype(dtype)
    if kind == "adam":
        coef = np.array([0.01, 0.1, 0.999, 0.001, 0.003, 0.03, 1e-8], dtype)
        code, flags = team.ADAM, 0
        ref = [x.copy() for x in (p, g, a, b)]
        optim.adam_flat(ref[0], ref[1], ref[2], ref[3], coef)
    else:
        coef = np.array([0.01, 0.9, 0.05], dtype)
        code, flags = team.SGD, (2 if kind == "sgd" else 7)
        ref = [x.copy() for x in (p, g, a, a)]
        optim.sgd_flat(ref[0], ref[1], ref[2], coef, flags & 1 != 0, True, flags & 4 != 0)
        ref[3] = ref[2]
    with threads.using(2):
        for _ in range(3):  # whether or not the helper is awake yet: the same bits
            q, s, c, d = (x.copy() for x in (p, g, a, b))
            if kind != "adam":
                d = c
            ctl, use = team.for_call()
            team.update(code, q, s, c, d, coef, flags, ctl, use)
            for got, want in zip((q, s, c, d), ref, strict=True):
                np.testing.assert_array_equal(got, want)


def _train(steps: int, n_threads: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.random((60, 784), dtype=np.float32)
    y = rng.integers(0, 10, 60)
    net = bnprop.MLP([784, 100, 100, 100, 10], seed=seed)
    opt = bnprop.Adam(0.003)
    with threads.using(n_threads):
        for _ in range(steps):
            net.train_step(X, y, opt)
    return [p.copy() for _, p in net.named_parameters()] + [
        b.copy() for _, b in net.named_buffers()]


def test_the_thread_count_does_not_change_a_training_run() -> None:
    one, two = _train(30, 1), _train(30, 2)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)


def test_two_callers_at_once_get_their_own_bits() -> None:
    """One owns the helper at a time; the other computes every part itself."""
    want = [_train(40, 1, seed) for seed in (0, 1)]
    got: dict[int, list[np.ndarray]] = {}
    workers = [threading.Thread(target=lambda s=s: got.__setitem__(s, _train(40, 2, s)))
               for s in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for seed in (0, 1):
        for a, b in zip(got[seed], want[seed], strict=True):
            np.testing.assert_array_equal(a, b)


def test_the_helper_sleeps_when_idle_and_wakes_for_the_next_call() -> None:
    _train(5, 2)
    deadline = time.monotonic() + 5.0
    while team.helper().ctl[team.STATE] != team.ASLEEP:  # IDLE_SECONDS after its last part
        assert time.monotonic() < deadline, "the helper kept spinning"
        time.sleep(0.01)
    before = team.parts_done()
    with threads.using(2):
        team.for_call()  # wakes it; the helper marks itself awake
        deadline = time.monotonic() + 5.0
        while team.helper().ctl[team.STATE] != team.AWAKE:
            assert time.monotonic() < deadline, "the helper did not wake up"
            time.sleep(0.001)
    _until_helper_works(lambda: _train(2, 2))
    assert team.parts_done() > before


def _child_trains(queue) -> None:  # type: ignore[no-untyped-def]
    from bnprop.kernels import _helper_thread

    fresh = not _helper_thread._choices and _helper_thread._pinned is None
    params = _train(10, 2)
    queue.put((float(sum(float(p.sum()) for p in params)), fresh))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # jax, when another test loaded it
def test_a_forked_child_trains_with_a_fresh_helper() -> None:
    _train(3, 2)  # the parent's helper is running
    team.prefer(False)  # and its choice is pinned: the child measures its own
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_trains, args=(queue,))
    child.start()
    total, fresh = queue.get(timeout=120)
    child.join(timeout=30)
    assert child.exitcode == 0
    assert fresh
    assert total == float(sum(float(p.sum()) for p in _train(10, 1)))


def _using_block_elsewhere() -> tuple[threading.Event, list, threading.Thread]:  # type: ignore[type-arg]
    """A thread inside a ``using(2)`` block: it stays in until ``leave`` is set, records
    OpenBLAS's thread count in ``seen``, then leaves."""
    entered, leave, seen = threading.Event(), threading.Event(), []

    def inside() -> None:
        with threads.using(2):
            entered.set()
            leave.wait(10)
            seen.append(threads.blas_threads())

    worker = threading.Thread(target=inside)
    worker.start()
    entered.wait(10)
    return leave, seen, worker


def test_a_using_block_ending_in_one_thread_keeps_openblas_on_one_thread_in_another() -> None:
    """OpenBLAS's thread count is the process's: the first block out used to restore it
    while another thread was still inside its block (its GEMMs then ran on two OpenBLAS
    threads, and some gave other bits)."""
    if threads.blas_threads() is None:
        pytest.skip("no OpenBLAS found to set")
    before = threads.blas_threads()
    with threads.using(2):
        leave, seen, worker = _using_block_elsewhere()
    leave.set()  # this thread's block has ended; the worker's has not
    worker.join(10)
    assert seen == [1]
    assert threads.blas_threads() == before


def test_set_threads_during_another_threads_using_block_keeps_openblas_on_one_thread() -> None:
    if threads.blas_threads() is None:
        pytest.skip("no OpenBLAS found to set")
    before, after = threads.blas_threads(), []

    def main_thread_like() -> None:
        leave, _, worker = _using_block_elsewhere()
        threads.set_threads(2)  # this thread now wants OpenBLAS on 1 thread for good
        leave.set()  # the other block ends after it
        worker.join(10)
        after.append(threads.blas_threads())

    try:
        t = threading.Thread(target=main_thread_like)
        t.start()
        t.join(20)
        assert after == [1]
    finally:
        threads.set_blas_threads(before)


def test_may_split_is_checked_at_the_current_openblas_count() -> None:
    """Parts that match on 1 OpenBLAS thread need not match on several: the verdict is
    kept per count (a verdict from a using(1) run was reused outside any block)."""
    if threads.blas_threads() is None:
        pytest.skip("no OpenBLAS found to set")
    shape = (np.dtype(np.float64), team.NT, 61, 100, 784)
    with threads.blas_threads_limited(1):
        team.may_split(*shape)
    with threads.blas_threads_limited(2):
        team.may_split(*shape)
    keys = {k[-1] for k in _cuts._verified if k[:-1] == (shape[0].str, *shape[1:])}
    assert keys == {1, 2}
    rng = np.random.default_rng(5)
    A, B = _operands(0, 61, 100, 784, np.float64, rng)
    for count in (1, 2):
        with threads.blas_threads_limited(count):
            split = team.may_split(*shape)
            whole, parts = np.empty((61, 100)), np.empty((61, 100))
            _whole(0, A, B, whole)
            _team_gemm(0, A, B, parts, np.zeros(team.SLOTS, np.int64), False, split)
            np.testing.assert_array_equal(parts, whole)


_HASWELL_CHILD = """
import json, numpy as np
from bnprop import threads
from bnprop.kernels import blas, team
cuts = {}
with threads.blas_threads_limited(1):
    for dt in ("float32", "float64"):
        for kind, M, N, K in [(0, 512, 1024, 1024), (1, 1024, 1024, 512), (2, 512, 1024, 1024),
                              (0, 60, 100, 784), (1, 100, 784, 60)]:
            cuts[f"{dt} {kind} {M} {N} {K}"] = team.may_split(np.dtype(dt), kind, M, N, K)
print(json.dumps({"core": blas.corename(), "cuts": cuts}))
"""


def _has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return {"avx2", "fma"} <= set(flags)


@pytest.mark.skipif(not _has_avx2(), reason="OpenBLAS's Haswell kernels need AVX2 and FMA")
def test_with_openblas_haswell_kernels_the_steps_gemms_still_split() -> None:
    """Under ``OPENBLAS_CORETYPE=Haswell`` (set on some machines for all processes) the
    float32 kernels keep the whole product's bits only for row cuts at multiples of 24;
    the GEMMs of the wide and Ioffe steps must still find a cut, or the helper thread
    takes no part of them (measured: the wide float32 step 67 ms instead of 36)."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell"}
    done = subprocess.run([sys.executable, "-c", _HASWELL_CHILD], env=env, text=True,
                          capture_output=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["core"] == "Haswell"
    assert all(cut != 0 for cut in got["cuts"].values()), got["cuts"]


def _fork_child_uses_threads(queue) -> None:  # type: ignore[no-untyped-def]
    with threads.using(2):
        queue.put(threads.num_threads())


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # jax, when another test loaded it
def test_a_child_forked_while_another_thread_holds_the_blas_lock_does_not_hang() -> None:
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            with threads.using(2):
                pass

    worker = threading.Thread(target=churn)
    worker.start()
    ctx = multiprocessing.get_context("fork")
    try:
        for _ in range(6):
            queue = ctx.Queue()
            child = ctx.Process(target=_fork_child_uses_threads, args=(queue,))
            child.start()
            child.join(timeout=20)
            hung = child.exitcode is None
            if hung:
                child.kill()
            assert not hung, "a forked child hung in threads.using"
            assert queue.get(timeout=5) == 2
    finally:
        stop.set()
        worker.join(10)


def test_a_helper_made_but_not_started_is_started_by_the_next_call() -> None:
    """An interrupt between making the thread and starting it (or before the event is set)
    must not lose the helper for good."""
    from bnprop.kernels import _helper_thread

    h = _helper_thread._Helper()
    h.start_or_wake()
    h.stop()  # a started helper, stopped: the next one is made but left unstarted
    h2 = _helper_thread._Helper()
    h2.thread = threading.Thread(target=h2._main, daemon=True)
    h2.idle_spins = 1000
    h2.start_or_wake()
    deadline = time.monotonic() + 5.0
    while h2.ctl[team.STATE] != team.AWAKE and h2.ctl[team.PARTS] == 0:
        if h2.thread.ident is not None and h2.ctl[team.STATE] == team.ASLEEP \
                and not h2.wake.is_set():
            break  # it ran and went back to sleep already
        assert time.monotonic() < deadline, "the helper was never started"
        time.sleep(0.001)
    assert h2.thread.ident is not None
    h2.stop()


def test_gemm_sequence_refuses_products_that_do_not_fit() -> None:
    from bnprop._validate import InputError

    for bad in (None, 5, [(1, 2, 3)]):
        with pytest.raises(InputError, match=r"products: expected a list of \(a, b, out"):
            threads.gemm_sequence(bad)  # type: ignore[arg-type]
    a = np.ones((60, 784), np.float32)
    with pytest.raises(InputError, match=r"products\[0\]: a \(60, 784\) @ b \(700, 100\)"):
        threads.gemm_sequence([(a, np.ones((700, 100), np.float32),
                                np.empty((60, 100), np.float32), False)])
    with pytest.raises(InputError, match="does not give out"):
        threads.gemm_sequence([(a, np.ones((784, 100), np.float32),
                                np.empty((60, 50), np.float32), False)])
    with pytest.raises(InputError, match="one dtype"):
        threads.gemm_sequence([(a, np.ones((784, 100)), np.empty((60, 100)), False)])
    with pytest.raises(InputError, match="transposed"):
        threads.gemm_sequence([(np.ones((784, 60), np.float32).T,
                                np.ones((100, 784), np.float32).T,
                                np.empty((60, 100), np.float32), False)])
    out = np.empty((60, 100), np.float32)
    call = threads.gemm_sequence([(a, np.ones((784, 100), np.float32), out, False)])
    with threads.using(1):
        call()
    np.testing.assert_array_equal(out, np.full((60, 100), 784, np.float32))
