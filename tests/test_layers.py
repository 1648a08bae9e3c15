"""The package's layers only point down, and no import cycle exists (DESIGN.md's layout).

Every `import vlbridge...` in src/vlbridge, at module level or inside a function, counts; only imports under
`if TYPE_CHECKING:` (annotations, never executed) are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import vlbridge

SRC = Path(vlbridge.__file__).parent
LAYERS = (
    ("vision", "lm"),
    ("connectors",),
    ("highres",),
    ("model",),
    ("data",),
    ("train", "eval", "bench"),
    ("deploy", "serve"),
    ("cli",),
)
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}
CORE = -1  # config, errors, registry, atomic, nn_utils: below every layer
API = RANK["model"]  # the package root re-exports vlbridge.load and the model classes


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return API
    if parts[1] == "__main__":
        return RANK["cli"]
    return RANK.get(parts[1], CORE)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(path: Path) -> set[str]:
    """vlbridge modules `path` imports at run time."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("vlbridge"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names if _is_module(node.module, alias.name))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("vlbridge"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def _is_module(package: str, name: str) -> bool:
    base = SRC.parent.joinpath(*package.split("."))
    return (base / f"{name}.py").is_file() or (base / name / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports(path) for path in sorted(SRC.rglob("*.py"))}


def test_no_module_imports_a_later_layer() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in graph().items()
        for target in sorted(targets)
        if rank(target) > rank(module)
    ]
    assert upward == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One import cycle (as a closed path) found from each module that reaches one, by depth-first search."""
    done: set[str] = set()
    path: list[str] = []

    def walk(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done or module not in edges:
            return None
        path.append(module)
        try:
            for target in sorted(edges[module]):
                if target != module and not module.startswith(target + ".") and (cycle := walk(target)):
                    return cycle
        finally:
            path.pop()
        done.add(module)
        return None

    return [cycle for module in sorted(edges) if (cycle := walk(module))]


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_reports_each_cycle_as_its_own_path() -> None:
    edges = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a.x"}, "a.x": {"a"}}
    assert cycles(edges) == [
        ["a", "b", "a"],
        ["b", "a", "b"],
        ["c", "d", "e", "c"],
        ["d", "e", "c", "d"],
        ["e", "c", "d", "e"],
    ]


def test_the_checker_sees_upward_and_lazy_imports(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from vlbridge.cli import main\n"
        "def f():\n    from vlbridge.model import vlm\n    import vlbridge.train.trainer\n"
    )
    assert imports(source) == {"vlbridge.model", "vlbridge.model.vlm", "vlbridge.train.trainer"}
    assert rank("vlbridge.train.trainer") > rank("vlbridge.model.vlm") > rank("vlbridge.connectors.splice")
    assert rank("vlbridge.config") < rank("vlbridge.lm.decoder") == rank("vlbridge.vision.vit")
