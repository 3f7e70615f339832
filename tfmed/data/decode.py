"""Reading one image file into a float32 array of raw values.

PNG, JPEG, BMP and TIFF files are decoded with OpenCV (``IMREAD_UNCHANGED``,
so 16-bit values survive; colour is converted from OpenCV's BGR to RGB). The
EXIF orientation of JPEG files (a camera's or phone's "rotated" flag) is
applied as image viewers do (:func:`exif_orientation`), so a photo tagged
Orientation=6 comes back upright, not sideways; OpenCV's TIFF reader applies
a TIFF's orientation tag itself.
DICOM files are decoded with pydicom and passed through the modality LUT
(``RescaleSlope``/``RescaleIntercept``), so CT images come back in Hounsfield
units. Every failure raises :class:`ImageReadError` naming the file, the
reason and the fix, instead of a decoder traceback.

Before decoding, the image's width and height are read from its header
(Pillow for rasters, Rows x Columns for DICOM) and an image over
``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`) is refused without
allocating its pixels. What OpenCV's native decoders print on stderr (e.g.
``libpng error: IDAT: incorrect data check``) is caught, as are pydicom's
Python warnings (e.g. "Expected explicit VR, but found implicit VR"): a
failure's reason quotes them, and a file that decoded despite them carries
them in ``ImageInfo.decoder_output``.

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

import contextlib
import re
import warnings
from collections import Counter
from struct import error as struct_error
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from tfmed.errors import TfmedError
from tfmed.progress import CapturedText, native_stderr_captured

# Extension -> kind. Files without an extension are accepted when they carry
# the DICOM "DICM" marker (many PACS exports have no extension).
RASTER_KINDS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp",
                ".tif": "tiff", ".tiff": "tiff"}
DICOM_EXTENSIONS = (".dcm", ".dicom")
SUPPORTED_EXTENSIONS = tuple(RASTER_KINDS) + DICOM_EXTENSIONS
# Largest image (width x height, all frames) read by default: 100 megapixels, several times a
# 4096 x 5120 mammogram (21 MP). Setting: data.max_image_pixels.
DEFAULT_MAX_PIXELS = 100_000_000
# OpenCV's log prefix, e.g. "[ WARN:2@9.650] global grfmt_png.cpp:732 readFromStreamOrBuffer ": its
# thread number and time differ between two reads of the same file.
_OPENCV_LOG_PREFIX = re.compile(r"^\[\s*[A-Z]+:[^\]]*\]\s*(?:global\s+\S+\s+\S+\s+)?")


class ImageReadError(TfmedError):
    """An image file is missing, empty, corrupt or of an unsupported kind.

    Attributes:
        path: the file at fault.
        reason: what is wrong with it.
        fix: what would make it readable.
        decoder_output: what the native decoder printed while failing ("" if
            nothing, or if it was not captured); ``reason`` quotes it.
    """

    def __init__(self, path: str | Path, reason: str, fix: str, decoder_output: str = ""):
        self.path = str(path)
        self.reason = reason
        self.fix = fix
        self.decoder_output = decoder_output
        super().__init__(f"{self.path}: {reason}. Fix: {fix}")


@dataclass(frozen=True)
class ImageInfo:
    """Geometry and storage of one image file.

    Attributes:
        height, width, channels: decoded array shape.
        bit_depth: bits per stored sample (8, 16, 32, ...); for DICOM the
            BitsAllocated tag.
        kind: "png", "jpeg", "bmp", "tiff" or "dicom".
        decoder_output: warnings the native decoder printed while reading the
            file (e.g. "libpng warning: iCCP: too short"); the pixels were
            read. Empty when it printed nothing or output was not captured.
        float_values: the file stores floating-point samples (a 32-bit float
            TIFF, e.g. CT in Hounsfield units as tfmed writes from a TFDS
            float tensor).
        notes: what the header leaves in doubt about the values (e.g.
            :data:`NO_RESCALE`); the pixels were read.
        hounsfield_units: the values are Hounsfield units (a CT DICOM file, or
            one whose rescale is of type HU), which a CT window reads.

    Example:
        >>> ImageInfo(height=28, width=28, channels=1, bit_depth=8, kind="png").channels
        1
    """

    height: int
    width: int
    channels: int
    bit_depth: int
    kind: str
    decoder_output: str = ""
    float_values: bool = False
    notes: tuple[str, ...] = ()
    hounsfield_units: bool = False


NO_RESCALE = ("CT without RescaleSlope/RescaleIntercept: values are used as stored, which are Hounsfield units only "
              "if the scanner stored them so (windows in HU may be off)")


# Where an enhanced DICOM file (Enhanced CT, MR, legacy converted) keeps its modality LUT: in its functional groups
RESCALE_SEQUENCE = "PixelValueTransformationSequence"
RESCALE_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "RescaleType")


def functional_group_rescale(header) -> dict:
    """The rescale elements (:data:`RESCALE_KEYWORDS`) that a one-frame enhanced DICOM file keeps in its
    functional groups instead of at the top level: the per-frame group's over the shared one's ({} for none).

    Example:
        >>> import pydicom
        >>> from pydicom.data import get_testdata_file
        >>> functional_group_rescale(pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True))
        {}
    """
    groups = [sequence[0] for sequence in (header.get("SharedFunctionalGroupsSequence"),
                                           header.get("PerFrameFunctionalGroupsSequence")) if sequence]
    found = {}
    for group in groups:
        for inner in group.get(RESCALE_SEQUENCE) or []:
            found.update({keyword: inner[keyword] for keyword in RESCALE_KEYWORDS if keyword in inner})
    return found


def lacks_rescale(header) -> bool:
    """Whether a CT header has no modality LUT (RescaleSlope, RescaleIntercept or a LUT sequence), so that its
    stored values are taken as Hounsfield units unchecked.

    Example:
        >>> import pydicom
        >>> from pydicom.data import get_testdata_file
        >>> lacks_rescale(pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True))
        False
    """
    return str(header.get("Modality", "")).upper() == "CT" and not any(
        name in header for name in ("RescaleSlope", "RescaleIntercept", "ModalityLUTSequence")) \
        and not functional_group_rescale(header)


def decoder_messages(text: str) -> list[str]:
    """The lines of what a native decoder printed, without OpenCV's log prefix (thread and time).

    Example:
        >>> decoder_messages("[ WARN:0@1.5] global grfmt_png.cpp:732 readFromStreamOrBuffer PNG input "
        ...                  "buffer is incomplete\\nlibpng warning: iCCP: too short\\n")
        ['PNG input buffer is incomplete', 'libpng warning: iCCP: too short']
    """
    return [_OPENCV_LOG_PREFIX.sub("", line.strip()) for line in text.splitlines() if line.strip()]


@contextlib.contextmanager
def python_warnings_caught():
    """Catch the Python warnings raised while active (e.g. pydicom's "Expected explicit VR, but found implicit
    VR") instead of showing them; when the block ends ``.text`` holds one "Category: message" line each.

    A warning Python has shown once already is caught again, and a UserWarning each time it is raised. The
    warnings module's state is one per process: blocks in different threads must take turns (e.g. each inside
    :func:`tfmed.progress.native_stderr_captured`, or one block around the threads).

    Example:
        >>> with python_warnings_caught() as warned:
        ...     warnings.warn("odd header")
        >>> warned.text
        'UserWarning: odd header'
    """
    caught = CapturedText()
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always", UserWarning)
        try:
            yield caught
        finally:
            caught.text = "\n".join(f"{w.category.__name__}: {w.message}" for w in raised)


def file_kinds(folder: str | Path) -> Counter:
    """How many files of each image kind (None: not an image) ``folder`` holds, its sub-folders not looked into.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("a.png", "b.png", "notes.txt"):
        ...     _ = (folder / name).write_bytes(b"x")
        >>> file_kinds(folder)
        Counter({'png': 2, None: 1})
        >>> folder_contents(folder)
        'it holds 2 PNG files and 1 other file'
    """
    return Counter(image_kind(entry) for entry in Path(folder).iterdir() if entry.is_file())


def folder_contents(folder: str | Path) -> str:
    """What :func:`file_kinds` counts, in words (see its example), e.g. for a row that names a folder."""
    kinds = sorted(file_kinds(folder).items(), key=lambda item: item[0] is None)  # the images first
    held = [f"{count} {kind.upper() if kind else 'other'} file{'s' if count != 1 else ''}" for kind, count in kinds]
    return "it holds " + " and ".join(held) if held else "it holds no file"


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

    A file of any other name (none, or the tail of a UID such as
    ``CT.1.3.12.2.1107.5.1.4.3000002212080811342800001658``, as scanners
    export them) counts as "dicom" when it carries the DICOM marker.

    Example:
        >>> image_kind("scan.DCM"), image_kind("xray.jpeg"), image_kind("notes.txt")
        ('dicom', 'jpeg', None)
    """
    suffix = Path(path).suffix.lower()
    if suffix in RASTER_KINDS:
        return RASTER_KINDS[suffix]
    if suffix in DICOM_EXTENSIONS or has_dicom_marker(path):
        return "dicom"
    return None


