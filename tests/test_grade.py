"""``bnprop grade``: every listed mistake, planted in a learner's file, gets its own verdict."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import bnprop
from bnprop.cli import main
from bnprop.grade_cases import GRADIENT_KEYS, MISTAKES, expected, make_cases
from bnprop.grading import TOL, GradeReport, grade, write_template

#: A learner's file: the handout's layer by hand, with one planted mistake (or none).
LEARNER = '''\
import numpy as np

MISTAKE = {mistake!r}
FROZEN = {frozen!r}


def gradients(O, W, gamma, beta, dY, eps):
    m = O.shape[0]
    if MISTAKE == "mean-instead-of-sum":
        dY = dY / m
    Z = O @ W.T
    mu = Z.mean(axis=0)
    var = Z.var(axis=0, ddof=1 if MISTAKE == "unbiased-variance" else 0)
    inv_std = 1.0 / np.sqrt(var + eps)
    Obar = (Z - mu) * inv_std
    A = gamma * Obar + beta
    Y = 1.0 / (1.0 + np.exp(-A))
    dA = (A * (1 - A) if MISTAKE == "sigmoid-derivative-of-input" else Y * (1 - Y)) * dY
    mean_term = dA.mean(axis=0)
    var_term = Obar * (dA * Obar).mean(axis=0)
    if FROZEN or MISTAKE in ("frozen-statistics", "missing-mean-term"):
        mean_term = 0.0
    if FROZEN or MISTAKE in ("frozen-statistics", "missing-variance-term"):
        var_term = 0.0
    dZ = gamma * inv_std * (dA - mean_term - var_term)
    dW = O.T @ dZ if MISTAKE == "transposed" else dZ.T @ O
    return {{"dA": dA, "dgamma": (dA * Obar).sum(axis=0), "dbeta": dA.sum(axis=0),
             "dW": dW, "dO": dZ @ W}}
'''

#: The gradients each planted mistake changes (the others must stay correct).
AFFECTS = {
    "frozen-statistics": {"dW", "dO"},
    "missing-mean-term": {"dW", "dO"},
    "missing-variance-term": {"dW", "dO"},
    "unbiased-variance": set(GRADIENT_KEYS),
    "mean-instead-of-sum": set(GRADIENT_KEYS),
    "transposed": {"dW"},
    "sigmoid-derivative-of-input": set(GRADIENT_KEYS),
}
FROZEN_MODE_MISTAKES = [m.id for m in MISTAKES if "frozen" in m.modes]


def _learner(tmp_path: Path, mistake: str | None = None, *, frozen: bool = False) -> Path:
    path = tmp_path / f"learner_{mistake or 'correct'}{'_frozen' if frozen else ''}.py"
    path.write_text(LEARNER.format(mistake=mistake, frozen=frozen))
    return path


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bnprop", "grade", *args], capture_output=True,
                          text=True, timeout=timeout)


def _source(body: str) -> str:
    return "import numpy as np\n\n" + textwrap.dedent(body)


def _file(tmp_path: Path, body: str, name: str = "mine.py") -> Path:
    path = tmp_path / name
    path.write_text(_source(body))
    return path


def test_listed_mistakes_are_the_issues() -> None:
    assert [m.id for m in MISTAKES] == list(AFFECTS)


def test_a_correct_file_passes_with_exit_status_0(tmp_path: Path) -> None:
    proc = _cli(str(_learner(tmp_path)), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["passed"] is True and out["error"] is None
    assert list(out["gradients"]) == list(GRADIENT_KEYS)
    for g in out["gradients"].values():
        assert set(g) == {"verdict", "max_rel_error", "message"}
        assert g["verdict"] == "correct" and 0 <= g["max_rel_error"] <= TOL


@pytest.mark.parametrize("mistake", list(AFFECTS))
def test_cli_names_each_planted_mistake(tmp_path: Path, mistake: str) -> None:
    proc = _cli(str(_learner(tmp_path, mistake)), "--json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["passed"] is False
    verdicts = {k: g["verdict"] for k, g in out["gradients"].items()}
    assert verdicts == {k: mistake if k in AFFECTS[mistake] else "correct"
                        for k in GRADIENT_KEYS}


@pytest.mark.parametrize("mistake", FROZEN_MODE_MISTAKES)
def test_expect_frozen_names_each_mistake_on_the_handouts_formula(tmp_path: Path,
                                                                  mistake: str) -> None:
    report = grade(_learner(tmp_path, mistake, frozen=True), expect="frozen")
    affected = AFFECTS[mistake]
    assert {k: g.verdict for k, g in report.gradients.items()} == {
        k: mistake if k in affected else "correct" for k in GRADIENT_KEYS}


def test_expect_frozen_accepts_the_handout_and_refuses_the_exact_gradient(tmp_path: Path
                                                                          ) -> None:
    assert grade(_learner(tmp_path, frozen=True), expect="frozen").passed
    assert not grade(_learner(tmp_path, frozen=True)).passed
    report = grade(_learner(tmp_path), expect="frozen")
    assert report.gradients["dA"].verdict == "correct"
    assert report.gradients["dW"].verdict == "unknown"


def _in_process(mistake: str | None, frozen: bool = False) -> dict:
    namespace: dict = {}
    exec(LEARNER.format(mistake=mistake, frozen=frozen), namespace)
    return namespace


@pytest.mark.parametrize("mistake", list(AFFECTS))
def test_python_api_names_each_mistake_and_returns_a_dataclass(mistake: str) -> None:
    report = bnprop.grade(_in_process(mistake)["gradients"])
    assert isinstance(report, GradeReport)
    for key in GRADIENT_KEYS:
        want = mistake if key in AFFECTS[mistake] else "correct"
        assert report.gradients[key].verdict == want, key
        assert report.gradients[key].message
    assert not report.passed
    assert "<table>" in report._repr_html_() and mistake in report._repr_html_()


def _gap(xs: list[np.ndarray], ys: list[np.ndarray]) -> float:
    """The largest relative difference over the cases (inf when a shape differs)."""
    return max(float(np.max(np.abs(x - y)) / np.max(np.abs(y))) if x.shape == y.shape
               else np.inf for x, y in zip(xs, ys, strict=True))


@pytest.mark.parametrize("expect", ["exact", "frozen"])
def test_each_mistake_differs_from_every_other_answer_on_some_case(expect: str) -> None:
    """The cases are enough: on each gradient a mistake changes, its answer (every form of
    it) is far from the expected one and from every other mistake's on some case."""
    cases = make_cases()
    refs = [expected(c, expect) for c in cases]
    for key in GRADIENT_KEYS:
        answers: list[tuple[str, list[np.ndarray]]] = [("expected", [r[key] for r in refs])]
        for m in MISTAKES:
            if expect not in m.modes:
                continue
            per_case = [m.forms(c, expect) for c in cases]
            for f in range(len(per_case[0])):
                xs = [forms[f].get(key) for forms in per_case]
                if all(x is not None for x in xs) and _gap(xs, answers[0][1]) > TOL:
                    answers.append((m.id, xs))
            changed = any(a == m.id for a, _ in answers)
            changes = AFFECTS[m.id] | ({"dA", "dO"} if m.id == "transposed" else set())
            assert changed == (key in changes), (expect, key, m.id)
        for (a, xs), (b, ys) in itertools.combinations(answers, 2):
            if a != b:
                assert _gap(xs, ys) > 1e3 * TOL, (expect, key, a, b)


