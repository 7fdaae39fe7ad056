"""Communicators: what the processes of a data-parallel run exchange, behind one interface.

A global batch of m rows is split row-wise over P processes (ranks); rank p holds the
contiguous rows :func:`shard` gives it, m_p of them, m = sum_p m_p. A batch-normalized
layer then needs two reductions (MATH.md, "Several processes"), one packed collective each:

forward, the statistics of the global batch (Chan, Golub & LeVeque 1979)::

    (m, mu_B, M2) = fold_{p = 0, 1, ..., P-1} chan_combine((m_p, mean_p, M2_p))
    var_B = M2 / m                                          one Allgather of 1 + 2 n float64

backward, the two per-feature sums of the exact ``dZ`` (they are also dbeta and dgamma)::

    [sum_rows(G), sum_rows(G * Obar)] = sum_p [sum_rows(G_p), sum_rows(G_p * Obar_p)]
                                                            one Allreduce of 2 n float64

Why the forward gathers and folds rather than all-reducing. Chan's combination is not a
sum, so a plain ``MPI_SUM`` cannot do it in one collective (summing ``sum`` and ``sum of
squares`` can, but ``E[Z^2] - E[Z]^2`` cancels catastrophically in float32 data far from
zero; summing centered ``M2`` needs the global mean first, a second collective). A
user-defined ``MPI.Op`` would do it in one, but MPI applies it along a tree of its choosing,
and floating-point Chan combination is not associative: the result would depend on the
MPI library's algorithm and on P, and each reduction would call back into Python. An
Allgather of the packed vector ``[m_p, mean_p (n), M2_p (n)]`` followed by a fold in rank
order, done by the same code on every rank, gives every rank bit-identical statistics by
construction, independent of the MPI library. Its cost is P (1 + 2n) float64 received
per rank and layer: 1.6 MiB at P = 100, n = 1024, small beside the all-reduce of
``dW`` (n_out n_in); past a few hundred ranks a reduce-then-broadcast custom op would be
the better trade.

The backward sums are plain sums, so they use ``MPI_Allreduce`` (in place). The MPI
standard does not promise every rank the same bits from it; MPICH's algorithms (recursive
doubling, reduce-scatter/allgather, shared-memory reduce-then-broadcast) do, and
``tests/mpi_scripts/layer_check.py`` checks that the ranks' ``dgamma`` agree bitwise.

A data-parallel training step (``MLP.loss_and_grads(..., comm=comm)``) adds one more
collective: every parameter gradient the layers left local (``dW``, the dense layers' and
the output layer's ``W`` and ``b``; ``dgamma``, ``dbeta`` too under local statistics) and
the loss, packed into one float64 buffer, :func:`allreduce_packed`.

Implementations of :class:`Communicator`:

* :class:`SingleProcess`: rank 0 of 1; every reduction is the identity.
* :class:`MPIComm`: mpi4py, imported when one is constructed (``import bnprop`` never
  imports it); ``pip install 'bnprop[mpi]'``.
* :class:`ThreadComm`: P threads of one process (:func:`run_threaded`), the same
  protocol without MPI: for tests and for checking a distributed code path in-process.

A rank that fails must take the job down, never leave the others waiting in a collective:
wrap the entry point in :func:`abort_on_error`. Errors every rank meets together (a bad
option, a missing file, found while setting up) need no abort: :func:`agree` turns them into
one :class:`CollectiveError` raised on every rank, which ``abort_on_error`` lets through so
the job ends normally with one message. Launch with::

    mpiexec -n 4 python -m bnprop ...           # default_comm() is then an MPIComm
"""

from __future__ import annotations

import copy
import hashlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar, runtime_checkable

import numpy as np

from bnprop._validate import InputError
from bnprop.batchnorm import chan_combine

T = TypeVar("T")

#: Environment variables through which launchers announce the number of processes:
#: MPICH/Hydra and Intel MPI (PMI_SIZE, MPI_LOCALNRANKS), Open MPI, PMIx, MVAPICH2.
LAUNCHER_SIZE_VARS = (
    "PMI_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE",
)

MPI_EXTRA_HINT = "pip install 'bnprop[mpi]'"

