"""The public layer functions on the kernels (bnprop.kernels.layer): row parts, chunks and
pooled buffers give the NumPy reference's numbers, and a pooled array is never reused while
anything holds it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import count_map_rows, layer_inputs, rel_err

import bnprop
from bnprop import threads
from bnprop.kernels import buffers, layer_small, rows
from bnprop.kernels import layer as kernel_layer

CACHE = ("Z", "mu", "var", "inv_std", "Obar", "A", "Y")
GRADS = ("dA", "dgamma", "dbeta", "dZ", "dW", "dO")




_inputs = layer_inputs


@pytest.mark.parametrize("stats", ["exact", "frozen"])
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_parts_and_chunks_equal_the_reference(two_threads: None, stats: str, activation: str,
                                              n_threads: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    threads.set_threads(n_threads)
    monkeypatch.setattr(rows, "CHUNK_BYTES", 24 * 8 * 700)       # 700-row chunks
    monkeypatch.setattr(rows, "KERNEL_PART_BYTES", 24 * 8 * 1000)  # parts of >= 1000 rows
    O, W, gamma, beta, dY = _inputs(4500, 7, 24)  # >= 2 * KERNEL_PART_ROWS: chunked
    calls = count_map_rows(monkeypatch)
    got = bnprop.layer_forward(O, W, gamma, beta, activation=activation)
    ref = bnprop.layer_forward(O, W, gamma, beta, activation=activation, backend="numpy")
    for name in CACHE:
        assert rel_err(getattr(got, name), getattr(ref, name)) < 1e-12, name
    g_got = bnprop.layer_backward(dY, got, stats=stats)
    assert calls == [n_threads] * 4  # forward reduce + apply, backward sums + apply
    g_ref = bnprop.layer_backward(dY, ref, stats=stats, backend="numpy")
    for name in GRADS:
        assert rel_err(getattr(g_got, name), getattr(g_ref, name)) < 1e-11, name
    assert calls == [n_threads] * 5  # dZ, formed when first read, then kept
    assert g_got.dZ is g_got.dZ


def test_float32_on_two_threads_equals_the_float64_reference(two_threads: None) -> None:
    O, W, gamma, beta, dY = _inputs(9000, 16, 64, dtype="float32", seed=1)
    got = bnprop.layer_backward(dY, c := bnprop.layer_forward(O, W, gamma, beta))
    ref = bnprop.layer_backward(dY.astype(np.float64), r := bnprop.layer_forward(
        *(a.astype(np.float64) for a in (O, W, gamma, beta)), backend="numpy"),
        backend="numpy")
    assert c.Y.dtype == np.float32 and got.dW.dtype == np.float32
    assert rel_err(c.Y, r.Y) < 1e-5
    for name in GRADS:
        assert rel_err(getattr(got, name), getattr(ref, name)) < 1e-4, name


def test_a_held_cache_keeps_its_arrays_and_a_dropped_one_is_recycled() -> None:
    O, W, gamma, beta, dY = _inputs(4096, 8, 64, seed=2)  # Z is 2 MiB: pooled
    first = bnprop.layer_forward(O, W, gamma, beta)
    grads = bnprop.layer_backward(dY, first)
    kept = {name: getattr(first, name).copy() for name in CACHE}
    kept_dZ = grads.dZ.copy()
    second = bnprop.layer_forward(O * 2, W, gamma, beta)
    bnprop.layer_backward(-dY, second)
    assert second.Z is not first.Z and second.Y is not first.Y
    for name in CACHE:  # nothing of the first call was overwritten by the second
        np.testing.assert_array_equal(getattr(first, name), kept[name])
    np.testing.assert_array_equal(grads.dZ, kept_dZ)
    view = first.Y[:10]  # a view holds its base: Y stays taken
    held = {id(first.Y)}
    old = {id(getattr(first, name)) for name in ("Z", "Obar", "A")}
    del first, grads
    third = bnprop.layer_forward(O, W, gamma, beta)
    reused = {id(getattr(third, name)) for name in ("Z", "Obar", "A", "Y")}
    assert reused & old and not reused & held
    assert view.base is not None and view.base.shape == (4096, 64)


def test_pool_trims_only_free_arrays_and_clear_releases_them() -> None:
    pool = buffers.Pool(max_bytes=3 * (1 << 20))
    held = pool.empty((1 << 18,), np.float32)  # 1 MiB each
    free = pool.empty((1 << 18,), np.float64)
    del free
    more = [pool.empty((1 << 18,), np.float32) for _ in range(3)]
    assert pool.nbytes == 4 * (1 << 20)  # the free float64 one went; held ones stay
    assert all(any(a is b for b in pool._arrays) for a in [held, *more])
    small = pool.empty((10,), np.float32)  # below MIN_BYTES: not pooled
    assert not any(small is a for a in pool._arrays)
    del more
    pool.clear()
    assert len(pool._arrays) == 1 and pool._arrays[0] is held
    bnprop.release_buffers()  # the shared pool: runs, releases what is free
    assert all(buffers.sys.getrefcount(a) > 3 for a in buffers.shared._arrays)


def test_backward_takes_a_non_contiguous_dY() -> None:
    O, W, gamma, beta, dY = _inputs(20, 3, 5, seed=3)
    cache = bnprop.layer_forward(O, W, gamma, beta)
    wide = np.zeros((20, 10))
    wide[:, ::2] = dY
    got = bnprop.layer_backward(wide[:, ::2], cache)
    ref = bnprop.layer_backward(dY, cache, backend="numpy")
    assert rel_err(got.dW, ref.dW) < 1e-12


@pytest.mark.parametrize("n_threads", [1, 2])
def test_own_finite_copies_what_may_be_shared_and_tests_every_array(two_threads: None,
                                                                    n_threads: int) -> None:
    """Copies of the caller's arrays, the arrays it converted itself kept; None for an inf
    or NaN anywhere in any of the four, each part's rows included."""
    from bnprop.kernels.buffers import MIN_BYTES

    threads.set_threads(n_threads)
    rng = np.random.default_rng(3)
    O, W = rng.standard_normal((20000, 8)), rng.standard_normal((64, 8))
    gamma, beta = np.ones(64), np.zeros(64)
    assert O.nbytes >= MIN_BYTES
    own = kernel_layer.own_finite((O, W, gamma, beta), (O, W, gamma, beta))
    for a, b in zip((O, W, gamma, beta), own, strict=True):
        assert b is not a and not np.shares_memory(a, b)
        np.testing.assert_array_equal(a, b)
    converted = O.copy()  # owns its data and is not the caller's argument
    own = kernel_layer.own_finite((converted, W, gamma, beta), (O.tolist, W, gamma, beta))
    assert own[0] is converted and own[1] is not W
    assert kernel_layer.own_finite((O, W, gamma, beta), None)[0] is O
    for name, index in (("O", (0, 0)), ("O", (19999, 7)), ("O", (10000, 3)),
                        ("W", (63, 7)), ("gamma", (5,)), ("beta", (63,))):
        for bad in (np.nan, np.inf):
            arrays = {"O": O.copy(), "W": W.copy(), "gamma": gamma.copy(), "beta": beta.copy()}
            arrays[name][index] = bad
            four = tuple(arrays.values())
            assert kernel_layer.own_finite(four, four) is None, (name, index)
            assert kernel_layer.own_finite(four, None) is None, (name, index)


