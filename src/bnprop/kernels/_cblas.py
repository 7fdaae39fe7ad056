"""NumPy's own GEMM called from Numba code, whole or in two parts.

``gemm_nt`` / ``gemm_tn`` / ``gemm_nn`` call ``cblas_sgemm`` / ``cblas_dgemm`` of the
OpenBLAS that ``np.matmul`` calls, with the arguments ``np.matmul`` passes for the same
operands (:mod:`bnprop.kernels.blas`), so they give its bits.

``gemm_part`` computes one part of such a GEMM from raw addresses: the rows
``[r0, r1)`` or the columns ``[r0, r1)`` of ``C = op(A) op(B)``, row-major::

    columns [r0, r1):  C[:, r0:r1] = op(A) op(B)[:, r0:r1]
    rows    [r0, r1):  C[r0:r1, :] = op(A)[r0:r1, :] op(B)

A part is a GEMM of its own on offset pointers with the whole operands' leading
dimensions; each element of ``C`` is still the dot product over all ``K`` of one row and
one column, so on OpenBLAS (whose kernels accumulate each element over ``K`` in the same
order whatever ``M`` and ``N``) the parts give the whole call's bits
(``tests/test_team.py`` holds them equal at the step's shapes).
Import this module only when :func:`bnprop.kernels.blas.available` is True.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload

from bnprop.kernels import blas
from bnprop.kernels._atomics import f32_at, f64_at
from bnprop.kernels._jit import JIT_OPTIONS

if not blas.available():  # pragma: no cover - the caller checks first
    raise ImportError("bnprop.kernels._cblas needs NumPy's scipy-openblas")

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _signature(t: types.Type) -> types.Signature:
    i32, i64, p = types.int32, types.int64, types.CPointer(t)
    return types.void(i32, i32, i32, i64, i64, i64, t, p, i64, p, i64, t, p, i64)


_sgemm = types.ExternalFunction(blas.SYMBOLS["float32"], _signature(types.float32))
_dgemm = types.ExternalFunction(blas.SYMBOLS["float64"], _signature(types.float64))


@intrinsic
def _ptr(typingctx, arr):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """The data pointer of an array (what ``arr.ctypes.data`` is, typed for a C call)."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return context.make_array(arr)(context, builder, args[0]).data

    return types.CPointer(arr.dtype)(arr), codegen


def _xgemm(ta, tb, M, N, K, A, lda, B, ldb, C, ldc):  # pragma: no cover - compiled only
    """``C = op(A) op(B)`` (row-major cblas ``?gemm``, alpha 1, beta 0)."""
    raise NotImplementedError("_xgemm is only callable from Numba-compiled code")


@overload(_xgemm, jit_options=JIT_OPTIONS)
def _xgemm_overload(ta, tb, M, N, K, A, lda, B, ldb, C, ldc):  # type: ignore[no-untyped-def]
    # Only C-contiguous operands of one dtype type-check: the pointers and leading
    # dimensions below assume them (anything else would read the wrong memory).
    if not (A.dtype == B.dtype == C.dtype and A.layout == B.layout == C.layout == "C"):
        return None
    if C.dtype == types.float32:
        def impl32(ta, tb, M, N, K, A, lda, B, ldb, C, ldc):  # type: ignore[no-untyped-def]
            _sgemm(_ROW_MAJOR, ta, tb, M, N, K, np.float32(1.0), _ptr(A), lda, _ptr(B), ldb,
                   np.float32(0.0), _ptr(C), ldc)
        return impl32
    if C.dtype == types.float64:
        def impl64(ta, tb, M, N, K, A, lda, B, ldb, C, ldc):  # type: ignore[no-untyped-def]
            _dgemm(_ROW_MAJOR, ta, tb, M, N, K, 1.0, _ptr(A), lda, _ptr(B), ldb, 0.0,
                   _ptr(C), ldc)
        return impl64
    return None


@njit(**JIT_OPTIONS)
def gemm_nt(A, B, C):  # pragma: no cover - compiled
    """``C = A B^T``: A (M, K), B (N, K), C (M, N), all C-contiguous."""
    M, K = A.shape
    N = B.shape[0]
    _xgemm(_NO_TRANS, _TRANS, M, N, K, A, K, B, K, C, N)


@njit(**JIT_OPTIONS)
def gemm_tn(A, B, C):  # pragma: no cover - compiled
    """``C = A^T B``: A (K, M), B (K, N), C (M, N), all C-contiguous."""
    K, M = A.shape
    N = B.shape[1]
    _xgemm(_TRANS, _NO_TRANS, M, N, K, A, M, B, N, C, N)


@njit(**JIT_OPTIONS)
def gemm_nn(A, B, C):  # pragma: no cover - compiled
    """``C = A B``: A (M, K), B (K, N), C (M, N), all C-contiguous."""
    M, K = A.shape
    N = B.shape[1]
    _xgemm(_NO_TRANS, _NO_TRANS, M, N, K, A, K, B, N, C, N)


#: ``gemm_part``'s ``dtype_code``: 0 float32, 1 float64.
F32, F64 = 0, 1


@njit(**JIT_OPTIONS)
def gemm_part(dtype_code, ta, tb, M, N, K, a, lda, b, ldb, c, ldc, by_rows, r0, r1,
              ):  # pragma: no cover - compiled
    """Rows (``by_rows``) or columns ``[r0, r1)`` of ``C = op(A) op(B)`` (module
    docstring); ``a``, ``b``, ``c`` are the whole operands' addresses."""
    size = 4 if dtype_code == F32 else 8
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
    if dtype_code == F32:
        _sgemm(_ROW_MAJOR, ta, tb, M, N, K, np.float32(1.0), f32_at(a), lda, f32_at(b), ldb,
               np.float32(0.0), f32_at(c), ldc)
    else:
        _dgemm(_ROW_MAJOR, ta, tb, M, N, K, 1.0, f64_at(a), lda, f64_at(b), ldb, 0.0,
               f64_at(c), ldc)
