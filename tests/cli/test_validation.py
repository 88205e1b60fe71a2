"""Bad settings stop every training command before any work: exit 2, one line, nothing under --out.

Every numeric flag of cv, tune, nested, fewshot and curve is tried at 0 and -1, every choice flag with an
unknown value, and --data with a missing folder; the flags that accept 0 are listed (ZERO_OK) and must
build their config. The settings are checked when the config dataclasses are built, so these calls end
before any data is read; the data checks (more folds or shots than the smallest class holds) end
before anything is written under --out.
"""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from smallct import cli
from smallct.cli.commands import cv, nested, tune
from smallct.cli.flags import build_config
from smallct.cli.runner import command_parser
from smallct.config import CurveConfig, CVConfig, FewShotConfig, NestedConfig, TuneConfig, TrainConfig
from smallct.config.schema import bounds, settings, value_of
from smallct.datasets.phantom import write_phantom_png_set

# The configs whose settings each command's flags set (nested: its own and every candidate's).
CONFIGS = {"cv": (CVConfig,), "tune": (TuneConfig,), "nested": (NestedConfig, CVConfig),
           "fewshot": (FewShotConfig,), "curve": (CurveConfig,)}
NEEDS = {"nested": ["--candidates", "lite0_finetune"]}
# Flags that take 0 on purpose (and what 0 means): every other numeric flag refuses it.
ZERO_OK = {"group_similar": "no grouping", "finetune_img_size": "the embedding size", "seed": "seed 0",
           "workers": "every core", "momentum": "plain SGD", "weight_decay": "none", "warmup_epochs": "none",
           "freeze_epochs": "none", "backbone_lr_mult": "backbone kept as loaded", "label_smoothing": "none",
           "prune_after": "prune from the first step", "startup_trials": "TPE from the first trial",
           "worker": "the first worker", "flat_share": "cosine from the first step", "vflip": "none",
           "brightness": "none", "contrast": "none", "gauss_noise": "none", "salt_pepper": "none", "erase": "none",
           "mixup": "off", "cutmix": "off", "ema": "off", "context": "each slice alone"}


def _flags(name: str):
    """``(setting, flag)`` of every numeric flag and ``(setting, flag, choices)`` of every choice flag."""
    known = {k: s for cls in CONFIGS[name] for k, s in settings(cls).items()}
    numeric, choices = [], []
    for action in command_parser(cli.COMMANDS[name], f"smallct {name}")._actions:
        setting = known.get(action.dest)
        if setting is not None and setting.numeric:
            numeric.append((setting.name, action.option_strings[0]))
        elif action.choices is not None and action.option_strings:
            choices.append((action.dest, action.option_strings[0]))
    return numeric, choices


NUMERIC = [(name, s, flag) for name in CONFIGS for s, flag in _flags(name)[0]]
CHOICES = [(name, s, flag) for name in CONFIGS for s, flag in _flags(name)[1]]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """``smallct ARGV`` in this process: the exit code and stderr (argparse's errors exit through SystemExit)."""
    try:
        code = cli.main(argv)
    except SystemExit as done:
        code = done.code
    return code, capsys.readouterr().err.strip()


def _refused(name: str, argv: list[str], out, capsys, needs: list[str] | None = None) -> str:
    needs = NEEDS.get(name, []) if needs is None else needs
    code, err = _run([name, *needs, *argv, "--out", str(out), "--no-progress"], capsys)
    assert code == 2, (argv, code, err)
    assert err.startswith(f"smallct {name}: error: ") and "\n" not in err and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir()), f"{argv}: wrote {sorted(out.iterdir())}"
    return err


def _config(name: str, argv: list[str]):
    if name == "cv":
        return cv.config_from_argv(argv)
    if name == "tune":
        return tune.config_from_argv(argv)
    if name == "nested":
        return nested.config_from_argv([*NEEDS["nested"], *argv])[0]
    cls = CONFIGS[name][0]
    return build_config(cls, command_parser(cli.COMMANDS[name], f"smallct {name}").parse_args(argv))[0]


def test_every_numeric_flag_has_a_declared_range():
    assert len(NUMERIC) > 60
    for name, setting, flag in NUMERIC:
        known = {k: s for cls in CONFIGS[name] for k, s in settings(cls).items()}
        assert bounds(known[setting]), f"smallct {name} {flag}: no range declared"


