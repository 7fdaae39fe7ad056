"""Thread ownership: bnprop's own threads split the rows; BLAS and the kernels run serial in each.

A training step alternates GEMMs (NumPy's OpenBLAS) and batch-norm kernels (Numba).
Measured on this project's 2-core machine (float32, medians of interleaved rounds; the
machine is shared, so some runs had other processes on it):

* **Multi-threaded OpenBLAS is fragile.** Its workers busy-wait after a call (up to 2^28
  cycles, 0.1 s) and a call waits for every worker, so one worker that is not scheduled
  (another process, a Numba or OpenMP pool, an MPI rank) stalls the call for a
  scheduler tick: with other processes busy, a 2-thread GEMM 4096 x 16 -> 256 took
  8-12 ms against 0.4 ms on 1 thread, 60 x 100 -> 100 16-24 ms against 0.02 ms, and a
  BN layer step 65536 x 256 -> 256 1.5 s against 0.64 s. This is the 50-100x slowdown
  of the prototype that ran prange kernels next to BLAS threads.
* **A second thread helps GEMMs, not the BN kernels.** On the quiet machine 2 OpenBLAS
  threads are 1.9x faster on 65536 x 256 x 256; the BN kernels are memory-bound (one
  core already moves 24 GB/s, a 2-thread read 27), and on these vCPUs two threads of
  vectorized Numba code doing twice the in-cache work took twice the time of one, so
  ``parallel=True`` kernels would buy next to nothing.

The rule, one owner:

* **bnprop's threads own the cores, when the caller says so.** The count is not a
  process-wide setting: it lives in a context variable, 1 unless the caller sets it,
  for the block of code that asks (``with bnprop.threads.using(2): net.train_step(...)``)
  or for the calling thread (:func:`set_threads`, what ``--threads`` of the CLI calls).
  Another thread, or code outside the block, keeps its own count, so nothing changes
  its numbers behind its back (a batch split into parts sums in another order). With
  ``n`` threads a layer step splits its rows into ``n`` parts and each thread runs the
  GEMMs and the kernels of its part; the per-part reductions are merged exactly as the
  distributed path merges ranks (Chan's combination for the moments, sums for the
  rest). Workers spin for the next part for at most half a millisecond, then sleep
  (:mod:`bnprop.kernels._row_workers`: a sleeping thread takes 30-40 us to wake here), so
  a busy machine costs a part's time, not a scheduler tick per call.
* **BLAS runs on 1 thread** in each of them, set through the library's own
  ``openblas_set_num_threads`` (found with ctypes in the copy NumPy has loaded: the
  environment variable is read only at load time). That count is the process's, not the
  thread's: while any :func:`using` block is open, or after :func:`set_threads`,
  OpenBLAS runs on 1 thread for every thread of the process, and OpenBLAS's own default
  (the cores) holds only when neither was ever called. Some GEMMs round differently on
  1 and on several OpenBLAS threads (float32 60 x 784 -> 100, by up to 1e-4 after a
  training run), so a thread that trains outside any block beside one that trains
  inside a block does not get the numbers of the same run alone: give every training
  thread :func:`set_threads` or a :func:`using` block.
* **Kernels are serial.** :mod:`bnprop.kernels` compiles without ``parallel=True`` and
  releases the GIL; Numba's pool is never started by bnprop.

Layer forward + backward, 65536 x 16 -> 256, float32, quiet machine (median / best of
5 interleaved rounds): 2 row-split threads 50 / 43 ms (49 / 33 ms when each thread also
walks its rows in 1 MB chunks, so the skinny GEMMs read cache); serial kernels with
2-thread BLAS 62 / 57 ms; everything on 1 thread 76 / 74 ms; PyTorch eager on 2
threads 161 / 150 ms. On a busy machine the row split stays near the 1-thread time
(128 against 117 ms) while 2-thread BLAS falls far behind (212 ms).

With ``P`` processes on one machine (MPI ranks), give each ``cores // P`` threads:
``set_threads(1)`` for 2 ranks on 2 cores.

Small batches are the exception to the row workers: a compiled step of the Ioffe net at
batch 60 is GEMMs of 2 to 130 us, too short for a 25-50 us hand-over. With two or more threads,
its compiled calls give half of each GEMM of 1 MFLOP or more, a ``dW`` beside its
``dO``, half of the rows of each forward BN pass, and half of the gradients' finiteness
test and of the optimizer update (the same half) to one
helper thread that spins for 2 ms after its last part (:mod:`bnprop.kernels.team`); the
caller never waits for a part the helper has not started, and the helper is used only
while the calls measure faster with it.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

from bnprop._validate import InputError

if TYPE_CHECKING:
    import numpy as np

T = TypeVar("T")

#: bnprop's compute threads in the current context (thread or ``using`` block).
_n_threads: ContextVar[int] = ContextVar("bnprop_threads", default=1)
_pool_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_executor_workers = 0
_blas_lock = threading.Lock()  # OpenBLAS's count and the open `using` blocks
_open_blocks: dict[int, int] = {}  # thread ident -> `using` blocks it has open
_blas_before_using: int | None = None


def _after_fork_in_child() -> None:
    """Only the forking thread lives on in the child: locks another thread held at the
    fork would never be released, its pool's workers and its open blocks are gone."""
    global _pool_lock, _blas_lock, _executor, _executor_workers, _open_blocks
    _pool_lock, _blas_lock = threading.Lock(), threading.Lock()
    _executor, _executor_workers = None, 0
    me = threading.get_ident()
    _open_blocks = {me: _open_blocks[me]} if me in _open_blocks else {}


