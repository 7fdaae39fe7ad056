"""The split backward pass of a narrow layer (bnprop.kernels.narrow): one pass over dY
and Y, the terms of Obar through the centered input's Gram matrix. It gives the NumPy
reference's gradients (rounded another way), the same whether or not Obar was read, and
is taken only where its identity holds."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import layer_inputs, rel_err, small_parts

import bnprop
from bnprop import threads
from bnprop.kernels import layer_small, narrow
from bnprop.kernels._bn_compiled import _backward_apply, _grad_sums
from bnprop.kernels._bn_z_compiled import _dZ_frozen
from bnprop.kernels._narrow_compiled import centered_gram, column_sums
from bnprop.kernels.activations import ACTIVATION_CODES, derivative_rows

GRADS = ("dA", "dgamma", "dbeta", "dZ", "dW", "dO")
M, N_IN, N_OUT = 4501, 5, 40  # 8 * 5 <= 40: narrow; 4501 rows: chunks and a short tail


_inputs = layer_inputs


@pytest.fixture
def split(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small parts and chunks, so a few thousand rows take the split path in chunks."""
    small_parts(monkeypatch, N_OUT)


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of narrow.backward."""
    calls: list[int] = []
    real = narrow.backward

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(narrow, "backward", counting)
    return calls


def test_applies_only_to_a_narrow_layer_of_one_process_from_the_split_forward() -> None:
    assert narrow.applies(16, 256, True, None) and narrow.applies(5, 40, True, None)
    assert not narrow.applies(6, 40, True, None)  # 8 * 6 > 40
    assert not narrow.applies(16, 256, False, None)  # a cache built by hand
    assert not narrow.applies(16, 256, True, object())  # statistics of several processes


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("stats", ["exact", "frozen"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "identity"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_narrow_backward_equals_the_reference(split: None, dtype: str, stats: str,
                                              activation: str, n_threads: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    threads.set_threads(n_threads)
    calls = _spy(monkeypatch)
    O, W, gamma, beta, dY = _inputs(M, N_IN, N_OUT, dtype, seed=1)
    cache = bnprop.layer_forward(O, W, gamma, beta, activation=activation)
    got = bnprop.layer_backward(dY, cache, stats=stats)
    assert calls == [1]
    ref = bnprop.layer_backward(dY, cache, stats=stats, backend="numpy")
    tol = 1e-4 if dtype == "float32" else 1e-10
    for name in GRADS:
        assert getattr(got, name).dtype == np.dtype(dtype), name
        assert rel_err(getattr(got, name), getattr(ref, name)) < tol, name
    np.testing.assert_array_equal(got.dA, ref.dA)  # the same kernel's G either way
    # dW and dO are dZ^T O and dZ W of the dZ formed when read, rounded another way
    assert rel_err(got.dW, got.dZ.astype(np.float64).T @ O) < tol
    assert rel_err(got.dO, got.dZ.astype(np.float64) @ W) < tol


@pytest.mark.parametrize("stats", ["exact", "frozen"])
def test_narrow_backward_equals_the_obar_way_in_float64(split: None, stats: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same gradients as the split path that reads Obar twice (to 1e-12), and a dZ,
    when read, formed from dA, Obar and the pass's sums by the kernel of that path."""
    O, W, gamma, beta, dY = _inputs(M, N_IN, N_OUT, "float64", seed=2)
    cache = bnprop.layer_forward(O, W, gamma, beta, activation="tanh")
    got = bnprop.layer_backward(dY, cache, stats=stats)
    monkeypatch.setattr(narrow, "NARROW", 10**9)
    want = bnprop.layer_backward(dY, cache, stats=stats)
    for name in GRADS:
        assert rel_err(getattr(got, name), getattr(want, name)) < 1e-12, name
    dZ = np.empty_like(got.dA)
    if stats == "frozen":
        _dZ_frozen(got.dA, gamma, cache.inv_std, dZ)
    else:
        assert cache._z_stats() is None  # Obar is kept (the narrow forward pass's GEMM)
        _backward_apply(got.dA, cache.Y, cache.Obar, gamma, cache.inv_std, got.dbeta,
                        got.dgamma, float(M), ACTIVATION_CODES["identity"], dZ)
    np.testing.assert_array_equal(got.dZ, dZ)


