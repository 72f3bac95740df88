"""The import rules of docs/architecture.md: each module imports only from the layers below it."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "vaekit"

#: docs/architecture.md's table, bottom up; a module's layer is that of its top-level name.
LAYERS = [
    {"errors"},
    {
        "losses",
        "outputs",
        "nn",
        "priors",
        "metrics",
        "checkpoint",
        "report",
        "metrics_log",
        "distributed",
        "locks",
        "progress",
        "compiling",
        "allocator",
        "threads",
    },
    {"quantize", "data"},
    {"models"},
    {"config", "visualize"},
    {"features"},
    {"evaluate"},
    {"train", "runs"},
    {"cli"},
]
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}
#: Every module but the package's own ``__init__`` (which re-exports) and ``__main__``.
MODULES = sorted(p for p in SRC.rglob("*.py") if p not in (SRC / "__init__.py", SRC / "__main__.py"))


def _top(path: Path) -> str:
    return path.relative_to(SRC).with_suffix("").parts[0]


def _imports(path: Path) -> set[str]:
    """The top-level vaekit modules that ``path`` imports (``vaekit.data.ranges`` → ``data``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vaekit":
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vaekit.")}
    return found


def test_every_module_has_a_layer():
    assert {_top(p) for p in MODULES} == set(LAYER)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_down_the_layers(path):
    own = _top(path)
    for name in _imports(path) - {own}:  # siblings inside a package are free
        where = f"{path.relative_to(SRC)} (layer {LAYER[own]}) imports {name} (layer {LAYER[name]})"
        assert LAYER[name] < LAYER[own], where
