"""Optimizers: hand steps, torch.optim step by step, schedules, exact resume, validation."""

from __future__ import annotations

import io
import typing

import numpy as np
import pytest

from bnprop import InputError
from bnprop.optim import SGD, Adam, Schedule
from tests.conftest import rel_err

SHAPES = {"a.W": (4, 3), "a.gamma": (4,), "out.b": (2,)}


def _params(seed: int = 0, dtype: type = np.float64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def _grads(rng: np.random.Generator, dtype: type = np.float64) -> dict[str, np.ndarray]:
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def _torch_run(make_opt, n_steps: int, seed: int = 0, scheduler=None):
    """Apply torch's optimizer to the same start and gradients; return the parameters."""
    torch = pytest.importorskip("torch")
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in _params(seed).items()}
    opt = make_opt(list(tp.values()))
    sched = scheduler(opt) if scheduler else None
    rng = np.random.default_rng(seed + 100)
    for _ in range(n_steps):
        for k, g in _grads(rng).items():
            tp[k].grad = torch.tensor(g)
        opt.step()
        if sched:
            sched.step()
    return {k: v.detach().numpy() for k, v in tp.items()}


def _ours_run(opt, n_steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    params = _params(seed)
    rng = np.random.default_rng(seed + 100)
    for _ in range(n_steps):
        opt.step(params, _grads(rng))
    return params


def test_sgd_hand_steps() -> None:
    p = {"w": np.array([1.0, 2.0])}
    opt = SGD(0.1, momentum=0.5, weight_decay=0.2)
    opt.step(p, {"w": np.array([1.0, 0.0])})
    # g' = g + 0.2 p = (1.2, 0.4); v = g'; p = p - 0.1 v = (0.88, 1.96)
    np.testing.assert_allclose(p["w"], [0.88, 1.96], rtol=1e-15)
    opt.step(p, {"w": np.array([0.0, 1.0])})
    # g' = (0.176, 1.392); v = 0.5 (1.2, 0.4) + g' = (0.776, 1.592); p -= 0.1 v
    np.testing.assert_allclose(p["w"], [0.88 - 0.0776, 1.96 - 0.1592], rtol=1e-15)


def test_adam_first_step_is_lr_times_sign() -> None:
    # t = 1: m = (1 - b1) g, v = (1 - b2) g^2, so the bias-corrected step is lr * g / (|g| + eps').
    p = {"w": np.array([1.0, 1.0, 1.0])}
    Adam(0.01, eps=1e-12).step(p, {"w": np.array([3.0, -0.5, 1e-3])})
    np.testing.assert_allclose(p["w"], [0.99, 1.01, 0.99], rtol=1e-9)


@pytest.mark.parametrize(
    ("kwargs"),
    [{"lr": 0.1}, {"lr": 0.05, "momentum": 0.9}, {"lr": 0.3, "momentum": 0.5, "weight_decay": 0.01}],
)
def test_sgd_equals_torch(kwargs: dict) -> None:
    torch = pytest.importorskip("torch")
    ref = _torch_run(lambda ps: torch.optim.SGD(ps, **kwargs), 15)
    ours = _ours_run(SGD(**kwargs), 15)
    for k in SHAPES:
        assert rel_err(ours[k], ref[k]) < 1e-12, k


@pytest.mark.parametrize(
    ("kwargs"),
    [{}, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}, {"lr": 3e-3, "weight_decay": 0.1}],
)
def test_adam_equals_torch(kwargs: dict) -> None:
    torch = pytest.importorskip("torch")
    ref = _torch_run(lambda ps: torch.optim.Adam(ps, **kwargs), 15)
    ours = _ours_run(Adam(**kwargs), 15)
    for k in SHAPES:
        assert rel_err(ours[k], ref[k]) < 1e-12, k


