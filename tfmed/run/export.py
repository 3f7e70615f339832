"""``tfmed export-run``: a copy of a run directory to share, optionally anonymised.

A run names patients and the author's machine in several places: ``splits.csv``,
``excluded_rows.csv``, ``oof_predictions.csv``, ``member_scores.csv`` and every
``predictions.csv`` and ``explanations.csv`` list image paths and patient ids;
``report.html`` lists excluded rows; ``config.yaml`` holds the data and runs
folders, ``environment.json`` the command line and working directory; overlay
files are named after their images. With ``anonymise=True`` the copy has each
patient id replaced by a salted hash (the salt is not kept), paths made relative,
ages of 90 and over written as 90 and files renamed; ``ANONYMISED.txt`` says what
was done, and every file is then searched for the original ids. The model files
stay byte-identical.

Example:
    >>> export_run("runs/pneumonia_mnist/20261124-101500", "share/pmnist", anonymise=True)  # doctest: +SKIP
    PosixPath('share/pmnist')
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path, PurePosixPath

import pandas as pd
import yaml

from tfmed.data.volume_inputs import SERIES_UID
from tfmed.errors import TfmedError
from tfmed.progress import log
from tfmed.run.manifest import MANIFEST_FILE, check_run, write_manifest
from tfmed.run.rundir import RunDirectoryError, refuse_output_inside_runs, resolve_run_dir

NOTE_FILE = "ANONYMISED.txt"
PATIENT_COLUMNS = ("patient_id", "patient")
ID_COLUMNS = PATIENT_COLUMNS + (SERIES_UID,)  # hashed wholesale: a DICOM series UID links back to the study too
PATH_COLUMNS = ("image", "id", "file", "path")  # columns that hold image paths
AGE_COLUMN, OLDEST = "age", 90  # ages from 90 on are written as 90 in an anonymised copy (HIPAA Safe Harbor)
TEXT_SUFFIXES = {".csv", ".json", ".jsonl", ".yaml", ".yml", ".html", ".htm", ".txt", ".md", ".log"}
KEPT = "model"  # copied byte for byte: the shared model is the one that was measured
BINARY_MIN_LENGTH = 5  # shorter byte strings turn up by chance in compressed images and weights
_WORD = re.compile(r"[A-Za-z0-9]+")
_LEFT = re.compile(r"(?:[A-Za-z0-9]|\d\.|\d[eE][-+])\Z")  # inside a word, or the end of a number ("0.17")
_RIGHT = re.compile(r"[A-Za-z0-9]|\.\d")
_PATH_LEFT, _PATH_RIGHT = re.compile(r"[/\\_]\Z"), re.compile(r"[/\\_]|\.[A-Za-z]")
_PATH_TOKEN = re.compile(r"[^\s\"'<>,;()=]+")  # a path as it stands in free text (a log line, HTML)
_PAYLOAD = re.compile(r"(?<=base64,)[A-Za-z0-9+/=]+")  # images embedded in report.html


class ExportError(TfmedError):
    """A run cannot be exported: the target exists, the source is damaged, or an id would leak."""


def pseudonym(patient_id: str, salt: str) -> str:
    """The anonymised form of ``patient_id``: ``"anon-"`` + 16 hex digits of SHA-256(salt + id).

    Example:
        >>> pseudonym("PAT-0007", salt="s3cret")
        'anon-d7e7eef6b43b27f0'
    """
    return "anon-" + hashlib.sha256((salt + patient_id).encode("utf-8")).hexdigest()[:16]


def identifying(patient_id: str) -> bool:
    """Whether an id is searched for in the copy: it has a letter or 4+ characters (a short
    number such as 17 cannot be told apart from counts and sizes in text).

    Example:
        >>> identifying("p1"), identifying("0007"), identifying("17")
        (True, True, False)
    """
    return len(patient_id) >= 4 or any(c.isalpha() for c in patient_id)


def distinctive(patient_id: str) -> bool:
    """Whether an id is found inside longer words too: letters and digits only, both of them, 4 or more
    characters (``MRN40000`` in ``IMGMRN40000x0.png``), a form that ordinary words and numbers do not take.

    Example:
        >>> distinctive("MRN40000"), distinctive("PAT-0007"), distinctive("anna"), distinctive("0007")
        (True, False, False, False)
    """
    return (len(patient_id) >= 4 and patient_id.isascii() and patient_id.isalnum()
            and any(c.isalpha() for c in patient_id) and any(c.isdigit() for c in patient_id))


class _Ids:
    """Patient ids found as tokens: not part of a longer word or number (``17`` is not in ``0.17``); a
    :func:`distinctive` id also inside a longer word."""

    def __init__(self, ids, inside_words: bool = True):
        ids = set(ids)
        self.by_word: dict[str, list[tuple[str, int]]] = {}
        for value in sorted(ids, key=len, reverse=True):  # longest first
            word = _WORD.search(value)
            if word:
                self.by_word.setdefault(word.group(), []).append((value, word.start()))
        self.embedded = {value for value in ids if distinctive(value)} if inside_words else set()
        self.lengths = sorted({len(value) for value in self.embedded}, reverse=True)

    def find(self, text: str, context: bool = False):
        """``(start, end, id)`` per id, in order; with ``context`` a short number counts only beside / \\ _ or an
        extension."""
        found = sorted(list(self._tokens(text, context)) + list(self._inside_words(text)))
        done = 0
        for start, end, value in found:
            if start >= done:
                yield start, end, value
                done = end

    def _inside_words(self, text: str):
        if not self.embedded:
            return
        for word in _WORD.finditer(text):
            piece, at = word.group(), 0
            if len(piece) <= self.lengths[-1]:  # an id as long as the word is a token, found by _tokens
                continue
            while at < len(piece):
                for length in self.lengths:
                    if length < len(piece) and piece[at:at + length] in self.embedded:
                        yield word.start() + at, word.start() + at + length, piece[at:at + length]
                        at += length - 1
                        break
                at += 1

    def _tokens(self, text: str, context: bool):
        present = self.by_word.keys() & set(_WORD.findall(text))
        if not present:  # the quick answer for most strings
            return
        words = re.compile(r"(?<![A-Za-z0-9])(?:%s)(?![A-Za-z0-9])" % "|".join(map(re.escape, present)))
        position = done = 0
        while word := words.search(text, position):
            position = word.end()
            for value, offset in self.by_word.get(word.group(), ()):
                start = word.start() - offset
                end = start + len(value)
                left, right = text[max(0, start - 3):start], text[end:end + 2]
                if start < done or text[start:end] != value or _LEFT.search(left) or _RIGHT.match(right):
                    continue
                if context and not identifying(value) and not (_PATH_LEFT.search(left) or _PATH_RIGHT.match(right)):
                    continue
                yield start, end, value
                position = done = end
                break


class _Rewriter:
    """Replaces ids by their hashes and absolute folders by relative names in one string."""

    def __init__(self, hashes: dict[str, str], folders: dict[str, str], paths: dict[str, str] | None = None):
        self.hashes, self.folders, self.ids, self.paths = hashes, folders, _Ids(hashes), paths or {}
        names = "|".join(re.escape(f) for f in sorted(folders, key=len, reverse=True))
        self.pattern = re.compile(rf"(?<![\w.-])({names})(?:(/)|(?![\w-]|\.\w))") if folders else None
        # the file names of those image paths without their suffix, as other names carry them (an overlay
        # 002_TN_IMG16x12.png of IMG16x12.png): there a short id adjoining letters is told by its row only.
        # Names without a letter (16_1.png) are left to the search for ids as tokens: numbers stay numbers.
        self.stems = {PurePosixPath(old).stem: PurePosixPath(new).stem for old, new in self.paths.items()
                      if PurePosixPath(old).stem != PurePosixPath(new).stem
                      and re.search("[A-Za-z]", PurePosixPath(old).stem)}
        stems = "|".join(re.escape(s) for s in sorted(self.stems, key=len, reverse=True))
        self.stem_pattern = re.compile(rf"(?<![A-Za-z0-9])({stems})(?![A-Za-z0-9])") if self.stems else None

    def ids_in(self, text: str, context: bool = True) -> str:
        pieces, last = [], 0
        for start, end, value in self.ids.find(text, context):
            pieces += [text[last:start], self.hashes[value]]
            last = end
        return "".join(pieces) + text[last:]

    def _folder(self, match) -> str:
        short = self.folders[match.group(1)]
        return ("" if short == "." else short + "/") if match.group(2) else short

    def stems_in(self, text: str) -> str:
        """``text`` with the images' file names (without suffix) that :func:`_row_paths` changed replaced."""
        return self.stem_pattern.sub(lambda m: self.stems[m.group()], text) if self.stem_pattern else text

    def __call__(self, text: str) -> str:
        if self.paths:  # image paths whose ids only their rows could tell (see _row_paths)
            text = self.paths.get(text) or _PATH_TOKEN.sub(lambda m: self.paths.get(m.group(), m.group()), text)
        return self.ids_in(self.stems_in(self.pattern.sub(self._folder, text) if self.pattern else text))


