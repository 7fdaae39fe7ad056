"""The distributed layer equals the single-process layer on the global batch.

Oracle: ``layer_forward`` / ``layer_backward`` on the whole batch in one process. The
distributed run splits the batch with ``shard`` over P ranks, either P threads
(``run_threaded``, no MPI needed) or P processes under the venv's ``mpiexec``
(``tests/mpi_scripts``), and must give, to rounding:

* the same ``mu, var, inv_std`` on every rank (bit-identical across ranks);
* the rows of ``Z, Obar, A, Y, dA, dZ, dO`` (concatenated in rank order);
* the global ``dgamma, dbeta`` on every rank (already reduced), and ``dW`` as the sum over
  ranks of the local ``dW_p = dZ_p^T O_p``.

Tolerances, normwise relative (``rel_err``): float64, 1e-12 (measured: below 2e-15);
float32, 1e-6, about 8 float32 ulps. The statistics are float64 in both runs; what differs
is the rounding of each rank's part of ``O W^T`` and of the float32 sums behind dW. On 400
random 64 x 20 -> 10 layers the distributed float32 gradients were at most 4.7e-7 from the
single-process float32 ones, which are themselves up to 4.9e-7 from float64.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import bnprop
from bnprop import batchnorm as bn
from bnprop import distributed as dist
from bnprop.distributed import SingleProcess, ThreadComm, run_threaded, shard
from tests.conftest import random_layer, rel_err

ROW_KEYS = ("Z", "Obar", "A", "Y")
ROW_GRAD_KEYS = ("dA", "dZ", "dO")
STAT_KEYS = ("mu", "var", "inv_std")
TOL = {np.float64: 1e-12, np.float32: 1e-6}


def distributed_layer(arrays: tuple, size: int, stats: str, activation: str = "sigmoid"):
    """Forward and backward of the layer on ``size`` threads, each on its shard."""
    O, W, gamma, beta, dY = arrays

    def rank_step(comm: ThreadComm):
        rows = shard(O.shape[0], comm.rank, comm.size)
        cache = bnprop.layer_forward(O[rows], W, gamma, beta, activation=activation, comm=comm)
        grads = bnprop.layer_backward(dY[rows], cache, stats=stats)
        return cache, grads

    return run_threaded(size, rank_step)


def assert_matches_single_process(arrays: tuple, results: list, stats: str, tol: float,
                                  activation: str = "sigmoid") -> None:
    O, W, gamma, beta, dY = arrays
    ref = bnprop.layer_forward(O, W, gamma, beta, activation=activation)
    ref_grads = bnprop.layer_backward(dY, ref, stats=stats)
    caches = [cache for cache, _ in results]
    grads = [g for _, g in results]
    for key in ROW_KEYS:
        assert rel_err(np.concatenate([getattr(c, key) for c in caches]), getattr(ref, key)) < tol, key
    for key in ROW_GRAD_KEYS:
        got = np.concatenate([getattr(g, key) for g in grads])
        assert rel_err(got, getattr(ref_grads, key)) < tol, key
    for key in STAT_KEYS:
        for cache in caches:
            np.testing.assert_array_equal(getattr(cache, key), getattr(caches[0], key))
        assert rel_err(getattr(caches[0], key), getattr(ref, key)) < tol, key
    for key in ("dgamma", "dbeta"):  # global on every rank
        for g in grads:
            np.testing.assert_array_equal(getattr(g, key), getattr(grads[0], key))
        assert rel_err(getattr(grads[0], key), getattr(ref_grads, key)) < tol, key
    dW = sum(g.dW.astype(np.float64) for g in grads)  # local: the caller's all-reduce
    assert rel_err(dW, ref_grads.dW) < tol
    for cache in caches:
        assert cache.m_global == O.shape[0]


# -- sharding and the moment fold ------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 5, 64, 65, 100])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_shard_covers_the_batch_in_rank_order_with_shares_within_one(n: int, size: int) -> None:
    shards = [shard(n, rank, size) for rank in range(size)]
    assert [i for s in shards for i in range(n)[s]] == list(range(n))
    lengths = [s.stop - s.start for s in shards]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == sorted(lengths, reverse=True)


def test_shard_64_over_3() -> None:
    assert [shard(64, p, 3) for p in range(3)] == [slice(0, 22), slice(22, 43), slice(43, 64)]


@pytest.mark.parametrize(("args", "match"), [
    ((10, 3, 3), r"rank: expected 0 <= rank < size = 3, got 3 instead"),
    ((10, -1, 3), r"rank: expected 0 <= rank < size = 3, got -1 instead"),
    ((10, 0, 0), r"size: expected an int >= 1, got 0 instead"),
    ((-1, 0, 2), r"n_global: expected an int >= 0, got -1 instead"),
    ((10.0, 0, 2), r"n_global: expected an int, got float instead"),
])
def test_shard_validation(args: tuple, match: str) -> None:
    with pytest.raises(bnprop.InputError, match=match):
        shard(*args)


def test_fold_of_shard_moments_equals_two_pass_moments_of_the_union() -> None:
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((50, 6)) * 3 + 7
    count, mean, M2 = bn.batch_moments(Z)
    rows = np.stack([dist.pack_moments(*bn.batch_moments(Z[shard(50, p, 4)]))
                     for p in range(4)])
    empty = dist.pack_moments(0, np.zeros(6), np.zeros(6))  # an empty rank adds nothing
    for packed in (rows, np.vstack([empty, rows, empty])):
        got_count, got_mean, got_M2 = dist.fold_moments(packed)
        assert got_count == count == 50
        assert rel_err(got_mean, mean) < 1e-15
        assert rel_err(got_M2, M2) < 1e-14


def test_combined_variance_is_stable_on_float32_data_far_from_zero() -> None:
    """Chan's combination of per-rank float64 moments: no E[Z^2] - E[Z]^2 cancellation."""
    rng = np.random.default_rng(4)
    m, n = 4096, 8
    O = (1e4 + rng.standard_normal((m, n), dtype=np.float32)).astype(np.float32)
    W = np.eye(n, dtype=np.float32)  # Z = O exactly
    gamma, beta = np.ones(n, np.float32), np.zeros(n, np.float32)

    def rank_var(comm: ThreadComm) -> tuple[np.ndarray, np.ndarray]:
        rows = shard(m, comm.rank, comm.size)
        m_global, _, M2 = comm.combine_moments(*bn.batch_moments(O[rows] @ W.T))
        cache = bnprop.layer_forward(O[rows], W, gamma, beta, comm=comm)
        return M2 / m_global, cache.var

    ref = O.astype(np.float64).var(axis=0)
    for var64, var32 in run_threaded(3, rank_var):
        assert np.max(np.abs(var64 - ref) / ref) < 1e-12
        assert np.max(np.abs(var32 - ref) / ref) < 1e-7  # the float64 value, rounded


