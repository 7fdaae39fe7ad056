"""Z = O W^T in the small-matrix kernel's column blocks (bnprop.kernels.small_gemm): the
rule, and one result whatever part of the product a thread or a chunk computes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import bnprop
from bnprop import nn, threads
from bnprop.kernels import blas, rows, small_gemm, tile_rule
from bnprop.kernels.small_gemm import matmul_nt, width

needs_blas = pytest.mark.skipif(not blas.available(), reason="NumPy's scipy-openblas not found")


@pytest.fixture
def no_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python paths without bnprop's own tiles (as on a CPU without AVX-512), which
    otherwise take every float32 product these tests make."""
    monkeypatch.setattr(tile_rule, "enabled", lambda: False)


def test_the_width_rule() -> None:
    assert width(4, 60, 100, 784, True) == 20     # the Ioffe net's first layer
    assert width(4, 16, 100, 784, True) == 72     # 16 x 72 = 1152 <= 1200
    assert width(4, 60, 100, 784, False) == 0     # not one of CORES
    assert width(8, 60, 100, 784, True) == 0      # float64 keeps one call
    assert width(4, 60, 100, 128, True) == 0      # K below MIN_K: no faster
    assert width(4, 60, 10, 784, True) == 0       # the small kernel takes it whole
    assert width(4, 128, 100, 784, True) == 0     # 8 columns: no faster
    assert width(4, 60, 1024, 784, True) == 0     # may be split over threads by rows
    assert width(4, 1, 100, 784, True) == 0       # one row: BLAS's GEMV
    assert width(4, 60, 102, 784, True) == 0      # a tail of 2 columns: per row count
    assert width(4, 60, 32, 784, True) == 20      # 20 + 12 columns


def test_a_blocked_product_is_never_one_that_threads_split_by_rows() -> None:
    for M, N, K in itertools.product((2, 8, 16, 33, 60, 64, 75), (17, 100, 256, 1000, 4096),
                                     (256, 784, 1024, 3072)):
        w = width(4, M, N, K, True)
        if w:
            assert M * N * K < rows.GEMM_PART_FLOPS == small_gemm.MAX_MNK
            assert M < 2 * math.ceil(rows.GEMM_PART_FLOPS / (2 * K * N))  # rows.gemm: whole
            assert M * w <= small_gemm.SMALL_MN and M * w * K <= small_gemm.SMALL_MNK
            assert w % 4 == 0 and N % 4 == 0 and w < N


@needs_blas
def test_enabled_follows_the_blas_core() -> None:
    assert small_gemm.enabled() == (blas.corename() in small_gemm.CORES)
    from bnprop.kernels import _cache_stamp

    assert _cache_stamp._constants() == (small_gemm.enabled(), tile_rule.enabled())  # stamped


def _operands(M: int, N: int, K: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((M, K)).astype(np.float32),
            rng.standard_normal((N, K)).astype(np.float32))


SHAPES = [(60, 100, 784), (60, 101, 784), (16, 300, 784), (33, 52, 400), (75, 40, 257),
          (60, 32, 784), (60, 100, 100), (8, 10, 784), (2, 400, 1000)]


