"""Under ``mpiexec -n P``: ``bnprop train ARGS`` on the fake MNIST of ``tests/fake_mnist.py``.

``BNPROP_TEST_DIGESTS`` (JSON ``{file: sha256}``) replaces the recorded digests of mnist, as
``fake_mnist.cli_command`` does for one process. ``BNPROP_TEST_FAULT=RANK:STEP:MODE`` makes
rank RANK fail in its STEP-th training step (1-based), before the step's collectives:
``raise`` (a RuntimeError) or ``kill`` (SIGKILL, no MPI_Finalize).

    BNPROP_DATA=... BNPROP_TEST_DIGESTS='{...}' mpiexec -n 3 python train_cli.py --out run
"""

from __future__ import annotations

import json
import os
import signal
import sys

from bnprop.cli import main
from bnprop.data import datasets
from bnprop.model import MLP


def inject_fault(spec: str) -> None:
    rank_s, step_s, mode = spec.split(":")
    rank = int(os.environ.get("PMI_RANK", "0"))
    if rank != int(rank_s):
        return
    real, calls = MLP.train_step, {"n": 0}

    def failing(self: MLP, *args: object, **kwargs: object) -> float:
        calls["n"] += 1
        if calls["n"] == int(step_s):
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected fault in step {calls['n']}")
        return real(self, *args, **kwargs)

    MLP.train_step = failing  # type: ignore[method-assign]


if __name__ == "__main__":
    datasets.SHA256["mnist"] = json.loads(os.environ["BNPROP_TEST_DIGESTS"])
    if os.environ.get("BNPROP_TEST_FAULT"):
        inject_fault(os.environ["BNPROP_TEST_FAULT"])
    sys.exit(main(["train", *sys.argv[1:]]))
