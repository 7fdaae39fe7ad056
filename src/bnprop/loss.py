"""Softmax and the mean softmax cross-entropy, with a stable log-sum-exp.

Rows are examples: ``logits`` is ``(m_local, K)``, ``y`` is ``(m_local,)`` with labels in
``0..K-1``. With ``lse_i = log sum_k exp(logits_ik)``, computed as
``max_k logits_ik + log sum_k exp(logits_ik - max_k logits_ik)`` so nothing overflows::

    P_ik     = exp(logits_ik - lse_i)                         softmax      (m_local, K)
    loss     = (1/m) sum_i (lse_i - logits_{i, y_i})          mean over m  scalar
    dlogits  = (P - onehot(y)) / m                            d loss / d logits

``m`` is the number of rows by default. A distributed run passes the global batch size
and sums the processes' losses and gradients: the sum equals the single-process result.
The loss is accumulated in float64; ``P`` and ``dlogits`` keep the logits' dtype.
"""

from __future__ import annotations

import numpy as np

from bnprop._validate import InputError, check_array, check_positive


def _softmax(logits: np.ndarray) -> np.ndarray:
    """``P = exp(logits - lse)`` on a validated 2D float array, in its dtype."""
    E = np.exp(logits - logits.max(axis=1, keepdims=True))
    E /= E.sum(axis=1, dtype=np.float64).astype(logits.dtype)[:, None]
    return E


def _softmax_cross_entropy(
    logits: np.ndarray, y: np.ndarray, m: float,
) -> tuple[float, np.ndarray]:
    """:func:`softmax_cross_entropy` on validated arrays: ``y`` integer, in range."""
    dlogits = logits.copy()
    return softmax_cross_entropy_inplace(dlogits, y, m), dlogits


def softmax_cross_entropy_inplace(
    logits: np.ndarray, y: np.ndarray, m: float, *,
    rowmax: np.ndarray | None = None, total: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> float:
    """The loss of :func:`softmax_cross_entropy`; ``logits`` is overwritten by ``dlogits``.

    For trusted arrays only (no checks): ``logits`` (m_local, K) float, ``y`` integer labels
    in range. Step by step, in place::

        S        = logits - max_k logits                      (logits' dtype)
        total_i  = sum_k exp(S_ik)                            float64
        loss     = (1/m) sum_i (log total_i - S_{i,y_i})      float64
        dlogits  = (exp(S) / total - onehot(y)) / m           total rounded to the dtype

    ``rowmax`` ((m_local, 1), logits' dtype), ``total`` ((m_local,), float64) and ``rows``
    (``arange(m_local)``) are work buffers a caller may reuse across calls (the
    preallocated step of :class:`bnprop.nn.Sequential`); each is allocated when not given.
    """
    m_local, dt = logits.shape[0], logits.dtype
    rowmax = np.empty((m_local, 1), dt) if rowmax is None else rowmax
    total = np.empty(m_local) if total is None else total
    rows = np.arange(m_local) if rows is None else rows
    np.max(logits, axis=1, keepdims=True, out=rowmax)
    logits -= rowmax                                          # S
    S_y = logits[rows, y].astype(np.float64)
    np.exp(logits, out=logits)                                # exp(S)
    np.sum(logits, axis=1, dtype=np.float64, out=total)
    loss = float(np.sum(np.log(total) - S_y) / m)
    rowmax[:, 0] = total                                      # total, rounded to the dtype
    logits /= rowmax
    logits[rows, y] -= 1
    logits /= dt.type(m)
    return loss


def check_labels(y: object, name: str, m: int, n_classes: int) -> np.ndarray:
    """Validate integer class labels: 1D, length ``m``, each in ``0..n_classes-1``."""
    arr = np.asarray(y)
    if arr.dtype.kind not in "iu":
        raise InputError(
            f"{name}: expected integer class labels, got dtype {arr.dtype} instead."
        )
    if arr.ndim != 1:
        raise InputError(
            f"{name}: expected a 1D array of shape (m,), got a {arr.ndim}D array of shape "
            f"{arr.shape} instead."
        )
    if arr.shape[0] != m:
        raise InputError(
            f"{name}: expected {m} labels, one per row of the inputs, got {arr.shape[0]} instead."
        )
    if m and (arr.min() < 0 or arr.max() >= n_classes):
        bad = int(arr[(arr < 0) | (arr >= n_classes)][0])
        raise InputError(
            f"{name}: labels must lie in 0..{n_classes - 1} ({n_classes} classes), "
            f"got {bad} instead."
        )
    return arr.astype(np.intp, copy=False)


def softmax(logits: object) -> np.ndarray:
    """Row-wise softmax ``P_ik = exp(logits_ik - lse_i)``, ``lse_i = log sum_k exp(logits_ik)``.

    Parameters
    ----------
    logits : array_like of shape (m, K)

    Returns
    -------
    P : ndarray of shape (m, K)
        Rows sum to 1; float32 if ``logits`` is, float64 otherwise.

    Examples
    --------
    >>> from bnprop.loss import softmax
    >>> softmax([[0.0, 0.0], [1000.0, 1000.0]])
    array([[0.5, 0.5],
           [0.5, 0.5]])
    """
    logits = check_array(logits, "logits", ndim=2, axes=("m", "K"))
    if logits.shape[1] == 0:
        raise InputError(f"logits: expected at least one class, got shape {logits.shape} instead.")
    return _softmax(logits)


def softmax_cross_entropy(
    logits: object, y: object, *, m: float | None = None,
) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy and its gradient.

    ``loss = (1/m) sum_i [lse_i - logits_{i, y_i}]``,
    ``dlogits = (softmax(logits) - onehot(y)) / m``,
    with ``lse_i = log sum_k exp(logits_ik)`` computed stably.

    Parameters
    ----------
    logits : array_like of shape (m_local, K)
    y : array_like of int, shape (m_local,)
        Class labels in ``0..K-1``.
    m : float, optional
        The divisor; defaults to ``m_local``. A distributed run passes the global batch
        size and sums the local losses.

    Returns
    -------
    loss : float
        Accumulated in float64.
    dlogits : ndarray of shape (m_local, K)
        In the logits' dtype (float32 or float64).

    Examples
    --------
    >>> from bnprop.loss import softmax_cross_entropy
    >>> loss, dlogits = softmax_cross_entropy([[0.0, 0.0]], [1])
    >>> round(loss, 6), dlogits
    (0.693147, array([[ 0.5, -0.5]]))
    """
    logits = check_array(logits, "logits", ndim=2, axes=("m", "K"))
    m_local, K = logits.shape
    if m_local == 0 or K == 0:
        raise InputError(
            f"logits: expected at least one row and one class, got shape {logits.shape} instead."
        )
    y = check_labels(y, "y", m_local, K)
    m = float(m_local) if m is None else check_positive(m, "m")
    return _softmax_cross_entropy(logits, y, m)