# -- one process -----------------------------------------------------------------------------


def test_single_process_communicator_is_the_identity(capsys: pytest.CaptureFixture) -> None:
    comm = SingleProcess()
    assert (comm.rank, comm.size) == (0, 1)
    assert isinstance(comm, dist.Communicator)
    buf = np.arange(4.0)
    assert comm.allreduce_sum(buf) is buf
    np.testing.assert_array_equal(buf, np.arange(4.0))
    mean, M2 = np.ones(3), np.full(3, 2.0)
    assert comm.combine_moments(5, mean, M2) == (5, mean, M2)
    obj = {"a": 1}
    assert comm.bcast(obj) is obj
    comm.barrier()
    assert comm.traffic == dist.Traffic()
    with pytest.raises(SystemExit) as info:
        comm.abort("stop here", code=4)
    assert info.value.code == 4
    assert "bnprop: rank 0 of 1 aborting: stop here" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("stats", ["exact", "frozen"])
def test_single_process_comm_is_bit_identical_to_no_comm(dtype: type, stats: str) -> None:
    O, W, gamma, beta, dY = random_layer(np.random.default_rng(5), 16, 6, 4, dtype)
    plain = bnprop.layer_forward(O, W, gamma, beta)
    via = bnprop.layer_forward(O, W, gamma, beta, comm=SingleProcess())
    assert (plain.comm, plain.m_global, via.m_global) == (None, 16, 16)
    for key in (*ROW_KEYS, *STAT_KEYS):
        np.testing.assert_array_equal(getattr(via, key), getattr(plain, key))
    g_plain = bnprop.layer_backward(dY, plain, stats=stats)
    g_via = bnprop.layer_backward(dY, via, stats=stats)
    for key in ("dA", "dgamma", "dbeta", "dZ", "dW", "dO"):
        np.testing.assert_array_equal(getattr(g_via, key), getattr(g_plain, key))


