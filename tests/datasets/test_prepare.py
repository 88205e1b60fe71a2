import json
import re
import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from smallct.io.dicom import read_headers, to_rgb
from smallct.io.images import to_rgb_uint8
from smallct.datasets.folder import load_dataset
from smallct.datasets.prepare import parse_windows, prepare_png, prepare_rsna, select_images
from smallct.prepare import main
from smallct.datasets.rsna import LABELS, read_rsna_labels
from smallct.datasets.synthetic_dicom import write_synthetic_rsna


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_rsna(tmp_path_factory.mktemp("dicom"), n_patients=4, slices_per_series=4, seed=3)


@pytest.fixture(scope="module")
def prepared(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    lines = []
    report = prepare_rsna(synthetic["root"], synthetic["labels"], out, windows=["brain", "subdural", "bone"],
                          size=32, workers=2, progress=False, log=lines.append)
    return {"out": out, "report": report, "lines": lines}


def _table(n_pos, n_neg):
    ids = [f"ID_{i:09x}" for i in range(n_pos + n_neg)]
    return pd.DataFrame({"ID": ids[::-1], "any": [1] * n_pos + [0] * n_neg})


def test_select_images_balance_and_limit():
    table = _table(10, 50)
    balanced = select_images(table, balance=True, seed=1)
    assert len(balanced) == 20 and balanced["any"].sum() == 10
    assert balanced["ID"].is_monotonic_increasing
    assert balanced.equals(select_images(table.sample(frac=1, random_state=5), balance=True, seed=1))
    assert not balanced.equals(select_images(table, balance=True, seed=2))  # another draw of negatives
    assert select_images(table, balance=True, limit=8)["any"].tolist().count(1) == 4
    assert len(select_images(table, balance=True, limit=8)) == 8
    assert len(select_images(table, limit=7)) == 7
    assert len(select_images(table)) == 60 and len(select_images(table, limit=100)) == 60
    assert select_images(_table(30, 5), balance=True)["any"].sum() == 5  # negatives are the minority
    with pytest.raises(ValueError, match="--limit 0"):
        select_images(table, limit=0)


def test_parse_windows():
    assert parse_windows("brain, subdural,bone") == ["brain", "subdural", "bone"]
    assert parse_windows(("header", "soft", "stroke")) == ["header", "soft", "stroke"]
    with pytest.raises(ValueError, match="three windows"):
        parse_windows("brain,bone")
    with pytest.raises(ValueError, match="'lung': unknown"):
        parse_windows("brain,lung,bone")


def test_prepare_rsna_writes_windowed_pngs_and_manifest(synthetic, prepared):
    out, report = prepared["out"], prepared["report"]
    corrupt = synthetic["corrupt"]
    assert report["written"] == 15 and report["kept"] == 0 and report["failed"] == 1
    assert report["failed_files"][0]["id"] == corrupt
    assert re.match(re.escape(str(synthetic["root"] / f"{corrupt}.dcm")) + ": cannot decode pixel data",
                    report["failed_files"][0]["error"])
    assert json.loads((out / "report.json").read_text())["failed"] == 1
    line, = prepared["lines"]
    assert "15 images" in line and "1 unreadable" in line

    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest.columns.tolist() == ["id", "file", *LABELS, "patient", "study", "series", "x", "y", "z",
                                         "rx", "ry", "rz", "cx", "cy", "cz", "position", "prev", "next"]
    assert len(manifest) == 15 and corrupt not in set(manifest["id"])
    labels = read_rsna_labels(synthetic["labels"]).set_index("ID")
    assert (manifest[list(LABELS)].to_numpy() == labels.loc[manifest["id"], list(LABELS)].to_numpy()).all()
    headers = read_headers(synthetic["files"], workers=1, progress=False).set_index("SOPInstanceUID")
    rows = headers.loc[manifest["id"]]
    assert (manifest["patient"].to_numpy() == rows["PatientID"].to_numpy()).all()
    assert (manifest["series"].to_numpy() == rows["SeriesInstanceUID"].to_numpy()).all()
    assert np.allclose(manifest["z"], rows["z"])
    for _, series in manifest.groupby("series", sort=False):  # slices in order within a series
        assert series["z"].is_monotonic_increasing
    assert manifest["patient"].nunique() == 4
    # each PNG is exactly what smallct.io.dicom.to_rgb gives (lossless PNG, quirk file fixed)
    for _, row in manifest.iterrows():
        png = np.asarray(Image.open(out / row["file"]))
        assert png.shape == (32, 32, 3) and png.dtype == np.uint8
        expected = to_rgb(synthetic["root"] / f"{row['id']}.dcm", ("brain", "subdural", "bone"), 32)
        assert np.array_equal(png, expected)


def test_a_second_run_does_only_what_is_missing(synthetic, prepared, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(prepared["out"], out)
    manifest = pd.read_csv(out / "manifest.csv")
    removed, damaged, intact = (out / f for f in manifest["file"][:3])
    removed.unlink()
    damaged.write_bytes(damaged.read_bytes()[:60])  # a truncated PNG from a killed run
    (out / "images" / "x.png.tmp123").write_bytes(b"half")
    before = intact.stat().st_mtime_ns
    report = prepare_rsna(synthetic["root"], synthetic["labels"], out, size=32, workers=1, progress=False,
                          log=lambda _: None)
    assert (report["written"], report["kept"], report["failed"]) == (2, 13, 1)
    assert intact.stat().st_mtime_ns == before
    assert np.asarray(Image.open(damaged)).shape == (32, 32, 3)
    assert not list((out / "images").glob("*.tmp*"))
    assert pd.read_csv(out / "manifest.csv").equals(manifest)
    with pytest.raises(ValueError, match="other settings"):
        prepare_rsna(synthetic["root"], synthetic["labels"], out, size=64, workers=1, progress=False)


def test_prepared_folder_is_a_multilabel_dataset(synthetic, prepared):
    dataset = load_dataset(prepared["out"])
    manifest = pd.read_csv(prepared["out"] / "manifest.csv")
    assert dataset.task == "multilabel" and dataset.class_names == list(LABELS)
    assert dataset.labels.shape == (15, 6) and dataset.labels.dtype == np.int64
    assert (dataset.labels == manifest[list(LABELS)].to_numpy()).all()
    assert dataset.ids == manifest["id"].tolist()
    assert list(dataset.groups) == manifest["patient"].tolist()
    assert all(f.is_file() for f in dataset.files)
    assert dataset.meta["windows"] == ["brain", "subdural", "bone"]
    assert "R brain (40/80 HU" in dataset.meta["channels"]


def test_read_manifest_names_its_problems(prepared, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(prepared["out"], out)
    manifest = pd.read_csv(out / "manifest.csv")
    (out / manifest["file"][0]).unlink()
    manifest.loc[1, "subdural"] = 2
    manifest.to_csv(out / "manifest.csv", index=False)
    with pytest.raises(ValueError, match=r"manifest.csv: files listed but absent: images/ID_\w+\.png.*"
                                         r"labels other than 0/1: ID_\w+ subdural='2'"):
        load_dataset(out)
    manifest.drop(columns="any").to_csv(out / "manifest.csv", index=False)
    with pytest.raises(ValueError, match="no column label"):
        load_dataset(out)


def test_balance_limit_and_unmatched_files(synthetic, tmp_path):
    labels = read_rsna_labels(synthetic["labels"])
    dicom = tmp_path / "dicom"
    shutil.copytree(synthetic["root"], dicom, ignore=shutil.ignore_patterns("*.csv"))
    (dicom / f"{labels['ID'][0]}.dcm").unlink()  # a label without a file
    shutil.copy(synthetic["files"][1], dicom / "ID_00000000a.dcm")  # a file without labels
    report = prepare_rsna(dicom, synthetic["labels"], tmp_path / "out", size=16, balance=True, workers=1,
                          progress=False, log=lambda _: None)
    sel = report["selection"]
    assert sel["labels_without_file"] == 1 and sel["files_without_labels"] == 1
    available = labels.iloc[1:]
    n_pos = min(available["any"].sum(), (available["any"] == 0).sum())
    assert sel["selected"] == 2 * n_pos and sel["selected_positive"] == n_pos
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert len(manifest) == sel["selected"] - report["failed"]
    assert report["failed"] == int(synthetic["corrupt"] in set(select_images(available, balance=True)["ID"]))


def test_cli_rsna_summary_and_errors(synthetic, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["rsna", "--dicom", str(synthetic["root"]), "--labels", str(synthetic["labels"]), "--out", str(out),
            "--size", "16", "--limit", "5", "--seed", "2", "--workers", "1", "--no-progress"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smallct.prepare rsna: ")
    assert json.loads((out / "report.json").read_text())["selection"]["selected"] == 5
    assert main([*args, "--windows", "brain,lung,bone", "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smallct.prepare: error: window 'lung': unknown") and "Traceback" not in err
    assert main(["rsna", "--dicom", str(tmp_path / "absent"), "--labels", str(synthetic["labels"]),
                 "--out", str(tmp_path / "o3")]) == 2
    assert re.fullmatch(r"smallct\.prepare: error: \S+absent: no such folder\n", capsys.readouterr().err)


def test_prepare_png_normalises_and_skips_broken_files(phantom_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(phantom_dir, src)
    broken = src / "005.png"
    broken.write_bytes(broken.read_bytes()[:100])
    out = tmp_path / "out"
    report = prepare_png(src, out, workers=2, progress=False, log=lambda _: None)
    assert (report["written"], report["failed"]) == (39, 1)
    assert report["failed_files"][0]["error"].startswith(str(broken))
    original = load_dataset(src)
    dataset = load_dataset(out)
    assert dataset.task == original.task == "binary" and dataset.class_names == original.class_names
    keep = [i for i, f in enumerate(original.files) if f != broken]
    assert dataset.ids == [original.ids[i] for i in keep]
    assert (dataset.labels == original.labels[keep]).all()
    assert dataset.meta["windows"] is None and "to_rgb_uint8" in dataset.meta["channels"]
    modes = set()
    for source, target in zip([original.files[i] for i in keep], dataset.files):
        image = Image.open(target)
        modes.add(Image.open(source).mode)
        assert image.mode == "RGB"
        assert np.array_equal(np.asarray(image), to_rgb_uint8(source))
    assert len(modes) > 2  # the phantom set mixes PNG modes; all come out RGB
    again = prepare_png(src, out, workers=1, progress=False, log=lambda _: None)
    assert (again["written"], again["kept"], again["failed"]) == (0, 39, 1)


def test_real_rsna_slice(rsna_sample_dir, tmp_path, recwarn):
    csv = tmp_path / "labels.csv"
    csv.write_text("ID,Label\n" + "".join(f"ID_e0cc6a4b5_{t},{int(t in ('subdural', 'any'))}\n"
                                          for t in ("epidural", "intraparenchymal", "intraventricular",
                                                    "subarachnoid", "subdural", "any")))
    report = prepare_rsna(rsna_sample_dir, csv, tmp_path / "out", size=64, workers=1, progress=False,
                          log=lambda _: None)
    assert (report["written"], report["failed"]) == (1, 0)
    assert not [w for w in recwarn if "Invalid value for VR UI" in str(w.message)]
    row = pd.read_csv(tmp_path / "out" / "manifest.csv").iloc[0]
    assert row["id"] == "ID_e0cc6a4b5" and row["any"] == 1 and row["subdural"] == 1 and row["epidural"] == 0
    assert row["patient"].startswith("ID_") and row["series"].startswith("ID_") and np.isfinite(row["z"])
    png = np.asarray(Image.open(tmp_path / "out" / row["file"]))
    assert np.array_equal(png, to_rgb(rsna_sample_dir / "ID_e0cc6a4b5.dcm", ("brain", "subdural", "bone"), 64))
    assert png[..., 0].mean() > 10  # brain visible in the brain window


def test_balance_without_positives_is_an_error(synthetic, tmp_path):
    lines = synthetic["labels"].read_text().splitlines()
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(["ID,Label", *(line[:-1] + "0" for line in lines[1:])]) + "\n")  # every label 0
    with pytest.raises(ValueError, match="0 positive and 16 negative images with a file: nothing to balance"):
        prepare_rsna(synthetic["root"], csv, tmp_path / "out", balance=True, workers=1, progress=False)


def _segments_neighbours(segments):
    """{id: (prev id, next id)} of slices in runs of neighbours: itself at the ends of each run."""
    out = {}
    for run in segments:
        for k, i in enumerate(run):
            out[i] = (run[max(k - 1, 0)], run[min(k + 1, len(run) - 1)])
    return out


def test_prepare_rsna_orders_tilted_series_along_the_normal_with_neighbours(tmp_path):
    synthetic = write_synthetic_rsna(tmp_path / "dicom", n_patients=4, slices_per_series=6, seed=5, size=32,
                                     tilt=20)
    root, corrupt = synthetic["root"], synthetic["corrupt"]
    series = dict(synthetic["series"])  # {uid: ids along the normal}
    headers = read_headers(synthetic["files"], workers=1, progress=False).set_index("SOPInstanceUID")
    # what the test is about: z, file names and InstanceNumber cannot give this order
    for ids in series.values():
        assert headers.loc[ids, "z"].sort_values().index.tolist() != ids
    assert any(sorted(ids) != ids for ids in series.values())
    assert not any("InstanceNumber" in pydicom.dcmread(f, stop_before_pixels=True) for f in synthetic["files"])

    clean = [u for u, ids in series.items() if corrupt not in ids]
    gap_uid, dup_uid, bare_uid = clean[:3]
    missing = series[gap_uid][2]  # a slice lost: a gap between slices 1 and 3
    (root / f"{missing}.dcm").unlink()
    original = series[dup_uid][3]  # a slice stored twice under another id (sorting before it)
    duplicate = "ID_000000000"
    shutil.copy(root / f"{original}.dcm", root / f"{duplicate}.dcm")
    labels = synthetic["labels"].read_text().splitlines()
    extra = [line.replace(original, duplicate) for line in labels if line.startswith(original)]
    synthetic["labels"].write_text("\n".join(labels + extra) + "\n")
    bare = series[bare_uid][4]  # a slice without ImageOrientationPatient: its series cannot be ordered
    ds = pydicom.dcmread(root / f"{bare}.dcm")
    del ds.ImageOrientationPatient
    ds.save_as(root / f"{bare}.dcm")

    lines = []
    report = prepare_rsna(root, synthetic["labels"], tmp_path / "out", size=16, workers=1, progress=False,
                          log=lines.append)
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert len(manifest) == 4 * 6 - 1 + 1 - 1  # one lost, one duplicated, the corrupt one skipped
    segments = {
        gap_uid: [series[gap_uid][:2], series[gap_uid][3:]],
        dup_uid: [series[dup_uid][:3] + [duplicate] + series[dup_uid][3:]],
        bare_uid: [[i] for i in sorted(series[bare_uid])],  # id order, each its own neighbour
    }
    (corrupt_uid,) = set(series) - set(segments)
    k = series[corrupt_uid].index(corrupt)
    segments[corrupt_uid] = [s for s in (series[corrupt_uid][:k], series[corrupt_uid][k + 1:]) if s]
    for uid, runs in segments.items():
        rows = manifest[manifest["series"] == uid]
        assert rows["id"].tolist() == [i for run in runs for i in run], uid  # 0.3.0: by ImagePositionPatient[2]
        assert rows.index.tolist() == list(range(rows.index[0], rows.index[0] + len(rows)))  # contiguous rows
    ids = manifest["id"].to_numpy()
    neighbours = {i: (ids[p], ids[n]) for i, p, n in zip(ids, manifest["prev"], manifest["next"])}
    for runs in segments.values():
        for i, pair in _segments_neighbours(runs).items():
            assert neighbours[i] == pair, i  # mutant caught: neighbours linked across a gap
    ordered = manifest[manifest["series"] != bare_uid]
    assert all(np.diff(g["position"]).min() >= 0 for _, g in ordered.groupby("series"))
    # one line per series with a problem, naming what and where
    interior = 0 < k < 5
    problems = report["series_problems"]
    assert len(problems) == 3 + interior
    by_uid = {line.split(":")[0].removeprefix("series "): line for line in problems}
    assert f"(5 mm between {series[gap_uid][1]} and {series[gap_uid][3]})" not in by_uid[gap_uid]
    assert f"10 mm between {series[gap_uid][1]} and {series[gap_uid][3]}" in by_uid[gap_uid]
    assert f"duplicate position ({duplicate} = {original} at " in by_uid[dup_uid]
    assert f"1 without a usable ImagePositionPatient or ImageOrientationPatient ({bare}): kept in id order" \
        in by_uid[bare_uid]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["series_problems"] == problems
    line, = lines
    assert f"{len(problems)} series with a gap, duplicate positions" in line
