"""The model factory: registry, loading a weights file into a new task, head handling, features."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smallct.models.factory import create_model, embed, parameter_groups, set_backbone_trainable
from smallct.models.registry import ARCHITECTURES, builder, head_module
from smallct.models.weights import PACKAGED, resolve_weights


def _saved_imagenet_state(arch: str, path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A 1000-class state dict of ``arch`` (random, but not the init create_model would draw), saved to ``path``."""
    torch.manual_seed(seed)
    state = builder(arch)(1000).state_dict()
    torch.save(state, path)
    return state


def _bound(linear: nn.Linear) -> float:
    """PyTorch's default nn.Linear init draws weights from U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return 1.0 / linear.in_features ** 0.5


def test_registry_maps_names_to_torchvision_and_timm_builders():
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"} <= set(ARCHITECTURES)
    assert set(PACKAGED) <= set(ARCHITECTURES)
    resnet = builder("resnet18")(3)
    assert type(resnet).__module__.startswith("torchvision.") and resnet.fc.out_features == 3
    mobilenet = builder("mobilenet_v3_small")(4)  # torchvision, not registered by name
    assert type(mobilenet).__module__.startswith("torchvision.") and mobilenet.classifier[-1].out_features == 4
    tiny = builder("test_efficientnet")(5)  # timm, not registered by name
    assert type(tiny).__module__.startswith("timm.") and tiny.get_classifier().out_features == 5
    with pytest.raises(ValueError, match="unknown architecture 'no_such_net'.*timm model name"):
        builder("no_such_net")


def test_head_module_finds_the_last_layer():
    resnet = builder("resnet18")(2)
    assert head_module(resnet) is resnet.fc
    lite = builder("tf_efficientnet_lite0")(2)
    assert head_module(lite) is lite.classifier
    with pytest.raises(ValueError, match="cannot find the classification head of Sequential"):
        head_module(nn.Sequential(nn.Linear(3, 2)))


def test_timm_file_weights_give_the_backbone_exactly_and_a_small_default_head(tmp_path):
    path = tmp_path / "lite0.pth"
    state = _saved_imagenet_state("tf_efficientnet_lite0", path)
    source = resolve_weights("tf_efficientnet_lite0", str(path))
    assert source.kind == "file" and source.key_map is None
    torch.manual_seed(1)
    model = create_model("tf_efficientnet_lite0", 2, source)
    loaded = model.state_dict()
    backbone = [k for k in state if not k.startswith("classifier.")]
    assert len(backbone) > 100 and all(torch.equal(loaded[k], state[k]) for k in backbone)
    head = model.classifier
    assert isinstance(head, nn.Linear) and head.weight.shape == (2, 1280)
    # PyTorch's default init (|w| <= 1/sqrt(1280) = 0.028), not timm's 2-class init U(-0.71, 0.71), std ~0.41
    assert head.weight.abs().max() <= _bound(head) + 1e-6 and head.weight.std() < 0.1
    assert builder("tf_efficientnet_lite0")(2).classifier.weight.std() > 0.3  # what the fix avoids


def test_backbone_only_state_dict_loads_and_gets_a_new_head(tmp_path):
    state = _saved_imagenet_state("resnet18", tmp_path / "full.pt", seed=3)
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    torch.save(backbone, tmp_path / "backbone.pt")
    model = create_model("resnet18", 3, resolve_weights("resnet18", str(tmp_path / "backbone.pt")))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in backbone.items())
    assert loaded["fc.weight"].shape == (3, 512) and loaded["fc.weight"].abs().max() <= _bound(model.fc) + 1e-6


def test_sequential_head_keeps_its_pretrained_layers_before_the_last_linear(tmp_path):
    # torchvision's mobilenet_v3 classifier is Linear(576, 1024) -> Hardswish -> Dropout -> Linear(1024, 1000):
    # only the last Linear is task-specific; the hidden layer is part of the pretrained network
    path = tmp_path / "mbv3.pt"
    state = _saved_imagenet_state("mobilenet_v3_small", path, seed=5)
    model = create_model("mobilenet_v3_small", 2, resolve_weights("mobilenet_v3_small", str(path)))
    loaded = model.state_dict()
    kept = [k for k in state if not k.startswith("classifier.3.")]
    assert "classifier.0.weight" in kept and all(torch.equal(loaded[k], state[k]) for k in kept)
    assert loaded["classifier.3.weight"].shape == (2, 1024)


@pytest.mark.parametrize("arch, last", [("swin_t", "head."), ("vit_b_16", "heads.head."),
                                         ("squeezenet1_0", "classifier.1.")])
def test_other_head_shapes_load_everything_but_their_final_layer(tmp_path, arch, last):
    # Swin's head is `head`, ViT's `heads.head` inside a Sequential, SqueezeNet's a 1x1 convolution
    path = tmp_path / f"{arch}.pt"
    state = _saved_imagenet_state(arch, path, seed=7)
    model = create_model(arch, 2, resolve_weights(arch, str(path)))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith(last))
    assert loaded[f"{last}weight"].shape[0] == 2 and model(torch.zeros(1, 3, 224, 224)).shape == (1, 2)


def test_weights_that_do_not_fit_name_the_file_and_the_first_bad_tensor(tmp_path):
    state = _saved_imagenet_state("resnet18", tmp_path / "ok.pt")
    wrong = dict(state, **{"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})
    missing = {k: v for k, v in state.items() if k != "layer4.1.bn2.weight"}
    extra = dict(state, **{"layer5.weight": torch.zeros(3)})
    cases = [(wrong, "1 tensors of the wrong shape (first layer1.0.conv1.weight)"),
             (missing, "1 missing tensors (first layer4.1.bn2.weight)"),
             (extra, "1 unexpected tensors (first layer5.weight)")]
    for i, (bad, expected) in enumerate(cases):
        path = tmp_path / f"bad{i}.pt"
        torch.save(bad, path)
        with pytest.raises(ValueError) as err:
            create_model("resnet18", 2, resolve_weights("resnet18", str(path)))
        message = str(err.value)
        assert message.startswith(f"{path}: weights do not fit resnet18") and expected in message


def test_parameter_groups_put_the_head_at_lr_and_the_backbone_at_lr_times_mult():
    model = builder("resnet18")(2)
    backbone, head = parameter_groups(model, lr=0.01, backbone_lr_mult=0.1)
    assert (backbone["name"], head["name"]) == ("backbone", "head")
    assert head["lr"] == pytest.approx(0.01) and backbone["lr"] == pytest.approx(0.001)
    assert {id(p) for p in head["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert len(backbone["params"]) + 2 == len(list(model.parameters()))
    assert not {id(p) for p in backbone["params"]} & {id(p) for p in head["params"]}
    torch.optim.SGD(parameter_groups(model, 0.01), lr=0.01)  # a valid optimiser argument (no duplicate params)


def test_set_backbone_trainable_freezes_everything_but_the_head():
    model = builder("resnet18")(2)
    set_backbone_trainable(model, False)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    # a step moves the head only
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.eval()
    nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    opt.step()
    after = model.state_dict()
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert torch.equal(after["conv1.weight"], before["conv1.weight"])
    set_backbone_trainable(model, True)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("arch", ["resnet18", "tf_efficientnet_lite0"])
def test_embed_returns_the_input_of_the_head(arch):
    torch.manual_seed(0)
    model = builder(arch)(2).eval()
    x = torch.randn(3, 3, 32, 32)
    z = embed(model, x)
    head = head_module(model)
    assert z.shape == (3, head.in_features)
    with torch.no_grad():
        torch.testing.assert_close(head(z), model(x), rtol=1e-5, atol=1e-5)
    if arch == "resnet18":  # torchvision: the flattened global average pool of the last stage
        m = model
        with torch.no_grad():
            feats = m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
        torch.testing.assert_close(z, feats.mean((2, 3)), rtol=1e-5, atol=1e-5)
