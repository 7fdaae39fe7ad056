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

Distributed (``comm`` given; :mod:`bnprop.distributed`): this process holds rows ``O_p``
(m_p, n_in) of a global batch of m = sum_p m_p rows. The statistics are the global batch's,
and the two per-feature sums of the backward pass are reduced over the processes::

    (m, mu_B, M2) = comm.combine_moments(batch_moments(Z_p)),   var_B = M2 / m
    dbeta  = sum_p sum_rows(dA_p)                         global: reduced here, on every process
    dgamma = sum_p sum_rows(dA_p * Obar_p)                global: reduced here, on every process
    dZ_p, dO_p                                            this process's rows of the global ones
    dW_p   = dZ_p^T O_p                                   local: dW = sum_p dW_p is the caller's

so every array equals the single-process result on the global batch (its rows ``p``), to
rounding, except ``dW``, which the model all-reduces with its other parameter gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bnprop import batchnorm as bn
from bnprop._validate import (
    InputError,
    check_array,
    check_choice,
    check_positive,
    common_float_dtype,
)
from bnprop.activations import get_activation
from bnprop.layer_cache import LayerCache, LayerGrads

if TYPE_CHECKING:  # the math layer never imports the distributed one at run time
    from bnprop.distributed import Communicator

STATS_MODES = ("exact", "frozen")
BACKENDS = ("numba", "numpy")


