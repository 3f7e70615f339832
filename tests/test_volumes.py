"""Volumes: DICOM series folders and NIfTI, MetaImage and NRRD files read into (slices, rows, columns), and
`tfmed inspect`."""
import gzip
import math
import os
import shutil
import struct

import cv2
import nibabel
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from nibabel.testing import data_path as NIBABEL_DATA
from pydicom.data import get_testdata_file

from tfmed.data.decode import read_image
from tfmed.data.volumes import (Volume, VolumeError, format_inspection, inspect, read_dicom_series, read_itk,
                                read_nifti, read_volume)
from tfmed.run.cli import main

CT_SMALL = get_testdata_file("CT_small.dcm")
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# 30 degrees about the patient x axis: rows go (0, cos, sin), the slice normal is (0, -sin, cos).
COS, SIN = math.cos(math.radians(30)), math.sin(math.radians(30))
OBLIQUE = (1.0, 0.0, 0.0, 0.0, COS, SIN)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
PIXEL_MM = 0.661468  # CT_small.dcm's PixelSpacing
SERIES = "1.2.826.0.1.3680043.8.498.1"
ORIGIN = np.array([-158.0, -179.0, -100.0])


def stored(index: int, rows: int = 128, columns: int = 128) -> np.ndarray:
    """The stored values of slice ``index``: 100 per slice, plus row + 2 x column."""
    r, c = np.mgrid[0:rows, 0:columns]
    return (100 * index + r + 2 * c).astype(np.int16)


def normal_of(orientation) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:])


def make_slice(index, position, orientation=AXIAL, series=SERIES, slope=1.0, intercept=-1024.0, rows=128):
    """CT_small.dcm turned into slice ``index`` of a series (its own SOPInstanceUID and pixels)."""
    ds = pydicom.dcmread(CT_SMALL)
    ds.ImagePositionPatient = [round(float(v), 6) for v in position]
    ds.ImageOrientationPatient = [round(float(v), 8) for v in orientation]
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = f"{series}.{index}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 1000 - index  # deliberately the wrong order
    ds.SliceLocation = 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.Rows = rows
    ds.PixelData = stored(index, rows=rows).tobytes()
    return ds


def write_series(folder, count=6, spacing=2.5, orientation=AXIAL, names=None, skip=(), series=SERIES, **kwargs):
    """Write ``count`` slices along the normal of ``orientation``; returns {index: file name}."""
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"CT.1.3.12.2.1107.5.1.4.3000002212080811342800001{6582 - 7 * i}" for i in range(count)]
    written = {}
    for index in range(count):
        if index in skip:
            continue
        position = ORIGIN + index * spacing * normal_of(orientation)
        make_slice(index, position, orientation, series, **kwargs).save_as(folder / names[index],
                                                                             enforce_file_format=True)
        written[index] = names[index]
    return written


# ---------------------------------------------------------------------------------------------- DICOM series


def test_slices_are_ordered_by_position_not_by_name_or_instance_number(tmp_path):
    names = ["CT.1.3.12.2.1107.5.1.4.30000022120808113428000016582", "IM_0001", "00c", "z9", "a3.7", "0b"]
    assert sorted(names) != names  # the name order is not the position order
    write_series(tmp_path, names=names)
    volume = read_dicom_series(tmp_path)
    assert volume.shape == (6, 128, 128)
    assert volume.spacing == pytest.approx((2.5, PIXEL_MM, PIXEL_MM))
    for index in range(6):
        np.testing.assert_array_equal(volume.array[index], stored(index).astype(np.float32) - 1024)
    assert volume.array[2, 3, 4] == (200 + 3 + 8) - 1024  # by hand: stored 211, slope 1, intercept -1024
    np.testing.assert_allclose(volume.origin, ORIGIN)
    np.testing.assert_allclose(volume.direction, [[0, 0, 1], [0, 1, 0], [1, 0, 0]], atol=1e-12)
    assert volume.axis_codes() == ("S", "P", "L")
    assert (volume.modality, volume.patient_id, volume.series_uid) == ("CT", "1CT1", SERIES)
    assert volume.study_uid == "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    assert volume.transfer_syntax == "Explicit VR Little Endian"
    assert volume.intensity_unit == "HU"
    assert volume.problems == []
    assert volume.array.dtype == np.float32


