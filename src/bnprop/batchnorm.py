"""Batch normalization as pure functions: statistics, normalization, exact and frozen backward.

Conventions (docs/math.md), written once:

* rows are examples: ``Z`` is ``(m, n)``, one example a row, one feature a column;
* the batch variance is the biased one, ``var_B = (1/m) sum_i (Z_i - mu_B)^2``;
* statistics are accumulated in float64 whatever the input dtype, in two passes
  (mean, then centered squares), never as ``E[Z^2] - E[Z]^2``;
* the objective F is a sum over the rows, so parameter gradients are sums over rows.

Forward (Ioffe & Szegedy 2015, Algorithm 1)::

    mu_B    = (1/m) sum_i Z_i                                        (n,)
    var_B   = (1/m) sum_i (Z_i - mu_B)^2                             (n,)
    inv_std = 1 / sqrt(var_B + eps)                                  (n,)
    Obar    = (Z - mu_B) * inv_std                                   (m, n)
    A       = gamma * Obar + beta                                    (m, n)

Backward, with ``G = dF/dA`` (m, n)::

    dbeta   = sum_rows(G)                                            (n,)
    dgamma  = sum_rows(G * Obar)                                     (n,)
    dZ      = gamma * inv_std * (G - dbeta / m - Obar * dgamma / m)  exact
    dZ      = gamma * inv_std * G                                    frozen statistics

The frozen form is the handout's part (4): ``mu_B`` and ``var_B`` treated as constants.
The exact form differentiates through them; its two extra terms project out of ``dZ``
the per-feature shift and the component along ``Obar``, which the normalization cancels.

Everything a distributed run must reduce across processes is split out: the forward
needs ``(count, mean, M2)`` (:func:`batch_moments`, combined by :func:`chan_combine`),
the backward ``(sum_rows(G), sum_rows(G * Obar))`` (:func:`backward_sums`).
"""

from __future__ import annotations

import numpy as np

#: Rows per block when a float32 array is widened to float64: bounds the temporary.
_BLOCK_ROWS = 8192


