"""The config dataclasses: one per stage, grouped in a ``RunConfig``.

Each field's type carries its rule (rules.py): ``Count``, ``Seed``, ``Rate``... or ``Annotated[type, rule]``;
a bool, ``Literal`` or section field needs none. How the tuned defaults were chosen: docs/choosing-settings.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from ..artifacts import OMIT_DEFAULT_FROM_IDENTITY
from ..errors import ConfigError
from .names import (
    DISTILL_TASKS,
    FINETUNE_VARIANT,
    LLMSREC,
    LLMSREC_VARIANT,
    P2REC_PREFIX,
    P2REC_VARIANT,
    POPULARITY,
    PRESET_NAMES,
    PROMPT_NAME,
    RULE_TEACHERS,
    TEACHER_NAMES,
    UNTRAINED_SUFFIX,
    parse_p2rec_variant,
    parse_prompt_name,
)
from .rules import (
    Checked,
    Count,
    Count0,
    Dropout,
    Int,
    Items,
    Maybe,
    MaybeCount,
    ModuleNames,
    NonEmpty,
    Num,
    OneOf,
    Rate,
    Seed,
    Seeds,
    Text,
    Weight,
    register_sections,
)


def _metric_names() -> tuple[str, ...]:
    from ..metrics import METRICS  # pandas: not at import of the config

    return METRICS


def added_setting(default):
    """A setting added after finished runs existed: left at ``default`` it leaves every artifact's identity as it
    was (so those runs stay valid); set otherwise it counts like any setting."""
    return field(default=default, metadata={OMIT_DEFAULT_FROM_IDENTITY: True})


METRIC = OneOf(_metric_names)
Teacher = Annotated[str, OneOf(TEACHER_NAMES)]


@dataclass(frozen=True)
class DataConfig(Checked):
    """Data preparation (notebook 01): which dataset, and the fixed evaluation candidates."""

    # A folder name under data/raw/ and data/processed/: no path separators.
    dataset: Annotated[str, Text(r"[A-Za-z0-9][A-Za-z0-9._-]*", "a dataset name (letters, digits, '.', '_', '-')")] = "ml-100k"
    seed: Seed = 2024
    num_negatives: Count = 19  # candidates: the target and this many never-interacted items (checked by the data step)


@dataclass(frozen=True)
class SASRecConfig(Checked):
    """SASRec (Kang & McAuley, 2018): causal self-attention over the last ``max_len`` items.

    Defaults follow the paper's MovieLens setting (2 blocks, 1 head, dropout 0.2) at RecBole's
    width (64, feed-forward 4x); lr and dropout were chosen on validation only.
    """

    hidden: Count = 64
    layers: Count = 2
    heads: Count = 1
    dropout: Dropout = 0.2
    batch_size: Count = 128  # sequences (windows of max_len items) per step
    lr: Rate = 2e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden % self.heads:
            raise ConfigError(f"teachers.sasrec.hidden ({self.hidden}) must be a multiple of teachers.sasrec.heads ({self.heads})")


@dataclass(frozen=True)
class GRU4RecConfig(Checked):
    """GRU4Rec (Hidasi et al., 2016) as RecBole runs it on user sequences: item embedding, a GRU,
    a projection back to the embedding width, scores by dot product with the same embeddings."""

    embedding: Count = 64
    hidden: Count = 128  # chosen on validation only, with lr
    layers: Count = 1
    dropout: Dropout = 0.3  # on the input embeddings
    batch_size: Count = 128
    lr: Rate = 3e-3  # RecBole's 1e-3 plateaus for several epochs here before it climbs


@dataclass(frozen=True)
class CaserConfig(Checked):
    """Caser (Tang & Wang, 2018): horizontal and vertical convolutions over a window of the
    ``window`` latest items plus a user embedding, predicting the next ``targets`` items.
    Defaults are the paper's (d=50, L=5, T=3, n_v=4, n_h=16, dropout 0.5); with full softmax the T
    targets of a window share one softmax. lr chosen on validation only."""

    embedding: Count = 50
    window: Count = 5  # L: items the convolutions see
    targets: Count = 3  # T: following train items each window predicts
    vertical_filters: Count = 4
    horizontal_filters: Count = 16
    dropout: Dropout = 0.5
    batch_size: Count = 1024  # windows per step (one per train position); halves the per-epoch overhead of 512
    lr: Rate = 1e-3


@dataclass(frozen=True)
class TeachersConfig(Checked):
    """Teacher training (notebook 02): which teachers, the shared protocol and each model's settings.

    Every teacher trains on train items only, with early stopping on validation NDCG@10 (full
    ranking, history excluded); ``max_epochs`` is a ceiling, ``patience`` decides.
    """

    models: Annotated[tuple[str, ...], Items(OneOf(TEACHER_NAMES))] = TEACHER_NAMES  # none: popularity only
    # Rule teachers exported beside the trained ones, for stage 1 only (never evaluated as methods).
    rules: Annotated[tuple[str, ...], Items(OneOf(RULE_TEACHERS))] = ()
    # The latest movies a rule teacher reads; a prompt distilling it must show as many (llm.history_len).
    rule_window: Count = added_setting(10)
    max_len: Count = 50  # history items a teacher sees
    # Longer sequences are cut into windows tiling them from the end; below max_len, labels keep max_len - stride of context.
    stride: Count = 50
    loss: Literal["ce", "bce"] = "ce"  # full softmax cross-entropy, or sampled binary cross-entropy
    negatives: Count = 1  # bce only: uniformly sampled negatives per positive
    max_epochs: Count = 200
    patience: Count = 5  # epochs without a better validation NDCG@10
    weight_decay: Weight = 0.0
    seed: Seed = 2024
    top_k: Count = 20  # predictions exported per user
    # CPU threads (None: torch's default): small models, as fast on one, and immune to OpenMP spinning on shared cores.
    threads: Annotated[int | None, Maybe(Int(1))] = 1
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    gru4rec: GRU4RecConfig = field(default_factory=GRU4RecConfig)
    caser: CaserConfig = field(default_factory=CaserConfig)

    def __post_init__(self):
        super().__post_init__()
        if self.stride > self.max_len:
            raise ConfigError(f"teachers.stride must be between 1 and max_len={self.max_len}, got {self.stride}")
        if self.caser.window > self.max_len:
            raise ConfigError(f"teachers.caser.window ({self.caser.window}) cannot exceed teachers.max_len ({self.max_len})")


@dataclass(frozen=True)
class LLMConfig(Checked):
    """The LLM backbone, its prompts and candidate scoring (shared by notebooks 03, 04 and 05).

    The defaults are the cpu preset's: every prompt token costs CPU time, so titles go without
    their year and candidates are scored without being listed in the prompt. The paper preset
    shows both, as DELRec does.
    """

    # An embedded name ("smollm2-135m-instruct"), a Hugging Face id ("org/name") or a local directory.
    backbone: NonEmpty = "smollm2-135m-instruct"
    model_cache_dir: NonEmpty = "data/models"  # downloaded and converted backbones (relative to the project root)
    # "auto": bfloat16 autocast on CUDA and on CPUs with native bf16, float32 otherwise.
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    history_len: Count0 = 10  # most recent titles of a user's history in a prompt (older ones are dropped first)
    example_history_len: Count0 = 3  # history length of the Temporal Analysis template's in-context example
    title_max_tokens: Count = 16  # longer titles are cut, in prompts and as scored candidates alike
    title_style: Literal["no_year", "with_year"] = "no_year"  # "Toy Story" or "Toy Story (1995)"
    list_candidates: bool = False  # list the candidates in the prompt, as DELRec does; the scorer ranks them either way
    normalize: Literal["mean", "sum"] = "mean"  # a candidate's score: mean (length-normalised) or sum of token log-probs
    # "title": a candidate's score is its title's likelihood after the prompt. "index" (LlamaRec): the prompt lists the
    # candidates under one-token letters in the candidate set's fixed shuffled order, and a candidate's score is its
    # letter's logit at the answer position, so the model compares listed candidates in one forward pass.
    head: Literal["title", "index"] = "title"
    # Index head only: each prompt scored under this many listing orders, scores averaged (k times the cost).
    index_orderings: Count = 1
    score_batch_size: Count = 8  # prompts scored together in one forward pass (each with all of its candidates)
    max_prompt_tokens: Count = 512  # soft-prompt tokens included


@dataclass(frozen=True)
class DistillConfig(Checked):
    """DELRec stage 1 (notebook 03): distil each teacher's pattern into a soft prompt, LLM frozen.

    Each training user contributes one Temporal Analysis and one Recommendation Pattern
    Simulating example per step (train items only). Two disjoint sets of held-out users, never
    trained on and never shown as in-context examples, measure fidelity (LLM top-1 == teacher
    top-1): the selection set picks the best step, the report set (evaluated before training and
    with the selected soft prompt only) gives the reported numbers, so they carry no selection bias.
    """

    # One soft prompt per entry: a teacher ("sasrec": TA + RPS) or a stage-1 ablation ("sasrec-ta", "sasrec-rps").
    prompts: Annotated[tuple[str, ...], Items(PROMPT_NAME)] = ("sasrec",)
    num_soft_tokens: Count = 20
    init: Literal["text", "vocabulary"] = "text"
    init_text: NonEmpty = (
        "{teacher} recommends the next movie from the order of the movies the user watched, "
        "weighting the most recent ones most."
    )
    # "dynamic": per step, weights that give each task's gradient the same norm; "fixed": task_weights.
    weighting: Literal["dynamic", "fixed"] = "dynamic"
    task_weights: Annotated[tuple[float, ...], Items(Num(0), length=len(DISTILL_TASKS), unique=False)] = (1.0, 1.0)  # TA, RPS
    rps_top_k: Annotated[int, Int(1)] = 5  # the teacher's top-k in the RPS candidates; the template shows ranks 2..k (1: none)
    rps_random: Count0 = 5  # random never-interacted items added to the RPS candidates
    ta_candidates: Annotated[int, Int(2)] = 10  # the hidden item plus random never-interacted items
    # Held-out users: at most half the users in all (smaller data shrinks both sets, with a warning).
    heldout_users: Count = 300  # report set: a 95% interval of at most about +-0.06 on a fidelity near 0.5
    selection_users: Count = 100  # selection set: fidelity every eval_every steps selects the step
    max_train_users: MaybeCount = None  # None: every other user
    seed: Seed = 2024
    # One step = batch_size users x grad_accum, TA + RPS each; fidelity levels off after a few hundred users.
    max_steps: Count = 100
    batch_size: Count = 2
    grad_accum: Count = 2
    lr: Rate = 3e-2  # chosen on one run's selection set, which proved too noisy: to be rechosen over seeds
    warmup_steps: Count0 = 5
    eval_every: Count = 25
    # The frozen LLM runs the text before the soft-prompt slot once: the same scores for about a third of the tokens.
    cache_prefix: bool = True
    # "input": K vectors at the slot in the input (DELRec). "every_layer": K keys and values at the slot in every
    # layer (P-tuning v2), which closes much of prompt tuning's gap on small models; stage 2 reads input prompts only.
    prompt_depth: Literal["input", "every_layer"] = "input"
    # "lora" (a control): the soft prompt stays as initialised and LoRA adapters on the top ``lora_layers`` layers
    # train on the same examples instead: whether the LLM itself can learn the pattern. Stage 2 refuses its prompt.
    trainable: Literal["prompt", "lora"] = "prompt"
    lora_layers: Count = 4
    lora_r: Count = 8
    max_grad_norm: Annotated[float | None, Maybe(Num(0, open_lo=True))] = None  # clip the soft prompt's gradient to this norm; None: no clipping
    # The learning rate after warmup: held ("constant", DELRec), or decayed to 0 at max_steps ("linear", "cosine").
    schedule: Literal["constant", "linear", "cosine"] = added_setting("constant")
    # "dynamic" weighting gives each task's gradient the mean norm (weight mean/norm); this caps a weight, so a task
    # whose gradient nearly vanishes does not get its noise amplified without bound. None: no cap.
    max_task_weight: Annotated[float | None, Maybe(Num(1))] = None
    # RPS's loss. "ce" (DELRec): cross-entropy on the teacher's top-1. "kl": KL divergence from the teacher's softmax
    # over the example's candidates (its scores / kl_temperature, from the teacher's scores_valid export), which
    # distils the teacher's whole ranking of them. TA's label is the hidden item, not a teacher's: it keeps "ce".
    loss: Literal["ce", "kl"] = added_setting("ce")
    kl_temperature: Annotated[float, Num(0, open_lo=True)] = added_setting(1.0)
    # The tasks held-out users are scored on: "all" (a prompt trained on one task is scored on the other too: what
    # carries over, at the cost of caching and scoring its prompts) or the prompt's "trained" tasks only.
    heldout_tasks: Literal["all", "trained"] = added_setting("all")
    # Seed study: every soft prompt trained again per training seed ("<prompt>-seed<N>"): the same users and
    # examples (``seed``), another order of training users. A stage-2 seed's copy "delrec-<p>-seed<N>" then reads
    # "<p>-seed<N>" (both stages again) when N is here, else "<p>" (stage 2 only).
    seeds: Seeds = added_setting(())
    # Stage 1's known answer, trained first on its own small budget (notebook 03 opens with it): a soft prompt of a
    # rule teacher, whose top-1 the prompt shows, e.g. "rule-sharedword-rps"; None: none.
    known_answer: Annotated[str | None, Maybe(PROMPT_NAME)] = None
    known_answer_steps: Count = 40  # evaluated on the selection set every quarter of them
    known_answer_users: Count = 100  # report users (the data's fixed ones); the selection set has half as many
    # The known answer's own head, prompt depth and learning rate (None: the run's): a demo of the mechanism may use
    # the settings under which it learns, which need not be those of the real teachers.
    known_answer_head: Annotated[str | None, Maybe(OneOf(("title", "index")))] = None
    known_answer_depth: Annotated[str | None, Maybe(OneOf(("input", "every_layer")))] = None
    known_answer_lr: Annotated[float | None, Maybe(Num(0, open_lo=True))] = None
    # Its RPS candidates (None: rps_top_k, rps_random): fewer listed ranks leave less for the frozen LLM to copy (1: none).
    known_answer_rps_top_k: Annotated[int | None, Maybe(Int(1))] = added_setting(None)
    known_answer_rps_random: Annotated[int | None, Maybe(Int(0))] = added_setting(None)
    # Its prompt's history titles (None: llm.history_len): a shorter prompt trains more examples per second.
    known_answer_history_len: Annotated[int | None, Maybe(Int(1))] = added_setting(None)
    # Its held-out tasks (None: heldout_tasks): "trained" skips TA's caching and scoring for an RPS-only demo.
    known_answer_heldout_tasks: Annotated[str | None, Maybe(OneOf(("all", "trained")))] = added_setting(None)
    # Its users per step in one micro-batch (None: batch_size x grad_accum): the same gradient, fewer and larger
    # forward passes (about 7% faster on a 2-core CPU than 2 x 2).
    known_answer_batch_size: Annotated[int | None, Maybe(Int(1))] = added_setting(None)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.seed in self.seeds:
            raise ConfigError(f"distill.seeds: {self.seed} is distill.seed, the soft prompts' own training seed; "
                              f"got {list(self.seeds)}")  # fmt: skip
        if self.weighting == "fixed" and not any(self.task_weights):
            raise ConfigError(f"distill.task_weights: with weighting 'fixed', at least one weight > 0; got {list(self.task_weights)}")
        known_random = self.rps_random if self.known_answer_rps_random is None else self.known_answer_rps_random
        for prefix, top_k, random in (("", self.rps_top_k, self.rps_random),
                                      ("known_answer_", self.known_answer_rps_top_k or self.rps_top_k, known_random)):
            if top_k + random < 2:  # a single candidate is always ranked first
                raise ConfigError(f"distill.{prefix}rps_random: an RPS example ranks at least 2 candidates, the teacher's "
                                  f"top {top_k} (distill.{prefix}rps_top_k) and the random ones; got {random}")  # fmt: skip


@dataclass(frozen=True)
class FinetuneConfig(Checked):
    """DELRec stage 2 (notebook 04): LoRA fine-tuning on the recommendation template.

    Variants: "lora" fine-tunes without a soft prompt (the no-stage-1 ablation); "delrec-<p>"
    loads stage 1's soft prompt <p> ("delrec-sasrec", "delrec-sasrec-ta", ...) frozen into the
    template. Every variant gets the same examples, budget and seed.
    """

    variants: Annotated[tuple[str, ...], Items(FINETUNE_VARIANT)] = ("lora", "delrec-sasrec")
    method: Literal["lora", "adalora"] = "lora"
    lora_r: Count = 8
    lora_alpha: Count = 16
    lora_dropout: Dropout = 0.05
    target_modules: ModuleNames = ("q_proj", "k_proj", "v_proj", "o_proj")
    lora_layers: MaybeCount = 4  # LoRA in the top layers only (None: all): as good on validation, and faster
    # The layers below the adapted ones never change: their output is computed once per example (Llama-style decoders).
    cache_lower_layers: bool = True
    # AdaLoRA (paper preset): ranks start at adalora_init_r and are pruned to lora_r on average.
    adalora_init_r: Count = 12
    adalora_tinit: Count0 = 10
    adalora_tfinal: Count0 = 10
    adalora_delta_t: Count = 5
    # Each user's examples: targets among their last train items, history the items before (more than 1: as LLaRA trains).
    positions_per_user: Count = 3
    num_negatives: Count = 19
    max_train_users: MaybeCount = None
    valid_users: Count = 150  # validation users (seeded subset) that select the best step
    select_metric: Annotated[str, METRIC] = "NDCG@5"
    seed: Seed = 2024
    # Seed study: every variant trained again per seed ("<variant>-seed<N>"), the same users and validation set.
    seeds: Seeds = ()
    max_steps: Count = 100  # 800 training examples visited
    batch_size: Count = 2
    grad_accum: Count = 4
    lr: Rate = 1e-3
    warmup_steps: Count0 = 10
    eval_every: Count = 50

    def __post_init__(self) -> None:
        super().__post_init__()
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


@dataclass(frozen=True)
class P2RecConfig(Checked):
    """P2Rec (Liu et al., arXiv 2406.00333; notebook 06): the LLM learns, per user, the distribution of
    their train items over latent item categories (user-level SFT), then each item fed to it alone gives
    an embedding that initialises a fresh teacher, trained as the plain one is.

    Only the abstract is public: every choice below is the kit's reading (``delrec_lib/p2rec/__init__.py``
    says why each default is what it is).
    """

    # "p2rec-<teacher>" (K = num_categories), "-k<K>" (K sweep), "-nosft" (no SFT); random init is notebook 02's teacher.
    variants: Annotated[tuple[str, ...], Items(P2REC_VARIANT)] = ("p2rec-sasrec", "p2rec-sasrec-nosft")
    source_teacher: Teacher = "sasrec"  # whose L2-normalised item embeddings k-means groups into categories
    num_categories: Annotated[int, Int(2)] = 16
    kmeans_restarts: Count = 10
    # A user's target: their categories' frequencies over all train items, or over those the prompt shows.
    target_scope: Literal["train", "shown"] = "train"
    history_len: Count = 20  # latest train titles in the SFT prompt
    loss: Literal["mse", "kl"] = "mse"
    lora_r: Count = 8
    lora_alpha: Count = 16
    lora_dropout: Dropout = 0.05
    target_modules: ModuleNames = ("q_proj", "k_proj", "v_proj", "o_proj")
    heldout_users: Count = 100  # never trained on; their loss selects the SFT step
    max_train_users: MaybeCount = None  # None: every other user
    seed: Seed = 2024
    epochs: Count = 1  # one example per user per epoch
    max_steps: MaybeCount = None  # when set, the number of optimizer steps whatever the epochs
    batch_size: Count = 8
    grad_accum: Count = 1
    lr: Rate = 1e-3
    warmup_steps: Count0 = 5
    eval_every: Count = 25
    item_batch_size: Count = 32  # one-item prompts per forward pass of the augmentation
    # The LLM's item states go to the teacher's width by PCA, optionally whitened, at the teacher's init scale or kept.
    whiten: bool = False
    scale: Literal["init", "pca"] = "init"
    # Which of Caser's tables the LLM initialises: input (read by its convolutions), output (scored against) or both.
    caser_table: Literal["input", "output", "both"] = "input"
    # Seed study: methods retrained with their plain teachers per extra seed (None: every "p2rec-<teacher>" variant).
    seed_variants: Annotated[tuple[str, ...] | None, Maybe(Items(P2REC_VARIANT))] = None
    seeds: Seeds = (1, 2)

    def seed_study_variants(self) -> tuple[str, ...]:
        if self.seed_variants is not None:
            return self.seed_variants
        return tuple(v for v in self.variants if v == P2REC_PREFIX + parse_p2rec_variant(v).teacher)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.seed_variants or ():
            if name not in self.variants:
                raise ConfigError(f"p2rec.seed_variants: '{name}' is not among p2rec.variants {list(self.variants)}")


@dataclass(frozen=True)
class LLMSRecConfig(Checked):
    """LLM-SRec (Kim et al., KDD 2025; notebook 05): the LLM stays frozen; small MLPs and two input vectors
    are trained so that the LLM's user representation ranks the next item (L_ret) and matches the teacher's
    (L_dist), with uniformity on both (L_unif). Defaults follow the authors' code (Sein-Kim/LLM-SRec at
    b81019c) except where a field says otherwise; ``delrec_lib/llmsrec/__init__.py`` lists every deviation.
    """

    variants: Annotated[tuple[str, ...], Items(LLMSREC_VARIANT)] = (LLMSREC,)
    teacher: Teacher = "sasrec"  # whose item embeddings enter the prompt and whose user representation is distilled
    history_len: Count = 10  # latest history items in the user prompt (the authors' 10)
    # "date" as the authors write it (paper preset); "none" (cpu): SmolLM2 spells a date digit by digit.
    time_format: Literal["date", "none"] = "none"
    head_width: Count = 2048  # hidden width of f_user and f_item (the authors' 2048)
    output_dim: Count = 128  # width of the user, item and teacher vectors compared by the losses
    num_negatives: Count = 3  # per training example, uniform among items the user never interacted with
    ret_weight: Weight = 1.0
    dist_weight: Weight = 1.0
    unif_weight: Weight = 1.0
    # The authors compute the teacher's user representation in train mode (dropout on); True reproduces theirs.
    teacher_dropout: bool = False
    max_train_users: Annotated[int | None, Maybe(Int(2))] = None  # None: every user; L_unif compares pairs of users
    valid_users: Count = 150  # validation users (seeded subset) whose candidate NDCG selects the step
    select_metric: Annotated[str, METRIC] = "NDCG@10"
    seed: Seed = 2024
    epochs: Count = 1
    max_steps: MaybeCount = None  # when set, the number of optimizer steps whatever the epochs
    batch_size: Count = 4
    grad_accum: Count = 5  # 4 x 5 = the authors' batch of 20
    lr: Rate = 1e-4
    warmup_steps: Count0 = 0
    eval_every: Count = 24  # optimizer steps; one epoch of 943 users is 48 steps of 20
    eval_batch_size: Count = 16  # prompts per forward pass when scoring
    # The frozen LLM runs each item prompt's text before its embedding slot once: the same vectors for a third of the tokens.
    cache_prefix: bool = True


@dataclass(frozen=True)
class EvalConfig(Checked):
    """Evaluation and analysis (notebooks 07 and 08)."""

    bootstrap: Annotated[int, Int(100)] = 1000  # resamples of users; fewer make the interval's ends noise
    confidence: Annotated[float, Num(0, 1, open_lo=True, open_hi=True)] = 0.95
    seed: Seed = 2024
    paired_metrics: Annotated[tuple[str, ...], Items(METRIC)] = ("HR@1", "NDCG@10")
    generation_users: MaybeCount = 200  # LLaRA-compatible protocol (greedy generation of a title); None: all
    max_new_tokens: Count = 20
    shuffle_users: MaybeCount = 300  # "Lost in Sequence" order diagnostic: users re-ranked with shuffled histories
    # Popularity-matched protocol: the first N users ranked again on their second candidate set, whose negatives share
    # the target's popularity bin (popularity scores near chance there); 300 gives HR@1 intervals of about +-0.03-0.05.
    matched_users: Count0 = 300


@dataclass(frozen=True)
class RunConfig(Checked):
    """Everything one run of the series needs. ``preset`` names where the defaults came from."""

    preset: Annotated[str, OneOf(PRESET_NAMES)] = "cpu"
    data_dir: NonEmpty = "data"
    max_users: MaybeCount = None  # LLM stages and evaluation on the first N users only (smoke preset); None: all
    # Extra method families, "module:FamilyClass" (methods.py): a method added without editing the kit appears everywhere.
    plugins: Annotated[tuple[str, ...], Items(Text(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", "'module:FamilyClass'"))] = ()
    data: DataConfig = field(default_factory=DataConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    p2rec: P2RecConfig = field(default_factory=P2RecConfig)
    llmsrec: LLMSRecConfig = field(default_factory=LLMSRecConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        # A soft prompt of a teacher this run does not train would fail in notebook 03 ("no manifest").
        known = (self.distill.known_answer,) if self.distill.known_answer else ()
        for name in (*known, *self.distill.prompts):
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
        # A rule teacher's answer must be readable from the prompt: it shows at least the movies the rule reads.
        for name in (*known, *self.distill.prompts):
            teacher, _ = parse_prompt_name(name)
            shown = self.llm.history_len
            if name == self.distill.known_answer and self.distill.known_answer_history_len is not None:
                shown, field_name = self.distill.known_answer_history_len, "distill.known_answer_history_len"
            else:
                field_name = "llm.history_len"
            if teacher in RULE_TEACHERS and shown < self.teachers.rule_window:
                raise ConfigError(
                    f"{field_name} ({shown}): soft prompt '{name}' distils rule teacher '{teacher}', which reads the "
                    f"latest {self.teachers.rule_window} movies (teachers.rule_window); its prompt must show at least as many"
                )
        # RPS candidates are the teacher's exported top-k: a larger k would leave no RPS example at all.
        if self.distill.rps_top_k > self.teachers.top_k:
            raise ConfigError(
                f"distill.rps_top_k ({self.distill.rps_top_k}) cannot exceed teachers.top_k ({self.teachers.top_k}), "
                "the predictions each teacher exports"
            )
        # A variant whose soft prompt this run never distils would otherwise fail an hour in, in notebook 04.
        for variant in self.finetune.variants:
            trained = variant.startswith("delrec-") and not variant.endswith(UNTRAINED_SUFFIX)  # the control needs no stage 1
            if trained and variant.removeprefix("delrec-") not in self.distill.prompts:
                raise ConfigError(
                    f"finetune.variants: '{variant}' needs soft prompt '{variant.removeprefix('delrec-')}', "
                    f"which distill.prompts {list(self.distill.prompts)} does not produce"
                )
        # P2Rec clusters a trained teacher's item embeddings and compares each enhanced teacher with the plain one.
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


register_sections(RunConfig)