def test_schedule_factors_by_hand() -> None:
    cos = Schedule.cosine(4, final=0.2)
    assert [cos.factor(t) for t in (0, 2, 4, 9)] == pytest.approx([1.0, 0.6, 0.2, 0.2], rel=1e-15)
    step = Schedule.step(every=3, decay=0.5)
    assert [step.factor(t) for t in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    assert Schedule.constant().factor(10**9) == 1.0


def test_schedules_by_name() -> None:
    assert SGD(0.1, schedule="constant").schedule == Schedule.constant()
    assert SGD(0.1, schedule="cosine", total_steps=90).schedule == Schedule.cosine(90)
    assert Adam(schedule="step", total_steps=90).schedule == Schedule.step(every=30, decay=0.1)
    assert Schedule.from_name("step", 2) == Schedule.step(every=1, decay=0.1)
    opt = SGD(0.1, schedule="cosine", total_steps=4)
    rng = np.random.default_rng(0)
    lrs = []
    for _ in range(5):
        lrs.append(opt.current_lr)
        opt.step(_params(), _grads(rng))
    assert lrs == pytest.approx([0.1, 0.1 * (1 + np.cos(np.pi / 4)) / 2, 0.05,
                                 0.1 * (1 + np.cos(3 * np.pi / 4)) / 2, 0.0], abs=1e-16)


@pytest.mark.parametrize("kind", ["cosine", "step"])
def test_schedules_equal_torch_schedulers(kind: str) -> None:
    torch = pytest.importorskip("torch")
    sched_t = {
        "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=0.01),
        "step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.3),
    }[kind]
    schedule = {"cosine": Schedule.cosine(10, final=0.1), "step": Schedule.step(4, 0.3)}[kind]
    ref = _torch_run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), 10, scheduler=sched_t)
    opt = SGD(0.1, momentum=0.9, schedule=schedule)
    ours = _ours_run(opt, 10)
    assert opt.t == 10
    for k in SHAPES:
        assert rel_err(ours[k], ref[k]) < 1e-12, k


@pytest.mark.parametrize(
    "make", [lambda: SGD(0.1, momentum=0.9, weight_decay=1e-3,
                         schedule=Schedule.cosine(10)),
             lambda: Adam(1e-2, schedule=Schedule.step(3, 0.5))],
)
def test_resume_from_state_dict_is_bit_for_bit(make) -> None:
    straight = make()
    ours = _ours_run(straight, 10)

    first = make()
    params = _params(0)
    rng = np.random.default_rng(100)
    for _ in range(4):
        first.step(params, _grads(rng))
    buf = io.BytesIO()
    np.savez(buf, **first.state_dict())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        state = dict(f)
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.t == 4
    for _ in range(6):
        resumed.step(params, _grads(rng))
    for k in SHAPES:
        np.testing.assert_array_equal(params[k], ours[k])


def test_state_dict_is_a_copy() -> None:
    opt = SGD(0.1, momentum=0.9)
    opt.step(_params(), _grads(np.random.default_rng(0)))
    state = opt.state_dict()
    state["momentum_buffer.a.W"][...] = 0
    assert np.any(opt.buffers["momentum_buffer"]["a.W"] != 0)
    assert set(state) == {"t"} | {f"momentum_buffer.{k}" for k in SHAPES}


@pytest.mark.parametrize("make", [lambda: SGD(0.1, momentum=0.9, weight_decay=0.1), lambda: Adam(weight_decay=0.1)])
def test_float32_stays_float32(make) -> None:
    opt = make()
    params = _params(0, np.float32)
    rng = np.random.default_rng(1)
    for _ in range(3):
        opt.step(params, _grads(rng, np.float32))
    assert all(p.dtype == np.float32 for p in params.values())
    assert all(v.dtype == np.float32 for k, v in opt.state_dict().items() if k != "t")


