"""The public layer functions on a batch that runs in one compiled call each way, in a few
Python lines: the plain call's guard, and a plan per shape.

An unsplit batch (one part of rows, one chunk: :func:`bnprop.kernels.rows.unsplit`)
runs in one Numba call each way (:mod:`bnprop.kernels._layer_compiled`)::

    forward    O_c, W_c, gamma_c, beta_c = copies of the inputs (tested for inf and NaN
               in the pass of the copy); Z = O_c W_c^T; mu_B, var_B = M2 / m, inv_std;
               Obar, A, Y
    backward   dA = sigma'(A) dY, sum_rows(dA), sum_rows(dA Obar); dZ; dW = dZ^T O;
               dO = dZ W

At such sizes the Python around those calls was as long as the calls: at 60 x 100 -> 100
(float32, two threads) the compiled calls took about 55 us of the 105 us a public
forward + backward took. The validated path (:mod:`bnprop.layer`) converts and checks each
argument, tests finiteness in one call, copies the inputs in four more, and decides the
split and the chunking again on every call. Here the plain call, the one a training loop
makes (NumPy arrays, C-contiguous, one float dtype, a float ``eps``), passes a guard of
type, dtype and flag tests; what depends only on the shapes, the dtype, the activation and
the thread counts (whether the batch is unsplit, the statistics' block rows, whether
``Z``'s GEMM is cut in two, the keys of the helper's measured choice) is a :class:`Plan`
made once and looked up by those. Anything else returns ``None``, and the validated path
runs: it converts, or names the argument that is wrong in one line (a NaN included: the
copy's test finds it, and the validated path names the array).

The arithmetic is the validated path's, call for call, so the numbers are the same bits
(``tests/test_layer_small.py``).
"""

from __future__ import annotations

import math
import time
from functools import cache
from typing import Any, NamedTuple

import numpy as np

from bnprop import threads
from bnprop.kernels import blas, rows
from bnprop.kernels.activations import ACTIVATION_CODES
from bnprop.kernels.bn import BLOCK_BYTES
from bnprop.layer import variance_overflow
from bnprop.layer_cache import LayerCache, LayerGrads

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


class Plan(NamedTuple):
    """What a forward + backward pass of one shape needs beyond its arrays."""

    dtype: np.dtype
    m: int
    n_in: int
    n: int
    activation: str
    act: int                   # ACTIVATION_CODES[activation]
    block_rows: int            # rows of a block of the statistics' pass
    cut: int                   # where Z = O W^T is cut in two, 0: whole (team.may_split)
    n_threads: int             # bnprop's threads when it was made (unsplit depends on it)
    forward_key: tuple[object, ...]   # the helper's measured choice, per call and shape
    backward_key: tuple[object, ...]


#: Plans (or None: not a plain unsplit call) by shapes, dtype, activation, thread counts
#: and the row-part sizes (:func:`whole` reads them).
_plans: dict[tuple[object, ...], Plan | None] = {}
#: At most this many are kept (then all are made afresh).
MAX_PLANS = 256


@cache
def _compiled() -> tuple[Any, Any]:
    """``(_layer_compiled, team)``, imported on first use: only where
    :func:`bnprop.kernels.blas.available` (an import statement in each call costs 0.3 us)."""
    from bnprop.kernels import _layer_compiled, team

    return _layer_compiled, team


def whole(m: int, n: int, itemsize: int) -> bool:
    """Whether a batch of ``m`` rows of ``n`` features runs in one part and one chunk,
    through the compiled calls (NumPy's GEMM bound in Numba)."""
    return rows.unsplit(m, n, itemsize) and blas.available()


