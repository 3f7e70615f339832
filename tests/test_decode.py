"""read_image / image_info on real files written here and pydicom's own test files."""
import shutil

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from tfmed.data.decode import ImageInfo, ImageReadError, image_info, image_kind, read_image

CT_SMALL = get_testdata_file("CT_small.dcm")


def test_png_8bit_grey_round_trip(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    path = tmp_path / "grey.png"
    assert cv2.imwrite(str(path), array)
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == (20, 30, 1)
    np.testing.assert_array_equal(image[:, :, 0], array.astype(np.float32))
    assert image_info(path) == ImageInfo(height=20, width=30, channels=1, bit_depth=8, kind="png")


def test_png_16bit_keeps_values_above_255(tmp_path):
    array = np.random.default_rng(1).integers(0, 65536, (16, 12), dtype=np.uint16)
    array[0, 0] = 65535
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), array)
    image = read_image(path)
    np.testing.assert_array_equal(image[:, :, 0], array.astype(np.float32))
    assert image.max() == 65535
    assert image_info(path).bit_depth == 16


def test_colour_png_comes_back_rgb(tmp_path):
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red
    rgb[..., 2] = 10   # blue
    path = tmp_path / "colour.png"
    assert cv2.imwrite(str(path), rgb[..., ::-1])  # OpenCV writes BGR
    image = read_image(path)
    np.testing.assert_array_equal(image, rgb.astype(np.float32))
    assert image_info(path).channels == 3


def test_jpeg_reads_close_to_written_values(tmp_path):
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:, :8] = (250, 20, 30)
    rgb[:, 8:] = (10, 120, 240)
    path = tmp_path / "x.jpeg"
    assert cv2.imwrite(str(path), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    image = read_image(path)
    assert image.shape == (16, 16, 3)
    # Lossy, but at quality 100 flat colour regions decode within a few levels (and in RGB order).
    assert np.abs(image[2:-2, 2:6] - rgb[2:-2, 2:6]).max() <= 4
    assert np.abs(image[2:-2, 10:14] - rgb[2:-2, 10:14]).max() <= 4
    assert image_info(path).kind == "jpeg"


def test_ct_small_gives_hounsfield_units():
    image = read_image(CT_SMALL)
    dataset = pydicom.dcmread(CT_SMALL)
    raw = dataset.pixel_array.astype(np.float64)
    slope, intercept = float(dataset.RescaleSlope), float(dataset.RescaleIntercept)
    assert (slope, intercept) == (1.0, -1024.0)
    assert image.shape == (128, 128, 1)
    assert image.min() == -896 and image.max() == 1167
    for r, c in [(0, 0), (64, 64), (100, 17), (127, 127)]:
        assert image[r, c, 0] == raw[r, c] * slope + intercept
    assert image_info(CT_SMALL) == ImageInfo(128, 128, 1, 16, "dicom")


def test_dicom_rescale_slope_and_intercept_are_applied(tmp_path):
    dataset = pydicom.dcmread(CT_SMALL)
    dataset.RescaleSlope = 2
    dataset.RescaleIntercept = -100
    path = tmp_path / "scaled.dcm"
    dataset.save_as(path)
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    np.testing.assert_array_equal(read_image(path)[:, :, 0], raw * 2 - 100)


def test_monochrome1_is_inverted(tmp_path):
    dataset = pydicom.dcmread(CT_SMALL)
    dataset.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "mono1.dcm"
    dataset.save_as(path)
    hu = pydicom.dcmread(CT_SMALL).pixel_array.astype(np.float64) - 1024
    expected = hu.max() + hu.min() - hu
    np.testing.assert_array_equal(read_image(path)[:, :, 0], expected)


def test_dicom_without_extension_is_recognised(tmp_path):
    path = tmp_path / "IM0001"
    shutil.copy(CT_SMALL, path)
    assert image_kind(path) == "dicom"
    assert read_image(path).shape == (128, 128, 1)


def test_compressed_dicom_without_plugin_names_file_and_transfer_syntax():
    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    message = str(caught.value)
    assert "MR_small_jpeg_ls_lossless.dcm" in message
    assert "1.2.840.10008.1.2.4.80" in message and "JPEG-LS Lossless" in message
    assert "pylibjpeg" in message and "decompress" in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty.png: file is empty \(0 bytes\)"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file(tmp_path, suffix):
    array = np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8)
    whole = tmp_path / f"whole{suffix}"
    cv2.imwrite(str(whole), array)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.(png|jpg): corrupt or truncated"):
        read_image(cut)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="nothere.png: file not found"):
        read_image(tmp_path / "nothere.png")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ImageReadError, match=r"notes.txt: unsupported file type '.txt'.*\.png"):
        read_image(path)


def test_dcm_extension_that_is_not_dicom(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"this is not a dicom file at all" * 10)
    with pytest.raises(ImageReadError, match="fake.dcm: not a readable DICOM file"):
        read_image(path)


def test_multiframe_dicom_is_refused():
    with pytest.raises(ImageReadError, match="multi-frame DICOM"):
        read_image(get_testdata_file("SC_rgb_rle_2frame.dcm"))


def test_image_read_error_is_a_value_error():
    assert issubclass(ImageReadError, ValueError)
