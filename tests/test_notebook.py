"""The Colab notebooks are valid, open with the same install cell, and use only names tfmed provides."""
import ast
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPOSITORY = "https://example.org/team/tfmed.git"


def _cells(notebook: Path = NOTEBOOK):
    stored = json.loads(notebook.read_text())
    assert stored["nbformat"] == 4
    return stored["cells"]


def _code_cells(notebook: Path = NOTEBOOK):
    for cell in _cells(notebook):
        if cell["cell_type"] == "code":
            lines = [line for line in "".join(cell["source"]).splitlines()
                     if not line.lstrip().startswith(("%", "!"))]
            yield "\n".join(lines)


def test_there_are_the_quickstart_the_ct_and_the_own_data_notebooks():
    assert [notebook.name for notebook in NOTEBOOKS] == ["ct_views.ipynb", "own_data.ipynb", "quickstart.ipynb"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda notebook: notebook.name)
def test_notebook_cells_compile_and_import_real_tfmed_names(notebook):
    cells = list(_code_cells(notebook))
    assert len(cells) >= 4
    for source in cells:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tfmed"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    # or a submodule of a package: `from tfmed import backbones`
                    submodule = hasattr(module, "__path__") and importlib.util.find_spec(name)
                    assert hasattr(module, alias.name) or submodule, name


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda notebook: notebook.name)
def test_notebook_is_stored_with_unique_cell_ids_and_no_outputs(notebook):
    cells = _cells(notebook)
    ids = [cell.get("id") for cell in cells]
    assert all(ids) and len(set(ids)) == len(ids)
    for cell in cells:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["id"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda notebook: notebook.name)
def test_later_cells_do_not_read_repository_files_by_relative_path(notebook):
    later = list(_code_cells(notebook))[1:]
    assert not [source for source in later if "tfmed/datasets/" in source]


@pytest.mark.parametrize("notebook", [n for n in NOTEBOOKS if n != NOTEBOOK], ids=lambda notebook: notebook.name)
def test_every_notebook_opens_with_the_quickstarts_install_cell(notebook):
    """The install cell is tested below on the quick-start; the others must hold the same code."""
    assert next(_code_cells(notebook)) == next(_code_cells())


# ------------------------------------------------------------------ the install cell
def _install_cell() -> str:
    source = next(_code_cells())
    assert "TFMED_REPOSITORY =" in source and '"pip", "install"' in source
    return source


def _run_install_cell(monkeypatch, tmp_path, commands, *, colab, repository=REPOSITORY, uploaded=False, changed=(),
                      found=None):
    """Execute the install cell as on a runtime without tfmed (``find_spec("tfmed")`` gives ``found``), recording
    the commands it runs; return the folder it uses for the repository."""
    folder = tmp_path / "content" / "tfmed"
    if uploaded:
        folder.mkdir(parents=True)
    source = (_install_cell().replace('"/content/tfmed"', repr(str(folder)))
              .replace('"https://github.com/YOUR-ORG/tfmed.git"', repr(repository)))
    real_find_spec, real_version = importlib.util.find_spec, importlib.metadata.version
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: found if name == "tfmed" else real_find_spec(name, *args))
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "99.0" if name in changed else real_version(name))
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: commands.append(command))
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(tmp_path)
    exec(compile(source, "install-cell", "exec"), {})
    return folder


def test_install_cell_outside_colab_without_tfmed_says_how_to_install(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match=r"make venv.*pip install \."):
        _run_install_cell(monkeypatch, tmp_path, [], colab=False)


def test_install_cell_asks_for_the_repository_before_cloning(monkeypatch, tmp_path):
    commands = []
    with pytest.raises(RuntimeError, match="set TFMED_REPOSITORY"):
        _run_install_cell(monkeypatch, tmp_path, commands, colab=True,
                          repository="https://github.com/YOUR-ORG/tfmed.git")
    assert commands == []


def test_install_cell_on_colab_clones_and_pip_installs_the_repository(monkeypatch, tmp_path, capsys):
    commands = []
    folder = _run_install_cell(monkeypatch, tmp_path, commands, colab=True)
    assert commands == [["git", "clone", "--depth", "1", REPOSITORY, str(folder)],
                        [sys.executable, "-m", "pip", "install", "-q", str(folder)]]
    printed = capsys.readouterr().out
    assert f"installed tfmed from {REPOSITORY}" in printed
    assert f"working folder: {ROOT}" in printed    # the repository with experiments/ (tfmed here comes from it)


def test_install_cell_on_colab_installs_an_uploaded_repository_without_cloning(monkeypatch, tmp_path, capsys):
    commands = []
    folder = _run_install_cell(monkeypatch, tmp_path, commands, colab=True, uploaded=True)
    assert commands == [[sys.executable, "-m", "pip", "install", "-q", str(folder)]]
    assert f"installed tfmed from {folder}\n" in capsys.readouterr().out  # not from the repository URL


def test_install_cell_installs_a_repository_uploaded_to_the_working_folder(monkeypatch, tmp_path):
    """On Colab the working folder is /content, so the uploaded repository /content/tfmed (no __init__.py at its
    top) is found as a namespace package: not an installed tfmed."""
    commands = []
    namespace = importlib.machinery.ModuleSpec("tfmed", None, is_package=True)
    assert namespace.origin is None
    folder = _run_install_cell(monkeypatch, tmp_path, commands, colab=True, uploaded=True, found=namespace)
    assert commands == [[sys.executable, "-m", "pip", "install", "-q", str(folder)]]


def test_install_cell_asks_for_a_restart_when_pip_changed_an_imported_package(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match=r"pip changed numpy.*Restart session"):
        _run_install_cell(monkeypatch, tmp_path, [], colab=True, changed=("numpy",))


def _roc_cell() -> str:
    cells = [source for source in _code_cells() if "roc_" in source and "Image(" in source]
    assert len(cells) == 1, "the quick-start notebook has one ROC cell"
    return cells[0]


@pytest.mark.parametrize("written, shown", [
    (["roc_test.png"], "roc_test.png"),                   # an experiment with a test split writes only this one
    (["roc_val.png"], "roc_val.png"),
    (["roc_val.png", "roc_test.png"], "roc_test.png"),
])
def test_roc_cell_shows_the_roc_plot_the_run_wrote(monkeypatch, tmp_path, written, shown):
    import IPython.display

    for name in written:
        (tmp_path / name).write_bytes(b"png")
    opened = []
    monkeypatch.setattr(IPython.display, "Image", lambda filename=None, **kwargs: opened.append(filename))
    exec(compile(_roc_cell(), "roc-cell", "exec"), {"run_dir": tmp_path})
    assert opened == [str(tmp_path / shown)]
