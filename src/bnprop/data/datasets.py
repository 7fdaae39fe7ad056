"""MNIST and Fashion-MNIST: where they live, how their integrity is checked, how they load.

Folder. The data root is, first match wins: the ``data_dir`` argument, the environment
variable ``BNPROP_DATA``, ``~/.cache/bnprop``. Dataset ``name`` lives in
``<root>/<name>/`` as four uncompressed IDX files::

    train-images-idx3-ubyte   (60000, 28, 28) uint8      t10k-images-idx3-ubyte   (10000, 28, 28)
    train-labels-idx1-ubyte   (60000,) uint8 in 0..9     t10k-labels-idx1-ubyte   (10000,)

Integrity. Each file's SHA-256 is recorded in :data:`SHA256`. :func:`verify` checks all
four; a check that passed is remembered per process by (path, size, mtime, digest), so
repeated loads hash nothing.

Provisioning is not here: only :func:`bnprop.data.provision.fetch` downloads (never at
import or load time); a missing or corrupt file makes :func:`verify` name the
``bnprop data fetch`` command that provisions it.

Loading. :func:`load_dataset` returns rows as examples::

    X[i, 28 * r + c] = image[i, r, c] / 255    X: (n, 784) float32 in [0, 1]
    y[i] = label[i]                             y: (n,) int64 in 0..9
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from bnprop._validate import InputError, check_choice
from bnprop.data.idx import read_idx

DATASETS = ("mnist", "fashion-mnist")
SPLITS = ("train", "test")
#: split -> (images file, labels file), the standard names of the MNIST distribution.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SHAPE = (28, 28)
N_CLASSES = 10

#: dataset -> file -> SHA-256 of the uncompressed file as stored.
SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
        ),
        "train-labels-idx1-ubyte": (
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
        ),
        "t10k-images-idx3-ubyte": (
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
        ),
        "t10k-labels-idx1-ubyte": (
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
        ),
        "train-labels-idx1-ubyte": (
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
        ),
        "t10k-images-idx3-ubyte": (
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
        ),
        "t10k-labels-idx1-ubyte": (
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
        ),
    },
}

_verified: set[tuple[str, int, int, str]] = set()  # (path, size, mtime_ns, sha256) that passed


# -- folder ----------------------------------------------------------------------------


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data root: ``path`` if given, else ``$BNPROP_DATA`` if set, else ``~/.cache/bnprop``.

    ``~`` is expanded; the folder is not created.
    """
    if path is None:
        path = os.environ.get("BNPROP_DATA") or "~/.cache/bnprop"
    return Path(path).expanduser()


_root = data_dir  # the functions below take an argument named ``data_dir``


def _fetch_command(name: str, data_dir: str | os.PathLike | None) -> str:
    """The CLI line that provisions ``name`` into the root ``data_dir`` resolves to."""
    command = f"bnprop data fetch --dataset {name}"
    if data_dir is not None and _root(data_dir) != _root(None):
        command += f" --data-dir {shlex.quote(os.fspath(data_dir))}"
    return command


# -- integrity -------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _digest_mismatch(path: Path, expected: str) -> str | None:
    """``None`` if ``path`` hashes to ``expected`` (cached per process), else its digest."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected)
    if key in _verified:
        return None
    got = _sha256(path)
    if got != expected:
        return got
    _verified.add(key)
    return None


def _mark_verified(path: Path, expected: str) -> None:
    """Remember that ``path``, as it is now, hashes to ``expected`` (it was just written)."""
    stat = path.stat()
    _verified.add((str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected))


def verify(dataset: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Check that the four files of ``dataset`` exist with their recorded SHA-256.

    Parameters
    ----------
    dataset : {'mnist', 'fashion-mnist'}
    data_dir : str or os.PathLike, optional
        The data root (see :func:`data_dir`).

    Returns
    -------
    pathlib.Path
        The dataset's folder, ``<root>/<dataset>``.

    Raises
    ------
    InputError
        If a file is missing (the message names the ``bnprop data fetch`` command that
        provisions it) or its digest differs (the message names the file, the expected
        and the received digest).
    """
    check_choice(dataset, "dataset", DATASETS)
    folder = _root(data_dir) / dataset
    _require_files(dataset, folder, SHA256[dataset], data_dir)
    for file, expected in SHA256[dataset].items():
        got = _digest_mismatch(folder / file, expected)
        if got is not None:
            raise InputError(
                f"{folder / file}: SHA-256 mismatch: expected {expected}, got {got}; "
                f"run '{_fetch_command(dataset, data_dir)}' to replace it."
            )
    return folder


