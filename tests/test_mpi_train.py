"""Data-parallel training equals one process on the same global batches.

Oracle: ``bnprop.train.train`` (or ``MLP.loss_and_grads``) in one process on the global
batch. The data-parallel runs take each rank's ``shard`` of every global batch, on P
threads (``run_threaded``: fast, in-process) or P processes under the venv's ``mpiexec``
running ``bnprop train`` (``tests/mpi_scripts/train_cli.py``) on the fake MNIST.

Tolerances, normwise relative per array (``rel_err``):

* float64, 1e-10 (the issue's); measured after 30 steps: 3.5e-15 for P = 2 and 3.
* float32, "to rounding": within 4x the distance between the one-process float32 and
  float64 runs, which is what float32 rounding alone moves the model in 30 steps, and
  below 1e-5 (about 80 float32 ulps). Measured: 7.2e-7 (P = 2), 5.1e-7 (P = 3) against a
  float32-float64 distance of 4.3e-7. The two float32 runs round differently: each rank's
  part of ``O W^T`` and ``dZ^T O`` is its own float32 product, summed in float64.
* Same P, same code path (resume, reruns): bit for bit.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bnprop import checkpoint as ckpt
from bnprop._validate import InputError
from bnprop.cli import main
from bnprop.data import datasets
from bnprop.distributed import (
    CollectiveError,
    ThreadComm,
    abort_on_error,
    agree,
    allreduce_packed,
    check_replicas,
    run_threaded,
    shard,
)
from bnprop.model import MLP
from bnprop.optim import SGD
from bnprop.train import TrainConfig, train
from tests.conftest import rel_err
from tests.fake_mnist import make_learnable
from tests.test_distributed import FAULT_BOUND, MPIEXEC, clean_env, needs_mpiexec, run_mpiexec

SCRIPT = Path(__file__).parent / "mpi_scripts" / "train_cli.py"
#: Hard limit on one mpiexec launch (a 30-step run takes about 1 s).
LAUNCH_TIMEOUT = 60.0
#: 64 = 22 + 21 + 21 over 3 ranks; 600 examples = 9 batches an epoch, the last one of 88.
RUN = {"hidden": (32, 32), "batch_size": 64, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "eval_every": 10,
       "checkpoint_every": 10}
RUN_ARGS = ["--hidden", "32,32", "--batch-size", "64", "--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9",
            "--eval-every", "10", "--checkpoint-every", "10"]
F64, F32 = 1e-10, 1e-5
F32_NOISE_FACTOR = 4.0


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The fake MNIST, with its digests recorded in this process, for the whole module."""
    root = tmp_path_factory.mktemp("data")
    digests = make_learnable(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(datasets.SHA256, "mnist", digests)
        mp.setattr(datasets, "_verified", set())
        mp.setenv("BNPROP_DATA", str(root))
        yield root, digests


@pytest.fixture(scope="module")
def reference(fake_data: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One-process runs of 30 steps: float64 and float32."""
    runs = {}
    for dtype in ("float64", "float32"):
        out = tmp_path_factory.mktemp(f"single-{dtype}")
        train(TrainConfig(**RUN, steps=30, dtype=dtype), out, progress=False)
        runs[dtype] = out
    return runs


def model_arrays(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "model.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k not in ("config", "train_config")}


def max_rel_err(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    assert got.keys() == want.keys()
    return max((rel_err(got[k], want[k]) for k in want), default=0.0)


def assert_bitwise_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def launch(size: int, args: list[str], fake_data: Any, *, fault: str | None = None,
           script: list[str] | None = None) -> tuple[int, str, str, float]:
    """``mpiexec -n size`` of ``bnprop train ARGS`` on the fake data; (code, out, err, s).

    On a timeout mpiexec gets SIGTERM, on which hydra kills its ranks (test_distributed).
    """
    root, digests = fake_data
    env = {**clean_env(), "BNPROP_DATA": str(root), "BNPROP_TEST_DIGESTS": json.dumps(digests)}
    if fault:
        env["BNPROP_TEST_FAULT"] = fault
    return run_mpiexec(size, [*(script or [sys.executable, str(SCRIPT)]), *args], env,
                       timeout=LAUNCH_TIMEOUT)


# -- one step on P threads ---------------------------------------------------------------------


def batch(dtype: str, m: int = 64, n: int = 12, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((m, n)).astype(dtype) * 2 + 1, rng.integers(0, k, m)


def threaded_step(size: int, net_kw: dict, X: np.ndarray, y: np.ndarray, *,
                  sync_bn: bool = True, m_global: int | None = None) -> list[tuple]:
    def rank_step(comm: ThreadComm) -> tuple:
        net = MLP((X.shape[1], 16, 8, 4), seed=1, **net_kw)
        rows = shard(X.shape[0], comm.rank, comm.size)
        loss, grads = net.loss_and_grads(X[rows], y[rows], comm=comm, sync_bn=sync_bn,
                                         m_global=m_global)
        return loss, grads, net.buffers(), comm.traffic

    return run_threaded(size, rank_step)


@pytest.mark.parametrize("net_kw", [
    {"dtype": "float64"}, {"dtype": "float64", "stats": "frozen"},
    {"dtype": "float64", "batchnorm": False}, {"dtype": "float64", "running": "average"},
])
@pytest.mark.parametrize(("size", "m"), [(2, 64), (3, 64), (3, 5)])
def test_threaded_sync_bn_step_equals_one_process(size: int, m: int, net_kw: dict) -> None:
    """Loss, every gradient and the running statistics of the global batch, on every rank."""
    X, y = batch("float64", m)
    ref = MLP((12, 16, 8, 4), seed=1, **net_kw)
    loss, grads = ref.loss_and_grads(X, y)
    results = threaded_step(size, net_kw, X, y, m_global=m)
    for got_loss, got, buffers, _ in results:
        assert got_loss == results[0][0]  # the same bits on every rank
        for k in grads:
            np.testing.assert_array_equal(got[k], results[0][1][k])
        assert abs(got_loss - loss) <= 1e-14 * loss
        assert max_rel_err(got, grads) < 1e-12
        assert max_rel_err(buffers, ref.buffers()) < 1e-14  # global mu_B, var_B and m


def test_threaded_sync_bn_float32_step_sums_in_float64() -> None:
    X, y = batch("float32")
    ref = MLP((12, 16, 8, 4), seed=1, dtype="float32")
    loss, grads = ref.loss_and_grads(X, y)
    for got_loss, got, buffers, _ in threaded_step(3, {"dtype": "float32"}, X, y):
        assert all(g.dtype == np.float32 for g in got.values())
        assert abs(got_loss - loss) <= 1e-6 * loss
        assert max_rel_err(got, grads) < 1e-6  # as the layer's float32 tolerance
        assert max_rel_err(buffers, ref.buffers()) < 1e-6


def test_collectives_and_bytes_of_one_step() -> None:
    """Per BN layer: an Allgather of (1 + 2n) float64 and an Allreduce of 2n; then one
    float64 Allreduce of every other gradient and the loss (no m_global: one more of 1)."""
    X, y = batch("float32")
    size = 3
    n_params = 16 * 12 + 8 * 16 + 4 * 8 + 4  # the W of each layer, out.b
    for m_global, extra in ((64, 0), (None, 1)):
        for *_, traffic in threaded_step(size, {"dtype": "float32"}, X, y, m_global=m_global):
            assert traffic.collectives == 2 * 2 + 1 + extra
            sent = 8 * ((1 + 2 * 16) + 2 * 16 + (1 + 2 * 8) + 2 * 8 + n_params + 1 + extra)
            received = sent + 8 * (size - 1) * ((1 + 2 * 16) + (1 + 2 * 8))
            assert (traffic.bytes_sent, traffic.bytes_received) == (sent, received)


@pytest.mark.parametrize(("size", "m"), [(2, 64), (3, 64)])
def test_threaded_local_bn_step_equals_per_shard_reference(size: int, m: int) -> None:
    """--local-bn: each shard's own statistics. Oracle: one process per shard, its mean loss
    and gradients weighted by m_p / m (equal shares: DDP's average), rank 0's buffers."""
    X, y = batch("float64", m)
    ref_loss, ref_grads, ref_buffers = 0.0, {}, None
    for p in range(size):
        rows = shard(m, p, size)
        net = MLP((12, 16, 8, 4), seed=1, dtype="float64")
        loss, grads = net.loss_and_grads(X[rows], y[rows])
        weight = (rows.stop - rows.start) / m
        ref_loss += weight * loss
        for k, g in grads.items():
            ref_grads[k] = ref_grads.get(k, 0) + weight * g
        ref_buffers = net.buffers() if p == 0 else ref_buffers
    results = threaded_step(size, {"dtype": "float64"}, X, y, sync_bn=False)
    for rank, (loss, grads, buffers, _) in enumerate(results):
        assert abs(loss - ref_loss) <= 1e-14 * ref_loss
        assert max_rel_err(grads, ref_grads) < 1e-12
        if rank == 0:
            assert max_rel_err(buffers, ref_buffers) < 1e-15
    sync = threaded_step(size, {"dtype": "float64"}, X, y)
    assert max_rel_err(results[0][1], sync[0][1]) > 1e-3  # a different objective


@pytest.mark.parametrize(("kw", "match"), [
    ({"m_global": 65}, r"m_global: the processes hold 64 rows in all, got m_global=65"),
    ({"m_global": 1}, r"m_global: expected the global batch size, an int >= 2, got 1"),
    ({"sync_bn": "yes"}, r"sync_bn: expected True or False, got 'yes' instead"),
])
def test_distributed_step_validation(kw: dict, match: str) -> None:
    X, y = batch("float64")
    with pytest.raises(InputError, match=match):
        threaded_step(2, {"dtype": "float64"}, X, y, **kw)


def test_distributed_step_needs_rows_on_every_rank() -> None:
    X, y = batch("float64", 4)
    with pytest.raises(InputError, match=r"X: got 1 rows on process 0 of 2; every process "
                       r"needs 2 rows with local batch statistics \(sync_bn=False\)"):
        threaded_step(2, {"dtype": "float64"}, X[:2], y[:2], sync_bn=False)
    with pytest.raises(InputError, match=r"X: got 0 rows on process 2 of 3; every process "
                       r"needs at least one row of the global batch"):
        threaded_step(3, {"dtype": "float64"}, X[:2], y[:2])
    with pytest.raises(InputError, match=r"comm: expected a bnprop.distributed.Communicator"):
        MLP((12, 4), dtype="float64").loss_and_grads(X, y, comm=object())
    with pytest.raises(InputError, match=r"m_global: expected the 4 rows of X in one process"):
        MLP((12, 4), dtype="float64").loss_and_grads(X, y, m_global=8)


def test_one_process_comm_is_the_plain_path_bit_for_bit() -> None:
    from bnprop.distributed import SingleProcess

    X, y = batch("float32")
    a, b = MLP((12, 16, 4), seed=2), MLP((12, 16, 4), seed=2)
    la = a.train_step(X, y, SGD(0.5))
    lb = b.train_step(X, y, SGD(0.5), comm=SingleProcess(), m_global=64)
    assert la == lb
    assert_bitwise_equal(a.get_state(), b.get_state())


# -- the helpers of the distributed loop -------------------------------------------------------


def test_allreduce_packed_sums_float32_in_float64() -> None:
    big, small = np.float32(2**24), np.float32(1)  # 2^24 + 1 + 1 rounds away in float32

    def rank_step(comm: ThreadComm) -> tuple:
        a = np.array([[big if comm.rank == 0 else small]], np.float32)
        return allreduce_packed(comm, [a, np.arange(3.0)], [comm.rank + 0.5])

    for (a, r), scalars in run_threaded(3, rank_step):
        assert a.dtype == np.float32 and a.shape == (1, 1)
        assert a[0, 0] == np.float32(2**24 + 2)
        np.testing.assert_array_equal(r, 3 * np.arange(3.0))
        assert scalars == [4.5]


def test_allreduce_packed_reuses_one_buffer_and_returns_copies() -> None:
    def rank_step(comm: ThreadComm) -> bool:
        first, _ = allreduce_packed(comm, [np.ones(5)])
        address = comm.scratch(6).__array_interface__["data"][0]
        second, _ = allreduce_packed(comm, [np.full(5, 2.0)])
        assert comm.scratch(6).__array_interface__["data"][0] == address  # MPI sees one buffer
        np.testing.assert_array_equal(first[0], np.full(5, 2.0))  # not overwritten: a copy
        np.testing.assert_array_equal(second[0], np.full(5, 4.0))
        return not np.shares_memory(second[0], comm.scratch(6))

    assert all(run_threaded(2, rank_step))


def test_check_replicas_names_the_rank_that_differs() -> None:
    def rank_step(comm: ThreadComm) -> None:
        w = np.ones(3)
        check_replicas(comm, {"w": w}, "fine")
        if comm.rank == 2:
            w[1] = np.nextafter(w[1], 2.0)  # one ulp
        check_replicas(comm, {"w": w}, "step 7")

    with pytest.raises(RuntimeError, match=r"step 7: the replicas on rank\(s\) 2 differ from "
                       r"rank 0's"):
        run_threaded(3, rank_step, timeout=20)


def test_agree_raises_the_first_failing_ranks_error_on_every_rank() -> None:
    seen: list[tuple[int, str]] = []
    lock = threading.Lock()

    def rank_step(comm: ThreadComm) -> None:
        error = OSError(2, "No such file or directory", "/data") if comm.rank >= 1 else None
        try:
            with abort_on_error(comm):  # lets a CollectiveError through: no abort
                agree(comm, error)
        except CollectiveError as exc:
            with lock:
                seen.append((comm.rank, str(exc)))
            assert exc.rank == 1 and exc.origin == "FileNotFoundError"

    run_threaded(3, rank_step, timeout=20)
    assert sorted(seen) == [(r, "rank 1 of 3: /data: No such file or directory")
                            for r in range(3)]
    run_threaded(2, lambda comm: agree(comm, None))  # nobody failed: returns


# -- train() on P threads ----------------------------------------------------------------------


def threaded_train(size: int, out: Path, **kw: Any) -> list[dict]:
    resume = kw.pop("resume", False)
    config = TrainConfig(**{**RUN, **kw})
    given = {"steps": config.steps} if resume else None
    return run_threaded(size, lambda comm: train(config, out, comm=comm, progress=False,
                                                 resume=resume, given=given), timeout=60)


def test_threaded_train_equals_one_process_and_rank_0_writes(reference: dict,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "run"
    summaries = threaded_train(3, out, steps=30, dtype="float64")
    assert all(s == summaries[0] for s in summaries)  # every rank returns rank 0's summary
    assert summaries[0]["config"]["processes"] == 3 and summaries[0]["config"]["sync_bn"]
    assert json.loads((out / "summary.json").read_text()) == summaries[0]
    assert max_rel_err(model_arrays(out), model_arrays(reference["float64"])) < F64
    got, want = ckpt.read_metrics(out), ckpt.read_metrics(reference["float64"])
    assert [r["step"] for r in got] == [r["step"] for r in want] == [10, 20, 30]
    for a, b in zip(got, want, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-12 * b["train_loss"]
        assert a["test_accuracy"] == b["test_accuracy"]


def test_threaded_sync_bn_resumes_on_another_number_of_processes(reference: dict,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "run"
    threaded_train(3, out, steps=15, dtype="float64")
    summary = threaded_train(2, out, steps=30, dtype="float64", resume=True)[0]
    assert summary["config"]["processes"] == 2
    assert max_rel_err(model_arrays(out), model_arrays(reference["float64"])) < F64


def test_threaded_local_bn_refuses_to_resume_on_another_number_of_processes(
        fake_data: Any, tmp_path: Path) -> None:
    out = tmp_path / "run"
    threaded_train(2, out, steps=10, dtype="float64", sync_bn=False)
    with pytest.raises(CollectiveError, match=r"--resume: the checkpoint was trained on 2 "
                       r"processes with --local-bn, .* Resume it with mpiexec -n 2"):
        threaded_train(3, out, steps=20, dtype="float64", sync_bn=False, resume=True)


def test_threaded_divergence_stops_every_rank_at_the_same_step(
        fake_data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss is the global batch's, the same on every rank: all stop, none aborts."""
    real = MLP.train_step

    def diverging(self: MLP, X: np.ndarray, y: np.ndarray, opt: Any, **kw: Any) -> float:
        loss = real(self, X, y, opt, **kw)
        return float("nan") if opt.t == 15 else loss  # after this rank's 15th update

    monkeypatch.setattr(MLP, "train_step", diverging)
    out = tmp_path / "run"
    with pytest.raises(CollectiveError, match="training diverged at step 15"):
        threaded_train(3, out, steps=30)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["diverged_at"] == 15 and summary["test_accuracy"] is None
    assert ckpt.load_checkpoint(out)[2]["step"] == 10


def test_threaded_setup_errors_end_every_rank_together(fake_data: Any, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(CollectiveError, match=r"batch_size: expected at least 8 for 4 processes "
                       r"\(2 examples of every global batch each, for its own batch variance "
                       r"under --local-bn\), got 6 instead"):
        threaded_train(4, tmp_path / "run", steps=5, batch_size=6, sync_bn=False)
    with pytest.raises(CollectiveError, match="no checkpoint to resume from"):
        threaded_train(2, tmp_path / "none", steps=5, resume=True)
    assert time.monotonic() - start < 10
    assert not (tmp_path / "run").exists()


# -- bnprop train under mpiexec ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mpi_runs(fake_data: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Straight 30-step runs under mpiexec: float64 on 2 and 3 processes, float32 on 2."""
    runs = {}
    for name, size, dtype in (("f64n2", 2, "float64"), ("f64n3", 3, "float64"),
                              ("f32n2", 2, "float32")):
        out = tmp_path_factory.mktemp(name) / "run"
        runs[name] = (out, *launch(size, [*RUN_ARGS, "--steps", "30", "--dtype", dtype,
                                          "--out", str(out)], fake_data))
    return runs


@needs_mpiexec
@pytest.mark.parametrize("name", ["f64n2", "f64n3"])
def test_mpi_train_float64_equals_one_process(mpi_runs: dict, reference: dict,
                                              name: str) -> None:
    out, code, stdout, stderr, _ = mpi_runs[name]
    assert code == 0, stderr
    assert max_rel_err(model_arrays(out), model_arrays(reference["float64"])) < F64
    # Rank 0 alone reports: one result line, one progress line per evaluation.
    assert stdout.count("test accuracy") == 1
    assert [ln.split(",")[0] for ln in stderr.splitlines() if ln.startswith("train step")] \
        == ["train step 10/30", "train step 20/30", "train step 30/30"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["config"]["processes"] == int(name[-1])


@needs_mpiexec
def test_mpi_train_float32_equals_one_process_to_rounding(mpi_runs: dict,
                                                          reference: dict) -> None:
    out, code, _, stderr, _ = mpi_runs["f32n2"]
    assert code == 0, stderr
    single32, single64 = model_arrays(reference["float32"]), model_arrays(reference["float64"])
    rounding = max_rel_err(single32, single64)
    err = max_rel_err(model_arrays(out), single32)
    assert err < min(F32_NOISE_FACTOR * rounding, F32), (err, rounding)


@needs_mpiexec
def test_mpi_resume_equals_a_straight_run(mpi_runs: dict, reference: dict, fake_data: Any,
                                          tmp_path: Path) -> None:
    """15 steps on 3 processes, then resumed on 3 to 30: the straight 3-process run, bit for
    bit. Resumed on 2 instead (allowed under --sync-bn): the one-process run, to 1e-10."""
    first = tmp_path / "first"
    code, _, err, _ = launch(3, [*RUN_ARGS, "--steps", "15", "--dtype", "float64", "--quiet",
                                 "--out", str(first)], fake_data)
    assert code == 0, err
    for size in (3, 2):
        out = tmp_path / f"resumed{size}"
        out.mkdir()
        for name in ("checkpoint.npz", "model.npz", "metrics.jsonl"):
            (out / name).write_bytes((first / name).read_bytes())
        code, _, err, _ = launch(size, ["--resume", "--out", str(out), "--steps", "30",
                                        "--quiet"], fake_data)
        assert code == 0, err
        assert [r["step"] for r in ckpt.read_metrics(out)] == [10, 15, 20, 30]  # 15: its end
        if size == 3:
            assert_bitwise_equal(model_arrays(out), model_arrays(mpi_runs["f64n3"][0]))
        assert max_rel_err(model_arrays(out), model_arrays(reference["float64"])) < F64


@needs_mpiexec
def test_mpi_local_bn_is_plain_data_parallelism(mpi_runs: dict, fake_data: Any,
                                                tmp_path: Path) -> None:
    """--local-bn on 2 processes: the threaded local-BN run, not the SyncBN one."""
    out = tmp_path / "local"
    code, _, err, _ = launch(2, [*RUN_ARGS, "--steps", "30", "--dtype", "float64", "--quiet",
                                 "--local-bn", "--out", str(out)], fake_data)
    assert code == 0, err
    threaded = tmp_path / "threaded"
    threaded_train(2, threaded, steps=30, dtype="float64", sync_bn=False)
    local = model_arrays(out)
    assert max_rel_err(local, model_arrays(threaded)) < F64
    assert json.loads((out / "summary.json").read_text())["config"]["sync_bn"] is False
    sync = model_arrays(mpi_runs["f64n2"][0])
    assert rel_err(local["hidden.0.W"], sync["hidden.0.W"]) > 1e-4


@needs_mpiexec
@pytest.mark.parametrize(("mode", "line"), [
    ("raise", "bnprop: rank 1 of 3 aborting: RuntimeError: injected fault in step 7"),
    ("kill", None),
])
def test_mpi_rank_failing_mid_training_ends_the_job(fake_data: Any, tmp_path: Path,
                                                    mode: str, line: str | None) -> None:
    out = tmp_path / "run"
    code, stdout, err, seconds = launch(3, [*RUN_ARGS, "--steps", "30", "--quiet",
                                            "--checkpoint-every", "5", "--out", str(out)],
                                        fake_data, fault=f"1:7:{mode}")
    assert code != 0
    assert seconds < FAULT_BOUND
    if line:
        assert line in err, err
    assert "test accuracy" not in stdout
    assert not (out / "summary.json").exists()  # rank 0 never passed the step-7 collective
    assert ckpt.load_checkpoint(out)[2]["step"] == 5  # the last checkpoint is intact


@needs_mpiexec
def test_mpi_setup_error_is_one_line_from_rank_0(fake_data: Any, tmp_path: Path) -> None:
    code, stdout, err, _ = launch(3, ["--batch-size", "2", "--out", str(tmp_path / "run")],
                                  fake_data)
    assert code == 2
    assert err == ("bnprop train: error: batch_size: expected at least 3 for 3 processes "
                   "(1 example of every global batch each), got 2 instead.\n")
    assert stdout == ""


@needs_mpiexec
def test_mpi_console_script_missing_data_is_one_line(tmp_path: Path) -> None:
    """The installed ``bnprop`` under mpiexec; rank 2 lacks nothing the others have."""
    bnprop = MPIEXEC.parent / "bnprop"
    if not bnprop.exists():
        pytest.skip(f"no console script {bnprop}")
    code, _, err, _ = launch(
        2, ["train", "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")],
        (tmp_path, {}), script=[str(bnprop)])
    assert code == 2
    assert err.count("\n") == 1 and "bnprop data fetch --dataset mnist" in err, err
    assert not (tmp_path / "run").exists()


def test_mpi_missing_names_the_extra(fake_data: Any, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    """Launched for 2 processes without mpi4py: one line naming bnprop[mpi]."""
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert main(["train", "--quiet", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "MPIComm needs mpi4py" in err and "pip install 'bnprop[mpi]'" in err
