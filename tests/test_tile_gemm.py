"""bnprop's own float32 GEMM tiles (bnprop.kernels.tile_gemm): the product within rounding
of the exact one, each element in its stated order of operations, the same bits whatever
part of the product computes it, and the rule that decides which products they take."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from numba import njit

import bnprop
from bnprop import threads
from bnprop.kernels import rows, small_gemm, tile_gemm, tile_rule
from bnprop.kernels.tile_rule import NN, NT, TN

KINDS = {"nt": NT, "tn": TN, "nn": NN}
SHAPES = [(60, 100, 784), (100, 784, 60), (60, 100, 100), (60, 10, 100), (10, 100, 60),
          (1, 1, 1), (3, 5, 17), (7, 133, 5), (4, 64, 16), (5, 65, 33), (64, 17, 128),
          (2, 200, 1)]


def _views(kind: int, M: int, N: int, K: int, seed: int = 0,
           ) -> tuple[np.ndarray, np.ndarray]:
    """``a`` (M, K) and ``b`` (K, N) stored as the kind stores them (``^T``: a view)."""
    rng = np.random.default_rng(seed + 7 * M + N + K)
    A = rng.standard_normal((K, M) if kind == TN else (M, K)).astype(np.float32)
    B = rng.standard_normal((N, K) if kind == NT else (K, N)).astype(np.float32)
    return (A.T if kind == TN else A), (B.T if kind == NT else B)


@njit(fastmath={"contract"}, error_model="numpy")
def _textbook(a, b, out):  # pragma: no cover - compiled
    """``c_ij = fma(a_ik, b_kj, c_ij)`` for ``k = 0 .. K-1`` from 0 (contract: one FMA)."""
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            c = np.float32(0)
            for k in range(a.shape[1]):
                c += a[i, k] * b[k, j]
            out[i, j] = c


@njit(fastmath={"contract"}, error_model="numpy")
def _lanes(a, b, out):  # pragma: no cover - compiled
    """16 lanes, lane ``l`` over ``k = l mod 16`` by FMA, then added in halves."""
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            lane = np.zeros(16, np.float32)
            for k in range(a.shape[1]):
                lane[k % 16] += a[i, k] * b[k, j]
            n = 16
            while n > 1:
                n //= 2
                for t in range(n):
                    lane[t] = lane[t] + lane[t + n]
            out[i, j] = lane[0]


def _tiles(kind: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` straight through the compiled tiles (whatever :func:`tile_rule.takes`)."""
    out = np.full((a.shape[0], b.shape[1]), np.nan, np.float32)
    lda = (a.strides[1] if kind == TN else a.strides[0]) // 4
    ldb = (b.strides[1] if kind == NT else b.strides[0]) // 4
    tile_gemm._run_views(kind, a, lda, b, ldb, out, out.shape[1], a.shape[0], b.shape[1],
                         a.shape[1])
    return out


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
@pytest.mark.parametrize(("M", "N", "K"), SHAPES)
def test_each_element_is_its_stated_order_of_operations(kind: int, M: int, N: int,
                                                        K: int) -> None:
    """NN and TN: the textbook loop (one FMA a step, ``k`` in order); NT: 16 lanes added
    in halves. Bit for bit, against scalar loops; and within rounding of the exact
    product (float64), as ``np.matmul`` is."""
    a, b = _views(kind, M, N, K)
    got = _tiles(kind, a, b)
    want = np.empty_like(got)
    (_lanes if kind == NT else _textbook)(np.ascontiguousarray(a), np.ascontiguousarray(b),
                                          want)
    np.testing.assert_array_equal(got, want)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    bound = (K + 1) * np.finfo(np.float32).eps * (np.abs(a).astype(np.float64)
                                                  @ np.abs(b).astype(np.float64))
    assert np.all(np.abs(got - exact) <= bound)
    np.testing.assert_allclose(got, np.matmul(a, b), rtol=0, atol=float(bound.max()))


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
@pytest.mark.parametrize(("M", "N", "K"), [(60, 100, 784), (100, 784, 60), (37, 101, 100),
                                           (9, 70, 33)])
