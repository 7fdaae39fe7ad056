"""The compiled whole train step (bnprop.nn.compiled, bnprop.kernels._mlp_compiled): taken
when the plan and batch allow it, bit-identical to the Python step, and as careful with
non-finite steps and copies."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import bnprop
from bnprop import nn, threads
from bnprop.kernels import blas
from bnprop.nn.compiled import COMPILED_Z_BYTES, CompiledStep, compiled_step

pytestmark = pytest.mark.skipif(not blas.available(), reason="NumPy's scipy-openblas not found")


def _net(dtype: str = "float32", *, act: str = "Sigmoid", stats: str = "exact",
         running: str = "ema", bias: bool = True, widths: tuple[int, ...] = (12, 9, 7),
         n_in: int = 10, k: int = 4) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, w in enumerate(widths):
        layers += [nn.Linear(n_in if i == 0 else widths[i - 1], w, bias=False, dtype=dtype,
                             rng=i),
                   nn.BatchNorm1d(w, dtype=dtype, stats=stats, running=running),
                   getattr(nn, act)(dtype=dtype)]
    layers.append(nn.Linear(widths[-1], k, bias=bias, dtype=dtype, rng=99))
    return nn.Sequential(*layers)


def _batch(m: int = 32, n_in: int = 10, k: int = 4, dtype: str = "float32", seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, n_in)) * 2 + 1).astype(dtype), rng.integers(0, k, m)


def _python(net: nn.Sequential) -> nn.Sequential:
    net._compiled = None  # the Python step only
    return net


def _assert_same(a: nn.Sequential, b: nn.Sequential) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        np.testing.assert_array_equal(p, q, err_msg=name)
    for name, v in a.buffers().items():
        np.testing.assert_array_equal(v, b.buffers()[name], err_msg=name)


OPTIMIZERS = {
    "sgd": lambda: bnprop.SGD(0.3),
    "momentum-wd": lambda: bnprop.SGD(0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
    "adam": lambda: bnprop.Adam(0.01),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize(("act", "stats", "running", "bias"), [
    ("Sigmoid", "exact", "ema", True), ("ReLU", "frozen", "average", True),
    ("Tanh", "exact", "average", False), ("Identity", "frozen", "ema", False)])
def test_bit_identical_to_the_python_step(dtype: str, opt: str, act: str, stats: str,
                                          running: str, bias: bool) -> None:
    kw = {"act": act, "stats": stats, "running": running, "bias": bias}
    fast, slow = _net(dtype, **kw), _python(_net(dtype, **kw))
    o_fast, o_slow = OPTIMIZERS[opt](), OPTIMIZERS[opt]()
    for step in range(6):
        X, y = _batch(32 if step % 3 else 17, dtype=dtype, seed=step)  # two batch sizes
        assert fast.train_step(X, y, o_fast) == slow.train_step(X, y, o_slow)
    assert isinstance(fast._compiled, CompiledStep) and slow._compiled is None
    _assert_same(fast, slow)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("m", "k"), [(17, 130), (150, 4), (140, 135)])
def test_the_loss_sums_outside_the_compiled_order_keep_the_python_steps_bits(
        dtype: str, m: int, k: int) -> None:
    """More than 128 classes or rows: the loss's sums are NumPy's own (not the compiled
    pairwise order), between and after the compiled calls."""
    from bnprop.kernels.loss import sums_in_numpy_order

    assert not sums_in_numpy_order(np.dtype(dtype), m, k)
    fast, slow = _net(dtype, k=k), _python(_net(dtype, k=k))
    o_fast, o_slow = bnprop.SGD(0.3, momentum=0.9), bnprop.SGD(0.3, momentum=0.9)
    for step in range(3):
        X, y = _batch(m, k=k, dtype=dtype, seed=step)
        assert fast.train_step(X, y, o_fast) == slow.train_step(X, y, o_slow)
        assert compiled_step(fast, X) is not None  # the compiled step ran
    _assert_same(fast, slow)


def test_settings_and_buffers_changed_between_steps_are_followed() -> None:
    """The step keeps the views of the flat arrays, but reads each BatchNorm1d's eps,
    momentum, stats, running and its running buffers anew: a user may change them."""
    fast, slow = _net(), _python(_net())
    o_fast, o_slow = bnprop.Adam(0.01), bnprop.Adam(0.01)

    def both(seed: int) -> None:
        X, y = _batch(seed=seed)
        assert fast.train_step(X, y, o_fast) == slow.train_step(X, y, o_slow)
        _assert_same(fast, slow)

    both(0)
    for net in (fast, slow):
        norm = net.modules[1]
        norm.eps, norm.momentum, norm.stats = 1e-2, 0.5, "frozen"
        net.modules[4].running = "average"
        net.modules[7].running_mean = np.full(7, 3.0, np.float32)  # a new array
        net.modules[7].num_batches_tracked = np.array(5)
    both(1)
    assert fast.modules[7].running_mean[0] != 3.0  # the new array was updated
    assert int(fast.modules[7].num_batches_tracked) == 6
    assert isinstance(fast._compiled, CompiledStep)


def test_the_default_mlp_takes_it_with_any_thread_count() -> None:
    X, y = _batch(60, n_in=784, k=10, seed=3)
    nets = []
    for n in (1, 2):
        net = bnprop.MLP((784, 100, 100, 10))
        with threads.using(n):
            net.train_step(X, y, bnprop.SGD(0.1))
        assert isinstance(net._compiled, CompiledStep)
        nets.append(net)
    _assert_same(*nets)  # BLAS on 1 thread either way: the same bits


@pytest.mark.parametrize("case", ["numpy", "no-bn", "width-1", "chunked", "split-3-threads",
                                  "split-dW-3-threads", "large-Z", "images"])
def test_other_plans_and_batches_take_the_python_step(case: str) -> None:
    X, y = _batch(40)
    n_threads = 2
    if case == "numpy":
        net = _net()
        net = nn.Sequential(*net.modules, backend="numpy")
    elif case == "no-bn":
        net = bnprop.MLP((10, 8, 4), batchnorm=False)
    elif case == "width-1":
        net = _net(widths=(6, 1))
    elif case == "chunked":  # rows the Python step walks in chunks
        X, y = _batch(4096)
        net = _net()
    elif case == "split-3-threads":  # rows the Python step splits over 3 threads
        X, y = _batch(3000, n_in=10)
        net, n_threads = _net(widths=(256, 8)), 3
    elif case == "split-dW-3-threads":  # few rows, but dW = dZ^T O of a wide layer splits
        X, y = _batch(60, n_in=784)
        net, n_threads = _net(widths=(1024, 8), n_in=784), 3
    elif case == "large-Z":  # split rows on 2 threads, but a Z of more than 4 MiB
        X, y = _batch(1000, n_in=10)
        net = _net(widths=(1100, 8))
        assert 1000 * 1100 * 4 > COMPILED_Z_BYTES
    else:
        net = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2), nn.ReLU(),
                            nn.Flatten(), nn.Linear(2 * 4 * 4, 4))
        X = np.random.default_rng(0).random((40, 1, 6, 6), dtype=np.float32)
    with threads.using(n_threads):
        net.train_step(X, y, bnprop.SGD(0.1))
        if case in ("chunked", "large-Z") or case.startswith("split"):  # the batch does not
            assert isinstance(net._compiled, CompiledStep)           # qualify, the plan does
            assert compiled_step(net, X) is None
        else:
            assert getattr(net, "_compiled", None) is None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("case", "opt", "act", "stats"), [
    ("split", "momentum-wd", "Sigmoid", "exact"), ("split", "adam", "ReLU", "frozen"),
    ("split-dW", "sgd", "Tanh", "exact"), ("split-dW", "adam", "Sigmoid", "exact")])
def test_on_two_threads_it_takes_split_batches_with_the_bits_of_one_thread(
        dtype: str, case: str, opt: str, act: str, stats: str) -> None:
    """Batches the Python step splits into row parts on 2 threads (its moments merged by
    Chan's rule, its sums by parts) run compiled there, with the bits of the Python step
    on 1 thread: the numbers no longer depend on the thread count."""
    if case == "split":  # rows split: Z = 2000 x 256 (4.1 MB in float64)
        kw, m, n_in = {"widths": (256, 8)}, 2000, 10
    else:  # few rows, dW = dZ^T O of a wide layer split by rows
        kw, m, n_in = {"widths": (1024, 8), "n_in": 784}, 60, 784
    two, one = _net(dtype, act=act, stats=stats, **kw), _python(_net(dtype, act=act,
                                                                      stats=stats, **kw))
    o_two, o_one = OPTIMIZERS[opt](), OPTIMIZERS[opt]()
    for step in range(3):
        X, y = _batch(m, n_in=n_in, dtype=dtype, seed=step)
        with threads.using(2):
            assert compiled_step(two, X) is not None
            loss_two = two.train_step(X, y, o_two)
        with threads.using(1):
            assert one.train_step(X, y, o_one) == loss_two
    _assert_same(two, one)
    # The Python step's own parts sum in another order: equal to rounding. Compared
    # after an SGD step: Adam's first update divides each gradient by its magnitude, so
    # a gradient near 0 whose rounding differs can move its parameter by up to 2 lr.
    split = _python(_net(dtype, act=act, stats=stats, **kw))
    X, y = _batch(m, n_in=n_in, dtype=dtype, seed=0)
    fresh = _net(dtype, act=act, stats=stats, **kw)
    with threads.using(2):
        split.train_step(X, y, OPTIMIZERS["sgd"]())
        fresh.train_step(X, y, OPTIMIZERS["sgd"]())
    for (name, p), (_, q) in zip(split.named_parameters(), fresh.named_parameters(),
                                 strict=True):
        np.testing.assert_allclose(p, q, rtol=1e-4 if dtype == "float32" else 1e-12,
                                   atol=1e-6 if dtype == "float32" else 1e-14, err_msg=name)


def test_non_finite_step_changes_nothing() -> None:
    net = _net()
    X, y = _batch()
    net.train_step(X, y, bnprop.SGD(0.1))
    before = ({k: v.copy() for k, v in net.parameters().items()},
              {k: v.copy() for k, v in net.buffers().items()})
    huge = np.full((32, 10), 3e38, np.float32)
    huge[::2] = -3e38  # the batch variance overflows float32
    with pytest.raises(nn.NonFiniteError, match="nothing was updated"):
        net.train_step(huge, y, bnprop.SGD(0.1))
    for k, v in before[0].items():
        np.testing.assert_array_equal(net.parameters()[k], v)
    for k, v in before[1].items():
        np.testing.assert_array_equal(net.buffers()[k], v)
    net.modules[-1].W[...] = 3e38  # logits overflow: the loss is not finite (inf - inf)
    before = ({k: v.copy() for k, v in net.parameters().items()},
              {k: v.copy() for k, v in net.buffers().items()})
    with pytest.raises(nn.NonFiniteError), np.errstate(invalid="ignore", over="ignore"):
        net.train_step(X, y, bnprop.SGD(0.1))
    for k, v in before[0].items():
        np.testing.assert_array_equal(net.parameters()[k], v)
    for k, v in before[1].items():
        np.testing.assert_array_equal(net.buffers()[k], v)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [(0, 0), (16, 5), (31, 9)])
def test_a_non_finite_x_is_named_after_the_refused_step(bad: float, where: tuple) -> None:
    """The compiled step tests X's values last: an inf or NaN in X makes its BN
    statistics non-finite, the step is refused, and X is then named in one line, as
    the Python step names it first. Nothing is updated."""
    fast, slow = _net(), _python(_net())
    o_fast, o_slow = bnprop.Adam(0.01), bnprop.Adam(0.01)
    X, y = _batch()
    assert fast.train_step(X, y, o_fast) == slow.train_step(X, y, o_slow)
    before = {k: v.copy() for k, v in fast.parameters().items()}
    state = {k: v.copy() for k, v in o_fast.state_dict().items()}
    bad_X = X.copy()
    bad_X[where] = bad
    messages = []
    for net, opt in ((fast, o_fast), (slow, o_slow)):
        with pytest.raises(bnprop.InputError, match=r"^X: contains NaN or inf \(1 of 320 entries, "
                           rf"first at index \({where[0]}, {where[1]}\)\)") as err:
            net.train_step(bad_X, y, opt)
        assert not isinstance(err.value, nn.NonFiniteError)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    for k, v in before.items():
        np.testing.assert_array_equal(fast.parameters()[k], v, err_msg=k)
    for k, v in state.items():
        np.testing.assert_array_equal(o_fast.state_dict()[k], v, err_msg=k)
    assert fast.train_step(X, y, o_fast) == slow.train_step(X, y, o_slow)
    _assert_same(fast, slow)


@pytest.mark.parametrize("opt", ["adam", "momentum-wd"])
@pytest.mark.parametrize("first", [True, False])
def test_a_refused_step_leaves_the_optimizer_as_it_was(opt: str, first: bool) -> None:
    """The compiled step runs the optimizer's update in its last call: a step refused
    for a non-finite value neither counts it nor keeps new buffers, and the next step
    equals the Python step's."""
    fast, slow = _net(), _python(_net())
    o_fast, o_slow = OPTIMIZERS[opt](), OPTIMIZERS[opt]()
    X, y = _batch()
    if not first:
        assert fast.train_step(X, y, o_fast) == slow.train_step(X, y, o_slow)
    state = {k: v.copy() for k, v in o_fast.state_dict().items()}
    huge = np.full((32, 10), 3e38, np.float32)
    huge[::2] = -3e38
    with pytest.raises(nn.NonFiniteError):
        fast.train_step(huge, y, o_fast)
    assert o_fast.state_dict().keys() == state.keys()
    for k, v in state.items():
        np.testing.assert_array_equal(o_fast.state_dict()[k], v, err_msg=k)
    X2, y2 = _batch(seed=7)
    assert fast.train_step(X2, y2, o_fast) == slow.train_step(X2, y2, o_slow)
    assert isinstance(fast._compiled, CompiledStep) and o_fast.t == o_slow.t
    _assert_same(fast, slow)
    for k, v in o_slow.state_dict().items():
        np.testing.assert_array_equal(o_fast.state_dict()[k], v, err_msg=k)


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda n: pickle.loads(pickle.dumps(n))])
def test_a_copy_trains_on_its_own_arrays(clone) -> None:  # type: ignore[no-untyped-def]
    net = _net()
    X, y = _batch()
    net.train_step(X, y, bnprop.SGD(0.1))
    twin = clone(net)
    reference = {k: v.copy() for k, v in net.parameters().items()}
    twin.train_step(X, y, bnprop.SGD(0.1))
    assert isinstance(twin._compiled, CompiledStep) and twin._compiled is not net._compiled
    for k, v in reference.items():  # the original did not move
        np.testing.assert_array_equal(net.parameters()[k], v)
    net.train_step(X, y, bnprop.SGD(0.1))
    _assert_same(net, twin)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemms_equal_the_python_paths_bitwise(dtype: type) -> None:
    """The compiled GEMMs give the bits of the fast path's Python call of the same product:
    ``bnprop.kernels.tile_gemm.matmul`` (the tiles where they take it, else ``np.matmul``,
    whose bits the float64 products keep)."""
    from bnprop.kernels import _mlp_compiled as k
    from bnprop.kernels.tile_gemm import matmul

    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((37, 53)).astype(dtype), rng.standard_normal((29, 53)).astype(dtype)
    C = np.empty((37, 29), dtype)
    k.gemm_nt(A, B, C)
    np.testing.assert_array_equal(C, matmul(A, B.T, np.empty_like(C)))
    D = rng.standard_normal((37, 11)).astype(dtype)
    E = np.empty((29, 11), dtype)
    k.gemm_tn(C, D, E)
    np.testing.assert_array_equal(E, matmul(C.T, D, np.empty_like(E)))
    F = np.empty((37, 53), dtype)
    k.gemm_nn(C, B, F)
    np.testing.assert_array_equal(F, matmul(C, B, np.empty_like(F)))
    if dtype == np.float64:
        np.testing.assert_array_equal(F, np.matmul(C, B))
    else:  # within float32 rounding of NumPy's, whichever sums it
        np.testing.assert_allclose(F, np.matmul(C, B), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_finiteness_check_finds_any_bad_value(dtype: type, bad: float) -> None:
    from numba import njit

    from bnprop.kernels._finite import _all_finite, copy_all_finite

    def check(a: np.ndarray) -> bool:
        """_all_finite, and copy_all_finite (the same answer, and the copy)."""
        out = np.empty_like(a)
        copied = copy_all_finite(a, out)
        np.testing.assert_array_equal(out.view(np.uint8), a.view(np.uint8))
        answer = _check(a)
        assert copied == answer
        return bool(answer)

    _check = njit(lambda a: _all_finite(a))
    info = np.finfo(dtype)
    edges = np.array([info.max, -info.max, info.tiny, -info.tiny, info.smallest_subnormal,
                      -info.smallest_subnormal, 0.0, -0.0], dtype)
    a = np.concatenate([np.linspace(-1e30, 1e30, 1001).astype(dtype), edges])
    assert check(a) and check(a[:0])
    for i in (0, 500, 1000, a.size - 1):
        b = a.copy()
        b[i] = bad
        assert not check(b)
    nans = np.array([np.nan, -np.nan], dtype).view(np.uint32 if dtype == np.float32
                                                     else np.uint64)
    for payload in (nans[0] | 1, nans[1] | 1, nans[0] + 12345):  # other NaNs
        b = a.copy()
        b.view(nans.dtype)[3] = payload
        assert np.isnan(b[3]) and not check(b)


def test_without_numpys_openblas_the_python_paths_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas, "available", lambda: False)  # e.g. a NumPy built on MKL
    fast, slow = _net(), _python(_net())
    X, y = _batch()
    assert fast.train_step(X, y, bnprop.SGD(0.2)) == slow.train_step(X, y, bnprop.SGD(0.2))
    assert fast._compiled is None
    _assert_same(fast, slow)
    O, W, gamma, beta = X, np.eye(10, dtype=np.float32)[:6], np.ones(6, np.float32), \
        np.zeros(6, np.float32)
    got = bnprop.layer_backward(np.ones((32, 6), np.float32),
                                bnprop.layer_forward(O, W, gamma, beta))
    ref = bnprop.layer_backward(np.ones((32, 6), np.float32),
                                bnprop.layer_forward(O, W, gamma, beta, backend="numpy"),
                                backend="numpy")
    np.testing.assert_allclose(got.dW, ref.dW, rtol=1e-5, atol=1e-6)


