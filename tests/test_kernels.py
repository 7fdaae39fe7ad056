"""The Numba kernels equal their NumPy references in batchnorm.py and activations.py.

Tolerances: float64 to 1e-12 relative; float32 to rounding. Where the kernel performs
the reference's element-wise operations in the same order and dtype on the same inputs
(Obar, A, relu, G, frozen dZ, exact dZ given the same sums), the results are equal bit
for bit and tested so. Sums differ only in their order: relative to the sum of the
absolute values of their terms. sigmoid and tanh are computed differently (a
vectorizable exp): within a few ulps of the exact value, and of the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnprop
from bnprop import activations, threads
from bnprop import batchnorm as bn
from bnprop._validate import InputError
from bnprop.kernels import (
    backward,
    backward_apply,
    backward_frozen,
    backward_sums,
    forward,
    forward_apply,
    moments,
)
from bnprop.kernels import bn as kbn
from bnprop.kernels._bn_compiled import _forward_apply
from bnprop.kernels.activations import ACTIVATION_CODES
from tests.conftest import random_layer, rel_err

DTYPES = (np.float32, np.float64)
ACTS = ("sigmoid", "tanh", "relu", "identity")
#: (m, n): the smallest batch, one feature, odd sizes, rows of a few blocks.
SHAPES = ((2, 1), (3, 5), (17, 33), (1001, 7), (300, 130))
RTOL64 = 1e-12


def _eps(dt: type) -> float:
    return float(np.finfo(dt).eps)


def _Z(rng: np.random.Generator, m: int, n: int, dt: type, offset: float = 0.0) -> np.ndarray:
    scale = rng.uniform(0.5, 3.0, n)
    return (offset + scale * rng.standard_normal((m, n))).astype(dt)


@pytest.fixture(params=[None, 256], ids=["default-blocks", "tiny-blocks"])
def block_bytes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also run with blocks of a few rows, so Chan's merge of blocks is exercised."""
    if request.param is not None:
        monkeypatch.setattr(kbn, "BLOCK_BYTES", request.param)


# --------------------------------------------------------------------------- moments


@pytest.mark.usefixtures("block_bytes")
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize(("m", "n"), SHAPES)
@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6])
def test_moments_equal_two_pass_reference(dt: type, m: int, n: int, offset: float) -> None:
    Z = _Z(np.random.default_rng(m * n), m, n, dt, offset)
    count, mean, M2 = moments(Z)
    ref_count, ref_mean, ref_M2 = bn.batch_moments(Z)
    assert count == ref_count == m
    assert mean.dtype == M2.dtype == np.float64
    # Both accumulate in float64 from the same values: 1e-12 for float32 input too.
    std = np.sqrt(ref_M2 / m)
    assert np.max(np.abs(mean - ref_mean) / (np.abs(ref_mean) + std)) < RTOL64
    assert np.max(np.abs(M2 - ref_M2) / ref_M2) < RTOL64


def test_moments_merge_blocks_without_losing_to_the_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 3 rows merged 1000 times: still the two-pass M2 to float64 rounding."""
    monkeypatch.setattr(kbn, "BLOCK_BYTES", 3 * 8)
    Z = _Z(np.random.default_rng(3), 3000, 1, np.float64, offset=1e6)
    _, mean, M2 = moments(Z)
    exact = Z.astype(np.longdouble)
    exact_M2 = float(((exact - exact.mean(0)) ** 2).sum())
    assert abs(M2[0] - exact_M2) / exact_M2 < 1e-13
    assert abs(mean[0] - float(exact.mean())) < 4 * _eps(np.float64) * 1e6


def test_moments_of_parts_combine_to_the_whole() -> None:
    """The distributed path: per-rank moments merged by chan_combine equal the whole batch's."""
    Z = _Z(np.random.default_rng(4), 250, 6, np.float32, offset=1e4)
    parts = [moments(part) for part in np.split(Z, [0, 1, 90, 91, 250])]  # with empty parts
    acc = parts[0]
    for part in parts[1:]:
        acc = bn.chan_combine(*acc, *part)
    _, mean, M2 = moments(Z)
    assert acc[0] == 250
    np.testing.assert_allclose(acc[1], mean, rtol=RTOL64)
    np.testing.assert_allclose(acc[2], M2, rtol=RTOL64)


