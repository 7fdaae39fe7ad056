"""MLP: gradients vs finite differences, running statistics by hand, inference, fold, state."""

from __future__ import annotations

import io

import numpy as np
import pytest

import bnprop.model as model_mod
from bnprop import InputError
from bnprop.model import MLP, FoldedMLP
from bnprop.optim import SGD, Adam
from tests.conftest import rel_err


def _data(seed: int = 0, m: int = 8, n: int = 6, K: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, n)) + 0.5, rng.integers(0, K, m)


def _train(net: MLP, n_steps: int, seed: int = 1, m: int = 16, lr: float = 0.3) -> None:
    opt = SGD(lr, momentum=0.5)
    for i in range(n_steps):
        X, y = _data(seed + i, m=m, n=net.sizes[0], K=net.n_classes)
        net.train_step(X, y, opt)


def _loss(net: MLP, X: np.ndarray, y: np.ndarray) -> float:
    return net.loss_and_grads(X, y)[0]


# ---------------------------------------------------------------------- structure and init
def test_parameter_and_buffer_names_and_shapes() -> None:
    net = MLP((6, 5, 4, 3))
    assert {k: v.shape for k, v in net.parameters().items()} == {
        "hidden.0.W": (5, 6), "hidden.0.gamma": (5,), "hidden.0.beta": (5,),
        "hidden.1.W": (4, 5), "hidden.1.gamma": (4,), "hidden.1.beta": (4,),
        "out.W": (3, 4), "out.b": (3,),
    }
    assert {k: v.shape for k, v in net.buffers().items()} == {
        "hidden.0.running_mean": (5,), "hidden.0.running_var": (5,),
        "hidden.0.num_batches_tracked": (),
        "hidden.1.running_mean": (4,), "hidden.1.running_var": (4,),
        "hidden.1.num_batches_tracked": (),
    }
    plain = MLP((6, 5, 4, 3), batchnorm=False)
    assert list(plain.parameters()) == ["hidden.0.W", "hidden.0.b", "hidden.1.W", "hidden.1.b",
                                        "out.W", "out.b"]
    assert plain.buffers() == {}


def test_parameters_are_live_views() -> None:
    net = MLP((6, 5, 3), dtype="float64")
    X, _ = _data()
    before = net.predict_proba(X)
    net.parameters()["out.b"][0] += 10.0
    assert net.out.b[0] == 10.0
    assert not np.allclose(net.predict_proba(X), before)


def test_initialization() -> None:
    net = MLP((400, 300, 200, 10), seed=3, dtype="float64")
    for name, W in net.parameters().items():
        if name.endswith(".W"):
            assert abs(W.mean()) < 0.01 / np.sqrt(W.shape[1])
            assert abs(W.std() * np.sqrt(W.shape[1]) - 1.0) < 0.02, name
    for layer in net.hidden:
        np.testing.assert_array_equal(layer.gamma, 1.0)
        np.testing.assert_array_equal(layer.beta, 0.0)
        np.testing.assert_array_equal(layer.running_mean, 0.0)
        np.testing.assert_array_equal(layer.running_var, 1.0)
    np.testing.assert_array_equal(net.out.b, 0.0)
    custom = MLP((400, 300, 200, 10), seed=3, dtype="float64", init_std=0.1)
    assert abs(custom.hidden[0].W.std() - 0.1) < 0.002


def test_with_and_without_batchnorm_start_from_the_same_weights() -> None:
    a = MLP((20, 10, 10, 4), seed=7)
    b = MLP((20, 10, 10, 4), seed=7, batchnorm=False)
    c = MLP((20, 10, 10, 4), seed=7, dtype="float64")
    for k in ("hidden.0.W", "hidden.1.W", "out.W"):
        np.testing.assert_array_equal(a.parameters()[k], b.parameters()[k])
        np.testing.assert_array_equal(a.parameters()[k], c.parameters()[k].astype(np.float32))
    assert not np.array_equal(MLP((20, 10, 4), seed=8).out.W, MLP((20, 10, 4), seed=7).out.W)


