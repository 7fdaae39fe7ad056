"""The helper thread's loop compiled in a second process when the disk cache lacks it.

Numba compiles under one lock per process, so on a cold cache (a fresh install, or any
change to a kernel file: :mod:`bnprop.kernels._cache_stamp`) the helper's loop
(:func:`bnprop.kernels._helper_thread.helper_loop`, about 30 s) and the caller's own
compiled step (about 30 s) were compiled one after the other, all inside the first step.
Instead the helper thread runs ``python -m bnprop.kernels._warm CODE``, which compiles the
loop for the dtype ``CODE`` into the disk cache, and waits for it without holding the
lock or the GIL; the caller compiles its step meanwhile on the other core, and the
helper then loads its loop from the cache. Measured (2 cores, the default job from a
cold cache): the whole run 85.0 -> 64.7 s; README line 1 in a fresh clone, the job 80.0
-> 66.3 s; the same model bit for bit.

The second process is used only when it can help: the loop is not in the cache
(:func:`cold`: Numba's own index, for the exact argument types), the cache folder is
writable, and the process is not one rank of an MPI job (every rank would start one).
Whatever happens to it (an error, a kill, a cache it could not write), the loop is then
called as before, which loads it from the cache or compiles it here: the second process
can save time, never change a result. One still running when this process exits is
stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

#: Environment variables that say this process is one rank of an MPI job.
MPI_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE",
                 "MPI_LOCALRANKID")
#: Longest wait for the second process, seconds (then it is stopped).
TIMEOUT_SECONDS = 900.0

_lock = threading.Lock()
_running: subprocess.Popen[bytes] | None = None


def _after_fork_in_child() -> None:
    """A forked child neither stops its parent's second process at its exit nor finds
    the lock held by a thread it does not have."""
    global _lock, _running
    _lock, _running = threading.Lock(), None


os.register_at_fork(after_in_child=_after_fork_in_child)


def cold(dispatcher: Any, args: tuple[Any, ...]) -> bool:
    """Whether ``dispatcher`` (a cached Numba function) has neither compiled nor cached
    code for ``args``' types and could write its cache; False when unsure (Numba's
    internals differ: then nothing is done apart)."""
    try:
        from numba import typeof

        sig = tuple(typeof(a) for a in args)
        if sig in dispatcher.overloads:  # compiled or loaded in this process already
            return False
        cache = dispatcher._cache
        if not cache._enabled:
            return False
        cache._impl.locator.ensure_cache_path()  # raises when it cannot write there
        key = cache._index_key(sig, dispatcher.targetctx.codegen())
        return key not in cache._cache_file._load_index()
    except Exception:  # any internal difference: compile here, as before
        return False


def in_mpi_job() -> bool:
    """Whether the environment says this process is one rank of an MPI job."""
    return any(name in os.environ for name in MPI_VARIABLES)


def compile_apart(code: int) -> bool:
    """Run ``python -m bnprop.kernels._warm code`` and wait for it; whether it exited
    cleanly. Stopped after :data:`TIMEOUT_SECONDS` or when this process exits."""
    global _running
    with _lock:
        try:
            _running = subprocess.Popen(
                [sys.executable, "-m", "bnprop.kernels._warm", str(int(code))],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        except OSError:
            return False
        child = _running
    try:
        return child.wait(timeout=TIMEOUT_SECONDS) == 0
    except subprocess.TimeoutExpired:
        child.kill()
        return False
    finally:
        with _lock:
            _running = None


def stop() -> None:
    """Stop the second process if one is running (at exit)."""
    with _lock:
        if _running is not None and _running.poll() is None:
            _running.kill()


def _main(argv: list[str]) -> int:
    """Compile the helper's loop for the dtype code ``argv[0]`` into the disk cache."""
    from numba import typeof

    from bnprop.kernels._cblas import F32, F64
    from bnprop.kernels._helper_thread import helper_loop, loop_args

    codes = {str(F32): F32, str(F64): F64}
    if len(argv) != 1 or argv[0] not in codes:
        print(f"python -m bnprop.kernels._warm: expected one dtype code, {F32} (float32) or "
              f"{F64} (float64), got {' '.join(argv) or 'none'}.", file=sys.stderr)
        return 2
    args = loop_args(codes[argv[0]])
    helper_loop.compile(tuple(typeof(a) for a in args))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
