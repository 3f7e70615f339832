"""read_image / image_info on real files written here and pydicom's own test files."""
import os
import shutil
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from tfmed.config import ConfigError, DataConfig
from tfmed.data.decode import (DEFAULT_MAX_PIXELS, ImageInfo, ImageReadError, image_info, image_kind,
                               read_image, read_image_and_info)
from tfmed.progress import native_stderr_captured

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
    assert image_info(CT_SMALL) == ImageInfo(128, 128, 1, 16, "dicom", hounsfield_units=True)


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
    dataset.PhotometricInterpretation, dataset.Modality = "MONOCHROME1", "CR"
    path = tmp_path / "mono1.dcm"
    dataset.save_as(path)
    values = pydicom.dcmread(CT_SMALL).pixel_array.astype(np.float64) - 1024
    # signed 16-bit stored values -32768..32767 give -33792..31743 after the rescale: turned over that range
    expected = (-32768 - 1024) + (32767 - 1024) - values
    np.testing.assert_array_equal(read_image(path)[:, :, 0], expected)


@pytest.mark.parametrize("modality, rescale_type", [("CT", None), ("OT", "HU")])
def test_monochrome1_in_hounsfield_units_stays_in_hounsfield_units(tmp_path, modality, rescale_type):
    """The photometric setting says how to display; a window in HU must read the HU themselves."""
    dataset = pydicom.dcmread(CT_SMALL)
    dataset.PhotometricInterpretation, dataset.Modality = "MONOCHROME1", modality
    if rescale_type:
        dataset.RescaleType = rescale_type
    dataset.save_as(tmp_path / "mono1.dcm")
    np.testing.assert_array_equal(read_image(tmp_path / "mono1.dcm"), read_image(CT_SMALL))


def test_monochrome1_gives_one_stored_value_the_same_output_in_every_image(tmp_path):
    """Inverted over the range the header allows, not each image's own minimum and maximum."""
    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    dataset.PhotometricInterpretation, dataset.PixelRepresentation, dataset.BitsStored = "MONOCHROME1", 0, 12
    dataset.HighBit = 11
    outputs = []
    for name, brightest in (("a", 4000), ("b", 2000)):
        pixels = np.full((64, 64), 1000, np.uint16)
        pixels[0, 0], pixels[0, 1] = 0, brightest
        dataset.PixelData = pixels.tobytes()
        dataset.save_as(tmp_path / f"{name}.dcm")
        outputs.append(read_image(tmp_path / f"{name}.dcm")[5, 5, 0])
    assert outputs == [4095 - 1000, 4095 - 1000]


def test_palette_colour_dicom_comes_back_through_its_colour_table():
    path = get_testdata_file("examples_palette.dcm")
    dataset = pydicom.dcmread(path)
    rgb = pydicom.pixels.apply_color_lut(dataset.pixel_array, dataset)
    image, info = read_image_and_info(path)
    assert image.shape == (350, 800, 3) and info.channels == 3 and info.bit_depth == 16
    np.testing.assert_array_equal(image, rgb)


def test_a_malformed_number_of_frames_names_the_file():
    with pytest.raises(ImageReadError, match=r"badVR\.dcm.*malformed NumberOfFrames '1A'.*the decoder said: "
                                             r"UserWarning: Invalid value for VR IS: '1A'"):  # pydicom's own word
        read_image(get_testdata_file("badVR.dcm"))


