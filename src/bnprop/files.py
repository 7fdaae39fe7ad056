"""Files users keep: written atomically, read without unpickling.

Every write goes through :func:`bnprop._atomic.atomic_writer` (temporary file, fsync,
rename): a crash or ``kill -9`` at any moment leaves either the old complete file or the
new one. Arrays are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from bnprop._atomic import atomic_writer
from bnprop._validate import InputError


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``."""
    with atomic_writer(path) as f:
        write(f)
    return Path(path)


def npz_writer(arrays: Mapping[str, np.ndarray]) -> Callable[[IO[bytes]], None]:
    """A function writing ``arrays`` as an uncompressed ``.npz`` to a file, nothing pickled."""
    clean = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in clean.items():
        if v.dtype == object:
            raise InputError(f"{k}: object arrays cannot be saved without pickling.")
    return lambda f: np.savez(f, **clean)


def save_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` to an uncompressed ``.npz`` at ``path``, atomically, nothing pickled."""
    return atomic_write(path, npz_writer(arrays))


def check_regular_file(path: Path, expected: str) -> None:
    """A missing path, a folder, or anything but a regular file (a FIFO, a device, which
    reading could block on or never end) is refused in one line."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: no such file.") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror}).") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{path}: is a folder, expected {expected}.")
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: is not a regular file (a FIFO, socket or device), "
                         f"expected {expected}.")


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path``, atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path``, atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def load_npz(
    path: str | os.PathLike[str],
    *,
    required: Iterable[str] = (),
    allowed: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file, never unpickling.

    Parameters
    ----------
    path : path-like
    required : iterable of str
        Keys that must be present.
    allowed : iterable of str, optional
        When given, any other key is an error (it is most likely a typo).

    Raises
    ------
    InputError
        One line naming the file and the problem: missing, unreadable, not an npz
        archive, corrupt, holding object arrays, missing or unexpected keys.
    """
    path = Path(path)
    check_regular_file(path, "an .npz file")
    try:
        data = np.load(path, allow_pickle=False)
    except PermissionError:
        raise InputError(f"{path}: cannot be read (permission denied).") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        if "pickle" in str(exc):  # NumPy's guess for an unknown format: never taken here
            raise InputError(f"{path}: not a valid .npz file (not a NumPy archive; bnprop "
                             "never unpickles).") from None
        raise InputError(f"{path}: not a valid .npz file ({exc}).") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: is a single .npy array, expected an .npz archive.")
    with data:
        keys = list(data.files)
        missing = [k for k in required if k not in keys]
        if missing:
            raise InputError(
                f"{path}: missing key(s) {', '.join(missing)}; the file holds "
                f"{', '.join(keys) or 'no arrays'}."
            )
        if allowed is not None:
            allowed = list(allowed)
            extra = [k for k in keys if k not in allowed]
            if extra:
                raise InputError(
                    f"{path}: unexpected key(s) {', '.join(extra)}; expected only "
                    f"{', '.join(allowed)}."
                )
        out = {}
        for k in keys:
            try:
                out[k] = data[k]
            except ValueError as exc:
                if "pickle" in str(exc) or "Object arrays" in str(exc):
                    raise InputError(
                        f"{path}: key {k} holds an object array, which cannot be read "
                        "without unpickling (refused: pickles can run code)."
                    ) from None
                raise InputError(f"{path}: key {k} is corrupt ({exc}).") from None
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
                raise InputError(f"{path}: key {k} is corrupt ({exc}).") from None
            if not isinstance(out[k], np.ndarray):  # a member that is no .npy (a pickle?)
                raise InputError(f"{path}: key {k} is not a NumPy array (its member is not in "
                                 ".npy format; bnprop never unpickles).")
        return out
