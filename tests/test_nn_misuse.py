"""Ways to misuse the layer API that used to go silently wrong: a module in two places, a
module given to a second Sequential, a failed step's statistics, settings changed after
construction, odd seeds and counters. Each one is now one line or the right result."""

from __future__ import annotations

import numpy as np
import pytest

import bnprop
from bnprop import InputError, nn

D = "float64"


def _batch(n_in: int = 4, m: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((m, n_in)), np.arange(m) % 3


def _bn_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 5, bias=False, dtype=D, rng=0), nn.BatchNorm1d(5, dtype=D),
                         nn.ReLU(dtype=D), nn.Linear(5, 3, dtype=D, rng=1))


@pytest.mark.parametrize("which", ["activation", "linear"])
def test_a_module_in_two_places_is_refused(which: str) -> None:
    act, lin = nn.Tanh(dtype=D), nn.Linear(4, 4, dtype=D, rng=0)
    if which == "activation":
        mods = [nn.Linear(3, 4, dtype=D, rng=1), act, nn.Linear(4, 4, dtype=D, rng=2), act]
        match = r"^modules\[3\]: the same Tanh object as modules\[1\]; each place needs its own"
    else:
        mods = [lin, nn.Tanh(dtype=D), lin]
        match = r"^modules\[2\]: the same Linear object as modules\[0\]; each place needs its own"
    with pytest.raises(InputError, match=match):
        nn.Sequential(*mods)


def test_a_module_given_to_a_second_sequential_stops_the_first_with_one_line() -> None:
    """The second Sequential owns the parameters now; the first would update arrays its
    modules no longer read (training nothing), so it refuses to train."""
    mods = [nn.Linear(4, 5, dtype=D, rng=0), nn.Tanh(dtype=D), nn.Linear(5, 3, dtype=D, rng=1)]
    first = nn.Sequential(*mods)
    second = nn.Sequential(*mods)
    X, y = _batch()
    before = {k: v.copy() for k, v in second.parameters().items()}
    second.train_step(X, y, bnprop.SGD(0.1))
    assert any(not np.array_equal(v, before[k]) for k, v in second.parameters().items())
    msg = r"^0\.W: no longer this Sequential's parameter \(its module was given to another"
    with pytest.raises(InputError, match=msg):
        first.train_step(X, y, bnprop.SGD(0.1))
    with pytest.raises(InputError, match=msg):
        first.loss_and_grads(X, y)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))


@pytest.mark.parametrize("steps_before", [0, 2])
def test_a_replaced_parameter_array_is_named(steps_before: int) -> None:
    """Also after steps that passed the check (it is then skipped until a parameter
    attribute of some module is assigned): the replacement is caught at the next step."""
    net, opt = bnprop.MLP((4, 5, 3)), bnprop.Adam(0.01)
    for _ in range(steps_before):
        net.train_step(*_batch(), opt)
    net.modules[1].gamma = np.ones(5, np.float32)  # not a view of the flat array any more
    with pytest.raises(InputError, match=r"^hidden\.0\.gamma: no longer this Sequential's "
                                         r"parameter .* assign values in place \(gamma\[\.\.\.\]"):
        net.train_step(*_batch(), opt)
    net.modules[1].gamma = net.flat.params[np.dtype(np.float32)][20:25]  # a view again
    net.train_step(*_batch(), opt)
    net.modules[0].W = net.modules[0].W.copy()
    with pytest.raises(InputError, match=r"^hidden\.0\.W: no longer"):
        net.loss_and_grads(*_batch())


def test_modules_taken_by_a_second_sequential_after_steps_stop_the_first() -> None:
    mods = [nn.Linear(4, 5, dtype=D, rng=0), nn.Tanh(dtype=D), nn.Linear(5, 3, dtype=D, rng=1)]
    first, opt = nn.Sequential(*mods), bnprop.SGD(0.1)
    first.train_step(*_batch(), opt)
    nn.Sequential(*mods)
    with pytest.raises(InputError, match=r"^0\.W: no longer this Sequential's parameter"):
        first.train_step(*_batch(), opt)


def _bn_first() -> nn.Sequential:  # not a compiled plan: the Python step
    return nn.Sequential(nn.BatchNorm1d(4, dtype=D), nn.Linear(4, 3, dtype=D, rng=1))


@pytest.mark.parametrize(("fail", "make"), [("train_step", _bn_net), ("train_step", _bn_first),
                                            ("loss_and_grads", _bn_net)])
def test_a_failed_step_leaves_no_statistics_for_a_later_call(fail: str, make) -> None:  # type: ignore[no-untyped-def]
    net, ref = make(), make()
    X, y = _batch()
    with pytest.raises(nn.NonFiniteError), np.errstate(all="ignore"):
        if fail == "train_step":
            net.train_step(X * 1e200, y, bnprop.SGD(0.1))
        else:
            net.loss_and_grads(X * 1e200, y)
    net(X[:3])  # inference: commits nothing
    net.predict(X)
    for k, v in net.buffers().items():
        np.testing.assert_array_equal(v, ref.buffers()[k], err_msg=k)
    for twin in (net, ref):  # the next good step commits its own statistics only
        twin.train_step(X, y, bnprop.SGD(0.1))
    for k, v in net.buffers().items():
        np.testing.assert_array_equal(v, ref.buffers()[k], err_msg=k)


