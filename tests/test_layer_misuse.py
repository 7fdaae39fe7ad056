"""The layer functions with inputs that used to go silently wrong: tensors the cache shared
memory with, a dY beyond float32's range, hand-built caches whose shapes do not fit, a
batch variance beyond float64."""

from __future__ import annotations

import numpy as np
import pytest

import bnprop
from bnprop import InputError


def _layer(dtype: type = np.float64, m: int = 6, n_in: int = 4, n_out: int = 3):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((m, n_in)).astype(dtype),
            rng.standard_normal((n_out, n_in)).astype(dtype),
            (1 + rng.random(n_out)).astype(dtype), rng.standard_normal(n_out).astype(dtype),
            rng.standard_normal((m, n_out)).astype(dtype))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_the_cache_copies_inputs_that_share_memory_with_a_tensor(backend: str) -> None:
    torch = pytest.importorskip("torch")
    O, W, gamma, beta, dY = _layer()
    tensors = [torch.from_numpy(a.copy()) for a in (O, W, gamma, beta)]
    cache = bnprop.layer_forward(*tensors, backend=backend)
    before = bnprop.layer_backward(dY, cache, backend=backend)
    with torch.no_grad():
        for t in tensors:
            t.mul_(2)
    after = bnprop.layer_backward(dY, cache, backend=backend)
    for name in ("dW", "dO", "dgamma", "dbeta"):
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name), name)
    for name, t in zip(("O", "W", "gamma", "beta"), tensors, strict=True):
        assert not np.shares_memory(getattr(cache, name), t.numpy()), name


def test_memoryview_and_array_views_are_copied_too() -> None:
    O, W, gamma, beta, _ = _layer()
    mv = memoryview(W.copy())
    cache = bnprop.layer_forward(O[:, :], np.asarray(mv), gamma, beta)
    assert not np.shares_memory(cache.W, np.asarray(mv)) and not np.shares_memory(cache.O, O)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_a_dy_beyond_float32s_range_is_named_as_such(backend: str) -> None:
    O, W, gamma, beta, dY = _layer(np.float32)
    cache = bnprop.layer_forward(O, W, gamma, beta, backend=backend)
    dY = dY.astype(np.float64)
    dY[1, 2] = 1e39
    with pytest.raises(InputError, match=r"^dY: contains NaN or inf \(1 of 18 entries, first "
                       r"at index \(1, 2\), 1e\+39 in float64, beyond float32's range"):
        bnprop.layer_backward(dY, cache, backend=backend)


def _fields(cache: bnprop.LayerCache) -> dict[str, object]:
    names = ("O", "W", "gamma", "beta", "Z", "mu", "var", "inv_std", "Obar", "A", "Y",
             "activation", "eps")
    return {name: getattr(cache, name) for name in names}


@pytest.mark.parametrize(("change", "match"), [
    ({"O": "narrow"}, r"^O, W: expected shapes \(m, n_in\) and \(n_out, n_in\), got \(6, 2\) "
                      r"and \(3, 4\) instead\.$"),
    ({"Y": "short"}, r"^Y: expected shape \(6, 3\) to fit O \(6, 4\) and W \(3, 4\), got "
                     r"\(5, 3\) instead\.$"),
    ({"gamma": "long"}, r"^gamma: expected shape \(3,\) to fit O"),
    ({"Z": None}, r"^Z: expected a real numeric array, got NoneType instead\.$"),
    ({"activation": "swish"}, r"^activation: expected one of 'sigmoid', 'tanh', 'relu', "
                              r"'identity', got 'swish' instead\.$"),
    ({"eps": 0.0}, r"^eps: expected a finite number > 0, got 0\.0 instead\.$"),
    ({"m_global": 3}, r"^m_global: expected None or an integer >= m = 6, got 3 instead\.$"),
])
def test_a_hand_built_cache_that_does_not_fit_is_one_line(change: dict, match: str) -> None:
    """The backward kernels trust the shapes (one that did not fit wrote uninitialized
    values into dW, or past it)."""
    fields = _fields(bnprop.layer_forward(*_layer()[:4]))
    shapes = {"narrow": lambda a: a[:, :2].copy(), "short": lambda a: a[:5].copy(),
              "long": lambda a: np.append(a, 1.0)}
    for name, how in change.items():
        fields[name] = shapes[how](fields[name]) if how in shapes else how
    with pytest.raises(InputError, match=match):
        bnprop.LayerCache(**fields)


def test_a_hand_built_cache_that_fits_still_works() -> None:
    O, W, gamma, beta, dY = _layer()
    cache = bnprop.layer_forward(O, W, gamma, beta)
    hand = bnprop.LayerCache(**_fields(cache), m_global=6)
    np.testing.assert_array_equal(bnprop.layer_backward(dY, hand).dW,
                                  bnprop.layer_backward(dY, cache).dW)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("m", [6, 5000])  # the small compiled call, the split path
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("kind", ["variance", "float32 Z"])
def test_a_batch_variance_beyond_float64_is_one_line(two_threads: None, backend: str, m: int,
                                                     n_threads: int, kind: str) -> None:
    """A float64 variance beyond float64, or a float32 Z = O W^T beyond float32 (then inf):
    the one line, and no NumPy warning on the way (warnings raise here)."""
    import warnings

    O, W, gamma, beta, _ = _layer(m=m)
    if kind == "variance":
        W = W * 1e200
    else:
        O, W = np.full_like(O, 3e38, np.float32), np.full_like(W, 2.0, np.float32)
        gamma, beta = gamma.astype(np.float32), beta.astype(np.float32)
    bnprop.threads.set_threads(n_threads)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=r"^O, W: the batch variance of Z = O W\^T "
                                             r"overflows float64 \(max\|Z\| = .*\); scale O "
                                             r"or W down\.$"):
            bnprop.layer_forward(O, W, gamma, beta, backend=backend)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_a_float32_batch_variance_beyond_float32_still_computes(backend: str) -> None:
    """var_B is computed in float64, so the layer is right; the float32 cache shows inf
    for it (as stored), without a NumPy warning."""
    import warnings

    O, W, gamma, beta, dY = _layer(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = bnprop.layer_forward(O * np.float32(1e20), W, gamma, beta, backend=backend)
        grads = bnprop.layer_backward(dY, cache, backend=backend)
    assert np.isinf(cache.var).any() and np.isfinite(cache.inv_std).all()
    assert all(np.isfinite(getattr(grads, n)).all() for n in ("dW", "dO", "dgamma", "dbeta"))
