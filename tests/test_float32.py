"""float32 keeps its dtype and stays accurate on data far from zero."""

from __future__ import annotations

import numpy as np
import pytest

import bnprop
from bnprop import batchnorm as bn
from tests.conftest import random_layer, rel_err


def _reference_obar(Z32: np.ndarray, eps: float) -> np.ndarray:
    """Two-pass float64 normalization of the same float32 values."""
    Z = Z32.astype(np.float64)
    mu = Z.mean(axis=0)
    var = ((Z - mu) ** 2).mean(axis=0)
    return (Z - mu) / np.sqrt(var + eps)


@pytest.mark.parametrize(("offset", "tol"), [(1e4, 2e-3), (1e6, 5e-2)])
def test_obar_on_offset_data_matches_float64_reference(offset: float, tol: float) -> None:
    rng = np.random.default_rng(0)
    m, n = 65536, 256
    O = (offset + rng.standard_normal((m, n), dtype=np.float32)).astype(np.float32)
    W = np.eye(n, dtype=np.float32)  # Z = O exactly, so Z's values are known
    cache = bnprop.layer_forward(O, W, np.ones(n, np.float32), np.zeros(n, np.float32))
    assert cache.Obar.dtype == np.float32
    np.testing.assert_array_equal(cache.Z, O)
    err = float(np.max(np.abs(cache.Obar - _reference_obar(O, 1e-5))))
    assert err < tol
    # What the library really reaches: float32 rounding of the result.
    assert err < 1e-5


def test_naive_variance_fails_where_ours_does_not() -> None:
    """E[Z^2] - E[Z]^2 in float32 is what the two-pass statistics avoid."""
    rng = np.random.default_rng(1)
    Z = (1e4 + rng.standard_normal((4096, 8), dtype=np.float32)).astype(np.float32)
    naive = (Z * Z).mean(0) - Z.mean(0) ** 2  # float32 throughout
    _, var = bn.batch_stats(Z)
    ref = Z.astype(np.float64).var(0)
    assert np.max(np.abs(var - ref) / ref) < 1e-12
    assert np.max(np.abs(naive - ref) / ref) > 1e-2


def test_float32_in_float32_out_and_close_to_float64() -> None:
    rng = np.random.default_rng(2)
    arrays64 = random_layer(rng, 64, 20, 10)
    arrays32 = tuple(a.astype(np.float32) for a in arrays64)
    O, W, gamma, beta, dY = arrays32
    c32 = bnprop.layer_forward(O, W, gamma, beta)
    g32 = bnprop.layer_backward(dY, c32)
    c64 = bnprop.layer_forward(*(a.astype(np.float64) for a in arrays32[:4]))
    g64 = bnprop.layer_backward(dY.astype(np.float64), c64)
    for key in ("Z", "mu", "var", "inv_std", "Obar", "A", "Y"):
        assert getattr(c32, key).dtype == np.float32, key
        assert rel_err(getattr(c32, key), getattr(c64, key)) < 1e-5, key
    for key in ("dA", "dgamma", "dbeta", "dZ", "dW", "dO"):
        assert getattr(g32, key).dtype == np.float32, key
        assert rel_err(getattr(g32, key), getattr(g64, key)) < 1e-4, key


def test_mixed_dtypes_compute_in_float64() -> None:
    rng = np.random.default_rng(3)
    O, W, gamma, beta, _ = random_layer(rng, 5, 3, 2)
    cache = bnprop.layer_forward(O.astype(np.float32), W, gamma, beta)
    assert cache.Y.dtype == np.float64
    cache = bnprop.layer_forward(O.astype(np.int64), W.astype(np.float32), gamma, beta)
    assert cache.Y.dtype == np.float64