def test_a_training_call_commits_its_statistics_and_an_inference_call_does_not() -> None:
    net = _bn_net()
    X, _ = _batch()
    net(X)
    assert int(net.modules[1].num_batches_tracked) == 0
    net(X, training=True)
    assert int(net.modules[1].num_batches_tracked) == 1
    assert not np.array_equal(net.modules[1].running_mean, np.zeros(5))


def test_element_wise_modules_only_take_the_classes_from_the_batch() -> None:
    net = nn.Sequential(nn.ReLU(dtype=D))
    X, y = _batch(n_in=3)
    P = net.predict_proba(X)
    assert P.shape == (8, 3)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    loss, grads = net.loss_and_grads(X, y)
    assert np.isfinite(loss) and grads == {}
    assert net.train_step(X, y, bnprop.SGD(0.1)) == loss
    assert 0.0 <= net.accuracy(X, y) <= 1.0
    with pytest.raises(InputError, match=r"^y: labels must lie in 0\.\.2 \(3 classes\), got 3"):
        net.train_step(X, y + 1, bnprop.SGD(0.1))


def test_mlp_state_keeps_bn_settings_changed_after_construction() -> None:
    net = bnprop.MLP((5, 6, 6, 3), dtype=D)
    X, y = _batch(n_in=5)
    unchanged = net.get_state()
    assert str(unchanged["config"]) == net.config.to_json()  # nothing extra when unchanged
    bn1 = net.modules[1]
    bn1.momentum, bn1.eps, bn1.running, bn1.stats = 0.5, 0.1, "average", "frozen"
    net.train_step(X, y, bnprop.SGD(0.1))
    twin = bnprop.MLP.from_state(net.get_state())
    for a, b in zip(net.modules, twin.modules, strict=True):
        for key in ("momentum", "eps", "running", "stats"):
            assert getattr(a, key, None) == getattr(b, key, None), key
    np.testing.assert_array_equal(twin.predict_proba(X), net.predict_proba(X))
    for n in (net, twin):
        n.train_step(X, y, bnprop.SGD(0.1))
    for (k, v), w in zip(net.parameters().items(), twin.parameters().values(), strict=True):
        np.testing.assert_array_equal(v, w, err_msg=k)


@pytest.mark.parametrize(("norms", "match"), [
    ("[]", r"norms: expected 2 dicts of eps, momentum, running, stats, one per BatchNorm1d"),
    ('[{"eps": 0.1}, {"eps": 0.1}]', r"norms: expected 2 dicts"),
    ('[{"eps": -1, "momentum": 0.1, "running": "ema", "stats": "exact"}, '
     '{"eps": 1e-5, "momentum": 0.1, "running": "ema", "stats": "exact"}]',
     r"norms\[0\]: eps: expected a finite number > 0"),
    ('[{"eps": 1e-5, "momentum": 0.1, "running": "ema", "stats": "exact"}, '
     '{"eps": 1e-5, "momentum": 0.1, "running": "sometimes", "stats": "exact"}]',
     r"norms\[1\]: running: expected one of"),
])
def test_mlp_state_with_bad_bn_settings_is_one_line(norms: str, match: str) -> None:
    import json

    state = bnprop.MLP((5, 6, 6, 3)).get_state()
    config = json.loads(str(state["config"]))
    config["norms"] = json.loads(norms)
    state["config"] = np.array(json.dumps(config))
    with pytest.raises(InputError, match=r"^state\['config'\]: " + match):
        bnprop.MLP.from_state(state)


@pytest.mark.parametrize("rng", ["a", -1, 1.5, True, [1, -2]])
@pytest.mark.parametrize("make", [lambda rng: nn.Linear(2, 3, rng=rng),
                                  lambda rng: nn.Conv2d(1, 2, 3, rng=rng)])
def test_a_bad_seed_is_one_line(make, rng: object) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=r"^rng: expected a numpy.random.Generator, None or an "
                                         r"integer seed >= 0 \(or a sequence of them\), got "):
        make(rng)


def test_seeds_that_numpy_accepts_still_work() -> None:
    a = nn.Linear(2, 3, rng=[1, 2]).W
    b = nn.Linear(2, 3, rng=np.random.default_rng([1, 2])).W
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value", [np.array(2**64 - 1, np.uint64), np.array(-3)])
def test_a_batch_counter_out_of_range_is_one_line(value: np.ndarray) -> None:
    state = bnprop.MLP((4, 5, 3)).get_state()
    state["hidden.0.num_batches_tracked"] = value
    with pytest.raises(InputError, match=r"^hidden\.0\.num_batches_tracked: expected an integer "
                                         rf"scalar from 0 to 2\*\*63 - 1, got {int(value)} "):
        bnprop.MLP.from_state(state)


