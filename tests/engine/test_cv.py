import json

import numpy as np
import pandas as pd
import pytest
import torch

from smallct.config.run import CVConfig, DataConfig, from_dict, TrainConfig
from smallct.cli.commands.cv import config_from_argv
from smallct.cv import main
from smallct.engine.cv import run_cv
from smallct.engine.results import N_BOOT
from smallct.engine.run_folder import RunFolder
from smallct.evaluation.intervals import Units, over_repeats, pooled_figures
from smallct.evaluation.metrics import classification_metrics
from smallct.datasets.phantom import write_phantom_png_set

TINY = TrainConfig(epochs=1, batch_size=16, tta=False)


def tiny_cfg(out, data, **kw):
    train = kw.pop("train", TINY)
    return CVConfig(arch="resnet18", weights="none", folds=kw.pop("folds", 2), out=out,
                    data=DataConfig(data=data, img_size=kw.pop("img_size", 32)), train=train, **kw)


def test_cli_on_real_head_ct_writes_the_whole_run_folder(tmp_path, head_ct_dir, capsys):
    out = tmp_path / "run"
    code = main(["--data", str(head_ct_dir), "--arch", "resnet18", "--weights", "none", "--img-size", "32",
                 "--epochs", "1", "--folds", "5", "--repeats", "2", "--batch-size", "32", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    for name in ("run.json", "results.json", "oof.csv", "history.csv", "curves.png", "roc.png", "confusion.png"):
        assert (out / name).stat().st_size > 0, name
    assert len(list((out / "checkpoints").glob("r*_f*.pt"))) == 10
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    assert len(oof) == 400
    for _, per_repeat in oof.groupby("repeat"):
        assert len(per_repeat) == 200 and per_repeat["id"].is_unique
        assert sorted(per_repeat["fold"].unique()) == [0, 1, 2, 3, 4]
    run = json.loads((out / "run.json").read_text())
    # the Head CT set is recognised by its manifest: its 0/1 labels are named, label 1 the positive class
    assert run["class_names"] == ["normal", "hemorrhage"] and run["positive_class"] == "hemorrhage"
    assert run["input"]["img_size"] == 32 and run["folds"]["ids"][:2] == ["000", "001"]
    assert run["weights"]["kind"] == "none" and len(run["input"]["mean"]) == 3
    assert len(run["folds"]["assignment"]) == 2 and run["versions"]["torch"] == torch.__version__
    results = json.loads((out / "results.json").read_text())
    assert len(results["per_fold"]) == 10 and results["complete"]
    # the interval resamples the near-duplicate groups recorded in run.json (the units the folds keep whole)
    groups = np.asarray(run["resampling"]["groups"])
    assert results["ci_resampled"] == {"unit": "near-duplicate groups", "n_units": len(set(groups)),
                                       "n_images": 200} and len(set(groups)) < 160
    y, P = RunFolder(out).read_oof_matrix()
    figure = over_repeats(classification_metrics, y, P, ["accuracy"])
    for units, same in ((Units(200, groups, "near-duplicate groups"), True), (Units(200), False)):
        _, ci = pooled_figures(figure, units, ["accuracy"], n_boot=N_BOOT, seed=0)
        assert (ci["accuracy"] == pytest.approx(results["pooled_oof_ci95"]["accuracy"])) is same
    history = pd.read_csv(out / "history.csv")
    assert {"train_loss", "val_loss", "train_acc", "val_acc", "epoch", "fold", "repeat"} <= set(history.columns)
    printed = capsys.readouterr().out
    assert "pooled out-of-fold accuracy" in printed and "estimated duration" in printed
    assert "classes: normal = 0, hemorrhage = 1; prob, sensitivity and the ROC curve are for the positive class " \
           "hemorrhage" in printed and "sens, spec and auc are for the positive class hemorrhage" in printed
    assert results["positive_class"] == "hemorrhage" and results["class_names"] == ["normal", "hemorrhage"]
    assert oof["id"].iloc[0].isdigit() and len(oof["id"].iloc[0]) == 3 and (oof["file"] == oof["id"] + ".png").all()
    assert f"intervals: bootstrap over {len(set(groups))} near-duplicate groups of 200 images" in printed


def test_synthetic_default_says_so(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path / "run", None)
    cfg.data.phantom_n = 20
    run_cv(cfg, progress=False)
    printed = capsys.readouterr().out
    assert "SYNTHETIC DATA" in printed and "--data" in printed


def test_deterministic_under_a_seed(tmp_path, phantom_dir):
    a = run_cv(tiny_cfg(tmp_path / "a", phantom_dir), progress=False, log=lambda *_: None)
    b = run_cv(tiny_cfg(tmp_path / "b", phantom_dir), progress=False, log=lambda *_: None)
    pd.testing.assert_frame_equal(a.oof, b.oof)
    c = run_cv(tiny_cfg(tmp_path / "c", phantom_dir, seed=1), progress=False, log=lambda *_: None)
    assert not c.oof.set_index("id")["fold"].equals(a.oof.set_index("id")["fold"])


def test_memory_and_disk_sources_give_bit_identical_out_of_fold_predictions(tmp_path, phantom_dir, monkeypatch):
    """--cache changes where the images are read from, never a figure; a run resumes under the other --cache."""
    import smallct.engine.cv as cv_module
    from smallct.data.source import DiskSource, MemorySource
    seen, original = [], cv_module.train_fold
    monkeypatch.setattr(cv_module, "train_fold", lambda job, *a, **k: seen.append(type(job.images)) or original(
        job, *a, **k))
    runs = {store: run_cv(tiny_cfg(tmp_path / store, phantom_dir, cache=store, train=TrainConfig(
        epochs=2, batch_size=8, augment="affine")), progress=False, log=lambda *_: None)
            for store in ("memory", "disk")}
    assert seen == [MemorySource, MemorySource, DiskSource, DiskSource]
    probs = [c for c in runs["memory"].oof.columns if c.startswith("prob")]
    assert probs
    np.testing.assert_array_equal(runs["memory"].oof[probs].to_numpy(), runs["disk"].oof[probs].to_numpy())
    pd.testing.assert_frame_equal(runs["memory"].history.drop(columns="seconds"),
                                  runs["disk"].history.drop(columns="seconds"))
    (tmp_path / "disk" / "folds" / "r0_f1.json").unlink()  # interrupted after fold 0 ...
    again = run_cv(tiny_cfg(tmp_path / "disk", phantom_dir, cache="memory", train=TrainConfig(
        epochs=2, batch_size=8, augment="affine")), progress=False, log=lambda *_: None)  # ... resumed in memory
    np.testing.assert_array_equal(again.oof[probs].to_numpy(), runs["disk"].oof[probs].to_numpy())


def test_resume_skips_finished_folds_and_refuses_other_settings(tmp_path, phantom_dir):
    out = tmp_path / "run"
    first = run_cv(tiny_cfg(out, phantom_dir, folds=3), progress=False, log=lambda *_: None)
    # simulate a run interrupted after fold 0: remove the later folds' results
    for name in ("r0_f1", "r0_f2"):
        (out / "folds" / f"{name}.json").unlink()
    marker = (out / "folds" / "r0_f0.json").stat().st_mtime_ns
    second = run_cv(tiny_cfg(out, phantom_dir, folds=3), progress=False, log=lambda *_: None)
    assert (out / "folds" / "r0_f0.json").stat().st_mtime_ns == marker  # not redone
    pd.testing.assert_frame_equal(first.oof, second.oof)  # redone folds give the same figures
    with pytest.raises(ValueError, match="other settings"):
        run_cv(tiny_cfg(out, phantom_dir, folds=3, seed=5), progress=False, log=lambda *_: None)


def test_model_learns_an_easy_synthetic_set(tmp_path):
    data = write_phantom_png_set(tmp_path / "easy", n=64, seed=1, lesion_scale=2.5)
    train = TrainConfig(epochs=15, batch_size=16, lr=2e-3, tta=False)
    result = run_cv(tiny_cfg(tmp_path / "run", data, img_size=64, train=train), progress=False,
                    log=lambda *_: None)
    # chance is 0.5 for both; measured (64 images, 2 folds, 15 epochs at 64 px, phantom seeds 1, 2, 3):
    # accuracy 0.95, 0.92, 0.97 and AUC 0.999, 0.989, 0.991 (at 10 epochs accuracy fell to 0.59-0.72 while
    # AUC stayed 0.77-0.99: the model ranked the lesions but its 0.5 threshold had not settled yet)
    assert result.results["pooled_oof"]["roc_auc"] >= 0.9
    assert result.results["pooled_oof"]["accuracy"] >= 0.8


def test_missing_weights_stop_before_any_work(tmp_path, phantom_dir, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "run"
    code = main(["--data", str(phantom_dir), "--arch", "resnet34", "--weights", "imagenet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "resnet34-" in err and "--weights none" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_data_is_one_line_error(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nowhere"), "--weights", "none"]) == 2
    err = capsys.readouterr().err
    assert "nowhere: no such folder" in err and len(err.strip().splitlines()) == 1


def test_params_file_sets_defaults_and_is_recorded(tmp_path, phantom_dir):
    params = tmp_path / "best_params.json"
    params.write_text(json.dumps({"lr": 0.0123, "optimizer": "sgd", "momentum": 0.8, "_note": "tuned by study x"}))
    out = tmp_path / "run"
    assert main(["--data", str(phantom_dir), "--weights", "none", "--img-size", "32", "--epochs", "1",
                 "--folds", "2", "--params", str(params), "--momentum", "0.7", "--out", str(out),
                 "--no-progress"]) == 0
    run = json.loads((out / "run.json").read_text())
    train = from_dict(TrainConfig, run["config"]["train"])
    assert train.lr == 0.0123 and train.optimizer == "sgd" and train.momentum == 0.7  # the flag wins
    assert "tuned by study x" in json.loads((out / "results.json").read_text())["settings_source"]
    params.write_text(json.dumps({"learning_rate": 1}))
    assert main(["--data", str(phantom_dir), "--params", str(params), "--out", str(tmp_path / "r2")]) == 2


def test_config_round_trips_through_run_json(tmp_path, phantom_dir):
    cfg = tiny_cfg(tmp_path / "run", phantom_dir)
    run_cv(cfg, progress=False, log=lambda *_: None)
    saved = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert from_dict(CVConfig, saved) == cfg
    assert np.isclose(saved["train"]["lr"], cfg.train.lr)


def test_a_shipped_recipe_is_read_by_name_and_flags_still_win(tmp_path):
    cfg = config_from_argv(["--params", "lite0_finetune", "--epochs", "3"])
    assert (cfg.arch, cfg.weights, cfg.data.img_size) == ("tf_efficientnet_lite0", "imagenet", 192)
    assert (cfg.train.lr, cfg.train.freeze_epochs, cfg.train.backbone_lr_mult, cfg.train.epochs) == (5e-4, 0, 1.0, 3)
    assert "plain timm script" in cfg.params_source  # results.json says where the settings came from
    with pytest.raises(ValueError, match="no_such_recipe: no such settings file, nor a recipe .*lite0_finetune"):
        config_from_argv(["--params", "no_such_recipe"])


def test_selection_says_what_was_chosen_and_on_which_images(tmp_path, head_ct_dir, phantom_dir):
    """results.json's ``selection`` is true in every case (smallct 0.3 said "nothing ... is chosen on a test fold"
    after --params from a study or a recipe compared on these very images). Mutants: a selection that ignores
    --params, or one that ignores which images the settings were chosen on."""
    from smallct.datasets.folder import load_dataset
    from smallct.engine.results import settings_selection

    head_ct, phantom = load_dataset(head_ct_dir), load_dataset(phantom_dir)
    plain = settings_selection(config_from_argv([]), head_ct)
    assert plain == ("the model after the last epoch is evaluated; nothing (epoch, threshold, setting) is chosen on "
                     "a test fold; threshold 0.5 is fixed", None)  # unchanged: no setting came from elsewhere
    recipe = config_from_argv(["--params", "lite0_finetune"])  # compared with others on the Head CT set itself
    selection, note = settings_selection(recipe, head_ct)
    assert selection.startswith("the --params settings were chosen or compared on these same 200 images")
    assert "optimistic" in selection and "threshold 0.5" in selection
    assert note.startswith("note: the --params settings were chosen or compared on these same 200 images")
    assert "python -m smallct.nested" in note
    selection, note = settings_selection(recipe, phantom)  # other images: nothing to warn of
    assert selection.startswith("the --params settings were chosen on an image set other than exactly these 40")
    assert note is None and "optimistic" not in selection
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps({"lr": 0.01}))  # a settings file that does not say where it was chosen
    selection, note = settings_selection(config_from_argv(["--params", str(hand)]), phantom)
    assert selection.startswith("the --params settings do not record on which images they were chosen")
    assert "smallct.nested" in note


def test_no_test_curves_skips_the_per_epoch_test_evaluation_only(tmp_path, phantom_dir):
    with_curves = run_cv(tiny_cfg(tmp_path / "a", phantom_dir, workers=1), progress=False, log=lambda *_: None)
    without = run_cv(tiny_cfg(tmp_path / "b", phantom_dir, workers=1, test_curves=False), progress=False,
                     log=lambda *_: None)
    assert "val_loss" in with_curves.history and "val_loss" not in without.history
    assert without.oof["prob"].to_numpy() == pytest.approx(with_curves.oof["prob"].to_numpy(), abs=1e-6)
    assert (tmp_path / "b" / "curves.png").is_file()  # the training curves are still drawn


def test_images_given_to_run_cv_must_match_the_data_and_size(tmp_path, phantom_dir):
    from smallct.datasets.folder import load_dataset

    dataset = load_dataset(phantom_dir)
    wrong = torch.zeros((len(dataset), 3, 16, 16), dtype=torch.uint8)  # decoded at 16 px, the run wants 32
    with pytest.raises(ValueError, match=r"images: shape \(40, 3, 16, 16\), expected \(40, 3, 32, 32\)"):
        run_cv(tiny_cfg(tmp_path / "run", phantom_dir), dataset=dataset, images=wrong, progress=False,
               log=lambda *_: None)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_folds_do_not_depend_on_the_runs_preprocessing(head_ct_dir):
    """Groups come from one canonical thumbnail per file: --no-crop --resize squash at another size still gives
    smallct.cv's default folds (49 pairs on the real set), so such runs can be compared image by image."""
    from smallct.engine.cv import folds_of
    from smallct.datasets.folder import load_dataset

    dataset = load_dataset(head_ct_dir)
    quiet = dict(progress=False, log=lambda *_: None)
    base = folds_of(CVConfig(data=DataConfig(data=str(head_ct_dir)), repeats=2), dataset, **quiet)
    other = folds_of(CVConfig(data=DataConfig(data=str(head_ct_dir), img_size=96, resize="squash", crop=False),
                              repeats=2), dataset, **quiet)
    assert len(base.similar) == len(other.similar) == 49
    np.testing.assert_array_equal(base.assignment, other.assignment)
    np.testing.assert_array_equal(base.groups, other.groups)
    moved = folds_of(CVConfig(data=DataConfig(data=str(head_ct_dir)), repeats=2, seed=1), dataset, **quiet)
    assert not np.array_equal(base.assignment, moved.assignment)  # the check can fail: the seed moves them


def test_sync_bn_asks_for_cuda_before_anything_is_written(tmp_path, phantom_dir):
    # SyncBatchNorm accepts only accelerator tensors: on a CPU --sync-bn is one line, before the run folder exists
    cfg = CVConfig(arch="resnet18", weights="none", device="cpu", out=tmp_path / "run",
                   data=DataConfig(data=phantom_dir, img_size=32), train=TrainConfig(epochs=1, sync_bn=True))
    with pytest.raises(ValueError, match="--sync-bn: SyncBatchNorm needs CUDA"):
        run_cv(cfg, progress=False, log=lambda *a: None)
    assert not (tmp_path / "run").exists()


def test_fold_parallel_in_one_process_is_the_sequential_run_and_records_its_processes(tmp_path, phantom_dir):
    # outside torchrun --fold-parallel has one process: the folds run one after another, with the same figures
    # (run.json says so: world_size 1, processes 1); the tests of several processes launch torchrun
    # (tests/engine/test_cv_torchrun.py)
    runs = {}
    for parallel in (False, True):
        cfg = CVConfig(arch="resnet18", weights="none", folds=2, device="cpu", out=tmp_path / str(parallel),
                       workers=1, fold_parallel=parallel, data=DataConfig(data=phantom_dir, img_size=32),
                       train=TrainConfig(epochs=1, batch_size=8))
        runs[parallel] = run_cv(cfg, progress=False, log=lambda *a: None, estimate=False)
    assert runs[True].oof.equals(runs[False].oof)
    record = RunFolder(tmp_path / "True").read_record()
    assert (record["world_size"], record["processes"], record["global_batch"], record["fold_parallel"]) == (1, 1, 8,
                                                                                                          True)


def test_sync_bn_keeps_the_activation_of_timms_batchnorm_layers():
    # timm's EfficientNets fuse BatchNorm and its activation (BatchNormAct2d); torch's convert_sync_batchnorm makes
    # them a bare SyncBatchNorm and drops the activation (timm #1254). A mutant converting with torch's fails here:
    # in eval mode the converted model must compute the same logits.
    import timm  # the conversion smallct.engine.cv applies under torchrun with --sync-bn

    from smallct.engine.cv import convert_sync_batchnorm

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        after = convert_sync_batchnorm(model).eval()(x)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert torch.allclose(before, after, atol=1e-5)
