"""``bnprop train --arch mlp | cnn``: the defaults, checks and options of the CNN.

``--arch cnn`` trains :func:`bnprop.model_cnn.cnn` on the dataset's images
``(n, 1, 28, 28)``. The options it is not given take :data:`CNN_DEFAULTS`, chosen by
measurement on Fashion-MNIST (docs/cnn.md): SGD with Nesterov momentum 0.9, L2 decay
5e-4, one-cycle schedule peaking at lr 0.1, batch 128, 4 epochs (1872 steps of 128),
evaluated and checkpointed once an epoch.
"""

from __future__ import annotations

import argparse
from typing import Any

from bnprop._validate import InputError, check_choice

ARCHS = ("mlp", "cnn")

#: ``--arch cnn``'s defaults, for the options not given.
CNN_DEFAULTS: dict[str, Any] = {
    "hidden": (128,), "activation": "relu", "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
    "nesterov": True, "weight_decay": 5e-4, "schedule": "onecycle", "batch_size": 128,
    "steps": 4 * (60_000 // 128), "eval_every": 60_000 // 128,
    "checkpoint_every": 60_000 // 128,
}


def arch_defaults(given: dict[str, Any]) -> dict[str, Any]:
    """``given`` with :data:`CNN_DEFAULTS` under every option it lacks when it says
    ``arch="cnn"`` (unchanged otherwise); with another optimizer than SGD, without SGD's
    lr, momentum and nesterov."""
    if given.get("arch") != "cnn":
        return given
    defaults = dict(CNN_DEFAULTS)
    if given.get("optimizer", "sgd") != "sgd":  # SGD's settings do not apply
        for key in ("lr", "momentum", "nesterov"):
            del defaults[key]
    return {**defaults, **given}


def check_arch(config: Any) -> None:
    """The options of a :class:`~bnprop.train.TrainConfig` that concern the arch; one line
    naming the option if wrong."""
    check_choice(config.arch, "arch", ARCHS)
    if not config.channels or any(int(c) < 1 for c in config.channels):
        raise InputError(f"channels: expected one or more channel counts >= 1, got "
                         f"{list(config.channels)} instead.")
    if config.nesterov and (config.optimizer != "sgd" or config.momentum == 0):
        raise InputError("nesterov: needs --optimizer sgd with --momentum > 0.")
    if config.arch == "cnn" and (config.activation != "relu" or not config.batchnorm):
        raise InputError("arch: the cnn has ReLU and batch normalization in every stage; "
                         "drop --activation and --no-batchnorm.")


def check_options_apply(given: dict[str, Any]) -> None:
    """The options a user gave for a new run (``given``: only those set explicitly) that
    it would not use, one line naming the first: ``--channels`` without ``--arch cnn``;
    ``--stats``, ``--running``, ``--sync-bn`` or ``--local-bn`` with ``--no-batchnorm``
    (its hidden layers have no batch normalization). Silently ignored, they would make a
    run other than the one asked for."""
    if "channels" in given and given.get("arch", "mlp") != "cnn":
        channels = ",".join(map(str, given["channels"]))
        raise InputError(f"channels: applies to --arch cnn only, got --channels {channels} "
                         f"with --arch {given.get('arch', 'mlp')}.")
    if given.get("batchnorm", True) is False:
        for key, option in (("stats", "--stats"), ("running", "--running"),
                            ("sync_bn", "--sync-bn" if given.get("sync_bn") else "--local-bn")):
            if key in given:
                shown = option if key == "sync_bn" else f"{option} {given[key]}"
                raise InputError(f"{key}: applies to batch-normalized layers only, got "
                                 f"{shown} with --no-batchnorm.")


def build_cnn(config: Any, n_in: int, n_classes: int) -> Any:
    """The CNN of ``config`` for square one-channel images of ``n_in`` pixels."""
    import math

    from bnprop.model_cnn import cnn

    return cnn(config.channels, config.hidden, n_classes=n_classes,
               image_size=math.isqrt(n_in), dtype=config.dtype, seed=config.seed,
               stats=config.stats, running=config.running)


def add_arch_options(p: argparse.ArgumentParser) -> None:
    """``--arch``, ``--channels`` and ``--nesterov`` of ``bnprop train``."""
    p.add_argument("--arch", choices=ARCHS, help="mlp (default) or cnn: conv 3x3 -> BN2d -> "
                   "ReLU -> max-pool 2 per --channels entry, then --hidden (docs/cnn.md); "
                   "cnn's defaults: sgd, nesterov, lr 0.1, onecycle, batch 128, 4 epochs")
    p.add_argument("--channels", metavar="C1,C2,...", help="cnn channels (default 16,32)")
    p.add_argument("--nesterov", action="store_const", const=True,
                   help="Nesterov momentum (SGD)")
