"""Settings changed by assignment between steps: checked at the assignment, and used.

An optimizer's hyperparameters and a BatchNorm layer's ``eps``, ``momentum``, ``running``
and ``stats`` are plain attributes a user may set (``opt.lr = 0.01``). A bad value must
fail at the assignment, in one line naming the setting, and leave the old value in
place; a good one must act exactly as the same value given to the constructor.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnprop import InputError
from bnprop.nn import BatchNorm1d, BatchNorm2d, Linear, Sequential, Sigmoid
from bnprop.optim import SGD, Adam, Schedule

BAD = [
    (lambda: SGD(0.1), "lr", float("nan")),
    (lambda: SGD(0.1), "lr", -1.0),
    (lambda: SGD(0.1), "lr", 0.0),
    (lambda: SGD(0.1), "lr", "x"),
    (lambda: SGD(0.1), "weight_decay", float("inf")),
    (lambda: SGD(0.1), "weight_decay", -0.1),
    (lambda: SGD(0.1), "momentum", 1.0),
    (lambda: SGD(0.1), "momentum", None),
    (lambda: SGD(0.1, momentum=0.9), "nesterov", "yes"),
    (lambda: SGD(0.1), "nesterov", True),  # momentum 0
    (lambda: SGD(0.1, momentum=0.9, nesterov=True), "momentum", 0.0),
    (lambda: SGD(0.1), "schedule", "linear"),
    (lambda: SGD(0.1), "schedule", "cosine"),  # no total_steps to build it from
    (lambda: SGD(0.1), "t", -1),
    (lambda: Adam(), "t", 2.5),
    (lambda: Adam(), "t", True),
    (lambda: Adam(), "betas", (0.9, 2.0)),
    (lambda: Adam(), "betas", 0.9),
    (lambda: Adam(), "eps", -1e-8),
    (lambda: Adam(), "lr", float("inf")),
    (lambda: BatchNorm1d(4), "eps", -1.0),
    (lambda: BatchNorm1d(4), "eps", float("nan")),
    (lambda: BatchNorm1d(4), "momentum", 5.0),
    (lambda: BatchNorm1d(4), "momentum", 0.0),
    (lambda: BatchNorm1d(4), "running", "foo"),
    (lambda: BatchNorm1d(4), "stats", None),
    (lambda: BatchNorm2d(4), "eps", 0.0),
    (lambda: BatchNorm2d(4), "stats", "exactly"),
]


@pytest.mark.parametrize(("make", "name", "value"), BAD)
def test_a_bad_assignment_fails_there_naming_the_setting_and_keeps_the_old_value(
        make, name, value):
    obj = make()
    before = getattr(obj, name)
    with pytest.raises(InputError, match=rf"^{name}(\[\d\])?: ") as info:
        setattr(obj, name, value)
    assert "\n" not in str(info.value)
    assert getattr(obj, name) == before


def test_nesterov_and_momentum_change_in_an_order_that_keeps_them_consistent():
    opt = SGD(0.1, momentum=0.9, nesterov=True)
    opt.nesterov = False
    opt.momentum = 0.0
    assert (opt.momentum, opt.nesterov) == (0.0, False)
    opt.momentum = np.float32(0.5)
    opt.nesterov = np.bool_(True)
    assert type(opt.momentum) is float and opt.nesterov is True


def _net(dtype: str) -> Sequential:
    rng = np.random.default_rng(3)
    net = Sequential(Linear(12, 16, bias=False, dtype=dtype), BatchNorm1d(16, dtype=dtype),
                     Sigmoid(dtype=dtype), Linear(16, 5, dtype=dtype))
    for _, p in net.named_parameters():
        p[...] = rng.standard_normal(p.shape)
    return net


def _batch(dtype: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(10 + k)
    return rng.standard_normal((20, 12)).astype(dtype), rng.integers(0, 5, 20)


def _same(a: Sequential, b: Sequential) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        np.testing.assert_array_equal(p, q, err_msg=name)
    for (name, p), (_, q) in zip(a.named_buffers(), b.named_buffers(), strict=True):
        np.testing.assert_array_equal(p, q, err_msg=name)


CHANGES = [
    ("sgd", {"lr": 0.05}),
    ("sgd", {"momentum": 0.5, "nesterov": True, "weight_decay": 0.01}),
    ("sgd", {"schedule": Schedule.step(1, 0.5)}),
    ("adam", {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("bn", {"eps": 1e-3, "momentum": 0.3}),
    ("bn", {"running": "average", "stats": "frozen"}),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("who", "change"), CHANGES)
def test_a_setting_changed_between_steps_acts_as_if_given_to_the_constructor(
        dtype, who, change):
    """Two steps, then the change by assignment; on the other side, fresh objects built
    with the new values and given the same state. Three more steps keep them equal bit
    for bit (the compiled step keeps the settings between steps: it must see the new)."""
    def opt_of(kw: dict) -> SGD | Adam:
        base = {"lr": 1e-2} if who == "adam" else {"lr": 0.1, "momentum": 0.9}
        return (Adam if who == "adam" else SGD)(**{**base, **kw})

    changed, opt = _net(dtype), opt_of({})
    for k in range(2):
        changed.train_step(*_batch(dtype, k), opt)
    for name, value in change.items():
        setattr(changed.modules[1] if who == "bn" else opt, name, value)

    bn_kw = change if who == "bn" else {}
    fresh = Sequential(*[BatchNorm1d(16, dtype=dtype, **bn_kw) if isinstance(m, BatchNorm1d)
                         else m
                         for m in _net(dtype).modules])
    for (_, p), (_, q) in zip(fresh.named_parameters(), changed.named_parameters(),
                              strict=True):
        p[...] = q
    for (_, p), (_, q) in zip(fresh.named_buffers(), changed.named_buffers(), strict=True):
        p[...] = q
    opt_fresh = opt_of({} if who == "bn" else change)
    opt_fresh.load_state_dict(opt.state_dict())
    _same(changed, fresh)

    for k in range(2, 5):
        assert changed.train_step(*_batch(dtype, k), opt) == \
            fresh.train_step(*_batch(dtype, k), opt_fresh)
    _same(changed, fresh)
    assert opt.t == opt_fresh.t == 5


def test_the_step_count_takes_numpy_integers_as_int() -> None:
    opt = Adam()
    opt.t = np.int64(3)
    assert type(opt.t) is int and opt.t == 3
