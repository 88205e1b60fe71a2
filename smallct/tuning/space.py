"""The search space of a study: which cv settings are searched, over what, and one trial's draw.

A space maps cv setting names (``lr``, ``weight_decay``, ``schedule``; the names of
:mod:`smallct.config.schema`) to a scalar (fixed), a list (a choice) or a ``{low, high, log, step}``
range. Values are typed as the settings' own fields (YAML reads ``1e-4`` as text). :func:`suggest` draws
one trial's settings with Optuna's ``suggest_*`` calls; a setting listed in :data:`CONDITIONS` is drawn
only when its parent has one of the given values (momentum only for SGD).
"""

from __future__ import annotations

from pathlib import Path

import optuna
import yaml

from smallct.config.run import CV_GROUPS, CVConfig
from smallct.config.schema import Setting, check_value, coerce, flat, settings, value_of, weights_file_of

# A setting searched only when another one has one of these values.
CONDITIONS = {
    "momentum": ("optimizer", ("sgd",)),
    "step_size": ("schedule", ("step",)),
    "gamma": ("schedule", ("step",)),
    "warmup_epochs": ("schedule", ("cosine", "onecycle")),
    "flat_share": ("schedule", ("flat_cos",)),
}

# Optional dimensions: the training ingredients of the public RSNA projects, searched only when asked for
# (``--search mixup``, or an entry of a space file); off (0) is one of each choice, or the low end of each range.
INGREDIENTS = {
    "vflip": [0.0, 0.5],
    "brightness": {"low": 0.0, "high": 0.3},
    "contrast": {"low": 0.0, "high": 0.3},
    "gauss_noise": {"low": 0.0, "high": 10.0},
    "salt_pepper": {"low": 0.0, "high": 0.02},
    "erase": {"low": 0.0, "high": 0.5},
    "mixup": [0.0, 0.2, 0.4],
    "cutmix": [0.0, 1.0],
    "ema": [0.0, 0.99, 0.999],
    "flat_share": {"low": 0.5, "high": 0.9},
}

# cv settings that describe the data, the machine or the run folder: never searched, never in best_params.json.
NOT_SETTINGS = ("data", "labels", "id_col", "label_col", "class_names", "positive_class", "phantom_n", "out",
                "device", "threads", "workers", "cache", "test_curves", "params_source", "tensorboard", "mlflow",
                "offline", "fold_parallel")
# settings that define the objective itself: fixed for a whole study.
NOT_SEARCHABLE = NOT_SETTINGS + ("folds", "repeats", "seed", "task")


def default_space(epochs: int) -> dict:
    """The search space: a scalar fixes a setting, a list is a choice, a dict a range (``log``: log-uniform).

    Keys are ``smallct.cv`` setting names (flag names with ``_`` for ``-``); settings not listed keep their cv value.
    """
    return {
        "optimizer": "sgd",  # fixed; [sgd, adamw] makes it a choice (momentum is searched for sgd only)
        "lr": {"low": 1e-4, "high": 0.1, "log": True},
        "momentum": {"low": 0.8, "high": 0.99},
        "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
        "schedule": ["step", "cosine"],
        "step_size": {"low": 1, "high": max(1, epochs - 1)},  # StepLR: epochs between decays
        "gamma": {"low": 0.05, "high": 0.5},  # StepLR: decay factor
    }


def searchable() -> dict[str, Setting]:
    """The cv settings a study may search or fix."""
    return {k: s for k, s in settings(CVConfig).items() if k not in NOT_SEARCHABLE}


def _range(key: str, setting: Setting, spec: dict, where: str) -> dict:
    unknown = set(spec) - {"low", "high", "log", "step"}
    if unknown or not {"low", "high"} <= set(spec):
        raise ValueError(f"{where}: {key}: a range is {{low, high, log (optional), step (optional)}}, "
                         f"got {sorted(spec)}")
    if not setting.numeric:
        raise ValueError(f"{where}: {key}: a range needs a numeric setting; give a list of choices")
    low, high = (coerce(setting, spec[b], f"{where}: {key}") for b in ("low", "high"))
    log = bool(spec.get("log", False))
    if low > high or (log and low <= 0):
        raise ValueError(f"{where}: {key}: expected 0 < low <= high for a log range, low <= high otherwise; "
                         f"got low {low}, high {high}")
    for bound in (low, high):  # inside what the field allows: every draw must be a valid config
        check_value(setting, bound, f"{where}: {key}")
    entry = {"low": low, "high": high, "log": log}
    if spec.get("step") is not None:
        if log:
            raise ValueError(f"{where}: {key}: a range cannot have both log and step")
        entry["step"] = coerce(setting, spec["step"], f"{where}: {key}")
    return entry


def _typed(setting: Setting, value, where: str):
    """``value`` typed as the setting's field, and inside what the field allows (a trial must be a valid config)."""
    value = coerce(setting, value, where)
    check_value(setting, value, where)
    return value