def test_moments_empty_and_out_buffers() -> None:
    count, mean, M2 = moments(np.empty((0, 4), np.float32))
    assert count == 0
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_array_equal(M2, 0.0)
    Z = _Z(np.random.default_rng(5), 10, 4, np.float64)
    mean_out, M2_out = np.full(4, np.nan), np.full(4, np.nan)
    _, mean, M2 = moments(Z, mean=mean_out, M2=M2_out)
    assert mean is mean_out and M2 is M2_out
    np.testing.assert_allclose(M2, bn.batch_moments(Z)[2], rtol=RTOL64)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 11])
def test_block_sums_add_the_rows_in_order(dt: type, rows: int) -> None:
    """The block's two sums, four rows at a time in registers, are the row-by-row sums
    bit for bit (each feature's terms added in row order), tail rows included."""
    from bnprop.kernels._bn_compiled import _block_sums

    rng = np.random.default_rng(rows)
    Z = _Z(rng, rows + 3, 37, dt)
    center = rng.standard_normal(37)
    S1, S2 = np.full(37, np.nan), np.full(37, np.nan)
    _block_sums(Z, 2, 2 + rows, center, S1, S2)
    ref1, ref2 = np.zeros(37), np.zeros(37)
    for i in range(2, 2 + rows):
        d = Z[i].astype(np.float64) - center
        ref1 += d
        ref2 += d * d
    np.testing.assert_array_equal(S1, ref1)
    np.testing.assert_array_equal(S2, ref2)


# --------------------------------------------------------------------------- forward


def _reference_forward(Z, gamma, beta, activation, eps=1e-5):
    """The math layer's forward on Z, step by step, with float64 statistics."""
    mu, var = bn.batch_stats(Z)
    inv_std = bn.inverse_std(var, eps)
    Obar = bn.normalize(Z, mu, inv_std)
    A = gamma * Obar
    A += beta
    return mu, var, inv_std, Obar, A, activations.get_activation(activation).forward(A)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize(("m", "n"), SHAPES)
