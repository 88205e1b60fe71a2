import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom import uid
from pydicom.encaps import encapsulate

from smallct.io.dicom import (AIR_HU, crop_to_body, has_bad_intercept, read_header, read_headers, read_hu,
                              read_window, to_rgb)
from smallct.io.windows import get_window, Window, window, WINDOWS
from smallct.datasets.synthetic_dicom import write_ct_slice

BUNDLED = Path(pydicom.data.__file__).parent / "test_files"  # shipped in the wheel: no network
RSNA_SAMPLE_FILE = "ID_e0cc6a4b5.dcm"  # the one real RSNA slice, in the shared rsna_sample folder


def bundled(name: str) -> Path:
    path = BUNDLED / name
    if not path.is_file():
        pytest.skip(f"{name} is not bundled with this pydicom")
    return path


def names_file(path):
    return re.escape(str(path))


# --- HU ------------------------------------------------------------------------------------------

def test_read_hu_signed_known_values(tmp_path):
    raw = np.array([[-2000, 0, 1], [1024, 1064, 3000]], np.int16)
    path = write_ct_slice(tmp_path / "s.dcm", raw, intercept=-1024, slope=2)
    hu = read_hu(path)
    assert hu.dtype == np.float32 and hu.shape == (2, 3)
    np.testing.assert_array_equal(hu, [[-5024, -1024, -1022], [1024, 1104, 4976]])


def test_read_hu_unsigned_known_values(tmp_path):
    raw = np.array([[0, 24, 1024], [1064, 2048, 4095]], np.uint16)
    path = write_ct_slice(tmp_path / "u.dcm", raw, intercept=-1024, slope=1, bits_stored=12)
    np.testing.assert_array_equal(read_hu(path), [[-1024, -1000, 0], [40, 1024, 3071]])


def test_read_hu_fractional_rescale(tmp_path):
    raw = np.array([[0, 1], [2, 3]], np.int16)
    path = write_ct_slice(tmp_path / "f.dcm", raw, intercept=-1000.5, slope=0.5)
    np.testing.assert_array_equal(read_hu(path), [[-1000.5, -1000.0], [-999.5, -999.0]])


@pytest.mark.parametrize("syntax", [uid.RLELossless, uid.JPEG2000Lossless, uid.JPEGLosslessSV1],
                         ids=["rle", "jpeg2000", "jpeg-lossless-70"])
def test_read_hu_compressed_is_lossless(tmp_path, syntax):
    raw = np.random.default_rng(0).integers(-2000, 3000, (40, 36)).astype(np.int16)
    path = write_ct_slice(tmp_path / "c.dcm", raw, transfer_syntax=syntax)
    assert read_header(path)["TransferSyntaxUID"] == syntax
    np.testing.assert_array_equal(read_hu(path), raw.astype(np.float32) - 1024)


def test_bad_intercept_is_detected_and_fixed(tmp_path):
    hu = np.array([[-1000, -1000, -5, 0], [40, 75, 1000, 3095]])
    clean = write_ct_slice(tmp_path / "clean.dcm", (hu + 1024).astype(np.int16), intercept=-1024)
    # RSNA's bad files: 12 bits, unsigned, intercept > -100, stored so that the documented fix
    # (x = p + 1000; x[x >= 4096] -= 4096; intercept = -1000) gives HU: p = HU mod 4096
    stored = np.mod(hu, 4096).astype(np.uint16)
    assert stored[0, 0] == 3096 and stored[1, 0] == 40
    quirk = write_ct_slice(tmp_path / "quirk.dcm", stored, intercept=0, bits_stored=12)
    assert read_header(quirk)["bad_intercept"] and not read_header(clean)["bad_intercept"]
    np.testing.assert_array_equal(read_hu(quirk), read_hu(clean))
    np.testing.assert_array_equal(read_hu(clean), hu)
    # unfixed, air reads as dense bone
    assert read_hu(quirk, fix_bad_intercept=False)[0, 0] == 3096


