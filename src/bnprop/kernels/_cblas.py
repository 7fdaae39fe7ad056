"""NumPy's own GEMM called from Numba code, whole or in two parts.

``gemm_part`` calls ``cblas_sgemm`` / ``cblas_dgemm`` of the OpenBLAS that ``np.matmul``
calls, with the arguments ``np.matmul`` passes for the same operands
(:mod:`bnprop.kernels.blas`), so it gives its bits; ``gemm_nt`` / ``gemm_tn`` /
``gemm_nn`` are whole GEMMs of C-contiguous arrays through it. From raw addresses it
computes the whole GEMM or one part of it: the rows
``[r0, r1)`` or the columns ``[r0, r1)`` of ``C = op(A) op(B)``, row-major::

    columns [r0, r1):  C[:, r0:r1] = op(A) op(B)[:, r0:r1]
    rows    [r0, r1):  C[r0:r1, :] = op(A)[r0:r1, :] op(B)

A part is a GEMM of its own on offset pointers with the whole operands' leading
dimensions; each element of ``C`` is still the dot product over all ``K`` of one row and
one column, so on OpenBLAS (whose kernels accumulate each element over ``K`` in the same
order whatever ``M`` and ``N``) the parts give the whole call's bits
(``tests/test_team.py`` holds them equal at the step's shapes). A float32 product that
bnprop's own tiles take (:mod:`bnprop.kernels.tile_rule`, decided on the whole) runs in
them instead (:mod:`bnprop.kernels.tile_gemm`), whose every element has its bits in any
part. Import this module only when :func:`bnprop.kernels.blas.available` is True.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from bnprop.kernels import blas, small_gemm, tile_gemm
from bnprop.kernels._atomics import address, f32_at, f64_at
from bnprop.kernels._jit import JIT_OPTIONS

if not blas.available():  # pragma: no cover - the caller checks first
    raise ImportError("bnprop.kernels._cblas needs NumPy's scipy-openblas")

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _signature(t: types.Type) -> types.Signature:
    i32, i64, p = types.int32, types.int64, types.CPointer(t)
    return types.void(i32, i32, i32, i64, i64, i64, t, p, i64, p, i64, t, p, i64)


_sgemm = types.ExternalFunction(blas.SYMBOLS["float32"], _signature(types.float32))
_dgemm = types.ExternalFunction(blas.SYMBOLS["float64"], _signature(types.float64))


#: ``gemm_part``'s ``dtype_code``: 0 float32, 1 float64.
F32, F64 = 0, 1
#: :func:`bnprop.kernels.small_gemm.enabled`, fixed in the compiled code (the cache is
#: stamped with the BLAS core: ``_cache_stamp``).
SMALL_NT = small_gemm.enabled()
_width = njit(**JIT_OPTIONS)(small_gemm.width)
#: :func:`bnprop.kernels.tile_gemm.enabled`, fixed in the compiled code like ``SMALL_NT``.
TILES = tile_gemm.enabled()


@njit(**JIT_OPTIONS)
def gemm_part(dtype_code, ta, tb, M, N, K, a, lda, b, ldb, c, ldc, by_rows, r0, r1,
              ):  # pragma: no cover - compiled
    """Rows (``by_rows``) or columns ``[r0, r1)`` of ``C = op(A) op(B)`` (module
    docstring); ``a``, ``b``, ``c`` are the whole operands' addresses."""
    size = 4 if dtype_code == F32 else 8
    # bnprop's own tiles or the small kernel's column blocks, decided on the whole product.
    kind = tile_gemm.NT if tb == _TRANS else tile_gemm.TN if ta == _TRANS else tile_gemm.NN
    tiles = (ta == _NO_TRANS or tb == _NO_TRANS) and tile_gemm.takes_compiled(
        size, kind, M, N, K, TILES)
    w = _width(size, M, N, K, SMALL_NT) if ta == _NO_TRANS and tb == _TRANS else 0
    if by_rows:
        a_off = r0 * lda if ta == _NO_TRANS else r0     # A (M, K) or stored (K, M)
        b_off, c_off = 0, r0 * ldc
        M = r1 - r0
    else:
        b_off = r0 * ldb if tb == _TRANS else r0        # B stored (N, K) or (K, N)
        a_off, c_off = 0, r0
        N = r1 - r0
    if M <= 0 or N <= 0:
        return
    a, b, c = a + a_off * size, b + b_off * size, c + c_off * size
    if tiles:  # float32 only; each element's bits whatever the part
        tile_gemm.run(kind, a, lda, b, ldb, c, ldc, M, N, K)
    elif w > 0:  # float32 only; blocks at multiples of w of the whole C, whatever the part
        first = 0 if by_rows else r0
        s = 0
        while s < N:
            n = min(N - s, ((first + s) // w + 1) * w - (first + s))
            _sgemm(_ROW_MAJOR, ta, tb, M, n, K, np.float32(1.0), f32_at(a), lda,
                   f32_at(b + s * ldb * size), ldb, np.float32(0.0), f32_at(c + s * size), ldc)
            s += n
    elif dtype_code == F32:
        _sgemm(_ROW_MAJOR, ta, tb, M, N, K, np.float32(1.0), f32_at(a), lda, f32_at(b), ldb,
               np.float32(0.0), f32_at(c), ldc)
    else:
        _dgemm(_ROW_MAJOR, ta, tb, M, N, K, 1.0, f64_at(a), lda, f64_at(b), ldb, 0.0,
               f64_at(c), ldc)


def _dtype_code(A, B, C):  # pragma: no cover - compiled only
    """``gemm_part``'s dtype code of three C-contiguous operands of one dtype."""
    raise NotImplementedError("_dtype_code is only callable from Numba-compiled code")


@overload(_dtype_code, jit_options=JIT_OPTIONS)
def _dtype_code_overload(A, B, C):  # type: ignore[no-untyped-def]
    # Only C-contiguous operands of one dtype type-check: the addresses and leading
    # dimensions of the calls assume them (anything else would read the wrong memory).
    if not (A.dtype == B.dtype == C.dtype and A.layout == B.layout == C.layout == "C"):
        return None
    return lambda A, B, C: _code_of(C)


def _code_of(p):  # pragma: no cover - compiled only
    """The dtype code (``F32``, ``F64``) of a float array, or of a float scalar (the
    helper loop's token, :func:`bnprop.kernels._tasks.run_posted`)."""
    raise NotImplementedError("_code_of is only callable from Numba-compiled code")


@overload(_code_of, jit_options=JIT_OPTIONS)
def _code_of_overload(p):  # type: ignore[no-untyped-def]
    dtype = getattr(p, "dtype", p)
    if dtype == types.float32:
        return lambda p: F32
    if dtype == types.float64:
        return lambda p: F64
    return None


@njit(**JIT_OPTIONS)
def gemm_nt(A, B, C):  # pragma: no cover - compiled
    """``C = A B^T``: A (M, K), B (N, K), C (M, N), all C-contiguous."""
    M, K = A.shape
    N = B.shape[0]
    gemm_part(_dtype_code(A, B, C), _NO_TRANS, _TRANS, M, N, K, address(A), K, address(B),
              K, address(C), N, False, 0, N)


@njit(**JIT_OPTIONS)
def gemm_tn(A, B, C):  # pragma: no cover - compiled
    """``C = A^T B``: A (K, M), B (K, N), C (M, N), all C-contiguous."""
    K, M = A.shape
    N = B.shape[1]
    gemm_part(_dtype_code(A, B, C), _TRANS, _NO_TRANS, M, N, K, address(A), M, address(B),
              N, address(C), N, False, 0, N)


@njit(**JIT_OPTIONS)
def gemm_nn(A, B, C):  # pragma: no cover - compiled
    """``C = A B``: A (M, K), B (K, N), C (M, N), all C-contiguous."""
    M, K = A.shape
    N = B.shape[1]
    gemm_part(_dtype_code(A, B, C), _NO_TRANS, _NO_TRANS, M, N, K, address(A), K, address(B),
              N, address(C), N, False, 0, N)