def _row_paths(frames: dict[Path, pd.DataFrame], hashes: dict[str, str], folders: dict[str, str]) -> dict[str, str]:
    """``{image path: the path with its row's patient id hashed}`` for the rows of the copy's tables that give
    both: a row knows its patient, so the id is replaced wherever it stands in the row's path below its data
    folder (one of ``folders``; ``p10_x.png`` of patient 10; a number only where no digit adjoins it), which a
    search of text for ids cannot do for a short number."""
    paths: dict[str, str] = {}
    prefixes = sorted(folders, key=len, reverse=True)
    for frame in frames.values():
        patient = next((c for c in PATIENT_COLUMNS if c in frame), None)
        for column in [c for c in PATH_COLUMNS if c in frame] if patient else []:
            for value, path in zip(frame[patient], frame[column]):
                if value not in hashes or value not in path:
                    continue
                start = next((len(f) for f in prefixes if path.startswith(f + "/")), 0)
                pattern = rf"(?<!\d){re.escape(value)}(?!\d)" if value.isdigit() else re.escape(value)
                new = path[:start] + re.sub(pattern, hashes[value], path[start:])
                if new != path:
                    paths[path] = new
    return paths


def export_run(run: str | Path, out: str | Path, *, anonymise: bool = False, salt: str | None = None,
               verify: bool = True) -> Path:
    """Copy run directory ``run`` (with its evaluations/ and explanations/) to the new folder ``out``.

    The source is verified against its ``MANIFEST.sha256`` first (an incomplete
    run, without one, is refused; ``verify=False`` skips the check); a plain copy
    keeps that manifest (and so the run digest), an anonymised one gets its own. With
    ``anonymise`` patient ids become ``pseudonym(id, salt)``; the salt is random
    per export unless given (give the same secret salt to export several runs
    with matching hashes). Returns ``out``; nothing is left at ``out`` on failure.

    Example:
        >>> export_run("runs/tb_xray/20261124-101500", "share/tb", anonymise=True)  # doctest: +SKIP
        PosixPath('share/tb')
    """
    run_dir, out = resolve_run_dir(run), Path(out)
    if out.exists() or out.is_symlink():
        raise ExportError(f"{out}: already exists; an export never overwrites a folder, choose a new OUT")
    try:
        refuse_output_inside_runs(out, [run_dir], option="OUT")
    except RunDirectoryError as error:
        raise ExportError(str(error)) from None
    if salt is not None and (not anonymise or not salt):
        raise ExportError("a salt is used only with anonymise, and must not be empty; drop --salt or add "
                          "--anonymise")
    check_run(run_dir, verify)  # a damaged or incomplete run is not passed on as if whole
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.export-{secrets.token_hex(4)}"
    try:
        shutil.copytree(run_dir, work)
        if anonymise:  # a plain copy keeps the run's manifest, so its digest stays the one the run printed
            _anonymise(work, run_dir, salt or secrets.token_hex(16), out)
            write_manifest(work)
        os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"exported {run_dir} to {out}" + (" (anonymised, see ANONYMISED.txt)" if anonymise else ""))
    return out


