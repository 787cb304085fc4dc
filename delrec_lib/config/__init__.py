"""Typed configuration: one dataclass per stage, grouped in a ``RunConfig``, with named presets.

A preset is a complete ``RunConfig``. A run may override any field from a TOML or JSON file
whose tables mirror the dataclasses (``[data]``, ``[teachers]``, ...), or from keyword
overrides in a notebook's ``parameters`` cell. Unknown sections or fields are errors, never
silently ignored.

Paths in a config are relative to the project root (the folder holding ``pyproject.toml``),
so a notebook opened from ``notebooks/`` and the CLI run from the root see the same files.

The package: rules.py (what a field accepts), names.py (method names and their grammar), sections.py (the
dataclasses, each field's rule beside it), presets.py, loading.py (files, overrides, paths), and context.py
(where every entry point starts: a run's config, folder and data folder, and the run folder's lock; imported
from ``delrec_lib.config.context``, not from here).
"""

from ..errors import ConfigError
from .loading import config_to_dict, load_config, override, project_root, read_config_file, resolve_path
from .names import (
    DISTILL_TASKS,
    LLMSREC,
    LLMSREC_SUFFIXES,
    P2REC_PREFIX,
    P2REC_VARIANT,
    POPULARITY,
    PRESET_NAMES,
    PROMPT_NAME,
    RULE_TEACHERS,
    SEED_SUFFIX,
    STAGE1_TEACHERS,
    TEACHER_NAMES,
    LLMSRecVariant,
    P2RecVariant,
    parse_llmsrec_variant,
    parse_p2rec_variant,
    parse_prompt_name,
    split_seed,
)
from .presets import (
    ABLATION_PROMPTS,
    ABLATION_VARIANTS,
    LLMSREC_VARIANTS,
    P2REC_ABLATION_VARIANTS,
    PRESETS,
    preset_config,
)
from .rules import (
    COUNT,
    COUNT_OR_NONE,
    DROPOUT,
    FIELD_RULES,
    MODULE_NAMES,
    RATE,
    SEED,
    Flag,
    Int,
    Items,
    Maybe,
    Num,
    OneOf,
    Rule,
    Satisfies,
    Section,
    Text,
    check_fields,
)
from .sections import (
    CaserConfig,
    DataConfig,
    DistillConfig,
    EvalConfig,
    FinetuneConfig,
    GRU4RecConfig,
    LLMConfig,
    LLMSRecConfig,
    P2RecConfig,
    RunConfig,
    SASRecConfig,
    TeachersConfig,
)

__all__ = [  # what the kit, its tests and notebooks import from here, and the rules to declare fields with
    "ABLATION_PROMPTS", "ABLATION_VARIANTS", "COUNT", "COUNT_OR_NONE", "CaserConfig", "ConfigError",
    "DISTILL_TASKS", "DROPOUT", "DataConfig", "DistillConfig", "EvalConfig", "FIELD_RULES", "FinetuneConfig",
    "Flag", "GRU4RecConfig", "Int", "Items", "LLMConfig", "LLMSREC", "LLMSREC_SUFFIXES", "LLMSREC_VARIANTS",
    "LLMSRecConfig", "LLMSRecVariant", "MODULE_NAMES", "Maybe", "Num", "OneOf", "P2REC_ABLATION_VARIANTS",
    "P2REC_PREFIX", "P2REC_VARIANT", "P2RecConfig", "P2RecVariant", "POPULARITY", "PRESETS", "PRESET_NAMES",
    "PROMPT_NAME", "RATE", "RULE_TEACHERS", "Rule", "RunConfig", "SASRecConfig", "SEED", "SEED_SUFFIX", "STAGE1_TEACHERS",
    "Satisfies", "Section", "TEACHER_NAMES", "TeachersConfig", "Text", "check_fields", "config_to_dict",
    "load_config", "override", "parse_llmsrec_variant", "parse_p2rec_variant", "parse_prompt_name",
    "preset_config", "project_root", "read_config_file", "resolve_path", "split_seed",
]
