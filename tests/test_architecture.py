"""docs/architecture.md's import rules, checked on the code: each module imports (at module
level) only its own layer and the layers below it; torch, jax and mpi4py only inside
functions; no source file over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "bnprop"

#: Layer of each module, by dotted name prefix (longest match wins); the order is the rank.
LAYERS = {
    "base": ["_validate", "_atomic", "_aligned", "files", "progress", "interrupt", "footprint"],
    "math": ["activations", "batchnorm", "layer", "layer_cache", "loss", "jacobians", "conv"],
    "data": ["data"],
    "kernels": ["kernels", "threads"],
    "nn": ["nn"],
    "model": ["model", "model_cnn", "folded", "optim", "optim_flat", "schedule"],
    "distributed": ["distributed"],
    "runs": ["train", "runconfig", "runfolder", "checkpoint", "check", "check_bn2d", "arch",
             "grad", "grade_cases",
             "grading", "grade_report", "grade_process", "_grade_child", "trace", "trace_html",
             "trace_graph", "trace_mathml", "reproduce", "bench"],
    "faces": ["cli", "cli_grade", "cli_reproduce", "interop", "__init__", "__main__"],
}
RANK = {layer: i for i, layer in enumerate(LAYERS)}
#: Layers a layer may import besides those below it that are not below it in this order
#: (the order is a line; data and distributed sit beside the model stack).
EXCEPT = {"data": {"kernels", "nn", "model"}, "distributed": set()}
LAZY_ONLY = ("torch", "jax", "mpi4py", "matplotlib")


def _layer(name: str) -> str:
    parts = name.split(".")
    for layer, prefixes in LAYERS.items():
        if parts[0] in prefixes or name in prefixes:
            return layer
    if parts[0].startswith("cli"):
        return "faces"
    raise AssertionError(f"bnprop.{name}: no layer in LAYERS; add it there and to "
                         "docs/architecture.md")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _top_level_imports(tree: ast.Module) -> list[str]:
    """Modules imported at module level (not under ``if TYPE_CHECKING``, not in functions)."""
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "bnprop":  # a module of the package, or a name of its __init__
                names += [f"bnprop.{a.name}" if (ROOT / f"{a.name}.py").exists()
                          or (ROOT / a.name).is_dir() else "bnprop.__init__"
                          for a in node.names]
            else:
                names.append(node.module)
    return names


SOURCES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path: Path) -> None:
    name = _module_name(path)
    own = _layer(name)
    for imported in _top_level_imports(ast.parse(path.read_text())):
        top = imported.split(".")[0]
        assert top not in LAZY_ONLY, f"{name} imports {imported} at module level"
        if top != "bnprop" or imported == "bnprop":
            continue
        other = _layer(imported.removeprefix("bnprop."))
        allowed = RANK[other] <= RANK[own] and other not in EXCEPT.get(own, set())
        assert allowed, f"bnprop.{name} ({own}) imports {imported} ({other})"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_source_file_over_400_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 400


def test_the_math_layer_imports_only_numpy() -> None:
    for path in SOURCES:
        name = _module_name(path)
        if _layer(name) != "math":
            continue
        for imported in _top_level_imports(ast.parse(path.read_text())):
            top = imported.split(".")[0]
            assert top in {"numpy", "bnprop", "__future__", "dataclasses", "typing",
                           "collections", "math"}, f"{name} imports {imported}"
            if top == "bnprop":
                assert _layer(imported.removeprefix("bnprop.")) in {"base", "math"}, name