def _anonymise(copy: Path, run_dir: Path, salt: str, out: Path) -> None:
    (copy / MANIFEST_FILE).unlink(missing_ok=True)  # the copy gets its own
    files = [p for p in sorted(copy.rglob("*")) if p.is_file() and p.relative_to(copy).parts[0] != KEPT]
    frames = {p: frame for p in files if p.suffix == ".csv" and (frame := _read_csv(p)) is not None}
    ids = {v for frame in frames.values() for c in ID_COLUMNS if c in frame for v in frame[c]}
    ids -= {"", "NA", "<NA>", "nan", "NaN", "None", "null"}
    hashes = {v: pseudonym(v, salt) for v in ids}
    folders = _folders(copy, run_dir, frames)
    rewrite = _Rewriter(hashes, folders, _row_paths(frames, hashes, folders))
    rewritten = sum(_rewrite_file(p, rewrite) for p in files)
    capped = _cap_ages(files)
    renamed = 0
    for folder, folders, names in os.walk(copy, topdown=False):
        if Path(folder).relative_to(copy).parts[:1] == (KEPT,):
            continue
        for name in names + folders:
            new = rewrite.ids_in(rewrite.stems_in(name), context=False)
            if new != name and not (Path(folder) / new).exists():
                os.rename(Path(folder) / name, Path(folder) / new)
                renamed += 1
    pictures = any(p.suffix == ".png" for p in copy.glob("explanations/**/*"))
    pinned = [p.relative_to(copy).as_posix() for p in sorted((copy / KEPT).rglob("*")) if p.is_file()
              and rewrite.pattern and any(rewrite.pattern.search(t) for t in _texts(*_content(p)))]
    (copy / NOTE_FILE).write_text(
        "This is an anonymised copy of a tfmed run directory (tfmed export-run --anonymise).\n"
        f"- {len(ids)} patient ids (and DICOM series UIDs) were replaced by salted hashes (\"anon-\" + 16 hex "
        "digits) in id columns, text and file names; neither the salt nor the mapping is part of this copy.\n"
        f"- {rewritten} files were rewritten and {renamed} files or folders renamed.\n"
        + (f"- {capped} ages of {OLDEST} years or more were written as {OLDEST} (the age column), as HIPAA's "
           "Safe Harbor method asks.\n" if capped else "")
        + "- Absolute paths were made relative: image paths to their data folder, the working directory is "
        "\".\", the home folder \"~\", the runs folder \"runs\".\n"
        "- The model files (model/) are byte-identical to the original run's"
        + (f" (so {', '.join(pinned)} still hold absolute paths of the machine the run was made on)"
           if pinned else "")
        + ".\n"
        + ("- Not rewritten: text drawn inside pictures. The overlays in explanations/ (and the explanations "
           "figure in report.html, if any) show a case number in their titles when made by tfmed 0.2 or "
           "later, but an image's file name when made by tfmed 0.1: look at them before sharing.\n"
           if pictures else ""),
        encoding="utf-8")
    _check_nothing_leaked(copy, ids, rewrite, out)


