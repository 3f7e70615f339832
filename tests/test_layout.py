"""The package's shape: no import cycles, imports point down the layers, one error base,
no dispatch on a mode's name outside the mode table."""
import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import tfmed
from tfmed.errors import TfmedError

PACKAGE = Path(tfmed.__file__).parent

# Lower layers may not import higher ones (run -> modes -> training/backbones/data/evaluation -> base).
LAYERS = {
    "tfmed.errors": 0, "tfmed.progress": 0, "tfmed.files": 0, "tfmed.config": 1,
    "tfmed.evaluation": 2, "tfmed.data": 2, "tfmed.backbones": 2, "tfmed.training": 3,
    "tfmed.modes": 4, "tfmed.explain": 4, "tfmed.run": 5,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Every explicit import of a tfmed module, at module level or inside functions."""
    edges = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                           for alias in node.names]
            for target in targets:
                while target not in MODULES and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in MODULES and target != name:
                    edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> int | None:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_between_tfmed_modules():
    assert cycles(import_graph()) == []


def test_imports_point_down_the_layers():
    upward = [f"{source} imports {target}" for source, targets in import_graph().items() for target in targets
              if _layer(source) is not None and _layer(target) is not None and _layer(target) > _layer(source)]
    assert upward == []


def test_nothing_outside_run_imports_run():
    offenders = [source for source, targets in import_graph().items()
                 if not source.startswith("tfmed.run") and any(t.startswith("tfmed.run") for t in targets)]
    assert offenders == []


def test_every_tfmed_error_class_derives_from_tfmed_error():
    loose = []
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="tfmed."):
        module = importlib.import_module(info.name)
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == module.__name__ and issubclass(obj, Exception) and not issubclass(obj, TfmedError):
                loose.append(f"{module.__name__}.{name}")
    assert loose == []


def test_no_code_branches_on_a_mode_name():
    modes = {"svm", "finetune"}
    branches = []
    for name, path in MODULES.items():
        if name == "tfmed.config":  # where the mode names are declared
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                constants = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if modes & set(c for c in constants if isinstance(c, str)):
                    branches.append(f"{name}:{node.lineno}")
    assert branches == []


@pytest.mark.parametrize("module", ["tfmed.evaluation", "tfmed.config", "tfmed.errors", "tfmed.progress"])
def test_lower_layers_do_not_need_tensorflow(module):
    edges = import_graph()
    reached, todo = set(), [m for m in MODULES if m == module or m.startswith(module + ".")]
    while todo:
        current = todo.pop()
        if current not in reached:
            reached.add(current)
            todo.extend(edges[current])
    heavy = [m for m in reached if "import tensorflow" in MODULES[m].read_text(encoding="utf-8")]
    assert heavy == []
