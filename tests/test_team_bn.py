"""The forward BN pass in two halves of rows (kernels/_team_bn.py): the whole pass's bits,
whether the helper thread or the caller computes the second half."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bnprop import threads
from bnprop.kernels import blas

pytestmark = pytest.mark.skipif(not blas.available(), reason="needs NumPy's scipy-openblas")

if blas.available():
    from numba import njit

    from bnprop.kernels import _bn_compiled, _team_bn, team
    from bnprop.kernels.activations import ACTIVATION_CODES

    @njit
    def _rows(Z, mean, inv_std, gamma, beta, act, Y, ctl, use):  # type: ignore[no-untyped-def]
        """The compiled step's way: Obar into Z, no A."""
        owned = team.acquire(ctl, use)
        _team_bn.forward_rows(Z, mean, inv_std, gamma, beta, act, Z, Y, None, ctl, owned)
        team.release(ctl, owned)

    @njit
    def _rows_kept(Z, mean, inv_std, gamma, beta, act, Obar, Y, A, ctl,
                   use):  # type: ignore[no-untyped-def]
        """The layer functions' way: Z kept, Obar and A apart."""
        owned = team.acquire(ctl, use)
        _team_bn.forward_rows(Z, mean, inv_std, gamma, beta, act, Obar, Y, A, ctl, owned)
        team.release(ctl, owned)

SHAPES = [(60, 100), (61, 99), (2, 4096), (3, 10)]


def _case(m: int, n: int, dtype: type, act: str):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(m * n)
    Z = (3.0 * rng.standard_normal((m, n)) + 1.0).astype(dtype)
    mean, inv_std = Z.mean(axis=0, dtype=np.float64), 1.0 / (Z.std(axis=0, dtype=np.float64)
                                                             + 1e-3)
    gamma = (1.0 + rng.standard_normal(n)).astype(dtype)
    beta = rng.standard_normal(n).astype(dtype)
    Obar, Y = Z.copy(), np.empty_like(Z)
    _bn_compiled._forward_apply(Obar, mean, inv_std, gamma, beta, ACTIVATION_CODES[act], Obar,
                                Y, None)
    return (Z, mean, inv_std, gamma, beta, ACTIVATION_CODES[act]), Obar, Y


def _check(args, Obar, Y, ctl, use) -> None:  # type: ignore[no-untyped-def]
    Z, mean, inv_std, gamma, beta, act = args
    got_Z, got_Y = Z.copy(), np.full_like(Z, np.nan)
    _rows(got_Z, mean, inv_std, gamma, beta, act, got_Y, ctl, use)
    np.testing.assert_array_equal(got_Z, Obar)
    np.testing.assert_array_equal(got_Y, Y)
    got_Obar, got_A = np.full_like(Z, np.nan), np.full_like(Z, np.nan)
    got_Y[:] = np.nan
    _rows_kept(Z, mean, inv_std, gamma, beta, act, got_Obar, got_Y, got_A, ctl, use)
    np.testing.assert_array_equal(got_Obar, Obar)
    np.testing.assert_array_equal(got_Y, Y)
    np.testing.assert_array_equal(got_A, gamma * Obar + beta)  # A = gamma Obar + beta


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu", "identity"])
def test_halves_taken_back_by_the_caller_give_the_whole_pass(act: str, dtype: type) -> None:
    """``ctl`` says the helper is awake but no thread reads it: the caller takes the
    second half back."""
    for m, n in SHAPES:
        ctl = np.zeros(team.SLOTS, np.int64)
        ctl[team.STATE] = team.AWAKE
        args, Obar, Y = _case(m, n, dtype, act)
        _check(args, Obar, Y, ctl, True)
        split = m * n >= _team_bn.SPLIT_ROW_ELEMENTS
        assert ctl[team.SEQ] == (2 if split else 0) and ctl[team.OWNER] == 0  # two calls
        assert ctl[team.CLAIM] == (5 if split else 0)  # posted, then claimed back


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu", "identity"])
def test_halves_on_the_helper_give_the_whole_pass(act: str, dtype: type) -> None:
    team.prefer(True)
    try:
        with threads.using(2):
            cases = [_case(m, n, dtype, act) for m, n in SHAPES]
            # a hang guard: the helper's first use compiles its loop (over 10 s cold)
            start, deadline = team.parts_done(), time.monotonic() + 120.0
            while team.parts_done() == start:  # until the helper has taken a half
                assert time.monotonic() < deadline, "the helper never took a half"
                ctl, use = team.for_call()
                _check(*cases[0], ctl, use)
            for _ in range(20):
                for case in cases:
                    ctl, use = team.for_call()
                    _check(*case, ctl, use)
    finally:
        team.prefer(None)
