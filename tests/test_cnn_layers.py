"""Image layers: kernels against their references, finite differences, bad input.

Oracles: :mod:`bnprop.conv` (the NumPy reference) for the kernels, bit for bit;
central finite differences of ``F = sum(dY * Y)`` in float64 for every layer's backward
(relative error below 1e-6: the difference quotient's own truncation and rounding);
BatchNorm1d of the ``(N H W, C)`` view for BatchNorm2d (one formula, one function).
"""

from __future__ import annotations

import numpy as np
import pytest

from bnprop import conv as ref
from bnprop import nn
from bnprop._validate import InputError
from bnprop.jacobians import central_difference
from bnprop.kernels import conv as convk
from tests.conftest import rel_err

CASES = [  # (N, H, W, C, k, stride, padding)
    (2, 7, 6, 3, 3, 1, 1), (3, 8, 8, 1, 3, 2, 0), (2, 5, 5, 4, 2, 2, 1), (1, 4, 4, 2, 1, 1, 0),
    (2, 6, 7, 5, 5, 1, 2)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_col2im_kernels_equal_the_reference(case: tuple, dtype: type) -> None:
    N, H, W, C, k, s, p = case
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, H, W, C)).astype(dtype)
    cols = ref.im2col(X, k, s, p)
    got = np.full_like(cols, np.nan)
    convk.im2col_into(X, k, s, p, got)
    np.testing.assert_array_equal(got, cols)
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    dX = np.full_like(X, np.nan)
    convk.col2im_into(dcols, k, s, p, dX)
    np.testing.assert_array_equal(dX, ref.col2im(dcols, X.shape, k, s, p))
    # col2im is the adjoint of im2col: <im2col(X), D> = <X, col2im(D)>
    assert np.isclose(np.vdot(cols.astype(np.float64), dcols), np.vdot(X.astype(np.float64), dX),
                      rtol=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (2, 1), (3, 3), (2, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_kernels_equal_the_reference(k: int, s: int, dtype: type) -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3, 9, 8, 4)).astype(dtype)
    X[0, :2, :2, 0] = 0.5  # a tie: the first maximum in the window wins (PyTorch's choice)
    Y, arg = ref.maxpool_forward(X, k, s)
    got_Y, got_arg = np.empty_like(Y), np.empty_like(arg)
    convk.maxpool_forward_into(X, k, s, got_Y, got_arg)
    np.testing.assert_array_equal(got_Y, Y)
    np.testing.assert_array_equal(got_arg, arg)
    dY = rng.standard_normal(Y.shape).astype(dtype)
    dX = np.full_like(X, np.nan)
    convk.maxpool_backward_into(dY, arg, k, s, dX)
    np.testing.assert_array_equal(dX, ref.maxpool_backward(dY, arg, X.shape, k, s))


def _fd_check(module: nn.Module, X: np.ndarray, names: tuple[str, ...], tol: float = 1e-6,
              h: float = 1e-6) -> None:
    """Every parameter gradient and dX of ``F = sum(dY * forward(X))`` against central
    finite differences, on every entry (float64)."""
    rng = np.random.default_rng(5)
    Y = module.forward(X)
    dY = rng.standard_normal(Y.shape)
    dX = module.backward(dY)
    grads = {k: v.copy() for k, v in module.grads.items()}

    def F() -> float:
        return float(np.sum(dY * module.forward(X)))

    def numeric(arr: np.ndarray) -> np.ndarray:
        """dF/darr, ``arr`` (the input or a live parameter) set to each probe in turn."""
        kept = arr.copy()

        def f(value: np.ndarray) -> float:
            arr[...] = value
            return F()

        J = central_difference(f, kept, h)
        arr[...] = kept
        return J

    assert rel_err(dX, numeric(X)) < tol
    for name in names:
        assert rel_err(grads[name], numeric(getattr(module, name))) < tol, name


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("bias,stride,padding", [(True, 1, 1), (False, 2, 0), (True, 1, 0)])
def test_conv2d_finite_differences(backend: str, bias: bool, stride: int, padding: int) -> None:
    conv = nn.Conv2d(3, 4, 3, stride, padding, bias, dtype="float64", rng=0)
    conv.backend = backend
    X = np.random.default_rng(2).standard_normal((2, 3, 6, 5))
    _fd_check(conv, X, conv.param_names)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_batchnorm2d_finite_differences(backend: str) -> None:
    norm = nn.BatchNorm2d(3, dtype="float64")
    norm.backend = backend
    rng = np.random.default_rng(3)
    norm.gamma[...] = rng.uniform(0.5, 2, 3)
    norm.beta[...] = rng.standard_normal(3)
    X = rng.standard_normal((2, 3, 3, 4)) * 2 + 1
    _fd_check(norm, X, ("gamma", "beta"))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_maxpool_and_flatten_finite_differences(backend: str) -> None:
    X = np.random.default_rng(4).standard_normal((2, 3, 6, 5))  # no ties: distinct values
    pool = nn.MaxPool2d(2, dtype="float64")
    pool.backend = backend
    _fd_check(pool, X, ())
    _fd_check(nn.MaxPool2d(3, 2, dtype="float64"), X, ())
    _fd_check(nn.Flatten(dtype="float64"), X, ())


