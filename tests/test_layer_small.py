"""The public layer functions' short path for a plain unsplit call
(bnprop.kernels.layer_small): the validated path's bits, every other call handed to the
validated path, bad input named in one line, the cache's own copies."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import layer_inputs, rel_err

import bnprop
from bnprop import layer as public_layer
from bnprop import threads
from bnprop.kernels import blas, layer_small

CACHE = ("O", "W", "gamma", "beta", "Z", "mu", "var", "inv_std", "Obar", "A", "Y")
GRADS = ("dA", "dgamma", "dbeta", "dZ", "dW", "dO")

pytestmark = pytest.mark.skipif(not blas.available(), reason="NumPy's scipy-openblas not found")


def _inputs(m: int, n_in: int, n_out: int, dtype: str = "float32", seed: int = 0):
    return layer_inputs(m, n_in, n_out, dtype, seed)


@pytest.fixture
def validated(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls of the validated path's checks (``check_layer_inputs``, and
    ``check_array`` of dY); the short path makes none."""
    calls: list[int] = []
    for name in ("check_layer_inputs", "check_array"):
        real = getattr(public_layer, name)
        monkeypatch.setattr(public_layer, name,
                            lambda *a, _r=real, **k: (calls.append(1), _r(*a, **k))[1])
    return calls


def _through_validated_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the public functions skip the short path (their guard's module answers None)."""
    class Refuses:
        @staticmethod
        def forward(*args: object) -> None:
            return None

        @staticmethod
        def backward(*args: object) -> None:
            return None

    monkeypatch.setattr(public_layer, "_small", lambda: Refuses)


def _assert_same(a: object, b: object, names: tuple[str, ...]) -> None:
    for name in names:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "identity"])
