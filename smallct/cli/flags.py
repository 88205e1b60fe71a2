"""Command-line flags made from the config dataclasses, and configs made from the flags given.

A setting's flag, type, choices, default and help come from its field (:mod:`smallct.config.schema`):
``--img-size`` from ``DataConfig.img_size``, ``--optimizer {sgd,adam,adamw}`` from its ``Literal``,
``--tta/--no-tta`` from a bool. Flags default to "not given" (``argparse.SUPPRESS``), so
:func:`given` knows exactly which settings the command line fixed; :func:`build_config` lays the
dataclass defaults, then a settings file, then the flags given, over each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable

from smallct.config.run import CV_GROUPS
from smallct.config.schema import Setting, bounds, build, read_settings, settings, settings_chosen_on


def comma_list(kind=str):
    """An argparse ``type`` for comma-separated values: ``--shots 1,5,10`` -> ``[1, 5, 10]``."""
    def parse(text: str) -> list:
        try:
            return [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
    return parse


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _help(setting: Setting, text: str | None, default) -> str:
    text = (text if text is not None else setting.help).rstrip()
    if bounds(setting):  # what a value may be, as the config checks it
        text += f"; {bounds(setting)}"
    if default is not None and "default" not in text:
        text += f" (default {_shown(default)})"
    return text.replace("%", "%%")  # argparse formats help strings with %


def add_settings(group, cls: type, names: Iterable[str] | None = None, *, help: dict | None = None,
                 required: Iterable[str] = ()) -> None:
    """Add the flags of ``cls``'s settings (those named, in that order, or all with a flag) to ``group``.

    ``help`` replaces a setting's help text for this command; ``required`` flags must be given.
    """
    known = settings(cls)
    chosen = [known[n] for n in names] if names is not None else [s for s in known.values()
                                                                    if s.meta.get("cli", True)]
    help, required = help or {}, set(required)
    for s in chosen:
        kwargs = dict(dest=s.name, default=argparse.SUPPRESS, help=_help(s, help.get(s.name), s.default))
        if s.name in required:
            kwargs["required"] = True
        if "metavar" in s.meta:
            kwargs["metavar"] = s.meta["metavar"]
        if s.kind is bool and not s.many:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif s.many:
            kwargs["type"] = comma_list(str if s.choices is None else s.kind)
        elif s.choices is not None:
            kwargs.update(choices=list(s.choices), type=s.kind)
        else:
            kwargs["type"] = s.kind
        group.add_argument(*s.flags, **kwargs)


def given(args: argparse.Namespace, cls: type, names: Iterable[str] | None = None) -> dict:
    """The settings of ``cls`` (or those of ``names``) written on the command line: ``{name: value}``.

    Settings without a flag (``cli=False``, e.g. tune's search space) are never taken from the namespace.
    """
    known = {k for k, s in settings(cls).items() if s.meta.get("cli", True)}
    known &= set(names) if names is not None else known
    return {k: v for k, v in vars(args).items() if k in known}


def build_config(cls: type, args: argparse.Namespace, params: str | Path | None = None, where: str = "command line",
                 skip: Iterable[str] = ()):
    """A ``cls`` config: its defaults, then the settings file ``params`` (when given), then the flags given (but
    those named in ``skip``).

    The one owner of what a config records of its settings file (cv's and tune's ``--params``, each of nested's
    ``--candidates``): ``params_source`` (where the settings came from, for results.json) and ``params_chosen_on``
    (the file's ``_chosen_on``: the images they were chosen or compared on; None when it does not say).
    Returns ``(config, source)``; ``source`` says where settings came from when a file was read (else None).
    """
    values, source = {}, None
    if params is not None:
        values, source = read_settings(params, cls)
        values.update(params_source=source, params_chosen_on=settings_chosen_on(params))
    flags = {k: v for k, v in given(args, cls).items() if k not in set(skip)}
    return build(cls, {**values, **flags}, where=where), source


def add_cv_settings(parser: argparse.ArgumentParser, cls: type, skip: Iterable[str] = (),
                    help: dict | None = None) -> None:
    """The flags of every cross-validation setting of ``cls`` (CVConfig, or TuneConfig over one), in groups."""
    skip = set(skip)
    for title, names in CV_GROUPS.items():
        add_settings(parser.add_argument_group(title), cls, [n for n in names if n not in skip], help=help)


def add_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", help="JSON of settings (e.g. best_params.json of smallct.tune) or a recipe name "
                                         "(lite0_finetune): setting names as the flags, with _ for -; flags given "
                                         "on the command line still win")
