"""``bnprop trace --html``: the trace as one self-contained page, and ``LayerCache`` as HTML.

The page fetches nothing: no script, stylesheet, font or image comes from anywhere. The
CSS is inline, the computation graph and the heat map are inline SVG, the formulas are
MathML Core (:mod:`bnprop.trace_mathml`), and there is no JavaScript. Every quantity is
also embedded at full precision in ``<script type="application/json" id="bnprop-trace">``
(Python's shortest round-trip ``repr`` of each float), so a program can read the numbers
back; the tables show them rounded to :data:`bnprop.trace.DECIMALS` decimals.
"""

from __future__ import annotations

import json
import os
import re
from html import escape
from pathlib import Path

import numpy as np

from bnprop._atomic import atomic_writer
from bnprop._validate import InputError
from bnprop.layer import LayerCache
from bnprop.trace import (
    FORMULAS,
    JACOBIAN_FORMULA,
    Trace,
    fmt,
    header_lines,
    relative_difference,
    run_trace,
)
from bnprop.trace_graph import graph_svg, heatmap_svg
from bnprop.trace_mathml import mathml

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px 32px;
       color: #1b1f24; background: #fff; max-width: 1100px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #d0d7de; padding-bottom: 4px; margin-top: 1.6em; }
p.meta { color: #57606a; margin: 0.2em 0; }
.cards { display: flex; flex-wrap: wrap; gap: 14px; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 12px; background: #f6f8fa; }
.card.input { background: #eef5ff; } .card.backward { background: #fff5ec; }
.card h3 { margin: 0 0 4px 0; font-size: 1em; font-family: ui-monospace, monospace; }
.card h3 .shape { color: #57606a; font-weight: normal; }
.formula { font-size: 1.15em; margin: 4px 0; }
.formula math { math-style: normal; }
.note { color: #57606a; font-size: 0.85em; max-width: 34em; margin: 2px 0 6px 0; }
table.mat { border-collapse: collapse; font-family: ui-monospace, monospace;
            font-size: 0.85em; background: #fff; }
table.mat td { border: 1px solid #d8dee4; padding: 2px 6px; text-align: right; }
table.mat th { color: #8c959f; font-weight: normal; padding: 0 4px; font-size: 0.8em; }
.side { display: flex; gap: 18px; align-items: flex-start; overflow-x: auto; }
.side .col { flex: none; }
.side .col h4 { margin: 4px 0; font-family: ui-monospace, monospace; }
td.diff { font-weight: 600; }
.rel { font-size: 0.95em; }
svg text { font-family: ui-monospace, monospace; }
"""


def matrix_table(
    a: np.ndarray, *, highlight: np.ndarray | None = None, max_rows: int | None = None,
    max_cols: int | None = None,
) -> str:
    """A 1D or 2D array as ``<table class="mat">``, each number rounded by :func:`fmt`.

    ``highlight``: an array of the same shape; each cell is shaded by ``|h| / max|h|``.
    ``max_rows`` / ``max_cols``: show the first and last ones only, with an ellipsis.
    """
    a2 = np.atleast_2d(np.asarray(a))
    h2 = None if highlight is None else np.atleast_2d(np.asarray(highlight))
    hmax = 0.0 if h2 is None else float(np.max(np.abs(h2), initial=0.0))

    def kept(n: int, limit: int | None) -> list[int | None]:
        if limit is None or n <= limit:
            return list(range(n))
        half = limit // 2
        return [*range(half), None, *range(n - half, n)]

    rows, cols = kept(a2.shape[0], max_rows), kept(a2.shape[1], max_cols)
    head = "".join(f"<th>{'…' if j is None else j}</th>" for j in cols)
    out = [f'<table class="mat"><tr><th></th>{head}</tr>']
    for i in rows:
        if i is None:
            out.append("<tr><th>⋮</th>" + "<td>⋮</td>" * len(cols) + "</tr>")
            continue
        cells = []
        for j in cols:
            if j is None:
                cells.append("<td>…</td>")
                continue
            text = fmt(float(a2[i, j]))
            if h2 is not None and hmax > 0:
                alpha = abs(float(h2[i, j])) / hmax
                cells.append(f'<td class="diff" style="background: rgba(255, 140, 0, '
                             f'{0.12 + 0.78 * alpha:.3f})">{text}</td>')
            else:
                cells.append(f"<td>{text}</td>")
        out.append(f"<tr><th>{i}</th>{''.join(cells)}</tr>")
    out.append("</table>")
    return "".join(out)


def _card(name: str, formula: str, value: np.ndarray, stage: str, note: str) -> str:
    shape = escape(str(tuple(value.shape)))
    rendered = mathml(formula, name) if formula else "<span>given</span>"
    note_html = f'<p class="note">{escape(note)}</p>' if note else ""
    return (f'<section class="card {stage}" id="q-{escape(name)}" data-name="{escape(name)}">'
            f'<h3>{escape(name)} <span class="shape">{shape}</span></h3>'
            f'<div class="formula">{rendered}</div>{note_html}{matrix_table(value)}</section>')


def _side_by_side(t: Trace, name: str) -> str:
    """Frozen, exact and their difference, the difference shaded by its size."""
    frozen, exact = getattr(t.frozen, name), getattr(t.exact, name)
    diff = exact - frozen
    rel = relative_difference(frozen, exact)
    cols = [
        (f"{name}_frozen", FORMULAS[f"{name}_frozen"], matrix_table(frozen)),
        (f"{name}_exact", FORMULAS[f"{name}_exact"], matrix_table(exact)),
        (f"{name}_exact − {name}_frozen", "", matrix_table(diff, highlight=diff)),
    ]
    body = "".join(
        f'<div class="col"><h4>{escape(title)}</h4>'
        f'<div class="formula">{mathml(formula) if formula else "&#160;"}</div>{table}</div>'
        for title, formula, table in cols)
    return (f'<h3 id="cmp-{name}">{name}</h3><p class="rel">relative difference '
            f'‖{name}<sub>exact</sub> − {name}<sub>frozen</sub>‖ / ‖{name}<sub>exact</sub>‖ = '
            f'<b data-rel="{name}">{rel:.3g}</b>; the shading of a difference is its size '
            f'relative to the largest.</p><div class="side" data-compare="{name}">{body}</div>')


def page_data(t: Trace) -> dict:
    """Everything the page shows, as JSON-ready lists of Python floats (full precision)."""
    m, n_in, n_out = t.sizes
    return {
        "config": {"sizes": [m, n_in, n_out], "seed": t.seed, "activation": t.activation,
                   "eps": t.eps, "feature": t.feature, "dtype": str(t.cache.A.dtype)},
        "quantities": {q.name: q.value.tolist() for q in t.quantities.values()},
        "formulas": {q.name: q.formula for q in t.quantities.values() if q.formula},
        "jacobian": t.jacobian.tolist(),
    }


def trace_page(t: Trace) -> str:
    """The whole page, one string of HTML."""
    m, n_in, n_out = t.sizes
    p = t.feature
    stages = {"input": "Inputs (drawn from the seed)", "forward": "Forward pass",
              "backward": "Backward pass"}
    sections = []
    for stage, title in stages.items():
        cards = "".join(_card(q.name, q.formula, q.value, q.stage, q.note)
                        for q in t.quantities.values() if q.stage == stage)
        sections.append(f'<h2 id="{stage}">{title}</h2><div class="cards">{cards}</div>')
    data = json.dumps(page_data(t)).replace("<", "\\u003c")
    meta = "".join(f'<p class="meta">{escape(line)}</p>' for line in header_lines(t)[1:])
    J_err = float(np.max(np.abs(t.jacobian.T @ t.exact.dA[:, p] - t.exact.dZ[:, p])))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bnprop trace: m={m}, n_in={n_in}, n_out={n_out}, {escape(t.activation)}</title>
<style>{CSS}</style></head><body>
<h1>bnprop trace: one batch-normalized layer</h1>
<p class="meta">m = {m} examples, n_in = {n_in}, n_out = {n_out}, activation
{escape(t.activation)}, eps = {t.eps:g}, seed = {t.seed}, dtype {t.cache.A.dtype}</p>
{meta}
<h2 id="graph">Computation graph</h2>
<p class="meta">Forward (blue) left to right, backward (orange) right to left; dashed:
the statistics path that the frozen gradient ignores. Each node links to its values.</p>
{graph_svg(t)}
{"".join(sections)}
<h2 id="compare">Frozen vs exact gradient</h2>
<p class="meta">The frozen gradient holds μ<sub>B</sub> and σ<sub>B</sub><sup>2</sup> fixed
(the handout's part 4); the exact one differentiates through them:
{mathml("dZ_frozen - shift - proj", "dZ_exact")}.</p>
{_side_by_side(t, "dZ")}
{_side_by_side(t, "dW")}
<h2 id="jacobian">Jacobian of feature p = {p}: ∂A[:, {p}] / ∂Z[:, {p}]</h2>
<div class="formula">{mathml(JACOBIAN_FORMULA, "J_p", display=True)}</div>
<p class="meta">From bnprop.jacobians.stated_dA_dZ_training. Row i, column j:
∂A[i, {p}] / ∂Z[j, {p}]. Chain rule check: J<sup>T</sup> dA[:, {p}] = dZ_exact[:, {p}]
to {J_err:.1e}.</p>
{heatmap_svg(t.jacobian)}
{matrix_table(t.jacobian)}
<script type="application/json" id="bnprop-trace">{data}</script>
</body></html>
"""


def check_page_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`~pathlib.Path` if a page can be written there: not a folder,
    in a folder that exists."""
    if not os.fspath(path):
        raise InputError("--html: expected the name of the page to write, got an empty one.")
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{target}: is a folder; expected the name of the page to write.")
    if not target.parent.is_dir():
        raise InputError(f"{target}: the folder {target.parent} does not exist.")
    return target


def write_trace_html(t: Trace, path: str | os.PathLike[str]) -> Path:
    """Write :func:`trace_page` to ``path`` atomically (:func:`check_page_path` first)."""
    target = check_page_path(path)
    page = trace_page(t).encode("utf-8")
    with atomic_writer(target) as f:
        f.write(page)
    return target


def scoped_css(css: str, scope: str) -> str:
    """``css`` with every selector limited to the element ``scope`` (``body`` becomes it)."""
    def scope_group(match: re.Match[str]) -> str:
        selectors = [s.strip() for s in match.group(1).split(",")]
        return "\n" + ", ".join(scope if s == "body" else f"{scope} {s}" for s in selectors) + " {"
    return re.sub(r"([^{}]+)\{", scope_group, css)


def trace_command(
    sizes: tuple[int, int, int] | str, *, seed: int | str, activation: str,
    html: str | None = None,
) -> str:
    """What ``bnprop trace`` prints: the text, and the page's name when ``html`` is given.

    A bad ``html`` path is reported before anything is computed or written.
    """
    if html is not None:
        check_page_path(html)
    t = run_trace(sizes, seed=seed, activation=activation)
    text = t.to_text()
    if html is None:
        return text
    write_trace_html(t, html)
    return (f"{text}\n\nwrote {html}: the computation graph, every value, the formulas, "
            "frozen vs exact, the Jacobian heat map (self-contained: nothing is fetched)")


#: The cache's arrays in the order of the forward pass, with the name the math uses.
_CACHE_FIELDS = (("O", "O"), ("W", "W"), ("gamma", "gamma"), ("beta", "beta"), ("Z", "Z"),
                 ("mu", "mu_B"), ("var", "var_B"), ("inv_std", "inv_std"), ("Obar", "Obar"),
                 ("A", "A"), ("Y", "Y"))


def cache_html(cache: LayerCache, *, max_rows: int = 8, max_cols: int = 8) -> str:
    """A :class:`~bnprop.layer.LayerCache` as HTML (its ``_repr_html_`` in a notebook).

    Every array with its formula, rounded, large ones cut to their first and last
    ``max_rows`` / ``max_cols`` rows and columns.
    """
    m, n_out = cache.A.shape
    cards = []
    for attr, name in _CACHE_FIELDS:
        value = np.asarray(getattr(cache, attr))
        formula = FORMULAS.get(name, "")
        label = name if attr == name else f"{name} (.{attr})"
        cards.append(
            f'<section class="card" data-name="{escape(attr)}"><h3>{escape(label)} '
            f'<span class="shape">{escape(str(tuple(value.shape)))}</span></h3>'
            f'<div class="formula">{mathml(formula, name) if formula else "given"}</div>'
            f"{matrix_table(value, max_rows=max_rows, max_cols=max_cols)}</section>")
    style = scoped_css(CSS, ".bnprop-cache")  # a notebook's own headings keep their style
    return (f'<div class="bnprop-cache"><style>{style}</style>'
            f"<p><b>LayerCache</b>: m = {m}, n_in = {cache.W.shape[1]}, n_out = {n_out}, "
            f"activation {escape(cache.activation)}, eps = {cache.eps:g}, dtype "
            f"{cache.A.dtype}</p><div class=\"cards\">{''.join(cards)}</div></div>")
