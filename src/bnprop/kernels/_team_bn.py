"""The batch-norm passes that the helper thread (:mod:`bnprop.kernels.team`) shares: the
statistics by blocks of rows, the forward pass after them by rows, the backward pass by
columns.

Once ``mu_B`` and ``inv_std`` are known, the forward pass computes each row of the batch
alone (:func:`bnprop.kernels._bn_compiled._forward_apply`)::

    Obar_i = (Z_i - mu_B) * inv_std,    Y_i = sigma(gamma Obar_i + beta)

so rows ``[0, h)`` and ``[h, m)`` computed apart give the whole pass's bits. The caller
offers rows ``[h, m)``, computes ``[0, h)``, and takes the second half back when the
helper has not claimed it (the protocol of :mod:`bnprop.kernels.team`).

The statistics are reductions over the rows, but in blocks (:mod:`bnprop.kernels._moments`)
whose sums depend on the shift ``K`` and their own rows alone, merged in block order:
:func:`moments` computes block 0 (which sets ``K``), offers the blocks ``[h, B)``,
computes ``[1, h)`` and merges them while the helper works, then merges the helper's.
The whole pass's bits (``tests/test_team_moments.py``). The compiled step's forward call
alone, 2 cores, the blocks shared against the whole statistics on the calling thread,
30 alternated rounds (medians, ms):

=========================  =====  =====  ===============
net                        batch  dtype  forward call
=========================  =====  =====  ===============
784-1024x3-10              512    f64    26.03 -> 25.64
784-1024x3-10              512    f32    12.22 -> 12.00
784-1024x3-10              128    f32    3.95 -> 3.84
784-512x3-10               512    f32    4.49 -> 4.38
784-256x3-10               1024   f32    3.21 -> 2.98
784-256x3-10               256    f64    2.09 -> 2.03
784-100x3-10               1000   f32    1.13 -> 1.06
=========================  =====  =====  ===============

The Ioffe step's layers (60 x 100) are one block each: nothing to share.

Measured on the Ioffe step (float32, 60 x 100 a layer, sigmoid, SGD, the helper on):
332 -> 315 us a step with the forward pass in halves (5.4 us whole a layer). The public
layer functions (:mod:`bnprop.kernels._layer_compiled`) use it too. The
backward's row-wise pass (``dZ`` from the two sums, 3.7 us whole) was tried the same
way and made the step slower (332 -> 350 us): its half reads three arrays that the
calling thread has just written, and the GEMMs after it read the helper's rows back.

The backward pass of a wide layer is another matter: 0.9 ms over 512 x 1024 float64,
0.46 ms in float32 (one thread, data in cache), and the compiled step ran it on the
calling thread while the helper, done with its ``dW``, waited. Its two sums are
reductions over the rows, but each column's are its own: :func:`backward_columns` gives
the helper columns ``[h, n)`` (:mod:`bnprop.kernels._bn_columns`), with the whole pass's
bits. The helper may still be computing the ``dW`` it was given beside this thread's
``dO`` (it has one task at a time), so this thread first computes chunks of columns
from the left until the helper is free, then offers it about half of the rest: no wait.

Measured in the compiled step, 2 cores, SGD, one process, 20 alternated rounds
against the pass on the calling thread alone (medians):

=========================  =====  =====  ===================================
net                        batch  dtype  ms a step
=========================  =====  =====  ===================================
784-1024x3-10              512    f64    63.6-63.7 -> 62.3-62.8 (-0.9 to -1.2)
784-1024x3-10              512    f32    30.4-30.5 -> 30.1-30.2 (-0.3)
784-1024x3-10              256    f64    33.9 -> 33.5
784-1024x3-10              256    f32    17.1 -> 16.7
784-512x3-10               512    f32    10.4 -> 10.7 (slower: not shared)
784-256x3-10               1024   f32    7.3 -> 7.8 (slower: not shared)
784-256x3-10               256    f64    4.35 -> 4.44 (slower: not shared)
=========================  =====  =====  ===================================

Narrower layers lost: their arrays fit in the calling thread's cache, where the helper's
half is read from and the next GEMMs read its columns back (the forward split above met
the same). Hence :data:`SPLIT_COLUMNS` and :data:`SPLIT_COLUMN_ELEMENTS`.

Import only when :func:`bnprop.kernels.blas.available` is True.
"""

from __future__ import annotations

from numba import njit

from bnprop.kernels._atomics import address, load_acquire
from bnprop.kernels._bn_columns import backward_part
from bnprop.kernels._bn_compiled import _forward_apply
from bnprop.kernels._cblas import _code_of
from bnprop.kernels._jit import JIT_OPTIONS
from bnprop.kernels._moments import _moments, block_range, merge_range, scratch_size
from bnprop.kernels._tasks import BN_BACKWARD, BN_FORWARD, DESC, DONE, KIND, MOMENTS
from bnprop.kernels.team import _next_task, _offer, _taken_back

#: Minimum elements (rows x features) of a pass offered in two halves: below it, the
#: hand-over (~0.5 us) is a large part of the half it saves.
SPLIT_ROW_ELEMENTS = 4096
#: A backward pass is shared by columns from this many elements and this many columns
#: on (module docstring); the caller computes :data:`COLUMN_CHUNK` columns at a time
#: while the helper is busy.
SPLIT_COLUMN_ELEMENTS, SPLIT_COLUMNS, COLUMN_CHUNK = 262144, 1024, 128
#: The statistics are shared from this many blocks of rows on.
SPLIT_BLOCKS = 4