@pytest.mark.parametrize("stats", ["exact", "frozen"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_the_plain_call_skips_the_checks_and_keeps_the_bits(
        two_threads: None, validated: list[int], monkeypatch: pytest.MonkeyPatch,
        dtype: str, activation: str, stats: str, n_threads: int) -> None:
    threads.set_threads(n_threads)
    O, W, gamma, beta, dY = _inputs(60, 100, 100, dtype, seed=n_threads)
    cache = bnprop.layer_forward(O, W, gamma, beta, activation=activation)
    grads = bnprop.layer_backward(dY, cache, stats=stats)
    assert validated == [] and cache._plan is not None
    ref = bnprop.layer_forward(O, W, gamma, beta, activation=activation, backend="numpy")
    g_ref = bnprop.layer_backward(dY, ref, stats=stats, backend="numpy")
    tol = 1e-10 if dtype == "float64" else 1e-4
    for name in CACHE:
        assert rel_err(getattr(cache, name), getattr(ref, name)) < tol, name
    for name in GRADS:
        assert rel_err(getattr(grads, name), getattr(g_ref, name)) < tol, name
    _through_validated_path(monkeypatch)
    validated.clear()
    slow = bnprop.layer_forward(O, W, gamma, beta, activation=activation)
    g_slow = bnprop.layer_backward(dY, slow, stats=stats)
    assert len(validated) >= 2  # check_layer_inputs, check_array(dY): the other path ran
    _assert_same(cache, slow, CACHE)
    _assert_same(grads, g_slow, GRADS)


def _variants(O, W, gamma, beta):  # type: ignore[no-untyped-def]
    """Calls the guard hands to the validated path, with what they must equal."""
    f64 = [a.astype(np.float64) for a in (O, W, gamma, beta)]
    fortran = np.asfortranarray(O)
    wide = np.zeros((O.shape[0], 2 * O.shape[1]), O.dtype)
    wide[:, ::2] = O
    return {
        "list O": ((O.tolist(), *f64[1:]), {}, f64),
        "Fortran O": ((fortran, W, gamma, beta), {}, (O, W, gamma, beta)),
        "strided O": ((wide[:, ::2], W, gamma, beta), {}, (O, W, gamma, beta)),
        "float64 W": ((O, W.astype(np.float64), gamma, beta), {}, f64),
        "float64 beta": ((O, W, gamma, beta.astype(np.float64)), {}, f64),
        "int eps": ((O, W, gamma, beta), {"eps": 1}, (O, W, gamma, beta)),
        "float32 eps": ((O, W, gamma, beta), {"eps": np.float32(0.25)}, (O, W, gamma, beta)),
    }


@pytest.mark.parametrize("case", list(_variants(*_inputs(3, 2, 2)[:4])))
def test_a_call_that_is_not_plain_takes_the_validated_path(validated: list[int],
                                                           case: str) -> None:
    O, W, gamma, beta, dY = _inputs(40, 30, 20, seed=3)
    args, kwargs, same_as = _variants(O, W, gamma, beta)[case]
    got = bnprop.layer_forward(*args, **kwargs)
    assert validated  # the conversions and checks ran
    ref = bnprop.layer_forward(*same_as, eps=float(kwargs.get("eps", 1e-5)))
    _assert_same(got, ref, CACHE)
    _assert_same(bnprop.layer_backward(dY.astype(got.Y.dtype), got),
                 bnprop.layer_backward(dY.astype(ref.Y.dtype), ref), GRADS)


@pytest.mark.parametrize("name", ["O", "W", "gamma", "beta"])
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_an_inf_or_nan_found_in_the_copy_is_named(name: str, bad: float) -> None:
    arrays = dict(zip(("O", "W", "gamma", "beta"), _inputs(60, 100, 100)[:4], strict=True))
    arrays[name].flat[7] = bad
    with pytest.raises(bnprop.InputError, match=rf"^{name}: contains NaN or inf \(1 of "):
        bnprop.layer_forward(*arrays.values())


@pytest.mark.parametrize(("change", "match"), [
    ({"activation": "softplus"}, r"^activation: expected one of"),
    ({"activation": ["sigmoid"]}, r"^activation: "),
    ({"eps": 0.0}, r"^eps: expected a finite number > 0"),
    ({"eps": float("nan")}, r"^eps: expected a finite number > 0"),
    ({"eps": float("inf")}, r"^eps: expected a finite number > 0"),
    ({"O": np.ones((1, 100), np.float32)}, r"^O: got a batch of 1 example"),
    ({"O": np.ones((60, 99), np.float32)}, r"^O: expected shape \(m, 100\)"),
    ({"gamma": np.ones(99, np.float32)}, r"^gamma: expected .*shape \(100,\)"),
    ({"W": np.ones((100, 100, 1), np.float32)}, r"^W: expected a 2D array"),
])
def test_bad_input_is_still_one_line(change: dict, match: str) -> None:
    O, W, gamma, beta, _ = _inputs(60, 100, 100)
    kwargs = {"O": O, "W": W, "gamma": gamma, "beta": beta, **change}
    with pytest.raises(bnprop.InputError, match=match):
        bnprop.layer_forward(**kwargs)


def test_the_cache_keeps_its_own_copies() -> None:
    O, W, gamma, beta, dY = _inputs(60, 100, 100)
    cache = bnprop.layer_forward(O, W, gamma, beta)
    for name, given in zip(("O", "W", "gamma", "beta"), (O, W, gamma, beta), strict=True):
        assert not np.shares_memory(getattr(cache, name), given), name
    before = bnprop.layer_backward(dY, cache)
    for a in (O, W, gamma, beta):
        a *= 3.0
    _assert_same(bnprop.layer_backward(dY, cache), before, GRADS)


@pytest.mark.parametrize(("dY_of", "match"), [
    (lambda dY: dY.astype(np.float64), None),               # converted to the cache's dtype
    (lambda dY: np.asfortranarray(dY), None),
    (lambda dY: dY.tolist(), None),
    (lambda dY: dY[:-1], r"^dY: expected shape \(60, 100\) with m = 60, got shape \(59, 100\)"),
    (lambda dY: np.where(np.arange(100) == 3, np.nan, dY).astype(np.float32),
     r"^dY: contains NaN or inf \(60 of 6000 entries"),
])
def test_a_dY_that_is_not_plain_takes_the_validated_path(dY_of, match: str | None) -> None:  # type: ignore[no-untyped-def]
    O, W, gamma, beta, dY = _inputs(60, 100, 100)
    cache = bnprop.layer_forward(O, W, gamma, beta)
    if match is not None:
        with pytest.raises(bnprop.InputError, match=match):
            bnprop.layer_backward(dY_of(dY), cache)
        return
    _assert_same(bnprop.layer_backward(dY_of(dY), cache), bnprop.layer_backward(dY, cache),
                 GRADS)


def test_a_nan_in_a_plain_dY_is_named() -> None:
    O, W, gamma, beta, dY = _inputs(60, 100, 100)
    dY[5, 9] = np.nan
    with pytest.raises(bnprop.InputError, match=r"^dY: contains NaN or inf \(1 of 6000 "
                                                r"entries, first at index \(5, 9\)\)"):
        bnprop.layer_backward(dY, bnprop.layer_forward(O, W, gamma, beta))


def test_a_pickled_cache_has_no_plan_and_the_same_backward() -> None:
    O, W, gamma, beta, dY = _inputs(60, 100, 100)
    cache = bnprop.layer_forward(O, W, gamma, beta)
    back = pickle.loads(pickle.dumps(cache))
    assert cache._plan is not None and back._plan is None
    _assert_same(bnprop.layer_backward(dY, back), bnprop.layer_backward(dY, cache), GRADS)


def test_a_thread_count_changed_after_the_forward_pass_is_checked_again(
        two_threads: None, validated: list[int]) -> None:
    O, W, gamma, beta, dY = _inputs(60, 100, 100)
    cache = bnprop.layer_forward(O, W, gamma, beta)
    assert cache._plan.n_threads == 2
    with threads.using(1):
        grads = bnprop.layer_backward(dY, cache)
    assert validated  # dY checked: the validated path decided the split again
    _assert_same(grads, bnprop.layer_backward(dY, cache), GRADS)


def test_plans_are_per_shape_and_thread_count_and_bounded(
        two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layer_small, "_plans", {})
    monkeypatch.setattr(layer_small, "MAX_PLANS", 3)
    for m in (10, 20):
        bnprop.layer_forward(*_inputs(m, 5, 4)[:4])
    with threads.using(1):
        bnprop.layer_forward(*_inputs(10, 5, 4)[:4])
    plans = list(layer_small._plans.values())
    assert [(p.m, p.n_threads) for p in plans] == [(10, 2), (20, 2), (10, 1)]
    bnprop.layer_forward(*_inputs(30, 5, 4)[:4])
    assert [p.m for p in layer_small._plans.values()] == [30]


def test_a_batch_split_in_parts_has_no_plan(two_threads: None) -> None:
    O, W, gamma, beta, _ = _inputs(9000, 8, 64, seed=2)
    cache = bnprop.layer_forward(O, W, gamma, beta)
    assert cache._plan is None and cache._stats64 is not None  # the split path's cache
    ref = bnprop.layer_forward(O, W, gamma, beta, backend="numpy")
    assert rel_err(cache.Y, ref.Y) < 1e-4