#: Seconds :func:`run_threaded` waits past its ``timeout`` for a rank to end.
RUN_THREADED_GRACE = 5.0

#: Seconds :meth:`MPIComm.abort` waits after its last write before ``MPI_Abort``, so that
#: the launcher forwards the rank's final stderr lines before it kills the job.
ABORT_GRACE = 0.5


@dataclass
class Traffic:
    """Payload of the reductions a communicator has run (``allreduce_sum``, ``combine_moments``).

    Bytes handed to and received from MPI by this rank, not the bytes on the wire (which
    depend on MPI's algorithm); ``bcast`` and ``barrier`` are not counted.
    """

    collectives: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    def add(self, sent: int, received: int) -> None:
        self.collectives += 1
        self.bytes_sent += sent
        self.bytes_received += received


@runtime_checkable
class Communicator(Protocol):
    """The operations a data-parallel run needs; every rank calls each one, in the same order.

    Attributes
    ----------
    rank : int
        This process, ``0 <= rank < size``.
    size : int
        Number of processes P.
    traffic : Traffic
        Running totals of the reductions' payload.
    """

    rank: int
    size: int
    traffic: Traffic

    def allreduce_sum(self, buf: np.ndarray) -> np.ndarray:
        """``sum_p buf_p`` on every rank, in ``buf`` when it is a C-contiguous writeable
        float32/float64 array (otherwise in a float64 copy); returns the result."""
        ...

    def combine_moments(
        self, count: int, mean: np.ndarray, M2: np.ndarray,
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """Per-feature ``(m, mean, M2)`` of the union of every rank's rows, bit-identical on
        every rank; ``(count, mean, M2)`` are this rank's, from ``batchnorm.batch_moments``."""
        ...

    def bcast(self, obj: T, root: int = 0) -> T:
        """``root``'s ``obj`` on every rank (pickled; for parameters, configs, metadata)."""
        ...

    def barrier(self) -> None:
        """Return once every rank has called it."""
        ...

    def abort(self, message: str, code: int = 1) -> NoReturn:
        """End every rank of the job: print ``message`` with this rank, exit with ``code``."""
        ...

    def scratch(self, n: int) -> np.ndarray:
        """A float64 vector of ``n`` entries owned by this communicator, the same memory on
        every call (its contents are the caller's until the next call): the buffer of
        :func:`allreduce_packed`."""
        ...


# -- the pure parts: sharding and the moment fold --------------------------------------------


def shard(n_global: int, rank: int, size: int) -> slice:
    """Contiguous rows ``[start, stop)`` of a global batch of ``n_global`` held by ``rank``.

    With ``q, r = divmod(n_global, size)``, ranks ``0 .. r-1`` hold ``q + 1`` rows and the
    others ``q``: shares differ by at most one, and the shards of ranks 0, 1, ..., size-1
    concatenate to ``range(n_global)``. A layer needs every share >= 1, so
    ``n_global >= size``.

    Examples
    --------
    >>> [shard(64, p, 3) for p in range(3)]
    [slice(0, 22, None), slice(22, 43, None), slice(43, 64, None)]
    """
    for value, name in ((n_global, "n_global"), (rank, "rank"), (size, "size")):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise InputError(f"{name}: expected an int, got {type(value).__name__} instead.")
    if size < 1:
        raise InputError(f"size: expected an int >= 1, got {size} instead.")
    if not 0 <= rank < size:
        raise InputError(f"rank: expected 0 <= rank < size = {size}, got {rank} instead.")
    if n_global < 0:
        raise InputError(f"n_global: expected an int >= 0, got {n_global} instead.")
    q, r = divmod(int(n_global), int(size))
    start = rank * q + min(rank, r)
    return slice(start, start + q + (1 if rank < r else 0))


def pack_moments(count: int, mean: np.ndarray, M2: np.ndarray) -> np.ndarray:
    """``[count, mean (n), M2 (n)]``: one float64 vector of 1 + 2n entries (count exact < 2^53)."""
    n = mean.shape[0]
    packed = np.empty(1 + 2 * n, dtype=np.float64)
    packed[0] = count
    packed[1 : 1 + n] = mean
    packed[1 + n :] = M2
    return packed


def fold_moments(rows: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Fold packed moments, one rank a row of ``rows`` (P, 1 + 2n), in row order.

    ``acc = row_0``, then ``acc = chan_combine(acc, row_p)`` for p = 1, ..., P-1, skipping
    rows of count 0. Deterministic: the same ``rows`` give the same bits on every rank.
    """
    n = (rows.shape[1] - 1) // 2
    count, mean, M2 = 0, np.zeros(n), np.zeros(n)
    for row in rows:
        if row[0] == 0:
            continue
        if count == 0:
            count, mean, M2 = row[0], row[1 : 1 + n].copy(), row[1 + n :].copy()
        else:
            count, mean, M2 = chan_combine(count, mean, M2, row[0], row[1 : 1 + n], row[1 + n :])
    return int(count), mean, M2


def _reduction_buffer(buf: np.ndarray) -> np.ndarray:
    """``buf`` itself when MPI can reduce it in place, else a C-contiguous float64 copy."""
    if (isinstance(buf, np.ndarray) and buf.dtype in (np.float32, np.float64)
            and buf.flags.c_contiguous and buf.flags.writeable):
        return buf
    arr = np.asarray(buf)
    if arr.dtype.kind not in "biuf":
        raise InputError(
            f"buf: expected a real numeric array, got dtype {arr.dtype} instead."
        )
    dt = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64
    return np.array(arr, dtype=dt, order="C", copy=True)


def allreduce_packed(
    comm: Communicator, arrays: Sequence[np.ndarray], scalars: Sequence[float] = (),
) -> tuple[list[np.ndarray], list[float]]:
    """``sum_p`` of every array and scalar, in one float64 ``comm.allreduce_sum``.

    The buffer is ``[a_0.ravel(), a_1.ravel(), ..., scalars]`` in float64 whatever the
    arrays' dtype, so float32 terms are summed in float64 and rounded once::

        total_k = float32( sum_p float64(a_k^(p)) )          for float32 a_k

    The buffer is ``comm.scratch``: the same memory every step (MPICH reduces a buffer it
    has seen before 2 to 4 times faster than a new one; measured on 800 KB here). Returns
    new arrays of the inputs' shapes and dtypes, and the scalars as floats; the same bits
    on every rank (see the module docstring on ``MPI_Allreduce``).
    """
    sizes = [a.size for a in arrays]
    buf = comm.scratch(sum(sizes) + len(scalars))
    offset = 0
    for a, n in zip(arrays, sizes, strict=True):
        buf[offset : offset + n] = a.reshape(-1)
        offset += n
    buf[offset:] = scalars
    buf = comm.allreduce_sum(buf)
    totals, offset = [], 0
    for a, n in zip(arrays, sizes, strict=True):
        totals.append(buf[offset : offset + n].reshape(a.shape).astype(a.dtype))
        offset += n
    return totals, [float(v) for v in buf[offset:]]


def check_replicas(comm: Communicator, arrays: Mapping[str, np.ndarray], what: str) -> None:
    """Raise on every rank unless every rank holds bit-identical ``arrays`` (same keys).

    One SHA-256 of the arrays' names, dtypes, shapes and bytes per rank; rank 0's is
    broadcast and the ranks whose digest differs are counted in one ``allreduce_sum``, so
    all ranks learn the outcome together. Data-parallel replicas stay identical only if
    every rank receives the same bits from each reduction; this checks that they did.

    Raises
    ------
    RuntimeError
        Naming ``what`` and the ranks that differ from rank 0.
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        digest.update(a.tobytes())
    reference = comm.bcast(digest.hexdigest() if comm.rank == 0 else None)
    differs = np.zeros(comm.size)
    differs[comm.rank] = digest.hexdigest() != reference
    differs = comm.allreduce_sum(differs)
    if differs.any():
        ranks = ", ".join(str(int(r)) for r in np.flatnonzero(differs))
        raise RuntimeError(
            f"{what}: the replicas on rank(s) {ranks} differ from rank 0's; the MPI library "
            "did not give every rank the same bits from a reduction, so the processes no "
            "longer train one model."
        )


class CollectiveError(InputError):
    """An error raised on every rank at once (by :func:`agree`): no rank is left waiting.

    :func:`abort_on_error` lets it through, so each rank ends normally. ``rank`` is the
    rank whose error it was; ``origin`` is that error's type name.
    """

    def __init__(self, message: str, *, rank: int, origin: str) -> None:
        super().__init__(message)
        self.rank = rank
        self.origin = origin


def error_message(exc: BaseException) -> str:
    """The one line a user sees: ``str(exc)``, or ``FILE: reason`` for an ``OSError``."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def agree(comm: Communicator, error: BaseException | None) -> None:
    """Collective: end together if any rank's ``error`` is set; return if none is.

    With one process, ``error`` is raised unchanged. With several, the error of the lowest
    failing rank r is broadcast and every rank raises ``CollectiveError(message, rank=r)``
    (the message prefixed with ``rank r of P:`` when r != 0). Two collectives; call it where
    every rank runs it, after a phase whose errors are user errors (``InputError``,
    ``OSError``) that one rank alone may meet (a data file missing on its node).
    """
    if comm.size == 1:
        if error is not None:
            raise error
        return
    failed = np.zeros(comm.size)
    failed[comm.rank] = error is not None
    failed = comm.allreduce_sum(failed)
    if not failed.any():
        return
    first = int(np.flatnonzero(failed)[0])
    sent = (error_message(error), type(error).__name__) if comm.rank == first else None
    message, origin = comm.bcast(sent, root=first)
    if first != 0:
        message = f"rank {first} of {comm.size}: {message}"
    raise CollectiveError(message, rank=first, origin=origin) from error


class Scratch:
    """One grow-only float64 buffer; ``get(n)`` is its first n entries (see
    :meth:`Communicator.scratch`)."""

    def __init__(self) -> None:
        self._buf = np.empty(0, dtype=np.float64)

    def get(self, n: int) -> np.ndarray:
        if n > self._buf.size:
            self._buf = np.empty(n, dtype=np.float64)
        return self._buf[:n]


# -- one process -----------------------------------------------------------------------------


class SingleProcess:
    """Rank 0 of 1: every reduction returns its input, nothing is communicated."""

    rank = 0
    size = 1

    def __init__(self) -> None:
        self.traffic = Traffic()
        self._scratch = Scratch()

    def __repr__(self) -> str:
        return "SingleProcess()"

    def scratch(self, n: int) -> np.ndarray:
        return self._scratch.get(n)

    def allreduce_sum(self, buf: np.ndarray) -> np.ndarray:
        return _reduction_buffer(buf)

    def combine_moments(
        self, count: int, mean: np.ndarray, M2: np.ndarray,
    ) -> tuple[int, np.ndarray, np.ndarray]:
        return int(count), mean, M2

    def bcast(self, obj: T, root: int = 0) -> T:
        return obj

    def barrier(self) -> None:
        return None

    def abort(self, message: str, code: int = 1) -> NoReturn:
        sys.stderr.write(f"bnprop: rank 0 of 1 aborting: {message}\n")
        sys.stderr.flush()
        raise SystemExit(code)


# -- MPI -------------------------------------------------------------------------------------


def _import_mpi() -> Any:
    """mpi4py's ``MPI`` module (importing it initializes MPI), or an error naming the extra."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            f"MPIComm needs mpi4py, which is not importable ({exc}); install it with: "
            f"{MPI_EXTRA_HINT}"
        ) from exc
    return MPI


class MPIComm:
    """A :class:`Communicator` over an mpi4py communicator (``MPI.COMM_WORLD`` by default).

    Parameters
    ----------
    mpi_comm : mpi4py.MPI.Comm, optional
        The communicator to wrap; default ``MPI.COMM_WORLD``.
    """

    def __init__(self, mpi_comm: Any = None) -> None:
        MPI = _import_mpi()
        self._MPI = MPI
        self._comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()
        self.traffic = Traffic()
        self._scratch = Scratch()

    def __repr__(self) -> str:
        return f"MPIComm(rank={self.rank}, size={self.size})"

    def scratch(self, n: int) -> np.ndarray:
        return self._scratch.get(n)

    @property
    def mpi_comm(self) -> Any:
        """The wrapped mpi4py communicator."""
        return self._comm

    def allreduce_sum(self, buf: np.ndarray) -> np.ndarray:
        buf = _reduction_buffer(buf)
        self._comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        self.traffic.add(buf.nbytes, buf.nbytes)
        return buf

    def combine_moments(
        self, count: int, mean: np.ndarray, M2: np.ndarray,
    ) -> tuple[int, np.ndarray, np.ndarray]:
        send = pack_moments(count, mean, M2)
        rows = np.empty((self.size, send.size), dtype=np.float64)
        self._comm.Allgather(send, rows)
        self.traffic.add(send.nbytes, rows.nbytes)
        return fold_moments(rows)

    def bcast(self, obj: T, root: int = 0) -> T:
        return self._comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self._comm.Barrier()

    def abort(self, message: str, code: int = 1) -> NoReturn:
        """Print ``message`` and call ``MPI_Abort``.

        The launcher forwards each rank's stderr through a pipe, and ``MPI_Abort`` tears the
        job down at once: lines already written but not yet read by the forwarder were lost
        in about 1 run of 15 on a loaded machine. Waiting :data:`ABORT_GRACE` seconds
        between the last write and the abort lets the forwarder drain the pipe.
        """
        sys.stdout.flush()
        sys.stderr.write(f"bnprop: rank {self.rank} of {self.size} aborting: {message}\n")
        sys.stderr.flush()
        time.sleep(ABORT_GRACE)
        self._comm.Abort(code)
        raise SystemExit(code)  # not reached: Abort does not return


# -- threads (tests, in-process checks) ------------------------------------------------------


class _ThreadGroup:
    """State shared by the P :class:`ThreadComm` of one :func:`run_threaded` call."""

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=timeout)
        self.slots: list[Any] = [None] * size