@pytest.mark.parametrize("activation", ACTS)
def test_forward_apply_equals_reference(dt: type, m: int, n: int, activation: str) -> None:
    rng = np.random.default_rng(m + n)
    Z = _Z(rng, m, n, dt)
    gamma = rng.uniform(-2, 2, n).astype(dt)
    beta = rng.standard_normal(n).astype(dt)
    mu, _, inv_std, Obar_ref, A_ref, Y_ref = _reference_forward(Z, gamma, beta, activation)
    Obar, Y, A = np.empty_like(Z), np.empty_like(Z), np.empty_like(Z)
    forward_apply(Z, mu, inv_std, gamma, beta, activation=activation, Obar=Obar, Y=Y, A=A)
    # Same operations, same order, same dtype: equal bit for bit.
    np.testing.assert_array_equal(Obar, Obar_ref)
    np.testing.assert_array_equal(A, A_ref)
    if activation in ("relu", "identity"):
        np.testing.assert_array_equal(Y, Y_ref)
    else:  # |Y| <= 1; the reference itself is accurate to about an ulp of 1
        assert np.max(np.abs(Y - Y_ref)) <= 2 * _eps(dt)
    assert Y.dtype == Obar.dtype == dt


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize(("m", "n"), [(40, 9), (33, 130)])
def test_forward_apply_in_place_and_without_A(dt: type, activation: str, m: int, n: int) -> None:
    """Obar apart, over Z, or not kept, and A kept or not: the same Y bit for bit (the
    kernel's in-place and apart row loops are different code)."""
    rng = np.random.default_rng(6)
    Z = _Z(rng, m, n, dt)
    gamma, beta = rng.uniform(0.5, 2, n).astype(dt), rng.standard_normal(n).astype(dt)
    mu, _, inv_std, Obar_ref, A_ref, _ = _reference_forward(Z, gamma, beta, activation)
    Y_separate = np.empty_like(Z)
    forward_apply(Z, mu, inv_std, gamma, beta, activation=activation,
                  Obar=np.empty_like(Z), Y=Y_separate, A=np.empty_like(Z))
    Y_alone, code = np.empty_like(Z), ACTIVATION_CODES[activation]
    _forward_apply(Z, mu, inv_std, gamma, beta, code, None, Y_alone, None)  # Obar not kept
    np.testing.assert_array_equal(Y_alone, Y_separate)
    Z_copy, Y_A, A = Z.copy(), np.empty_like(Z), np.empty_like(Z)
    _forward_apply(Z_copy, mu, inv_std, gamma, beta, code, Z_copy, Y_A, A)  # over Z, A kept
    np.testing.assert_array_equal(A, A_ref)
    np.testing.assert_array_equal(Y_A, Y_separate)
    Y = np.empty_like(Z)
    forward_apply(Z, mu, inv_std, gamma, beta, activation=activation, Obar=Z, Y=Y)
    np.testing.assert_array_equal(Z, Obar_ref)  # Z now holds Obar
    np.testing.assert_array_equal(Y, Y_separate)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_forward_on_offset_data_as_accurate_as_reference(dt: type, offset: float) -> None:
    """float32 data at 1e6 from zero: Obar keeps every bit the reference keeps."""
    rng = np.random.default_rng(7)
    Z = (offset + rng.standard_normal((4099, 8))).astype(dt)
    gamma, beta = np.ones(8, dt), np.zeros(8, dt)
    out = forward(Z, gamma, beta, activation="identity")
    Z64 = Z.astype(np.longdouble)
    exact = (Z64 - Z64.mean(0)) / np.sqrt(Z64.var(0) + 1e-5)
    _, _, _, Obar_ref, _, _ = _reference_forward(Z, gamma, beta, "identity")
    err = float(np.max(np.abs(out.Obar - exact)))
    ref_err = float(np.max(np.abs(Obar_ref - exact)))
    assert err <= max(ref_err, 4 * _eps(dt)) * 1.01
    assert err < (1e-6 if dt == np.float32 else 1e-10)


@pytest.mark.parametrize("dt", DTYPES)
def test_forward_equals_layer_forward(dt: type) -> None:
    O, W, gamma, beta, _ = random_layer(np.random.default_rng(8), 64, 11, 7, dt)
    cache = bnprop.layer_forward(O, W, gamma, beta, activation="tanh")
    Z = O @ W.T
    out = forward(Z, gamma, beta, activation="tanh", A=np.empty_like(Z))
    tol = RTOL64 if dt == np.float64 else 4 * _eps(dt)
    for key in ("Obar", "A", "Y"):
        assert rel_err(getattr(out, key), getattr(cache, key)) < tol, key
    for key in ("mean", "var", "inv_std"):
        ref = getattr(cache, "mu" if key == "mean" else key)
        assert rel_err(getattr(out, key), ref) < tol, key


# --------------------------------------------------------------------------- activations


def _special_inputs(dt: type) -> np.ndarray:
    rng = np.random.default_rng(9)
    return np.concatenate([
        np.linspace(-120, 120, 20001), rng.standard_normal(5000) * 10,
        np.logspace(-30, 2.5, 500), -np.logspace(-30, 2.5, 500),
        [0.0, -0.0, 1e-45, -0.17328, 0.17329, -0.3466, 0.3466, -86.9, -87.0, -87.1,
         -103.0, -707.9, -708.1, -745.2, -800.0, 800.0],
    ]).astype(dt)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_sigmoid_tanh_within_few_ulps_of_exact(dt: type, activation: str) -> None:
    a = _special_inputs(dt).reshape(1, -1)
    Y = np.empty_like(a)
    # identity normalization: mean 0, inv_std 1, gamma 1, beta 0 give A = a
    n = a.shape[1]
    forward_apply(a, np.zeros(n), np.ones(n), np.ones(n, dt), np.zeros(n, dt),
                  activation=activation, Obar=np.empty_like(a), Y=Y)
    x = a.astype(np.longdouble)
    exact = 1 / (1 + np.exp(-x)) if activation == "sigmoid" else np.tanh(x)
    tiny = np.finfo(dt).tiny
    # Below the smallest normal number the kernel returns 0: an error below `tiny`.
    ulp = np.maximum(np.spacing(np.abs(exact).astype(dt)).astype(np.longdouble), tiny)
    assert np.max(np.abs(Y - exact) / ulp) <= 3
    ref = activations.get_activation(activation).forward(a)
    assert np.max(np.abs(Y - ref)) <= 2 * _eps(dt)


