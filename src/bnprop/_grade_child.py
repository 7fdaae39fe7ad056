"""Run a learner's ``gradients(O, W, gamma, beta, dY, eps)``: the child side of ``bnprop grade``.

Run as a script, ``python -P _grade_child.py LEARNER.py CASES.npz OUT_DIR``, in a process
of its own, so that nothing the learner's file does (an endless loop, a crash, ``sys.exit``)
reaches bnprop. It imports NumPy and the standard library only (not bnprop), reads the cases
with ``allow_pickle=False`` and writes two plain files into OUT_DIR:

* ``result.json``: ``{"error": str | None, "cases": [per-case record, ...]}``;
* ``arrays.npz``: each returned gradient as float64, named ``c<case>_<key>``.

A per-case record is ``{"raised": str | None, "returned": type name, "mapping": bool,
"keys": [...], "bad": {key: why}, "ignored": [...]}``. :func:`collect` is also what
``bnprop.grade(fn)`` uses in-process on a callable.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

GRADIENT_KEYS = ("dA", "dgamma", "dbeta", "dW", "dO")
ARGS = ("O", "W", "gamma", "beta", "dY", "eps")
SIGNATURE = "gradients(O, W, gamma, beta, dY, eps)"
#: The largest file the child may write: an endless print loop fills no disk.
MAX_FILE_BYTES = 64 << 20


class LearnerError(Exception):
    """The learner's file cannot be graded at all; the message is one line."""


def one_line(text: str, limit: int = 300) -> str:
    """Collapse a message onto one line of at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(exc: BaseException, origin: str | None) -> str:
    """``" (line N)"`` of the last traceback frame in the learner's file, if any."""
    if origin is None:
        return ""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__)
             if os.path.realpath(f.filename) == os.path.realpath(origin)]
    return f" (line {lines[-1]})" if lines else ""


def describe(exc: BaseException, origin: str | None) -> str:
    """``"ValueError: message (line 12)"``."""
    msg = one_line(str(exc))
    return f"{type(exc).__name__}{': ' + msg if msg else ''}{_where(exc, origin)}"


def load(path: str) -> Callable[..., Any]:
    """Import the learner's file and return its ``gradients``; :class:`LearnerError` if not."""
    sys.path.insert(0, str(Path(path).resolve().parent))  # its own helper modules import
    spec = importlib.util.spec_from_file_location("bnprop_learner", path)
    if spec is None or spec.loader is None:
        raise LearnerError("cannot be loaded as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bnprop_learner"] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:  # in this file, or in one it imports or compiles
        where = ("" if exc.filename is None or os.path.realpath(exc.filename)
                 == os.path.realpath(path) else f"{exc.filename}: ")
        line = "" if exc.lineno is None else f"line {exc.lineno}: "
        raise LearnerError(f"{where}{line}syntax error: {one_line(exc.msg)}"
                           f"{_where(exc, path)}.") from None
    except ImportError as exc:
        raise LearnerError(f"import failed{_where(exc, path)}: {one_line(str(exc))}.") from None
    except BaseException as exc:  # SystemExit too: the learner's module ends here, not us
        raise LearnerError(f"raised {describe(exc, path)} while being imported.") from None
    fn = getattr(module, "gradients", None)
    if not callable(fn):
        raise LearnerError(f"defines no function {SIGNATURE}.")
    check_signature(fn)
    return fn