def test_unbiased_variance_through_autograd_is_recognised() -> None:
    torch = pytest.importorskip("torch")

    def gradients(O, W, gamma, beta, dY, eps):
        t = {k: torch.tensor(v, requires_grad=True) for k, v in
             {"O": O, "W": W, "gamma": gamma, "beta": beta}.items()}
        Z = t["O"] @ t["W"].T
        A = t["gamma"] * (Z - Z.mean(0)) / torch.sqrt(Z.var(0) + eps) + t["beta"]  # unbiased
        A.retain_grad()
        (torch.sigmoid(A) * torch.tensor(dY)).sum().backward()
        return {"dA": A.grad, "dgamma": t["gamma"].grad, "dbeta": t["beta"].grad,
                "dW": t["W"].grad, "dO": t["O"].grad}

    report = grade(gradients)
    assert {g.verdict for g in report.gradients.values()} == {"unbiased-variance"}


@pytest.mark.parametrize(("key", "transform", "verdict"), [
    ("dA", "dA.T", "transposed"),
    ("dO", "(dZ @ W).T", "transposed"),
    ("dgamma", "(dA * Obar).sum(axis=0)[None, :]", "wrong-shape"),
    ("dW", "(dZ.T @ O)[:, :1]", "wrong-shape"),
    ("dW", "(dZ.T @ O).T * 2", "wrong-shape"),
    ("dW", "dZ.T @ O * np.nan", "not-finite"),
    ("dW", "dZ.T @ O * 1.1", "unknown"),
    ("dbeta", "'a string'", "wrong-shape"),
])
def test_other_verdicts(tmp_path: Path, key: str, transform: str, verdict: str) -> None:
    path = _file(tmp_path, f"""
        def gradients(O, W, gamma, beta, dY, eps):
            Z = O @ W.T
            inv_std = 1 / np.sqrt(Z.var(axis=0) + eps)
            Obar = (Z - Z.mean(axis=0)) * inv_std
            Y = 1 / (1 + np.exp(-(gamma * Obar + beta)))
            dA = Y * (1 - Y) * dY
            dZ = gamma * inv_std * (dA - dA.mean(0) - Obar * (dA * Obar).mean(0))
            return {{"dA": dA, "{key}": {transform}}}
        """)
    report = grade(path)
    assert report.gradients[key].verdict == verdict, report.gradients[key]
    if key != "dA":
        assert report.gradients["dA"].verdict == "correct"
    if verdict == "unknown":
        assert "largest error on case" in report.gradients[key].message
        assert report.gradients[key].max_rel_error == pytest.approx(0.1, rel=1e-6)


