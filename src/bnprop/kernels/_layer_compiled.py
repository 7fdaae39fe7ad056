"""The public layer functions of a small batch in one compiled call each (one part of rows,
one process): :mod:`bnprop.kernels.layer` calls these when its batch is not split.

The same kernels and GEMMs (NumPy's, :mod:`bnprop.kernels._cblas`) in the same
order as the split path with one part::

    forward    Z = O W^T;  (count, mean, M2) of Z;  var = M2 / count,
               inv_std = 1 / sqrt(var + eps);  Obar, A, Y = forward_apply(Z)
    backward   dA = sigma'(A) dY and its two sums;  dZ (exact or frozen, from dA);
               dW = dZ^T O;  dO = dZ W

Import only when :func:`bnprop.kernels.blas.available` is True.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bnprop.kernels import team
from bnprop.kernels._bn_compiled import (
    _backward_apply,
    _backward_frozen,
    _backward_sums_into,
    _moments,
    _var_inv_std,
)
from bnprop.kernels._finite import _all_finite, _copy_finite
from bnprop.kernels._jit import JIT_OPTIONS
from bnprop.kernels._team_bn import forward_rows
from bnprop.kernels.activations import IDENTITY


@njit(**JIT_OPTIONS)
def forward(O, W, gamma, beta, act, eps, block_rows, Z, Obar, A, Y, stats, cut, ctl,
            use):  # pragma: no cover - compiled
    """The forward pass (module docstring) into the given arrays; ``stats`` (3, n) in the
    arrays' dtype gets ``mu_B, var_B, inv_std``, each rounded once from float64 (NumPy's
    ``astype``). Returns the row count and whether every float64 ``inv_std`` is > 0 (not
    when ``var_B`` overflowed: :func:`bnprop.layer.variance_overflow`). ``cut``: where ``Z``'s
    GEMM is cut in two (:func:`bnprop.kernels.team.gemm`; 0: whole); ``ctl, use``: the
    helper thread (:mod:`bnprop.kernels.team`), which may also take half of the rows of
    ``Obar, A, Y`` (:mod:`bnprop.kernels._team_bn`)."""
    n = Z.shape[1]
    mean, M2, var, inv_std = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    owned = team.acquire(ctl, use)
    team.gemm(team.nt(O, W, Z), ctl, owned, cut)
    count = _moments(Z, block_rows, mean, M2)
    _var_inv_std(M2, count, eps, var, inv_std)
    forward_rows(Z, mean, inv_std, gamma, beta, act, Obar, Y, A, ctl, owned)
    team.release(ctl, owned)
    fits = True
    for j in range(n):
        stats[0, j] = mean[j]
        stats[1, j] = var[j]
        stats[2, j] = inv_std[j]
        fits = fits and inv_std[j] > 0  # False for 0 and NaN
    return count, fits


@njit(**JIT_OPTIONS)
def backward(dY, O, W, Y, Obar, gamma, inv_std, act, frozen, m_total, dA, dZ, dW, dO,
             sums, ctl, use):  # pragma: no cover - compiled
    """The backward pass (module docstring) into the given arrays; ``sums`` (2, n) in the
    arrays' dtype gets ``dbeta = sum_rows(dA)`` and ``dgamma = sum_rows(dA * Obar)``, each
    rounded once from float64. Returns whether the two sums are finite (a NaN or inf in
    dY makes them not). ``dW`` and ``dO`` are independent: the helper thread may take
    ``dW`` (``ctl, use``, :mod:`bnprop.kernels.team`)."""
    n = sums.shape[1]
    sum_G, sum_GObar = np.empty(n), np.empty(n)
    _backward_sums_into(dY, Y, Obar, act, sum_G, sum_GObar, dA)
    if frozen:
        _backward_frozen(dA, Y, Obar, gamma, inv_std, IDENTITY, np.empty(n), np.empty(n), dZ)
    else:
        _backward_apply(dA, Y, Obar, gamma, inv_std, sum_G, sum_GObar, m_total, IDENTITY, dZ)
    owned = team.acquire(ctl, use)
    team.gemm_beside(team.tn(dZ, O, dW), team.nn(dZ, W, dO), ctl, owned)
    team.release(ctl, owned)
    for j in range(n):
        sums[0, j] = sum_G[j]
        sums[1, j] = sum_GObar[j]
    return _all_finite(sum_G) and _all_finite(sum_GObar)


@njit(**JIT_OPTIONS)
def forward_copied(O, W, gamma, beta, O_c, W_c, gamma_c, beta_c, act, eps, block_rows, Z,
                   Obar, A, Y, stats, cut, ctl, use):  # pragma: no cover - compiled
    """:func:`forward` on ``O_c, W_c, gamma_c, beta_c``, copies of the caller's four
    arrays made in the pass that tests them for inf and NaN (the cache keeps the copies:
    changing an input afterwards does not change its backward pass). Returns ``(count,
    fits, finite)``; when not ``finite`` nothing else is computed."""
    finite = (_copy_finite(O.reshape(O.size), O_c.reshape(O_c.size))
              and _copy_finite(W.reshape(W.size), W_c.reshape(W_c.size))
              and _copy_finite(gamma, gamma_c) and _copy_finite(beta, beta_c))
    if not finite:
        return 0, False, False
    count, fits = forward(O_c, W_c, gamma_c, beta_c, act, eps, block_rows, Z, Obar, A, Y,
                          stats, cut, ctl, use)
    return count, fits, True