os.register_at_fork(after_in_child=_after_fork_in_child)

# Symbol names across OpenBLAS builds: scipy-openblas (NumPy's wheels, 64-bit ints and a
# "scipy_" prefix), plain OpenBLAS, and 64-bit-int OpenBLAS with the "64_" suffix.
_SETTERS = (
    "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_", "openblas_set_num_threads",
)
_GETTERS = (
    "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
    "openblas_get_num_threads64_", "openblas_get_num_threads",
)


def _loaded_openblas_paths() -> list[str]:
    """OpenBLAS libraries NumPy ships, then any other mapped into this process (Linux)."""
    import numpy as np

    numpy_dir = os.path.dirname(np.__file__)
    paths: list[str] = []
    for pattern in (os.path.join(numpy_dir + ".libs", "*openblas*"),
                    os.path.join(numpy_dir, ".dylibs", "*openblas*")):
        paths += sorted(glob.glob(pattern))
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1]
                if "openblas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)  # e.g. SciPy's own copy
    except OSError:  # not Linux
        pass
    return paths


@cache
def _openblas() -> tuple[tuple[object, object], ...]:
    """``(set_num_threads, get_num_threads)`` of every OpenBLAS found, NumPy's first."""
    found = []
    for path in _loaded_openblas_paths():
        try:
            lib = ctypes.CDLL(path)  # already loaded: the same handle, no second copy
        except OSError:
            continue
        setter = next((getattr(lib, s) for s in _SETTERS if hasattr(lib, s)), None)
        getter = next((getattr(lib, g) for g in _GETTERS if hasattr(lib, g)), None)
        if setter is not None and getter is not None:
            setter.argtypes, setter.restype = [ctypes.c_int], None
            getter.argtypes, getter.restype = [], ctypes.c_int
            found.append((setter, getter))
    return tuple(found)


def blas_threads() -> int | None:
    """Threads NumPy's OpenBLAS uses now, or ``None`` when no OpenBLAS was found."""
    libs = _openblas()
    return int(libs[0][1]()) if libs else None


def blas_core() -> str | None:
    """The kernels NumPy's OpenBLAS runs (its core, e.g. ``"SkylakeX"``; chosen when it
    was loaded, from the CPU or from ``OPENBLAS_CORETYPE``), or ``None`` without it."""
    from bnprop.kernels import blas

    return blas.corename()


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n: expected an integer >= 1, got {n!r} instead.")
    return n


def set_blas_threads(n: int) -> int | None:
    """Set every OpenBLAS found to ``n`` threads; return NumPy's previous count (or ``None``)."""
    n = _check_n(n)
    previous = blas_threads()
    for setter, _ in _openblas():
        setter(n)
    return previous


