"""Run directories: a new folder per run that is never reused, and the record of the environment.

Example:
    >>> import tempfile
    >>> first = new_run_dir(tempfile.mkdtemp(), "demo")
    >>> first.parent.name
    'demo'
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tfmed import __version__
from tfmed.config import ExperimentConfig
from tfmed.data.sources import load_source
from tfmed.data.table import DataSourceError, ImageTable
from tfmed.errors import TfmedError
from tfmed.files import existing_ancestor
from tfmed.progress import log
from tfmed.run.manifest import FAILED_FILE, LOCK_FILE, MANIFEST_FILE, failed_next_step, failure_reason


class RunDirectoryError(TfmedError):
    """A folder given as a run directory is not one."""


PROVENANCE_FILE = "recalibrated_from.json"  # what tfmed recalibrate writes into its run: the run, data, method
ENSEMBLE_RUNS_FILE = "ensemble_runs.json"  # what tfmed ensemble writes into its run: the runs it combined
SWEEP_FILE = "layer_sweep.csv"  # what tfmed sweep-layers writes into its folder, beside config.yaml
VERSIONED_PACKAGES = ("tensorflow", "keras", "numpy", "pandas", "scikit-learn", "scikit-image", "skops",
                      "opencv-python-headless", "pydicom", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "nibabel",
                      "PyYAML", "matplotlib")


def environment_info(config: ExperimentConfig) -> dict:
    """Seed, versions and command line: what is needed to reproduce a run."""
    from importlib import metadata

    versions = {"tfmed": __version__, "python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"seed": config.seed, "versions": versions, "source": source_info(), "platform": platform.platform(),
            "command": sys.argv, "cwd": os.getcwd(),
            "started": dt.datetime.now().isoformat(timespec="seconds")}


@functools.cache
def source_info() -> dict:
    """Which tfmed code ran: the SHA-256 of its package's Python files (in path order) and, when it runs from
    a git checkout of the repository, the commit and whether tracked files differed from it (the version
    number alone names no code).

    Example:
        >>> sorted(source_info())[:2]
        ['git_changes', 'git_commit']
    """
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    info = {"package_sha256": digest.hexdigest(), "git_commit": None, "git_changes": None}
    if not (package.parent / ".git").exists():  # installed, not run from a checkout of this repository
        return info
    try:
        commit = subprocess.run(["git", "-C", str(package.parent), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        changes = subprocess.run(["git", "-C", str(package.parent), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git here
        return info
    if commit.returncode == 0 and changes.returncode == 0:
        info.update(git_commit=commit.stdout.strip(), git_changes=bool(changes.stdout.strip()))
    return info


@contextlib.contextmanager
def run_lock(run_dir: str | Path):
    """Hold, while the block runs, the lock that makes one process at a time run ``run_dir`` (a run and its
    resume, or two resumes). The operating system lets go of it when the process ends, also when it is
    killed, so a stopped run can always be resumed. Its file (``LOCK_FILE``, in the run) is not listed in the
    manifest and is removed when the block ends.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> with run_lock(run):
        ...     try:
        ...         with run_lock(run):
        ...             pass
        ...     except RunDirectoryError as error:
        ...         print(str(error).split(";")[0].endswith("is being run by another tfmed process"))
        True
    """
    import fcntl

    path = Path(run_dir) / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")
    locked = False
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunDirectoryError(f"{run_dir} is being run by another tfmed process; {holder}. Wait for it to "
                                    "finish, or stop it and then resume the run") from None
        locked = True
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {platform.node()} since "
                     f"{dt.datetime.now().isoformat(timespec='seconds')}")
        handle.flush()
        yield
    finally:
        if locked:
            path.unlink(missing_ok=True)
        handle.close()


RUN_MARKERS = {"environment.json", MANIFEST_FILE, FAILED_FILE}  # beside config.yaml: a run (or a layer sweep)


def is_run_dir(folder: str | Path) -> bool:
    """Whether ``folder`` is a run directory: ``config.yaml`` with ``environment.json``, a manifest, a failure
    record or ``model/``.

    Example:
        >>> import tempfile
        >>> is_run_dir(tempfile.mkdtemp())
        False
    """
    folder = Path(folder)
    return (folder / "config.yaml").is_file() and (
        any((folder / marker).is_file() for marker in RUN_MARKERS) or (folder / "model").is_dir())


def enclosing_run(path: str | Path) -> Path | None:
    """The run directory ``path`` lies in (``path`` itself included; it need not exist), or None.

    Example:
        >>> import tempfile
        >>> enclosing_run(Path(tempfile.mkdtemp()) / "new") is None
        True
    """
    target = Path(path).resolve()
    return next((folder for folder in (target, *target.parents) if is_run_dir(folder)), None)


def check_runs_dir(runs_dir: str | Path) -> None:
    """Refuse, before any data are read, a runs folder that cannot hold runs: a file, a path through a file, a
    folder inside a run, or a folder without write permission.

    Example:
        >>> import tempfile
        >>> check_runs_dir(Path(tempfile.mkdtemp()) / "runs")  # need not exist yet
    """
    path = Path(runs_dir)
    inside = enclosing_run(path)
    if inside is not None:
        raise RunDirectoryError(f"runs folder {path} lies inside the run {inside}: a new run there would change that "
                                "run (and tfmed runs would not list it); give --runs-dir (or runs_dir:) a folder "
                                "outside any run")
    blocked = _file_in_the_way(path)
    if blocked:
        raise RunDirectoryError(f"runs folder {path} {blocked}; give --runs-dir (or runs_dir:) a folder")
    existing = existing_ancestor(path)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirectoryError(f"runs folder {path}: {existing} is not writable; give --runs-dir (or runs_dir:) a "
                                "folder you can write to")


def new_run_dir(runs_dir: str | Path, name: str) -> Path:
    """Create ``runs_dir/name/TIMESTAMP`` (suffixed -2, -3 ... if taken); never reuses one.

    Example:
        >>> import tempfile
        >>> first = new_run_dir(tempfile.mkdtemp(), "demo")
        >>> second = new_run_dir(first.parent.parent, "demo")
        >>> first != second
        True
    """
    parent = Path(runs_dir) / name
    parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        candidate = parent / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory under {parent}")


@contextlib.contextmanager
def output_run_dir(output: str | Path | None, name: str, runs_folder: str | Path = "runs"):
    """The directory a command that makes a run from saved runs writes: ``output`` (created; refused when it
    holds anything, as runs never overwrite each other) or a new ``RUNS/NAME/TIMESTAMP`` in ``runs_folder`` (that
    of the run it is made from: :func:`runs_folder_of`); removed (a given empty ``output`` emptied) when the
    block fails or is interrupted, as :func:`written_whole` does.

    Example:
        >>> import tempfile
        >>> with output_run_dir(Path(tempfile.mkdtemp()) / "combined", "ensemble") as out:
        ...     out.name
        'combined'
    """
    made = output is None or not Path(output).exists()
    if output is None:
        out = new_run_dir(runs_folder, name)
    else:
        refuse_used_output(output, "runs")
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
    with removed_if_unfinished(out, "run", made):
        yield out


@contextlib.contextmanager
def written_whole(output: str | Path | None, run_dir: Path, folder: str, what: str):
    """The folder a command writes its results into: ``output`` or a new ``run_dir/folder/TIMESTAMP``. When the
    block fails or is interrupted (Ctrl-C, a full disk) the folder is removed, or emptied if it was an
    ``--output`` given empty, so no half-written result reads as a whole one.

    Example:
        >>> import tempfile
        >>> with written_whole(None, Path(tempfile.mkdtemp()), "evaluations", "evaluation") as out:
        ...     _ = (out / "metrics.json").write_text("{}")  # an error here would remove the folder
        >>> out.parent.name, [file.name for file in out.iterdir()]
        ('evaluations', ['metrics.json'])
    """
    out = Path(output) if output else new_run_dir(run_dir, folder)
    with removed_if_unfinished(out, what, made=not output or not out.exists()):
        out.mkdir(parents=True, exist_ok=True)
        yield out


@contextlib.contextmanager
def removed_if_unfinished(out: Path, what: str, made: bool):
    """Remove ``out`` when the block fails or is interrupted, or empty it when it was given empty (``made``
    False), and say so: no half-written ``what`` reads as a whole one."""
    try:
        yield out
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        if not made:
            out.mkdir()
        log(f"removed the unfinished {what} {'folder ' if made else 'in '}{out}")
        raise


def _file_in_the_way(path: Path) -> str | None:
    """Why no folder can be made at ``path`` ("is a file", "lies under X, which is a file"), or None.

    Example:
        >>> _file_in_the_way(Path(__file__) / "runs")[:10]
        'lies under'
    """
    existing = existing_ancestor(path)
    if existing.is_dir():
        return None
    return "is a file" if existing == path else f"lies under {existing}, which is a file"


def refuse_used_output(output: str | Path | None, what: str) -> None:
    """Refuse an ``--output`` folder that already holds anything, since ``what`` (runs, evaluations,
    explanations) never overwrite each other; None (a new timestamped folder) passes.

    Example:
        >>> refuse_used_output(None, "evaluations")
        >>> try:
        ...     refuse_used_output("/", "evaluations")
        ... except RunDirectoryError as error:
        ...     print(error)
        / already exists and is not empty; evaluations never overwrite each other, choose a new --output
    """
    if output is None:
        return
    path = Path(output)
    blocked = _file_in_the_way(path)
    if blocked:
        raise RunDirectoryError(f"--output {output} {blocked}; give --output a new folder for the {what}")
    if path.exists() and any(path.iterdir()):
        raise RunDirectoryError(f"{output} already exists and is not empty; {what} never overwrite each other, "
                                "choose a new --output")


def refuse_output_inside_runs(output: str | Path | None, runs: list[str | Path], *, option: str = "--output",
                              kept: tuple[str, ...] = ()) -> None:
    """Refuse an ``output`` path inside one of the run directories ``runs`` a command reads, or inside any other
    run: a file written there changes the run (its ``MANIFEST.sha256`` check then refuses it). A new folder under
    the run's ``kept`` folders (where the command itself writes, e.g. ``evaluations``) passes, as does None.

    Example:
        >>> refuse_output_inside_runs("elsewhere/ev", ["runs/a/1"])
        >>> try:
        ...     refuse_output_inside_runs("runs/a/1/model/ev", ["runs/a/1"])
        ... except RunDirectoryError as error:
        ...     print(str(error)[:61])
        --output runs/a/1/model/ev: inside the run directory runs/a/1
    """
    if output is None:
        return
    target = Path(output).resolve()
    enclosing = enclosing_run(target)  # also a run the command does not read: writing there damages it too
    others = [enclosing] if enclosing is not None and enclosing != target else []  # a run itself: already used
    for run in [*runs, *others]:
        home = Path(run).resolve()
        if not target.is_relative_to(home):
            continue
        if any(target.is_relative_to(home / folder) and target != home / folder for folder in kept):
            continue
        allowed = " or in a new folder under " + " or ".join(f"{run}/{folder}/" for folder in kept) if kept else ""
        raise RunDirectoryError(f"{option} {output}: inside the run directory {run}, whose files are checked "
                                f"against its {MANIFEST_FILE}, so writing there would damage the run; choose a "
                                f"path outside it{allowed}")


def resolve_run_dir(path: str | Path) -> Path:
    """The run directory of ``path`` (a run directory, or its ``model/`` folder).

    Example:
        >>> resolve_run_dir("runs/pneumonia_mnist/20261124-101500/model")  # doctest: +SKIP
        PosixPath('runs/pneumonia_mnist/20261124-101500')
    """
    path = Path(path)
    if path.name == "model" and (path.parent / "config.yaml").is_file():
        return path.parent
    reason = failure_reason(path)
    if reason is not None and not (path / "model").is_dir():
        raise RunDirectoryError(f"{path}: this run stopped before it saved a model, with {reason} (see "
                                f"{FAILED_FILE}); {failed_next_step(path)}")
    if (path / "config.yaml").is_file() and not (path / "model").is_dir():
        raise RunDirectoryError(f"{path}: a layer sweep ({SWEEP_FILE} of tfmed sweep-layers), not a run: it "
                                "has no model; pass a run directory such as runs/NAME/TIMESTAMP"
                                if (path / SWEEP_FILE).is_file() else
                                f"{path}: this run did not finish (it has no model/; it was stopped or killed "
                                "before it saved one, or is still running); tfmed runs lists each run's state. "
                                f"Finish it with tfmed run --resume {path} if it is not running, run the "
                                "experiment again, or pass a finished run")
    if not (path / "config.yaml").is_file() or not (path / "model").is_dir():
        raise RunDirectoryError(f"{path}: not a tfmed run directory (it needs config.yaml and model/); "
                                 "pass a directory such as runs/NAME/TIMESTAMP")
    return path


def json_object(path: Path) -> dict:
    """The JSON object in a run's file (``metrics.json``, ``environment.json``); {} when the file is missing,
    unreadable or holds no object, for readers that carry on without it.

    Example:
        >>> json_object(Path("no/such/metrics.json"))
        {}
    """
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def run_working_dir(run_dir: Path) -> Path | None:
    """The folder the run was started in (``cwd`` in its ``environment.json``), against which the relative
    data paths of its ``config.yaml`` were read; None when it is not recorded or no longer exists.

    Example:
        >>> run_working_dir(Path("runs/pneumonia_mnist/20261124-101500"))  # doctest: +SKIP
        PosixPath('/home/me/tfmed')
    """
    cwd = json_object(run_dir / "environment.json").get("cwd")
    return Path(cwd) if isinstance(cwd, str) and Path(cwd).is_dir() else None


def runs_folder_of(run_dir: Path, runs_dir: str) -> Path:
    """The runs folder a run's config names (``runs_dir``), a relative one read from the folder the run was
    started in (as the run was made), so that runs made from it go beside it wherever the command runs.

    Example:
        >>> runs_folder_of(Path("/data/runs/study/20261207-101500"), "/data/runs")
        PosixPath('/data/runs')
    """
    folder = Path(runs_dir)
    base = None if folder.is_absolute() else run_working_dir(run_dir)
    return base / folder if base is not None else folder


def as_reread(run_dir: Path, refs, known: set[str]) -> list[str]:
    """The image references a run recorded (``splits.csv``, ``predictions.csv``) as its data re-read now
    name them: a relative file reference not among ``known`` becomes the file in the folder the run was
    started in (data re-read from another folder name their files so); any other is kept.

    Example:
        >>> as_reread(Path("runs/x/1"), ["train/0"], {"train/0"})
        ['train/0']
    """
    base = None
    located = []
    for ref in map(str, refs):
        if ref not in known and not os.path.isabs(ref):
            base = base or run_working_dir(run_dir)
            ref = os.path.normpath(os.path.join(base, ref)) if base is not None else ref
        located.append(ref)
    return located


def run_split_tables(run_dir: Path, names: tuple[str, ...],
                     remedy: str = "restore the data or pass --data") -> dict[str, ImageTable]:
    """The run's rows of each split in ``names``, re-read from its data source and ``splits.csv``. Relative
    data paths are read from the folder the run was started in (:func:`run_working_dir`), else (gone, or the
    data not found there) from the working folder; image references are then matched with :func:`as_reread`.
    ``remedy`` ends the error for images the source no longer has (what the calling command offers).

    Example:
        >>> tables = run_split_tables(Path("runs/pneumonia_mnist/20261124-101500"), ("val", "test"))  # doctest: +SKIP
    """
    config = ExperimentConfig.from_run(run_dir)
    base = run_working_dir(run_dir)
    if base is None or not base.is_dir() or base.resolve() == Path.cwd().resolve():
        table = load_source(config.data)
    else:
        try:  # a file of the same name in the working folder must not stand in for the run's own
            table = load_source(config.data, base_dir=base)
        except DataSourceError:
            table = load_source(config.data)
    splits = pd.read_csv(run_dir / "splits.csv", usecols=["image", "split"], keep_default_na=False)
    known = set(table.frame["image"])
    splits["image"] = as_reread(run_dir, splits["image"], known)
    split_of = dict(zip(splits["image"], splits["split"]))
    missing = [ref for ref in splits["image"] if ref not in known]
    if missing:
        raise RunDirectoryError(f"{run_dir}/splits.csv lists {len(missing)} image(s) the data source no "
                                 f"longer has, e.g. {missing[0]}; {remedy}")
    frame = table.frame.copy()
    frame["split"] = frame["image"].map(split_of)
    table = ImageTable(frame, table.classes, table.task, table.images, table.source)
    return {name: table.split(name) for name in names}
