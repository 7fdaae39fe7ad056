"""The trace's ASCII formulas as MathML Core, so a browser renders them with nothing fetched.

One formula is written once, in the ASCII the terminal prints (:mod:`bnprop.trace`), and
rendered here. The notation it understands::

    name          Z, mu_B, var_B, inv_std, Obar, gamma, dZ_frozen, gamma_p, ...
    a * b         element-wise product, shown as a centered dot
    a b           matrix product (juxtaposition)
    a / b         fraction of the two neighbouring atoms; parentheses around either drop
    a^T, (..)^2   superscript of the atom before
    sqrt(x)       square root
    sum_rows(x)   sum over the rows i = 1..m
    mean_rows(x)  (1/m) sum_rows(x)
    f(x)          any other call: f applied to x (sigma, sigma')

Anything else is an error: a formula the renderer cannot read is a bug in the trace.
"""

from __future__ import annotations

import re
from html import escape

_TOKEN = re.compile(r"\s*(?:([A-Za-z][A-Za-z0-9_]*'?)|(\d+(?:\.\d+)?)|(.))")

#: Identifiers with a symbol of their own; others are split at their last ``_`` (a subscript).
_SYMBOLS = {
    "gamma": "<mi>γ</mi>",
    "beta": "<mi>β</mi>",
    "eps": "<mi>ε</mi>",
    "sigma": "<mi>σ</mi>",
    "sigma'": "<msup><mi>σ</mi><mo>′</mo></msup>",
    "mu_B": "<msub><mi>μ</mi><mi>B</mi></msub>",
    "var_B": "<msubsup><mi>σ</mi><mi>B</mi><mn>2</mn></msubsup>",
    "inv_std": "<mi>inv_std</mi>",
    "Obar": "<mi>Ō</mi>",
    "I": "<mi mathvariant=\"normal\">I</mi>",
}

_OPERATORS = {"*": "·", "-": "−", "+": "+", "=": "=", ",": ","}

_SUM_ROWS = "<munder><mo>∑</mo><mtext>rows</mtext></munder>"
_MEAN = "<mfrac><mn>1</mn><mi>m</mi></mfrac>"


def _tokens(formula: str) -> list[str]:
    out = []
    pos = 0
    formula = formula.rstrip()
    while pos < len(formula):
        match = _TOKEN.match(formula, pos)
        if match is None:  # pragma: no cover - the pattern matches any character
            raise ValueError(f"formula {formula!r}: cannot read at {pos}")
        out.append(next(g for g in match.groups() if g is not None))
        pos = match.end()
    return out


def identifier(name: str) -> str:
    """MathML of one name: its symbol, ``d`` + a name, or ``base`` with a subscript."""
    if name in _SYMBOLS:
        return _SYMBOLS[name]
    if "_" in name:
        base, sub = name.rsplit("_", 1)
        sub_ml = f"<mi>{escape(sub)}</mi>" if len(sub) == 1 else f"<mtext>{escape(sub)}</mtext>"
        return f"<msub>{identifier(base)}{sub_ml}</msub>"
    if name.startswith("d") and (name[1:] in _SYMBOLS or len(name) == 2):
        return f"<mrow><mi>d</mi>{identifier(name[1:])}</mrow>"
    return f"<mi>{escape(name)}</mi>"


def _unwrap(node: str) -> str:
    """A parenthesized group without its parentheses (inside a fraction)."""
    head, tail = "<mrow><mo>(</mo>", "<mo>)</mo></mrow>"
    if node.startswith(head) and node.endswith(tail):
        return f"<mrow>{node[len(head):-len(tail)]}</mrow>"
    return node


class _Parser:
    """Reads the token list into MathML nodes, one atom or operator at a time."""

    def __init__(self, formula: str) -> None:
        self.formula = formula
        self.tokens = _tokens(formula)
        self.pos = 0

    def fail(self, why: str) -> ValueError:
        return ValueError(f"formula {self.formula!r}: {why} at token {self.pos}")

    def sequence(self, closing: str | None) -> list[str]:
        """Nodes up to ``closing`` (consumed) or the end."""
        nodes: list[str] = []
        fraction = False
        while self.pos < len(self.tokens):
            tok = self.tokens[self.pos]
            if tok == closing:
                self.pos += 1
                if fraction:
                    raise self.fail("'/' without a denominator")
                return nodes
            self.pos += 1
            if tok == "/":
                if not nodes or fraction:
                    raise self.fail("'/' without a numerator")
                fraction = True
                continue
            if tok == "^":
                if not nodes or self.pos >= len(self.tokens):
                    raise self.fail("'^' without a base or exponent")
                nodes.append(_superscript(nodes.pop(), self.atom(self.tokens[self.pos])))
                self.pos += 1
                continue
            node = _operator(tok) if tok in _OPERATORS else self.atom(tok)
            if fraction:
                node = f"<mfrac>{_unwrap(nodes.pop())}{_unwrap(node)}</mfrac>"
                fraction = False
            nodes.append(node)
        if closing is not None:
            raise self.fail(f"missing {closing!r}")
        if fraction:
            raise self.fail("'/' without a denominator")
        return nodes

    def atom(self, tok: str) -> str:
        """One operand: a number, a name, a call or a parenthesized group (pos after ``tok``)."""
        if tok == "(":
            inner = "".join(self.sequence(")"))
            return f"<mrow><mo>(</mo>{inner}<mo>)</mo></mrow>"
        if tok[0].isdigit():
            return f"<mn>{tok}</mn>"
        if not tok[0].isalpha():
            raise self.fail(f"unexpected {tok!r}")
        if self.pos < len(self.tokens) and self.tokens[self.pos] == "(":
            self.pos += 1
            inner = "".join(self.sequence(")"))
            if tok == "sqrt":
                return f"<msqrt>{inner}</msqrt>"
            group = f"<mrow><mo>(</mo>{inner}<mo>)</mo></mrow>"
            if tok == "sum_rows":
                return f"<mrow>{_SUM_ROWS}{group}</mrow>"
            if tok == "mean_rows":
                return f"<mrow>{_MEAN}{_SUM_ROWS}{group}</mrow>"
            return f"<mrow>{identifier(tok)}{group}</mrow>"
        return identifier(tok)


def _superscript(base: str, exponent: str) -> str:
    """``base^exponent``; a subscripted base keeps both scripts on its name (``msubsup``)."""
    if base.startswith("<msub>") and base.endswith("</msub>"):
        return f"<msubsup>{base[len('<msub>'):-len('</msub>')]}{exponent}</msubsup>"
    return f"<msup>{base}{exponent}</msup>"


def _operator(tok: str) -> str:
    return f"<mo>{_OPERATORS[tok]}</mo>"


def mathml(formula: str, lhs: str | None = None, *, display: bool = False) -> str:
    """``<math>`` of ``lhs = formula`` (or of ``formula`` alone), MathML Core.

    Raises
    ------
    ValueError
        The formula is not in the notation of the module docstring.
    """
    text = formula if lhs is None else f"{lhs} = {formula}"
    body = "".join(_Parser(text).sequence(None))
    mode = ' display="block"' if display else ""
    return f'<math{mode}><mrow>{body}</mrow></math>'
