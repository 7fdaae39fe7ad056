"""The two pictures of the trace page, as inline SVG: the computation graph and a heat map.

Both are plain SVG elements written into the page: no script, no image file, no font.
"""

from __future__ import annotations

from html import escape

import numpy as np

from bnprop.trace import Trace, fmt

#: Node centres (x, y) of the graph; forward on top, left to right, backward below.
_NODES: dict[str, tuple[int, int]] = {
    "O": (60, 80), "W": (60, 190), "Z": (180, 135), "mu_B": (300, 60), "var_B": (300, 210),
    "inv_std": (420, 210), "Obar": (540, 135), "gamma": (660, 50), "beta": (660, 220),
    "A": (660, 135), "Y": (780, 135), "F": (900, 135),
    "dY": (900, 320), "dA": (780, 320), "dgamma": (660, 400), "dbeta": (660, 470),
    "dZ_frozen": (540, 320), "shift": (540, 470), "proj": (540, 400), "dZ_exact": (420, 400),
    "dW_frozen": (300, 320), "dW_exact": (300, 400), "dO": (180, 400),
}

#: Edges (from, to, kind): "fwd", "stats" (through mu_B, var_B: the frozen gradient's blind
#: spot), "bwd".
_EDGES = (
    ("O", "Z", "fwd"), ("W", "Z", "fwd"), ("Z", "mu_B", "stats"), ("Z", "var_B", "stats"),
    ("mu_B", "var_B", "stats"), ("var_B", "inv_std", "stats"), ("Z", "Obar", "fwd"),
    ("mu_B", "Obar", "stats"), ("inv_std", "Obar", "stats"), ("Obar", "A", "fwd"),
    ("gamma", "A", "fwd"), ("beta", "A", "fwd"), ("A", "Y", "fwd"), ("Y", "F", "fwd"),
    ("F", "dY", "bwd"), ("dY", "dA", "bwd"), ("dA", "dgamma", "bwd"), ("dA", "dbeta", "bwd"),
    ("dA", "dZ_frozen", "bwd"), ("dbeta", "shift", "bwd"), ("dgamma", "proj", "bwd"),
    ("dZ_frozen", "dZ_exact", "bwd"), ("shift", "dZ_exact", "bwd"), ("proj", "dZ_exact", "bwd"),
    ("dZ_frozen", "dW_frozen", "bwd"), ("dZ_exact", "dW_exact", "bwd"),
    ("dZ_exact", "dO", "bwd"),
)

_HALF_W, _HALF_H = 44, 17
_COLORS = {"fwd": "#0969da", "stats": "#0969da", "bwd": "#d97706"}


def _clip(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float]:
    """Where the segment from the centre (x0, y0) towards (x1, y1) leaves the node's box."""
    dx, dy = x1 - x0, y1 - y0
    t = min(_HALF_W / abs(dx) if dx else np.inf, _HALF_H / abs(dy) if dy else np.inf)
    return x0 + t * dx, y0 + t * dy


def _preview(value: np.ndarray) -> str:
    """The tooltip of a node: shape and the first few numbers."""
    flat = np.ravel(value)
    head = ", ".join(fmt(float(x)) for x in flat[:6])
    return f"{tuple(value.shape)}: {head}{', …' if flat.size > 6 else ''}"


