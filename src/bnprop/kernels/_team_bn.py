"""The forward batch-norm pass after the statistics, its second half of rows on the
helper thread (:mod:`bnprop.kernels.team`).

Once ``mu_B`` and ``inv_std`` are known, the forward pass computes each row of the batch
alone (:func:`bnprop.kernels._bn_compiled._forward_apply`)::

    Obar_i = (Z_i - mu_B) * inv_std,    Y_i = sigma(gamma Obar_i + beta)

so rows ``[0, h)`` and ``[h, m)`` computed apart give the whole pass's bits. The caller
offers rows ``[h, m)``, computes ``[0, h)``, and takes the second half back when the
helper has not claimed it (the protocol of :mod:`bnprop.kernels.team`). The statistics
are reductions over the rows and stay whole on the calling thread: cut by rows they
would be summed in another order.

Measured on the Ioffe step (float32, 60 x 100 a layer, sigmoid, SGD, the helper on):
332 -> 315 us a step with the forward pass in halves (5.4 us whole a layer). The public
layer functions (:mod:`bnprop.kernels._layer_compiled`) use it too. The
backward's row-wise pass (``dZ`` from the two sums, 3.7 us whole) was tried the same
way and made the step slower (332 -> 350 us): its half reads three arrays that the
calling thread has just written, and the GEMMs after it read the helper's rows back.

Import only when :func:`bnprop.kernels.blas.available` is True.
"""

from __future__ import annotations

from numba import njit

from bnprop.kernels._atomics import address
from bnprop.kernels._bn_compiled import _forward_apply
from bnprop.kernels._cblas import _code_of
from bnprop.kernels._jit import JIT_OPTIONS
from bnprop.kernels._tasks import BN_FORWARD, DESC, KIND
from bnprop.kernels.team import _next_task, _offer, _taken_back

#: Minimum elements (rows x features) of a pass offered in two halves: below it, the
#: hand-over (~0.5 us) is a large part of the half it saves.
SPLIT_ROW_ELEMENTS = 4096


@njit(**JIT_OPTIONS)
def forward_rows(Z, mean, inv_std, gamma, beta, act, Obar, Y, A, ctl,
                 owned):  # pragma: no cover - compiled
    """``Obar`` (may be ``Z``), ``Y`` and, unless it is None, ``A`` of the forward pass
    (module docstring), rows ``[h, m)`` offered to the helper when this call ``owned``
    it."""
    m, n = Z.shape
    if not (owned and m >= 2 and m * n >= SPLIT_ROW_ELEMENTS):
        _forward_apply(Z, mean, inv_std, gamma, beta, act, Obar, Y, A)
        return
    h = m // 2
    seq = _next_task(ctl)
    d = DESC
    ctl[d], ctl[d + 1], ctl[d + 2], ctl[d + 3] = _code_of(Z), n, m - h, act
    ctl[d + 4], ctl[d + 5], ctl[d + 6] = address(Z[h:]), address(Y[h:]), address(gamma)
    ctl[d + 7], ctl[d + 8], ctl[d + 9] = address(beta), address(mean), address(inv_std)
    ctl[d + 10], ctl[KIND] = address(Obar[h:]), BN_FORWARD
    if A is None:
        ctl[d + 11] = 0
        _offer(ctl, seq)
        _forward_apply(Z[:h], mean, inv_std, gamma, beta, act, Obar[:h], Y[:h], None)
        if _taken_back(ctl, seq):
            _forward_apply(Z[h:], mean, inv_std, gamma, beta, act, Obar[h:], Y[h:], None)
    else:
        ctl[d + 11] = address(A[h:])
        _offer(ctl, seq)
        _forward_apply(Z[:h], mean, inv_std, gamma, beta, act, Obar[:h], Y[:h], A[:h])
        if _taken_back(ctl, seq):
            _forward_apply(Z[h:], mean, inv_std, gamma, beta, act, Obar[h:], Y[h:], A[h:])
