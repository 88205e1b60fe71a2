"""A lab's weights by URL, written where a weights name goes: ``--weights URL#sha256=HEX`` or ``--weights FILE.yaml``.

In Python a lab's weights are registered under a tag (:func:`smallct.models.registry.register_weights`); on the
command line, in a settings file (``weights:``) or in a config they are written out, in one of two forms:

``https://host/resnet18_ct.pth#sha256=HEX``
    the URL, then after ``#`` the file's SHA-256 (64 hex digits, as ``sha256sum FILE`` prints it) and optionally
    its input contract: ``&mean=R,G,B&std=R,G,B&input_size=PX``.
``weights.yaml`` (or ``.yml``)
    a small file naming ``url`` and ``sha256``, optionally ``mean`` and ``std`` (three numbers each),
    ``input_size`` (px) and ``description``.

Left out, the input contract is the architecture's own (its ImageNet mean, std and input size), as for a PATH to a
state dict. Either form becomes a :class:`~smallct.models.registry.UrlWeights`, which
:func:`smallct.models.weights.resolve_weights` downloads once into the torch hub cache (as ``NAME-HASH8.pth``:
the URL's file name and the SHA-256's first 8 digits, so that two URLs ending in the same name do not share a cache
file), checks against the SHA-256 and against the architecture and records in ``run.json``, as it does registered
weights. A malformed spec (no SHA-256, not 64 hex digits, an
unknown key) is a ``ValueError`` of one line, before anything is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import Callable

import yaml

from smallct.models.registry import UrlWeights, url_file_name

URL_SCHEMES = ("http://", "https://")
KEYS = ("url", "sha256", "mean", "std", "input_size", "description")  # of a weights.yaml
FRAGMENT_KEYS = ("sha256", "mean", "std", "input_size")  # after the URL's '#'
_SHA256_FIX = "the 64 hex digits that `sha256sum FILE` prints"


def url_weights(weights: str, contract: Callable[[], tuple]) -> UrlWeights | None:
    """The :class:`UrlWeights` that ``weights`` writes out (a URL with ``#sha256=HEX``, or a weights.yaml), else
    None; ``contract()`` gives the default (mean, std, input size), the architecture's own."""
    if weights.startswith(URL_SCHEMES):
        return _from_url(weights, contract)
    if weights.endswith((".yaml", ".yml")):
        return _from_yaml(Path(weights).expanduser(), contract)
    return None


def _from_url(spec: str, contract) -> UrlWeights:
    where = f"--weights {spec}"
    url, _, fragment = spec.partition("#")
    values = {}
    for part in filter(None, fragment.split("&")):
        key, eq, value = part.partition("=")
        if not eq or key not in FRAGMENT_KEYS:
            raise ValueError(f"{where}: {part!r} after '#': expected {'=..., '.join(FRAGMENT_KEYS)}=... joined "
                             f"by '&'")
        values[key] = value
    if "sha256" not in values:
        raise ValueError(f"{where}: no SHA-256 to check the download against: append #sha256=HEX ({_SHA256_FIX})")
    return _entry(where, url, values, contract, f"weights from {url}")


def _from_yaml(path: Path, contract) -> UrlWeights:
    where = str(path)
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ValueError(f"--weights {path}: cannot read the weights file ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{where}: not YAML ({' '.join(str(err).split())})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected keys {', '.join(KEYS)} (url and sha256 at least)")
    unknown = sorted(str(k) for k in values if k not in KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key {', '.join(unknown)}: expected {', '.join(KEYS)}")
    missing = [k for k in ("url", "sha256") if values.get(k) in (None, "")]
    if missing:
        raise ValueError(f"{where}: no {' and no '.join(missing)}: a weights file names the url of the weights "
                         f"and their sha256 ({_SHA256_FIX})")
    url = values["url"]
    if not isinstance(url, str) or not url.startswith(URL_SCHEMES) or "#" in url:
        raise ValueError(f"{where}: url {url!r}: expected an http:// or https:// URL (the SHA-256 under sha256)")
    default = f"{path.name}: weights from {url}"
    return _entry(where, url, values, contract, str(values.get("description") or default))


def _entry(where: str, url: str, values: dict, contract, description: str) -> UrlWeights:
    """The UrlWeights of ``url`` and ``values`` (strings from a URL, or YAML's values), checked; errors name
    ``where``."""
    sha256 = values["sha256"]
    if not isinstance(sha256, str):  # YAML reads an unquoted all-digit hash as a number
        raise ValueError(f"{where}: sha256 {sha256!r}: expected {_SHA256_FIX}, in quotes")
    sha256 = sha256.strip().lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"{where}: sha256 {values['sha256']!r}: expected {_SHA256_FIX}")
    mean, std, size = contract()
    mean = _triple(values["mean"], "mean", where) if values.get("mean") is not None else tuple(mean)
    std = _triple(values["std"], "std", where, positive=True) if values.get("std") is not None else tuple(std)
    size = _size(values["input_size"], where) if values.get("input_size") is not None else int(size)
    name = PurePosixPath(url_file_name(url))  # in the cache as NAME-<sha256[:8]>.pth: two URLs of one name differ
    file_name = f"{name.stem or 'weights'}-{sha256[:8]}{name.suffix}"
    return UrlWeights(url=url, sha256=sha256, mean=mean, std=std, input_size=size, file_name=file_name,
                      description=description)


def _triple(value, key: str, where: str, positive: bool = False) -> tuple[float, float, float]:
    """Three finite numbers (``positive``: > 0) from ``0.5,0.5,0.5`` or a YAML list."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        numbers = tuple(float(v) for v in items) if isinstance(items, (list, tuple)) else ()
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in numbers):
        kind = "positive numbers" if positive else "numbers"
        raise ValueError(f"{where}: {key} {value!r}: expected three {kind}, one per channel (R,G,B), e.g. "
                         f"{'0.229,0.224,0.225' if positive else '0.485,0.456,0.406'}")
    return numbers


def _size(value, where: str) -> int:
    try:
        size = int(value) if not isinstance(value, (bool, float)) else 0
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise ValueError(f"{where}: input_size {value!r}: expected the side in px the weights were trained at, "
                         "e.g. 224")
    return size
