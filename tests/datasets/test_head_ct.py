import shutil

import pandas as pd

from smallct import cli

from smallct.datasets.head_ct import MANIFEST, build_manifest, packaged_manifest, verify
from tests.conftest import REPO


def main(argv):
    """``python -m smallct.data ARGV``, in this process."""
    return cli.run("data", argv)


def test_packaged_manifest_is_the_top_level_one():
    assert (REPO / "data_manifest.csv").read_text() == (REPO / "smallct" / "datasets" / MANIFEST).read_text()
    table = packaged_manifest()
    assert len(table) == 200 and (table["mode"] == "RGBA").sum() == 12
    assert table["label"].value_counts().to_dict() == {"1": 100, "0": 100}


def test_real_copy_matches(head_ct_dir):
    report = verify(head_ct_dir)
    assert report.ok and report.checked == 200


def test_manifest_rebuilt_from_files_equals_packaged(head_ct_dir):
    rebuilt = build_manifest(head_ct_dir)
    pd.testing.assert_frame_equal(rebuilt.astype(str), packaged_manifest().astype(str))


def test_verify_names_missing_changed_and_unexpected_files(tmp_path, head_ct_dir, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ["000.png", "001.png", "150.png", "labels.csv"]:
        shutil.copy(head_ct_dir / name, copy / name)
    manifest = packaged_manifest()
    manifest = manifest[manifest["file"].isin(["000.png", "001.png", "150.png", "199.png"])]
    (copy / "001.png").write_bytes((copy / "001.png").read_bytes()[:-10] + b"0123456789")
    shutil.copy(head_ct_dir / "002.png", copy / "new.png")
    manifest.to_csv(tmp_path / "m.csv", index=False)
    report = verify(copy, manifest)
    assert not report.ok
    assert report.missing == ["199.png"] and report.changed == ["001.png"] and report.unexpected == ["new.png"]
    assert main(["verify", str(copy), "--manifest", str(tmp_path / "m.csv")]) == 1
    out = capsys.readouterr().out
    assert "199.png" in out and "001.png" in out and "new.png" in out
    assert main(["verify", str(tmp_path / "nowhere")]) == 2
