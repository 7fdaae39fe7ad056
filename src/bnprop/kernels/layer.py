"""The public layer functions on the kernels: :func:`bnprop.layer_forward` and
:func:`bnprop.layer_backward` with ``backend="numba"`` (the default) run here.

Same equations as the reference in :mod:`bnprop.layer`; the work is split and ordered
for memory traffic (:mod:`bnprop.kernels.rows`, :mod:`bnprop.kernels.buffers`)::

    forward   per part p, per chunk c:   Z_c = O_c W^T;  (count, mean, M2) of Z_c
              merged in row order (Chan);  with comm: combine_moments over the processes
              var_B = M2 / m,  inv_std = 1 / sqrt(var_B + eps)
              per part p:                Y = sigma(gamma * Obar + beta), Obar = (Z_p - mu) inv_std
    backward  per part p:                dA_p = sigma'(A_p) * dY_p, and its two sums
              sum_G = sum_p, sum_GObar = sum_p (row order);  with comm: one allreduce_sum
              per part p, per chunk c:   dZ_c (exact or frozen, from dA_c and Obar_c)
                                         dW_p += dZ_c^T O_c,  dO_c = dZ_c W
              dW = sum_p dW_p

A split forward pass stores ``Z`` and ``Y`` only: its cache forms ``Obar`` and ``A``
when they are read (:class:`bnprop.layer_cache.LayerCache`), and the backward kernels
form each row of ``Obar`` from ``Z`` with the forward pass's float64 ``mu`` and
``inv_std`` (bit for bit the stored row), saving two (m, n) stores. Measured at
65536 x 16 -> 256 float32 on 2 threads: the forward pass went from 19.5 to 13.9 ms, the
backward sums pass (which now forms Obar) from 8.1 to 10.3 ms; 42 to 39 ms in all.
Likewise a split backward pass writes each chunk ``dZ_c`` into one chunk's buffer that
the two GEMMs read from cache, and its :class:`~bnprop.layer_cache.LayerGrads` forms the
whole ``dZ`` when it is read, by the same kernel (bit for bit the chunks): 39 to 36 ms
at that shape, measured alternating both versions in one process.

A batch that runs in one part and one chunk takes :mod:`bnprop.kernels.layer_small`
instead: one compiled call each way.

A narrow layer (``8 n_in <= n_out``, one process) takes :mod:`bnprop.kernels.narrow`'s
centered input ``Oc = O - obar`` and its Gram matrix ``C = Oc^T Oc`` instead of passes
over ``Z``. Its forward pass (:func:`_forward_centered`)::

    mu_B = W obar,   M2_j = W_j C W_j^T                    (no pass over Z)
    Obar = Oc (W^T diag(inv_std))                  one GEMM a chunk, into one chunk's buffer
    Y    = sigma(gamma * Obar + beta)              from that buffer, in the dtype's arithmetic
    Obar; Z = O W^T                                each formed when first read

(since ``Z - mu_B = Oc W^T``): it writes ``Y`` alone. Where ``Obar``'s GEMM might
overflow (``inv_std`` large beside ``Oc``: a feature of near-zero variance) it writes
``Z`` and forms ``Obar`` from it instead. Its backward pass reads ``dY`` and ``Y`` once
(``Obar``'s terms through ``C``). More, and measured: :mod:`bnprop.kernels.narrow`.

Parts are :func:`bnprop.threads.map_rows` parts of at least ``KERNEL_PART_BYTES`` of
``Z`` (one part, on the calling thread, for small batches), so the numbers depend on the
thread count through the order of float64 sums, the split of ``dW`` (a float32 ``dW``
rounds its per-part terms) and the row split of the GEMMs of ``Z`` and ``dO``: OpenBLAS
may round a block of rows computed alone differently in the last bits (float32 ``dO``,
5000 x 8 -> 64: 2e-7 relative between 1 and 2 threads). ``dZ``, ``dgamma`` and ``dbeta``
of one ``Z`` are the same. The ``(m, n)`` arrays come from
:data:`bnprop.kernels.buffers.shared`: arrays of an earlier call that nothing holds
any more are written again instead of faulting in fresh pages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from bnprop import batchnorm as bn
from bnprop import threads
from bnprop.kernels import layer_small, narrow, rows
from bnprop.kernels._bn_compiled import (
    _backward_apply,
    _backward_sums_into,
    _forward_apply,
    _moments,
    _scale_shift_activate,
)
from bnprop.kernels._bn_z_compiled import _backward_sums_z, _dZ_exact_z, _dZ_frozen
from bnprop.kernels._finite import array_all_finite, copy_all_finite
from bnprop.kernels._stream import copy_rows, streams
from bnprop.kernels.activations import ACTIVATION_CODES
from bnprop.kernels.bn import BLOCK_BYTES
from bnprop.kernels.buffers import MIN_BYTES
from bnprop.kernels.buffers import shared as pool
from bnprop.kernels.small_gemm import matmul_nt
from bnprop.kernels.tile_gemm import matmul
from bnprop.layer import (
    LayerCache,
    LayerGrads,
    check_global_rows,
    check_variance,
    may_share_input,
)

if TYPE_CHECKING:
    from bnprop.distributed import Communicator

IDENTITY = ACTIVATION_CODES["identity"]

Moments = tuple[int, np.ndarray, np.ndarray]


def _parts(m: int, n: int, itemsize: int, fn):  # type: ignore[no-untyped-def]
    """``map_rows(fn, m)`` with parts of at least ``KERNEL_PART_BYTES`` of an (m, n) array."""
    return threads.map_rows(fn, m, min_rows=rows.part_rows(n, itemsize))


def _merge(results: list[Moments]) -> Moments:
    """Chan's combination of per-range moments, in row order."""
    count, mean, M2 = results[0]
    for part in results[1:]:
        count, mean, M2 = bn.chan_combine(count, mean, M2, *part)
    return int(count), mean, M2