def test_a_raising_function_shows_its_message(tmp_path: Path) -> None:
    path = _file(tmp_path, """
        def gradients(O, W, gamma, beta, dY, eps):
            if O.shape[0] == 2:
                raise ValueError("batches of two are odd")
            return {"dbeta": dY.sum(axis=0)}
        """)
    proc = _cli(str(path))
    assert proc.returncode == 1
    assert "raised" in proc.stdout
    assert "ValueError: batches of two are odd (line 6) on case 'm=2'" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_syntax_error_in_an_imported_helper_names_the_helper(tmp_path: Path) -> None:
    """Not the learner's file with the helper's line number."""
    (tmp_path / "helper_bad.py").write_text("\n" * 6 + "def f(:\n")
    path = _file(tmp_path, "import helper_bad\n")
    proc = _cli(str(path))
    assert proc.returncode == 1
    assert proc.stdout.strip() == (f"{path}: {tmp_path / 'helper_bad.py'}: line 7: syntax "
                                   "error: invalid syntax (line 3).")


def test_a_huge_array_or_many_extra_keys_are_graded(tmp_path: Path) -> None:
    """A returned array far larger than its gradient is judged wrong-shape without being
    sent back whole (it hit the child's file-size limit); 30,000 extra keys do not
    overflow the results."""
    path = _file(tmp_path, """
        def gradients(O, W, gamma, beta, dY, eps):
            out = {f"extra{i}": 0 for i in range(30000)}
            out["dW"] = np.ones((3000, 3000))
            return out
    """)
    proc = _cli(str(path), "--json")
    out = json.loads(proc.stdout)
    assert out["error"] is None, out["error"]
    dW = out["gradients"]["dW"]
    assert dW["verdict"] == "wrong-shape"
    assert "it is an array of shape (3000, 3000), 9000000 entries where" in dW["message"]
    assert dW["message"].endswith("are expected; return one of the expected shape.")