def set_threads(n: int) -> int | None:
    """Give the calling thread ``n`` compute threads, owned by bnprop's row split
    (:func:`map_rows`); :func:`using` does the same for a block only.

    OpenBLAS is set to 1 thread: each of the ``n`` threads calls it on its own rows.
    bnprop's Numba kernels are serial; Numba's pool is left alone unless other code has
    started it, in which case it is capped at 1 too (starting it only to cap it would
    create the threads we avoid).

    Parameters
    ----------
    n : int
        Threads for bnprop's row-split work; the number of cores this process may use.

    Returns
    -------
    int or None
        The previous BLAS thread count (``None`` when no OpenBLAS was found: BLAS
        threads are then left as the environment set them).
    """
    global _blas_before_using
    n = _check_n(n)
    with _blas_lock:
        previous = set_blas_threads(1)
        if _open_blocks:  # the last using block out restores 1, not the count it found
            _blas_before_using = 1
    numba_parallel = sys.modules.get("numba.np.ufunc.parallel")
    if numba_parallel is not None and getattr(numba_parallel, "_is_initialized", False):
        import numba

        numba.set_num_threads(1)
    _n_threads.set(n)
    return previous


@contextmanager
def using(n: int) -> Iterator[None]:
    """Within the block, bnprop's work on this thread splits rows over ``n`` threads (BLAS
    on 1 thread in each); the previous counts are restored after (OpenBLAS's, which is
    the whole process's, when no block is open in any thread any more).

    >>> from bnprop import threads
    >>> with threads.using(2):
    ...     threads.num_threads()
    2
    >>> threads.num_threads()
    1
    """
    global _blas_before_using
    n = _check_n(n)
    token = _n_threads.set(n)
    me = threading.get_ident()
    with _blas_lock:  # OpenBLAS's count is the process's: the last block out restores it
        if not _open_blocks:
            _blas_before_using = set_blas_threads(1)
        else:
            set_blas_threads(1)
        _open_blocks[me] = _open_blocks.get(me, 0) + 1
    try:
        yield
    finally:
        _n_threads.reset(token)
        with _blas_lock:
            _open_blocks[me] -= 1
            if not _open_blocks[me]:
                del _open_blocks[me]
            if not _open_blocks and _blas_before_using is not None:
                set_blas_threads(_blas_before_using)


def num_threads() -> int:
    """Threads :func:`map_rows` uses here (1 unless :func:`set_threads` or :func:`using`
    said otherwise in this context)."""
    return _n_threads.get()


