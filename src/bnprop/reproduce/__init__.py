"""Reproductions of Ioffe & Szegedy (2015) and Santurkar et al. (2018) with bnprop's own
gradients.

``bnprop reproduce fig1``          :func:`~bnprop.reproduce.fig1.run_fig1`: Figure 1, BN vs no BN
``bnprop reproduce frozen-stats``  :func:`~bnprop.reproduce.frozen_stats.run_frozen_stats`:
                                   the exact vs the handout's frozen-statistics gradient
``bnprop reproduce ics``           :func:`~bnprop.reproduce.ics.run_ics`: internal covariate
                                   shift (Santurkar et al., Def. 2.1, Fig. 3)
``bnprop reproduce landscape``     :func:`~bnprop.reproduce.landscape.run_landscape`: loss and
                                   gradient along the gradient (their Fig. 4)
``bnprop reproduce noisy-bn``      :func:`~bnprop.reproduce.noisy_bn.run_noisy_bn`: BN followed
                                   by per-unit noise (their Fig. 2)

Shared parts: ``options`` (options, data, record steps), ``lockstep`` (networks trained on
the same batches), ``experiment`` (every seed's lockstep run under one progress bar, and the
summary), ``records`` (seed aggregation, CSV), ``plotting`` (matplotlib, lazily), ``curves``
(the three arms of the Santurkar commands and their flat curves), ``noisy`` (``NoisyUnit``).
"""

from bnprop.reproduce.fig1 import run_fig1
from bnprop.reproduce.frozen_stats import run_frozen_stats
from bnprop.reproduce.ics import run_ics
from bnprop.reproduce.landscape import run_landscape
from bnprop.reproduce.noisy import NoisyUnit
from bnprop.reproduce.noisy_bn import run_noisy_bn
from bnprop.reproduce.options import ReproduceOptions

__all__ = ["NoisyUnit", "ReproduceOptions", "run_fig1", "run_frozen_stats", "run_ics",
           "run_landscape", "run_noisy_bn"]