def _folders(copy: Path, run_dir: Path, frames: dict[Path, pd.DataFrame]) -> dict[str, str]:
    """``{absolute folder: relative name}`` for every folder of the author's machine the run names."""
    folders: dict[str, str] = {}

    def add(folder, short):
        if folder and os.path.isabs(folder) and len(PurePosixPath(folder).parts) > 1:
            folders.setdefault(os.path.normpath(folder), short)

    own = [copy / "splits.csv", copy / "excluded_rows.csv"]  # the run's data first, then other data evaluated
    for group in [[p for p in own if p in frames]] + [[p] for p in frames if p not in own]:
        paths = {os.path.normpath(v) for p in group for c in PATH_COLUMNS if c in frames[p]
                 for v in frames[p][c] if os.path.isabs(v)}
        parents = {os.path.dirname(v) for v in paths if not _under(v, folders)}
        common = os.path.commonpath(parents) if parents else None
        for folder in [common] if common and len(PurePosixPath(common).parts) > 1 else sorted(parents):
            add(folder, ".")
    config = _content(copy / "config.yaml")[1] if (copy / "config.yaml").is_file() else {}
    environment = _content(copy / "environment.json")[1] if (copy / "environment.json").is_file() else {}
    config, environment = (v if isinstance(v, dict) else {} for v in (config, environment))
    cwd = environment.get("cwd") if isinstance(environment.get("cwd"), str) else None
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    parts = data.get("parts") if isinstance(data.get("parts"), list) else []  # a merged section's sources
    for section in [data] + [part for part in parts if isinstance(part, dict)]:
        for key in ("path", "root"):
            value = section.get(key)
            if isinstance(value, str) and os.path.isabs(value) and not _under(value, folders):
                add(value if key == "root" or not Path(value).suffix else os.path.dirname(value), ".")
    runs = config.get("runs_dir")
    if isinstance(runs, str) and (os.path.isabs(runs) or cwd):
        add(os.path.join(cwd or "", runs), "runs")
    for path in {run_dir.absolute(), run_dir.resolve()}:
        add(str(path), f"runs/{run_dir.parent.name}/{run_dir.name}")
    add(cwd, ".")
    add(str(Path.home()), "~")
    home = re.match(r"/(?:home|Users)/[^/]+", cwd or "")  # the author's home, seen from the working directory
    add(home and home.group(), "~")
    return folders


