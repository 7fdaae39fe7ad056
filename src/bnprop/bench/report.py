"""``bnprop bench``: run every benchmark in one process and collect the JSON-ready result.

JSON layout (``schema`` = 2; docs/bench.md describes every key)::

    {"schema": 2, "quick": bool, "threads": n, "jax_threads": str,
     "machine": {...describe(), "load_average_start", "load_average_end"},
     "gemm_peak_flops_per_s": {"float32": f, "float64": f},
     "comparisons": [{"section": "layer" | "step", "case", "dtype", "peer",
                      "bnprop_s", "peer_s", "ratio", "ratio_rounds", "gemm_flops",
                      "gemm_floor_s", "bnprop_floor_multiple", "peer_floor_multiple",
                      "measured_gemm_s", "measured_gemm_way", "measured_floor_multiple",
                      "peer_gemm_s"}],
     "train_job": {...} | null, "unavailable": [{"section", "case", "dtype", "peer",
     "reason"}], "limits": {...}, "memory": {...}, "first_step_s": float,
     "compile_s": {...}, "targets": [...]}

``ratio = bnprop_s / peer_s`` (below 1: bnprop is faster; ``ratio_rounds``: the lowest
and highest of one round's, :func:`bnprop.bench.timing.ratio_spread`);
``*_floor_multiple = time / gemm_floor_s`` (:mod:`bnprop.bench.floor`).
``measured_gemm_s``: the case's own GEMMs alone as bnprop computes them, the fastest of 1
BLAS thread, n BLAS threads, n row parts and as the compiled step runs them with its
helper thread (``measured_gemm_way`` says which), timed in the case's rounds
(:mod:`bnprop.bench.shape_floor`); ``measured_floor_multiple = bnprop_s /
measured_gemm_s``; all three null for the CNN step. Every listed ratio is a positive
float; a peer that could not run is in ``unavailable`` with its reason. ``targets[]``
rows also carry ``floor_s``, the measured floor they were judged against
(:mod:`bnprop.bench.targets`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnprop import threads
from bnprop._atomic import atomic_writer
from bnprop.bench import (
    cnn,
    floor,
    jax_peer,
    job,
    layer,
    machine,
    memory,
    sections,
    shape_floor,
    step,
)
from bnprop.bench.targets import targets
from bnprop.bench.timing import interleaved, ratio_spread

SCHEMA = 2
JAX_MISSING = "jax not installed; pip install 'bnprop[bench]'"
#: The PyTorch peer's name.
TORCH = "torch eager"


@dataclass(frozen=True)
class Sizes:
    """What a run measures; ``QUICK`` finishes in seconds, ``FULL`` in a few minutes."""

    layers: tuple[tuple[int, int, int], ...]    # (m, n_in, n_out)
    steps: tuple[tuple[str, tuple[int, ...], int], ...]  # (name, sizes, m)
    rounds: int
    budget: float                               # seconds of timed calls per case a round
    copy_bytes: int
    gemm_k: int
    gemm_repeats: int
    memory_steps: int
    job_chunks: int
    job_chunk_steps: int
    job_eval_every: int | None                  # None: bnprop train's default
    job_warmup: int
    section_retries: int = 0                    # measured again while the cores ran as one


FULL = Sizes(
    layers=((60, 16, 100), (60, 100, 100), (4096, 16, 256), (4096, 256, 256),
            (65536, 16, 256), (65536, 256, 256)),
    steps=(("ioffe", *step.IOFFE), ("wide", *step.WIDE)),
    rounds=7, budget=0.1, copy_bytes=1 << 28, gemm_k=1024, gemm_repeats=15,
    memory_steps=1000, job_chunks=3, job_chunk_steps=1000, job_eval_every=None,
    job_warmup=20, section_retries=2,
)
QUICK = Sizes(
    layers=((60, 16, 100), (512, 64, 64)),
    steps=(("ioffe", *step.IOFFE),),
    rounds=2, budget=0.01, copy_bytes=1 << 24, gemm_k=256, gemm_repeats=3,
    memory_steps=50, job_chunks=2, job_chunk_steps=20, job_eval_every=20, job_warmup=3,
)


def _torch_available() -> str | None:
    """``None`` when torch imports, else the reason it does not."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        return f"torch not installed ({exc}); pip install 'bnprop[bench]'"
    return None