def test_parameters_without_gradient_are_left_alone() -> None:
    params = _params()
    before = params["out.b"].copy()
    grads = _grads(np.random.default_rng(0))
    del grads["out.b"]
    SGD(0.1).step(params, grads)
    np.testing.assert_array_equal(params["out.b"], before)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SGD(0.0), "lr: expected a finite number > 0, got 0.0"),
        (lambda: SGD(-1), "lr: expected a finite number > 0, got -1"),
        (lambda: SGD(0.1, momentum=1.0), r"momentum: expected a finite number in \[0, 1\), got 1.0"),
        (lambda: SGD(0.1, weight_decay=-1e-4), "weight_decay: expected a finite number >= 0"),
        (lambda: SGD(0.1, schedule="linear"), "schedule: expected None, 'constant', 'cosine', 'step', 'onecycle' or a Schedule"),
        (lambda: SGD(0.1, schedule="cosine"), r"schedule: 'cosine' needs the run's length: pass total_steps=\.\.\. to the optimizer"),
        (lambda: Adam(schedule="step", total_steps=0), "total_steps: expected an integer >= 1, got 0"),
        (lambda: Adam(betas=(0.9,)), r"betas: expected a pair \(beta1, beta2\)"),
        (lambda: Adam(betas=(0.9, 1.0)), r"betas\[1\]: expected a finite number in \[0, 1\)"),
        (lambda: Adam(eps=0), "eps: expected a finite number > 0"),
        (lambda: Schedule.cosine(0), "total_steps: expected an integer >= 1, got 0"),
        (lambda: Schedule.cosine(10, final=2.0), r"final: expected a number in \[0, 1\], got 2.0"),
        (lambda: Schedule.step(5, decay=0), "decay: expected a finite number > 0"),
        (lambda: Schedule("linear"), "kind: expected one of 'constant', 'cosine', 'step', 'onecycle'. Got 'linear'"),
    ],
)
def test_bad_hyperparameters(make, match: str) -> None:
    with pytest.raises(InputError, match=match):
        make()


def test_bad_step_arguments() -> None:
    params = _params()
    grads = _grads(np.random.default_rng(0))
    with pytest.raises(InputError, match="grads: key 'b' has no parameter of that name"):
        SGD(0.1).step(params, {**grads, "b": np.zeros(2)})
    with pytest.raises(InputError, match=r"grads\['a.W'\]: expected a float64 array of shape \(4, 3\) like its parameter, got float64 array of shape \(3, 4\)"):
        SGD(0.1).step(params, {**grads, "a.W": np.zeros((3, 4))})
    with pytest.raises(InputError, match=r"grads\['a.W'\]: expected a float64 array .* got float32"):
        SGD(0.1).step(params, {**grads, "a.W": np.zeros((4, 3), np.float32)})
    with pytest.raises(InputError, match="params, grads: expected two dicts"):
        SGD(0.1).step(list(params.values()), grads)


def test_bad_state_dict() -> None:
    opt = SGD(0.1, momentum=0.9)
    with pytest.raises(InputError, match=r"state: expected the dict of optimizer\.state_dict"):
        opt.load_state_dict({})
    with pytest.raises(InputError, match=r"state\['t'\]: expected an integer scalar >= 0"):
        opt.load_state_dict({"t": np.array(1.5)})
    with pytest.raises(InputError, match=r"state: unexpected key 'exp_avg\.a\.W'; SGD keys are 't' and 'momentum_buffer\.<param name>'"):
        opt.load_state_dict({"t": np.array(1), "exp_avg.a.W": np.zeros((4, 3))})
    opt.load_state_dict({"t": np.array(1), "momentum_buffer.a.W": np.zeros((3, 4))})
    with pytest.raises(InputError, match=r"momentum_buffer.a.W: the optimizer state holds a float64 array of shape \(3, 4\), but the parameter is float64 of shape \(4, 3\)"):
        opt.step(_params(), _grads(np.random.default_rng(0)))


