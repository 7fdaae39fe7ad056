"""``bnprop reproduce``: the command's shared options, its actions' parsers and their runs;
only ``bnprop.cli`` imports this module.

``fig1``, ``frozen-stats``: Ioffe & Szegedy (2015). ``ics``, ``landscape``, ``noisy-bn``:
Santurkar et al. (2018).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bnprop.reproduce.options import ReproduceOptions


def add_reproduce(sub: argparse._SubParsersAction, positive_float: Callable[[str], float],
                  command: Callable[[argparse.Namespace], int]) -> None:
    """``bnprop reproduce fig1 | frozen-stats`` (Ioffe & Szegedy 2015) and ``ics |
    landscape | noisy-bn`` (Santurkar et al. 2018): :mod:`bnprop.cli_reproduce`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", metavar="DIR",
                        help="output folder (default runs/ACTION-YYYYmmdd-HHMMSS)")
    common.add_argument("--steps", type=int, default=50_000,
                        help="training steps of 60 examples (default 50000, the paper's)")
    common.add_argument("--seeds", type=int, default=1, metavar="K",
                        help="run K seeds (init and data order) and draw the mean with a "
                        "min-max band (default 1)")
    common.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    common.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                        help="default sgd, as the paper")
    common.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="mnist",
                        help="default mnist")
    common.add_argument("--data-dir", metavar="DIR",
                        help="data folder (default ~/.cache/bnprop)")
    common.add_argument("--record-every", type=int, metavar="N",
                        help="record every N steps (default steps // 100)")
    common.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="default float32")
    common.add_argument("--threads", type=int, metavar="N",
                        help="compute threads (bnprop.threads.set_threads; default: the "
                        "cores; BLAS runs on one thread in each)")
    common.add_argument("--quiet", action="store_true", help="no progress output")
    p = sub.add_parser("reproduce", help="reproduce Ioffe & Szegedy (2015), Santurkar et al. "
                       "(2018)", description="Reproduce Ioffe & Szegedy (2015) and Santurkar "
                       "et al. (2018) on I&S's MNIST set-up (3 x 100 sigmoid units, batch 60).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_actions(actions, common, positive_float)  # fig1, frozen-stats, ics, ...
    p.set_defaults(func=command, unit=None)


def add_actions(actions: argparse._SubParsersAction, common: argparse.ArgumentParser,
                positive_float: Callable[[str], float]) -> None:
    """Add every action (with the shared options of ``common``) to ``actions``."""
    q = actions.add_parser(
        "fig1", parents=[common], help="Figure 1: BN vs no BN, accuracy and sigmoid inputs",
        description="Train the network with and without BN from the same weights on the same "
        "batches; write fig1.png (test accuracy; 15th, 50th, 85th percentiles of one last-layer "
        "sigmoid's input), fig1.csv and summary.json into --out.")
    q.add_argument("--lr", type=positive_float,
                   help="learning rate (default 0.05 for sgd, 0.001 for adam)")
    q.add_argument("--unit", type=int, help="unit 0..99 of the last hidden layer for panels "
                   "(b) and (c) (default drawn with --seed)")
    q = actions.add_parser(
        "frozen-stats", parents=[common],
        help="the exact BN gradient vs the handout's frozen statistics, in training",
        description="Train the BN network twice from the same start on the same batches, with "
        "the exact gradient and with mu_B, var_B held fixed (the handout's part 4); write "
        "frozen_stats.png, frozen_stats.csv and summary.json into --out.")
    q.add_argument("--lr", type=positive_float,
                   help="learning rate (default 0.5 for sgd, as bnprop train; 0.001 for adam)")
    q = actions.add_parser(
        "ics", parents=[common],
        help="Santurkar et al. 2018, Fig. 3: internal covariate shift, BN vs no BN vs frozen",
        description="Train the network without BN, with BN (exact gradient) and with BN "
        "(frozen-statistics gradient) on the same batches; at each record, for each layer, "
        "G = its weight gradient and G' = the same after the layers below took their step: "
        "write ics.png (||G - G'||, cos(G, G')), ics.csv and summary.json into --out.")
    q.add_argument("--lr", type=positive_float,
                   help="learning rate (default 0.05 for sgd, 0.001 for adam)")
    q = actions.add_parser(
        "landscape", parents=[common],
        help="Santurkar et al. 2018, Fig. 4: loss and gradient along the gradient direction",
        description="Train the three networks (no BN, BN, BN with frozen statistics) on the "
        "same batches; at each record, move along the gradient by 0.5 to 4 times the "
        "learning rate: write landscape.png (loss variation, gradient predictiveness, "
        "effective beta-smoothness), landscape.csv and summary.json into --out.")
    q.add_argument("--lr", type=positive_float, help="learning rate (default 0.05; sgd only)")
    q = actions.add_parser(
        "noisy-bn", parents=[common],
        help="Santurkar et al. 2018, Fig. 2: BN followed by per-unit noise, vs BN and no BN",
        description="Train four networks on the same batches: no BN, BN, BN with frozen "
        "statistics, and BN followed by noise A = s*BN + b (s ~ U(1, scale), b ~ U(-shift, "
        "shift), per unit, redrawn every step; off in inference): write noisy_bn.png (test "
        "accuracy; percentiles of one sigmoid's input), noisy_bn.csv and summary.json.")
    q.add_argument("--lr", type=positive_float,
                   help="learning rate (default 0.05 for sgd, 0.001 for adam)")
    q.add_argument("--unit", type=int, help="unit 0..99 of the last hidden layer whose input "
                   "is recorded (default drawn with --seed, as fig1)")
    q.add_argument("--noise-shift", type=float, default=1.0, metavar="B",
                   help="b ~ U(-B, B) (default 1.0)")
    q.add_argument("--noise-scale", type=float, default=2.0, metavar="S",
                   help="s ~ U(1, S), S >= 1 (default 2.0)")


def run_action(args: argparse.Namespace, options: ReproduceOptions, out: str | Path) -> str:
    """Run the reproduction ``args.action``; its report line."""
    from bnprop.reproduce import fig1, frozen_stats, ics, landscape, noisy_bn

    progress = not args.quiet
    if args.action == "fig1":
        return fig1.report_line(fig1.run_fig1(options, out, unit=args.unit,
                                              progress=progress), out)
    if args.action == "frozen-stats":
        summary = frozen_stats.run_frozen_stats(options, out, progress=progress)
        return frozen_stats.report_line(summary, out)
    if args.action == "ics":
        return ics.report_line(ics.run_ics(options, out, progress=progress), out)
    if args.action == "landscape":
        summary = landscape.run_landscape(options, out, progress=progress)
        return landscape.report_line(summary, out)
    summary = noisy_bn.run_noisy_bn(options, out, unit=args.unit, shift=args.noise_shift,
                                    scale=args.noise_scale, progress=progress)
    return noisy_bn.report_line(summary, out)
