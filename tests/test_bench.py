"""bnprop bench: the JSON's layout, positive ratios, floors, targets (no timing assertions)."""

from __future__ import annotations

import ast
import json
import math
import os
import sys
from pathlib import Path

import pytest

from bnprop.cli import main

TARGET_IDS = {"ioffe_step_vs_jax", "ioffe_step_vs_torch", "train_job_vs_torch",
              "layer_65536x16x256_vs_torch", "layer_60x100x100_vs_torch",
              "wide_step_vs_torch", "cnn_step_vs_torch", "float64_vs_torch", "memory_growth"}
COMPARISON_KEYS = {"section", "case", "dtype", "peer", "bnprop_s", "peer_s", "ratio",
                   "gemm_flops", "gemm_floor_s", "bnprop_floor_multiple",
                   "peer_floor_multiple", "measured_gemm_s", "measured_gemm_way",
                   "measured_floor_multiple", "peer_gemm_s", "ratio_rounds"}
STATUSES = {"MET", "MISSED", "NOT RUN", "BLOCKED (floor)"}


def _positive(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture
def restore_threads(monkeypatch: pytest.MonkeyPatch):
    """bnprop's, BLAS's and torch's thread counts and XLA_FLAGS as they were."""
    from bnprop import threads

    monkeypatch.setenv("XLA_FLAGS", "")
    n, blas = threads.num_threads(), threads.blas_threads()
    torch = sys.modules.get("torch")
    n_torch = torch.get_num_threads() if torch else None
    yield
    threads.set_threads(n)
    if blas is not None:
        threads.set_blas_threads(blas)
    if n_torch is not None:
        torch.set_num_threads(n_torch)


def test_quick_bench_writes_json_with_positive_ratios(
        tmp_path: Path, capsys: pytest.CaptureFixture, restore_threads: None) -> None:
    pytest.importorskip("torch")
    from bnprop.bench.report import JAX_MISSING

    # 1 thread: a test must not hinge on PyTorch's 2-thread pool on a busy machine
    assert main(["bench", "--quick", "--threads", "1", "--json",
                 str(tmp_path / "out.json")]) == 0
    printed = capsys.readouterr().out
    assert "bnprop / peer" in printed and "| target |" in printed and "GEMM floor" in printed
    assert "measured GEMMs ms" in printed and "PyTorch's GEMMs ms" in printed
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["schema"] == 2 and out["quick"] is True and out["threads"] == 1
    for key in ("machine", "comparisons", "unavailable", "limits", "memory", "targets",
                "first_step_s", "train_job", "gemm_peak_flops_per_s", "jax_threads"):
        assert key in out, key
    assert isinstance(out["machine"]["busy"], bool)
    assert out["machine"]["two_core_speedup"] == []  # one thread: no probe
    assert set(out["gemm_peak_flops_per_s"]) == {"float32", "float64"}
    assert all(_positive(v) for v in out["gemm_peak_flops_per_s"].values())
    assert {c["section"] for c in out["comparisons"]} == {"layer", "step"}
    assert {c["dtype"] for c in out["comparisons"]} == {"float32", "float64"}
    for c in out["comparisons"]:
        assert set(c) == COMPARISON_KEYS
        for key in ("bnprop_s", "peer_s", "ratio", "gemm_floor_s", "bnprop_floor_multiple",
                    "peer_floor_multiple"):
            assert _positive(c[key]), (key, c)
        assert c["ratio"] == pytest.approx(c["bnprop_s"] / c["peer_s"])
        low, high = c["ratio_rounds"]  # the ratio of the medians lies within the rounds'
        assert _positive(low) and low <= c["ratio"] * (1 + 1e-12) \
            and c["ratio"] <= high * (1 + 1e-12), c
        peak = out["gemm_peak_flops_per_s"][c["dtype"]]
        assert c["gemm_floor_s"] == pytest.approx(c["gemm_flops"] / peak)
        assert c["bnprop_floor_multiple"] == pytest.approx(c["bnprop_s"] / c["gemm_floor_s"])
        if c["case"].startswith("cnn"):  # no measured floor for the CNN step
            assert c["measured_gemm_s"] is None and c["measured_floor_multiple"] is None
            assert c["peer_gemm_s"] is None
            continue
        # the same GEMMs through PyTorch, beside PyTorch only
        assert _positive(c["peer_gemm_s"]) if c["peer"] == "torch eager" \
            else c["peer_gemm_s"] is None
        assert _positive(c["measured_gemm_s"]) and c["measured_gemm_way"] == "1 BLAS thread"
        assert c["measured_floor_multiple"] == pytest.approx(
            c["bnprop_s"] / c["measured_gemm_s"])
    for c in out["comparisons"]:
        if c["peer"] == "jax jit":  # one measured floor per case, whatever the peer
            twin = next(d for d in out["comparisons"] if (d["case"], d["dtype"], d["peer"])
                        == (c["case"], c["dtype"], "torch eager"))
            assert c["measured_gemm_s"] == twin["measured_gemm_s"]
    peers = {c["peer"] for c in out["comparisons"] if c["section"] == "step"}
    try:
        import jax  # noqa: F401
    except ImportError:
        assert {"peer": "jax jit", "reason": JAX_MISSING}.items() <= next(
            u for u in out["unavailable"] if u["peer"] == "jax jit").items()
    else:
        assert peers == {"torch eager", "jax jit"}
    for u in out["unavailable"]:
        assert u["reason"]
    job = out["train_job"]
    assert job["data"] in {"mnist", "synthetic"} and job["steps"] == 40
    assert job["sizes"] == [784, 100, 100, 100, 10] and job["optimizer"] == "adam"
    assert set(job["sides"]) == {"bnprop", "torch eager"} and _positive(job["ratio"])
    for side in job["sides"].values():
        assert _positive(side["steps_per_s"]) and _positive(side["gemm_floor_multiple"])
        assert 0 <= side["test_accuracy"] <= 1 and len(side["chunk_s"]) == 2
    assert out["memory"]["train_step"]["growth"] < 1024
    assert {t["id"] for t in out["targets"]} == TARGET_IDS
    for t in out["targets"]:
        assert t["status"] in STATUSES and "floor_s" in t
        assert (t["status"] == "NOT RUN") == (t["value"] is None)
    ioffe = next(c for c in out["comparisons"] if c["case"].startswith("ioffe")
                 and c["dtype"] == "float32")
    rows = {t["id"]: t for t in out["targets"]}
    assert rows["ioffe_step_vs_torch"]["floor_s"] == ioffe["measured_gemm_s"]
    assert rows["train_job_vs_torch"]["floor_s"] == ioffe["measured_gemm_s"]
    f64 = rows["float64_vs_torch"]["detail"]
    assert "of which GEMMs alone" in f64 and "as bnprop computes them" in f64, f64


def test_without_jax_the_peer_is_skipped_with_one_line(
        monkeypatch: pytest.MonkeyPatch, restore_threads: None) -> None:
    from bnprop.bench import report

    monkeypatch.setitem(sys.modules, "jax", None)  # import jax raises ImportError
    tiny = report.Sizes(layers=(), steps=(("ioffe", (784, 8, 10), 8),), rounds=1,
                        budget=0.001, copy_bytes=1 << 20, gemm_k=64, gemm_repeats=1,
                        memory_steps=2, job_chunks=1, job_chunk_steps=2, job_eval_every=2,
                        job_warmup=2)
    logged: list[str] = []
    out = report.run(sizes=tiny, n_threads=1, log=logged.append)
    assert out["machine"]["jax"] is None
    assert sum("jax" in line and "not installed" in line for line in logged) == 1
    jax_rows = [u for u in out["unavailable"] if u["peer"] == "jax jit"]
    assert [u["reason"] for u in jax_rows] == [report.JAX_MISSING]
    assert next(t for t in out["targets"] if t["id"] == "ioffe_step_vs_jax")["status"] \
        == "NOT RUN"


def test_gemm_flops_of_a_layer_and_a_step() -> None:
    from bnprop.bench import floor

    assert floor.layer_flops(2, 3, 4) == 3 * 2 * 2 * 3 * 4
    # (3 -> 4 -> 2) on 5 rows: forward 2*5*(12 + 8) = 200, dW the same, dO of layer 2 only
    assert floor.forward_flops((3, 4, 2), 5) == 200
    assert floor.step_flops((3, 4, 2), 5) == 200 + 200 + 2 * 5 * 8
    assert floor.floor_seconds(10**9, 2e9) == 0.5


def _result(comparisons: list[dict], job: dict | None = None) -> dict:
    return {"comparisons": comparisons, "train_job": job,
            "memory": {"steps": 10, "train_step": {"growth": 0}}}


def _cmp(section: str, case: str, dtype: str, peer: str, ratio: float) -> dict:
    return {"section": section, "case": case, "dtype": dtype, "peer": peer,
            "bnprop_s": ratio, "peer_s": 1.0, "ratio": ratio}


def test_targets_met_missed_and_not_run() -> None:
    from bnprop.bench.targets import targets

    side = {"steps_per_s": 300.0, "test_accuracy": 0.95}
    job = {"ratio": 3.5, "steps": 3000, "data": "mnist", "sizes": [784, 100, 100, 100, 10],
           "batch_size": 60, "dtype": "float32",
           "sides": {"bnprop": side, "torch eager": {"steps_per_s": 100.0,
                                                     "test_accuracy": 0.951}}}
    rows = {t["id"]: t for t in targets(_result([
        _cmp("step", "ioffe 784-100-100-100-10, batch 60", "float32", "torch eager", 0.29),
        _cmp("step", "ioffe 784-100-100-100-10, batch 60", "float32", "jax jit", 0.51),
        _cmp("layer", "60 x 100 -> 100", "float64", "torch eager", 1.2),
        _cmp("layer", "60 x 16 -> 100", "float64", "torch eager", 0.4),
    ], job))}
    assert rows["ioffe_step_vs_torch"]["status"] == "MET"
    assert rows["ioffe_step_vs_jax"]["status"] == "MISSED"
    assert rows["wide_step_vs_torch"]["status"] == "NOT RUN"
    assert rows["float64_vs_torch"]["value"] == 1.2
    assert rows["float64_vs_torch"]["status"] == "MISSED"
    assert "one round" not in rows["ioffe_step_vs_torch"]["detail"]  # none recorded
    spread = _cmp("step", "ioffe 784-100-100-100-10, batch 60", "float32", "torch eager", 0.29)
    spread["ratio_rounds"] = [0.25, 0.331]
    row = next(t for t in targets(_result([spread], job)) if t["id"] == "ioffe_step_vs_torch")
    assert row["detail"].endswith("; one round's ratio 0.25-0.331")
    assert rows["train_job_vs_torch"]["status"] == "MET"
    assert rows["memory_growth"]["status"] == "MET"
    # fast enough, but not at the same accuracy: missed
    job["sides"]["torch eager"]["test_accuracy"] = 0.97
    rows = {t["id"]: t for t in targets(_result([], job))}
    assert rows["train_job_vs_torch"]["status"] == "MISSED"
    assert rows["float64_vs_torch"]["status"] == "NOT RUN"


def test_train_job_falls_back_to_synthetic_data(tmp_path: Path) -> None:
    from bnprop.bench import job

    (X, y, Xt, yt), source = job.job_data(job.TrainConfig(), str(tmp_path))
    assert source == "synthetic"
    assert X.shape == (60_000, 784) and Xt.shape == (10_000, 784) and str(X.dtype) == "float32"
    assert set(y.tolist()) == set(range(10)) and yt.shape == (10_000,)


def test_configure_jax_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from bnprop.bench import jax_peer

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    cores = jax_peer.usable_cores()
    assert "default" in jax_peer.configure_threads(cores)
    assert "XLA_FLAGS" not in __import__("os").environ
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    monkeypatch.setattr(jax_peer, "usable_cores", lambda: 4)
    assert "1 thread" in jax_peer.configure_threads(1)
    assert jax_peer.ONE_THREAD_FLAGS in __import__("os").environ["XLA_FLAGS"]
    assert "more threads" in jax_peer.configure_threads(2)


def test_bench_measures_only_the_public_api() -> None:
    """The bench imports bnprop's public names, never the internals being redesigned."""
    import bnprop.bench

    allowed = {"bnprop", "bnprop.threads", "bnprop.train", "bnprop._validate",
               "bnprop._atomic"}
    for path in Path(bnprop.bench.__file__).parent.glob("*.py"):
        if path.name == "cnn.py":  # its phase shares time the step's pieces by design;
            continue               # its step time is the public Sequential.train_step
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                mod = node.module
                assert mod in allowed or mod.startswith("bnprop.bench") \
                    or not mod.startswith("bnprop"), (path.name, mod)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("bnprop.") \
                        or alias.name in allowed, (path.name, alias.name)
            if isinstance(node, ast.Attribute):
                assert node.attr not in {"fast_step", "FastStep", "fast"}, path.name
            if isinstance(node, ast.keyword):
                assert node.arg != "fast", path.name


def test_bench_refuses_zero_threads(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_json_folder_is_checked_before_the_benchmark_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import bnprop.bench

    def must_not_run(**kwargs: object) -> None:
        raise AssertionError("the benchmark ran although its output folder is missing")

    monkeypatch.setattr(bnprop.bench, "run", must_not_run)
    assert main(["bench", "--quick", "--json", str(tmp_path / "no" / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--json: the folder of" in err


def test_table_warns_when_the_machine_was_busy() -> None:
    from bnprop.bench import table
    from bnprop.bench.targets import targets

    out = {"threads": 2, "jax_threads": "XLA CPU pool: its default, the 2 usable cores",
           "machine": {"cpu": "cpu", "cores": 2, "load_average_start": [4.0, 3.0, 2.0],
                       "load_average_end": [4.0, 3.0, 2.0], "busy": True},
           "gemm_peak_flops_per_s": {"float32": 1e11}, "unavailable": [], "train_job": None,
           "first_step_s": 0.01, "compile_s": {},
           **_result([_cmp("step", "wide", "float32", "torch eager", 0.5)])}
    out["comparisons"][0].update(gemm_floor_s=0.1, bnprop_floor_multiple=5.0,
                                 peer_floor_multiple=10.0)
    out["memory"] = {"steps": 10, "peak_rss_bytes": 2**20,
                     "train_step": {"growth": 0, "per_step_peak": 100}}
    out["targets"] = targets(out)
    text = table(out)
    assert "WARNING: load average 4.0" in text and "| MET (busy machine) |" in text
    out["machine"]["busy"] = False
    assert "WARNING" not in table(out) and "| MET |" in table(out)
    out["machine"]["two_core_speedup"] = [{"before": "layer", "speedup": 1.93},
                                          {"before": "step", "speedup": 1.04}]
    assert "WARNING: the two cores ran as one during this run (a GEMM on 2 BLAS threads " \
           "against 1: before step x1.04; below x1.5)" in table(out)
    out["machine"]["two_core_speedup"][1]["speedup"] = 1.8
    assert "WARNING" not in table(out)


def test_table_names_the_blas_kernels_and_who_chose_them() -> None:
    """The kernels decide every GEMM's speed (an AMD EPYC: float32 130 against 237
    GFLOP/s a core), so the table names them, and an OPENBLAS_CORETYPE that chose them."""
    from bnprop import threads
    from bnprop.bench import machine
    from bnprop.bench.table import _core

    info = machine.describe()
    assert info["blas_core"] == threads.blas_core()
    assert info["openblas_coretype"] == (os.environ.get("OPENBLAS_CORETYPE") or None)
    assert _core({"blas_core": "Haswell", "openblas_coretype": "Haswell"}) == \
        "its Haswell kernels (OPENBLAS_CORETYPE=Haswell in the environment)"
    assert _core({"blas_core": "Haswell", "openblas_coretype": "Haswell", "avx512": True}) \
        == "its Haswell kernels (OPENBLAS_CORETYPE=Haswell in the environment; this CPU " \
        "has AVX-512, which OpenBLAS's SkylakeX kernels use)"
    assert _core({"blas_core": "SkylakeX", "openblas_coretype": "SkylakeX",
                  "avx512": True}).endswith("in the environment)")
    assert info["avx512"] in (True, False, None)
    assert _core({"blas_core": "SkylakeX", "openblas_coretype": None}) == \
        "its SkylakeX kernels (its own choice)"
    assert _core({}) == "kernels unknown"


def test_the_two_core_probe_measures_a_speedup(restore_threads: None) -> None:
    from bnprop.bench import machine

    speedup = machine.two_core_speedup(k=128, repeats=2)
    assert 0.2 < speedup < 4.0


def test_cli_passes_threads_and_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    import bnprop.bench

    seen: dict = {}
    monkeypatch.setattr(bnprop.bench, "run", lambda **kw: seen.update(kw) or {"ok": 1})
    monkeypatch.setattr(bnprop.bench, "table", lambda out: f"table of {sorted(out)}")
    assert main(["bench", "--quick", "--data-dir", str(tmp_path)]) == 0
    assert seen == {"quick": True, "n_threads": 2, "data_dir": str(tmp_path)}
    assert "table of ['ok']" in capsys.readouterr().out
