"""How a :class:`bnprop.grading.GradeReport` looks: the terminal table and the HTML table.

One row per returned gradient: its verdict, its relative error
``max|yours - expected| / max|expected|`` (the largest over the cases) and one sentence on
the mistake and how to fix it.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bnprop.grading import GradeReport


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def _title(report: GradeReport) -> str:
    what = ("the exact gradient (mu_B and var_B depend on W)" if report.expect == "exact"
            else "the handout's part (4) as written (mu_B and var_B held fixed)")
    return f"bnprop grade: {report.source}, against {what}"


def _summary(report: GradeReport) -> str:
    wrong = sum(g.verdict != "correct" for g in report.gradients.values())
    if report.passed:
        return f"passed: all {len(report.gradients)} gradients returned are correct."
    if all(g.verdict == "raised" for g in report.gradients.values()):
        return "not passed: gradients raised an exception, so nothing was returned."
    return f"not passed: {wrong} of {len(report.gradients)} gradients returned are not correct."


def render_text(report: GradeReport) -> str:
    """The table ``bnprop grade`` prints (or the one line of ``report.error``)."""
    if report.error is not None:
        return report.error
    lines = [
        _title(report) + ",",
        f"on {len(report.cases)} cases ({'; '.join(report.cases)}), float64.",
        "rel. error: max|yours - expected| / max|expected| on a case, the largest over the "
        "cases.",
        "",
    ]
    width = max([len("verdict")] + [len(g.verdict) for g in report.gradients.values()])
    header = f"{'gradient':<8}  {'verdict':<{width}}  {'rel. error':>10}  what to do"
    lines += [header, "-" * len(header)]
    for key, g in report.gradients.items():
        lines.append(f"{key:<8}  {g.verdict:<{width}}  {_fmt(g.max_rel_error):>10}  "
                     f"{g.message}")
    lines += ["", _summary(report)]
    return "\n".join(lines)


_COLOURS = {"correct": "#1a7f37"}


def render_html(report: GradeReport) -> str:
    """The same table as HTML (every string escaped), for Jupyter's ``_repr_html_``."""
    esc = html.escape
    if report.error is not None:
        return f"<p><strong>bnprop grade:</strong> {esc(report.error)}</p>"
    rows = "".join(
        f"<tr><td><code>{esc(key)}</code></td>"
        f"<td style=\"color:{_COLOURS.get(g.verdict, '#cf222e')}\"><strong>{esc(g.verdict)}"
        f"</strong></td><td style=\"text-align:right\">{esc(_fmt(g.max_rel_error))}</td>"
        f"<td>{esc(g.message)}</td></tr>"
        for key, g in report.gradients.items())
    return (f"<div><p>{esc(_title(report))}, on {len(report.cases)} cases "
            f"({esc('; '.join(report.cases))}).</p>"
            "<table><thead><tr><th>gradient</th><th>verdict</th>"
            "<th>rel. error</th><th>what to do</th></tr></thead>"
            f"<tbody>{rows}</tbody></table><p>{esc(_summary(report))}</p></div>")
