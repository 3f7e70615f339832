"""Near-identical images: copies that patient ids cannot reveal.

The same picture stored twice (under two names, re-encoded, or as two exposures a moment apart)
leaks like one patient in two splits: a model scored on the copy has seen it in training. Public
sets carry such copies. PneumoniaMNIST's official train and validation splits share 8 images
pixel for pixel, and RetinaMNIST holds 27 pairs whose pixels differ by about 1.5 grey levels on
average.

Each image is reduced to a fingerprint: grey, scaled to 0-255 by its own minimum and maximum,
and averaged down to 16 x 16 pixels. Two images are near-identical when the root-mean-square
difference of their fingerprints is at most ``tolerance`` grey levels (4 by default, the
``split.near_duplicate_rms`` setting). On PneumoniaMNIST the copies differ by 0 and every other
image lies more than 10 levels from its nearest neighbour; on RetinaMNIST the pairs differ by
0.5-4 levels and the next-closest images by 5 or more.

Near-identical rows form groups (column ``near_duplicate_group``; empty for an image without
a twin). The splits that tfmed makes keep a group in one split and one fold, as they keep a
patient; a split given by the data source is kept, and the run says how many evaluation
images have a twin in train. ``tfmed evaluate`` likewise counts the images it scores that copy
one of the run's train or val images (:func:`copies_of`).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    >>> images[3] = images[1]
    >>> near_duplicate_groups(np.stack([fingerprint(i) for i in images])).tolist()
    [-1, 0, -1, 0]
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from tfmed.config import SplitConfig
from tfmed.data.decode import DEFAULT_MAX_PIXELS, read_image
from tfmed.data.table import ImageTable
from tfmed.errors import TfmedError

FINGERPRINT_SIDE = 16
DEFAULT_TOLERANCE = SplitConfig.near_duplicate_rms
GROUP_COLUMN = "near_duplicate_group"
# Exact copies are at distance 0; floating-point sums can put them a hair above it.
_EXACT_SLACK = 1e-3
_AXES = 16  # principal axes of the fingerprints the pair search indexes
_AXES_SAMPLE = 4096  # rows those axes are found on


class NearDuplicateError(TfmedError):
    """Images that cannot be fingerprinted, or a bad tolerance."""


def fingerprint(image) -> np.ndarray:
    """A 256-value float32 summary of one image (H, W) or (H, W, C): grey, 0-255, 16 x 16.

    Colour is averaged to grey (an alpha channel is dropped); the image is scaled to 0-255 by its
    own minimum and maximum, so 8-bit, 16-bit and Hounsfield-unit copies of a picture agree. A
    blank image (one value everywhere) has no picture to compare: its fingerprint is all NaN, and
    it joins no group.

    Example:
        >>> img = (np.arange(64 * 64) * 16).astype(np.uint16).reshape(64, 64)
        >>> fingerprint(img).shape
        (256,)
        >>> bool(np.allclose(fingerprint(img), fingerprint((img // 257).astype(np.uint8)), atol=1.5))
        True
    """
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 3:
        pixels = pixels[..., :3].mean(axis=-1)
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise NearDuplicateError(f"an image must be (H, W) or (H, W, C) to fingerprint, got shape {pixels.shape}")
    low, high = float(pixels.min()), float(pixels.max())
    if not high > low:
        return np.full(FINGERPRINT_SIDE ** 2, np.nan, dtype=np.float32)
    scaled = (pixels - low) * (255.0 / (high - low))
    small = cv2.resize(scaled, (FINGERPRINT_SIDE, FINGERPRINT_SIDE), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32).ravel()


def table_fingerprints(table: ImageTable, workers: int = 4,
                       max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Fingerprints (N, 256) of a table's images, in row order: from its array or its files.

    Example:
        >>> from tfmed.data.sources.embedded import load_pneumonia_mnist
        >>> table_fingerprints(load_pneumonia_mnist().subset(range(3))).shape
        (3, 256)
    """
    frame = table.frame
    if table.images is not None and "array_index" in frame.columns:
        images = np.asarray(table.images)
        return np.stack([fingerprint(images[int(i)]) for i in frame["array_index"]]) if len(frame) \
            else np.zeros((0, FINGERPRINT_SIDE ** 2), np.float32)
    paths = frame["image"].astype(str).tolist()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        prints = list(pool.map(lambda path: fingerprint(read_image(path, max_pixels)), paths))
    return np.stack(prints) if prints else np.zeros((0, FINGERPRINT_SIDE ** 2), np.float32)


def near_duplicate_groups(fingerprints: np.ndarray, tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
    """Group index per row (-1: no near-identical image) from fingerprints (N, 256).

    Rows whose fingerprints differ by at most ``tolerance`` grey levels (root mean square) are
    joined, and so are chains of them; groups are numbered in order of their first row.

    Example:
        >>> prints = np.array([[0.0] * 256, [100.0] * 256, [1.0] * 256, [200.0] * 256, [np.nan] * 256])
        >>> near_duplicate_groups(prints, tolerance=2.0).tolist()
        [0, -1, 0, -1, -1]
    """
    if tolerance is None or not np.isfinite(tolerance) or tolerance < 0:
        raise NearDuplicateError(f"tolerance must be a number of grey levels >= 0, got {tolerance!r}")
    prints = np.asarray(fingerprints, dtype=np.float64)
    n = len(prints)
    compared = np.flatnonzero(np.isfinite(prints).all(axis=1))  # blank images are not
    if len(compared) < 2:
        return np.full(n, -1, dtype=np.int64)
    radius = tolerance * np.sqrt(prints.shape[1]) + _EXACT_SLACK
    pairs = _pairs_within(prints[compared], radius)
    graph = coo_matrix((np.ones(len(pairs)), (compared[pairs[:, 0]], compared[pairs[:, 1]])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    groups = np.full(n, -1, dtype=np.int64)
    numbers: dict[int, int] = {}
    for row in np.flatnonzero(sizes[component] > 1):
        groups[row] = numbers.setdefault(int(component[row]), len(numbers))
    return groups


def _pairs_within(prints: np.ndarray, radius: float) -> np.ndarray:
    """Every pair of rows (i < j) of ``prints`` at most ``radius`` apart, exactly, in about n log n.

    Candidates come from a k-d tree over the first principal axes (of at most 4,096 rows): a projection onto
    orthonormal axes never lengthens a distance, so no pair within ``radius`` is missed; each candidate's full
    distance then decides.

    Example:
        >>> _pairs_within(np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0], [9.0, 9.0]]), 5.0).tolist()
        [[0, 1], [0, 2], [1, 2]]
    """
    centred = prints - prints.mean(axis=0)
    sample = centred[::max(1, len(centred) // _AXES_SAMPLE)]
    axes = np.linalg.svd(sample, full_matrices=False)[2][:_AXES]
    pairs = cKDTree(centred @ axes.T).query_pairs(radius, output_type="ndarray")
    if len(pairs):
        distances = np.sqrt(np.square(prints[pairs[:, 0]] - prints[pairs[:, 1]]).sum(axis=1))
        pairs = pairs[distances <= radius]
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if len(pairs) else np.zeros((0, 2), np.int64)


def mark_near_duplicates(table: ImageTable, tolerance: float = DEFAULT_TOLERANCE, workers: int = 4,
                         max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageTable:
    """The table with a ``near_duplicate_group`` column (nullable integer; empty without a twin).

    Example:
        >>> from tfmed.data.sources.embedded import load_pneumonia_mnist
        >>> marked = mark_near_duplicates(load_pneumonia_mnist())
        >>> int(marked.frame[GROUP_COLUMN].notna().sum())
        50
    """
    groups = near_duplicate_groups(table_fingerprints(table, workers, max_pixels), tolerance)
    frame = table.frame.copy()
    frame[GROUP_COLUMN] = pd.array([int(g) if g >= 0 else None for g in groups], dtype="Int64")
    return ImageTable(frame, list(table.classes), table.task, table.images, table.source,
                      excluded=table.excluded)


def twins_in_train(table: ImageTable) -> dict[str, int]:
    """For each split but train: how many of its rows have a near-identical image in train.

    Example:
        >>> from tfmed.data.sources.embedded import load_pneumonia_mnist
        >>> twins_in_train(mark_near_duplicates(load_pneumonia_mnist()))
        {'val': 8}
    """
    if GROUP_COLUMN not in table.frame.columns:
        return {}
    frame = table.frame[["split", GROUP_COLUMN]].dropna()
    in_train = set(frame.loc[frame["split"] == "train", GROUP_COLUMN].tolist())
    counts = {}
    for split in sorted(set(frame["split"]) - {"train"}, key=["val", "test"].index):
        counts[split] = int(frame.loc[frame["split"] == split, GROUP_COLUMN].isin(in_train).sum())
    return {split: count for split, count in counts.items() if count}


def conflicting_labels(table: ImageTable) -> list[list[tuple[str, str]]]:
    """The near-identical groups of a marked table (:func:`mark_near_duplicates`) whose images carry different
    labels: one list of (image, its label in words) per group. The same picture under two labels is a labelling
    error (e.g. one file copied into two class folders); a multilabel group conflicts when one label is known
    positive on one image and known negative on another.

    Example:
        >>> frame = pd.DataFrame({"image": ["a.png", "b.png", "c.png"], "label": [0, 1, 1],
        ...                       GROUP_COLUMN: pd.array([0, 0, None], dtype="Int64")})
        >>> conflicting_labels(ImageTable(frame, ["normal", "pneumonia"], "binary"))
        [[('a.png', 'normal'), ('b.png', 'pneumonia')]]
    """
    if GROUP_COLUMN not in table.frame.columns:
        return []
    labels, groups = table.labels(), table.frame[GROUP_COLUMN]
    grouped = np.flatnonzero(groups.notna().to_numpy())
    order = grouped[np.argsort(groups.to_numpy()[grouped].astype(np.int64), kind="stable")]
    found = []
    for positions in np.split(order, np.flatnonzero(np.diff(groups.to_numpy()[order].astype(np.int64))) + 1):
        if not len(positions):
            continue
        held = labels[positions]
        if table.task == "multilabel":
            conflict = ((held == 1).any(axis=0) & (held == 0).any(axis=0)).any()
            words = [", ".join(n for n, v in zip(table.classes, row) if v == 1) or "none" for row in held]
        else:
            conflict = len(set(held.tolist())) > 1
            words = [table.classes[int(v)] for v in held]
        if conflict:
            found.append(list(zip(table.frame["image"].iloc[positions].astype(str), words)))
    return found


def conflict_note(conflicts: list[list[tuple[str, str]]], shown: int = 3) -> str:
    """The warning that a run and ``tfmed validate`` give for :func:`conflicting_labels` ("" when none).

    Example:
        >>> conflict_note([[("a.png", "normal"), ("b.png", "pneumonia")]])[:64]
        '1 group of near-identical images carries different labels: a.png'
    """
    if not conflicts:
        return ""
    groups = f"{len(conflicts)} group{'s' if len(conflicts) > 1 else ''} of near-identical images carr" \
             f"{'y' if len(conflicts) > 1 else 'ies'}"
    examples = "; ".join(" and ".join(f"{image} ({label})" for image, label in group) for group in conflicts[:shown])
    more = f"; and {len(conflicts) - shown} more" if len(conflicts) > shown else ""
    return (f"{groups} different labels: {examples}{more}. The same picture under two labels is usually a "
            f"labelling error (a file copied into two class folders): check them ({GROUP_COLUMN} in splits.csv)")


def copies_of(reference: ImageTable, table: ImageTable, tolerance: float = DEFAULT_TOLERANCE,
              workers: int = 4, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> pd.DataFrame:
    """Rows of ``table`` near-identical to a row of ``reference``: columns ``image``, ``copy_of``.

    ``copy_of`` names one reference image of the row's group (chains included).

    Example:
        >>> from tfmed.data.sources.embedded import load_pneumonia_mnist
        >>> table = load_pneumonia_mnist()
        >>> copies = copies_of(table.split("train"), table.split("val"))
        >>> len(copies), copies["image"].str.split("#").str[1].tolist()[:2]
        (8, ['val/61', 'val/105'])
    """
    prints = np.vstack([table_fingerprints(reference, workers, max_pixels),
                        table_fingerprints(table, workers, max_pixels)])
    groups = near_duplicate_groups(prints, tolerance)
    reference_groups, table_groups = groups[:len(reference)], groups[len(reference):]
    first_reference = {}
    for image, group in zip(reference.frame["image"], reference_groups):
        if group >= 0:
            first_reference.setdefault(group, image)
    found = [(image, first_reference[group]) for image, group in zip(table.frame["image"], table_groups)
             if group in first_reference]
    return pd.DataFrame(found, columns=["image", "copy_of"])


def twin_note(split: str, count: int, total: int) -> str:
    """The sentence a run adds to a split whose images have near-identical copies in train.

    Example:
        >>> twin_note("val", 8, 524)[:58]
        '8 of 524 val images are near-identical to a training image'
    """
    return (f"{count} of {total} {split} images are near-identical to a training image "
            f"({GROUP_COLUMN} in splits.csv): the figures on {split} are not fully held out. The split "
            "came from the data source; a split that tfmed makes keeps such images together.")
