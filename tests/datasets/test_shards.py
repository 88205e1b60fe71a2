"""Preparation in shards (smallct.datasets.shards): shards of whole series, merged into the unsharded folder."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from smallct.datasets import shards
from smallct.datasets.prepare import prepare_rsna
from smallct.datasets.shards import assign_shards, merge_shards, parse_shard, prepare_rsna_shard
from smallct.prepare import main
from smallct.datasets.synthetic_dicom import write_synthetic_rsna


def quiet(_):
    pass


@pytest.fixture(scope="module")
def dicom(tmp_path_factory):
    """8 tilted series of 6 slices, one with a gap (a lost slice), one truncated file, one unreadable header."""
    s = write_synthetic_rsna(tmp_path_factory.mktemp("dicom"), n_patients=8, slices_per_series=6, seed=7, size=32,
                             tilt=15)
    clean = [ids for ids in s["series"].values() if s["corrupt"] not in ids]
    (s["root"] / f"{clean[0][2]}.dcm").unlink()  # a gap: series_problems must come out of the merge too
    bad = "ID_0000bad00"  # hex, sorting first
    (s["root"] / f"{bad}.dcm").write_bytes(b"not a dicom file at all" * 20)
    with open(s["labels"], "a") as f:
        f.writelines(f"{bad}_{t},0\n" for t in ("epidural", "intraparenchymal", "intraventricular", "subarachnoid",
                                                "subdural", "any"))
    return {**s, "bad": bad}


@pytest.fixture(scope="module")
def unsharded(dicom, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return out, prepare_rsna(dicom["root"], dicom["labels"], out, size=16, workers=1, progress=False, log=quiet)


def _shard_all(dicom, out, n, workers=(1,)):
    reports = []
    for k in range(1, n + 1):
        reports.append(prepare_rsna_shard(dicom["root"], dicom["labels"], out, f"{k}/{n}", size=16,
                                          workers=workers[(k - 1) % len(workers)], progress=False, log=quiet))
    return reports


def test_parse_shard_counts_from_one_and_names_the_flag():
    assert parse_shard("1/4") == (1, 4) and parse_shard("4/4") == (4, 4) and parse_shard((2, 3)) == (2, 3)
    for bad in ("0/4", "5/4", "x", "1/0", "1-4", "1/2/3", ""):  # mutant caught: K counted from 0 (0/4 accepted)
        with pytest.raises(ValueError, match=rf"^--shard {re.escape(bad)}: expected K/N with 1 <= K <= N .*1/4"):
            parse_shard(bad)


def test_assign_shards_keeps_series_whole_balanced_and_independent_of_row_order():
    sizes = {"s1": 5, "s2": 4, "s3": 3, "s4": 3, "s5": 1}
    table = pd.DataFrame({"id": [f"ID_{u}_{i}" for u, m in sizes.items() for i in range(m)],
                          "SeriesInstanceUID": [u for u, m in sizes.items() for _ in range(m)], "error": None})
    table.loc[len(table)] = ["ID_x", None, "cannot read"]  # unreadable: a group of its own
    got = assign_shards(table, 2)
    for _, rows in pd.Series(got).groupby(table["SeriesInstanceUID"].fillna("none").to_numpy()):
        assert rows.nunique() == 1  # mutant caught: slices dealt out one by one (a series split)
    loads = np.bincount(got, minlength=3)[1:]
    assert sorted(loads) == [8, 9]  # greedy, largest first: {5, 3} + 1 and {4, 3, 1}
    shuffled = table.sample(frac=1, random_state=1)
    assert (assign_shards(shuffled, 2) == pd.Series(got, index=table.index)[shuffled.index]).all()
    assert set(assign_shards(table, 3)) == {1, 2, 3}


@pytest.mark.parametrize("n, workers", [(2, (1, 2)), (3, (1,))])
def test_merged_shards_equal_an_unsharded_run(dicom, unsharded, tmp_path, monkeypatch, n, workers):
    monkeypatch.setattr(shards, "HEADER_BLOCK", 7)  # several header blocks per shard
    full, full_report = unsharded
    out = tmp_path / "out"
    reports = _shard_all(dicom, out, n, workers)
    assert not (out / "manifest.csv").exists()  # a shard never writes the folder's manifest
    # each header read once in all when shards run one after another: the first reads, the others load
    assert reports[0]["shard"]["header_pass"]["read"] == reports[0]["shard"]["header_pass"]["blocks"] == 7  # 48 ids
    assert all(r["shard"]["header_pass"]["read"] == 0 for r in reports[1:])
    series = [set(pd.read_csv(out / "shards" / f"manifest-{k}-of-{n}.csv")["series"]) for k in range(1, n + 1)]
    assert all(a.isdisjoint(b) for i, a in enumerate(series) for b in series[i + 1:])  # whole series
    failed = [f["id"] for r in reports for f in r["failed_files"]]
    assert sorted(failed) == sorted([dicom["bad"], dicom["corrupt"]])  # each in exactly one shard's report

    merged = merge_shards(out, log=quiet)
    # the merged folder is the unsharded one: manifest.csv byte for byte (ids, labels, positions, prev/next)
    assert (out / "manifest.csv").read_bytes() == (full / "manifest.csv").read_bytes()
    names = sorted(p.name for p in (full / "images").iterdir())
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    assert all((out / "images" / x).read_bytes() == (full / "images" / x).read_bytes() for x in names)
    assert merged["failed_files"] == full_report["failed_files"]  # the same messages, naming the same files
    assert merged["series_problems"] == full_report["series_problems"] and len(merged["series_problems"]) >= 1
    assert [merged[c] for c in ("written", "kept", "failed", "images_in_manifest")] == \
        [full_report[c] for c in ("written", "kept", "failed", "images_in_manifest")]
    assert [s["k"] for s in merged["shards"]] == list(range(1, n + 1))
    assert json.loads((out / "report.json").read_text())["failed"] == 2


def test_a_shard_rerun_redoes_only_what_is_missing(dicom, tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "HEADER_BLOCK", 5)
    out = tmp_path / "out"
    first, second = _shard_all(dicom, out, 2)
    mine = pd.read_csv(out / "shards" / "manifest-1-of-2.csv")["file"].tolist()
    theirs = pd.read_csv(out / "shards" / "manifest-2-of-2.csv")["file"].tolist()
    (out / mine[0]).unlink()  # as a killed shard 1 leaves it: a PNG missing, one truncated, temporary files
    (out / mine[1]).write_bytes((out / mine[1]).read_bytes()[:50])
    own_tmp, other_tmp = out / "images" / f".{mine[2][7:]}.99.tmp", out / "images" / f".{theirs[0][7:]}.99.tmp"
    own_tmp.write_bytes(b"half"), other_tmp.write_bytes(b"half")
    before = {f: (out / f).stat().st_mtime_ns for f in mine[2:] + theirs}
    again = prepare_rsna_shard(dicom["root"], dicom["labels"], out, "1/2", size=16, workers=1, progress=False,
                               log=quiet)
    assert (again["written"], again["kept"], again["failed"]) == (2, first["written"] - 2, first["failed"])
    assert again["shard"]["header_pass"]["read"] == 0  # the header blocks are kept too
    assert {f: (out / f).stat().st_mtime_ns for f in mine[2:] + theirs} == before  # nothing else rewritten
    assert not own_tmp.exists() and other_tmp.exists()  # another shard may be writing its temporary files
    merge_shards(out, log=quiet)
    assert len(pd.read_csv(out / "manifest.csv")) == first["images_in_manifest"] + second["images_in_manifest"]


def test_merge_and_shards_refuse_in_one_line(dicom, tmp_path):
    out = tmp_path / "out"
    prepare_rsna_shard(dicom["root"], dicom["labels"], out, "2/3", size=16, workers=1, progress=False, log=quiet)
    with pytest.raises(ValueError, match=r"shard 1 of 3, 3 of 3 not finished \(no shards/report-1-of-3.json\)"):
        merge_shards(out)
    assert not (out / "manifest.csv").exists() and not (out / "report.json").exists()  # nothing written
    with pytest.raises(ValueError, match=r"^--shard K/2: \S+ is prepared in 3 shards .*run --shard K/3"):
        prepare_rsna_shard(dicom["root"], dicom["labels"], out, "1/2", size=16, workers=1, progress=False)
    with pytest.raises(ValueError, match="another selection"):  # mutant caught: a shard with another --limit
        prepare_rsna_shard(dicom["root"], dicom["labels"], out, "1/3", size=16, limit=20, workers=1,
                           progress=False)
    with pytest.raises(ValueError, match="other settings"):
        prepare_rsna_shard(dicom["root"], dicom["labels"], out, "1/3", size=32, workers=1, progress=False)
    for k in (1, 3):
        prepare_rsna_shard(dicom["root"], dicom["labels"], out, f"{k}/3", size=16, workers=1, progress=False,
                           log=quiet)
    report = out / "shards" / "report-3-of-3.json"
    good = report.read_text()
    report.write_text(good.replace('"size": 16', '"size": 32'))
    with pytest.raises(ValueError, match=r"shard 3 of 3 \(shards/report-3-of-3.json\) was prepared with other"):
        merge_shards(out)
    report.write_text(good)
    manifest = out / "shards" / "manifest-3-of-3.csv"
    manifest.write_text("".join(manifest.read_text().splitlines(keepends=True)[:-1]))  # a row lost
    with pytest.raises(ValueError, match="do not cover their selection exactly once"):
        merge_shards(out)
    assert not (out / "manifest.csv").exists()
    plain = tmp_path / "plain"
    prepare_rsna(dicom["root"], dicom["labels"], plain, size=16, limit=6, workers=1, progress=False, log=quiet)
    with pytest.raises(ValueError, match="not prepared in shards"):
        merge_shards(plain)


def test_cli_shard_flag_and_merge(dicom, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["rsna", "--dicom", str(dicom["root"]), "--labels", str(dicom["labels"]), "--out", str(out),
            "--size", "16", "--workers", "1", "--no-progress"]
    for bad in ("0/2", "3/2", "x"):
        assert main([*args, "--shard", bad]) == 2
        err = capsys.readouterr().err
        assert re.fullmatch(rf"smallct\.prepare: error: --shard {bad}: expected K/N [^\n]*\n", err)
    assert not out.exists()  # refused before anything is written
    assert main(["png", "--src", str(tmp_path), "--out", str(tmp_path / "p"), "--shard", "1/2"]) == 2
    assert re.fullmatch(r"smallct\.prepare: error: --shard 1/2: prepare png has no shards [^\n]*\n",
                        capsys.readouterr().err)
    assert main(["merge", str(out)]) == 2
    assert "merge needs a folder prepared with --shard K/N" in capsys.readouterr().err
    assert main([*args, "--shard", "1/2"]) == 0 and main([*args, "--shard", "2/2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("smallct.prepare rsna: ") and "manifest-1-of-2.csv" in lines[0]
    assert main(["merge", str(out)]) == 0
    assert capsys.readouterr().out.startswith("smallct.prepare merge: ")
    assert len(pd.read_csv(out / "manifest.csv")) == json.loads((out / "report.json").read_text())["images_in_manifest"]
