"""Weights on first use: the real download path against a server on 127.0.0.1, the caches, offline errors.

No test here reaches beyond loopback: the conftest turns downloads off for every test (SMALLCT_OFFLINE=1,
HF_HUB_OFFLINE=1), and only the tests that fetch from their own 127.0.0.1 server turn them back on.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import timm
import torch
import torchvision

from smallct.config.run import CVConfig, DataConfig, TrainConfig
from smallct.engine.cv import run_cv
from smallct.models.factory import create_model
from smallct.models.registry import URL_WEIGHTS, UrlWeights, builder, register_weights
from smallct.models.weights import _fetch, _hash_prefix, offline_reason, resolve_weights, WeightsUnavailable


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (path -> bytes) and counts the requests per path (``"HEAD /path"`` for a HEAD); a
    file in ``server.cut`` is sent half, after a Content-Length of the whole (a connection that breaks
    mid-download). Each answer carries the headers the Hugging Face hub's ``resolve`` answers with (the commit and
    the ETag of the file), so that ``hf_hub_download`` takes this server for a hub."""

    def _answer(self, key: str, send_body: bool):
        self.server.requests[key] = self.server.requests.get(key, 0) + 1
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.end_headers()
        if send_body:
            self.wfile.write(body[:len(body) // 2] if self.path in self.server.cut else body)

    def do_GET(self):
        self._answer(self.path, send_body=True)

    def do_HEAD(self):
        self._answer(f"HEAD {self.path}", send_body=False)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 (a free port) in a thread: ``server.url``, ``.files``, ``.cut``, ``.requests``."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    httpd.files, httpd.cut, httpd.requests = {}, set(), {}
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A private ``$TORCH_HOME``; its ``hub/checkpoints`` folder (not created) is returned."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torch.hub.get_dir() reads it on every call
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def online(monkeypatch):
    """Downloads allowed, for this test only: it talks to its own 127.0.0.1 server."""
    monkeypatch.delenv("SMALLCT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def registered():
    """``registered(arch, tag, entry)`` registers weights for this test and removes them afterwards."""
    names = []

    def add(arch: str, tag: str, entry: UrlWeights) -> UrlWeights:
        names.append((arch, tag))
        return register_weights(arch, tag, entry)

    yield add
    for arch, tag in names:
        URL_WEIGHTS[arch].pop(tag, None)


def _resnet18_checkpoint(seed: int) -> tuple[dict[str, torch.Tensor], bytes]:
    """A randomly initialised torchvision resnet18 state dict (1000 classes) and the bytes torch.save writes."""
    torch.manual_seed(seed)
    state = builder("resnet18")(1000).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return state, buffer.getvalue()


def _entry(url: str, body: bytes) -> UrlWeights:
    return UrlWeights(url=url, sha256=hashlib.sha256(body).hexdigest(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                      input_size=128, description="lab weights")


def _one_line_naming(message: str, *parts) -> None:
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, f"{part!r} not in {message!r}"


def test_registered_weights_download_once_check_the_sha256_and_load_exactly(server, torch_home, online, registered):
    state, body = _resnet18_checkpoint(seed=11)
    server.files["/w/resnet18_lab.pth"] = body
    entry = registered("resnet18", "lab_v1", _entry(f"{server.url}/w/resnet18_lab.pth", body))

    source = resolve_weights("resnet18", "lab_v1")
    cached = torch_home / "resnet18_lab.pth"
    assert server.requests == {"/w/resnet18_lab.pth": 1}
    assert source.kind == "url" and source.path == str(cached) and cached.read_bytes() == body
    assert source.url == entry.url and source.sha256 == entry.sha256
    assert source.mean == (0.5, 0.5, 0.5) and source.std == (0.25, 0.25, 0.25) and source.input_size == 128
    assert sorted(p.name for p in torch_home.iterdir()) == ["resnet18_lab.pth"]  # no partial file left beside it
    model = create_model("resnet18", 2, source)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state if not k.startswith("fc."))
    assert loaded["fc.weight"].shape == (2, 512)

    again = resolve_weights("resnet18", "lab_v1")  # from the cache: no second request
    assert again == source and server.requests == {"/w/resnet18_lab.pth": 1}
    record = source.to_dict()
    assert record["url"] == entry.url and record["sha256"] == entry.sha256 and record["path"] == str(cached)


def test_a_download_cut_short_fails_its_sha256_and_leaves_no_file(server, torch_home, online, registered):
    _, body = _resnet18_checkpoint(seed=0)
    server.files["/cut.pth"] = body
    server.cut.add("/cut.pth")
    entry = registered("resnet18", "cut", _entry(f"{server.url}/cut.pth", body))
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights("resnet18", "cut")
    # urllib reads a body cut short as a short file without complaint: the SHA-256 check is what catches it
    _one_line_naming(str(err.value), entry.url, "cut.pth", torch_home, "invalid hash value")
    assert not torch_home.exists() or list(torch_home.iterdir()) == []  # neither the file nor a .partial


def test_a_wrong_sha256_is_one_line_and_leaves_no_file(server, torch_home, online, registered):
    _, body = _resnet18_checkpoint(seed=0)
    server.files["/r18.pth"] = body
    wrong = hashlib.sha256(b"another file").hexdigest()
    registered("resnet18", "wrong", UrlWeights(url=f"{server.url}/r18.pth", sha256=wrong, mean=(0.5,) * 3,
                                               std=(0.5,) * 3, input_size=224))
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights("resnet18", "wrong")
    _one_line_naming(str(err.value), f"{server.url}/r18.pth", "r18.pth", torch_home, "invalid hash value", wrong)
    assert server.requests == {"/r18.pth": 1}
    assert list(torch_home.iterdir()) == []


def test_a_corrupt_file_in_the_cache_is_refused_naming_it(server, torch_home, online, registered):
    _, body = _resnet18_checkpoint(seed=0)
    entry = registered("resnet18", "lab", _entry(f"{server.url}/lab.pth", body))
    torch_home.mkdir(parents=True)
    (torch_home / "lab.pth").write_bytes(body[:1000])
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights("resnet18", "lab")
    _one_line_naming(str(err.value), torch_home / "lab.pth", entry.sha256, "delete the file")
    assert server.requests == {}


def test_a_404_is_one_line_naming_the_url_and_where_to_put_the_file(server, torch_home, online, registered):
    entry = registered("resnet18", "gone", _entry(f"{server.url}/gone.pth", b"x"))
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights("resnet18", "gone")
    _one_line_naming(str(err.value), entry.url, "gone.pth", torch_home, "404")


def test_offline_a_missing_file_is_one_line_saying_what_to_do_and_nothing_is_requested(server, torch_home,
                                                                                     registered, monkeypatch):
    entry = registered("resnet18", "lab", _entry(f"{server.url}/lab.pth", b"weights"))
    with pytest.raises(WeightsUnavailable) as err:  # the conftest's SMALLCT_OFFLINE=1
        resolve_weights("resnet18", "lab")
    _one_line_naming(str(err.value), "SMALLCT_OFFLINE=1", entry.url, "lab.pth", torch_home, "--weights none")

    monkeypatch.delenv("SMALLCT_OFFLINE")
    with pytest.raises(WeightsUnavailable, match=r"downloads are off \(HF_HUB_OFFLINE=1\)"):
        resolve_weights("resnet18", "lab")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(WeightsUnavailable, match=r"downloads are off \(--offline\)"):
        resolve_weights("resnet18", "lab", offline=True)
    assert server.requests == {} and not torch_home.exists()


def test_offline_reason_reads_the_switches(monkeypatch):
    monkeypatch.delenv("SMALLCT_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert offline_reason() is None and offline_reason(True) == "--offline"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert offline_reason() is None
    monkeypatch.setenv("SMALLCT_OFFLINE", "true")
    assert offline_reason() == "SMALLCT_OFFLINE=true"


def test_the_offline_flag_stops_the_cli_in_one_line(server, torch_home, online, registered, phantom_dir, tmp_path,
                                                    capsys):
    from smallct.cv import main

    entry = registered("resnet18", "lab", _entry(f"{server.url}/lab.pth", b"weights"))
    out = tmp_path / "run"
    code = main(["--data", str(phantom_dir), "--arch", "resnet18", "--weights", "lab", "--offline", "--img-size", "32",
                 "--epochs", "1", "--out", str(out), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smallct.cv: error:") and len(err.splitlines()) == 1
    _one_line_naming(err, "--offline", entry.url, torch_home)
    assert server.requests == {} and not (out / "checkpoints").exists()


def test_run_json_records_where_the_weights_came_from(server, torch_home, online, registered, phantom_dir, tmp_path):
    _, body = _resnet18_checkpoint(seed=3)
    server.files["/r18_lab.pth"] = body
    entry = registered("resnet18", "lab", _entry(f"{server.url}/r18_lab.pth", body))
    out = tmp_path / "run"
    cfg = CVConfig(arch="resnet18", weights="lab", folds=2, seed=0, device="cpu", out=out, workers=1,
                   data=DataConfig(data=phantom_dir, img_size=32),
                   train=TrainConfig(epochs=1, batch_size=8, tta=False))
    run_cv(cfg, progress=False, log=lambda *a: None)
    weights = json.loads((out / "run.json").read_text())["weights"]
    assert weights["kind"] == "url" and weights["url"] == entry.url and weights["sha256"] == entry.sha256
    assert weights["path"] == str(torch_home / "r18_lab.pth") and weights["input_size"] == 128
    assert server.requests == {"/r18_lab.pth": 1}


def test_torchvision_named_weights_come_from_the_torch_hub_cache_with_their_own_contract(torch_home, monkeypatch):
    state, body = _resnet18_checkpoint(seed=5)
    # torchvision's URL, with the hash prefix of this file in its name (the cached file is checked against it)
    name = f"resnet18-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    url = f"https://download.pytorch.org/models/{name}"
    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.value, "url", url)
    torch_home.mkdir(parents=True)
    (torch_home / name).write_bytes(body)
    source = resolve_weights("resnet18", "IMAGENET1K_V1")
    assert source.kind == "torchvision" and source.path == str(torch_home / name)
    assert source.url == url
    assert source.sha256 == hashlib.sha256(body).hexdigest()
    assert resolve_weights("resnet18", "ResNet18_Weights.IMAGENET1K_V1") == source
    loaded = create_model("resnet18", 2, source).state_dict()
    assert torch.equal(loaded["layer3.0.conv2.weight"], state["layer3.0.conv2.weight"])


def test_torchvision_named_weights_offline_name_their_url_file_and_cache(torch_home):
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights("resnet50", "IMAGENET1K_V2")
    _one_line_naming(str(err.value), "ResNet50_Weights.IMAGENET1K_V2", "resnet50-11ad3fa6.pth", torch_home,
                     "https://download.pytorch.org/models/resnet50-11ad3fa6.pth", "SMALLCT_OFFLINE=1")


def test_timm_weights_come_from_the_torch_hub_cache_of_their_url(torch_home, monkeypatch):
    # timm's resnet18.a1_in1k has the tensor names of torchvision's resnet18, so they load into it
    state, body = _resnet18_checkpoint(seed=9)
    original = timm.models.get_pretrained_cfg("resnet18.a1_in1k").url  # .../resnet18_a1_0-d63eafa0.pth
    name = f"resnet18_a1_0-{hashlib.sha256(body).hexdigest()[:8]}.pth"  # timm's name, with this file's hash prefix
    url = original.replace("resnet18_a1_0-d63eafa0.pth", name)
    get_cfg = timm.models.get_pretrained_cfg

    def with_url(model_name, *args, **kwargs):
        cfg = get_cfg(model_name, *args, **kwargs)
        if cfg is not None and cfg.url == original:
            cfg.url = url
        return cfg

    monkeypatch.setattr(timm.models, "get_pretrained_cfg", with_url)
    torch_home.mkdir(parents=True)
    (torch_home / name).write_bytes(body)
    source = resolve_weights("resnet18", "resnet18.a1_in1k")
    assert source.kind == "timm" and source.path == str(torch_home / name)
    assert source.url == url and source.input_size == 224
    assert source.mean == pytest.approx((0.485, 0.456, 0.406))
    assert resolve_weights("resnet18", "a1_in1k") == source  # the tag alone, of this architecture
    loaded = create_model("resnet18", 2, source).state_dict()
    assert torch.equal(loaded["layer4.1.bn2.running_mean"], state["layer4.1.bn2.running_mean"])


def test_timm_and_hub_weights_offline_name_the_hub_file_url_and_cache(torch_home):
    from huggingface_hub.constants import HF_HUB_CACHE

    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights("test_efficientnet", "imagenet")  # timm's default tag: only on the Hugging Face hub
    _one_line_naming(str(err.value), "timm/test_efficientnet.r160_in1k", "model.safetensors", HF_HUB_CACHE,
                     "https://huggingface.co/timm/test_efficientnet.r160_in1k/resolve/main/model.safetensors")
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights("resnet18", "hf-hub:timm/resnet18.a1_in1k")
    _one_line_naming(str(err.value), "config.json", "hf download timm/resnet18.a1_in1k", HF_HUB_CACHE)


def test_names_of_other_weights_are_errors_that_say_what_is_accepted(tmp_path):
    with pytest.raises(WeightsUnavailable, match="resnet50.a1_in1k: timm's weights of resnet50, not of resnet18"):
        resolve_weights("resnet18", "resnet50.a1_in1k")
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights("resnet18", "IMAGENET1K_V9")
    _one_line_naming(str(err.value), "IMAGENET1K_V9: no such weights file", "IMAGENET1K_V1", "resnet18.a1_in1k",
                     "hf-hub:ORG/NAME")


def test_url_weights_need_a_whole_sha256():
    with pytest.raises(ValueError, match="expected the 64 lower-case hex digits"):
        UrlWeights(url="http://127.0.0.1/w.pth", sha256="f37072fd", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=224)


def test_a_damaged_torchvision_file_in_the_cache_fails_the_hash_prefix_of_its_name(torch_home):
    # a truncated hand-copied resnet18-f37072fd.pth: refused here, in one line, not later inside torch.load
    _, body = _resnet18_checkpoint(seed=0)
    torch_home.mkdir(parents=True)
    (torch_home / "resnet18-f37072fd.pth").write_bytes(body[:5000])
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights("resnet18", "IMAGENET1K_V1")
    _one_line_naming(str(err.value), torch_home / "resnet18-f37072fd.pth", "f37072fd", "delete the file",
                     "https://download.pytorch.org/models/resnet18-f37072fd.pth", "fill it again")


def test_a_hash_prefix_in_the_file_name_is_checked_on_download_and_in_the_cache(server, torch_home, online, capfd):
    _, body = _resnet18_checkpoint(seed=2)
    good = f"w-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    bad = "w-00000000.pth" if not good.startswith("w-00000000") else "w-11111111.pth"
    server.files.update({f"/m/{good}": body, f"/m/{bad}": body})
    assert _hash_prefix(good) == good[2:10]

    path = _fetch(f"{server.url}/m/{good}", torch_home / good, _hash_prefix(good), False, "test weights")
    assert path.read_bytes() == body and server.requests == {f"/m/{good}": 1}
    err = capfd.readouterr().err  # stderr is no terminal here: one plain line, no bar redrawn with \r
    assert f"downloading {server.url}/m/{good} -> {torch_home / good}" in err and "\r" not in err
    assert _fetch(f"{server.url}/m/{good}", torch_home / good, _hash_prefix(good), False, "w") == path  # cached
    assert server.requests == {f"/m/{good}": 1}

    with pytest.raises(WeightsUnavailable) as err:  # downloaded, its SHA-256 does not start with the name's prefix
        _fetch(f"{server.url}/m/{bad}", torch_home / bad, _hash_prefix(bad), False, "test weights")
    _one_line_naming(str(err.value), f"{server.url}/m/{bad}", bad, torch_home, "invalid hash value")
    assert sorted(p.name for p in torch_home.iterdir()) == [good]  # no file, no partial left
    (torch_home / bad).write_bytes(body)  # the same file copied by hand under the wrong name: refused in the cache
    with pytest.raises(WeightsUnavailable) as err:
        _fetch(f"{server.url}/m/{bad}", torch_home / bad, _hash_prefix(bad), False, "test weights")
    _one_line_naming(str(err.value), torch_home / bad, hashlib.sha256(body).hexdigest(), "00000000"
                     if "00000000" in bad else "11111111", "delete the file")
    assert server.requests == {f"/m/{good}": 1, f"/m/{bad}": 1}


# Run with HF_ENDPOINT pointing at the test's server: huggingface_hub reads its endpoint and cache at import,
# so the hub download runs in a process of its own.
_HUB_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from safetensors.torch import load_file
    from smallct.models.factory import create_model
    from smallct.models.weights import WeightsUnavailable, resolve_weights

    try:
        resolve_weights("resnet18", "hf-hub:lab/other")  # its config.json says test_efficientnet
        mismatch = None
    except WeightsUnavailable as err:
        mismatch = str(err)
    source = resolve_weights("test_efficientnet", "hf-hub:lab/tiny")
    again = resolve_weights("test_efficientnet", "hf-hub:lab/tiny")  # from the Hugging Face cache
    written = load_file(sys.argv[1])
    loaded = create_model("test_efficientnet", 2, source).state_dict()
    same = [k for k in written if not k.startswith("classifier.") and torch.equal(loaded[k], written[k])]
    print(json.dumps({"mismatch": mismatch, "source": source.to_dict(), "again": again == source,
                      "same": len(same), "body": len([k for k in written if not k.startswith("classifier.")])}))
""")


def test_hf_hub_weights_download_from_a_hub_on_loopback_checking_the_architecture_first(server, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(4)
    state = timm.create_model("test_efficientnet", pretrained=False).state_dict()
    weights_file = tmp_path / "written.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights_file))
    config = {"architecture": "test_efficientnet", "num_classes": 1000,
              "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "input_size": [3, 96, 96]}}
    server.files["/lab/tiny/resolve/main/config.json"] = json.dumps(config).encode()
    server.files["/lab/tiny/resolve/main/model.safetensors"] = weights_file.read_bytes()
    server.files["/lab/other/resolve/main/config.json"] = json.dumps(config).encode()
    server.files["/lab/other/resolve/main/model.safetensors"] = weights_file.read_bytes()

    env = {k: v for k, v in os.environ.items() if k not in ("SMALLCT_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_IMPLICIT_TOKEN="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _HUB_SCRIPT, str(weights_file)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])

    # the architecture is checked on config.json, before the weights are fetched
    _one_line_naming(result["mismatch"], "hf-hub:lab/other", "test_efficientnet", "resnet18")
    source = result["source"]
    assert source["kind"] == "hf-hub" and source["url"] == f"{server.url}/lab/tiny/resolve/main/model.safetensors"
    assert source["path"].startswith(str(tmp_path / "hf" / "hub")) and source["path"].endswith("model.safetensors")
    assert source["sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert source["mean"] == [0.5] * 3 and source["std"] == [0.25] * 3 and source["input_size"] == 96
    assert result["again"] and result["same"] == result["body"] > 0  # every backbone tensor loaded as written
    # each file fetched once (hf_hub_download: HEAD for the metadata, then GET); lab/other's weights never
    assert {k: v for k, v in server.requests.items() if not k.startswith("HEAD")} == {
        "/lab/other/resolve/main/config.json": 1, "/lab/tiny/resolve/main/config.json": 1,
        "/lab/tiny/resolve/main/model.safetensors": 1}
    assert "HEAD /lab/tiny/resolve/main/model.safetensors" in server.requests
    assert not any("/lab/other/resolve/main/model.safetensors" in k for k in server.requests)
    # stderr is no terminal: one plain line per download, no progress bar
    assert f"downloading {server.url}/lab/tiny/resolve/main/model.safetensors ->" in done.stderr
    assert "\r" not in done.stderr


@pytest.mark.parametrize("command", ["fewshot", "curve"])
def test_the_offline_flag_of_fewshot_and_curve(command, torch_home, online, phantom_dir, tmp_path, capsys):
    import importlib

    main = importlib.import_module(f"smallct.{command}").main
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--offline" in capsys.readouterr().out
    out = tmp_path / command
    code = main(["--data", str(phantom_dir), "--arch", "resnet18", "--weights", "imagenet", "--offline",
                 "--out", str(out), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"smallct.{command}: error:") and len(err.splitlines()) == 1
    _one_line_naming(err, "--offline", "resnet18-f37072fd.pth", torch_home,
                     "https://download.pytorch.org/models/resnet18-f37072fd.pth")
    assert not torch_home.exists()


def test_a_files_digest_is_computed_once_per_size_and_mtime(tmp_path, monkeypatch):
    from smallct.models import weights

    path = tmp_path / "w.pth"
    path.write_bytes(b"first")
    assert weights._sha256(path) == hashlib.sha256(b"first").hexdigest()

    def no_reading(*args, **kwargs):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(weights, "open", no_reading, raising=False)  # found before the builtin
    assert weights._sha256(path) == hashlib.sha256(b"first").hexdigest()  # from the digest cache
    monkeypatch.undo()
    path.write_bytes(b"second, longer")  # rewritten: another size and mtime, hashed again
    assert weights._sha256(path) == hashlib.sha256(b"second, longer").hexdigest()


def test_hugging_face_bars_are_off_only_while_downloading_into_a_log(capsys, tmp_path):
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    from smallct.models.weights import _download_progress

    target = tmp_path / "x"
    enable_progress_bars()
    with _download_progress("http://127.0.0.1/x", target) as bar:  # stderr captured: no terminal
        assert bar is False and are_progress_bars_disabled()
    assert not are_progress_bars_disabled()  # restored
    assert capsys.readouterr().err == f"downloading http://127.0.0.1/x -> {target}\n"
    disable_progress_bars()
    try:
        with _download_progress("http://127.0.0.1/x", target):
            pass
        assert are_progress_bars_disabled()  # the user's choice is kept
    finally:
        enable_progress_bars()


def _cv(phantom_dir, out, weights: str) -> list[str]:
    """A tiny ``smallct.cv`` command line on the phantom set with ``--weights WEIGHTS``."""
    return ["--data", str(phantom_dir), "--arch", "resnet18", "--weights", weights, "--img-size", "32", "--epochs",
            "1", "--folds", "2", "--batch-size", "8", "--no-tta", "--no-tensorboard", "--out", str(out),
            "--no-progress"]


def test_weights_by_url_on_the_command_line_are_downloaded_checked_and_recorded(server, torch_home, online,
                                                                                 phantom_dir, tmp_path, capsys):
    from smallct.cv import main

    state, body = _resnet18_checkpoint(seed=7)
    server.files["/lab/r18_ct.pth"] = body
    sha = hashlib.sha256(body).hexdigest()
    url = f"{server.url}/lab/r18_ct.pth"
    out = tmp_path / "run"
    assert main(_cv(phantom_dir, out, f"{url}#sha256={sha}&mean=0.5,0.5,0.5&std=0.25,0.25,0.25&input_size=64")) == 0
    assert f"resnet18 (weights from {url})" in capsys.readouterr().out
    weights = json.loads((out / "run.json").read_text())["weights"]
    assert weights == {"arch": "resnet18", "kind": "url", "path": str(torch_home / f"r18_ct-{sha[:8]}.pth"), "url": url,
                       "sha256": sha, "package": None, "mean": [0.5] * 3, "std": [0.25] * 3, "input_size": 64,
                       "description": f"weights from {url}"}
    assert server.requests == {"/lab/r18_ct.pth": 1}
    loaded = torch.load(out / "checkpoints" / "r0_f0.pt", weights_only=True)
    assert loaded["mean"] == [0.5] * 3 and loaded["std"] == [0.25] * 3  # the fold models normalise as the file says

    # the same weights from a weights.yaml (the contract there): no second download
    spec = tmp_path / "weights.yaml"
    spec.write_text(f"url: {url}\nsha256: '{sha}'\nmean: [0.5, 0.5, 0.5]\nstd: [0.25, 0.25, 0.25]\ninput_size: 64\n")
    assert main(_cv(phantom_dir, tmp_path / "run_yaml", str(spec))) == 0
    again = json.loads((tmp_path / "run_yaml" / "run.json").read_text())["weights"]
    assert {k: again[k] for k in ("kind", "url", "sha256", "path", "mean", "std", "input_size")} == {
        k: weights[k] for k in ("kind", "url", "sha256", "path", "mean", "std", "input_size")}
    assert server.requests == {"/lab/r18_ct.pth": 1}


def test_weights_by_url_with_a_wrong_sha256_are_refused_in_one_line_and_nothing_is_kept(server, torch_home, online,
                                                                                        phantom_dir, tmp_path, capsys):
    from smallct.cv import main

    _, body = _resnet18_checkpoint(seed=7)
    server.files["/lab/r18_ct.pth"] = body
    url, wrong = f"{server.url}/lab/r18_ct.pth", hashlib.sha256(b"another file").hexdigest()
    out = tmp_path / "run"
    assert main(_cv(phantom_dir, out, f"{url}#sha256={wrong}")) == 2
    downloading, err = capsys.readouterr().err.strip().splitlines()  # (stderr is no terminal: a line, no bar)
    assert downloading == f"downloading {url} -> {torch_home / f'r18_ct-{wrong[:8]}.pth'}" and err.startswith(
        "smallct.cv: error:")
    _one_line_naming(err, url, "invalid hash value", wrong, torch_home)
    assert server.requests == {"/lab/r18_ct.pth": 1}
    assert not out.exists() and list(torch_home.iterdir()) == []  # no run folder, no file in the cache


def test_url_weights_of_another_architecture_stop_before_the_run_folder(server, torch_home, online, phantom_dir,
                                                                        tmp_path, capsys):
    # 0.3.0 + the URL spec checked no architecture for downloaded weights: a resnet34 file under --arch resnet18
    # failed at the first fold, after run.json, checkpoints/ and folds/ were written (mutant: no check_fits in
    # _registered).
    from smallct.cv import main

    buffer = io.BytesIO()
    torch.save(builder("resnet34")(1000).state_dict(), buffer)
    body = buffer.getvalue()
    server.files["/lab/r34.pth"] = body
    url, sha = f"{server.url}/lab/r34.pth", hashlib.sha256(body).hexdigest()
    spec = tmp_path / "weights.yaml"
    spec.write_text(f"url: {url}\nsha256: '{sha}'\n")
    for weights in (f"{url}#sha256={sha}", str(spec)):
        out = tmp_path / "run"
        assert main(_cv(phantom_dir, out, weights)) == 2
        assert not out.exists()  # no run.json, checkpoints/ or folds/
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("smallct.cv: error:") and "weights do not fit resnet18" in err and url in err, err
    assert server.requests == {"/lab/r34.pth": 1}  # downloaded once, kept in the cache, refused both times


def test_two_urls_ending_in_the_same_name_get_their_own_cache_files(server, torch_home, online, phantom_dir, tmp_path,
                                                                     capsys):
    # 0.3.0 + the URL spec cached both as model.pth: the second URL found the first's file and failed its hash
    # check (mutant: the cache file named by the URL's last part alone).
    from smallct.cv import main

    paths = []
    for i, host in enumerate(("a", "b")):
        _, body = _resnet18_checkpoint(seed=20 + i)
        server.files[f"/{host}/model.pth"] = body
        sha = hashlib.sha256(body).hexdigest()
        out = tmp_path / f"run_{host}"
        assert main(_cv(phantom_dir, out, f"{server.url}/{host}/model.pth#sha256={sha}")) == 0, capsys.readouterr()
        recorded = json.loads((out / "run.json").read_text())["weights"]
        assert recorded["sha256"] == sha and recorded["path"] == str(torch_home / f"model-{sha[:8]}.pth")
        paths.append(recorded["path"])
    assert paths[0] != paths[1] and server.requests == {"/a/model.pth": 1, "/b/model.pth": 1}


@pytest.mark.parametrize("weights, message", [
    ("{url}", "no SHA-256 to check the download against: append #sha256=HEX"),
    ("{url}#sha256=f37072fd", "sha256 'f37072fd': expected the 64 hex digits"),
    ("{yaml}", "unknown key normalise"),
])
def test_a_bad_weights_spec_stops_the_cli_in_one_line_before_anything_is_fetched_or_written(
        weights, message, server, torch_home, online, phantom_dir, tmp_path, capsys):
    from smallct.cv import main

    spec = tmp_path / "weights.yaml"
    spec.write_text(f"url: {server.url}/r18.pth\nsha256: '{'ab' * 32}'\nnormalise: true\n")
    out = tmp_path / "run"
    assert main(_cv(phantom_dir, out, weights.format(url=f"{server.url}/r18.pth", yaml=spec))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smallct.cv: error:") and len(err.splitlines()) == 1 and message in err, err
    assert server.requests == {} and not out.exists() and not torch_home.exists()
