"""Learning-rate schedules: ``lr_t = lr * factor(t)``, t the number of steps taken."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bnprop._validate import InputError, check_choice, check_positive

SCHEDULE_KINDS = ("constant", "cosine", "step", "onecycle")

#: One-cycle shape (PyTorch's OneCycleLR defaults): the share of steps spent warming up,
#: the start ``lr / ONECYCLE_DIV`` and the end ``lr / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)``.
ONECYCLE_PCT = 0.3
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4


def _cos_anneal(start: float, end: float, pct: float) -> float:
    """From ``start`` at ``pct = 0`` to ``end`` at ``pct = 1`` along half a cosine."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule: ``lr_t = lr * factor(t)``, t the number of steps taken.

    ::

        constant   factor(t) = 1
        cosine     factor(t) = final + (1 - final) * (1 + cos(pi * min(t, T) / T)) / 2
                   with T = total_steps
        step       factor(t) = decay ** floor(t / every)
        onecycle   with T1 = 0.3 T - 1, T2 = T - 1, f0 = 1/25, f_end = f0 / 1e4:
                   factor(t) = f0 + (1 - f0) (1 - cos(pi t / T1)) / 2      t <= T1
                   factor(t) = f_end + (1 - f_end) (1 + cos(pi (t - T1) / (T2 - T1))) / 2
                                                                           t > T1

    ``cosine`` equals ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=total_steps,
    eta_min=final * lr)`` up to t = total_steps (then stays at ``final``); ``step`` equals
    ``StepLR(step_size=every, gamma=decay)``; ``onecycle`` equals ``OneCycleLR(max_lr=lr,
    total_steps=T)``'s learning rates (its momentum cycling is not done here). Build one
    with :meth:`constant`, :meth:`cosine`, :meth:`step`, :meth:`onecycle`, or by name for
    a run of ``total_steps`` steps with :meth:`from_name`.
    """

    kind: str = "constant"
    total_steps: int = 1
    final: float = 0.0
    every: int = 1
    decay: float = 1.0

    def __post_init__(self) -> None:
        check_choice(self.kind, "kind", SCHEDULE_KINDS)
        for name in ("total_steps", "every"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name}: expected an integer >= 1, got {value!r} instead.")
        if not (isinstance(self.final, int | float) and 0.0 <= self.final <= 1.0):
            raise InputError(f"final: expected a number in [0, 1], got {self.final!r} instead.")
        check_positive(self.decay, "decay")

    @classmethod
    def constant(cls) -> Schedule:
        """``factor(t) = 1``."""
        return cls("constant")

    @classmethod
    def cosine(cls, total_steps: int, final: float = 0.0) -> Schedule:
        """Cosine decay from 1 to ``final`` over ``total_steps`` steps."""
        return cls("cosine", total_steps=total_steps, final=final)

    @classmethod
    def step(cls, every: int, decay: float = 0.1) -> Schedule:
        """Multiply by ``decay`` every ``every`` steps."""
        return cls("step", every=every, decay=decay)

    @classmethod
    def onecycle(cls, total_steps: int) -> Schedule:
        """Warm up from ``1/25`` to 1 over 30% of ``total_steps``, then anneal to ``1/25e4``."""
        return cls("onecycle", total_steps=total_steps)

    @classmethod
    def from_name(cls, name: str, total_steps: int | None) -> Schedule:
        """The schedule a name means for a run of ``total_steps`` steps::

            "constant"   factor(t) = 1
            "cosine"     Schedule.cosine(total_steps): from 1 down to 0 at t = total_steps
            "step"       Schedule.step(every=max(1, total_steps // 3), decay=0.1):
                         x0.1 after each third of the run
            "onecycle"   Schedule.onecycle(total_steps)
        """
        check_choice(name, "schedule", SCHEDULE_KINDS)
        if name == "constant":
            return cls.constant()
        if total_steps is None:
            raise InputError(
                f"schedule: {name!r} needs the run's length: pass total_steps=... to the "
                "optimizer (or a Schedule object)."
            )
        if not isinstance(total_steps, int | np.integer) or total_steps < 1:
            raise InputError(
                f"total_steps: expected an integer >= 1, got {total_steps!r} instead."
            )
        if name == "cosine":
            return cls.cosine(int(total_steps))
        if name == "onecycle":
            return cls.onecycle(int(total_steps))
        return cls.step(every=max(1, int(total_steps) // 3), decay=0.1)

    def factor(self, t: int) -> float:
        """The factor of the learning rate at step ``t`` (0-based)."""
        if self.kind == "cosine":
            frac = min(t, self.total_steps) / self.total_steps
            return self.final + (1.0 - self.final) * (1.0 + math.cos(math.pi * frac)) / 2.0
        if self.kind == "step":
            return self.decay ** (t // self.every)
        if self.kind == "onecycle":
            f0 = 1.0 / ONECYCLE_DIV
            end1, end2 = ONECYCLE_PCT * self.total_steps - 1, self.total_steps - 1
            if t <= end1:
                return _cos_anneal(f0, 1.0, t / end1)
            return _cos_anneal(1.0, f0 / ONECYCLE_FINAL_DIV,
                               min(1.0, (t - end1) / max(end2 - end1, 1e-12)))
        return 1.0


def _check_schedule(schedule: object, total_steps: int | None) -> Schedule:
    if schedule is None:
        return Schedule.constant()
    if isinstance(schedule, str) and schedule in SCHEDULE_KINDS:
        return Schedule.from_name(schedule, total_steps)
    if not isinstance(schedule, Schedule):
        raise InputError(
            "schedule: expected None, 'constant', 'cosine', 'step', 'onecycle' or a Schedule "
            f"(Schedule.cosine(total_steps), Schedule.step(every, decay)), got {schedule!r} "
            "instead."
        )
    return schedule
