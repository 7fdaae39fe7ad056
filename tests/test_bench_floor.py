"""The measured GEMM floor of the bench: which GEMMs, at which shapes, and BLOCKED (floor)."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

from bnprop import threads
from bnprop.bench import floor, machine, shape_floor
from bnprop.bench.report import QUICK
from bnprop.bench.step import IOFFE
from bnprop.bench.targets import BLOCKED, targets
from bnprop.bench.timing import interleaved, ratio_spread


def _products(gemms: list, arrays: dict) -> dict:
    """Each GEMM's product computed plainly from the stored operands."""
    def op(name: str, t: bool) -> np.ndarray:
        return arrays[name].T if t else arrays[name]
    return {g.out: op(g.left, g.left_t) @ op(g.right, g.right_t) for g in gemms}


def test_layer_gemms_are_the_three_of_a_bn_layer() -> None:
    m, n_in, n_out = 6, 5, 4
    gemms = shape_floor.layer_gemms(m, n_in, n_out)
    assert [str(g) for g in gemms] == ["Z = O W^T", "dW = dZ^T O", "dO = dZ W"]
    shapes: dict = {}
    for g in gemms:
        shapes.update(g.shapes())
    assert shapes == {"O": (m, n_in), "W": (n_out, n_in), "dZ": (m, n_out),
                      "Z": (m, n_out), "dW": (n_out, n_in), "dO": (m, n_in)}
    assert shape_floor.total_flops(gemms) == floor.layer_flops(m, n_in, n_out)
    for m, n_in, n_out in QUICK.layers:
        assert shape_floor.total_flops(shape_floor.layer_gemms(m, n_in, n_out)) \
            == floor.layer_flops(m, n_in, n_out)


