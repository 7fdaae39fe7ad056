"""The GEMM floor of a case: its GEMMs' flops at the GEMM peak measured in the same run.

A BN layer ``(m, n_in) -> (m, n_out)`` runs three GEMMs of ``2 m n_in n_out`` flops each::

    forward  Z  = O W^T        backward  dW = dZ^T O,   dO = dZ W

A train step of ``sizes = (n_0, ..., n_L)`` on ``m`` rows runs, for every layer ``l``,
the forward and the dW GEMM, and the dO GEMM for every layer but the first (nobody needs
the gradient of the data)::

    flops = sum_l 4 m n_{l-1} n_l  +  sum_{l >= 2} 2 m n_{l-1} n_l

An evaluation of ``n`` examples is a forward pass: ``sum_l 2 n n_{l-1} n_l``.
``floor_s = flops / peak``: no implementation that does these GEMMs at the measured peak
(a large square GEMM, :func:`bnprop.bench.machine.gemm_peak`) takes less time, so
``time / floor_s >= 1`` in practice and says how far a step is from GEMM-bound.
Absolute speeds differ by 3x or more between machines; this multiple, like every ratio
of the bench, compares numbers of one run.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def layer_flops(m: int, n_in: int, n_out: int) -> int:
    """Flops of one BN layer's forward + backward GEMMs: ``3 * 2 m n_in n_out``."""
    return 6 * m * n_in * n_out


def forward_flops(sizes: Sequence[int], m: int) -> int:
    """Flops of a forward pass of ``m`` rows: ``sum_l 2 m n_{l-1} n_l``."""
    return sum(2 * m * a * b for a, b in itertools.pairwise(sizes))


def step_flops(sizes: Sequence[int], m: int) -> int:
    """Flops of a train step's GEMMs on ``m`` rows (module docstring)."""
    pairs = list(itertools.pairwise(sizes))
    return 2 * forward_flops(sizes, m) + sum(2 * m * a * b for a, b in pairs[1:])


def floor_seconds(flops: int, peak_flops_per_s: float) -> float:
    """``flops / peak``: the time of the GEMMs alone at the measured GEMM peak."""
    return flops / peak_flops_per_s