def test_has_bad_intercept_rule():
    assert has_bad_intercept(12, 0, 0.0)
    assert has_bad_intercept(12, 0, -99)
    assert not has_bad_intercept(12, 0, -100)  # strictly greater than -100
    assert not has_bad_intercept(12, 0, -1024)
    assert not has_bad_intercept(16, 0, 0)
    assert not has_bad_intercept(12, 1, 0)
    assert not has_bad_intercept(12, 0, None)


def test_missing_rescale_warns_and_uses_1_and_0(tmp_path):
    raw = np.array([[5, -7]], np.int16)
    path = write_ct_slice(tmp_path / "norescale.dcm", raw, intercept=None, slope=None)
    with pytest.warns(UserWarning, match=names_file(path) + ".*RescaleSlope and RescaleIntercept"):
        hu = read_hu(path)
    np.testing.assert_array_equal(hu, [[5, -7]])
    assert np.isnan(read_header(path)["RescaleIntercept"])


def test_padding_is_masked_to_air(tmp_path):
    raw = np.array([[-2000, 0, 1064], [3000, -1500, 1024]], np.int16)
    path = write_ct_slice(tmp_path / "pad.dcm", raw)
    assert read_hu(path)[0, 0] == -3024  # faithful by default
    np.testing.assert_array_equal(read_hu(path, mask_padding=True), [[AIR_HU, -1024, 40], [1976, AIR_HU, 0]])


def test_pixel_padding_value_is_masked(tmp_path):
    raw = np.array([[4095, 1064], [1024, 4095]], np.uint16)  # 4095 = padding, 3071 HU if not masked
    path = write_ct_slice(tmp_path / "padval.dcm", raw, bits_stored=12, PixelPaddingValue=4095)
    np.testing.assert_array_equal(read_hu(path, mask_padding=True), [[AIR_HU, 40], [0, AIR_HU]])
    rgb = to_rgb(path, windows=("bone", "bone", "bone"), crop=False)
    assert rgb[0, 0, 0] == 0  # padding black, not white bone


# --- broken files --------------------------------------------------------------------------------

def test_truncated_pixel_data_raises_naming_file(tmp_path):
    path = write_ct_slice(tmp_path / "t.dcm", np.zeros((16, 16), np.int16))
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=names_file(path) + ".*pixel data"):
        read_hu(path)
    assert read_header(path)["Rows"] == 16  # the header alone is still fine


@pytest.mark.parametrize("cut", [10, 200, 400])
def test_file_cut_in_the_header_raises_naming_file(tmp_path, cut):
    path = write_ct_slice(tmp_path / "h.dcm", np.zeros((16, 16), np.int16))
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ValueError, match=names_file(path)):
        read_hu(path)


@pytest.mark.parametrize("content", [b"", b"hello, this is not DICOM\n" * 20, b"\x89PNG\r\n\x1a\n" + bytes(300)],
                         ids=["empty", "text", "png"])
def test_non_dicom_raises_naming_file(tmp_path, content):
    path = tmp_path / "x.dcm"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=names_file(path)):
        read_hu(path)
    with pytest.raises(ValueError, match=names_file(path)):
        read_header(path)


