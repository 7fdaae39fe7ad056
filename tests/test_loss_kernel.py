"""The compiled loss passes (kernels/loss.py) equal the NumPy reference bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from bnprop._validate import InputError
from bnprop.kernels import loss as kernel
from bnprop.kernels.loss import labels_in_range
from bnprop.loss import check_labels
from bnprop.loss import softmax_cross_entropy_inplace as reference


def _both(logits: np.ndarray, y: np.ndarray, m: float) -> tuple[float, np.ndarray, float,
                                                                   np.ndarray]:
    """(reference loss, reference dlogits, kernel loss, kernel dlogits) of copies."""
    ref, out = logits.copy(), logits.copy()
    loss_ref = reference(ref, y, m)
    m_local = logits.shape[0]
    loss = kernel.softmax_cross_entropy_inplace(
        out, y, m, np.empty((m_local, 1), logits.dtype), np.empty(m_local), np.empty(m_local),
        np.empty(m_local))
    return loss_ref, ref, loss, out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(60, 10), (1, 1), (2, 3), (7, 1), (333, 17), (5, 130),
                                   (128, 128), (129, 8), (16, 9), (100, 100)])
def test_equals_the_reference_bit_for_bit(dtype: type, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    for scale in (1e-3, 1.0, 30.0, 1e4):
        logits = (scale * rng.standard_normal(shape)).astype(dtype)
        y = rng.integers(0, shape[1], shape[0]).astype(np.intp)
        for m in (shape[0], 4 * shape[0] + 1):  # m = the global batch of a distributed run
            loss_ref, ref, loss, out = _both(logits, y, m)
            assert loss == loss_ref
            assert out.dtype == ref.dtype
            np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ties_signed_zeros_and_huge_logits(dtype: type) -> None:
    big = np.finfo(dtype).max
    logits = np.array([[0.0, -0.0, 0.0], [-0.0, -0.0, -0.0], [big, big, -big],
                       [-big, -big, -big], [1.0, 1.0, 1.0]], dtype)
    y = np.array([1, 0, 0, 1, 2], np.intp)
    with np.errstate(over="ignore"):
        loss_ref, ref, loss, out = _both(logits, y, 5)
    assert np.isfinite(loss) and loss == loss_ref
    np.testing.assert_array_equal(out, ref)
    y[2] = 2  # the label's S is -2 big = -inf: an infinite loss, in both
    with np.errstate(over="ignore"):
        loss_ref, ref, loss, out = _both(logits, y, 5)
    assert loss == loss_ref == np.inf
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_logit_gives_the_reference_result(bad: float) -> None:
    """NaN and +inf make the loss NaN; -inf (off the label) leaves it finite."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 4)).astype(np.float32)
    y = np.array([0, 1, 0, 2, 3, 1], np.intp)
    logits[2, 1] = bad
    with np.errstate(invalid="ignore"):
        loss_ref, ref, loss, out = _both(logits, y, 6)
    assert np.isfinite(loss_ref) == (bad == -np.inf)
    assert loss == loss_ref or (np.isnan(loss) and np.isnan(loss_ref))
    np.testing.assert_array_equal(out, ref)  # NaN where the reference has NaN


def test_nan_anywhere_in_a_row_is_its_max() -> None:
    """``np.max`` propagates NaN wherever it sits in the row; so does the kernel."""
    for col in range(5):
        logits = np.arange(5.0, dtype=np.float32)[None, :].repeat(2, axis=0)
        logits[0, col] = np.nan
        S_y = np.empty(2)
        kernel._shift_rows(logits, np.zeros(2, np.intp), S_y)
        assert np.isnan(logits[0]).all() and np.isnan(S_y[0])
        np.testing.assert_array_equal(logits[1], np.arange(5.0) - 4.0)


@pytest.mark.parametrize("labels", [[], [0], [9], [0, 9, 3], [-1], [10], [2, 10, 4],
                                    [5, -7], [np.iinfo(np.intp).min], [np.iinfo(np.intp).max]])
def test_labels_in_range_agrees_with_check_labels(labels: list[int]) -> None:
    y = np.array(labels, dtype=np.intp)
    try:
        check_labels(y, "y", y.shape[0], 10)
        expected = True
    except InputError:
        expected = False
    assert labels_in_range(y, 10) is expected


@pytest.mark.parametrize("bad", [-1, 10])
def test_a_bad_intp_label_in_a_step_is_one_line_naming_it(bad: int) -> None:
    import bnprop

    net = bnprop.MLP([4, 3, 10], seed=0)
    X = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    y = np.array([0, 1, bad, 2, 3], dtype=np.intp)
    with pytest.raises(InputError, match=rf"^y: labels must lie in 0..9 \(10 classes\), got {bad} instead\.$"):
        net.train_step(X, y, bnprop.SGD(0.1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_compiled_sums_take_numpys_order_for_every_width_up_to_a_block(dtype: type) -> None:
    """Every row width and row count the compiled sums take gives np.sum's bits, on
    values whose sum depends on the order; beyond a block NumPy's sum runs."""
    rng = np.random.default_rng(7)
    for n in range(1, kernel.PAIRWISE_BLOCK + 1):
        E = (rng.standard_normal((3, n)) * 10.0 ** rng.integers(-6, 7, (3, n))).astype(dtype)
        total = np.empty(3)
        kernel._row_totals(E, total)
        np.testing.assert_array_equal(total, np.sum(E, axis=1, dtype=np.float64))
        a, b = rng.standard_normal(n) * 10.0 ** rng.integers(-6, 7, n), rng.standard_normal(n)
        assert kernel._mean_loss(a.copy(), b, 7) == np.sum(a - b) / 7
        assert kernel.sums_in_numpy_order(np.dtype(dtype), n, n)
    assert not kernel.sums_in_numpy_order(np.dtype(dtype), kernel.PAIRWISE_BLOCK + 1, 10)
    assert not kernel.sums_in_numpy_order(np.dtype(dtype), 60, kernel.PAIRWISE_BLOCK + 1)
