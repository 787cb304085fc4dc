"""Typed configuration: one dataclass per stage, grouped in a ``RunConfig``, with named presets.

A preset is a complete ``RunConfig``. A run may override any field from a TOML or JSON file
whose tables mirror the dataclasses (``[data]``, ``[teachers]``, ...), or from keyword
overrides in a notebook's ``parameters`` cell. Unknown sections or fields are errors, never
silently ignored.

Paths in a config are relative to the project root (the folder holding ``pyproject.toml``),
so a notebook opened from ``notebooks/`` and the CLI run from the root see the same files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError

# --------------------------------------------------------------------------------------------
# Field rules. Every field of every config dataclass has one in FIELD_RULES (a test walks them
# all), checked when the dataclass is built: a bad value is refused at load, naming the dotted
# field, instead of failing minutes later inside torch or numpy, or silently (a slice by -1).
# --------------------------------------------------------------------------------------------

_SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit


class Rule:
    """What one field accepts. ``check`` raises a ConfigError naming ``where``."""

    expected = "?"

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def check(self, value: Any, where: str) -> None:
        if not self.accepts(value):
            raise ConfigError(f"{where}: expected {self.expected}, got {value!r}")


class Int(Rule):
    def __init__(self, lo: int, hi: int | None = None):
        self.lo, self.hi = lo, hi
        self.expected = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= self.lo and (self.hi is None or value <= self.hi)


class Num(Rule):
    """A finite number in a range; ``open_lo``/``open_hi`` exclude the bound."""

    def __init__(self, lo: float, hi: float | None = None, *, open_lo: bool = False, open_hi: bool = False):
        self.lo, self.hi, self.open_lo, self.open_hi = lo, hi, open_lo, open_hi
        if hi is None:
            self.expected = f"a number {'>' if open_lo else '>='} {lo}"
        else:
            self.expected = f"a number in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        above = value > self.lo if self.open_lo else value >= self.lo
        below = self.hi is None or (value < self.hi if self.open_hi else value <= self.hi)
        return above and below


class OneOf(Rule):
    """Membership; ``values`` may be a function, for sets defined later or in a heavier module."""

    def __init__(self, values: tuple[Any, ...] | typing.Callable[[], typing.Iterable[Any]]):
        self._values = values

    @property
    def values(self) -> tuple[Any, ...]:
        return tuple(self._values() if callable(self._values) else self._values)

    @property
    def expected(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, typing.Hashable) and value in self.values


class Text(Rule):
    """A non-empty string, optionally matching ``pattern`` (described by ``expected``)."""

    def __init__(self, pattern: str | None = None, expected: str = "a non-empty string"):
        self.pattern, self.expected = pattern, expected

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value.strip() != "" and (self.pattern is None or re.fullmatch(self.pattern, value) is not None)


class Flag(Rule):
    expected = "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


class Satisfies(Rule):
    """A value ``test`` accepts (for names with a grammar, such as variants)."""

    def __init__(self, test: typing.Callable[[Any], bool], expected: str):
        self.test, self.expected = test, expected

    def accepts(self, value: Any) -> bool:
        return self.test(value)


class Maybe(Rule):
    """None, or a value ``rule`` accepts."""

    def __init__(self, rule: Rule):
        self.rule = rule

    @property
    def expected(self) -> str:
        return f"{self.rule.expected} (or none)"

    def accepts(self, value: Any) -> bool:
        return value is None or self.rule.accepts(value)

    def check(self, value: Any, where: str) -> None:
        if value is not None:
            self.rule.check(value, where)


class Items(Rule):
    """A tuple (a list in a file) of values ``item`` accepts, each once unless ``unique`` is False."""

    def __init__(self, item: Rule, *, min_len: int = 0, length: int | None = None, unique: bool = True):
        self.item, self.min_len, self.length, self.unique = item, min_len, length, unique
        size = f"{length} " if length is not None else ("at least one " if min_len == 1 else "")
        self.expected = f"a list of {size}items, each {item.expected}" + (", each once" if unique else "")

    def accepts(self, value: Any) -> bool:
        try:
            self.check(value, "")
        except ConfigError:
            return False
        return True

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, tuple) or len(value) < self.min_len or (self.length is not None and len(value) != self.length):
            raise ConfigError(f"{where}: expected {self.expected}, got {value!r}")
        for i, v in enumerate(value):
            self.item.check(v, f"{where}[{i}]")
        if self.unique and len(set(value)) != len(value):
            raise ConfigError(f"{where}: expected {self.expected}, got {list(value)} (an item twice)")


class Section(Rule):
    """A nested config dataclass: its own rules checked it when it was built."""

    def __init__(self, cls: type):
        self.cls, self.expected = cls, f"a {cls.__name__}"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.cls)


SEED = Int(0, _SEED_MAX)
COUNT = Int(1)  # a size, a number of steps or users: zero or a negative would silently do nothing
COUNT_OR_NONE = Maybe(COUNT)
RATE = Num(0, open_lo=True)  # learning rates
DROPOUT = Num(0, 1, open_hi=True)
MODULE_NAMES = Items(Text(r"[A-Za-z0-9_.]+", "a module name"), min_len=1)
FIELD_RULES: dict[type, dict[str, Rule]] = {}


def _metric_names() -> tuple[str, ...]:
    from ..metrics import METRICS  # pandas: not at import of the config

    return METRICS


def check_fields(config: Any) -> None:
    """Check every field of ``config`` against its rule; ConfigError names the dotted field."""
    rules = FIELD_RULES[type(config)]
    section = _SECTIONS.get(type(config), type(config).__name__)
    for f in fields(config):
        if f.name in rules:  # a field without a rule fails tests/test_config.py, not a user's run
            rules[f.name].check(getattr(config, f.name), f"{section}.{f.name}" if section else f.name)


def _section_paths(cls: type, prefix: str) -> dict[type, str]:
    """Where each config dataclass sits under RunConfig ("teachers.sasrec" for SASRecConfig)."""
    out = {cls: prefix}
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out |= _section_paths(hint, f"{prefix}.{name}" if prefix else name)
    return out


def _declared(cls: type, name: str) -> OneOf:
    """Membership in the values a field's ``Literal`` annotation declares."""
    return OneOf(typing.get_args(typing.get_type_hints(cls)[name]))