def graph_svg(t: Trace) -> str:
    """The layer's computation graph; every node links to its card (``#q-NAME``)."""
    parts = ['<svg id="graph-svg" width="960" height="510" '
             'viewBox="0 0 960 510" role="img" aria-label="computation graph">',
             "<defs>"]
    for kind, color in _COLORS.items():
        parts.append(f'<marker id="arrow-{kind}" viewBox="0 0 10 10" refX="9" refY="5" '
                     f'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
                     f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>')
    parts.append("</defs>")
    parts.append('<text x="10" y="20" font-size="13" fill="#57606a">forward</text>'
                 '<text x="10" y="300" font-size="13" fill="#57606a">backward</text>'
                 '<line x1="0" y1="268" x2="960" y2="268" stroke="#d0d7de"/>')
    for a, b, kind in _EDGES:
        (xa, ya), (xb, yb) = _NODES[a], _NODES[b]
        x0, y0 = _clip(xa, ya, xb, yb)
        x1, y1 = _clip(xb, yb, xa, ya)
        dash = ' stroke-dasharray="5,4"' if kind == "stats" else ""
        parts.append(f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" '
                     f'stroke="{_COLORS[kind]}" stroke-width="1.6"{dash} '
                     f'marker-end="url(#arrow-{kind})"/>')
    for name, (x, y) in _NODES.items():
        q = t.quantities.get(name)
        backward = name.startswith("d") or name in ("shift", "proj")
        fill = "#fff1e0" if backward else ("#e7f0ff" if name != "F" else "#f0f0f0")
        stroke = "#d97706" if backward else "#0969da"
        box = (f'<rect x="{x - _HALF_W}" y="{y - _HALF_H}" width="{2 * _HALF_W}" '
               f'height="{2 * _HALF_H}" rx="6" fill="{fill}" stroke="{stroke}"/>'
               f'<text x="{x}" y="{y + 4}" font-size="13" text-anchor="middle">'
               f"{escape(name)}</text>")
        if q is None:  # F, the objective: no array of its own
            parts.append(f'<g class="node" data-node="{name}"><title>F = sum(dY * Y), the '
                         f"objective whose gradient dY is</title>{box}</g>")
            continue
        tip = escape(f"{name} = {q.formula or 'given'}  {_preview(q.value)}")
        parts.append(f'<a href="#q-{escape(name)}"><g class="node" data-node="{escape(name)}">'
                     f"<title>{tip}</title>{box}</g></a>")
    parts.append("</svg>")
    return "".join(parts)


def diverging_color(v: float, vmax: float) -> str:
    """Blue (-vmax) through white (0) to red (+vmax), as ``rgb(r, g, b)``."""
    s = 0.0 if vmax <= 0 else max(-1.0, min(1.0, v / vmax))
    if s >= 0:  # white -> #b2182b
        r, g, b = 255 + s * (178 - 255), 255 + s * (24 - 255), 255 + s * (43 - 255)
    else:  # white -> #2166ac
        r, g, b = 255 - s * (33 - 255), 255 - s * (102 - 255), 255 - s * (172 - 255)
    return f"rgb({round(r)}, {round(g)}, {round(b)})"


def heatmap_svg(J: np.ndarray, *, cell: int = 44) -> str:
    """A square matrix as a heat map with a colour bar from ``-max|J|`` to ``+max|J|``."""
    n = J.shape[0]
    vmax = float(np.max(np.abs(J), initial=0.0))
    left, top = 34, 24
    size = n * cell
    width, height = left + size + 110, top + size + 20
    parts = [f'<svg id="heatmap-svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             'aria-label="Jacobian heat map">']
    for k in range(n):
        parts.append(f'<text x="{left + k * cell + cell / 2}" y="{top - 8}" font-size="11" '
                     f'text-anchor="middle" fill="#57606a">{k}</text>'
                     f'<text x="{left - 8}" y="{top + k * cell + cell / 2 + 4}" font-size="11" '
                     f'text-anchor="end" fill="#57606a">{k}</text>')
    for i in range(n):
        for j in range(n):
            v = float(J[i, j])
            x, y = left + j * cell, top + i * cell
            label = ""
            if n <= 10:
                ink = "#fff" if vmax > 0 and abs(v) / vmax > 0.6 else "#1b1f24"
                label = (f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" font-size="10" '
                         f'text-anchor="middle" fill="{ink}">{v:.3f}</text>')
            parts.append(f'<g data-i="{i}" data-j="{j}"><title>J[{i}, {j}] = {fmt(v)}</title>'
                         f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" '
                         f'fill="{diverging_color(v, vmax)}" stroke="#fff"/>{label}</g>')
    bar_x, steps = left + size + 24, 40
    for k in range(steps):  # the colour bar, top = +vmax
        v = vmax * (1 - 2 * (k + 0.5) / steps)
        parts.append(f'<rect x="{bar_x}" y="{top + k * size / steps:.2f}" width="18" '
                     f'height="{size / steps + 0.5:.2f}" fill="{diverging_color(v, vmax)}"/>')
    for frac, v in ((0.0, vmax), (0.5, 0.0), (1.0, -vmax)):
        parts.append(f'<text x="{bar_x + 24}" y="{top + frac * size + 4:.1f}" font-size="11">'
                     f"{v:+.3f}</text>")
    parts.append(f'<rect x="{bar_x}" y="{top}" width="18" height="{size}" fill="none" '
                 'stroke="#8c959f"/></svg>')
    return "".join(parts)
