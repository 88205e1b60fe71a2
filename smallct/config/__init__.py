"""Typed settings of every command, and the one schema that flags, settings files and search spaces share.

``run``: :class:`DataConfig`, :class:`TrainConfig`, :class:`CVConfig`; ``studies``: :class:`NestedConfig`,
:class:`TuneConfig`, :class:`FewShotConfig`, :class:`CurveConfig`; ``schema``: settings by flat name,
their types and choices, settings files and recipes. Nothing here imports torch.
"""

from smallct.config.run import (GROUP_SIMILAR, CVConfig, DataConfig, TrainConfig, from_dict, option,
                                to_dict)
from smallct.config.schema import (RECIPES, Setting, build, coerce, file_settings, flat, read_settings,
                                   resolve_params_path, setting_of, settings, value_of)
from smallct.config.studies import (FINETUNE_DEFAULTS, CurveConfig, FewShotConfig, NestedConfig,
                                    TuneConfig)

__all__ = ["GROUP_SIMILAR", "CVConfig", "DataConfig", "TrainConfig", "from_dict", "option", "to_dict",
           "RECIPES", "Setting", "build", "coerce", "file_settings", "flat", "read_settings",
           "resolve_params_path", "setting_of", "settings", "value_of",
           "FINETUNE_DEFAULTS", "CurveConfig", "FewShotConfig", "NestedConfig", "TuneConfig"]
