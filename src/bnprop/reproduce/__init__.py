"""Reproductions of Ioffe & Szegedy (2015) with bnprop's own gradients.

``bnprop reproduce fig1``          :func:`~bnprop.reproduce.fig1.run_fig1`: Figure 1, BN vs no BN
``bnprop reproduce frozen-stats``  :func:`~bnprop.reproduce.frozen_stats.run_frozen_stats`:
                                   the exact vs the handout's frozen-statistics gradient

Shared parts: ``options`` (options, data, record steps), ``lockstep`` (networks trained on
the same batches), ``experiment`` (every seed's lockstep run under one progress bar, and the
summary), ``records`` (seed aggregation, CSV), ``plotting`` (matplotlib, lazily).
"""

from bnprop.reproduce.fig1 import run_fig1
from bnprop.reproduce.frozen_stats import run_frozen_stats
from bnprop.reproduce.options import ReproduceOptions

__all__ = ["ReproduceOptions", "run_fig1", "run_frozen_stats"]
