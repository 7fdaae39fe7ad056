"""One batch-normalized layer of the handout: linear map without bias, BN, activation.

Forward, rows are examples (shapes in brackets)::

    Z    = O W^T                          (m, n_out)   O (m, n_in), W (n_out, n_in)
    A    = gamma * Obar + beta            (m, n_out)   Obar = (Z - mu_B) * inv_std
    Y    = sigma(A)                       (m, n_out)   o^l of the handout

Backward, with ``dY = dF/dY`` (m, n_out)::

    dA     = sigma'(A) * dY                               handout (1)
    dgamma = sum_rows(dA * Obar)                          handout (2)
    dbeta  = sum_rows(dA)                                 handout (3)
    dZ     = exact or frozen, see :mod:`bnprop.batchnorm`   handout (4) is the frozen one
    dW     = dZ^T O                       (n_out, n_in)
    dO     = dZ W                         (m, n_in)    passed on to layer l-1

There is no bias: beta is the bias (handout, footnote 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnprop import batchnorm as bn
from bnprop._validate import InputError, check_array, check_choice, check_positive
from bnprop.activations import get_activation

STATS_MODES = ("exact", "frozen")


@dataclass(frozen=True, eq=False)
class LayerCache:
    """Everything the forward pass computed, kept for the backward pass.

    Attributes
    ----------
    O : ndarray (m, n_in)
        Input of the layer, ``o^{l-1}``.
    W : ndarray (n_out, n_in)
    gamma, beta : ndarray (n_out,)
    Z : ndarray (m, n_out)
        ``O W^T``.
    mu, var : ndarray (n_out,)
        Batch mean ``mu_B`` and biased batch variance ``var_B`` of ``Z``.
    inv_std : ndarray (n_out,)
        ``1 / sqrt(var_B + eps)``.
    Obar : ndarray (m, n_out)
        ``(Z - mu_B) * inv_std``.
    A : ndarray (m, n_out)
        ``gamma * Obar + beta``, the handout's ``a^l``.
    Y : ndarray (m, n_out)
        ``sigma(A)``, the handout's ``o^l``.
    activation : str
    eps : float
    """

    O: np.ndarray
    W: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    Z: np.ndarray
    mu: np.ndarray
    var: np.ndarray
    inv_std: np.ndarray
    Obar: np.ndarray
    A: np.ndarray
    Y: np.ndarray
    activation: str
    eps: float

    @property
    def m(self) -> int:
        """Batch size."""
        return self.O.shape[0]


@dataclass(frozen=True, eq=False)
class LayerGrads:
    """Gradients of F from one backward pass of a layer.

    Attributes
    ----------
    dA : ndarray (m, n_out)
    dgamma, dbeta : ndarray (n_out,)
    dZ : ndarray (m, n_out)
    dW : ndarray (n_out, n_in)
    dO : ndarray (m, n_in)
    """

    dA: np.ndarray
    dgamma: np.ndarray
    dbeta: np.ndarray
    dZ: np.ndarray
    dW: np.ndarray
    dO: np.ndarray


def check_layer_inputs(
    O: object, W: object, gamma: object, beta: object,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert the layer's arrays to one float dtype (float32 if all are)."""
    O = check_array(O, "O", ndim=2, axes=("m", "n_in"))
    W = check_array(W, "W", ndim=2, axes=("n_out", "n_in"))
    n_out, n_in = W.shape
    if O.shape[1] != n_in:
        raise InputError(
            f"O: expected shape (m, {n_in}) to match W of shape ({n_out}, {n_in}), "
            f"got shape {O.shape} instead."
        )
    gamma = check_array(gamma, "gamma", ndim=1, axes=("n_out",), shape=(n_out,))
    beta = check_array(beta, "beta", ndim=1, axes=("n_out",), shape=(n_out,))
    if O.shape[0] < 2:
        raise InputError(
            f"O: got a batch of {O.shape[0]} example{'' if O.shape[0] == 1 else 's'}; in "
            "training mode the batch variance of a single example is undefined (always 0), "
            "so batch normalization needs m >= 2 rows."
        )
    if min(O.shape + W.shape) == 0:
        raise InputError(f"O, W: empty arrays (O {O.shape}, W {W.shape}); every size must be >= 1.")
    dt = np.result_type(O, W, gamma, beta)
    dt = np.dtype(np.float32) if dt == np.float32 else np.dtype(np.float64)
    return (O.astype(dt, copy=False), W.astype(dt, copy=False),
            gamma.astype(dt, copy=False), beta.astype(dt, copy=False))