def test_hu_apply_each_slices_own_slope_and_intercept(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    for index in range(5):
        position = ORIGIN + [0, 0, 1.25 * index]
        make_slice(index, position, slope=1 + 0.5 * index, intercept=-1000 - 10 * index).save_as(
            folder / f"{4 - index}.dcm", enforce_file_format=True)
    volume = read_dicom_series(folder)
    # slice 2: stored 211 at row 3, column 4; slope 2.0, intercept -1020 -> 211 * 2 - 1020 = -598
    assert volume.array[2, 3, 4] == -598.0
    # slice 4: stored 400 at (0, 0); slope 3.0, intercept -1040 -> 160
    assert volume.array[4, 0, 0] == 160.0
    for index in range(5):
        np.testing.assert_array_equal(volume.array[index], stored(index) * (1 + 0.5 * index) - 1000 - 10 * index)
    assert volume.spacing[0] == pytest.approx(1.25)


def test_an_oblique_series_places_voxels_along_its_axes(tmp_path):
    names = [f"{5 - i}" for i in range(6)]  # no extension, reversed
    write_series(tmp_path, spacing=3.0, orientation=OBLIQUE, names=names)
    volume = read_dicom_series(tmp_path)
    normal, column_axis, row_axis = normal_of(OBLIQUE), np.array(OBLIQUE[3:]), np.array(OBLIQUE[:3])
    np.testing.assert_allclose(volume.direction, np.column_stack([normal, column_axis, row_axis]), atol=1e-7)
    assert volume.spacing == pytest.approx((3.0, PIXEL_MM, PIXEL_MM))
    np.testing.assert_array_equal(volume.array[5], stored(5) - 1024.0)
    expected = ORIGIN + 4 * 3.0 * normal + 10 * PIXEL_MM * column_axis + 20 * PIXEL_MM * row_axis
    np.testing.assert_allclose(volume.voxel_to_patient([4, 10, 20]), expected, atol=1e-5)
    indices = np.random.default_rng(0).uniform(0, 100, size=(20, 3))
    np.testing.assert_allclose(volume.patient_to_voxel(volume.voxel_to_patient(indices)), indices, atol=1e-9)
    np.testing.assert_allclose(volume.affine[:3, 3], volume.origin)
    assert volume.axis_codes() == ("S", "P", "L")


def test_a_missing_slice_names_the_files_around_the_gap_and_its_size(tmp_path):
    written = write_series(tmp_path, count=8, skip={3})
    with pytest.raises(VolumeError) as caught:
        read_dicom_series(tmp_path)
    message = str(caught.value)
    assert written[2] in message and written[4] in message
    assert "gap of 5.00 mm" in message and "2.50 mm apart" in message and "about 1 slice missing" in message
    assert "re-export the complete series" in message


def test_duplicate_positions_name_both_files(tmp_path):
    write_series(tmp_path, count=5)
    make_slice(7, ORIGIN + [0, 0, 5.0]).save_as(tmp_path / "copy_of_slice_2", enforce_file_format=True)
    with pytest.raises(VolumeError, match="same slice position") as caught:
        read_dicom_series(tmp_path)
    assert "copy_of_slice_2" in str(caught.value)
    assert "CT.1.3.12.2.1107.5.1.4.30000022120808113428000016568" in str(caught.value)  # slice 2


def test_two_series_in_one_folder_are_listed_and_one_can_be_chosen(tmp_path):
    write_series(tmp_path, count=4)
    other = "1.2.826.0.1.3680043.8.498.2"
    write_series(tmp_path, count=3, spacing=5.0, series=other, names=[f"other{i}" for i in range(3)],
                 intercept=0.0)
    with pytest.raises(VolumeError) as caught:
        read_dicom_series(tmp_path)
    message = str(caught.value)
    assert "2 series" in message and f"{SERIES} (CT, 4 files, 128 x 128)" in message
    assert f"{other} (CT, 3 files, 128 x 128)" in message and "series_uid=" in message and "--series" in message
    volume = read_dicom_series(tmp_path, series_uid=other)
    assert volume.shape == (3, 128, 128) and volume.spacing[0] == pytest.approx(5.0)
    np.testing.assert_array_equal(volume.array[2], stored(2))
    with pytest.raises(VolumeError, match="no series 9.9"):
        read_dicom_series(tmp_path, series_uid="9.9")


# A head CT acquired with 20 degrees of gantry tilt: the image planes turn about the patient x axis
# (rows grow along (0, cos, -sin)) while the table, and with it ImagePositionPatient, moves along z.
TILT = math.radians(20)
TILTED = (1.0, 0.0, 0.0, 0.0, math.cos(TILT), -math.sin(TILT))
TABLE_STEP = np.array([0.0, 0.0, 2.0])
TILT_ORIGIN = np.array([-42.0, -40.0, -20.0])


def tilted_position(k, r, c):
    """DICOM patient position (LPS mm) of pixel (r, c) of slice k in the tilted series."""
    return (TILT_ORIGIN + k * TABLE_STEP + c * PIXEL_MM * np.array(TILTED[:3])
            + r * PIXEL_MM * np.array(TILTED[3:]))


def write_tilted_ball(folder, center, radius=10.0, count=30):
    """A ball of 1000 HU in air (-1000 HU), acquired as a tilted series of ``count`` slices."""
    folder.mkdir()
    r, c = np.mgrid[0:128, 0:128]
    for k in range(count):
        ds = make_slice(k, TILT_ORIGIN + k * TABLE_STEP, orientation=TILTED)
        ds.GantryDetectorTilt = 20
        points = tilted_position(k, r[..., None], c[..., None])
        inside = np.linalg.norm(points - center, axis=-1) <= radius
        ds.PixelData = np.where(inside, 2024, 24).astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{k:03d}", enforce_file_format=True)


def test_a_tilted_series_keeps_every_voxel_at_its_dicom_position(tmp_path):
    center = tilted_position(15, 64, 64)
    write_tilted_ball(tmp_path / "tilted", center)
    volume = read_dicom_series(tmp_path / "tilted")
    assert volume.shape == (30, 128, 128)
    assert volume.spacing == pytest.approx((2.0, PIXEL_MM, PIXEL_MM))
    assert volume.direction[:, 0] == pytest.approx([0.0, 0.0, 1.0])  # the slice axis follows the table
    assert volume.problems == ["gantry tilt: the slices are stacked at 20.0 degrees to their normal; voxels keep "
                               "their DICOM positions (the slice axis follows the stack), so views are cut "
                               "upright in patient space"]
    for k, r, c in [(0, 0, 0), (29, 127, 0), (7, 100, 33), (15, 64, 64)]:
        assert volume.voxel_to_patient([k, r, c]) == pytest.approx(tilted_position(k, r, c), abs=1e-4)
    assert volume.patient_to_voxel(center) == pytest.approx([15, 64, 64])


def test_views_of_a_tilted_series_are_upright(tmp_path):
    """Axial, coronal and sagittal views through a ball acquired with tilt each show it round and centred."""
    from tfmed.data.volume_views import extract_views

    center = tilted_position(15, 64, 64)
    write_tilted_ball(tmp_path / "tilted", center)
    views = extract_views(read_dicom_series(tmp_path / "tilted"), center, "orthogonal", size=61, spacing_mm=0.5)
    steps = (np.arange(61) - 30) * 0.5
    disk = np.hypot(steps[:, None], steps[None, :]) <= 10.0
    for view in views[..., 0]:
        ball = view > 0
        assert (ball & disk).sum() / (ball | disk).sum() > 0.93  # intersection over union with the true disk
        rows, columns = np.nonzero(ball)
        assert abs(rows.mean() - 30) < 0.5 and abs(columns.mean() - 30) < 0.5


def test_a_gantry_tilt_tag_alone_changes_nothing(tmp_path):
    """Positions stacked along the normal define the geometry, whatever GantryDetectorTilt says."""
    write_series(tmp_path, count=4)
    first = tmp_path / sorted(os.listdir(tmp_path))[0]
    ds = pydicom.dcmread(first)
    ds.GantryDetectorTilt = 15
    ds.save_as(first)
    volume = read_dicom_series(tmp_path)
    assert volume.problems == [] and volume.direction == pytest.approx(np.column_stack([[0, 0, 1], [0, 1, 0],
                                                                                        [1, 0, 0]]))


def test_slices_off_the_stacks_line_are_refused(tmp_path):
    """A tilt that changes within the series (or two stacks in one series) cannot be one volume."""
    for index, drift in enumerate([0.0, 0.9, 1.4, 2.7]):
        make_slice(index, ORIGIN + [0, drift, 2.5 * index]).save_as(tmp_path / f"s{index}",
                                                                     enforce_file_format=True)
    with pytest.raises(VolumeError, match="do not lie on one line") as caught:
        read_dicom_series(tmp_path)
    assert str(caught.value).startswith(str(tmp_path / "s"))
    assert "separate the stacks" in str(caught.value)


def test_differing_rows_names_the_file(tmp_path):
    write_series(tmp_path, count=5)
    make_slice(9, ORIGIN + [0, 0, 12.5], rows=64).save_as(tmp_path / "localizer", enforce_file_format=True)
    with pytest.raises(VolumeError, match="Rows x Columns 64 x 128 differs from 128 x 128") as caught:
        read_dicom_series(tmp_path)
    assert str(caught.value).startswith(str(tmp_path / "localizer"))


def test_differing_orientation_and_missing_position_name_the_file(tmp_path):
    write_series(tmp_path / "a", count=4)
    make_slice(9, ORIGIN + [0, 0, 10], orientation=SAGITTAL).save_as(tmp_path / "a" / "scout", enforce_file_format=True)
    with pytest.raises(VolumeError, match="ImageOrientationPatient .* differs") as caught:
        read_dicom_series(tmp_path / "a")
    assert str(caught.value).startswith(str(tmp_path / "a" / "scout"))
    write_series(tmp_path / "b", count=3)
    ds = make_slice(9, ORIGIN + [0, 0, 10])
    del ds.ImagePositionPatient
    ds.save_as(tmp_path / "b" / "no_position", enforce_file_format=True)
    with pytest.raises(VolumeError, match="no ImagePositionPatient") as caught:
        read_dicom_series(tmp_path / "b")
    assert str(caught.value).startswith(str(tmp_path / "b" / "no_position"))


def test_other_files_are_ignored_with_problem_lines(tmp_path):
    write_series(tmp_path, count=3)
    (tmp_path / "notes.txt").write_text("acquired 2004")
    (tmp_path / ".DS_Store").write_bytes(b"\0" * 300)
    shutil.copy(get_testdata_file("test-SR.dcm"), tmp_path / "report")
    (tmp_path / "sub").mkdir()
    volume = read_dicom_series(tmp_path)
    assert volume.shape == (3, 128, 128)
    assert volume.problems == [
        "1 file without the DICOM marker (DICM) ignored: notes.txt",
        "1 sub-folder not read (only the files directly in the folder are; point at a series folder): sub",
        "1 file without pixel data (e.g. structured report, presentation state, DICOMDIR) ignored: report (SR)"]


def test_uneven_spacing_within_tolerance_is_a_problem_not_an_error(tmp_path):
    for index, z in enumerate([0.0, 2.5, 5.0, 7.6, 10.1, 12.6]):
        make_slice(index, ORIGIN + [0, 0, z]).save_as(tmp_path / f"s{index}", enforce_file_format=True)
    volume = read_dicom_series(tmp_path)
    assert volume.spacing[0] == pytest.approx(2.5)
    assert len(volume.problems) == 1 and volume.problems[0].startswith("uneven slice spacing")
    assert "2.600" in volume.problems[0]


@pytest.mark.parametrize("positions, message", [
    ([2.5 * k for k in range(8)] + [17.5 + 5.0 * k for k in range(1, 9)],  # 2.5 mm, then 5 mm slices
     r"slices at uneven steps \(2.50 to 5.00 mm\): on one grid of 5.00 mm, s07 would sit 17.50 mm from its position"),
    ([2.5 * k for k in range(9)] + [20.0 + 3.5 * k for k in range(1, 8)],  # 2.5 mm, then 3.5 mm: no step 1.5 x
     r"slices at uneven steps \(2.50 to 3.50 mm\): on one grid of 2.50 mm, s15 would sit 7.00 mm from its position"),
], ids=["two_thicknesses", "drifting"])
def test_a_series_whose_slices_drift_from_one_grid_is_refused(tmp_path, positions, message):
    for index, z in enumerate(positions):
        make_slice(index, ORIGIN + [0, 0, z]).save_as(tmp_path / f"s{index:02d}", enforce_file_format=True)
    with pytest.raises(VolumeError, match=message + ".*give each reconstruction"):
        read_dicom_series(tmp_path)


ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def item(**values):
    """A sequence item (pydicom Dataset) holding ``values``."""
    dataset = pydicom.Dataset()
    for keyword, value in values.items():
        setattr(dataset, keyword, value)
    return dataset


def write_enhanced(path, indices, orientation=OBLIQUE, spacing=2.5, temporal=None):
    """Slices ``indices`` of write_series's geometry as the frames of one Enhanced CT file, in that order.

    Orientation and pixel spacing sit in the shared functional groups; each frame's position and its
    own rescale intercept (-1024 + index) in its per-frame groups.
    """
    ds = make_slice(indices[0], ORIGIN, orientation)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "RescaleSlope", "RescaleIntercept", "SliceLocation", "InstanceNumber"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.NumberOfFrames = len(indices)
    ds.PixelData = np.stack([stored(i) for i in indices]).tobytes()
    ds.SharedFunctionalGroupsSequence = [item(
        PlaneOrientationSequence=[item(ImageOrientationPatient=list(orientation))],
        PixelMeasuresSequence=[item(PixelSpacing=[PIXEL_MM, PIXEL_MM], SliceThickness=spacing)])]
    ds.PerFrameFunctionalGroupsSequence = [item(
        PlanePositionSequence=[item(ImagePositionPatient=[round(float(v), 6)
                                                          for v in ORIGIN + i * spacing * normal_of(orientation)])],
        PixelValueTransformationSequence=[item(RescaleSlope=1, RescaleIntercept=-1024 + i, RescaleType="HU")],
        FrameContentSequence=[item(StackID="1", InStackPositionNumber=i + 1,
                                   **({} if temporal is None else {"TemporalPositionIndex": temporal[n]}))])
        for n, i in enumerate(indices)]
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("files", [[[3, 0, 5, 1, 4, 2]], [[4, 0, 2], [5, 1, 3]], [[i] for i in (3, 0, 5, 1, 4, 2)]],
                         ids=["one_file", "two_files", "a_file_a_frame"])
def test_an_enhanced_multi_frame_series_reads_like_one_file_per_slice(tmp_path, files):
    """Frames are placed by their per-frame positions and rescaled by their own intercepts, in any frame order."""
    (tmp_path / "single").mkdir()
    for index in range(6):
        make_slice(index, ORIGIN + index * 2.5 * normal_of(OBLIQUE), OBLIQUE, intercept=-1024 + index).save_as(
            tmp_path / "single" / f"s{index}", enforce_file_format=True)
    (tmp_path / "enhanced").mkdir()
    for number, indices in enumerate(files):
        write_enhanced(tmp_path / "enhanced" / f"EN{number}", indices)
    single, enhanced = read_dicom_series(tmp_path / "single"), read_dicom_series(tmp_path / "enhanced")
    np.testing.assert_array_equal(enhanced.array, single.array)
    np.testing.assert_array_equal(enhanced.array[5], stored(5) - 1024 + 5)
    assert enhanced.spacing == pytest.approx(single.spacing) and enhanced.spacing[0] == pytest.approx(2.5)
    assert enhanced.origin == pytest.approx(single.origin) and enhanced.direction == pytest.approx(single.direction)
    assert enhanced.problems == [] and enhanced.modality == "CT"


def test_a_one_frame_enhanced_file_read_as_an_image_is_rescaled_by_its_functional_groups(tmp_path):
    from tfmed.data.decode import read_image_and_info
    from tfmed.data.volumes import inspect

    write_enhanced(tmp_path / "EN0", [4])
    values, info = read_image_and_info(tmp_path / "EN0")
    np.testing.assert_array_equal(values[..., 0], stored(4) - 1024 + 4)
    assert info.notes == ()  # its rescale is found: no "CT without RescaleSlope/RescaleIntercept" note
    assert inspect(tmp_path / "EN0")["intensity_unit"] == "HU"


def test_inspect_an_enhanced_multi_frame_file(tmp_path, capsys):
    write_enhanced(tmp_path / "EN0", [2, 0, 1, 3])
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for expected in ["kind: DICOM series (1 file)", "shape: 4 slices x 128 rows x 128 columns",
                     "spacing: 2.5 x 0.661468 x 0.661468 mm", "problems: none"]:
        assert expected in out, expected


def test_a_multi_frame_file_that_is_not_one_stack_is_refused(tmp_path):
    write_enhanced(tmp_path / "cardiac", [0, 1, 0, 1], temporal=[1, 1, 2, 2])
    with pytest.raises(VolumeError, match=r"2 time points \(TemporalPositionIndex 1, 2\)") as caught:
        read_dicom_series(tmp_path)
    assert str(caught.value).startswith(str(tmp_path / "cardiac"))
    single = tmp_path / "single"
    single.mkdir()
    write_enhanced(single / "EN0", [0, 1, 2])
    write_enhanced(single / "EN1", [2, 3])
    with pytest.raises(VolumeError, match=r"EN1 \(frame 1\): same slice position") as caught:
        read_dicom_series(single)  # the same slice in two files: named with its frame


def test_a_multi_frame_file_without_frame_positions_and_an_empty_folder_are_refused(tmp_path):
    shutil.copy(get_testdata_file("rtdose.dcm"), tmp_path / "dose")
    with pytest.raises(VolumeError, match=r"multi-frame DICOM \(15 frames in one file\) without per-frame "
                                          "positions"):
        read_dicom_series(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VolumeError, match="no DICOM image files"):
        read_dicom_series(empty)


def test_ct_small_is_a_one_slice_series(tmp_path):
    shutil.copy(CT_SMALL, tmp_path / "CT_small.dcm")
    volume = read_volume(tmp_path)
    assert volume.shape == (1, 128, 128)
    assert volume.spacing == pytest.approx((5.0, PIXEL_MM, PIXEL_MM))  # SliceThickness, PixelSpacing
    assert volume.intensity_range() == (-896.0, 1167.0)
    np.testing.assert_allclose(volume.origin, [-158.135803, -179.035797, -75.699997])
    np.testing.assert_array_equal(volume.array[0], read_image(CT_SMALL)[:, :, 0])
    ds = pydicom.dcmread(tmp_path / "CT_small.dcm")
    del ds.SliceThickness
    ds.save_as(tmp_path / "CT_small.dcm")
    volume = read_dicom_series(tmp_path)
    assert volume.spacing[0] == 1.0 and volume.problems[0] == "one slice without SliceThickness: 1.0 mm assumed " \
                                                              "along slices"


def test_a_single_slice_volume_is_noted_as_such(tmp_path):
    shutil.copy(CT_SMALL, tmp_path / "CT_small.dcm")
    assert any(note.startswith("a single slice: views across slices") for note in read_volume(tmp_path).problems)
    assert any(note.startswith("a single slice") for note in read_dicom_series(tmp_path).problems)
    assert any(note.startswith("a single slice") for note in inspect(tmp_path)["problems"])  # as tfmed inspect says
    write_series(tmp_path / "six", count=6)
    assert not any("single slice" in note for note in read_volume(tmp_path / "six").problems)


def test_rescale_tags_of_zero_or_on_some_slices_only_are_refused_and_their_absence_in_ct_noted(tmp_path):
    write_series(tmp_path / "zero", count=3, slope=0.0)
    with pytest.raises(VolumeError, match="RescaleSlope is 0, so every value would become the intercept"):
        read_dicom_series(tmp_path / "zero")
    names = write_series(tmp_path / "partial", count=3)

    def drop_rescale(path):
        ds = pydicom.dcmread(path)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(path)

    drop_rescale(tmp_path / "partial" / names[1])
    with pytest.raises(VolumeError, match=rf"1 slice without RescaleSlope/RescaleIntercept among 3 \({names[1]}\)"):
        read_dicom_series(tmp_path / "partial")
    for name in (names[0], names[2]):
        drop_rescale(tmp_path / "partial" / name)
    volume = read_dicom_series(tmp_path / "partial")  # none has them: values as stored, and said so
    assert volume.intensity_range() == (0.0, 200.0 + 127 + 2 * 127)
    assert [note for note in volume.problems if note.startswith("CT without RescaleSlope/RescaleIntercept")]
    assert volume.intensity_unit is None  # not known to be HU
    write_series(tmp_path / "whole", count=3)  # every slice with its tags: nothing to say
    assert read_dicom_series(tmp_path / "whole").problems == []
    assert read_dicom_series(tmp_path / "whole").intensity_unit == "HU"


def test_a_single_ct_file_without_rescale_tags_is_noted_as_a_series_is(tmp_path):
    """tfmed inspect and the data checks of predict / run say that its values are used as stored, not HU."""
    from tfmed.data.decode import read_image_and_info
    from tfmed.data.sources.manifest import load_manifest
    from tfmed.data.validate import validate_table
    from tfmed.data.volumes import inspect

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.save_as(tmp_path / "bare.dcm")
    assert read_image_and_info(tmp_path / "bare.dcm")[1].notes[0].startswith("CT without RescaleSlope")
    report = inspect(tmp_path / "bare.dcm")
    assert report["intensity_unit"] is None and report["problems"][0].startswith("CT without RescaleSlope")
    assert inspect(get_testdata_file("CT_small.dcm"))["intensity_unit"] == "HU"
    assert inspect(get_testdata_file("CT_small.dcm"))["problems"] == []
    (tmp_path / "m.csv").write_text("path,label\nbare.dcm,1\n")
    checked = validate_table(load_manifest(tmp_path / "m.csv"))
    assert checked.ok and checked.warnings[0].problem.startswith("CT without RescaleSlope/RescaleIntercept")


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_RLE.dcm"])
def test_a_lossless_compressed_slice_decodes_exactly_or_names_its_transfer_syntax(tmp_path, name):
    (tmp_path / "plain").mkdir()
    (tmp_path / "compressed").mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "plain" / "a")
    shutil.copy(get_testdata_file(name), tmp_path / "compressed" / "a")
    twin = read_dicom_series(tmp_path / "plain")
    syntax = pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True).file_meta.TransferSyntaxUID
    try:
        volume = read_dicom_series(tmp_path / "compressed")
    except VolumeError as error:  # no decoder plugin for this transfer syntax is installed
        assert str(error).startswith(str(tmp_path / "compressed" / "a"))
        assert f"{syntax} ({syntax.name}) cannot be decoded" in str(error)
        assert "pip install pylibjpeg" in str(error)
    else:
        np.testing.assert_array_equal(volume.array, twin.array)
        assert volume.transfer_syntax == syntax.name and volume.modality == "MR"
        assert volume.intensity_unit is None


