"""The Jacobians the handout states, materialized for a small layer, and finite differences.

For example ``i`` (row ``i`` of the batch), with the dimensions corrected (docs/math.md, Errata)::

    (1)  J_{o}(a)    = diag(sigma'(A_i))                        (n_out, n_out)
    (2)  J_{a}(gamma) = diag(Obar_i)                            (n_out, n_out)
    (3)  J_{a}(beta)  = I                                       (n_out, n_out)
    (4)  [J_{a}(W)]_{p,:} = diag(gamma * inv_std) e_p O_i^T     (n_out, n_out, n_in)
         with the batch statistics held fixed (frozen).

In training mode the statistics depend on W, and so on every row of the batch. Per
feature p, the (m, m) Jacobian of the column ``A[:, p]`` w.r.t. ``Z[:, p]`` is::

    dA[:, p] / dZ[:, p] = gamma_p * inv_std_p * (I - 1 1^T / m - Obar_p Obar_p^T / m)

and ``dA[i, p] / dW[q, r] = delta_pq * sum_j dA[i, p]/dZ[j, p] * O[j, r]``.

Every ``stated_*`` function builds the formula; every ``numeric_*`` function takes
central finite differences of the real forward function. Both work in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bnprop import batchnorm as bn
from bnprop.activations import get_activation
from bnprop.layer import LayerCache

#: Step of the central differences: error ~ h^2 f''' + 1e-16 / h, about 1e-10 for O(1) data.
FD_STEP = 1e-6


def central_difference(
    f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, h: float = FD_STEP,
) -> np.ndarray:
    """Jacobian of ``f`` at ``x`` by central differences, ``(f(x + h e) - f(x - h e)) / 2h``.

    Returns
    -------
    J : ndarray of shape ``f(x).shape + x.shape``
    """
    x = np.array(x, dtype=np.float64)
    y0 = np.asarray(f(x))
    J = np.empty(y0.shape + x.shape)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        J[(Ellipsis, *idx)] = (np.asarray(f(xp)) - np.asarray(f(xm))) / (2 * h)
    return J


def forward_A(
    cache: LayerCache,
    *,
    W: np.ndarray | None = None,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    frozen: bool = False,
) -> np.ndarray:
    """``A`` of the cached layer with some parameters replaced (for finite differences).

    ``frozen=True`` keeps the cached ``mu_B`` and ``inv_std`` (a stop-gradient on the
    statistics); otherwise they are recomputed from the new ``Z``, as in training.
    """
    W = cache.W if W is None else W
    gamma = cache.gamma if gamma is None else gamma
    beta = cache.beta if beta is None else beta
    Z = cache.O @ W.T
    if frozen:
        mu, inv_std = cache.mu, cache.inv_std
    else:
        mu, var = bn.batch_stats(Z)
        inv_std = bn.inverse_std(var, cache.eps)
    return gamma * bn.normalize(Z, mu, inv_std) + beta


# ---- (1) J_o(a) = diag(sigma'(a)) --------------------------------------------------------

def stated_J_o_wrt_a(cache: LayerCache, i: int) -> np.ndarray:
    """``diag(sigma'(A_i))``, (n_out, n_out)."""
    act = get_activation(cache.activation)
    return np.diag(act.derivative(cache.A[i], cache.Y[i]))


def numeric_J_o_wrt_a(cache: LayerCache, i: int) -> np.ndarray:
    """Central differences of ``Y_i = sigma(A_i)`` w.r.t. ``A_i``, (n_out, n_out)."""
    return central_difference(get_activation(cache.activation).forward, cache.A[i])


# ---- (2) J_a(gamma) = diag(Obar) ---------------------------------------------------------

def stated_J_a_wrt_gamma(cache: LayerCache, i: int) -> np.ndarray:
    """``diag(Obar_i)``, (n_out, n_out)."""
    return np.diag(cache.Obar[i])


def numeric_J_a_wrt_gamma(cache: LayerCache, i: int) -> np.ndarray:
    """Central differences of ``A_i`` w.r.t. ``gamma``, (n_out, n_out)."""
    return central_difference(lambda g: forward_A(cache, gamma=g)[i], cache.gamma)


# ---- (3) J_a(beta) = I -------------------------------------------------------------------

def stated_J_a_wrt_beta(cache: LayerCache, i: int) -> np.ndarray:
    """``I``, (n_out, n_out)."""
    return np.eye(cache.A.shape[1])


def numeric_J_a_wrt_beta(cache: LayerCache, i: int) -> np.ndarray:
    """Central differences of ``A_i`` w.r.t. ``beta``, (n_out, n_out)."""
    return central_difference(lambda b: forward_A(cache, beta=b)[i], cache.beta)


# ---- (4) J_a(W), statistics held fixed, and the true training-mode Jacobian --------------

def stated_J_a_wrt_W_frozen(cache: LayerCache, i: int) -> np.ndarray:
    """Handout part (4): row p is ``diag(gamma * inv_std) e_p O_i^T``; (n_out, n_out, n_in)."""
    n_out = cache.W.shape[0]
    scale = cache.gamma * cache.inv_std
    J = np.zeros((n_out, n_out, cache.W.shape[1]))
    for p in range(n_out):
        J[p] = np.outer(scale * np.eye(n_out)[p], cache.O[i])
    return J


def numeric_J_a_wrt_W(cache: LayerCache, i: int, *, frozen: bool) -> np.ndarray:
    """Central differences of ``A_i`` w.r.t. ``W``, (n_out, n_out, n_in).

    ``frozen=True``: statistics held at their cached values; ``False``: the real
    training-mode function, statistics recomputed.
    """
    return central_difference(lambda W: forward_A(cache, W=W, frozen=frozen)[i], cache.W)


def stated_dA_dZ_training(cache: LayerCache) -> np.ndarray:
    """Per feature p, ``gamma_p inv_std_p (I - 1 1^T/m - Obar_p Obar_p^T/m)``; (n_out, m, m)."""
    m = cache.m
    I_m = np.eye(m)
    Obar = cache.Obar
    proj = I_m[None] - 1.0 / m - Obar.T[:, :, None] * Obar.T[:, None, :] / m
    return (cache.gamma * cache.inv_std)[:, None, None] * proj


def stated_J_A_wrt_W_training(cache: LayerCache) -> np.ndarray:
    """Training-mode ``dA[i, p] / dW[q, r] = delta_pq sum_j dA[i,p]/dZ[j,p] O[j,r]``.

    Returns
    -------
    J : ndarray of shape (m, n_out, n_out, n_in)
    """
    m, n_out = cache.A.shape
    dAdZ = stated_dA_dZ_training(cache)  # (n_out, m, m)
    J = np.zeros((m, n_out, n_out, cache.W.shape[1]))
    for p in range(n_out):
        J[:, p, p, :] = dAdZ[p] @ cache.O
    return J


def numeric_J_A_wrt_W_training(cache: LayerCache) -> np.ndarray:
    """Central differences of the whole ``A`` w.r.t. ``W``; (m, n_out, n_out, n_in)."""
    return central_difference(lambda W: forward_A(cache, W=W), cache.W)


def numeric_dA_dZ_training(cache: LayerCache) -> np.ndarray:
    """Central differences of ``A[:, p]`` w.r.t. ``Z[:, p]`` per feature; (n_out, m, m)."""
    n_out = cache.A.shape[1]
    out = np.empty((n_out, cache.m, cache.m))
    for p in range(n_out):
        def column(z: np.ndarray, p: int = p) -> np.ndarray:
            mu, var = bn.batch_stats(z[:, None])
            inv = bn.inverse_std(var, cache.eps)
            return cache.gamma[p] * bn.normalize(z[:, None], mu, inv)[:, 0] + cache.beta[p]
        out[p] = central_difference(column, cache.Z[:, p])
    return out


def max_rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """Normwise relative error ``max|a - b| / max|b|`` (``max|a - b|`` when b is 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    err = float(np.max(np.abs(a - b), initial=0.0))
    ref = float(np.max(np.abs(b), initial=0.0))
    return err / ref if ref > 0 else err