def _make_plan(O: np.ndarray, W: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
               activation: str, n_threads: int) -> Plan | None:
    """The plan of an unsplit call of these arrays, or None where the validated path must
    run (a shape that does not fit, m < 2, an empty array, an unknown activation, a batch
    split in parts, no NumPy GEMM to call from Numba)."""
    if O.ndim != 2 or W.ndim != 2 or activation not in ACTIVATION_CODES:
        return None
    (m, n_in), n, dt = O.shape, W.shape[0], O.dtype
    if (W.shape[1] != n_in or gamma.shape != (n,) or beta.shape != (n,) or m < 2
            or min(n_in, n) < 1 or not whole(m, n, dt.itemsize)):
        return None
    team = _compiled()[1]
    return Plan(dt, m, n_in, n, activation, ACTIVATION_CODES[activation],
                max(1, BLOCK_BYTES // (n * dt.itemsize)),
                team.may_split(dt, team.NT, m, n, n_in), n_threads,
                ("layer_forward", dt.str, m, n_in, n), ("layer_backward", dt.str, m, n_in, n))


def forward(O: object, W: object, gamma: object, beta: object, activation: object,
            eps: object) -> LayerCache | None:
    """:func:`bnprop.layer_forward` of one process, or None when the call is not a plain
    unsplit one (module docstring) or an input holds an inf or a NaN."""
    if not (type(O) is np.ndarray and type(W) is np.ndarray and type(gamma) is np.ndarray
            and type(beta) is np.ndarray and isinstance(eps, float) and 0.0 < eps < math.inf):
        return None
    dt = O.dtype
    if not ((dt is F32 or dt is F64) and W.dtype is dt and gamma.dtype is dt
            and beta.dtype is dt and O.flags.c_contiguous and W.flags.c_contiguous
            and gamma.flags.c_contiguous and beta.flags.c_contiguous):
        return None
    n_threads = threads.num_threads()
    key = (O.shape, W.shape, gamma.shape, beta.shape, dt.char, activation, n_threads,
           threads.blas_threads(), rows.KERNEL_PART_ROWS, rows.KERNEL_PART_BYTES)
    try:
        plan = _plans[key]
    except KeyError:
        if len(_plans) >= MAX_PLANS:
            _plans.clear()
        plan = _plans[key] = _make_plan(O, W, gamma, beta, activation, n_threads)  # type: ignore[arg-type]
    except TypeError:  # an unhashable activation: the validated path names it
        return None
    if plan is None:
        return None
    return run_forward(O, W, gamma, beta, float(eps), plan)


def run_forward(O: np.ndarray, W: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                eps: float, plan: Plan) -> LayerCache | None:
    """The forward pass of ``plan`` on C-contiguous arrays of its shapes and dtype, or
    None when one of them holds an inf or a NaN."""
    dt, m, n = plan.dtype, plan.m, plan.n
    _layer_compiled, team = _compiled()
    O_c, W_c, gamma_c, beta_c = (np.empty(O.shape, dt), np.empty(W.shape, dt),
                                 np.empty(n, dt), np.empty(n, dt))
    Z, Obar, A, Y = (np.empty((m, n), dt), np.empty((m, n), dt), np.empty((m, n), dt),
                     np.empty((m, n), dt))
    stats = np.empty((3, n), dt)  # mu, var, inv_std
    ctl, use, timed = team.for_timed_call(plan.forward_key)
    start = time.perf_counter() if timed else 0.0
    count, fits, finite = _layer_compiled.forward_copied(
        O, W, gamma, beta, O_c, W_c, gamma_c, beta_c, plan.act, eps, plan.block_rows, Z,
        Obar, A, Y, stats, plan.cut, ctl, use)
    if timed:
        team.report(use, time.perf_counter() - start, plan.forward_key)
    if not finite:
        return None
    if not fits:
        raise variance_overflow(Z)
    return LayerCache._made(
        O=O_c, W=W_c, gamma=gamma_c, beta=beta_c, Z=Z, mu=stats[0], var=stats[1],
        inv_std=stats[2], Obar=Obar, A=A, Y=Y, activation=plan.activation, eps=eps,
        m_global=count, comm=None, _plan=plan)


def backward(dY: object, cache: LayerCache, frozen: bool) -> LayerGrads | None:
    """:func:`bnprop.layer_backward` of a cache this module's forward pass made, or None
    when it did not, ``dY`` is not a C-contiguous array of the cache's dtype and ``Y``'s
    shape, or the thread count changed since (whether the batch is split depends on it)."""
    plan = cache._plan
    if (plan is None or type(dY) is not np.ndarray or dY.dtype is not plan.dtype
            or dY.shape != (plan.m, plan.n) or not dY.flags.c_contiguous
            or threads.num_threads() != plan.n_threads):
        return None
    grads, finite = run_backward(dY, cache.O, cache.W, cache.Y, cache.Obar, cache.gamma,
                                 cache.inv_std.astype(F64), plan.act, frozen,
                                 float(cache.m_global), plan.backward_key)
    if not finite:  # raises for an inf or NaN in dY (it makes the sums so)
        from bnprop._validate import check_array

        check_array(dY, "dY", ndim=2, dtype=plan.dtype)
    return grads


def run_backward(dY: np.ndarray, O: np.ndarray, W: np.ndarray, Y: np.ndarray,
                 Obar: np.ndarray, gamma: np.ndarray, inv_std: np.ndarray, act: int,
                 frozen: bool, m_total: float, key: tuple[object, ...]
                 ) -> tuple[LayerGrads, bool]:
    """The backward pass on C-contiguous arrays of ``dY``'s dtype (``inv_std`` float64),
    and whether ``sum_rows(dA)`` and ``sum_rows(dA * Obar)`` are finite; ``key``: the
    helper's measured choice for this call's shape."""
    dt, (m, n), n_in = dY.dtype, dY.shape, W.shape[1]
    _layer_compiled, team = _compiled()
    dA, dZ, dO = np.empty((m, n), dt), np.empty((m, n), dt), np.empty((m, n_in), dt)
    dW, sums = np.empty((n, n_in), dt), np.empty((2, n), dt)
    ctl, use, timed = team.for_timed_call(key)
    start = time.perf_counter() if timed else 0.0
    finite = _layer_compiled.backward(dY, O, W, Y, Obar, gamma, inv_std, act, frozen,
                                      m_total, dA, dZ, dW, dO, sums, ctl, use)
    if timed:
        team.report(use, time.perf_counter() - start, key)
    return LayerGrads._made(dA=dA, dgamma=sums[1], dbeta=sums[0], dZ=dZ, dW=dW,
                            dO=dO), finite