def test_a_missing_decoder_is_a_clear_error(tmp_path, monkeypatch):
    from pydicom.pixels.decoders import JPEGLSLosslessDecoder

    monkeypatch.setattr(JPEGLSLosslessDecoder, "_available", {})  # as without any JPEG-LS plugin
    shutil.copy(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), tmp_path / "a")
    with pytest.raises(VolumeError) as caught:
        read_dicom_series(tmp_path)
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "a") + ": compressed DICOM with transfer syntax "
                              "1.2.840.10008.1.2.4.80 (JPEG-LS Lossless Image Compression) cannot be decoded")
    assert "Fix: install a decoder plugin (pip install pylibjpeg" in message
    ds = pydicom.dcmread(CT_SMALL)
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"  # a transfer syntax no decoder knows
    ds.save_as(tmp_path / "a", enforce_file_format=True)
    with pytest.raises(VolumeError, match=r"1\.2\.3\.4\.5 .* cannot be decoded"):
        read_dicom_series(tmp_path)


# ---------------------------------------------------------------------------------------------- NIfTI


def test_a_2d_nifti_is_refused_as_other_2d_volume_files_are(tmp_path):
    nibabel.save(nibabel.Nifti1Image(np.zeros((8, 9), np.float32), np.eye(4)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(VolumeError, match=r"flat.nii.gz: 2-D image of size 8 x 9; one 3-D volume is expected\. "
                                          r"Fix: classify 2-D images without views"):
        read_volume(tmp_path / "flat.nii.gz")
    nibabel.save(nibabel.Nifti1Image(np.zeros((8, 9, 1), np.float32), np.eye(4)), str(tmp_path / "one.nii.gz"))
    assert read_volume(tmp_path / "one.nii.gz").shape == (1, 9, 8)  # one slice of a volume: read, and noted


def test_nibabels_anatomical_image_is_reoriented_to_the_shared_convention():
    path = os.path.join(NIBABEL_DATA, "anatomical.nii")  # LAS, 33 x 41 x 25, 2 mm
    original = nibabel.load(path).get_fdata()
    volume = read_nifti(path)
    assert volume.shape == (25, 41, 33) and volume.spacing == (2.0, 2.0, 2.0)
    # LAS -> (slice, row, column) = (k, 40 - j, i): the i axis already runs toward the left
    np.testing.assert_array_equal(volume.array, original[:, ::-1, :].transpose(2, 1, 0))
    # voxel (0, 0, 0) is original (0, 40, 0): RAS (32, 40, -16), LPS (-32, -40, -16)
    np.testing.assert_allclose(volume.voxel_to_patient([0, 0, 0]), [-32.0, -40.0, -16.0])
    assert volume.axis_codes() == ("S", "P", "L")
    assert (volume.modality, volume.transfer_syntax, volume.patient_id) == (None, None, None)
    assert volume.problems == []


@pytest.mark.parametrize("name", ["example4d.nii.gz", "functional.nii"])
def test_a_4d_nifti_is_refused(name):
    path = os.path.join(NIBABEL_DATA, name)
    with pytest.raises(VolumeError, match="4-D image .* one 3-D volume is expected") as caught:
        read_volume(path)
    assert name in str(caught.value) and "extract one volume" in str(caught.value)


# (affine in RAS, shape written, expected (slices, rows, columns)) for 0.8 x 0.8 x 2.0 mm voxels
LAS = np.array([[-0.8, 0, 0, 40], [0, 0.8, 0, -50], [0, 0, 2.0, -20], [0, 0, 0, 1]])
SUPERIOR_LEFT_POSTERIOR = np.array([[0, -0.8, 0, 30], [0, 0, -0.8, 60], [2.0, 0, 0, -10], [0, 0, 0, 1]])


@pytest.mark.parametrize("affine, shape", [(LAS, (6, 12, 10)), (SUPERIOR_LEFT_POSTERIOR, (10, 6, 12))])
def test_a_written_nifti_puts_a_bright_voxel_at_its_patient_position(tmp_path, affine, shape):
    data = np.zeros((10, 12, 6), np.int16)
    data[3, 7, 2] = 500
    path = tmp_path / "scan.nii"
    nibabel.Nifti1Image(data, affine).to_filename(path)
    with open(path, "r+b") as handle:  # scl_slope and scl_inter (bytes 112..119 of a NIfTI-1 header)
        handle.seek(112)
        handle.write(struct.pack("<ff", 2.0, 10.0))
    proxy = nibabel.load(path).dataobj  # nibabel moves the header's scaling to the data proxy
    assert (proxy.slope, proxy.inter) == (2.0, 10.0)
    volume = read_nifti(path)
    assert volume.shape == shape and volume.spacing == pytest.approx((2.0, 0.8, 0.8))
    np.testing.assert_allclose(volume.direction, [[0, 0, 1], [0, 1, 0], [1, 0, 0]], atol=1e-7)
    bright = np.unravel_index(np.argmax(volume.array), volume.shape)
    assert volume.array[bright] == 500 * 2.0 + 10.0 and volume.intensity_range() == (10.0, 1010.0)
    x, y, z = (affine @ [3, 7, 2, 1])[:3]
    np.testing.assert_allclose(volume.voxel_to_patient(bright), [-x, -y, z], atol=1e-5)
    np.testing.assert_allclose(volume.patient_to_voxel([-x, -y, z]), bright, atol=1e-6)


@pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE, SAGITTAL])
def test_dicom_and_nifti_of_the_same_geometry_agree(tmp_path, orientation):
    write_series(tmp_path / "dicom", count=5, spacing=2.0, orientation=orientation)
    dicom = read_dicom_series(tmp_path / "dicom")
    # the same voxels as a NIfTI file: (i, j, k) = (column, row, slice), affine in RAS
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ dicom.direction[:, ::-1] * np.array(dicom.spacing)[::-1]
    affine[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ dicom.origin
    nibabel.Nifti1Image(dicom.array.transpose(2, 1, 0), affine).to_filename(tmp_path / "same.nii.gz")
    nifti = read_nifti(tmp_path / "same.nii.gz")
    if orientation != SAGITTAL:  # axial-like: the same array and geometry
        np.testing.assert_array_equal(nifti.array, dicom.array)
        np.testing.assert_allclose(nifti.origin, dicom.origin, atol=1e-4)
        np.testing.assert_allclose(nifti.direction, dicom.direction, atol=1e-6)
        assert nifti.spacing == pytest.approx(dicom.spacing, abs=1e-5)
    else:  # the NIfTI comes back axial: a permutation, so the arrays differ in shape
        assert nifti.shape == (128, 128, 5) and dicom.shape == (5, 128, 128)
    # whatever the order, every voxel sits at the same patient position in both
    index = np.argwhere(np.ones(dicom.shape, bool))
    found = np.rint(nifti.patient_to_voxel(dicom.voxel_to_patient(index))).astype(int)
    np.testing.assert_array_equal(nifti.array[tuple(found.T)], dicom.array[tuple(index.T)])


def test_damaged_nifti_files_are_named(tmp_path):
    garbage = tmp_path / "garbage.nii"
    garbage.write_bytes(b"not an image" * 40)
    with pytest.raises(VolumeError, match="not a readable NIfTI file") as caught:
        read_nifti(garbage)
    assert str(caught.value).startswith(str(garbage))
    whole = gzip.compress(open(os.path.join(NIBABEL_DATA, "anatomical.nii"), "rb").read())
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(VolumeError, match="cannot be read|not a readable") as caught:
        read_nifti(truncated)
    assert str(caught.value).startswith(str(truncated)) and "copied completely" in str(caught.value)
    with pytest.raises(VolumeError, match="not a volume"):
        read_volume(CT_SMALL)


# LUNA16's layout: a MetaImage header (.mhd) beside its raw voxels, world coordinates in LPS mm.
LUNA_HEADER = """ObjectType = Image
NDims = 3
BinaryData = True
BinaryDataByteOrderMSB = False
CompressedData = False
TransformMatrix = 1 0 0 0 1 0 0 0 1
Offset = -195.5 -170.25 -335.0
CenterOfRotation = 0 0 0
AnatomicalOrientation = RAI
ElementSpacing = 0.75 0.8 2.5
DimSize = 6 5 4
ElementType = MET_SHORT
ElementDataFile = {data}
"""


def write_luna_scan(folder, name="1.3.6.1.4.1.14519.5.2.1.6279.6001.1"):
    """A 6 x 5 x 4 (x, y, z) scan of -1000 HU with one bright voxel at index (x, y, z) = (4, 1, 2)."""
    voxels = np.full((4, 5, 6), -1000, np.int16)  # stored z, y, x
    voxels[2, 1, 4] = 400
    (folder / f"{name}.raw").write_bytes(voxels.astype("<i2").tobytes())
    (folder / f"{name}.mhd").write_text(LUNA_HEADER.format(data=f"{name}.raw"))
    return folder / f"{name}.mhd"


def test_a_luna16_metaimage_puts_its_voxels_at_their_world_coordinates(tmp_path):
    volume = read_volume(write_luna_scan(tmp_path))
    assert volume.shape == (4, 5, 6) and volume.spacing == (2.5, 0.8, 0.75)
    assert volume.axis_codes() == ("S", "P", "L") and volume.intensity_range() == (-1000.0, 400.0)
    world = np.array([-195.5 + 4 * 0.75, -170.25 + 1 * 0.8, -335.0 + 2 * 2.5])  # Offset + index * spacing
    assert volume.array[2, 1, 4] == 400
    np.testing.assert_allclose(volume.voxel_to_patient([2, 1, 4]), world, atol=1e-9)
    np.testing.assert_allclose(volume.patient_to_voxel(world), [2, 1, 4], atol=1e-9)


@pytest.mark.parametrize("suffix", [".mhd", ".mha", ".nrrd"])
@pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE, SAGITTAL])
def test_dicom_and_itk_files_of_the_same_geometry_agree(tmp_path, orientation, suffix):
    write_series(tmp_path / "dicom", count=5, spacing=2.0, orientation=orientation)
    dicom = read_dicom_series(tmp_path / "dicom")
    image = sitk.GetImageFromArray(dicom.array)  # ITK index (i, j, k) = (column, row, slice)
    image.SetSpacing([float(v) for v in dicom.spacing[::-1]])
    image.SetOrigin([float(v) for v in dicom.origin])
    image.SetDirection([float(v) for v in dicom.direction[:, ::-1].ravel()])
    sitk.WriteImage(image, str(tmp_path / f"same{suffix}"))
    itk = read_itk(tmp_path / f"same{suffix}")
    np.testing.assert_array_equal(itk.array, dicom.array)
    np.testing.assert_allclose(itk.origin, dicom.origin, atol=1e-4)
    np.testing.assert_allclose(itk.direction, dicom.direction, atol=1e-6)
    assert itk.spacing == pytest.approx(dicom.spacing, abs=1e-5)
    assert itk.axis_codes() == dicom.axis_codes()


