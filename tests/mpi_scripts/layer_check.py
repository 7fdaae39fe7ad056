"""Under ``mpiexec -n P``: the distributed layer, for tests/test_distributed.py to compare.

Every rank builds the same random layer (seeded), runs ``layer_forward`` /
``layer_backward`` with an :class:`MPIComm` on its :func:`shard` of the batch, and rank 0
gathers the results into ``OUT`` (an ``.npz``, written atomically) with the inputs, so the
test computes the single-process oracle itself. Per case ``{dtype}_{stats}``:

* ``{case}__{key}`` for Z, Obar, A, Y, dA, dZ, dO: the ranks' rows, concatenated;
* ``{case}__{key}`` for mu, var, inv_std, dgamma, dbeta, dW: one row per rank, (P, ...);
* ``{case}__traffic``: (collectives, bytes sent, bytes received) of forward, then backward.

    mpiexec -n 3 python tests/mpi_scripts/layer_check.py OUT.npz
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import bnprop
from bnprop.distributed import abort_on_error, default_comm, shard

CASES = (("float64", "exact"), ("float64", "frozen"), ("float32", "exact"))
ROW_KEYS = ("Z", "Obar", "A", "Y", "dA", "dZ", "dO")
RANK_KEYS = ("mu", "var", "inv_std", "dgamma", "dbeta", "dW")


def make_layer(seed: int, m: int, n_in: int, n_out: int, dtype: str) -> dict[str, np.ndarray]:
    """O, W, gamma, beta, dY with standard-normal entries (gamma away from 0), like conftest."""
    rng = np.random.default_rng(seed)
    arrays = {
        "O": rng.standard_normal((m, n_in)),
        "W": rng.standard_normal((n_out, n_in)),
        "gamma": rng.uniform(0.5, 2.0, n_out) * rng.choice([-1.0, 1.0], n_out),
        "beta": rng.standard_normal(n_out),
        "dY": rng.standard_normal((m, n_out)),
    }
    return {name: a.astype(dtype) for name, a in arrays.items()}


def traffic_delta(before: tuple[int, int, int], comm) -> tuple[int, int, int]:
    t = comm.traffic
    return (t.collectives - before[0], t.bytes_sent - before[1], t.bytes_received - before[2])


def snapshot(comm) -> tuple[int, int, int]:
    t = comm.traffic
    return (t.collectives, t.bytes_sent, t.bytes_received)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--m", type=int, default=64)
    parser.add_argument("--n-in", type=int, default=7)
    parser.add_argument("--n-out", type=int, default=5)
    parser.add_argument("--activation", default="sigmoid")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    comm = default_comm()
    with abort_on_error(comm):
        rows = shard(args.m, comm.rank, comm.size)
        result: dict[str, np.ndarray] = {"size": np.array(comm.size)}
        for dtype, stats in CASES:
            case = f"{dtype}_{stats}"
            layer = make_layer(args.seed, args.m, args.n_in, args.n_out, dtype)
            before = snapshot(comm)
            cache = bnprop.layer_forward(layer["O"][rows], layer["W"], layer["gamma"],
                                         layer["beta"], activation=args.activation, comm=comm)
            forward = traffic_delta(before, comm)
            before = snapshot(comm)
            grads = bnprop.layer_backward(layer["dY"][rows], cache, stats=stats)
            backward = traffic_delta(before, comm)
            local = {key: getattr(cache, key, None) for key in ROW_KEYS + RANK_KEYS}
            local.update({key: getattr(grads, key) for key in ("dA", "dZ", "dO", "dgamma",
                                                                 "dbeta", "dW")})
            local["traffic"] = np.array([forward, backward])
            gathered = comm.mpi_comm.gather(local, root=0)
            if comm.rank == 0:
                for key in ROW_KEYS:
                    result[f"{case}__{key}"] = np.concatenate([g[key] for g in gathered])
                for key in (*RANK_KEYS, "traffic"):
                    result[f"{case}__{key}"] = np.stack([g[key] for g in gathered])
                result.update({f"{case}__in_{name}": a for name, a in layer.items()})
        if comm.rank == 0:
            tmp = args.out + ".tmp.npz"
            np.savez(tmp, **result)
            os.replace(tmp, args.out)
        comm.barrier()


if __name__ == "__main__":
    main()