def test_an_unsplit_batch_runs_one_compiled_call_each_way(monkeypatch: pytest.MonkeyPatch) -> None:
    from bnprop.kernels import _layer_compiled, blas

    if not blas.available():
        pytest.skip("NumPy's scipy-openblas not found")
    calls: list[str] = []
    for name in ("forward_copied", "backward"):
        real = getattr(_layer_compiled, name)
        monkeypatch.setattr(_layer_compiled, name,
                            lambda *a, _r=real, _n=name: (calls.append(_n), _r(*a))[1])
    O, W, gamma, beta, dY = _inputs(60, 7, 11, dtype="float32", seed=5)
    got = bnprop.layer_backward(dY, c := bnprop.layer_forward(O, W, gamma, beta), stats="frozen")
    ref = bnprop.layer_backward(dY, r := bnprop.layer_forward(O, W, gamma, beta, backend="numpy"),
                                stats="frozen", backend="numpy")
    assert calls == ["forward_copied", "backward"]
    for name in CACHE:
        assert rel_err(getattr(c, name), getattr(r, name)) < 1e-5, name
    for name in GRADS:
        assert rel_err(getattr(got, name), getattr(ref, name)) < 1e-4, name


def test_finite_values_whose_sum_overflows_are_accepted() -> None:
    big = np.full((4, 3), 3e38, np.float32)  # the float32 sum is inf; every entry is finite
    cache = bnprop.layer_forward(big, np.eye(3, dtype=np.float32) * 1e-30,
                                 np.ones(3, np.float32), np.zeros(3, np.float32))
    assert cache.Z.shape == (4, 3)
    big[2, 1] = np.inf
    with pytest.raises(bnprop.InputError, match=r"O: contains NaN or inf \(1 of 12 entries, "
                                                r"first at index \(2, 1\)\)"):
        bnprop.layer_forward(big, np.eye(3), np.ones(3), np.zeros(3))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("m", [40, 9000])  # one compiled call; parts on 2 threads
