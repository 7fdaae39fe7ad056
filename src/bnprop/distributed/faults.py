"""Failing cleanly: no rank of a data-parallel run is ever left waiting in a collective.

Two kinds of failure, two ways out:

* errors every rank meets together (a bad option, a missing file, found while setting up):
  :func:`agree` turns them into one :class:`CollectiveError` raised on every rank at once,
  so the job ends normally with one message;
* an error on one rank alone, anywhere: :func:`abort_on_error` around the entry point
  prints it and calls ``comm.abort``, which ends every rank (``MPI_Abort`` under MPI).
  It lets a :class:`CollectiveError` through, since no rank is waiting for that one.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from bnprop._validate import InputError
from bnprop.distributed.protocol import Communicator


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


# -- the entry point -------------------------------------------------------------------------


@contextmanager
def abort_on_error(comm: Communicator) -> Iterator[None]:
    """End the whole job when this rank fails, instead of leaving the others in a collective.

    Around a distributed entry point: an exception (or ``SystemExit`` with a non-zero
    status) on any rank prints its traceback and one line ``bnprop: rank r of P aborting:
    ExcType: message`` and calls ``comm.abort`` (``MPI_Abort`` for
    :class:`~bnprop.distributed.mpi.MPIComm`). With one process the exception propagates
    unchanged, and so does a :class:`CollectiveError` (raised by every rank together, see
    :func:`agree`).

    Examples
    --------
    >>> from bnprop.distributed import default_comm
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
