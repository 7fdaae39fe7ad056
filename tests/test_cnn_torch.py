"""Image nets against PyTorch autograd (float64, 1e-10 relative), folding, state, SGD
with Nesterov momentum and the one-cycle schedule."""

from __future__ import annotations

import numpy as np
import pytest

from bnprop import nn
from bnprop._validate import InputError
from bnprop.model_cnn import cnn
from bnprop.optim import SGD
from bnprop.schedule import Schedule
from tests.conftest import rel_err

torch = pytest.importorskip("torch")
F = torch.nn.functional


def small_net(dtype: str = "float64", backend: str = "numba", stats: str = "exact"):
    """Every image layer and both fusions: conv->BN2d->ReLU, conv with bias, strided conv,
    overlapping pooling, Flatten, Linear->BN1d."""
    rng = np.random.default_rng(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False, dtype=dtype, rng=rng),
        nn.BatchNorm2d(4, dtype=dtype, stats=stats), nn.ReLU(dtype=dtype),
        nn.MaxPool2d(2, dtype=dtype),
        nn.Conv2d(4, 6, 3, padding=1, dtype=dtype, rng=rng), nn.Tanh(dtype=dtype),
        nn.Conv2d(6, 8, 2, stride=2, bias=False, dtype=dtype, rng=rng),
        nn.BatchNorm2d(8, dtype=dtype, momentum=0.2), nn.ReLU(dtype=dtype),
        nn.MaxPool2d(2, 1, dtype=dtype), nn.Flatten(dtype=dtype),
        nn.Linear(8 * 2 * 2, 10, bias=False, dtype=dtype, rng=rng),
        nn.BatchNorm1d(10, dtype=dtype), nn.Sigmoid(dtype=dtype),
        nn.Linear(10, 3, dtype=dtype, rng=rng), backend=backend)


def batch(seed: int = 1, n: int = 6):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2, 12, 12)) * 2 + 0.5, rng.integers(0, 3, n)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_loss_and_every_gradient_equal_autograd(backend: str) -> None:
    net = small_net(backend=backend)
    t = net.to_torch()
    X, y = batch()
    loss, grads = net.loss_and_grads(X, y)
    t_loss = F.cross_entropy(t(torch.tensor(X)), torch.tensor(y))
    t_loss.backward()
    assert abs(loss - t_loss.item()) <= 1e-10 * abs(t_loss.item())
    t_grads = [p.grad.numpy() for p in t.parameters()]
    assert list(grads) == [name for name, _ in net.named_parameters()]
    for (name, g), tg in zip(grads.items(), t_grads, strict=True):
        assert rel_err(g, tg) < 1e-10, name
    for (name, b), tb in zip(net.named_buffers(), t.buffers(), strict=True):
        assert rel_err(b, tb.numpy()) < 1e-12, name


def test_twenty_sgd_steps_agree_step_for_step() -> None:
    net = small_net()
    t = net.to_torch()
    opt = SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    t_opt = torch.optim.SGD(t.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                            weight_decay=1e-3)
    for step in range(20):
        X, y = batch(seed=step)
        loss = net.train_step(X, y, opt)
        t_opt.zero_grad()
        t_loss = F.cross_entropy(t(torch.tensor(X)), torch.tensor(y))
        t_loss.backward()
        t_opt.step()
        assert abs(loss - t_loss.item()) <= 1e-10 * abs(t_loss.item()), step
        for (name, p), tp in zip(net.named_parameters(), t.parameters(), strict=True):
            assert rel_err(p, tp.detach().numpy()) < 1e-10, (step, name)
    t.eval()
    X, _ = batch(seed=99)
    P = net.predict_proba(X)
    assert rel_err(P, torch.softmax(t(torch.tensor(X)), 1).detach().numpy()) < 1e-10


def test_fold_equals_the_unfolded_net_to_1e12() -> None:
    net = small_net()
    opt = SGD(0.05, momentum=0.9)
    for step in range(5):
        net.train_step(*batch(seed=step), opt)
    folded = net.fold()
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules)
    assert [type(m).__name__ for m in folded.modules][:3] == ["Conv2d", "ReLU", "MaxPool2d"]
    X, _ = batch(seed=50, n=20)
    assert rel_err(folded.predict_proba(X), net.predict_proba(X)) < 1e-12
    lone = nn.Sequential(nn.BatchNorm2d(2, dtype="float64"), nn.Flatten(dtype="float64"),
                         nn.Linear(288, 3, dtype="float64", rng=0))
    lone.train_step(*batch(), SGD(0.1))
    assert rel_err(lone.fold().predict_proba(X), lone.predict_proba(X)) < 1e-12


