"""The issue's speed targets, each read off one run's result and judged MET or MISSED.

Every target is a ratio of two numbers of the same run (or a byte count), so it does not
depend on how fast the machine is. A target whose numbers are missing (a peer not
installed, a section not run) is ``NOT RUN``, never met.

A target not met is ``BLOCKED (floor)`` when the case's measured GEMM floor alone
(:mod:`bnprop.bench.shape_floor`: its GEMMs as bnprop computes them, the fastest of 1 BLAS
thread, n BLAS threads, n row parts and the compiled step's helper thread) already takes
longer than the target allows: for ``bnprop_s / peer_s <= L``, when
``measured_gemm_s > L peer_s``; for the train job's ``bnprop steps/s / peer steps/s >=
L``, when one step's floor ``> peer_step_s / L`` (the
Ioffe step's floor at the job's sizes and batch: Adam adds no GEMM). Such a row keeps
``met`` false and carries the floor in ``floor_s`` (every row has the key; null when the
row has no measured floor). A row that is met stays ``MET``.
"""

from __future__ import annotations

from typing import Any

#: The default train job's accuracy counts as "the same" within this many (absolute).
SAME_ACCURACY = 0.01
BLOCKED = "BLOCKED (floor)"


def _comparison(out: dict[str, Any], section: str, case_start: str, dtype: str,
                peer: str | None) -> dict[str, Any] | None:
    """The first comparison of the section, dtype and peer (any peer if ``None``) whose
    case starts with ``case_start``."""
    for c in out["comparisons"]:
        if (c["section"], c["dtype"]) == (section, dtype) and peer in (None, c["peer"]) \
                and c["case"].startswith(case_start):
            return c
    return None


def _threads_text(out: dict[str, Any]) -> str:
    n = out.get("threads", 1)
    return "on 1 BLAS thread" if n == 1 else (f"fastest of 1 BLAS thread, {n} BLAS threads, "
                                             f"{n} row parts and the helper thread")


def _blocked(out: dict[str, Any], what: str, floor_s: float | None, allowance: str,
             allowed_s: float) -> tuple[float | None, str | None]:
    """``(floor_s, detail)``; the detail only when the floor exceeds ``allowed_s``."""
    if floor_s is None or floor_s <= allowed_s:
        return floor_s, None
    return floor_s, (f"{what} GEMMs alone take {floor_s * 1e3:.3g} ms as bnprop computes them "
                     f"({_threads_text(out)}); the target allows {allowance} = "
                     f"{allowed_s * 1e3:.3g} ms")


def _case_floor(out: dict[str, Any], c: dict[str, Any],
                limit: float) -> tuple[float | None, str | None]:
    """A ``<=`` ratio target on comparison ``c``: blocked when ``measured_gemm_s > limit
    peer_s``."""
    what = "the step's" if c["section"] == "step" else "the layer's"
    return _blocked(out, what, c.get("measured_gemm_s"),
                    f"{limit} x {c['peer_s'] * 1e3:.3g} ms", limit * c["peer_s"])


def _ratio_row(out: dict[str, Any], tid: str, text: str, section: str, case_start: str,
               dtype: str, peer: str, limit: float) -> dict[str, Any]:
    c = _comparison(out, section, case_start, dtype, peer)
    if c is None:
        return _row(tid, text, None, "<=", limit, "")
    detail = (f"{c['bnprop_s'] * 1e3:.3g} ms against {c['peer_s'] * 1e3:.3g} ms "
              f"({c['case']}){_spread(c)}")
    return _row(tid, text, c["ratio"], "<=", limit, detail, floor=_case_floor(out, c, limit))


def _spread(c: dict[str, Any]) -> str:
    """The lowest and highest ratio of one round (``ratio_rounds``), where recorded."""
    spread = c.get("ratio_rounds")
    return "" if not spread else f"; one round's ratio {spread[0]:.3g}-{spread[1]:.3g}"


