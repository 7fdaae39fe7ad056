"""Under ``mpiexec -n P``: time the two packed collectives of a batch-normalized layer.

For each n in ``--features``: ``combine_moments`` (one Allgather of 1 + 2n float64) and
``allreduce_sum`` of the backward's 2n float64, the median over ``--repeat`` calls after a
warm-up, and the payload one layer forward/backward hands to MPI (from ``comm.traffic``).
Rank 0 prints one JSON line per n.

    mpiexec -n 2 python tests/mpi_scripts/bench_collectives.py --repeat 2000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import bnprop
from bnprop.distributed import abort_on_error, default_comm, shard


def median_seconds(call, repeat: int, comm) -> float:
    for _ in range(min(repeat, 50)):
        call()
    times = np.empty(repeat)
    comm.barrier()
    for i in range(repeat):
        start = time.perf_counter()
        call()
        times[i] = time.perf_counter() - start
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", type=int, nargs="+", default=[100, 1024])
    parser.add_argument("--repeat", type=int, default=1000)
    parser.add_argument("--m", type=int, default=256, help="global batch of the layer timing")
    args = parser.parse_args()
    comm = default_comm()
    with abort_on_error(comm):
        for n in args.features:
            rng = np.random.default_rng(n)
            sums = rng.standard_normal(2 * n)
            mean, M2 = rng.standard_normal(n), rng.uniform(1, 2, n)
            allreduce = median_seconds(lambda sums=sums: comm.allreduce_sum(sums), args.repeat,
                                       comm)
            combine = median_seconds(lambda mean=mean, M2=M2: comm.combine_moments(10, mean, M2), args.repeat,
                                     comm)
            O = rng.standard_normal((args.m, 64))[shard(args.m, comm.rank, comm.size)]
            W = rng.standard_normal((n, 64))
            gamma, beta = np.ones(n), np.zeros(n)
            before = (comm.traffic.collectives, comm.traffic.bytes_sent,
                      comm.traffic.bytes_received)
            cache = bnprop.layer_forward(O, W, gamma, beta, comm=comm)
            mid = (comm.traffic.collectives, comm.traffic.bytes_sent,
                   comm.traffic.bytes_received)
            bnprop.layer_backward(np.ones_like(cache.Y), cache)
            after = (comm.traffic.collectives, comm.traffic.bytes_sent,
                     comm.traffic.bytes_received)
            step = median_seconds(
                lambda O=O, W=W, gamma=gamma, beta=beta: bnprop.layer_backward(
                    np.ones((O.shape[0], W.shape[0])),
                    bnprop.layer_forward(O, W, gamma, beta, comm=comm)),
                max(args.repeat // 10, 5), comm)
            if comm.rank == 0:
                print(json.dumps({
                    "size": comm.size, "n": n,
                    "allreduce_2n_us": round(allreduce * 1e6, 2),
                    "allgather_moments_us": round(combine * 1e6, 2),
                    "forward_collectives_sent_received": [b - a for a, b in zip(before, mid, strict=True)],
                    "backward_collectives_sent_received": [b - a for a, b in zip(mid, after, strict=True)],
                    f"layer_step_m{args.m}_nin64_us": round(step * 1e6, 1),
                }), flush=True)


if __name__ == "__main__":
    main()
