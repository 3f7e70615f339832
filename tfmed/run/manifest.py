"""``MANIFEST.sha256``: the list of a finished run's files with their SHA-256 digests.

``tfmed run`` writes the manifest last, after everything else succeeded, so a
run directory without one did not finish (it crashed or was killed) and is
refused as incomplete. The commands that read a run (``evaluate``,
``predict``, ``ensemble``, ``explain``) verify every listed file first and stop
with a message naming the first changed or missing file. The format is the one
``sha256sum`` writes, so ``cd RUN && sha256sum -c MANIFEST.sha256`` checks a run
without tfmed.

The manifest detects damage and mix-ups (a truncated copy, a file taken from
another run, a one-byte change). It is not a signature: whoever can edit the
files can rewrite the manifest too. Publish :func:`run_digest` (printed at the
end of a run) beside a shared run to let others check that they hold the same
files.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> run = Path(tempfile.mkdtemp())
    >>> _ = (run / "metrics.json").write_text("{}")
    >>> _ = write_manifest(run)
    >>> verify_run(run) == run_digest(run)
    True
"""
from __future__ import annotations

import datetime as dt
import traceback
from pathlib import Path

from tfmed.errors import TfmedError
from tfmed.files import file_digest, replace_atomically
from tfmed.progress import log

MANIFEST_FILE = "MANIFEST.sha256"
FAILED_FILE = "FAILED.txt"  # written instead of the manifest when a run stops with an error
LOCK_FILE = ".tfmed.lock"  # held while a process runs the run (tfmed.run.rundir.run_lock); never listed
# Inside these folders every file must be listed: nothing may be slipped in beside the model.
# Elsewhere, files added after the run (``tfmed evaluate`` / ``explain`` outputs) are not checked.
STRICT_FOLDERS = ("model",)
INCOMPLETE = "its files are incomplete."  # in FAILED.txt, before what to do next (see failed_next_step)


class RunIntegrityError(TfmedError):
    """A run directory's files differ from its ``MANIFEST.sha256`` (changed, missing or added)."""


class IncompleteRunError(RunIntegrityError):
    """A run directory has no ``MANIFEST.sha256``: the run did not finish."""


def _listed_files(directory: Path) -> list[str]:
    names = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_file() and relative not in (MANIFEST_FILE, LOCK_FILE):
            names.append(relative)
    return names


def write_manifest(directory: str | Path) -> Path:
    """List every file under ``directory`` with its SHA-256.

    The manifest is written to a temporary file and renamed into place, so it
    never exists half-written.

    Example:
        >>> write_manifest(run_dir)  # doctest: +SKIP
        PosixPath('runs/pneumonia_mnist/20261124-101500/MANIFEST.sha256')
    """
    directory = Path(directory)
    lines = [f"{file_digest(directory / name)}  {name}\n" for name in _listed_files(directory)]
    replace_atomically(directory / MANIFEST_FILE,
                       lambda tmp: Path(tmp).write_text("".join(lines), encoding="utf-8", newline="\n"))
    return directory / MANIFEST_FILE


def finish_run(directory: str | Path) -> str:
    """Mark a run finished: write its manifest and log its digest; return the digest.

    Example:
        >>> finish_run(run_dir)  # doctest: +SKIP
        '5d1f0c...'
    """
    write_manifest(directory)
    digest = run_digest(directory)
    log(f"wrote {MANIFEST_FILE}; run digest sha256:{digest}")
    return digest


def record_failure(directory: str | Path, error: BaseException) -> Path:
    """Write ``FAILED.txt`` into a run that stopped with ``error``: the time, the error and its traceback.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> _ = record_failure(run, KeyboardInterrupt())
        >>> failure_reason(run)
        'interrupted (KeyboardInterrupt)'
    """
    reason = _describe(error)
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    path = Path(directory) / FAILED_FILE
    text = (f"{reason}\n\nThis run stopped at {dt.datetime.now().isoformat(timespec='seconds')} before it "
            f"finished; {INCOMPLETE} {next_step(directory, error)}.\n\n{trace}")
    replace_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))  # a full disk: none, not empty
    return path


def next_step(directory: str | Path, error: BaseException) -> str:
    """What to do about a run that stopped with ``error``: resume it (an interruption, a crash, a full disk), or,
    when tfmed itself refused its settings or data (a :class:`~tfmed.errors.TfmedError`, which a resume on the
    same settings and data meets again), fix that and run the experiment again.

    Example:
        >>> next_step("runs/demo/1", KeyboardInterrupt())
        'Finish it with tfmed run --resume runs/demo/1 (the same settings and data), or run the experiment again'
    """
    if isinstance(error, TfmedError):
        return ("tfmed refused its settings or data, and a resume on the same ones would refuse them again: fix "
                "what the error names and run the experiment again")
    return (f"Finish it with tfmed run --resume {Path(directory)} (the same settings and data), or run the "
            "experiment again")


