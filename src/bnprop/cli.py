"""The ``bnprop`` command: parse, call a run, print. Nothing imports this module.

Errors a user can cause (``InputError``, and files that cannot be read or written)
print one line, ``bnprop <command>: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from bnprop import __version__
from bnprop._validate import InputError
from bnprop.activations import ACTIVATIONS
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

    report = run_check(seed=args.seed, sizes=args.sizes, activation=args.activation,
                       trials=args.trials, use_torch=not args.no_torch)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(report.to_text())
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
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
        name = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"bnprop {args.command}: error:{name} {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bnprop {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