def test_damaged_and_unsupported_itk_files_are_named(tmp_path):
    scan = write_luna_scan(tmp_path)
    raw = scan.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(VolumeError, match="the voxel data cannot be read") as caught:
        read_itk(scan)
    assert str(caught.value).startswith(str(scan)) and "copied completely" in str(caught.value)
    raw.write_bytes(np.zeros((4, 5, 6), "<i2").tobytes() + b"\0" * 12)  # more voxels than DimSize says
    with pytest.raises(VolumeError, match=f"its data file {raw.name} holds 252 bytes, but the header's DimSize and "
                                          "ElementType describe 240, so its voxels would be read into the wrong rows"):
        read_itk(scan)
    raw.unlink()
    with pytest.raises(VolumeError, match=f"its voxel data file {raw.name} \\(ElementDataFile\\) is missing"):
        read_itk(scan)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.int16)), str(tmp_path / "flat.mha"))
    with pytest.raises(VolumeError, match="2-D image of size 6 x 5; one 3-D volume is expected"):
        read_volume(tmp_path / "flat.mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 2), np.int16), isVector=True),
                    str(tmp_path / "vectors.nrrd"))
    with pytest.raises(VolumeError, match="2 components per voxel"):
        read_volume(tmp_path / "vectors.nrrd")
    (tmp_path / "garbage.nrrd").write_bytes(b"not an image" * 10)
    with pytest.raises(VolumeError, match="not a readable NRRD file"):
        read_volume(tmp_path / "garbage.nrrd")