# The first bytes of each raster kind; a DICOM file is known by "DICM" at byte 128 (:func:`has_dicom_marker`).
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8"
_SIGNATURES = ((PNG_SIGNATURE, "png"), (JPEG_SIGNATURE, "jpeg"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
               (b"BM", "bmp"))


def kind_by_content(path: str | Path) -> str | None:
    """The kind of image ``path`` holds judged by its bytes, whatever its name (None: no known signature).

    Reading decodes a file as what it is: a JPEG saved as ``.png``, a DICOM file named ``.jpg``.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> kind_by_content(get_testdata_file("CT_small.dcm"))
        'dicom'
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return None
    if head[128:132] == b"DICM":
        return "dicom"
    return next((kind for signature, kind in _SIGNATURES if head.startswith(signature)), None)


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` into a float32 array (H, W, C) of raw values.

    8-bit images keep values 0..255, 16-bit PNG/TIFF keep 0..65535, colour
    comes back RGB (RGBA for 4 channels), DICOM comes back after the modality
    LUT (Hounsfield units for CT); MONOCHROME1 DICOM is inverted so that
    higher values are brighter, as in MONOCHROME2, unless its values are
    Hounsfield units (kept as they are, for a window in HU to read). Images of more than
    ``max_pixels`` pixels (None: no limit) are refused before decoding.

    Raises:
        ImageReadError: missing, empty, corrupt, unsupported, too large or
            undecodable (e.g. compressed DICOM without a decoder plugin).

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> hu = read_image(get_testdata_file("CT_small.dcm"))
        >>> hu.shape, float(hu.min()), float(hu.max())
        ((128, 128, 1), -896.0, 1167.0)
    """
    return read_image_and_info(path, max_pixels)[0]


def image_info(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Height, width, channels, bit depth and kind of ``path`` (decodes the file).

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> info = image_info(get_testdata_file("CT_small.dcm"))
        >>> info.height, info.width, info.channels, info.bit_depth, info.kind, info.hounsfield_units
        (128, 128, 1, 16, 'dicom', True)
    """
    return read_image_and_info(path, max_pixels)[1]


def read_image_and_info(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, *,
                        capture_messages: bool = True) -> tuple[np.ndarray, ImageInfo]:
    """Decode ``path`` once and return both the array and its :class:`ImageInfo`.

    Validation uses this to check every file with a single decode. Images of
    more than ``max_pixels`` pixels (None: no limit) are refused, judged from
    the header, before any pixel is decoded. With ``capture_messages`` what
    OpenCV's decoder prints on stderr is caught (see
    :func:`tfmed.progress.native_stderr_captured`, whose blocks take turns
    across threads), and so are pydicom's Python warnings (see
    :func:`python_warnings_caught`): both go into the error's reason or
    ``info.decoder_output``; without it, they go to stderr and Python's
    warnings, e.g. into captures around several decodes running in parallel.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> array, info = read_image_and_info(get_testdata_file("CT_small.dcm"))
        >>> array.dtype.name, info.kind
        ('float32', 'dicom')
        >>> try:
        ...     read_image_and_info(get_testdata_file("CT_small.dcm"), max_pixels=10_000)
        ... except ImageReadError as error:
        ...     print(error.reason)
        image is 128 x 128 pixels (16384 pixels), over the limit of 10000 pixels
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found",
                             "check the path (relative paths are resolved against the manifest "
                             "root) or remove the row")
    if path.is_dir():
        raise ImageReadError(path, f"is a folder, not an image file ({folder_contents(path)})",
                             "give one image file per row (the path of a file in the folder, not the folder)")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)",
                             "re-export or re-download the image, or remove the row")
    kind = kind_by_content(path) or image_kind(path)
    if kind is None:
        raise ImageReadError(path, f"unsupported file type {path.suffix or '(no extension)'!r} (not an image "
                             "extension, and no DICOM marker)",
                             f"convert it to one of {', '.join(SUPPORTED_EXTENSIONS)}")
    if kind == "dicom":
        return _read_dicom(path, max_pixels, capture_messages)
    return _read_raster(path, kind, max_pixels, capture_messages)


