"""A second thread for the compiled calls: a helper that takes half of a GEMM or of an
optimizer update, or the ``dW`` beside a ``dO``.

The Ioffe net's step at batch 60 is 11 GEMMs of 2 to 130 us each, too short to hand to
a row worker (:func:`bnprop.threads.map_rows` costs 25-50 us a part). The
helper is one thread that, while steps are running, waits for work in a spin loop over
a shared int64 array (:mod:`bnprop.kernels._tasks`), so a part reaches it in well under
a microsecond. Measured here (float32, 1 BLAS thread each):

* a GEMM of at least :data:`SPLIT_FLOPS` in two parts (:func:`gemm`, where
  :func:`may_split`), ``C`` cut in two (:func:`preferred_cut`): ``Z = O W^T`` at 60 x 784 -> 100
  took 127 us whole, 70 us in two parts (before its column blocks,
  :mod:`bnprop.kernels.small_gemm`); its ``dW`` 95 and 58 us; at 60 x 100 -> 100 (1.2
  MFLOP) 16.9 and 11.5 us (one part alone: 10.1 us);
* ``dW = dZ^T O`` beside ``dO = dZ W`` (:func:`gemm_beside`): independent, each whole;
* a flat Adam update of 99k parameters (:func:`update`): 46 -> 27 us; the finiteness
  test of the gradients before it (:func:`all_finite`) in the same halves.

The protocol keeps the calling thread's time bounded by what it would be alone:

* the caller posts part 2 (its description, then ``ctl[CLAIM] = 2 s`` for task ``s``),
  computes part 1, then tries to claim part 2 itself (compare-and-swap of ``2 s`` to
  ``2 s + 1``): the helper, spinning, claims it the same way, and exactly one wins;
* if the caller wins (the helper is asleep, busy or descheduled) it computes part 2; if
  the helper won, the caller waits only for a part that is already running;
* the parts are the same whatever thread computes them, and whether a GEMM is split
  depends on its shape alone (also with one thread), so the numbers never depend on the
  thread count or on whether the helper showed up. A GEMM is split only where its parts
  give the whole call's bits (:func:`may_split`), so the compiled step keeps the Python
  step's numbers.

One caller at a time owns the helper (``ctl[OWNER]``, taken by compare-and-swap for the
length of one compiled call); another caller meanwhile computes both parts itself. The
helper spins for :data:`IDLE_SECONDS` after its last part, then sleeps on an event until
a caller with two or more threads (:func:`bnprop.threads.using`) wakes it: a process that
stops training stops using the second core within milliseconds. After a ``fork`` the
child starts with a fresh, sleeping helper.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bnprop import threads
from bnprop.kernels._atomics import address, cas, load_acquire, pause, store_release
from bnprop.kernels._cblas import _code_of
from bnprop.kernels._cuts import (  # noqa: F401 - may_split, NT, TN, NN: this module's API
    NN,
    NT,
    SPLIT_FLOPS,
    TN,
    cuts,
    may_split,
    parts_of,
    preferred_cut,
)
from bnprop.kernels._finite import _all_finite
from bnprop.kernels._helper_thread import (  # noqa: F401 - this module's API
    ASLEEP,
    AWAKE,
    IDLE_SECONDS,
    for_call,
    for_timed_call,
    helper,
    parts_done,
    prefer,
    report,
)
from bnprop.kernels._jit import JIT_OPTIONS
from bnprop.kernels._tasks import (  # noqa: F401 - nt, tn, nn, run: this module's API
    ADAM,
    CLAIM,
    DESC,
    DONE,
    FINITE,
    FINITE_ANSWER,
    GEMM,
    KIND,
    OWNER,
    PARTS,
    SEQ,
    SGD,
    SLOTS,
    STATE,
    STOP,
    nn,
    nt,
    run,
    run_posted,
    tn,
    update_part,
)

#: Minimum elements of a flat optimizer update done in two parts.
SPLIT_ELEMENTS = 16384


@njit(**JIT_OPTIONS)
def update(kind, p, g, a, b, coef, flags, ctl, use):  # pragma: no cover - compiled
    """The whole flat update (:func:`update_part`), its second half offered to the helper
    when it has :data:`SPLIT_ELEMENTS` and this call gets the helper (:func:`acquire`)."""
    owned = p.size >= SPLIT_ELEMENTS and acquire(ctl, use)
    update_owned(kind, p, g, a, b, coef, flags, ctl, owned)
    release(ctl, owned)


@njit(**JIT_OPTIONS)
def update_owned(kind, p, g, a, b, coef, flags, ctl, owned):  # pragma: no cover - compiled
    """:func:`update` in a call that already owns the helper (``owned``) or not."""
    n = p.size
    if not owned or n < SPLIT_ELEMENTS:
        update_part(kind, p, g, a, b, coef, flags, 0, n)
        return
    h = _flat_cut(n)
    seq = _next_task(ctl)
    d = DESC
    ctl[d], ctl[d + 1], ctl[d + 2], ctl[d + 3] = _code_of(p), address(p), address(g), address(a)
    ctl[d + 4], ctl[d + 5], ctl[d + 6], ctl[d + 7] = address(b), address(coef), n, h
    ctl[d + 8], ctl[d + 9], ctl[d + 10], ctl[d + 11] = n, a.size, b.size, coef.size
    ctl[d + 12], ctl[KIND] = flags, kind
    _offer(ctl, seq)
    update_part(kind, p, g, a, b, coef, flags, 0, h)
    if _taken_back(ctl, seq):
        update_part(kind, p, g, a, b, coef, flags, h, n)


@njit(**JIT_OPTIONS)
def _flat_cut(n):  # pragma: no cover - compiled
    """Where :func:`update` and :func:`all_finite` cut a flat array of ``n`` elements."""
    return (n // 2 + 8) // 16 * 16


@njit(**JIT_OPTIONS)
def all_finite(p, ctl, owned):  # pragma: no cover - compiled
    """Whether the flat array ``p`` holds no inf or NaN; with :data:`SPLIT_ELEMENTS` and
    the helper ``owned``, its second half is tested there: the half :func:`update` gives
    it next, so each thread reads the gradients it is about to update into its own cache
    (one thread reading them all made the update that follows 13 us slower a step)."""
    n = p.size
    if not owned or n < SPLIT_ELEMENTS:
        return _all_finite(p)
    h = _flat_cut(n)
    seq = _next_task(ctl)
    d = DESC
    ctl[d], ctl[d + 1], ctl[d + 2], ctl[d + 3], ctl[d + 4] = _code_of(p), address(p), n, h, n
    ctl[KIND] = FINITE
    _offer(ctl, seq)
    ok = _all_finite(p[:h])
    if _taken_back(ctl, seq):
        return _all_finite(p[h:]) and ok
    return ok and ctl[FINITE_ANSWER] != 0


@njit(**JIT_OPTIONS)
def acquire(ctl, use):  # pragma: no cover - compiled
    """Whether this call may post parts: ``use`` (two or more threads here), the helper is
    awake, and no other caller owns it (then this call does, until :func:`release`)."""
    return use and load_acquire(ctl, STATE) == AWAKE and cas(ctl, OWNER, 0, 1)


@njit(**JIT_OPTIONS)
def release(ctl, owned):  # pragma: no cover - compiled
    if owned:
        store_release(ctl, OWNER, 0)


@njit(**JIT_OPTIONS)
def _next_task(ctl):  # pragma: no cover - compiled
    """A new task number; the caller then writes its description and :func:`_offer`s it."""
    seq = ctl[SEQ] + 1
    ctl[SEQ] = seq
    return seq


@njit(**JIT_OPTIONS)
def _offer(ctl, seq):  # pragma: no cover - compiled
    """Task ``seq``, described in ``ctl``, may now be claimed (after everything written)."""
    store_release(ctl, CLAIM, 2 * seq)


@njit(**JIT_OPTIONS)
def _taken_back(ctl, seq):  # pragma: no cover - compiled
    """True when the caller claims the offered task back (it then runs it); otherwise the
    helper has it, and this returns once the helper is done."""
    if cas(ctl, CLAIM, 2 * seq, 2 * seq + 1):
        return True
    while load_acquire(ctl, DONE) != 2 * seq:
        pause()
    return False


@njit(**JIT_OPTIONS)
def post(ctl, g, by_rows, r0, r1):  # pragma: no cover - compiled
    """Offer a part of ``g`` to the helper (the caller owns it); returns the task number
    that :func:`finish` takes."""
    seq = _next_task(ctl)
    for i in range(12):
        ctl[DESC + i] = g[i]
    ctl[DESC + 12], ctl[DESC + 13], ctl[DESC + 14], ctl[KIND] = by_rows, r0, r1, GEMM
    _offer(ctl, seq)
    return seq


@njit(**JIT_OPTIONS)
def finish(ctl, seq, g, by_rows, r0, r1):  # pragma: no cover - compiled
    """The posted part is done when this returns: computed here if the helper had not
    claimed it, else waited for (it is running)."""
    if _taken_back(ctl, seq):
        run(g, by_rows, r0, r1)


@njit(**JIT_OPTIONS)
def gemm(g, ctl, owned, cut):  # pragma: no cover - compiled
    """The GEMM ``g``: whole when ``cut`` is 0, else in two parts (:func:`may_split`),
    the rows ``[0, cut)`` and ``[cut, M)`` of ``C`` when ``cut > 0``, its columns
    ``[0, -cut)`` and ``[-cut, N)`` when ``cut < 0``; the second part offered to the
    helper when ``owned``."""
    if cut == 0:
        run(g, False, 0, g[4])
        return
    by_rows, h, total = parts_of(g, cut)
    if owned:
        seq = post(ctl, g, by_rows, h, total)
        run(g, by_rows, 0, h)
        finish(ctl, seq, g, by_rows, h, total)
    else:
        run(g, by_rows, 0, h)
        run(g, by_rows, h, total)


@njit(**JIT_OPTIONS)
def gemm_beside(g_helper, g_here, ctl, owned):  # pragma: no cover - compiled
    """Two independent whole GEMMs: ``g_helper`` offered to the helper, ``g_here`` here."""
    beside_done(ctl, beside_posted(g_helper, g_here, ctl, owned), g_helper)


@njit(**JIT_OPTIONS)
def beside_posted(g_helper, g_here, ctl, owned):  # pragma: no cover - compiled
    """:func:`gemm_beside` without its wait, for a caller with other work meanwhile:
    returns the task number :func:`beside_done` finishes (0: both ran here)."""
    if not owned:
        run(g_here, False, 0, g_here[4])
        run(g_helper, False, 0, g_helper[4])
        return 0
    seq = post(ctl, g_helper, False, 0, g_helper[4])
    run(g_here, False, 0, g_here[4])
    return seq


@njit(**JIT_OPTIONS)
def beside_done(ctl, seq, g_helper):  # pragma: no cover - compiled
    """``g_helper`` of :func:`beside_posted` task ``seq`` is done when this returns."""
    if seq != 0:
        finish(ctl, seq, g_helper, False, 0, g_helper[4])


@njit(**JIT_OPTIONS)
def run_gemms(descs, ctl, use):  # pragma: no cover - compiled
    """GEMMs in order, one per row of ``descs``: its 12 integers (:func:`nt`), then its
    cut (:func:`gemm`; 0: whole), then 1 to run it beside the next row (:func:`gemm_beside`)."""
    owned = acquire(ctl, use)
    i = 0
    while i < descs.shape[0]:
        d = descs[i]
        g = (d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11])
        if d[13] != 0 and i + 1 < descs.shape[0]:
            e = descs[i + 1]
            g2 = (e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7], e[8], e[9], e[10], e[11])
            gemm_beside(g, g2, ctl, owned)
            i += 2
        else:
            gemm(g, ctl, owned, d[12])
            i += 1
    release(ctl, owned)


def _check_product(i: int, a: object, b: object, out: object) -> int:
    """The kind (NT, TN, NN) of product ``i``, or one line on what does not fit."""
    from bnprop._validate import InputError

    arrays = (a, b, out)
    if not all(isinstance(x, np.ndarray) and x.ndim == 2 for x in arrays):
        raise InputError(f"products[{i}]: expected three 2-d arrays (a, b, out).")
    a, b, out = arrays  # type: ignore[assignment]
    if not (a.dtype == b.dtype == out.dtype and out.dtype in (np.float32, np.float64)):
        raise InputError(f"products[{i}]: expected one dtype, float32 or float64, got "
                         f"{a.dtype}, {b.dtype} and {out.dtype} instead.")
    if a.shape[1] != b.shape[0] or out.shape != (a.shape[0], b.shape[1]):
        raise InputError(f"products[{i}]: a {a.shape} @ b {b.shape} does not give out "
                         f"{out.shape}.")
    if not out.flags.c_contiguous or np.shares_memory(out, a) or np.shares_memory(out, b):
        raise InputError(f"products[{i}]: out must be C-contiguous and apart from a and b.")
    if a.flags.c_contiguous and b.T.flags.c_contiguous and not b.flags.c_contiguous:
        return NT
    if a.T.flags.c_contiguous and not a.flags.c_contiguous and b.flags.c_contiguous:
        return TN
    if a.flags.c_contiguous and b.flags.c_contiguous:
        return NN
    raise InputError(f"products[{i}]: a and b must be C-contiguous arrays or a transposed "
                     "view of one (not both).")


def gemm_sequence(products: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]):  # type: ignore[no-untyped-def]
    """A call running ``out = a @ b`` for each ``(a, b, out, beside_next)`` the way the
    compiled calls run their GEMMs: split where :func:`may_split`, or beside the next
    product (whose output must be apart) when ``beside_next``. ``a`` and ``b`` are
    C-contiguous arrays or a transposed view of one, ``out`` C-contiguous (checked here,
    one line each); the call keeps them alive (it reads them by address)."""
    from bnprop._validate import InputError

    if not isinstance(products, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 4 for p in products):
        raise InputError("products: expected a list of (a, b, out, beside_next) tuples.")
    rows, shapes = [], []
    for i, (a, b, out, beside) in enumerate(products):
        kind = _check_product(i, a, b, out)
        g = nt(a, b.T, out) if kind == NT else (tn(a.T, b, out) if kind == TN
                                                 else nn(a, b, out))
        nxt = products[i + 1][:3] if beside and i + 1 < len(products) else ()
        if nxt and (any(np.shares_memory(out, x) for x in nxt)
                    or any(np.shares_memory(nxt[2], x) for x in (a, b))):
            raise InputError(f"products[{i}]: its output and the next product's may not "
                             "overlap the other's operands when they run beside each other.")
        rows.append([*g, 0, bool(beside)])
        shapes.append((out.dtype, kind, out.shape[0], out.shape[1], a.shape[1]))
    descs = np.array(rows, np.int64).reshape(len(rows), 14)
    by_count: dict[int | None, np.ndarray] = {}
    arrays = [p[:3] for p in products]  # alive as long as the call: it reads them by address

    def call() -> None:  # the helper's way whatever the measured choice (_helper_thread)
        count = threads.blas_threads()
        if count not in by_count:  # the splits that keep the bits at this count
            d = by_count[count] = descs.copy()
            d[:, 12] = [may_split(*shape) for shape in shapes]
        use = threads.num_threads() >= 2
        h = helper()
        if use and h.ctl[STATE] != AWAKE:
            h.start_or_wake()
        run_gemms(by_count[count], h.ctl, use)

    call.arrays = arrays  # type: ignore[attr-defined]
    return call


__all__ = ["beside_done", "beside_posted", "for_call", "for_timed_call", "gemm", "gemm_beside",
           "gemm_sequence", "helper", "may_split", "nn", "nt", "parts_done", "prefer", "report",
           "run", "tn", "update"]
