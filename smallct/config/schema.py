"""One schema for every setting: the fields of the config dataclasses, by their flat names.

A setting's flat name is its field name (``lr``, ``img_size``, ``arch``): the fields of nested
configs (``CVConfig.data``, ``CVConfig.train``, ``FewShotConfig.finetune``, ``TuneConfig.base``)
are flattened into one namespace, which is checked to hold no name twice. That namespace is what
the command-line flags (``--img-size``), settings files (``--params``, ``best_params.json``,
recipes) and tune's search spaces name. :func:`coerce` types a value as its field says (YAML and
JSON give text for ``1e-4``), :func:`build` makes a config from flat values, :func:`read_settings`
reads and checks a settings file; every problem is one line naming the file, the key and the value.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import numbers
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

RECIPES = Path(__file__).resolve().parents[1] / "recipes"  # named settings files: --params lite0_finetune
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


@dataclass(frozen=True)
class Setting:
    """One field of a config, under its flat name."""

    name: str
    path: tuple[str, ...]  # attribute path from the top config: ("train", "lr")
    kind: type  # int, float, bool, str or Path (of each item, when ``many``)
    choices: tuple | None  # the values of a Literal
    optional: bool  # None is allowed
    many: bool  # a list of ``kind``
    default: Any
    help: str
    meta: dict

    @property
    def flags(self) -> tuple[str, ...]:
        flag = self.meta.get("flag") or f"--{self.name.replace('_', '-')}"
        return (flag,) if isinstance(flag, str) else tuple(flag)

    @property
    def numeric(self) -> bool:
        return self.kind in (int, float) and self.choices is None


def _describe(annotation) -> tuple[type, tuple | None, bool, bool]:
    """(kind, choices, optional, many) of a field's type annotation."""
    optional, many = False, False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        optional = type(None) in args
        annotation = next(a for a in args if a is not type(None))
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list:
        many, annotation = True, args[0]
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return type(args[0]), tuple(args), optional, many
    return annotation, None, optional, many


@functools.cache
def settings(cls: type) -> dict[str, Setting]:
    """Every setting of config class ``cls`` by flat name; nested configs are flattened."""
    found: dict[str, Setting] = {}
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            inner = settings(hints[f.name])
            nested_default = getattr(defaults, f.name)
            items = [dataclasses.replace(s, path=(f.name, *s.path),
                                         default=_get(nested_default, s.path)) for s in inner.values()]
        else:
            kind, choices, optional, many = _describe(hints[f.name])
            items = [Setting(f.name, (f.name,), kind, choices, optional, many, getattr(defaults, f.name),
                             f.metadata.get("help", ""), dict(f.metadata))]
        for item in items:
            if item.name in found:
                raise TypeError(f"{cls.__name__}: setting {item.name} is both {'.'.join(found[item.name].path)} "
                                f"and {'.'.join(item.path)}")
            found[item.name] = item
    return found


# Bounds a numeric field may declare (``option(..., ge=1)``), as the words of its help and its errors.
_BOUNDS = {"ge": ("at least", lambda v, b: v >= b), "gt": ("above", lambda v, b: v > b),
           "le": ("at most", lambda v, b: v <= b), "lt": ("below", lambda v, b: v < b)}


@functools.cache
def _own_settings(cls: type) -> tuple[Setting, ...]:
    """The settings of ``cls``'s own fields (not those of nested configs), made without building a ``cls``."""
    hints = typing.get_type_hints(cls)
    return tuple(Setting(f.name, (f.name,), *_describe(hints[f.name]), None, f.metadata.get("help", ""),
                         dict(f.metadata))
                 for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(hints[f.name]))


def bounds(setting: Setting) -> str:
    """The range a numeric setting allows, in words (``at least 1``, ``above 0 and at most 1``), or ``""``."""
    text = " and ".join(f"{_BOUNDS[b][0]} {setting.meta[b]:g}" for b in _BOUNDS if b in setting.meta)
    if text and setting.meta.get("zero_is_none"):
        text += f", or 0 ({setting.meta.get('zero', 'none')})"
    return text


