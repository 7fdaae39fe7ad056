"""Checks of a step's batch and of a data-parallel step's arguments
(:class:`~bnprop.nn.Sequential`, ``comm``).

Every process calls with its rows ``X_p`` of a global batch of ``m_global = sum_p m_p``
rows. What is wrong is the same on every process (the global row count, the arguments)
or is found before any collective, so every process raises and none waits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bnprop._validate import InputError
from bnprop.loss import check_labels

if TYPE_CHECKING:
    from bnprop.distributed import Communicator


def prepare_batch(
    net: Any, X: object, y: object, comm: Communicator | None, m_global: int | None,
    sync_bn: bool, values: bool = True,
) -> tuple[np.ndarray, np.ndarray, Communicator | None, int | None]:
    """A step's batch validated (and the data-parallel arguments); ``comm`` of one process
    is the same as none. ``values=False``: :meth:`~bnprop.nn.Sequential._check_X` leaves
    the values of a matrix needing no conversion to the caller (one process only)."""
    net.flat.check_views()
    if comm is None or getattr(comm, "size", None) == 1:
        X, y = net._check_batch(X, y, values)
        if m_global is not None and m_global != X.shape[0]:
            raise InputError(f"m_global: expected the {X.shape[0]} rows of X in one "
                             f"process, got {m_global!r} instead.")
        return X, y, None, None
    return check_distributed_batch(net, X, y, comm, m_global, sync_bn)


def check_distributed_batch(
    net: Any, X: object, y: object, comm: Communicator, m_global: int | None, sync_bn: bool,
) -> tuple[np.ndarray, np.ndarray, Communicator, int]:
    """Validate this process's rows and find ``m_global`` (one small collective when not
    given); returns ``(X, y, comm, m_global)``."""
    from bnprop.distributed import Communicator as Protocol
    from bnprop.nn.batchnorm import BatchNorm1d

    if not isinstance(comm, Protocol):
        raise InputError(
            "comm: expected a bnprop.distributed.Communicator (SingleProcess, MPIComm, "
            f"ThreadComm), got {type(comm).__name__} instead."
        )
    if not isinstance(sync_bn, bool | np.bool_):
        raise InputError(f"sync_bn: expected True or False, got {sync_bn!r} instead.")
    X = net._check_X(X, training=False)
    y = check_labels(y, "y", X.shape[0], net._classes(X))
    local_bn = not sync_bn and any(isinstance(mod, BatchNorm1d) for mod in net.modules)
    if X.shape[0] < (2 if local_bn else 1):
        raise InputError(
            f"X: got {X.shape[0]} rows on process {comm.rank} of {comm.size}; every "
            "process needs " + ("2 rows with local batch statistics (sync_bn=False)"
                                if local_bn else "at least one row of the global batch")
            + " (split it with bnprop.distributed.shard)."
        )
    if m_global is None:
        m_global = int(comm.allreduce_sum(np.array([float(X.shape[0])]))[0])
    if isinstance(m_global, bool) or not isinstance(m_global, int | np.integer) \
            or m_global < 2:
        raise InputError(f"m_global: expected the global batch size, an int >= 2, got "
                         f"{m_global!r} instead.")
    return X, y, comm, int(m_global)


def check_global_rows(net: Any, m_global: int | None) -> None:
    """SyncBN counted the global rows in its first statistics: a wrong ``m_global``
    would scale the loss wrongly (the count is the same on every process: all raise)."""
    from bnprop.nn.plan import NormStep

    for step in net.steps:
        if isinstance(step, NormStep):  # BatchNorm2d counts N H W rows: H W per example
            per_example = step.stage.m // net._in_shape[0]
            if m_global is not None and step.stage.count != m_global * per_example:
                raise InputError(f"m_global: the processes hold "
                                 f"{step.stage.count // per_example} rows in all, got "
                                 f"m_global={m_global}.")
            return


def reduce_step(net: Any, comm: Communicator, loss: float, sync_bn: bool) -> float:
    """Sum the local gradient terms and the loss over the processes (one Allreduce);
    SyncBN's dgamma, dbeta are global already."""
    from bnprop.distributed import allreduce_packed

    synced = {id(step.norm) for step in net.steps
              if getattr(step, "norm", None) is not None and sync_bn}
    local = [g for mod in net.modules for p, g in mod.grads.items() if id(mod) not in synced]
    totals, (loss,) = allreduce_packed(comm, local, [loss])
    for g, total in zip(local, totals, strict=True):
        g[...] = total
    return loss