# ---------------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    ("kwargs"),
    [{"activation": "sigmoid"}, {"activation": "tanh"},
     {"activation": "tanh", "batchnorm": False}, {"activation": "sigmoid", "batchnorm": False}],
)
def test_gradients_equal_central_differences(kwargs: dict) -> None:
    net = MLP((6, 5, 4, 3), dtype="float64", seed=1, **kwargs)
    net.hidden[0].W *= 2.0  # away from the symmetric start
    X, y = _data(2)
    loss, grads = net.loss_and_grads(X, y)
    assert loss == pytest.approx(_loss(net, X, y), rel=1e-15)
    h = 1e-6
    for name, p in net.parameters().items():
        fd = np.zeros_like(p)
        for idx in np.ndindex(*p.shape):
            old = p[idx]
            p[idx] = old + h
            up = _loss(net, X, y)
            p[idx] = old - h
            down = _loss(net, X, y)
            p[idx] = old
            fd[idx] = (up - down) / (2 * h)
        assert grads[name].shape == p.shape
        assert rel_err(grads[name], fd) < 1e-7, name


def test_frozen_statistics_change_only_the_gradient() -> None:
    X, y = _data(3)
    exact = MLP((6, 5, 4, 3), dtype="float64", stats="exact")
    frozen = MLP((6, 5, 4, 3), dtype="float64", stats="frozen")
    loss_e, g_e = exact.loss_and_grads(X, y)
    loss_f, g_f = frozen.loss_and_grads(X, y)
    assert loss_e == loss_f
    for k in ("out.W", "out.b", "hidden.1.gamma", "hidden.1.beta"):
        np.testing.assert_array_equal(g_e[k], g_f[k])
    assert rel_err(g_f["hidden.1.W"], g_e["hidden.1.W"]) > 1e-3


def test_loss_and_grads_leave_parameters_unchanged() -> None:
    net = MLP((6, 5, 3), dtype="float64")
    before = {k: v.copy() for k, v in net.parameters().items()}
    net.loss_and_grads(*_data())
    for k, v in net.parameters().items():
        np.testing.assert_array_equal(v, before[k])


def test_train_step_is_loss_and_grads_then_optimizer_step() -> None:
    X, y = _data(4)
    a, b = MLP((6, 5, 3), dtype="float64"), MLP((6, 5, 3), dtype="float64")
    loss, grads = a.loss_and_grads(X, y)
    Adam(0.01).step(a.parameters(), grads)
    assert b.train_step(X, y, Adam(0.01)) == loss
    for k, v in a.parameters().items():
        np.testing.assert_array_equal(v, b.parameters()[k])


def test_training_reduces_the_loss() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 6))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)
    net = MLP((6, 16, 16, 3))
    opt = SGD(0.5)
    losses = [net.train_step(X, y, opt) for _ in range(200)]
    assert losses[-1] < 0.3 * losses[0]
    assert net.accuracy(X, y) > 0.9


def test_float32_end_to_end() -> None:
    net = MLP((6, 5, 4, 3))
    X, y = _data(5)
    loss, grads = net.loss_and_grads(X, y)  # float64 X is converted to the net's dtype
    assert isinstance(loss, float)
    assert all(g.dtype == np.float32 for g in grads.values())
    net.train_step(X.astype(np.float32), y, Adam())
    assert all(p.dtype == np.float32 for p in net.parameters().values())
    assert all(b.dtype == np.float32 for k, b in net.buffers().items()
               if not k.endswith("num_batches_tracked"))
    assert net.predict_proba(X).dtype == np.float32
    assert net.fold().predict_proba(X).dtype == np.float32
    net64 = MLP((6, 5, 4, 3), dtype="float64")
    loss64, grads64 = net64.loss_and_grads(X.astype(np.float32).astype(np.float64), y)
    assert abs(loss - loss64) < 1e-6
    for k in grads:
        assert rel_err(grads[k], grads64[k]) < 1e-4, k


