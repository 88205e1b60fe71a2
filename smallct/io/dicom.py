"""DICOM: from a CT slice file to Hounsfield units, windows and RGB uint8 (H, W, 3).

Readers at the edge (:func:`read_hu`, :func:`to_rgb`, :func:`read_header`, :func:`read_headers`) and one
pure function on arrays (:func:`crop_to_body`); the windows themselves are :mod:`smallct.io.windows`.

Conventions (documented once, here):

* **HU** = stored pixel * RescaleSlope + RescaleIntercept (DICOM's modality rescale). A file without
  the rescale tags is read with slope 1 and intercept 0, and a warning names the file.
* **RSNA bad intercept**: when BitsStored == 12, PixelRepresentation == 0 and RescaleIntercept > -100,
  the stored values are offset; they are fixed as the top RSNA 2019 solutions did:
  ``x = pixels + 1000; x[x >= 4096] -= 4096; intercept = -1000`` (see :func:`has_bad_intercept`).
* **Windows** are (centre, width) in HU, as in :mod:`smallct.io.windows`; ``"header"`` names the
  file's own window (the first value when the tag is multi-valued).
* **Validation**: RSNA ids such as ``ID_4be303ae64`` are not valid DICOM UIDs, and pydicom 3 warns
  ``Invalid value for VR UI`` on every RSNA file. The readers silence that one warning, deliberately
  and only while they read; every other pydicom warning still shows.
* **Errors**: any unreadable, truncated or non-image file, a multi-frame or colour file, or a
  compressed file without an installed decoder raises ``ValueError`` starting with the file path
  (for a missing decoder: the transfer syntax and the package to install).
* Decoders (pydicom 3 plugins): JPEG Lossless (.57, .70) via ``python-gdcm``; JPEG 2000 via
  ``pylibjpeg`` + ``pylibjpeg-openjpeg`` or ``python-gdcm``; RLE by pydicom itself.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom import uid
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder

from smallct.io.images import crop_to_mask, resize_rgb
from smallct.io.windows import DEFAULT_WINDOWS, HEADER_WINDOW, Window, WindowSpec, hu_to_rgb
from smallct.parallel import parallel_map

AIR_HU = -1024.0  # lowest value a CT scanner reconstructs (raw 0 at intercept -1024); padding goes here
BODY_HU = -500.0  # HU above which a pixel is part of the body (skin, fat, brain, bone), not air


# --- reading -------------------------------------------------------------------------------------

# Packages that give pydicom 3 a decoder, by transfer syntax (permissive licences first).
_JPEG = "python-gdcm (or pylibjpeg + pylibjpeg-libjpeg, GPLv3)"
_J2K = "pylibjpeg + pylibjpeg-openjpeg (or python-gdcm)"
DECODER_PACKAGES: dict[str, str] = {
    uid.JPEGBaseline8Bit: _JPEG, uid.JPEGExtended12Bit: _JPEG,
    uid.JPEGLossless: _JPEG, uid.JPEGLosslessSV1: _JPEG,
    uid.JPEGLSLossless: "python-gdcm (or pyjpegls)", uid.JPEGLSNearLossless: "python-gdcm (or pyjpegls)",
    uid.JPEG2000Lossless: _J2K, uid.JPEG2000: _J2K,
    uid.HTJ2KLossless: "pylibjpeg + pylibjpeg-openjpeg", uid.HTJ2KLosslessRPCL: "pylibjpeg + pylibjpeg-openjpeg",
    uid.HTJ2K: "pylibjpeg + pylibjpeg-openjpeg",
    uid.RLELossless: "pylibjpeg-rle (pydicom decodes RLE itself)",
}


_UID_COMPLAINT = "Invalid value for VR UI"


def _not_uid_complaint(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_UID_COMPLAINT)


@contextmanager
def allow_rsna_uids():
    """Within the block, silence pydicom's ``Invalid value for VR UI`` and nothing else.

    RSNA ids (``ID_4be303ae64``) are not DICOM UIDs; pydicom 3 both warns and logs this on every
    RSNA file it reads or writes. Both the warning and the log record are dropped.
    """
    logger = logging.getLogger("pydicom")
    logger.addFilter(_not_uid_complaint)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_UID_COMPLAINT, category=UserWarning)
            yield
    finally:
        logger.removeFilter(_not_uid_complaint)


def _open(path: str | Path, pixels: bool = True) -> pydicom.Dataset:
    """Read a file and check that it is one grey image; ``ValueError`` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        # force: headerless (no 'DICM' preamble) DICOM exists; a non-DICOM file fails the checks below
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=not pixels)
        missing = [k for k in ("Rows", "Columns") + (("PixelData",) if pixels else ()) if k not in ds]
        samples = ds.get("SamplesPerPixel", 1)
        frames = ds.get("NumberOfFrames", 1)
        colour = ds.get("PhotometricInterpretation", "?")
    except Exception as err:  # pydicom raises many types on corrupt input (EOFError, struct.error, ...)
        raise ValueError(f"{path}: cannot read DICOM ({type(err).__name__}: {err})") from None
    if missing:
        what = "not a DICOM file" if len(ds) == 0 else "not a DICOM image"
        raise ValueError(f"{path}: {what} (no {', '.join(missing)})")
    if samples not in (None, 1):
        raise ValueError(f"{path}: {samples} samples per pixel ({colour}); a CT slice is one grey channel")
    if frames not in (None, "", 1):
        raise ValueError(f"{path}: {frames} frames; a CT slice is one frame (split the file first)")
    return ds


