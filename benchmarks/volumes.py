"""Benchmark: reading a CT volume (DICOM series, NIfTI, MetaImage) and cutting 2.5-D views out of it.

A synthetic chest-like CT (default 96 slices of 256 x 256 int16, 1.25 mm slices,
0.7 mm pixels, RescaleIntercept -1024) is written into a temporary folder three times:

- as a DICOM series, one file per slice made from pydicom's ``CT_small.dcm``,
  named by SOPInstanceUID without extension and written in shuffled order;
- as one NIfTI file (``.nii.gz``) holding the same voxels and geometry;
- as one MetaImage file (``.mhd`` + ``.raw``, LUNA16's format) holding the same.

The script checks that all three read back to the same volume, then prints (medians
of ``--repeats`` runs):

- ``read_dicom_series``, ``read_nifti`` and ``read_itk`` time, in total and per slice;
- ``extract_views`` throughput for the "orthogonal", "ciompi9" and "adjacent"
  plane sets at a 64 mm patch sampled at 1 mm (64 x 64 px) through jittered
  centres with a random rotation about z: sets per second (one call) and views
  per second (single 2-D planes; "adjacent" counts its 3 channels as 3 views);
- the tf.data pipeline's rate (``make_dataset`` with ciompi9 views, lung window,
  128 px), each element reading its volume from the series, the NIfTI or the
  MetaImage file (three copies of each, taken in turn, so that no element finds
  its volume among the two the sampler keeps), and the rate when the elements
  are candidates in one volume (LUNA16's order: the volume is read once).

Exit status: 0 (no goal is checked); 2 for a refused argument or a tfmed error (one line).

Usage:
    python benchmarks/volumes.py [--slices 96] [--size 256] [--repeats 3] [--calls 200] [--elements 16]
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import scipy
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from _common import at_least, one_line_errors
from tfmed.data.volume_views import PLANE_SETS, extract_views, jitter_center, plane_axes, volume_center
from tfmed.data.volumes import read_dicom_series, read_itk, read_nifti

INTERCEPT = -1024
ORIGIN = np.array([-89.6, -120.0, -150.0])  # LPS mm of the first slice's first pixel


def machine() -> str:
    """The CPU model (lscpu's Model name, else platform.processor()) and the number of cores."""
    name = ""
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        name = next((line.split(":", 1)[1].strip() for line in listing.splitlines()
                     if line.startswith("Model name")), "")
    except OSError:
        pass
    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"


def phantom(slices: int, size: int, seed: int) -> np.ndarray:
    """HU (slices, rows, columns): air, an elliptic body of soft tissue, two lungs, a spine and some nodules."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.linspace(-1, 1, slices), np.linspace(-1, 1, size), np.linspace(-1, 1, size),
                          indexing="ij")
    hu = np.full((slices, size, size), -1000.0)
    hu[(x / 0.9) ** 2 + (y / 0.65) ** 2 <= 1] = 40.0
    for side in (-1, 1):
        hu[((x - side * 0.4) / 0.3) ** 2 + (y / 0.45) ** 2 + (z / 1.2) ** 2 <= 1] = -850.0
    hu[(x / 0.1) ** 2 + ((y - 0.45) / 0.1) ** 2 <= 1] = 700.0
    for _ in range(5):
        cx, cy, cz = rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3), rng.uniform(-0.6, 0.6)
        hu[(x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= rng.uniform(0.03, 0.08) ** 2] = 60.0
    return (hu + rng.normal(0, 20, hu.shape)).round()


def write_dicom_series(folder: Path, hu: np.ndarray, slice_mm: float, pixel_mm: float, seed: int) -> None:
    """One file per slice from CT_small.dcm (as tests/test_volumes.py does), named by UID, in shuffled order."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = f"1.2.826.0.1.3680043.8.498.77.{seed}"  # short enough for UIDs up to 64 characters
    stored = (hu - INTERCEPT).astype(np.int16)
    for index in np.random.default_rng(seed).permutation(len(hu)):
        ds = copy.deepcopy(template)
        uid = f"{series}.{index + 1}"
        position = ORIGIN + [0.0, 0.0, index * slice_mm]
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.SliceLocation = round(float(position[2]), 4)
        ds.InstanceNumber = int(index) + 1
        ds.SliceThickness = slice_mm
        ds.PixelSpacing = [pixel_mm, pixel_mm]
        ds.RescaleSlope, ds.RescaleIntercept = 1, INTERCEPT
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.PixelData = stored[index].tobytes()
        ds.save_as(folder / uid, enforce_file_format=True)


def write_nifti(path: Path, hu: np.ndarray, slice_mm: float, pixel_mm: float) -> None:
    """The same voxels as RAS+ NIfTI: i = column reversed (toward the right), j = row reversed, k = slice."""
    slices, rows, columns = hu.shape
    data = (hu - INTERCEPT).astype(np.int16)[:, ::-1, ::-1].transpose(2, 1, 0)
    corner = ORIGIN + [(columns - 1) * pixel_mm, (rows - 1) * pixel_mm, 0.0]  # LPS of data[0, 0, 0]
    affine = np.diag([pixel_mm, pixel_mm, slice_mm, 1.0])
    affine[:3, 3] = corner * [-1, -1, 1]
    image = nibabel.Nifti1Image(np.ascontiguousarray(data), affine)
    image.header.set_slope_inter(1.0, INTERCEPT)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nibabel.save(image, str(path))


def write_metaimage(path: Path, hu: np.ndarray, slice_mm: float, pixel_mm: float) -> None:
    """The same voxels as a MetaImage (.mhd + .raw) in LPS, as LUNA16 ships its scans: index (i, j, k) =
    (column, row, slice), origin the first slice's first pixel, identity direction (an axial series)."""
    image = sitk.GetImageFromArray(hu.astype(np.int16))  # HU stored as they are, as in LUNA16
    image.SetSpacing([pixel_mm, pixel_mm, slice_mm])
    image.SetOrigin(ORIGIN.tolist())
    sitk.WriteImage(image, str(path))


def pipeline_rates(sources: dict[str, list[Path]], args) -> dict:
    """Volumes/s and views/s of the tf.data pipeline (read + cut + window + resize to 128 px), per source kind.

    The elements take the copies of a source in turn, so each reads its volume (the sampler keeps the last
    two): the figure a shuffled training epoch sees. The last row streams candidates of one volume, which
    is read once. Ciompi9 views, lesion at the volume centre, no augmentation.
    """
    import pandas as pd

    from tfmed.config import PreprocessConfig, ViewsConfig
    from tfmed.data.pipeline import make_dataset
    from tfmed.data.table import ImageTable

    views = ViewsConfig(enabled=True, planes="ciompi9", center="volume", patch_mm=args.patch_mm,
                        spacing_mm=args.view_mm)
    preprocess = PreprocessConfig(image_size=128, intensity="window", windows=[[-600, 1500]])
    rates = {}
    runs = [(name, copies) for name, copies in sources.items()]
    runs.append(("MetaImage, one volume", sources["MetaImage .mhd"][:1]))
    for name, copies in runs:
        paths = [str(copies[i % len(copies)]) for i in range(args.elements)]
        table = ImageTable(pd.DataFrame({"image": paths, "label": [0, 1] * (args.elements // 2)}),
                           ["a", "b"], "binary")
        dataset = make_dataset(table, preprocess, training=False, batch_size=4, volume_views=views)

        def drain(dataset=dataset):
            return sum(int(batch.shape[0]) for batch, _ in dataset)

        seconds, count = median_seconds(drain, args.repeats)
        rates[name] = (count / seconds, count * views.count / seconds)
    return rates


def median_seconds(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


@one_line_errors
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=96)
    parser.add_argument("--size", type=int, default=256, help="rows = columns of each slice")
    parser.add_argument("--slice-mm", type=float, default=1.25)
    parser.add_argument("--pixel-mm", type=float, default=0.7)
    parser.add_argument("--patch-mm", type=float, default=64.0)
    parser.add_argument("--view-mm", type=float, default=1.0, help="pixel spacing of the views")
    parser.add_argument("--calls", type=int, default=200, help="extract_views calls per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--elements", type=int, default=16, help="volumes streamed through the pipeline")
    args = parser.parse_args()
    at_least(parser, "--slices", args.slices, 1, "the phantom CT needs a slice")

    hu = phantom(args.slices, args.size, args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        sources: dict[str, list[Path]] = {"DICOM series": [], "NIfTI .nii.gz": [], "MetaImage .mhd": []}
        for copy_index in range(3):  # three copies of each, so that streamed elements read their volume
            folder = Path(scratch) / f"series{copy_index}"
            folder.mkdir()
            write_dicom_series(folder, hu, args.slice_mm, args.pixel_mm, args.seed)
            nifti, metaimage = Path(scratch) / f"volume{copy_index}.nii.gz", Path(scratch) / f"volume{copy_index}.mhd"
            write_nifti(nifti, hu, args.slice_mm, args.pixel_mm)
            write_metaimage(metaimage, hu, args.slice_mm, args.pixel_mm)
            for name, path in zip(sources, (folder, nifti, metaimage)):
                sources[name].append(path)
        folder, nifti, metaimage = (copies[0] for copies in sources.values())
        sizes_mb = {"DICOM": sum(p.stat().st_size for p in folder.iterdir()) / 1e6,
                    "NIfTI .nii.gz": nifti.stat().st_size / 1e6,
                    "MetaImage .mhd + .raw": (metaimage.stat().st_size
                                              + metaimage.with_suffix(".raw").stat().st_size) / 1e6}
        dicom_s, volume = median_seconds(lambda: read_dicom_series(folder), args.repeats)
        nifti_s, same = median_seconds(lambda: read_nifti(nifti), args.repeats)
        itk_s, itk = median_seconds(lambda: read_itk(metaimage), args.repeats)
        streamed = pipeline_rates(sources, args)
    np.testing.assert_array_equal(volume.array, hu.astype(np.float32))
    for other in (same, itk):
        np.testing.assert_array_equal(other.array, volume.array)
        for name in ("origin", "spacing", "direction"):
            np.testing.assert_allclose(getattr(other, name), getattr(volume, name), atol=1e-4)

    view_px = int(round(args.patch_mm / args.view_mm))
    rng = np.random.default_rng(args.seed)
    middle = volume_center(volume)
    throughput = {}
    for planes in PLANE_SETS:
        centres = [jitter_center(middle, 20.0, rng) for _ in range(args.calls)]
        angles = rng.uniform(-180, 180, args.calls)

        def run(planes=planes, centres=centres, angles=angles):
            for centre, angle in zip(centres, angles):
                extract_views(volume, centre, planes, view_px, args.view_mm, rotation_degrees=angle)

        seconds, _ = median_seconds(run, args.repeats)
        views = len(plane_axes(planes)) * (3 if planes == "adjacent" else 1)
        throughput[planes] = (views, args.calls / seconds, args.calls * views / seconds)

    print(f"machine: {machine()}; numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"volume: {args.slices} slices x {args.size} x {args.size} int16 ({args.slice_mm:g} mm slices, "
          f"{args.pixel_mm:g} mm pixels); " + ", ".join(f"{name} {mb:.1f} MB" for name, mb in sizes_mb.items())
          + f"; medians of {args.repeats} runs; all read to identical arrays and geometry")
    print(f"{'reader':<28} {'total (s)':>10} {'per slice (ms)':>15}")
    for name, seconds in (("read_dicom_series", dicom_s), ("read_nifti (.nii.gz)", nifti_s),
                          ("read_itk (.mhd + .raw)", itk_s)):
        print(f"{name:<28} {seconds:>10.3f} {1000 * seconds / args.slices:>15.2f}")
    print(f"extract_views: {args.patch_mm:g} mm patches at {args.view_mm:g} mm ({view_px} x {view_px} px), "
          f"random rotation, {args.calls} centres")
    print(f"{'planes':<28} {'views/set':>10} {'sets/s':>15} {'views/s':>10}")
    for planes, (views, sets_per_s, views_per_s) in throughput.items():
        print(f"{planes:<28} {views:>10} {sets_per_s:>15.0f} {views_per_s:>10.0f}")
    print("tf.data pipeline (read + ciompi9 views + window + resize to 128 px), "
          f"{args.elements} elements, each reading its volume but the last row's")
    print(f"{'source':<28} {'volumes/s':>10} {'views/s':>15}")
    for name, (volumes_per_s, views_per_s) in streamed.items():
        print(f"{name:<28} {volumes_per_s:>10.2f} {views_per_s:>15.1f}")
    print(f"what it shows: reading the DICOM series takes {dicom_s / nifti_s:.1f}x as long as the NIfTI file; "
          f"once loaded, one ciompi9 set costs {1000 / throughput['ciompi9'][1]:.1f} ms (reading the series = "
          f"{dicom_s * throughput['ciompi9'][1]:.0f} sets), since views are sampled from the original voxels "
          "and the volume is never resampled as a whole")
    return 0


if __name__ == "__main__":
    sys.exit(main())