def test_a_part_computes_the_bits_of_the_whole(kind: int, M: int, N: int, K: int) -> None:
    """Any rows or columns of the product, at any offset, on their own: the whole's bits
    (the helper thread and the row parts of a step compute such parts)."""
    a, b = _views(kind, M, N, K, seed=1)
    whole = _tiles(kind, a, b)
    taken = tile_rule.takes(4, kind, M, N, K, tile_rule.enabled())
    for s, e in ((0, 1), (1, M), (3, M // 2 + 1), (M - 1, M)):
        np.testing.assert_array_equal(_tiles(kind, a[s:e], b), whole[s:e],
                                      err_msg=f"rows {s}:{e}")
        if taken:  # the Python path's parts: the whole product decides, here the tiles
            part = tile_gemm.matmul(a[s:e], b, np.empty((e - s, N), np.float32), M)
            np.testing.assert_array_equal(part, whole[s:e], err_msg=f"rows {s}:{e}")
    for s, e in ((0, 1), (5, N), (17, N // 2 + 3), (N - 1, N)):
        part = _tiles(kind, a, b[:, s:e])
        np.testing.assert_array_equal(part, whole[:, s:e], err_msg=f"columns {s}:{e}")


def test_non_finite_values_propagate_as_in_numpy() -> None:
    for kind in KINDS.values():
        a, b = _views(kind, 9, 37, 21, seed=2)
        a, b = a.copy(), b.copy()
        a[2, 3], b[4, 5], b[7, 36] = np.inf, np.nan, -np.inf
        got = tile_gemm.matmul(a, b, np.empty((9, 37), np.float32))
        with np.errstate(invalid="ignore"):
            want = np.matmul(a, b)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


def test_the_rule() -> None:
    on = True
    assert tile_rule.takes(4, NT, 60, 100, 784, on)        # the Ioffe net's Z_1
    assert tile_rule.takes(4, TN, 100, 784, 60, on)        # and its dW_1
    assert tile_rule.takes(4, NN, 60, 100, 100, on)
    assert not tile_rule.takes(4, NT, 60, 100, 784, False)  # no AVX-512
    assert not tile_rule.takes(8, NT, 60, 100, 784, on)     # float64 stays with the BLAS
    assert not tile_rule.takes(4, TN, 100, 784, 129, on)    # K above MAX_K_OUTER
    assert tile_rule.takes(4, NT, 60, 100, 1000, on)        # NT reads K along rows
    assert not tile_rule.takes(4, NT, 512, 1024, 784, on)   # split by rows: the BLAS
    assert not tile_rule.takes(4, NT, 0, 100, 784, on)
    assert tile_rule.MAX_MNK == small_gemm.MAX_MNK == rows.GEMM_PART_FLOPS
    assert tile_gemm.takes_compiled(4, TN, 100, 784, 60, on)
    assert not tile_gemm.takes_compiled(4, TN, 100, 784, 129, on)


def test_they_are_on_where_numba_compiles_for_a_host_with_avx512() -> None:
    from llvmlite import binding

    avx512 = bool(binding.get_host_cpu_features().get("avx512f", False))
    assert tile_rule.enabled() == avx512
    code = "from bnprop.kernels import tile_rule; print(tile_rule.enabled())"
    for env in ({"NUMBA_CPU_NAME": "generic"}, {"NUMBA_CPU_FEATURES": "+avx2,+fma"}):
        out = subprocess.run([sys.executable, "-c", code], env={**env, "PATH": ""},
                             capture_output=True, text=True, timeout=120, check=True)
        assert out.stdout.strip() == "False", env  # 16 lanes would not be one register


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_what_the_tiles_do_not_take_is_numpys_product(dtype: type) -> None:
    """float64, strided columns, an output that overlaps an operand: ``np.matmul``."""
    rng = np.random.default_rng(3)
    A = rng.standard_normal((50, 40)).astype(dtype)
    B = rng.standard_normal((40, 30)).astype(dtype)
    pairs = [(A[:, ::2], B[::2])] + ([(A, B)] if dtype == np.float64 else [])
    for a, b in pairs:
        got = tile_gemm.matmul(a, b, np.empty((a.shape[0], b.shape[1]), dtype))
        np.testing.assert_array_equal(got, np.matmul(a, b))
    C = A[:40].copy()
    want = np.matmul(C, C)
    np.testing.assert_array_equal(tile_gemm.matmul(C, C, C), want)
    with pytest.raises(ValueError):  # a misfit: NumPy's own error
        tile_gemm.matmul(A, B, np.empty((50, 31), dtype))


def test_the_public_matmul_names_a_misfit_in_one_line() -> None:
    a, b = _views(NN, 60, 40, 100)
    got = threads.matmul(a, b, np.empty((60, 40), np.float32))
    np.testing.assert_array_equal(got, tile_gemm.matmul(a, b, np.empty((60, 40), np.float32)))
    w = np.ascontiguousarray(b.T)  # W (n_out, n_in): Z = O W^T through matmul_nt
    np.testing.assert_array_equal(threads.matmul(a, w.T, np.empty((60, 40), np.float32)),
                                  threads.matmul_nt(a, w, np.empty((60, 40), np.float32)))
    with pytest.raises(bnprop.InputError, match=r"out: a \(60, 100\) @ b \(100, 40\) gives "
                       r"\(60, 40\), not out \(60, 41\)\."):
        threads.matmul(a, b, np.empty((60, 41), np.float32))
    with pytest.raises(bnprop.InputError, match="b: expected a 2-d float32"):
        threads.matmul(a, b.astype(np.float64), np.empty((60, 40), np.float32))
    with pytest.raises(bnprop.InputError, match="rows: expected None"):
        threads.matmul(a, b, np.empty((60, 40), np.float32), rows=59)
