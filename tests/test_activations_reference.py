"""The NumPy reference sigmoid of bnprop.activations: a few ulps of the exact value over
the whole range (both tails), dtype kept, no floating-point warnings, NaN and +-inf as
NumPy's; and gradients through its far left tail equal PyTorch autograd's.

The exact values are computed with :mod:`decimal` at 40 digits from the input's exact
binary value. ``(1 + tanh(A/2)) / 2``, the formula used before, fails these tests: it is
accurate to a few ulps of 1 only (float64 sigmoid(-30) was 1.7e-4 relative off, float32
6% off at -16 and 0 from -20 on).
"""

from __future__ import annotations

import decimal
import warnings

import numpy as np
import pytest
from conftest import assert_grads_match_torch, rel_err

from bnprop import activations, nn

DTYPES = [np.float32, np.float64]
ULPS = 4  # measured: up to 2.7 ulps (float32) and 1.9 (float64)
_CTX = decimal.Context(prec=40)


def _sigmoid(A: np.ndarray) -> np.ndarray:
    return activations.get_activation("sigmoid").forward(A)


def _exact(a: float) -> decimal.Decimal:
    """``1 / (1 + exp(-a))`` to 40 significant digits."""
    return _CTX.divide(1, _CTX.add(1, _CTX.exp(-decimal.Decimal(a))))


def _errors(Y: np.ndarray, a: np.ndarray, exact=_exact) -> tuple[np.ndarray, np.ndarray]:
    """``|Y - exact|`` in ulps and relative (inf where the exact value underflows
    float64). An ulp is the spacing of Y's dtype at the exact value: relative for a
    normal value, the smallest subnormal for a subnormal one."""
    t = [exact(float(x)) for x in a]
    err = np.array([float(abs(decimal.Decimal(float(y)) - ti)) for y, ti in zip(Y, t, strict=True)])
    t64 = np.array([float(ti) for ti in t])
    rel = np.divide(err, t64, out=np.full_like(err, np.inf), where=t64 > 0)
    return err / np.spacing(t64.astype(Y.dtype)).astype(np.float64), rel


