"""GEMM callable from Numba code: NumPy's own OpenBLAS, bound by symbol name.

The compiled train step (:mod:`bnprop.kernels._mlp_compiled`) calls ``cblas_sgemm`` /
``cblas_dgemm`` of the very OpenBLAS that ``np.matmul`` calls, with the arguments
``np.matmul`` passes for the same operands, so a GEMM inside the step gives the bits
``np.matmul`` gives::

    gemm_nt(A, B, C)    C = A B^T     np.matmul(A, B.T, out=C)    forward  Z = O W^T
    gemm_tn(A, B, C)    C = A^T B     np.matmul(A.T, B, out=C)    backward dW = dZ^T O
    gemm_nn(A, B, C)    C = A B       np.matmul(A, B, out=C)      backward dO = dZ W

(all C-contiguous, row-major; ``lda``, ``ldb``, ``ldc`` are the row lengths). A float32
product that bnprop's own tiles take (:mod:`bnprop.kernels.tile_rule`) runs there
instead, in the compiled step and in the Python step alike, with the tiles' bits
(:mod:`bnprop.kernels.tile_gemm`). Only
NumPy's wheels' ``scipy-openblas`` (64-bit integers, symbols ``scipy_cblas_?gemm64_``)
is bound; with any other BLAS :func:`available` is False and bnprop runs its Python
step, which calls ``np.matmul`` itself.
"""

from __future__ import annotations

import ctypes
from functools import cache

SYMBOLS = {"float32": "scipy_cblas_sgemm64_", "float64": "scipy_cblas_dgemm64_"}


@cache
def library() -> str | None:
    """Path of NumPy's OpenBLAS when it exports both GEMM symbols, else ``None``."""
    from bnprop.threads import _loaded_openblas_paths

    for path in _loaded_openblas_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if all(hasattr(lib, name) for name in SYMBOLS.values()):
            return path
    return None


@cache
def corename() -> str | None:
    """The core NumPy's OpenBLAS chose its kernels for (``openblas_get_corename``, e.g.
    ``"SkylakeX"``; fixed for the process), or ``None`` without one."""
    path = library()
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename"):
        f = getattr(lib, name, None)
        if f is not None:
            f.argtypes, f.restype = [], ctypes.c_char_p
            found = f()
            return found.decode() if found else None
    return None


@cache
def available() -> bool:
    """Whether the compiled step can call NumPy's GEMM (the library is loaded into
    Numba's symbol table on the first call)."""
    path = library()
    if path is None:
        return False
    import llvmlite.binding as llvm

    llvm.load_library_permanently(path)
    return True
