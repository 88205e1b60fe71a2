"""Grad-CAM: the layer it looks at, maps that find a synthetic lesion, and the explain CLI on a run."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from smallct.apply import explain as E
from smallct.explain import main
from smallct.models.registry import feature_layer
from smallct.config.run import TrainConfig
from smallct.io.windows import window
from smallct.models.factory import create_model
from smallct.models.registry import builder
from smallct.datasets.phantom import head_phantom_hu
from smallct.engine.run_models import load_run
from smallct.engine.train import fit, predict_proba
from smallct.models.weights import resolve_weights


def test_feature_layer_is_the_last_feature_map():
    name, module, shape = feature_layer(builder("resnet18")(2), 64)
    assert name == "layer4" and shape == (1, 512, 2, 2)
    assert feature_layer(builder("resnet18")(2), 64, "layer3")[2] == (1, 256, 4, 4)
    assert feature_layer(builder("tf_efficientnet_lite0")(2), 64)[0] == "bn2"  # after conv_head
    with pytest.raises(ValueError, match="for example layer1, layer2, layer3, layer4"):
        feature_layer(builder("resnet18")(2), 64, "fc")
    with pytest.raises(ValueError, match="transformer models are not supported"):
        feature_layer(builder("test_vit")(2), 160)


def _phantoms(n: int, seed: int, size: int = 64):
    """Phantom slices in the brain window, every other one with a (large) lesion, and the lesion masks."""
    rng = np.random.default_rng(seed)
    images, labels, masks = [], [], []
    for i in range(n):
        hu, mask = head_phantom_hu(size, lesion=i % 2 == 0, rng=rng, lesion_scale=2.0, return_mask=True)
        images.append(np.repeat(window(hu, 40, 80)[None], 3, axis=0))
        labels.append(int(i % 2 == 0))
        masks.append(mask)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels), np.stack(masks)


def test_grad_cam_highlights_the_lesion_of_a_phantom_model():
    # 128 training slices: the phantom varies by level and outline, and 64 left a random-init resnet18's
    # accuracy at 0.69-0.75 depending on its seed; with 128 (and 32 to test), seeds 0-3 measured accuracy
    # 0.84-0.94, map inside/outside the lesion 2.2-2.5x, the lesion hotter than the rest in 94-100% of slices
    x, y, _ = _phantoms(128, seed=0)
    x_test, y_test, masks = _phantoms(32, seed=100)
    source = resolve_weights("resnet18", "none")
    torch.manual_seed(0)
    model = create_model("resnet18", 2, source)
    cfg = TrainConfig(epochs=8, batch_size=16, lr=1e-3, augment="flip", warmup_epochs=0, tta=False)
    fit(model, x, y, cfg, source.mean, source.std, seed=0, progress=False)
    probs = predict_proba(model, x_test, source.mean, source.std)
    assert ((probs[:, 1] > 0.5) == y_test.numpy()).mean() >= 0.75  # it learned the lesion

    positive = np.flatnonzero(y_test.numpy() == 1)
    # at 64 px layer4 is a 2 x 2 map; layer3 (4 x 4) can say where the lesion is
    maps = E.grad_cam(model, x_test[positive], source.mean, source.std, [1] * len(positive), layer="layer3")
    assert maps.shape == (len(positive), 64, 64) and maps.min() >= 0 and maps.max() <= 1
    inside = np.array([m[k].mean() for m, k in zip(maps, masks[positive])])
    outside = np.array([m[~k].mean() for m, k in zip(maps, masks[positive])])
    assert inside.mean() > 1.8 * outside.mean()
    assert (inside > outside).mean() >= 0.8


def test_cli_explains_the_misclassified_out_of_fold_images(small_run, tmp_path, capsys):
    out = tmp_path / "explain"
    assert main(["--run", str(small_run), "--out", str(out), "--limit", "4", "--no-progress"]) == 0
    oof = load_run(small_run).oof()
    wrong = oof[oof["pred"] != oof["label"]]
    assert len(wrong) >= 4  # one epoch from random initialisation gets many wrong
    table = pd.read_csv(out / "explain.csv", dtype={"id": str})
    assert table["id"].tolist() == wrong["id"].tolist()[:4]
    assert (table["label"] != table["pred"]).all()
    assert (table["target_class"] == table["pred"]).all()  # default: evidence for the predicted class
    assert (table["model"] == [f"r0_f{f}" for f in table["fold"]]).all()  # the model that held it out
    assert all((out / f).is_file() for f in table["figure"])
    cams = np.load(out / "cams.npz")
    assert cams["cams"].shape == (4, 32, 32) and cams["ids"].tolist() == table["id"].tolist()
    printed = capsys.readouterr().out
    assert "1x1 map at 32 px" in printed  # layer4 of a 32 px input: says it is coarse
    # and so flat that the scaled map would be one blue square: not drawn, said once, marked in the table
    assert table["map_constant"].all() and "4 of 4 maps are constant" in printed
    row = table.iloc[0]
    with Image.open(out / row["figure"]) as img:
        title = img.text["Title"]
    names = load_run(small_run).class_names
    assert title == f"id {row['id']}, true: {names[row['label']]}, predicted: {names[row['pred']]}"


def test_cam_figure_draws_a_map_with_its_colour_bar_and_no_map_when_it_is_constant():
    image = np.full((32, 32, 3), 90, np.uint8)
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    fig = E.cam_figure(image, ramp, "id 7, true: 1", "Grad-CAM for 1 (p = 0.81), r0_f0")
    inputs, heat, bar = fig.axes  # the heat panel has its colour bar
    assert len(heat.images) == 1 and bar.get_ylim() == (0, 1)
    drawn = heat.images[0].get_array()
    assert drawn[0, -1, 0] > drawn[0, 0, 0] and drawn[0, 0, 2] > drawn[0, -1, 2]  # red where the map is 1
    assert fig.get_suptitle() == "id 7, true: 1" and "p = 0.81" in heat.get_title()
    for flat in (np.zeros((32, 32), np.float32), np.full((32, 32), 0.5, np.float32)):  # 1x1 upsampled, or zero
        assert E.is_constant(flat)
        fig = E.cam_figure(image, flat, "id 7", "Grad-CAM for 1")
        inputs, heat = fig.axes  # no colour bar
        assert len(inputs.images) == 1 and not heat.images
        assert "constant" in " ".join(t.get_text() for t in heat.texts).replace("\n", " ")
    assert not E.is_constant(ramp)


def test_cli_explains_new_images_with_every_fold_model(small_run, phantom_dir, tmp_path, capsys):
    out = tmp_path / "new"
    files = [str(phantom_dir / "000.png"), str(phantom_dir / "001.png")]
    assert main(["--run", str(small_run), "--data", *files, "--out", str(out), "--class", "1",
                   "--layer", "layer2", "--no-progress"]) == 0
    table = pd.read_csv(out / "explain.csv", dtype={"id": str})
    assert table["id"].tolist() == ["000", "001"] and (table["target_class"] == 1).all()
    assert table["model"].iloc[0] == "mean of 2 fold models"
    cams = np.load(out / "cams.npz")["cams"]
    assert cams.shape == (2, 32, 32) and cams.max() > 0
    assert main(["--run", str(small_run), "--data", *files, "--class", "bleed", "--out", str(out)]) == 2
    assert "--class bleed: not a class of" in capsys.readouterr().err