def test_abort_on_error_in_one_process_lets_the_exception_through() -> None:
    with pytest.raises(ValueError, match="plain"), dist.abort_on_error(SingleProcess()):
        raise ValueError("plain")


# -- P threads: the distributed path without MPI ----------------------------------------------


@pytest.mark.parametrize("stats", ["exact", "frozen"])
@pytest.mark.parametrize(("size", "m"), [(2, 64), (3, 64), (3, 7), (4, 5)])
def test_threaded_layer_equals_single_process_float64(size: int, m: int, stats: str) -> None:
    """(3, 64): shares 22, 21, 21; (4, 5): shares 2, 1, 1, 1, single-row shards."""
    arrays = random_layer(np.random.default_rng(10 * size + m), m, 7, 5)
    results = distributed_layer(arrays, size, stats)
    assert_matches_single_process(arrays, results, stats, TOL[np.float64])


@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
def test_threaded_layer_equals_single_process_other_activations(activation: str) -> None:
    arrays = random_layer(np.random.default_rng(6), 30, 4, 6)
    results = distributed_layer(arrays, 3, "exact", activation)
    assert_matches_single_process(arrays, results, "exact", TOL[np.float64], activation)


@pytest.mark.parametrize("stats", ["exact", "frozen"])
@pytest.mark.parametrize("size", [2, 3])
def test_threaded_layer_equals_single_process_float32(size: int, stats: str) -> None:
    arrays = random_layer(np.random.default_rng(7 + size), 64, 20, 10, np.float32)
    results = distributed_layer(arrays, size, stats)
    for cache, grads in results:
        assert cache.Obar.dtype == grads.dZ.dtype == grads.dgamma.dtype == np.float32
    assert_matches_single_process(arrays, results, stats, TOL[np.float32])


def test_parameter_gradient_convention_dgamma_dbeta_global_dW_local() -> None:
    """dgamma = sum_p sum_rows(dA_p * Obar_p), dbeta = sum_p sum_rows(dA_p), dW_p = dZ_p^T O_p."""
    arrays = random_layer(np.random.default_rng(8), 12, 3, 4)
    O = arrays[0]
    results = distributed_layer(arrays, 3, "exact")
    dgamma = sum(np.einsum("ij,ij->j", g.dA, c.Obar) for c, g in results)
    dbeta = sum(g.dA.sum(axis=0) for _, g in results)
    for rank, (_, grads) in enumerate(results):
        assert rel_err(grads.dgamma, dgamma) < 1e-15
        assert rel_err(grads.dbeta, dbeta) < 1e-15
        np.testing.assert_array_equal(grads.dW, grads.dZ.T @ O[shard(12, rank, 3)])


def test_one_packed_collective_each_way_and_its_payload() -> None:
    n_out, size = 5, 3
    arrays = random_layer(np.random.default_rng(9), 12, 3, n_out)
    O, W, gamma, beta, dY = arrays

    def rank_step(comm: ThreadComm) -> list[tuple[int, int, int]]:
        rows = shard(12, comm.rank, comm.size)
        cache = bnprop.layer_forward(O[rows], W, gamma, beta, comm=comm)
        forward = (comm.traffic.collectives, comm.traffic.bytes_sent, comm.traffic.bytes_received)
        bnprop.layer_backward(dY[rows], cache, stats="frozen")  # frozen reduces dgamma, dbeta too
        total = (comm.traffic.collectives, comm.traffic.bytes_sent, comm.traffic.bytes_received)
        return [forward, tuple(t - f for t, f in zip(total, forward, strict=True))]

    packed = 8 * (1 + 2 * n_out)  # [m_p, mean_p, M2_p] float64
    for forward, backward in run_threaded(size, rank_step):
        assert forward == (1, packed, size * packed)
        assert backward == (1, 8 * 2 * n_out, 8 * 2 * n_out)


def test_global_batch_of_one_is_refused() -> None:
    O, W, gamma, beta, _ = random_layer(np.random.default_rng(11), 1, 3, 2)
    with pytest.raises(bnprop.InputError, match=r"O: the global batch has 1 example over 1 "
                       r"process; in training mode the batch variance of a single example"):
        bnprop.layer_forward(O, W, gamma, beta, comm=SingleProcess())
    with pytest.raises(bnprop.InputError, match=r"global batch has 1 example over 1 process"):
        run_threaded(1, lambda comm: bnprop.layer_forward(O, W, gamma, beta, comm=comm))