def _transfer_syntax(ds: pydicom.Dataset) -> uid.UID:
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None:  # headerless file: native pixels in the encoding pydicom found
        implicit, little = ds.original_encoding
        ts = uid.ImplicitVRLittleEndian if implicit else (
            uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)
        ds.file_meta.TransferSyntaxUID = ts
    return uid.UID(ts)


def _decode(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """The stored pixel values (H, W), integer; ``ValueError`` naming the file on any problem."""
    ts = _transfer_syntax(ds)
    if ts.is_compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            raise ValueError(f"{path}: transfer syntax {ts} ({ts.name}) has no pixel decoder in pydicom") from None
        if not decoder.is_available:
            package = DECODER_PACKAGES.get(ts, "a pydicom pixel decoder plugin")
            raise ValueError(f"{path}: no decoder installed for transfer syntax {ts} ({ts.name}); "
                             f"install {package}")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # truncated data, broken codestream, inconsistent group 0028
        raise ValueError(f"{path}: cannot decode pixel data ({type(err).__name__}: {err})") from None
    if pixels.shape != (ds.Rows, ds.Columns):
        raise ValueError(f"{path}: decoded pixels of shape {pixels.shape}, expected (Rows, Columns) = "
                         f"({ds.Rows}, {ds.Columns})")
    return pixels


def _number(ds: pydicom.Dataset, keyword: str, path: Path) -> float | None:
    """First value of a numeric tag as float, None when absent or empty."""
    value = ds.get(keyword)
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {keyword} {value!r} is not a number") from None


def has_bad_intercept(bits_stored: Any, pixel_representation: Any, intercept: Any) -> bool:
    """True for the RSNA 2019 bad-intercept images: BitsStored 12, unsigned, RescaleIntercept > -100."""
    if bits_stored is None or pixel_representation is None or intercept is None:
        return False
    return int(bits_stored) == 12 and int(pixel_representation) == 0 and float(intercept) > -100


def _hu(ds: pydicom.Dataset, path: Path, fix_bad_intercept: bool, mask_padding: bool) -> np.ndarray:
    pixels = _decode(ds, path)
    slope = _number(ds, "RescaleSlope", path)
    intercept = _number(ds, "RescaleIntercept", path)
    if slope is None or intercept is None:
        absent = " and ".join(k for k, v in (("RescaleSlope", slope), ("RescaleIntercept", intercept)) if v is None)
        warnings.warn(f"{path}: no {absent}; using slope 1 and intercept 0 (values may not be HU)", stacklevel=3)
    bad = has_bad_intercept(ds.get("BitsStored"), ds.get("PixelRepresentation"), intercept)
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    raw = pixels.astype(np.int32)
    if fix_bad_intercept and bad:
        raw = raw + 1000
        raw[raw >= 4096] -= 4096
        intercept = -1000.0
    hu = (raw * slope + intercept).astype(np.float32)
    if mask_padding:
        padding = ds.get("PixelPaddingValue")
        if isinstance(padding, int):
            hu[pixels == padding] = AIR_HU
        np.maximum(hu, AIR_HU, out=hu)
    return hu


def read_hu(path: str | Path, *, fix_bad_intercept: bool = True, mask_padding: bool = False) -> np.ndarray:
    """Read one CT slice in Hounsfield units.

    Parameters
    ----------
    path
        A DICOM file: native or compressed (JPEG Lossless, JPEG 2000, RLE, ...), signed or unsigned.
    fix_bad_intercept
        Fix the RSNA bad-intercept images (see :func:`has_bad_intercept`).
    mask_padding
        Set the padding outside the scan field (PixelPaddingValue, or anything below
        :data:`AIR_HU`, such as raw -2000 = -3024 HU) to air, -1024 HU.

    Returns
    -------
    numpy.ndarray
        float32, shape (Rows, Columns), HU = pixels * RescaleSlope + RescaleIntercept.

    Raises
    ------
    ValueError
        Starting with the path: no such file, not DICOM, no Rows / Columns / PixelData, truncated or
        corrupt pixel data, several frames or colour samples, or no decoder for the transfer syntax.
    """
    path = Path(path)
    with allow_rsna_uids():
        return _hu(_open(path), path, fix_bad_intercept, mask_padding)


def _header_window(ds: pydicom.Dataset, path: Path) -> Window | None:
    center, width = _number(ds, "WindowCenter", path), _number(ds, "WindowWidth", path)
    if center is None or width is None or not width > 0:
        return None
    return Window(center, width, f"file header of {path.name}")


def read_window(path: str | Path) -> Window:
    """The file's own window (WindowCenter, WindowWidth in HU; first value when multi-valued)."""
    path = Path(path)
    with allow_rsna_uids():
        header = _header_window(_open(path, pixels=False), path)
    if header is None:
        raise ValueError(f"{path}: no usable WindowCenter / WindowWidth")
    return header


def crop_to_body(hu: np.ndarray, threshold: float = BODY_HU, margin: int = 2) -> np.ndarray:
    """Crop the air around the head: the bounding box of pixels above ``threshold`` HU.

    ``hu`` is (H, W) or (H, W, C) (the first channel is thresholded). Returns the input unchanged
    when no pixel is above ``threshold``. The box holds every such pixel, so a head rest or table
    in the field stays in.
    """
    return crop_to_mask(hu, (hu if hu.ndim == 2 else hu[..., 0]) > threshold, margin)


def to_rgb(path: str | Path, windows: Sequence[WindowSpec] = DEFAULT_WINDOWS,
           size: int | None = None, crop: bool = True) -> np.ndarray:
    """Read a CT slice as RGB uint8, one window per channel.

    Parameters
    ----------
    path
        A DICOM file (see :func:`read_hu`); padding outside the scan field becomes air (black).
    windows
        Three windows: names in :data:`WINDOWS`, ``"header"`` (the file's own), :class:`Window`
        or (center, width) pairs in HU.
    size
        When given, resize to (size, size) px keeping the aspect ratio (black padding).
    crop
        Crop to the body (pixels above -500 HU) before resizing.

    Returns
    -------
    numpy.ndarray
        uint8, shape (H, W, 3), or (size, size, 3).
    """
    path = Path(path)
    with allow_rsna_uids():
        ds = _open(path)
        hu = _hu(ds, path, fix_bad_intercept=True, mask_padding=True)
        header = _header_window(ds, path)
    if HEADER_WINDOW in windows and header is None:
        raise ValueError(f"{path}: window 'header' asked for, but the file has no usable WindowCenter / WindowWidth")
    if crop:
        hu = crop_to_body(hu)
    rgb = hu_to_rgb(hu, windows, header)
    return rgb if size is None else resize_rgb(rgb, size, "pad")


# --- headers -------------------------------------------------------------------------------------

HEADER_COLUMNS = ("path", "SOPInstanceUID", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                  "x", "y", "z", "rx", "ry", "rz", "cx", "cy", "cz",
                  "Rows", "Columns", "WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept",
                  "BitsStored", "PixelRepresentation", "TransferSyntaxUID", "bad_intercept")
_INT_COLUMNS = ("Rows", "Columns", "BitsStored", "PixelRepresentation")


def read_header(path: str | Path) -> dict:
    """The header facts of one slice, without reading its pixels.

    Returns
    -------
    dict
        Keys :data:`HEADER_COLUMNS`: ids as str (None when absent); ``x, y, z`` = ImagePositionPatient
        in mm and ``rx, ry, rz, cx, cy, cz`` = ImageOrientationPatient (direction cosines of the rows, then
        of the columns), all NaN when the tag is absent or malformed (the order along the slice normal is
        :func:`smallct.io.series.order_slices`'s); WindowCenter / WindowWidth (first value) and RescaleSlope /
        RescaleIntercept in HU (NaN when absent); Rows, Columns, BitsStored, PixelRepresentation as
        int (None when absent); ``bad_intercept`` as :func:`has_bad_intercept`.

    Raises
    ------
    ValueError
        Starting with the path, when the file is not a readable single-frame grey DICOM image.
        Pixel data is not read, so truncated pixels show only in :func:`read_hu`.
    """
    path = Path(path)
    with allow_rsna_uids():
        ds = _open(path, pixels=False)
        nan = float("nan")

        def number(keyword: str) -> float:
            value = _number(ds, keyword, path)
            return nan if value is None else value

        def integer(keyword: str) -> int | None:
            value = ds.get(keyword)
            return None if value is None or value == "" else int(value)

        def text(keyword: str) -> str | None:
            value = ds.get(keyword)
            return None if value is None else str(value)

        def numbers(keyword: str, names: tuple[str, ...]) -> dict:
            value = ds.get(keyword)
            try:
                values = [float(v) for v in value] if value is not None and len(value) == len(names) else None
            except (TypeError, ValueError):
                values = None
            return dict(zip(names, values or [nan] * len(names)))

        row = {
            "path": str(path),
            "SOPInstanceUID": text("SOPInstanceUID"),
            "PatientID": text("PatientID"),
            "StudyInstanceUID": text("StudyInstanceUID"),
            "SeriesInstanceUID": text("SeriesInstanceUID"),
            **numbers("ImagePositionPatient", ("x", "y", "z")),
            **numbers("ImageOrientationPatient", ("rx", "ry", "rz", "cx", "cy", "cz")),
            "Rows": integer("Rows"),
            "Columns": integer("Columns"),
            "WindowCenter": number("WindowCenter"),
            "WindowWidth": number("WindowWidth"),
            "RescaleSlope": number("RescaleSlope"),
            "RescaleIntercept": number("RescaleIntercept"),
            "BitsStored": integer("BitsStored"),
            "PixelRepresentation": integer("PixelRepresentation"),
            "TransferSyntaxUID": str(_transfer_syntax(ds)),
        }
    row["bad_intercept"] = has_bad_intercept(row["BitsStored"], row["PixelRepresentation"],
                                             None if np.isnan(row["RescaleIntercept"]) else row["RescaleIntercept"])
    return row


def _header_row(path: str | Path) -> dict:
    try:
        return {**read_header(path), "error": None}
    except ValueError as err:
        return {"path": str(path), "error": str(err)}


def read_headers(files: Iterable[str | Path], workers: int = 0, progress: bool = True):
    """Read the headers of many slices in parallel: one row per file.

    Parameters
    ----------
    files
        DICOM paths.
    workers
        Processes; 0 uses every core, 1 reads in this process.
    progress
        Show a tqdm progress bar.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`HEADER_COLUMNS` + ``error``, in the order of ``files``. A file that cannot be
        read is a row with its path and the message in ``error`` (None for good files); the batch goes on.
    """
    files = [str(f) for f in files]
    rows = list(parallel_map(_header_row, files, workers, progress, desc="DICOM headers", unit="file",
                             max_chunk=256))
    table = pd.DataFrame(rows, columns=[*HEADER_COLUMNS, "error"])
    for col in _INT_COLUMNS:
        table[col] = table[col].astype("Int64")
    table["bad_intercept"] = table["bad_intercept"].astype("boolean")
    return table
