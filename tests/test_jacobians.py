"""Each Jacobian the handout states, materialized and compared with central differences."""

from __future__ import annotations

import numpy as np
import pytest

import bnprop
from bnprop import jacobians as jac
from tests.conftest import random_layer, rel_err

ACTS = ["sigmoid", "tanh", "relu", "identity"]


def _cache(act: str = "sigmoid", seed: int = 0) -> bnprop.LayerCache:
    O, W, gamma, beta, _ = random_layer(np.random.default_rng(seed), 7, 4, 3)
    return bnprop.layer_forward(O, W, gamma, beta, activation=act)


@pytest.mark.parametrize("act", ACTS)
def test_statement_1_J_o_wrt_a_is_diag_of_derivative(act: str) -> None:
    cache = _cache(act)
    for i in range(cache.m):
        J = jac.stated_J_o_wrt_a(cache, i)
        assert np.count_nonzero(J - np.diag(np.diag(J))) == 0
        assert rel_err(J, jac.numeric_J_o_wrt_a(cache, i)) < 1e-8


def test_statement_2_J_a_wrt_gamma_is_diag_obar() -> None:
    cache = _cache()
    for i in range(cache.m):
        assert rel_err(jac.stated_J_a_wrt_gamma(cache, i), jac.numeric_J_a_wrt_gamma(cache, i)) < 1e-8


def test_statement_3_J_a_wrt_beta_is_identity() -> None:
    cache = _cache()
    for i in range(cache.m):
        J = jac.numeric_J_a_wrt_beta(cache, i)
        assert rel_err(jac.stated_J_a_wrt_beta(cache, i), J) < 1e-8


def test_statement_4_holds_with_frozen_statistics() -> None:
    cache = _cache()
    for i in range(cache.m):
        stated = jac.stated_J_a_wrt_W_frozen(cache, i)
        assert stated.shape == (3, 3, 4)
        assert rel_err(stated, jac.numeric_J_a_wrt_W(cache, i, frozen=True)) < 1e-8


def test_statement_4_fails_in_training_mode() -> None:
    cache = _cache()
    errors = [rel_err(jac.stated_J_a_wrt_W_frozen(cache, i),
                      jac.numeric_J_a_wrt_W(cache, i, frozen=False)) for i in range(cache.m)]
    assert min(errors) > 1e-2


def test_training_mode_dA_dZ_per_feature() -> None:
    cache = _cache()
    stated = jac.stated_dA_dZ_training(cache)
    assert stated.shape == (3, 7, 7)
    assert rel_err(stated, jac.numeric_dA_dZ_training(cache)) < 1e-8
    # The projection annihilates the constant vector: a shift of Z changes nothing.
    np.testing.assert_allclose(stated @ np.ones(7), 0, atol=1e-12)


def test_training_mode_J_A_wrt_W() -> None:
    cache = _cache()
    stated = jac.stated_J_A_wrt_W_training(cache)
    assert stated.shape == (7, 3, 3, 4)
    assert rel_err(stated, jac.numeric_J_A_wrt_W_training(cache)) < 1e-8


def test_training_jacobian_contracts_to_layer_backward() -> None:
    """sum_{i,p} dY-derived G[i,p] J[i,p,:,:] is the exact dW of layer_backward."""
    rng = np.random.default_rng(5)
    O, W, gamma, beta, dY = random_layer(rng, 7, 4, 3)
    cache = bnprop.layer_forward(O, W, gamma, beta, activation="identity")
    dW = np.einsum("ip,ipqr->qr", dY, jac.stated_J_A_wrt_W_training(cache))
    assert rel_err(bnprop.layer_backward(dY, cache).dW, dW) < 1e-12


def test_central_difference_shapes_and_accuracy() -> None:
    J = jac.central_difference(lambda x: np.array([x[0] * x[1], np.sin(x[1])]),
                               np.array([2.0, 0.5]))
    np.testing.assert_allclose(J, [[0.5, 2.0], [0.0, np.cos(0.5)]], rtol=1e-9)


def test_max_rel_error() -> None:
    assert jac.max_rel_error(np.array([1.0, 2.1]), np.array([1.0, 2.0])) == pytest.approx(0.05)
    assert jac.max_rel_error(np.zeros(2), np.zeros(2)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        jac.max_rel_error(np.zeros(2), np.zeros(3))
