"""MLP <-> torch.nn.Sequential: conversion both ways, and training step for step with torch."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest

import bnprop
from bnprop import InputError
from bnprop.model import MLP
from bnprop.optim import SGD, Adam
from tests.conftest import rel_err

torch = pytest.importorskip("torch")
nn = torch.nn

SIZES = (20, 16, 12, 10, 4)


def _batches(n: int, m: int = 32, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        X = rng.standard_normal((m, SIZES[0])) * 2.0 + 1.0
        out.append((X, rng.integers(0, SIZES[-1], m)))
    return out


def _all_arrays(net: MLP) -> dict[str, np.ndarray]:
    return {**net.parameters(), **net.buffers()}


def test_to_torch_structure_and_values() -> None:
    net = MLP(SIZES, dtype="float64", running="average")
    for X, y in _batches(3):
        net.train_step(X, y, SGD(0.1))
    seq = net.to_torch()
    kinds = [type(mod).__name__ for mod in seq]
    assert kinds == ["Linear", "BatchNorm1d", "Sigmoid"] * 3 + ["Linear"]
    assert seq[0].bias is None and seq[-1].bias is not None
    assert seq[1].momentum is None and seq[1].eps == net.config.eps
    assert all(p.dtype == torch.float64 for p in seq.parameters())
    assert int(seq[4].num_batches_tracked) == 3
    np.testing.assert_array_equal(seq[4].running_var.numpy(), net.hidden[1].running_var)
    np.testing.assert_array_equal(seq[3].weight.detach().numpy(), net.hidden[1].W)
    plain = MLP(SIZES, batchnorm=False, activation="tanh").to_torch()
    assert [type(mod).__name__ for mod in plain] == ["Linear", "Tanh"] * 3 + ["Linear"]
    assert all(p.dtype == torch.float32 for p in plain.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"batchnorm": False, "activation": "relu"}, {"running": "average", "eps": 1e-3},
     {"momentum": 0.3, "activation": "identity"}, {"dtype": "float64"}],
)
def test_round_trip(kwargs: dict) -> None:
    net = MLP(SIZES, **kwargs)
    for X, y in _batches(2):
        net.train_step(X, y, SGD(0.1))
    back = MLP.from_torch(net.to_torch())
    assert back.config == net.config
    for k, v in _all_arrays(net).items():
        got = _all_arrays(back)[k]
        assert got.dtype == v.dtype
        np.testing.assert_array_equal(got, v)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_inference_equals_torch_eval(dtype: str) -> None:
    net = MLP(SIZES, dtype=dtype)
    for X, y in _batches(5):
        net.train_step(X, y, SGD(0.2))
    seq = net.to_torch().eval()
    X = _batches(1, m=50, seed=9)[0][0].astype(dtype)
    with torch.no_grad():
        ref = torch.softmax(seq(torch.tensor(X)), dim=1).numpy()
    assert rel_err(net.predict_proba(X), ref) < (1e-12 if dtype == "float64" else 1e-5)


CASES = {
    "ema-sgd": ({}, lambda: SGD(0.5), lambda ps: torch.optim.SGD(ps, lr=0.5)),
    "ema-momentum": ({"activation": "tanh"}, lambda: SGD(0.1, momentum=0.9, weight_decay=1e-3),
                     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3)),
    "average-sgd": ({"running": "average"}, lambda: SGD(0.5),
                    lambda ps: torch.optim.SGD(ps, lr=0.5)),
    "nobn-momentum": ({"batchnorm": False, "activation": "relu"},
                      lambda: SGD(0.05, momentum=0.9),
                      lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
    "ema-adam": ({"momentum": 0.2}, lambda: Adam(3e-3), lambda ps: torch.optim.Adam(ps, lr=3e-3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_training_step_for_step_equals_torch(case: str) -> None:
    kwargs, ours_opt, torch_opt = CASES[case]
    net = MLP(SIZES, dtype="float64", seed=2, **kwargs)
    seq = net.to_torch()
    opt, topt = ours_opt(), torch_opt(seq.parameters())
    for X, y in _batches(20, seed=3):
        loss = net.train_step(X, y, opt)
        topt.zero_grad()
        tloss = nn.functional.cross_entropy(seq(torch.tensor(X)), torch.tensor(y))
        tloss.backward()
        topt.step()
        assert abs(loss - tloss.item()) <= 1e-10 * abs(tloss.item())
    back = MLP.from_torch(seq)
    for k, v in _all_arrays(back).items():
        assert rel_err(_all_arrays(net)[k], v) < 1e-10, k


def _torch_frozen_grads(net: MLP, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Autograd of the net with mu_B and var_B detached (the frozen-statistics gradient)."""
    params = {k: torch.tensor(v, requires_grad=True) for k, v in net.parameters().items()}
    O = torch.tensor(X)
    for i in range(len(net.hidden)):
        Z = O @ params[f"hidden.{i}.W"].T
        mu, var = Z.mean(0).detach(), Z.var(0, unbiased=False).detach()
        A = params[f"hidden.{i}.gamma"] * (Z - mu) / torch.sqrt(var + net.config.eps)
        O = torch.sigmoid(A + params[f"hidden.{i}.beta"])
    logits = O @ params["out.W"].T + params["out.b"]
    nn.functional.cross_entropy(logits, torch.tensor(y)).backward()
    return {k: v.grad.numpy() for k, v in params.items()}


