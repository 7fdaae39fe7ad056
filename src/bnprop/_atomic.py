"""The one way bnprop writes a file: a temporary file beside it, fsync, rename.

``os.replace`` is atomic on POSIX, so a crash or ``kill -9`` at any moment leaves either
the previous complete file or the new complete file at ``path``, never a torn one, and
no temporary file behind on an error. Standard library only: every layer may use it.

Several files that must agree with one another (a run's model, checkpoint, metrics and
summary) go through :func:`atomic_files`: every one is written and fsync'ed to its
temporary file first, and only when all of them are complete are they renamed into place.
A failed write (a full disk) renames none of them, so the previous set stays whole.

A failed write raises ``OSError`` whose ``filename`` is the file the user asked for, never
the temporary file (``model.npz: No space left on device``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from bnprop._validate import InputError

#: Prefix and suffix of the temporary files: ``.NAME.<random>.tmp`` beside ``NAME``.
TMP_SUFFIX = ".tmp"


def temp_prefix(name: str) -> str:
    """The prefix of the temporary files written for a file called ``name``."""
    return f".{name}."


def _kind(mode: int) -> str:
    """What a directory entry that is not a regular file is, for a message."""
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "a special file"


def check_target(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`~pathlib.Path` if a file may be written there, else one line.

    The folder must exist, and whatever is already at ``path`` must be a regular file:
    ``os.replace`` would put the new file in place of a folder, FIFO, device, socket or
    symbolic link itself (as root, ``-o /dev/null`` would replace ``/dev/null``), so those
    are refused, naming the path and what it is. Every writer here goes through this.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"{target}: the folder {target.parent} does not exist.")
    try:
        mode = os.lstat(target).st_mode  # lstat: a symbolic link is seen as one
    except FileNotFoundError:
        return target  # a new file
    if stat.S_ISDIR(mode):
        raise InputError(f"{target}: is a folder; expected the name of a file to write.")
    if not stat.S_ISREG(mode):
        what, why = _kind(mode), "refusing to replace it"
        if stat.S_ISLNK(mode):
            what += f" (to {os.readlink(target)})"
            why = "writing would replace the link itself, not follow it"
        raise InputError(f"{target}: is {what}, not a regular file; {why}. Give the path of "
                         "a regular file (or a new name) to write.")
    return target


def _naming(exc: OSError, target: Path) -> OSError:
    """``exc`` about ``target`` (the user's file) instead of a temporary file."""
    return OSError(exc.errno, exc.strerror or str(exc), str(target))


Stage = Callable[[str | os.PathLike[str]], contextlib.AbstractContextManager[BinaryIO]]


@contextlib.contextmanager
def atomic_files() -> Iterator[Stage]:
    """Write several files all or nothing: ``with atomic_files() as stage:``.

    Inside the block, ``with stage(path) as f:`` writes ``path``'s new content to a
    temporary file beside it (fsync'ed when that inner block ends). When the outer block
    completes, every staged file is renamed into place, in the order staged. If anything
    raises before that, every temporary file is removed and no ``path`` is touched.
    """
    staged: list[tuple[str, Path]] = []

    @contextlib.contextmanager
    def stage(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
        target = check_target(path)
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target.name),
                                       suffix=TMP_SUFFIX)
        except OSError as exc:
            raise _naming(exc, target) from None
        staged.append((tmp, target))
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would make the file private
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise _naming(exc, target) from None

    try:
        yield stage
        for _, target in staged:  # again, just before: something may have appeared there
            check_target(target)
        for tmp, target in staged:
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise _naming(exc, target) from None
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    for folder in dict.fromkeys(target.parent for _, target in staged):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the renames themselves durable
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it to ``path``.

    If the ``with`` body raises, the temporary file is removed and ``path`` is untouched.
    A missing destination folder, or a ``path`` that is a folder or anything else but a
    regular file (:func:`check_target`), is an :class:`InputError` naming it.
    """
    with atomic_files() as stage, stage(path) as f:
        yield f
