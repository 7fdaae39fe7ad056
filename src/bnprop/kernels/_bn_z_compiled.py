"""Backward kernels of a layer cache that keeps ``Z``, not ``Obar``
(:class:`bnprop.layer_cache.LayerCache`): each row of ``Obar`` is formed again from ``Z``,
exactly as :func:`bnprop.kernels._bn_compiled._forward_apply` formed it::

    Obar_i = (Z_i - mu_B) * inv_std            float64 statistics, rounded on the store
    G_i    = sigma'(A_i) * dY_i  (into dA)     sum_G += G_i,  sum_GObar += G_i Obar_i
    dZ     = ((G - mean_G) - Obar mean_GObar) scale      exact
    dZ     = G * scale                                    frozen

The same kernels and rounding as :mod:`bnprop.kernels._bn_compiled`, with ``Obar`` not
read from memory; compiled lazily, serial, releasing the GIL (:mod:`bnprop.kernels._jit`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bnprop.kernels._bn_compiled import _add_sums_row, _dZ_coefficients, _dZ_scale
from bnprop.kernels._jit import JIT_OPTIONS
from bnprop.kernels.activations import per_derivative


@njit(**JIT_OPTIONS)
def _obar_row(z, mean, inv_std, out):  # pragma: no cover - compiled
    """One row of ``Obar = (Z - mu_B) * inv_std``: float64 ``mean`` and ``inv_std``,
    rounded on the store to ``out``'s dtype (:func:`bnprop.batchnorm.normalize`)."""
    for j in range(out.shape[0]):
        out[j] = (z[j] - mean[j]) * inv_std[j]


@njit(**JIT_OPTIONS)
def _backward_sums_z(dY, Y, Z, mean, inv_std, act, sum_G, sum_GObar, dA):  # pragma: no cover
    """:func:`bnprop.kernels._bn_compiled._backward_sums_into` with ``Obar``'s rows formed
    from ``Z`` (float64 stats)."""
    sum_G[:] = 0.0
    sum_GObar[:] = 0.0
    _sums_z_by_act(act, dY, Y, Z, mean, inv_std, sum_G, sum_GObar, dA)


def _sums_rows_z(d):  # type: ignore[no-untyped-def]
    """:func:`_backward_sums_z` for one activation's derivative ``d`` (per ``d``, as
    ``_sums_rows``), a row's ``Obar``, ``G`` and sums in three loops (one thread, sigmoid,
    the same bits: 4096 x 256 float32 1126 -> 770-785 us, float64 1590 -> 1380)."""
    def sums(dY, Y, Z, mean, inv_std, sum_G, sum_GObar, dA):  # pragma: no cover - compiled
        one = np.ones(1, dY.dtype)[0]
        o = np.empty(dY.shape[1], dY.dtype)
        for i in range(dY.shape[0]):
            dy, y, ga = dY[i], Y[i], dA[i]
            _obar_row(Z[i], mean, inv_std, o)
            for j in range(dy.shape[0]):
                ga[j] = d(y[j], dy[j], one)
            _add_sums_row(ga, o, sum_G, sum_GObar, 0, ga.shape[0])
    return sums


_sums_z_by_act = per_derivative(_sums_rows_z)


@njit(**JIT_OPTIONS)
def _dZ_exact_z(G, Z, mean, inv_std64, gamma, inv_std, sum_G, sum_GObar, m_total,
                dZ):  # pragma: no cover - compiled
    """The exact ``dZ`` of :func:`bnprop.kernels._bn_compiled._backward_apply` (identity)
    from ``G = dA``, with ``Obar``'s rows formed from ``Z`` by ``mean`` and
    ``inv_std64``; ``inv_std`` is the one of ``dZ``'s scale (the cache's, as the
    reference uses it)."""
    m, n = G.shape
    mean_G, mean_GObar, scale = _dZ_coefficients(gamma, inv_std, sum_G, sum_GObar, m_total, G)
    o = np.empty(n, G.dtype)
    for i in range(m):
        _obar_row(Z[i], mean, inv_std64, o)
        g = G[i]
        dz = dZ[i]
        for j in range(n):
            dz[j] = ((g[j] - mean_G[j]) - o[j] * mean_GObar[j]) * scale[j]


@njit(**JIT_OPTIONS)
def _dZ_frozen(G, gamma, inv_std, dZ):  # pragma: no cover - compiled
    """The frozen ``dZ = G * scale``, ``scale = gamma * inv_std`` rounded to G's dtype
    (:func:`bnprop.kernels._bn_compiled._backward_frozen`'s ``dZ``, without its sums)."""
    m, n = G.shape
    scale = _dZ_scale(gamma, inv_std, G)
    for i in range(m):
        g = G[i]
        dz = dZ[i]
        for j in range(n):
            dz[j] = g[j] * scale[j]
