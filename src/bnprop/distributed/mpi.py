"""MPI: :class:`MPIComm`, a communicator over mpi4py, and :func:`default_comm`, which picks one.

mpi4py is imported when an :class:`MPIComm` is constructed, never at ``import bnprop``
(importing it initializes MPI); without it, constructing one raises an ``ImportError``
naming the extra to install, ``pip install 'bnprop[mpi]'``. Launch with::

    mpiexec -n 4 python -m bnprop ...           # default_comm() is then an MPIComm

How the two reductions of a batch-normalized layer map onto MPI
(:mod:`bnprop.distributed.collectives` gives the equations)::

    combine_moments   MPI_Allgather of [m_p, mean_p (n), M2_p (n)], then a fold in rank order
    allreduce_sum     MPI_Allreduce(MPI_IN_PLACE, buf, MPI_SUM)

A rank that fails must take the job down (``MPI_Abort``) rather than leave the others
waiting in a collective: :meth:`MPIComm.abort`, called by
:func:`~bnprop.distributed.faults.abort_on_error`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any, NoReturn

import numpy as np

from bnprop.distributed.collectives import fold_moments, pack_moments
from bnprop.distributed.protocol import (
    Communicator,
    Scratch,
    SingleProcess,
    T,
    Traffic,
    reduction_buffer,
)

#: Environment variables through which launchers announce the number of processes:
#: MPICH/Hydra and Intel MPI (PMI_SIZE, MPI_LOCALNRANKS), Open MPI, PMIx, MVAPICH2.
LAUNCHER_SIZE_VARS = (
    "PMI_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE",
)

MPI_EXTRA_HINT = "pip install 'bnprop[mpi]'"

#: Seconds :meth:`MPIComm.abort` waits after its last write before ``MPI_Abort``, so that
#: the launcher forwards the rank's final stderr lines before it kills the job.
ABORT_GRACE = 0.5


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
        buf = reduction_buffer(buf)
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


# -- choosing a communicator -----------------------------------------------------------------


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
