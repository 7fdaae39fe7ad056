"""The compiled sigmoid and tanh (bnprop.kernels.activations, FMA-contracted: see
bnprop.kernels._jit.ACTIVATION_JIT_OPTIONS) within a few ulps of the exact value, computed
with decimal at 40 digits, over [-100, 100]; 0 where the kernel's exp underflows."""

from __future__ import annotations

import decimal

import numpy as np
import pytest
from test_activations_reference import _CTX, _errors, _grid

from bnprop.kernels import activations as kernels

ULPS = 4  # measured on this grid: float32 sigmoid 1.94 ulps, tanh 2.31; float64 1.87, 2.30


def _kernel(name: str, a: np.ndarray) -> np.ndarray:
    A = np.ascontiguousarray(a.reshape(1, -1))
    Y = np.empty_like(A)
    kernels.activation_rows(kernels.ACTIVATION_CODES[name], A, Y)
    return Y[0]


def _exact_tanh(a: float) -> decimal.Decimal:
    """``tanh(a)`` to 40 significant digits."""
    e = _CTX.exp(2 * decimal.Decimal(a))
    return _CTX.divide(_CTX.subtract(e, 1), _CTX.add(e, 1))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_the_sigmoid_kernel_is_within_a_few_ulps(dt: type) -> None:
    """4 ulps relative where the kernel's exp of -|a| is normal (a >= -87 in float32,
    -708 in float64: everywhere on [-100, 100] for float64); 0 below that in float32
    (the exact value is then below 1.7e-38)."""
    a = _grid(dt, -100.0, 100.0)
    Y = _kernel("sigmoid", a)
    assert Y.dtype == dt
    normal = a >= (-87.0 if dt is np.float32 else -708.0)
    err, rel = _errors(Y[normal], a[normal])
    assert err.max() <= ULPS, (err.max(), a[normal][err.argmax()])
    assert rel.max() <= ULPS * np.finfo(dt).eps
    assert np.all(Y[~normal] == 0)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_the_tanh_kernel_is_within_a_few_ulps(dt: type) -> None:
    """4 ulps relative everywhere on [-100, 100], down to the tiny arguments where
    ``tanh(a) = a`` to rounding, with tanh's sign."""
    a = _grid(dt, -100.0, 100.0)
    Y = _kernel("tanh", a)
    assert Y.dtype == dt
    nonzero = a != 0
    err, _ = _errors(Y[nonzero], a[nonzero], _exact_tanh)  # an ulp: relative, all normal
    assert err.max() <= ULPS, (err.max(), a[nonzero][err.argmax()])
    assert np.all(np.signbit(Y) == np.signbit(a))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_special_arguments_saturate_and_nan_stays_nan(dt: type) -> None:
    """NaN stays NaN, +-inf and arguments past the exp's range saturate, +-0 keep tanh's
    sign, and tanh is the argument itself down to the smallest subnormals (the float64
    ratio form's ``D - E = -2r`` for ``k = 0``: no cancellation)."""
    tiny = float(np.finfo(dt).smallest_subnormal)
    a = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 800.0, -800.0, 1e-30, -1e-30,
                  tiny, -tiny], dt)
    nan, one, big = [np.nan], [1.0, 0.0], [1.0, 0.0]
    np.testing.assert_array_equal(
        _kernel("sigmoid", a),
        np.array([*nan, *one, 0.5, 0.5, *big, 0.5, 0.5, 0.5, 0.5], dt))
    np.testing.assert_array_equal(
        _kernel("tanh", a),
        np.array([*nan, 1.0, -1.0, 0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, tiny, -tiny], dt))
    assert np.signbit(_kernel("tanh", a))[[4, 8, 10]].all()


def test_float64_sigmoid_is_zero_where_exp_leaves_the_normal_range() -> None:
    """Below a = -708 the exact sigmoid is subnormal: the kernel returns 0 (documented),
    and 1 for a > 708 where it rounds to 1 anyway."""
    a = np.array([-707.5, -708.5, -744.0, 708.5], np.float64)
    Y = _kernel("sigmoid", a)
    assert Y[0] > 0 and np.isfinite(Y[0])
    np.testing.assert_array_equal(Y[1:], [0.0, 0.0, 1.0])
