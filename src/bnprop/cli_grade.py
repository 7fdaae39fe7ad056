"""``bnprop grade FILE.py [--expect exact|frozen] [--json] [--timeout S]`` and
``bnprop grade --template FILE.py``: the command's parser and its run (parse, call, print).

Exit status: 0 only when every gradient the file returned is correct; 1 when one is not,
or the file could not be graded (one line names it); 2 for bnprop's own usage errors.
"""

from __future__ import annotations

import argparse
import json


def _cmd_grade(args: argparse.Namespace) -> int:
    from bnprop.grading import grade, write_template

    if args.template:
        write_template(args.file)
        print(f"wrote {args.file}: fill in gradients(), then run bnprop grade {args.file}")
        return 0
    report = grade(args.file, expect=args.expect, timeout=args.timeout)
    if args.json:
        print(json.dumps(report.to_json(), allow_nan=False))
    else:
        print(report.to_text())
    return 0 if report.passed else 1


def add_grade(sub: argparse._SubParsersAction, positive_float: type) -> None:
    """Add ``bnprop grade`` to the subcommands ``sub``."""
    p = sub.add_parser(
        "grade", help="grade a learner's gradients() of the handout's layer; name the mistake",
        description="Run gradients(O, W, gamma, beta, dY, eps) of FILE.py (the handout's BN "
        "layer with the sigmoid; it returns a dict with any of dA, dgamma, dbeta, dW, dO) in "
        "a child process on bnprop's cases, and print one verdict per gradient: correct, or "
        "the mistake it matches. Exit status 0 only when every returned gradient is correct.")
    p.add_argument("file", metavar="FILE.py", help="the learner's file (with --template: the "
                   "starter file to write)")
    p.add_argument("--expect", choices=("exact", "frozen"), default="exact",
                   help="exact: through mu_B and var_B (default); frozen: the handout's part "
                   "(4) as written, mu_B and var_B held fixed")
    p.add_argument("--json", action="store_true", help="print one JSON object: "
                   "{gradients: {dA: {verdict, max_rel_error, message}, ...}, passed, ...}")
    p.add_argument("--timeout", type=positive_float, default=10.0, metavar="SECONDS",
                   help="time limit of the learner's code (default 10)")
    p.add_argument("--template", action="store_true",
                   help="write a starter FILE.py (signature and docstring) instead")
    p.set_defaults(func=_cmd_grade)