def _check_size(path: Path, width: int, height: int, max_pixels: int | None, frames: int = 1) -> None:
    pixels = width * height * frames
    if max_pixels is not None and pixels > max_pixels:
        shape = f"{width} x {height} pixels" + (f" x {frames} frames" if frames > 1 else "")
        limit = f"over the limit of {_amount(max_pixels)}"
        raise ImageReadError(path, f"image is {shape} ({_amount(pixels)}), {limit}",
                             "downsample the image, or raise data.max_image_pixels")


def _amount(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} megapixels" if pixels >= 100_000 else f"{pixels} pixels"


def header_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, or None when no Pillow format recognises it (e.g. DICOM).

    Pillow's format readers are called as ``PIL.Image.open`` calls them (the
    constructor reads the header only), but without its decompression-bomb
    check: that check reports a pixel count, not width x height, and can only
    be turned off through process-wide settings, unsafe while other threads
    decode. The limit applied here is :func:`read_image_and_info`'s.

    Example:
        >>> import tempfile, pathlib, cv2
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "wide.png"
        >>> _ = cv2.imwrite(str(path), np.zeros((4, 6), np.uint8))
        >>> header_size(path)
        (6, 4)
    """
    return _raster_header(Path(path))[0]


def _raster_header(path: Path) -> tuple[tuple[int, int] | None, int]:
    """((width, height) or None, number of pages) from a raster file's header; one page when unknown."""
    with open(path, "rb") as handle:
        image = _pillow_header(handle, path)
        if image is None:
            return None, 1
        try:  # a TIFF's page chain or an APNG's frame count; no pixel is decoded
            pages = int(getattr(image, "n_frames", 1) or 1)
        except (OSError, ValueError, EOFError, SyntaxError, struct_error):
            pages = 1
        return image.size, pages