@njit(**JIT_OPTIONS)
def moments(Z, block_rows, mean, M2, S, ctl, owned):  # pragma: no cover - compiled
    """``count`` and ``mean, M2`` (float64) of ``Z``'s columns with the bits of
    :func:`bnprop.kernels._moments._moments`; the blocks ``[h, B)`` offered to the helper
    (module docstring) when this call ``owned`` it, ``Z`` has :data:`SPLIT_BLOCKS` blocks
    or more and the float64 scratch ``S`` holds
    :func:`bnprop.kernels._moments.scratch_size` elements."""
    m, n = Z.shape
    B = (m + block_rows - 1) // block_rows
    if not (owned and B >= SPLIT_BLOCKS and S.shape[0] >= scratch_size(m, n, block_rows)
            and Z.flags.c_contiguous):
        return _moments(Z, block_rows, mean, M2)
    h = (B + 1) // 2
    center = S[n:2 * n]
    block_range(Z, block_rows, S, 0, 1, center)  # K, which the helper's blocks read
    seq = _next_task(ctl)
    d = DESC
    ctl[d], ctl[d + 1], ctl[d + 2], ctl[d + 3] = _code_of(Z), m, n, block_rows
    ctl[d + 4], ctl[d + 5], ctl[d + 6] = address(Z), address(S), S.shape[0]
    ctl[d + 7], ctl[d + 8], ctl[KIND] = h, B, MOMENTS
    _offer(ctl, seq)
    block_range(Z, block_rows, S, 1, h, center)
    mean[:] = 0.0
    M2[:] = 0.0
    count = merge_range(Z, block_rows, S, 0, h, 0, mean, M2)
    if _taken_back(ctl, seq):
        block_range(Z, block_rows, S, h, B, center)
    count = merge_range(Z, block_rows, S, h, B, count, mean, M2)
    for j in range(n):
        mean[j] += S[j]  # K
    return count


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


@njit(**JIT_OPTIONS)
def settled(ctl, seq):  # pragma: no cover - compiled
    """Whether the helper has finished task ``seq`` (0: none), so that it is free for
    another (it has one at a time; a task not claimed yet is not settled: the caller
    finishes it, :func:`bnprop.kernels.team.finish`)."""
    return seq == 0 or load_acquire(ctl, DONE) == 2 * seq


@njit(**JIT_OPTIONS)
def splits_columns(dY, owned):  # pragma: no cover - compiled
    """Whether :func:`backward_columns` may offer the helper a part of ``dY``'s pass."""
    m, n = dY.shape
    return owned and m * n >= SPLIT_COLUMN_ELEMENTS and n >= SPLIT_COLUMNS


@njit(**JIT_OPTIONS)
def backward_columns(dY, Y, Obar, gamma, inv_std, act, frozen, m_total, sum_G, sum_GObar,
                     ctl, owned, pending):  # pragma: no cover - compiled
    """The backward pass of :func:`bnprop.kernels._bn_columns.backward_part` over all the
    columns, ``dZ`` into ``dY``. Where :func:`splits_columns`, in chunks of
    :data:`COLUMN_CHUNK` columns from the left until the helper is done with its task
    ``pending`` (its ``dW``: :func:`settled`); then the columns
    ``[h, n)``, about half of those left, are offered to it. Returns the task the caller
    still has to finish (:func:`bnprop.kernels.team.beside_done`): ``pending``, or 0 once
    it is settled."""
    n = dY.shape[1]
    c = 0
    if splits_columns(dY, owned):
        while n - c >= 2 * COLUMN_CHUNK and not settled(ctl, pending):
            backward_part(dY, Y, Obar, gamma, inv_std, act, frozen, m_total, sum_G,
                          sum_GObar, c, c + COLUMN_CHUNK)
            c += COLUMN_CHUNK
        if n - c >= 2 * COLUMN_CHUNK:
            h = c + (n - c) // 2 // 16 * 16
            seq = _next_task(ctl)
            d = DESC
            ctl[d], ctl[d + 1], ctl[d + 2], ctl[d + 3] = _code_of(dY), n, dY.shape[0], act
            ctl[d + 4], ctl[d + 5], ctl[d + 6] = 1 if frozen else 0, address(dY), address(Y)
            ctl[d + 7], ctl[d + 8] = address(Obar), address(gamma)
            ctl[d + 9], ctl[d + 10] = address(inv_std), address(sum_G)
            ctl[d + 11], ctl[d + 12] = address(sum_GObar), int(m_total)
            ctl[d + 13], ctl[d + 14], ctl[KIND] = h, n, BN_BACKWARD
            _offer(ctl, seq)
            backward_part(dY, Y, Obar, gamma, inv_std, act, frozen, m_total, sum_G,
                          sum_GObar, c, h)
            if _taken_back(ctl, seq):
                backward_part(dY, Y, Obar, gamma, inv_std, act, frozen, m_total, sum_G,
                              sum_GObar, h, n)
            return 0
    backward_part(dY, Y, Obar, gamma, inv_std, act, frozen, m_total, sum_G, sum_GObar, c, n)
    return pending
