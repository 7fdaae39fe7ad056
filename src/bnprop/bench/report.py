"""``bnprop bench``: run every benchmark in one process, print the ratio table, write JSON.

JSON layout (``schema`` = 1)::

    {"schema": 1, "quick": bool, "threads": n, "machine": {...describe()},
     "comparisons": [{"section": "layer" | "step", "case": str, "dtype": str,
                      "peer": str, "bnprop_s": float, "peer_s": float, "ratio": float}],
     "unavailable": [{"section", "case", "dtype", "peer", "reason"}],
     "limits": {...}, "memory": {...}, "first_step_s": float, "targets": [...]}

``ratio = bnprop_s / peer_s`` (below 1: bnprop is faster); every listed ratio is a
positive float; a peer that could not run is in ``unavailable`` with its reason.
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
from bnprop.bench import cnn, layer, machine, memory, step
from bnprop.bench.timing import interleaved

SCHEMA = 1


@dataclass(frozen=True)
class Sizes:
    """What a run measures; ``QUICK`` finishes in seconds, ``FULL`` in minutes."""

    layers: tuple[tuple[int, int, int], ...]    # (m, n_in, n_out)
    steps: tuple[tuple[str, tuple[int, ...], int], ...]  # (name, sizes, m)
    rounds: int
    budget: float                               # seconds of timed calls per case a round
    copy_bytes: int
    gemm_k: int
    bn_shape: tuple[int, int]
    memory_steps: int
    compile_peers: bool                          # torch.compile and JAX jit


FULL = Sizes(
    layers=((60, 16, 100), (60, 100, 100), (4096, 16, 256), (4096, 256, 256),
            (65536, 16, 256), (65536, 256, 256)),
    steps=(("ioffe", *step.IOFFE), ("wide", *step.WIDE)),
    rounds=7, budget=0.1, copy_bytes=1 << 28, gemm_k=1024, bn_shape=(65536, 256),
    memory_steps=1000, compile_peers=True,
)
QUICK = Sizes(
    layers=((60, 16, 100), (512, 64, 64)),
    steps=(("ioffe", *step.IOFFE),),
    rounds=2, budget=0.01, copy_bytes=1 << 24, gemm_k=256, bn_shape=(4096, 64),
    memory_steps=50, compile_peers=False,
)


def _torch_available() -> str | None:
    """``None`` when torch imports, else the reason it does not."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        return f"torch not installed ({exc}); pip install 'bnprop[test]'"
    return None