def _under(path: str, folders) -> bool:
    return any(path == f or path.startswith(f + "/") for f in folders)


def _cap_ages(files: list[Path]) -> int:
    """Write each age of :data:`OLDEST` years or more in the copy's CSVs as OLDEST (a very old age names few
    people); the number of ages changed."""
    capped = 0
    for path in files:
        frame = _read_csv(path) if path.suffix == ".csv" else None
        if frame is None or AGE_COLUMN not in frame.columns:
            continue
        old = pd.to_numeric(frame[AGE_COLUMN], errors="coerce") >= OLDEST
        if old.any():
            frame.loc[old, AGE_COLUMN] = str(OLDEST)
            frame.to_csv(path, index=False)
            capped += int(old.sum())
    return capped


def _read_csv(path: Path) -> pd.DataFrame | None:
    try:  # every cell as written: numbers keep their exact digits
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None


def _numeric(values: pd.Series) -> bool:
    return bool(pd.to_numeric(values[values != ""], errors="coerce").notna().all())


def _content(path: Path) -> tuple[str, object]:
    """``("csv", frame)``, ``("tree", parsed JSON or YAML)``, ``("text", str)`` or ``("bytes", bytes)``."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return "bytes", path.read_bytes()
    if path.suffix not in TEXT_SUFFIXES and "\0" in text:
        return "bytes", path.read_bytes()
    if path.suffix == ".csv" and (frame := _read_csv(path)) is not None:
        return "csv", frame
    parse = {".json": json.loads, ".yaml": yaml.safe_load, ".yml": yaml.safe_load}.get(path.suffix)
    value = _load(text, parse) if parse else None
    return ("tree", value) if isinstance(value, (dict, list)) else ("text", text)


def _load(text: str, parse):
    try:
        return parse(text)
    except (ValueError, yaml.YAMLError):
        return None


def _strings(value, change):
    """``value`` (parsed JSON or YAML) with ``change`` applied to every string and key."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return [_strings(v, change) for v in value]
    if isinstance(value, dict):
        return {change(k) if isinstance(k, str) else k: _strings(v, change) for k, v in value.items()}
    return value