def test_multi_page_tiff_is_refused_not_cut_to_its_first_page(tmp_path):
    pages = [Image.fromarray(np.full((8, 8), value, np.uint8)) for value in (10, 120, 240)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    pages[0].save(tmp_path / "single.tif")
    with pytest.raises(ImageReadError, match=r"stack\.tif: multi-page TIFF \(3 pages\).*own file"):
        read_image(tmp_path / "stack.tif", max_pixels=None)   # also when no size limit asks for the header
    assert read_image(tmp_path / "single.tif").shape == (8, 8, 1)


def test_dicom_without_extension_is_recognised(tmp_path):
    path = tmp_path / "IM0001"
    shutil.copy(CT_SMALL, path)
    assert image_kind(path) == "dicom"
    assert read_image(path).shape == (128, 128, 1)


def test_dicom_named_by_uid_is_recognised_by_its_marker(tmp_path):
    path = tmp_path / "CT.1.3.12.2.1107.5.1.4.30000022120808113428000016582"
    shutil.copy(CT_SMALL, path)
    assert image_kind(path) == "dicom"
    np.testing.assert_array_equal(read_image(path), read_image(CT_SMALL))
    other = tmp_path / "report.1.2.3"
    other.write_bytes(b"not DICOM" * 20)
    assert image_kind(other) is None
    with pytest.raises(ImageReadError, match=r"unsupported file type '.3' \(not an image extension, and no DICOM"):
        read_image(other)


@pytest.mark.parametrize("compressed", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                                        "MR_small_RLE.dcm"])
def test_compressed_dicom_decodes_to_the_uncompressed_values(compressed):
    """JPEG-LS and JPEG 2000 through the declared pylibjpeg plugins, RLE through pydicom itself."""
    np.testing.assert_array_equal(read_image(get_testdata_file(compressed)),
                                  read_image(get_testdata_file("MR_small.dcm")))


def test_compressed_dicom_without_plugin_names_file_and_transfer_syntax(monkeypatch):
    def no_plugin(self):
        raise RuntimeError("Unable to decompress 'JPEG-LS Lossless Image Compression' pixel data because "
                           "all plugins are missing dependencies:\n    gdcm - requires gdcm")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_plugin))
    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    message = str(caught.value)
    assert "MR_small_jpeg_ls_lossless.dcm" in message
    assert "1.2.840.10008.1.2.4.80" in message and "JPEG-LS Lossless" in message
    assert "pylibjpeg" in message and "decompress" in message
    assert "gdcm - requires gdcm" in message          # what pydicom said, every line


def test_compressed_dicom_the_installed_plugins_fail_on_quotes_them_and_does_not_ask_to_install_them():
    path = get_testdata_file("JPEG-lossy.dcm")          # 12-bit JPEG Extended: neither plugin reads it
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    assert "pylibjpeg:" in caught.value.reason and "pillow:" in caught.value.reason
    assert "pip install" not in caught.value.fix and "decompress" in caught.value.fix


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


# ------------------------------------------------ PNG files built chunk by chunk
GREY = np.random.default_rng(3).integers(0, 256, (20, 30), dtype=np.uint8)


def png_bytes(array=GREY) -> bytes:
    ok, encoded = cv2.imencode(".png", array)
    assert ok
    return encoded.tobytes()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header says width x height (its pixel data is GREY's, far too little)."""
    data = png_bytes()
    return data[:8] + chunk(b"IHDR", struct.pack(">II", width, height) + data[24:29]) + data[33:]


def png_with_broken_idat() -> bytes:
    """GREY with one byte of its compressed pixel data flipped (libpng: "IDAT: incorrect data check")."""
    data = bytearray(png_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 40] ^= 0xFF
    return bytes(data)


def png_with_short_icc_profile() -> bytes:
    """GREY with an iCCP chunk whose profile is garbage: libpng warns "iCCP: too short" and reads the pixels."""
    data = png_bytes()
    profile = chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(b"x" * 200))
    return data[:33] + profile + data[33:]


# ------------------------------------------------------------- the pixel limit
def test_png_over_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming_size(40000, 40000))

    def decoded(*args):
        raise AssertionError("the pixels of an over-limit image were decoded")

    monkeypatch.setattr(cv2, "imdecode", decoded)
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    assert caught.value.reason == ("image is 40000 x 40000 pixels (1600.0 megapixels), over the limit of "
                                   "100.0 megapixels")
    assert caught.value.fix == "downsample the image, or raise data.max_image_pixels"
    assert str(caught.value).startswith(f"{path}: image is 40000 x 40000")