@pytest.mark.parametrize("name, setting, flag", NUMERIC, ids=[f"{n}{f}" for n, _, f in NUMERIC])
def test_numeric_flags_at_zero_and_minus_one(name, setting, flag, tmp_path, capsys):
    err = _refused(name, [flag, "-1"], tmp_path / "out", capsys)
    assert f"{flag} -1: expected " in err, err
    if setting in ZERO_OK:
        cfg = _config(name, [flag, "0"])
        own = next(cls for cls in CONFIGS[name] if setting in settings(cls))
        holder = cfg if isinstance(cfg, own) else next(iter(cfg.candidates.values()))
        assert value_of(holder, setting) in (0, None, [0])
    else:
        err = _refused(name, [flag, "0"], tmp_path / "out", capsys)
        assert f"{flag} 0: expected " in err, err


@pytest.mark.parametrize("name, setting, flag", CHOICES, ids=[f"{n}{f}" for n, _, f in CHOICES])
def test_an_unknown_choice(name, setting, flag, tmp_path, capsys):
    err = _refused(name, [flag, "bogus"], tmp_path / "out", capsys)
    assert f"argument {flag}: invalid choice: 'bogus'" in err, err


@pytest.mark.parametrize("name, argv, said", [
    ("fewshot", ["--method", "bogus"], "--method bogus: expected some of"),
    ("curve", ["--method", "bogus"], "--method bogus: expected some of"),
    ("cv", ["--device", "gpu"], "--device gpu: expected auto, cpu, cuda or cuda:N"),
    ("fewshot", ["--shots", "5,0"], "--shots 5,0: expected a comma-separated list of integers, at least 1"),
    ("curve", ["--sizes", ""], "--sizes (empty): expected"),
    ("tune", ["--search", "momentum=0.5:1.5"], "momentum 1.5: expected a number, at least 0 and below 1"),
    ("tune", ["--search", "batch_size=0,16"], "batch_size 0: expected an integer, at least 1")])
def test_unknown_values_in_lists_and_texts(name, argv, said, tmp_path, capsys):
    err = _refused(name, argv, tmp_path / "out", capsys)
    assert said in err, err


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_missing_data_folder_is_named_before_the_weights(name, tmp_path, capsys):
    err = _refused(name, ["--data", str(tmp_path / "nowhere")], tmp_path / "out", capsys)
    assert err.endswith("nowhere: no such folder"), err


@pytest.mark.parametrize("name, argv", [
    ("cv", ["--folds", "30"]), ("nested", ["--folds", "30"]), ("tune", ["--folds", "30"]),
    ("curve", ["--folds", "30"]), ("fewshot", ["--shots", "30"])])
def test_data_checks_come_before_anything_is_written(name, argv, phantom_dir, tmp_path, capsys):
    tiny = ["--data", str(phantom_dir), "--arch", "resnet18", "--weights", "none", "--img-size", "32"]
    needs = None
    if name == "nested":
        candidate = tmp_path / "tiny.json"
        candidate.write_text(json.dumps({"arch": "resnet18", "weights": "none", "img_size": 32, "epochs": 1}))
        tiny, needs = ["--data", str(phantom_dir)], ["--candidates", str(candidate)]
    err = _refused(name, [*tiny, *argv], tmp_path / "out", capsys, needs)
    assert "30" in err, err  # (the folds' own message, or sklearn's when near-duplicates are grouped)


@pytest.mark.parametrize("name", ["cv", "nested", "tune", "curve", "fewshot"])
def test_a_stray_label_is_named_before_anything_is_written(name, tmp_path, capsys):
    # The Head CT header and one label 2 among 0/1: 0.3.0 ran a three-class task whose third class had one image
    # (mutant: the check counting only the first two classes, or made after the run folder is started).
    data = write_phantom_png_set(tmp_path / "data", n=12, seed=0)
    rows = (data / "labels.csv").read_text().splitlines()
    rows[5] = "4,2"
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    tiny = ["--data", str(data), "--arch", "resnet18", "--weights", "none", "--img-size", "32"]
    argv, needs = [*tiny, "--folds", "2"], None
    if name == "nested":
        candidate = tmp_path / "tiny.json"
        candidate.write_text(json.dumps({"arch": "resnet18", "weights": "none", "img_size": 32, "epochs": 1}))
        argv, needs = ["--data", str(data), "--folds", "2"], ["--candidates", str(candidate)]
    elif name == "fewshot":
        argv = [*tiny, "--shots", "1"]
    err = _refused(name, argv, tmp_path / "out", capsys, needs)
    assert f"{data / 'labels.csv'}" in err and "class 2 has 1 image (004)" in err, err
    assert ("--folds 2 needs at least 2 images of every class" in err) == (name != "fewshot"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["cv", "nested", "tune", "curve"])