class ThreadComm:
    """Rank ``rank`` of P threads sharing one :class:`_ThreadGroup`; made by :func:`run_threaded`.

    Collectives are an exchange through shared slots between two barriers; sums and folds
    run in rank order on every thread, so every rank gets the same bits, as with MPI.
    A barrier that waits longer than the group's timeout fails (``BrokenBarrierError``)
    rather than hanging.
    """

    def __init__(self, group: _ThreadGroup, rank: int) -> None:
        self._group = group
        self.rank = rank
        self.size = group.size
        self.traffic = Traffic()
        self._scratch = Scratch()

    def __repr__(self) -> str:
        return f"ThreadComm(rank={self.rank}, size={self.size})"

    def scratch(self, n: int) -> np.ndarray:
        return self._scratch.get(n)

    def _allgather(self, obj: Any) -> list[Any]:
        group = self._group
        group.slots[self.rank] = obj
        group.barrier.wait()
        gathered = list(group.slots)
        group.barrier.wait()  # nobody writes the next collective's slot before all have read
        return gathered

    def allreduce_sum(self, buf: np.ndarray) -> np.ndarray:
        buf = _reduction_buffer(buf)
        parts = self._allgather(buf.copy())
        total = parts[0].copy()
        for part in parts[1:]:
            total += part
        buf[...] = total
        self.traffic.add(buf.nbytes, buf.nbytes)
        return buf

    def combine_moments(
        self, count: int, mean: np.ndarray, M2: np.ndarray,
    ) -> tuple[int, np.ndarray, np.ndarray]:
        send = pack_moments(count, mean, M2)
        rows = np.stack(self._allgather(send))
        self.traffic.add(send.nbytes, rows.nbytes)
        return fold_moments(rows)

    def bcast(self, obj: T, root: int = 0) -> T:
        return copy.deepcopy(self._allgather(obj if self.rank == root else None)[root])

    def barrier(self) -> None:
        self._group.barrier.wait()

    def abort(self, message: str, code: int = 1) -> NoReturn:
        barrier = self._group.barrier
        if barrier.broken:  # another rank failed first: this rank is collateral, as under MPI
            raise threading.BrokenBarrierError(f"rank {self.rank}: {message}")
        barrier.abort()  # the other ranks' collectives raise BrokenBarrierError
        raise AbortedError(f"rank {self.rank} of {self.size} aborting: {message}")