def _pillow_header(handle, path: Path):
    """The Pillow image object of an open file, its header read and no pixel decoded (see :func:`header_size`);
    None when no Pillow format recognises it."""
    from PIL import Image

    Image.init()
    prefix = handle.read(16)
    for name in tuple(Image.ID):
        reader, accept = Image.OPEN[name]
        verdict = accept(prefix) if accept is not None else False  # skip formats without a signature
        if not verdict or isinstance(verdict, str):
            continue
        handle.seek(0)
        try:
            return reader(handle, str(path))
        except (SyntaxError, OSError, ValueError, EOFError):
            continue
    return None


def exif_orientation(path: str | Path) -> int:
    """The EXIF Orientation tag (1-8) of an image file: 1 (as stored) when it has none or it cannot be read.

    6 means the camera was turned: the stored pixels must be rotated 90 degrees clockwise to
    show the picture upright, as viewers and ``PIL.ImageOps.exif_transpose`` do.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "turned.jpg"
        >>> exif = Image.Exif()
        >>> exif[0x0112] = 6
        >>> Image.new("L", (4, 2)).save(path, exif=exif)
        >>> exif_orientation(path), read_image(path).shape
        (6, (4, 2, 1))
    """
    try:
        with open(path, "rb") as handle:
            image = _pillow_header(handle, Path(path))
            value = image.getexif().get(0x0112, 1) if image is not None else 1
    except Exception:  # noqa: BLE001  (a broken EXIF block: the pixels are read as stored)
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """An (H, W, C) array turned / mirrored as EXIF ``orientation`` (1-8) says, as viewers show it.

    Example:
        >>> apply_orientation(np.arange(6).reshape(2, 3, 1), 6)[..., 0]
        array([[3, 0],
               [4, 1],
               [5, 2]])
    """
    turned = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
              5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
              7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(turned[orientation](array)) if orientation in turned else array


