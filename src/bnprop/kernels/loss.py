"""The mean softmax cross-entropy of a training step, with its elementwise passes compiled.

The same loss and ``dlogits`` as the reference
:func:`bnprop.loss.softmax_cross_entropy_inplace`, bit for bit: the same operations in the
same order and dtypes. Per row ``i`` of ``logits`` (m_local, K)::

    S_i      = logits_i - max_k logits_ik                 (logits' dtype)   _shift_rows
    E_i      = exp(S_i)                                   NumPy's exp
    total_i  = sum_k E_ik                                 NumPy's sum, float64
    loss     = (1/m) sum_i (log total_i - S_{i,y_i})      NumPy's log and sum, float64
    dlogits_i = (E_i / total_i - onehot(y_i)) / m         total rounded to the dtype
                                                                            _finish_rows

``exp``, ``log`` and the two float64 sums stay NumPy's own calls: their results depend
on NumPy's implementations (a SIMD ``exp``, pairwise summation), which a compiled loop
would not reproduce. What the kernels take over is the dozen small NumPy calls around
them (60 x 10 float32: 20.7 -> 10.0 us a loss).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bnprop.kernels._jit import JIT_OPTIONS


@njit(**JIT_OPTIONS)
def _shift_rows(logits, y, S_y):  # pragma: no cover - compiled
    """``logits_i -= max_k logits_ik`` (NaN if the row holds one, as ``np.max``);
    ``S_y[i] = S_{i, y_i}`` in float64."""
    m, K = logits.shape
    for i in range(m):
        row = logits[i]
        top = row[0]
        for k in range(1, K):
            if row[k] > top or np.isnan(row[k]):
                top = row[k]
        for k in range(K):
            row[k] = row[k] - top
        S_y[i] = row[y[i]]


@njit(**JIT_OPTIONS)
def _finish_rows(E, y, total, total_rounded, m):  # pragma: no cover - compiled
    """``dlogits_i = (E_i / total_i - onehot(y_i)) / m`` in ``E``'s dtype (``m`` in it
    too); ``total_rounded`` ((m_local, 1), the dtype) receives ``total`` rounded."""
    m_local, K = E.shape
    for i in range(m_local):
        total_rounded[i, 0] = total[i]                       # rounded on the store
        t = total_rounded[i, 0]
        row = E[i]
        for k in range(K):
            row[k] = row[k] / t
        row[y[i]] -= 1
        for k in range(K):
            row[k] = row[k] / m


def softmax_cross_entropy_inplace(logits: np.ndarray, y: np.ndarray, m: float,
                                  rowmax: np.ndarray, total: np.ndarray, S_y: np.ndarray,
                                  log_total: np.ndarray) -> float:
    """The loss (module docstring); ``logits`` (m_local, K), K >= 1, C-contiguous, is overwritten by
    ``dlogits``. ``y``: intp labels in range. Work buffers: ``rowmax`` ((m_local, 1), the
    logits' dtype), ``total``, ``S_y`` and ``log_total`` ((m_local,), float64)."""
    _shift_rows(logits, y, S_y)
    np.exp(logits, out=logits)
    np.sum(logits, axis=1, dtype=np.float64, out=total)
    np.log(total, out=log_total)
    log_total -= S_y
    loss = float(np.sum(log_total) / m)
    _finish_rows(logits, y, total, rowmax, logits.dtype.type(m))
    return loss


@njit(**JIT_OPTIONS)
def labels_in_range(y, n_classes):  # pragma: no cover - compiled
    """Whether every label of the 1-D intp ``y`` lies in ``0..n_classes-1``: one pass,
    where :func:`bnprop.loss.check_labels` takes a ``min`` and a ``max`` (60 labels: 2.6
    -> 0.3 us); that function still names a bad label."""
    bad = False
    for i in range(y.shape[0]):
        bad |= (y[i] < 0) | (y[i] >= n_classes)
    return not bad

