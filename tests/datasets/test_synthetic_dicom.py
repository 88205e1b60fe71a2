import re
import time

import numpy as np
import pydicom
import pytest
from pydicom import uid

from smallct.io.dicom import read_headers, read_hu, to_rgb
from smallct.datasets.rsna import LABELS, read_rsna_labels, SUBTYPES
from smallct.datasets.synthetic_dicom import write_synthetic_rsna
from smallct.datasets.synthetic_lesions import slice_labels


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    start = time.perf_counter()
    info = write_synthetic_rsna(tmp_path_factory.mktemp("rsna"), n_patients=6, slices_per_series=5, seed=0)
    info["seconds"] = time.perf_counter() - start
    return info


def test_layout_ids_and_speed(synthetic):
    assert synthetic["seconds"] < 5
    files = synthetic["files"]
    assert len(files) == 30 and all(f.parent == synthetic["root"] for f in files)
    assert all(re.fullmatch(r"ID_[0-9a-f]{9}", f.stem) for f in files)
    assert synthetic["corrupt"] != synthetic["quirk"]
    assert {synthetic["corrupt"], synthetic["quirk"]} <= {f.stem for f in files}


def test_labels_csv_is_rsna_long_format(synthetic):
    lines = synthetic["labels"].read_text().splitlines()
    assert lines[0] == "ID,Label" and len(lines) == 1 + 30 * 6
    assert lines[6].endswith(("_any,0", "_any,1"))  # any last, as in stage_2_train.csv
    table = read_rsna_labels(synthetic["labels"])
    assert sorted(table["ID"]) == sorted(f.stem for f in synthetic["files"])
    y = table[list(LABELS)].to_numpy()
    assert (y[:, 0] == y[:, 1:].max(axis=1)).all()  # any = 1 exactly when a subtype is
    assert 0 < y[:, 0].sum() < len(y)


def test_headers_series_and_encodings(synthetic):
    table = read_headers(synthetic["files"], workers=1, progress=False)
    assert table["error"].isna().all()  # the truncated file's header is intact
    assert table["SeriesInstanceUID"].nunique() == 6 and table["PatientID"].nunique() == 6
    assert (table.groupby("SeriesInstanceUID")["PatientID"].nunique() == 1).all()
    for series, ids in synthetic["series"].items():
        z = table.set_index("SOPInstanceUID").loc[ids, "z"].to_numpy()
        assert (np.diff(z) == 5.0).all()
    syntaxes = set(table["TransferSyntaxUID"])
    assert {uid.ExplicitVRLittleEndian, uid.RLELossless, uid.JPEG2000Lossless, uid.JPEGLosslessSV1} <= syntaxes
    assert set(table["PixelRepresentation"]) == {0, 1}
    assert table.loc[table["bad_intercept"], "SOPInstanceUID"].tolist() == [synthetic["quirk"]]
    assert (table.loc[~table["bad_intercept"], "RescaleIntercept"] == -1024).all()
    assert (table["RescaleSlope"] == 1).all() and (table["WindowCenter"] == 40).all()
    centers = [pydicom.dcmread(f, stop_before_pixels=True).WindowCenter for f in synthetic["files"][:6]]
    assert any(isinstance(c, pydicom.multival.MultiValue) for c in centers)


def test_every_file_but_the_corrupt_one_reads_as_a_head(synthetic):
    labels = read_rsna_labels(synthetic["labels"]).set_index("ID")
    for path in synthetic["files"]:
        if path.stem == synthetic["corrupt"]:
            with pytest.raises(ValueError, match=re.escape(str(path)) + ".*pixel data"):
                read_hu(path)
            continue
        hu = read_hu(path)
        assert hu.shape == (64, 64)
        centre = hu[24:40, 24:40]
        assert 25 < np.median(centre) < 45  # brain
        assert hu.max() > 600  # skull
        lo = -1000 if path.stem == synthetic["quirk"] else -1040
        assert lo <= np.median(hu[:, :3]) <= -990 or np.median(hu[:, :3]) == -3024  # air or padding
        blood = ((hu >= 55) & (hu <= 95)).sum()
        if labels.loc[path.stem, "any"]:
            assert blood >= 3
        else:
            assert blood == 0
        assert to_rgb(path, size=32).shape == (32, 32, 3)


