"""The communicator protocol: what the ranks of a data-parallel run exchange, and one rank alone.

Every rank calls each operation of :class:`Communicator`, in the same order. Two carry a
batch-normalized layer's reductions (:mod:`bnprop.distributed.collectives` gives the
equations): ``combine_moments``, the forward statistics of the global batch, and
``allreduce_sum``, the backward sums and the packed gradients. :class:`Traffic` counts the
payload of those two; ``bcast``, ``barrier`` and ``abort`` are for setting up and failing.

:class:`SingleProcess` is rank 0 of 1: every reduction is the identity, so a run without a
launcher takes the same code path as a distributed one at no cost. The other
implementations are :class:`~bnprop.distributed.mpi.MPIComm` (processes, mpi4py) and
:class:`~bnprop.distributed.threaded.ThreadComm` (threads, for tests).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import NoReturn, Protocol, TypeVar, runtime_checkable

import numpy as np

from bnprop._validate import InputError

T = TypeVar("T")


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
        :func:`~bnprop.distributed.collectives.allreduce_packed`."""
        ...


class Scratch:
    """One grow-only float64 buffer; ``get(n)`` is its first n entries (see
    :meth:`Communicator.scratch`)."""

    def __init__(self) -> None:
        self._buf = np.empty(0, dtype=np.float64)

    def get(self, n: int) -> np.ndarray:
        if n > self._buf.size:
            self._buf = np.empty(n, dtype=np.float64)
        return self._buf[:n]


def reduction_buffer(buf: np.ndarray) -> np.ndarray:
    """``buf`` itself when MPI can reduce it in place, else a C-contiguous float64 copy.

    Every communicator's ``allreduce_sum`` starts here, so all of them accept the same
    inputs and reject a non-numeric ``buf`` with the same message.
    """
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
        return reduction_buffer(buf)

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