def test_pillows_own_size_warning_does_not_replace_the_limit(tmp_path, recwarn):
    # 90 megapixels: over Pillow's decompression-bomb warning threshold (about 89.5), under our default
    assert Image.MAX_IMAGE_PIXELS < 90_000_000 < DEFAULT_MAX_PIXELS
    path = tmp_path / "large.png"
    path.write_bytes(png_claiming_size(10000, 9000))
    with pytest.raises(ImageReadError, match=r"image is 10000 x 9000 pixels \(90.0 megapixels\), over the "
                                             r"limit of 50.0 megapixels"):
        read_image(path, max_pixels=50_000_000)
    assert [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)] == []


def test_max_pixels_is_width_times_height_and_none_lifts_it(tmp_path):
    path = tmp_path / "small.png"
    path.write_bytes(png_bytes())
    with pytest.raises(ImageReadError, match=r"small.png: image is 30 x 20 pixels \(600 pixels\), over the "
                                             r"limit of 100 pixels"):
        read_image(path, max_pixels=100)
    assert read_image(path, max_pixels=600).shape == (20, 30, 1)
    assert read_image(path, max_pixels=None).shape == (20, 30, 1)


def test_dicom_over_the_pixel_limit_is_refused_before_its_pixels_are_read(monkeypatch):
    def decoded(self):
        raise AssertionError("the pixels of an over-limit DICOM were decoded")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(decoded))
    with pytest.raises(ImageReadError) as caught:
        read_image(CT_SMALL, max_pixels=1000)
    assert caught.value.reason == "image is 128 x 128 pixels (16384 pixels), over the limit of 1000 pixels"
    assert "data.max_image_pixels" in caught.value.fix


def test_the_pixel_limit_setting_defaults_to_the_decoder_limit_and_must_be_positive():
    assert DataConfig().max_image_pixels == DEFAULT_MAX_PIXELS == 100_000_000
    assert DataConfig(max_image_pixels=None).max_image_pixels is None
    with pytest.raises(ConfigError, match=r"data.max_image_pixels is 0; it must be a number of pixels > 0"):
        DataConfig(max_image_pixels=0)


# ----------------------------------------------------- what the decoders print
def test_a_broken_png_names_what_libpng_said_and_nothing_reaches_stderr(tmp_path, capfd):
    path = tmp_path / "broken.png"
    path.write_bytes(png_with_broken_idat())
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    assert caught.value.reason == ("corrupt or truncated PNG (OpenCV could not decode it; the decoder said: "
                                   "libpng error: IDAT: incorrect data check)")
    assert caught.value.decoder_output == "libpng error: IDAT: incorrect data check"
    assert "libpng" not in capfd.readouterr().err


def test_a_png_that_decodes_with_a_warning_keeps_it_in_its_info(tmp_path, capfd):
    path = tmp_path / "warned.png"
    path.write_bytes(png_with_short_icc_profile())
    array, info = read_image_and_info(path)
    np.testing.assert_array_equal(array[:, :, 0], GREY)
    assert info.decoder_output == "libpng warning: iCCP: too short"
    assert image_info(path) == ImageInfo(20, 30, 1, 8, "png", decoder_output="libpng warning: iCCP: too short")
    assert "libpng" not in capfd.readouterr().err


def test_decodes_in_parallel_threads_each_keep_their_own_messages(tmp_path, capfd):
    paths = []
    for i in range(150):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png_with_short_icc_profile() if i % 3 == 0 else png_bytes())
    with ThreadPoolExecutor(max_workers=8) as pool:
        infos = list(pool.map(lambda path: read_image_and_info(path)[1], paths))
    assert [info.decoder_output for info in infos] == [
        "libpng warning: iCCP: too short" if i % 3 == 0 else "" for i in range(150)]
    os.write(2, b"fd 2 is back\n")
    assert capfd.readouterr().err == "fd 2 is back\n"


def test_native_stderr_capture_nests_and_restores_file_descriptor_2(capfd):
    with native_stderr_captured() as outer:
        os.write(2, b"outer\n")
        with native_stderr_captured() as inner:
            os.write(2, b"inner\n")
        os.write(2, b"outer again\n")
    os.write(2, b"after\n")
    assert (outer.text, inner.text) == ("outer\nouter again", "inner")
    assert capfd.readouterr().err == "after\n"