def test_an_empty_shard_fails_every_rank_promptly_with_its_own_error() -> None:
    O, W, gamma, beta, _ = random_layer(np.random.default_rng(12), 2, 3, 2)

    def rank_step(comm: ThreadComm):
        return bnprop.layer_forward(O[shard(2, comm.rank, comm.size)], W, gamma, beta, comm=comm)

    start = time.monotonic()
    with pytest.raises(bnprop.InputError, match=r"O: got 0 rows on this process; every process "
                       r"must hold at least one row of the global batch"):
        run_threaded(3, rank_step, timeout=20)
    assert time.monotonic() - start < 5  # the others' collective broke, it did not time out


def test_comm_must_be_a_communicator() -> None:
    O, W, gamma, beta, _ = random_layer(np.random.default_rng(13), 4, 3, 2)
    with pytest.raises(bnprop.InputError, match=r"comm: expected a bnprop.distributed."
                       r"Communicator \(SingleProcess, MPIComm, ThreadComm\), got dict instead"):
        bnprop.layer_forward(O, W, gamma, beta, comm={})


def test_thread_comm_collectives() -> None:
    def rank_step(comm: ThreadComm) -> dict:
        buf = np.full(3, comm.rank + 1.0)
        summed = comm.allreduce_sum(buf)
        buf32 = np.full(2, comm.rank + 1.0, dtype=np.float32)
        strided = np.arange(6.0)[::2] * (comm.rank + 1)  # not contiguous: reduced in a copy
        config = comm.bcast({"seed": 42} if comm.rank == 0 else None)
        comm.barrier()
        return {"same_object": summed is buf, "sum": summed, "sum32": comm.allreduce_sum(buf32),
                "strided": comm.allreduce_sum(strided), "config": config}

    for result in run_threaded(3, rank_step):
        assert result["same_object"]
        np.testing.assert_array_equal(result["sum"], np.full(3, 6.0))
        assert result["sum32"].dtype == np.float32
        np.testing.assert_array_equal(result["sum32"], np.full(2, 6.0, np.float32))
        np.testing.assert_array_equal(result["strided"], np.array([0.0, 12.0, 24.0]))
        assert result["config"] == {"seed": 42}


def test_thread_abort_ends_every_rank_with_the_aborting_message() -> None:
    def rank_step(comm: ThreadComm) -> None:
        with dist.abort_on_error(comm):
            if comm.rank == 1:
                raise ValueError("bad shard")
            comm.barrier()

    with pytest.raises(dist.AbortedError, match=r"rank 1 of 3 aborting: ValueError: bad shard"):
        run_threaded(3, rank_step, timeout=20)


def test_a_rank_that_skips_a_collective_times_out_instead_of_hanging() -> None:
    def rank_step(comm: ThreadComm) -> None:
        if comm.rank == 0:
            comm.barrier()

    start = time.monotonic()
    with pytest.raises(threading.BrokenBarrierError):
        run_threaded(2, rank_step, timeout=0.5)
    assert time.monotonic() - start < 5


# -- choosing a communicator; mpi4py stays optional --------------------------------------------


def test_launched_size_reads_the_launchers_variables() -> None:
    assert dist.launched_size({}) == 1
    assert dist.launched_size({"PMI_SIZE": "4", "PMI_RANK": "2"}) == 4
    assert dist.launched_size({"OMPI_COMM_WORLD_SIZE": "3"}) == 3
    assert dist.launched_size({"PMI_SIZE": "not a number"}) == 1


def test_default_comm_without_a_launcher_is_single_process() -> None:
    assert isinstance(dist.default_comm({}), SingleProcess)
    assert isinstance(dist.default_comm({"PMI_SIZE": "1"}), SingleProcess)


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**clean_env(), **(env or {})})