def _allows(setting: Setting, value: Any) -> bool:
    if setting.choices is not None:
        return value in setting.choices
    if "pattern" in setting.meta:
        return isinstance(value, str) and re.fullmatch(setting.meta["pattern"], value) is not None
    if not setting.numeric:
        return True
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if setting.kind is int else numbers.Real):
        return False
    return all(_BOUNDS[b][1](value, setting.meta[b]) for b in _BOUNDS if b in setting.meta)


def allowed_text(setting: Setting) -> str:
    """What ``setting`` allows, in words: ``an integer, at least 1``, ``one of sgd, adam, adamw``."""
    if setting.choices is not None:
        return f"one of {', '.join(map(str, setting.choices))}"
    if "allowed" in setting.meta:
        return setting.meta["allowed"]
    what = _expected(setting)
    return f"{what}, {bounds(setting)}" if bounds(setting) else what


def check_value(setting: Setting, value: Any, where: str) -> None:
    """``ValueError`` ``"{where} {value}: expected {what is allowed}"`` when ``value`` is outside ``setting``'s
    type, range or choices (None is allowed where the field is optional; a list must hold one value at least)."""
    if value is None and setting.optional:
        return
    items = value if setting.many and isinstance(value, (list, tuple)) else [value]
    if (setting.many and not items) or not all(_allows(setting, v) for v in items):
        shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in items)
        raise ValueError(f"{where} {shown or '(empty)'}: expected {allowed_text(setting)}")


def validate(cfg: Any) -> None:
    """Check every own field of config ``cfg`` (``__post_init__`` of the config dataclasses): ``ValueError`` naming
    the flag, the value received and what is allowed. A ``zero_is_none`` field given 0 becomes None."""
    for setting in _own_settings(type(cfg)):
        value = getattr(cfg, setting.name)
        if setting.meta.get("zero_is_none") and value == 0 and not isinstance(value, bool):
            setattr(cfg, setting.name, None)
            continue
        check_value(setting, value, setting.flags[0])


