"""``bnprop reproduce ics`` / ``landscape`` / ``noisy-bn`` (Santurkar et al. 2018): short runs
of each command on the MNIST look-alike, their files, and the command line. The full-length
runs on real MNIST are marked slow."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from bnprop._validate import InputError
from bnprop.cli import main
from bnprop.reproduce import (
    ReproduceOptions,
    curves,
    ics,
    landscape,
    noisy_bn,
    run_ics,
    run_landscape,
    run_noisy_bn,
)

pytest.importorskip("matplotlib")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ---- the commands, short -----------------------------------------------------------------

def _opts(**kw: object) -> ReproduceOptions:
    return ReproduceOptions(**{"steps": 20, "record_every": 10, **kw})  # type: ignore[arg-type]


def _check_files(out: Path, files: tuple[str, ...], summary: dict, arms: tuple[str, ...],
                 steps: list[int]) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    assert (out / files[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text()) == summary
    rows = _read_csv(out / files[1])
    assert [int(r["step"]) for r in rows] == steps * len(summary["seeds"])
    for result in summary["per_seed"]:
        seed_rows = [r for r in rows if int(r["seed"]) == result["seed"]]
        for arm in arms:
            entry = result[arm]
            assert entry["steps"] == steps and entry["diverged_at"] is None
            for name, values in entry["curves"].items():
                assert [None if r[f"{arm}_{name}"] == "" else float(r[f"{arm}_{name}"])
                        for r in seed_rows] == values, (arm, name)
                assert entry["final"][name] == values[-1]
    for arm in arms:
        assert summary[arm]["steps"] == steps
    starts = {summary["per_seed"][0][arm]["initial_W_sha256"] for arm in curves.ARMS}
    assert len(starts) == 1  # the MLPs start from the same W matrices (named alike)


def test_ics_command(data_root: tuple, tmp_path: Path) -> None:
    summary = run_ics(_opts(), tmp_path / "ics", progress=False)
    _check_files(tmp_path / "ics", ics.FILES, summary, curves.ARMS, [0, 10, 20])
    assert summary["layers"] == ["hidden.1", "hidden.2", "out"]
    for arm in curves.ARMS:
        c = summary[arm]["curves"]
        assert all(0 < v for v in c["hidden.2_l2"]) and all(-1 <= v <= 1 for v in c["out_cos"])
        assert all(0 < v for v in c["out_rel"])
    # Measuring leaves training alone: each arm ends where a plain loop ends.
    from bnprop.data import datasets
    from bnprop.train import BatchOrder, build_model, build_optimizer
    X, y = datasets.load_dataset("mnist", "train")
    Xt, yt = datasets.load_dataset("mnist", "test")
    opts = ics.check_options(_opts(), ics.DEFAULT_LR)
    order = BatchOrder(X.shape[0], 60, seed=0)
    for arm, overrides in curves.ARM_CONFIG.items():
        config = opts.train_config(0, **overrides)
        net, opt = build_model(config, 784, 10), build_optimizer(config)
        for step in range(20):
            net.train_step(X[order.indices(step)].astype(np.float32), y[order.indices(step)],
                           opt)
        assert summary[arm]["final"]["test_accuracy"] == net.accuracy(Xt.astype(np.float32),
                                                                      yt)
    assert "ics (out.W): no_batchnorm median ||G-G'||" in ics.report_line(summary, "x")


def test_ics_non_finite_gradient_records_null(data_root: tuple, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from bnprop.nn import NonFiniteError

    real, calls = ics.ics_gradients, {"n": 0}

    def flaky(net: object, *args: object) -> dict:
        calls["n"] += 1
        if calls["n"] == 4:  # the second record of the first network
            raise NonFiniteError("the step's loss (inf) ...")
        return real(net, *args)

    monkeypatch.setattr(ics, "ics_gradients", flaky)
    summary = run_ics(_opts(steps=10, record_every=5), tmp_path / "nf", progress=False)
    c = summary["no_batchnorm"]["curves"]
    assert c["out_l2"][1] is None and c["hidden.1_cos"][1] is None
    assert c["out_l2"][0] is not None and c["out_l2"][2] is not None
    assert summary["no_batchnorm"]["diverged_at"] is None


def test_landscape_command(data_root: tuple, tmp_path: Path) -> None:
    summary = run_landscape(_opts(lr=0.1), tmp_path / "ls", progress=False)
    _check_files(tmp_path / "ls", landscape.FILES, summary, curves.ARMS, [0, 10, 20])
    assert summary["etas"] == pytest.approx([0.1 * f for f in landscape.ETA_FACTORS])
    for arm in curves.ARMS:
        c = summary[arm]["curves"]
        assert all(lo <= hi for lo, hi in zip(c["loss_min"], c["loss_max"], strict=True))
        for d, b, g in zip(c["grad_diff_max"], c["beta_eff"], c["grad_norm"], strict=True):
            assert b >= d / (0.4 * g) * (1 - 1e-12)  # the max over eta of diff / (eta |g|)
    with pytest.raises(InputError, match=r"optimizer: expected one of 'sgd'\. Got 'adam'"):
        run_landscape(_opts(optimizer="adam"), tmp_path / "adam", progress=False)
    assert not (tmp_path / "adam").exists()


def test_noisy_bn_command(data_root: tuple, tmp_path: Path) -> None:
    summary = run_noisy_bn(_opts(seeds=2), tmp_path / "nb", unit=4, progress=False)
    _check_files(tmp_path / "nb", noisy_bn.FILES, summary, noisy_bn.ARMS, [0, 10, 20])
    assert summary["unit"] == 4 and summary["noise"] == {"shift": 1.0, "scale": 2.0}
    assert summary["probe_examples"] == 200 and summary["layer"] == "hidden.2"
    per_seed = summary["per_seed"]
    for arm in noisy_bn.ARMS:
        np.testing.assert_allclose(
            summary[arm]["curves"]["p50"],
            np.mean([s[arm]["curves"]["p50"] for s in per_seed], axis=0), rtol=1e-15)
        assert set(summary[arm]["steps_to_accuracy"]) == {"0.95", "0.97"}
    bn, noisy = per_seed[0]["batchnorm"]["curves"], per_seed[0]["noisy_batchnorm"]["curves"]
    # Step 0: same weights; the noise already moves the unit's input.
    assert noisy["p50"][0] != bn["p50"][0]
    quiet = run_noisy_bn(_opts(), tmp_path / "quiet", unit=4, shift=0.0, scale=1.0,
                         progress=False)
    for name in ("test_accuracy", "p15", "p85"):
        np.testing.assert_allclose(quiet["noisy_batchnorm"]["curves"][name],
                                   quiet["batchnorm"]["curves"][name], rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match=r"scale: expected a finite number >= 1"):
        run_noisy_bn(_opts(), tmp_path / "bad", scale=0.5, progress=False)


def test_cli_santurkar_actions(data_root: tuple, tmp_path: Path,
                               capsys: pytest.CaptureFixture) -> None:
    for action, printed in (("ics", "ics (out.W): "), ("landscape", "landscape: "),
                            ("noisy-bn", "noisy-bn: test accuracy ")):
        out = tmp_path / action
        argv = ["reproduce", action, "--steps", "10", "--record-every", "5", "--out",
                str(out), "--quiet"]
        if action == "noisy-bn":
            argv += ["--noise-shift", "0.5", "--noise-scale", "1.5", "--unit", "9"]
        assert main(argv) == 0
        text = capsys.readouterr()
        assert text.out.startswith(printed) and text.err == ""
        assert f"summary.json in {out}" in text.out
    summary = json.loads((tmp_path / "noisy-bn" / "summary.json").read_text())
    assert summary["noise"] == {"shift": 0.5, "scale": 1.5} and summary["unit"] == 9
    assert main(["reproduce", "noisy-bn", "--steps", "5", "--noise-scale", "0.5", "--out",
                 str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scale: expected a finite number >= 1" in err


# ---- full length, real MNIST -------------------------------------------------------------

def _real_mnist_or_skip() -> None:
    from bnprop.data import datasets
    try:
        datasets.verify("mnist")
    except InputError as exc:
        pytest.skip(f"real MNIST not provisioned: {exc}")


@pytest.mark.slow
@pytest.mark.parametrize("action", ["ics", "landscape", "noisy-bn"])
def test_full_runs_on_mnist(action: str, tmp_path: Path) -> None:
    """The documented default runs: every arm finishes, BN learns faster than no BN."""
    _real_mnist_or_skip()
    run = {"ics": run_ics, "landscape": run_landscape, "noisy-bn": run_noisy_bn}[action]
    summary = run(ReproduceOptions(), tmp_path / action, progress=False)
    finals = {arm: summary[arm]["final"]["test_accuracy"] for arm in curves.ARMS}
    assert all(f is not None for f in finals.values())
    assert finals["batchnorm"] > finals["no_batchnorm"] > 0.9
