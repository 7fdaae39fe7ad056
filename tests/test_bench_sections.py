"""bnprop.bench.sections: a section is measured again while its probes find the two cores
ran as one, judged by the probes alone, and the table says what was redone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_bench import restore_threads  # noqa: F401 - the fixture

from bnprop.bench import sections
from bnprop.bench.machine import CORES_APART


def _out() -> dict[str, Any]:
    return {"machine": {"two_core_speedup": []}, "comparisons": [{"case": "earlier"}],
            "unavailable": [], "compile_s": {}}


def _probe(values: list[float]) -> Iterator[float]:
    return iter(values)


def _section(out: dict[str, Any]) -> tuple[list[int], Any]:
    """A section that appends one comparison per attempt, with its attempt number and a
    ratio that improves each time (so a choice by ratio would show), and sets compile_s."""
    calls: list[int] = []

    def run() -> None:
        calls.append(len(calls) + 1)
        out["comparisons"].append({"case": "x", "attempt": len(calls),
                                   "ratio": 1.0 / len(calls)})
        out["unavailable"].append({"attempt": len(calls)})
        out["compile_s"]["jax jit x"] = 10.0 if len(calls) == 1 else 0.01
    return calls, run


def test_cores_apart_measure_once() -> None:
    out, logged = _out(), []
    calls, run = _section(out)
    probe = _probe([1.9, 1.8])
    sections.run_section(out, "step", run, probe=lambda: next(probe), retries=2,
                         log=logged.append)
    assert calls == [1] and logged == []
    assert out["machine"]["two_core_speedup"] == [
        {"before": "step", "speedup": 1.9, "speedup_after": 1.8, "attempt": 1, "kept": True}]
    assert [c["case"] for c in out["comparisons"]] == ["earlier", "x"]


@pytest.mark.parametrize("low", ["before", "after"])
def test_a_low_probe_drops_the_attempt_and_measures_again(low: str) -> None:
    out, logged = _out(), []
    calls, run = _section(out)
    first = [1.1, 1.9] if low == "before" else [1.9, 1.2]
    probe = _probe([*first, 1.8, 1.9])
    sections.run_section(out, "layer", run, probe=lambda: next(probe), retries=2,
                         log=logged.append)
    assert calls == [1, 2]
    entries = out["machine"]["two_core_speedup"]
    assert [(e["attempt"], e["kept"]) for e in entries] == [(1, False), (2, True)]
    # only the kept attempt's results, after what earlier sections added
    assert [c.get("attempt") for c in out["comparisons"]] == [None, 2]
    assert out["unavailable"] == [{"attempt": 2}]
    assert out["compile_s"] == {"jax jit x": 10.0}  # the first, compiling call's
    assert len(logged) == 1 and "layer section" in logged[0] and "again" in logged[0]


def test_the_last_attempt_is_kept_when_the_cores_stay_as_one() -> None:
    out, logged = _out(), []
    calls, run = _section(out)
    sections.run_section(out, "CNN step", run, probe=lambda: 1.0, retries=2,
                         log=logged.append)
    assert calls == [1, 2, 3] and len(logged) == 2
    entries = out["machine"]["two_core_speedup"]
    assert [e["kept"] for e in entries] == [False, False, True]
    assert [c.get("attempt") for c in out["comparisons"]] == [None, 3]


def test_no_retries_measure_once_whatever_the_probes() -> None:
    out = _out()
    calls, run = _section(out)
    sections.run_section(out, "step", run, probe=lambda: 1.0, retries=0, log=print)
    assert calls == [1] and out["machine"]["two_core_speedup"][0]["kept"] is True


def test_apart_reads_both_probes_and_old_entries() -> None:
    assert sections.apart({"speedup": CORES_APART, "speedup_after": 2.0})
    assert not sections.apart({"speedup": 2.0, "speedup_after": CORES_APART - 0.01})
    assert sections.apart({"before": "end", "speedup": 1.9})  # a probe without an after
    assert not sections.apart({"before": "end", "speedup": 1.2})


def test_the_table_names_redone_sections_and_warns_for_kept_shared_ones() -> None:
    from bnprop.bench import table

    out = {"threads": 2, "jax_threads": "XLA", "comparisons": [], "unavailable": [],
           "machine": {"cpu": "cpu", "cores": 2, "load_average_start": [0.1, 0.1, 0.1],
                       "busy": False, "two_core_speedup": [
                           {"before": "step", "speedup": 1.1, "speedup_after": 1.9,
                            "attempt": 1, "kept": False},
                           {"before": "step", "speedup": 1.8, "speedup_after": 1.9,
                            "attempt": 2, "kept": True},
                           {"before": "end", "speedup": 1.9}]},
           "gemm_peak_flops_per_s": {"float32": 1e11}, "train_job": None,
           "first_step_s": 0.01, "compile_s": {}, "targets": []}
    text = table(out)
    assert "measured again, the two cores having run as one" in text
    assert "step (attempt 1: x1.1, x1.9)" in text and "WARNING: the two cores" not in text
    out["machine"]["two_core_speedup"][1].update(speedup_after=1.3)
    assert "WARNING: the two cores ran as one during this run (a GEMM on 2 BLAS threads " \
           "against 1: step x1.8 before, x1.3 after; below x1.5)" in table(out)


def test_the_bench_measures_a_section_again_on_two_threads(
        monkeypatch: pytest.MonkeyPatch, restore_threads: None) -> None:  # noqa: F811
    """report.run on 2 threads: probes around each section, the first section redone."""
    from bnprop.bench import machine, report

    speedups = iter([1.0, 1.9] + [1.9] * 20)
    monkeypatch.setattr(machine, "two_core_speedup", lambda: next(speedups))
    tiny = report.Sizes(layers=((8, 4, 6),), steps=(), rounds=1, budget=0.001,
                        copy_bytes=1 << 20, gemm_k=64, gemm_repeats=1, memory_steps=2,
                        job_chunks=1, job_chunk_steps=2, job_eval_every=2, job_warmup=2,
                        section_retries=1)
    monkeypatch.setattr(report.cnn, "run_cnn", lambda out, **kw: None)
    monkeypatch.setattr(report, "run_job", lambda *a: None)
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # bnprop alone: quick
    logged: list[str] = []
    out = report.run(sizes=tiny, n_threads=2, log=logged.append)
    entries = out["machine"]["two_core_speedup"]
    assert [(e["before"], e.get("attempt"), e.get("kept")) for e in entries] == [
        ("layer", 1, False), ("layer", 2, True), ("step", 1, True), ("train job", 1, True),
        ("CNN step", 1, True), ("end", None, None)]
    assert sum("measuring it again" in line for line in logged) == 1
    # the layer section's one row (torch missing) once, not once per attempt
    assert [u["case"] for u in out["unavailable"] if u["section"] == "layer"] == [
        "8 x 4 -> 6", "8 x 4 -> 6"]  # float32 and float64
