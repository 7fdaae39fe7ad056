"""The helper's loop compiled in a second process on a cold cache (kernels/_warm.py): it
is then loaded from the cache, not compiled again, and nothing is done apart where it
cannot help."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from numba import njit

from bnprop.kernels import blas

pytestmark = pytest.mark.skipif(not blas.available(), reason="needs NumPy's scipy-openblas")

if blas.available():
    from bnprop.kernels import _cblas, _helper_thread, _warm


def test_a_loop_compiled_or_cached_here_is_not_cold() -> None:
    args = _helper_thread.loop_args(_cblas.F32)
    _helper_thread.helper_loop.compile(tuple(_typeof(a) for a in args))
    assert not _warm.cold(_helper_thread.helper_loop, args)


def test_a_function_without_a_disk_cache_is_never_cold() -> None:
    @njit(cache=False)
    def f(x):  # type: ignore[no-untyped-def]
        return x + 1

    assert not _warm.cold(f, (1,))
    assert not _warm.cold(object(), (1,))  # not a Numba function at all: unsure, so no


@pytest.mark.parametrize("argv", [[], ["x"], ["2"], ["0", "1"]])
def test_the_second_process_names_a_bad_argument(argv: list[str],
                                                 capsys: pytest.CaptureFixture) -> None:
    assert _warm._main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected one dtype code, 0 (float32) or 1" in err


def test_mpi_ranks_compile_in_their_own_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _warm.MPI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not _warm.in_mpi_job()
    monkeypatch.setenv("PMI_RANK", "1")
    assert _warm.in_mpi_job()


def test_calls_are_not_timed_while_the_loop_compiles_apart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While the helper waits for the second process it takes no part, so the calls'
    times would decide against it: they are neither timed nor counted."""
    from bnprop import threads
    from bnprop.kernels import team

    team.prefer(None)
    monkeypatch.setattr(_helper_thread, "_helper", _helper_thread._Helper())
    monkeypatch.setattr(_helper_thread._helper, "warming", True)
    monkeypatch.setattr(_helper_thread._helper, "start_or_wake", lambda: None)
    try:
        with threads.using(2):
            for _ in range(3 * _helper_thread.WARM):
                _, _, timed = _helper_thread.for_timed_call(("warm test",))
                assert not timed
            assert _helper_thread._choices[("warm test",)].calls == 0
            _helper_thread._helper.warming = False
            for _ in range(_helper_thread.WARM + 1):
                _, use, timed = _helper_thread.for_timed_call(("warm test",))
                if timed:
                    _helper_thread.report(use, 1e-3, ("warm test",))
            assert _helper_thread._choices[("warm test",)].calls == _helper_thread.WARM + 1
    finally:
        team.prefer(None)


def test_a_second_process_still_running_is_stopped(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``stop`` (at exit) kills a second process still compiling; its caller then gets
    False (and would compile the loop itself)."""
    import threading
    import time

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))  # the child's: empty
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(_warm.compile_apart(_cblas.F32)))
    waiter.start()
    deadline = time.monotonic() + 30
    while _warm._running is None:
        assert time.monotonic() < deadline, "the second process did not start"
        time.sleep(0.01)
    child = _warm._running
    time.sleep(0.5)
    assert child.poll() is None  # compiling (tens of seconds on an empty cache)
    _warm.stop()
    waiter.join(timeout=10)
    assert got == [False] and child.poll() is not None and _warm._running is None


def test_the_second_process_compiles_into_the_cache_and_the_helper_loads_it(
        tmp_path: Path) -> None:
    """A process on an empty cache (``NUMBA_CACHE_DIR``) wakes its helper: the helper's
    float32 loop is compiled by ``python -m bnprop.kernels._warm 0`` and then loaded
    from the cache (a cache hit in this process, no compile), and the helper takes a
    part of an optimizer update with its bits."""
    script = textwrap.dedent("""
        import time
        import numpy as np
        from numba import typeof
        from bnprop import threads
        from bnprop.kernels import _cblas, _helper_thread, _warm, optim, team

        args = _helper_thread.loop_args(_cblas.F32)
        assert _warm.cold(_helper_thread.helper_loop, args)
        seen = []
        real = _warm.compile_apart
        _warm.compile_apart = lambda code: seen.append(real(code)) or seen[-1]
        team.prefer(True)
        n = 4 * team.SPLIT_ELEMENTS
        rng = np.random.default_rng(0)
        p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        deadline = time.monotonic() + 600
        with threads.using(2):
            while team.parts_done() == 0:
                assert time.monotonic() < deadline, "the helper never took a part"
                want = p.copy()
                optim.sgd_flat(want, g, g[:0], np.array([0.0, 0.0, 0.01], np.float32),
                               False, False, False)
                ctl, use = team.for_call()
                team.update(team.SGD, p, g, g[:0], g[:0], np.array([0.0, 0.0, 0.01], np.float32),
                            0, ctl, use)
                assert np.array_equal(p, want)
                time.sleep(0.01)
        sig = tuple(typeof(a) for a in args)
        stats = _helper_thread.helper_loop.stats
        print(seen, stats.cache_hits[sig], stats.cache_misses[sig])
    """)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    for name in _warm.MPI_VARIABLES:
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[True]", "1", "0"]  # compiled apart, then loaded


def _typeof(a: object) -> object:
    from numba import typeof

    return typeof(a)