def check_signature(fn: Callable[..., Any]) -> None:
    """The function must accept the six positional arguments."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or C function: calling it will tell
    try:
        sig.bind(*ARGS)
    except TypeError:
        raise LearnerError(f"gradients must accept {SIGNATURE[9:]}; its signature is "
                           f"{sig}.") from None


#: Names of returned keys that are not gradients, kept to report what was returned.
MAX_IGNORED = 20


def _as_array(value: Any) -> np.ndarray | str:
    """The returned value as float64, or why it is not an array of real numbers."""
    if hasattr(value, "detach") and callable(value.detach):  # a torch tensor
        try:
            value = value.detach().cpu().numpy()
        except Exception as exc:
            return f"a {type(value).__name__} that cannot be converted ({one_line(str(exc))})"
    try:
        arr = np.asarray(value)
    except Exception as exc:
        return f"a {type(value).__name__} that is not an array ({one_line(str(exc))})"
    if arr.dtype.kind not in "biuf":
        return f"a {type(value).__name__} of dtype {arr.dtype}, not an array of real numbers"
    return np.array(arr, dtype=np.float64)


def collect(fn: Callable[..., Any], cases: list[dict[str, Any]], origin: str | None,
            isolated: bool = False) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Call ``fn`` on each case; per-case records and the arrays ``c<k>_<key>``.
    ``isolated``: this is the child process (its own session), where a KeyboardInterrupt
    can only be the learner's own and is reported as raised.

    Each call gets fresh copies of the case's arrays, so a learner that writes into its
    inputs changes nothing for the next case or the grader.
    """
    records: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    for k, case in enumerate(cases):
        rec: dict[str, Any] = {"raised": None, "returned": None, "mapping": False,
                               "keys": [], "bad": {}, "ignored": []}
        records.append(rec)
        args = [np.array(case[a], dtype=np.float64) for a in ARGS[:5]] + [float(case["eps"])]
        try:
            out = fn(*args)
        except KeyboardInterrupt as exc:  # in the caller's process: its Ctrl-C stops grading
            if not isolated:
                raise
            rec["raised"] = describe(exc, origin)  # the learner's (no terminal reaches it)
            continue
        except BaseException as exc:
            rec["raised"] = describe(exc, origin)
            continue
        rec["returned"] = type(out).__name__
        rec["mapping"] = isinstance(out, Mapping)
        if not rec["mapping"]:
            continue
        m, n_in, n_out = args[0].shape[0], args[1].shape[1], args[1].shape[0]
        sizes = {"dA": m * n_out, "dgamma": n_out, "dbeta": n_out, "dW": n_out * n_in,
                 "dO": m * n_in}
        for key, value in out.items():
            if key not in GRADIENT_KEYS:
                if len(rec["ignored"]) < MAX_IGNORED:  # names enough to say what it was
                    rec["ignored"].append(one_line(repr(key), 40))
                continue
            arr = _as_array(value)
            if not isinstance(arr, str) and arr.size > 4 * sizes[key]:  # not sent back whole
                arr = (f"an array of shape {arr.shape}, {arr.size} entries where "
                       f"{sizes[key]} are expected")
            if isinstance(arr, str):
                rec["bad"][key] = arr
            else:
                arrays[f"c{k}_{key}"] = arr
            rec["keys"].append(key)
    return records, arrays


def read_cases(path: str) -> list[dict[str, Any]]:
    """The cases written by the parent: ``c<k>_<arg>`` arrays, ``n_cases``."""
    with np.load(path, allow_pickle=False) as f:
        n = int(f["n_cases"])
        return [{a: f[f"c{k}_{a}"] for a in ARGS} for k in range(n)]


def main(argv: list[str]) -> None:
    """``LEARNER.py CASES.npz OUT_DIR``: write ``result.json`` (and ``arrays.npz``)."""
    learner, cases_path, out_dir = argv
    out = Path(out_dir)
    import resource  # POSIX: no file this process writes (its output included) exceeds this

    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
    result: dict[str, Any] = {"error": None, "cases": []}
    try:
        fn = load(learner)
    except LearnerError as exc:
        result["error"] = str(exc)
    else:
        result["cases"], arrays = collect(fn, read_cases(cases_path), learner, isolated=True)
        np.savez(out / "arrays.tmp.npz", **arrays)
        os.replace(out / "arrays.tmp.npz", out / "arrays.npz")
    (out / "result.tmp.json").write_text(json.dumps(result))
    os.replace(out / "result.tmp.json", out / "result.json")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # threads the learner started do not keep this process alive


if __name__ == "__main__":
    main(sys.argv[1:])
