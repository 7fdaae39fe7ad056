"""The memory a training run needs, estimated before it allocates anything.

For layer sizes ``n_0, ..., n_L`` (inputs, hidden widths, classes), ``P`` parameters
(every weight matrix ``n_l x n_(l-1)`` and four vectors of ``n_l``: gamma, beta and the
running statistics) and a batch of ``B`` rows, in a dtype of ``s`` bytes::

    bytes ~= s * P * (3 + k)  +  s * B * sum(n_l) * 6

``3 + k`` copies of the parameters: themselves, their gradients, the copy a checkpoint
saves, and the optimizer's ``k`` (Adam 2, SGD with momentum 1, plain SGD 0); six
activation-sized arrays a layer for the forward cache and the backward pass. It is a lower
bound of what a step allocates, so a run it refuses could never have run here.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

from bnprop._validate import InputError


def training_bytes(sizes: Sequence[int], batch_size: int, itemsize: int,
                   optimizer_slots: int) -> int:
    """The estimate of the module docstring, in bytes."""
    params = sum(a * b + 4 * b for a, b in itertools.pairwise(sizes))
    return itemsize * (params * (3 + optimizer_slots) + batch_size * sum(sizes) * 6)


def available_bytes() -> int | None:
    """Memory available to a new allocation (Linux ``MemAvailable``, else physical); None
    when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB"


def check_memory(sizes: Sequence[int], batch_size: int, itemsize: int,
                 optimizer_slots: int, available: int | None = None) -> int:
    """Refuse, in one line with both numbers, a network this machine cannot hold.

    Returns the estimate in bytes.
    """
    need = training_bytes(sizes, batch_size, itemsize, optimizer_slots)
    have = available_bytes() if available is None else available
    if have is not None and need > have:
        raise InputError(
            f"hidden: the network {'-'.join(str(n) for n in sizes)} needs about {_gb(need)} "
            f"of memory to train (parameters, gradients, optimizer state, a batch's "
            f"activations), more than the {_gb(have)} available; choose smaller --hidden "
            "(or --batch-size)."
        )
    return need