def _describe(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (tfmed.run.cli.Terminated)
        return f"interrupted ({type(error).__name__})"
    message = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {message[:500]}"


def failure_reason(directory: str | Path) -> str | None:
    """The first line of a run's ``FAILED.txt`` (why it stopped), or None when it has none."""
    path = Path(directory) / FAILED_FILE
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return lines[0] if lines else "(no reason recorded)"


def failed_next_step(directory: str | Path) -> str:
    """What its ``FAILED.txt`` says to do about a run that stopped (see :func:`next_step`), with a lower-case
    first letter, for the end of another message.

    Example:
        >>> failed_next_step("runs/demo/no-such-run")
        'run the experiment again'
    """
    path = Path(directory) / FAILED_FILE
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    _, found, rest = text.partition(f"{INCOMPLETE} ")
    step = rest.split("\n", 1)[0].rstrip(".") if found else ""
    return step[:1].lower() + step[1:] if step else "run the experiment again"


def read_manifest(directory: str | Path) -> dict[str, str]:
    """``{relative path: digest}`` from a run's manifest.

    Raises:
        IncompleteRunError: there is no manifest.
        RunIntegrityError: a line is not ``<64 hex digits>  <path>``.

    Example:
        >>> sorted(read_manifest(run_dir))[:2]  # doctest: +SKIP
        ['config.yaml', 'environment.json']
    """
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        reason = failure_reason(directory)
        if reason is not None:
            step = failed_next_step(directory)
            raise IncompleteRunError(f"{directory}: incomplete run: it stopped with {reason} (see {FAILED_FILE}). "
                                     f"{step[:1].upper() + step[1:]}; or pass --no-verify to read its files as they "
                                     "are")
        raise IncompleteRunError(
            f"{directory}: incomplete run: it has no {MANIFEST_FILE}, which a run writes last, after "
            "everything else succeeded (the run crashed or was killed, or was made by a tfmed older than "
            f"0.2). Finish it with tfmed run --resume {directory}, run the experiment again, or pass --no-verify to "
            "read its files as they are")
    entries = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RunIntegrityError(f"{path}: not a text manifest; the run directory is damaged") from None
    for number, line in enumerate(text.splitlines(), start=1):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name \
                or name.startswith("/") or ".." in name.split("/"):
            raise RunIntegrityError(f"{path}, line {number}: expected '<sha256>  <relative path>', got "
                                    f"{line[:80]!r}; the manifest is damaged")
        entries[name] = digest
    return entries


def listed_file_problem(directory: Path, entries: dict[str, str], name: str) -> str | None:
    """``"not listed"``, ``"missing"`` or ``"changed"`` for file ``name`` of a run against its manifest's
    ``entries`` (:func:`read_manifest`); None when it is as the run wrote it.

    Example:
        >>> listed_file_problem(Path("runs/demo/1"), {}, "metrics.json")
        'not listed'
    """
    if name not in entries:
        return "not listed"
    if not (directory / name).is_file():
        return "missing"
    return "changed" if file_digest(directory / name) != entries[name] else None


def verify_run(directory: str | Path) -> str:
    """Check every file listed in the run's manifest; return :func:`run_digest`.

    Raises :class:`IncompleteRunError` without a manifest, and
    :class:`RunIntegrityError` naming the first file that is missing, changed,
    or present in ``model/`` without being listed.

    Example:
        >>> verify_run("runs/pneumonia_mnist/20261124-101500")  # doctest: +SKIP
        '5d1f0c...'
    """
    directory = Path(directory)
    entries = read_manifest(directory)
    for name in entries:
        problem = listed_file_problem(directory, entries, name)
        if problem == "missing":
            raise RunIntegrityError(f"{directory / name}: listed in {MANIFEST_FILE} but missing; the run directory "
                                    "is incomplete (copy it again from its source), or pass --no-verify")
        if problem:
            raise RunIntegrityError(f"{directory / name}: changed since the run wrote it (its SHA-256 differs from "
                                    f"{MANIFEST_FILE}); restore the original file, or pass --no-verify to "
                                    "read it anyway")
    added = strays(directory, entries)
    if added:
        raise RunIntegrityError(f"{directory / added[0]}: not part of the run (absent from {MANIFEST_FILE}); "
                                "remove it, or pass --no-verify")
    return file_digest(directory / MANIFEST_FILE)


def strays(directory: str | Path, entries: dict[str, str]) -> list[str]:
    """The files in a run's ``model/`` that its manifest's ``entries`` do not list (added after the run).

    Example:
        >>> strays(Path("runs/demo/1"), {})
        []
    """
    directory = Path(directory)
    return [name for name in _listed_files(directory) if name.split("/")[0] in STRICT_FOLDERS and name not in entries]


def check_run(directory: str | Path, verify: bool = True) -> None:
    """:func:`verify_run` ``directory``, or with ``verify=False`` log that the check was skipped (``--no-verify``).

    Example:
        >>> check_run("runs/pneumonia_mnist/20261124-101500", verify=False)  # doctest: +SKIP
        [tfmed 10:15:02] integrity check skipped (--no-verify): the files of runs/... are read as they are
    """
    if verify:
        verify_run(directory)
    else:
        log(f"integrity check skipped (--no-verify): the files of {directory} are read as they are")


def run_digest(directory: str | Path) -> str:
    """The SHA-256 of a run's manifest: one value that stands for all of its files.

    Example:
        >>> run_digest("runs/pneumonia_mnist/20261124-101500")[:12]  # doctest: +SKIP
        '5d1f0c8a2b7e'
    """
    return file_digest(Path(directory) / MANIFEST_FILE)