# ---------------------------------------------------------------------- running statistics
def _layer0_batch_stats(net: MLP, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mu_B and the unbiased m/(m-1) var_B of Z = X W^T, by hand."""
    Z = X @ net.hidden[0].W.T
    m = X.shape[0]
    mu = Z.sum(axis=0) / m
    return mu, ((Z - mu) ** 2).sum(axis=0) / (m - 1)


def test_running_ema_one_step_by_hand() -> None:
    net = MLP((6, 5, 3), dtype="float64", momentum=0.25)
    X, y = _data(6)
    mu, var_unbiased = _layer0_batch_stats(net, X)
    net.loss_and_grads(X, y)
    np.testing.assert_allclose(net.hidden[0].running_mean, 0.75 * 0 + 0.25 * mu, rtol=1e-14)
    np.testing.assert_allclose(net.hidden[0].running_var, 0.75 * 1 + 0.25 * var_unbiased, rtol=1e-14)
    assert int(net.hidden[0].num_batches_tracked) == 1
    X2, y2 = _data(7, m=5)
    mu2, var2 = _layer0_batch_stats(net, X2)
    net.loss_and_grads(X2, y2)
    np.testing.assert_allclose(net.hidden[0].running_mean, 0.75 * 0.25 * mu + 0.25 * mu2, rtol=1e-14)
    np.testing.assert_allclose(
        net.hidden[0].running_var, 0.75 * (0.75 + 0.25 * var_unbiased) + 0.25 * var2, rtol=1e-14)


def test_running_average_is_the_mean_over_batches() -> None:
    net = MLP((6, 5, 3), dtype="float64", running="average")
    batches = [_data(s, m=m) for s, m in ((8, 8), (9, 5), (10, 12))]
    stats = [_layer0_batch_stats(net, X) for X, _ in batches]
    for k, (X, y) in enumerate(batches, start=1):
        net.loss_and_grads(X, y)  # W is unchanged: Z of layer 0 is known
        np.testing.assert_allclose(
            net.hidden[0].running_mean, np.mean([s[0] for s in stats[:k]], axis=0), rtol=1e-13)
        np.testing.assert_allclose(
            net.hidden[0].running_var, np.mean([s[1] for s in stats[:k]], axis=0), rtol=1e-13)
        assert int(net.hidden[0].num_batches_tracked) == k


# ---------------------------------------------------------------------- inference and fold
def test_predict_proba_uses_the_running_statistics() -> None:
    net = MLP((6, 5, 3), dtype="float64", activation="tanh")
    _train(net, 5)
    X, _ = _data(11, m=20)
    L = net.hidden[0]
    A = L.gamma * (X @ L.W.T - L.running_mean) / np.sqrt(L.running_var + net.config.eps) + L.beta
    logits = np.tanh(A) @ net.out.W.T + net.out.b
    P = np.exp(logits - logits.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    assert rel_err(net.predict_proba(X), P) < 1e-14
    np.testing.assert_array_equal(net.predict(X), P.argmax(axis=1))
    y = P.argmax(axis=1)
    y[:5] = (y[:5] + 1) % 3
    assert net.accuracy(X, y) == 0.75


def test_predict_in_blocks_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    net = MLP((6, 5, 4, 3), dtype="float64")
    _train(net, 3)
    X, _ = _data(12, m=23)
    whole = net.predict_proba(X)
    monkeypatch.setattr(model_mod, "PREDICT_BLOCK_ROWS", 5)
    np.testing.assert_array_equal(net.predict_proba(X), whole)
    assert net.predict_proba(X[:1]).shape == (1, 3)  # inference takes a single row
    assert net.predict_proba(X[:0]).shape == (0, 3)


@pytest.mark.parametrize("running", ["ema", "average"])
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_fold_equals_unfolded_net(running: str, activation: str) -> None:
    net = MLP((6, 5, 4, 3), dtype="float64", running=running, activation=activation)
    _train(net, 10)
    assert not np.allclose(net.hidden[1].running_mean, 0.0)
    folded = net.fold()
    assert isinstance(folded, FoldedMLP)
    assert folded.sizes == net.sizes
    X, y = _data(13, m=50)
    assert np.max(np.abs(folded.predict_proba(X) - net.predict_proba(X))) < 1e-12
    np.testing.assert_array_equal(folded.predict(X), net.predict(X))
    assert folded.accuracy(X, y) == net.accuracy(X, y)
    # The folded net holds copies: training on does not change it.
    P = folded.predict_proba(X)
    _train(net, 2)
    np.testing.assert_array_equal(folded.predict_proba(X), P)


def test_fold_by_hand_and_without_batchnorm() -> None:
    net = MLP((6, 5, 3), dtype="float64")
    _train(net, 4)
    L, eps = net.hidden[0], net.config.eps
    W_fold, b_fold = net.fold().layers[0]
    s = L.gamma / np.sqrt(L.running_var + eps)
    np.testing.assert_allclose(W_fold, s[:, None] * L.W, rtol=1e-15)
    np.testing.assert_allclose(b_fold, L.beta - s * L.running_mean, rtol=1e-14, atol=1e-15)
    plain = MLP((6, 5, 3), dtype="float64", batchnorm=False)
    _train(plain, 4)
    X, _ = _data(14)
    np.testing.assert_array_equal(plain.fold().predict_proba(X), plain.predict_proba(X))


def test_fold_float32_is_close() -> None:
    net = MLP((6, 5, 4, 3))
    _train(net, 10)
    X, _ = _data(15, m=50)
    assert np.max(np.abs(net.fold().predict_proba(X) - net.predict_proba(X))) < 1e-5


# ---------------------------------------------------------------------- state
def _roundtrip(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        return dict(f)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"batchnorm": False, "activation": "relu"},
     {"dtype": "float64", "running": "average", "stats": "frozen", "eps": 1e-3, "seed": 5,
      "init_std": 0.3, "momentum": 0.2}],
)
def test_state_roundtrip_continues_bit_for_bit(kwargs: dict) -> None:
    net = MLP((6, 5, 4, 3), **kwargs)
    opt = SGD(0.2, momentum=0.9)
    _train_with(net, opt, range(3))
    state, opt_state = _roundtrip(net.get_state()), _roundtrip(opt.state_dict())
    assert all(v.dtype != object for v in state.values())
    clone, opt2 = MLP.from_state(state), SGD(0.2, momentum=0.9)
    opt2.load_state_dict(opt_state)
    assert clone.config == net.config
    _train_with(net, opt, range(3, 6))
    _train_with(clone, opt2, range(3, 6))
    for k, v in {**net.parameters(), **net.buffers()}.items():
        np.testing.assert_array_equal({**clone.parameters(), **clone.buffers()}[k], v)


def _train_with(net: MLP, opt: SGD, seeds: range) -> None:
    for s in seeds:
        X, y = _data(20 + s, m=10)
        net.train_step(X, y, opt)


def test_get_state_returns_copies() -> None:
    net = MLP((6, 5, 3))
    state = net.get_state()
    state["hidden.0.W"][...] = 0
    assert np.any(net.hidden[0].W != 0)
    assert state["config"].dtype.kind == "U"


def test_from_state_errors() -> None:
    state = MLP((6, 5, 3)).get_state()
    missing = {k: v for k, v in state.items() if k != "hidden.0.gamma"}
    with pytest.raises(InputError, match=r"state: missing key 'hidden.0.gamma' for MLP\(\(6, 5, 3\)"):
        MLP.from_state(missing)
    with pytest.raises(InputError, match=r"hidden.0.W: expected shape \(5, 6\) with axis 1 = 6, got shape \(5, 7\)"):
        MLP.from_state({**state, "hidden.0.W": np.zeros((5, 7))})
    with pytest.raises(InputError, match=r"state: unexpected key 'hidden\.0\.b'"):
        MLP.from_state({**state, "hidden.0.b": np.zeros(5)})
    with pytest.raises(InputError, match=r"state: expected the dict of MLP\.get_state"):
        MLP.from_state({k: v for k, v in state.items() if k != "config"})
    with pytest.raises(InputError, match=r"state\['config'\]: expected a 0-d unicode array"):
        MLP.from_state({**state, "config": np.zeros(3)})
    with pytest.raises(InputError, match=r"state\['config'\]: not a JSON MLP configuration"):
        MLP.from_state({**state, "config": np.array("{oops")})
    with pytest.raises(InputError, match=r"hidden\.0\.running_var: contains NaN or inf"):
        MLP.from_state({**state, "hidden.0.running_var": np.full(5, np.nan)})
    with pytest.raises(InputError, match=r"hidden\.0\.running_var: expected variances >= 0, got -1\.0"):
        MLP.from_state({**state, "hidden.0.running_var": -np.ones(5)})
    with pytest.raises(InputError, match=r"hidden\.0\.num_batches_tracked: expected an integer scalar"):
        MLP.from_state({**state, "hidden.0.num_batches_tracked": np.array([1])})


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sizes": (784,)}, r"sizes: expected a sequence of >= 2 positive integers"),
        ({"sizes": (784, 0, 10)}, r"sizes: expected a sequence of >= 2 positive integers"),
        ({"sizes": 784}, r"sizes: expected a sequence"),
        ({"sizes": (784, 1)}, r"sizes: expected >= 2 classes in sizes\[-1\], got 1"),
        ({"activation": "softplus"}, "activation: expected one of 'sigmoid', 'tanh', 'relu', 'identity'. Got 'softplus'"),
        ({"stats": "approx"}, "stats: expected one of 'exact', 'frozen'. Got 'approx'"),
        ({"dtype": "float16"}, "dtype: expected one of 'float32', 'float64'. Got 'float16'"),
        ({"running": "cumulative"}, "running: expected one of 'ema', 'average'. Got 'cumulative'"),
        ({"momentum": 1.5}, r"momentum: expected a number in \(0, 1\], got 1.5"),
        ({"momentum": 0}, "momentum: expected a finite number > 0"),
        ({"eps": -1.0}, "eps: expected a finite number > 0"),
        ({"init_std": 0.0}, "init_std: expected a finite number > 0"),
        ({"seed": -1}, "seed: expected an integer >= 0, got -1"),
        ({"batchnorm": "yes"}, "batchnorm: expected True or False, got 'yes'"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    sizes = kwargs.pop("sizes", (6, 5, 3))
    with pytest.raises(InputError, match=match):
        MLP(sizes, **kwargs)


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        (np.zeros(6), [0], r"X: expected a 2D array of shape \(m, n_features\), got a 1D array of shape \(6,\)"),
        (np.zeros((4, 7)), [0] * 4, r"X: expected shape \(m, 6\) with n_features = 6, got shape \(4, 7\)"),
        (np.full((4, 6), np.inf), [0] * 4, "X: contains NaN or inf"),
        (np.zeros((4, 6)), np.zeros(4), "y: expected integer class labels, got dtype float64"),
        (np.zeros((4, 6)), [0, 1, 2], "y: expected 4 labels, one per row of the inputs, got 3"),
        (np.zeros((4, 6)), [0, 1, 2, 3], r"y: labels must lie in 0..2 \(3 classes\), got 3"),
    ],
)
def test_bad_batch(X: np.ndarray, y: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        MLP((6, 5, 3)).loss_and_grads(X, y)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e39])  # 1e39: inf once cast to float32
def test_a_non_finite_input_is_named_with_its_index(backend: str, bad: float) -> None:
    """The compiled finiteness pass (numba) and NumPy's test (numpy) find the same entry,
    in a batch already float32 and C-contiguous and in one that is converted first (a
    float64 beyond float32's range: the message says so, and no overflow warning)."""
    net = MLP((6, 5, 3), dtype="float32", backend=backend)
    X = np.zeros((4, 6))
    X[2, 3] = bad
    y = [0, 1, 2, 0]
    batches = [X] if bad == 1e39 else [X, X.astype(np.float32)]  # converted / as it is
    calls = [lambda B: net.train_step(B, y, SGD(0.1)), lambda B: net.predict(B),
             lambda B: net.loss_and_grads(B, y)]
    cast = r", 1e\+39 in float64, beyond float32's range \(\+-3.403e\+38\)"
    for batch in batches:
        for call in calls:
            with pytest.raises(InputError, match=r"^X: contains NaN or inf \(1 of 24 entries, "
                               r"first at index \(2, 3\)" + (cast if bad == 1e39 else "")
                               + r"\); every input must be finite\.$"):
                call(batch)


@pytest.mark.parametrize("batchnorm", [True, False])
def test_a_training_batch_of_one_row_is_refused(batchnorm: bool) -> None:
    net = MLP((6, 5, 3), batchnorm=batchnorm)
    with pytest.raises(InputError, match=r"X: got a training batch of 1 example; training needs m >= 2 rows \(the batch variance of one example is always 0"):
        net.train_step(np.zeros((1, 6)), [0], SGD(0.1))


def test_inference_validates_too() -> None:
    net = MLP((6, 5, 3))
    with pytest.raises(InputError, match=r"X: expected shape \(m, 6\) with n_features = 6"):
        net.predict(np.zeros((2, 5)))
    with pytest.raises(InputError, match="y: expected 2 labels"):
        net.accuracy(np.zeros((2, 6)), [0])
    with pytest.raises(InputError, match=r"X: expected shape \(m, 6\)"):
        net.fold().predict_proba(np.zeros((2, 5)))


def test_hidden_inputs_are_the_activation_inputs_in_inference_mode() -> None:
    """hidden_inputs(X)[l] is A of layer l with the running statistics; sigma(A) feeds on."""
    from bnprop.activations import get_activation

    rng = np.random.default_rng(11)
    for batchnorm in (True, False):
        net = MLP((6, 5, 4, 3), batchnorm=batchnorm, dtype="float64", seed=2)
        X, y = rng.standard_normal((20, 6)), rng.integers(0, 3, 20)
        for _ in range(3):
            net.loss_and_grads(X, y)  # move the running statistics off 0 and 1
        A = net.hidden_inputs(X[:7])
        assert [a.shape for a in A] == [(7, 5), (7, 4)]
        O = X[:7]
        for layer, A_l in zip(net.hidden, A, strict=True):
            Z = O @ layer.W.T
            if batchnorm:
                expected = layer.gamma * (Z - layer.running_mean) / np.sqrt(
                    layer.running_var + 1e-5) + layer.beta
            else:
                expected = Z + layer.b
            np.testing.assert_allclose(A_l, expected, rtol=1e-12, atol=1e-14)
            O = get_activation("sigmoid").forward(A_l)