def _rewrite_file(path: Path, rewrite: _Rewriter) -> bool:
    """Rewrite one file of the copy (strings only: numbers stay as written); True if it changed."""
    kind, value = _content(path)
    if kind == "csv":
        new = value.copy()
        for column in value.columns:
            if column in ID_COLUMNS:
                new[column] = value[column].map(lambda v: rewrite.hashes.get(v, v))
            elif not _numeric(value[column]):
                new[column] = value[column].map(rewrite)
        new.columns = [rewrite(c) for c in value.columns]
        changed = not (new.equals(value) and list(new.columns) == list(value.columns))
        if changed:
            new.to_csv(path, index=False)
        return changed
    if kind == "tree":
        new = _strings(value, rewrite)
        if path.name == "environment.json" and isinstance(new, dict):
            new.update({"cwd": "."} if "cwd" in new else {})
            if isinstance(new.get("command"), list):  # what is still absolute keeps its name only
                new["command"] = [re.sub(r"(?:^|(?<==))/\S*", lambda m: os.path.basename(m.group()) or ".", a)
                                  if isinstance(a, str) else a for a in new["command"]]
        text = (json.dumps(new, indent=2) if path.suffix == ".json" else yaml.safe_dump(new, sort_keys=False))
        changed = new != value
    elif kind == "text":
        pieces, last = [], 0
        for match in _PAYLOAD.finditer(value):  # embedded pictures are left as they are
            pieces += [rewrite(value[last:match.start()]), match.group()]
            last = match.end()
        text = "".join(pieces) + rewrite(value[last:])
        changed = text != value
    else:
        return False
    if changed:
        path.write_text(text, encoding="utf-8")
    return changed


def _texts(kind: str, value) -> list[str]:
    """The strings of a file that could hold an id (numbers, and pictures embedded in HTML, cannot)."""
    if kind == "csv":
        return list(value.columns) + [v for c in value.columns if not _numeric(value[c]) for v in value[c]]
    if kind == "tree":
        found: list[str] = []
        _strings(value, lambda s: found.append(s) or s)
        return found
    return [_PAYLOAD.sub("", value)] if kind == "text" else []


def _check_nothing_leaked(copy: Path, ids: set[str], rewrite: _Rewriter, out: Path) -> None:
    """Raise :class:`ExportError` naming the first file of the copy that still holds an original id or folder."""
    text_ids = _Ids(v for v in ids if identifying(v))
    byte_ids = _Ids((v.encode("utf-8").decode("latin-1") for v in ids if len(v) >= BINARY_MIN_LENGTH),
                    inside_words=False)  # compressed bytes hold letters and digits at random
    for path in sorted(copy.rglob("*")):
        relative, where = path.relative_to(copy), None
        kept = relative.parts[0] == KEPT
        if any(next(text_ids.find(part), None) or rewrite.stem_pattern and rewrite.stem_pattern.search(part)
               for part in relative.parts):
            where = "a patient id in its name"
        elif path.is_file():
            kind, value = _content(path)
            texts = _texts(kind, value)
            if any(next(text_ids.find(t), None) or rewrite.stem_pattern and rewrite.stem_pattern.search(t)
                   for t in texts):
                where = "a patient id in its text"
            elif kind == "bytes" and next(byte_ids.find(value.decode("latin-1")), None):
                where = "a patient id in its bytes"
            elif not kept and rewrite.pattern and any(rewrite.pattern.search(t) for t in texts):
                where = "an absolute path of this machine"
        if where:
            fix = ("the model artifact itself holds it and is copied unchanged, so this run cannot be shared "
                   "anonymised" if kept else "make a plain copy (export-run without --anonymise), edit or "
                   "delete that file there, and export the edited copy with --anonymise --no-verify")
            raise ExportError(f"{out / relative}: still holds {where} after anonymising, so the copy was "
                              f"removed; {fix}")