@pytest.mark.parametrize("make", [lambda: SGD(0.1), lambda: SGD(0.1, momentum=0.9),
                                  lambda: Adam(1e-2), lambda: Adam(1e-2, weight_decay=0.1)])
def test_one_work_buffer_serves_every_parameter(make) -> None:
    """The updates share one work buffer per dtype: parameters of mixed sizes and dtypes,
    stepped together, end bit for bit where each one stepped alone ends."""
    rng = np.random.default_rng(5)
    shapes = {"small": ((3,), np.float32), "big": ((6, 5), np.float64),
              "mid": ((4, 4), np.float32), "tiny": ((2,), np.float64)}
    params = {k: rng.standard_normal(s).astype(dt) for k, (s, dt) in shapes.items()}
    alone = {k: {k: v.copy()} for k, v in params.items()}
    together, opts = make(), {k: make() for k in params}
    for _ in range(4):
        grads = {k: rng.standard_normal(s).astype(dt) for k, (s, dt) in shapes.items()}
        together.step(params, grads)
        for k in params:
            opts[k].step(alone[k], {k: grads[k]})
    for k in params:
        assert params[k].dtype == shapes[k][1]
        np.testing.assert_array_equal(params[k], alone[k][k])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("make", [
    lambda: SGD(0.1), lambda: SGD(0.1, momentum=0.9), lambda: SGD(0.05, 0.5, weight_decay=1e-3),
    lambda: Adam(1e-2), lambda: Adam(3e-3, weight_decay=1e-4, betas=(0.8, 0.99)),
])
def test_fused_flat_step_equals_the_per_parameter_step_bit_for_bit(make, dtype: str) -> None:
    from bnprop.nn.plan import FlatBuffers

    rng = np.random.default_rng(11)
    shapes = {"a.W": (4, 3), "a.gamma": (4,), "out.b": (2,)}

    class Holder:  # a module-like owner of named arrays, as FlatBuffers expects
        grads: typing.ClassVar[dict] = {}

    holders, named = [], []
    for name, shape in shapes.items():
        h = Holder()
        h.grads = {}
        h.value = rng.standard_normal(shape).astype(dtype)
        holders.append(h)
        named.append((name, h, "value"))
    ref = {name: h.value.copy() for (name, h, _) in named}
    flat = FlatBuffers(named)
    opt_ref, opt_flat = make(), make()
    for step in range(6):
        grads = {name: rng.standard_normal(shapes[name]).astype(dtype) for name in shapes}
        for (name, h, _) in named:
            h.grads["value"][...] = grads[name]
        opt_ref.step(ref, grads)
        opt_flat.step_flat(flat.params, flat.grads, flat.layout)
        for (name, h, _) in named:
            np.testing.assert_array_equal(h.value, ref[name], err_msg=f"{name} step {step}")
    state_ref, state_flat = opt_ref.state_dict(), opt_flat.state_dict()
    assert list(state_ref) == list(state_flat)
    for key in state_ref:
        np.testing.assert_array_equal(state_flat[key], state_ref[key], err_msg=key)
    resumed = make()  # a flat step resumes from a saved per-name state
    resumed.load_state_dict(state_ref)
    grads = {name: rng.standard_normal(shapes[name]).astype(dtype) for name in shapes}
    for (name, h, _) in named:
        h.grads["value"][...] = grads[name]
    opt_ref.step(ref, grads)
    resumed.step_flat(flat.params, flat.grads, flat.layout)
    for (name, h, _) in named:
        np.testing.assert_array_equal(h.value, ref[name], err_msg=f"{name} resumed")


