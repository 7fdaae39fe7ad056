"""Train several networks in lockstep: the same batches, in the same order, step by step.

Step ``s`` (0-based) gives every running network one optimizer step on the batch
``order.indices(s)``. After ``s`` steps, for each ``s`` in ``record_steps``, each running
network is measured (``measure(arm, s, X_next, y_next)``, where ``X_next, y_next`` is the
batch of step ``s``, the one the network is about to train on) and the values are appended
to its curves, with ``train_loss``::

    train_loss(s) = mean of the batch losses of the steps since the previous record
    train_loss(0) = the loss of the first batch before any update

(a step's batch loss is computed before its update, as :meth:`bnprop.model.MLP.train_step`
returns it). A network stops, and records ``diverged_at``, at the first of:

    its batch loss at step s is NaN or inf          diverged_at = s + 1 (the steps taken)
    a parameter is NaN or inf at the record after s steps    diverged_at = s

(the first is :func:`bnprop.train.train`'s convention); the other networks go on.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Values a measurement returns, by name.
Values = dict[str, float]


@dataclass(eq=False)
class Arm:
    """One network of a lockstep run, and what was recorded of it.

    ``steps[i]`` is the step of the i-th record; ``curves[name][i]`` its value (``None``
    where undefined). ``initial_W_sha256`` is :func:`weights_sha256` of the start.
    """

    name: str
    net: Any
    optimizer: Any
    steps: list[int] = field(default_factory=list)
    curves: dict[str, list[float | None]] = field(default_factory=dict)
    diverged_at: int | None = None
    last_loss: float | None = None
    initial_W_sha256: str = ""
    _loss_sum: float = 0.0
    _loss_count: int = 0

    def last(self, name: str) -> float | None:
        """The latest recorded value of ``name`` (None before the first record)."""
        values = self.curves.get(name)
        return values[-1] if values else None

    def _record(self, step: int, values: Values) -> None:
        loss = self._loss_sum / self._loss_count if self._loss_count else None
        self._loss_sum, self._loss_count = 0.0, 0
        self.steps.append(step)
        for name, value in {"train_loss": loss, **values}.items():
            self.curves.setdefault(name, []).append(value)


def weights_sha256(net: Any) -> str:
    """SHA-256 of every ``W`` of ``net`` (its ``parameters()`` ending in ``.W``), in order."""
    h = hashlib.sha256()
    for name, value in net.parameters().items():
        if name.endswith(".W"):
            h.update(name.encode())
            h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def _finite(net: Any) -> bool:
    return all(bool(np.isfinite(p).all()) for p in net.parameters().values())


def run_lockstep(
    arms: Sequence[Arm],
    X: np.ndarray,
    y: np.ndarray,
    order: Any,
    *,
    steps: int,
    record_steps: Sequence[int],
    measure: Callable[[Arm, int, np.ndarray, np.ndarray], Values],
    on_step: Callable[[int], None] | None = None,
) -> str:
    """Train ``arms`` for ``steps`` steps on the batches of ``order`` (module docstring).

    Parameters
    ----------
    arms : sequence of Arm
        Fresh networks and their optimizers; their curves are filled in place.
    X, y : ndarray
        The training split.
    order : BatchOrder
        ``order.indices(s)``: the example indices of step ``s``.
    steps : int
    record_steps : sequence of int
        Steps after which to measure, in 0..steps.
    measure : callable
        ``measure(arm, s, X_next, y_next) -> {name: value}``; must not change the network.
    on_step : callable, optional
        Called with ``s + 1`` after step ``s``.

    Returns
    -------
    str
        SHA-256 of the example indices of every step, in order: the batches every arm saw.
    """
    to_record = set(record_steps)
    batches = hashlib.sha256()
    for arm in arms:
        arm.initial_W_sha256 = weights_sha256(arm.net)
    first_loss_pending = {arm.name for arm in arms}
    for step in range(steps + 1):
        running = [arm for arm in arms if arm.diverged_at is None]
        if not running:
            break
        idx = order.indices(step)
        X_next, y_next = X[idx], y[idx]
        if step in to_record:
            for arm in running:
                if not _finite(arm.net):
                    arm.diverged_at = step
                    continue
                arm._record(step, measure(arm, step, X_next, y_next))
        if step == steps:
            break
        batches.update(np.ascontiguousarray(idx, dtype=np.int64).tobytes())
        for arm in running:
            if arm.diverged_at is not None:
                continue
            loss = float(arm.net.train_step(X_next, y_next, arm.optimizer))
            arm.last_loss = loss
            if not math.isfinite(loss):
                arm.diverged_at = step + 1
                continue
            if arm.name in first_loss_pending and arm.steps and arm.steps[0] == 0:
                arm.curves["train_loss"][0] = loss
            first_loss_pending.discard(arm.name)
            arm._loss_sum += loss
            arm._loss_count += 1
        if on_step is not None:
            on_step(step + 1)
    return batches.hexdigest()
