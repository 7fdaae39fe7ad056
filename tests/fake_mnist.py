"""A small, learnable MNIST look-alike for training tests (no real data needed).

Class k draws a bright 6 x 6 patch at one of ten fixed places plus noise, so a small
network learns it in a few hundred steps. The files are real IDX files; tests point
``BNPROP_DATA`` at them and record their digests in place of the real ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from bnprop.data import write_idx
from bnprop.data.datasets import FILES

CORNERS = [(2 + 8 * (k % 3), 2 + 6 * (k // 3)) for k in range(10)]


def make_learnable(root: Path, name: str = "mnist", n_train: int = 600, n_test: int = 200,
                   seed: int = 0) -> dict[str, str]:
    """Write the four IDX files into ``root/name``; return {file: sha256}."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 90, size=(n, 28, 28), dtype=np.uint8)
        for i, k in enumerate(labels):
            r, c = CORNERS[k]
            images[i, r:r + 6, c:c + 6] = rng.integers(160, 256, size=(6, 6))
        images_file, labels_file = FILES[split]
        write_idx(folder / images_file, images)
        write_idx(folder / labels_file, labels)
        for f in (images_file, labels_file):
            digests[f] = hashlib.sha256((folder / f).read_bytes()).hexdigest()
    return digests


def run_cli(args: list[str], root: Path, digests: dict[str, str], *,
            timeout: float = 120, **popen: object) -> subprocess.CompletedProcess:
    """Run ``bnprop ARGS`` in a subprocess whose recorded digests are ``digests``."""
    return subprocess.run(cli_command(args, digests), env=fake_env(root),
                          capture_output=True, text=True, timeout=timeout, **popen)


def cli_command(args: list[str], digests: dict[str, str]) -> list[str]:
    """``python -c`` that records ``digests`` for mnist, then runs ``bnprop ARGS``."""
    code = (
        "import sys, json; from bnprop.data import datasets; "
        f"datasets.SHA256['mnist'] = json.loads({json.dumps(json.dumps(digests))}); "
        "from bnprop.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    return [sys.executable, "-c", code, *args]


def fake_env(root: Path) -> dict[str, str]:
    return {**os.environ, "BNPROP_DATA": str(root)}


# ---- unlearnable MNIST-shaped files, for the data layer's tests --------------------------

N = {"train": 50, "test": 20}
ALL_FILES = [file for split in ("train", "test") for file in FILES[split]]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """MNIST-shaped arrays: 50 train and 20 test images, every label 0..9 present."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, (images_file, labels_file) in FILES.items():
        images = rng.integers(0, 256, size=(N[split], 28, 28), dtype=np.uint8)
        images[0, 0, :2] = (0, 255)  # the ends of the range
        arrays[images_file] = images
        arrays[labels_file] = (np.arange(N[split]) % 10).astype(np.uint8)
    return arrays


def make_fake(root: Path, name: str = "mnist", seed: int = 0) -> dict[str, str]:
    """Write the four fake files into ``root/name``; return their SHA-256 digests."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for file, array in fake_arrays(seed).items():
        write_idx(folder / file, array)
    return {file: sha256(folder / file) for file in ALL_FILES}
