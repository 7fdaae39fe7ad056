"""The statistics: two-pass moments, Chan's combination, the backward reductions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bnprop import batchnorm as bn


def test_moments_match_numpy() -> None:
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((100, 7)) * 3 + 5
    m, mean, M2 = bn.batch_moments(Z)
    assert m == 100
    np.testing.assert_allclose(mean, Z.mean(0), rtol=1e-14)
    np.testing.assert_allclose(M2, ((Z - Z.mean(0)) ** 2).sum(0), rtol=1e-13)
    _, var = bn.batch_stats(Z)
    np.testing.assert_allclose(var, Z.var(0), rtol=1e-13)  # biased: 1/m


def test_moments_blocked_equal_unblocked() -> None:
    """Rows beyond one block are accumulated exactly like a single pass."""
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((bn._BLOCK_ROWS * 2 + 17, 3)).astype(np.float32)
    _, mean, M2 = bn.batch_moments(Z)
    Z64 = Z.astype(np.float64)
    np.testing.assert_allclose(M2, ((Z64 - Z64.mean(0)) ** 2).sum(0), rtol=1e-12)
    assert mean.dtype == np.float64


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=2, max_size=5), st.integers(0, 2**31),
       st.sampled_from([0.0, 1e3, 1e6]))
def test_chan_combination_equals_whole_batch(sizes: list[int], seed: int, offset: float) -> None:
    rng = np.random.default_rng(seed)
    total = max(sum(sizes), 1)
    Z = offset + rng.standard_normal((total, 4))
    parts = np.split(Z, np.cumsum(sizes)[:-1]) if sum(sizes) else [Z]
    n, mean, M2 = 0, np.zeros(4), np.zeros(4)
    for part in parts:
        if part.shape[0] == 0:
            continue
        n, mean, M2 = bn.chan_combine(n, mean, M2, *bn.batch_moments(part))
    n_all, mean_all, M2_all = bn.batch_moments(Z)
    assert n == n_all
    np.testing.assert_allclose(mean, mean_all, rtol=1e-14, atol=1e-12)
    np.testing.assert_allclose(M2, M2_all, rtol=1e-9, atol=1e-9)


def test_chan_combine_with_empty_side() -> None:
    mean, M2 = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    n, mean_c, M2_c = bn.chan_combine(0, np.zeros(2), np.zeros(2), 5, mean, M2)
    assert n == 5
    np.testing.assert_array_equal(mean_c, mean)
    np.testing.assert_array_equal(M2_c, M2)
    assert bn.chan_combine(0, np.zeros(2), np.zeros(2), 0, np.zeros(2), np.zeros(2))[0] == 0


def test_backward_sums_and_dZ_formulas() -> None:
    rng = np.random.default_rng(2)
    m, n = 9, 4
    G, Obar = rng.standard_normal((m, n)), rng.standard_normal((m, n))
    gamma, inv_std = rng.uniform(0.5, 2, n), rng.uniform(0.5, 2, n)
    sum_G, sum_GObar = bn.backward_sums(G, Obar)
    np.testing.assert_allclose(sum_G, G.sum(0), rtol=1e-14)
    np.testing.assert_allclose(sum_GObar, (G * Obar).sum(0), rtol=1e-13)
    dZ = bn.dZ_exact(G, Obar, gamma, inv_std, sum_G, sum_GObar, m)
    expected = (gamma * inv_std / m) * (m * G - G.sum(0) - Obar * (G * Obar).sum(0))
    np.testing.assert_allclose(dZ, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bn.dZ_frozen(G, gamma, inv_std), G * gamma * inv_std, rtol=1e-15)


def test_unbiased_variance() -> None:
    Z = np.array([[1.0], [2.0], [4.0]])
    _, var = bn.batch_stats(Z)
    np.testing.assert_allclose(bn.unbiased_var(var, 3), Z.var(0, ddof=1))


def test_biased_var_is_M2_over_m_and_what_batch_stats_returns() -> None:
    """The one home of ``var_B = M2 / m`` (biased: PyTorch's ``var(unbiased=False)``)."""
    rng = np.random.default_rng(11)
    Z = rng.standard_normal((37, 5)) * 3 + 100
    m, _, M2 = bn.batch_moments(Z)
    var = bn.biased_var(M2, m)
    np.testing.assert_allclose(var, Z.var(axis=0, ddof=0), rtol=1e-12)
    assert np.array_equal(bn.batch_stats(Z)[1], var)
    np.testing.assert_allclose(bn.unbiased_var(var, m), Z.var(axis=0, ddof=1), rtol=1e-12)