def test_inspecting_a_metaimage_data_file_points_to_its_header(tmp_path):
    scan = write_luna_scan(tmp_path)
    with pytest.raises(VolumeError, match=f"the voxel data of {scan.name}, which describes them. Fix: inspect {scan}"):
        inspect(scan.with_suffix(".raw"))


def test_inspect_a_metaimage(tmp_path, capsys):
    assert main(["inspect", str(write_luna_scan(tmp_path))]) == 0
    out = capsys.readouterr().out
    for expected in ["kind: MetaImage", "shape: 4 slices x 5 rows x 6 columns",
                     "spacing: 2.5 x 0.8 x 0.75 mm", "origin: (-195.5, -170.25, -335) mm",
                     "intensity range: -1000 .. 400", "problems: none"]:
        assert expected in out, expected


def test_voxel_and_patient_coordinates_round_trip():
    direction = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
    volume = Volume(np.zeros((4, 5, 6), np.float32), (2.5, 0.7, 0.9), np.array([1.0, -2.0, 3.0]), direction)
    index = np.array([[0, 0, 0], [3, 4, 5], [1.5, 2.25, 0.5]])
    points = volume.voxel_to_patient(index)
    np.testing.assert_allclose(points[0], volume.origin)
    np.testing.assert_allclose(points[1], volume.origin + direction @ ([3, 4, 5] * np.array([2.5, 0.7, 0.9])))
    np.testing.assert_allclose(volume.patient_to_voxel(points), index, atol=1e-12)
    np.testing.assert_allclose(volume.affine @ [3, 4, 5, 1], [*points[1], 1])