def test_a_stray_label_stops_before_weights_are_resolved_or_images_decoded(name, tmp_path, capsys, monkeypatch):
    # The class check came after resolve_weights (a download, maybe) and load_images (the whole decode and cache);
    # make_folds checked it last. Mutant caught: the early check_fold_classes call removed from a command.
    import importlib

    called = []
    for module in ("smallct.engine.cv", "smallct.engine.nested", "smallct.tuning.study", "smallct.studies.curve"):
        for fn in ("resolve_weights", "load_images"):
            monkeypatch.setattr(importlib.import_module(module), fn,
                                lambda *a, _fn=fn, **k: called.append(_fn) or pytest.fail(f"{_fn} called"),
                                raising=False)
    data = write_phantom_png_set(tmp_path / "data", n=12, seed=0)
    rows = (data / "labels.csv").read_text().splitlines()
    rows[5] = "4,2"
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    argv, needs = ["--data", str(data), "--arch", "resnet18", "--weights", "none", "--img-size", "32", "--folds",
                   "2"], None
    if name == "nested":
        candidate = tmp_path / "tiny.json"
        candidate.write_text(json.dumps({"arch": "resnet18", "weights": "none", "img_size": 32, "epochs": 1}))
        argv, needs = ["--data", str(data), "--folds", "2"], ["--candidates", str(candidate)]
    err = _refused(name, argv, tmp_path / "out", capsys, needs)
    assert "class 2 has 1 image (004)" in err and not called, (err, called)


@pytest.mark.parametrize("name", ["cv", "nested", "tune", "curve", "fewshot"])
def test_weights_of_another_architecture_stop_before_anything_is_written(name, phantom_dir, tmp_path, capsys):
    # 0.3.0 refused them at the first fold, after run.json, checkpoints/ and folds/ were written (mutant: the
    # weights checked when the first model is built again)
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), weights)
    argv = ["--data", str(phantom_dir), "--arch", "resnet34", "--weights", str(weights), "--img-size", "32"]
    needs = None
    if name == "nested":
        candidate = tmp_path / "other.json"
        candidate.write_text(json.dumps({"arch": "resnet34", "weights": str(weights), "img_size": 32, "epochs": 1}))
        argv, needs = ["--data", str(phantom_dir)], ["--candidates", str(candidate)]
    elif name == "fewshot":
        argv.remove("--img-size"), argv.remove("32")
    err = _refused(name, [*argv, "--folds" if name != "fewshot" else "--shots", "2"], tmp_path / "out", capsys, needs)
    assert f"{weights}: weights do not fit resnet34: " in err and "pass its --arch" in err, err
    assert not (tmp_path / "out").exists()


def test_a_notebook_gets_the_same_checks():
    with pytest.raises(ValueError, match=r"^--optimizer sgdd: expected one of sgd, adam, adamw, radam$"):
        TrainConfig(optimizer="sgdd")
    with pytest.raises(ValueError, match=r"^--batch-size 0: expected an integer, at least 1$"):
        CVConfig(train=TrainConfig(batch_size=0))
    with pytest.raises(ValueError, match=r"^--lr nan: expected a number, above 0$"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match=r"^--epochs 2.5: expected an integer, at least 1$"):
        TrainConfig(epochs=2.5)
    assert FewShotConfig(finetune_img_size=0).finetune_img_size is None  # 0: the embedding size, as on the CLI


@pytest.mark.parametrize("flag, value, said", [
    ("--vflip", "1.5", "at least 0 and at most 1"), ("--erase", "2", "at least 0 and at most 1"),
    ("--brightness", "1.1", "at least 0 and at most 1"), ("--gauss-noise", "300", "at least 0 and at most 255"),
    ("--ema", "1", "at least 0 and below 1"), ("--flat-share", "1", "at least 0 and below 1")])
def test_the_rsna_ingredients_refuse_values_out_of_their_range(flag, value, said, tmp_path, capsys):
    err = _refused("cv", [flag, value], tmp_path / "out", capsys)
    assert f"{flag} {value}: expected a number, {said}" in err, err


def test_a_settings_file_out_of_range_names_the_file(tmp_path, capsys):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"epochs": 0}))
    err = _refused("cv", ["--params", str(params)], tmp_path / "out", capsys)
    assert err.endswith(f"{params}: epochs 0: expected an integer, at least 1"), err