@pytest.mark.parametrize("dt", DTYPES)
def test_activations_of_nonfinite_inputs(dt: type) -> None:
    a = np.array([[np.inf, -np.inf, np.nan, 0.0, -0.0]], dtype=dt)
    n = a.shape[1]
    for activation in ACTS:
        Y = np.empty_like(a)
        forward_apply(a, np.zeros(n), np.ones(n), np.ones(n, dt), np.zeros(n, dt),
                      activation=activation, Obar=np.empty_like(a), Y=Y)
        ref = activations.get_activation(activation).forward(a)
        np.testing.assert_array_equal(Y, ref, err_msg=activation)  # NaN == NaN here


# --------------------------------------------------------------------------- backward


def _backward_case(dt: type, m: int, n: int, activation: str, seed: int = 0):
    rng = np.random.default_rng(seed + m * n)
    Z = _Z(rng, m, n, dt)
    gamma = (rng.uniform(0.5, 2, n) * rng.choice([-1, 1], n)).astype(dt)
    beta = rng.standard_normal(n).astype(dt)
    _, _, inv_std, Obar, A, Y = _reference_forward(Z, gamma, beta, activation)
    dY = rng.standard_normal((m, n)).astype(dt)
    G = activations.get_activation(activation).backward(dY, A, Y)
    return dY, Y, Obar, gamma, inv_std, G


