"""The folder of a training run: held by one run at a time, checked before the first step.

:meth:`RunFolder.claim`, before the run reads data or builds its network:

- creates the folder if missing (remembering which folders it created);
- takes an OS lock, ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``DIR/.bnprop.lock``, held for
  the whole run. The OS releases it when the process ends, however it ends (``kill -9``
  too), so a lock is never stale. The file holds the owner's PID, which a second run,
  refused, names. The owner removes the file when it releases the lock; a run that locked
  a file just removed (its inode is no longer the path's) tries again;
- checks that a new file can be created in the folder (a probe file, removed), and that
  each run file there is a regular file (a folder or a FIFO in its place would only fail
  at the first save, after the training it was to keep; ``--overwrite`` would have removed
  the other files first);
- removes temporary files that writers killed mid-write left behind (``.NAME.*.tmp`` of
  the run's files: under the lock, no live writer owns them).

:meth:`RunFolder.release` removes the lock file and unlocks; a folder the claim created
that is then empty (a refused run) is removed too, so no refused run leaves a folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

from bnprop._atomic import TMP_SUFFIX, check_target, temp_prefix
from bnprop._validate import InputError
from bnprop.checkpoint import RUN_FILES

#: The lock file inside a run folder.
LOCK_FILE = ".bnprop.lock"
_PROBE_PREFIX = ".bnprop-write-check."


class RunFolder:
    """The run folder ``path``, claimed by this process (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._created: list[Path] = []

    def claim(self) -> RunFolder:
        """Create, lock and check the folder; one line naming it if any step fails."""
        self._create()
        try:
            self._lock()
            self._probe()
            for name in RUN_FILES:  # a folder or FIFO there would only fail at the first save
                check_target(self.path / name)
        except BaseException:
            self.release()
            raise
        return self

    def _create(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path}: is a file, expected a run folder (--out).")
        missing = []
        folder = self.path
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue  # made meanwhile by someone else: not ours to remove
            except OSError as exc:
                self.release()
                raise InputError(
                    f"{self.path}: cannot create the run folder ({exc.strerror}).") from None
            self._created.append(folder)

    def _lock(self) -> None:
        lock = self.path / LOCK_FILE
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise InputError(
                    f"{self.path}: the run folder is not writable ({exc.strerror}).") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
                os.close(fd)
                raise InputError(
                    f"{self.path}: in use by another bnprop run (PID {holder or 'unknown'}); "
                    "wait for it to end or choose another --out."
                ) from None
            try:
                current = os.stat(lock).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)  # the previous owner removed this file as we locked it: again
        self._fd = fd
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def _probe(self) -> None:
        """Create and remove a file: an unwritable folder is found before the first step."""
        try:
            fd, probe = tempfile.mkstemp(dir=self.path, prefix=_PROBE_PREFIX,
                                         suffix=TMP_SUFFIX)
        except OSError as exc:
            raise InputError(
                f"{self.path}: the run folder is not writable ({exc.strerror}).") from None
        os.close(fd)
        os.unlink(probe)

    def run_files(self) -> list[str]:
        """The run files (model.npz, checkpoint.npz, ...) the folder holds."""
        return [name for name in RUN_FILES if (self.path / name).exists()]

    def remove_run_files(self) -> None:
        """Remove the run files (a fresh run with ``overwrite``)."""
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()

    def remove_stale_temps(self) -> list[Path]:
        """Remove the temporary files killed writers left; return them. Needs the lock."""
        if self._fd is None:
            raise RuntimeError("remove_stale_temps: the folder is not locked")
        prefixes = (*(temp_prefix(name) for name in RUN_FILES), _PROBE_PREFIX)
        removed = []
        for entry in self.path.iterdir():
            if entry.name.startswith(prefixes) and entry.name.endswith(TMP_SUFFIX) \
                    and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed.append(entry)
        return removed

    def release(self) -> None:
        """Remove the lock file and unlock; remove the folders the claim created if empty."""
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.path / LOCK_FILE).unlink()  # still locked: nobody else's file
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        self._created = []
