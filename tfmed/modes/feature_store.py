"""Pooled features of a whole table on disk, in shards: the SVM mode's features without its images
in memory.

The SVM mode streams a table's images through the tf.data pipeline and the
backbone in batches and keeps only the pooled features. :class:`FeatureStore`
writes them as shards of :data:`SHARD_ROWS` rows, one ``.npy`` file per shard
holding every block side by side, in a folder named by a digest of everything
that changes them (see :func:`table_identity`, :func:`inputs_identity` and the
backbone's identity). A shard is written under a temporary name and renamed
when complete, so a run that is killed leaves complete shards and never a
half-written one; the next run reads the complete shards (memory-mapped) and
computes only the missing ones. A second run, a sweep or an ensemble member
on the same table and settings reads them all.

Example:
    >>> import numpy as np, tempfile
    >>> store = FeatureStore(tempfile.mkdtemp())
    >>> compute = lambda start, stop: {"late": np.full((stop - start, 4), float(start))}
    >>> first = store.get_or_compute({"table": "t1"}, 5, compute)
    >>> again = store.get_or_compute({"table": "t1"}, 5, lambda start, stop: 1 / 0)
    >>> again["late"].shape, store.shards_computed, store.shards_read
    ((5, 4), 1, 1)
"""
from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from tfmed.data.boxes import BOXES_COLUMN
from tfmed.data.volumes import detached_data_file
from tfmed.modes.features import FeatureError, digest
from tfmed.training.distribute import WorkerShare

SHARD_ROWS = 4096
BLOCKS_FILE = "blocks.json"
# frame columns that never change an image's features (labels, ids, bookkeeping)
NOT_IMAGE_COLUMNS = ("label", "patient_id", "site", "view", "sex", "age", "split", "row", "source_problems",
                     BOXES_COLUMN)