def test_quirk_file_gives_clean_hu(synthetic):
    hu = read_hu(synthetic["root"] / f"{synthetic['quirk']}.dcm")
    assert hu.min() == -1000  # air, clipped to what the quirk can hold
    assert read_hu(synthetic["root"] / f"{synthetic['quirk']}.dcm", fix_bad_intercept=False).max() > 3000


def test_deterministic_under_the_seed(tmp_path):
    a = write_synthetic_rsna(tmp_path / "a", n_patients=2, slices_per_series=3, seed=7)
    b = write_synthetic_rsna(tmp_path / "b", n_patients=2, slices_per_series=3, seed=7)
    c = write_synthetic_rsna(tmp_path / "c", n_patients=2, slices_per_series=3, seed=8)
    assert [f.name for f in a["files"]] == [f.name for f in b["files"]]
    assert all(fa.read_bytes() == fb.read_bytes() for fa, fb in zip(a["files"], b["files"]))
    assert a["labels"].read_text() == b["labels"].read_text()
    assert {f.name for f in a["files"]}.isdisjoint(f.name for f in c["files"])
    assert SUBTYPES == LABELS[1:]


def test_too_few_slices(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        write_synthetic_rsna(tmp_path, n_patients=1, slices_per_series=1)


def test_context_set_bleeds_on_runs_of_neighbours(tmp_path):
    # the set that needs series context (#30): fails on 0.3.0, whose writer has no ``lesions`` option
    kw = dict(n_patients=3, slices_per_series=12, seed=4, size=32, lesions="context", contrast=20.0, rate=1.0)
    info = write_synthetic_rsna(tmp_path / "a", **kw)
    again = write_synthetic_rsna(tmp_path / "b", **kw)
    assert all(fa.read_bytes() == fb.read_bytes() for fa, fb in zip(info["files"], again["files"]))
    assert info["labels"].read_text() == again["labels"].read_text()
    labels = read_rsna_labels(info["labels"]).set_index("ID")
    assert synthetic_formats_planted(info)
    for series, ids in info["series"].items():
        y = labels.loc[ids, list(LABELS)].to_numpy()  # in slice order along the normal
        assert (y == slice_labels(info["lesions"][series], len(ids))).all()
        assert y[:, 0].any()  # rate=1: every series bleeds
        readable = [i for i in ids if i != info["corrupt"]]
        hu = {i: read_hu(info["root"] / f"{i}.dcm").astype(float) for i in readable}
        clean = np.median([hu[i] for i in readable if not labels.loc[i, "any"]], axis=0)
        for i in readable:  # a bleed lifts its pixels by ``contrast`` over the series' clean slices; noise 4 HU
            lifted = ((hu[i] - clean > 12) & (clean > 0) & (clean < 100)).sum()
            assert (lifted >= 3) if labels.loc[i, "any"] else (lifted <= 1), (i, lifted)
    with pytest.raises(ValueError, match="lesions"):
        write_synthetic_rsna(tmp_path / "c", lesions="blobs")


def synthetic_formats_planted(info) -> bool:
    """One truncated and one bad-intercept file, whatever the mode."""
    return list(info["formats"].values()).count("truncated") == 1 and info["formats"][info["quirk"]] == "quirk"


def test_one_encoding_still_plants_the_broken_files(tmp_path):
    info = write_synthetic_rsna(tmp_path, n_patients=2, slices_per_series=4, formats=("int16",))
    assert synthetic_formats_planted(info)
    assert set(info["formats"].values()) == {"int16", "truncated", "quirk"}
    with pytest.raises(ValueError, match="pixel data"):
        read_hu(info["root"] / f"{info['corrupt']}.dcm")