def test_missing_file_and_header_only_file(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_hu(tmp_path / "absent.dcm")
    path = write_ct_slice(tmp_path / "hdr.dcm", np.zeros((4, 4), np.int16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ValueError, match=names_file(path) + ".*no PixelData"):
        read_hu(path)


def test_bundled_truncated_and_non_image_files():
    truncated = bundled("MR_truncated.dcm")
    with pytest.raises(ValueError, match=names_file(truncated) + ".*pixel data"):
        read_hu(truncated)
    plan = bundled("rtplan.dcm")
    with pytest.raises(ValueError, match=names_file(plan) + ".*no Rows, Columns, PixelData"):
        read_hu(plan)


def test_multiframe_and_rgb_are_refused():
    dose = bundled("rtdose.dcm")
    with pytest.raises(ValueError, match=names_file(dose) + ".*15 frames"):
        read_hu(dose)
    rgb = bundled("SC_rgb_jpeg_gdcm.dcm")
    with pytest.raises(ValueError, match=names_file(rgb) + ".*3 samples per pixel"):
        read_hu(rgb)


def test_no_pydicom_decoder_names_transfer_syntax(tmp_path):
    path = write_ct_slice(tmp_path / "m.dcm", np.zeros((4, 4), np.int16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = uid.MPEG2MPML
    ds.PixelData = encapsulate([bytes(32)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    with pytest.raises(ValueError, match=names_file(path) + ".*" + re.escape(uid.MPEG2MPML)):
        read_hu(path)


def test_missing_decoder_names_transfer_syntax_and_package(tmp_path):
    path = write_ct_slice(tmp_path / "ll.dcm", np.zeros((8, 8), np.int16), transfer_syntax=uid.JPEGLosslessSV1)
    # a fresh interpreter in which gdcm and pylibjpeg cannot be imported: no JPEG Lossless decoder
    code = ("import sys\n"
            "sys.modules['gdcm'] = sys.modules['pylibjpeg'] = None\n"
            "from smallct.io.dicom import read_hu\n"
            "try:\n"
            f"    read_hu({str(path)!r})\n"
            "except ValueError as err:\n"
            "    print(err)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    message = result.stdout
    assert str(path) in message and "1.2.840.10008.1.2.4.70" in message and "python-gdcm" in message


# --- real files ----------------------------------------------------------------------------------

def test_bundled_ct_small():
    path = bundled("CT_small.dcm")
    hu = read_hu(path)
    assert hu.shape == (128, 128)
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(hu, ds.pixel_array.astype(np.float32) - 1024)
    assert (hu.min(), hu.max()) == (-896.0, 1167.0)
    header = read_header(path)
    assert header["RescaleIntercept"] == -1024 and header["Rows"] == 128 and not header["bad_intercept"]


@pytest.mark.parametrize("name, syntax, lo, hi", [
    ("693_J2KI.dcm", uid.JPEG2000, -3995.0, 1812.0),  # intercept -1024, padding -2000 raw, lossy
    ("J2K_pixelrep_mismatch.dcm", uid.JPEG2000Lossless, -2000.0, 1896.0),  # signed data in a J2K marked unsigned
])
def test_bundled_jpeg2000_ct(name, syntax, lo, hi):
    path = bundled(name)
    hu = read_hu(path)
    assert hu.shape == (512, 512)
    assert read_header(path)["TransferSyntaxUID"] == syntax
    assert (hu.min(), hu.max()) == (lo, hi)


def test_jpeg_lossless_70_decoder_is_available():
    # the .70 decoder (python-gdcm) reads the bundled RGB file; read_hu refuses it only for being RGB
    ds = pydicom.dcmread(bundled("SC_rgb_jpeg_gdcm.dcm"))
    assert ds.file_meta.TransferSyntaxUID == uid.JPEGLosslessSV1
    assert ds.pixel_array.shape == (100, 100, 3)


def test_real_rsna_slice(rsna_sample_dir):
    RSNA_SAMPLE = rsna_sample_dir / RSNA_SAMPLE_FILE  # noqa: N806  (the fixture fails in CI when it is missing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hu = read_hu(RSNA_SAMPLE)
        header = read_header(RSNA_SAMPLE)
        rgb = to_rgb(RSNA_SAMPLE, size=224)
    assert not [w for w in caught if "VR UI" in str(w.message)]
    assert hu.shape == (256, 256) and hu.dtype == np.float32
    ds = pydicom.dcmread(RSNA_SAMPLE)
    np.testing.assert_array_equal(hu, ds.pixel_array.astype(np.float32) - 1024)
    brain = hu[96:160, 96:160]
    assert 20 < np.median(brain) < 45  # grey/white matter
    assert hu.max() > 1000  # skull
    assert np.percentile(hu, 5) < -900  # air around the head
    assert read_window(RSNA_SAMPLE) == Window(40.0, 100.0, "file header of ID_e0cc6a4b5.dcm")
    assert header["SOPInstanceUID"] == "ID_e0cc6a4b5" and header["PatientID"] == "ID_a107dd7f"
    assert header["SeriesInstanceUID"] == "ID_4be303ae64" and header["z"] == pytest.approx(115.936)
    assert (header["WindowCenter"], header["WindowWidth"]) == (40.0, 100.0)
    assert (header["RescaleSlope"], header["RescaleIntercept"]) == (1.0, -1024.0)
    assert (header["BitsStored"], header["PixelRepresentation"]) == (16, 1)
    assert rgb.shape == (224, 224, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb.max() == 255


# --- windows -------------------------------------------------------------------------------------

def test_window_endpoints_and_midpoint():
    c, w = 40.0, 80.0
    hu = np.array([-1000.0, c - w / 2, c - w / 4, c, c + w / 2, 3000.0])
    out = window(hu, c, w)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 64, 128, 255, 255]  # 63.75 -> 64, 127.5 -> 128
    assert window(np.array([[0.0, 600.0]]), 600, 2800).tolist() == [[np.round(0.2857142857 * 255), 128]]
    with pytest.raises(ValueError, match="width"):
        window(hu, 40, 0)


def test_window_presets():
    as_pairs = {name: (w.center, w.width) for name, w in WINDOWS.items()}
    assert as_pairs == {"brain": (40, 80), "subdural": (80, 200), "bone": (600, 2800), "soft": (40, 380),
                        "stroke": (32, 8)}
    assert all(w.source for w in WINDOWS.values())
    assert (WINDOWS["subdural"].low, WINDOWS["subdural"].high) == (-20, 180)
    assert get_window("bone") is WINDOWS["bone"]
    assert get_window((50, 150)) == Window(50.0, 150.0, "given as (center, width)")
    with pytest.raises(ValueError, match="unknown"):
        get_window("lung")
    with pytest.raises(ValueError, match="header"):
        get_window("header")


def test_header_window_multivalue(tmp_path):
    hu = np.array([[-20, 0, 40], [60, 80, 200]])
    path = write_ct_slice(tmp_path / "mv.dcm", (hu + 1024).astype(np.int16), window=([40, 600], [80, 2800]))
    assert isinstance(pydicom.dcmread(path).WindowCenter, pydicom.multival.MultiValue)
    assert (read_window(path).center, read_window(path).width) == (40, 80)
    header = read_header(path)
    assert (header["WindowCenter"], header["WindowWidth"]) == (40.0, 80.0)
    rgb = to_rgb(path, windows=("header", "brain", "bone"), crop=False)
    np.testing.assert_array_equal(rgb[..., 0], window(hu, 40, 80))
    np.testing.assert_array_equal(rgb[..., 2], window(hu, 600, 2800))


def test_header_window_missing(tmp_path):
    path = write_ct_slice(tmp_path / "nw.dcm", np.zeros((4, 4), np.int16), window=None)
    with pytest.raises(ValueError, match=names_file(path) + ".*WindowCenter"):
        read_window(path)
    with pytest.raises(ValueError, match=names_file(path) + ".*header"):
        to_rgb(path, windows=("header", "brain", "bone"))
    assert np.isnan(read_header(path)["WindowCenter"])


# --- to_rgb and crop -----------------------------------------------------------------------------

def test_to_rgb_crops_to_the_body_and_pads(tmp_path):
    raw = np.full((40, 40), -2000, np.int16)  # padding outside the scan field
    raw[5:35, 5:35] = 0  # air, -1024 HU
    raw[10:20, 12:24] = 1064  # 40 HU: the "head", 10 x 12 px
    path = write_ct_slice(tmp_path / "box.dcm", raw)
    rgb = to_rgb(path)
    assert rgb.shape == (14, 16, 3)  # the head plus a 2 px margin
    assert rgb[2:12, 2:14].tolist() == [[[128, 76, 76]] * 12] * 10  # 40 HU: 0.5, 0.3, 0.3 of brain, subdural, bone
    assert rgb[0, 0].tolist() == [0, 0, 0]
    resized = to_rgb(path, size=32)
    assert resized.shape == (32, 32, 3)
    assert resized[:2].max() == 0 and resized[-2:].max() == 0  # aspect kept: black bands top and bottom
    assert to_rgb(path, crop=False).shape == (40, 40, 3)


def test_to_rgb_needs_three_windows(tmp_path):
    path = write_ct_slice(tmp_path / "w.dcm", np.zeros((4, 4), np.int16))
    with pytest.raises(ValueError, match="three"):
        to_rgb(path, windows=("brain", "bone"))


def test_crop_to_body_blank_is_unchanged():
    hu = np.full((8, 8), -1024.0, np.float32)
    assert crop_to_body(hu) is hu


# --- headers -------------------------------------------------------------------------------------

def test_read_headers_keeps_going_past_bad_files(tmp_path):
    files = []
    for i, z in enumerate([10.0, -2.5, 7.25]):
        files.append(write_ct_slice(tmp_path / f"s{i}.dcm", np.zeros((8, 6), np.int16), SOPInstanceUID=f"ID_00{i}",
                                    ImagePositionPatient=[0, 0, z]))
    bad = tmp_path / "bad.dcm"
    bad.write_text("not dicom")
    files.insert(1, bad)
    for workers in (1, 2):
        table = read_headers(files, workers=workers, progress=False)
        assert table["path"].tolist() == [str(f) for f in files]
        assert table["SOPInstanceUID"].tolist()[::2] == ["ID_000", "ID_001"]
        assert table["z"].tolist()[2:] == [-2.5, 7.25] and table["z"][0] == 10.0
        assert table["error"].isna().tolist() == [True, False, True, True]
        assert str(bad) in table["error"][1]
        assert table["Rows"].tolist()[::2] == [8, 8] and table["Columns"][3] == 6
        assert table["BitsStored"].dtype == "Int64"


def test_read_header_without_position_gives_nan_z(tmp_path):
    path = write_ct_slice(tmp_path / "nz.dcm", np.zeros((4, 4), np.int16))
    ds = pydicom.dcmread(path)
    del ds.ImagePositionPatient
    ds.save_as(path)
    assert np.isnan(read_header(path)["z"])


def test_read_header_records_position_and_orientation(tmp_path):
    tilted = [1.0, 0.0, 0.0, 0.0, 0.939693, 0.34202]
    path = write_ct_slice(tmp_path / "t.dcm", np.zeros((4, 4), np.int16), ImagePositionPatient=[-125.0, -110.5, 7.25],
                          ImageOrientationPatient=tilted)
    header = read_header(path)
    assert [header[k] for k in ("x", "y", "z")] == [-125.0, -110.5, 7.25]
    assert [header[k] for k in ("rx", "ry", "rz", "cx", "cy", "cz")] == tilted  # mutant caught: orientation dropped
    bare = write_ct_slice(tmp_path / "b.dcm", np.zeros((4, 4), np.int16), ImageOrientationPatient=None)
    header = read_header(bare)
    assert header["z"] == 0.0 and all(np.isnan(header[k]) for k in ("rx", "ry", "rz", "cx", "cy", "cz"))
    table = read_headers([path, bare], workers=1, progress=False)
    assert table.columns.tolist()[5:14] == ["x", "y", "z", "rx", "ry", "rz", "cx", "cy", "cz"]
