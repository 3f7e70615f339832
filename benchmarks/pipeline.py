"""Benchmark of the tfmed input pipeline against a per-image Python/OpenCV loop.

Generates (once, cached) a class-folder dataset of 8-bit grey 256x256 PNGs and
prints, in one run:

(a) images/s of ``make_dataset`` at 224 px with training augmentation
    (resize to 256 + random 224 crop, flips, rotation, brightness, contrast)
    vs a plain Python loop doing the same work per image with OpenCV/NumPy,
    on the same subset of files (goal: >= 3x);
(b) peak resident memory (RSS high-water mark of a fresh subprocess) while
    streaming the whole folder through the training pipeline (goal: < 1.5 GB).

Exit status: 0 when both goals are met (with --skip-memory: the speed goal), 1
when one fails, 2 for a refused argument or a tfmed error (one line).

Example:
    .venv/bin/python benchmarks/pipeline.py                 # 20,000 images, 2,000 compared
    .venv/bin/python benchmarks/pipeline.py --images 2000 --subset 500
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from _common import one_line_errors  # noqa: E402

CLASSES = ("normal", "pneumonia")
SIZE = 224
CROP_FROM = 256
ROTATION = 10.0
BRIGHTNESS = 0.1
CONTRAST = 0.1
MEMORY_GOAL_GB = 1.5
SPEED_GOAL = 3.0


# ------------------------------------------------------------------ dataset
def _write_chunk(args) -> int:
    folder, start, stop, size = args
    rng = np.random.default_rng(start)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(start, stop):
        label = CLASSES[i % 2]
        # smooth chest-like blob plus noise: compresses like a radiograph, not like white noise
        blob = np.exp(-((xx - rng.uniform(0.3, 0.7)) ** 2 + (yy - 0.5) ** 2) / rng.uniform(0.02, 0.1))
        image = 60 + 150 * blob + rng.normal(0, 6, (size, size))
        cv2.imwrite(str(Path(folder) / label / f"img_{i:06d}.png"), np.clip(image, 0, 255).astype(np.uint8),
                    [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return stop - start


def ensure_dataset(folder: Path, n: int, size: int) -> Path:
    """Write ``n`` PNGs into ``folder/<class>/`` unless a matching set is already there."""
    marker = folder / f"complete_{n}_{size}.json"
    if marker.is_file():
        return folder
    for label in CLASSES:
        (folder / label).mkdir(parents=True, exist_ok=True)
    chunks = [(str(folder), s, min(s + 500, n), size) for s in range(0, n, 500)]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        written = sum(pool.map(_write_chunk, chunks))
    marker.write_text(json.dumps({"images": written, "size": size}))
    print(f"wrote {written} PNGs ({size}x{size}, 8-bit) to {folder} in {time.perf_counter() - start:.1f} s")
    return folder


def folder_table(folder: Path, n: int):
    """An ImageTable of the first ``n`` images (class folders -> labels)."""
    from tfmed.data.table import ImageTable

    paths = sorted(str(p) for label in CLASSES for p in (folder / label).glob("img_*.png"))
    paths = sorted(paths, key=lambda p: Path(p).name)[:n]
    labels = [CLASSES.index(Path(p).parent.name) for p in paths]
    return ImageTable(pd.DataFrame({"image": paths, "label": labels}), list(CLASSES), "binary", source=str(folder))


def configs():
    from tfmed.config import AugmentConfig, PreprocessConfig

    pre = PreprocessConfig(image_size=SIZE, channels=3, intensity="minmax")
    aug = AugmentConfig(hflip=True, vflip=True, crop_from=CROP_FROM, rotation_degrees=ROTATION,
                        brightness=BRIGHTNESS, contrast=CONTRAST)
    return pre, aug


# --------------------------------------------------------------- contenders
def run_tfmed(table, batch_size: int) -> tuple[float, float]:
    """(wall, CPU) seconds for one training epoch of make_dataset over ``table`` (after a warm-up)."""
    from tfmed.data.pipeline import make_dataset

    pre, aug = configs()
    ds = make_dataset(table, pre, training=True, augment=aug, batch_size=batch_size, seed=0)
    for _ in ds.take(2):  # trace the graph functions, start the thread pools
        pass
    start, cpu = time.perf_counter(), time.process_time()
    count = 0
    for images, _ in ds:
        count += int(images.shape[0])
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert count == len(table), (count, len(table))
    return elapsed, cpu


def python_loop(paths, labels, batch_size: int, seed: int = 0):
    """The same work per image with OpenCV/NumPy in a plain loop, batched like the pipeline."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))
    limit = math.radians(ROTATION)
    batch, targets = [], []
    for i in order:
        image = cv2.imread(paths[i], cv2.IMREAD_GRAYSCALE).astype(np.float32)
        low, high = image.min(), image.max()
        image = (image - low) / max(high - low, 1e-12) * 255.0                       # MinMax
        image = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)         # Resize(224)
        image = cv2.resize(image, (CROP_FROM, CROP_FROM), interpolation=cv2.INTER_LINEAR)
        top, left = rng.integers(0, CROP_FROM - SIZE + 1, 2)
        image = image[top:top + SIZE, left:left + SIZE]                               # RandomCrop
        if rng.random() < 0.5:
            image = image[:, ::-1]
        if rng.random() < 0.5:
            image = image[::-1]
        angle = math.degrees(rng.uniform(-limit, limit))
        matrix = cv2.getRotationMatrix2D(((SIZE - 1) / 2, (SIZE - 1) / 2), angle, 1.0)
        image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        image = np.clip(image + rng.uniform(-BRIGHTNESS, BRIGHTNESS) * 255.0, 0, 255)
        mean = image.mean()
        image = np.clip((image - mean) * rng.uniform(1 - CONTRAST, 1 + CONTRAST) + mean, 0, 255)
        batch.append(np.repeat(image[..., None], 3, axis=-1))                        # ToChannels(3)
        targets.append(labels[i])
        if len(batch) == batch_size:
            yield np.stack(batch), np.asarray(targets, np.float32)[:, None]
            batch, targets = [], []
    if batch:
        yield np.stack(batch), np.asarray(targets, np.float32)[:, None]