def test_bnprop_imports_and_runs_without_mpi4py() -> None:
    code = (
        "import sys\n"
        "import bnprop, bnprop.distributed as d\n"
        "assert 'mpi4py' not in sys.modules, 'import bnprop imported mpi4py'\n"
        "sys.modules['mpi4py'] = None  # as if it were not installed\n"
        "assert isinstance(d.default_comm(), d.SingleProcess)\n"
        "try:\n"
        "    d.MPIComm()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "MPIComm needs mpi4py" in proc.stdout
    assert "install it with: pip install 'bnprop[mpi]'" in proc.stdout


def test_distributed_works_with_mpi4py_torch_and_jax_blocked() -> None:
    """Blocked before the first import: the package imports, and its two MPI-free
    communicators reduce correctly (SingleProcess: identity; 3 threads: the whole batch)."""
    code = (
        "import sys\n"
        "for name in ('mpi4py', 'torch', 'jax'):\n"
        "    sys.modules[name] = None  # as if it were not installed\n"
        "import numpy as np\n"
        "import bnprop.distributed as d\n"
        "from bnprop.batchnorm import batch_moments\n"
        "assert 'bnprop.distributed.bench' not in sys.modules\n"
        "Z = np.random.default_rng(0).standard_normal((10, 4))\n"
        "one = d.SingleProcess()\n"
        "(total,), (loss,) = d.allreduce_packed(one, [Z], [1.5])\n"
        "assert np.array_equal(total, Z) and loss == 1.5\n"
        "def step(comm):\n"
        "    rows = Z[d.shard(10, comm.rank, comm.size)]\n"
        "    moments = comm.combine_moments(*batch_moments(rows))\n"
        "    (total,), (loss,) = d.allreduce_packed(comm, [rows.sum(axis=0)], [comm.rank])\n"
        "    return moments, total, loss\n"
        "count, mean, M2 = batch_moments(Z)\n"
        "results = d.run_threaded(3, step)\n"
        "for (m, mu, m2), total, loss in results:\n"
        "    assert m == count == 10 and loss == 3.0\n"
        "    assert np.allclose(mu, mean, rtol=0, atol=1e-14)\n"
        "    assert np.allclose(m2, M2, rtol=1e-13)\n"
        "    assert np.allclose(total, Z.sum(axis=0), rtol=0, atol=1e-13)\n"
        "    assert np.array_equal(mu, results[0][0][1]), 'ranks differ'\n"
        "print(sorted(n for n in ('mpi4py', 'torch', 'jax') if sys.modules.get(n)))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_package_exports_every_name_of_the_old_module() -> None:
    """``from bnprop.distributed import X`` for each public name distributed.py had."""
    public = {
        "ABORT_GRACE", "LAUNCHER_SIZE_VARS", "MPI_EXTRA_HINT", "RUN_THREADED_GRACE",
        "AbortedError", "CollectiveError", "Communicator", "MPIComm", "Scratch",
        "SingleProcess", "ThreadComm", "Traffic", "abort_on_error", "agree",
        "allreduce_packed", "check_replicas", "default_comm", "error_message",
        "fold_moments", "launched_size", "pack_moments", "run_threaded", "shard",
    }
    assert set(dist.__all__) == public
    namespace: dict = {}
    exec("from bnprop.distributed import *", namespace)
    assert public <= set(namespace)


def test_mpicomm_without_mpi4py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"pip install 'bnprop\[mpi\]'"):
        dist.MPIComm()


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="mpi4py not installed")
def test_default_comm_refuses_a_launcher_of_another_mpi() -> None:
    """P copies of a one-process run must not each train alone and overwrite each other."""
    proc = run_python("import bnprop.distributed as d; d.default_comm()",
                      env={"OMPI_COMM_WORLD_SIZE": "2"})
    assert proc.returncode != 0
    assert "the launcher announced 2 processes but MPI_COMM_WORLD has 1" in proc.stderr


# -- real processes under mpiexec --------------------------------------------------------------

MPIEXEC = Path(sys.executable).parent / "mpiexec"
SCRIPTS = Path(__file__).parent / "mpi_scripts"
#: Hard limit on one mpiexec launch; a run here takes about 0.5 s.
LAUNCH_TIMEOUT = 30.0
#: A failing job must be over within this (measured: under 1 s).
FAULT_BOUND = 10.0

needs_mpiexec = pytest.mark.skipif(
    not MPIEXEC.exists() or importlib.util.find_spec("mpi4py") is None,
    reason=f"no mpiexec beside the Python running the tests ({MPIEXEC}) or no mpi4py; "
           "install them with: pip install 'bnprop[mpi]'",
)


