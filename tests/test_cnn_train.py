"""``--arch cnn``: a short training run, resume, evaluate, and SyncBN over P processes.

Oracle for the data-parallel runs: one process on the same global batches (float64,
1e-10 relative, uneven shares included), as tests/test_mpi_train.py does for the MLP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bnprop import checkpoint as ckpt
from bnprop._validate import InputError
from bnprop.arch import CNN_DEFAULTS, arch_defaults
from bnprop.cli import main
from bnprop.distributed import ThreadComm, run_threaded, shard
from bnprop.model_cnn import cnn
from bnprop.train import TrainConfig, train
from tests import test_mpi_train as mpi_tests
from tests.conftest import rel_err
from tests.test_distributed import needs_mpiexec
from tests.test_mpi_train import launch, max_rel_err, model_arrays

#: A small CNN on the fake 28 x 28 data; 64 = 22 + 21 + 21 over 3 ranks.
SMALL = {"arch": "cnn", "channels": (4, 8), "hidden": (16,), "batch_size": 64, "lr": 0.05,
         "eval_every": 10, "checkpoint_every": 10, "dtype": "float64"}
SMALL_ARGS = ["--arch", "cnn", "--channels", "4,8", "--hidden", "16", "--batch-size", "64",
              "--lr", "0.05", "--eval-every", "10", "--checkpoint-every", "10",
              "--dtype", "float64"]


cnn_data = mpi_tests.fake_data  # the learnable fake MNIST (28 x 28), for the whole module


def config(**kw: Any) -> TrainConfig:
    return TrainConfig(**arch_defaults({**SMALL, **kw}))


def test_arch_defaults_fill_only_what_is_not_given() -> None:
    cfg = config(steps=20)
    assert cfg.optimizer == "sgd" and cfg.nesterov and cfg.schedule == "onecycle"
    assert cfg.hidden == (16,) and cfg.steps == 20 and cfg.lr == 0.05
    assert arch_defaults({"arch": "mlp"}) == {"arch": "mlp"}
    adam = TrainConfig(**arch_defaults({"arch": "cnn", "optimizer": "adam"}))
    assert adam.lr == 3e-3 and adam.momentum == 0 and not adam.nesterov
    assert TrainConfig(**arch_defaults({"arch": "cnn"})).batch_size == CNN_DEFAULTS["batch_size"]


def test_short_cnn_run_learns_resumes_and_evaluates(cnn_data: Any, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    straight = train(config(steps=40, schedule="constant"), tmp_path / "a", progress=False)
    assert straight["test_accuracy"] > 0.6  # 10 classes of bright patches, 40 steps
    rows = ckpt.read_metrics(tmp_path / "a")
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    train(config(steps=20, schedule="constant"), tmp_path / "b", progress=False)
    train(config(steps=40, schedule="constant"), tmp_path / "b", progress=False,
          resume=True, given={"steps": 40})
    a, b = model_arrays(tmp_path / "a"), model_arrays(tmp_path / "b")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # resume: bit for bit
    assert main(["evaluate", str(tmp_path / "a")]) == 0
    assert f"test accuracy {straight['test_accuracy']:.4f}" in capsys.readouterr().out


def test_cli_train_cnn(cnn_data: Any, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["train", *SMALL_ARGS, "--steps", "10", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["arch"] == "cnn" and summary["config"]["channels"] == [4, 8]
    assert summary["config"]["nesterov"] and summary["config"]["batch_size"] == 64
    capsys.readouterr()
    assert main(["train", "--arch", "cnn", "--activation", "sigmoid", "--steps", "2",
                 "--out", str(tmp_path / "x")]) == 2
    assert "arch: the cnn has ReLU" in capsys.readouterr().err
    with pytest.raises(InputError, match="channels: expected widths >= 1"):
        from bnprop.train import parse_hidden
        parse_hidden("4,0", "channels")


# -- SyncBN: P threads equal one process ---------------------------------------------------


@pytest.mark.parametrize("stats", ["exact", "frozen"])
@pytest.mark.parametrize(("size", "m"), [(2, 8), (3, 7)])
def test_threaded_sync_bn_cnn_step_equals_one_process(size: int, m: int, stats: str) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((m, 1, 12, 12)) * 2 + 1, rng.integers(0, 10, m)

    def build() -> Any:
        return cnn((3, 4), (6,), image_size=12, dtype="float64", stats=stats, seed=1)

    ref = build()
    loss, grads = ref.loss_and_grads(X, y)

    def rank_step(comm: ThreadComm) -> tuple:
        net = build()
        rows = shard(m, comm.rank, comm.size)
        got_loss, got = net.loss_and_grads(X[rows], y[rows], comm=comm, m_global=m)
        return got_loss, got, net.buffers()

    for got_loss, got, buffers in run_threaded(size, rank_step):
        assert abs(got_loss - loss) <= 1e-10 * loss
        assert max_rel_err(got, grads) < 1e-10
        assert max_rel_err(buffers, ref.buffers()) < 1e-10


def test_threaded_cnn_train_equals_one_process(cnn_data: Any, tmp_path: Path) -> None:
    train(config(steps=12), tmp_path / "one", progress=False)
    run_threaded(3, lambda comm: train(config(steps=12), tmp_path / "three", comm=comm,
                                       progress=False), timeout=120)
    assert max_rel_err(model_arrays(tmp_path / "three"), model_arrays(tmp_path / "one")) < 1e-10


@needs_mpiexec
def test_mpiexec_cnn_train_equals_one_process(cnn_data: Any, tmp_path: Path) -> None:
    train(config(steps=12), tmp_path / "one", progress=False)
    code, _, stderr, _ = launch(3, [*SMALL_ARGS, "--steps", "12", "--out",
                                    str(tmp_path / "mpi")], cnn_data)
    assert code == 0, stderr
    got, want = model_arrays(tmp_path / "mpi"), model_arrays(tmp_path / "one")
    assert max(rel_err(got[k], want[k]) for k in want) < 1e-10


# -- the README's run ----------------------------------------------------------------------


@pytest.mark.slow
def test_fashion_mnist_cnn_defaults_reach_092(tmp_path: Path) -> None:
    """``bnprop train --arch cnn --dataset fashion-mnist``: the README's number."""
    summary = train(TrainConfig(**arch_defaults({"arch": "cnn", "dataset": "fashion-mnist"})),
                    tmp_path / "run", progress=False)
    assert summary["test_accuracy"] >= 0.92