class AbortedError(RuntimeError):
    """Raised by :meth:`ThreadComm.abort` (MPI ends the processes instead)."""


def run_threaded(size: int, fn: Callable[[ThreadComm], T], *, timeout: float = 30.0) -> list[T]:
    """Run ``fn(comm)`` on ``size`` threads, one :class:`ThreadComm` each; results in rank order.

    If a rank raises, the others' collectives fail at once (the barrier is broken) and the
    first rank's own exception, not a ``BrokenBarrierError`` it caused, is re-raised here.
    A collective that waits longer than ``timeout`` seconds fails instead of hanging.
    """
    group = _ThreadGroup(size, timeout)
    results: list[Any] = [None] * size
    errors: list[BaseException | None] = [None] * size

    def work(rank: int) -> None:
        try:
            results[rank] = fn(ThreadComm(group, rank))
        except BaseException as exc:
            errors[rank] = exc
            group.barrier.abort()

    threads = [threading.Thread(target=work, args=(rank,), daemon=True) for rank in range(size)]
    for thread in threads:
        thread.start()
    # A rank blocked in a collective fails after `timeout`; give it time to do so (a loaded
    # machine may wake it late) before calling it stuck.
    deadline = time.monotonic() + timeout + RUN_THREADED_GRACE
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError(f"run_threaded: a rank was still running after "
                           f"{timeout + RUN_THREADED_GRACE} s.")
    failed = [exc for exc in errors if exc is not None]
    if failed:
        primary = [exc for exc in failed if not isinstance(exc, threading.BrokenBarrierError)]
        raise (primary or failed)[0]
    return results