def _read_raster(path: Path, kind: str, max_pixels: int | None,
                 capture_messages: bool) -> tuple[np.ndarray, ImageInfo]:
    # A header no Pillow format reads (e.g. a PNG with a bad ancillary-chunk checksum) is left to
    # OpenCV, which refuses images of over 2**30 pixels itself.
    try:
        size, pages = _raster_header(path)
        # np.fromfile + imdecode handles non-ASCII paths, which cv2.imread does not on every platform.
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(path, f"cannot be read ({error.strerror})",
                             "check the file permissions") from None
    if pages > 1:  # OpenCV would return the first page alone
        raise ImageReadError(path, f"multi-page {kind.upper()} ({pages} pages); a 2-D image is expected",
                             "save the page to classify as its own file")
    if size is not None:
        _check_size(path, *size, max_pixels)
    capture = native_stderr_captured() if capture_messages else contextlib.nullcontext(CapturedText())
    with capture as printed:
        try:
            array, raised = cv2.imdecode(data, cv2.IMREAD_UNCHANGED), ""
        except cv2.error as error:
            array, raised = None, str(error).strip()
    said = "\n".join(decoder_messages(printed.text) + decoder_messages(raised))
    if array is None or array.size == 0:
        quoted = f"; the decoder said: {' | '.join(said.splitlines())}" if said else ""
        raise ImageReadError(path, f"corrupt or truncated {kind.upper()} (OpenCV could not decode it"
                             f"{quoted})", "re-export or re-download the image, or remove the row",
                             decoder_output=said)
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    elif array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    if kind == "jpeg":  # IMREAD_UNCHANGED ignores a JPEG's EXIF orientation (OpenCV's TIFF reader applies it)
        array = apply_orientation(array, exif_orientation(path))
    bit_depth = array.dtype.itemsize * 8
    info = ImageInfo(height=int(array.shape[0]), width=int(array.shape[1]),
                     channels=int(array.shape[2]), bit_depth=int(bit_depth), kind=kind, decoder_output=said,
                     float_values=array.dtype.kind == "f")
    return array.astype(np.float32), info


def dicom_pixels(path: str | Path, dataset, fix: str) -> np.ndarray:
    """A DICOM dataset's stored pixel values, decoded (every frame of a multi-frame file: frames first).

    Compressed pixel data decodes through pydicom's handlers (the pylibjpeg
    plugins for JPEG, JPEG-LS and JPEG 2000); a transfer syntax no handler
    decodes, or damaged pixel data, raises :class:`ImageReadError` naming the
    file and the transfer syntax, with ``fix`` for the damaged case.

    Example:
        >>> import pydicom
        >>> from pydicom.data import get_testdata_file
        >>> path = get_testdata_file("CT_small.dcm")
        >>> int(dicom_pixels(path, pydicom.dcmread(path), "re-export it").min())
        128
    """
    try:
        return dataset.pixel_array
    except (RuntimeError, NotImplementedError) as error:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        syntax_text = f"{syntax} ({syntax.name})" if syntax is not None else "unknown"
        said = " | ".join(line.strip() for line in str(error).splitlines() if line.strip())
        decompress = "decompress the file first (e.g. gdcmconv --raw / dcmdjpeg)"
        if "missing" in said.lower():  # no plugin for this transfer syntax is installed
            fix = ("install a decoder plugin (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, "
                   f"or python-gdcm), or {decompress}")
        else:  # the installed plugins tried and failed: the encoding or the data
            fix = f"the installed decoders cannot read this encoding or the data are damaged: {decompress}, " \
                  "or re-export the image"
        raise ImageReadError(
            path, f"compressed DICOM with transfer syntax {syntax_text} cannot be decoded: {said}", fix) from None
    except (ValueError, AttributeError, KeyError, TypeError, EOFError) as error:
        raise ImageReadError(path, f"corrupt DICOM pixel data ({type(error).__name__}: {error})", fix) from None


def dicom_values(path: str | Path, dataset, fix: str) -> np.ndarray:
    """A DICOM dataset's pixels after its modality LUT (Hounsfield units for CT), as float32.

    Decoding and its errors are those of :func:`dicom_pixels`.

    Example:
        >>> import pydicom
        >>> from pydicom.data import get_testdata_file
        >>> path = get_testdata_file("CT_small.dcm")
        >>> float(dicom_values(path, pydicom.dcmread(path), "re-export it").min())
        -896.0
    """
    from pydicom.pixels import apply_modality_lut

    return np.asarray(apply_modality_lut(dicom_pixels(path, dataset, fix), dataset), dtype=np.float32)


