"""bnprop.nn: each module against finite differences, Sequential against PyTorch autograd,
names and shapes as PyTorch's, fold, state, and the non-finite step."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_grads_match_torch, rel_err

from bnprop import InputError, nn
from bnprop.optim import SGD, Adam

torch = pytest.importorskip("torch")


def _numeric_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        up = f()
        x[idx] = old - h
        down = f()
        x[idx] = old
        g[idx] = (up - down) / (2 * h)
    return g


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("make", [
    lambda: nn.Linear(4, 3, dtype="float64", rng=0),
    lambda: nn.Linear(4, 3, bias=False, dtype="float64", rng=1),
    lambda: nn.BatchNorm1d(4, dtype="float64"),
    lambda: nn.BatchNorm1d(4, stats="frozen", dtype="float64"),
    lambda: nn.Sigmoid(dtype="float64"),
    lambda: nn.Tanh(dtype="float64"),
    lambda: nn.Identity(dtype="float64"),
])
def test_module_backward_equals_finite_differences(make, backend: str) -> None:
    mod = make()
    mod.backend = backend
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 4)) * 2 + 1
    if isinstance(mod, nn.BatchNorm1d):
        mod.gamma[...] = rng.standard_normal(4)
        mod.beta[...] = rng.standard_normal(4)
    n_out = mod.out_width(4)
    C = rng.standard_normal((6, n_out))
    frozen = isinstance(mod, nn.BatchNorm1d) and mod.stats == "frozen"
    Y = mod.forward(X)
    dX = mod.backward(C)
    if frozen:  # the statistics held at the batch's: finite differences through a copy
        mu, var = X.mean(0), X.var(0)

        def F() -> float:
            return float(np.sum(C * (mod.gamma * (X - mu) / np.sqrt(var + mod.eps) + mod.beta)))
    else:
        def F() -> float:
            return float(np.sum(C * mod._forward(X.copy(), True)))
    assert rel_err(Y, mod._forward(X.copy(), True)) < 1e-14
    if not frozen:
        assert rel_err(dX, _numeric_grad(F, X)) < 1e-7
    for name in mod.param_names:
        assert rel_err(mod.grads[name], _numeric_grad(F, getattr(mod, name))) < 1e-7, name


def _net(dtype: str = "float64", stats: str = "exact") -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(5, 8, bias=False, dtype=dtype, rng=0), nn.BatchNorm1d(8, stats=stats, dtype=dtype),
        nn.Tanh(dtype=dtype), nn.Linear(8, 6, dtype=dtype, rng=1), nn.ReLU(dtype=dtype),
        nn.BatchNorm1d(6, dtype=dtype), nn.Linear(6, 3, dtype=dtype, rng=2))


def test_names_order_and_shapes_follow_torch() -> None:
    net = _net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.W", "1.gamma", "1.beta", "3.W", "3.b", "5.gamma", "5.beta", "6.W", "6.b"]
    tparams = list(net.to_torch().parameters())
    assert [p.shape for _, p in net.named_parameters()] == [tuple(t.shape) for t in tparams]
    assert list(net.buffers()) == ["1.running_mean", "1.running_var", "1.num_batches_tracked",
                                   "5.running_mean", "5.running_var", "5.num_batches_tracked"]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_sequential_equals_torch_autograd_float64(backend: str) -> None:
    net = _net()
    net_b = nn.Sequential(*net.modules, backend=backend)
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((20, 5)) * 3 + 2, rng.integers(0, 3, 20)
    tnet = assert_grads_match_torch(net_b, X, y)
    for name, b in net_b.buffers().items():  # running statistics as torch's
        i, key = name.split(".")
        assert rel_err(np.asarray(b, float), getattr(tnet[int(i)], key).numpy().astype(float)) \
            < 1e-12, name


def test_twenty_sgd_steps_match_torch() -> None:
    net = _net()
    tnet = net.to_torch()
    topt = torch.optim.SGD(tnet.parameters(), lr=0.1, momentum=0.9)
    opt = SGD(0.1, momentum=0.9)
    rng = np.random.default_rng(4)
    for _ in range(20):
        X, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
        loss = net.train_step(X, y, opt)
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(tnet(torch.tensor(X)), torch.tensor(y))
        tloss.backward()
        topt.step()
        assert loss == pytest.approx(tloss.item(), rel=1e-10)
    for (name, p), t in zip(net.named_parameters(), tnet.parameters(), strict=True):
        assert rel_err(p, t.detach().numpy()) < 1e-9, name


def test_from_torch_round_trip_and_dtype_follows_module() -> None:
    net = _net("float32")
    back = nn.Sequential.from_torch(net.to_torch())
    assert back.dtype == np.float32
    for (n1, a), (n2, b) in zip(net.named_parameters(), back.named_parameters(), strict=True):
        assert n1 == n2 and np.array_equal(a, b)
    with pytest.raises(InputError, match=r"module\[1\]: expected Linear, BatchNorm1d, "
                                         r"BatchNorm2d, .* or an activation .* got Dropout"):
        nn.Sequential.from_torch(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()))


def test_fold_equals_inference() -> None:
    net = _net()
    rng = np.random.default_rng(5)
    opt = Adam(1e-2)
    for _ in range(5):
        net.train_step(rng.standard_normal((32, 5)), rng.integers(0, 3, 32), opt)
    X = rng.standard_normal((50, 5))
    folded = net.fold()
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules)
    assert rel_err(folded.predict_proba(X), net.predict_proba(X)) < 1e-12


def test_state_round_trip() -> None:
    net = _net("float32")
    net.train_step(np.ones((4, 5), np.float32) * np.arange(4)[:, None], [0, 1, 2, 0], SGD(0.1))
    again = nn.Sequential.from_state(net.get_state())
    for (n1, a), (n2, b) in zip({**net.parameters(), **net.buffers()}.items(),
                                {**again.parameters(), **again.buffers()}.items(), strict=True):
        assert n1 == n2 and np.array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_finite_step_raises_and_changes_nothing(dtype: str) -> None:
    net, opt = _net(dtype), Adam(1e-2)
    rng = np.random.default_rng(6)
    net.train_step(rng.standard_normal((8, 5)).astype(dtype), rng.integers(0, 3, 8), opt)
    before = {k: v.copy() for k, v in {**net.parameters(), **net.buffers()}.items()}
    opt_before = {k: v.copy() for k, v in opt.state_dict().items()}
    huge = np.full((8, 5), np.finfo(dtype).max / 4, dtype) * rng.choice([-1, 1], (8, 5))
    with pytest.raises(nn.NonFiniteError, match=r"not finite .* nothing was updated"):
        net.train_step(huge, rng.integers(0, 3, 8), opt)
    for k, v in {**net.parameters(), **net.buffers()}.items():
        assert np.array_equal(v, before[k]), k
    for k, v in opt.state_dict().items():
        assert np.array_equal(v, opt_before[k]), k


def test_bad_compositions_get_one_line() -> None:
    with pytest.raises(InputError, match=r"modules\[1\]: BatchNorm1d\(5.* expects 5 input "
                                         r"features, but the module before it gives 4"):
        nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(5))
    with pytest.raises(InputError, match=r"modules: expected one dtype"):
        nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, dtype="float64"))
    with pytest.raises(InputError, match=r"modules\[0\]: expected a bnprop.nn module, got int"):
        nn.Sequential(3)
    with pytest.raises(InputError, match="backend: expected one of"):
        nn.Sequential(nn.Linear(3, 2), backend="cuda")
    with pytest.raises(InputError, match=r"X: expected shape \(m, 3\)"):
        nn.Linear(3, 2).forward(np.ones((2, 4), np.float32))
    with pytest.raises(InputError, match="call forward"):
        nn.Linear(3, 2).backward(np.ones((2, 2), np.float32))


def test_a_copied_net_trains_its_own_parameters() -> None:
    import copy
    import pickle

    net = _net()
    rng = np.random.default_rng(9)
    X, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        before = {k: v.copy() for k, v in clone.parameters().items()}
        clone.train_step(X, y, SGD(0.1))
        assert all(not np.array_equal(v, before[k]) for k, v in clone.parameters().items())
        flat = clone.flat.params[np.dtype("float64")]
        assert all(np.shares_memory(v, flat) for v in clone.parameters().values())


def test_modules_and_sequential_are_callable_like_torch() -> None:
    net = _net()
    rng = np.random.default_rng(10)
    X = rng.standard_normal((12, 5))
    tnet = net.to_torch().eval()
    assert rel_err(net(X), tnet(torch.tensor(X)).detach().numpy()) < 1e-12  # inference
    tnet.train()
    assert rel_err(net(X, training=True), tnet(torch.tensor(X)).detach().numpy()) < 1e-12
    for (name, b), t in zip(net.buffers().items(), [*tnet[1].buffers(), *tnet[5].buffers()],
                            strict=True):  # the training forward updated the running stats
        assert rel_err(np.asarray(b, float), t.numpy().astype(float)) < 1e-12, name
    lin = nn.Linear(5, 2, dtype="float64", rng=0)
    assert np.array_equal(lin(X), X @ lin.W.T + lin.b)


@pytest.mark.parametrize(("optimizer", "got"), [(object(), "object"), (SGD, "the class SGD")])
def test_a_wrong_optimizer_gets_one_line_before_anything_changes(optimizer: object,
                                                                   got: str) -> None:
    net = _net()
    before = {k: v.copy() for k, v in net.buffers().items()}
    with pytest.raises(InputError, match=r"^optimizer: expected an instance such as "
                       r"bnprop.SGD\(0.1\) or bnprop.Adam\(1e-3\), or an object with "
                       rf"step\(params, grads\), got {got} instead.$"):
        net.train_step(np.ones((4, 5)), [0, 1, 2, 0], optimizer)
    assert all(np.array_equal(v, before[k]) for k, v in net.buffers().items())


@pytest.mark.parametrize("make", [lambda: Adam(0.01), lambda: SGD(0.1, momentum=0.9)])
@pytest.mark.parametrize("widths", [(7,), (5, 5)])
def test_an_optimizer_of_another_network_is_refused_before_anything_changes(
        make, widths: tuple[int, ...]) -> None:  # type: ignore[no-untyped-def]
    """Its state has other shapes or names: one line, and nothing is updated (it used to
    write out of bounds of its flat buffers)."""
    from bnprop.model import MLP

    X, y = np.random.default_rng(0).standard_normal((8, 4)), np.arange(8) % 3
    opt = make()
    MLP((4, 5, 3)).train_step(X, y, opt)
    saved = opt.state_dict()
    other = MLP((4, *widths, 3))
    before = {**{k: v.copy() for k, v in other.parameters().items()},
              **{k: v.copy() for k, v in other.buffers().items()}}
    kind = "exp_avg" if isinstance(opt, Adam) else "momentum_buffer"
    match = (rf"^{kind}.hidden.0.W: the optimizer state holds a float32 array of shape "
             r"\(5, 4\), but the parameter is float32 of shape \(7, 4\)\.$" if widths == (7,)
             else rf"^{kind}.hidden.1.W: the optimizer state holds {kind} for some parameters "
             r"but not for this one\.$")
    with pytest.raises(InputError, match=match):
        other.train_step(X, y, opt)
    after = {**other.parameters(), **other.buffers()}
    assert all(np.array_equal(after[k], v) for k, v in before.items())
    assert all(np.array_equal(opt.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_flat_gradient_check_finds_one_bad_entry(dtype: str, bad: float) -> None:
    net = nn.Sequential(nn.Linear(5, 4, bias=False, dtype=dtype), nn.BatchNorm1d(4, dtype=dtype),
                        nn.ReLU(dtype=dtype), nn.Linear(4, 3, dtype=dtype))
    (grads,) = net.flat.grads.values()
    grads[...] = np.finfo(dtype).max  # huge, yet finite
    assert net.flat.all_finite()
    for i in (0, grads.size // 2, grads.size - 1):
        grads[i] = bad
        assert not net.flat.all_finite()
        grads[i] = 0.0
    assert net.flat.all_finite()