def test_reading_obar_first_changes_no_gradient(split: None) -> None:
    O, W, gamma, beta, dY = _inputs(M, N_IN, N_OUT, "float32", seed=3)
    lazy = bnprop.layer_forward(O, W, gamma, beta)
    read = bnprop.layer_forward(O, W, gamma, beta)
    read.Obar  # noqa: B018 - formed now; the narrow pass reads neither Obar nor Z
    got, want = bnprop.layer_backward(dY, lazy), bnprop.layer_backward(dY, read)
    for name in GRADS:
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def test_a_cache_built_by_hand_keeps_the_obar_way(split: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Its Z need not be O W^T: the backward pass reads the arrays it was given."""
    calls = _spy(monkeypatch)
    O, W, gamma, beta, dY = _inputs(M, N_IN, N_OUT, "float64", seed=4)
    made = bnprop.layer_forward(O, W, gamma, beta)
    fields = {name: getattr(made, name).copy() for name in
              ("O", "W", "gamma", "beta", "Z", "mu", "var", "inv_std", "Obar", "A", "Y")}
    fields["O"] = fields["O"] + 1.0  # no longer the O of Z: the identity would not hold
    by_hand = bnprop.LayerCache(activation="sigmoid", eps=made.eps, **fields)
    got = bnprop.layer_backward(dY, by_hand)
    assert calls == []
    ref = bnprop.layer_backward(dY, by_hand, backend="numpy")
    for name in GRADS:
        assert rel_err(getattr(got, name), getattr(ref, name)) < 1e-10, name


def test_a_non_finite_dY_is_named(split: None) -> None:
    O, W, gamma, beta, dY = _inputs(M, N_IN, N_OUT, "float32", seed=5)
    cache = bnprop.layer_forward(O, W, gamma, beta)
    dY[1234, 7] = np.nan
    with pytest.raises(bnprop.InputError, match="dY"):
        bnprop.layer_backward(dY, cache)


def test_an_unsplit_batch_keeps_its_one_compiled_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from bnprop.kernels import blas

    if not blas.available():
        pytest.skip("NumPy's scipy-openblas not found")
    calls = _spy(monkeypatch)
    O, W, gamma, beta, dY = _inputs(60, N_IN, N_OUT, "float32")
    assert layer_small.whole(60, N_OUT, 4)
    bnprop.layer_backward(dY, bnprop.layer_forward(O, W, gamma, beta))
    assert calls == []


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m", [1, 3, 4, 37])
def test_the_compiled_statistics_equal_numpy(dtype: str, m: int) -> None:
    rng = np.random.default_rng(m)
    O = (rng.standard_normal((m, 6)) * 0.01 + 1e3).astype(dtype)  # a mean far from 0
    sums = np.empty(6)
    column_sums(O, sums)
    np.testing.assert_allclose(sums, O.astype(np.float64).sum(axis=0), rtol=1e-15)
    obar = sums / m
    Oc, C = np.empty_like(O), np.empty((6, 6))
    centered_gram(O, obar, Oc, C)
    d = O.astype(np.float64) - obar
    np.testing.assert_array_equal(Oc, d.astype(dtype))
    np.testing.assert_allclose(C, d.T @ d, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "identity"])
def test_grad_sums_equal_the_derivative_kernel(dtype: str, activation: str) -> None:
    rng = np.random.default_rng(6)
    dY, Y = rng.standard_normal((23, 9)).astype(dtype), rng.random((23, 9)).astype(dtype)
    act = ACTIVATION_CODES[activation]
    dA, want = np.empty_like(dY), np.empty_like(dY)
    sum_G = np.full(9, 0.5)  # accumulates
    _grad_sums(act, dY, Y, sum_G, dA)
    derivative_rows(act, dY, Y, want)
    np.testing.assert_array_equal(dA, want)
    expected = np.full(9, 0.5)
    for row in want.astype(np.float64):  # rows in order
        expected += row
    np.testing.assert_array_equal(sum_G, expected)