@pytest.mark.parametrize("stats", ["exact", "frozen"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("N", [3, 25])  # 25 x 4 x 5 rows: widened rows plus a narrow tail
def test_batchnorm2d_is_batchnorm1d_of_the_channels_last_view(stats: str, dtype: str,
                                                              N: int) -> None:
    """One formula: BatchNorm2d of (N, C, H, W) is BatchNorm1d of (N H W, C), running
    statistics included (m = N H W in the unbiased variance). The kernels run on widened
    rows (bnprop.nn.widen): equal to rounding (the sums over rows run in another order)."""
    rng = np.random.default_rng(6)
    X = (rng.standard_normal((N, 4, 5, 4)) * 3 + 1).astype(dtype)
    dY = rng.standard_normal(X.shape).astype(dtype)
    n2 = nn.BatchNorm2d(4, stats=stats, dtype=dtype, momentum=0.3)
    n1 = nn.BatchNorm1d(4, stats=stats, dtype=dtype, momentum=0.3)
    assert n2.stage.kernels.r > 1
    tol = 1e-5 if dtype == "float32" else 1e-13

    def rows(a: np.ndarray) -> np.ndarray:
        return a.transpose(0, 2, 3, 1).reshape(-1, 4)

    assert rel_err(rows(n2.forward(X)), n1.forward(rows(X))) < tol
    assert rel_err(rows(n2.backward(dY)), n1.backward(rows(dY))) < tol
    for name in ("gamma", "beta"):
        assert rel_err(n2.grads[name], n1.grads[name]) < tol
    for name in ("running_mean", "running_var"):
        assert rel_err(getattr(n2, name), getattr(n1, name)) < tol
    assert n2.num_batches_tracked == n1.num_batches_tracked == 1


@pytest.mark.parametrize("r", [1, 2, 8, 32])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_widened_tiles_a_per_feature_vector_as_np_tile(r: int, dtype: type) -> None:
    """The widened kernels' per-feature vectors: ``v`` repeated ``r`` times, value for
    value and in ``v``'s dtype, as ``np.tile`` (which it replaces for speed)."""
    from bnprop.nn.widen import Widened

    v = np.random.default_rng(r).standard_normal(5).astype(dtype)
    t = Widened(r)._tile(v)
    assert t.dtype == v.dtype and t.flags.c_contiguous
    np.testing.assert_array_equal(t, np.tile(v, r))


@pytest.mark.parametrize(("r", "n"), [(1, 7), (2, 16), (8, 16), (32, 4), (5, 3)])
def test_the_compiled_folds_of_widened_rows_equal_numpy_bit_for_bit(r: int, n: int) -> None:
    """``fold_moments`` and ``fold_add`` against their NumPy references (the groups'
    partial moments and sums, folded per feature), on means far from 0."""
    from bnprop.kernels import fold

    rng = np.random.default_rng(r * 100 + n)
    mean_w = rng.standard_normal(r * n) * 1e3 + 5e4
    M2_w = rng.random(r * n) * 1e6
    got, want = (np.empty(n), np.empty(n)), (np.empty(n), np.empty(n))
    fold.fold_moments(mean_w, M2_w, r, 37.0, *got)
    fold.fold_moments_numpy(mean_w, M2_w, r, 37.0, *want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    out, ref_out = np.full(n, 0.25), np.full(n, 0.25)
    fold.fold_add(M2_w - 5e5, n, out)
    fold.fold_add_numpy(M2_w - 5e5, n, ref_out)
    np.testing.assert_array_equal(out, ref_out)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shape", [(3, 7, 7, 32), (40, 2, 3, 5), (1, 1, 1, 1)])
def test_flatten_kernels_are_the_channels_first_copy_and_its_inverse(
        n_threads: int, shape: tuple) -> None:
    """``flatten_into`` / ``unflatten_into`` against NumPy's transposed copies."""
    from bnprop import threads

    N, H, W, C = shape
    X = np.random.default_rng(N).standard_normal(shape).astype(np.float32)
    Y, back = np.empty((N, C * H * W), np.float32), np.empty_like(X)
    with threads.using(n_threads):
        convk.flatten_into(X, Y)
        convk.unflatten_into(Y * 2, back)
    np.testing.assert_array_equal(Y, X.transpose(0, 3, 1, 2).reshape(N, -1))
    np.testing.assert_array_equal(back, 2 * X)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_an_image_modules_output_is_fresh_even_with_one_channel(backend: str) -> None:
    """With one output channel the NCHW view of the NHWC buffer is already C-contiguous:
    ``forward`` must still copy it, or the next call overwrites what it returned."""
    X = np.random.default_rng(0).standard_normal((2, 1, 6, 6))
    for mod in (nn.MaxPool2d(2, dtype="float64"), nn.Conv2d(1, 1, 3, dtype="float64"),
                nn.BatchNorm2d(1, dtype="float64"), nn.Flatten(dtype="float64")):
        mod.backend = backend
        first = mod.forward(X)
        kept = first.copy()
        mod.forward(2 * X + 1)
        np.testing.assert_array_equal(first, kept, err_msg=type(mod).__name__)


# ---- bad input -----------------------------------------------------------------------------

def test_not_4d_or_wrong_channels_names_expected_and_received_shape() -> None:
    conv = nn.Conv2d(3, 4, 3, dtype="float64")
    with pytest.raises(InputError, match=r"X: expected a 4D array of shape \(N, C, H, W\), "
                       r"got a 2D array of shape \(5, 12\) instead"):
        conv.forward(np.zeros((5, 12)))
    with pytest.raises(InputError, match=r"X: expected shape \(N, 3, H, W\) with C = 3, got "
                       r"shape \(2, 1, 8, 8\) instead"):
        conv.forward(np.zeros((2, 1, 8, 8)))
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    with pytest.raises(InputError, match=r"X: expected shape \(N, 1, H, W\) with C = 1"):
        net.predict(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(InputError, match=r"X: expected a 4D array of shape \(N, C, H, W\)"):
        net.train_step(np.zeros((2, 64), np.float32), [0, 1], None)
    with pytest.raises(InputError, match="expects 72 input features"):
        net.predict(np.zeros((2, 1, 9, 9), np.float32))  # 2 x 7 x 7 = 98 features


def test_kernel_larger_than_the_padded_input() -> None:
    with pytest.raises(InputError, match=r"kernel_size 5 is larger than the padded input "
                       r"\(2 \+ 2\*1 = 4\)"):
        nn.Conv2d(1, 2, 5, padding=1).forward(np.zeros((1, 1, 2, 9), np.float32))
    with pytest.raises(InputError, match="kernel_size 3 is larger than the padded input"):
        nn.MaxPool2d(3).forward(np.zeros((1, 1, 2, 2), np.float32))
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2, 3))
    with pytest.raises(InputError, match="kernel_size 2 is larger than the padded input"):
        net.predict(np.zeros((2, 1, 3, 3), np.float32))


def test_training_batch_with_one_value_per_channel() -> None:
    with pytest.raises(InputError, match=r"N H W = 1 value per channel"):
        nn.BatchNorm2d(2).forward(np.zeros((1, 2, 1, 1), np.float32))
    nn.BatchNorm2d(2).forward(np.zeros((1, 2, 1, 1), np.float32), training=False)
    nn.BatchNorm2d(2).forward(np.ones((1, 2, 1, 2), np.float32))  # N H W = 2 is fine


def test_bad_constructor_arguments() -> None:
    with pytest.raises(InputError, match="kernel_size: expected an integer >= 1, got 0"):
        nn.Conv2d(1, 2, 0)
    with pytest.raises(InputError, match="padding: expected an integer >= 0, got -1"):
        nn.Conv2d(1, 2, 3, padding=-1)
    with pytest.raises(InputError, match="stride: expected an integer >= 1"):
        nn.MaxPool2d(2, stride=0)
    with pytest.raises(InputError, match=r"expects 3 input features, but the module before "
                       "it gives 2"):
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(3))