def _require_files(
    dataset: str, folder: Path, files: Iterable[str], data_dir: str | os.PathLike | None
) -> None:
    missing = [file for file in files if not (folder / file).is_file()]
    if missing:
        raise InputError(
            f"{dataset}: {', '.join(missing)} not found in {folder}; "
            f"run '{_fetch_command(dataset, data_dir)}' to provision it."
        )


# -- loading ---------------------------------------------------------------------------


def load_idx_pair(
    images_path: str | os.PathLike, labels_path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """Read an images file and its labels file and return ``(X, y)``.

    Parameters
    ----------
    images_path : str or os.PathLike
        IDX uint8 array of shape ``(n, 28, 28)``.
    labels_path : str or os.PathLike
        IDX uint8 array of shape ``(n,)``, values in ``0..9``.

    Returns
    -------
    X : numpy.ndarray of shape (n, 784), float32
        ``X[i, 28 * r + c] = image[i, r, c] / 255``, in ``[0, 1]``.
    y : numpy.ndarray of shape (n,), int64

    Raises
    ------
    InputError
        If either file is not valid IDX (see :func:`bnprop.data.idx.read_idx`), the
        dtype or shape is wrong, the counts differ, or a label is outside ``0..9``.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    n_pixels = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise InputError(
            f"{os.fspath(images_path)}: expected uint8 images of shape (n, 28, 28), got "
            f"{images.dtype} of shape {images.shape} instead."
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise InputError(
            f"{os.fspath(labels_path)}: expected uint8 labels of shape (n,), got "
            f"{labels.dtype} of shape {labels.shape} instead."
        )
    if labels.shape[0] != images.shape[0]:
        raise InputError(
            f"{os.fspath(labels_path)}: expected one label per image, got {labels.shape[0]} "
            f"labels for {images.shape[0]} images in {os.fspath(images_path)} instead."
        )
    bad = labels >= N_CLASSES
    if bad.any():
        first = int(np.argmax(bad))
        raise InputError(
            f"{os.fspath(labels_path)}: expected labels in 0..{N_CLASSES - 1}, got "
            f"{int(bad.sum())} outside (first: {int(labels[first])} at index {first}) instead."
        )
    X = images.reshape(images.shape[0], n_pixels).astype(np.float32) / np.float32(255)
    return X, labels.astype(np.int64)


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of MNIST or Fashion-MNIST; never downloads (see
    :func:`bnprop.data.provision.fetch`).

    Parameters
    ----------
    name : {'mnist', 'fashion-mnist'}
    split : {'train', 'test'}, default='train'
        ``train`` has 60000 examples, ``test`` (files ``t10k-*``) 10000.
    data_dir : str or os.PathLike, optional
        The data root (see :func:`data_dir`).
    verify : bool, default=True
        Check all four files' SHA-256 first (once per process while they are unchanged).

    Returns
    -------
    X : numpy.ndarray of shape (n, 784), float32 in [0, 1]
    y : numpy.ndarray of shape (n,), int64 in 0..9

    Examples
    --------
    >>> X, y = load_dataset("mnist", "test")  # doctest: +SKIP
    >>> X.shape, X.dtype, y.shape, y.dtype  # doctest: +SKIP
    ((10000, 784), dtype('float32'), (10000,), dtype('int64'))
    """
    check_choice(name, "name", DATASETS)
    check_choice(split, "split", SPLITS)
    folder = _root(data_dir) / name
    images_file, labels_file = FILES[split]
    if verify:
        _check_dataset(name, data_dir)
    else:
        _require_files(name, folder, FILES[split], data_dir)
    return load_idx_pair(folder / images_file, folder / labels_file)


_check_dataset = verify  # ``load_dataset`` has an argument named ``verify``