def _set_threads(n: int) -> None:
    threads.set_threads(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass


def _compare(section: str, case: str, dtype: str, bnprop_fn: Callable[[], None],
             peers: dict[str, Callable[[], None]], sizes: Sizes, out: dict[str, Any]) -> None:
    times = interleaved({"bnprop": bnprop_fn, **peers}, sizes.rounds, sizes.budget)
    for peer in peers:
        out["comparisons"].append({
            "section": section, "case": case, "dtype": dtype, "peer": peer,
            "bnprop_s": times["bnprop"], "peer_s": times[peer],
            "ratio": times["bnprop"] / times[peer],
        })


def _unavailable(out: dict[str, Any], section: str, case: str, dtype: str, peer: str,
                 reason: str) -> None:
    out["unavailable"].append({"section": section, "case": case, "dtype": dtype,
                               "peer": peer, "reason": reason})


def run_layers(sizes: Sizes, out: dict[str, Any], no_torch: str | None) -> None:
    for dtype in (np.float32, np.float64):
        for m, n_in, n_out in sizes.layers:
            case, name = f"{m} x {n_in} -> {n_out}", np.dtype(dtype).name
            O, W, dY = layer.layer_inputs(m, n_in, n_out, dtype)
            ours = layer.bnprop_layer(O, W, dY)
            if no_torch:
                _unavailable(out, "layer", case, name, "torch eager", no_torch)
                continue
            _compare("layer", case, name, ours, {"torch eager": layer.torch_layer(O, W, dY)},
                     sizes, out)


def run_steps(sizes: Sizes, out: dict[str, Any], no_torch: str | None) -> None:
    for name, net_sizes, m in sizes.steps:
        for dtype in (np.float32, np.float64):
            dt = np.dtype(dtype).name
            case = f"{name} {'-'.join(map(str, net_sizes))}, batch {m}"
            X, y = step.step_inputs(net_sizes, m, dtype)
            peers: dict[str, Callable[[], None]] = {}
            if no_torch:
                _unavailable(out, "step", case, dt, "torch eager", no_torch)
            else:
                peers["torch eager"] = step.torch_step(net_sizes, X, y)[0]
            extra = dtype == np.float32 and sizes.compile_peers
            if extra and not no_torch:
                try:
                    call, first = step.torch_step(net_sizes, X, y, compiled=True)
                    peers["torch.compile"] = call
                    out["compile_s"][f"torch.compile {case}"] = first
                except Exception as exc:  # any compile failure is reported
                    _unavailable(out, "step", case, dt, "torch.compile",
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            if extra:
                try:
                    call, first = step.jax_step(net_sizes, X, y)
                    peers["jax jit"] = call
                    out["compile_s"][f"jax jit {case}"] = first
                except ImportError:
                    _unavailable(out, "step", case, dt, "jax jit", "jax not installed")
                except Exception as exc:  # reported, not raised
                    _unavailable(out, "step", case, dt, "jax jit",
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            elif not sizes.compile_peers and dtype == np.float32:
                for peer in ("torch.compile", "jax jit"):
                    _unavailable(out, "step", case, dt, peer, "not run with --quick")
            if peers:
                _compare("step", case, dt, step.bnprop_step(net_sizes, X, y), peers, sizes,
                         out)


def run_limits(sizes: Sizes, out: dict[str, Any], n_threads: int) -> None:
    reps = max(3, sizes.rounds)
    lim: dict[str, Any] = {
        "copy_bytes_per_s_1_thread": machine.copy_bandwidth(sizes.copy_bytes, 1, reps),
        f"copy_bytes_per_s_{n_threads}_threads":
            machine.copy_bandwidth(sizes.copy_bytes, n_threads, reps),
    }
    for dtype in (np.float32, np.float64):
        for t in sorted({1, n_threads}):
            lim[f"gemm_flops_per_s_{np.dtype(dtype).name}_{t}_blas_threads"] = \
                machine.gemm_peak(sizes.gemm_k, t, dtype, reps)
    m, n = sizes.bn_shape
    for dtype in (np.float32, np.float64):
        rate, seconds = machine.bn_kernel_bandwidth(m, n, dtype, reps)
        name = np.dtype(dtype).name
        lim[f"bn_kernels_{name}_{m}x{n}_s"] = seconds
        lim[f"bn_kernels_{name}_{m}x{n}_bytes_per_s"] = rate
        lim[f"bn_kernels_{name}_fraction_of_copy"] = rate / lim["copy_bytes_per_s_1_thread"]
    lim["gemm_k"], lim["copy_array_bytes"] = sizes.gemm_k, sizes.copy_bytes
    out["limits"] = lim


def run_memory(sizes: Sizes, out: dict[str, Any]) -> None:
    net_sizes, m = step.IOFFE
    result: dict[str, Any] = {"steps": sizes.memory_steps}
    for fast in (True, False):
        result["fast" if fast else "reference"] = memory.step_allocations(
            net_sizes, m, np.float32, fast=fast, warmup=20, steps=sizes.memory_steps)
    result["peak_rss_bytes"] = memory.peak_rss()
    out["memory"] = result


def first_step_seconds() -> float:
    """Seconds of the very first fast step in this process: kernels loaded from the cache
    (or compiled, on a fresh install) plus buffer allocation."""
    net_sizes, m = step.IOFFE
    X, y = step.step_inputs(net_sizes, m, np.float32)
    fn = step.bnprop_step(net_sizes, X, y)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _find(out: dict[str, Any], section: str, case_start: str, dtype: str,
          peer: str) -> float | None:
    for c in out["comparisons"]:
        if (c["section"], c["dtype"], c["peer"]) == (section, dtype, peer) \
                and c["case"].startswith(case_start):
            return c["ratio"]
    return None


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each ``{"target", "value", "limit", "met"}`` (value None: not run)."""
    rows: list[tuple[str, float | None, float, str]] = [
        ("Ioffe step / torch eager (float32)",
         _find(out, "step", "ioffe", "float32", "torch eager"), 0.35, "<="),
        ("Ioffe step / jax jit (float32)", _find(out, "step", "ioffe", "float32", "jax jit"),
         0.6, "<="),
        ("CNN step / torch eager (float32)",
         _find(out, "step", "cnn", "float32", "torch eager"), 0.8, "<="),
        ("wide step / torch eager (float32)",
         _find(out, "step", "wide", "float32", "torch eager"), 0.65, "<="),
        ("BN layer 65536 x 16 -> 256 / torch eager (float32)",
         _find(out, "layer", "65536 x 16 -> 256", "float32", "torch eager"), 0.30, "<="),
        ("BN kernels / copy bandwidth (float32)",
         out.get("limits", {}).get("bn_kernels_float32_fraction_of_copy"), 0.60, ">="),
        ("allocated-memory growth after warm-up, bytes (< 1 KiB: none per step)",
         out.get("memory", {}).get("fast", {}).get("growth"), 1023, "<="),
    ]
    f64 = [c["ratio"] for c in out["comparisons"]
           if c["dtype"] == "float64" and c["peer"] == "torch eager"]
    rows.append(("worst float64 ratio / torch eager", max(f64) if f64 else None, 1.0, "<="))
    result = []
    for name, value, limit, op in rows:
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        result.append({"target": name, "value": value, "limit": f"{op} {limit}", "met": met})
    return result


def run(*, quick: bool = False, n_threads: int = 2, sizes: Sizes | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every benchmark of the module docstring; returns the JSON-ready result."""
    sizes = sizes or (QUICK if quick else FULL)
    out: dict[str, Any] = {"schema": SCHEMA, "quick": quick, "threads": n_threads,
                           "machine": machine.describe(), "comparisons": [],
                           "unavailable": [], "compile_s": {}}
    _set_threads(n_threads)
    out["first_step_s"] = first_step_seconds()
    no_torch = _torch_available()
    if no_torch:
        log(f"bench: {no_torch}: bnprop only, no ratios against PyTorch.")
    log("bench: BN layer forward + backward ...")
    run_layers(sizes, out, no_torch)
    log("bench: train steps ...")
    run_steps(sizes, out, no_torch)
    log("bench: CNN step and its phases ...")
    cnn.run_cnn(out, quick=quick, rounds=sizes.rounds, budget=sizes.budget, no_torch=no_torch)
    log("bench: machine limits ...")
    run_limits(sizes, out, n_threads)
    log("bench: memory ...")
    run_memory(sizes, out)
    out["targets"] = targets(out)
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds < 0.1 else f"{seconds * 1e3:.1f}"


def table(out: dict[str, Any]) -> str:
    """The result as Markdown tables: ratios, unavailable peers, limits, memory, targets."""
    lines = [f"threads: {out['threads']} (bnprop row parts, BLAS 1 each; torch "
             f"set_num_threads({out['threads']}))", "",
             "| section | case | dtype | peer | bnprop ms | peer ms | bnprop / peer |",
             "|---|---|---|---|---:|---:|---:|"]
    for c in out["comparisons"]:
        lines.append(f"| {c['section']} | {c['case']} | {c['dtype']} | {c['peer']} | "
                     f"{_ms(c['bnprop_s'])} | {_ms(c['peer_s'])} | {c['ratio']:.2f} |")
    for u in out["unavailable"]:
        lines.append(f"| {u['section']} | {u['case']} | {u['dtype']} | {u['peer']} | | | "
                     f"n/a ({u['reason']}) |")
    lim = out.get("limits", {})
    lines += ["", "| limit | value |", "|---|---:|"]
    for k, v in lim.items():
        if "bytes_per_s" in k:
            text = f"{v / 1e9:.2f} GB/s"
        elif "flops" in k:
            text = f"{v / 1e9:.1f} GFLOP/s"
        elif "fraction" in k:
            text = f"{v:.0%}"
        elif k.endswith("_s"):
            text = f"{v * 1e3:.2f} ms"
        else:
            text = str(v)
        lines.append(f"| {k} | {text} |")
    mem = out.get("memory", {})
    if mem:
        lines += ["", f"memory (Ioffe step, float32, {mem['steps']} steps after warm-up):", "",
                  "| path | growth bytes | per-step peak bytes |", "|---|---:|---:|"]
        for path in ("fast", "reference"):
            lines.append(f"| {path} | {mem[path]['growth']} | {mem[path]['per_step_peak']} |")
        lines += ["", f"- peak RSS: {mem['peak_rss_bytes'] / 2**20:.0f} MiB"]
    lines.append(f"- first fast step in this process: {out['first_step_s'] * 1e3:.1f} ms")
    for k, v in out.get("compile_s", {}).items():
        lines.append(f"- first call of {k}: {v:.1f} s")
    lines += cnn.phase_lines(out)
    lines += ["", "| target | value | limit | met |", "|---|---:|---|---|"]
    for t in out.get("targets", []):
        value = "not run" if t["value"] is None else f"{t['value']:.3g}"
        met = "-" if t["met"] is None else ("yes" if t["met"] else "no")
        lines.append(f"| {t['target']} | {value} | {t['limit']} | {met} |")
    return "\n".join(lines)


def write_json(out: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
