"""Nested cross-validation on a small phantom set: the contract, no peeking, resume, and agreement with cv."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from smallct.analysis.compare import compare_runs
from smallct.config.run import CVConfig, DataConfig, TrainConfig
from smallct.engine.cv import run_cv
from smallct.evaluation.metrics import choose_threshold
from smallct.config.studies import NestedConfig
from smallct.data.similar import near_duplicate_groups
from smallct.datasets.folder import load_dataset
from smallct.engine.nested import run_nested
from smallct.cli.commands.nested import config_from_argv
from smallct.nested import main


def candidate(data, lr, epochs=1):
    return CVConfig(arch="resnet18", weights="none", device="cpu", workers=1,
                    data=DataConfig(data=data, img_size=32),
                    train=TrainConfig(epochs=epochs, batch_size=8, lr=lr, tta=False))


def test_nested_chooses_on_training_parts_only_and_writes_a_cv_run_folder(phantom_dir, tmp_path):
    out = tmp_path / "nested"
    cfg = NestedConfig(candidates={"slow": candidate(phantom_dir, 1e-4), "fast": candidate(phantom_dir, 3e-3)},
                       inner_folds=2, folds=2, out=out)
    result = run_nested(cfg, progress=False, log=lambda *_: None)
    run = json.loads((out / "run.json").read_text())
    assignment = np.array(run["folds"]["assignment"][0])
    ids = np.array(run["folds"]["ids"])
    choices = result.results["nested"]["choices"]
    assert len(choices) == 2 and sum(result.results["nested"]["times_chosen"].values()) == 2
    for choice in choices:
        k = choice["fold"]
        test_ids = set(ids[assignment == k])
        scores = {}
        for name in ("slow", "fast"):
            inner = out / "inner" / f"r0_f{k}" / name
            inner_ids = set(json.loads((inner / "run.json").read_text())["folds"]["ids"])
            # no peeking: the inner runs saw the outer training part, every image of it, and nothing else
            assert inner_ids == set(ids[assignment != k]) and not inner_ids & test_ids
            scores[name] = json.loads((inner / "results.json").read_text())["pooled_oof"]["accuracy"]
        assert choice["inner_scores"] == pytest.approx(scores)
        assert choice["candidate"] == max(scores, key=lambda n: (scores[n], n == "slow"))  # ties: first listed
        winner = pd.read_csv(out / "inner" / f"r0_f{k}" / choice["candidate"] / "oof.csv")
        assert choice["threshold"] == choose_threshold(winner["label"], winner["prob"])
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    assert len(oof) == 40 and oof["id"].is_unique
    assert (oof["pred_at_threshold"] == (oof["prob"] >= oof["threshold"]).astype(int)).all()
    figures = result.results["nested"]["at_chosen_threshold"]
    assert figures["pooled_oof"]["accuracy"] == pytest.approx((oof["pred_at_threshold"] == oof["label"]).mean())
    assert len(list((out / "checkpoints").glob("r0_f*.pt"))) == 2
    assert "nested CV" in result.results["selection"] and "nested CV" in result.results["settings_source"]

    # resume after a crash in outer fold 1 (its fold file and one of its inner fold files lost): only those
    # are redone, nothing finished is touched, and the same choices come out
    (out / "folds" / "r0_f1.json").unlink()
    (out / "inner" / "r0_f1" / "fast" / "folds" / "r0_f0.json").unlink()
    kept = {f: f.stat().st_mtime_ns for f in out.rglob("*.json") if f.parent.name == "folds"}
    logs = []
    again = run_nested(cfg, progress=False, log=logs.append)
    assert any("resuming: 1 outer folds done" in line for line in logs)
    assert again.results["nested"]["choices"] == choices
    assert all(f.stat().st_mtime_ns == t for f, t in kept.items())
    assert (out / "folds" / "r0_f1.json").is_file()
    # another set of candidates, or a plain cv run in the same folder, is refused; so is cv in a nested folder
    with pytest.raises(ValueError, match=r"other settings \(candidates \(slow, fast there\), "):  # RunFolder's rule
        run_nested(replace(cfg, candidates={"fast": cfg.candidates["fast"]}), progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match="holds a smallct.nested run"):
        run_cv(replace(cfg.candidates["fast"], folds=2, out=out), progress=False, log=lambda *_: None)
    # a run of smallct <= 0.3, whose inner folds regrouped each training part, is refused up front, not half-way
    # through when an inner run's folds differ (mutant caught: inner_groups left out of the resume comparison)
    for name in ("nested.json", "run.json"):
        record = json.loads((out / name).read_text())
        (record["nested"] if name == "run.json" else record).pop("inner_groups")
        (out / name).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"other settings \(inner folds \(the run there regrouped"):
        run_nested(cfg, progress=False, log=lambda *_: None)


def test_a_plain_cv_folder_is_not_taken_for_a_nested_one(phantom_dir, tmp_path):
    run_cv(replace(candidate(phantom_dir, 3e-3), folds=2, out=tmp_path / "cv"), progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match="holds a smallct.cv run, not a nested one"):
        run_nested(NestedConfig(candidates={"a": candidate(phantom_dir, 3e-3)}, folds=2, out=tmp_path / "cv"),
                   progress=False, log=lambda *_: None)


def test_a_failing_candidate_loses_the_choice_and_is_recorded(phantom_dir, tmp_path):
    bad = candidate(phantom_dir, float("inf"))  # the first step makes every weight NaN: FloatingPointError
    cfg = NestedConfig(candidates={"bad": bad, "ok": candidate(phantom_dir, 3e-3)}, inner_folds=2, folds=2,
                       out=tmp_path / "n")
    logs = []
    result = run_nested(cfg, progress=False, log=logs.append)
    for choice in result.results["nested"]["choices"]:
        assert choice["candidate"] == "ok" and list(choice["inner_scores"]) == ["ok"]
        assert "FloatingPointError" in choice["failed"]["bad"]
    assert any("failed: bad" in line for line in logs)
    with pytest.raises(ValueError, match="every candidate's inner run failed"):
        run_nested(NestedConfig(candidates={"bad": bad}, inner_folds=2, folds=2, out=tmp_path / "m"),
                   progress=False, log=lambda *_: None)


def test_one_candidate_refit_reproduces_plain_cv_and_pairs_with_it(phantom_dir, tmp_path):
    single = candidate(phantom_dir, 3e-3, epochs=2)
    nested = run_nested(NestedConfig(candidates={"only": single}, inner_folds=2, folds=2, out=tmp_path / "n"),
                        progress=False, log=lambda *_: None)
    plain = run_cv(replace(single, folds=2, out=tmp_path / "cv"), progress=False, log=lambda *_: None)
    # the same folds and fold seeds: the outer models are those of the plain run, so are their figures at 0.5
    assert nested.oof["prob"].to_numpy() == pytest.approx(plain.oof["prob"].to_numpy(), abs=1e-6)
    assert nested.results["pooled_oof"]["accuracy"] == plain.results["pooled_oof"]["accuracy"]
    paired = compare_runs(tmp_path / "n", tmp_path / "cv", n_boot=200)
    assert paired["accuracy"]["difference"] == pytest.approx(0.0)
    assert paired["roc_auc"]["difference"] == pytest.approx(0.0)


def test_no_refit_averages_the_inner_fold_models(phantom_dir, tmp_path):
    from smallct.data.cache import load_images
    from smallct.engine.run_models import load_fold_model, load_run
    from smallct.engine.train import predict_proba

    out = tmp_path / "n"
    result = run_nested(NestedConfig(candidates={"only": candidate(phantom_dir, 3e-3)}, inner_folds=2, folds=2,
                                     refit=False, out=out), progress=False, log=lambda *_: None)
    assert not list((out / "checkpoints").glob("*.pt"))  # no outer fit
    assert result.results["nested"]["outer_model"] == "mean of the inner fold models"
    fold = json.loads((out / "folds" / "r0_f1.json").read_text())
    inner = load_run(out / "inner" / "r0_f1" / "only")
    files = [load_run(out).dataset(log=lambda *_: None).files[i] for i in fold["test_index"]]
    x = load_images(files, 32, "pad", True, workers=1, progress=False)
    probs = []
    for ckpt in inner.checkpoints:
        model, info = load_fold_model(ckpt.path)
        probs.append(predict_proba(model, x, info["mean"], info["std"], "binary"))
    assert len(probs) == 2
    assert np.asarray(fold["probs"]) == pytest.approx(np.mean(probs, axis=0), abs=1e-5)


def test_cli_flags_apply_to_every_candidate_and_bad_input_is_one_line(phantom_dir, tmp_path, capsys):
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"_note": "test", "lr": 0.01, "epochs": 7, "folds": 3, "seed": 9, "repeats": 2}))
    cfg, progress = config_from_argv(["--candidates", f"lite0_finetune,{b}", "--data", str(phantom_dir),
                                      "--epochs", "2", "--folds", "4", "--seed", "3", "--inner-folds", "2",
                                      "--select", "roc_auc", "--no-progress", "--out", str(tmp_path / "o")])
    assert list(cfg.candidates) == ["lite0_finetune", "b"] and not progress
    lite, other = cfg.candidates["lite0_finetune"], cfg.candidates["b"]
    assert lite.arch == "tf_efficientnet_lite0" and lite.data.img_size == 192 and lite.train.lr == 5e-4
    assert other.train.lr == 0.01 and lite.train.epochs == other.train.epochs == 2  # the command line wins
    assert (cfg.folds, cfg.seed, cfg.repeats, cfg.inner_folds, cfg.select) == (4, 3, 1, 2, "roc_auc")
    first_b, _ = config_from_argv(["--candidates", f"{b},lite0_finetune"])
    assert (first_b.folds, first_b.seed, first_b.repeats) == (5, 0, 1)  # a candidate's file never sets them
    assert main(["--candidates", "no_such_recipe", "--data", str(phantom_dir)]) == 2
    assert main(["--candidates", str(b), "--params", str(b)]) == 2
    assert main(["--candidates", f"{b},{b}"]) == 2
    assert main(["--candidates", ","]) == 2
    assert main(["--candidates", str(b), "--data", str(phantom_dir), "--arch", "resnet18", "--weights", "none",
                 "--select", "mean_auc", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("smallct.nested: error:") for line in err)
    assert "no_such_recipe" in err[0] and "--candidates" in err[1] and "two candidates are named b" in err[2]
    assert "no settings file or recipe name given" in err[3]
    assert "mean_auc: not a figure of a binary task" in err[4]
    assert not (tmp_path / "o" / "inner").exists()  # refused before any fit


def test_the_threshold_setting_is_checked(phantom_dir, tmp_path):
    with pytest.raises(ValueError, match="--threshold True: expected one of inner, fixed"):  # when it is built
        NestedConfig(candidates={"a": candidate(phantom_dir, 3e-3)}, threshold=True, out=tmp_path / "n")
    cfg = NestedConfig(candidates={"a": candidate(phantom_dir, 3e-3)}, out=tmp_path / "n")
    cfg.threshold = True  # changed after it was built: run_nested checks again, before any work
    with pytest.raises(ValueError, match="--threshold True: choose inner"):
        run_nested(cfg, progress=False, log=lambda *_: None)
    assert not (tmp_path / "n").exists()


def test_context_and_smoothing_candidates_are_refused_before_any_work(phantom_dir, tmp_path):
    for change in ({"context": 1}, {"smooth": 3}):
        c = candidate(phantom_dir, 3e-3)
        for k, v in change.items():
            setattr(c, k, v)
        cfg = NestedConfig(candidates={"a": c}, out=tmp_path / "n")
        with pytest.raises(ValueError, match="candidate a: --context and --smooth are smallct.cv's"):
            run_nested(cfg, progress=False, log=lambda *_: None)
    assert not (tmp_path / "n").exists()



def write_chain_set(folder):
    """36 unrelated block-noise images and a planted chain of 4, ``036~037~038~039``: neighbours correlate about
    0.94, images two steps apart about 0.77, so only single linkage joins them. In the whole set (40 images) a
    linked set of 4 is plausible and kept; in a training part of about 20 it is not, and a fresh cut splits it."""
    rng = np.random.default_rng(0)
    smooth = lambda a: np.clip(a.repeat(8, 0).repeat(8, 1), 1, 255).astype(np.uint8)  # noqa: E731  (128 px)
    images = [smooth(128 + 40 * rng.normal(size=(16, 16, 3))) for _ in range(36)]
    x, y = rng.normal(size=(2, 16, 16, 3))
    y = y - (x * y).sum() / (x * x).sum() * x  # orthogonal to x: image t is cos(t) x + sin(t) y
    x, y = x / x.std(), y / y.std()
    images += [smooth(128 + 40 * (np.cos(t) * x + np.sin(t) * y)) for t in np.radians([0, 20, 40, 60])]
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    (folder / "labels.csv").write_text("id,label\n" + "".join(f"{i:03d},{i % 2}\n" for i in range(len(images))))
    return folder


def test_inner_folds_inherit_the_outer_groups_never_a_fresh_cut(tmp_path):
    # mutant: inner runs that look for near-duplicates again on their training part (smallct 0.3) split the chain
    data = write_chain_set(tmp_path / "chain")
    out = tmp_path / "n"
    run_nested(NestedConfig(candidates={"a": candidate(data, 3e-3)}, folds=2, inner_folds=3, out=out),
               progress=False, log=lambda *_: None)
    outer = json.loads((out / "run.json").read_text())
    ids, assignment = outer["folds"]["ids"], np.array(outer["folds"]["assignment"][0])
    group = dict(zip(ids, outer["resampling"]["groups"]))
    chain = ["036", "037", "038", "039"]
    assert len({group[i] for i in chain}) == 1 and outer["similar_images"]["cut_above"] is None
    # the premise: looked for again on the training part that holds the chain, the links are cut and split it
    other = 1 - assignment[ids.index("036")]  # the outer fold whose training part holds the chain
    holder = np.flatnonzero(assignment != other)
    part = load_dataset(data).subset(holder)
    fresh = near_duplicate_groups(part, log=lambda *_: None)
    assert fresh.cut_above is not None and len({fresh.groups[part.ids.index(i)] for i in chain}) > 1
    inner_runs = sorted((out / "inner").glob("r0_f*/a"), key=lambda p: p.parent.name != f"r0_f{other}")
    assert len(inner_runs) == 2
    for inner in inner_runs:
        record = json.loads((inner / "run.json").read_text())
        folds_of_group: dict = {}
        for i, k in zip(record["folds"]["ids"], record["folds"]["assignment"][0]):
            folds_of_group.setdefault(group[i], set()).add(k)
        assert all(len(k) == 1 for k in folds_of_group.values()), f"{inner}: an outer group in two inner folds"
        inner_group = dict(zip(record["folds"]["ids"], record["resampling"]["groups"] or range(len(ids))))
        same = [(a, b) for a in inner_group for b in inner_group]
        assert all((group[a] == group[b]) == (inner_group[a] == inner_group[b]) for a, b in same)  # the same groups
        assert record["similar_images"]["cut_above"] is None  # no stricter cut of its own
    holding = out / "inner" / f"r0_f{other}" / "a"
    record = json.loads((holding / "run.json").read_text())
    assert len({record["folds"]["assignment"][0][record["folds"]["ids"].index(i)] for i in chain}) == 1
    assert len(record["similar_images"]["pairs"]) == 3  # the whole chain's links, as found on the whole set


def test_inner_ensembles_follow_the_runs_tta_as_predict_reads_it(tmp_path, monkeypatch):
    # inner_ensemble_proba read run.record["tta"] itself: a run.json without that key (its TTA under
    # config.train only, as apply.predict.run_tta reads it) was a KeyError (mutant: the record read by hand, or
    # tta taken from anything but run_tta).
    from pathlib import Path

    import smallct.engine.nested as nested
    from smallct.engine.run_folder import Checkpoint
    from smallct.engine.run_models import Run

    run = Run(tmp_path, {"task": "binary", "config": {"train": {"tta": True, "amp": False}}},
              [Checkpoint(0, 0, Path("a.pt")), Checkpoint(0, 1, Path("b.pt"))])
    seen = []
    monkeypatch.setattr(nested, "load_run", lambda path: run)
    monkeypatch.setattr(nested, "load_fold_model", lambda path, device: (path, {"mean": [0.5] * 3, "std": [0.2] * 3}))

    def proba(model, images, mean, std, task, tta, **kwargs):
        seen.append(tta)
        return np.full((len(images), 2), 0.25 if model == Path("a.pt") else 0.75)

    monkeypatch.setattr(nested, "predict_proba", proba)
    P = nested.inner_ensemble_proba(tmp_path, np.zeros((3, 3, 8, 8), np.uint8), "cpu")
    assert seen == [True, True] and np.allclose(P, 0.5)


def test_a_nested_json_written_before_a_setting_existed_still_resumes(tmp_path):
    """A nested run's candidates as smallct 0.5 wrote them (no --context, --smooth, reverse_neighbours) are the same
    settings as today's defaults: resuming must not call them changed. Mutant caught: comparing the raw candidate
    dicts (0.6 as first written refused every 0.5 nested run with finished folds)."""
    import copy

    from smallct.engine.nested import _nested_differences, _record
    from smallct.engine.run_folder import RunFolder

    record = _record(NestedConfig(candidates={"a": CVConfig(), "b": CVConfig(arch="resnet34")}))
    old = copy.deepcopy(record)
    for c in old["candidates"].values():
        for k in ("context", "context_channels", "context_window", "smooth"):
            c.pop(k)
        c["train"].pop("reverse_neighbours")
    folder = RunFolder(tmp_path / "nested")
    folder.start({"config": {}, "folds": {}}, resuming=False, nested=old)
    assert _nested_differences(folder, record) == []
    other = copy.deepcopy(record)
    other["candidates"]["b"]["train"]["reverse_neighbours"] = False
    assert _nested_differences(folder, other) == ["the candidates' settings"]  # a real change is still seen
