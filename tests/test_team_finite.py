"""The finiteness test of the flat gradients in the optimizer update's two halves
(kernels/team.py all_finite): the whole array's answer, whichever thread tests the second
half, and a non-finite gradient in either half stops the compiled step."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bnprop import threads
from bnprop.kernels import blas

pytestmark = pytest.mark.skipif(not blas.available(), reason="needs NumPy's scipy-openblas")

if blas.available():
    from numba import njit

    from bnprop.kernels import team

    @njit
    def _finite(p, ctl, use):  # type: ignore[no-untyped-def]
        owned = team.acquire(ctl, use)
        ok = team.all_finite(p, ctl, owned)
        team.release(ctl, owned)
        return ok

SIZES = [10, team.SPLIT_ELEMENTS - 1, team.SPLIT_ELEMENTS, 100_010] if blas.available() else []


def _cases(n: int, dtype: type) -> list[tuple[np.ndarray, bool]]:
    """Arrays of ``n`` elements with a bad value (or none) at the ends of both halves."""
    h = (n // 2 + 8) // 16 * 16
    base = np.random.default_rng(n).standard_normal(n).astype(dtype)
    cases = [(base, True)]
    for where in sorted({0, max(0, h - 1), min(h, n - 1), n - 1}):
        for bad in (np.inf, -np.inf, np.nan):
            a = base.copy()
            a[where] = bad
            cases.append((a, False))
    big = base.copy()
    big[-1] = np.finfo(dtype).max  # finite to the last bit
    cases.append((big, True))
    return cases


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_a_second_half_taken_back_by_the_caller_gives_the_whole_answer(n: int,
                                                                      dtype: type) -> None:
    for a, want in _cases(n, dtype):
        ctl = np.zeros(team.SLOTS, np.int64)
        ctl[team.STATE] = team.AWAKE  # awake, but no thread reads ctl
        assert _finite(a, ctl, True) == want
        assert ctl[team.OWNER] == 0
        assert ctl[team.CLAIM] == (3 if n >= team.SPLIT_ELEMENTS else 0)  # taken back


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_second_half_on_the_helper_gives_the_whole_answer(dtype: type) -> None:
    team.prefer(True)
    try:
        with threads.using(2):
            cases = _cases(100_010, dtype)
            # a hang guard: the helper's first use compiles its loop (over 10 s cold)
            start, deadline = team.parts_done(), time.monotonic() + 120.0
            while team.parts_done() == start:  # until the helper has taken a half
                assert time.monotonic() < deadline, "the helper never took a half"
                assert _finite(cases[0][0], *team.for_call())
            for _ in range(5):
                for a, want in cases:
                    assert _finite(a, *team.for_call()) == want
    finally:
        team.prefer(None)


@pytest.mark.parametrize("where", [0, 99_999])
def test_the_compiled_commit_writes_nothing_after_a_non_finite_gradient(where: int) -> None:
    """The compiled step's commit (kernels/_mlp_compiled.py) on the helper's second half
    or the caller's first: False, and no running statistic, counter or parameter moves;
    nor with finite gradients and a loss that is not finite (given, or computed there);
    once all are finite, all of them (the SGD update in halves: p -= g * lr)."""
    from bnprop.kernels import _mlp_compiled

    grads = np.random.default_rng(1).standard_normal(100_010).astype(np.float32)
    grads[where] = np.nan
    V = np.zeros((8, 1, 4))  # _mlp_compiled.MEAN, M2, VAR, ... of one layer of 4
    V[_mlp_compiled.MEAN], V[_mlp_compiled.VAR] = 1.0, 2.0
    V[_mlp_compiled.EPS, 0, 0], V[_mlp_compiled.MOMENTUM, 0, 0] = 1e-5, 0.1
    rm, rv, tracked = np.zeros(4, np.float32), np.ones(4, np.float32), np.array(3)
    p = np.ones(100_010, np.float32)
    sgd = (team.SGD, p, grads, p[:0], p[:0], np.array([0, 0, 0.5], np.float32), 0)
    F = np.zeros(3 * 2 + 4)  # _mlp_compiled.S_Y, TOTAL, LOG_TOTAL of two rows, DB_ACC
    S_y, log_total = F[0:2], F[4:6]
    S_y[:], log_total[:] = 1.0, (4.0, 2.0)  # the loss's terms

    def commit(loss: float) -> tuple[float, bool]:
        return _mlp_compiled.commit(grads, V, 60, (rm,), (rv,), (tracked,),
                                    *team.for_call(), sgd, F, 2, loss)

    team.prefer(True)
    try:
        with threads.using(2):
            # a hang guard: the helper's first use compiles its loop (over 10 s cold)
            start, deadline = team.parts_done(), time.monotonic() + 120.0
            while team.parts_done() == start:
                assert time.monotonic() < deadline, "the helper never took a half"
                assert commit(0.5) == (0.5, False)
            assert (rm == 0).all() and (rv == 1).all() and int(tracked) == 3
            assert (p == 1).all()
            grads[where] = 0.0
            for loss in (np.inf, -np.inf):  # a loss that is not finite: nothing either
                assert commit(loss) == (loss, False)
            log_total[0] = np.inf  # NaN: the mean of log_total - S_y, computed there
            assert commit(np.nan) == (np.inf, False)
            assert (rm == 0).all() and int(tracked) == 3 and (p == 1).all()
            log_total[:] = 4.0, 2.0  # (the call subtracted S_y in place)
            assert commit(np.nan) == ((4.0 - 1.0 + 2.0 - 1.0) / 2, True)
            assert int(tracked) == 4 and (rm == np.float32(0.1)).all()
            np.testing.assert_array_equal(p, np.float32(1) - grads * np.float32(0.5))
    finally:
        team.prefer(None)
