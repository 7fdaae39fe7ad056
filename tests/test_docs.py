"""The README and docs are self-contained: no pointer outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_readme_and_docs_point_nowhere_outside_the_repository() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        assert "../shared" not in text and "MATH.md" not in text, page.name
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" in target:
                continue
            assert not (page.parent / target).resolve().is_relative_to(ROOT.parent / "shared")
            assert (page.parent / target).resolve().is_relative_to(ROOT), (page.name, target)


def test_the_two_commands_lead_the_readme() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[6].startswith("python3 -m venv .venv && .venv/bin/pip install -e '.[mpi]'")
    assert lines[7] == ("python3 -m venv .venv && .venv/bin/pip install -e '.[test,mpi]' && "
                        ".venv/bin/python -m pytest -q")


def test_the_readme_python_example_runs() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has a Python example"
    for code in blocks:
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)
        assert np.isfinite(scope["loss"])
