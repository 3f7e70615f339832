"""The Colab quick-start notebook is valid and uses only names tfmed provides."""
import ast
import importlib
import json
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def _code_cells():
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["nbformat"] == 4
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            lines = [line for line in "".join(cell["source"]).splitlines()
                     if not line.lstrip().startswith(("%", "!"))]
            yield "\n".join(lines)


def test_notebook_cells_compile_and_import_real_tfmed_names():
    cells = list(_code_cells())
    assert len(cells) >= 4
    for source in cells:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tfmed"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
