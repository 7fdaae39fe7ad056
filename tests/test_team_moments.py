"""A BN layer's statistics by blocks of rows (kernels/_moments.py, kernels/_team_bn.moments):
blocks computed apart, in any order and on either thread, then merged in block order,
give the bits of the one-pass ``_moments``."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bnprop import threads
from bnprop.kernels import blas
from bnprop.kernels._moments import _moments, block_range, merge_range, scratch_size

SHAPES = [(512, 64, 16), (300, 257, 7), (1000, 33, 64), (37, 5, 4), (16, 3, 4)]


def _Z(m: int, n: int, dtype: type, seed: int = 0) -> np.ndarray:
    """Columns of different scales and offsets whose mean drifts in the second half of the
    rows, so that some blocks re-centre and some do not."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((m, n)) * rng.uniform(0.1, 3.0, n) + rng.uniform(-2, 2, n)
    Z[m // 2:, : max(1, n // 8)] += 50.0
    return Z.astype(dtype)


def _whole(Z: np.ndarray, block_rows: int) -> tuple[int, np.ndarray, np.ndarray]:
    mean, M2 = np.full(Z.shape[1], np.nan), np.full(Z.shape[1], np.nan)
    return int(_moments(Z, block_rows, mean, M2)), mean, M2


def _assert_same(got: tuple[int, np.ndarray, np.ndarray],
                 want: tuple[int, np.ndarray, np.ndarray]) -> None:
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("m", "n", "block_rows"), SHAPES)
def test_blocks_computed_apart_give_the_moments_bits(m: int, n: int, block_rows: int,
                                                     dtype: type) -> None:
    Z = _Z(m, n, dtype)
    want = _whole(Z, block_rows)
    np.testing.assert_allclose(want[1], Z.astype(np.float64).mean(axis=0), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(want[2] / m, Z.astype(np.float64).var(axis=0), rtol=1e-10)
    B = -(-m // block_rows)
    S = np.full(scratch_size(m, n, block_rows), np.nan)
    center = np.empty(n)
    block_range(Z, block_rows, S, 0, 1, center)
    block_range(Z, block_rows, S, B // 2, B, center)  # the later blocks first
    block_range(Z, block_rows, S, 1, B // 2, center)
    offsets = S[(3 + 3 * np.arange(B) + 2)[:, None] * n + np.arange(n)]
    moved = (offsets[1:] != 0).any(axis=1)
    assert moved.any()  # the case is not vacuous: later blocks re-centre,
    if block_rows >= 16:  # and where blocks are long, only those of the drift
        assert not moved.all()
    mean, M2 = np.zeros(n), np.zeros(n)
    count = merge_range(Z, block_rows, S, 0, B // 2 + 1, 0, mean, M2)
    count = merge_range(Z, block_rows, S, B // 2 + 1, B, count, mean, M2)
    _assert_same((count, mean + S[:n], M2), want)


if blas.available():
    from numba import njit

    from bnprop.kernels import _team_bn, team

    @njit
    def _shared(Z, block_rows, mean, M2, S, ctl, use):  # type: ignore[no-untyped-def]
        owned = team.acquire(ctl, use)
        count = _team_bn.moments(Z, block_rows, mean, M2, S, ctl, owned)
        team.release(ctl, owned)
        return count


def _run(Z: np.ndarray, block_rows: int, ctl: np.ndarray, use: bool,
         size: int | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    m, n = Z.shape
    S = np.full(scratch_size(m, n, block_rows) if size is None else size, np.nan)
    mean, M2 = np.full(n, np.nan), np.full(n, np.nan)
    return int(_shared(Z, block_rows, mean, M2, S, ctl, use)), mean, M2


needs_blas = pytest.mark.skipif(not blas.available(), reason="needs NumPy's scipy-openblas")


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocks_taken_back_by_the_caller_give_the_moments_bits(dtype: type) -> None:
    """``ctl`` says the helper is awake but no thread reads it: the caller takes the
    offered blocks back."""
    for m, n, block_rows in SHAPES:
        Z = _Z(m, n, dtype, seed=m)
        ctl = np.zeros(team.SLOTS, np.int64)
        ctl[team.STATE] = team.AWAKE
        _assert_same(_run(Z, block_rows, ctl, True), _whole(Z, block_rows))
        split = -(-m // block_rows) >= _team_bn.SPLIT_BLOCKS
        assert ctl[team.SEQ] == (1 if split else 0) and ctl[team.OWNER] == 0
        assert ctl[team.CLAIM] == (3 if split else 0)  # posted, then claimed back


@needs_blas
def test_the_blocks_stay_whole_without_the_helper_or_the_scratch() -> None:
    m, n, block_rows = SHAPES[0]
    Z = _Z(m, n, np.float64)
    want = _whole(Z, block_rows)
    for use, size in ((False, None), (True, scratch_size(m, n, block_rows) - 1)):
        ctl = np.zeros(team.SLOTS, np.int64)
        ctl[team.STATE] = team.AWAKE
        _assert_same(_run(Z, block_rows, ctl, use, size), want)
        assert ctl[team.SEQ] == 0  # nothing offered


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocks_on_the_helper_give_the_moments_bits(dtype: type) -> None:
    cases = [(_Z(m, n, dtype, seed=m), block_rows) for m, n, block_rows in SHAPES
             if -(-m // block_rows) >= _team_bn.SPLIT_BLOCKS]
    wants = [_whole(Z, block_rows) for Z, block_rows in cases]
    team.prefer(True)
    try:
        with threads.using(2):
            # a hang guard: the helper's first use compiles its loop (over 10 s cold)
            start, deadline = team.parts_done(), time.monotonic() + 120.0
            while team.parts_done() == start:  # until the helper has taken blocks
                assert time.monotonic() < deadline, "the helper never took the blocks"
                ctl, use = team.for_call()
                _assert_same(_run(*cases[0], ctl, use), wants[0])
            for _ in range(20):
                for case, want in zip(cases, wants, strict=True):
                    ctl, use = team.for_call()
                    _assert_same(_run(*case, ctl, use), want)
    finally:
        team.prefer(None)
