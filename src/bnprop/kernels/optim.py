"""Fused optimizer updates (Numba): one pass over a flat parameter array, each element's
operations those of the NumPy reference in :mod:`bnprop.optim`, in the same order and
dtype, so the two agree bit for bit.

``coef`` holds the step's scalars rounded to the arrays' dtype, as NumPy rounds a Python
float operand against a float32 array::

    SGD   coef = [weight_decay, momentum, lr_t]
          d = g + weight_decay * p;  v = d (first) or v = momentum * v + d
          p -= v * lr_t,  or with Nesterov  p -= (d + v * momentum) * lr_t
    Adam  coef = [weight_decay, 1 - beta1, beta2, 1 - beta2, step_size, sqrt(1 - beta2^t), eps]
          d = g + weight_decay * p;  m += (d - m) * (1 - beta1)
          v = v * beta2 + (d * d) * (1 - beta2)
          p -= (m / (sqrt(v) / sqrt(1 - beta2^t) + eps)) * step_size
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bnprop import threads
from bnprop.kernels._jit import JIT_OPTIONS


@njit(**JIT_OPTIONS)
def sgd_flat(p, g, v, coef, first, use_momentum, nesterov=False):  # pragma: no cover
    wd, momentum, lr = coef[0], coef[1], coef[2]
    for i in range(p.size):
        d = g[i]
        if wd != 0:
            d = g[i] + wd * p[i]
        if use_momentum:
            if first:
                v[i] = d
            else:
                v[i] = v[i] * momentum
                v[i] += d
            if nesterov:
                d = d + v[i] * momentum
            else:
                d = v[i]
        p[i] -= d * lr


@njit(**JIT_OPTIONS)
def _adam_pass(p, g, m, v, wd, c1, beta2, c2, step_size, bias2, eps):  # pragma: no cover
    """One Adam pass; each element read once and written once (loads into locals, one
    store per array: 84 -> 40 us over 99k float32 parameters, the same bits)."""
    for i in range(p.size):
        d = g[i]
        if wd != 0:  # wd is a constant of the call: LLVM hoists the test out of the loop
            d = g[i] + wd * p[i]
        mi = m[i] + (d - m[i]) * c1
        vi = v[i] * beta2
        vi = vi + (d * d) * c2
        denom = np.sqrt(vi) / bias2
        denom = denom + eps
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - (mi / denom) * step_size


@njit(**JIT_OPTIONS)
def adam_flat(p, g, m, v, coef):  # pragma: no cover - compiled
    _adam_pass(p, g, m, v, coef[0], coef[1], coef[2], coef[3], coef[4], coef[5], coef[6])


#: Minimum elements of one part of a flat update split over bnprop's threads (a part
#: must outweigh the ~60 us of handing it to a worker thread).
PART_ELEMENTS = 1 << 17


def flat_update(kind: str, p: np.ndarray, g: np.ndarray, a: np.ndarray, b: np.ndarray,
                coef: np.ndarray, flags: int) -> None:
    """The fused update ``kind`` ("adam": ``a, b`` are ``m, v``; "sgd": ``a`` is the
    momentum buffer, empty without momentum; ``flags`` 1 first step, 2 momentum, 4
    Nesterov). With two or more threads (:func:`bnprop.threads.using`) an array of
    ``2 PART_ELEMENTS`` or more is updated in row parts on bnprop's workers
    (:func:`bnprop.threads.map_rows`): element-wise, the same bits.

    Not on the helper thread of the compiled steps (:mod:`bnprop.kernels.team`): this is
    the update of the Python step, whose other parallel work runs on those workers, and
    the helper spins for 2 ms after its part on the core they need. The next step's first
    worker part then started 0.9-1.75 ms late; with the update in row parts the CNN step
    took 1.1-1.8 ms less and the wide step 2.5-5 ms less (alternating, three runs).
    """
    adam = kind == "adam"
    first, momentum, nesterov = flags & 1 != 0, flags & 2 != 0, flags & 4 != 0

    def part(r0: int, r1: int) -> None:
        if adam:
            adam_flat(p[r0:r1], g[r0:r1], a[r0:r1], b[r0:r1], coef)
        else:  # an empty momentum buffer stays empty
            sgd_flat(p[r0:r1], g[r0:r1], a[r0:r1], coef, first, momentum, nesterov)

    threads.map_rows(part, p.size, min_rows=PART_ELEMENTS)
