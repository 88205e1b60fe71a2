import math
import re

import numpy as np
import pytest

from smallct.datasets.rsna import LABEL_WEIGHTS, LABELS, label_weights, read_rsna_labels, WEIGHTS
from smallct.evaluation.multilabel import f1_at_half, per_label_auc, weighted_log_loss

# as in the file
SUBTYPE_ORDER = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any")


def write_long(path, labels: dict[str, dict[str, int]], extra: list[str] = ()):
    """labels.csv in stage_2_train.csv format: six rows per image, ``any`` last."""
    rows = ["ID,Label"]
    for image, values in labels.items():
        rows += [f"{image}_{t},{values.get(t, 0)}" for t in SUBTYPE_ORDER]
    path.write_text("\n".join(rows + list(extra)) + "\n")
    return path


def test_labels_and_weights_are_tied():
    assert LABELS == ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
    assert dict(zip(LABELS, WEIGHTS)) == LABEL_WEIGHTS
    assert WEIGHTS == (2.0, 1.0, 1.0, 1.0, 1.0, 1.0)


def test_label_weights_follow_the_names_in_any_order():
    assert label_weights(LABELS) == WEIGHTS
    assert label_weights(SUBTYPE_ORDER) == (1.0, 1.0, 1.0, 1.0, 1.0, 2.0)  # "any" last: its weight follows it
    assert label_weights(["normal", "hemorrhage"]) is None
    assert label_weights(LABELS[:5]) is None


def test_read_rsna_labels_wide_in_label_order(tmp_path):
    csv = write_long(tmp_path / "train.csv", {
        "ID_63eb1e259": {},
        "ID_2669954a7": {"subdural": 1, "subarachnoid": 1, "any": 1},
        "ID_0a0f3abd0": {"epidural": 1, "any": 1},
    }, extra=["ID_2669954a7_subdural,1", "ID_63eb1e259_any,0"])  # duplicates that agree
    table = read_rsna_labels(csv)
    assert table.columns.tolist() == ["ID", *LABELS]
    assert table["ID"].tolist() == ["ID_0a0f3abd0", "ID_2669954a7", "ID_63eb1e259"]
    assert table[list(LABELS)].to_numpy().tolist() == [
        [1, 1, 0, 0, 0, 0],
        [1, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 0],
    ]
    assert all(table[c].dtype == np.int64 for c in LABELS)


def test_conflicting_duplicates_are_listed(tmp_path):
    csv = write_long(tmp_path / "train.csv", {"ID_63eb1e259": {}, "ID_2669954a7": {"any": 1, "subdural": 1}},
                     extra=["ID_2669954a7_subdural,0", "ID_63eb1e259_any,0"])
    with pytest.raises(ValueError, match=re.escape(str(csv)) + ".*conflicting.*ID_2669954a7_subdural") as err:
        read_rsna_labels(csv)
    assert "ID_63eb1e259" not in str(err.value)


@pytest.mark.parametrize("extra, message", [
    (["63eb1e259_any,0"], "malformed IDs.*63eb1e259_any"),
    (["ID_63eb1e259any,0"], "malformed IDs"),
    (["ID_xyz_any,0"], "malformed IDs.*ID_xyz_any"),
    (["ID_63eb1e259_chronic,0"], "unknown subtypes chronic"),
    (["ID_63eb1e259_any,2"], "labels other than 0/1.*ID_63eb1e259_any=2"),
    (["ID_63eb1e259_any,0.5"], "labels other than 0/1"),
    (["ID_63eb1e259_any,"], "labels other than 0/1"),
    (["ID_aaaaaaaaa_any,0"], "without all six labels.*ID_aaaaaaaaa"),
])
def test_bad_label_files_name_the_file(tmp_path, extra, message):
    csv = write_long(tmp_path / "train.csv", {"ID_63eb1e259": {}}, extra=extra)
    with pytest.raises(ValueError, match=re.escape(str(csv)) + ".*" + message):
        read_rsna_labels(csv)


