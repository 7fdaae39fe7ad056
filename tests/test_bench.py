"""bnprop bench --quick: the JSON's layout and positive ratios (no timing assertions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bnprop.cli import main

pytest.importorskip("torch")


def test_quick_bench_writes_json_with_positive_ratios(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    from bnprop import threads

    n, blas = threads.num_threads(), threads.blas_threads()
    try:
        assert main(["bench", "--quick", "--json", str(tmp_path / "out.json")]) == 0
    finally:
        threads.set_threads(n)
        if blas is not None:
            threads.set_blas_threads(blas)
    printed = capsys.readouterr().out
    assert "bnprop / peer" in printed and "| target |" in printed
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["schema"] == 1 and out["quick"] is True
    for key in ("machine", "comparisons", "unavailable", "limits", "memory", "targets",
                "first_step_s", "threads"):
        assert key in out, key
    sections = {c["section"] for c in out["comparisons"]}
    assert sections == {"layer", "step"}
    for c in out["comparisons"]:
        assert set(c) == {"section", "case", "dtype", "peer", "bnprop_s", "peer_s", "ratio"}
        assert isinstance(c["ratio"], float) and math.isfinite(c["ratio"]) and c["ratio"] > 0
        assert c["ratio"] == pytest.approx(c["bnprop_s"] / c["peer_s"])
    for u in out["unavailable"]:
        assert u["reason"]
    assert out["limits"]["copy_bytes_per_s_1_thread"] > 0
    assert out["memory"]["fast"]["growth"] < 1024
    assert {"target", "value", "limit", "met"} <= set(out["targets"][0])


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