# ---------------------------------------------------------------------------------------------- inspect


def test_inspect_a_series_folder_with_the_cli(tmp_path, capsys):
    write_series(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for expected in ["kind: DICOM series (6 files)", "modality: CT", "patient id: 1CT1", f"series uid: {SERIES}",
                     "shape: 6 slices x 128 rows x 128 columns",
                     "spacing: 2.5 x 0.661468 x 0.661468 mm (slice x row x column)",
                     "orientation: slices toward S, rows toward P, columns toward L",
                     "origin: (-158, -179, -100) mm", "intensity range: -1024 .. -143 HU",
                     "transfer syntax: Explicit VR Little Endian", "problems: none"]:
        assert expected in out, expected


def test_inspect_a_folder_of_two_series_lists_both_without_failing(tmp_path, capsys):
    write_series(tmp_path, count=2)
    write_series(tmp_path, count=3, series="1.2.3.4", names=["x", "y", "z"])
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "kind: DICOM folder (2 series)" in out
    assert f"series {SERIES} (CT, 2 files, 128 x 128)" in out and "series 1.2.3.4 (CT, 3 files, 128 x 128)" in out
    assert "pass --series UID" in out and "shape" not in out
    assert main(["inspect", str(tmp_path), "--series", "1.2.3.4"]) == 0
    assert "shape: 3 slices x 128 rows x 128 columns" in capsys.readouterr().out


def test_inspect_a_folder_of_single_image_series_says_it_is_a_data_source_and_lists_ten(tmp_path, capsys):
    for number in range(12):  # radiographs exported one file (one series) each
        write_series(tmp_path, count=1, series=f"1.2.3.{number}", names=[f"xray{number:02d}.dcm"])
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "kind: DICOM folder (12 series)" in out and "pass --series" not in out
    assert "each of the 12 series is one 2-D image" in out and "as a data source" in out
    assert f"tfmed inspect {tmp_path / 'xray00.dcm'} to describe one" in out
    assert out.count("  series 1.2.3.") == 10 and "... and 2 more series" in out
    write_series(tmp_path, count=2, series="1.2.9", names=["a.dcm", "b.dcm"])  # one series of two slices
    assert main(["inspect", str(tmp_path)]) == 0
    assert "13 series in this folder: pass --series UID" in capsys.readouterr().out


def test_inspect_a_broken_series_exits_2_with_the_reason(tmp_path, capsys):
    write_series(tmp_path, count=6, skip={2})
    assert main(["inspect", str(tmp_path)]) == 2
    assert "missing slices: a gap of 5.00 mm" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.nii.gz")]) == 2
    assert "missing.nii.gz: not found" in capsys.readouterr().err


def test_inspect_a_nifti_file(capsys):
    assert main(["inspect", os.path.join(NIBABEL_DATA, "anatomical.nii")]) == 0
    out = capsys.readouterr().out
    for expected in ["kind: NIfTI", "shape: 25 slices x 41 rows x 33 columns", "spacing: 2 x 2 x 2 mm",
                     "intensity range: -610 .. 30393\n", "problems: none"]:
        assert expected in out, expected
    assert "modality" not in out and "transfer syntax" not in out


def test_inspect_a_png_and_a_dicom_image(tmp_path, capsys):
    png = tmp_path / "xray.png"
    cv2.imwrite(str(png), np.array([[3, 200, 7], [9, 10, 11]], np.uint8))
    report = inspect(png)
    assert report["shape"] == [2, 3, 1] and report["intensity_range"] == [3.0, 200.0]
    text = format_inspection(report)
    assert "kind: image (png)" in text and "shape: 2 rows x 3 columns x 1 channels" in text
    assert "intensity range: 3 .. 200\n" in text and "spacing" not in text
    assert main(["inspect", CT_SMALL]) == 0
    out = capsys.readouterr().out
    for expected in ["kind: image (dicom)", "modality: CT", "patient id: 1CT1", "shape: 128 rows x 128 columns",
                     "spacing: 0.661468 x 0.661468 mm (row x column)", "intensity range: -896 .. 1167 HU",
                     "transfer syntax: Explicit VR Little Endian"]:
        assert expected in out, expected
    assert main(["inspect", str(png), "--series", "1.2.3"]) == 2  # a series is chosen in a folder, not a file
    assert "a file, and --series (1.2.3; series_uid=) chooses a series of a folder of DICOM files" in \
        capsys.readouterr().err


def test_dicom_series_with_non_square_pixel_spacing_puts_rows_and_columns_on_their_axes(tmp_path):
    """PixelSpacing is [between rows, between columns]: with [0.5, 2.0] one row down moves IOP[3:6] * 0.5 and
    one column right IOP[0:3] * 2.0. Reading the pair the other way round swapped them."""
    for k in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 2.0]
        ds.SeriesInstanceUID = "1.2.3.4"
        ds.SOPInstanceUID = f"1.2.3.4.{k}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(tmp_path / f"s{k}.dcm", enforce_file_format=True)
    volume = read_volume(tmp_path)
    np.testing.assert_allclose(volume.spacing, (2.5, 0.5, 2.0))
    origin = volume.voxel_to_patient([0, 0, 0])
    np.testing.assert_allclose(volume.voxel_to_patient([0, 1, 0]) - origin, [0.0, 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(volume.voxel_to_patient([0, 0, 1]) - origin, [2.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(volume.voxel_to_patient([1, 0, 0]) - origin, [0.0, 0.0, 2.5], atol=1e-6)


def test_nifti_anisotropic_in_plane_zooms_come_out_as_slice_row_column(tmp_path):
    """NIfTI zooms are (i, j, k) and the volume's spacing is (slice, row, column) = (k, j, i); with i and j
    differing, taking zooms[0] for the rows swapped the in-plane spacings."""
    path = tmp_path / "v.nii"
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([0.5, 0.8, 2.0, 1.0])), path)
    zooms = nibabel.load(path).header.get_zooms()
    assert len(set(zooms)) == 3
    volume = read_volume(path)
    np.testing.assert_allclose(volume.spacing, (zooms[2], zooms[1], zooms[0]))
