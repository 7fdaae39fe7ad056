"""The ``bnprop trace --html`` page and ``LayerCache._repr_html_``.

The page's numbers are read back from its JSON block (full precision) and from its
tables (rounded), and compared with ``layer_forward`` / ``layer_backward``. A real browser
(headless Chromium, where installed) renders it, and the screenshot must not be blank.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import bnprop
from bnprop.cli import main
from bnprop.trace import fmt, run_trace
from bnprop.trace_html import CSS, cache_html, scoped_css, trace_page
from tests.test_trace import library_values


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("page") / "trace.html"
    assert main(["trace", "--sizes", "5,3,2", "--seed", "2", "--activation", "tanh",
                 "--html", str(path)]) == 0
    return path, path.read_text(encoding="utf-8")


def page_json(text: str) -> dict:
    match = re.search(r'<script type="application/json" id="bnprop-trace">(.*?)</script>', text,
                      re.S)
    assert match is not None
    return json.loads(match.group(1))


def test_json_block_holds_every_library_value_at_full_precision(page) -> None:
    data = page_json(page[1])
    want = library_values((5, 3, 2), 2, "tanh")
    for name, value in want.items():
        np.testing.assert_array_equal(np.array(data["quantities"][name]), value, err_msg=name)
    assert data["config"] == {"sizes": [5, 3, 2], "seed": 2, "activation": "tanh", "eps": 1e-5,
                              "feature": 0, "dtype": "float64"}
    t = run_trace((5, 3, 2), seed=2, activation="tanh")
    np.testing.assert_array_equal(np.array(data["jacobian"]), t.jacobian)
    np.testing.assert_array_equal(np.array(data["quantities"]["proj"]),
                                  t.quantities["proj"].value)


def test_tables_show_the_rounded_values(page) -> None:
    text = page[1]
    t = run_trace((5, 3, 2), seed=2, activation="tanh")
    for name, q in t.quantities.items():
        card = re.search(rf'<section class="card \w+" id="q-{name}" data-name="{name}">(.*?)'
                         r"</section>", text, re.S)
        assert card is not None, name
        cells = re.findall(r"<td>([^<]*)</td>", card.group(1))
        assert cells == [fmt(float(x)) for x in np.ravel(q.value)], name
        assert "<math" in card.group(1) or q.stage == "input"


def test_frozen_and_exact_side_by_side_with_the_difference_highlighted(page) -> None:
    text = page[1]
    t = run_trace((5, 3, 2), seed=2, activation="tanh")
    for name in ("dZ", "dW"):
        block = re.search(rf'<div class="side" data-compare="{name}">(.*?)</div></div>'
                          r"(?=<h|\s*<h)", text, re.S)
        assert block is not None
        cols = re.findall(r'<div class="col"><h4>(.*?)</h4>', block.group(1))
        assert cols == [f"{name}_frozen", f"{name}_exact", f"{name}_exact − {name}_frozen"]
        diff = getattr(t.exact, name) - getattr(t.frozen, name)
        shaded = re.findall(r'<td class="diff" style="background: rgba\(255, 140, 0, '
                            r'([\d.]+)\)">([^<]*)</td>', block.group(1))
        assert [s for _, s in shaded] == [fmt(float(x)) for x in np.ravel(diff)]
        alphas = np.array([float(a) for a, _ in shaded])
        assert alphas.max() == pytest.approx(0.9) and alphas.min() >= 0.12
        assert int(np.argmax(alphas)) == int(np.argmax(np.abs(diff)))
        rel = float(re.search(rf'data-rel="{name}">([^<]*)<', text).group(1))
        want = np.linalg.norm(diff) / np.linalg.norm(getattr(t.exact, name))
        assert rel == pytest.approx(want, rel=1e-2)


def test_graph_and_heat_map_are_inline_svg(page) -> None:
    text = page[1]
    graph = re.search(r'<svg id="graph-svg".*?</svg>', text, re.S).group(0)
    ET.fromstring(graph)  # well-formed
    nodes = set(re.findall(r'data-node="([^"]+)"', graph))
    assert {"O", "W", "Z", "mu_B", "var_B", "inv_std", "Obar", "A", "Y", "dY", "dA", "dgamma",
            "dbeta", "dZ_frozen", "dZ_exact", "dW_frozen", "dW_exact", "dO"} <= nodes
    for name in nodes - {"F"}:  # every node links to a card that exists
        assert f'href="#q-{name}"' in graph and f'id="q-{name}"' in text
    heat = re.search(r'<svg id="heatmap-svg".*?</svg>', text, re.S).group(0)
    ET.fromstring(heat)
    cells = re.findall(r'<g data-i="(\d+)" data-j="(\d+)"><title>J\[\d+, \d+\] = ([^<]*)</title>'
                       r'<rect [^>]*fill="rgb\((\d+), (\d+), (\d+)\)"', heat)
    J = run_trace((5, 3, 2), seed=2, activation="tanh").jacobian
    assert len(cells) == J.size
    for i, j, shown, r, _, b in cells:
        v = J[int(i), int(j)]
        assert shown == fmt(v)
        assert (int(r) > int(b)) == (v > 0) or abs(v) < 1e-3  # red positive, blue negative
    assert "+0.000" in heat and f"{np.abs(J).max():+.3f}" in heat  # the colour bar's labels


def test_page_fetches_nothing(page) -> None:
    text = page[1]
    assert not re.search(r"https?:|//[a-z]", text, re.I)
    assert not re.search(r"<script(?![^>]*type=\"application/json\")", text)
    assert not re.search(r"\bsrc\s*=|<link|@import|url\((?!#)|<iframe|<img", text, re.I)
    for href in re.findall(r'href="([^"]*)"', text):
        assert href.startswith("#")
    for math in re.findall(r"<math.*?</math>", text, re.S):
        ET.fromstring(math)


def test_html_file_is_written_atomically_and_replaced(tmp_path: Path, capsys) -> None:
    path = tmp_path / "t.html"
    path.write_text("old")
    assert main(["trace", "--html", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    assert path.read_text(encoding="utf-8") == trace_page(run_trace())
    assert [p.name for p in tmp_path.iterdir()] == ["t.html"]


def test_an_empty_page_name_is_named_as_such(capsys) -> None:  # type: ignore[no-untyped-def]
    """Not as the current folder, which is what an empty path becomes."""
    assert main(["trace", "--html", ""]) == 2
    assert capsys.readouterr().err == ("bnprop trace: error: --html: expected the name of the "
                                       "page to write, got an empty one.\n")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_page_renders_in_headless_chromium(page, tmp_path: Path) -> None:
    plt = pytest.importorskip("matplotlib.pyplot")
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=1200,1600", page[0].resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    img = plt.imread(shot)[..., :3]
    assert img.shape[:2] == (1600, 1200)
    rgb = np.round(img * 255).astype(np.int32)
    colors = np.unique(rgb.reshape(-1, 3) @ np.array([65536, 256, 1]))
    assert len(colors) > 100  # text, tables, graph: not a blank page
    assert float(img.std()) > 0.05
    dark = (rgb.sum(axis=2) < 200).mean()
    assert 0.005 < dark < 0.5  # there is text, and the page is not black

    def count(color: tuple[int, int, int]) -> int:
        return int(np.all(np.abs(rgb - np.array(color)) <= 2, axis=2).sum())

    assert count((0xE7, 0xF0, 0xFF)) > 2000  # the forward nodes of the graph are drawn
    assert count((0xFF, 0xF1, 0xE0)) > 2000  # the backward nodes


def test_layer_cache_repr_html_shows_every_array() -> None:
    rng = np.random.default_rng(0)
    c = bnprop.layer_forward(rng.standard_normal((4, 3)), rng.standard_normal((2, 3)),
                             np.ones(2), np.zeros(2), activation="relu")
    html = c._repr_html_()
    assert html == cache_html(c)
    for attr in ("O", "W", "gamma", "beta", "Z", "mu", "var", "inv_std", "Obar", "A", "Y"):
        card = re.search(rf'data-name="{attr}">(.*?)</section>', html, re.S)
        assert card is not None, attr
        cells = re.findall(r"<td>([^<]*)</td>", card.group(1))
        assert cells == [fmt(float(x)) for x in np.ravel(getattr(c, attr))], attr
    assert "m = 4, n_in = 3, n_out = 2, activation relu" in html
    assert "mu_B (.mu)" in html and "<math" in html
    for selectors in re.findall(r"([^{}]+)\{", re.search(r"<style>(.*?)</style>", html,
                                                          re.S).group(1)):
        for s in selectors.split(","):  # the style touches nothing outside the cache's div
            assert s.strip().startswith(".bnprop-cache"), s


def test_large_cache_is_cut_to_its_corners() -> None:
    rng = np.random.default_rng(1)
    c = bnprop.layer_forward(rng.standard_normal((60, 100)), rng.standard_normal((50, 100)),
                             np.ones(50), np.zeros(50))
    html = c._repr_html_()
    assert len(html) < 60_000
    card = re.search(r'data-name="O">(.*?)</section>', html, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", card)
    assert len(rows) == 1 + 9  # header, 4 first rows, an ellipsis, 4 last rows
    assert "⋮" in card and "…" in card
    assert f"<td>{fmt(c.O[59, 99])}</td>" in rows[-1]
    assert rows[-1].startswith("<th>59</th>")


def test_scoped_css_prefixes_each_selector() -> None:
    out = scoped_css("body { a: 1 }\nh1, .b td { c: 2 }", ".s")
    assert out.split() == ".s { a: 1 } .s h1, .s .b td { c: 2 }".split()
    assert scoped_css(CSS, ".s").count("{") == CSS.count("{")
