"""The package's import graph has no cycle, lazy imports inside functions and TYPE_CHECKING blocks included, and
the training loop imports no model family or head."""
import ast
from pathlib import Path

import polymodal

PACKAGE_ROOT = Path(polymodal.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}


def imported_modules(name: str, path: Path) -> set[str]:
    """Every polymodal module that ``path`` imports anywhere in its text (top level, functions, TYPE_CHECKING)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            # `from a.b import c` imports the submodule a.b.c when there is one, else names from a.b.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in MODULES and target != name}
    return found


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_checker_finds_a_lazy_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    source = "def f():\n    from polymodal.train import loop\n"
    tree_imports = {
        target for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)
        for target in [f"{node.module}.{alias.name}" for alias in node.names]
    }
    assert tree_imports == {"polymodal.train.loop"}


def test_no_import_cycle_in_the_package():
    assert len(GRAPH) > 60 and GRAPH["polymodal.recipes.training"], "the walk must see the package"
    assert find_cycle(GRAPH) is None, f"import cycle: {' -> '.join(find_cycle(GRAPH))}"


def test_training_loop_knows_no_model_family_or_head():
    for name, targets in GRAPH.items():
        if name.startswith("polymodal.train"):
            forbidden = {t for t in targets if t.startswith(("polymodal.models", "polymodal.heads",
                                                             "polymodal.data.catalog", "polymodal.recipes",
                                                             "polymodal.cli"))}
            assert not forbidden, f"{name} imports {forbidden}"
            text = MODULES[name].read_text(encoding="utf-8")
            assert "DualEncoder" not in text and "dual_encoder" not in text and "heads." not in text, name


def test_library_never_imports_the_cli():
    for name, targets in GRAPH.items():
        if not name.startswith("polymodal.cli"):
            assert not {t for t in targets if t.startswith("polymodal.cli")}, name
