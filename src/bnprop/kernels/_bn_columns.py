"""The backward batch-norm pass over a range of columns: a layer's features apart.

The exact backward pass of a BN layer (:mod:`bnprop.kernels.bn`), per feature ``j``::

    G_ij     = sigma'(A_ij) dY_ij
    sum_G_j  = sum_i G_ij,   sum_GObar_j = sum_i G_ij Obar_ij      float64, rows in order
    dZ_ij    = ((G_ij - sum_G_j / m) - Obar_ij sum_GObar_j / m) gamma_j inv_std_j

and the frozen one, ``dZ_ij = G_ij gamma_j inv_std_j`` with the same two sums, read
column ``j`` of ``dY``, ``Y`` and ``Obar`` and nothing of another feature. So the columns
``[0, h)`` and ``[h, n)`` computed apart, each by the whole-width kernels' loops
(:func:`bnprop.kernels._bn_compiled._sums_rows`, ``_apply_rows``, ``_frozen_rows``) over
its part of every row, give the bits of the whole pass: each sum still adds its column's
rows in order. A cut by rows would not: its two partial sums would be added in another
order. :func:`bnprop.kernels._team_bn.backward_columns` gives the second part to the
helper thread.

Import only when :func:`bnprop.kernels.blas.available` is True (the helper's tasks
import it).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bnprop.kernels._bn_compiled import (
    _apply_by_act,
    _dZ_coefficients,
    _dZ_scale,
    _frozen_by_act,
    _sums_by_act,
)
from bnprop.kernels._jit import JIT_OPTIONS


@njit(**JIT_OPTIONS)
def backward_part(dY, Y, Obar, gamma, inv_std, act, frozen, m_total, sum_G, sum_GObar, c0,
                  c1):  # pragma: no cover - compiled
    """Columns ``[c0, c1)`` of the backward pass in place (``dZ`` into ``dY``), exact or
    ``frozen`` (module docstring): their ``sum_G``, ``sum_GObar`` (float64) and ``dZ``.
    ``inv_std`` is the forward pass's float64; ``m_total`` the batch's rows."""
    n, part = dY.shape[1], slice(c0, c1)
    sum_G[part] = 0.0
    sum_GObar[part] = 0.0
    scale = np.empty(n, dY.dtype)  # the coefficients of columns [c0, c1) only
    if frozen:
        scale[part] = _dZ_scale(gamma[part], inv_std[part], dY)
        _frozen_by_act(act, dY, Y, Obar, scale, sum_G, sum_GObar, dY, True, c0, c1)
        return
    _sums_by_act(act, dY, Y, Obar, sum_G, sum_GObar, None, c0, c1)
    mean_G, mean_GObar = np.empty(n, dY.dtype), np.empty(n, dY.dtype)
    mean_G[part], mean_GObar[part], scale[part] = _dZ_coefficients(
        gamma[part], inv_std[part], sum_G[part], sum_GObar[part], m_total, Y)
    _apply_by_act(act, dY, Y, Obar, mean_G, mean_GObar, scale, dY, True, c0, c1)