class FeatureStore:
    """Features of ``rows`` table rows, by block name, read from shards or computed (see the module text).

    ``compute(start, stop)`` returns ``{block: (stop - start, width) array}``
    for table rows ``start:stop``; ``shards_read`` and ``shards_computed``
    count what a store did.

    Example:
        >>> store = FeatureStore("runs/.feature_cache")
        >>> store.folder({"table": "t1"}).parent.name
        '.feature_cache'
    """

    def __init__(self, directory: str | os.PathLike, shard_rows: int | None = None):
        self.directory = Path(directory)
        self.shard_rows = int(shard_rows or SHARD_ROWS)
        self.shards_read = 0
        self.shards_computed = 0

    def folder(self, key_parts: dict) -> Path:
        """The folder of the shards for these key parts."""
        return self.directory / f"table-{digest(key_parts)}"

    def get_or_compute(self, key_parts: dict, rows: int,
                       compute: Callable[[int, int], dict[str, np.ndarray]],
                       share: WorkerShare | None = None) -> dict[str, np.ndarray]:
        """Every block's features for rows 0..rows-1 (see the class text).

        With a ``share`` of several workers (:func:`tfmed.training.distribute.worker_share`)
        this process computes only the missing shards it owns (shard ``k`` belongs to worker
        ``k % count``), waits at the share's barrier until every worker has written its own,
        then reads them all: the folder must be one that every worker sees.
        """
        share = share or WorkerShare()
        folder = self.folder(key_parts)
        folder.mkdir(parents=True, exist_ok=True)
        widths = self._widths(folder)
        parts: dict[int, np.ndarray] = {}
        bounds = [(start, min(start + self.shard_rows, rows)) for start in range(0, rows, self.shard_rows)]
        for number, (start, stop) in enumerate(bounds):
            shard = _read(_shard_path(folder, start, stop), stop - start, widths)
            if shard is not None:
                self.shards_read += 1
            elif share.owns(number):
                blocks = compute(start, stop)
                widths = self._check_widths(folder, widths, blocks, stop - start)
                shard = np.concatenate([np.asarray(blocks[name], np.float32) for name in widths], axis=1)
                _write(_shard_path(folder, start, stop), shard)
                self.shards_computed += 1
            else:
                continue
            parts[number] = shard
        if share.count > 1:
            share.barrier()
            widths = widths or self._widths(folder)
            for number, (start, stop) in enumerate(bounds):
                if number not in parts:
                    parts[number] = _read(_shard_path(folder, start, stop), stop - start, widths)
                    if parts[number] is None:
                        raise FeatureError(
                            f"{_shard_path(folder, start, stop)}: worker {number % share.count} was to write this "
                            f"shard but it is missing after every worker finished; all workers must use one "
                            f"shared feature cache folder (runs_dir on a shared file system)")
                    self.shards_read += 1
        if widths is None:
            raise FeatureError("the feature store was asked for the features of 0 rows")
        out, offset = {}, 0
        for name, width in widths.items():
            out[name] = np.empty((rows, width), np.float32)
            for number, (start, stop) in enumerate(bounds):
                out[name][start:stop] = parts[number][:, offset:offset + width]
            offset += width
        return out

    @staticmethod
    def _widths(folder: Path) -> dict[str, int] | None:
        path = folder / BLOCKS_FILE
        if not path.is_file():
            return None
        try:
            return {str(k): int(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
        except (ValueError, AttributeError):
            return None  # damaged: rewritten by the next computed shard

    @staticmethod
    def _check_widths(folder: Path, widths, blocks: dict, count: int) -> dict[str, int]:
        found = {name: int(np.asarray(block).shape[1]) for name, block in blocks.items()}
        wrong = [name for name, block in blocks.items() if np.asarray(block).shape[0] != count]
        if wrong:
            raise FeatureError(f"the feature function returned the wrong number of rows for {wrong}")
        if widths is not None and found != widths:
            raise FeatureError(f"features of blocks {found} differ from the stored {widths} in {folder}; "
                               "delete that folder")
        if widths is None:
            _write_text(folder / BLOCKS_FILE, json.dumps(found))
        return found


def _shard_path(folder: Path, start: int, stop: int) -> Path:
    return folder / f"shard-{start:010d}-{stop:010d}.npy"


def _read(path: Path, count: int, widths: dict | None) -> np.ndarray | None:
    if widths is None or not path.is_file():
        return None
    try:
        shard = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None  # damaged: computed again
    if shard.shape != (count, sum(widths.values())):
        return None
    return shard


def _temporary(path: Path) -> Path:
    """A name beside ``path`` no other writer uses (workers on other machines may share a PID)."""
    return path.with_name(f"{path.name}.part-{os.getpid()}-{uuid.uuid4().hex[:12]}")


def _write(path: Path, array: np.ndarray) -> None:
    temporary = _temporary(path)
    try:
        with open(temporary, "wb") as stream:
            np.save(stream, array)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def _write_text(path: Path, text: str) -> None:
    temporary = _temporary(path)
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def table_identity(table, times: bool = True) -> dict:
    """What identifies a table's images: its image columns (paths, array rows, lesion centres), each
    file's size and modification time (``times``; see :func:`file_stats`), and the in-memory images' digest.

    Example:
        >>> import pandas as pd
        >>> from tfmed.data.table import ImageTable
        >>> table = ImageTable(pd.DataFrame({"image": ["/no/a.png"], "label": [0]}), ["a", "b"], "binary")
        >>> sorted(table_identity(table))
        ['columns', 'files', 'images']
    """
    frame = table.frame
    columns = [c for c in frame.columns if c not in NOT_IMAGE_COLUMNS and not str(c).startswith("label:")]
    known: dict[str, tuple | None] = {}  # a volume's many views share its path
    files = [known[value] if value in known else known.setdefault(value, file_stats(value, times))
             for value in frame["image"].astype(str).tolist()]
    return {"columns": {c: frame[c].astype(str).tolist() for c in sorted(columns)},
            "files": files if table.images is None else None,
            "images": None if table.images is None else np.asarray(table.images)}


def file_stats(path: str, times: bool = True) -> tuple | None:
    """Size and modification time (without ``times``: size alone) of an image file; for a DICOM series folder,
    of each file in it that the volume reader considers (name order, hidden files and sub-folders left out); for
    a MetaImage ``.mhd`` or NRRD ``.nhdr`` header, of the header and of the data file it names. None when missing.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> _ = open(f"{folder}/IM0001.dcm", "wb").write(b"DICM")
        >>> [(name, size) for name, size, _ in file_stats(folder)], file_stats(f"{folder}/gone.png")
        ([('IM0001.dcm', 4)], None)
        >>> file_stats(folder, times=False)
        (('IM0001.dcm', 4),)
    """
    def facts(stat) -> tuple:
        return (stat.st_size, stat.st_mtime_ns) if times else (stat.st_size,)

    try:
        if os.path.isdir(path):
            entries = sorted((entry for entry in os.scandir(path) if not entry.name.startswith(".")
                              and entry.is_file()), key=lambda entry: entry.name)
            return tuple((entry.name, *facts(entry.stat())) for entry in entries)
        stat = os.stat(path)
        data_file = detached_data_file(path)
        if data_file is None:
            return facts(stat)
        return facts(stat) + facts(os.stat(data_file))
    except OSError:
        return None


def inputs_identity(inputs) -> dict:
    """What identifies how a table's images become model inputs (see ``ImageInputs``).

    Example:
        >>> from tfmed.config import PreprocessConfig
        >>> from tfmed.data.pipeline import ImageInputs
        >>> inputs_identity(ImageInputs(PreprocessConfig(image_size=64)))["preprocess"]["image_size"]
        64
    """
    return {"preprocess": dataclasses.asdict(inputs.preprocess), "stats": inputs.stats,
            "view": repr(inputs.view),
            "volume_views": None if inputs.volume_views is None else dataclasses.asdict(inputs.volume_views)}
