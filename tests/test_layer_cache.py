"""A large batch's LayerCache keeps Z and Y and forms Obar and A when read: the arrays
equal those the eager forward kernel stores, bit for bit, and its backward pass (rows of
Obar formed from Z in the kernels) gives the gradients of the same cache with Obar read
first, bit for bit. Its LayerGrads forms dZ when read, by the same kernels."""

from __future__ import annotations

import copy
import pickle
import re
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
from conftest import layer_inputs, rel_err

import bnprop
from bnprop.kernels import rows
from bnprop.kernels._bn_compiled import (
    _backward_apply,
    _backward_sums_into,
    _forward_apply,
)
from bnprop.kernels._bn_z_compiled import _backward_sums_z, _dZ_exact_z, _dZ_frozen
from bnprop.kernels.activations import ACTIVATION_CODES, IDENTITY

GRADS = ("dA", "dgamma", "dbeta", "dZ", "dW", "dO")


_inputs = layer_inputs


@pytest.fixture
def split(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small parts and chunks, so a few thousand rows take the split path."""
    monkeypatch.setattr(rows, "CHUNK_BYTES", 24 * 8 * 700)
    monkeypatch.setattr(rows, "KERNEL_PART_BYTES", 24 * 8 * 1000)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "identity"])
def test_obar_and_a_formed_when_read_equal_the_stored_ones(split: None, dtype: str,
                                                           activation: str) -> None:
    O, W, gamma, beta, _ = _inputs(4500, 7, 24, dtype)
    cache = bnprop.layer_forward(O, W, gamma, beta, activation=activation)
    assert cache._z_stats() is not None  # Obar not stored by the forward pass
    mu64, inv_std64 = cache._z_stats()
    Obar, A, Y = (np.empty_like(cache.Z) for _ in range(3))
    _forward_apply(cache.Z, mu64, inv_std64, cache.gamma, cache.beta,
                   ACTIVATION_CODES[activation], Obar, Y, A)
    assert np.array_equal(cache.Y, Y)
    assert np.array_equal(cache.Obar, Obar) and cache.Obar.dtype == np.dtype(dtype)
    assert np.array_equal(cache.A, A) and cache.A.dtype == np.dtype(dtype)
    assert cache._z_stats() is None and cache.Obar is cache.Obar  # formed once, then kept
    ref = bnprop.layer_forward(O, W, gamma, beta, activation=activation, backend="numpy")
    tol = 1e-4 if dtype == "float32" else 1e-10
    for name in ("Z", "Obar", "A", "Y"):
        assert rel_err(getattr(cache, name), getattr(ref, name)) < tol, name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("stats", ["exact", "frozen"])
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_backward_from_z_equals_backward_from_obar(split: None, dtype: str, stats: str,
                                                   activation: str) -> None:
    O, W, gamma, beta, dY = _inputs(4500, 7, 24, dtype, seed=1)
    lazy = bnprop.layer_forward(O, W, gamma, beta, activation=activation)
    read = bnprop.layer_forward(O, W, gamma, beta, activation=activation)
    read.Obar  # noqa: B018 - formed now: the backward pass reads it
    assert lazy._z_stats() is not None and read._z_stats() is None
    got = bnprop.layer_backward(dY, lazy, stats=stats)
    want = bnprop.layer_backward(dY, read, stats=stats)
    assert lazy._z_stats() is not None  # the backward pass did not form Obar
    for name in GRADS:
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    ref = bnprop.layer_backward(dY, lazy, stats=stats, backend="numpy")
    tol = 1e-3 if dtype == "float32" else 1e-9
    for name in GRADS:
        assert rel_err(getattr(got, name), getattr(ref, name)) < tol, name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_z_kernels_equal_the_obar_kernels(dtype: str) -> None:
    rng = np.random.default_rng(2)
    m, n = 37, 19
    Z = (rng.standard_normal((m, n)) * 3 + 1e3).astype(dtype)
    mean, inv_std64 = Z.mean(axis=0, dtype=np.float64), 1 / Z.std(axis=0, dtype=np.float64)
    Obar = ((Z - mean) * inv_std64).astype(dtype)  # the reference's rounding
    dY, Y = rng.standard_normal((m, n)).astype(dtype), rng.random((m, n)).astype(dtype)
    gamma, inv_std = rng.standard_normal(n).astype(dtype), inv_std64.astype(dtype)
    act = ACTIVATION_CODES["sigmoid"]
    sums = [np.empty(n) for _ in range(4)]
    dA, dA_z = np.empty_like(Z), np.empty_like(Z)
    _backward_sums_into(dY, Y, Obar, act, sums[0], sums[1], dA)
    _backward_sums_z(dY, Y, Z, mean, inv_std64, act, sums[2], sums[3], dA_z)
    assert np.array_equal(dA, dA_z)
    assert np.array_equal(sums[0], sums[2]) and np.array_equal(sums[1], sums[3])
    dZ, dZ_z = np.empty_like(Z), np.empty_like(Z)
    _backward_apply(dA, Y, Obar, gamma, inv_std.astype(np.float64), sums[0], sums[1],
                    float(m), IDENTITY, dZ)
    _dZ_exact_z(dA, Z, mean, inv_std64, gamma, inv_std.astype(np.float64), sums[0], sums[1],
                float(m), dZ_z)
    assert np.array_equal(dZ, dZ_z)


def test_a_small_batch_stores_obar_and_a() -> None:
    O, W, gamma, beta, _ = _inputs(60, 10, 8, "float32")
    cache = bnprop.layer_forward(O, W, gamma, beta)
    assert cache._z_stats() is None and cache._Obar is not None and cache._A is not None


def test_the_cache_is_frozen_prints_and_pickles(split: None) -> None:
    O, W, gamma, beta, dY = _inputs(4500, 7, 24, "float64")
    cache = bnprop.layer_forward(O, W, gamma, beta)
    with pytest.raises(FrozenInstanceError):
        cache.Obar = cache.Z  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        cache.Z = cache.Z  # type: ignore[misc]
    assert repr(cache).startswith("LayerCache(O=array(")
    back = pickle.loads(pickle.dumps(cache))
    assert np.array_equal(back.Obar, cache.Obar) and np.array_equal(back.A, cache.A)
    g1, g2 = bnprop.layer_backward(dY, back), bnprop.layer_backward(dY, cache)
    for name in GRADS:
        assert np.array_equal(getattr(g1, name), getattr(g2, name)), name


def test_a_cache_built_by_hand_keeps_its_arrays() -> None:
    O, W, gamma, beta, _ = _inputs(30, 5, 4, "float64", seed=3)
    ref = bnprop.layer_forward(O, W, gamma, beta, backend="numpy")
    fields = {name: getattr(ref, name) for name in ("O", "W", "gamma", "beta", "Z", "mu",
                                                    "var", "inv_std", "Obar", "A", "Y")}
    hand = bnprop.LayerCache(activation="sigmoid", eps=1e-5, **fields)
    assert hand.Obar is ref.Obar and hand.A is ref.A and hand._z_stats() is None
    positional = bnprop.LayerCache(*fields.values(), "sigmoid", 1e-5)
    assert positional.Y is ref.Y and positional.m_global is None and positional.comm is None


@pytest.mark.parametrize("name", ["O", "W", "gamma", "beta"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("m", [40, 4500])  # one compiled call; the split path
def test_a_non_finite_input_is_named_after_the_one_compiled_test(split: None, name: str,
                                                                 bad: float, m: int) -> None:
    arrays = dict(zip(("O", "W", "gamma", "beta"), _inputs(m, 7, 24, "float32")[:4],
                      strict=True))
    arr = arrays[name]
    arr[(1,) * arr.ndim] = bad
    where = "(1, 1)" if arr.ndim == 2 else "(1,)"
    with pytest.raises(bnprop.InputError, match=rf"^{name}: contains NaN or inf \(1 of "
                                                rf"{arr.size} entries, first at index "
                                                rf"{re.escape(where)}\)"):
        bnprop.layer_forward(*arrays.values())
    arr[(1,) * arr.ndim] = 0.5
    assert bnprop.layer_forward(*arrays.values()).Y.shape == (m, 24)


def test_a_cache_built_by_hand_without_obar_is_refused_in_one_line() -> None:
    O, W, gamma, beta, _ = _inputs(30, 5, 4, "float64", seed=4)
    ref = bnprop.layer_forward(O, W, gamma, beta, backend="numpy")
    fields = {name: getattr(ref, name) for name in ("O", "W", "gamma", "beta", "Z", "mu",
                                                    "var", "inv_std", "Obar", "A", "Y")}
    for name in ("Obar", "A"):
        with pytest.raises(bnprop.InputError, match=rf"^{name}: a LayerCache holds every "
                                                    r"array of its forward pass; got None"):
            bnprop.LayerCache(activation="sigmoid", eps=1e-5, **{**fields, name: None})


@pytest.mark.parametrize("stats", ["exact", "frozen"])
@pytest.mark.parametrize("read_obar", [False, True])
def test_dZ_formed_when_read_equals_the_kernel_over_the_whole_batch(
        split: None, stats: str, read_obar: bool) -> None:
    """float64: dbeta and dgamma are the backward pass's float64 sums themselves, so the
    whole-batch kernels can be run here on the same inputs."""
    O, W, gamma, beta, dY = _inputs(4500, 7, 24, "float64", seed=5)
    cache = bnprop.layer_forward(O, W, gamma, beta, activation="tanh")
    mu64, inv_std64 = cache._z_stats()
    if read_obar:
        cache.Obar  # noqa: B018 - the backward pass then reads Obar, not Z
    grads = bnprop.layer_backward(dY, cache, stats=stats)
    assert grads._dZ is None  # not formed by the backward pass
    want = np.empty_like(grads.dA)
    if stats == "frozen":
        _dZ_frozen(grads.dA, cache.gamma, cache.inv_std, want)
    else:
        _dZ_exact_z(grads.dA, cache.Z, mu64, inv_std64, cache.gamma, cache.inv_std,
                    grads.dbeta, grads.dgamma, 4500.0, want)
    assert np.array_equal(grads.dZ, want)
    assert grads.dZ is grads.dZ and grads._form_dZ is None  # formed once, then kept
    ref = bnprop.layer_backward(dY, cache, stats=stats, backend="numpy")
    assert rel_err(grads.dZ, ref.dZ) < 1e-10
    assert np.allclose(grads.dW, grads.dZ.T @ O, rtol=1e-12, atol=1e-12)
    assert np.allclose(grads.dO, grads.dZ @ W, rtol=1e-12, atol=1e-12)


def test_the_grads_are_frozen_print_copy_and_pickle(split: None) -> None:
    O, W, gamma, beta, dY = _inputs(4500, 7, 24, "float32", seed=6)
    grads = bnprop.layer_backward(dY, bnprop.layer_forward(O, W, gamma, beta))
    with pytest.raises(FrozenInstanceError):
        grads.dZ = grads.dA  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del grads.dW
    for back in (pickle.loads(pickle.dumps(grads)), copy.deepcopy(grads)):
        assert back._dZ is not None
        for name in GRADS:
            assert np.array_equal(getattr(back, name), getattr(grads, name)), name
    assert repr(grads).startswith("LayerGrads(dA=array(") and "dZ=array(" in repr(grads)


def test_grads_built_by_hand_keep_their_arrays_and_refuse_a_missing_dZ() -> None:
    O, W, gamma, beta, dY = _inputs(30, 5, 4, "float64", seed=7)
    ref = bnprop.layer_backward(dY, bnprop.layer_forward(O, W, gamma, beta))
    arrays = [getattr(ref, name) for name in GRADS]
    by_hand = bnprop.LayerGrads(*arrays)
    assert all(getattr(by_hand, n) is a for n, a in zip(GRADS, arrays, strict=True))
    with pytest.raises(bnprop.InputError, match=r"^dZ: a LayerGrads holds every gradient "
                                                r"of its backward pass; got None"):
        bnprop.LayerGrads(**{**dict(zip(GRADS, arrays, strict=True)), "dZ": None})
