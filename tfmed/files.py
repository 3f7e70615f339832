"""Reading the JSON and NumPy files that tfmed writes, safely and with errors that name the file;
where tfmed keeps its caches (:func:`cache_folder`) and whether it may download (:func:`offline`); a file's
SHA-256 (:func:`file_digest`, for run manifests and weight caches).

Nothing here unpickles: NumPy files are read with ``allow_pickle=False``, so a
crafted file cannot run code, and a damaged or foreign file raises the
caller's error type with the path and the fix instead of a parser traceback.

Example:
    >>> import json, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "spec.json")
    >>> _ = open(path, "w").write(json.dumps({"format": 2}))
    >>> read_json(path)
    {'format': 2}
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from tfmed.errors import TfmedError

DAMAGED = "the file is damaged or is not the one tfmed wrote; use the original run directory or re-fit"


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "empty")
        >>> _ = open(path, "wb").close()
        >>> file_digest(path)[:12]
        'e3b0c44298fc'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def temporary_file(folder: str | Path, prefix: str = ".", suffix: str = ".part") -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``folder``, with the mode an ordinary new file gets (0666 less the umask)
    instead of mkstemp's 0600, so that the file it is renamed to can be read as its neighbours can
    (a run on a shared drive, a shared cache).

    Example:
        >>> import tempfile
        >>> handle, path = temporary_file(tempfile.mkdtemp())
        >>> os.close(handle); oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())
        True
    """
    handle, path = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
    os.chmod(path, 0o666 & ~_umask())
    return handle, path


def replace_atomically(path: str | Path, write) -> None:
    """Call ``write`` with a temporary file's path beside ``path``, then rename it onto ``path``: a kill or an
    error as it is written leaves the previous ``path`` whole (an error also removes the temporary file).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "state.json"
        >>> replace_atomically(path, lambda tmp: Path(tmp).write_text("{}"))
        >>> try:
        ...     replace_atomically(path, lambda tmp: 1 / 0)
        ... except ZeroDivisionError:
        ...     pass
        >>> path.read_text(), [p.name for p in path.parent.iterdir()]
        ('{}', ['state.json'])
    """
    path = Path(path)
    suffix = ".weights.h5" if path.name.endswith(".weights.h5") else path.suffix  # Keras and NumPy need these
    handle, tmp = temporary_file(path.parent, prefix=".tmp-", suffix=suffix)
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def existing_ancestor(path: str | Path) -> Path:
    """``path`` itself when it exists, else its nearest parent that does (the root at the latest).

    Example:
        >>> existing_ancestor("/no/such/folder")
        PosixPath('/')
    """
    path = Path(path)
    return next(p for p in (path, *path.parents) if p.exists() or p == p.parent)


def cache_folder(kind: str) -> Path:
    """tfmed's cache for ``kind`` (``"weights"``, ``"tfds"``): ``$TFMED_CACHE_DIR/KIND``, by default
    ``~/.cache/tfmed/KIND``.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"TFMED_CACHE_DIR": "/data/cache"}):
        ...     print(cache_folder("tfds"))
        /data/cache/tfds
    """
    return Path(os.environ.get("TFMED_CACHE_DIR") or "~/.cache/tfmed").expanduser() / kind


def offline() -> bool:
    """True when ``$TFMED_OFFLINE`` forbids downloading (any value but empty, 0, false, no, off).

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"TFMED_OFFLINE": "1"}):
        ...     offline()
        True
    """
    return os.environ.get("TFMED_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


def read_json(path: str | Path, error: type[TfmedError] = TfmedError):
    """The JSON value in ``path``; ``error`` (naming the file) when it is missing, not UTF-8 or not JSON.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "bad.json")
        >>> _ = open(path, "wb").write(b"\\x80\\x04 not json")
        >>> try:
        ...     read_json(path)
        ... except TfmedError as problem:
        ...     print(str(problem).split(": ")[-1].split(";")[0])
        not valid JSON (UnicodeDecodeError)
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: missing; {DAMAGED}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise error(f"{path}: not valid JSON ({type(problem).__name__}); {DAMAGED}") from None


def read_arrays(path: str | Path, error: type[TfmedError] = TfmedError) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (by name) or the one array of an ``.npy`` (under ``"array"``), never unpickled.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
        >>> np.savez(path, np.zeros(3))
        >>> read_arrays(path)["arr_0"].shape
        (3,)
    """
    path = Path(path)
    try:
        stored = np.load(path, allow_pickle=False)
        if isinstance(stored, np.ndarray):
            return {"array": stored}
        with stored:
            return {name: stored[name] for name in stored.files}
    except FileNotFoundError:
        raise error(f"{path}: missing; {DAMAGED}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as problem:  # pickled, truncated, foreign
        raise error(f"{path}: not a NumPy array file tfmed can read ({type(problem).__name__}: "
                    f"{str(problem)[:120]}); {DAMAGED}") from None