def test_to_torch_from_torch_and_state_round_trip() -> None:
    net = cnn((3, 5), (7,), n_classes=4, image_size=12, dtype="float64", running="average")
    X, y = batch(n=8)
    X = X[:, :1]
    net.train_step(X, y, SGD(0.1))
    back = nn.Sequential.from_torch(net.to_torch(), stats="frozen")
    assert repr(back) == repr(net).replace("'exact'", "'frozen'")
    assert back.modules[1].stats == "frozen" and back.modules[1].running == "average"
    restored = nn.Sequential.from_state(net.get_state())
    for other in (back, restored):
        for (k, v), (k2, v2) in zip({**net.parameters(), **net.buffers()}.items(),
                                    {**other.parameters(), **other.buffers()}.items(),
                                    strict=True):
            assert k == k2
            np.testing.assert_array_equal(v, v2)
        np.testing.assert_array_equal(other.predict_proba(X), net.predict_proba(X))


def test_from_torch_refuses_what_it_cannot_represent() -> None:
    with pytest.raises(InputError, match=r"module\[0\]: expected Conv2d with groups=1"):
        nn.Sequential.from_torch(torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, groups=2)))
    with pytest.raises(InputError, match=r"module\[0\]: expected a square kernel_size"):
        nn.Sequential.from_torch(torch.nn.Sequential(torch.nn.Conv2d(2, 2, (3, 1))))
    with pytest.raises(InputError, match=r"module\[1\]: expected MaxPool2d with padding=0"):
        nn.Sequential.from_torch(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3),
                                                     torch.nn.MaxPool2d(2, padding=1)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nesterov_flat_kernel_equals_the_reference_bit_for_bit(dtype: type) -> None:
    net = cnn((2,), (5,), image_size=8, dtype=np.dtype(dtype).name)
    ref = cnn((2,), (5,), image_size=8, dtype=np.dtype(dtype).name)
    opt_flat = SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, schedule="onecycle",
                   total_steps=6)
    opt_ref = SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, schedule="onecycle",
                  total_steps=6)
    rng = np.random.default_rng(0)
    for _ in range(6):
        X = rng.standard_normal((4, 1, 8, 8)).astype(dtype)
        y = rng.integers(0, 10, 4)
        net.train_step(X, y, opt_flat)  # the fused flat kernel
        _, grads = ref.loss_and_grads(X, y)
        opt_ref.step(ref.parameters(), grads)  # the per-parameter reference
        for (name, p), p_ref in zip(net.named_parameters(), ref.parameters().values(),
                                    strict=True):
            np.testing.assert_array_equal(p, p_ref, err_msg=name)


def test_nesterov_needs_momentum() -> None:
    with pytest.raises(InputError, match="nesterov: Nesterov momentum needs momentum > 0"):
        SGD(0.1, nesterov=True)


def test_onecycle_schedule_equals_torch() -> None:
    T = 50
    p = torch.nn.Parameter(torch.zeros(1))
    t_opt = torch.optim.SGD([p], lr=0.3)
    sched = torch.optim.lr_scheduler.OneCycleLR(t_opt, max_lr=0.3, total_steps=T,
                                                cycle_momentum=False)
    ours = Schedule.from_name("onecycle", T)
    for step in range(T):
        assert abs(t_opt.param_groups[0]["lr"] - 0.3 * ours.factor(step)) < 1e-15
        t_opt.step()
        sched.step()


@pytest.mark.parametrize("n_threads", [1, 2])
def test_chunked_and_threaded_conv_stage_equals_autograd(n_threads: int) -> None:
    """m = N H W = 5200 rows: the stage's row parts and chunks, on widened rows with tails."""
    from bnprop import threads

    rng = np.random.default_rng(3)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, bias=False, dtype="float64", rng=rng),
                        nn.BatchNorm2d(5, dtype="float64"), nn.ReLU(dtype="float64"),
                        nn.Flatten(dtype="float64"),
                        nn.Linear(5 * 100, 4, dtype="float64", rng=rng))
    t = net.to_torch()
    X, y = rng.standard_normal((52, 3, 10, 10)), rng.integers(0, 4, 52)
    previous = threads.num_threads()
    threads.set_threads(n_threads)
    try:
        loss, grads = net.loss_and_grads(X, y)
    finally:
        threads.set_threads(previous)
    assert net.steps[0].stage.chunked
    t_loss = F.cross_entropy(t(torch.tensor(X)), torch.tensor(y))
    t_loss.backward()
    assert abs(loss - t_loss.item()) <= 1e-10 * abs(t_loss.item())
    for (name, g), p in zip(grads.items(), t.parameters(), strict=True):
        assert rel_err(g, p.grad.numpy()) < 1e-10, name