def test_frozen_gradients_equal_autograd_with_detached_statistics() -> None:
    net = MLP(SIZES, dtype="float64", stats="frozen", seed=4)
    for X, y in _batches(3, seed=5):
        net.train_step(X, y, SGD(0.3))  # non-trivial gamma and beta
    X, y = _batches(1, seed=6)[0]
    ref = _torch_frozen_grads(net, X, y)
    _, grads = net.loss_and_grads(X, y)
    for k in grads:
        assert rel_err(grads[k], ref[k]) < 1e-10, k


def _bad_sequentials() -> list[tuple[object, str]]:
    L = nn.Linear
    return [
        (L(4, 3), r"module: expected a torch.nn.Sequential, got Linear"),
        (nn.Sequential(L(4, 3, bias=False)), r"module\[0\]: expected the output layer Linear\(bias=True\) last"),
        (nn.Sequential(L(4, 5), nn.BatchNorm1d(5), nn.Sigmoid(), L(5, 3)),
         r"module\[0\]: expected Linear\(bias=False\) before BatchNorm1d \(beta is the bias\), got Linear"),
        (nn.Sequential(L(4, 5, bias=False), nn.BatchNorm1d(5), nn.Sigmoid(),
                       L(5, 5, bias=False), nn.Sigmoid(), L(5, 3)),
         r"module\[4\]: expected BatchNorm1d \(every hidden layer or none\), got Sigmoid"),
        (nn.Sequential(L(4, 5, bias=False), nn.BatchNorm1d(5, affine=False), nn.Sigmoid(), L(5, 3)),
         r"module\[1\]: expected BatchNorm1d\(affine=True, track_running_stats=True\)"),
        (nn.Sequential(L(4, 5), nn.Softplus(), L(5, 3)),
         r"module\[1\]: expected an activation \(Sigmoid, Tanh, ReLU, Identity\), got Softplus"),
        (nn.Sequential(L(4, 5), nn.Tanh(), L(5, 5), nn.ReLU(), L(5, 3)),
         r"module\[3\]: expected the activation Tanh, got ReLU"),
        (nn.Sequential(L(4, 5), L(5, 3)),
         r"module\[1\]: expected an activation \(Sigmoid, Tanh, ReLU, Identity\), got Linear"),
        (nn.Sequential(L(4, 5), nn.Tanh(), L(6, 3)),
         r"module: Linear layer 1 takes 6 inputs but the layer before it gives 5"),
        (nn.Sequential(L(4, 5, dtype=torch.float16), nn.Tanh(), L(5, 3, dtype=torch.float16)),
         r"module: expected all parameters float32 or all float64"),
        (nn.Sequential(L(4, 5, bias=False), nn.BatchNorm1d(5), nn.Tanh(),
                       L(5, 5, bias=False), nn.BatchNorm1d(5, momentum=0.2), nn.Tanh(), L(5, 3)),
         r"module: BatchNorm1d layers differ in \(eps, momentum\)"),
    ]


