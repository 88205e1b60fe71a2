"""The one schema: settings by flat name, typed as their fields, built into configs, read from files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smallct.config import (RECIPES, CurveConfig, CVConfig, FewShotConfig, NestedConfig, TuneConfig, build, coerce,
                            flat, read_settings, settings, value_of)


@pytest.mark.parametrize("cls", [CVConfig, NestedConfig, TuneConfig, FewShotConfig, CurveConfig])
def test_flat_names_are_unique_and_reach_their_field(cls):
    found = settings(cls)  # raises TypeError when a flat name would be two fields
    cfg = cls()
    for name, s in found.items():
        assert value_of(cfg, name) == s.default


def test_values_are_typed_as_their_fields():
    s = settings(CVConfig)
    assert coerce(s["lr"], "1e-4") == 1e-4 and coerce(s["epochs"], "3") == 3 and coerce(s["epochs"], 3.0) == 3
    assert coerce(s["tta"], "false") is False and coerce(s["tta"], "on") is True
    assert coerce(s["group_similar"], 0) is None and coerce(s["group_similar"], "0.9") == 0.9
    assert coerce(s["img_size"], None) is None and coerce(s["data"], "x") == Path("x")
    assert coerce(settings(FewShotConfig)["shots"], "1, 5,10") == [1, 5, 10]
    with pytest.raises(ValueError, match="epochs: a value is needed"):
        coerce(s["epochs"], None)
    with pytest.raises(ValueError, match="batch_size: cannot read True as an integer"):
        coerce(s["batch_size"], True)
    with pytest.raises(ValueError, match="schedule: 'linear' is not one of step, cosine, onecycle, constant"):
        coerce(s["schedule"], "linear")


def test_build_sets_nested_fields_and_refuses_unknown_ones():
    cfg = build(CVConfig, {"lr": "0.01", "img_size": 64, "arch": "resnet34"})
    assert (cfg.train.lr, cfg.data.img_size, cfg.arch) == (0.01, 64, "resnet34")
    assert cfg.train.epochs == CVConfig().train.epochs  # the rest stays default
    tuned = build(TuneConfig, {"lr": 0.1, "trials": 3})
    assert tuned.base.train.lr == 0.1 and tuned.trials == 3 and tuned.base.out == Path("runs/tune")
    with pytest.raises(ValueError, match="here: unknown setting learning_rate"):
        build(CVConfig, {"learning_rate": 1}, where="here")
    assert flat(cfg, ["lr", "img_size", "out"]) == {"lr": 0.01, "img_size": 64, "out": "runs/cv"}


def test_settings_files_and_recipes(tmp_path):
    values, source = read_settings("lite0_finetune", CVConfig)
    assert values["arch"] == "tf_efficientnet_lite0" and values["img_size"] == 192
    assert source.startswith(f"{RECIPES / 'lite0_finetune.json'}: recipe lite0_finetune: fine-tune")
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"_note": "mine", "lr": "0.5", "tta": False}))
    assert read_settings(path, CVConfig) == ({"lr": 0.5, "tta": False}, f"{path}: mine")
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="expected a JSON object of settings"):
        read_settings(path, CVConfig)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read settings JSON"):
        read_settings(path, CVConfig)


def test_a_weights_yaml_in_a_settings_file_is_found_beside_that_file(tmp_path, monkeypatch):
    # `weights: lab.yaml` in runs/lab/params.json was looked for in the working folder (mutant: read_settings not
    # joining the settings file's folder, or joining it to a URL, a name or an absolute path).
    folder = tmp_path / "runs" / "lab"
    folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    params = Path("runs/lab/params.json")
    for weights, expected in [("lab.yaml", "runs/lab/lab.yaml"), ("sub/lab.yml", "runs/lab/sub/lab.yml"),
                              (str(tmp_path / "abs.yaml"), str(tmp_path / "abs.yaml")),
                              ("https://host/w.yaml#sha256=" + "ab" * 32, "https://host/w.yaml#sha256=" + "ab" * 32),
                              ("imagenet", "imagenet"), ("model.pth", "model.pth")]:
        params.write_text(json.dumps({"weights": weights}))
        assert read_settings(params, CVConfig)[0]["weights"] == expected, weights


def test_a_weights_yaml_recorded_for_another_folder_is_absolute(tmp_path, monkeypatch):
    # tune's best_params.json lives in --out but its weights.yaml was named from the working folder (mutant:
    # weights_file_of leaving the path relative)
    from smallct.config.schema import weights_file_of

    monkeypatch.chdir(tmp_path)
    assert weights_file_of("lab.yaml") == str(tmp_path / "lab.yaml")
    assert weights_file_of("lab.yaml", Path("runs")) == str(Path("runs") / "lab.yaml")
    assert weights_file_of("resnet50.a1_in1k") == "resnet50.a1_in1k"
