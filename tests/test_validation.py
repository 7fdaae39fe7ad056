"""Bad input to the Python API: one clear line naming the argument and the problem."""

from __future__ import annotations

import numpy as np
import pytest

import bnprop
from bnprop import InputError
from tests.conftest import random_layer


@pytest.fixture
def layer() -> tuple[np.ndarray, ...]:
    return random_layer(np.random.default_rng(0), 6, 4, 3)


@pytest.mark.parametrize(
    ("arg", "bad", "match"),
    [
        ("O", np.zeros(4), r"O: expected a 2D array of shape \(m, n_in\), got a 1D array of shape \(4,\)"),
        ("O", np.zeros((6, 5)), r"O: expected shape \(m, 4\) to match W of shape \(3, 4\), got shape \(6, 5\)"),
        ("W", np.zeros((3, 4, 1)), r"W: expected a 2D array of shape \(n_out, n_in\), got a 3D array"),
        ("gamma", np.ones(2), r"gamma: expected shape \(3,\) with n_out = 3, got shape \(2,\)"),
        ("beta", np.ones((3, 1)), r"beta: expected a 1D array of shape \(n_out,\), got a 2D array"),
        ("gamma", np.array(["a", "b", "c"]), r"gamma: expected a real numeric array, got dtype <U1"),
        ("O", np.array([[1, 2j]]), "O: expected a real numeric array, got dtype complex"),
    ],
)
def test_bad_shapes_and_types(layer: tuple, arg: str, bad: np.ndarray, match: str) -> None:
    O, W, gamma, beta, _ = layer
    kwargs = {"O": O, "W": W, "gamma": gamma, "beta": beta, arg: bad}
    with pytest.raises(InputError, match=match):
        bnprop.layer_forward(**kwargs)


@pytest.mark.parametrize("arg", ["O", "W", "gamma", "beta"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_inputs(layer: tuple, arg: str, value: float) -> None:
    O, W, gamma, beta, _ = layer
    arrays = {"O": O.copy(), "W": W.copy(), "gamma": gamma.copy(), "beta": beta.copy()}
    arrays[arg].flat[1] = value
    with pytest.raises(InputError, match=rf"{arg}: contains NaN or inf \(1 of \d+ entries"):
        bnprop.layer_forward(**arrays)


def test_nonfinite_dY(layer: tuple) -> None:
    O, W, gamma, beta, dY = layer
    cache = bnprop.layer_forward(O, W, gamma, beta)
    dY[2, 1] = np.nan
    with pytest.raises(InputError, match=r"dY: contains NaN or inf .*first at index \(2, 1\)"):
        bnprop.layer_backward(dY, cache)


def test_batch_of_one_is_refused(layer: tuple) -> None:
    O, W, gamma, beta, _ = layer
    with pytest.raises(InputError, match="batch of 1 example; in training mode the batch "
                                         "variance of a single example is undefined"):
        bnprop.layer_forward(O[:1], W, gamma, beta)


def test_empty_arrays(layer: tuple) -> None:
    _, W, gamma, beta, _ = layer
    with pytest.raises(InputError, match="batch of 0"):
        bnprop.layer_forward(np.zeros((0, 4)), W, gamma, beta)
    with pytest.raises(InputError, match="empty arrays"):
        bnprop.layer_forward(np.zeros((3, 0)), np.zeros((2, 0)), np.ones(2), np.zeros(2))


def test_unknown_activation_and_stats(layer: tuple) -> None:
    O, W, gamma, beta, dY = layer
    with pytest.raises(InputError, match=r"activation: expected one of 'sigmoid', 'tanh', "
                                         r"'relu', 'identity'. Got 'softplus' instead."):
        bnprop.layer_forward(O, W, gamma, beta, activation="softplus")
    cache = bnprop.layer_forward(O, W, gamma, beta)
    with pytest.raises(InputError, match=r"stats: expected one of 'exact', 'frozen'\. Got 'approx'"):
        bnprop.layer_backward(dY, cache, stats="approx")


@pytest.mark.parametrize("eps", [0, -1e-5, np.nan, np.inf, "x"])
def test_bad_eps(layer: tuple, eps: object) -> None:
    O, W, gamma, beta, _ = layer
    with pytest.raises(InputError, match="eps: expected a"):
        bnprop.layer_forward(O, W, gamma, beta, eps=eps)


def test_bad_dY_shape_and_cache(layer: tuple) -> None:
    O, W, gamma, beta, dY = layer
    cache = bnprop.layer_forward(O, W, gamma, beta)
    with pytest.raises(InputError, match=r"dY: expected shape \(6, 3\) with n_out = 3, got shape \(6, 4\)"):
        bnprop.layer_backward(np.zeros((6, 4)), cache)
    with pytest.raises(InputError, match=r"dY: expected shape \(6, 3\) with m = 6, got shape \(5, 3\)"):
        bnprop.layer_backward(np.zeros((5, 3)), cache)
    with pytest.raises(InputError, match="cache: expected the LayerCache returned by layer_forward, got dict"):
        bnprop.layer_backward(dY, {"O": O})


def test_messages_are_one_line(layer: tuple) -> None:
    O, W, gamma, beta, _ = layer
    with pytest.raises(InputError) as info:
        bnprop.layer_forward(O.T, W, gamma, beta)
    assert "\n" not in str(info.value)


def test_lists_are_accepted() -> None:
    cache = bnprop.layer_forward([[1.0], [3.0]], [[1.0]], [1.0], [0.0], activation="identity")
    np.testing.assert_allclose(cache.mu, [2.0])
    np.testing.assert_allclose(cache.var, [1.0])