def _read_dicom(path: Path, max_pixels: int | None, capture_messages: bool) -> tuple[np.ndarray, ImageInfo]:
    """:func:`_decoded_dicom`; with ``capture_messages`` what pydicom warns of (Python warnings, shown once per
    process, not per file) and what native decoders print go into the error's reason or ``info.decoder_output``."""
    if not capture_messages:
        return _decoded_dicom(path, max_pixels)
    failure = None
    with native_stderr_captured() as printed, python_warnings_caught() as warned:  # the first block takes turns
        try:
            array, info = _decoded_dicom(path, max_pixels)
        except ImageReadError as error:
            failure = error
    said = "\n".join(decoder_messages(printed.text) + decoder_messages(warned.text))
    if failure is None:
        return array, replace(info, decoder_output=said)
    if not said:
        raise failure
    raise ImageReadError(path, f"{failure.reason}; the decoder said: {' | '.join(said.splitlines())}", failure.fix,
                         decoder_output=said)


def _decoded_dicom(path: Path, max_pixels: int | None) -> tuple[np.ndarray, ImageInfo]:
    import pydicom
    from pydicom.errors import InvalidDicomError

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
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise ImageReadError(path, f"malformed NumberOfFrames {dataset.get('NumberOfFrames')!r} in the header "
                             "(a whole number is expected)", "re-export the DICOM file, or remove the row") from None
    if isinstance(dataset.get("Rows"), int) and isinstance(dataset.get("Columns"), int):
        _check_size(path, dataset.Columns, dataset.Rows, max_pixels, frames)
    if frames > 1:
        raise ImageReadError(path, f"multi-frame DICOM ({frames} frames); a 2-D image is expected",
                             "export the frame to classify as its own file")
    for element in functional_group_rescale(dataset).values():  # read as a single-frame file's own rescale
        if element.keyword not in dataset:
            dataset[element.tag] = element
    photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
    bit_depth = int(dataset.get("BitsAllocated", 16))
    if photometric == "PALETTE COLOR":
        values, bit_depth = _palette_colours(path, dataset)
    else:
        values = dicom_values(path, dataset, "re-export the DICOM file, or remove the row")
    if photometric == "MONOCHROME1" and not _in_hounsfield_units(dataset):
        values = _monochrome1_inverted(values, dataset)
    if values.ndim == 2:
        values = values[:, :, None]
    info = ImageInfo(height=int(values.shape[0]), width=int(values.shape[1]),
                     channels=int(values.shape[2]), bit_depth=bit_depth, kind="dicom",
                     notes=(NO_RESCALE,) if lacks_rescale(dataset) else (),
                     hounsfield_units=_in_hounsfield_units(dataset))
    return values, info


def _palette_colours(path: Path, dataset) -> tuple[np.ndarray, int]:
    """A PALETTE COLOR image's RGB values through its colour table, and the table's bits per entry."""
    from pydicom.pixels import apply_color_lut

    indices = dicom_pixels(path, dataset, "re-export the DICOM file, or remove the row")
    try:
        rgb = apply_color_lut(indices, dataset)
    except (ValueError, KeyError, AttributeError, IndexError, TypeError) as error:
        raise ImageReadError(path, f"PALETTE COLOR image whose colour table cannot be applied ({error})",
                             "re-export the image as RGB or MONOCHROME2") from None
    descriptor = dataset.get("RedPaletteColorLookupTableDescriptor") or [0, 0, 16]
    return np.asarray(rgb, dtype=np.float32), int(descriptor[2]) if int(descriptor[2]) in (8, 16) else 16


def _in_hounsfield_units(dataset) -> bool:
    """Whether the modality LUT gives Hounsfield units (CT, or a rescale of type HU): values measured in
    physical units, which a window in HU reads as they are, whatever the display's photometric setting."""
    return str(dataset.get("Modality", "")).upper() == "CT" or str(dataset.get("RescaleType", "")).upper() == "HU"


def _monochrome1_inverted(values: np.ndarray, dataset) -> np.ndarray:
    """MONOCHROME1 values (low is bright) turned over the range the header allows, not the image's own
    (so a stored value gives the same output in every image of a series or scanner)."""
    from pydicom.pixels import apply_modality_lut

    bits = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 16)) or 16)
    signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
    stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2 ** bits - 1])
    low, high = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    return (low + high - values).astype(np.float32)