# -- choosing a communicator, failing cleanly ------------------------------------------------


def launched_size(environ: Mapping[str, str] | None = None) -> int:
    """Number of processes a launcher announced in the environment, 1 if none did."""
    environ = os.environ if environ is None else environ
    sizes = [1]
    for var in LAUNCHER_SIZE_VARS:
        try:
            sizes.append(int(environ.get(var, "1")))
        except ValueError:
            continue
    return max(sizes)


def default_comm(environ: Mapping[str, str] | None = None) -> Communicator:
    """:class:`MPIComm` when launched by ``mpiexec -n P`` with P > 1, else :class:`SingleProcess`.

    The launcher is detected from the environment (:data:`LAUNCHER_SIZE_VARS`) before
    mpi4py is imported, so a plain ``python`` run never initializes MPI.

    Raises
    ------
    RuntimeError
        If the launcher announced P > 1 processes but ``MPI_COMM_WORLD`` has one: mpi4py is
        linked against another MPI than the launcher's, and P copies would each train alone.
    """
    announced = launched_size(environ)
    if announced <= 1:
        return SingleProcess()
    comm = MPIComm()
    if comm.size != announced:
        MPI = comm._MPI
        raise RuntimeError(
            f"the launcher announced {announced} processes but MPI_COMM_WORLD has "
            f"{comm.size}: mpi4py uses {MPI.Get_library_version().splitlines()[0].strip()!r}, "
            "not the MPI of the mpiexec that started this process; launch with the mpiexec "
            "installed beside this Python (e.g. .venv/bin/mpiexec)."
        )
    return comm


@contextmanager
def abort_on_error(comm: Communicator) -> Iterator[None]:
    """End the whole job when this rank fails, instead of leaving the others in a collective.

    Around a distributed entry point: an exception (or ``SystemExit`` with a non-zero
    status) on any rank prints its traceback and one line ``bnprop: rank r of P aborting:
    ExcType: message`` and calls ``comm.abort`` (``MPI_Abort`` for :class:`MPIComm`). With
    one process the exception propagates unchanged, and so does a :class:`CollectiveError`
    (raised by every rank together, see :func:`agree`).

    Examples
    --------
    >>> comm = default_comm()
    >>> with abort_on_error(comm):
    ...     pass  # the job
    """
    try:
        yield
    except CollectiveError:
        raise  # every rank raised it together (agree): nobody waits, end normally
    except SystemExit as exc:
        if comm.size == 1 or exc.code in (None, 0):
            raise
        comm.abort(f"SystemExit: exit status {exc.code}", code=exc.code if isinstance(
            exc.code, int) else 1)
    except BaseException as exc:
        if comm.size == 1:
            raise
        traceback.print_exc()
        comm.abort(f"{type(exc).__name__}: {exc}")