def test_wrong_columns_and_empty_file(tmp_path):
    csv = tmp_path / "wrong.csv"
    csv.write_text("image,label\nID_63eb1e259_any,0\n")
    with pytest.raises(ValueError, match="expected columns ID,Label"):
        read_rsna_labels(csv)
    empty = tmp_path / "empty.csv"
    empty.write_text("ID,Label\n")
    with pytest.raises(ValueError, match="no labels"):
        read_rsna_labels(empty)
    with pytest.raises(ValueError, match="cannot read"):
        read_rsna_labels(tmp_path / "absent.csv")


def test_weighted_log_loss_by_hand():
    #            any  epi  ipa  ivh  sah  sdh
    y = np.array([[1, 0, 0, 0, 0, 1],
                  [0, 0, 0, 0, 0, 0]])
    p = np.array([[0.9, 0.1, 0.2, 0.1, 0.1, 0.8],
                  [0.2, 0.05, 0.1, 0.1, 0.05, 0.1]])
    image_1 = (2 * -math.log(0.9) - math.log(0.9) - math.log(0.8) - math.log(0.9) - math.log(0.9)
               - math.log(0.8)) / 7
    image_2 = (2 * -math.log(0.8) - math.log(0.95) - math.log(0.9) - math.log(0.9) - math.log(0.95)
               - math.log(0.9)) / 7
    assert weighted_log_loss(y, p) == pytest.approx((image_1 + image_2) / 2, rel=1e-12)
    assert weighted_log_loss(y, p) == pytest.approx(0.1312889228067536, rel=1e-12)
    # "any" weighs twice: the same mistake costs more on "any" than on a subtype
    one_wrong_any = weighted_log_loss([[1, 0, 0, 0, 0, 0]], [[0.5, 0, 0, 0, 0, 0]])
    one_wrong_sdh = weighted_log_loss([[0, 0, 0, 0, 0, 1]], [[0, 0, 0, 0, 0, 0.5]])
    assert one_wrong_any == pytest.approx(2 * one_wrong_sdh, rel=1e-9)


def test_weighted_log_loss_clips():
    loss = weighted_log_loss([[1, 0, 0, 0, 0, 0]], [[0.0, 0, 0, 0, 0, 0]])
    assert loss == pytest.approx(2 * -math.log(1e-15) / 7, rel=1e-9)
    assert weighted_log_loss(np.zeros((3, 6)), np.zeros((3, 6))) == pytest.approx(-math.log(1 - 1e-15), abs=1e-14)


def test_weighted_log_loss_checks_shapes():
    with pytest.raises(ValueError, match=r"shape \(N, 6\)"):
        weighted_log_loss(np.zeros((2, 5)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="y_true"):
        weighted_log_loss(np.zeros((2, 6)), np.zeros((3, 6)))
    with pytest.raises(ValueError, match="finite"):
        weighted_log_loss(np.zeros((1, 6)), np.full((1, 6), np.nan))


def test_per_label_auc_and_f1():
    y = np.array([[1, 0, 1, 0, 0, 1],
                  [0, 0, 0, 0, 1, 1],
                  [1, 0, 1, 0, 0, 0],
                  [0, 0, 0, 0, 1, 0]])
    p = np.array([[0.9, 0.1, 0.4, 0.6, 0.2, 0.5],
                  [0.2, 0.2, 0.6, 0.1, 0.7, 0.4],
                  [0.8, 0.3, 0.7, 0.2, 0.3, 0.6],
                  [0.1, 0.4, 0.2, 0.3, 0.1, 0.3]])
    auc = per_label_auc(y, p)
    assert list(auc) == list(LABELS)
    assert auc["any"] == 1.0
    assert math.isnan(auc["epidural"]) and math.isnan(auc["intraventricular"])  # one class only
    assert auc["intraparenchymal"] == 0.75  # 3 of 4 positive/negative pairs in order
    assert auc["subarachnoid"] == 0.5
    assert auc["subdural"] == 0.5
    f1 = f1_at_half(y, p)
    assert f1["any"] == 1.0
    assert math.isnan(f1["epidural"])  # no positive, none predicted
    assert f1["intraventricular"] == 0.0  # one false positive
    assert f1["intraparenchymal"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))  # tp 1, fp 1, fn 1
    assert f1["subarachnoid"] == pytest.approx(2 / 3)  # tp 1, fn 1
    assert f1["subdural"] == 0.5  # p >= 0.5 counts: tp 1 (p 0.5), fp 1 (0.6), fn 1 (0.4)
