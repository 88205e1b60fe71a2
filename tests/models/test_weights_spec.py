"""A lab's weights written out where a weights name goes: ``URL#sha256=HEX[&mean=..&std=..&input_size=..]`` or a
weights.yaml; a malformed spec is one line naming it and the fix, before any download (the downloads themselves:
tests/models/test_download.py)."""

from __future__ import annotations

import pytest

from smallct.models.registry import UrlWeights
from smallct.models.weights import resolve_weights
from smallct.models.weights_spec import url_weights

HEX = "ab" * 32
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224)


def _contract():
    return IMAGENET


def test_a_url_with_its_sha256_takes_the_architectures_contract_unless_the_url_says_otherwise():
    plain = url_weights(f"https://lab.example/w/r18_ct.pth#sha256={HEX.upper()}", _contract)
    assert plain == UrlWeights(url="https://lab.example/w/r18_ct.pth", sha256=HEX, mean=IMAGENET[0],
                               std=IMAGENET[1], input_size=224, file_name=f"r18_ct-{HEX[:8]}.pth",
                               description="weights from https://lab.example/w/r18_ct.pth")
    # the file's name in the torch hub cache: no fragment in it, the SHA-256's first 8 digits (two URLs ending in
    # r18_ct.pth get two files)
    assert plain.name == f"r18_ct-{HEX[:8]}.pth"
    own = url_weights(f"http://127.0.0.1:8000/r18.pth?v=2#sha256={HEX}&mean=0.5,0.5,0.5&std=0.25,0.25,0.25"
                      f"&input_size=128", _contract)
    assert own.url == "http://127.0.0.1:8000/r18.pth?v=2"
    assert (own.mean, own.std, own.input_size) == ((0.5,) * 3, (0.25,) * 3, 128)


def test_names_and_paths_are_no_spec():
    for weights in ("imagenet", "none", "lab_v1", "runs/cv/checkpoints/r0_f0.pt", "hf-hub:timm/resnet18.a1_in1k"):
        assert url_weights(weights, _contract) is None


def test_a_weights_yaml_names_url_sha256_and_the_contract(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_text(f"url: https://lab.example/r18_ct.pth\nsha256: '{HEX}'\nmean: [0.5, 0.5, 0.5]\n"
                    f"std: 0.25,0.25,0.25\ninput_size: 160\n")
    w = url_weights(str(path), _contract)
    assert (w.url, w.sha256, w.mean, w.std, w.input_size) == ("https://lab.example/r18_ct.pth", HEX, (0.5,) * 3,
                                                              (0.25,) * 3, 160)
    assert w.description == "weights.yaml: weights from https://lab.example/r18_ct.pth"
    path.write_text(f"url: https://lab.example/r18_ct.pth\nsha256: {HEX}\ndescription: CT pre-training v1\n")
    w = url_weights(str(path), _contract)
    assert (w.mean, w.std, w.input_size, w.description) == (*IMAGENET, "CT pre-training v1")


@pytest.mark.parametrize("spec, message", [
    ("https://lab.example/r18.pth", "no SHA-256 to check the download against: append #sha256=HEX"),
    ("https://lab.example/r18.pth#sha256=f37072fd", "sha256 'f37072fd': expected the 64 hex digits"),
    (f"https://lab.example/r18.pth#sha256={'g' * 64}", "expected the 64 hex digits that `sha256sum FILE` prints"),
    (f"https://lab.example/r18.pth#sha256={HEX}&size=224", "'size=224' after '#': expected sha256=..., mean=..."),
    (f"https://lab.example/r18.pth#sha256={HEX}&mean=0.5,0.5", "mean '0.5,0.5': expected three numbers"),
    (f"https://lab.example/r18.pth#sha256={HEX}&std=0.2,0,0.2", "std '0.2,0,0.2': expected three positive numbers"),
    (f"https://lab.example/r18.pth#sha256={HEX}&input_size=big", "input_size 'big': expected the side in px"),
])
def test_a_malformed_url_spec_is_one_line_naming_it_and_the_fix(spec, message):
    with pytest.raises(ValueError) as err:
        url_weights(spec, _contract)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"--weights {spec}: ") and message in text, text


@pytest.mark.parametrize("content, message", [
    (f"url: https://lab.example/r.pth\nsha256: '{HEX}'\nnormalise: true\n",
     "unknown key normalise: expected url, sha256, mean, std, input_size, description"),
    ("url: https://lab.example/r.pth\n", "no sha256: a weights file names the url of the weights and their sha256"),
    (f"sha256: '{HEX}'\n", "no url: a weights file"),
    (f"url: /data/r.pth\nsha256: '{HEX}'\n", "url '/data/r.pth': expected an http:// or https:// URL"),
    (f"url: https://lab.example/r.pth\nsha256: {'1' * 64}\n", "expected the 64 hex digits that `sha256sum FILE` "
                                                              "prints, in quotes"),
    ("- just\n- a list\n", "expected keys url, sha256, mean, std, input_size, description"),
    ("url: [unclosed\n", "not YAML"),
])
def test_a_malformed_weights_yaml_is_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "weights.yaml"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        url_weights(str(path), _contract)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}: ") and message in text, text


def test_a_missing_weights_yaml_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^--weights .*lab\.yml: cannot read the weights file \(No such file"):
        url_weights(str(tmp_path / "lab.yml"), _contract)


def test_resolve_weights_checks_the_spec_before_any_download(monkeypatch):
    from smallct.models import weights

    def no_fetch(*args, **kwargs):
        raise AssertionError("fetched")

    monkeypatch.setattr(weights, "_fetch", no_fetch)
    with pytest.raises(ValueError, match="no SHA-256"):
        resolve_weights("resnet18", "http://127.0.0.1:9/r18.pth")
