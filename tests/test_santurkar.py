"""The parts of ``bnprop reproduce ics`` / ``landscape`` / ``noisy-bn`` (Santurkar et al.
2018): G' against a direct recomputation, the landscape quantities on a quadratic of known
smoothness, and the noise module (the commands: test_santurkar_commands.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from bnprop._validate import InputError
from bnprop.model import MLP
from bnprop.nn import BatchNorm1d, Linear, Sigmoid
from bnprop.optim import SGD, Adam
from bnprop.reproduce import NoisyUnit, ics, landscape
from bnprop.reproduce.noisy import activation_inputs, noisy_mlp

SIZES = (6, 5, 4, 4, 3)


def _batch(m: int = 12, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, SIZES[0])), rng.integers(0, SIZES[-1], m)


def _state(net: object) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in {**net.parameters(), **net.buffers()}.items()}  # type: ignore[attr-defined]


# ---- ICS: G' is a real recomputation ---------------------------------------------------

@pytest.mark.parametrize("arm", ["batchnorm", "frozen", "no_batchnorm"])
def test_g_prime_equals_a_direct_recomputation(arm: str) -> None:
    """G'_i is the gradient of a fresh copy whose layers j < i were set by hand to
    W_j - lr G_j (every parameter of those layers), and the measured net is untouched."""
    config = {"batchnorm": arm != "no_batchnorm",
              "stats": "frozen" if arm == "frozen" else "exact"}
    net = MLP(SIZES, dtype="float64", seed=3, **config)
    X, y = _batch()
    opt = SGD(0.3)
    net.train_step(X, y, opt)  # a net that has moved, with running statistics
    before, t = _state(net), opt.t
    pairs = ics.ics_gradients(net, opt, X, y)
    for name, value in _state(net).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    assert opt.t == t
    assert list(pairs) == ["hidden.1", "hidden.2", "out"]
    _, G = copy.deepcopy(net).loss_and_grads(X, y)
    for i, layer in enumerate(["hidden.0", "hidden.1", "hidden.2", "out"]):
        if i == 0:
            continue
        fresh = MLP(SIZES, dtype="float64", seed=3, **config)
        for name, p in fresh.parameters().items():
            moved = any(name.startswith(f"{below}.") for below in
                        ["hidden.0", "hidden.1", "hidden.2"][:i])
            p[...] = before[name] - 0.3 * G[name] if moved else before[name]
        _, G_direct = fresh.loss_and_grads(X, y)
        G_i, G_prime = pairs[layer]
        np.testing.assert_array_equal(G_i, G[f"{layer}.W"])
        np.testing.assert_allclose(G_prime, G_direct[f"{layer}.W"], rtol=1e-12, atol=1e-15)
        assert not np.allclose(G_prime, G_i, rtol=1e-9, atol=0)  # the shift is real


def test_g_prime_uses_the_optimizers_own_update() -> None:
    """With Adam (state from earlier steps) the layers below move by Adam's step."""
    net = MLP(SIZES, dtype="float64", seed=0)
    X, y = _batch(seed=4)
    opt = Adam(0.01)
    for _ in range(3):
        net.train_step(X, y, opt)
    pairs = ics.ics_gradients(net, opt, X, y)
    ref_net, ref_opt = copy.deepcopy(net), copy.deepcopy(opt)
    ref_net.train_step(X, y, ref_opt)  # the real next step: every layer moves
    moved = ref_net.parameters()
    fresh = copy.deepcopy(net)
    for name, p in fresh.parameters().items():
        if name.startswith("hidden.0."):
            p[...] = moved[name]
    _, grads = fresh.loss_and_grads(X, y)
    np.testing.assert_allclose(pairs["hidden.1"][1], grads["hidden.1.W"], rtol=1e-12)


def test_ics_values() -> None:
    G = np.array([[3.0, 0.0], [0.0, 4.0]])
    G2 = np.array([[3.0, 0.0], [0.0, 0.0]])
    values = ics.ics_values({"out": (G, G2.astype(np.float32))})
    assert values == {"out_l2": 4.0, "out_cos": pytest.approx(0.6, rel=1e-15),
                      "out_rel": pytest.approx(0.8, rel=1e-15)}
    assert ics.layer_of("hidden.2.gamma") == "hidden.2" and ics.layer_of("3.W") == "3"
    assert ics.weight_layers(MLP(SIZES)) == ["hidden.0", "hidden.1", "hidden.2", "out"]


# ---- landscape: a quadratic of known smoothness -----------------------------------------