def _get(cfg: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        cfg = getattr(cfg, part)
    return cfg


def value_of(cfg: Any, name: str) -> Any:
    """The value of setting ``name`` (``lr``, ``img_size``, ``arch``) in ``cfg``."""
    return _get(cfg, setting_of(type(cfg), name).path)


def setting_of(cls: type, name: str) -> Setting:
    known = settings(cls)
    if name not in known:
        raise ValueError(f"unknown setting {name!r} (settings: {', '.join(known)})")
    return known[name]


def _one(setting: Setting, value: Any, where: str) -> Any:
    """One value typed as ``setting.kind``; ``ValueError`` naming ``where`` otherwise."""
    kind = setting.kind
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in _TRUE + _FALSE:
                raise ValueError
            return text in _TRUE
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if number != int(number):
                raise ValueError
            return int(number)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is Path:
            return Path(value)
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{where}: cannot read {value!r} as {_expected(setting)}") from None


def _expected(setting: Setting) -> str:
    kind = {int: "an integer", float: "a number", bool: "true or false", Path: "a path", str: "a text"}
    what = kind.get(setting.kind, setting.kind.__name__)
    return f"a comma-separated list of {what.split(' ', 1)[-1]}s" if setting.many else what


def coerce(setting: Setting, value: Any, where: str | None = None) -> Any:
    """``value`` typed as the field of ``setting`` says: numbers from text, lists from ``a,b``, None where allowed.

    ``ValueError`` naming ``where`` (default: the setting) when the value does not fit its type or choices.
    """
    where = where or setting.name
    if value is None or (setting.meta.get("zero_is_none") and value in (0, "0")):
        if setting.optional or setting.meta.get("zero_is_none"):
            return None
        raise ValueError(f"{where}: a value is needed ({_expected(setting)})")
    if setting.many:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{where}: cannot read {value!r} as {_expected(setting)}")
        items = [i.strip() if isinstance(i, str) else i for i in items]
        typed = [_one(setting, v, where) for v in items if v != ""]
    else:
        typed = [_one(setting, value, where)]
    if setting.choices is not None:
        bad = [v for v in typed if v not in setting.choices]
        if bad:
            raise ValueError(f"{where}: {bad[0]!r} is not one of {', '.join(map(str, setting.choices))}")
    return typed if setting.many else typed[0]


def build(cls: type, values: dict[str, Any], base: Any = None, where: str = "settings") -> Any:
    """A ``cls`` config: ``base`` (default ``cls()``) with the flat ``values`` set, each coerced.

    ``ValueError`` naming ``where`` and the key for an unknown key or a value of the wrong type.
    """
    known = settings(cls)
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ValueError(f"{where}: unknown setting {', '.join(unknown)} (settings: {', '.join(known)})")
    cfg = base if base is not None else cls()
    for name, value in values.items():
        setting = known[name]
        cfg = _replace(cfg, setting.path, coerce(setting, value, f"{where}: {name}"))
    return cfg


def _replace(cfg: Any, path: tuple[str, ...], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(cfg, **{path[0]: value})
    return dataclasses.replace(cfg, **{path[0]: _replace(getattr(cfg, path[0]), path[1:], value)})


def flat(cfg: Any, names=None) -> dict[str, Any]:
    """The flat settings of ``cfg`` (all, or ``names``), JSON-ready (paths as text)."""
    out = {}
    for name, setting in settings(type(cfg)).items():
        if names is None or name in names:
            value = _get(cfg, setting.path)
            out[name] = str(value) if isinstance(value, Path) else value
    return out


def file_settings(cls: type) -> dict[str, Setting]:
    """The settings a settings file may hold (not the data folder, the run folder or bookkeeping)."""
    return {k: s for k, s in settings(cls).items() if s.meta.get("file", True)}


def resolve_params_path(params: str | Path) -> Path:
    """``--params``: a JSON file, or the name of a recipe shipped in ``smallct/recipes``."""
    if Path(params).is_file() or Path(params).suffix:
        return Path(params)
    recipe = RECIPES / f"{params}.json"
    if recipe.is_file():
        return recipe
    known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.json")))
    raise ValueError(f"{params}: no such settings file, nor a recipe (recipes: {known})")


def _read_settings_file(params: str | Path) -> tuple[Path, dict[str, Any]]:
    path = resolve_params_path(params)
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read settings JSON ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object of settings")
    return path, values


def settings_chosen_on(params: str | Path) -> str | None:
    """The images a settings file's or recipe's settings were chosen or compared on: its ``_chosen_on`` (the data
    fingerprint of :func:`smallct.datasets.folder.data_fingerprint`); None when the file does not record it."""
    chosen_on = _read_settings_file(params)[1].get("_chosen_on")
    return str(chosen_on) if chosen_on else None


def read_settings(params: str | Path, cls: type) -> tuple[dict[str, Any], str]:
    """The settings of a JSON settings file or recipe, typed and checked against ``cls``, and where they came from.

    Keys are setting names (``lr``, ``weight_decay``, ``img_size``, ...); keys starting with ``_`` are
    metadata (``_note`` says where the settings came from; it is recorded in results.json; ``_chosen_on``, the
    images they were chosen on: :func:`settings_chosen_on`). A relative weights.yaml under ``weights`` is found
    beside the settings file, not in the working folder (:func:`weights_file_of`).
    """
    path, values = _read_settings_file(params)
    allowed = file_settings(cls)
    found = {k: v for k, v in values.items() if not k.startswith("_")}
    unknown = [k for k in found if k not in allowed]
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(unknown)} (a settings file holds: "
                         f"{', '.join(allowed)})")
    typed = {k: coerce(allowed[k], v, f"{path}: {k}") for k, v in found.items()}
    for k, v in typed.items():
        check_value(allowed[k], v, f"{path}: {k}")
    if isinstance(typed.get("weights"), str):
        typed["weights"] = weights_file_of(typed["weights"], path.parent)
    return typed, f"{path}: {values.get('_note', 'settings read from this file')}"


def weights_file_of(weights: str, folder: Path | None = None) -> str:
    """``weights`` with a relative weights.yaml (``weights: lab.yaml``) made a path from ``folder`` (that of the
    settings file naming it), or absolute when ``folder`` is None (a record written elsewhere, such as
    best_params.json); any other value (a name, a URL, a state dict's PATH) as it is."""
    if not weights.endswith((".yaml", ".yml")) or weights.startswith(("http://", "https://")):
        return weights
    file = Path(weights).expanduser()
    if file.is_absolute():
        return str(file)
    return str(folder / file) if folder is not None else str(file.resolve())