def own_finite(arrays: tuple[np.ndarray, ...], given: tuple[object, ...] | None,
               ) -> tuple[np.ndarray, ...] | None:
    """The cache's arrays: ``arrays`` (the validated ``O, W, gamma, beta``), each that may
    share memory with the caller's argument in ``given`` copied
    (:func:`bnprop.layer.may_share_input`; pooled from :data:`MIN_BYTES` on, so the cache
    does not see later changes to it), every one tested for inf and NaN in the pass that
    reads it, a matrix in row parts on bnprop's threads (4096 x 256 float64 on 2 threads:
    0.90 -> 0.38 ms, against one test of the four, then a copy); None when one holds inf
    or NaN. ``given`` None: no copies."""
    out = []
    for i, a in enumerate(arrays):
        copy = None
        if given is not None and may_share_input(a, given[i]):
            copy = pool.empty(a.shape, a.dtype) if a.nbytes >= MIN_BYTES else np.empty_like(a)

        def part(start: int, stop: int, a: np.ndarray = a,
                 copy: np.ndarray | None = copy) -> bool:
            if copy is None:
                return bool(array_all_finite(a[start:stop]))
            return bool(copy_all_finite(a[start:stop], copy[start:stop]))

        if a.ndim == 2 and threads.num_threads() > 1 \
                and a.shape[0] >= 2 * rows.part_rows(a.shape[1], a.dtype.itemsize):
            ok = all(_parts(a.shape[0], a.shape[1], a.dtype.itemsize, part))
        else:
            ok = part(0, a.shape[0])
        if not ok:
            return None
        out.append(a if copy is None else copy)
    return tuple(out)


