"""The compiled sigmoid and tanh (bnprop.kernels.activations, FMA-contracted: see
bnprop.kernels._jit.ACTIVATION_JIT_OPTIONS) within a few ulps of the exact value, computed
with decimal at 40 digits, over [-100, 100]; 0 where the kernel's exp underflows."""

from __future__ import annotations

import decimal

import numpy as np
import pytest
from test_activations_reference import _CTX, _errors, _grid

from bnprop.kernels import activations as kernels

ULPS = 4  # measured: sigmoid up to 2.36 ulps (float32), tanh 2.49


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