@pytest.mark.parametrize(("M", "N", "K"), SHAPES)
def test_matmul_nt_is_the_product_in_its_blocks(M: int, N: int, K: int, no_tiles: None,
                                                ) -> None:
    A, B = _operands(M, N, K)
    got = matmul_nt(A, B, np.full((M, N), np.nan, np.float32))
    want = A.astype(np.float64) @ B.T.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    w = width(4, M, N, K, small_gemm.enabled())
    blocks = [A @ B[s:s + w].T for s in range(0, N, w)] if w else [A @ B.T]
    np.testing.assert_array_equal(got, np.concatenate(blocks, axis=1))
    if not w:
        return
    for s, e in ((0, 1), (0, 2), (3, M // 2), (M // 2, M), (M - 1, M)):  # the whole's blocks
        part = matmul_nt(A[s:e], B, np.empty((e - s, N), np.float32), rows=M)
        np.testing.assert_array_equal(part, got[s:e])


@needs_blas
@pytest.mark.parametrize(("M", "N", "K"), SHAPES)
def test_compiled_calls_and_their_parts_give_matmul_nts_bits(M: int, N: int, K: int) -> None:
    from bnprop.kernels import _cblas, team

    A, B = _operands(M, N, K, seed=1)
    want = matmul_nt(A, B, np.empty((M, N), np.float32))
    whole = np.full((M, N), np.nan, np.float32)
    _cblas.gemm_nt(A, B, whole)
    np.testing.assert_array_equal(whole, want)
    if not width(4, M, N, K, small_gemm.enabled()):
        return  # one call: team.may_split decides where its parts keep its bits
    for by_rows in (False, True):  # the cuts team makes are multiples of 8
        total = M if by_rows else N
        for cut in (8, total // 2 // 8 * 8, (total - 1) // 8 * 8):
            if not 0 < cut < total:
                continue
            parts = np.full((M, N), np.nan, np.float32)
            g = team.nt(A, B, parts)
            team.run(g, by_rows, 0, cut)
            team.run(g, by_rows, cut, total)
            np.testing.assert_array_equal(parts, want, err_msg=f"{by_rows=} {cut=}")


def _ioffe(seed: int = 0) -> nn.Sequential:
    return bnprop.MLP((784, 100, 100, 100, 10), seed=seed)


@needs_blas
def test_the_compiled_step_and_the_python_step_block_alike() -> None:
    """At the Ioffe net's shapes (its Z_1 blocked where enabled), on 1 and 2 threads."""
    rng = np.random.default_rng(5)
    X = rng.random((60, 784), dtype=np.float32)
    y = rng.integers(0, 10, 60)
    nets = []
    for n, python in ((1, False), (2, False), (1, True), (2, True)):
        net = _ioffe()
        if python:
            net._compiled = None
        opt = bnprop.SGD(0.1)
        with threads.using(n):
            losses = [net.train_step(X, y, opt) for _ in range(3)]
        nets.append((net, losses))
    for net, losses in nets[1:]:
        assert losses == nets[0][1]
        for (name, p), (_, q) in zip(net.named_parameters(), nets[0][0].named_parameters(),
                                     strict=True):
            np.testing.assert_array_equal(p, q, err_msg=name)


def test_the_public_matmul_nt_names_a_misfit_in_one_line() -> None:
    A, B = _operands(60, 40, 784)
    assert np.array_equal(threads.matmul_nt(A, B, np.empty((60, 40), np.float32)),
                          matmul_nt(A, B, np.empty((60, 40), np.float32)))
    with pytest.raises(bnprop.InputError, match=r"out: a \(60, 784\) @ w.T \(784, 40\) "
                       r"gives \(60, 40\), not out \(60, 44\)"):
        threads.matmul_nt(A, B, np.empty((60, 44), np.float32))
    with pytest.raises(bnprop.InputError, match="w: expected a 2-d float32"):
        threads.matmul_nt(A, B.astype(np.float64), np.empty((60, 40), np.float32))
    with pytest.raises(bnprop.InputError, match="out: expected"):
        threads.matmul_nt(A, B, [[0.0]])
    for bad in ("60", 59, 1.5, True):
        with pytest.raises(bnprop.InputError, match=r"rows: expected None or the whole "
                           r"product's row count, an int >= a's 60 rows, got"):
            threads.matmul_nt(A, B, np.empty((60, 40), np.float32), rows=bad)
    assert np.array_equal(threads.matmul_nt(A, B, np.empty((60, 40), np.float32),
                                            rows=np.int64(120)),
                          matmul_nt(A, B, np.empty((60, 40), np.float32), rows=120))
    with pytest.raises(ValueError):  # the internal function: NumPy's own error, no garbage
        matmul_nt(A, B, np.empty((60, 44), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("m", "n", "n_in"), [(6944, 16, 9), (300, 32, 144), (60, 100, 784),
                                              (5, 3, 2), (128, 64, 1568), (40, 20, 25)])
def test_a_dW_term_through_np_dot_has_np_matmuls_bits(dtype: type, m: int, n: int,
                                                      n_in: int, no_tiles: None) -> None:
    """``rows.dW_into`` (``dZ^T O``, by ``np.dot`` for outputs of up to 500 elements:
    it releases the GIL) against ``np.matmul``, bit for bit, on 1 and 2 BLAS threads,
    from row slices as the chunks take them."""
    rng = np.random.default_rng(m + n)
    dZ = rng.standard_normal((m + 7, n)).astype(dtype)
    O = rng.standard_normal((m + 7, n_in)).astype(dtype)
    out = np.empty((n, n_in), dtype)
    for blas_threads in (1, 2):
        previous = threads.set_blas_threads(blas_threads)
        try:
            rows.dW_into(dZ[3:3 + m], O[3:3 + m], out)
            np.testing.assert_array_equal(out, np.matmul(dZ[3:3 + m].T, O[3:3 + m]))
        finally:
            if previous is not None:
                threads.set_blas_threads(previous)