@pytest.mark.parametrize("change", ["replace", "deepcopy", "pickle", "load_state_dict"])
def test_the_flat_step_follows_buffers_replaced_or_copied_between_steps(change: str) -> None:
    """The flat step reuses its flat buffers only while ``buffers`` still holds their
    views; a buffer replaced by hand, a copied or unpickled optimizer, or a loaded state
    is read back, so the step equals the per-parameter one."""
    import copy
    import pickle

    from bnprop.nn import Linear, Sequential

    net = Sequential(Linear(3, 4, rng=0), Linear(4, 2, rng=1))
    opt, opt_ref = Adam(1e-2), Adam(1e-2)
    flat_step = _flat_and_named_steps([net], opt_ref)

    def step() -> None:
        flat_step(opt)

    step()
    step()
    if change == "replace":
        opt.buffers["exp_avg"]["0.W"] = opt.buffers["exp_avg"]["0.W"] * 2
        opt_ref.buffers["exp_avg"]["0.W"] *= 2
    elif change == "deepcopy":
        opt = copy.deepcopy(opt)
    elif change == "pickle":
        opt = pickle.loads(pickle.dumps(opt))
    else:
        opt = Adam(1e-2)
        opt.load_state_dict(opt_ref.state_dict())
    step()
    step()
    for key, value in opt_ref.state_dict().items():
        np.testing.assert_array_equal(opt.state_dict()[key], value, err_msg=key)



def _flat_and_named_steps(nets: list, opt_ref):  # type: ignore[no-untyped-def]
    """``step(opt, i)``, a step of net ``i``: the same random gradients through
    ``opt.step_flat`` and ``opt_ref.step`` on a copy of its parameters; the two must
    agree bit for bit."""
    refs = [{k: v.copy() for k, v in net.parameters().items()} for net in nets]
    rng = np.random.default_rng(7)

    def step(opt, i: int = 0) -> None:  # type: ignore[no-untyped-def]
        net, ref = nets[i], refs[i]
        grads = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in ref.items()}
        views = net._grad_views()
        for k, g in grads.items():
            views[k][...] = g
        opt_ref.step(ref, grads)
        opt.step_flat(net.flat.params, net.flat.grads, net.flat.layout)
        for k, v in net.parameters().items():
            np.testing.assert_array_equal(v, ref[k], err_msg=f"net {i} {k}, t={opt.t}")

    return step


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_flat_step_follows_its_numbers_changed_between_steps(momentum: float) -> None:
    """SGD gives the last flat update that adopted nothing again only for the same arrays
    and numbers: a schedule's next factor, a changed lr, weight_decay, momentum or
    nesterov, or a replaced buffer each give a new one (every step equals the
    per-parameter one)."""
    from bnprop.nn import Linear, Sequential

    net = Sequential(Linear(3, 4, rng=0), Linear(4, 2, rng=1))
    opt, opt_ref = (SGD(0.1, momentum=momentum, schedule="step", total_steps=12)
                    for _ in range(2))
    step = _flat_and_named_steps([net], opt_ref)
    for _ in range(6):  # the schedule's factor moves after step 4
        step(opt)
    for change in ({"lr": 0.05}, {"weight_decay": 0.01}, {"momentum": 0.5} if momentum else {},
                   {"nesterov": True} if momentum else {}):
        for o in (opt, opt_ref):
            o.__dict__.update(change)
        step(opt)
        step(opt)
    if momentum:
        opt.buffers["momentum_buffer"]["0.W"] = opt.buffers["momentum_buffer"]["0.W"] * 2
        opt_ref.buffers["momentum_buffer"]["0.W"] *= 2
        step(opt)


def test_one_plain_sgd_updates_two_nets_each_with_its_own_arrays() -> None:
    """Plain SGD keeps no state, so one may step two nets of the same shape: its kept
    update is for one net's arrays, never given for the other's."""
    from bnprop.nn import Linear, Sequential

    nets = [Sequential(Linear(3, 4, rng=i), Linear(4, 2, rng=i + 5)) for i in range(2)]
    step, opt = _flat_and_named_steps(nets, SGD(0.1)), SGD(0.1)
    for i in (0, 0, 1, 1, 0, 1, 0):
        step(opt, i)
