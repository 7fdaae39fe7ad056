"""Threads: the communicator protocol among P threads of one process, without MPI.

:func:`run_threaded` runs ``fn(comm)`` on P threads, each with its :class:`ThreadComm`;
for tests and for checking a distributed code path in-process. A collective is an exchange
through shared slots between two barriers, and every thread then sums (``allreduce_sum``)
or folds (``combine_moments``, :func:`~bnprop.distributed.collectives.fold_moments`) the
gathered parts in rank order::

    allreduce_sum:    total = ((buf_0 + buf_1) + buf_2) + ... + buf_{P-1}
    combine_moments:  fold_{p = 0, 1, ..., P-1} chan_combine((m_p, mean_p, M2_p))

so every rank gets the same bits, as with MPI. Failure mirrors ``MPI_Abort``: a rank that
aborts breaks the shared barrier, the others' collectives raise ``BrokenBarrierError``, and
:func:`run_threaded` re-raises the first rank's own exception; a collective that waits
longer than the timeout fails instead of hanging.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np

from bnprop.distributed.collectives import fold_moments, pack_moments
from bnprop.distributed.protocol import Scratch, T, Traffic, reduction_buffer

#: Seconds :func:`run_threaded` waits past its ``timeout`` for a rank to end.
RUN_THREADED_GRACE = 5.0


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
        buf = reduction_buffer(buf)
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