def check_layer_inputs(
    O: object, W: object, gamma: object, beta: object, *, distributed: bool = False,
    allow_nonfinite: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert the layer's arrays to one float dtype (float32 if all are).

    ``distributed=True``: ``O`` is this process's share of a global batch, and one row is
    enough here (the global m >= 2 is checked once the statistics are combined).
    ``allow_nonfinite=True``: the caller tests finiteness itself.
    """
    O = check_array(O, "O", ndim=2, axes=("m", "n_in"), allow_nonfinite=allow_nonfinite)
    W = check_array(W, "W", ndim=2, axes=("n_out", "n_in"), allow_nonfinite=allow_nonfinite)
    n_out, n_in = W.shape
    if O.shape[1] != n_in:
        raise InputError(
            f"O: expected shape (m, {n_in}) to match W of shape ({n_out}, {n_in}), "
            f"got shape {O.shape} instead."
        )
    gamma = check_array(gamma, "gamma", ndim=1, axes=("n_out",), shape=(n_out,),
                        allow_nonfinite=allow_nonfinite)
    beta = check_array(beta, "beta", ndim=1, axes=("n_out",), shape=(n_out,),
                       allow_nonfinite=allow_nonfinite)
    if distributed and O.shape[0] == 0:
        raise InputError(
            "O: got 0 rows on this process; every process must hold at least one row of "
            "the global batch (split it with bnprop.distributed.shard, n_global >= size)."
        )
    if not distributed and O.shape[0] < 2:
        raise InputError(
            f"O: got a batch of {O.shape[0]} example{'' if O.shape[0] == 1 else 's'}; in "
            "training mode the batch variance of a single example is undefined (always 0), "
            "so batch normalization needs m >= 2 rows."
        )
    if min(O.shape + W.shape) == 0:
        raise InputError(f"O, W: empty arrays (O {O.shape}, W {W.shape}); every size must be >= 1.")
    if O.dtype == W.dtype == gamma.dtype == beta.dtype:  # one float dtype already
        return O, W, gamma, beta
    dt = common_float_dtype(O, W, gamma, beta)
    return (O.astype(dt, copy=False), W.astype(dt, copy=False),
            gamma.astype(dt, copy=False), beta.astype(dt, copy=False))


def check_global_rows(m_global: int, comm: Communicator) -> None:
    """Training needs ``m = sum_p m_p >= 2`` rows in all (the same count on every
    process: all raise, none waits)."""
    if m_global < 2:
        raise InputError(
            f"O: the global batch has {m_global} example over {comm.size} "
            f"process{'' if comm.size == 1 else 'es'}; in training mode the batch "
            "variance of a single example is undefined (always 0), so batch "
            "normalization needs m >= 2 rows."
        )


def layer_forward(
    O: object,
    W: object,
    gamma: object,
    beta: object,
    *,
    activation: str = "sigmoid",
    eps: float = 1e-5,
    comm: Communicator | None = None,
    backend: str = "numba",
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
    comm : Communicator, optional
        Set when ``O`` is this process's rows (m_p >= 1) of a global batch split over
        ``comm.size`` processes (every process calls with its rows, the same W, gamma,
        beta, in the same order): ``mu_B`` and ``var_B`` are then the global batch's
        (m = sum_p m_p >= 2), by one ``comm.combine_moments``. Default: one process.
    backend : {"numba", "numpy"}, default="numba"
        The compiled kernels (:mod:`bnprop.kernels.bn`) or the NumPy reference
        (:mod:`bnprop.batchnorm`); equal to rounding.

    Returns
    -------
    LayerCache
        ``Z, mu, var, inv_std, Obar, A, Y`` and copies of the inputs (changing ``O`` or
        ``W`` afterwards does not change the backward pass), in the inputs' dtype
        (float32 when all are float32, float64 otherwise); ``m_global`` and ``comm``
        for the backward pass.

    Examples
    --------
    >>> import numpy as np, bnprop
    >>> c = bnprop.layer_forward(np.array([[1.0], [3.0]]), np.eye(1), np.ones(1),
    ...                          np.zeros(1), activation="identity")
    >>> c.mu, c.var
    (array([2.]), array([1.]))
    """
    if comm is None and isinstance(backend, str) and backend == "numba":  # the plain call
        cache = _small().forward(O, W, gamma, beta, activation, eps)
        if cache is not None:
            return cache
    act = get_activation(activation)
    eps = check_positive(eps, "eps")
    if comm is not None and not all(
        callable(getattr(comm, op, None)) for op in ("combine_moments", "allreduce_sum")
    ):
        raise InputError(
            "comm: expected a bnprop.distributed.Communicator (SingleProcess, MPIComm, "
            f"ThreadComm), got {type(comm).__name__} instead."
        )
    given = (O, W, gamma, beta)
    distributed = comm is not None
    if check_choice(backend, "backend", BACKENDS) == "numpy":
        arrays = check_layer_inputs(O, W, gamma, beta, distributed=distributed)
        O, W, gamma, beta = (a.copy() if may_share_input(a, g) else a
                             for a, g in zip(arrays, given, strict=True))
        return _forward(O, W, gamma, beta, act.name, eps, comm=comm)
    from bnprop.kernels import layer as kernel_layer

    # The kernels test for inf and NaN in the pass that copies; the usual checks name a bad array.
    arrays = check_layer_inputs(O, W, gamma, beta, distributed=distributed, allow_nonfinite=True)
    cache = kernel_layer.forward(*arrays, act.name, eps, comm=comm, given=given)
    if cache is None:
        check_layer_inputs(*given, distributed=distributed)
        raise AssertionError("the kernels found inf or NaN that the checks did not")
    return cache


_layer_small: Any = None


def _small() -> Any:
    """:mod:`bnprop.kernels.layer_small`, imported on first use (the math layer imports
    no kernel at import time; an import statement in each call costs 0.3 us)."""
    global _layer_small
    if _layer_small is None:
        from bnprop.kernels import layer_small

        _layer_small = layer_small
    return _layer_small


def may_share_input(a: np.ndarray, given: object) -> bool:
    """Whether the checked array ``a`` may share memory with the caller's argument
    ``given``: it is ``given``, or it does not own its data (a view of an array, or of a
    torch tensor, a memoryview...). A cache copies such arrays, so that changing an input
    afterwards does not change its backward pass."""
    return a is given or not a.flags.owndata


def variance_overflow(Z: np.ndarray) -> InputError:
    """The error of a batch variance of finite inputs that overflows the float64 it is
    computed in (``inv_std = 1 / sqrt(var_B + eps)`` is then 0 or NaN)."""
    return InputError(f"O, W: the batch variance of Z = O W^T overflows float64 (max|Z| = "
                      f"{float(np.abs(Z).max()):.3g}); scale O or W down.")


def check_variance(inv_std: np.ndarray, Z: np.ndarray) -> None:
    """Raise :func:`variance_overflow` unless every float64 ``inv_std`` is > 0."""
    if not (inv_std > 0).all():
        raise variance_overflow(Z)


def _forward(
    O: np.ndarray, W: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
    activation: str, eps: float, *, comm: Communicator | None = None,
) -> LayerCache:
    """:func:`layer_forward` on validated arrays of one dtype."""
    dt = O.dtype
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing Z is named below
        Z = O @ W.T
        if comm is None:
            m_global = Z.shape[0]
            mu, var = bn.batch_stats(Z)
        else:
            m_global, mu, M2 = comm.combine_moments(*bn.batch_moments(Z))
            check_global_rows(m_global, comm)
            var = bn.biased_var(M2, m_global)
        inv_std = bn.inverse_std(var, eps)
    check_variance(inv_std, Z)
    Obar = bn.normalize(Z, mu, inv_std)
    A = bn.scale_shift(Obar, gamma, beta)
    Y = get_activation(activation).forward(A)
    with np.errstate(over="ignore"):  # a float32 var_B beyond its range is inf, as stored
        mu, var, inv_std = mu.astype(dt), var.astype(dt), inv_std.astype(dt)
    return LayerCache._made(O=O, W=W, gamma=gamma, beta=beta, Z=Z, mu=mu, var=var,
                            inv_std=inv_std, Obar=Obar, A=A, Y=Y, activation=activation,
                            eps=eps, m_global=m_global, comm=comm)


def layer_backward(dY: object, cache: LayerCache, *, stats: str = "exact",
                   backend: str = "numba") -> LayerGrads:
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
        ``dA, dgamma, dbeta, dZ, dW, dO`` in the cache's dtype. When the cache came from
        ``layer_forward(..., comm=comm)``, ``sum_rows(dA)`` and ``sum_rows(dA * Obar)`` are
        all-reduced in one packed ``comm.allreduce_sum`` (in both modes), ``m`` is the
        global batch size, and::

            dgamma = sum_p sum_rows(dA_p * Obar_p),  dbeta = sum_p sum_rows(dA_p)   global
            dW_p   = dZ_p^T O_p                                                    local

        ``dgamma`` and ``dbeta`` are already the global gradients (do not reduce them
        again); ``dW`` is this process's term of ``dW = sum_p dW_p``.
    backend : {"numba", "numpy"}, default="numba"
        The compiled kernels or the NumPy reference, equal to rounding.
    """
    if not isinstance(cache, LayerCache):
        raise InputError(
            f"cache: expected the LayerCache returned by layer_forward, "
            f"got {type(cache).__name__} instead."
        )
    if isinstance(backend, str) and isinstance(stats, str) and backend == "numba" and (
            stats == "exact" or stats == "frozen"):
        grads = _small().backward(dY, cache, stats == "frozen")
        if grads is not None:  # the cache of a plain call, and a plain dY
            return grads
    check_choice(stats, "stats", STATS_MODES)
    m, n_out = cache.Y.shape
    kernels = check_choice(backend, "backend", BACKENDS) == "numba" and cache.comm is None
    # The kernels find a NaN or inf in dY in their first pass, then this same check runs
    # and raises (a NaN or inf in dY makes sum_rows(dA) NaN or inf): no extra pass.
    given = dY
    dY = check_array(dY, "dY", ndim=2, axes=("m", "n_out"), shape=(m, n_out),
                     dtype=cache.Y.dtype, allow_nonfinite=kernels)
    if backend == "numpy":
        return _backward(dY, cache, stats)
    from bnprop.kernels import layer as kernel_layer

    grads, sums_finite = kernel_layer.backward(dY, cache, stats)
    if kernels and not sums_finite:  # raises if dY is not finite, naming what the caller gave
        check_array(given, "dY", ndim=2, dtype=cache.Y.dtype)
    return grads


def _backward(dY: np.ndarray, cache: LayerCache, stats: str) -> LayerGrads:
    """:func:`layer_backward` on a validated ``dY`` of the cache's dtype."""
    dA = get_activation(cache.activation).backward(dY, cache.A, cache.Y)
    sum_G, sum_GObar = bn.backward_sums(dA, cache.Obar)
    m = cache.m if cache.m_global is None else cache.m_global
    if cache.comm is not None:
        n_out = sum_G.shape[0]
        sums = cache.comm.allreduce_sum(np.concatenate([sum_G, sum_GObar]))  # one collective
        sum_G, sum_GObar = sums[:n_out], sums[n_out:]
    if stats == "exact":
        dZ = bn.dZ_exact(dA, cache.Obar, cache.gamma, cache.inv_std, sum_G, sum_GObar, m)
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


def release_buffers() -> None:
    """Release the arrays the kernel path keeps for reuse and nothing holds any more.

    ``layer_forward`` and ``layer_backward`` (``backend="numba"``) take their large
    ``(m, n)`` arrays from a pool (:mod:`bnprop.kernels.buffers`): an array of an earlier
    call is written again only once nothing refers to it (no cache, gradient or view of
    it is alive), which spares the page faults of fresh memory. The pool keeps up to an
    eighth of the machine's memory (at least 1 GiB); this frees the idle part of it now.
    """
    from bnprop.kernels import buffers

    buffers.clear()