# --------------------------------------------------------------------------------------------
# Stage configurations
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Data preparation (notebook 01): which dataset, and the fixed evaluation candidates."""

    dataset: str = "ml-100k"
    seed: int = 2024
    # Candidate sets are the target plus this many items the user never interacted with (the data
    # step checks it against the catalogue, which only the data knows).
    num_negatives: int = 19

    def __post_init__(self) -> None:
        check_fields(self)


FIELD_RULES[DataConfig] = {
    # A folder name under data/raw/ and data/processed/: no path separators.
    "dataset": Text(r"[A-Za-z0-9][A-Za-z0-9._-]*", "a dataset name (letters, digits, '.', '_', '-')"),
    "seed": SEED,
    "num_negatives": COUNT,
}


@dataclass(frozen=True)
class SASRecConfig:
    """SASRec (Kang & McAuley, 2018): causal self-attention over the last ``max_len`` items.

    Defaults follow the paper's MovieLens setting (2 blocks, 1 head, dropout 0.2) at RecBole's
    width (64, feed-forward 4x). lr and dropout were chosen on validation only
    (``python -m delrec_lib.teachers.tuning --model sasrec --grid dropout=0.2,0.5 lr=1e-3,2e-3``, cpu
    preset, best-epoch validation NDCG@10, full ranking): 0.2/2e-3 0.1161, 0.2/1e-3 0.1136,
    0.5/2e-3 0.1079, 0.5/1e-3 0.1071.
    """

    hidden: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2
    batch_size: int = 128  # sequences (windows of max_len items) per step
    lr: float = 2e-3

    def __post_init__(self) -> None:
        check_fields(self)
        if self.hidden % self.heads:
            raise ConfigError(f"teachers.sasrec.hidden ({self.hidden}) must be a multiple of teachers.sasrec.heads ({self.heads})")


FIELD_RULES[SASRecConfig] = {
    "hidden": COUNT, "layers": COUNT, "heads": COUNT, "dropout": DROPOUT, "batch_size": COUNT, "lr": RATE,
}


@dataclass(frozen=True)
class GRU4RecConfig:
    """GRU4Rec (Hidasi et al., 2016) as RecBole runs it on user sequences: item embedding, a GRU,
    a projection back to the embedding width, scores by dot product with the same embeddings."""

    embedding: int = 64
    hidden: int = 128
    layers: int = 1
    dropout: float = 0.3  # on the input embeddings
    batch_size: int = 128
    # Width and lr chosen on validation only (``python -m delrec_lib.teachers.tuning --model gru4rec
    # --grid hidden=64,128 lr=1e-3,3e-3``, best-epoch validation NDCG@10): 128/3e-3 0.1126 (27 epochs),
    # 64/1e-3 0.1059 (46), 128/1e-3 0.1059 (39), 64/3e-3 0.0981 (17). RecBole's 1e-3 plateaus for
    # several epochs here before it climbs.
    lr: float = 3e-3

    def __post_init__(self) -> None:
        check_fields(self)


FIELD_RULES[GRU4RecConfig] = {
    "embedding": COUNT, "hidden": COUNT, "layers": COUNT, "dropout": DROPOUT, "batch_size": COUNT, "lr": RATE,
}


@dataclass(frozen=True)
class CaserConfig:
    """Caser (Tang & Wang, 2018): horizontal and vertical convolutions over a window of the
    ``window`` latest items plus a user embedding, predicting the next ``targets`` items.
    Defaults are the paper's (d=50, L=5, T=3, n_v=4, n_h=16, dropout 0.5); with full softmax the T
    targets of a window share one softmax. Batch 1024 halves the per-epoch overhead of 512. lr
    chosen on validation only (``python -m delrec_lib.teachers.tuning --model caser --grid
    lr=1e-3,2e-3``, best-epoch validation NDCG@10): 1e-3 0.1252 (best at epoch 22), 2e-3 0.1198
    (epoch 10)."""

    embedding: int = 50
    window: int = 5  # L: items the convolutions see
    targets: int = 3  # T: following train items each window predicts
    vertical_filters: int = 4
    horizontal_filters: int = 16
    dropout: float = 0.5
    batch_size: int = 1024  # windows per step (one per train position)
    lr: float = 1e-3

    def __post_init__(self) -> None:
        check_fields(self)


FIELD_RULES[CaserConfig] = {
    "embedding": COUNT, "window": COUNT, "targets": COUNT, "vertical_filters": COUNT, "horizontal_filters": COUNT,
    "dropout": DROPOUT, "batch_size": COUNT, "lr": RATE,
}


TEACHER_NAMES = ("sasrec", "gru4rec", "caser")
# Synthetic teachers whose top-1 is a rule read from the prompt (``teachers/rules.py``): stage 1's known answer.
RULE_TEACHERS = ("rule-sharedword",)


@dataclass(frozen=True)
class TeachersConfig:
    """Teacher training (notebook 02): which teachers, the shared protocol and each model's settings.

    Every teacher trains on train items only, with early stopping on validation NDCG@10 (full
    ranking, history excluded); ``max_epochs`` is a ceiling, ``patience`` decides.
    """

    models: tuple[str, ...] = TEACHER_NAMES
    # Rule teachers exported beside the trained ones, for stage 1 only (never evaluated as methods).
    rules: tuple[str, ...] = ()
    max_len: int = 50  # history items a teacher sees
    # Train sequences longer than max_len are cut into windows of max_len inputs whose label
    # positions tile the sequence from its end: every train position is a label exactly once.
    # A stride below max_len overlaps the windows so that labels keep at least
    # max_len - stride items of context (the overlapping positions are inputs only).
    stride: int = 50
    loss: Literal["ce", "bce"] = "ce"  # full softmax cross-entropy, or sampled binary cross-entropy
    negatives: int = 1  # bce only: uniformly sampled negatives per positive
    max_epochs: int = 200
    patience: int = 5  # epochs without a better validation NDCG@10
    weight_decay: float = 0.0
    seed: int = 2024
    top_k: int = 20  # predictions exported per user
    # CPU threads while a teacher trains and scores (None: torch's default). These models are
    # small: one thread is about as fast as two, and immune to the collapse OpenMP's spinning
    # threads suffer when the cores are shared with another process. Does not change the model.
    threads: int | None = 1
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    gru4rec: GRU4RecConfig = field(default_factory=GRU4RecConfig)
    caser: CaserConfig = field(default_factory=CaserConfig)

    def __post_init__(self):
        check_fields(self)
        if self.stride > self.max_len:
            raise ConfigError(f"teachers.stride must be between 1 and max_len={self.max_len}, got {self.stride}")
        if self.caser.window > self.max_len:
            raise ConfigError(f"teachers.caser.window ({self.caser.window}) cannot exceed teachers.max_len ({self.max_len})")


FIELD_RULES[TeachersConfig] = {
    "models": Items(OneOf(TEACHER_NAMES)),  # none: popularity only
    "rules": Items(OneOf(RULE_TEACHERS)),
    "max_len": COUNT,
    "stride": COUNT,
    "loss": _declared(TeachersConfig, "loss"),
    "negatives": COUNT,
    "max_epochs": COUNT,
    "patience": COUNT,
    "weight_decay": Num(0),
    "seed": SEED,
    "top_k": COUNT,
    "threads": Maybe(Int(1)),
    "sasrec": Section(SASRecConfig),
    "gru4rec": Section(GRU4RecConfig),
    "caser": Section(CaserConfig),
}


@dataclass(frozen=True)
class LLMConfig:
    """The LLM backbone, its prompts and candidate scoring (shared by notebooks 03, 04 and 05).

    The defaults are the cpu preset's: every prompt token costs CPU time, so titles go without
    their year (about 4.6 instead of 10.6 tokens each with SmolLM2's tokenizer) and candidates are
    scored without being listed in the prompt. The paper preset shows both, as DELRec does.
    """

    # An embedded name ("smollm2-135m-instruct"), a Hugging Face id ("org/name") or a local directory.
    backbone: str = "smollm2-135m-instruct"
    # Where downloaded and converted backbones are cached (relative to the project root).
    model_cache_dir: str = "data/models"
    # "auto": bfloat16 autocast on CUDA and on CPUs with native bf16, float32 otherwise.
    dtype: typing.Literal["auto", "float32", "bfloat16"] = "auto"
    # Most recent titles of a user's history shown in a prompt (older ones are dropped first).
    history_len: int = 10
    # History length of the in-context example in the Temporal Analysis template.
    example_history_len: int = 3
    # Titles longer than this many tokens are cut, in prompts and as scored candidates alike.
    title_max_tokens: int = 16
    # "no_year": "Toy Story"; "with_year": "Toy Story (1995)" (the year costs 6 tokens here).
    title_style: typing.Literal["no_year", "with_year"] = "no_year"
    # List the candidate titles in the prompt, as DELRec's templates do. Off (cpu default) saves a
    # third of a 20-candidate prompt's tokens, what 943 users in under 5 minutes here takes; the
    # scorer ranks the same candidates either way.
    list_candidates: bool = False
    # Candidate score: mean (length-normalised) or sum of its tokens' log-probabilities.
    normalize: typing.Literal["mean", "sum"] = "mean"
    # Prompts scored together in one forward pass (each with all of its candidates).
    score_batch_size: int = 8
    # Upper bound on a prompt's tokens, soft-prompt tokens included.
    max_prompt_tokens: int = 512

    def __post_init__(self) -> None:
        check_fields(self)


FIELD_RULES[LLMConfig] = {
    "backbone": Text(),
    "model_cache_dir": Text(),
    "dtype": _declared(LLMConfig, "dtype"),
    "history_len": Int(0),
    "example_history_len": Int(0),
    "title_max_tokens": COUNT,
    "title_style": _declared(LLMConfig, "title_style"),
    "list_candidates": Flag(),
    "normalize": _declared(LLMConfig, "normalize"),
    "score_batch_size": COUNT,
    "max_prompt_tokens": COUNT,
}


DISTILL_TASKS = ("ta", "rps")
# Stage 1 distils a teacher's exported top-k: notebook 02 always exports the popularity baseline's too
# (the training benchmark distils it, a teacher that trains in seconds).
POPULARITY = "popularity"
STAGE1_TEACHERS = (*TEACHER_NAMES, *RULE_TEACHERS, POPULARITY)


def parse_prompt_name(name: str) -> tuple[str, tuple[str, ...]]:
    """"sasrec" -> ("sasrec", ("ta", "rps")); "sasrec-ta" -> ("sasrec", ("ta",)); "rule-sharedword-rps" ->
    ("rule-sharedword", ("rps",))."""
    teacher, dash, task = name, "", ""
    if name not in STAGE1_TEACHERS:
        teacher, dash, task = name.rpartition("-")
    if teacher not in STAGE1_TEACHERS or (dash and task not in DISTILL_TASKS):
        raise ConfigError(
            f"distill.prompts: '{name}' is not '<teacher>' or '<teacher>-ta' / '<teacher>-rps' with a teacher "
            f"among {', '.join(STAGE1_TEACHERS)}"
        )
    return teacher, (task,) if task else DISTILL_TASKS


def _parses(parse: typing.Callable[[str], Any]) -> typing.Callable[[Any], bool]:
    def test(name: Any) -> bool:
        if not isinstance(name, str):
            return False
        try:
            parse(name)
        except ConfigError:
            return False
        return True

    return test


PROMPT_NAME = Satisfies(
    _parses(parse_prompt_name), f"'<teacher>', '<teacher>-ta' or '<teacher>-rps' with a teacher among {', '.join(STAGE1_TEACHERS)}"
)


@dataclass(frozen=True)
class DistillConfig:
    """DELRec stage 1 (notebook 03): distil each teacher's pattern into a soft prompt, LLM frozen.

    Each training user contributes one Temporal Analysis and one Recommendation Pattern
    Simulating example per step (train items only). Two disjoint sets of held-out users, never
    trained on and never shown as in-context examples, measure fidelity (LLM top-1 == teacher
    top-1): the selection set picks the best step, the report set (evaluated before training and
    with the selected soft prompt only) gives the reported numbers, so they carry no selection bias.
    """

    # One soft prompt per entry: a teacher ("sasrec": TA + RPS) or a stage-1 ablation
    # ("sasrec-ta": Temporal Analysis only, "sasrec-rps": Pattern Simulating only).
    prompts: tuple[str, ...] = ("sasrec",)
    num_soft_tokens: int = 20
    init: typing.Literal["text", "vocabulary"] = "text"
    init_text: str = (
        "{teacher} recommends the next movie from the order of the movies the user watched, "
        "weighting the most recent ones most."
    )
    # "dynamic": per step, weights that give each task's gradient the same norm (gradient-norm
    # balancing); "fixed": the constant task_weights (TA, RPS).
    weighting: typing.Literal["dynamic", "fixed"] = "dynamic"
    task_weights: tuple[float, ...] = (1.0, 1.0)
    rps_top_k: int = 5  # the teacher's top-k in the RPS candidates; ranks 2..k are shown
    rps_random: int = 5  # random never-interacted items added to the RPS candidates
    ta_candidates: int = 10  # the hidden item plus random never-interacted items
    # Held-out users (at most half the users in all; smaller data shrinks both sets, with a warning).
    # The report set: 300 users give a 95% interval of at most about +-0.06 (a fidelity near 0.5).
    heldout_users: int = 300  # report set: fidelity and TA accuracy before/after, beside the heuristics
    selection_users: int = 100  # selection set: fidelity every eval_every steps selects the step
    max_train_users: int | None = None  # None: every other user
    seed: int = 2024
    # Optimisation (the shared Trainer): one step = batch_size users x grad_accum, TA + RPS each. lr chosen
    # on the selection set (python -m delrec_lib.tuning distill, 150 steps, 100 selection users): 1e-2 gave
    # fidelity 0.24 / 0.24 / 0.25 after 200 / 400 / 600 users, 3e-2 0.17 / 0.33 / 0.29; TA accuracy 0.19-0.22
    # for both. Both level off after a few hundred users, so 100 steps (400 users) are the cpu budget. The
    # choice did not hold in the cpu run of 2026-12-06 (selection fidelity 0.10 / 0.13 / 0.17 / 0.10 after
    # 100-400 users, report set 0.11 = chance): one run on 100 users was too noisy; rechoose over seeds.
    max_steps: int = 100
    batch_size: int = 2
    grad_accum: int = 2
    lr: float = 3e-2
    warmup_steps: int = 5
    eval_every: int = 25
    # Keep each example's keys/values of the text before the soft-prompt slot (computed once by the frozen
    # LLM) and run only the slot, the text after it and the candidates at every step: the same scores and
    # gradients for about a third of the tokens. Memory: layers x 2 x kv_heads x head_dim values per token
    # (46 KB in float32 for SmolLM2-135M), about 6 MB per example; causal models only.
    cache_prefix: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        if self.weighting == "fixed" and not any(self.task_weights):
            raise ConfigError(f"distill.task_weights: with weighting 'fixed', at least one weight > 0; got {list(self.task_weights)}")


FIELD_RULES[DistillConfig] = {
    "prompts": Items(PROMPT_NAME),
    "num_soft_tokens": COUNT,
    "init": _declared(DistillConfig, "init"),
    "init_text": Text(),
    "weighting": _declared(DistillConfig, "weighting"),
    "task_weights": Items(Num(0), length=len(DISTILL_TASKS), unique=False),  # (TA, RPS)
    "rps_top_k": Int(2),  # the RPS template shows ranks 2..k
    "rps_random": Int(0),
    "ta_candidates": Int(2),  # the hidden item and at least one other
    "heldout_users": COUNT,  # the report set
    "selection_users": COUNT,
    "max_train_users": COUNT_OR_NONE,
    "seed": SEED,
    "max_steps": COUNT,
    "batch_size": COUNT,
    "grad_accum": COUNT,
    "lr": RATE,
    "warmup_steps": Int(0),
    "eval_every": COUNT,
    "cache_prefix": Flag(),
}


@dataclass(frozen=True)
class FinetuneConfig:
    """DELRec stage 2 (notebook 04): LoRA fine-tuning on the recommendation template.

    Variants: "lora" fine-tunes without a soft prompt (the no-stage-1 ablation); "delrec-<p>"
    loads stage 1's soft prompt <p> ("delrec-sasrec", "delrec-sasrec-ta", ...) frozen into the
    template. Every variant gets the same examples, budget and seed.
    """

    variants: tuple[str, ...] = ("lora", "delrec-sasrec")
    method: typing.Literal["lora", "adalora"] = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # LoRA in the top lora_layers layers only (None: every layer). The layers below never change, so with
    # cache_lower_layers each example's hidden states entering the first adapted layer are computed once
    # (training and validation examples alike) and every step runs only the adapted layers, forward and
    # backward. Decoder-only Llama-style models; the same scores as the full forward. 4 of SmolLM2's 30 was
    # chosen on validation (python -m delrec_lib.tuning finetune, 800 training examples, NDCG@5 on the 150
    # validation users): 4 layers 0.359 (lr 1e-3) / 0.361 (3e-3), 8 layers 0.361 / 0.371, all within the
    # +-0.03 of 150 users, and 4 layers take 4.6 s per step of 8 new examples here against 6.4 for 8 (9.3 for
    # every layer). Over 2,400 examples (300 steps, 4 layers, lr 1e-3) the same curve reached 0.397.
    lora_layers: int | None = 4
    cache_lower_layers: bool = True
    # AdaLoRA (paper preset): ranks start at adalora_init_r and are pruned to lora_r on average.
    adalora_init_r: int = 12
    adalora_tinit: int = 10
    adalora_tfinal: int = 10
    adalora_delta_t: int = 5
    # Training examples: target = one of the user's last train items, history = the items
    # before it; positions_per_user > 1 slides back over earlier train items (more distinct examples per
    # user for free, as LLaRA trains: 3 gives 2,829 on ML-100K, more than a cpu run visits).
    positions_per_user: int = 3
    num_negatives: int = 19
    max_train_users: int | None = None
    valid_users: int = 150  # validation users (seeded subset) that select the best step
    select_metric: str = "NDCG@5"
    seed: int = 2024
    # The seed study: every variant trained again with each of these training seeds ("<variant>-seed<N>":
    # another adapter initialisation, example order and negatives; the same users and validation set).
    seeds: tuple[int, ...] = ()
    max_steps: int = 100  # 800 training examples visited (60 x 8 = 480 before the lower layers were cached)
    batch_size: int = 2
    grad_accum: int = 4
    lr: float = 1e-3
    warmup_steps: int = 10
    eval_every: int = 50

    def __post_init__(self) -> None:
        check_fields(self)
        if self.seed in self.seeds:
            raise ConfigError(f"finetune.seeds: {self.seed} is finetune.seed, the variants' own training seed; "
                              f"got {list(self.seeds)}")  # fmt: skip
        if self.method == "adalora":
            if self.adalora_init_r < self.lora_r:
                raise ConfigError(f"finetune.adalora_init_r ({self.adalora_init_r}) must be at least finetune.lora_r ({self.lora_r}), "
                                  "the average rank AdaLoRA prunes to")  # fmt: skip
            if self.adalora_tinit + self.adalora_tfinal >= self.max_steps:
                raise ConfigError(f"finetune.adalora_tinit ({self.adalora_tinit}) + adalora_tfinal ({self.adalora_tfinal}) must be "
                                  f"below finetune.max_steps ({self.max_steps}), or AdaLoRA has no steps to prune ranks in")  # fmt: skip


FIELD_RULES[FinetuneConfig] = {
    "variants": Items(Satisfies(lambda v: v == "lora" or (isinstance(v, str) and v.startswith("delrec-") and PROMPT_NAME.accepts(v[len("delrec-"):])),
                                f"'lora' or 'delrec-<soft prompt>', a soft prompt being {PROMPT_NAME.expected}")),  # fmt: skip
    "method": _declared(FinetuneConfig, "method"),
    "lora_r": COUNT,
    "lora_alpha": COUNT,
    "lora_dropout": DROPOUT,
    "target_modules": MODULE_NAMES,
    "lora_layers": COUNT_OR_NONE,
    "cache_lower_layers": Flag(),
    "adalora_init_r": COUNT,
    "adalora_tinit": Int(0),
    "adalora_tfinal": Int(0),
    "adalora_delta_t": COUNT,
    "positions_per_user": COUNT,
    "num_negatives": COUNT,
    "max_train_users": COUNT_OR_NONE,
    "valid_users": COUNT,
    "select_metric": OneOf(_metric_names),
    "seed": SEED,
    "seeds": Items(SEED),
    "max_steps": COUNT,
    "batch_size": COUNT,
    "grad_accum": COUNT,
    "lr": RATE,
    "warmup_steps": Int(0),
    "eval_every": COUNT,
}


P2REC_PREFIX = "p2rec-"


@dataclass(frozen=True)
class P2RecVariant:
    """A P2Rec method name, parsed: which teacher is enhanced, with which tuned LLM."""

    name: str
    teacher: str
    sft: bool  # False: the item embeddings come from the LLM as it is (the no-SFT ablation)
    num_categories: int | None  # K of the SFT (None: P2RecConfig.num_categories); None when not sft


def parse_p2rec_variant(name: str) -> P2RecVariant:
    """"p2rec-sasrec" -> SASRec enhanced by the tuned LLM (K from the config); "p2rec-sasrec-k8" -> K = 8;
    "p2rec-gru4rec-nosft" -> GRU4Rec initialised from the LLM without the SFT stage."""
    parts = name.removeprefix(P2REC_PREFIX).split("-") if name.startswith(P2REC_PREFIX) else []
    teacher, rest = (parts[0], parts[1:]) if parts else ("", [])
    sft, k = True, None
    if rest == ["nosft"]:
        sft = False
    elif len(rest) == 1 and rest[0].startswith("k") and rest[0][1:].isdigit() and int(rest[0][1:]) >= 2:
        k = int(rest[0][1:])
    elif rest:
        teacher = ""
    if teacher not in TEACHER_NAMES:
        raise ConfigError(
            f"p2rec.variants: '{name}' is not 'p2rec-<teacher>', 'p2rec-<teacher>-k<K>' (K >= 2) or "
            f"'p2rec-<teacher>-nosft' with a teacher among {', '.join(TEACHER_NAMES)}"
        )
    return P2RecVariant(name, teacher, sft, k)


@dataclass(frozen=True)
class P2RecConfig:
    """P2Rec (Liu et al., arXiv 2406.00333; notebook 06): the LLM learns, per user, the distribution of
    their train items over latent item categories (user-level SFT), then each item fed to it alone gives
    an embedding that initialises a fresh teacher, trained as the plain one is.

    Only the abstract is public: every choice below is the kit's reading (``delrec_lib/p2rec/__init__.py``
    says why each default is what it is).
    """

    # Methods: "p2rec-<teacher>" (tuned LLM, K = num_categories), "p2rec-<teacher>-k<K>" (K sweep),
    # "p2rec-<teacher>-nosft" (LLM without the SFT: does the SFT matter?). The random-initialisation
    # ablation is the plain teacher of notebook 02 (same spec and seed), so it has no name here.
    variants: tuple[str, ...] = ("p2rec-sasrec", "p2rec-sasrec-nosft")
    # Latent categories: k-means over the L2-normalised item embeddings of this run's trained teacher.
    source_teacher: str = "sasrec"
    num_categories: int = 16
    kmeans_restarts: int = 10
    # The target of a user: frequencies of their categories over all train items ("train"), or over the
    # train items the prompt shows ("shown": the latest history_len).
    target_scope: Literal["train", "shown"] = "train"
    history_len: int = 20  # latest train titles in the SFT prompt
    loss: Literal["mse", "kl"] = "mse"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    heldout_users: int = 100  # never trained on; their loss selects the SFT step
    max_train_users: int | None = None  # None: every other user
    seed: int = 2024
    epochs: int = 1  # one example per user per epoch
    max_steps: int | None = None  # when set, the number of optimizer steps whatever the epochs
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_steps: int = 5
    eval_every: int = 25
    item_batch_size: int = 32  # one-item prompts per forward pass of the augmentation
    # Projection of the LLM's item states to the teacher's width: PCA, optionally whitened, rescaled so the
    # table's standard deviation is that of the fresh teacher's own initialisation ("init") or kept ("pca").
    whiten: bool = False
    scale: Literal["init", "pca"] = "init"
    # Caser has an input table (read by its convolutions) and an output table (scored against); which the
    # LLM initialises. SASRec and GRU4Rec score against their input table, so they have one.
    caser_table: Literal["input", "output", "both"] = "input"
    # Seed study: these methods and their plain teachers are trained again with each extra seed (the
    # run's teachers.seed is the first pair: notebook 02's teacher and the method itself). None: every
    # main method ("p2rec-<teacher>") among the variants.
    seed_variants: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = (1, 2)

    def seed_study_variants(self) -> tuple[str, ...]:
        if self.seed_variants is not None:
            return self.seed_variants
        return tuple(v for v in self.variants if v == P2REC_PREFIX + parse_p2rec_variant(v).teacher)

    def __post_init__(self) -> None:
        check_fields(self)
        for name in self.seed_variants or ():
            if name not in self.variants:
                raise ConfigError(f"p2rec.seed_variants: '{name}' is not among p2rec.variants {list(self.variants)}")


P2REC_VARIANT = Satisfies(_parses(parse_p2rec_variant), "'p2rec-<teacher>', 'p2rec-<teacher>-k<K>' (K >= 2) or "
                          f"'p2rec-<teacher>-nosft' with a teacher among {', '.join(TEACHER_NAMES)}")  # fmt: skip
FIELD_RULES[P2RecConfig] = {
    "variants": Items(P2REC_VARIANT),
    "source_teacher": OneOf(TEACHER_NAMES),
    "num_categories": Int(2),
    "kmeans_restarts": COUNT,
    "target_scope": _declared(P2RecConfig, "target_scope"),
    "history_len": COUNT,
    "loss": _declared(P2RecConfig, "loss"),
    "lora_r": COUNT,
    "lora_alpha": COUNT,
    "lora_dropout": DROPOUT,
    "target_modules": MODULE_NAMES,
    "heldout_users": COUNT,
    "max_train_users": COUNT_OR_NONE,
    "seed": SEED,
    "epochs": COUNT,
    "max_steps": COUNT_OR_NONE,
    "batch_size": COUNT,
    "grad_accum": COUNT,
    "lr": RATE,
    "warmup_steps": Int(0),
    "eval_every": COUNT,
    "item_batch_size": COUNT,
    "whiten": Flag(),
    "scale": _declared(P2RecConfig, "scale"),
    "caser_table": _declared(P2RecConfig, "caser_table"),
    "seed_variants": Maybe(Items(P2REC_VARIANT)),
    "seeds": Items(SEED),
}


LLMSREC = "llm-srec"
# The paper's Table 8 ablations and its training-time shuffle, as method names (suffix -> what changes).
LLMSREC_SUFFIXES = {
    "": "the method as configured (L_ret + L_dist + L_unif by default)",
    "nounif": "without L_unif",
    "nodist": "without L_dist and L_unif (L_ret only)",
    "shuffled": "trained on shuffled histories (the LLM's and the teacher's), evaluated on the original order",
}


@dataclass(frozen=True)
class LLMSRecVariant:
    """An LLM-SRec method name, parsed: which losses it trains with, and on which order."""

    name: str
    dist: bool  # L_dist kept
    unif: bool  # L_unif kept
    shuffled: bool  # training histories shuffled


def parse_llmsrec_variant(name: str) -> LLMSRecVariant:
    """"llm-srec" -> the method; "llm-srec-nounif" / "-nodist" -> the loss ablations; "llm-srec-shuffled" ->
    trained on shuffled histories."""
    suffix = name[len(LLMSREC) + 1 :] if isinstance(name, str) and name.startswith(LLMSREC + "-") else ("" if name == LLMSREC else None)
    if suffix is None or suffix not in LLMSREC_SUFFIXES:
        raise ConfigError(f"llmsrec.variants: '{name}' is not one of " + ", ".join(f"'{LLMSREC}{'-' + s if s else ''}'" for s in LLMSREC_SUFFIXES))
    return LLMSRecVariant(name, dist=suffix not in ("nodist",), unif=suffix not in ("nounif", "nodist"), shuffled=suffix == "shuffled")


@dataclass(frozen=True)
class LLMSRecConfig:
    """LLM-SRec (Kim et al., KDD 2025; notebook 05): the LLM stays frozen; small MLPs and two input vectors
    are trained so that the LLM's user representation ranks the next item (L_ret) and matches the teacher's
    (L_dist), with uniformity on both (L_unif). Defaults follow the authors' code (Sein-Kim/LLM-SRec at
    b81019c) except where a field says otherwise; ``delrec_lib/llmsrec/__init__.py`` lists every deviation.
    """

    variants: tuple[str, ...] = (LLMSREC,)
    teacher: str = "sasrec"  # whose item embeddings enter the prompt and whose user representation is distilled
    history_len: int = 10  # latest history items in the user prompt (the authors' 10)
    # "date": "Item No.3, Time: 1997-12-04, ..." as the authors write it (the paper preset); "none" (the cpu
    # default) drops the time: SmolLM2 spells a date digit by digit, 14 of a history item's tokens, so a
    # user prompt takes 304 positions dated and 164 without (measured on ML-100K), and a training step
    # about 1.3x and scoring 1.7x as long dated. ML-100K's dates span seven months.
    time_format: Literal["date", "none"] = "none"
    head_width: int = 2048  # hidden width of f_user and f_item (the authors' 2048)
    output_dim: int = 128  # width of the user, item and teacher vectors compared by the losses
    num_negatives: int = 3  # per training example, uniform among items the user never interacted with
    ret_weight: float = 1.0
    dist_weight: float = 1.0
    unif_weight: float = 1.0
    # The authors' code computes the teacher's user representation with its dropout active (train mode);
    # the kit computes it in eval mode (deterministic, cacheable). True reproduces theirs.
    teacher_dropout: bool = False
    max_train_users: int | None = None  # None: every user (one example each: the last train item)
    valid_users: int = 150  # validation users (seeded subset) whose candidate NDCG selects the step
    select_metric: str = "NDCG@10"
    seed: int = 2024
    epochs: int = 1
    max_steps: int | None = None  # when set, the number of optimizer steps whatever the epochs
    batch_size: int = 4
    grad_accum: int = 5  # 4 x 5 = the authors' batch of 20
    lr: float = 1e-4
    warmup_steps: int = 0
    eval_every: int = 24  # optimizer steps; one epoch of 943 users is 48 steps of 20
    eval_batch_size: int = 16  # prompts per forward pass when scoring
    # Keep each item prompt's keys/values of the text before its embedding slot (the frozen LLM reads it the
    # same way at every step: nothing trainable comes before it) and run only the slot and what follows: the
    # same vectors for about a third of an item prompt's tokens (causal models; ~0.7 MB per item here).
    cache_prefix: bool = True

    def __post_init__(self) -> None:
        check_fields(self)


FIELD_RULES[LLMSRecConfig] = {
    "variants": Items(Satisfies(_parses(parse_llmsrec_variant), "one of " + ", ".join(f"'{LLMSREC}{'-' + s if s else ''}'" for s in LLMSREC_SUFFIXES))),
    "teacher": OneOf(TEACHER_NAMES),
    "history_len": COUNT,
    "time_format": _declared(LLMSRecConfig, "time_format"),
    "head_width": COUNT,
    "output_dim": COUNT,
    "num_negatives": COUNT,
    "ret_weight": Num(0),
    "dist_weight": Num(0),
    "unif_weight": Num(0),
    "teacher_dropout": Flag(),
    "max_train_users": Maybe(Int(2)),  # L_unif compares pairs of users
    "valid_users": COUNT,
    "select_metric": OneOf(_metric_names),
    "seed": SEED,
    "epochs": COUNT,
    "max_steps": COUNT_OR_NONE,
    "batch_size": COUNT,
    "grad_accum": COUNT,
    "lr": RATE,
    "warmup_steps": Int(0),
    "eval_every": COUNT,
    "eval_batch_size": COUNT,
    "cache_prefix": Flag(),
}


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation and analysis (notebooks 07 and 08)."""

    bootstrap: int = 1000  # bootstrap resamples of users for the confidence intervals
    confidence: float = 0.95
    seed: int = 2024
    paired_metrics: tuple[str, ...] = ("HR@1", "NDCG@10")
    # LLaRA-compatible protocol (greedy generation of a title): users it runs on, None = all.
    generation_users: int | None = 200
    max_new_tokens: int = 20
    # "Lost in Sequence" order diagnostic (notebook 08): users re-ranked with shuffled histories.
    shuffle_users: int | None = 300

    def __post_init__(self) -> None:
        check_fields(self)