def parse_space(raw: dict, where: str = "search space") -> dict:
    """Validate a search space and type its values like the cv settings; ``None`` entries are kept (they unset)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping of setting names to a value, a list or a range")
    allowed = searchable()
    space = {}
    for key, spec in raw.items():
        if key not in allowed:
            raise ValueError(f"{where}: {key!r} cannot be searched (searchable cv settings: {', '.join(allowed)})")
        setting = allowed[key]
        if spec is None:
            space[key] = None
        elif isinstance(spec, (list, tuple)):
            if not spec:
                raise ValueError(f"{where}: {key}: an empty list of choices")
            space[key] = [_typed(setting, v, f"{where}: {key}") for v in spec]
        elif isinstance(spec, dict):
            space[key] = _range(key, setting, spec, where)
        else:
            space[key] = _typed(setting, spec, f"{where}: {key}")
    return space


def stock_entry(key: str, defaults: dict):
    """What a bare ``--search KEY`` searches: the entry of :data:`INGREDIENTS` or of the default space, else every
    choice of a choice setting (``--search optimizer``: sgd, adam, adamw, radam)."""
    if key in INGREDIENTS:
        return INGREDIENTS[key]
    if isinstance(defaults.get(key), (list, dict)):
        return defaults[key]
    setting = searchable().get(key)
    if setting is not None and setting.choices is not None:
        return list(setting.choices)
    raise ValueError(f"--search {key}: no stock range (stock: {', '.join([*INGREDIENTS, *defaults])}, or a choice "
                     f"setting); give one: {key}=LOW:HIGH or {key}=A,B")


def parse_search_option(text: str, defaults: dict) -> tuple[str, object]:
    """``--search KEY=SPEC``: ``LOW:HIGH[:log|:linear]`` a range, ``A,B,C`` a choice, ``V`` a fixed value;
    a bare ``--search KEY`` its stock entry (:func:`stock_entry`: how the optional dimensions are turned on).

    A range keeps the log scale of the default space's entry unless ``:log``/``:linear`` says otherwise.
    """
    key, sep, spec = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep and key:
        return key, stock_entry(key, defaults)
    if not sep or not key or not spec:
        raise ValueError(f"--search {text}: expected KEY=LOW:HIGH, KEY=A,B or KEY=VALUE (e.g. lr=1e-4:1e-2)")
    if ":" in spec:
        parts = spec.split(":")
        scale = parts.pop() if parts[-1] in ("log", "linear") else None
        if len(parts) != 2:
            raise ValueError(f"--search {text}: a range is LOW:HIGH, optionally followed by :log or :linear")
        old = defaults.get(key)
        log = (scale == "log") if scale else bool(isinstance(old, dict) and old.get("log"))
        return key, {"low": parts[0], "high": parts[1], "log": log}
    if "," in spec:
        return key, [v.strip() for v in spec.split(",")]
    return key, spec


def load_space_file(path: Path) -> dict:
    """A YAML or JSON search-space file (same form as :func:`default_space`)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the search-space file ({err})") from None
    return parse_space(raw or {}, where=str(path))


def describe_space(space: dict) -> str:
    """One line: the searched ranges and choices, then the fixed values."""
    searched, fixed = [], []
    for key, spec in space.items():
        if isinstance(spec, dict):
            searched.append(f"{key} {spec['low']:g}..{spec['high']:g}" + (" (log)" if spec["log"] else ""))
        elif isinstance(spec, list):
            searched.append(f"{key} in {{{', '.join(map(str, spec))}}}")
        else:
            fixed.append(f"{key}={spec}")
    conditional = [f"{k} only when {p} is {'/'.join(v)}" for k, (p, v) in CONDITIONS.items() if k in space]
    return ("searching " + "; ".join(searched) + (f"; fixed {', '.join(fixed)}" if fixed else "")
            + (f" ({'; '.join(conditional)})" if conditional else ""))


def suggest(trial: optuna.Trial, space: dict, base: CVConfig) -> dict:
    """Draw one trial's settings: ``{cv setting: value}`` for every entry whose condition holds."""
    chosen: dict = {}
    for key in sorted(space, key=lambda k: k in CONDITIONS):  # parents (optimizer, schedule) first
        spec = space[key]
        parent = CONDITIONS.get(key)
        if parent and chosen.get(parent[0], value_of(base, parent[0])) not in parent[1]:
            continue
        if isinstance(spec, list):
            chosen[key] = trial.suggest_categorical(key, spec)
        elif isinstance(spec, dict) and isinstance(spec["low"], int):
            chosen[key] = trial.suggest_int(key, spec["low"], spec["high"], log=spec["log"],
                                            step=spec.get("step", 1))
        elif isinstance(spec, dict):
            chosen[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec["log"],
                                              step=spec.get("step"))
        else:
            chosen[key] = spec
    return chosen


def cv_settings(cfg: CVConfig) -> dict:
    """Every cv setting of ``cfg`` that ``smallct.cv --params`` accepts (no data paths, machine or folder), in the
    order of the cv flags."""
    values = flat(cfg)
    values["weights"] = weights_file_of(values["weights"])  # best_params.json is read from its own folder
    return {k: values[k] for names in CV_GROUPS.values() for k in names if k not in NOT_SETTINGS}
