"""The kernels (backend="numba", the default) against the NumPy reference (backend="numpy"),
through the public Sequential/MLP step."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from conftest import rel_err

from bnprop import threads
from bnprop.distributed import SingleProcess
from bnprop.model import MLP
from bnprop.nn import stage as stage_module
from bnprop.optim import SGD, Adam

SIZES = (12, 16, 16, 4)




def _data(m: int, n_in: int = SIZES[0], k: int = SIZES[-1], dtype: str = "float64",
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, n_in)) + 0.5).astype(dtype), rng.integers(0, k, m)


def _pair(dtype: str, **kw: object) -> tuple[MLP, MLP]:
    """(reference, kernels): the same net on the NumPy reference and on the kernels."""
    return (MLP(SIZES, dtype=dtype, backend="numpy", **kw),  # type: ignore[arg-type]
            MLP(SIZES, dtype=dtype, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("stats", ["exact", "frozen"])
@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh"])
@pytest.mark.parametrize("running", ["ema", "average"])
def test_float64_step_equals_reference(stats: str, activation: str, running: str) -> None:
    X, y = _data(50)
    ref, fast = _pair("float64", stats=stats, activation=activation, running=running)
    opt_ref, opt_fast = SGD(0.3, momentum=0.5), SGD(0.3, momentum=0.5)
    for _ in range(5):
        loss_ref = ref.train_step(X, y, opt_ref)
        loss_fast = fast.train_step(X, y, opt_fast)
        assert loss_fast == pytest.approx(loss_ref, rel=1e-12)
    for name, p in ref.parameters().items():
        assert rel_err(fast.parameters()[name], p) < 1e-12, name
    for name, b in ref.buffers().items():
        assert rel_err(fast.buffers()[name], b) < 1e-12, name


def test_gradients_equal_reference_and_live_in_the_flat_buffer() -> None:
    X, y = _data(30)
    ref, fast = _pair("float64")
    loss_ref, g_ref = ref.loss_and_grads(X, y)
    loss, grads = fast.loss_and_grads(X, y)
    assert list(grads) == list(g_ref) == [name for name, _ in fast.named_parameters()]
    assert loss == pytest.approx(loss_ref, rel=1e-13)
    for name in g_ref:
        assert grads[name].dtype == g_ref[name].dtype
        assert rel_err(grads[name], g_ref[name]) < 1e-12, name
    flat_p, flat_g = fast.flat.params[np.dtype("float64")], fast.flat.grads[np.dtype("float64")]
    assert all(np.shares_memory(p, flat_p) for p in fast.parameters().values())
    assert all(np.shares_memory(g, flat_g) for g in fast._grad_views().values())
    assert not any(np.shares_memory(g, flat_g) for g in grads.values())  # returned: copies


@pytest.mark.parametrize("stats", ["exact", "frozen"])
def test_float32_step_equals_reference_to_rounding(stats: str) -> None:
    X, y = _data(60, dtype="float32")
    ref, fast = _pair("float32", stats=stats)
    for _ in range(3):
        loss_ref = ref.train_step(X, y, SGD(0.1))
        loss_fast = fast.train_step(X, y, SGD(0.1))
        assert loss_fast == pytest.approx(loss_ref, rel=1e-5)
    for name, p in ref.parameters().items():
        assert fast.parameters()[name].dtype == np.float32
        assert rel_err(fast.parameters()[name], p) < 1e-5, name
    for name, b in ref.buffers().items():
        assert rel_err(fast.buffers()[name], b) < 1e-5, name


@pytest.mark.parametrize("stats", ["exact", "frozen"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_row_parts_and_chunks_equal_reference(two_threads: None, stats: str, n_threads: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    threads.set_threads(n_threads)
    monkeypatch.setattr(stage_module, "CHUNK_BYTES", 32 * 8 * 300)  # 300-row chunks
    X, y = _data(5000, n_in=8, k=3, seed=1)  # >= 2 * 2048 rows: parts, chunks of rows
    ref = MLP((8, 32, 32, 3), dtype="float64", stats=stats, backend="numpy")
    fast = MLP((8, 32, 32, 3), dtype="float64", stats=stats)
    opt_ref, opt_fast = SGD(0.5), SGD(0.5)
    for _ in range(3):
        assert fast.train_step(X, y, opt_fast) == pytest.approx(
            ref.train_step(X, y, opt_ref), rel=1e-12)
    layer = fast.steps[0].stage
    assert layer.chunked and layer.chunk_rows == 300 and len(layer._parts.mean) == n_threads
    for name, p in ref.parameters().items():
        assert rel_err(fast.parameters()[name], p) < 1e-10, name


def test_a_backward_chunk_fits_openblass_small_kernel_when_that_leaves_enough_rows() -> None:
    from bnprop.kernels import small_gemm

    rows = stage_module.back_chunk_rows
    small = small_gemm.SMALL_MNK // (16 * 9)  # 6944 rows of a first convolution's dW
    assert rows(16, 9, 4, 16384) == (small if small_gemm.enabled() else 16384)
    assert rows(16, 9, 8, 16384) == 16384          # float64: the packed kernel
    assert rows(32, 144, 4, 8192) == 8192          # 217 rows: too few
    assert rows(16, 9, 4, 4096) == 4096            # the chunk is smaller already


@pytest.mark.parametrize("n_threads", [1, 2])
def test_float32_backward_chunks_of_the_small_kernel_equal_reference(
        two_threads: None, n_threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """float32, 16 x 8 -> 16 x 16: backward chunks cut apart from the forward's (forced
    to 1100 rows, so that both threads walk several), to float32 rounding."""
    threads.set_threads(n_threads)
    monkeypatch.setattr(stage_module, "back_chunk_rows", lambda n, n_in, item, rows: 1100)
    X, y = _data(9000, n_in=8, k=3, dtype="float32", seed=2)
    ref = MLP((8, 16, 16, 3), dtype="float32", backend="numpy")
    fast = MLP((8, 16, 16, 3), dtype="float32")
    for _ in range(2):
        assert fast.train_step(X, y, SGD(0.1)) == pytest.approx(
            ref.train_step(X, y, SGD(0.1)), rel=1e-5)
    layer = fast.steps[0].stage
    assert layer.chunked and layer.back_chunk_rows == 1100 < layer.chunk_rows
    for name, p in ref.parameters().items():
        assert rel_err(fast.parameters()[name], p) < 1e-5, name


def test_ragged_batches_reallocate_per_shape() -> None:
    ref, fast = _pair("float64")
    buffers = []
    for m in (40, 40, 17, 17, 40):
        X, y = _data(m, seed=m)
        loss_ref = ref.train_step(X, y, SGD(0.2))
        loss = fast.train_step(X, y, SGD(0.2))
        assert loss == pytest.approx(loss_ref, rel=1e-12)
        buffers.append(fast._compiled.buf)  # small batches of an MLP: the compiled step
    assert buffers[0] is buffers[1] and buffers[2] is buffers[3]  # kept per batch shape
    assert buffers[1] is not buffers[2]
    for name, p in ref.parameters().items():
        assert rel_err(fast.parameters()[name], p) < 1e-12, name


def test_nets_without_batchnorm_and_single_process_comms_take_the_same_step() -> None:
    X, y = _data(20)
    for kw in ({"batchnorm": False}, {}):
        ref, fast = _pair("float64", **kw)
        assert ref.train_step(X, y, SGD(0.1)) == pytest.approx(
            fast.train_step(X, y, SGD(0.1), comm=SingleProcess(), m_global=20), rel=1e-12)
        for name, p in ref.parameters().items():
            assert rel_err(fast.parameters()[name], p) < 1e-12, name


def test_fast_trains_to_the_reference_accuracy() -> None:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 20)) * 2
    labels = rng.integers(0, 4, 2000)
    X = (centers[labels] + rng.standard_normal((2000, 20)) * 2.5).astype(np.float32)
    train, test = slice(0, 1500), slice(1500, None)
    accuracy = {}
    for fast in (False, True):
        net, opt = MLP((20, 32, 32, 4), seed=3, backend="numba" if fast else "numpy"), Adam(3e-3)
        order = np.random.default_rng(1)
        for _ in range(300):
            idx = order.integers(0, 1500, 60)
            net.train_step(X[train][idx], labels[train][idx], opt)
        accuracy[fast] = net.accuracy(X[test], labels[test])
    assert accuracy[False] > 0.7
    assert abs(accuracy[True] - accuracy[False]) <= 0.02


def test_no_allocation_growth_over_1000_steps() -> None:
    X, y = _data(60, dtype="float32")
    net, opt = MLP(SIZES), SGD(0.05)
    for _ in range(20):
        net.train_step(X, y, opt)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(100):
            net.train_step(X, y, opt)
        after_100 = tracemalloc.get_traced_memory()[0]
        for _ in range(900):
            net.train_step(X, y, opt)
        after_1000 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # A leaked array of the smallest parameter (16 float32) would add 80 KB over 900
    # steps; what is left is Python's own bookkeeping (tens of bytes, not per step).
    assert after_100 - before < 1024
    assert after_1000 - after_100 < 512


@pytest.mark.parametrize("stats", ["exact", "frozen"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "identity"])
def test_public_layer_functions_run_the_kernels_equal_to_the_reference(
        stats: str, activation: str) -> None:
    import bnprop

    rng = np.random.default_rng(7)
    O, W = rng.standard_normal((9, 5)) * 3 + 1, rng.standard_normal((4, 5))
    gamma, beta, dY = rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal((9, 4))
    caches, grads = {}, {}
    for backend in ("numba", "numpy"):
        caches[backend] = bnprop.layer_forward(O, W, gamma, beta, activation=activation,
                                               backend=backend)
        grads[backend] = bnprop.layer_backward(dY, caches[backend], stats=stats,
                                               backend=backend)
    for name in ("Z", "mu", "var", "inv_std", "Obar", "A", "Y"):
        assert rel_err(getattr(caches["numba"], name), getattr(caches["numpy"], name)) < 1e-13
    for name in ("dA", "dgamma", "dbeta", "dZ", "dW", "dO"):
        assert rel_err(getattr(grads["numba"], name), getattr(grads["numpy"], name)) < 1e-12


def test_layer_cache_holds_copies_of_its_inputs() -> None:
    import bnprop

    rng = np.random.default_rng(8)
    O, W = rng.standard_normal((6, 3)), rng.standard_normal((2, 3))
    cache = bnprop.layer_forward(O, W, np.ones(2), np.zeros(2))
    before = bnprop.layer_backward(np.ones((6, 2)), cache).dW
    O += 5.0
    W *= 2.0
    after = bnprop.layer_backward(np.ones((6, 2)), cache).dW
    np.testing.assert_array_equal(before, after)
    with pytest.raises(bnprop.InputError, match="backend: expected one of"):
        bnprop.layer_forward(O, W, np.ones(2), np.zeros(2), backend="gpu")


def test_thread_count_is_the_callers_not_the_process() -> None:
    import threading

    seen, before = {}, threads.num_threads()
    with threads.using(2):
        worker = threading.Thread(target=lambda: seen.update(other=threads.num_threads()))
        worker.start()
        worker.join()
        seen["inside"] = threads.num_threads()
    assert seen == {"other": 1, "inside": 2}  # another thread keeps its own count
    assert threads.num_threads() == before
    ref, fast = _pair("float64")
    X, y = _data(10000, seed=3)  # two parts of >= 4096 rows of 16 float64
    with threads.using(2):  # a split batch: the same step to rounding
        loss = fast.train_step(X, y, SGD(0.1))
        assert len(fast.steps[0].stage._parts.mean) == 2
    assert loss == pytest.approx(ref.train_step(X, y, SGD(0.1)), rel=1e-12)