def layer_forward(
    O: object,
    W: object,
    gamma: object,
    beta: object,
    *,
    activation: str = "sigmoid",
    eps: float = 1e-5,
) -> LayerCache:
    """Forward pass of the layer in training mode (batch statistics).

    ``A = gamma * (O W^T - mu_B) / sqrt(var_B + eps) + beta``, ``Y = sigma(A)``.

    Parameters
    ----------
    O : array_like of shape (m, n_in)
        Input, one example a row; m >= 2.
    W : array_like of shape (n_out, n_in)
        Weights (no bias).
    gamma, beta : array_like of shape (n_out,)
        Scale and shift of the normalization.
    activation : {"sigmoid", "tanh", "relu", "identity"}, default="sigmoid"
    eps : float, default=1e-5
        Added to ``var_B`` under the square root; must be > 0.

    Returns
    -------
    LayerCache
        ``Z, mu, var, inv_std, Obar, A, Y`` and the inputs, in the inputs' dtype
        (float32 when all are float32, float64 otherwise).

    Examples
    --------
    >>> import numpy as np, bnprop
    >>> c = bnprop.layer_forward(np.array([[1.0], [3.0]]), np.eye(1), np.ones(1),
    ...                          np.zeros(1), activation="identity")
    >>> c.mu, c.var
    (array([2.]), array([1.]))
    """
    act = get_activation(activation)
    eps = check_positive(eps, "eps")
    O, W, gamma, beta = check_layer_inputs(O, W, gamma, beta)
    return _forward(O, W, gamma, beta, act.name, eps)


def _forward(
    O: np.ndarray, W: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
    activation: str, eps: float,
) -> LayerCache:
    """:func:`layer_forward` on validated arrays of one dtype."""
    dt = O.dtype
    Z = O @ W.T
    mu, var = bn.batch_stats(Z)
    inv_std = bn.inverse_std(var, eps)
    Obar = bn.normalize(Z, mu, inv_std)
    A = gamma * Obar
    A += beta
    Y = get_activation(activation).forward(A)
    return LayerCache(
        O=O, W=W, gamma=gamma, beta=beta, Z=Z,
        mu=mu.astype(dt), var=var.astype(dt), inv_std=inv_std.astype(dt),
        Obar=Obar, A=A, Y=Y, activation=activation, eps=eps,
    )


def layer_backward(dY: object, cache: LayerCache, *, stats: str = "exact") -> LayerGrads:
    """Backward pass of the layer: every gradient of F given ``dY = dF/dY``.

    Parameters
    ----------
    dY : array_like of shape (m, n_out)
        Gradient of the objective w.r.t. the layer's output ``Y = o^l``.
    cache : LayerCache
        From :func:`layer_forward`.
    stats : {"exact", "frozen"}, default="exact"
        ``"exact"`` differentiates through ``mu_B`` and ``var_B``::

            dZ = gamma * inv_std * (dA - sum_rows(dA)/m - Obar * sum_rows(dA * Obar)/m)

        ``"frozen"`` holds them fixed, as the handout's part (4) does::

            dZ = gamma * inv_std * dA

    Returns
    -------
    LayerGrads
        ``dA, dgamma, dbeta, dZ, dW, dO`` in the cache's dtype.
    """
    if not isinstance(cache, LayerCache):
        raise InputError(
            f"cache: expected the LayerCache returned by layer_forward, "
            f"got {type(cache).__name__} instead."
        )
    check_choice(stats, "stats", STATS_MODES)
    m, n_out = cache.A.shape
    dY = check_array(dY, "dY", ndim=2, axes=("m", "n_out"), shape=(m, n_out), dtype=cache.A.dtype)
    return _backward(dY, cache, stats)


def _backward(dY: np.ndarray, cache: LayerCache, stats: str) -> LayerGrads:
    """:func:`layer_backward` on a validated ``dY`` of the cache's dtype."""
    dA = get_activation(cache.activation).backward(dY, cache.A, cache.Y)
    sum_G, sum_GObar = bn.backward_sums(dA, cache.Obar)
    if stats == "exact":
        dZ = bn.dZ_exact(dA, cache.Obar, cache.gamma, cache.inv_std, sum_G, sum_GObar, cache.m)
    else:
        dZ = bn.dZ_frozen(dA, cache.gamma, cache.inv_std)
    dt = dA.dtype
    return LayerGrads(
        dA=dA,
        dgamma=sum_GObar.astype(dt),
        dbeta=sum_G.astype(dt),
        dZ=dZ,
        dW=dZ.T @ cache.O,
        dO=dZ @ cache.W,
    )