def _grid(dt: type, lo: float, hi: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([
        np.linspace(lo, hi, 20001), rng.uniform(lo, hi, 2000),
        [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 0.5, -0.5],
    ]).astype(dt)


@pytest.mark.parametrize("dt", DTYPES)
def test_within_a_few_ulps_of_exact_from_minus_100_to_100(dt: type) -> None:
    """|Y - exact| <= 4 ulps on [-100, 100]. float64: every exact value there is normal,
    so this is 4 ulps relative. float32: relative for A >= -87.3; below, the exact value
    is subnormal (>= 3.7e-44 = 26 smallest subnormals at A = -100) and the error is at
    most 4 smallest subnormals (1.4e-45 each) -- in particular Y is never 0 here."""
    a = _grid(dt, -100.0, 100.0)
    Y = _sigmoid(a)
    assert Y.dtype == dt
    assert np.all(Y > 0)
    err, rel = _errors(Y, a)
    assert err.max() <= ULPS, (err.max(), a[err.argmax()])
    assert rel[a >= -87.3].max() <= ULPS * np.finfo(dt).eps


@pytest.mark.parametrize(("dt", "lo"), [(np.float32, -110.0), (np.float64, -760.0)])
def test_far_left_tail_within_a_few_smallest_subnormals(dt: type, lo: float) -> None:
    """Down to where the exact value underflows (float32 -103.3, float64 -745.1): within
    4 ulps (the smallest subnormal once subnormal); beyond that, 0."""
    a = np.linspace(lo, -80.0 if dt is np.float32 else -700.0, 4001).astype(dt)
    Y = _sigmoid(a)
    err, _ = _errors(Y, a)
    assert err.max() <= ULPS, (err.max(), a[err.argmax()])
    assert np.all(Y[a >= (-103.0 if dt is np.float32 else -745.0)] > 0)


@pytest.mark.parametrize("dt", DTYPES)
def test_the_left_tail_derivative_from_Y_within_a_few_ulps(dt: type) -> None:
    """sigma'(A) = Y (1 - Y) as the backward step computes it, for A in [-80, 0] (normal
    values): the exact derivative is exp(-|A|) / (1 + exp(-|A|))^2."""
    a = np.linspace(-80.0, 0.0, 4001).astype(dt)
    act = activations.get_activation("sigmoid")
    d = act.derivative(a, act.forward(a))
    assert d.dtype == dt

    def exact(x: float) -> decimal.Decimal:
        e = _CTX.exp(-abs(decimal.Decimal(x)))
        return _CTX.divide(e, _CTX.power(_CTX.add(1, e), 2))

    err, _ = _errors(d, a, exact)
    assert err.max() <= 2 * ULPS, (err.max(), a[err.argmax()])


@pytest.mark.parametrize("dt", DTYPES)
def test_dtype_shape_and_input_kept(dt: type) -> None:
    A = np.linspace(-50, 50, 12).reshape(3, 4).astype(dt)
    before = A.copy()
    Y = _sigmoid(A)
    assert Y.dtype == dt and Y.shape == (3, 4)
    np.testing.assert_array_equal(A, before)
    assert _sigmoid(A[:, ::2]).shape == (3, 2)  # a strided view
    y0 = _sigmoid(np.array(-30.0, dt))  # 0-d
    assert y0.dtype == dt and float(y0) == pytest.approx(9.357622968839299e-14, rel=1e-6, abs=0)


@pytest.mark.parametrize("dt", DTYPES)
def test_no_floating_point_warning_for_any_input(dt: type) -> None:
    """No overflow, underflow, invalid or divide warning (nor error, under
    ``np.errstate(all="raise")``) for the extremes, subnormals, +-inf and NaN."""
    fi = np.finfo(dt)
    a = np.array([-fi.max, -1e30, -1e4, -800, -104, -100, -88, -fi.tiny,
                  -fi.smallest_subnormal, -0.0, 0.0, fi.smallest_subnormal, fi.tiny, 88,
                  800, 1e30, fi.max, np.inf, -np.inf, np.nan], dtype=dt)
    for state in ({}, {"all": "raise"}, {"all": "warn"}):
        with warnings.catch_warnings(), np.errstate(**state):
            warnings.simplefilter("error")
            Y = _sigmoid(a)
        assert Y.dtype == dt


@pytest.mark.parametrize("dt", DTYPES)
def test_nan_and_infinities(dt: type) -> None:
    Y = _sigmoid(np.array([np.nan, np.inf, -np.inf, -np.nan, 0.0, -0.0], dtype=dt))
    assert np.isnan(Y[0]) and np.isnan(Y[3])
    assert Y[1] == 1 and Y[2] == 0
    assert Y[4] == 0.5 and Y[5] == 0.5


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_gradients_through_the_left_tail_equal_torch_float64(backend: str) -> None:
    """Linear (bias -30) -> Sigmoid -> Linear: every sigmoid output is about 1e-13, and
    every gradient but the last bias scales with it; within 1e-10 of PyTorch autograd."""
    pytest.importorskip("torch")
    net = nn.Sequential(nn.Linear(3, 4, dtype="float64", rng=0), nn.Sigmoid(dtype="float64"),
                        nn.Linear(4, 2, dtype="float64", rng=1), backend=backend)
    net.modules[0].b[...] = -30
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 3)), rng.integers(0, 2, 16)
    assert_grads_match_torch(net, X, y)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_float32_gradients_through_batchnorm_beta_minus_30_are_not_zero(backend: str) -> None:
    """BatchNorm1d with beta = -30 before a Sigmoid, float32: the gradients are about 1e-13
    and within 1e-5 of float64 PyTorch autograd on the same parameters (the tanh formula
    gave 0 for each one with backend="numpy")."""
    torch = pytest.importorskip("torch")
    net = nn.Sequential(nn.Linear(3, 5, bias=False, dtype="float32", rng=0),
                        nn.BatchNorm1d(5, dtype="float32"), nn.Sigmoid(dtype="float32"),
                        nn.Linear(5, 2, dtype="float32", rng=1), backend=backend)
    net.modules[1].beta[...] = -30
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 3)).astype(np.float32), rng.integers(0, 2, 16)
    tnet = net.to_torch().double()
    loss, grads = net.loss_and_grads(X, y)
    tloss = torch.nn.functional.cross_entropy(tnet(torch.tensor(X, dtype=torch.float64)),
                                              torch.tensor(y))
    tloss.backward()
    assert abs(loss - tloss.item()) <= 1e-6 * abs(loss)
    for (name, g), t in zip(grads.items(), tnet.parameters(), strict=True):
        assert g.dtype == np.float32, name
        assert rel_err(g, t.grad.numpy()) < 1e-5, name
