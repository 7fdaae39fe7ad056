"""The per-feature folds of reductions over widened rows (:mod:`bnprop.nn.widen`), compiled.

A block of ``r`` rows of ``n`` features read as one row of ``r n`` gives each feature
``r`` partial results, one per group ``g`` of rows (group ``g`` holds the rows
``i = g mod r``, ``count_g`` rows each). They fold into one per feature::

    moments   mean = (1/r) sum_g mean_g
              M2   = sum_g M2_g + count_g sum_g (mean_g - mean)^2      (Chan, equal counts)
    sums      out += sum_g s_g

float64, ``g`` in order: bit for bit NumPy's ``mean_g.mean(axis=0)``,
``M2_g.sum(axis=0) + count_g * ((mean_g - mean) ** 2).sum(axis=0)`` and
``out += s_g.sum(axis=0)`` on the ``(r, n)`` views (:func:`fold_moments_numpy`,
:func:`fold_add_numpy`, which the tests hold them to). One compiled call replaces
about eight small NumPy calls: a conv stage's parts run them on both threads, each
holding the GIL meanwhile (the CNN step, 2 threads: 0.32 ms less of 17.9).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bnprop.kernels._jit import JIT_OPTIONS


@njit(**JIT_OPTIONS)
def fold_moments(mean_w, M2_w, r, count_g, mean, M2):  # pragma: no cover - compiled
    """``mean``, ``M2`` (n,) of the ``r`` groups' ``mean_w``, ``M2_w`` (r n,), each
    group of ``count_g`` rows (module docstring)."""
    n = mean.shape[0]
    for j in range(n):
        s = mean_w[j]
        for g in range(1, r):
            s += mean_w[g * n + j]
        mean[j] = s / r
    for j in range(n):
        s1 = M2_w[j]
        for g in range(1, r):
            s1 += M2_w[g * n + j]
        d = mean_w[j] - mean[j]
        s2 = d * d
        for g in range(1, r):
            d = mean_w[g * n + j] - mean[j]
            s2 += d * d
        M2[j] = s1 + count_g * s2


@njit(**JIT_OPTIONS)
def fold_add(w, n, out):  # pragma: no cover - compiled
    """``out += sum_g w_g`` over the ``len(w) / n`` groups of ``n`` of ``w``."""
    r = w.shape[0] // n
    for j in range(n):
        s = w[j]
        for g in range(1, r):
            s += w[g * n + j]
        out[j] += s


def fold_moments_numpy(mean_w: np.ndarray, M2_w: np.ndarray, r: int, count_g: float,
                       mean: np.ndarray, M2: np.ndarray) -> None:
    """:func:`fold_moments` in NumPy (the reference)."""
    mean_g, M2_g = mean_w.reshape(r, -1), M2_w.reshape(r, -1)
    mean[...] = mean_g.mean(axis=0)
    M2[...] = M2_g.sum(axis=0) + count_g * ((mean_g - mean) ** 2).sum(axis=0)


def fold_add_numpy(w: np.ndarray, n: int, out: np.ndarray) -> None:
    """:func:`fold_add` in NumPy (the reference)."""
    out += w.reshape(-1, n).sum(axis=0)