FIELD_RULES[EvalConfig] = {
    "bootstrap": Int(100),  # fewer resamples make the interval's ends noise
    "confidence": Num(0, 1, open_lo=True, open_hi=True),
    "seed": SEED,
    "paired_metrics": Items(OneOf(_metric_names)),
    "generation_users": COUNT_OR_NONE,
    "max_new_tokens": COUNT,
    "shuffle_users": COUNT_OR_NONE,
}


@dataclass(frozen=True)
class RunConfig:
    """Everything one run of the series needs. ``preset`` names where the defaults came from."""

    preset: str = "cpu"
    data_dir: str = "data"
    # LLM stages and evaluation may be restricted to the first N users (smoke preset only);
    # None means every user.
    max_users: int | None = None
    # Extra method families, "module:FamilyClass" (see delrec_lib/methods.py): a method added
    # without editing the kit appears in every evaluation table and analysis figure.
    plugins: tuple[str, ...] = ()
    data: DataConfig = field(default_factory=DataConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    p2rec: P2RecConfig = field(default_factory=P2RecConfig)
    llmsrec: LLMSRecConfig = field(default_factory=LLMSRecConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        check_fields(self)
        # A soft prompt of a teacher this run does not train would fail in notebook 03 ("no manifest").
        for name in self.distill.prompts:
            teacher, _ = parse_prompt_name(name)
            if teacher in RULE_TEACHERS and teacher not in self.teachers.rules:
                raise ConfigError(
                    f"distill.prompts: '{name}' distils rule teacher '{teacher}', which teachers.rules "
                    f"{list(self.teachers.rules)} does not export"
                )
            if teacher not in (POPULARITY, *RULE_TEACHERS) and teacher not in self.teachers.models:
                raise ConfigError(
                    f"distill.prompts: '{name}' distils teacher '{teacher}', which teachers.models "
                    f"{list(self.teachers.models)} does not train"
                )
        # RPS candidates are the teacher's exported top-k: a larger k would leave no RPS example at all.
        if self.distill.rps_top_k > self.teachers.top_k:
            raise ConfigError(
                f"distill.rps_top_k ({self.distill.rps_top_k}) cannot exceed teachers.top_k ({self.teachers.top_k}), "
                "the predictions each teacher exports"
            )
        # A variant whose soft prompt this run never distils would otherwise fail an hour in,
        # when notebook 04 looks for it.
        for variant in self.finetune.variants:
            if variant.startswith("delrec-") and variant.removeprefix("delrec-") not in self.distill.prompts:
                raise ConfigError(
                    f"finetune.variants: '{variant}' needs soft prompt '{variant.removeprefix('delrec-')}', "
                    f"which distill.prompts {list(self.distill.prompts)} does not produce"
                )
        # P2Rec clusters the item embeddings of a teacher this run trains, and compares every enhanced
        # teacher with the plain one (same spec and seed).
        variants = [parse_p2rec_variant(v) for v in self.p2rec.variants]
        needed = {v.teacher for v in variants} | ({self.p2rec.source_teacher} if any(v.sft for v in variants) else set())
        missing = sorted(needed - set(self.teachers.models))
        if missing:
            raise ConfigError(
                f"p2rec: variants {list(self.p2rec.variants)} (source teacher '{self.p2rec.source_teacher}') need the "
                f"teachers {missing}, which teachers.models {list(self.teachers.models)} does not train"
            )
        if self.llmsrec.variants and self.llmsrec.teacher not in self.teachers.models:
            raise ConfigError(
                f"llmsrec.teacher: '{self.llmsrec.teacher}' is not among teachers.models {list(self.teachers.models)}, "
                "which this run trains"
            )
        if self.p2rec.seeds and self.teachers.seed in self.p2rec.seeds:
            raise ConfigError(
                f"p2rec.seeds: {self.teachers.seed} is teachers.seed, already the seed study's first pair; "
                f"got {list(self.p2rec.seeds)}"
            )


FIELD_RULES[RunConfig] = {
    "preset": OneOf(lambda: PRESETS),
    "data_dir": Text(),
    "max_users": COUNT_OR_NONE,
    "plugins": Items(Text(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", "'module:FamilyClass'")),
    "data": Section(DataConfig),
    "teachers": Section(TeachersConfig),
    "llm": Section(LLMConfig),
    "distill": Section(DistillConfig),
    "finetune": Section(FinetuneConfig),
    "p2rec": Section(P2RecConfig),
    "llmsrec": Section(LLMSRecConfig),
    "eval": Section(EvalConfig),
}
_SECTIONS = _section_paths(RunConfig, "")


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


def _smoke() -> RunConfig:
    # Teachers: every model for one epoch (seconds each); enough to exercise every export.
    return RunConfig(
        preset="smoke",
        max_users=48,
        teachers=TeachersConfig(max_epochs=1),
        distill=DistillConfig(heldout_users=8, selection_users=8, max_train_users=16, max_steps=4, eval_every=2, warmup_steps=0),
        # One extra training seed: the seed study's code path (its copies, their tests and summary).
        finetune=FinetuneConfig(max_train_users=16, valid_users=8, max_steps=4, eval_every=2, warmup_steps=0, grad_accum=1,
                                seeds=(1,)),
        # P2Rec: a few SFT steps, one extra seed (every code path of the series in seconds, apart from the pass of
        # the 1,682 items through the tuned LLM; the no-SFT twin's pass is tests/test_p2rec.py's).
        p2rec=P2RecConfig(variants=("p2rec-sasrec",), heldout_users=8, max_train_users=16, max_steps=4, eval_every=2,
                          warmup_steps=0, seeds=(1,)),
        llmsrec=LLMSRecConfig(max_train_users=16, valid_users=8, max_steps=4, eval_every=2, batch_size=4, grad_accum=1),
        # The generation protocol and the order diagnostic on a third of the 48 users: the same code paths.
        eval=EvalConfig(generation_users=16, shuffle_users=16),
    )


def _cpu() -> RunConfig:
    # P2Rec (17 min on a bf16 CPU, twice that without) lives in cpu-ablations: the hour is DELRec's and LLM-SRec's.
    return RunConfig(preset="cpu", p2rec=P2RecConfig(variants=()))


def _cpu_long() -> RunConfig:
    """The cpu preset with both DELRec stages trained 3x longer: the learning curves' points beyond the hour.
    With the seed study and P2Rec too it would take about 5 hours on the AVX2 machine (its LLM in float32),
    so those live in cpu-seeds and cpu-ablations. About 2.5 hours from scratch (estimated); measured on a copy of
    a finished cpu run, which retrains and re-evaluates only the two DELRec stages: 1 h 57 min (README)."""
    cpu = _cpu()
    return replace(
        cpu,
        preset="cpu-long",
        # Evaluations as often in users seen as in the cpu preset would double stage 1's held-out scoring.
        distill=replace(cpu.distill, max_steps=3 * cpu.distill.max_steps, eval_every=2 * cpu.distill.eval_every),
        finetune=replace(cpu.finetune, max_steps=3 * cpu.finetune.max_steps),
    )


def _cpu_seeds() -> RunConfig:
    """The cpu preset with LoRA and DELRec-SASRec each trained again with seeds 1 and 2 (the stage-2 seed study:
    three seeds per method, the same users). About 2.8 hours on the AVX2 machine: the cpu run plus four
    stage-2 trainings of ~10 min and their test evaluations."""
    cpu = _cpu()
    return replace(cpu, preset="cpu-seeds", finetune=replace(cpu.finetune, seeds=(1, 2)))


# LLM-SRec's Table 8 ablations and its training-time shuffle, beside the method.
LLMSREC_VARIANTS = tuple(LLMSREC + (f"-{s}" if s else "") for s in LLMSREC_SUFFIXES)
# Stage-1 soft prompts and stage-2 variants of the ablation study: TA only, RPS only, and one
# DELRec per teacher, each beside the no-soft-prompt LoRA variant.
ABLATION_PROMPTS = ("sasrec", "sasrec-ta", "sasrec-rps", "gru4rec", "caser")
ABLATION_VARIANTS = ("lora",) + tuple(f"delrec-{p}" for p in ABLATION_PROMPTS)
# P2Rec's ablation study: every teacher enhanced, each beside its no-SFT twin, and the K sweep 8/16/32 on
# SASRec; the seed study (by default) on every teacher's main method.
P2REC_ABLATION_VARIANTS = tuple(f"p2rec-{t}{a}" for t in TEACHER_NAMES for a in ("", "-nosft")) + ("p2rec-sasrec-k8", "p2rec-sasrec-k32")


def _cpu_ablations() -> RunConfig:
    cpu = _cpu()
    return replace(
        cpu,
        preset="cpu-ablations",
        distill=replace(cpu.distill, prompts=ABLATION_PROMPTS),
        finetune=replace(cpu.finetune, variants=ABLATION_VARIANTS),
        p2rec=replace(cpu.p2rec, variants=P2REC_ABLATION_VARIANTS),
        llmsrec=replace(cpu.llmsrec, variants=LLMSREC_VARIANTS),
    )


def _paper() -> RunConfig:
    # The paper's backbone and prompts; on GPUs the year and the candidate list are affordable.
    return RunConfig(
        preset="paper",
        teachers=TeachersConfig(patience=20, threads=None),
        llm=LLMConfig(
            backbone="google/flan-t5-xl",
            title_style="with_year",
            list_candidates=True,
            max_prompt_tokens=1024,
        ),
        distill=DistillConfig(prompts=ABLATION_PROMPTS, num_soft_tokens=100, max_steps=2000, batch_size=8, grad_accum=1, lr=1e-3, eval_every=200),
        finetune=FinetuneConfig(variants=ABLATION_VARIANTS, method="adalora", lora_layers=None, max_steps=2000, batch_size=8,
                                grad_accum=1, lr=1e-4, eval_every=200, valid_users=943, positions_per_user=5),
        # P2Rec: the kit's choice for a first GPU run (the paper's settings are not public): longer
        # histories, three SFT epochs, five seeds.
        p2rec=P2RecConfig(variants=P2REC_ABLATION_VARIANTS, history_len=50,
                          epochs=3, heldout_users=200, batch_size=16, lr=5e-4, eval_every=50, item_batch_size=128,
                          seeds=(1, 2, 3, 4)),
        # LLM-SRec: the authors' 10 epochs with their dated prompts.
        llmsrec=LLMSRecConfig(variants=LLMSREC_VARIANTS, time_format="date", epochs=10, eval_every=200, valid_users=943,
                              eval_batch_size=32),
        eval=EvalConfig(generation_users=None, shuffle_users=None),
    )


PRESETS: dict[str, typing.Callable[[], RunConfig]] = {
    "smoke": _smoke,
    "cpu": _cpu,
    "cpu-long": _cpu_long,
    "cpu-seeds": _cpu_seeds,
    "cpu-ablations": _cpu_ablations,
    "paper": _paper,
}


def preset_config(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; expected one of: {', '.join(PRESETS)}")
    return PRESETS[name]()


# --------------------------------------------------------------------------------------------
# Overrides from files and keyword arguments
# --------------------------------------------------------------------------------------------


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert a JSON/TOML value to a field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        return tuple(_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table/object, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of {annotation.__name__} fields, got {value!r}")
        return _apply(annotation(), value, where)
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _apply(obj: Any, overrides: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    changes = {}
    for key, value in overrides.items():
        if key not in names:
            raise ConfigError(
                f"{where}: unknown field '{key}' for {type(obj).__name__}; expected one of: {', '.join(sorted(names))}"
            )
        current = getattr(obj, key)
        path = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = _apply(current, value, path)
        else:
            changes[key] = _coerce(value, hints[key], path)
    return replace(obj, **changes)


def override(config: RunConfig, overrides: dict[str, Any] | None, where: str = "") -> RunConfig:
    """Return ``config`` with nested ``overrides`` applied; every key and value is checked.

    ``where`` (a config file) prefixes every error, whose message names the dotted field.
    """
    if not overrides:
        return config
    if "preset" in overrides and overrides["preset"] != config.preset:
        raise ConfigError(f"{where or 'overrides'}: 'preset' cannot be changed by an override")
    try:
        return _apply(config, overrides, "")
    except ConfigError as e:
        if not where:
            raise
        raise ConfigError(f"{where}: {e}") from None


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A config file's values: a table of sections (TOML) or an object of them (JSON)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.suffix not in (".toml", ".json"):
        raise ConfigError(f"{path}: expected a .toml or .json config file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot be parsed ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected an object of config sections at the top level, got {type(values).__name__} {values!r:.60}")
    return values


def load_config(
    preset: str | None = None,
    config_file: str | os.PathLike | None = None,
    **overrides: Any,
) -> RunConfig:
    """Resolve a run's configuration: preset, then the file's values, then keyword overrides.

    The file may name its own ``preset``; an explicit ``preset`` argument must agree with it.
    Keyword overrides use section names (``data={"seed": 1}``) or top-level fields.
    """
    file_values: dict[str, Any] = {}
    if config_file is not None:
        file_values = dict(read_config_file(config_file))
        file_preset = file_values.pop("preset", None)
        if file_preset is not None and (not isinstance(file_preset, str) or file_preset not in PRESETS):
            raise ConfigError(f"{config_file}: preset: expected one of {', '.join(PRESETS)}, got {file_preset!r}")
        if preset is not None and file_preset is not None and file_preset != preset:
            raise ConfigError(f"{config_file}: preset '{file_preset}' disagrees with the requested preset '{preset}'")
        preset = preset or file_preset
    config = preset_config(preset or "cpu")
    config = override(config, file_values, str(config_file) if config_file else "")
    config = override(config, _drop_none(overrides), "")
    return config


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """Keyword overrides use None for "not given" (a notebook parameter left at its default)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if not value:
                continue
        if value is not None:
            out[key] = value
    return out


def config_to_dict(config: Any) -> dict[str, Any]:
    from ..artifacts import to_jsonable

    return to_jsonable(config)


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The folder holding this kit's ``pyproject.toml`` (searched upward), else the working directory."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file() and (d / "delrec_lib").is_dir():
            return d
    return here


def resolve_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """A config path made absolute against the project root (absolute paths pass through)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root(root) / p
