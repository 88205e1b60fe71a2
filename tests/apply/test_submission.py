"""Tests of smallct.apply.submission: the RSNA submission format, and unreadable files named in one short line."""

import json

import pandas as pd
import pytest

from smallct.apply import submission as S
from smallct.apply.predict import Unreadable


def test_rsna_submission_needs_image_ids():
    table = pd.DataFrame({"id": ["ID_0a1b", "scan7"], "prob_any": [0.1, 0.2]})
    with pytest.raises(ValueError, match="scan7 are not RSNA image ids"):
        S.rsna_submission(table, ["any"])
    table = pd.DataFrame({"id": ["ID_0a1b", "ID_ff"], "prob_any": [0.1, 0.2], "prob_epidural": [0.3, 0.4]})
    sub = S.rsna_submission(table, ["any", "epidural"])
    assert sub["ID"].tolist() == ["ID_0a1b_any", "ID_0a1b_epidural", "ID_ff_any", "ID_ff_epidural"]
    assert sub["Label"].tolist() == [0.1, 0.3, 0.2, 0.4]


def test_many_unreadable_files_are_named_in_one_short_line(tmp_path):
    found = [Unreadable(tmp_path / f"ID_{k:04x}.dcm", f"ID_{k:04x}", "cannot read DICOM", k) for k in range(5)]
    lines = []
    path = S.report_unreadable(found, tmp_path / "sub.csv", {"rates": {}}, log=lines.append)
    line, = lines
    assert path == tmp_path / "sub.unreadable.json" and line.count(".dcm") == 3 and line.endswith("and 2 more")
    assert len(json.loads(path.read_text())["files"]) == 5
    assert S.report_unreadable([], tmp_path / "other.csv") is None and not (tmp_path / "other.unreadable.json").exists()