def run_loop(table, batch_size: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the plain loop over ``table``."""
    paths = table.frame["image"].tolist()
    labels = table.labels()
    start, cpu = time.perf_counter(), time.process_time()
    count = sum(len(x) for x, _ in python_loop(paths, labels, batch_size))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert count == len(table)
    return elapsed, cpu


# ------------------------------------------------------------- memory child
def stream_child(folder: Path, n: int, batch_size: int) -> None:
    """Run in a fresh process: stream every image once, print JSON with peak RSS."""
    table = folder_table(folder, n)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds, _ = run_tfmed(table, batch_size)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"images": len(table), "seconds": seconds, "peak_rss_kb": peak_kb,
                      "rss_before_pipeline_kb": baseline}))


@one_line_errors
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000, help="images in the generated folder")
    parser.add_argument("--subset", type=int, default=2000, help="images used for the speed comparison")
    parser.add_argument("--size", type=int, default=256, help="side of the generated PNGs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "tfmed_bench_pngs"),
                        help="where the PNG folder is written once and reused")
    parser.add_argument("--skip-memory", action="store_true", help="only run the speed comparison")
    parser.add_argument("--stream-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    folder = Path(args.data_dir) / f"{args.images}_{args.size}"

    if args.stream_child:
        stream_child(folder, args.images, args.batch_size)
        return 0

    ensure_dataset(folder, args.images, args.size)
    import tensorflow as tf

    cores = os.cpu_count()
    print(f"machine: {cores} CPU cores, TensorFlow {tf.__version__}, OpenCV {cv2.__version__} "
          f"(OpenCV threads: {cv2.getNumThreads()})")
    subset = folder_table(folder, min(args.subset, args.images))
    print(f"\n(a) throughput on the same {len(subset)} images, {args.size}px PNG -> {SIZE}px, augmentation: "
          f"resize {CROP_FROM} + random {SIZE} crop, h/v flips, rotation +-{ROTATION:g} deg, "
          f"brightness +-{BRIGHTNESS}, contrast +-{CONTRAST}, batch {args.batch_size}")
    loop_s, loop_cpu = run_loop(subset, args.batch_size)
    tf_s, tf_cpu = run_tfmed(subset, args.batch_size)
    n = len(subset)
    loop_rate, tf_rate = n / loop_s, n / tf_s
    ratio = tf_rate / loop_rate
    print(f"  python/OpenCV loop : {loop_rate:8.1f} images/s  ({loop_s:.1f} s; CPU {1000 * loop_cpu / n:.2f} ms/image)")
    print(f"  tfmed make_dataset : {tf_rate:8.1f} images/s  ({tf_s:.1f} s; CPU {1000 * tf_cpu / n:.2f} ms/image)")
    print(f"  speed-up           : {ratio:.2f}x   goal >= {SPEED_GOAL:g}x: {'PASS' if ratio >= SPEED_GOAL else 'FAIL'}")
    print(f"  (the pipeline's parallel map can use all {cores} cores; its ceiling here is about "
          f"{cores * loop_cpu / tf_cpu:.1f}x = cores x loop CPU / pipeline CPU per image)")

    speed_ok = ratio >= SPEED_GOAL
    if args.skip_memory:
        return 0 if speed_ok else 1
    print(f"\n(b) peak memory streaming all {args.images} images through the training pipeline "
          f"(fresh subprocess)")
    child = subprocess.run([sys.executable, __file__, "--stream-child", "--images", str(args.images),
                            "--size", str(args.size), "--batch-size", str(args.batch_size),
                            "--data-dir", args.data_dir], capture_output=True, text=True)
    if child.returncode != 0:
        print(child.stderr[-3000:])
        print("  FAIL: the streaming subprocess failed")
        return 1
    result = json.loads(child.stdout.strip().splitlines()[-1])
    peak_gb = result["peak_rss_kb"] / 1024**2
    in_memory_gb = args.images * SIZE * SIZE * 3 * 4 / 1024**3
    print(f"  streamed {result['images']} images in {result['seconds']:.1f} s "
          f"({result['images'] / result['seconds']:.1f} images/s)")
    print(f"  peak RSS           : {peak_gb:.2f} GB (process before the pipeline: "
          f"{result['rss_before_pipeline_kb'] / 1024**2:.2f} GB); all images as float32 would take "
          f"{in_memory_gb:.1f} GB")
    print(f"  goal < {MEMORY_GOAL_GB} GB: {'PASS' if peak_gb < MEMORY_GOAL_GB else 'FAIL'}")
    return 0 if speed_ok and peak_gb < MEMORY_GOAL_GB else 1


if __name__ == "__main__":
    sys.exit(main())