def clean_env() -> dict[str, str]:
    """This environment without any launcher's variables, one BLAS thread per rank."""
    prefixes = ("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "HYDRA_", "MV2_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def run_mpiexec(size: int, program: list[str], env: dict[str, str],
                timeout: float = LAUNCH_TIMEOUT) -> tuple[int, str, str, float]:
    """Run ``mpiexec -n size PROGRAM``; (return code, stdout, stderr, seconds).

    ``-launcher fork`` starts the ranks locally without ssh whatever the host name resolves
    to. Hydra runs its proxy and each rank in a session of their own, out of reach of a
    process-group kill; on a timeout mpiexec gets SIGTERM, on which it kills its ranks
    (measured: 0.02 s; it ignored a SIGINT sent this way), then SIGKILL if need be.
    """
    cmd = [str(MPIEXEC), "-launcher", "fork", "-n", str(size), *program]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not end within {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err, time.monotonic() - start


def mpiexec(size: int, script: str, *args: str) -> tuple[int, str, str, float]:
    """``mpiexec -n size python tests/mpi_scripts/SCRIPT ARGS`` (see :func:`run_mpiexec`)."""
    return run_mpiexec(size, [sys.executable, str(SCRIPTS / script), *args], clean_env())


@needs_mpiexec
@pytest.mark.parametrize("size", [2, 3])
def test_mpi_layer_equals_single_process(size: int, tmp_path: Path) -> None:
    out_path = tmp_path / "result.npz"
    code, out, err, _ = mpiexec(size, "layer_check.py", str(out_path))
    assert code == 0, f"{out}\n{err}"
    result = np.load(out_path)
    assert int(result["size"]) == size
    for dtype, stats in (("float64", "exact"), ("float64", "frozen"), ("float32", "exact")):
        case = f"{dtype}_{stats}"
        arrays = tuple(result[f"{case}__in_{name}"] for name in ("O", "W", "gamma", "beta", "dY"))
        n_out = arrays[1].shape[0]
        ref = bnprop.layer_forward(*arrays[:4])
        ref_grads = bnprop.layer_backward(arrays[4], ref, stats=stats)
        tol = TOL[np.dtype(dtype).type]
        for key in ROW_KEYS:
            assert result[f"{case}__{key}"].dtype == np.dtype(dtype)
            assert rel_err(result[f"{case}__{key}"], getattr(ref, key)) < tol, (case, key)
        for key in ROW_GRAD_KEYS:
            assert rel_err(result[f"{case}__{key}"], getattr(ref_grads, key)) < tol, (case, key)
        for key in (*STAT_KEYS, "dgamma", "dbeta"):
            per_rank = result[f"{case}__{key}"]  # bit-identical on every rank
            np.testing.assert_array_equal(per_rank, np.broadcast_to(per_rank[0], per_rank.shape))
            want = getattr(ref, key) if key in STAT_KEYS else getattr(ref_grads, key)
            assert rel_err(per_rank[0], want) < tol, (case, key)
        dW = result[f"{case}__dW"].astype(np.float64).sum(axis=0)
        assert rel_err(dW, ref_grads.dW) < tol, case
        packed = 8 * (1 + 2 * n_out)
        for forward, backward in result[f"{case}__traffic"]:
            assert tuple(forward) == (1, packed, size * packed)
            assert tuple(backward) == (1, 16 * n_out, 16 * n_out)


@needs_mpiexec
@pytest.mark.parametrize(("mode", "line"), [
    ("raise", "bnprop: rank 1 of 3 aborting: ValueError: rank 1 failed on purpose"),
    ("sysexit", "bnprop: rank 1 of 3 aborting: SystemExit: exit status 2"),
    ("input", "bnprop: rank 1 of 3 aborting: InputError: O: expected shape (m, 3) to match W"),
])
def test_mpi_rank_error_aborts_the_whole_job(mode: str, line: str) -> None:
    code, out, err, seconds = mpiexec(3, "fault.py", mode)
    assert code != 0
    assert seconds < FAULT_BOUND
    assert line in err, err
    assert "done" not in out  # nobody got past the collective rank 1 never joined


@needs_mpiexec
@pytest.mark.parametrize("mode", ["exit", "kill"])
def test_mpi_dead_rank_ends_the_whole_job(mode: str) -> None:
    """Hydra notices a rank that dies without MPI_Finalize and kills the rest."""
    code, out, err, seconds = mpiexec(3, "fault.py", mode)
    assert code != 0, f"{out}\n{err}"
    assert seconds < FAULT_BOUND
    assert "done" not in out


@needs_mpiexec
def test_mpi_rank_exiting_zero_early_ends_the_job_without_a_hang() -> None:
    """A rank that calls os._exit(0) mid-run: hydra kills the others, and with MPICH 5.0.2
    mpiexec then returns 0. The exit status alone does not prove a run completed; a run
    must check its outputs (rank 0 writes results only after the last collective)."""
    _, out, _, seconds = mpiexec(3, "fault.py", "exit0")
    assert seconds < FAULT_BOUND
    assert "done" not in out


@needs_mpiexec
def test_mpi_bench_script_runs_and_counts_the_payload() -> None:
    code, out, err, _ = mpiexec(2, "bench_collectives.py", "--repeat", "20", "--features", "4",
                                "--m", "8")
    assert code == 0, err
    (line,) = out.splitlines()
    report = json.loads(line)
    assert report["forward_collectives_sent_received"] == [1, 8 * 9, 2 * 8 * 9]
    assert report["backward_collectives_sent_received"] == [1, 8 * 8, 8 * 8]


# -- the benchmark's message model (bnprop.distributed.bench) ----------------------------------


@pytest.mark.parametrize("sync_bn", [True, False])
def test_bench_message_model_matches_the_measured_traffic(sync_bn: bool) -> None:
    from bnprop.distributed import bench

    sizes, m = (12, 8, 6, 3), 10

    def rank_step(comm: ThreadComm) -> dict:
        rows = shard(m, comm.rank, comm.size)
        return bench.time_steps(sizes, rows.stop - rows.start, comm, steps=2, warmup=1,
                                sync_bn=sync_bn, m_global=m)

    messages = bench.step_messages(sizes, sync_bn=sync_bn)
    for result in run_threaded(3, rank_step):
        assert result["collectives_per_step"] == len(messages)
        assert result["bytes_sent_per_step"] == sum(nbytes for _, nbytes in messages)
        assert result["bytes_received_per_step"] == sum(
            3 * nbytes if kind == "allgather" else nbytes for kind, nbytes in messages)


def test_bench_alpha_beta_costs() -> None:
    from bnprop.distributed.bench import Network, collective_seconds

    net = Network("test", alpha=1.0, beta=0.01)
    assert collective_seconds("allreduce", 100, 1, net) == 0.0
    # 8 ranks, 3 rounds: recursive doubling 3 (1 + 1) = 6 < Rabenseifner 6 + 2 * 7/8 = 7.75
    assert collective_seconds("allreduce", 100, 8, net) == pytest.approx(6.0)
    # 10^4 bytes: recursive doubling 3 (1 + 100) = 303 > Rabenseifner 6 + 175 = 181
    assert collective_seconds("allreduce", 10_000, 8, net) == pytest.approx(181.0)
    assert collective_seconds("allgather", 100, 8, net) == pytest.approx(3 + 7 * 1.0)


def test_null_comm_times_a_share_like_its_replicas() -> None:
    """NullComm(P): the step of P ranks holding the same rows, with nothing sent."""
    from bnprop.distributed.bench import NullComm
    from bnprop.model import MLP

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    ref = MLP((5, 4, 3), dtype="float64")
    loss, grads = ref.loss_and_grads(np.vstack([X, X]), np.concatenate([y, y]))
    got_loss, got = MLP((5, 4, 3), dtype="float64").loss_and_grads(
        X, y, comm=NullComm(2), m_global=12)
    assert got_loss == pytest.approx(loss, rel=1e-14)
    for k in grads:
        assert rel_err(got[k], grads[k]) < 1e-13, k


def test_bench_runs_as_a_module_of_the_package() -> None:
    """``python -m bnprop.distributed.bench model``: the entry point docs/scaling.md gives."""
    proc = subprocess.run(
        [sys.executable, "-m", "bnprop.distributed.bench", "model", "--net", "ioffe",
         "--processes", "1", "2", "--steps", "2", "--rounds", "1", "--json"],
        capture_output=True, text=True, timeout=120, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr  # the package does not import bench itself
    (line,) = proc.stdout.splitlines()
    report = json.loads(line)
    assert report["net"] == "ioffe"
    assert [row["P"] for row in report["rows"]] == [1, 2]
    for row in report["rows"]:
        for net in ("1 Gb/s Ethernet", "100 Gb/s InfiniBand"):
            # P = 1 sends nothing; P > 1 adds the collectives' cost to the compute
            assert (row[net]["sync_ms"] > row["compute_ms"]) == (row["P"] > 1)