def test_native_stderr_capture_catches_nothing_where_there_is_no_file_descriptor_2(monkeypatch):
    def no_fd(fd):
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(os, "dup", no_fd)
    with native_stderr_captured() as printed:
        pass
    assert printed.text == ""


def _with_orientation(image, path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif)
    return path


def test_jpeg_exif_orientation_6_is_read_upright_as_viewers_show_it(tmp_path):
    """A phone photo stored sideways with Orientation=6 (turn 90 degrees clockwise to view)."""
    from PIL import ImageOps

    upright = np.zeros((16, 24, 3), np.uint8)
    upright[:6, :8] = (250, 30, 30)   # red block top-left
    upright[10:, 16:] = (20, 40, 240)  # blue block bottom-right
    stored = np.rot90(upright, 1)     # what the camera wrote: turned 90 degrees anticlockwise, 24 x 16
    path = _with_orientation(Image.fromarray(np.ascontiguousarray(stored)), tmp_path / "phone.jpg", 6)
    image = read_image(path)
    assert image.shape == (16, 24, 3) and image_info(path).height == 16
    assert np.abs(image - upright).mean() < 8  # lossy JPEG (chroma subsampled), but upright
    assert image[:6, :8, 0].mean() > 200 and image[10:, 16:, 2].mean() > 200
    shown = np.asarray(ImageOps.exif_transpose(Image.open(path)), np.float32)
    assert np.abs(image - shown).mean() < 2
    grey = _with_orientation(Image.fromarray(np.ascontiguousarray(stored[..., 0])), tmp_path / "grey.jpg", 6)
    assert read_image(grey).shape == (16, 24, 1) and read_image(grey)[:6, :8].mean() > 200


def test_a_file_is_read_as_what_its_bytes_are_whatever_its_extension(tmp_path):
    """A phone photo saved as .png keeps its EXIF turn; a CT slice named .jpg reads in Hounsfield units."""
    import pandas as pd

    from tfmed.data.pipeline import raw_dataset
    from tfmed.data.table import ImageTable

    stored = np.kron(np.arange(6, dtype=np.uint8).reshape(2, 3) * 40, np.ones((8, 8), np.uint8))  # 16 x 24
    photo = _with_orientation(Image.fromarray(stored), tmp_path / "photo.jpg", 6).rename(tmp_path / "photo.png")
    upright = np.rot90(stored, -1)
    slice_ = shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "slice.jpg")
    table = ImageTable(pd.DataFrame({"image": [str(photo), str(slice_)], "label": [0, 1], "row": [0, 1]}),
                       ["a", "b"], "binary")
    trained = list(raw_dataset(table).as_numpy_iterator())
    for image in (read_image(photo), trained[0]):  # validation's reader and training's
        assert image.shape == (24, 16, 1) and np.abs(image[..., 0] - upright).max() <= 2
    assert image_info(slice_).kind == "dicom"
    for image in (read_image(slice_), trained[1]):
        assert (float(image.min()), float(image.max())) == (-896.0, 1167.0)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_of_a_grey_jpeg_matches_pillows_exif_transpose(tmp_path, orientation):
    from PIL import ImageOps

    stored = np.kron(np.arange(6, dtype=np.uint8).reshape(2, 3) * 40, np.ones((8, 8), np.uint8))  # 16 x 24 blocks
    path = _with_orientation(Image.fromarray(stored), tmp_path / "x.jpg", orientation)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(path)), np.float32)
    image = read_image(path)
    assert image.shape == shown.shape + (1,)
    assert np.abs(image[..., 0] - shown).max() <= 2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_of_a_16bit_tiff_is_applied_once(tmp_path, orientation):
    """OpenCV's TIFF reader applies the orientation tag itself: read_image must not turn it again."""
    from tfmed.data.decode import apply_orientation

    stored = np.arange(4 * 6, dtype=np.uint16).reshape(4, 6) * 2000 + 7  # values above 255 survive
    path = _with_orientation(Image.fromarray(stored), tmp_path / "deep.tif", orientation)
    image = read_image(path)
    assert image_info(path).bit_depth == 16
    np.testing.assert_array_equal(image, apply_orientation(stored[..., None], orientation).astype(np.float32))