def _quadratic(n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.array([0.1, 0.5, 1.0, 2.0, 3.0, 7.0])[:n]
    return Q @ np.diag(lam) @ Q.T, Q


def test_line_probe_on_a_quadratic() -> None:
    """L = x^T H x / 2: diff(eta) = eta ||H g||, beta_eff = ||H g|| / ||g|| <= lambda_max."""
    H, Q = _quadratic()
    calls = []

    def loss_fn(x: np.ndarray) -> float:
        return float(0.5 * x @ H @ x)

    def grad_fn(x: np.ndarray) -> np.ndarray:
        calls.append(x.copy())
        return H @ x

    x = np.random.default_rng(1).standard_normal(6)
    etas = [0.01, 0.05, 0.1, 0.3]
    probe = landscape.line_probe(loss_fn, grad_fn, x, etas)
    g = H @ x
    Hg = np.linalg.norm(H @ g)
    np.testing.assert_allclose(probe.grad_diffs, np.array(etas) * Hg, rtol=1e-12)
    assert probe.beta_eff == pytest.approx(Hg / np.linalg.norm(g), rel=1e-12)
    assert probe.beta_eff <= 7.0
    assert probe.grad_norm == pytest.approx(np.linalg.norm(g), rel=1e-15)
    np.testing.assert_allclose(probe.losses, [loss_fn(x - e * g) for e in etas], rtol=1e-14)
    assert probe.loss == loss_fn(x)
    np.testing.assert_array_equal(calls[0], x)  # the gradient at x, then at each moved point
    # Along the top eigenvector the bound is reached: beta_eff = lambda_max.
    top = landscape.line_probe(loss_fn, grad_fn, 2.0 * Q[:, -1], etas)
    assert top.beta_eff == pytest.approx(7.0, rel=1e-12)
    # A flat direction: zero gradient, no smoothness to measure.
    zero = landscape.line_probe(loss_fn, grad_fn, np.zeros(6), etas)
    assert np.isnan(zero.beta_eff) and (zero.grad_diffs == 0).all()


def test_line_probe_rejects_bad_input() -> None:
    with pytest.raises(InputError, match=r"etas: expected step sizes > 0, got \[0.1, 0.0\]"):
        landscape.line_probe(float, np.asarray, np.ones(3), [0.1, 0.0])
    with pytest.raises(InputError, match=r"x: expected a 1-D vector, got shape \(2, 2\)"):
        landscape.line_probe(float, np.asarray, np.ones((2, 2)), [0.1])


def test_net_line_is_the_nets_loss_and_gradient() -> None:
    net = MLP(SIZES, dtype="float64", seed=2)
    X, y = _batch()
    before = _state(net)
    line = landscape.NetLine(net, X, y)
    x = line.vector()
    loss, grads = copy.deepcopy(net).loss_and_grads(X, y)
    assert line.loss_fn(x) == loss
    np.testing.assert_array_equal(
        line.grad_fn(x), np.concatenate([g.ravel() for g in grads.values()]))
    moved = x - 0.2 * line.grad_fn(x)
    fresh = MLP(SIZES, dtype="float64", seed=2)
    start = 0
    for p in fresh.parameters().values():
        p[...] = moved[start:start + p.size].reshape(p.shape)
        start += p.size
    loss2, grads2 = fresh.loss_and_grads(X, y)
    assert line.loss_fn(moved) == loss2
    np.testing.assert_array_equal(
        line.grad_fn(moved), np.concatenate([g.ravel() for g in grads2.values()]))
    for name, value in _state(net).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    values = landscape.landscape_values(net, X, y, [0.1, 0.2])
    assert values["loss"] == loss and values["loss_min"] <= values["loss_max"]
    assert values["grad_diff_min"] <= values["grad_diff_max"]
    assert values["beta_eff"] >= values["grad_diff_max"] / (0.2 * values["grad_norm"])


def test_net_line_non_finite_point_is_nan() -> None:
    net = MLP(SIZES, seed=2)
    X, y = _batch()
    line = landscape.NetLine(net, X.astype(np.float32), y)
    far = line.vector() * 1e39  # beyond float32
    with np.errstate(all="ignore"):
        assert np.isnan(line.loss_fn(far)) and np.isnan(line.grad_fn(far)).all()


# ---- noisy BN ----------------------------------------------------------------------------

def test_noisy_unit_forward_backward_and_inference() -> None:
    unit = NoisyUnit(4, shift=0.5, scale=3.0, seed=7, dtype="float64")
    X = np.random.default_rng(0).standard_normal((5, 4))
    Y1 = unit.forward(X)
    s1, b1 = unit.s.copy(), unit.b.copy()
    assert ((s1 >= 1) & (s1 <= 3)).all() and ((b1 >= -0.5) & (b1 <= 0.5)).all()
    assert (b1 != 0).all()
    np.testing.assert_array_equal(Y1, X * s1 + b1)
    ref = np.random.default_rng(7)
    np.testing.assert_array_equal(s1, ref.uniform(1.0, 3.0, 4))
    np.testing.assert_array_equal(b1, ref.uniform(-0.5, 0.5, 4))
    dY = np.random.default_rng(1).standard_normal((5, 4))
    np.testing.assert_array_equal(unit.backward(dY), dY * s1)
    assert unit.grads == {} and unit.param_names == ()
    unit.forward(X)
    assert unit.draws == 2 and not np.array_equal(unit.s, s1)  # redrawn every training step
    s2 = unit.s.copy()
    np.testing.assert_array_equal(unit.forward(X, training=False), X)  # noise off
    np.testing.assert_array_equal(unit.s, s2)
    assert unit.draws == 2
    with pytest.raises(InputError, match=r"shift: expected a finite number >= 0, got -1"):
        NoisyUnit(4, shift=-1)
    with pytest.raises(InputError, match=r"scale: expected a finite number >= 1, got 0.5"):
        NoisyUnit(4, scale=0.5)
    with pytest.raises(InputError, match=r"num_features: expected an integer >= 1"):
        NoisyUnit(0)


def test_noisy_net_gradient_against_finite_differences() -> None:
    """With the draw held fixed, the noisy net's gradient is the derivative of its loss."""
    net = noisy_mlp(SIZES, seed=1, dtype="float64", shift=0.8, scale=2.5)
    noise = [m for m in net.modules if isinstance(m, NoisyUnit)]
    assert len(noise) == 3
    for k, m in enumerate(noise):
        rng = np.random.default_rng(k)
        s, b = rng.uniform(1, 2.5, m.in_features), rng.uniform(-0.8, 0.8, m.in_features)
        m.redraw = lambda m=m, s=s, b=b: (m.s.__setitem__(..., s), m.b.__setitem__(..., b))
    X, y = _batch()
    _, grads = net.loss_and_grads(X, y)
    params = net.parameters()
    for name in ("0.W", "1.gamma", "5.beta", "12.W", "12.b"):
        p = params[name]
        for idx in [(0,) * p.ndim, tuple(d - 1 for d in p.shape)]:
            old = p[idx]
            p[idx] = old + 1e-6
            up = net.loss_and_grads(X, y)[0]
            p[idx] = old - 1e-6
            down = net.loss_and_grads(X, y)[0]
            p[idx] = old
            assert grads[name][idx] == pytest.approx((up - down) / 2e-6, rel=1e-6, abs=1e-9)


def test_noisy_net_starts_as_the_bn_mlp_and_without_noise_is_it() -> None:
    mlp = MLP(SIZES, seed=5, dtype="float64")
    quiet = noisy_mlp(SIZES, seed=5, dtype="float64", shift=0.0, scale=1.0)
    Ws = [(p, q) for (n, p), (_, q) in zip(mlp.parameters().items(),
                                             quiet.parameters().items(), strict=True)
          if n.endswith(".W")]
    assert len(Ws) == 4
    for p, q in Ws:
        np.testing.assert_array_equal(p, q)
    assert [type(m) for m in quiet.modules[:4]] == [Linear, BatchNorm1d, NoisyUnit, Sigmoid]
    X, y = _batch(m=20)
    opt_a, opt_b = SGD(0.5), SGD(0.5)
    for _ in range(5):
        la, lb = mlp.train_step(X, y, opt_a), quiet.train_step(X, y, opt_b)
        assert la == pytest.approx(lb, rel=1e-12)
    np.testing.assert_allclose(mlp.predict_proba(X), quiet.predict_proba(X), rtol=1e-10)


def test_activation_inputs() -> None:
    net = MLP(SIZES, seed=2)
    X = _batch()[0].astype(np.float32)
    before = _state(net)
    inference = activation_inputs(net, X, training=False)
    for got, want in zip(inference, net.hidden_inputs(X), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    training = activation_inputs(net, X, training=True)[0]
    np.testing.assert_allclose(training.mean(axis=0), 0.0, atol=1e-5)  # batch statistics
    for name, value in _state(net).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    noisy = noisy_mlp(SIZES, seed=2, shift=1.0, scale=2.0)
    unit = noisy.modules[2]
    ahead = copy.deepcopy(unit)
    A = activation_inputs(noisy, X, training=True)[0]
    assert unit.draws == 0  # the net's own generator did not move
    ahead.redraw()  # the draw of the net's next training step
    linear, norm = copy.deepcopy(noisy.modules[0]), copy.deepcopy(noisy.modules[1])
    O = norm.forward(linear.forward(X))
    np.testing.assert_allclose(A, O * ahead.s + ahead.b, rtol=1e-5, atol=1e-6)