def _row(tid: str, text: str, value: float | None, op: str, limit: float, detail: str,
         extra_ok: bool = True,
         floor: tuple[float | None, str | None] = (None, None)) -> dict[str, Any]:
    """A target row; ``floor = (floor_s, why)``: ``why`` is set when the floor alone
    exceeds what the target allows, and a speed target missed for that reason (and for
    no other: ``extra_ok``) is ``BLOCKED (floor)``."""
    floor_s, why = floor
    if value is None:
        met = None
    else:
        met = bool((value <= limit if op == "<=" else value >= limit) and extra_ok)
    if met is None:
        status = "NOT RUN"
    elif met:
        status = "MET"
    elif why is not None and extra_ok:
        status, detail = BLOCKED, f"{detail}; {why}"
    else:
        status = "MISSED"
    return {"id": tid, "target": text, "value": value, "limit": f"{op} {limit}", "met": met,
            "status": status, "detail": detail, "floor_s": floor_s}


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
    return _row("train_job_vs_torch", text, job["ratio"], ">=", 3.0, detail, extra_ok=same,
                floor=_job_floor(out, job, 3.0))


def _job_floor(out: dict[str, Any], job: dict[str, Any],
               limit: float) -> tuple[float | None, str | None]:
    """The job's step is the Ioffe step at the job's sizes and batch (Adam adds no GEMM):
    its measured floor against ``peer_step_s / limit``."""
    case = f"ioffe {'-'.join(map(str, job['sizes']))}, batch {job['batch_size']}"
    c = _comparison(out, "step", case, job["dtype"], None)
    peer_step_s = 1.0 / job["sides"]["torch eager"]["steps_per_s"]
    return _blocked(out, "one step's", None if c is None else c.get("measured_gemm_s"),
                    f"{peer_step_s * 1e3:.3g} ms / {limit}", peer_step_s / limit)


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target as ``{"id", "target", "value", "limit", "met", "status", "detail",
    "floor_s"}``."""
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
    rows.append(_float64_row(out))
    growth = out.get("memory", {}).get("train_step", {}).get("growth")
    rows.append(_row("memory_growth", "allocated-memory growth after warm-up, bytes "
                     "(< 1 KiB over all steps: nothing kept per step)", growth, "<=", 1023,
                     "" if growth is None else f"over {out['memory']['steps']} steps"))
    return rows


def _float64_row(out: dict[str, Any]) -> dict[str, Any]:
    """The worst float64 case; blocked only when every float64 case above the limit is."""
    text, limit = "worst float64 case / PyTorch eager float64", 1.0
    f64 = [c for c in out["comparisons"]
           if c["dtype"] == "float64" and c["peer"] == "torch eager"]
    if not f64:
        return _row("float64_vs_torch", text, None, "<=", limit, "")
    worst = max(f64, key=lambda c: c["ratio"])
    floor = _case_floor(out, worst, limit)
    missed = [c for c in f64 if c["ratio"] > limit]
    if not all(_case_floor(out, c, limit)[1] for c in missed):
        floor = (floor[0], None)  # another case misses it without a floor to blame
    return _row("float64_vs_torch", text, worst["ratio"], "<=", limit,
                f"{worst['section']} {worst['case']}{_gemms_beside(worst)}{_spread(worst)}",
                floor=floor)


def _gemms_beside(c: dict[str, Any]) -> str:
    """Both sides' whole time beside their GEMMs alone, each through its own BLAS."""
    if c.get("measured_gemm_s") is None or c.get("peer_gemm_s") is None:
        return ""
    return (f": {c['bnprop_s'] * 1e3:.3g} ms, of which GEMMs alone {c['measured_gemm_s'] * 1e3:.3g}"
            f" ms as bnprop computes them; PyTorch {c['peer_s'] * 1e3:.3g} ms, of which GEMMs "
            f"alone {c['peer_gemm_s'] * 1e3:.3g} ms through its own")