def forward(O: np.ndarray, W: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
            activation: str, eps: float, comm: Communicator | None = None,
            given: tuple[object, ...] | None = None) -> LayerCache | None:
    """:func:`bnprop.layer_forward` on validated arrays of one dtype (module docstring);
    None when one of them holds inf or NaN (the caller's checks then name it).

    ``given``: the caller's four arguments; the cache then holds copies of the arrays that
    may share memory with them (:func:`own_finite`)."""
    if comm is None:  # one compiled call, on copies of the inputs, where unsplit
        whole = layer_small.forward(O, W, gamma, beta, activation, eps)
        if whole is not None:
            return whole
    dt = O.dtype
    m, n = O.shape[0], W.shape[0]
    block_rows = max(1, BLOCK_BYTES // (n * dt.itemsize))
    own = own_finite((O, W, gamma, beta), given)
    if own is None:
        return None
    O, W, gamma, beta = own
    Y = pool.empty((m, n), dt)
    chunk_rows = rows.chunk_rows(n, dt.itemsize) if m >= 2 * rows.KERNEL_PART_ROWS else m

    # A narrow layer's moments come from its centered input (module docstring); otherwise
    # Z's GEMM and its moments, chunk by chunk.
    moments = (narrow.forward_moments(O, W)
               if comm is None and narrow.applies(O.shape[1], n, True, None) else None)
    if moments is not None:
        centered, mu, M2 = moments
        m_global = m
    else:
        centered, Z = None, pool.empty((m, n), dt)

        def reduce(start: int, stop: int) -> Moments:
            found = []
            for c0, c1 in rows.chunks(start, stop, chunk_rows):
                with np.errstate(over="ignore", invalid="ignore"):  # per thread; named below
                    matmul_nt(O[c0:c1], W, Z[c0:c1], rows=m)
                mean, M2 = np.empty(n), np.empty(n)
                found.append((int(_moments(Z[c0:c1], block_rows, mean, M2)), mean, M2))
            return _merge(found)

        m_global, mu, M2 = _merge(_parts(m, n, dt.itemsize, reduce))
    if comm is not None:
        m_global, mu, M2 = comm.combine_moments(m_global, mu, M2)
        check_global_rows(m_global, comm)
    var = bn.biased_var(M2, m_global)
    inv_std = bn.inverse_std(var, eps)
    act = ACTIVATION_CODES[activation]
    with np.errstate(over="ignore"):  # a float32 var_B beyond its range is inf, as stored
        mu_dt, var_dt, inv_std_dt = mu.astype(dt), var.astype(dt), inv_std.astype(dt)
    fields = dict(O=O, W=W, gamma=gamma, beta=beta, mu=mu_dt, var=var_dt, inv_std=inv_std_dt,
                  Y=Y, activation=activation, eps=eps, m_global=m_global, comm=comm)
    if centered is not None:
        cache = _forward_centered(centered, (mu, inv_std), act, chunk_rows, fields)
        if cache is not None:
            return cache
        Z = pool.empty((m, n), dt)  # Obar's GEMM might overflow: Z's, in the pass below

    def apply(start: int, stop: int) -> None:  # Y alone: Obar and A are formed when read
        s = slice(start, stop)
        if centered is not None:  # Z is finite: forward_moments bounds it
            _gemm_chunks(O, W, Z, start, stop, chunk_rows)
        _forward_apply(Z[s], mu, inv_std, gamma, beta, act, None, Y[s], None)

    _parts(m, n, dt.itemsize, apply)
    check_variance(inv_std, Z)
    return LayerCache._from_z((mu, inv_std), Z=Z, _centered=centered, **fields)


def _gemm_chunks(A: np.ndarray, B: np.ndarray, C: np.ndarray, start: int, stop: int,
                 chunk_rows: int) -> None:
    """``C = A B^T`` on rows ``[start, stop)``, one chunk of rows at a time (what follows
    reads each chunk from cache), in the column blocks of the whole product's rows."""
    for c0, c1 in rows.chunks(start, stop, chunk_rows):
        matmul_nt(A[c0:c1], B, C[c0:c1], rows=C.shape[0])


def _forward_centered(centered: narrow.Centered, stats64: tuple[np.ndarray, np.ndarray],
                      act: int, chunk_rows: int,
                      fields: dict[str, object]) -> LayerCache | None:
    """A narrow layer's cache (module docstring): ``Obar = Oc (W^T diag(inv_std))`` by one
    GEMM a chunk, then ``Y`` from it, ``Z`` formed when read; None where that GEMM might
    overflow (``max|Oc| <= 2 max|O|``: :func:`bnprop.kernels.narrow.fits`)."""
    O, W, gamma, beta, Y = (fields[k] for k in ("O", "W", "gamma", "beta", "Y"))
    (m, n), dt, inv_std = Y.shape, Y.dtype, stats64[1]

    def form_Z() -> np.ndarray:
        Z = pool.empty((m, n), dt)

        _parts(m, n, dt.itemsize, lambda start, stop: _gemm_chunks(O, W, Z, start, stop,
                                                                  chunk_rows))
        return Z

    if not (inv_std > 0).all():
        check_variance(inv_std, form_Z())
    Ws64 = W.astype(np.float64) * inv_std[:, None]
    if not narrow.fits(2 * centered.biggest, Ws64, dt):
        return None
    Ws = Ws64.astype(dt)
    ranges: list[tuple[int, int]] = []
    stream = streams(Y.nbytes)

    def apply(start: int, stop: int) -> None:
        """Each chunk of ``Obar`` into one chunk's buffer, ``Y`` from it while in cache."""
        ranges.append((start, stop))
        buffer = pool.empty((min(chunk_rows, stop - start), n), dt)
        for c0, c1 in rows.chunks(start, stop, chunk_rows):
            Obar_c = buffer[:c1 - c0]
            matmul_nt(centered.Oc[c0:c1], Ws, Obar_c, rows=m)
            _scale_shift_activate(Obar_c, gamma, beta, act, Obar_c if stream else Y[c0:c1])
            if stream:  # Y was formed over Obar_c in the buffer
                copy_rows(Obar_c, Y[c0:c1])

    _parts(m, n, dt.itemsize, apply)
    ranges.sort()

    def form_Obar() -> np.ndarray:
        """The whole ``Obar``, by the same GEMM calls on the same chunks (bit for bit the
        chunks ``Y`` came from, whatever the thread count is now)."""
        Obar = pool.empty((m, n), dt)

        def some(first: int, last: int) -> None:
            for start, stop in ranges[first:last]:
                _gemm_chunks(centered.Oc, Ws, Obar, start, stop, chunk_rows)

        threads.map_rows(some, len(ranges), min_rows=1)
        return Obar

    return LayerCache._from_centered(stats64, form_Z, form_Obar, _centered=centered, **fields)


def backward(dY: np.ndarray, cache: LayerCache, stats: str) -> tuple[LayerGrads, bool]:
    """:func:`bnprop.layer_backward` on a validated ``dY`` (module docstring), and whether
    ``sum_rows(dA)`` and ``sum_rows(dA * Obar)`` are finite (a NaN or inf in ``dY`` makes
    them not). The cache's arrays are used C-contiguous in dY's dtype (a cache built by
    hand may differ)."""
    dt = dY.dtype
    O, W, Y, gamma = (np.ascontiguousarray(a, dtype=dt) for a in
                      (cache.O, cache.W, cache.Y, cache.gamma))
    inv_std = np.ascontiguousarray(cache.inv_std, dtype=np.float64)
    (m, n), n_in = dY.shape, W.shape[1]
    m_total = float(cache.m if cache.m_global is None else cache.m_global)
    act = ACTIVATION_CODES[cache.activation]
    if cache.comm is None and layer_small.whole(m, n, dt.itemsize):  # one compiled call
        return layer_small.run_backward(dY, O, W, Y, np.ascontiguousarray(cache.Obar, dtype=dt),
                                        gamma, inv_std, act, stats == "frozen", m_total,
                                        ("layer_backward", dt.str, m, n_in, n))
    dA, dO = pool.empty((m, n), dt), pool.empty((m, n_in), dt)
    stats64 = cache._stats64  # a split forward pass's: (mu_B, inv_std) in float64
    if narrow.applies(n_in, n, stats64 is not None, cache.comm):  # one pass over dY, Y
        sum_G, sum_GObar, dW = narrow.backward(dY, O, W, Y, gamma, inv_std, stats64[1], act,
                                               stats == "frozen", m_total, dA, dO,
                                               cache._centered)
        return _grads(dA, dW, dO, sum_G, sum_GObar,
                      lambda: _dZ_rows(dA, Y, cache, gamma, inv_std, (sum_G, sum_GObar),
                                       m_total, stats))  # Obar (or Z) formed then
    z_stats = cache._z_stats()
    if z_stats is None:
        Obar = np.ascontiguousarray(cache.Obar, dtype=dt)
    else:  # Obar's rows are formed from Z in the kernels
        Z, (mean64, inv_std64) = cache.Z, z_stats

    def sums(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        s = slice(start, stop)
        sum_G, sum_GObar = np.empty(n), np.empty(n)
        if z_stats is None:
            _backward_sums_into(dY[s], Y[s], Obar[s], act, sum_G, sum_GObar, dA[s])
        else:
            _backward_sums_z(dY[s], Y[s], Z[s], mean64, inv_std64, act, sum_G, sum_GObar,
                             dA[s])
        return sum_G, sum_GObar

    found = _parts(m, n, dt.itemsize, sums)
    sum_G, sum_GObar = found[0]
    for part_G, part_GObar in found[1:]:  # row order
        sum_G += part_G
        sum_GObar += part_GObar
    if cache.comm is not None:
        sums_all = cache.comm.allreduce_sum(np.concatenate([sum_G, sum_GObar]))  # one collective
        sum_G, sum_GObar = sums_all[:n], sums_all[n:]
    chunk_rows = rows.chunk_rows(n, dt.itemsize) if m >= 2 * rows.KERNEL_PART_ROWS else m
    dZ_rows = _dZ_rows(dA, Y, cache, gamma, inv_std, (sum_G, sum_GObar), m_total, stats)

    def apply(start: int, stop: int) -> np.ndarray:
        """dZ chunk by chunk into one chunk's buffer, then ``dW_p = sum_c dZ_c^T O_c``
        and ``dO_c = dZ_c W`` from cache. Silent, as the kernels are (errstate is per
        thread): a NaN or inf in dY is reported by :func:`bnprop.layer_backward` from
        the sums."""
        with np.errstate(invalid="ignore", over="ignore"):
            return apply_chunks(start, stop)

    def apply_chunks(start: int, stop: int) -> np.ndarray:
        dW_p = np.empty((n, n_in), dt)
        term = dW_p
        buffer = np.empty((min(chunk_rows, stop - start), n), dt)
        for c0, c1 in rows.chunks(start, stop, chunk_rows):
            s, dZ_c = slice(c0, c1), buffer[:c1 - c0]
            dZ_rows(s, dZ_c)
            rows.dW_into(dZ_c, O[s], term)
            if term is not dW_p:
                dW_p += term
            elif c1 < stop:  # the first chunk wrote dW_p; later ones add their terms
                term = np.empty_like(dW_p)
            matmul(dZ_c, W, dO[s], m)
        return dW_p

    dW_parts = _parts(m, n, dt.itemsize, apply)
    dW = dW_parts[0]
    for term in dW_parts[1:]:
        dW += term
    return _grads(dA, dW, dO, sum_G, sum_GObar, lambda: dZ_rows)


DZRows = Callable[[slice, np.ndarray], None]


def _dZ_rows(dA: np.ndarray, Y: np.ndarray, cache: LayerCache, gamma: np.ndarray,
             inv_std: np.ndarray, sums: tuple[np.ndarray, np.ndarray], m_total: float,
             stats: str) -> DZRows:
    """``dZ_rows(s, out)``: rows ``s`` of dZ into ``out``, frozen ``gamma * inv_std *
    dA`` or exact, from the backward pass's float64 ``sums = (sum_G, sum_GObar)`` and
    the cache's ``Obar``, or its ``Z`` while ``Obar`` has not been formed."""
    sum_G, sum_GObar = sums
    z_stats = cache._z_stats()
    if stats == "frozen":
        return lambda s, out: _dZ_frozen(dA[s], gamma, inv_std, out)
    if z_stats is None:
        Obar = np.ascontiguousarray(cache.Obar, dtype=dA.dtype)
        return lambda s, out: _backward_apply(dA[s], Y[s], Obar[s], gamma, inv_std, sum_G,
                                              sum_GObar, m_total, IDENTITY, out)
    Z, (mean64, inv_std64) = cache.Z, z_stats
    return lambda s, out: _dZ_exact_z(dA[s], Z[s], mean64, inv_std64, gamma, inv_std, sum_G,
                                      sum_GObar, m_total, out)


def _grads(dA: np.ndarray, dW: np.ndarray, dO: np.ndarray, sum_G: np.ndarray,
           sum_GObar: np.ndarray, make_dZ_rows: Callable[[], DZRows],
           ) -> tuple[LayerGrads, bool]:
    """The split path's gradients, whose ``dZ`` ``make_dZ_rows()`` forms when first read,
    and whether the two sums are finite."""
    m, dt = dA.shape[0], dA.dtype

    def form_dZ() -> np.ndarray:
        """The whole dZ, when :attr:`LayerGrads.dZ` is first read (same kernels, same
        bits as the chunks of the backward pass that formed it)."""
        dZ, dZ_rows = pool.empty(dA.shape, dt), make_dZ_rows()

        def part(start: int, stop: int) -> None:
            with np.errstate(invalid="ignore", over="ignore"):
                dZ_rows(slice(start, stop), dZ[start:stop])

        _parts(m, dA.shape[1], dt.itemsize, part)
        return dZ

    finite = bool(np.isfinite(sum_G).all() and np.isfinite(sum_GObar).all())
    return LayerGrads._dZ_when_read(form_dZ, dA=dA, dgamma=sum_GObar.astype(dt),
                                    dbeta=sum_G.astype(dt), dW=dW, dO=dO), finite