def _sum_scale(G: np.ndarray, Obar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum of the absolute terms: what the rounding of sum_G and sum_GObar is relative to."""
    G64 = np.abs(G.astype(np.float64))
    return G64.sum(0), (G64 * np.abs(Obar)).sum(0)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize(("m", "n"), SHAPES)
@pytest.mark.parametrize("activation", ACTS)
def test_backward_sums_equal_reference(dt: type, m: int, n: int, activation: str) -> None:
    dY, Y, Obar, _, _, G = _backward_case(dt, m, n, activation)
    sum_G, sum_GObar = backward_sums(dY, Y, Obar, activation=activation)
    ref_G, ref_GObar = bn.backward_sums(G, Obar)
    scale_G, scale_GObar = _sum_scale(G, Obar)
    # float64 accumulation of identical terms (products formed in float64): 1e-12 for both.
    assert np.all(np.abs(sum_G - ref_G) <= RTOL64 * scale_G + 1e-300)
    assert np.all(np.abs(sum_GObar - ref_GObar) <= RTOL64 * scale_GObar + 1e-300)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize(("m", "n"), SHAPES)
@pytest.mark.parametrize("activation", ACTS)
def test_backward_apply_equals_dZ_exact(dt: type, m: int, n: int, activation: str) -> None:
    dY, Y, Obar, gamma, inv_std, G = _backward_case(dt, m, n, activation)
    ref_G, ref_GObar = bn.backward_sums(G, Obar)
    dZ = np.empty_like(dY)
    backward_apply(dY, Y, Obar, gamma, inv_std, ref_G, ref_GObar, m,
                   activation=activation, dZ=dZ)
    # Given the same sums: the reference's operations exactly.
    np.testing.assert_array_equal(dZ, bn.dZ_exact(G, Obar, gamma, inv_std, ref_G, ref_GObar, m))
    # With the kernel's own sums: rounding relative to the terms dZ subtracts (they
    # cancel to O(eps) for m = 2).
    sum_G, sum_GObar = backward_sums(dY, Y, Obar, activation=activation)
    backward_apply(dY, Y, Obar, gamma, inv_std, sum_G, sum_GObar, m,
                   activation=activation, dZ=dZ)
    ref = bn.dZ_exact(G, Obar, gamma, inv_std, ref_G, ref_GObar, m)
    terms = np.abs(gamma * inv_std) * (np.abs(G) + np.abs(ref_G / m)
                                       + np.abs(Obar * (ref_GObar / m)))
    tol = RTOL64 if dt == np.float64 else 4 * _eps(dt)
    assert np.all(np.abs(dZ - ref) <= tol * terms.max(0) + 1e-300)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize(("m", "n"), SHAPES)
@pytest.mark.parametrize("activation", ACTS)
def test_backward_frozen_equals_dZ_frozen(dt: type, m: int, n: int, activation: str) -> None:
    dY, Y, Obar, gamma, inv_std, G = _backward_case(dt, m, n, activation)
    dZ = np.empty_like(dY)
    sum_G, sum_GObar = backward_frozen(dY, Y, Obar, gamma, inv_std,
                                       activation=activation, dZ=dZ)
    np.testing.assert_array_equal(dZ, bn.dZ_frozen(G, gamma, inv_std))
    ref_G, ref_GObar = bn.backward_sums(G, Obar)
    scale_G, scale_GObar = _sum_scale(G, Obar)
    assert np.all(np.abs(sum_G - ref_G) <= RTOL64 * scale_G + 1e-300)
    assert np.all(np.abs(sum_GObar - ref_GObar) <= RTOL64 * scale_GObar + 1e-300)


@pytest.mark.parametrize("stats", ["exact", "frozen"])
def test_backward_in_place_over_dY(stats: str) -> None:
    dY, Y, Obar, gamma, inv_std, _ = _backward_case(np.float32, 50, 12, "sigmoid")
    separate = backward(dY, Y, Obar, gamma, inv_std, activation="sigmoid", stats=stats)
    in_place = backward(dY, Y, Obar, gamma, inv_std, activation="sigmoid", stats=stats, dZ=dY)
    assert in_place.dZ is dY
    np.testing.assert_array_equal(dY, separate.dZ)
    np.testing.assert_array_equal(in_place.dgamma, separate.dgamma)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("stats", ["exact", "frozen"])
@pytest.mark.parametrize("activation", ACTS)
def test_forward_backward_equal_layer(dt: type, stats: str, activation: str) -> None:
    """The convenience pair against bnprop.layer_forward / layer_backward."""
    O, W, gamma, beta, dY = random_layer(np.random.default_rng(10), 33, 5, 6, dt)
    cache = bnprop.layer_forward(O, W, gamma, beta, activation=activation)
    grads = bnprop.layer_backward(dY, cache, stats=stats)
    fwd = forward(O @ W.T, gamma, beta, activation=activation)
    bwd = backward(dY, fwd.Y, fwd.Obar, gamma, fwd.inv_std, activation=activation, stats=stats)
    tol = RTOL64 if dt == np.float64 else 8 * _eps(dt)
    # rounding relative to the magnitudes the sums and dZ are made of
    scale_G, scale_GObar = _sum_scale(grads.dA, cache.Obar)
    assert np.all(np.abs(bwd.dbeta - grads.dbeta) <= tol * scale_G + 1e-300)
    assert np.all(np.abs(bwd.dgamma - grads.dgamma) <= tol * scale_GObar + 1e-300)
    terms = np.abs(gamma * fwd.inv_std) * (np.abs(grads.dA) + scale_G / 33 + scale_GObar / 33)
    assert np.all(np.abs(bwd.dZ - grads.dZ) <= tol * terms.max(0) + 1e-300)


# --------------------------------------------------------------------------- validation


def test_errors_name_argument_and_shape() -> None:
    Z = np.zeros((4, 3), np.float32)
    with pytest.raises(InputError, match=r"^Z: expected a C-contiguous float32 or float64 array of shape \(m, n\), got a C-contiguous int64 array"):
        moments(np.zeros((4, 3), np.int64))
    with pytest.raises(InputError, match=r"^Z: .*got a non-contiguous float32 array of shape \(3, 4\)"):
        moments(Z.T)
    with pytest.raises(InputError, match=r"^Y: expected a writeable C-contiguous float32 array of shape \(4, 3\), got a C-contiguous float32 array of shape \(4, 2\) instead\.$"):
        forward_apply(Z, np.zeros(3), np.ones(3), np.ones(3), np.zeros(3), activation="relu",
                      Obar=Z, Y=np.zeros((4, 2), np.float32))
    with pytest.raises(InputError, match=r"^Obar: .*float32.*got a C-contiguous float64"):
        forward_apply(Z, np.zeros(3), np.ones(3), np.ones(3), np.zeros(3), activation="relu",
                      Obar=np.zeros((4, 3)), Y=Z)
    with pytest.raises(InputError, match=r"^gamma: expected shape \(3,\), got shape \(2,\) instead\.$"):
        forward_apply(Z, np.zeros(3), np.ones(3), np.ones(2), np.zeros(3), activation="relu",
                      Obar=Z, Y=Z)
    with pytest.raises(InputError, match=r"^activation: expected one of .*Got 'softmax' instead\.$"):
        backward_sums(Z, Z, Z, activation="softmax")
    with pytest.raises(InputError, match=r"^sum_G: expected a writeable C-contiguous float64 array of shape \(3,\), got a C-contiguous float32"):
        backward_sums(Z, Z, Z, activation="relu", sum_G=np.zeros(3, np.float32))
    with pytest.raises(InputError, match=r"^stats: expected one of 'exact', 'frozen'\. Got 'fixed' instead\.$"):
        backward(Z, Z, Z, np.ones(3), np.ones(3), stats="fixed")
    with pytest.raises(InputError, match=r"^m: expected a finite number > 0, got 0 instead\.$"):
        backward_apply(Z, Z, Z, np.ones(3), np.ones(3), np.zeros(3), np.zeros(3), 0,
                       activation="relu", dZ=Z.copy())
    with pytest.raises(InputError, match=r"^Z: expected at least one row"):
        forward(np.zeros((0, 3)), np.ones(3), np.zeros(3))


# --------------------------------------------------------------------------- threads


def test_set_threads_gives_blas_one_thread_and_restores() -> None:
    if threads.blas_threads() is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS found by bnprop.threads")
    before, n_before = threads.blas_threads(), threads.num_threads()
    try:
        assert threads.set_threads(2) == before
        assert threads.blas_threads() == 1  # each of bnprop's threads calls BLAS on its rows
        assert threads.num_threads() == 2
        with threads.blas_threads_limited(2):
            assert threads.blas_threads() == 2
        assert threads.blas_threads() == 1
    finally:
        threads.set_threads(n_before)
        threads.set_blas_threads(before)
    with pytest.raises(InputError, match=r"^n: expected an integer >= 1, got 0 instead\.$"):
        threads.set_threads(0)


def test_map_rows_splits_in_order_and_merges_like_ranks() -> None:
    n_before = threads.num_threads()
    blas_before = threads.blas_threads()
    try:
        threads.set_threads(3)
        Z = _Z(np.random.default_rng(11), 10_000, 5, np.float32, offset=1e4)
        parts = threads.map_rows(lambda a, b: (a, b, moments(Z[a:b])), 10_000, min_rows=1000)
        assert [(a, b) for a, b, _ in parts] == threads.row_parts(10_000, 3)
        acc = parts[0][2]
        for _, _, part in parts[1:]:
            acc = bn.chan_combine(*acc, *part)
        np.testing.assert_allclose(acc[2], moments(Z)[2], rtol=RTOL64)
        assert threads.map_rows(lambda a, b: (a, b), 100, min_rows=1000) == [(0, 100)]

        def fail(a: int, b: int) -> None:
            if a > 0:
                raise RuntimeError("worker failed")

        with pytest.raises(RuntimeError, match="worker failed"):
            threads.map_rows(fail, 10_000, min_rows=1000)
    finally:
        threads.set_threads(n_before)
        if blas_before is not None:
            threads.set_blas_threads(blas_before)
