"""Prediction with the fold models of a run: reproduces out-of-fold probabilities, TTA, DICOM, RSNA submission."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from smallct.apply import predict as P
from smallct.apply import submission as S
from smallct.predict import main
from smallct.datasets.folder import load_dataset
from smallct.engine.run_models import load_fold_model, load_run, Run


def quiet(*_args):
    pass


def test_load_run_and_fold_model(small_run):
    run = load_run(small_run)
    assert [c.name for c in run.checkpoints] == ["r0_f0", "r0_f1"]
    assert run.arch == "resnet18" and run.task == "binary" and run.input["img_size"] == 32
    model, info = load_fold_model(run.checkpoints[1].path)
    assert not model.training and info["fold"] == 1 and info["num_outputs"] == 2 and "model" not in info
    with pytest.raises(ValueError, match="no fold model 'r0_f7'"):
        run.checkpoint("r0_f7")
    with pytest.raises(ValueError, match="not a smallct.cv run folder"):
        load_run(small_run.parent)


def test_load_fold_model_is_strict(small_run, tmp_path):
    ckpt = torch.load(small_run / "checkpoints" / "r0_f0.pt", weights_only=True)
    del ckpt["model"]["layer4.1.bn2.weight"]
    torch.save(ckpt, tmp_path / "r0_f0.pt")
    with pytest.raises(ValueError, match="do not fit resnet18"):
        load_fold_model(tmp_path / "r0_f0.pt")


def test_each_fold_model_reproduces_its_out_of_fold_probabilities(small_run, phantom_dir):
    run = load_run(small_run)
    dataset = load_dataset(phantom_dir)
    oof = run.oof().set_index("id")
    for ckpt in run.checkpoints:
        test = json.loads((small_run / "folds" / f"{ckpt.name}.json").read_text())["test_index"]
        files = [dataset.files[i] for i in test]
        table = P.predict([run], files, folds=[ckpt.name], progress=False, log=quiet)
        expected = oof.loc[[dataset.ids[i] for i in test]]
        assert (expected["fold"] == ckpt.fold).all()
        np.testing.assert_allclose(table["prob"], expected["prob"], atol=1e-5)
        assert (table["pred"].to_numpy() == expected["pred"].to_numpy()).all()


def test_predict_applies_the_tta_the_run_was_evaluated_with(small_tta_run, small_run, phantom_dir, tmp_path,
                                                            capsys):
    # smallct.cv evaluates with the mirror by default; 0.3.0's predict did not, so without --tta it did not give
    # oof.csv again (mutants: the default off, or on whatever run.json says)
    run = load_run(small_tta_run)
    assert run.record["tta"] is True and P.run_tta(run) and not P.run_tta(load_run(small_run))
    dataset = load_dataset(phantom_dir)
    oof = run.oof().set_index("id")
    test = json.loads((small_tta_run / "folds" / "r0_f1.json").read_text())["test_index"]
    files = [dataset.files[i] for i in test]
    expected = oof.loc[[dataset.ids[i] for i in test], "prob"].to_numpy()
    out = tmp_path / "preds.csv"
    assert main(["--run", str(small_tta_run), "--data", *map(str, files), "--fold", "r0_f1", "--out", str(out),
                 "--no-progress"]) == 0
    assert "with left-right TTA (as the run was evaluated)" in capsys.readouterr().out
    np.testing.assert_allclose(pd.read_csv(out, dtype={"id": str})["prob"], expected, atol=1e-5)
    plain = P.predict([run], files, tta=False, folds=["r0_f1"], progress=False, log=quiet)["prob"].to_numpy()
    assert np.abs(plain - expected).max() > 1e-4  # --no-tta still overrides it


def test_cli_averages_the_fold_models(small_run, phantom_dir, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert main(["--run", str(small_run), "--data", str(phantom_dir), "--out", str(out), "--no-progress"]) == 0
    table = pd.read_csv(out, dtype={"id": str})
    assert len(table) == 40 and list(table.columns) == ["id", "file", "prob", "pred", "pred_class"]
    files = sorted(phantom_dir.glob("*.png"))
    assert table["id"].iloc[0] == "000" and table["file"].tolist() == [f.name for f in files]  # the file's name
    run = load_run(small_run)
    x = P.model_inputs(files, run.input, progress=False)
    per_fold = P.fold_probabilities(run, x, progress=False)
    assert per_fold.shape == (2, 40, 2)
    assert np.abs(per_fold[0] - per_fold[1]).max() > 1e-3  # two different models ...
    np.testing.assert_allclose(table["prob"], per_fold.mean(0)[:, 1], atol=1e-6)  # ... averaged
    assert (table["pred"] == (table["prob"] > 0.5).astype(int)).all()
    chunked = P.predict([run], files, chunk=7, progress=False, log=quiet)  # 6 chunks
    np.testing.assert_allclose(chunked["prob"], table["prob"], atol=1e-6)


def test_oof_and_predictions_join_on_id_and_on_file(small_run, phantom_dir, tmp_path, capsys):
    # the phantom's labels.csv writes ids 0..39 for 000.png..039.png, as the Head CT set does: both tables must
    # carry the file's own stem, as text, and its name
    assert (phantom_dir / "labels.csv").read_text().splitlines()[1:3] == ["0,1", "1,1"]
    out = tmp_path / "preds.csv"
    assert main(["--run", str(small_run), "--data", str(phantom_dir), "--out", str(out), "--no-progress"]) == 0
    assert "prob, sensitivity and the ROC curve are for the positive class 1" in capsys.readouterr().out
    oof = pd.read_csv(small_run / "oof.csv", dtype=str)
    preds = pd.read_csv(out, dtype=str)
    stems = [f"{i:03d}" for i in range(40)]
    assert sorted(oof["id"]) == sorted(preds["id"]) == stems  # zero padding kept, never "0", "1", ...
    assert sorted(oof["file"]) == sorted(preds["file"]) == [f"{s}.png" for s in stems]
    assert "\n000,000.png," in (small_run / "oof.csv").read_text() and "\n000,000.png," in out.read_text()
    on_id = oof.merge(preds, on="id", suffixes=("_oof", "_pred"), validate="one_to_one")
    on_file = oof.merge(preds, on="file", suffixes=("_oof", "_pred"), validate="one_to_one")
    assert len(on_id) == len(on_file) == 40
    assert (on_id["file_oof"] == on_id["file_pred"]).all() and (on_file["id_oof"] == on_file["id_pred"]).all()
    # the join pairs each file with its own label: labels.csv's row of id int(stem)
    labels = pd.read_csv(phantom_dir / "labels.csv", skipinitialspace=True, dtype=str)
    truth = {f"{int(i):03d}": lab for i, lab in zip(labels["id"], labels["hemorrhage"])}
    assert on_file.set_index("id_oof")["label"].to_dict() == truth
    assert set(preds["pred_class"]) <= {"0", "1"}  # the class names of run.json


def test_runs_are_averaged_with_equal_weight(small_run, phantom_dir, tmp_path):
    # a second "run": the same folder with only its second fold model
    other = tmp_path / "other"
    shutil.copytree(small_run, other)
    (other / "checkpoints" / "r0_f0.pt").unlink()
    files = load_dataset(phantom_dir).files[:6]
    out = tmp_path / "preds.csv"
    assert main(["--run", str(small_run), "--run", str(other), "--data", *map(str, files), "--out", str(out),
                   "--no-progress"]) == 0
    fold = [P.predict([small_run], files, folds=[f], progress=False, log=quiet)["prob"] for f in ("r0_f0", "r0_f1")]
    expected = 0.5 * (fold[0] + fold[1]) / 2 + 0.5 * fold[1]  # each run's folds first, then the runs
    np.testing.assert_allclose(pd.read_csv(out)["prob"], expected, atol=1e-6)


def _png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def test_tta_changes_nothing_for_a_left_right_symmetric_image(small_run, tmp_path):
    # 32 x 32 like the run's input, no dark border: prepare() leaves it as it is
    rows, cols = np.mgrid[0:32, 0:32]
    grey = 40 + 6 * rows + 3 * np.abs(cols - 15.5)  # mirror-symmetric, not top-bottom symmetric
    symmetric = _png(tmp_path / "symmetric.png", np.repeat(grey[:, :, None], 3, axis=2))
    asymmetric = _png(tmp_path / "asymmetric.png", np.repeat((40 + 6 * rows + 5 * cols)[:, :, None], 3, axis=2))
    files = [symmetric, asymmetric]
    plain = P.predict([small_run], files, tta=False, progress=False, log=quiet)["prob"].to_numpy()
    tta = P.predict([small_run], files, tta=True, progress=False, log=quiet)["prob"].to_numpy()
    assert tta[0] == pytest.approx(plain[0], abs=1e-6)
    assert abs(tta[1] - plain[1]) > 1e-5  # the mirror is used: an asymmetric image changes


def test_runs_of_other_classes_are_not_averaged(small_run):
    run = load_run(small_run)
    other = Run(Path("other"), {**run.record, "class_names": ["normal", "bleed"]}, run.checkpoints)
    with pytest.raises(ValueError, match="cannot be averaged"):
        P.check_compatible([run, other])


def test_cli_errors_are_one_line(small_run, tmp_path, capsys):
    assert main(["--run", str(small_run), "--data", str(tmp_path / "absent"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smallct.predict: error: ") and "absent: no such file or folder" in err
    assert len(err.strip().splitlines()) == 1
    png = _png(tmp_path / "a.png", np.full((8, 8), 99))
    assert main(["--run", str(small_run), "--data", str(png), "--submission", str(tmp_path / "s.csv")]) == 2
    assert "needs a multi-label RSNA run" in capsys.readouterr().err
    assert main(["--run", str(small_run), "--data", str(png), "--fold", "r1_f0"]) == 2
    assert "no fold model 'r1_f0'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def rsna_run(tmp_path_factory):
    """A tiny multi-label run on PNGs prepared from synthetic RSNA DICOM (smallct.prepare rsna)."""
    from smallct import cv, prepare
    from smallct.datasets.synthetic_dicom import write_synthetic_rsna

    root = tmp_path_factory.mktemp("rsna")
    synthetic = write_synthetic_rsna(root / "dicom", n_patients=6, slices_per_series=4, seed=1)
    assert prepare.main(["rsna", "--dicom", str(synthetic["root"]), "--labels", str(synthetic["labels"]),
                         "--out", str(root / "prepared"), "--size", "48", "--workers", "1", "--no-progress"]) == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMALLCT_CACHE", str(root / "cache"))
        assert cv.main(["--data", str(root / "prepared"), "--arch", "resnet18", "--weights", "none",
                        "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--folds", "2", "--no-tta",
                        "--workers", "1", "--out", str(root / "run"), "--no-progress"]) == 0
    return root, synthetic


def test_dicom_input_is_prepared_as_the_training_pngs(rsna_run, tmp_path):
    root, synthetic = rsna_run
    run = load_run(root / "run")
    assert run.task == "multilabel" and run.input["windows"] == ["brain", "subdural", "bone"]
    assert run.input["prepared_size"] == 48
    dicom = [f for f in synthetic["files"] if f.stem != synthetic["corrupt"]]
    pngs = [root / "prepared" / "images" / f"{f.stem}.png" for f in dicom]
    x_dicom = P.model_inputs(dicom, run.input, progress=False)
    x_png = P.model_inputs(pngs, run.input, progress=False)
    assert torch.equal(x_dicom, x_png)

    out, sub = tmp_path / "preds.csv", tmp_path / "submission.csv"
    assert main(["--run", str(root / "run"), "--data", *map(str, dicom), "--out", str(out),
                   "--submission", str(sub), "--no-progress"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["id", "file", *(f"prob_{n}" for n in run.class_names)]
    assert table["id"].tolist() == [f.stem for f in dicom]
    submission = pd.read_csv(sub)
    assert list(submission.columns) == ["ID", "Label"] and len(submission) == 6 * len(dicom)
    first = table.iloc[0]
    assert submission["ID"].iloc[:6].tolist() == [f"{first['id']}_{n}" for n in run.class_names]
    np.testing.assert_allclose(submission["Label"].iloc[:6], [first[f"prob_{n}"] for n in run.class_names])


def test_a_fold_model_prepared_otherwise_than_run_json_is_refused(small_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(small_run, run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    record["input"]["resize"] = "squash"  # as if the fold models came from a candidate that pads, run.json squashes
    (run_dir / "run.json").write_text(json.dumps(record))
    run = load_run(run_dir)
    with pytest.raises(ValueError, match="resize differ from run.json"):
        P.load_models(run, run.checkpoints)


def test_find_inputs_lists_dicom_series_along_the_normal(tmp_path):
    from smallct.datasets.synthetic_dicom import write_synthetic_rsna

    synthetic = write_synthetic_rsna(tmp_path / "dicom", n_patients=3, slices_per_series=5, seed=2, size=32, tilt=20)
    picture = tmp_path / "dicom" / "ID_0000.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(picture)
    series = synthetic["series"]
    dup = tmp_path / "dicom" / "ID_fffffffff.dcm"  # the last slice of the first series, stored twice
    first = next(iter(series))
    shutil.copy(tmp_path / "dicom" / f"{series[first][-1]}.dcm", dup)
    lines = []
    files = P.find_inputs([tmp_path / "dicom"], workers=1, log=lines.append)
    assert files[0] == picture  # an image keeps its place by name; the DICOM slices fill theirs in series order
    stems = [f.stem for f in files[1:]]
    runs = {uid: stems.index(ids[0]) for uid, ids in series.items()}
    for uid, ids in series.items():  # 0.3.0: by file name
        expected = ids + ([dup.stem] if uid == first else [])
        assert stems[runs[uid]:runs[uid] + len(expected)] == expected
    line, = lines
    assert line == (f"{tmp_path / 'dicom'}: series {first}: 6 slices; 1 duplicate position ({series[first][-1]} = "
                    f"{dup.stem} at {line.split(' at ')[1].split(')')[0]}): ordered by id")
    given = [synthetic["files"][3], synthetic["files"][0]]
    assert P.find_inputs(given) == given  # files named one by one keep the order given


def test_predict_lists_a_dicom_folder_in_series_order(rsna_run, tmp_path):
    root, synthetic = rsna_run
    folder = tmp_path / "slices"
    folder.mkdir()
    for f in synthetic["files"]:
        if f.stem != synthetic["corrupt"]:
            shutil.copy(f, folder / f.name)
    out = tmp_path / "preds.csv"
    assert main(["--run", str(root / "run"), "--data", str(folder), "--out", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    ids = pd.read_csv(out)["id"].tolist()
    order = [i for series in synthetic["series"].values() for i in series if i != synthetic["corrupt"]]
    assert sorted(ids) == sorted(order) and ids != sorted(ids)  # not by file name, as 0.3.0 listed them
    for series in synthetic["series"].values():
        kept = [i for i in series if i != synthetic["corrupt"]]
        assert ids[ids.index(kept[0]):ids.index(kept[0]) + len(kept)] == kept


def _unreadable_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "unreadable" in line]


def test_a_submission_has_every_image_the_unreadable_one_at_the_training_rates(rsna_run, tmp_path, capsys):
    # 0.3.0: exit 2 and nothing written. Mutants: rates from the predictions (or 0.5) instead of oof.csv's labels;
    # the unreadable rows left out or appended after the series; no line or no report naming the file
    root, synthetic = rsna_run
    run, corrupt = load_run(root / "run"), synthetic["corrupt"]
    out, sub = tmp_path / "preds.csv", tmp_path / "sub.csv"
    capsys.readouterr()
    assert main(["--run", str(root / "run"), "--data", str(synthetic["root"]), "--out", str(out),
                 "--submission", str(sub), "--workers", "1", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    submission, table = pd.read_csv(sub), pd.read_csv(out)
    order = [f.stem for f in P.find_inputs([synthetic["root"]], workers=1, log=quiet)]
    assert len(submission) == 6 * len(synthetic["files"]) and len(order) == len(synthetic["files"])
    assert submission["ID"].tolist() == [f"{i}_{n}" for i in order for n in run.class_names]  # the series' order
    labels = pd.read_csv(root / "run" / "oof.csv").drop_duplicates("id")[run.class_names]
    rates = submission.set_index("ID").loc[[f"{corrupt}_{n}" for n in run.class_names], "Label"]
    np.testing.assert_allclose(rates, labels.mean().to_numpy())
    assert corrupt not in set(table["id"]) and len(table) == len(order) - 1  # --out: what the models saw
    line, = _unreadable_lines(stdout)
    assert str(synthetic["root"] / f"{corrupt}.dcm") in line and "label rates" in line and str(sub.parent) in line
    report = json.loads((tmp_path / "sub.unreadable.json").read_text())
    entry, = report["files"]
    assert entry["file"] == str(synthetic["root"] / f"{corrupt}.dcm") and entry["id"] == corrupt
    assert "cannot decode pixel data" in entry["reason"]
    assert report["given"]["rates"] == pytest.approx(dict(zip(run.class_names, labels.mean())))
    assert str(root / "run" / "oof.csv") in report["given"]["from"][0]


def test_on_unreadable_fail_refuses_and_writes_nothing(rsna_run, tmp_path, capsys):
    root, synthetic = rsna_run
    out, sub = tmp_path / "preds.csv", tmp_path / "sub.csv"
    assert main(["--run", str(root / "run"), "--data", str(synthetic["root"]), "--out", str(out),
                 "--submission", str(sub), "--on-unreadable", "fail", "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err  # 0.3.0: no such flag
    assert f"{synthetic['corrupt']}.dcm: cannot decode pixel data" in err and len(err.strip().splitlines()) == 1
    assert sorted(tmp_path.iterdir()) == []


def test_without_a_submission_the_unreadable_file_is_listed_beside_the_predictions(rsna_run, tmp_path, capsys):
    # chosen as smallct.prepare rsna does: readable files predicted, the unreadable one named (0.3.0: exit 2)
    root, synthetic = rsna_run
    out = tmp_path / "preds.csv"
    capsys.readouterr()
    assert main(["--run", str(root / "run"), "--data", str(synthetic["root"]), "--out", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    line, = _unreadable_lines(capsys.readouterr().out)
    assert "left out of the predictions" in line and f"{synthetic['corrupt']}.dcm" in line
    assert len(pd.read_csv(out)) == len(synthetic["files"]) - 1
    report = json.loads((tmp_path / "preds.unreadable.json").read_text())
    assert [e["id"] for e in report["files"]] == [synthetic["corrupt"]] and report["given"] is None


def test_an_unreadable_file_keeps_its_place_and_its_id(rsna_run, tmp_path):
    # the id: SOPInstanceUID where the header reads, else the file name (mutant: always the name); the place in
    # the files given is where context will see a gap
    root, synthetic = rsna_run
    corrupt = synthetic["corrupt"]
    renamed = tmp_path / "ID_0000aaaa.dcm"
    shutil.copy(synthetic["root"] / f"{corrupt}.dcm", renamed)
    garbage = tmp_path / "ID_0000bbbb.dcm"
    garbage.write_bytes(b"not a DICOM file")
    good = [f for f in synthetic["files"] if f.stem != corrupt][:3]
    found: list = []
    table = P.predict([root / "run"], [good[0], renamed, good[1], garbage, good[2]], progress=False, log=quiet,
                      workers=1, unreadable=found)
    assert [(u.id, u.index) for u in found] == [(corrupt, 1), ("ID_0000bbbb", 3)]
    assert "not a DICOM image" in found[1].reason and table["id"].tolist() == [f.stem for f in good]
    every, given = S.fill_unreadable(table, found, [load_run(root / "run")])
    assert every["id"].tolist() == [good[0].stem, corrupt, good[1].stem, "ID_0000bbbb", good[2].stem]
    assert every.loc[1, "prob_any"] == every.loc[3, "prob_any"] == given["rates"]["any"]
    with pytest.raises(ValueError, match="none of the 2 files can be read"):
        P.predict([root / "run"], [renamed, garbage], progress=False, log=quiet, workers=1, unreadable=[])


def test_an_unfinished_sequence_folder_is_refused(tmp_path, capsys):
    # mutant caught: a sequence folder accepted on its sequence.json alone, whose GRUs (checkpoints/) would then
    # stand for only the folds that finished, averaged as if they were all of them
    folder = tmp_path / "seq"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "sequence.json").write_text(json.dumps({"base_run": str(tmp_path / "run"), "features": "logits"}))
    with pytest.raises(ValueError, match="a sequence folder whose folds have not all finished"):
        P.resolve_runs([folder])
    assert main(["--run", str(folder), "--data", str(tmp_path), "--out", str(tmp_path / "p.csv"),
                 "--no-progress"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "p.csv").exists()


def test_smoothing_without_a_series_names_both_fixes(small_run, phantom_dir, tmp_path, capsys):
    # PNG files have no series: --smooth 3 is refused in one line that names a DICOM folder and --smooth 1 (the
    # fix for a run made with --smooth, which predict follows by default); mutant caught: the hint left out
    png = sorted(Path(phantom_dir).rglob("*.png"))[:2]
    assert main(["--run", str(small_run), "--data", *map(str, png), "--smooth", "3", "--out",
                 str(tmp_path / "p.csv"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "smoothing over 3 slices" in err and err.endswith("or --smooth 1")
    assert not (tmp_path / "p.csv").exists()