def batch_moments(Z: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Per-feature count, mean and centered sum of squares, two passes in float64.

    ``mean = (1/m) sum_i Z_i``, ``M2 = sum_i (Z_i - mean)^2``.

    Parameters
    ----------
    Z : ndarray of shape (m, n)

    Returns
    -------
    count : int
        ``m``.
    mean : ndarray of shape (n,), float64
    M2 : ndarray of shape (n,), float64
    """
    m = Z.shape[0]
    mean = Z.sum(axis=0, dtype=np.float64)
    mean /= m
    M2 = np.zeros(Z.shape[1], dtype=np.float64)
    for start in range(0, m, _BLOCK_ROWS):
        D = Z[start : start + _BLOCK_ROWS] - mean  # float64 block
        M2 += np.einsum("ij,ij->j", D, D)
    return m, mean, M2


def chan_combine(
    n_a: float, mean_a: np.ndarray, M2_a: np.ndarray,
    n_b: float, mean_b: np.ndarray, M2_b: np.ndarray,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Combine the moments of two disjoint sets of rows (Chan, Golub & LeVeque 1979).

    ``n = n_a + n_b``, ``delta = mean_b - mean_a``,
    ``mean = mean_a + delta * n_b / n``, ``M2 = M2_a + M2_b + delta^2 * n_a * n_b / n``.

    Stable in floating point: no difference of large sums is ever formed.
    """
    n = n_a + n_b
    if n == 0:
        return 0, np.zeros_like(mean_a), np.zeros_like(M2_a)
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    M2 = M2_a + M2_b + delta * delta * (n_a * n_b / n)
    return n, mean, M2


def biased_var(M2: np.ndarray, m: float) -> np.ndarray:
    """The batch variance BN normalizes with: biased, ``var_B = M2 / m``, from the sum of
    squared deviations ``M2`` of ``m`` rows (PyTorch's ``var(unbiased=False)``; its
    running variance takes the unbiased one, :func:`unbiased_var`)."""
    return M2 / m


def batch_stats(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mu_B`` and the biased ``var_B = M2 / m`` of ``Z`` (m, n), both float64 (n,)."""
    m, mean, M2 = batch_moments(Z)
    return mean, biased_var(M2, m)


def inverse_std(var: np.ndarray, eps: float) -> np.ndarray:
    """``inv_std = 1 / sqrt(var + eps)``, float64."""
    return 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)


def normalize(Z: np.ndarray, mu: np.ndarray, inv_std: np.ndarray) -> np.ndarray:
    """``Obar = (Z - mu) * inv_std`` in ``Z``'s dtype.

    The subtraction is done in float64, so a float32 ``Z`` far from zero (an offset of
    1e6, say) loses nothing to the rounding of ``mu`` to float32.
    """
    if Z.dtype == np.float64:
        Obar = Z - mu
        Obar *= inv_std
        return Obar
    Obar = np.empty_like(Z)
    for start in range(0, Z.shape[0], _BLOCK_ROWS):
        block = slice(start, start + _BLOCK_ROWS)
        Obar[block] = (Z[block] - mu) * inv_std
    return Obar


def scale_shift(Obar: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``A = gamma * Obar + beta``, a new array in ``Obar``'s dtype: the product rounded,
    then the sum (the kernels round the same two operations, without FMA)."""
    A = gamma * Obar
    A += beta
    return A


def backward_sums(G: np.ndarray, Obar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sum_rows(G)`` and ``sum_rows(G * Obar)``, accumulated in float64, each (n,).

    They are ``dbeta`` and ``dgamma``, and the two reductions the exact ``dZ`` needs.
    """
    sum_G = G.sum(axis=0, dtype=np.float64)
    sum_GObar = np.einsum("ij,ij->j", G, Obar, dtype=np.float64)
    return sum_G, sum_GObar


def dZ_exact(
    G: np.ndarray, Obar: np.ndarray, gamma: np.ndarray, inv_std: np.ndarray,
    sum_G: np.ndarray, sum_GObar: np.ndarray, m: float,
) -> np.ndarray:
    """Exact ``dZ = gamma * inv_std * (G - sum_rows(G)/m - Obar * sum_rows(G*Obar)/m)``.

    Parameters
    ----------
    G, Obar : ndarray of shape (m_local, n)
        ``dF/dA`` and the normalized activations of the rows held here.
    gamma, inv_std : ndarray of shape (n,)
    sum_G, sum_GObar : ndarray of shape (n,)
        Sums over the whole (possibly distributed) batch, from :func:`backward_sums`.
    m : float
        Size of the whole batch.

    Returns
    -------
    dZ : ndarray of shape (m_local, n), in ``G``'s dtype.
    """
    scale = np.asarray(gamma, dtype=np.float64) * inv_std
    dt = G.dtype
    dZ = G - (sum_G / m).astype(dt)
    dZ -= Obar * (sum_GObar / m).astype(dt)
    dZ *= scale.astype(dt)
    return dZ


def dZ_frozen(G: np.ndarray, gamma: np.ndarray, inv_std: np.ndarray) -> np.ndarray:
    """Frozen-statistics ``dZ = gamma * inv_std * G`` (handout part 4), in ``G``'s dtype."""
    scale = np.asarray(gamma, dtype=np.float64) * inv_std
    return G * scale.astype(G.dtype)


def unbiased_var(var_B: np.ndarray, m: float) -> np.ndarray:
    """Bessel-corrected variance ``m / (m - 1) * var_B`` (needs m >= 2)."""
    return var_B * (m / (m - 1))


def running_update(running: np.ndarray, batch: np.ndarray, momentum: float) -> np.ndarray:
    """One step of a running statistic: ``(1 - momentum) * running + momentum * batch``.

    PyTorch's ``BatchNorm1d`` convention: ``momentum`` weights the new batch statistic.
    With ``momentum = 1 / k`` at the k-th batch (k = 1, 2, ...) the result is the plain
    average of the k batch statistics (Ioffe & Szegedy 2015, Algorithm 2; PyTorch's
    ``momentum=None``). Returned in ``running``'s dtype; the inputs are not modified.
    """
    new = running * (1.0 - momentum)
    new += (batch * momentum).astype(running.dtype, copy=False)
    return new


def fold(
    W: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
    mu_pop: np.ndarray, var_pop: np.ndarray, eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold inference-mode normalization into the linear map before it (docs/math.md, Inference).

    ``gamma * (O W^T - mu_pop) / sqrt(var_pop + eps) + beta = O W_fold^T + b_fold`` with::

        W_fold = diag(gamma / sqrt(var_pop + eps)) W                     (n_out, n_in)
        b_fold = beta - gamma * mu_pop / sqrt(var_pop + eps)             (n_out,)

    Computed in float64, returned in ``W``'s dtype.
    """
    scale = np.asarray(gamma, dtype=np.float64) * inverse_std(var_pop, eps)
    W_fold = (scale[:, None] * W).astype(W.dtype, copy=False)
    b_fold = (np.asarray(beta, dtype=np.float64) - scale * mu_pop).astype(W.dtype, copy=False)
    return W_fold, b_fold
