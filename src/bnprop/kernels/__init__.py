"""Numba kernels for the hot math, each equal to its NumPy reference in the math layer.

:mod:`bnprop.kernels.bn` holds the fused batch-norm reduce / apply kernels;
:mod:`bnprop.kernels.activations` the vectorizable activations they call. GEMMs: a
step's small float32 products run in bnprop's own register tiles on an AVX-512 host
(:mod:`bnprop.kernels.tile_gemm`), the others in NumPy's BLAS. Importing this package
imports Numba; kernels compile on first use (per dtype) and are cached on disk.
"""

from bnprop.kernels.bn import (
    BNBackward,
    BNForward,
    backward,
    backward_apply,
    backward_frozen,
    backward_sums,
    forward,
    forward_apply,
    moments,
)

__all__ = [
    "BNBackward",
    "BNForward",
    "backward",
    "backward_apply",
    "backward_frozen",
    "backward_sums",
    "forward",
    "forward_apply",
    "moments",
]
