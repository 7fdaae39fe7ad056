"""A conv stage's input gradient formed per row part, in blocks of images.

Oracle: ``dX = col2im(dZ W2)`` of the whole batch, one GEMM and the col2im kernel (which
equals the reference, ``tests/test_cnn_layers.py``), from the ``dZ`` the stage leaves in
its ``dY``, bit for bit: the blocks compute the same rows of the same product and add
each image's terms in the same order. That holds where the BLAS rounds a row of the
product the same way in a block as in the whole product (OpenBLAS's SkylakeX kernels);
its Haswell kernels (``OPENBLAS_CORETYPE=Haswell``) round a row by its place in a tile of
24 rows, so where the blocks' own products differ from the whole one (:func:`_keeps_bits`)
the oracle is met to rounding.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from bnprop import nn, threads
from bnprop.kernels import conv as convk
from bnprop.nn.plan import ConvNormStep


def _whole(dZ: np.ndarray, W2: np.ndarray, k: int, s: int, p: int,
           shape: tuple[int, ...]) -> np.ndarray:
    dX = np.full(shape, np.nan, dZ.dtype)
    convk.col2im_into(np.matmul(dZ, W2), k, s, p, dX)
    return dX


def _keeps_bits(dZ: np.ndarray, W2: np.ndarray, unit: int, parts: list[tuple[int, int]],
                in_stage: bool = False) -> bool:
    """Whether this BLAS gives the rows of the whole ``dZ W2`` (as :func:`_whole` forms
    it) in the blocks that ``convk.dX_images`` computes for each of the row parts
    ``parts`` (images); ``in_stage``: on 1 BLAS thread, as a stage computes them."""
    whole = np.matmul(dZ, W2)
    itemsize, (n_out, n_in) = dZ.dtype.itemsize, W2.shape
    with threads.blas_threads_limited(1) if in_stage else contextlib.nullcontext():
        for n0, n1 in parts:
            blocks = convk._dX_blocks(unit, n_in, n_out, itemsize, n1 - n0)
            for b0, b1 in threads.row_parts(n1 - n0, blocks):
                r0, r1 = (n0 + b0) * unit, (n0 + b1) * unit
                if not np.array_equal(np.matmul(dZ[r0:r1], W2), whole[r0:r1]):
                    return False
    return True


def _assert_dX(dX: np.ndarray, expected: np.ndarray, exact: bool) -> None:
    if exact:
        np.testing.assert_array_equal(dX, expected)
    else:  # the same terms, each dcols entry rounded another way
        tol = 1e-5 if dX.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(dX, expected, rtol=tol, atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("N", "H", "W", "c_in", "c_out", "k", "s", "p"), [
    (40, 14, 14, 16, 32, 3, 1, 1),   # the CNN's second convolution: several blocks
    (23, 9, 7, 3, 5, 3, 2, 0),       # strided, no padding: one block
    (30, 12, 12, 8, 64, 2, 2, 1),    # k = 2, padding past the edge
])
def test_dX_images_gives_the_bits_of_the_whole_product(dtype: type, N: int, H: int, W: int,
                                                        c_in: int, c_out: int, k: int,
                                                        s: int, p: int) -> None:
    rng = np.random.default_rng(N)
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    unit = Ho * Wo
    dZ = rng.standard_normal((N * unit, c_out)).astype(dtype)
    W2 = rng.standard_normal((c_out, k * k * c_in)).astype(dtype)
    expected = _whole(dZ, W2, k, s, p, (N, H, W, c_in))
    itemsize = np.dtype(dtype).itemsize
    for n0, n1 in ((0, N), (0, N // 2), (N // 2, N)):  # the batch, and two row parts
        rows = convk.dX_buffer_rows(unit, k * k * c_in, c_out, itemsize, n1 - n0)
        buffer = np.full((rows, k * k * c_in), np.nan, dtype)
        dX = np.full((N, H, W, c_in), np.nan, dtype)
        convk.dX_images(dZ, W2, k, s, p, dX, n0, n1, buffer)
        _assert_dX(dX[n0:n1], expected[n0:n1], _keeps_bits(dZ, W2, unit, [(n0, n1)]))
        assert np.isnan(dX[:n0]).all() and np.isnan(dX[n1:]).all()  # its images only


def test_blocks_hold_a_megabyte_and_skip_the_small_kernel() -> None:
    """The CNN's second convolution (14 x 14 images, 16 -> 32 channels): 9 float32
    images a block (1.0 MB of dcols); a block of tiny images still has more than 10^6
    multiply-adds; the largest block of an uneven cut fits the buffer."""
    assert convk.dX_block_images(196, 144, 32, 4) == 9
    assert convk.dX_block_images(196, 144, 32, 8) == 4
    per = convk.dX_block_images(4, 9, 2, 4)
    assert per * 4 * 9 * 2 > convk.DX_BLOCK_MNK
    assert convk.dX_buffer_rows(196, 144, 32, 4, 64) == 10 * 196  # 7 blocks of 9-10
    assert convk.dX_buffer_rows(196, 144, 32, 4, 5) == 5 * 196    # fewer than a block


def _stage_dX(net: nn.Sequential, index: int, X: np.ndarray, n_threads: int,
              seed: int) -> tuple[np.ndarray, np.ndarray, ConvNormStep]:
    """``(dX, dZ)`` of the ConvNormStep ``net.steps[index]`` on the NHWC batch ``X``."""
    step = net.steps[index]
    assert isinstance(step, ConvNormStep)
    with threads.using(n_threads):
        out = step.forward(X, True, None)
        dY = np.random.default_rng(seed).standard_normal(out.shape).astype(X.dtype)
        dX = np.full(X.shape, np.nan, X.dtype)
        step.backward(dY, dX, None)
    dZ = (dY if step.pool is None else step._dY).reshape(-1, step.conv.out_channels)
    return dX, dZ, step


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize(("k", "s", "p", "pool"), [(3, 1, 1, True), (3, 2, 0, False),
                                                   (2, 2, 1, True)])
def test_a_conv_stage_forms_dX_from_its_dZ(dtype: str, n_threads: int, k: int, s: int, p: int,
                                           pool: bool) -> None:
    """Batches of 64 images (3 x 3, stride 1: two row parts on 2 threads, dW in chunks)
    and 9 (one part, unchunked); the ``dcols`` buffers are kept per part."""
    modules = [nn.Conv2d(6, 32, k, s, p, bias=False, dtype=dtype, rng=0),
               nn.BatchNorm2d(32, dtype=dtype), nn.ReLU(dtype=dtype)]
    if pool:
        modules.append(nn.MaxPool2d(2, dtype=dtype))
    net = nn.Sequential(*modules, nn.Flatten(dtype=dtype))
    for N in (64, 9):
        X = np.random.default_rng(N).standard_normal((N, 14, 14, 6)).astype(dtype)
        dX, dZ, step = _stage_dX(net, 0, X, n_threads, seed=N + k)
        unit = step.stage.row_unit
        starts = sorted(r // unit for r in step.stage._starts)  # the parts, in images
        parts = list(zip(starts, [*starts[1:], N], strict=True))
        _assert_dX(dX, _whole(dZ, step.conv.W2, k, s, p, X.shape),
                   _keeps_bits(dZ, step.conv.W2, unit, parts, in_stage=True))
        if (k, s) == (3, 1):
            big = N == 64
            assert len(step.stage._starts) == (2 if big and n_threads == 2 else 1)
            assert step.stage.chunked == big
        kept = dict(step._dX_buffers)
        _stage_dX(net, 0, X, n_threads, seed=1)
        assert all(step._dX_buffers[start] is b for start, b in kept.items())
        assert set(step._dX_buffers) <= set(step.stage._starts)  # no other batch's parts


@pytest.mark.parametrize("n_threads", [1, 2])
def test_a_one_by_one_conv_stage_writes_dZ_W2_into_dX(n_threads: int) -> None:
    """No col2im: ``dX`` (NHWC) is ``dcols``' layout, so the stage's ``dO`` goes there
    directly. Its rows are the stage's GEMM calls (chunks of rows, which OpenBLAS may
    round apart from one whole product in its small-matrix kernel), hence to rounding."""
    net = nn.Sequential(nn.Conv2d(6, 32, 1, bias=False, dtype="float64", rng=0),
                        nn.BatchNorm2d(32, dtype="float64"), nn.ReLU(dtype="float64"),
                        nn.Flatten(dtype="float64"))
    X = np.random.default_rng(2).standard_normal((64, 14, 14, 6))
    dX, dZ, step = _stage_dX(net, 0, X, n_threads, seed=3)
    assert not step._dX_buffers
    np.testing.assert_allclose(dX, (dZ @ step.conv.W2).reshape(X.shape), rtol=1e-13,
                               atol=1e-15)


def test_a_stage_on_the_reference_backend_keeps_the_whole_dcols() -> None:
    """The reference keeps ``dZ`` apart from ``dY``: the stage refuses ``dO_rows`` there,
    and a conv stage whose BN runs the reference forms ``dX`` from the whole ``dcols``."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False, dtype="float64", rng=0),
                        nn.BatchNorm2d(8, dtype="float64"), nn.Flatten(dtype="float64"))
    step = net.steps[0]
    step.norm.backend = "numpy"  # a mixed net: the kernels' conv, the reference's BN
    X = np.random.default_rng(0).standard_normal((4, 6, 6, 3))
    out = step.forward(X, True, None)
    dX = np.full(X.shape, np.nan)
    step.backward(np.ones_like(out), dX, None)
    assert np.isfinite(dX).all() and not step._dX_buffers and step._dcols is not None
    with pytest.raises(ValueError, match="dO_rows"):
        step.stage.backward(np.ones((out.size // 8, 8)), None, dO_rows=lambda a, b: None)


def test_a_strided_dX_takes_the_whole_dcols() -> None:
    """A ``dX`` that is not C-contiguous (its rows of ``dcols`` cannot be written in
    place): the same values through the whole ``dcols`` and col2im."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False, dtype="float64", rng=0),
                        nn.BatchNorm2d(8, dtype="float64"), nn.Flatten(dtype="float64"))
    step = net.steps[0]
    X = np.random.default_rng(1).standard_normal((5, 6, 6, 3))
    dY = np.random.default_rng(2).standard_normal((5, 6, 6, 8))
    dX = np.full(X.shape, np.nan)
    step.forward(X, True, None)
    step.backward(dY.copy(), dX, None)
    wide = np.full((*X.shape[:3], 6), np.nan)
    step.forward(X, True, None)
    step.backward(dY.copy(), wide[..., ::2], None)
    np.testing.assert_array_equal(wide[..., ::2], dX)
    assert np.isnan(wide[..., 1::2]).all()