def test_a_non_finite_dY_is_found_by_the_kernels_pass(two_threads: None, bad: float,
                                                       m: int) -> None:
    O, W, gamma, beta, dY = _inputs(m, 6, 64, dtype="float32", seed=6)
    cache = bnprop.layer_forward(O, W, gamma, beta, activation="relu")
    dY[m - 3, 5] = bad  # relu'(A) may be 0 there: 0 * inf and 0 * NaN are NaN
    with pytest.raises(bnprop.InputError, match=rf"dY: contains NaN or inf \(1 of {m * 64} "
                                                rf"entries, first at index \({m - 3}, 5\)\)"):
        bnprop.layer_backward(dY, cache)


def test_a_cache_built_by_hand_with_views_and_mixed_dtypes() -> None:
    O, W, gamma, beta, dY = _inputs(30, 5, 4, seed=7)
    ref = bnprop.layer_forward(O, W, gamma, beta, backend="numpy")
    wide = np.zeros((30, 10))
    wide[:, ::2] = ref.O  # O as a strided view
    fields = {name: getattr(ref, name) for name in ("W", "gamma", "beta", "Z", "mu", "var",
                                                    "inv_std", "Obar", "A", "Y")}
    fields["W"] = np.asfortranarray(fields["W"])                 # F-ordered
    fields["gamma"] = fields["gamma"].astype(np.float32)         # another dtype
    hand = bnprop.LayerCache(O=wide[:, ::2], activation="sigmoid", eps=1e-5, **fields)
    got = bnprop.layer_backward(dY, hand)
    want = bnprop.layer_backward(dY, ref, backend="numpy")
    for name in GRADS:
        assert rel_err(getattr(got, name), getattr(want, name)) < 1e-6, name


def test_the_shared_pool_keeps_an_eighth_of_memory_at_least_1_gib() -> None:
    gib = 1 << 30
    assert buffers._pool_bytes(None) == gib
    assert buffers._pool_bytes(4 * gib) == gib
    assert buffers._pool_bytes(24 * gib) == 3 * gib
    assert buffers.MAX_BYTES == buffers._pool_bytes(buffers._physical_bytes())
    assert buffers.shared.max_bytes == buffers.MAX_BYTES


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("stats", ["exact", "frozen"])
def test_the_compiled_call_equals_the_split_path_in_one_part_bit_for_bit(
        two_threads: None, dtype: str, stats: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """mu, var, inv_std, dgamma and dbeta are rounded once from float64 inside the
    compiled calls, as the split path's ``astype`` rounds them."""
    from bnprop.kernels import blas

    if not blas.available():
        pytest.skip("NumPy's scipy-openblas not found")
    threads.set_threads(1)
    O, W, gamma, beta, dY = _inputs(60, 9, 13, dtype=dtype, seed=8)
    compiled = bnprop.layer_forward(O, W, gamma, beta, activation="tanh")
    g_compiled = bnprop.layer_backward(dY, compiled, stats=stats)
    monkeypatch.setattr(layer_small, "whole", lambda *args: False)
    monkeypatch.setattr(layer_small, "_plans", {})
    split = bnprop.layer_forward(O, W, gamma, beta, activation="tanh")
    g_split = bnprop.layer_backward(dY, split, stats=stats)
    assert compiled._z_stats() is None and split._z_stats() is not None
    for name in CACHE:
        a, b = getattr(compiled, name), getattr(split, name)
        assert a.dtype == b.dtype == np.dtype(dtype) and np.array_equal(a, b), name
    for name in GRADS:
        a, b = getattr(g_compiled, name), getattr(g_split, name)
        assert a.dtype == b.dtype == np.dtype(dtype) and np.array_equal(a, b), name
