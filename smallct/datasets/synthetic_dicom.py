"""A synthetic RSNA-like head-CT DICOM set: real tags, real encodings, real quirks, no download.

:func:`write_synthetic_rsna` writes one study with one axial series per patient, slices of
:func:`smallct.datasets.phantom.head_phantom_hu`, in the encodings met in RSNA 2019 and CQ500:

* native signed int16 (padding outside the scan field at raw -2000 = -3024 HU),
* native unsigned 12-bit,
* RLE Lossless (pydicom's encoder), JPEG 2000 lossless (pylibjpeg-openjpeg),
* JPEG Lossless .70 (CQ500's encoding) through python-gdcm, whose ``ImageChangeTransferSyntax``
  encodes it losslessly (pydicom itself has no .70 encoder); skipped when gdcm is missing,
* one file with the RSNA bad-intercept quirk, stored so that the documented fix gives the right HU,
* one file with truncated pixel data (like RSNA's ``ID_6431af929``),

and ``labels.csv`` in RSNA long format (``ID,Label``, six rows per image, ``any`` last as in
``stage_2_train.csv``). :func:`write_ct_slice` writes one slice with chosen stored values and tags.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import FileMetaDataset

from smallct.io.dicom import allow_rsna_uids
from smallct.datasets.phantom import head_phantom_hu
from smallct.datasets.rsna import LABELS, SUBTYPES
from smallct.datasets.synthetic_lesions import draw_lesions, head_geometry, plan_lesions, slice_labels

PADDING_RAW = -2000  # stored value outside the scan field (signed files), -3024 HU at intercept -1024

# Encodings of the synthetic set, cycled over slices: mostly native signed, as in RSNA.
FORMATS = ("int16", "uint12", "rle", "int16", "j2k", "jpeg-lossless")


def _jpeg_lossless(ds: pydicom.Dataset, path: Path) -> None:
    """Re-encode ``ds`` (native) as JPEG Lossless SV1 (.70) with gdcm, keeping ``ds``'s own tags."""
    import gdcm  # optional here: without it the synthetic set leaves JPEG Lossless out (see write_synthetic_rsna)

    native, encoded = path.with_suffix(".native.tmp"), path.with_suffix(".jpeg.tmp")
    ds.save_as(native, enforce_file_format=True)
    try:
        reader = gdcm.ImageReader()
        reader.SetFileName(str(native))
        if not reader.Read():
            raise ValueError(f"{native}: gdcm cannot read the native slice")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise ValueError(f"{path}: gdcm could not encode JPEG Lossless")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(encoded))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise ValueError(f"{encoded}: gdcm could not write the JPEG Lossless slice")
        # take only the codestream: gdcm's writer adds tags (Study Date, Rescale Type, ...)
        ds.PixelData = pydicom.dcmread(encoded).PixelData
    finally:
        native.unlink(missing_ok=True)
        encoded.unlink(missing_ok=True)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid.JPEGLosslessSV1


