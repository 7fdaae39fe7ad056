"""Which float32 products bnprop's own tiles take (:mod:`bnprop.kernels.tile_gemm`).

Decided on the whole product, fixed for the process, the same in compiled code and in
Python; kept apart from the compiled tiles so that the kernels' cache stamp
(:mod:`bnprop.kernels._cache_stamp`) can read :func:`enabled` without compiling anything.
"""

from __future__ import annotations

from functools import cache

#: Products from this many multiply-adds on stay with the BLAS
#: (:data:`bnprop.kernels.small_gemm.MAX_MNK`, held equal by the tests).
MAX_MNK = 16_000_000
#: Longest ``K`` of an ``NN`` / ``TN`` product taken here.
MAX_K_OUTER = 128
#: Product kinds (row-major): ``C = A B^T``, ``C = A^T B``, ``C = A B``.
NT, TN, NN = 0, 1, 2


@cache
def enabled() -> bool:
    """Whether the CPU Numba compiles for has AVX-512F (fixed for the process): the host's,
    unless ``NUMBA_CPU_NAME`` names another CPU or ``NUMBA_CPU_FEATURES`` leaves it out."""
    from llvmlite import binding
    from numba.core import config

    if getattr(config, "CPU_NAME", None) not in (None, "host"):
        return False
    features = getattr(config, "CPU_FEATURES", None)
    if features is not None and "+avx512f" not in features.split(","):
        return False
    try:
        return bool(binding.get_host_cpu_features().get("avx512f", False))
    except (RuntimeError, AttributeError):  # pragma: no cover - an LLVM without the query
        return False


def takes(itemsize: int, kind: int, M: int, N: int, K: int, on: bool) -> bool:
    """Whether the product ``(M, N)`` over ``K`` of ``kind`` runs in the tiles
    (:mod:`bnprop.kernels.tile_gemm`); ``on``: :func:`enabled`. Compiled there too
    (``tile_gemm.takes_compiled``)."""
    if not on or itemsize != 4 or M < 1 or N < 1 or K < 1 or M * N * K >= MAX_MNK:
        return False
    return kind == NT or ((kind == TN or kind == NN) and K <= MAX_K_OUTER)
