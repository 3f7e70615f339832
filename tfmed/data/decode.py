"""Reading one image file into a float32 array of raw values.

PNG, JPEG, BMP and TIFF files are decoded with OpenCV (``IMREAD_UNCHANGED``,
so 16-bit values survive; colour is converted from OpenCV's BGR to RGB).
DICOM files are decoded with pydicom and passed through the modality LUT
(``RescaleSlope``/``RescaleIntercept``), so CT images come back in Hounsfield
units. Every failure raises :class:`ImageReadError` naming the file, the
reason and the fix, instead of a decoder traceback.

Example:
    >>> import cv2, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.png")
    >>> _ = cv2.imwrite(path, np.full((4, 5), 7, np.uint8))
    >>> read_image(path).shape
    (4, 5, 1)
    >>> image_info(path).bit_depth
    8
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tfmed.errors import TfmedError

# Extension -> kind. Files without an extension are accepted when they carry
# the DICOM "DICM" marker (many PACS exports have no extension).
RASTER_KINDS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp",
                ".tif": "tiff", ".tiff": "tiff"}
DICOM_EXTENSIONS = (".dcm", ".dicom")
SUPPORTED_EXTENSIONS = tuple(RASTER_KINDS) + DICOM_EXTENSIONS


class ImageReadError(TfmedError):
    """An image file is missing, empty, corrupt or of an unsupported kind.

    Attributes:
        path: the file at fault.
        reason: what is wrong with it.
        fix: what would make it readable.
    """

    def __init__(self, path: str | Path, reason: str, fix: str):
        self.path = str(path)
        self.reason = reason
        self.fix = fix
        super().__init__(f"{self.path}: {reason}. Fix: {fix}")


@dataclass(frozen=True)
class ImageInfo:
    """Geometry and storage of one image file.

    Attributes:
        height, width, channels: decoded array shape.
        bit_depth: bits per stored sample (8, 16, 32, ...); for DICOM the
            BitsAllocated tag.
        kind: "png", "jpeg", "bmp", "tiff" or "dicom".

    Example:
        >>> ImageInfo(height=28, width=28, channels=1, bit_depth=8, kind="png").channels
        1
    """

    height: int
    width: int
    channels: int
    bit_depth: int
    kind: str


def has_dicom_marker(path: str | Path) -> bool:
    """True when ``path`` has the DICOM preamble marker "DICM" at byte 128.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> has_dicom_marker(get_testdata_file("CT_small.dcm"))
        True
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def image_kind(path: str | Path) -> str | None:
    """The kind of image ``path`` holds, judged by its extension (None if unsupported).

    Files without an extension count as "dicom" when they carry the DICOM marker.

    Example:
        >>> image_kind("scan.DCM"), image_kind("xray.jpeg"), image_kind("notes.txt")
        ('dicom', 'jpeg', None)
    """
    suffix = Path(path).suffix.lower()
    if suffix in RASTER_KINDS:
        return RASTER_KINDS[suffix]
    if suffix in DICOM_EXTENSIONS:
        return "dicom"
    if suffix == "" and has_dicom_marker(path):
        return "dicom"
    return None


def read_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` into a float32 array (H, W, C) of raw values.

    8-bit images keep values 0..255, 16-bit PNG/TIFF keep 0..65535, colour
    comes back RGB (RGBA for 4 channels), DICOM comes back after the modality
    LUT (Hounsfield units for CT); MONOCHROME1 DICOM is inverted so that
    higher values are brighter, as in MONOCHROME2.

    Raises:
        ImageReadError: missing, empty, corrupt, unsupported or
            undecodable (e.g. compressed DICOM without a decoder plugin).

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> hu = read_image(get_testdata_file("CT_small.dcm"))
        >>> hu.shape, float(hu.min()), float(hu.max())
        ((128, 128, 1), -896.0, 1167.0)
    """
    return read_image_and_info(path)[0]


def image_info(path: str | Path) -> ImageInfo:
    """Height, width, channels, bit depth and kind of ``path`` (decodes the file).

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> image_info(get_testdata_file("CT_small.dcm"))
        ImageInfo(height=128, width=128, channels=1, bit_depth=16, kind='dicom')
    """
    return read_image_and_info(path)[1]


def read_image_and_info(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """Decode ``path`` once and return both the array and its :class:`ImageInfo`.

    Validation uses this to check every file with a single decode.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> array, info = read_image_and_info(get_testdata_file("CT_small.dcm"))
        >>> array.dtype.name, info.kind
        ('float32', 'dicom')
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found",
                             "check the path (relative paths are resolved against the manifest "
                             "root) or remove the row")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file", "point the row at an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)",
                             "re-export or re-download the image, or remove the row")
    kind = image_kind(path)
    if kind is None:
        raise ImageReadError(path, f"unsupported file type {path.suffix or '(no extension)'!r}",
                             f"convert it to one of {', '.join(SUPPORTED_EXTENSIONS)}")
    if kind == "dicom":
        return _read_dicom(path)
    return _read_raster(path, kind)


def _read_raster(path: Path, kind: str) -> tuple[np.ndarray, ImageInfo]:
    # np.fromfile + imdecode handles non-ASCII paths, which cv2.imread does not on every platform.
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(path, f"cannot be read ({error.strerror})",
                             "check the file permissions") from None
    try:
        array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        array = None
    if array is None or array.size == 0:
        raise ImageReadError(path, f"corrupt or truncated {kind.upper()} (OpenCV could not decode it)",
                             "re-export or re-download the image, or remove the row")
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    elif array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    bit_depth = array.dtype.itemsize * 8
    info = ImageInfo(height=int(array.shape[0]), width=int(array.shape[1]),
                     channels=int(array.shape[2]), bit_depth=int(bit_depth), kind=kind)
    return array.astype(np.float32), info


def _read_dicom(path: Path) -> tuple[np.ndarray, ImageInfo]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    try:
        dataset = pydicom.dcmread(str(path))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as error:
        raise ImageReadError(path, f"not a readable DICOM file ({type(error).__name__}: {error})",
                             "re-export the DICOM file, or remove the row") from None
    if "PixelData" not in dataset and "FloatPixelData" not in dataset \
            and "DoubleFloatPixelData" not in dataset:
        raise ImageReadError(path, "DICOM file has no pixel data (e.g. a structured report or "
                             "presentation state)", "remove the row or point it at the image object")
    try:
        pixels = dataset.pixel_array
    except RuntimeError as error:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        syntax_text = f"{syntax} ({syntax.name})" if syntax is not None else "unknown"
        raise ImageReadError(
            path, f"compressed DICOM with transfer syntax {syntax_text} cannot be decoded: "
                  f"{str(error).splitlines()[0]}",
            "install a decoder plugin (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, "
            "or python-gdcm), or decompress the file first (e.g. gdcmconv --raw / dcmdjpeg)") from None
    except (ValueError, AttributeError, KeyError, TypeError, EOFError) as error:
        raise ImageReadError(path, f"corrupt DICOM pixel data ({type(error).__name__}: {error})",
                             "re-export the DICOM file, or remove the row") from None
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(path, f"multi-frame DICOM ({frames} frames); a 2-D image is expected",
                             "export the frame to classify as its own file")
    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = values.max() + values.min() - values
    if values.ndim == 2:
        values = values[:, :, None]
    info = ImageInfo(height=int(values.shape[0]), width=int(values.shape[1]),
                     channels=int(values.shape[2]), bit_depth=int(dataset.get("BitsAllocated", 16)),
                     kind="dicom")
    return values, info
