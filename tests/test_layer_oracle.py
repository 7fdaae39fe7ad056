"""float64: bnprop's layer equals PyTorch autograd to 1e-10 and central differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bnprop
from bnprop import jacobians as jac
from tests.conftest import random_layer, rel_err

torch = pytest.importorskip("torch")
from bnprop.interop.torch import torch_layer_grads  # noqa: E402

ACTS = ["sigmoid", "tanh", "relu", "identity"]

layers = st.tuples(
    st.integers(2, 40),  # m
    st.integers(1, 12),  # n_in
    st.integers(1, 10),  # n_out
    st.sampled_from(ACTS),
    st.integers(0, 2**32 - 1),  # data seed
    st.sampled_from([0.1, 1.0, 30.0]),  # input scale
)


def _cancel_scale(cache: bnprop.LayerCache, dA: np.ndarray) -> dict[str, float]:
    """Sizes of the terms the exact dZ subtracts, carried into dW and dO."""
    m = cache.m
    terms = np.abs(cache.gamma * cache.inv_std) * (
        np.abs(dA) + np.abs(dA.sum(0)) / m
        + np.abs(cache.Obar) * np.abs((dA * cache.Obar).sum(0)) / m
    )
    return {
        "dZ": float(terms.max()),
        "dW": float((terms.T @ np.abs(cache.O)).max()),
        "dO": float((terms @ np.abs(cache.W)).max()),
    }


@settings(max_examples=150, deadline=None)
@given(layers)
def test_exact_equals_autograd(case: tuple) -> None:
    m, n_in, n_out, act, seed, scale = case
    O, W, gamma, beta, dY = random_layer(np.random.default_rng(seed), m, n_in, n_out)
    O *= scale
    cache = bnprop.layer_forward(O, W, gamma, beta, activation=act)
    g = bnprop.layer_backward(dY, cache, stats="exact")
    t = torch_layer_grads(O, W, gamma, beta, dY, activation=act)
    s = _cancel_scale(cache, g.dA)
    for key in ("Z", "Obar", "A", "Y"):
        assert rel_err(getattr(cache, key), getattr(t, key)) < 1e-10, key
    for key in ("dA", "dgamma", "dbeta"):
        assert rel_err(getattr(g, key), getattr(t, key)) < 1e-10, key
    assert rel_err(g.dW, t.dW, s["dW"]) < 1e-10
    assert rel_err(g.dO, t.dO, s["dO"]) < 1e-10


@settings(max_examples=100, deadline=None)
@given(layers)
def test_frozen_equals_autograd_with_detached_statistics(case: tuple) -> None:
    m, n_in, n_out, act, seed, scale = case
    O, W, gamma, beta, dY = random_layer(np.random.default_rng(seed), m, n_in, n_out)
    O *= scale
    cache = bnprop.layer_forward(O, W, gamma, beta, activation=act)
    g = bnprop.layer_backward(dY, cache, stats="frozen")
    t = torch_layer_grads(O, W, gamma, beta, dY, activation=act, stats="frozen")
    for key in ("dA", "dgamma", "dbeta", "dW", "dO"):
        assert rel_err(getattr(g, key), getattr(t, key)) < 1e-10, key


def test_generic_shapes_need_no_cancellation_allowance() -> None:
    """For m >= 3 on ordinary data the plain normwise error is already at rounding."""
    rng = np.random.default_rng(7)
    for m, n_in, n_out in [(3, 4, 2), (16, 9, 5), (64, 30, 20)]:
        for act in ACTS:
            O, W, gamma, beta, dY = random_layer(rng, m, n_in, n_out)
            g = bnprop.layer_backward(dY, bnprop.layer_forward(O, W, gamma, beta, activation=act))
            t = torch_layer_grads(O, W, gamma, beta, dY, activation=act)
            for key in ("dA", "dgamma", "dbeta", "dW", "dO"):
                assert rel_err(getattr(g, key), getattr(t, key)) < 1e-12, (m, act, key)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("stats", ["exact", "frozen"])
def test_gradients_equal_central_differences(act: str, stats: str) -> None:
    rng = np.random.default_rng(3)
    O, W, gamma, beta, dY = random_layer(rng, 6, 4, 3)
    cache = bnprop.layer_forward(O, W, gamma, beta, activation=act)
    g = bnprop.layer_backward(dY, cache, stats=stats)
    frozen = stats == "frozen"
    f = bnprop.ACTIVATIONS[act].forward

    def F(**kw: np.ndarray) -> float:
        return float(np.sum(dY * f(jac.forward_A(cache, frozen=frozen, **kw))))

    assert rel_err(g.dW, jac.central_difference(lambda w: F(W=w), W)) < 1e-7
    assert rel_err(g.dgamma, jac.central_difference(lambda x: F(gamma=x), gamma)) < 1e-7
    assert rel_err(g.dbeta, jac.central_difference(lambda x: F(beta=x), beta)) < 1e-7
    if not frozen:
        def F_of_O(o: np.ndarray) -> float:
            return float(np.sum(dY * bnprop.layer_forward(o, W, gamma, beta, activation=act).Y))

        assert rel_err(g.dO, jac.central_difference(F_of_O, O)) < 1e-7


def test_frozen_differs_from_exact_in_training() -> None:
    """Erratum 5: the handout's W gradient is not the training gradient."""
    rng = np.random.default_rng(0)
    O, W, gamma, beta, dY = random_layer(rng, 8, 5, 4)
    cache = bnprop.layer_forward(O, W, gamma, beta)
    exact = bnprop.layer_backward(dY, cache, stats="exact")
    frozen = bnprop.layer_backward(dY, cache, stats="frozen")
    assert rel_err(frozen.dW, exact.dW) > 0.05
    # dgamma, dbeta and dA do not depend on the statistics' dependence on W.
    for key in ("dA", "dgamma", "dbeta"):
        np.testing.assert_array_equal(getattr(frozen, key), getattr(exact, key))


def test_exact_gradient_is_orthogonal_to_what_normalization_cancels() -> None:
    """Per feature, dZ sums to zero and is orthogonal to Obar (up to the eps term)."""
    rng = np.random.default_rng(1)
    O, W, gamma, beta, dY = random_layer(rng, 32, 6, 5)
    cache = bnprop.layer_forward(O, W, gamma, beta)
    g = bnprop.layer_backward(dY, cache)
    dZ = g.dZ
    assert np.max(np.abs(dZ.sum(0))) < 1e-12 * np.abs(dZ).sum()
    ratio = cache.var / (cache.var + cache.eps)  # Obar's column variance
    # sum_i dZ_i Obar_i = gamma inv_std sum(G Obar) (1 - ratio): O(eps) small.
    expected = cache.gamma * cache.inv_std * g.dgamma * (1 - ratio)
    np.testing.assert_allclose((dZ * cache.Obar).sum(0), expected, rtol=1e-6, atol=1e-13)
