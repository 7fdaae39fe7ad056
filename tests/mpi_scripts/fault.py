"""Under ``mpiexec -n P``: rank 1 fails in the way MODE names; every other rank enters a
layer forward, a collective that cannot complete without rank 1.

MODE: ``raise`` (an exception), ``sysexit`` (``sys.exit(2)``), ``input`` (an InputError
from a bad array, on rank 1 only), ``exit`` (``os._exit(3)``: dies without MPI_Finalize),
``kill`` (SIGKILL), ``exit0`` (``os._exit(0)``). A surviving rank prints ``rank r done``.

    mpiexec -n 3 python tests/mpi_scripts/fault.py raise
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

import bnprop
from bnprop.distributed import abort_on_error, default_comm, shard


def main() -> None:
    mode = sys.argv[1]
    comm = default_comm()
    with abort_on_error(comm):
        rng = np.random.default_rng(0)
        O, W = rng.standard_normal((12, 4)), rng.standard_normal((3, 4))
        gamma, beta = np.ones(3), np.zeros(3)
        rows = shard(O.shape[0], comm.rank, comm.size)
        if comm.rank == 1:
            if mode == "raise":
                raise ValueError("rank 1 failed on purpose")
            if mode == "sysexit":
                sys.exit(2)
            if mode == "input":
                W = W[:, :3]  # O has 4 columns: InputError on this rank alone
            if mode == "exit":
                os._exit(3)
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "exit0":
                os._exit(0)
        cache = bnprop.layer_forward(O[rows], W, gamma, beta, comm=comm)
        bnprop.layer_backward(np.ones_like(cache.Y), cache)
        print(f"rank {comm.rank} done", flush=True)


if __name__ == "__main__":
    main()
