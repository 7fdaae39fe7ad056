"""Data-parallel step time: measured on this machine, and modelled for P processes on a network.

::

    OMP_NUM_THREADS=1 python -m bnprop.distributed.bench step --net ioffe        # P = 1
    OMP_NUM_THREADS=1 mpiexec -n 2 python -m bnprop.distributed.bench step --net ioffe
    OMP_NUM_THREADS=1 python -m bnprop.distributed.bench model                   # the table

``step`` times ``MLP.train_step`` on random data (rank 0 prints one JSON line): the median
step (the least of ``--rounds`` medians: the machine may be shared), the part of it spent
in the collectives (waiting for the slower rank included), and the collectives and bytes
per step (``comm.traffic``). ``model`` measures the compute of one rank's share, ``ceil(m/P)`` rows,
through the distributed code path with :class:`NullComm` (collectives that cost nothing),
and adds the alpha-beta cost of the step's collectives on a network (docs/scaling.md)::

    T(P) = T_compute(ceil(m/P)) + sum over the step's collectives of their cost

    Allreduce of n bytes   min( ceil(log2 P) (alpha + n beta),                 recursive doubling
                                2 ceil(log2 P) alpha + 2 (P-1)/P n beta )      Rabenseifner
    Allgather, b per rank  ceil(log2 P) alpha + (P-1) b beta                   recursive doubling

(Thakur, Rabenseifner & Gropp 2005, the algorithms MPICH uses; the arithmetic of the
reduction and any overlap of communication with compute are left out.) A step sends, in
float64: per BN layer of n features an Allgather of ``1 + 2n`` and an Allreduce of ``2n``
(SyncBN only), then one Allreduce of every other gradient and the loss (under local BN
``gamma`` and ``beta`` join it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnprop.distributed.collectives import shard
from bnprop.distributed.mpi import default_comm
from bnprop.distributed.protocol import Communicator, Scratch, Traffic

#: name -> (layer sizes, global batch): the paper's MNIST net and a wide one.
NETS: dict[str, tuple[tuple[int, ...], int]] = {
    "ioffe": ((784, 100, 100, 100, 10), 60),
    "wide": ((784, 1024, 1024, 1024, 10), 512),
}
#: Timed steps per measurement by default: about 0.2 to 3 s of each net.
DEFAULT_STEPS = {"ioffe": 200, "wide": 20}


@dataclass(frozen=True)
class Network:
    """Latency ``alpha`` (s a message) and inverse bandwidth ``beta`` (s a byte)."""

    name: str
    alpha: float
    beta: float


#: 1 Gb/s Ethernet with MPI over TCP (about 50 us a message, 125 MB/s); 100 Gb/s
#: InfiniBand (about 2 us, 12.5 GB/s). Typical figures, not measured here.
NETWORKS = (
    Network("1 Gb/s Ethernet", 50e-6, 1 / 125e6),
    Network("100 Gb/s InfiniBand", 2e-6, 1 / 12.5e9),
)


class TimedComm:
    """A :class:`~bnprop.distributed.Communicator` that adds up the seconds spent in the
    reductions of the communicator it wraps (``seconds``)."""

    def __init__(self, comm: Communicator) -> None:
        self._comm = comm
        self.rank, self.size = comm.rank, comm.size
        self.traffic = comm.traffic
        self.seconds = 0.0

    def allreduce_sum(self, buf: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        try:
            return self._comm.allreduce_sum(buf)
        finally:
            self.seconds += time.perf_counter() - start

    def combine_moments(self, count: int, mean: np.ndarray,
                        M2: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        start = time.perf_counter()
        try:
            return self._comm.combine_moments(count, mean, M2)
        finally:
            self.seconds += time.perf_counter() - start

    def scratch(self, n: int) -> np.ndarray:
        return self._comm.scratch(n)

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self._comm.bcast(obj, root)

    def barrier(self) -> None:
        self._comm.barrier()

    def abort(self, message: str, code: int = 1) -> Any:
        return self._comm.abort(message, code)


class NullComm:
    """Rank 0 of ``size`` processes that all hold the same rows, over a free network.

    ``combine_moments`` returns ``(size * count, mean, size * M2)`` and ``allreduce_sum``
    returns ``size * buf``: the exact results when every rank holds this rank's rows, with
    no communication. It times the compute of one rank's share through the distributed
    code path (packing included), for :func:`model_table`.
    """

    rank = 0

    def __init__(self, size: int) -> None:
        self.size = size
        self.traffic = Traffic()
        self._scratch = Scratch()

    def scratch(self, n: int) -> np.ndarray:
        return self._scratch.get(n)

    def allreduce_sum(self, buf: np.ndarray) -> np.ndarray:
        buf *= self.size
        self.traffic.add(buf.nbytes, buf.nbytes)
        return buf

    def combine_moments(self, count: int, mean: np.ndarray,
                        M2: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        self.traffic.add(8 * (1 + 2 * mean.size), self.size * 8 * (1 + 2 * mean.size))
        return self.size * count, mean, self.size * M2

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def barrier(self) -> None:
        return None

    def abort(self, message: str, code: int = 1) -> Any:
        raise SystemExit(code)


def _data(sizes: Sequence[int], m: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((m, sizes[0]), dtype=np.float64).astype(dtype), \
        rng.integers(0, sizes[-1], m)


def time_steps(sizes: Sequence[int], m: int, comm: Communicator | None, *, steps: int,
               warmup: int | None = None, sync_bn: bool = True, dtype: str = "float32",
               m_global: int | None = None) -> dict[str, Any]:
    """Median seconds of ``train_step`` on ``m`` random rows (this rank's), over ``steps``.

    With ``comm`` (size > 1) the rows are this rank's share of ``m_global`` and the step is
    data parallel; every rank starts each step together (a barrier outside the timing).
    """
    from bnprop.model import MLP
    from bnprop.optim import SGD

    warmup = max(3, steps // 10) if warmup is None else warmup
    X, y = _data(sizes, m, dtype)
    net, opt = MLP(sizes, dtype=dtype, seed=0), SGD(1e-3)
    timed = TimedComm(comm) if comm is not None and comm.size > 1 else None
    kwargs = {} if timed is None else {"comm": timed, "m_global": m_global or m,
                                       "sync_bn": sync_bn}
    if isinstance(comm, NullComm):  # rank 0 of a free network: time it like one process
        timed, kwargs = None, {"comm": comm, "m_global": m_global or m, "sync_bn": sync_bn}
    step_s, comm_s = [], []
    before = None
    for i in range(warmup + steps):
        if i == warmup:
            before = (comm.traffic.collectives, comm.traffic.bytes_sent,
                      comm.traffic.bytes_received) if comm is not None else (0, 0, 0)
        if timed is not None:
            timed.barrier()
            timed.seconds = 0.0
        start = time.perf_counter()
        net.train_step(X, y, opt, **kwargs)
        step_s.append(time.perf_counter() - start)
        comm_s.append(timed.seconds if timed is not None else 0.0)
    after = (comm.traffic.collectives, comm.traffic.bytes_sent,
             comm.traffic.bytes_received) if comm is not None else (0, 0, 0)
    per_step = [(a - b) / steps for a, b in zip(after, before or after, strict=True)]
    return {
        "step_ms": round(1e3 * float(np.median(step_s[warmup:])), 3),
        "comm_ms": round(1e3 * float(np.median(comm_s[warmup:])), 3),
        "collectives_per_step": per_step[0],
        "bytes_sent_per_step": int(per_step[1]),
        "bytes_received_per_step": int(per_step[2]),
    }


def step_messages(sizes: Sequence[int], *, sync_bn: bool) -> list[tuple[str, int]]:
    """The collectives of one data-parallel step: ``(kind, bytes per rank)``, in order.

    ``("allgather", 8 (1 + 2n))`` and ``("allreduce", 16 n)`` per BN layer of n features
    (SyncBN), then ``("allreduce", 8 (parameters reduced + 1))``.
    """
    hidden = sizes[1:-1]
    n_params = sum(a * b for a, b in itertools.pairwise(sizes)) + sizes[-1]
    messages: list[tuple[str, int]] = []
    if sync_bn:
        for n in hidden:
            messages += [("allgather", 8 * (1 + 2 * n)), ("allreduce", 16 * n)]
    else:
        n_params += 2 * sum(hidden)  # gamma and beta, left local by the layers
    messages.append(("allreduce", 8 * (n_params + 1)))
    return messages


def collective_seconds(kind: str, nbytes: int, P: int, net: Network) -> float:
    """Alpha-beta cost of one collective over P processes (module docstring)."""
    if P == 1:
        return 0.0
    rounds = math.ceil(math.log2(P))
    if kind == "allgather":
        return rounds * net.alpha + (P - 1) * nbytes * net.beta
    return min(rounds * (net.alpha + nbytes * net.beta),
               2 * rounds * net.alpha + 2 * (P - 1) / P * nbytes * net.beta)


def network_seconds(sizes: Sequence[int], P: int, net: Network, *, sync_bn: bool) -> float:
    """Modelled seconds of one step's collectives."""
    return sum(collective_seconds(kind, nbytes, P, net)
               for kind, nbytes in step_messages(sizes, sync_bn=sync_bn))


def compute_seconds(sizes: Sequence[int], m: int, P: int, *, steps: int,
                    rounds: int = 3) -> float:
    """Measured seconds of one rank's compute at P processes: ``ceil(m/P)`` rows through
    the distributed path (SyncBN) with free collectives (:class:`NullComm`), the plain path
    at P = 1. The least of ``rounds`` medians of ``steps`` steps (the machine is shared).

    Local BN does the same arithmetic (its packed buffer is ``2 sum(hidden)`` floats
    longer), so the model charges both modes this compute and differs only in messages.
    """
    rows = math.ceil(m / P)
    return min(
        time_steps(sizes, rows, None if P == 1 else NullComm(P), steps=steps,
                   m_global=rows * P if P > 1 else None)["step_ms"]
        for _ in range(rounds)) / 1e3


def model_table(name: str, processes: Sequence[int], *, steps: int,
                rounds: int = 3) -> list[dict[str, Any]]:
    """Rows ``{P, rows_per_rank, compute_ms, <network>: {sync_ms, local_ms}}`` for one net;
    P is skipped where a rank would hold fewer than 2 rows (local BN's minimum)."""
    sizes, m = NETS[name]
    rows = []
    for P in processes:
        if math.ceil(m / P) < 2:
            continue
        compute = compute_seconds(sizes, m, P, steps=steps, rounds=rounds)
        row: dict[str, Any] = {"P": P, "rows_per_rank": math.ceil(m / P),
                               "compute_ms": round(1e3 * compute, 3)}
        for net in NETWORKS:
            row[net.name] = {
                f"{'sync' if sync else 'local'}_ms": round(1e3 * (
                    compute + network_seconds(sizes, P, net, sync_bn=sync)), 3)
                for sync in (True, False)}
        rows.append(row)
    return rows


def format_table(name: str, rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`model_table`'s rows: ms (speedup over P = 1), and the
    share of the SyncBN step its statistics collectives take."""
    sizes, m = NETS[name]
    head = ["P", "rows/rank", "compute ms"]
    for net in NETWORKS:
        head += [f"{net.name}: SyncBN", "local BN", "SyncBN extra"]
    lines = [f"**{name}** {'-'.join(map(str, sizes))}, global batch {m}, float32; "
             "step ms (speedup over one process)", "",
             "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    t1 = rows[0]["compute_ms"]
    for row in rows:
        cells = [str(row["P"]), str(row["rows_per_rank"]), f"{row['compute_ms']:.2f}"]
        for net in NETWORKS:
            sync, local = row[net.name]["sync_ms"], row[net.name]["local_ms"]
            cells += [f"{sync:.2f} ({t1 / sync:.2f}x)", f"{local:.2f} ({t1 / local:.2f}x)",
                      f"{100 * (sync - local) / sync:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnprop.distributed.bench",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("step", help="time data-parallel steps (under mpiexec -n P)")
    p.add_argument("--net", choices=tuple(NETS), default="ioffe")
    p.add_argument("--steps", type=int, help="timed steps (default 200 ioffe, 20 wide)")
    p.add_argument("--local-bn", action="store_true")
    p.add_argument("--rounds", type=int, default=3,
                   help="measurements; the one of least median step time is printed")
    p = sub.add_parser("model", help="measure the compute of a share, print the model")
    p.add_argument("--net", choices=tuple(NETS), nargs="+", default=list(NETS))
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--steps", type=int, help="timed steps (default 200 ioffe, 20 wide)")
    p.add_argument("--rounds", type=int, default=3, help="measurements, the least counts")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    args = parser.parse_args(argv)
    if args.what == "model":
        for name in args.net:
            rows = model_table(name, args.processes, steps=args.steps or DEFAULT_STEPS[name],
                               rounds=args.rounds)
            print(json.dumps({"net": name, "rows": rows}) if args.json
                  else format_table(name, rows) + "\n", flush=True)
        return 0
    comm = default_comm()
    sizes, m = NETS[args.net]
    rows = range(m)[shard(m, comm.rank, comm.size)]
    result = min((time_steps(sizes, len(rows), comm if comm.size > 1 else None,
                             steps=args.steps or DEFAULT_STEPS[args.net],
                             sync_bn=not args.local_bn, m_global=m)
                  for _ in range(args.rounds)), key=lambda r: r["step_ms"])
    if comm.rank == 0:
        print(json.dumps({"net": args.net, "P": comm.size, "global_batch": m,
                          "sync_bn": not args.local_bn,
                          "blas_threads": os.environ.get("OMP_NUM_THREADS"), **result}),
              flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
