"""The package's imports flow one way.

Every import in ``src/multilevel`` (module level and inside functions; those
under ``if TYPE_CHECKING:`` are annotations only and are not counted) must go
from a higher layer to a lower one, or stay inside one subpackage; no import
may take a ``_private`` name from another subpackage; and the module graph has
no cycle.  A new upward import or cycle fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import multilevel

SRC = Path(multilevel.__file__).resolve().parent

# top to bottom; a component may import components of lower layers only
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"__init__"},  # the public names
    {"api", "plotting"},
    {"partitioned", "workflow"},  # engines built on the two model engines
    {"longitudinal"},  # nlme's residual structures over the LMM engine
    {"lmm", "glmm"},  # the model engines, independent of each other
    {"inference"},
    {"mixedfit", "report"},
    {"formula", "linalg", "optimize", "covariance"},
    {"datasets"},
    {"errors", "threads", "compiled"},
]
RANK = {c: k for k, layer in enumerate(LAYERS) for c in layer}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, sub.end_lineno + 1))
    return lines


def imports(path: Path, src: Path = SRC) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken, line) for the runtime imports of a file."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    here = module_name(path, src)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    for node in sorted(nodes, key=lambda n: n.lineno):
        if node.lineno in skip:
            continue
        if isinstance(node, ast.Import):
            out += [
                (a.name, [], node.lineno) for a in node.names if a.name.startswith("multilevel")
            ]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("multilevel"):
                continue
            names = []
            for a in node.names:  # 'from multilevel.x import y' may import module x.y
                path = src.parent / (base + "." + a.name).replace(".", "/")
                if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
                    out.append((base + "." + a.name, [], node.lineno))
                else:
                    names.append(a.name)
            if names:
                out.append((base, names, node.lineno))
    return out


GRAPH = {module_name(p): imports(p) for p in SRC.rglob("*.py")}


def test_every_component_has_a_layer():
    found = {component(m) for m in GRAPH}
    assert found <= RANK.keys(), f"place these in LAYERS: {sorted(found - RANK.keys())}"


def test_imports_run_downward():
    upward = []
    for mod, deps in GRAPH.items():
        for dep, _, line in deps:
            a, b = component(mod), component(dep)
            if a != b and RANK[a] >= RANK[b]:
                upward.append(f"{mod}:{line} imports {dep} ({a} is not above {b})")
    assert not upward, "\n".join(upward)


def test_no_private_names_across_subpackages():
    private = []
    for mod, deps in GRAPH.items():
        for dep, names, line in deps:
            if component(mod) != component(dep):
                private += [f"{mod}:{line} takes {dep}.{n}" for n in names if n.startswith("_")]
    assert not private, "\n".join(private)


def test_no_import_cycles():
    edges = {m: {d for d, _, _ in deps if d in GRAPH} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_check_sees_a_violation(tmp_path):
    # the reader resolves relative imports and skips annotation-only ones
    pkg = tmp_path / "multilevel" / "lmm"
    pkg.mkdir(parents=True)
    src = (
        "from typing import TYPE_CHECKING\n"
        "from ..api import lmer\n"
        "if TYPE_CHECKING:\n"
        "    from multilevel.workflow.nlme import LmeFit\n"
        "def f():\n"
        "    from multilevel.formula.design import _private\n"
    )
    probe = pkg / "probe.py"
    probe.write_text(src)
    got = imports(probe, src=tmp_path / "multilevel")
    assert [(d, n) for d, n, _ in got] == [
        ("multilevel.api", ["lmer"]),
        ("multilevel.formula.design", ["_private"]),
    ]