@pytest.mark.parametrize(("module", "match"), _bad_sequentials())
def test_from_torch_rejects_other_structures(module: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        MLP.from_torch(module)


def test_from_torch_of_a_plain_linear_model() -> None:
    lin = nn.Linear(4, 3, dtype=torch.float64)
    net = MLP.from_torch(nn.Sequential(lin))
    assert net.sizes == (4, 3) and net.hidden == []
    X = np.random.default_rng(0).standard_normal((5, 4))
    with torch.no_grad():
        ref = torch.softmax(lin(torch.tensor(X)), dim=1).numpy()
    assert rel_err(net.predict_proba(X), ref) < 1e-14


# ----------------------------------------------------------------- bad tensors and flags
FROM_TORCH = {"Sequential": bnprop.nn.Sequential.from_torch, "MLP": MLP.from_torch}
FINITE = "; every input must be finite."
MOMENTUM_WHY = ("; bnprop's momentum, the weight of each new batch in the running "
                "statistics, must be > 0 and <= 1.")


def _bn_net(**bn_kwargs: object) -> object:
    """Linear(bias=False) -> BatchNorm1d -> ReLU -> Linear, in float64."""
    return nn.Sequential(nn.Linear(4, 5, bias=False), nn.BatchNorm1d(5, **bn_kwargs), nn.ReLU(),
                         nn.Linear(5, 3)).double()


def _set(index: int, name: str, where: tuple[int, ...], value: float) -> Callable[[], object]:
    def make() -> object:
        seq = _bn_net()
        with torch.no_grad():
            getattr(seq[index], name)[where] = value
        return seq
    return make


BAD_TORCH = {
    "nan-weight": (_set(0, "weight", (1, 2), float("nan")),
                   "module[0].weight: contains NaN or inf (1 of 20 entries, first at index (1, 2))"
                   + FINITE),
    "inf-weight": (_set(3, "weight", (2, 4), float("inf")),
                   "module[3].weight: contains NaN or inf (1 of 15 entries, first at index (2, 4))"
                   + FINITE),
    "inf-gamma": (_set(1, "weight", (0,), -float("inf")),
                  "module[1].weight: contains NaN or inf (1 of 5 entries, first at index (0,))"
                  + FINITE),
    "nan-running-mean": (_set(1, "running_mean", (3,), float("nan")),
                         "module[1].running_mean: contains NaN or inf (1 of 5 entries, first at "
                         "index (3,))" + FINITE),
    "negative-running-var": (_set(1, "running_var", (2,), -0.5),
                             "module[1].running_var: expected variances >= 0, got -0.5."),
    "bn-bias-false": (lambda: _bn_net(bias=False),
                      "module[1]: expected BatchNorm1d(bias=True), got bias=False instead; "
                      "bnprop's BatchNorm1d always learns beta (the bias)."),
    "bn-affine-false": (lambda: _bn_net(affine=False),
                        "module[1]: expected BatchNorm1d(affine=True, track_running_stats=True), "
                        "got affine=False instead; bnprop's BatchNorm1d always learns gamma "
                        "and beta."),
    "bn-no-running-stats": (lambda: _bn_net(track_running_stats=False),
                            "module[1]: expected BatchNorm1d(affine=True, track_running_stats="
                            "True), got track_running_stats=False instead; bnprop's BatchNorm1d "
                            "keeps running statistics for inference."),
    "momentum-0": (lambda: _bn_net(momentum=0.0),
                   "module[1]: expected BatchNorm1d momentum in (0, 1] or None, got 0.0 instead"
                   + MOMENTUM_WHY),
    "momentum-above-1": (lambda: _bn_net(momentum=1.5),
                         "module[1]: expected BatchNorm1d momentum in (0, 1] or None, got 1.5 "
                         "instead" + MOMENTUM_WHY),
    "eps-0": (lambda: _bn_net(eps=0.0),
              "module[1]: expected BatchNorm1d eps > 0, got 0.0 instead; bnprop's eps must be a "
              "finite number > 0."),
}


def _raises_one_line(convert: Callable[[object], object], module: object, message: str) -> None:
    with pytest.raises(InputError, match="^" + re.escape(message) + "$") as info:
        convert(module)
    assert type(info.value) is InputError and "\n" not in str(info.value)
    assert info.value.__cause__ is None


@pytest.mark.parametrize("entry", list(FROM_TORCH))
@pytest.mark.parametrize("case", list(BAD_TORCH))
def test_from_torch_refuses_bad_tensors_and_flags_in_one_line(entry: str, case: str) -> None:
    make, message = BAD_TORCH[case]
    _raises_one_line(FROM_TORCH[entry], make(), message)


def test_from_torch_names_the_module_of_a_bad_second_layer() -> None:
    seq = nn.Sequential(nn.Linear(4, 5, bias=False), nn.BatchNorm1d(5), nn.Tanh(),
                        nn.Linear(5, 5, bias=False), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))
    seq[4].running_var[0] = float("inf")
    for convert in FROM_TORCH.values():
        _raises_one_line(convert, seq, "module[4].running_var: contains NaN or inf (1 of 5 "
                         "entries, first at index (0,))" + FINITE)


def test_from_torch_refuses_batchnorm2d_without_bias() -> None:
    seq = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2, bias=False),
                        nn.Flatten(), nn.Linear(8, 3))
    _raises_one_line(bnprop.nn.Sequential.from_torch, seq,
                     "module[1]: expected BatchNorm2d(bias=True), got bias=False instead; "
                     "bnprop's BatchNorm2d always learns beta (the bias).")
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, momentum=0.0))
    _raises_one_line(bnprop.nn.Sequential.from_torch, seq,
                     "module[1]: expected BatchNorm2d momentum in (0, 1] or None, got 0.0 instead"
                     + MOMENTUM_WHY)


@pytest.mark.parametrize("entry", list(FROM_TORCH))
@pytest.mark.parametrize("momentum", [None, 1.0, 0.25])
def test_from_torch_accepts_every_representable_momentum(entry: str, momentum: float | None
                                                         ) -> None:
    seq = _bn_net(momentum=momentum)
    with torch.no_grad():
        seq[1].running_mean.uniform_(-1.0, 1.0)
        seq[1].running_var.uniform_(0.5, 2.0)
        seq[1].weight.uniform_(0.5, 1.5)
        seq[1].bias.uniform_(-0.5, 0.5)
    net = FROM_TORCH[entry](seq)
    X = np.random.default_rng(1).standard_normal((7, 4))
    with torch.no_grad():
        ref = torch.softmax(seq.eval()(torch.tensor(X)), dim=1).numpy()
    assert rel_err(net.predict_proba(X), ref) < 1e-12
    assert net.modules[1].running == ("average" if momentum is None else "ema")
