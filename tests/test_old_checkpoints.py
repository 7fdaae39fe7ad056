"""Run folders written before bnprop.nn (commit d60bd7e, the fast step of that time) load,
evaluate, and resume bit for bit.

``tests/data/run_v0_step20`` is the folder that code left after
``bnprop train --hidden 16,16 --optimizer adam --lr 0.003 --eval-every 20
--checkpoint-every 20 --threads 1 --steps 20`` on ``make_learnable``'s fake MNIST;
``run_v0_step40_model.npz`` is its ``model.npz`` after the same run with ``--steps 40``.

The float32 sigmoid and tanh have been compiled with FMA contraction since (fused Horner
steps: :data:`bnprop.kernels._jit.ACTIVATION_JIT_OPTIONS`), so the resumed run continues
that code's run to rounding, not bit for bit: measured, every array of the 40-step model
within 2.2e-7 of its largest entry. Resuming is bit for bit in the code of one version
(``tests/test_train.py``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from fake_mnist import run_cli

from bnprop.model import MLP

DATA = Path(__file__).parent / "data"
ARGS = ["--hidden", "16,16", "--eval-every", "20", "--checkpoint-every", "20",
        "--optimizer", "adam", "--lr", "0.003", "--threads", "1"]


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_an_old_model_loads_and_evaluates(data_root, tmp_path: Path) -> None:
    root, digests = data_root
    state = _arrays(DATA / "run_v0_step20" / "model.npz")
    net = MLP.from_state({k: v for k, v in state.items() if k != "train_config"})
    assert net.sizes == (784, 16, 16, 10)
    out = run_cli(["evaluate", str(DATA / "run_v0_step20")], root, digests)
    assert out.returncode == 0, out.stderr
    assert "0.79" in out.stdout


def test_an_old_run_resumes_as_that_code_ran_it(data_root, tmp_path: Path) -> None:
    """The same arrays as the old code's 40 steps to rounding (module docstring); the
    counters exactly."""
    root, digests = data_root
    run = tmp_path / "run"
    shutil.copytree(DATA / "run_v0_step20", run)
    out = run_cli(["train", *ARGS, "--steps", "40", "--out", str(run), "--resume"],
                  root, digests)
    assert out.returncode == 0, out.stderr
    got, want = _arrays(run / "model.npz"), _arrays(DATA / "run_v0_step40_model.npz")
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key == "train_config":
            continue
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        if value.dtype.kind != "f":  # counters, names
            np.testing.assert_array_equal(got[key], value, err_msg=key)
        else:
            np.testing.assert_allclose(got[key], value, rtol=0,
                                       atol=1e-6 * float(np.abs(value).max()), err_msg=key)
