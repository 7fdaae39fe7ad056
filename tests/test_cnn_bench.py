"""The CNN step of ``bnprop bench``: a ratio against PyTorch eager and the phase shares.

Only the structure is tested (speed targets live in ``bnprop bench``, not in tests)."""

from __future__ import annotations

import numpy as np
import pytest

from bnprop.bench import cnn as bench_cnn


def test_cnn_step_ratio_and_phases() -> None:
    pytest.importorskip("torch")
    out: dict = {"comparisons": [], "unavailable": []}
    bench_cnn.run_cnn(out, quick=True, rounds=1, budget=0.01, no_torch=None)
    (row,) = out["comparisons"]
    assert row["case"] == "cnn 16-32-128, batch 16" and row["peer"] == "torch eager"
    assert row["ratio"] == row["bnprop_s"] / row["peer_s"] > 0
    ph = out["cnn_phases"]
    assert set(ph["shares"]) == set(bench_cnn.PHASES)
    assert np.isclose(sum(ph["shares"].values()), 1.0)
    assert all(ph["seconds"][k] > 0 for k in ("im2col", "GEMM", "BN", "pooling"))
    lines = bench_cnn.phase_lines(out)
    assert any(line.startswith("| GEMM |") for line in lines)


def test_negative_other_is_explained_under_the_table() -> None:
    seconds = {"im2col": 0.002, "GEMM": 0.013, "BN": 0.007, "pooling": 0.001}
    for other, explained in ((-0.003, True), (0.001, False)):
        ph = {"case": "cnn", "step_s": sum(seconds.values()) + other,
              "seconds": {**seconds, "other": other}}
        ph["shares"] = {k: v / ph["step_s"] for k, v in ph["seconds"].items()}
        lines = bench_cnn.phase_lines({"cnn_phases": ph})
        assert any(line.startswith("other is the step less") for line in lines) == explained


def test_cnn_step_without_torch_is_reported_unavailable() -> None:
    out: dict = {"comparisons": [], "unavailable": []}
    bench_cnn.run_cnn(out, quick=True, rounds=1, budget=0.01, no_torch="torch not installed")
    assert out["comparisons"] == []
    assert out["unavailable"][0]["reason"] == "torch not installed"
    assert out["cnn_phases"]["step_s"] > 0


def test_the_bench_step_is_the_train_step() -> None:
    """The timed call trains: the loss of the fixed batch falls."""
    X, y = bench_cnn.cnn_inputs(8)
    step, net = bench_cnn.bnprop_cnn_step(X, y)
    before, _ = net.loss_and_grads(X, y)
    for _ in range(5):
        step()
    after, _ = net.loss_and_grads(X, y)
    assert after < before
