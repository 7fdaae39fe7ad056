"""``bnprop reproduce fig1`` / ``frozen-stats``: files that agree, shared start and batches,
seeds, units, divergence, the command line. The full paper-length runs are marked slow."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bnprop._validate import InputError
from bnprop.cli import main
from bnprop.data import datasets
from bnprop.model import MLP
from bnprop.optim import SGD
from bnprop.reproduce import ReproduceOptions, fig1, frozen_stats, run_fig1, run_frozen_stats
from bnprop.reproduce.lockstep import Arm, run_lockstep, weights_sha256
from bnprop.reproduce.options import check_options, record_steps
from bnprop.reproduce.records import aggregate, first_step_reaching, write_csv
from bnprop.train import BatchOrder
from tests.fake_mnist import run_cli

pytest.importorskip("matplotlib")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _cell(text: str) -> float | None:
    return None if text == "" else float(text)


def _real_mnist_or_skip() -> None:
    try:
        datasets.verify("mnist")
    except InputError as exc:
        pytest.skip(f"real MNIST not provisioned: {exc}")


# ---- shared parts ------------------------------------------------------------------------

def test_record_steps() -> None:
    assert record_steps(10, 3) == [0, 3, 6, 9, 10]
    assert record_steps(9, 3) == [0, 3, 6, 9]
    assert record_steps(5, 100) == [0, 5]
    assert check_options(ReproduceOptions(steps=50_000), {"sgd": 0.1}).record_every == 500
    assert check_options(ReproduceOptions(steps=30), {"sgd": 0.1}).record_every == 1


def test_options_fill_the_command_defaults() -> None:
    opts = check_options(ReproduceOptions(optimizer="adam"), {"sgd": 0.05, "adam": 1e-3})
    assert opts.lr == 1e-3 and opts.record_every == 500
    assert check_options(ReproduceOptions(lr=0.2), {"sgd": 0.05}).lr == 0.2
    with pytest.raises(InputError, match=r"optimizer: expected one of 'sgd'\. Got 'adam'"):
        check_options(ReproduceOptions(optimizer="adam"), {"sgd": 0.05})
    with pytest.raises(InputError, match="lr: expected a finite number > 0, got -1"):
        check_options(ReproduceOptions(lr=-1), {"sgd": 0.05})
    with pytest.raises(InputError, match="dtype: expected one of"):
        check_options(ReproduceOptions(dtype="float16"), {"sgd": 0.05})


def test_aggregate_min_mean_max_over_the_common_records() -> None:
    mean, lo, hi = aggregate([[1.0, 2.0, 3.0], [3.0, None], [2.0, 5.0, 7.0]])
    np.testing.assert_array_equal(mean, [2.0, np.nan])
    np.testing.assert_array_equal(lo, [1.0, np.nan])
    np.testing.assert_array_equal(hi, [3.0, np.nan])
    assert first_step_reaching([0, 10, 20], [0.5, None, 0.97], 0.95) == 20
    assert first_step_reaching([0, 10], [0.5, 0.9], 0.95) is None


def test_csv_cells_round_trip(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv", ["a", "b", "c", "d"], [[1, 0.1 + 0.2, None, float("nan")]])
    assert (tmp_path / "t.csv").read_text() == "a,b,c,d\n1,0.30000000000000004,,\n"


def test_lockstep_records_and_losses() -> None:
    """train_loss: loss of batch 0 at step 0, then the mean of the batch losses since the
    previous record; every arm trains on order.indices(s) at step s."""
    rng = np.random.default_rng(0)
    X = rng.random((40, 6), dtype=np.float32)
    y = rng.integers(0, 3, 40)
    order = BatchOrder(40, 8, seed=3)
    arms = [Arm(f"n{k}", MLP((6, 5, 3), seed=1, batchnorm=k == 0), SGD(0.3)) for k in (0, 1)]
    step_of: list[int] = []

    def measure(arm: Arm, step: int, X_next: np.ndarray, y_next: np.ndarray) -> dict:
        np.testing.assert_array_equal(X_next, X[order.indices(step)])
        return {"step_twice": 2.0 * step}

    digest = run_lockstep(arms, X, y, order, steps=7, record_steps=[0, 3, 7],
                          measure=measure, on_step=step_of.append)
    assert step_of == list(range(1, 8))
    for k, arm in enumerate(arms):
        ref, opt = MLP((6, 5, 3), seed=1, batchnorm=k == 0), SGD(0.3)
        assert arm.initial_W_sha256 == weights_sha256(ref)
        losses = [ref.train_step(X[order.indices(s)], y[order.indices(s)], opt)
                  for s in range(7)]
        assert arm.steps == [0, 3, 7]
        assert arm.curves["step_twice"] == [0.0, 6.0, 14.0]
        assert arm.curves["train_loss"] == [losses[0], np.mean(losses[:3]), np.mean(losses[3:])]
        for name, value in ref.parameters().items():
            np.testing.assert_array_equal(arm.net.parameters()[name], value)
    again = run_lockstep([Arm("x", MLP((6, 5, 3), seed=1), SGD(0.3))], X, y,
                         BatchOrder(40, 8, seed=3), steps=7, record_steps=[7],
                         measure=lambda *a: {})
    assert again == digest


# ---- fig1 --------------------------------------------------------------------------------

def _fig1(tmp_path: Path, name: str = "fig1", **kw: object) -> dict:
    unit = kw.pop("unit", None)
    options = ReproduceOptions(**{"steps": 60, "record_every": 10, **kw})  # type: ignore[arg-type]
    return run_fig1(options, tmp_path / name, unit=unit, progress=False)


def test_fig1_files_agree(data_root: tuple, tmp_path: Path) -> None:
    summary = _fig1(tmp_path)
    out = tmp_path / "fig1"
    assert sorted(p.name for p in out.iterdir()) == ["fig1.csv", "fig1.png", "summary.json"]
    assert (out / "fig1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text()) == summary
    rows = _read_csv(out / "fig1.csv")
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30, 40, 50, 60]
    assert {r["seed"] for r in rows} == {"0"}
    for arm in fig1.ARMS:
        entry = summary[arm]
        assert entry["steps"] == [0, 10, 20, 30, 40, 50, 60]
        assert [s for s, _ in entry["accuracy_curve"]] == entry["steps"]
        assert [_cell(r[f"{arm}_test_accuracy"]) for r in rows] == \
            [a for _, a in entry["accuracy_curve"]]
        for q in (15, 50, 85):
            assert [_cell(r[f"{arm}_p{q}"]) for r in rows] == entry["percentiles"][str(q)]
        assert entry["test_accuracy"] == entry["accuracy_curve"][-1][1]
        p15, p50, p85 = (np.array(entry["percentiles"][q]) for q in ("15", "50", "85"))
        assert (p15 <= p50).all() and (p50 <= p85).all() and (p15 < p85).any()
        assert entry["diverged_at"] is None
        assert entry["steps_to_accuracy"]["0.95"] == first_step_reaching(
            entry["steps"], [a for _, a in entry["accuracy_curve"]], 0.95)
    assert summary["per_seed"][0]["batchnorm"]["test_accuracy"] == \
        summary["batchnorm"]["test_accuracy"]
    assert summary["batchnorm"]["test_accuracy"] > 0.9  # the fake data is easy with BN
    assert summary["percentile_examples"] == 200 and summary["layer"] == "hidden.2"


def test_fig1_networks_share_start_and_batches(data_root: tuple, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[bool, list] = {True: [], False: []}
    start: dict[bool, dict[str, np.ndarray]] = {}
    real = MLP.train_step

    def spy(self: MLP, X: np.ndarray, y: np.ndarray, opt: object) -> float:
        bn = self.config.batchnorm
        if bn not in start:
            start[bn] = {k: v.copy() for k, v in self.parameters().items()}
        seen[bn].append((X.copy(), np.array(y)))
        return real(self, X, y, opt)

    monkeypatch.setattr(MLP, "train_step", spy)
    summary = _fig1(tmp_path, steps=25, record_every=5, seed=3)
    for layer in ("hidden.0.W", "hidden.1.W", "hidden.2.W", "out.W"):
        np.testing.assert_array_equal(start[True][layer], start[False][layer])
    assert len(seen[True]) == len(seen[False]) == 25
    X, y = datasets.load_dataset("mnist", "train")
    order = BatchOrder(X.shape[0], 60, seed=3)
    for step, ((Xb, yb), (Xp, yp)) in enumerate(zip(seen[True], seen[False], strict=True)):
        np.testing.assert_array_equal(Xb, Xp)
        np.testing.assert_array_equal(yb, yp)
        np.testing.assert_array_equal(yb, y[order.indices(step)])
    result = summary["per_seed"][0]
    assert result["batchnorm"]["initial_W_sha256"] == result["no_batchnorm"]["initial_W_sha256"]
    assert len(result["batches_sha256"]) == 64


def test_fig1_seeds_draw_mean_and_band(data_root: tuple, tmp_path: Path) -> None:
    summary = _fig1(tmp_path, steps=30, record_every=10, seeds=2, seed=4)
    assert summary["seeds"] == [4, 5] and summary["aggregate"] == "mean over seeds"
    per_seed = summary["per_seed"]
    assert [s["seed"] for s in per_seed] == [4, 5]
    assert per_seed[0]["batchnorm"]["initial_W_sha256"] != \
        per_seed[1]["batchnorm"]["initial_W_sha256"]
    assert per_seed[0]["batches_sha256"] != per_seed[1]["batches_sha256"]
    for arm in fig1.ARMS:
        for q in ("15", "50", "85"):
            np.testing.assert_allclose(
                summary[arm]["percentiles"][q],
                np.mean([s[arm]["percentiles"][q] for s in per_seed], axis=0), rtol=1e-15)
        assert summary[arm]["test_accuracy"] == pytest.approx(
            np.mean([s[arm]["test_accuracy"] for s in per_seed]))
    rows = _read_csv(tmp_path / "fig1" / "fig1.csv")
    assert [(r["seed"], r["step"]) for r in rows] == [
        (s, t) for s in ("4", "5") for t in ("0", "10", "20", "30")]
    fig = fig1.draw_fig1(summary)
    assert all(len(ax.collections) > 0 for ax in fig.axes)  # a fill_between band per curve
    one = _fig1(tmp_path, "one", steps=30, record_every=10)
    assert all(len(ax.collections) == 0 for ax in fig1.draw_fig1(one).axes)


def test_fig1_unit(data_root: tuple, tmp_path: Path) -> None:
    summary = _fig1(tmp_path, steps=10, record_every=5, unit=7)
    assert summary["unit"] == 7 and summary["unit_source"] == "given"
    Xt, _ = datasets.load_dataset("mnist", "test")
    for arm, bn in (("batchnorm", True), ("no_batchnorm", False)):
        start = MLP((784, 100, 100, 100, 10), batchnorm=bn, seed=0)
        A = start.hidden_inputs(Xt)[-1][:, 7].astype(np.float64)
        assert [summary[arm]["percentiles"][q][0] for q in ("15", "50", "85")] == \
            list(np.percentile(A, [15, 50, 85]))
    drawn = _fig1(tmp_path, "drawn", steps=10, record_every=5, seed=2)
    assert drawn["unit"] == fig1.draw_unit(2) and drawn["unit_source"] == "drawn with seed 2"
    assert 0 <= fig1.draw_unit(2) < 100
    for bad in (100, -1, 2.5, True):
        with pytest.raises(InputError, match=r"unit: expected an integer in 0\.\.99 \(a unit "
                           r"of the last hidden layer, hidden\.2\), got"):
            _fig1(tmp_path, "bad", unit=bad)
    assert not (tmp_path / "bad").exists()


# ---- frozen-stats ------------------------------------------------------------------------

def _frozen(tmp_path: Path, name: str = "fz", **kw: object) -> dict:
    options = ReproduceOptions(**{"steps": 40, "record_every": 10, **kw})  # type: ignore[arg-type]
    return run_frozen_stats(options, tmp_path / name, progress=False)


def test_frozen_stats_files_agree(data_root: tuple, tmp_path: Path) -> None:
    summary = _frozen(tmp_path)
    out = tmp_path / "fz"
    assert sorted(p.name for p in out.iterdir()) == [
        "frozen_stats.csv", "frozen_stats.png", "summary.json"]
    assert json.loads((out / "summary.json").read_text()) == summary
    rows = _read_csv(out / "frozen_stats.csv")
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30, 40]
    for arm in frozen_stats.ARMS:
        entry, curves = summary[arm], summary[arm]["curves"]
        assert entry["steps"] == [0, 10, 20, 30, 40] and entry["diverged_at"] is None
        assert [_cell(r[f"{arm}_loss"]) for r in rows] == curves["loss"]
        assert [_cell(r[f"{arm}_test_accuracy"]) for r in rows] == curves["test_accuracy"]
        for l, layer in enumerate(frozen_stats.LAYERS):
            assert [_cell(r[f"{arm}_W{l}_norm"]) for r in rows] == curves["weight_norms"][layer]
            assert [_cell(r[f"{arm}_W{l}_row_sum_norm"]) for r in rows] == \
                curves["row_sum_norms"][layer]
            assert [_cell(r[f"{arm}_W{l}_grad_rel_diff"]) for r in rows] == \
                curves["grad_rel_diff"][layer]
            assert entry["weight_norms"][layer] == curves["weight_norms"][layer][-1]
        assert entry["test_accuracy"] == curves["test_accuracy"][-1]
        assert entry["loss"] == curves["loss"][-1]
    exact, frozen = summary["exact"]["curves"], summary["frozen"]["curves"]
    # Same start, same first batch: step 0 agrees in every measurement.
    for name in ("loss", "test_accuracy"):
        assert exact[name][0] == frozen[name][0]
    for name in frozen_stats.PER_LAYER:
        assert exact[name]["hidden.1.W"][0] == frozen[name]["hidden.1.W"][0]
    assert exact["grad_rel_diff"]["hidden.0.W"][0] > 0.1  # the two gradients differ
    # The frozen gradient pushes W along the mean input; the exact one does not.
    assert frozen["row_sum_norms"]["hidden.0.W"][-1] > 2 * exact["row_sum_norms"]["hidden.0.W"][-1]


def test_frozen_stats_measuring_leaves_training_alone(data_root: tuple, tmp_path: Path) -> None:
    """Each network ends where a plain loop without measurements ends, bit for bit."""
    from bnprop.train import build_model, build_optimizer

    summary = _frozen(tmp_path, steps=25, record_every=5)
    X, y = datasets.load_dataset("mnist", "train")
    Xt, yt = datasets.load_dataset("mnist", "test")
    opts = check_options(ReproduceOptions(steps=25), frozen_stats.DEFAULT_LR)
    order = BatchOrder(X.shape[0], 60, seed=0)
    for stats in frozen_stats.ARMS:
        config = opts.train_config(0, stats=stats)
        net, opt = build_model(config, 784, 10), build_optimizer(config)
        for step in range(25):
            net.train_step(X[order.indices(step)], y[order.indices(step)], opt)
        assert summary[stats]["test_accuracy"] == net.accuracy(Xt, yt)
        W = net.parameters()["hidden.2.W"].astype(np.float64)
        assert summary[stats]["weight_norms"]["hidden.2.W"] == float(np.linalg.norm(W))


def test_both_gradients_route_each_mode_and_leave_the_net_alone() -> None:
    rng = np.random.default_rng(1)
    X, y = rng.random((12, 5)), rng.integers(0, 3, 12)
    nets = {stats: MLP((5, 4, 4, 4, 3), dtype="float64", stats=stats, seed=2)
            for stats in frozen_stats.ARMS}
    before = nets["frozen"].get_state()
    grads = frozen_stats.both_gradients(nets["frozen"], X, y)
    for k, v in nets["frozen"].get_state().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)  # running statistics too
    for stats, net in nets.items():
        reference = net.loss_and_grads(X, y)[1]
        for layer in frozen_stats.LAYERS:
            np.testing.assert_array_equal(grads[stats][layer], reference[layer])
    assert not np.allclose(grads["exact"]["hidden.1.W"], grads["frozen"]["hidden.1.W"])
    rel = frozen_stats.grad_rel_diff(grads)
    dW_e, dW_f = grads["exact"]["hidden.0.W"], grads["frozen"]["hidden.0.W"]
    assert rel["grad_rel_diff/hidden.0.W"] == pytest.approx(
        np.linalg.norm(dW_f - dW_e) / np.linalg.norm(dW_e), rel=1e-12)


def test_frozen_stats_divergence_stops_cleanly(data_root: tuple, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real = MLP.train_step
    calls = {"n": 0}

    def flaky(self: MLP, X: np.ndarray, y: np.ndarray, opt: object) -> float:
        loss = real(self, X, y, opt)
        if self.config.stats != "frozen":
            return loss
        calls["n"] += 1
        return float("inf") if calls["n"] == 15 else loss

    monkeypatch.setattr(MLP, "train_step", flaky)
    summary = _frozen(tmp_path, steps=30, record_every=5)
    frozen, exact = summary["frozen"], summary["exact"]
    assert frozen["diverged_at"] == 15 and calls["n"] == 15  # stopped: no more steps
    assert frozen["steps"] == [0, 5, 10]
    assert frozen["test_accuracy"] is None and frozen["loss"] is None
    assert exact["diverged_at"] is None and exact["steps"][-1] == 30
    rows = _read_csv(tmp_path / "fz" / "frozen_stats.csv")
    assert [int(r["step"]) for r in rows] == [0, 5, 10, 15, 20, 25, 30]
    assert all(r["frozen_loss"] == "" for r in rows[3:]) and rows[-1]["exact_loss"] != ""
    assert (tmp_path / "fz" / "frozen_stats.png").exists()
    assert "frozen diverged at step 15" in frozen_stats.report_line(summary, "x")


def test_non_finite_parameters_stop_at_the_record(data_root: tuple, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real = MLP.train_step
    calls = {"n": 0}

    def poison(self: MLP, X: np.ndarray, y: np.ndarray, opt: object) -> float:
        loss = real(self, X, y, opt)
        if not self.config.batchnorm:
            calls["n"] += 1
            if calls["n"] == 15:
                self.parameters()["out.b"][0] = np.nan
        return loss

    monkeypatch.setattr(MLP, "train_step", poison)
    summary = _fig1(tmp_path, steps=30, record_every=5)
    # NaN in a parameter after step 15, with a finite loss: the record at 15 stops it.
    assert summary["no_batchnorm"]["diverged_at"] == 15 and calls["n"] == 15
    assert summary["no_batchnorm"]["steps"] == [0, 5, 10]
    assert summary["no_batchnorm"]["test_accuracy"] is None
    assert summary["batchnorm"]["steps"][-1] == 30
    assert "without BN diverged at step 15" in fig1.report_line(summary, "x")


# ---- the command line --------------------------------------------------------------------

def test_cli_end_to_end(data_root: tuple, tmp_path: Path) -> None:
    root, digests = data_root
    out = tmp_path / "cli-fig1"
    result = run_cli(["reproduce", "fig1", "--steps", "20", "--record-every", "5", "--out",
                      str(out), "--unit", "3"], root, digests)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unit"] == 3 and summary["options"]["lr"] == 0.05
    bn, plain = summary["batchnorm"]["test_accuracy"], summary["no_batchnorm"]["test_accuracy"]
    assert result.stdout == (
        f"fig1: test accuracy with BN {bn:.4f}, without BN {plain:.4f} after 20 steps, "
        f"{summary['elapsed']:.1f} s; fig1.png, fig1.csv, summary.json in {out}\n")
    progress = [ln for ln in result.stderr.splitlines() if ln.startswith("fig1 step")]
    assert progress and "bn_loss" in progress[-1] and "no_bn_acc" in progress[-1]
    assert progress[-1].startswith("fig1 step 20/20")


def test_cli_frozen_stats(data_root: tuple, tmp_path: Path,
                          capsys: pytest.CaptureFixture) -> None:
    from bnprop import threads

    out = tmp_path / "cli-fz"
    before = threads.num_threads()
    try:
        assert main(["reproduce", "frozen-stats", "--steps", "12", "--seeds", "2", "--out",
                     str(out), "--quiet", "--optimizer", "adam", "--threads", "1"]) == 0
        assert threads.num_threads() == 1
    finally:
        threads.set_threads(before)
    printed = capsys.readouterr()
    assert printed.err == ""
    assert printed.out.startswith("frozen-stats: exact test accuracy ")
    assert "(mean of 2 seeds)" in printed.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["lr"] == 1e-3 and summary["options"]["record_every"] == 1
    assert len(summary["per_seed"]) == 2
    assert summary["threads"] == 1
    # A second run into the same folder is refused; the first run's files are kept.
    before = (out / "summary.json").read_bytes()
    assert main(["reproduce", "frozen-stats", "--steps", "12", "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "already holds frozen_stats.png, frozen_stats.csv, summary.json" in err
    assert (out / "summary.json").read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["fig1", "--unit", "100"], "unit: expected an integer in 0..99"),
     (["fig1", "--steps", "0"], "steps: expected an integer >= 1, got 0"),
     (["frozen-stats", "--seeds", "0"], "seeds: expected an integer >= 1, got 0"),
     (["fig1", "--record-every", "0"], "record_every: expected an integer >= 1, got 0"),
     (["frozen-stats", "--seed", "-1"], "seed: expected an integer >= 0, got -1"),
     (["fig1", "--data-dir", "/nonexistent/bnprop"], "bnprop data fetch --dataset mnist"),
     (["frozen-stats", "--threads", "0"], "--threads: expected an integer >= 1, got 0")],
)
def test_cli_bad_options(data_root: tuple, tmp_path: Path, capsys: pytest.CaptureFixture,
                         argv: list[str], message: str) -> None:
    out = tmp_path / "never"
    assert main(["reproduce", *argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("bnprop reproduce: error:")
    assert not out.exists()


def test_missing_matplotlib_is_one_line_before_training(
        data_root: tuple, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "never"
    for action in ("fig1", "frozen-stats"):
        assert main(["reproduce", action, "--out", str(out), "--steps", "5"]) == 2
        err = capsys.readouterr().err
        assert err == ("bnprop reproduce: error: matplotlib is needed to draw the figures: "
                       "pip install 'bnprop[plot]'\n")
    assert not out.exists()


# ---- the full runs on the real MNIST (slow, not in CI) -----------------------------------

@pytest.mark.slow
def test_fig1_full_default_run(tmp_path: Path) -> None:
    """The paper's 50,000 steps (a few minutes): BN is ahead early and ends ahead."""
    _real_mnist_or_skip()
    summary = run_fig1(out=tmp_path / "fig1", progress=False)
    bn, plain = summary["batchnorm"], summary["no_batchnorm"]
    assert bn["test_accuracy"] >= 0.975 and bn["test_accuracy"] > plain["test_accuracy"]
    assert bn["steps_to_accuracy"]["0.95"] < plain["steps_to_accuracy"]["0.95"]
    at_2k = {arm: dict(summary[arm]["accuracy_curve"])[2000] for arm in fig1.ARMS}
    assert at_2k["batchnorm"] > 0.9 and at_2k["no_batchnorm"] < 0.6


@pytest.mark.slow
def test_frozen_stats_full_default_run(tmp_path: Path) -> None:
    """50,000 steps: the frozen gradient inflates the row sums of every W."""
    _real_mnist_or_skip()
    summary = run_frozen_stats(out=tmp_path / "fz", progress=False)
    for layer in frozen_stats.LAYERS:
        assert summary["frozen"]["row_sum_norms"][layer] > \
            3 * summary["exact"]["row_sum_norms"][layer]