@pytest.mark.parametrize(("make", "name", "value", "match"), [
    (lambda: nn.Linear(4, 5), "W", np.ones((3, 3), np.float32),
     r"W: expected an array of shape \(5, 4\) and dtype float32 \(assign values in place: "
     r"W\[\.\.\.\] = values\), got an array of shape \(3, 3\) and dtype float32 instead\.$"),
    (lambda: nn.Linear(4, 5), "b", np.ones(4, np.float32), r"b: expected an array of shape \(5,\)"),
    (lambda: nn.Conv2d(2, 3, 3), "W", np.ones((3, 2, 2, 2), np.float32),
     r"W: expected an array of shape \(3, 2, 3, 3\)"),
    (lambda: nn.BatchNorm1d(4), "gamma", np.ones(7, np.float32), r"gamma: expected .* \(4,\)"),
    (lambda: nn.BatchNorm1d(4), "beta", np.ones(4, complex), r"got an array .* complex128"),
    (lambda: nn.BatchNorm1d(4), "beta", None, r"beta: expected .* got NoneType instead\.$"),
    (lambda: nn.BatchNorm1d(4), "running_var", "x", r"running_var: expected .* got str"),
    (lambda: nn.BatchNorm1d(4), "running_var", -np.ones(4), r"expected variances >= 0, got -1"),
    (lambda: nn.BatchNorm2d(4), "running_mean", [0, 1, np.nan, 0], r"expected finite values"),
    (lambda: nn.BatchNorm1d(4), "num_batches_tracked", -1, r"expected an integer from 0 to"),
    (lambda: nn.BatchNorm1d(4), "num_batches_tracked", 2.5, r"got 2\.5 instead\.$"),
])
def test_a_parameter_or_buffer_assigned_anew_keeps_its_shape_and_dtype(make, name, value,
                                                                        match) -> None:  # type: ignore[no-untyped-def]
    """A wrong shape used to fail deep in a product (W), be read past its end by a kernel
    (a longer gamma gave an output), or divide by zero (a counter of -1)."""
    mod = make()
    before = getattr(mod, name)
    with pytest.raises(InputError, match=match) as info:
        setattr(mod, name, value)
    assert str(info.value).startswith(f"{name}: ") and "\n" not in str(info.value)
    assert getattr(mod, name) is before


def test_an_array_of_the_shape_and_dtype_is_kept_and_other_numbers_are_cast() -> None:
    lin = nn.Linear(4, 5, dtype="float32")
    W = np.ones((5, 4), np.float32)
    lin.W = W
    assert lin.W is W  # a view given by FlatBuffers stays that view
    lin.W = np.full((5, 4), 0.1)  # float64 values: a float32 copy
    assert lin.W.dtype == np.float32 and lin.W.flags.c_contiguous
    np.testing.assert_array_equal(lin.W, np.float32(0.1))
    lin.W = np.ones((4, 5), np.float32).T  # a transposed view: a C-contiguous copy
    assert lin.W.flags.c_contiguous and lin.W.base is None
    lin.W = np.broadcast_to(np.float32(2), (5, 4))  # read-only: a writeable copy
    assert lin.W.flags.writeable
    np.testing.assert_array_equal(lin.W, 2)
    bn = nn.BatchNorm1d(3)
    bn.num_batches_tracked = 7
    assert bn.num_batches_tracked.shape == () and bn.num_batches_tracked.dtype == np.int64
    bn.running_var = [1, 2, 3]
    np.testing.assert_array_equal(bn.running_var, np.array([1, 2, 3], np.float32))


def test_a_net_whose_buffer_was_assigned_anew_trains_and_infers_with_it() -> None:
    net = bnprop.MLP((4, 5, 3), dtype=D)
    X, y = _batch()
    net.train_step(X, y, bnprop.SGD(0.1))
    net.modules[1].running_var = np.full(5, 4.0)
    net.modules[1].num_batches_tracked = 0
    before = net.predict_proba(X)
    net.modules[1].running_var[...] = 1.0
    assert not np.array_equal(before, net.predict_proba(X))
    net.train_step(X, y, bnprop.SGD(0.1))
    assert int(net.modules[1].num_batches_tracked) == 1


@pytest.mark.parametrize(("make", "name", "value"), [
    (lambda: nn.Linear(4, 5), "in_features", 7),
    (lambda: nn.Linear(4, 5), "has_bias", False),
    (lambda: nn.Linear(4, 5), "dtype", "float64"),
    (lambda: nn.Conv2d(1, 4, 3), "stride", 2),
    (lambda: nn.Conv2d(1, 4, 3), "padding", 0),
    (lambda: nn.BatchNorm1d(4), "num_features", 9),
    (lambda: nn.BatchNorm2d(4), "out_features", 9),
    (lambda: nn.MaxPool2d(2), "kernel_size", 3),
])
def test_a_module_s_structure_is_fixed_once_built(make, name, value) -> None:  # type: ignore[no-untyped-def]
    """A changed width used to change only the repr (the parameters kept their shapes)
    and a changed stride failed later in another module's message."""
    mod = make()
    before = getattr(mod, name)
    with pytest.raises(InputError, match=rf"^{name}: fixed when the {type(mod).__name__} is "
                                         rf"built .* build a new module with {name}="):
        setattr(mod, name, value)
    assert getattr(mod, name) == before
