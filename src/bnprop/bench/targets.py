"""The issue's speed targets, each read off one run's result and judged MET or MISSED.

Every target is a ratio of two numbers of the same run (or a byte count), so it does not
depend on how fast the machine is. A target whose numbers are missing (a peer not
installed, a section not run) is ``NOT RUN``, never met.
"""

from __future__ import annotations

from typing import Any

#: The default train job's accuracy counts as "the same" within this many (absolute).
SAME_ACCURACY = 0.01


def _comparison(out: dict[str, Any], section: str, case_start: str, dtype: str,
                peer: str) -> dict[str, Any] | None:
    for c in out["comparisons"]:
        if (c["section"], c["dtype"], c["peer"]) == (section, dtype, peer) \
                and c["case"].startswith(case_start):
            return c
    return None


def _ratio_row(out: dict[str, Any], tid: str, text: str, section: str, case_start: str,
               dtype: str, peer: str, limit: float) -> dict[str, Any]:
    c = _comparison(out, section, case_start, dtype, peer)
    detail = "" if c is None else (f"{c['bnprop_s'] * 1e3:.3g} ms against "
                                   f"{c['peer_s'] * 1e3:.3g} ms ({c['case']})")
    return _row(tid, text, None if c is None else c["ratio"], "<=", limit, detail)


def _row(tid: str, text: str, value: float | None, op: str, limit: float, detail: str,
         extra_ok: bool = True) -> dict[str, Any]:
    if value is None:
        met = None
    else:
        met = bool((value <= limit if op == "<=" else value >= limit) and extra_ok)
    status = "NOT RUN" if met is None else ("MET" if met else "MISSED")
    return {"id": tid, "target": text, "value": value, "limit": f"{op} {limit}", "met": met,
            "status": status, "detail": detail}


def _job_row(out: dict[str, Any]) -> dict[str, Any]:
    text = ("default train job (Adam, test accuracy every eval_every steps): steps/s / "
            f"PyTorch eager script, at the same accuracy (within {SAME_ACCURACY})")
    job = out.get("train_job") or {}
    sides = job.get("sides", {})
    if "bnprop" not in sides or "torch eager" not in sides:
        return _row("train_job_vs_torch", text, None, ">=", 3.0, "")
    ours, peer = sides["bnprop"], sides["torch eager"]
    acc, acc_peer = ours["test_accuracy"], peer["test_accuracy"]
    same = acc is not None and acc_peer is not None and abs(acc - acc_peer) <= SAME_ACCURACY
    detail = (f"{ours['steps_per_s']:.0f} against {peer['steps_per_s']:.0f} steps/s; test "
              f"accuracy {acc} against {acc_peer} after {job['steps']} steps ({job['data']})")
    return _row("train_job_vs_torch", text, job["ratio"], ">=", 3.0, detail, extra_ok=same)


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target as ``{"id", "target", "value", "limit", "met", "status", "detail"}``."""
    rows = [
        _ratio_row(out, "ioffe_step_vs_jax", "Ioffe step (SGD) / jax.jit (float32)", "step",
                   "ioffe", "float32", "jax jit", 0.5),
        _ratio_row(out, "ioffe_step_vs_torch", "Ioffe step (SGD) / PyTorch eager (float32)",
                   "step", "ioffe", "float32", "torch eager", 0.3),
        _job_row(out),
        _ratio_row(out, "layer_65536x16x256_vs_torch",
                   "layer_forward + layer_backward 65536 x 16 -> 256 / PyTorch eager "
                   "(float32)", "layer", "65536 x 16 -> 256", "float32", "torch eager", 0.25),
        _ratio_row(out, "layer_60x100x100_vs_torch",
                   "layer_forward + layer_backward 60 x 100 -> 100 / PyTorch eager (float32)",
                   "layer", "60 x 100 -> 100", "float32", "torch eager", 0.5),
        _ratio_row(out, "wide_step_vs_torch", "wide step (SGD) / PyTorch eager (float32)",
                   "step", "wide", "float32", "torch eager", 0.85),
        _ratio_row(out, "cnn_step_vs_torch", "CNN step, batch 128 / PyTorch eager (float32)",
                   "step", "cnn", "float32", "torch eager", 0.8),
    ]
    f64 = [c for c in out["comparisons"]
           if c["dtype"] == "float64" and c["peer"] == "torch eager"]
    worst = max(f64, key=lambda c: c["ratio"]) if f64 else None
    rows.append(_row("float64_vs_torch", "worst float64 case / PyTorch eager float64",
                     None if worst is None else worst["ratio"], "<=", 1.0,
                     "" if worst is None else f"{worst['section']} {worst['case']}"))
    growth = out.get("memory", {}).get("train_step", {}).get("growth")
    rows.append(_row("memory_growth", "allocated-memory growth after warm-up, bytes "
                     "(< 1 KiB over all steps: nothing kept per step)", growth, "<=", 1023,
                     "" if growth is None else f"over {out['memory']['steps']} steps"))
    return rows