def test_a_dW_left_to_the_helper_beside_the_next_bn_pass_keeps_the_bits() -> None:
    """The backward call leaves each dW on the helper while this thread runs the next
    layer's BN pass: with the helper taking parts, the step keeps one thread's bits."""
    import time

    from bnprop.kernels import team

    kw = {"widths": (256, 192, 128), "n_in": 100, "k": 10}
    two, one = _net(**kw), _python(_net(**kw))
    o_two, o_one = bnprop.SGD(0.2, momentum=0.9), bnprop.SGD(0.2, momentum=0.9)
    team.prefer(True)
    try:
        start, deadline, step = team.parts_done(), None, 0
        while step < 4 or team.parts_done() == start:
            if step == 1:  # after the first step; the helper's loop may still compile
                deadline = time.monotonic() + 120.0
            assert deadline is None or time.monotonic() < deadline, "the helper took no part"
            X, y = _batch(512, n_in=100, k=10, seed=step)
            with threads.using(2):
                assert compiled_step(two, X) is not None
                loss_two = two.train_step(X, y, o_two)
            with threads.using(1):
                assert one.train_step(X, y, o_one) == loss_two
            step += 1
    finally:
        team.prefer(None)
    _assert_same(two, one)


@pytest.mark.parametrize(("m", "dtype", "takes"), [
    (1024, "float32", True), (1025, "float32", False),  # Z of 1024 x 1024: 4 MiB exactly
    (512, "float64", True), (513, "float64", False)])
def test_on_two_threads_the_limit_is_a_z_of_4_mib(m: int, dtype: str, takes: bool) -> None:
    net = _net(dtype, widths=(1024, 8))
    X = np.zeros((m, 10), dtype)
    with threads.using(2):
        assert (compiled_step(net, X) is not None) == takes
    with threads.using(1):  # one thread: every batch below the Python step's chunks
        assert compiled_step(net, X) is not None
    with threads.using(3):  # more threads: the Python step's parts
        assert compiled_step(net, X) is None
