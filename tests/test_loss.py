"""Softmax cross-entropy: hand values, PyTorch, finite differences, stability, validation."""

from __future__ import annotations

import numpy as np
import pytest

from bnprop import InputError
from bnprop.loss import softmax, softmax_cross_entropy
from tests.conftest import rel_err


def _random(seed: int, m: int = 7, K: int = 5, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return scale * rng.standard_normal((m, K)), rng.integers(0, K, m)


def test_hand_computed_values() -> None:
    # Row 0: logits (0, 0), label 1: loss log 2, gradient (1/2, -1/2).
    # Row 1: logits (log 3, 0), label 0: P = (3/4, 1/4), loss -log(3/4).
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]])
    loss, dlogits = softmax_cross_entropy(logits, np.array([1, 0]))
    assert loss == pytest.approx((np.log(2.0) - np.log(0.75)) / 2, rel=1e-15)
    np.testing.assert_allclose(dlogits, [[0.25, -0.25], [-0.125, 0.125]], rtol=1e-15)
    np.testing.assert_allclose(softmax(logits), [[0.5, 0.5], [0.75, 0.25]], rtol=1e-15)


def test_equals_torch_cross_entropy() -> None:
    torch = pytest.importorskip("torch")
    logits, y = _random(0, m=33, K=10)
    t = torch.tensor(logits, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(t, torch.tensor(y))
    tl.backward()
    loss, dlogits = softmax_cross_entropy(logits, y)
    assert abs(loss - tl.item()) <= 1e-14 * abs(tl.item())
    assert rel_err(dlogits, t.grad.numpy()) < 1e-14
    assert rel_err(softmax(logits), torch.softmax(t, dim=1).detach().numpy()) < 1e-14


def test_gradient_matches_central_differences() -> None:
    logits, y = _random(1, m=4, K=3)
    _, dlogits = softmax_cross_entropy(logits, y)
    h = 1e-6
    fd = np.zeros_like(logits)
    for idx in np.ndindex(*logits.shape):
        e = np.zeros_like(logits)
        e[idx] = h
        fd[idx] = (softmax_cross_entropy(logits + e, y)[0]
                   - softmax_cross_entropy(logits - e, y)[0]) / (2 * h)
    assert rel_err(dlogits, fd) < 1e-8


def test_huge_logits_do_not_overflow() -> None:
    logits, y = _random(2)
    loss, dlogits = softmax_cross_entropy(logits, y)
    for offset in (1e3, -1e3, 1e5):
        loss_o, dlogits_o = softmax_cross_entropy(logits + offset, y)
        assert np.isfinite(loss_o)
        assert abs(loss_o - loss) < 1e-9
        assert rel_err(dlogits_o, dlogits) < 1e-9
    P = softmax(np.array([[1e300, 0.0, -1e300]]))
    np.testing.assert_array_equal(P, [[1.0, 0.0, 0.0]])


def test_global_m_makes_shards_sum_to_the_whole() -> None:
    logits, y = _random(3, m=10)
    loss, dlogits = softmax_cross_entropy(logits, y)
    parts = [softmax_cross_entropy(logits[s], y[s], m=10) for s in (slice(0, 4), slice(4, 10))]
    assert abs(parts[0][0] + parts[1][0] - loss) < 1e-15 * 10
    np.testing.assert_allclose(np.vstack([parts[0][1], parts[1][1]]), dlogits, rtol=1e-15)


def test_float32_stays_float32() -> None:
    logits, y = _random(4, m=64, K=10)
    loss32, d32 = softmax_cross_entropy(logits.astype(np.float32), y)
    loss64, d64 = softmax_cross_entropy(logits.astype(np.float32).astype(np.float64), y)
    assert d32.dtype == np.float32
    assert softmax(logits.astype(np.float32)).dtype == np.float32
    assert isinstance(loss32, float)
    assert abs(loss32 - loss64) < 1e-6 * abs(loss64)
    assert rel_err(d32, d64) < 1e-6


def test_softmax_of_no_class_is_refused() -> None:
    with pytest.raises(InputError, match=r"logits: expected at least one class, got shape \(2, 0\)"):
        softmax(np.zeros((2, 0)))
    assert softmax(np.zeros((0, 3))).shape == (0, 3)


def test_probabilities_sum_to_one() -> None:
    logits, _ = _random(5, m=100, K=10, scale=30.0)
    P = softmax(logits)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-14)
    assert (P >= 0).all()


@pytest.mark.parametrize(
    ("logits", "y", "m", "match"),
    [
        (np.zeros(3), [0], None, r"logits: expected a 2D array of shape \(m, K\), got a 1D array"),
        (np.zeros((2, 3)), [0.0, 1.0], None, "y: expected integer class labels, got dtype float64"),
        (np.zeros((2, 3)), [[0, 1]], None, r"y: expected a 1D array of shape \(m,\), got a 2D"),
        (np.zeros((2, 3)), [0, 1, 2], None, "y: expected 2 labels, one per row of the inputs, got 3"),
        (np.zeros((2, 3)), [0, 3], None, r"y: labels must lie in 0..2 \(3 classes\), got 3"),
        (np.zeros((2, 3)), [-1, 0], None, r"y: labels must lie in 0..2 \(3 classes\), got -1"),
        (np.zeros((2, 3)), [0, 1], 0, "m: expected a finite number > 0, got 0"),
        (np.full((2, 3), np.nan), [0, 1], None, "logits: contains NaN or inf"),
        (np.zeros((0, 3)), np.zeros(0, int), None, r"logits: expected at least one row and one class, got shape \(0, 3\)"),
    ],
)
def test_bad_input(logits: np.ndarray, y: object, m: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        softmax_cross_entropy(logits, y, m=m)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inplace_form_reuses_its_buffers_and_equals_the_checked_one(dtype: type) -> None:
    """The preallocated step's loss: the same numbers, bit for bit, with reused buffers."""
    from bnprop.loss import softmax_cross_entropy_inplace

    rng = np.random.default_rng(3)
    m, K = 7, 5
    rowmax, total, rows = np.empty((m, 1), dtype), np.empty(m), np.arange(m)
    for _ in range(3):  # the same buffers, several batches
        logits = (rng.standard_normal((m, K)) * 30).astype(dtype)
        y = rng.integers(0, K, m)
        loss, dlogits = softmax_cross_entropy(logits, y)
        work = logits.copy()
        loss_i = softmax_cross_entropy_inplace(work, y, m, rowmax=rowmax, total=total,
                                               rows=rows)
        assert loss_i == loss and work.dtype == dtype
        np.testing.assert_array_equal(work, dlogits)
        assert softmax_cross_entropy_inplace(logits.copy(), y, m) == loss  # own buffers
