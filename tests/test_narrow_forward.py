"""The split forward pass of a narrow layer (bnprop.kernels.narrow.forward_moments): the
moments of Z = O W^T from the centered input's Gram matrix, no pass over Z for them;
the backward pass reuses that centered input. Z where it may overflow keeps the moments
of Z itself."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import layer_inputs, rel_err, small_parts

import bnprop
from bnprop.kernels import narrow

GRADS = ("dA", "dgamma", "dbeta", "dZ", "dW", "dO")
M, N_IN, N_OUT = 4501, 5, 40  # 8 * 5 <= 40: narrow; 4501 rows: parts, chunks, a tail


def _inputs(dtype: str, seed: int = 0, shift: float = 3.0) -> tuple[np.ndarray, ...]:
    return layer_inputs(M, N_IN, N_OUT, dtype, seed, shift)


@pytest.fixture
def split(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small parts and chunks, so a few thousand rows take the split path in chunks."""
    small_parts(monkeypatch, N_OUT)


def _count_centered(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records each call of narrow._centered: whether it was given W (the forward pass)."""
    calls: list[bool] = []
    real = narrow._centered

    def counting(O, W=None):  # type: ignore[no-untyped-def]
        calls.append(W is not None)
        return real(O, W)

    monkeypatch.setattr(narrow, "_centered", counting)
    return calls


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shift", [0.0, 100.0])
def test_forward_moments_are_those_of_Z_in_float64(dtype: str, shift: float) -> None:
    O, W, *_ = _inputs(dtype, seed=1, shift=shift)
    Z = O.astype(np.float64) @ W.astype(np.float64).T
    _, mu, M2 = narrow.forward_moments(O, W)
    np.testing.assert_allclose(mu, Z.mean(axis=0), rtol=1e-12, atol=1e-12 * abs(Z).max())
    np.testing.assert_allclose(M2, ((Z - Z.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-11)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_the_split_forward_takes_its_moments_from_the_centered_input(
        split: None, dtype: str, n_threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """One centered input a forward + backward, formed by the forward pass; the layer's
    numbers are the reference's."""
    bnprop.threads.set_threads(n_threads)
    calls = _count_centered(monkeypatch)
    O, W, gamma, beta, dY = _inputs(dtype, seed=2)
    cache = bnprop.layer_forward(O, W, gamma, beta, activation="sigmoid")
    got = bnprop.layer_backward(dY, cache)
    assert calls == [True]
    assert isinstance(cache._centered, narrow.Centered)
    ref_cache = bnprop.layer_forward(O, W, gamma, beta, activation="sigmoid", backend="numpy")
    ref = bnprop.layer_backward(dY, ref_cache, backend="numpy")
    tol = 1e-4 if dtype == "float32" else 1e-10
    for name in ("Z", "mu", "var", "inv_std", "Obar", "A", "Y"):
        assert getattr(cache, name).dtype == np.dtype(dtype), name
        assert rel_err(getattr(cache, name), getattr(ref_cache, name)) < tol, name
    for name in GRADS:
        assert rel_err(getattr(got, name), getattr(ref, name)) < tol, name
    if n_threads == 1:  # the product as the fast path computes it, whole
        Z = bnprop.threads.matmul(O, W.T, np.empty_like(cache.Z))
        np.testing.assert_array_equal(cache.Z, Z)


def test_a_cache_without_its_centered_input_forms_the_same_again(
        split: None, monkeypatch: pytest.MonkeyPatch) -> None:
    O, W, gamma, beta, dY = _inputs("float32", seed=3)
    cache = bnprop.layer_forward(O, W, gamma, beta)
    copy = pickle.loads(pickle.dumps(cache))
    monkeypatch.setitem(copy.__dict__, "_centered", None)
    calls = _count_centered(monkeypatch)
    got, want = bnprop.layer_backward(dY, copy), bnprop.layer_backward(dY, cache)
    assert calls == [False]  # the copy without it formed it again; the cache reused its own
    for name in GRADS:
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def test_a_pickled_cache_keeps_its_centered_input(split: None) -> None:
    O, W, gamma, beta, dY = _inputs("float64", seed=4)
    cache = bnprop.layer_forward(O, W, gamma, beta)
    copy = pickle.loads(pickle.dumps(cache))
    np.testing.assert_array_equal(copy._centered.C, cache._centered.C)
    got, want = bnprop.layer_backward(dY, copy), bnprop.layer_backward(dY, cache)
    for name in GRADS:
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def test_a_column_that_cancels_has_a_variance_of_zero(split: None) -> None:
    """Two equal columns of O and a row of W taking their difference: Z's column is 0, as
    are its mean and variance (the Gram form's terms cancel exactly, and M2 >= 0)."""
    O, W, gamma, beta, _ = _inputs("float64", seed=5)
    O[:, 1] = O[:, 0]
    W[3] = 0.0
    W[3, 0], W[3, 1] = 1.0, -1.0
    cache = bnprop.layer_forward(O, W, gamma, beta, activation="identity")
    assert not cache.Z[:, 3].any()
    assert cache.mu[3] == 0.0 and cache.var[3] == 0.0
    ref = bnprop.layer_forward(O, W, gamma, beta, activation="identity", backend="numpy")
    assert rel_err(cache.Y, ref.Y) < 1e-10


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("overflows", [True, False])
def test_a_product_that_may_overflow_keeps_the_moments_of_Z(
        split: None, overflows: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """max|O| * max_j ||W_j||_1 beyond half of float32's range: the moments come from Z,
    whose inf is named as the reference names it; a Z that stays finite gives the
    reference's layer."""
    O, W, gamma, beta, _ = _inputs("float32", seed=6)
    O[100, 2] = 3e38
    W[:] = 0.0
    W[:, 2] = 2.0 if overflows else 0.75  # 0.75 * 3e38 < 3.4e38, the bound 2.25e38 > 1.7e38
    assert narrow.forward_moments(O, W) is None
    calls = _count_centered(monkeypatch)
    if overflows:
        with pytest.raises(bnprop.InputError, match=r"O, W: the batch variance of Z = O W\^T "
                                                    r"overflows float64 \(max\|Z\| = inf\)"):
            bnprop.layer_forward(O, W, gamma, beta)
        with pytest.raises(bnprop.InputError, match="overflows float64"):
            bnprop.layer_forward(O, W, gamma, beta, backend="numpy")
        assert calls == [True]  # tried, then the moments of Z
        return
    cache = bnprop.layer_forward(O, W, gamma, beta)
    assert calls == [True] and cache._centered is None
    assert np.isfinite(cache.Z).all()
    ref = bnprop.layer_forward(O, W, gamma, beta, backend="numpy")
    for name in ("mu", "inv_std", "Y"):
        assert rel_err(getattr(cache, name), getattr(ref, name)) < 1e-4, name


def test_the_distributed_and_wide_forward_keep_the_moments_of_Z(
        split: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_centered(monkeypatch)
    rng = np.random.default_rng(7)
    O, W = rng.standard_normal((M, 6)), rng.standard_normal((N_OUT, 6))  # 8 * 6 > 40
    cache = bnprop.layer_forward(O, W, np.ones(N_OUT), np.zeros(N_OUT))
    assert calls == [] and cache._centered is None


def _counting(cache: bnprop.LayerCache, name: str, monkeypatch: pytest.MonkeyPatch,
              ) -> list[int]:
    """Records each call of the cache's ``_form_Z`` or ``_form_Obar``."""
    calls: list[int] = []
    form = cache.__dict__[name]
    monkeypatch.setitem(cache.__dict__, name, lambda: calls.append(1) or form())
    return calls


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_cache_keeps_y_and_forms_obar_and_z_once_when_read(
        split: None, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The forward pass keeps Y alone: Obar (its GEMM on the centered input, chunk by
    chunk) and Z = O W^T are each formed once, when first read (and before pickling),
    Obar by the forward pass's GEMMs on its chunks even on another thread count: A = gamma
    Obar + beta and Y = sigma(A) bit for bit."""
    from bnprop.kernels.activations import ACTIVATION_CODES, activation_rows

    O, W, gamma, beta, _ = _inputs(dtype, seed=8)
    cache = bnprop.layer_forward(O, W, gamma, beta, activation="tanh")
    assert cache._z_stats() is None and cache._Z is None and cache._Obar is None
    obar_calls = _counting(cache, "_form_Obar", monkeypatch)
    with bnprop.threads.using(1):
        np.testing.assert_array_equal(cache.A, gamma * cache.Obar + beta)
    assert cache.Obar is cache.Obar and obar_calls == [1] and cache._Z is None
    Y = np.empty_like(cache.Y)
    activation_rows(ACTIVATION_CODES["tanh"], cache.A, Y)
    np.testing.assert_array_equal(cache.Y, Y)
    z_calls = _counting(cache, "_form_Z", monkeypatch)
    Z = cache.Z
    assert cache.Z is Z and z_calls == [1]
    assert rel_err(Z, O.astype(np.float64) @ W.astype(np.float64).T) < (
        1e-6 if dtype == "float32" else 1e-14)
    later = bnprop.layer_forward(O, W, gamma, beta, activation="tanh")
    copy = pickle.loads(pickle.dumps(later))  # Z and Obar formed for the copy
    np.testing.assert_array_equal(copy.Z, Z)
    np.testing.assert_array_equal(copy.Obar, cache.Obar)
    assert later._Z is not None and later._Obar is not None


@pytest.mark.parametrize("stats", ["exact", "frozen"])
def test_the_backward_pass_forms_neither_obar_nor_z(split: None, stats: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The backward pass reads Obar's terms through the centered input: it forms neither
    array; its dZ, formed when read, forms Obar (not Z) and is the reference's dZ."""
    O, W, gamma, beta, dY = _inputs("float64", seed=11)
    cache = bnprop.layer_forward(O, W, gamma, beta)
    obar_calls = _counting(cache, "_form_Obar", monkeypatch)
    z_calls = _counting(cache, "_form_Z", monkeypatch)
    grads = bnprop.layer_backward(dY, cache, stats=stats)
    assert obar_calls == z_calls == []
    ref = bnprop.layer_backward(dY, bnprop.layer_forward(O, W, gamma, beta, backend="numpy"),
                                stats=stats, backend="numpy")
    assert rel_err(grads.dZ, ref.dZ) < 1e-10
    assert obar_calls == ([1] if stats == "exact" else []) and z_calls == []


def test_obar_s_gemm_that_might_overflow_keeps_z(split: None) -> None:
    """Two equal columns of O near 1e29 and a row of W taking their difference: that
    feature's variance is 0, so inv_std = 1/sqrt(eps) scales W's row beyond what the GEMM
    of Oc could sum in float32 (inf - inf: NaN). The forward pass keeps Z then: every
    output finite, the other features the reference's. (The cancelled feature itself is
    Z's rounding times inv_std here, as the reference's is that rounding normalized: both
    are noise around the exact 0.)"""
    O, W, gamma, beta, _ = _inputs("float32", seed=9)
    O = O * np.float32(1e28)
    O[:, 1] = O[:, 0]
    W[:] = 0.0
    W[:, 2] = 1.0
    W[3, 0], W[3, 1], W[3, 2] = 1e8, -1e8, 0.0
    cache = bnprop.layer_forward(O, W, gamma, beta, activation="identity")
    assert cache._centered is not None and cache._z_stats() is not None  # the Z way
    assert cache.var[3] == 0 and np.isfinite(cache.Obar).all() and np.isfinite(cache.Y).all()
    ref = bnprop.layer_forward(O, W, gamma, beta, activation="identity", backend="numpy")
    others = np.arange(N_OUT) != 3
    assert rel_err(cache.Y[:, others], ref.Y[:, others]) < 1e-4


@pytest.mark.filterwarnings("error")
def test_a_variance_beyond_float64_is_named_with_the_z_formed_for_it(split: None) -> None:
    """W x 1e200: Z fits float64 (the moments come from C), its variance does not; the
    reference's one line, max|Z| read from the Z formed for it."""
    O, W, gamma, beta, _ = _inputs("float64", seed=10)
    W = W * 1e200
    assert narrow.forward_moments(O, W) is not None
    for backend in ("numba", "numpy"):
        with pytest.raises(bnprop.InputError, match=r"^O, W: the batch variance of Z = O W\^T "
                                                    r"overflows float64 \(max\|Z\| = [0-9.]+e\+2"):
            bnprop.layer_forward(O, W, gamma, beta, backend=backend)