def row_parts(m: int, parts: int) -> list[tuple[int, int]]:
    """Rows ``[0, m)`` in ``parts`` contiguous ``(start, stop)`` ranges, sizes differing by <= 1."""
    return [(p * m // parts, (p + 1) * m // parts) for p in range(parts)]


def map_rows(fn: Callable[[int, int], T], m: int, *, min_rows: int = 2048) -> list[T]:
    """``[fn(start, stop) for each part of the rows [0, m)]``, the parts run concurrently.

    The rows are split into :func:`num_threads` parts (fewer, so that each has at least
    ``min_rows`` rows; one part, on the calling thread, when ``m < 2 * min_rows``). Part 0
    runs on the calling thread, the others on bnprop's worker threads, which spin for the
    next part for half a millisecond, then sleep (:mod:`bnprop.kernels._row_workers`; a
    queue when another thread owns them). ``fn`` should release the GIL for its heavy
    work (NumPy's BLAS and bnprop's kernels do). Results come back in row order, so a
    caller merging them (Chan's combination, sums) gets the same numbers for the same
    thread count. ``fn`` must not call :func:`map_rows` itself (through the queue, the
    workers would wait on each other).
    """
    parts = max(1, min(_n_threads.get(), m // max(1, min_rows)))
    if parts == 1:
        return [fn(0, m)]
    ranges = row_parts(m, parts)
    from bnprop.kernels import _row_workers  # numba, loaded on first use

    results = _row_workers.run_parts(fn, ranges)
    if results is not None:
        return results
    pool = _pool(parts - 1)
    futures = [pool.submit(fn, start, stop) for start, stop in ranges[1:]]
    first = fn(*ranges[0])
    return [first] + [f.result() for f in futures]


def _pool(workers: int) -> ThreadPoolExecutor:
    global _executor, _executor_workers
    with _pool_lock:
        if _executor is None or _executor_workers < workers:
            if _executor is not None:
                _executor.shutdown(wait=True)
            _executor = ThreadPoolExecutor(workers, thread_name_prefix="bnprop-rows")
            _executor_workers = workers
        return _executor


def gemm_sequence(products: list) -> Callable[[], None] | None:  # type: ignore[type-arg]
    """A call running ``out = a @ b`` for each ``(a, b, out, beside_next)`` the way bnprop's
    compiled steps do with two or more threads (:mod:`bnprop.kernels.team`: a large GEMM
    in two parts, a ``dW`` beside its ``dO`` on the helper thread); ``None`` where NumPy's
    BLAS is not the scipy-openblas those steps call. Run it inside :func:`using`."""
    from bnprop.kernels import blas

    if not blas.available():
        return None
    from bnprop.kernels import team

    return team.gemm_sequence(products)  # type: ignore[no-any-return]


def _operands(out: Any, **named: Any) -> None:
    """One clear line for an operand that is not a 2-d float array of ``out``'s dtype."""
    import numpy as np

    dtype = getattr(out, "dtype", None)
    for name, x in {"out": out, **named}.items():
        if not (isinstance(x, np.ndarray) and x.ndim == 2 and x.dtype == dtype
                and dtype in (np.float32, np.float64)):
            raise InputError(f"{name}: expected a 2-d float32 or float64 array of out's "
                             "dtype, got "
                             f"{getattr(x, 'dtype', type(x).__name__)} of shape "
                             f"{getattr(x, 'shape', None)} instead.")


def _whole_rows(rows: Any, a: np.ndarray) -> int | None:
    import numpy as np

    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int | np.integer)
                             or rows < a.shape[0]):
        raise InputError(f"rows: expected None or the whole product's row count, an int >= "
                         f"a's {a.shape[0]} rows, got {rows!r} instead.")
    return None if rows is None else int(rows)


def matmul_nt(a: np.ndarray, w: np.ndarray, out: np.ndarray, rows: int | None = None,
              ) -> np.ndarray:
    """``out = a @ w.T`` the way bnprop computes a layer's ``Z = O W^T``: in bnprop's own
    float32 tiles where they take the product (:mod:`bnprop.kernels.tile_gemm`), else a
    small float32 batch in the column blocks that OpenBLAS's small-matrix kernel takes,
    where that is faster (:mod:`bnprop.kernels.small_gemm`); ``rows``: the whole
    product's rows when ``a`` is a part of them."""
    from bnprop.kernels.small_gemm import matmul_nt as blocked

    _operands(out, a=a, w=w)
    if a.shape[1] != w.shape[1] or out.shape != (a.shape[0], w.shape[0]):
        raise InputError(f"out: a {a.shape} @ w.T {w.shape[::-1]} gives "
                         f"{(a.shape[0], w.shape[0])}, not out {out.shape}.")
    return blocked(a, w, out, _whole_rows(rows, a))


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray, rows: int | None = None,
           ) -> np.ndarray:
    """``out = a @ b`` the way bnprop's fast path computes a step's products (``a`` and
    ``b`` may be transposed views): :func:`matmul_nt` for a ``b`` that is the transpose
    of a C-contiguous array, bnprop's own float32 tiles where they take the product
    (:mod:`bnprop.kernels.tile_gemm`), else ``np.matmul``; ``rows``: the whole product's
    rows when ``a`` is a part of them."""
    from bnprop.kernels.tile_gemm import matmul as tiles

    _operands(out, a=a, b=b)
    if a.shape[1] != b.shape[0] or out.shape != (a.shape[0], b.shape[1]):
        raise InputError(f"out: a {a.shape} @ b {b.shape} gives "
                         f"{(a.shape[0], b.shape[1])}, not out {out.shape}.")
    whole = _whole_rows(rows, a)
    if b.T.flags.c_contiguous and not b.flags.c_contiguous:
        return matmul_nt(a, b.T, out, whole)
    return tiles(a, b, out, whole)


@contextmanager
def blas_threads_limited(n: int) -> Iterator[None]:
    """Within the block OpenBLAS uses ``n`` threads; the previous count is restored after."""
    previous = set_blas_threads(n)
    try:
        yield
    finally:
        if previous is not None:
            set_blas_threads(previous)
