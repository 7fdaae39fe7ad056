"""The result of :func:`bnprop.bench.run` as Markdown: comparisons with their GEMM floors
(at peak, and measured at the case's shapes), the default train job, unavailable peers,
machine limits, memory, and the targets (met, missed, or blocked by the measured floor)."""

from __future__ import annotations

from typing import Any

from bnprop.bench import cnn
from bnprop.bench.machine import CORES_APART
from bnprop.bench.sections import apart


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds < 0.1 else f"{seconds * 1e3:.1f}"


def _measured(c: dict[str, Any]) -> str:
    """The measured-floor cells: GEMMs alone (ms, the fastest way) and bnprop / them."""
    peer = "-" if c.get("peer_gemm_s") is None else _ms(c["peer_gemm_s"])
    if c.get("measured_gemm_s") is None:
        return f"- | - | {peer} |"
    return (f"{_ms(c['measured_gemm_s'])} ({c['measured_gemm_way']}) | "
            f"{c['measured_floor_multiple']:.1f} | {peer} |")


def _comparisons(out: dict[str, Any]) -> list[str]:
    lines = ["| section | case | dtype | peer | bnprop ms | peer ms | bnprop / peer "
             "| GEMM floor ms | bnprop / floor | peer / floor | measured GEMMs ms (fastest "
             "way) | bnprop / measured | PyTorch's GEMMs ms |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in out["comparisons"]:
        lines.append(f"| {c['section']} | {c['case']} | {c['dtype']} | {c['peer']} | "
                     f"{_ms(c['bnprop_s'])} | {_ms(c['peer_s'])} | {c['ratio']:.2f} | "
                     f"{_ms(c['gemm_floor_s'])} | {c['bnprop_floor_multiple']:.1f} | "
                     f"{c['peer_floor_multiple']:.1f} | {_measured(c)}")
    for u in out["unavailable"]:
        lines.append(f"| {u['section']} | {u['case']} | {u['dtype']} | {u['peer']} | | | "
                     f"n/a ({u['reason']}) | | | | | | |")
    return lines


def _job(out: dict[str, Any]) -> list[str]:
    j = out.get("train_job")
    if not j:
        return []
    sizes = "-".join(map(str, j["sizes"]))
    lines = ["", f"default train job ({sizes}, {j['optimizer']} lr {j['lr']}, batch "
             f"{j['batch_size']}, {j['dtype']}, test accuracy every {j['eval_every']} steps; "
             f"{j['data']} data; {j['steps']} steps a side in chunks of {j['chunk_steps']}, "
             f"interleaved; GEMM floor {j['gemm_floor_s'] * 1e3:.3f} ms a step):", "",
             "| side | steps/s | test accuracy | final loss | step / GEMM floor |",
             "|---|---:|---:|---:|---:|"]
    for name, s in j["sides"].items():
        acc = "-" if s["test_accuracy"] is None else f"{s['test_accuracy']:.4f}"
        lines.append(f"| {name} | {s['steps_per_s']:.0f} | {acc} | {s['final_loss']:.4f} | "
                     f"{s['gemm_floor_multiple']:.1f} |")
    if j.get("ratio") is not None:
        lines += ["", f"- bnprop / PyTorch steps per second: {j['ratio']:.2f}"]
    return lines


def _limits(out: dict[str, Any]) -> list[str]:
    lines = ["", "| limit | value |", "|---|---:|"]
    for k, v in out.get("limits", {}).items():
        if "bytes_per_s" in k:
            text = f"{v / 1e9:.2f} GB/s"
        elif "flops" in k:
            text = f"{v / 1e9:.1f} GFLOP/s"
        else:
            text = str(v)
        lines.append(f"| {k} | {text} |")
    return lines


#: OpenBLAS cores whose kernels use AVX-512.
AVX512_CORES = frozenset({"SkylakeX", "Cooperlake", "SapphireRapids"})


def _core(m: dict[str, Any]) -> str:
    """The OpenBLAS kernels of the run, and who chose them; where the environment chose
    kernels without AVX-512 on a CPU that has it, a hint that faster ones exist."""
    core, env = m.get("blas_core"), m.get("openblas_coretype")
    text = f"its {core} kernels" if core else "kernels unknown"
    if not env:
        return f"{text} (its own choice)" if core else text
    text = f"{text} (OPENBLAS_CORETYPE={env} in the environment"
    if core and core not in AVX512_CORES and m.get("avx512"):
        text += "; this CPU has AVX-512, which OpenBLAS's SkylakeX kernels use"
    return text + ")"


def table(out: dict[str, Any]) -> str:
    """The whole result as Markdown (what ``bnprop bench`` prints)."""
    m = out["machine"]
    peaks = ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s"
                      for k, v in out.get("gemm_peak_flops_per_s", {}).items())
    lines = [f"- threads: {out['threads']} (bnprop.threads.set_threads: row parts, BLAS 1 each; "
             f"torch.set_num_threads({out['threads']}); jax: {out['jax_threads']})",
             f"- machine: {m['cpu']}, {m['cores']} cores; load average at start "
             f"{m['load_average_start']}, at end {m.get('load_average_end')}",
             f"- BLAS: {m.get('blas', 'unknown')}, {_core(m)}",
             f"- GEMM peak of this run (floors use it): {peaks}"]
    if m.get("busy"):
        lines.append(f"- WARNING: load average {m['load_average_start'][0]} before the run: "
                     "other processes use "
                     "the cores. PyTorch's OpenMP threads lose most under contention (each "
                     "parallel op waits for a descheduled thread), so the ratios of this run "
                     "are not those of a quiet machine.")
    probes = m.get("two_core_speedup", [])
    redone = [p for p in probes if p.get("kept") is False]
    if redone:
        lines.append("- measured again, the two cores having run as one (a GEMM on 2 BLAS "
                     "threads against 1, before and after): " + ", ".join(
                         f"{p['before']} (attempt {p['attempt']}: x{p['speedup']}, "
                         f"x{p['speedup_after']})" for p in redone))
    shared = [p for p in probes if p.get("kept") is not False and not apart(p)]
    if shared:
        where = ", ".join(f"{p['before']} x{p['speedup']} before, x{p['speedup_after']} after"
                          if "speedup_after" in p else f"before {p['before']} x{p['speedup']}"
                          for p in shared)
        lines.append(f"- WARNING: the two cores ran as one during this run (a GEMM on 2 BLAS "
                     f"threads against 1: {where}; below x{CORES_APART}). A VM's host "
                     "can put its vCPUs on one physical core for minutes: every two-thread "
                     "side then slows down, bnprop's most, so those sections' ratios are "
                     "not those of two cores.")
    lines.append("")
    lines += _comparisons(out)
    lines += _job(out)
    lines += _limits(out)
    mem = out.get("memory", {})
    if mem:
        step = mem["train_step"]
        lines += ["", f"- memory, MLP.train_step (Ioffe, SGD, float32), {mem['steps']} steps "
                  f"after warm-up: growth {step['growth']} bytes, per-step peak "
                  f"{step['per_step_peak']} bytes; peak RSS "
                  f"{mem['peak_rss_bytes'] / 2**20:.0f} MiB"]
    lines.append(f"- first train step in this process: {out['first_step_s'] * 1e3:.1f} ms")
    for k, v in out.get("compile_s", {}).items():
        lines.append(f"- first call of {k}: {v:.1f} s")
    lines += ["", "| target | measured | limit | result | detail |", "|---|---:|---|---|---|"]
    busy = " (busy machine)" if m.get("busy") else ""
    for t in out.get("targets", []):
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        status = t["status"] + (busy if t["value"] is not None else "")
        lines.append(f"| {t['target']} | {value} | {t['limit']} | {status} | "
                     f"{t['detail']} |")
    lines += cnn.phase_lines(out)
    return "\n".join(lines)
