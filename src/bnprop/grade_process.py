"""Run a learner's file in a child process with a time limit, and read back what it returned.

The parent writes the cases to ``cases.npz`` in a private temporary folder and starts
``python -P _grade_child.py FILE cases.npz FOLDER`` in a new session, its output going to
a file. When the child does not finish within ``timeout`` seconds, its whole process group
is killed. What the child sends back is data only: ``result.json`` (read with :mod:`json`)
and ``arrays.npz`` (read with ``allow_pickle=False``), each checked at this boundary:
known keys, one float64 array per returned gradient, records of the expected form.
Anything else, or no result at all, is a :class:`~bnprop._grade_child.LearnerError` whose
message is one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bnprop._grade_child import ARGS, GRADIENT_KEYS, LearnerError, one_line
from bnprop.grade_cases import Case
from bnprop.interrupt import Interrupted

CHILD = Path(__file__).with_name("_grade_child.py")
#: The largest result.json read back (bytes); the honest one is a few kilobytes.
MAX_RESULT_BYTES = 1 << 20


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def _last_line(path: Path) -> str:
    """The last non-empty line the child wrote (its error message, usually)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        tail = f.read().decode("utf-8", "replace").strip().splitlines()
    return one_line(tail[-1]) if tail else ""


def _write_cases(path: Path, cases: tuple[Case, ...]) -> None:
    arrays: dict[str, Any] = {"n_cases": np.array(len(cases))}
    for k, case in enumerate(cases):
        for a in ARGS:
            arrays[f"c{k}_{a}"] = np.asarray(getattr(case, a), dtype=np.float64)
    np.savez(path, **arrays)


def run_file(path: str | os.PathLike[str], cases: tuple[Case, ...], timeout: float
             ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Run ``gradients`` of the file at ``path`` on ``cases`` in a child process.

    Returns
    -------
    records : list of dict
        One per case: ``raised``, ``returned``, ``mapping``, ``keys``, ``bad``, ``ignored``.
    arrays : dict of str to ndarray
        ``c<k>_<key>``: the gradient ``key`` returned on case ``k``, float64.

    Raises
    ------
    LearnerError
        The file could not be graded (syntax or import error, no ``gradients``, time limit,
        crash); the message is one line, without the file's name.
    """
    with tempfile.TemporaryDirectory(prefix="bnprop-grade-") as tmp:
        folder = Path(tmp)
        _write_cases(folder / "cases.npz", cases)
        log = folder / "output.txt"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-P", str(CHILD), str(Path(path).resolve()),
                 str(folder / "cases.npz"), str(folder)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own process group: killed as a whole
            try:
                with _stop_on_signals():
                    code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise LearnerError(
                    f"still running after {timeout:g} s (an endless loop?), so it was stopped; "
                    "a slower machine may need --timeout SECONDS.") from None
            finally:
                _kill_group(proc)  # whatever it left running
        result_path = folder / "result.json"
        if code != 0 or not result_path.is_file():
            if code < 0:
                raise LearnerError(f"the process running it was killed by "
                                   f"{_signal_name(-code)} (a crash, or out of memory).")
            last = _last_line(log)
            early = " before sending back any result (os._exit?)" if code == 0 else ""
            raise LearnerError(f"the process running it exited with status {code}{early}"
                               f"{': ' + last if last else ''}.")
        return _read_results(folder, len(cases))


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """While the child runs, SIGTERM and SIGHUP raise :class:`~bnprop.interrupt.Interrupted`
    (main thread only), so the cleanup runs however the grading is stopped: the child runs
    in its own session, and a killed parent would leave it running (an endless loop at
    100% CPU) and its folder behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Interrupted(f"{signal.Signals(signum).name}: grading stopped, the learner's "
                          "process killed", signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child's process group (the child and anything it started), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _malformed(why: str) -> LearnerError:
    return LearnerError(f"the grading process sent back malformed results ({why}); does the "
                        "file write into bnprop's temporary folder?")


def _read_results(folder: Path, n_cases: int
                  ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Read and check ``result.json`` and ``arrays.npz`` (never unpickled)."""
    result_path = folder / "result.json"
    if result_path.stat().st_size > MAX_RESULT_BYTES:
        raise _malformed("result.json is too large")
    try:
        result = json.loads(result_path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise _malformed("result.json is not JSON") from None
    if not isinstance(result, dict) or not isinstance(result.get("cases"), list):
        raise _malformed("no list of cases")
    if result.get("error") is not None:
        raise LearnerError(one_line(str(result["error"])))
    records = result["cases"]
    if len(records) != n_cases or not all(_record_ok(r) for r in records):
        raise _malformed("unexpected case records")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(folder / "arrays.npz", allow_pickle=False) as f:
            for k, rec in enumerate(records):
                for key in rec["keys"]:
                    if key in rec["bad"]:
                        continue
                    arr = f[f"c{k}_{key}"]
                    if arr.dtype != np.float64:
                        raise _malformed(f"{key} has dtype {arr.dtype}")
                    arrays[f"c{k}_{key}"] = arr
    except (OSError, KeyError, ValueError) as exc:
        raise _malformed(one_line(str(exc), 80)) from None
    return records, arrays


def _record_ok(rec: Any) -> bool:
    if not isinstance(rec, dict):
        return False
    keys, bad, ignored = rec.get("keys"), rec.get("bad"), rec.get("ignored")
    return (isinstance(rec.get("raised"), str | None)
            and isinstance(rec.get("returned"), str | None) and isinstance(rec.get("mapping"), bool)
            and isinstance(keys, list) and all(k in GRADIENT_KEYS for k in keys)
            and isinstance(bad, dict) and all(k in GRADIENT_KEYS and isinstance(v, str)
                                              for k, v in bad.items())
            and isinstance(ignored, list) and all(isinstance(i, str) for i in ignored))