def _set_threads(n: int) -> None:
    threads.set_threads(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"


def _compare(section: str, case: str, dtype: str, gemms: list[shape_floor.Gemm],
             bnprop_fn: Callable[[], None], peers: dict[str, Callable[[], None]],
             sizes: Sizes, out: dict[str, Any]) -> None:
    """bnprop against its peers, and the case's GEMMs alone on 1 and n BLAS threads (the
    measured floor, :mod:`bnprop.bench.shape_floor`) and, beside PyTorch, through
    PyTorch's BLAS (``peer_gemm_s``), in the same interleaved rounds."""
    n = out["threads"]
    arrays = shape_floor.operands(gemms, dtype)  # one set: every way only overwrites outputs
    floor_cases, contexts = shape_floor.cases(gemms, dtype, n, arrays)
    if TORCH in peers:
        floor_cases[shape_floor.TORCH_CASE] = shape_floor.torch_sequence(gemms, arrays)
    per_round: dict[str, list[float]] = {}
    times = interleaved({"bnprop": bnprop_fn, **peers, **floor_cases}, sizes.rounds,
                        sizes.budget, contexts, per_round)
    gemm_s, way = shape_floor.best(times, n)
    for peer in peers:
        out["comparisons"].append({
            "section": section, "case": case, "dtype": dtype, "peer": peer,
            "bnprop_s": times["bnprop"], "peer_s": times[peer],
            "ratio": times["bnprop"] / times[peer],
            "ratio_rounds": ratio_spread(per_round, "bnprop", peer),
            "gemm_flops": shape_floor.total_flops(gemms), "measured_gemm_s": gemm_s,
            "measured_gemm_way": way,
            "measured_floor_multiple": times["bnprop"] / gemm_s,
            "peer_gemm_s": times[shape_floor.TORCH_CASE] if peer == TORCH else None,
        })


def apply_floors(out: dict[str, Any]) -> None:
    """Each comparison's and the train job's GEMM floor, at the run's GEMM peak."""
    peaks = out["gemm_peak_flops_per_s"]
    for c in out["comparisons"]:
        floor_s = floor.floor_seconds(c["gemm_flops"], peaks[c["dtype"]])
        c.update(gemm_floor_s=floor_s, bnprop_floor_multiple=c["bnprop_s"] / floor_s,
                 peer_floor_multiple=c["peer_s"] / floor_s)
    job_result = out.get("train_job")
    if job_result:
        floor_s = floor.floor_seconds(job_result["gemm_flops_per_step"],
                                      peaks[job_result["dtype"]])
        job_result["gemm_floor_s"] = floor_s
        for side in job_result["sides"].values():
            side["gemm_floor_multiple"] = 1.0 / side["steps_per_s"] / floor_s


def _unavailable(out: dict[str, Any], section: str, case: str, dtype: str, peer: str,
                 reason: str) -> None:
    out["unavailable"].append({"section": section, "case": case, "dtype": dtype,
                               "peer": peer, "reason": reason})


def run_layers(sizes: Sizes, out: dict[str, Any], no_torch: str | None) -> None:
    """Public ``layer_forward`` + ``layer_backward`` against PyTorch eager, both dtypes."""
    for dtype in (np.float32, np.float64):
        for m, n_in, n_out in sizes.layers:
            case, name = f"{m} x {n_in} -> {n_out}", np.dtype(dtype).name
            if no_torch:
                _unavailable(out, "layer", case, name, "torch eager", no_torch)
                continue
            O, W, dY = layer.layer_inputs(m, n_in, n_out, dtype)
            _compare("layer", case, name, shape_floor.layer_gemms(m, n_in, n_out),
                     layer.bnprop_layer(O, W, dY),
                     {"torch eager": layer.torch_layer(O, W, dY)}, sizes, out)


def _jax_peer(net_sizes: tuple[int, ...], X: np.ndarray, y: np.ndarray, case: str,
              out: dict[str, Any]) -> Callable[[], None] | None:
    try:
        call, first = jax_peer.jax_step(net_sizes, X, y)
    except ImportError:
        _unavailable(out, "step", case, "float32", "jax jit", JAX_MISSING)
        return None
    except Exception as exc:  # a peer that fails is reported, not raised
        _unavailable(out, "step", case, "float32", "jax jit", _reason(exc))
        return None
    out["compile_s"][f"jax jit {case}"] = first
    return call


def run_steps(sizes: Sizes, out: dict[str, Any], no_torch: str | None) -> None:
    """Public ``MLP.train_step`` (SGD) against PyTorch eager (both dtypes) and jax.jit."""
    for name, net_sizes, m in sizes.steps:
        for dtype in (np.float32, np.float64):
            dt = np.dtype(dtype).name
            case = f"{name} {'-'.join(map(str, net_sizes))}, batch {m}"
            X, y = step.step_inputs(net_sizes, m, dtype)
            peers: dict[str, Callable[[], None]] = {}
            if no_torch:
                _unavailable(out, "step", case, dt, "torch eager", no_torch)
            else:
                peers["torch eager"] = step.torch_step(net_sizes, X, y)
            if dtype == np.float32:
                call = _jax_peer(net_sizes, X, y, case, out)
                if call is not None:
                    peers["jax jit"] = call
            if peers:
                _compare("step", case, dt, shape_floor.step_gemms(net_sizes, m),
                         step.bnprop_step(net_sizes, X, y), peers, sizes, out)


def run_job(sizes: Sizes, out: dict[str, Any], no_torch: str | None,
            data_dir: str | None) -> None:
    """The default ``bnprop train`` job against the same PyTorch eager script."""
    config = job.TrainConfig()
    if sizes.job_eval_every is not None:
        config.eval_every = sizes.job_eval_every
    data, source = job.job_data(config, data_dir)
    reason = no_torch or job.torch_unsupported(config)
    if reason:
        _unavailable(out, "train_job", "default bnprop train job", config.dtype,
                     "torch eager", reason)
    result = job.run_job(config, data, chunks=sizes.job_chunks,
                         chunk_steps=sizes.job_chunk_steps, warmup=sizes.job_warmup,
                         with_torch=not reason)
    result["data"] = source
    out["train_job"] = result


def run_limits(sizes: Sizes, out: dict[str, Any], n_threads: int) -> None:
    """Copy bandwidth and GEMM rates on 1 and ``n_threads`` BLAS threads."""
    reps = max(3, sizes.rounds)
    lim: dict[str, Any] = {
        "copy_bytes_per_s_1_thread": machine.copy_bandwidth(sizes.copy_bytes, 1, reps),
        f"copy_bytes_per_s_{n_threads}_threads":
            machine.copy_bandwidth(sizes.copy_bytes, n_threads, reps),
    }
    lim["gemm_k"], lim["copy_array_bytes"] = sizes.gemm_k, sizes.copy_bytes
    out["limits"] = lim
    measure_gemm_peak(sizes, out, n_threads)


def measure_gemm_peak(sizes: Sizes, out: dict[str, Any], n_threads: int) -> None:
    """GEMM rates on 1 and ``n_threads`` BLAS threads; the peak of a dtype is the highest
    rate measured in the run (called at its start and its end: a busy machine only ever
    lowers a rate, and a low peak would flatter every floor multiple)."""
    lim, peaks = out["limits"], out["gemm_peak_flops_per_s"]
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        for t in sorted({1, n_threads}):
            key = f"gemm_flops_per_s_{name}_{t}_blas_threads"
            rate = machine.gemm_peak(sizes.gemm_k, t, dtype, sizes.gemm_repeats)
            lim[key] = max(rate, lim.get(key, 0.0))
            peaks[name] = max(rate, peaks.get(name, 0.0))


def run_memory(sizes: Sizes, out: dict[str, Any]) -> None:
    net_sizes, m = step.IOFFE
    out["memory"] = {
        "steps": sizes.memory_steps,
        "train_step": memory.step_allocations(net_sizes, m, np.float32, warmup=20,
                                              steps=sizes.memory_steps),
        "peak_rss_bytes": memory.peak_rss(),
    }


def first_step_seconds() -> float:
    """Seconds of the very first public train step in this process (kernels loaded from
    the cache, or compiled on a fresh install, plus any buffers allocated)."""
    net_sizes, m = step.IOFFE
    X, y = step.step_inputs(net_sizes, m, np.float32)
    fn = step.bnprop_step(net_sizes, X, y)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(*, quick: bool = False, n_threads: int = 2, sizes: Sizes | None = None,
        data_dir: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every benchmark of the module docstring; returns the JSON-ready result."""
    sizes = sizes or (QUICK if quick else FULL)
    load = machine.load_average()
    _set_threads(n_threads)
    jax_threads = jax_peer.configure_threads(n_threads)  # before anything imports jax
    out: dict[str, Any] = {"schema": SCHEMA, "quick": quick, "threads": n_threads,
                           "jax_threads": jax_threads, "machine": machine.describe(),
                           "comparisons": [], "unavailable": [], "compile_s": {},
                           "gemm_peak_flops_per_s": {}, "train_job": None}
    out["machine"]["load_average_start"] = load
    out["machine"]["busy"] = bool(load and load[0] > machine.BUSY_LOAD)
    out["first_step_s"] = first_step_seconds()
    no_torch = _torch_available()
    if no_torch:
        log(f"bench: {no_torch}: bnprop only, no ratios against PyTorch.")
    if out["machine"]["jax"] is None:
        log(f"bench: jax jit peer skipped: {JAX_MISSING}.")
    probes = out["machine"]["two_core_speedup"] = []

    def section(name: str, measure: Callable[[], None]) -> None:  # cores apart: sections.py
        if n_threads < 2:
            measure()
        else:
            sections.run_section(out, name, measure, probe=machine.two_core_speedup,
                                 retries=sizes.section_retries, log=log)

    log("bench: machine limits (copy bandwidth, GEMM peak) ...")
    run_limits(sizes, out, n_threads)
    log("bench: layer_forward + layer_backward ...")
    section("layer", lambda: run_layers(sizes, out, no_torch))
    log("bench: train steps ...")
    section("step", lambda: run_steps(sizes, out, no_torch))
    log("bench: the default train job ...")
    section("train job", lambda: run_job(sizes, out, no_torch, data_dir))
    log("bench: CNN step and its phases ...")
    section("CNN step", lambda: cnn.run_cnn(out, quick=quick, rounds=sizes.rounds,
                                            budget=sizes.budget, no_torch=no_torch))
    log("bench: memory ...")
    run_memory(sizes, out)
    log("bench: GEMM peak again ...")
    if n_threads >= 2:
        probes.append({"before": "end", "speedup": round(machine.two_core_speedup(), 2)})
    measure_gemm_peak(sizes, out, n_threads)
    apply_floors(out)
    out["machine"]["load_average_end"] = machine.load_average()
    out["targets"] = targets(out)
    return out


def write_json(out: dict[str, Any], path: str | Path) -> None:
    """The result as JSON (sorted keys), written atomically."""
    with atomic_writer(Path(path)) as f:
        f.write((json.dumps(out, indent=2, sort_keys=True) + "\n").encode())