def test_step_gemms_forward_then_backward_without_the_datas_gradient() -> None:
    sizes, m = (7, 5, 4, 3), 6
    gemms = shape_floor.step_gemms(sizes, m)
    assert [str(g) for g in gemms] == [
        "Z1 = O0 W1^T", "Z2 = O1 W2^T", "Z3 = O2 W3^T",
        "dW3 = dZ3^T O2", "dO2 = dZ3 W3", "dW2 = dZ2^T O1", "dO1 = dZ2 W2", "dW1 = dZ1^T O0"]
    assert gemms[0].shapes() == {"O0": (6, 7), "W1": (5, 7), "Z1": (6, 5)}
    assert gemms[-1].shapes() == {"dZ1": (6, 5), "O0": (6, 7), "dW1": (5, 7)}
    assert shape_floor.total_flops(gemms) == floor.step_flops(sizes, m)
    net, batch = IOFFE
    ioffe = shape_floor.step_gemms(net, batch)
    assert len(ioffe) == 3 * 4 - 1
    assert shape_floor.total_flops(ioffe) == floor.step_flops(net, batch)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_sequence_computes_every_product_into_its_preallocated_output(dtype) -> None:
    gemms = shape_floor.step_gemms((7, 5, 4, 3), 6)
    arrays = shape_floor.operands(gemms, dtype)
    assert all(a.dtype == dtype and a.flags.c_contiguous for a in arrays.values())
    before = {k: id(a) for k, a in arrays.items()}
    shape_floor.sequence(gemms, arrays)()
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for name, want in _products(gemms, arrays).items():
        np.testing.assert_allclose(arrays[name], want, rtol=rtol, atol=rtol)
    assert {k: id(a) for k, a in arrays.items()} == before
    with pytest.raises(ValueError, match="operand O is"):
        shape_floor.operands([*shape_floor.layer_gemms(2, 3, 4),
                              *shape_floor.layer_gemms(2, 5, 4)], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pytorchs_sequence_computes_the_same_products_in_place(dtype) -> None:
    pytest.importorskip("torch")
    gemms = shape_floor.step_gemms((7, 5, 4, 3), 6)
    arrays = shape_floor.operands(gemms, dtype)
    want = _products(gemms, arrays)
    shape_floor.torch_sequence(gemms, arrays)()  # writes through the shared memory
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for name, product in want.items():
        np.testing.assert_allclose(arrays[name], product, rtol=rtol, atol=rtol)


def test_floor_cases_run_every_way_of_the_cores_and_the_fastest_wins() -> None:
    gemms = shape_floor.layer_gemms(8, 4, 3)
    calls, contexts = shape_floor.cases(gemms, np.float32, 2)
    two, one, parts = ("GEMMs, 2 BLAS threads", "GEMMs, 1 BLAS thread",
                       "GEMMs, 2 row parts x 1 BLAS thread")
    helper = shape_floor.case_name(shape_floor.HELPER_WAY)
    assert list(calls) == [two, one, parts, helper] and set(contexts) == set(calls)
    assert list(shape_floor.cases(gemms, np.float32, 1)[0]) == [one]
    times = {one: 3.0, two: 2.0, parts: 2.5, helper: 2.2, "bnprop": 1.0}
    assert shape_floor.best(times, 2) == (2.0, "2 BLAS threads")
    assert shape_floor.best({**times, two: 4.0}, 2) == (2.2, shape_floor.HELPER_WAY)
    assert shape_floor.best({**times, two: 4.0, helper: 9.0}, 2) == (
        2.5, "2 row parts x 1 BLAS thread")
    assert shape_floor.best({one: 3.0}, 1) == (3.0, "1 BLAS thread")
    if threads.blas_threads() is None:
        pytest.skip("no OpenBLAS found to set")
    before = threads.blas_threads(), threads.num_threads()
    with contexts[two]():
        assert (threads.blas_threads(), threads.num_threads()) == (2, 1)
    with contexts[parts]():
        assert (threads.blas_threads(), threads.num_threads()) == (1, 2)
    with contexts[helper]():
        assert (threads.blas_threads(), threads.num_threads()) == (1, 2)
    assert (threads.blas_threads(), threads.num_threads()) == before


def test_row_parts_compute_the_same_products() -> None:
    gemms = shape_floor.step_gemms((7, 5, 4, 3), 9)
    arrays = shape_floor.operands(gemms, np.float64)
    with threads.using(2):
        shape_floor.sequence(gemms, arrays, parts=2)()
    for name, want in _products(gemms, arrays).items():
        np.testing.assert_allclose(arrays[name], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_helper_way_computes_the_same_products(dtype) -> None:
    gemms = shape_floor.step_gemms((784, 100, 100, 10), 60)  # a split GEMM and pairs
    arrays = shape_floor.operands(gemms, dtype)
    want = {g.out: np.empty_like(arrays[g.out]) for g in gemms}
    with threads.using(2):
        shape_floor.sequence(gemms, arrays)()  # whole GEMMs, OpenBLAS on 1 thread
        for name in want:
            want[name][...] = arrays[name]
            arrays[name][...] = np.nan
        for _ in range(20):  # the helper wakes up within these
            shape_floor.sequence(gemms, arrays, parts=shape_floor.HELPER)()
            for name, w in want.items():
                np.testing.assert_array_equal(arrays[name], w)


def test_interleaved_runs_each_case_inside_its_own_context() -> None:
    inside: list[str] = []
    seen: dict[str, list[bool]] = {"a": [], "b": []}

    @contextmanager
    def ctx():
        inside.append("a")
        yield
        inside.pop()

    times = interleaved({"a": lambda: seen["a"].append(bool(inside)),
                         "b": lambda: seen["b"].append(bool(inside))},
                        rounds=2, budget=1e-4, contexts={"a": ctx})
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())
    assert seen["a"] and all(seen["a"]) and seen["b"] and not any(seen["b"])
    assert inside == []


IOFFE_CASE = "ioffe 784-100-100-100-10, batch 60"


def _cmp(section: str, case: str, dtype: str, peer: str, bnprop_s: float, peer_s: float,
         gemm_s: float | None) -> dict:
    return {"section": section, "case": case, "dtype": dtype, "peer": peer,
            "bnprop_s": bnprop_s, "peer_s": peer_s, "ratio": bnprop_s / peer_s,
            "measured_gemm_s": gemm_s}


def _job(ours: float, peer: float, acc_peer: float = 0.95) -> dict:
    return {"ratio": ours / peer, "steps": 3000, "data": "mnist", "dtype": "float32",
            "sizes": [784, 100, 100, 100, 10], "batch_size": 60,
            "sides": {"bnprop": {"steps_per_s": ours, "test_accuracy": 0.95},
                      "torch eager": {"steps_per_s": peer, "test_accuracy": acc_peer}}}


def _rows(comparisons: list[dict], job: dict | None = None) -> dict:
    out = {"threads": 2, "comparisons": comparisons, "train_job": job,
           "memory": {"steps": 10, "train_step": {"growth": 0}}}
    return {t["id"]: t for t in targets(out)}


def test_a_target_is_blocked_only_when_the_measured_floor_exceeds_what_it_allows() -> None:
    # jax 0.6 ms allows 0.5 x 0.6 = 0.3 ms; the GEMMs alone take 0.4 ms: blocked
    rows = _rows([_cmp("step", IOFFE_CASE, "float32", "jax jit", 1.0e-3, 0.6e-3, 0.4e-3),
                  _cmp("step", IOFFE_CASE, "float32", "torch eager", 1.0e-3, 2.0e-3, 0.4e-3),
                  _cmp("layer", "60 x 100 -> 100", "float32", "torch eager", 0.1e-3,
                       0.3e-3, 0.02e-3)])
    jax = rows["ioffe_step_vs_jax"]
    assert jax["status"] == BLOCKED and jax["met"] is False and jax["floor_s"] == 0.4e-3
    assert ("the step's GEMMs alone take 0.4 ms as bnprop computes them (fastest of 1 BLAS "
            "thread, 2 BLAS threads, 2 row parts and the helper thread); the target allows "
            "0.5 x 0.6 ms = 0.3 ms") in jax["detail"]
    # 0.4 ms of GEMMs fit in 0.3 x 2 ms = 0.6 ms: missed, not blocked
    torch = rows["ioffe_step_vs_torch"]
    assert torch["status"] == "MISSED" and torch["floor_s"] == 0.4e-3
    assert "GEMMs alone" not in torch["detail"]
    # met stays met
    layer = rows["layer_60x100x100_vs_torch"]
    assert layer["status"] == "MET" and layer["met"] is True
    # a floor above what a met target allows does not make it blocked
    rows = _rows([_cmp("step", IOFFE_CASE, "float32", "jax jit", 0.2e-3, 0.6e-3, 0.4e-3)])
    assert rows["ioffe_step_vs_jax"]["status"] == "MET"
    # without a measured floor (the CNN step) a miss is a miss
    rows = _rows([_cmp("step", "cnn 16-32-128, batch 128", "float32", "torch eager", 2.0,
                       1.0, None)])
    assert rows["cnn_step_vs_torch"]["status"] == "MISSED"
    assert rows["cnn_step_vs_torch"]["floor_s"] is None
    assert rows["memory_growth"]["floor_s"] is None


def test_the_train_job_is_blocked_by_the_ioffe_steps_floor() -> None:
    step = _cmp("step", IOFFE_CASE, "float32", "torch eager", 1e-3, 2e-3, 0.4e-3)
    # PyTorch 1000 steps/s (1 ms a step) allows 1 / 3 ms a step; the floor is 0.4 ms
    row = _rows([step], _job(2000.0, 1000.0))["train_job_vs_torch"]
    assert row["status"] == BLOCKED and row["met"] is False and row["floor_s"] == 0.4e-3
    assert "one step's GEMMs alone take 0.4 ms" in row["detail"]
    assert "1 ms / 3.0 = 0.333 ms" in row["detail"]
    # PyTorch 500 steps/s allows 0.667 ms: missed, not blocked
    assert _rows([step], _job(1000.0, 500.0))["train_job_vs_torch"]["status"] == "MISSED"
    # met stays met
    assert _rows([step], _job(3500.0, 1000.0))["train_job_vs_torch"]["status"] == "MET"
    # not the same accuracy: missed, whatever the floor
    row = _rows([step], _job(2000.0, 1000.0, acc_peer=0.99))["train_job_vs_torch"]
    assert row["status"] == "MISSED"
    # a job of another net has no floor from the Ioffe step
    job = {**_job(2000.0, 1000.0), "sizes": [784, 50, 10]}
    row = _rows([step], job)["train_job_vs_torch"]
    assert row["status"] == "MISSED" and row["floor_s"] is None


def test_float64_is_blocked_only_when_every_case_over_the_limit_is() -> None:
    blocked = _cmp("layer", "60 x 16 -> 100", "float64", "torch eager", 3e-3, 1e-3, 2e-3)
    free = _cmp("layer", "60 x 100 -> 100", "float64", "torch eager", 1.5e-3, 1e-3, 0.1e-3)
    fine = _cmp("layer", "4096 x 16 -> 256", "float64", "torch eager", 0.5e-3, 1e-3, 0.1e-3)
    row = _rows([blocked, fine])["float64_vs_torch"]
    assert row["status"] == BLOCKED and row["floor_s"] == 2e-3 and row["value"] == 3.0
    assert "the layer's GEMMs alone take 2 ms" in row["detail"]
    row = _rows([blocked, free, fine])["float64_vs_torch"]
    assert row["status"] == "MISSED" and row["value"] == 3.0


def test_the_float64_row_sets_both_sides_gemms_beside_their_times() -> None:
    worst = {**_cmp("layer", "4096 x 256 -> 256", "float64", "torch eager", 24e-3, 20e-3,
                    19.5e-3), "peer_gemm_s": 14.1e-3}
    row = _rows([worst])["float64_vs_torch"]
    assert row["status"] == "MISSED" and row["value"] == pytest.approx(1.2)
    assert row["detail"] == ("layer 4096 x 256 -> 256: 24 ms, of which GEMMs alone 19.5 ms "
                             "as bnprop computes them; PyTorch 20 ms, of which GEMMs alone "
                             "14.1 ms through its own")
    # without PyTorch's GEMMs (an older result) the case alone
    row = _rows([{**worst, "peer_gemm_s": None}])["float64_vs_torch"]
    assert row["detail"] == "layer 4096 x 256 -> 256"


def test_interleaved_gives_each_rounds_time_and_the_spread_of_their_ratios() -> None:
    per_round: dict = {}
    times = interleaved({"a": lambda: None, "b": lambda: None}, rounds=3, budget=1e-4,
                        per_round=per_round)
    assert set(per_round) == {"a", "b"} and all(len(v) == 3 for v in per_round.values())
    assert times["a"] == sorted(per_round["a"])[1]  # the median of the rounds
    rounds = {"x": [2.0, 3.0, 9.0], "y": [1.0, 2.0, 3.0]}
    assert ratio_spread(rounds, "x", "y") == [1.5, 3.0]
    assert ratio_spread(rounds, "y", "x") == [1 / 3, 2 / 3]


class _Clock:
    """A fake ``time`` for :mod:`bnprop.bench.machine`: ``sleep`` moves ``monotonic`` on."""

    def __init__(self) -> None:
        self.now, self.slept = 100.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_two_thread_ways_wait_until_openblas_workers_stop_spinning(monkeypatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(machine, "time", clock)
    monkeypatch.setattr(machine, "_spin_ends", 0.0)
    _, contexts = shape_floor.cases(shape_floor.layer_gemms(8, 4, 3), np.float32, 2)
    helper = shape_floor.case_name(shape_floor.HELPER_WAY)
    with contexts[helper]():  # no OpenBLAS call on several threads yet: no wait
        pass
    with contexts["GEMMs, 2 BLAS threads"]():
        pass
    clock.now += 0.05
    with contexts["GEMMs, 1 BLAS thread"]():  # one thread runs beside a spinning worker
        pass
    assert clock.slept == []
    clock.now += 0.05
    with contexts["GEMMs, 2 row parts x 1 BLAS thread"]():
        assert clock.slept == [pytest.approx(machine.BLAS_SPIN_SECONDS - 0.1)]
    with contexts[helper]():  # the workers are asleep by now
        pass
    assert len(clock.slept) == 1


def test_the_two_core_probe_ends_once_openblas_workers_sleep(monkeypatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(machine, "time", clock)
    monkeypatch.setattr(machine, "_spin_ends", 0.0)

    def peak(k: int, blas_threads: int, dtype, repeats: int) -> float:
        machine.blas_threads_used(blas_threads)
        return 2.0e9 * blas_threads

    monkeypatch.setattr(machine, "gemm_peak", peak)
    assert machine.two_core_speedup() == 2.0
    assert clock.slept == [pytest.approx(machine.BLAS_SPIN_SECONDS)]
    machine.settle_blas_workers()
    assert len(clock.slept) == 1