def write_ct_slice(path: str | Path, pixels: np.ndarray, *, intercept: float | None = -1024.0,
                   slope: float | None = 1.0, bits_stored: int | None = None,
                   window: tuple | None = (40, 80), transfer_syntax: str = uid.ExplicitVRLittleEndian,
                   **tags) -> Path:
    """Write one axial CT slice with the sparse header of an RSNA file.

    Parameters
    ----------
    path
        The file to write.
    pixels
        Stored values (H, W): int16 (PixelRepresentation 1) or uint16 (PixelRepresentation 0).
    intercept, slope
        RescaleIntercept and RescaleSlope; None leaves the tag out.
    bits_stored
        BitsStored (default 16); HighBit follows.
    window
        (WindowCenter, WindowWidth) in HU, each a number or a list (a MultiValue); None leaves them out.
    transfer_syntax
        Native (Explicit VR Little Endian), RLE Lossless, JPEG 2000 Lossless (at least 32 px per side:
        openjpeg encodes 6 resolutions) or JPEG Lossless SV1 (.70, needs python-gdcm).
    **tags
        More elements by keyword (SOPInstanceUID, PatientID, ImagePositionPatient, ImageOrientationPatient
        (default axial, ``[1, 0, 0, 0, 1, 0]``), ...); None leaves ImagePositionPatient or
        ImageOrientationPatient out.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.int16, np.uint16):
        raise ValueError(f"{path}: pixels of shape {pixels.shape} and dtype {pixels.dtype}; expected (H, W) "
                         "int16 or uint16")
    bits_stored = 16 if bits_stored is None else bits_stored
    transfer_syntax = uid.UID(transfer_syntax)
    if transfer_syntax in (uid.JPEG2000Lossless, uid.JPEG2000) and min(pixels.shape) < 32:
        raise ValueError(f"{path}: {pixels.shape[0]}x{pixels.shape[1]} px is too small for JPEG 2000 "
                         "(openjpeg needs 32 px per side)")
    with allow_rsna_uids():
        ds = pydicom.Dataset()
        sop = tags.pop("SOPInstanceUID", uid.generate_uid(entropy_srcs=[str(path.name)]))
        ds.SOPClassUID = uid.CTImageStorage
        ds.SOPInstanceUID = sop
        ds.Modality = "CT"
        ds.PatientID = tags.pop("PatientID", "ID_00000000")
        ds.StudyInstanceUID = tags.pop("StudyInstanceUID", "ID_0000000000")
        ds.SeriesInstanceUID = tags.pop("SeriesInstanceUID", "ID_0000000000")
        ds.StudyID = ""
        for keyword, default in (("ImagePositionPatient", [-125.0, -125.0, 0.0]),
                                 ("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])):
            value = tags.pop(keyword, default)
            if value is not None:  # None leaves the tag out
                setattr(ds, keyword, list(value))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing = [round(250.0 / max(pixels.shape), 6)] * 2
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = int(pixels.dtype == np.int16)
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        if intercept is not None:
            ds.RescaleIntercept = intercept
        if slope is not None:
            ds.RescaleSlope = slope
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()

        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = uid.CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid(entropy_srcs=[str(sop)])
        ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
        if transfer_syntax == uid.JPEGLosslessSV1:
            _jpeg_lossless(ds, path)
        elif transfer_syntax != uid.ExplicitVRLittleEndian:
            ds.compress(transfer_syntax, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
    return path


def _hex_ids(rng: np.random.Generator, n: int, digits: int, taken: set) -> list[str]:
    """``n`` new ids ``ID_<digits hex>``, none in ``taken`` (which they join)."""
    ids = []
    while len(ids) < n:
        text = f"ID_{int(rng.integers(0, 16 ** digits)):0{digits}x}"
        if text not in taken:
            taken.add(text)
            ids.append(text)
    return ids


def _stored(hu: np.ndarray, fmt: str) -> dict:
    """Stored pixels and tags that give back ``hu`` (integer HU) through :func:`smallct.io.dicom.read_hu`."""
    if fmt == "quirk":
        # RSNA bad intercept: the fix x = p + 1000, x[x >= 4096] -= 4096, intercept -1000
        # inverts p = HU mod 4096 for HU in -1000..3095.
        stored = np.mod(np.clip(hu, -1000, 3095), 4096).astype(np.uint16)
        return dict(pixels=stored, bits_stored=12, intercept=0.0)
    if fmt == "uint12":
        return dict(pixels=np.clip(hu + 1024, 0, 4095).astype(np.uint16), bits_stored=12)
    raw = (hu + 1024).astype(np.int16)
    size = hu.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    raw[(yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2 > (size / 2) ** 2] = PADDING_RAW
    syntax = {"rle": uid.RLELossless, "j2k": uid.JPEG2000Lossless, "jpeg-lossless": uid.JPEGLosslessSV1}
    return dict(pixels=raw, transfer_syntax=syntax.get(fmt, uid.ExplicitVRLittleEndian))


def tilted_geometry(tilt: float, start: float, n: int, spacing: float = 5.0) -> tuple[list, np.ndarray]:
    """ImageOrientationPatient and (n, 3) ImagePositionPatient of ``n`` slices ``spacing`` mm apart from ``start``.

    The slice planes are tilted by ``tilt`` degrees about the x axis (gantry tilt); with a tilt, each slice's
    corner also moves within its plane by +-``spacing`` / tan(tilt) mm, alternately (a reconstruction centre per
    slice), so that ImagePositionPatient[2] orders neighbouring slices backwards while the position along the
    normal, dot(position, row x column), grows by ``spacing`` per slice. Without tilt: axial
    (``[1, 0, 0, 0, 1, 0]``), z = ``start + spacing * k``.
    """
    along = start + spacing * np.arange(n)
    if not tilt:
        return [1, 0, 0, 0, 1, 0], np.stack([np.full(n, -125.0), np.full(n, -125.0), along], axis=1)
    t = np.deg2rad(tilt)
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(t), np.sin(t)])
    shift = (spacing / np.tan(t)) * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    positions = np.array([-125.0, -125.0, 0.0]) + along[:, None] * np.cross(row, col) + shift[:, None] * col
    # DICOM decimal strings hold 16 characters: 4 decimals, as scanners write them
    return np.round(np.r_[row, col], 6).tolist(), np.round(positions, 4)


def write_synthetic_rsna(out: str | Path, n_patients: int = 6, slices_per_series: int = 5, seed: int = 0,
                         size: int = 64, tilt: float = 0.0, *, lesions: str = "simple", contrast: float = 10.0,
                         span: tuple[int, int] = (3, 8), rate: float = 0.5, noise: float = 4.0,
                         formats: tuple[str, ...] | None = None) -> dict:
    """Write a small RSNA-like DICOM set and its ``labels.csv``; deterministic under ``seed``.

    Half the patients (rounded up) have a bleed: a hyperdense lesion on a run of adjacent slices,
    of one or two subtypes drawn at random (``any`` = 1 on those slices). Slice files are
    ``out/<SOPInstanceUID>.dcm``; encodings cycle through :data:`FORMATS`, plus one bad-intercept
    file and one truncated file (both with labels, as in RSNA).

    Parameters
    ----------
    out
        Output folder (created).
    n_patients, slices_per_series
        One study of one series per patient; at least 2 slices in all.
    seed
        Seed of every random choice (ids, heads, lesions, subtypes, which file is broken).
    size
        Slice side in pixels.
    tilt
        Gantry tilt in degrees (:func:`tilted_geometry`): 0 gives axial slices 5 mm apart in z; otherwise the
        slices are 5 mm apart along their tilted normal and ImagePositionPatient[2] does not order them.
    lesions
        ``"simple"`` (the default, above) or ``"context"``: a set that needs series context
        (:mod:`smallct.datasets.synthetic_lesions`): each series is one phantom head with fresh noise (``noise``
        HU, sd) on every slice; a series bleeds with probability ``rate``, with 1-4 bleeds of a subtype each
        (shares near RSNA's), each on a contiguous run of ``span`` slices, faint (``contrast`` HU above the
        brain) and shaped by its subtype; the defaults give about 14% of slices with ``any`` at 40 slices per
        series. ``contrast``, ``span``, ``rate`` and ``noise`` apply to ``"context"`` only.
    formats
        Encodings to cycle through (default :data:`FORMATS`); ``("int16",)`` writes a large set faster. The
        bad-intercept and the truncated file are planted whatever ``formats``.

    Returns
    -------
    dict
        ``root`` (Path), ``labels`` (Path of labels.csv), ``files`` (sorted Paths), ``corrupt`` and
        ``quirk`` (image ids), ``formats`` ({image id: encoding}), ``series`` ({SeriesInstanceUID:
        image ids in slice order along the normal: increasing z when untilted}), and with ``"context"``
        ``lesions`` ({SeriesInstanceUID: its :class:`~smallct.datasets.synthetic_lesions.Lesion` list}). Files are
        named by their random ids, so their names do not follow the slice order; no file has an InstanceNumber.
    """
    if lesions not in ("simple", "context"):
        raise ValueError(f"lesions={lesions!r}: expected 'simple' or 'context'")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = n_patients * slices_per_series
    if n < 2:
        raise ValueError(f"n_patients={n_patients}, slices_per_series={slices_per_series}: need at least 2 "
                         "slices (one is truncated, one has the bad intercept)")
    # python-gdcm is the only encoder of JPEG Lossless (.70): without it that encoding is left out
    formats = tuple(FORMATS if formats is None else formats)
    if not importlib.util.find_spec("gdcm"):
        formats = tuple(f for f in formats if f != "jpeg-lossless") or ("int16",)
    rng = np.random.default_rng(seed)  # ids, labels, choices: the same whatever ``size``
    noise_sd, noise = noise, np.random.default_rng([seed, 1])  # the context set's noise sd; every set's noise
    taken: set[str] = set()
    image_ids = _hex_ids(rng, n, 9, taken)
    corrupt, quirk = (image_ids[i] for i in rng.choice(n, 2, replace=False))
    positive_patients = set(rng.permutation(n_patients)[: (n_patients + 1) // 2].tolist())

    rows, files, kinds, series, planned = ["ID,Label"], [], {}, {}, {}
    plan_rng = np.random.default_rng([seed, 2])  # the context set's bleeds: a stream of their own
    for p in range(n_patients):
        patient, = _hex_ids(rng, 1, 8, taken)
        study, series_uid = _hex_ids(rng, 2, 10, taken)
        head_seed = int(rng.integers(2**31))
        bleed = np.zeros(slices_per_series, bool)
        subtypes: set[str] = set()
        if p in positive_patients:
            length = int(rng.integers(1, slices_per_series + 1))
            start = int(rng.integers(0, slices_per_series - length + 1))
            bleed[start:start + length] = True
            subtypes = set(rng.choice(SUBTYPES, int(rng.integers(1, 3)), replace=False).tolist())
        if lesions == "context":
            planned[series_uid] = plan_lesions(plan_rng, slices_per_series, rate=rate, span=span)
            present_by_slice = slice_labels(planned[series_uid], slices_per_series)
            base = head_phantom_hu(size, rng=np.random.default_rng(head_seed)).astype(np.float64)
            geometry = head_geometry(base)
        z0 = float(rng.uniform(-50, 50))
        orientation, positions = tilted_geometry(tilt, z0, slices_per_series)
        ids = image_ids[p * slices_per_series:(p + 1) * slices_per_series]
        series[series_uid] = ids
        for s, image_id in enumerate(ids):
            # one head per series: the same geometry (and lesion place) on every slice, fresh noise
            if lesions == "context":
                hu = draw_lesions(base.copy(), geometry, planned[series_uid], s, contrast)
                hu = np.round(hu + noise.normal(0, noise_sd, hu.shape)).astype(np.int32)
            else:
                hu = head_phantom_hu(size, lesion=bool(bleed[s]), rng=np.random.default_rng(head_seed))
                hu = np.round(hu + noise.normal(0, 2.0, hu.shape)).astype(np.int32)
            k = p * slices_per_series + s
            fmt = "quirk" if image_id == quirk else formats[k % len(formats)]
            if image_id == corrupt:
                fmt = "truncated"
            window = ([40, 600], [80, 2800]) if k % 3 == 2 else (40, 80)
            path = out / f"{image_id}.dcm"
            write_ct_slice(path, **_stored(hu, "int16" if fmt == "truncated" else fmt), window=window,
                           SOPInstanceUID=image_id, PatientID=patient, StudyInstanceUID=study,
                           SeriesInstanceUID=series_uid, ImagePositionPatient=positions[s].tolist(),
                           ImageOrientationPatient=orientation)
            if fmt == "truncated":
                data = path.read_bytes()
                path.write_bytes(data[: len(data) - hu.size // 2])  # a quarter of the pixel data lost
            files.append(path)
            kinds[image_id] = fmt
            present = {t: int(bleed[s] and t in subtypes) for t in SUBTYPES}
            present["any"] = int(bleed[s])
            if lesions == "context":
                present = dict(zip(LABELS, present_by_slice[s].tolist()))
            rows += [f"{image_id}_{t},{present[t]}" for t in (*SUBTYPES, "any")]
    labels = out / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return {"root": out, "labels": labels, "files": sorted(files), "corrupt": corrupt, "quirk": quirk,
            "formats": kinds, "series": series, **({"lesions": planned} if lesions == "context" else {})}
