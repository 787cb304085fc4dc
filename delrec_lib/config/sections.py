"""The config dataclasses: one per stage, grouped in a ``RunConfig``."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from .names import (
    DISTILL_TASKS,
    LLMSREC,
    LLMSREC_SUFFIXES,
    P2REC_PREFIX,
    P2REC_VARIANT,
    POPULARITY,
    PROMPT_NAME,
    RULE_TEACHERS,
    TEACHER_NAMES,
    _parses,
    parse_llmsrec_variant,
    parse_p2rec_variant,
    parse_prompt_name,
)
from .rules import (
    COUNT,
    COUNT_OR_NONE,
    DROPOUT,
    FIELD_RULES,
    MODULE_NAMES,
    RATE,
    SECTION_PATHS,
    SEED,
    Flag,
    Int,
    Items,
    Maybe,
    Num,
    OneOf,
    Satisfies,
    Section,
    Text,
    _metric_names,
    check_fields,
    declared,
    section_paths,
)


def _preset_names() -> tuple[str, ...]:
    from .presets import PRESETS  # the presets build these dataclasses

    return tuple(PRESETS)


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
    "loss": declared(TeachersConfig, "loss"),
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
    "dtype": declared(LLMConfig, "dtype"),
    "history_len": Int(0),
    "example_history_len": Int(0),
    "title_max_tokens": COUNT,
    "title_style": declared(LLMConfig, "title_style"),
    "list_candidates": Flag(),
    "normalize": declared(LLMConfig, "normalize"),
    "score_batch_size": COUNT,
    "max_prompt_tokens": COUNT,
}



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
    "init": declared(DistillConfig, "init"),
    "init_text": Text(),
    "weighting": declared(DistillConfig, "weighting"),
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
    "method": declared(FinetuneConfig, "method"),
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


FIELD_RULES[P2RecConfig] = {
    "variants": Items(P2REC_VARIANT),
    "source_teacher": OneOf(TEACHER_NAMES),
    "num_categories": Int(2),
    "kmeans_restarts": COUNT,
    "target_scope": declared(P2RecConfig, "target_scope"),
    "history_len": COUNT,
    "loss": declared(P2RecConfig, "loss"),
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
    "scale": declared(P2RecConfig, "scale"),
    "caser_table": declared(P2RecConfig, "caser_table"),
    "seed_variants": Maybe(Items(P2REC_VARIANT)),
    "seeds": Items(SEED),
}



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
    "time_format": declared(LLMSRecConfig, "time_format"),
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
    "preset": OneOf(_preset_names),
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
SECTION_PATHS.update(section_paths(RunConfig, ""))