def test_a_learner_raising_keyboardinterrupt_is_graded_as_raised(tmp_path: Path) -> None:
    """It is the learner's exception (no terminal reaches the child), not a kill by
    SIGINT; and the summary says nothing was returned."""
    path = _file(tmp_path, """
        def gradients(O, W, gamma, beta, dY, eps):
            raise KeyboardInterrupt
    """)
    proc = _cli(str(path))
    assert proc.returncode == 1
    assert "raised" in proc.stdout and "KeyboardInterrupt (line 5)" in proc.stdout
    assert "SIGINT" not in proc.stdout
    assert "not passed: gradients raised an exception, so nothing was returned." in proc.stdout


def test_json_is_strict_when_an_error_overflows(tmp_path: Path) -> None:
    """max|x - ref| / max|ref| overflows for huge values: null, never Infinity."""
    path = _file(tmp_path, """
        def gradients(O, W, gamma, beta, dY, eps):
            return {"dbeta": np.full(len(gamma), 1.7e308)}
    """)
    proc = _cli(str(path), "--json")
    out = json.loads(proc.stdout, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert out["gradients"]["dbeta"]["max_rel_error"] is None and not out["passed"]


def test_a_template_whose_name_is_not_utf8_is_written(tmp_path: Path) -> None:
    name = os.fsdecode(b"\xff.py")
    proc = subprocess.run([sys.executable, "-m", "bnprop", "grade", "--template",
                           os.fsencode(tmp_path / name)], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert b"\\udcff" in (tmp_path / name).read_bytes()  # shown escaped, the file is UTF-8


@pytest.mark.parametrize(("body", "expected_line"), [
    ("def gradients(O, W:\n", r"line 3: syntax error"),
    ("import no_such_module_for_bnprop\n", r"import failed \(line 3\): No module named"),
    ("def gradients(O, W, gamma, beta, dY, eps):\n    return (1, 2)\n",
     r"returned a tuple on case 'm=4'; return a mapping"),
    ("def gradients(O, W, gamma, beta, dY, eps):\n    return {'dw': 1}\n",
     r"returned none of dA, dgamma, dbeta, dW, dO \(it returned only 'dw'\)"),
    ("def gradient(O, W, gamma, beta, dY, eps):\n    return {}\n",
     r"defines no function gradients\(O, W, gamma, beta, dY, eps\)"),
    ("def gradients(O, W, gamma, beta, dY):\n    return {}\n",
     r"gradients must accept \(O, W, gamma, beta, dY, eps\)"),
    ("import sys\nsys.exit(3)\n", r"raised SystemExit: 3 \(line 4\) while being imported"),
    ("import os\ndef gradients(O, W, gamma, beta, dY, eps):\n    os._exit(7)\n",
     r"the process running it exited with status 7"),
    ("import os\ndef gradients(O, W, gamma, beta, dY, eps):\n    os._exit(0)\n",
     r"exited with status 0 before sending back any result \(os\._exit\?\)\.$"),
    ("import os, signal\ndef gradients(O, W, gamma, beta, dY, eps):\n"
     "    os.kill(os.getpid(), signal.SIGSEGV)\n", r"killed by SIGSEGV"),
    ("def gradients(O, W, gamma, beta, dY, eps):\n    while True:\n        pass\n",
     r"still running after 1 s \(an endless loop\?\), so it was stopped"),
    ("while True:\n    pass\n", r"still running after 1 s"),
    ("while True:\n    print('x' * 10000)\n", r"raised OSError: \[Errno 27\] File too large \(line 4\)"),
    ("def gradients(O, W, gamma, beta, dY, eps):\n    return {}\0\n",  # no line number
     r"^\S+: syntax error: source code string cannot contain null bytes\.$"),
    ("x = eval('1 +')\n", r"<string>: line 1: syntax error: .* \(line 3\)\.$"),
])
def test_a_file_that_cannot_be_graded_gets_one_line(
        tmp_path: Path, body: str, expected_line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mine.py"
    path.write_text("import numpy as np\n\n" + body)
    proc = _cli(str(path), "--timeout", "1")
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith(f"{path}: ")
    assert __import__("re").search(expected_line, lines[0]), lines[0]
    assert proc.stderr == ""
    assert main(["grade", str(path), "--timeout", "1", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out == {"gradients": {}, "passed": False, "expect": "exact", "source": str(path),
                   "error": lines[0]}


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grade", str(tmp_path / "missing.py")]) == 2
    assert "missing.py: no such file." in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert main(["grade", str(tmp_path / "notes.txt")]) == 2
    assert "expected a Python file (.py)" in capsys.readouterr().err
    with pytest.raises(bnprop.InputError, match="expect: expected one of"):
        grade(lambda *a: {}, expect="training")
    with pytest.raises(bnprop.InputError, match="fn: expected a function"):
        grade(42)  # type: ignore[arg-type]


def test_only_the_returned_gradients_are_graded() -> None:
    report = grade(lambda O, W, gamma, beta, dY, eps: {"dbeta": np.zeros(W.shape[0])})
    assert list(report.gradients) == ["dbeta"]
    assert report.gradients["dbeta"].verdict == "unknown"


def test_writing_into_the_inputs_changes_nothing() -> None:
    good = _in_process(None)["gradients"]

    def vandal(O, W, gamma, beta, dY, eps):
        out = good(O, W, gamma, beta, dY, eps)
        for a in (O, W, gamma, beta, dY):
            a[...] = 0
        return out

    assert grade(vandal).passed and grade(vandal).passed


def test_template_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "bn_grads.py"
    proc = _cli("--template", str(path))
    assert proc.returncode == 0 and path.is_file()
    text = path.read_text()
    assert "def gradients(O, W, gamma, beta, dY, eps):" in text and "bn_grads.py" in text
    empty = _cli(str(path))  # as written: it returns nothing yet
    assert empty.returncode == 1 and "returned none of dA" in empty.stdout
    body = LEARNER.split("def gradients(O, W, gamma, beta, dY, eps):\n")[1]
    filled = text.replace("    grads = {}\n", "").replace(
        "    # Compute the forward pass above, then the gradients, e.g. grads[\"dA\"] = ...\n"
        "    return grads\n",
        "    MISTAKE, FROZEN = None, False\n" + body.replace("{{", "{").replace("}}", "}"))
    path.write_text(filled)
    assert _cli(str(path)).returncode == 0
    again = _cli("--template", str(path))
    assert again.returncode == 2 and "already exists; not overwritten" in again.stderr
    with pytest.raises(bnprop.InputError, match=r"ending in \.py"):
        write_template(tmp_path / "x.txt")


def test_text_table_has_one_row_per_gradient(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grade", str(_learner(tmp_path, "missing-mean-term"))]) == 1
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.split()[:1] and
            line.split()[0] in GRADIENT_KEYS]
    assert [r.split()[0] for r in rows] == list(GRADIENT_KEYS)
    assert "missing-mean-term" in rows[3] and "subtract mean_rows(dA)" in rows[3]
    assert "not passed: 2 of 5" in out


def test_html_report_escapes_what_the_learner_wrote() -> None:
    def gradients(O, W, gamma, beta, dY, eps):
        raise ValueError("<script>alert(1)</script>")

    report = grade(gradients)
    assert set(report.gradients) == set(GRADIENT_KEYS)
    assert {g.verdict for g in report.gradients.values()} == {"raised"}
    assert "ValueError: <script>alert(1)</script>" in report.gradients["dA"].message
    page = report._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert report.to_json()["passed"] is False
