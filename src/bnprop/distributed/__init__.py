"""Data parallelism: what the processes of a run exchange, behind one interface.

A global batch is split row-wise over P processes (ranks); each batch-normalized layer
reduces its statistics forward and two per-feature sums backward across them, and a
training step sums the remaining gradients and the loss in one more collective. The
modules, one idea each:

* :mod:`~bnprop.distributed.protocol`: the :class:`Communicator` protocol every rank
  speaks, :class:`Traffic`, and :class:`SingleProcess` (rank 0 of 1, every reduction the
  identity).
* :mod:`~bnprop.distributed.collectives`: the equations of what is reduced per layer and
  per step (Chan's combination of the moments, the backward sums), and the functions on a
  communicator: :func:`shard`, :func:`pack_moments`, :func:`fold_moments`,
  :func:`allreduce_packed`, :func:`check_replicas`.
* :mod:`~bnprop.distributed.mpi`: :class:`MPIComm` over mpi4py, imported when one is
  constructed (``import bnprop`` never imports it; ``pip install 'bnprop[mpi]'``), and
  :func:`default_comm`, which picks it under ``mpiexec -n P`` and :class:`SingleProcess`
  otherwise.
* :mod:`~bnprop.distributed.threaded`: :class:`ThreadComm` and :func:`run_threaded`, the
  same protocol among P threads of one process, for tests and in-process checks.
* :mod:`~bnprop.distributed.faults`: :func:`agree` and :func:`abort_on_error`, so that no
  rank is ever left waiting in a collective.
* :mod:`~bnprop.distributed.bench`: the step time, measured under ``mpiexec`` and modelled
  for P processes on a network (``python -m bnprop.distributed.bench``; not imported here).

Launch with::

    mpiexec -n 4 python -m bnprop ...           # default_comm() is then an MPIComm
"""

from bnprop.distributed.collectives import (
    allreduce_packed,
    check_replicas,
    fold_moments,
    pack_moments,
    shard,
)
from bnprop.distributed.faults import CollectiveError, abort_on_error, agree, error_message
from bnprop.distributed.mpi import (
    ABORT_GRACE,
    LAUNCHER_SIZE_VARS,
    MPI_EXTRA_HINT,
    MPIComm,
    default_comm,
    launched_size,
)
from bnprop.distributed.protocol import Communicator, Scratch, SingleProcess, Traffic
from bnprop.distributed.threaded import (
    RUN_THREADED_GRACE,
    AbortedError,
    ThreadComm,
    run_threaded,
)

__all__ = [
    "ABORT_GRACE",
    "LAUNCHER_SIZE_VARS",
    "MPI_EXTRA_HINT",
    "RUN_THREADED_GRACE",
    "AbortedError",
    "CollectiveError",
    "Communicator",
    "MPIComm",
    "Scratch",
    "SingleProcess",
    "ThreadComm",
    "Traffic",
    "abort_on_error",
    "agree",
    "allreduce_packed",
    "check_replicas",
    "default_comm",
    "error_message",
    "fold_moments",
    "launched_size",
    "pack_moments",
    "run_threaded",
    "shard",
]
