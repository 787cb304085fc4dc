"""Named presets, each a complete ``RunConfig``: smoke (tests), cpu (the default run), its longer studies, paper (GPUs)."""

from __future__ import annotations

import typing
from dataclasses import replace

from ..errors import ConfigError
from .names import LLMSREC, LLMSREC_SUFFIXES, TEACHER_NAMES
from .sections import (
    DistillConfig,
    EvalConfig,
    FinetuneConfig,
    LLMConfig,
    LLMSRecConfig,
    P2RecConfig,
    RunConfig,
    TeachersConfig,
)

# Stage 1's known answer in notebook 03: the rule teacher's Pattern Simulating soft prompt.
KNOWN_ANSWER_TEACHER = "rule-sharedword"
KNOWN_ANSWER = KNOWN_ANSWER_TEACHER + "-rps"
# The known answer trains a prompt at every layer (an input-layer prompt learned far less of the rule on the 135M
# LLM, with either head) on 1 + 9 RPS candidates (no listed teacher rank for the frozen LLM to copy), at a rate that stays
# stable over its 80 steps (0.1 collapsed after 40): docs/choosing-settings.md. For time: held-out users scored on
# RPS, the task it trains (TA's caching and scoring were 29% of its time), its 4 users per step in one micro-batch.
KNOWN_ANSWER_SETTINGS = {"known_answer": KNOWN_ANSWER, "known_answer_depth": "every_layer", "known_answer_lr": 0.05,
                         "known_answer_rps_top_k": 1, "known_answer_rps_random": 9, "known_answer_heldout_tasks": "trained",
                         "known_answer_batch_size": 4}


def _smoke() -> RunConfig:
    # Teachers: every model for one epoch (seconds each); enough to exercise every export.
    # LLM stages on 32 users: each held-out set fits beside 16 training users; the test-time scoring is most of the time.
    return RunConfig(
        preset="smoke",
        max_users=32,
        teachers=TeachersConfig(max_epochs=1, rules=(KNOWN_ANSWER_TEACHER,)),
        distill=DistillConfig(heldout_users=8, selection_users=4, max_train_users=16, max_steps=4, eval_every=2, warmup_steps=0,
                              **KNOWN_ANSWER_SETTINGS, known_answer_steps=2, known_answer_users=4),
        # One extra training seed: the seed study's code path (its copies, their tests and summary).
        finetune=FinetuneConfig(max_train_users=16, valid_users=8, max_steps=4, eval_every=2, warmup_steps=0, grad_accum=1,
                                seeds=(1,)),
        # P2Rec: a few SFT steps on 5-title prompts, every code path in seconds (extra seeds and the no-SFT twin: tests/test_p2rec.py).
        p2rec=P2RecConfig(variants=("p2rec-sasrec",), heldout_users=8, max_train_users=16, max_steps=4, eval_every=2,
                          warmup_steps=0, seeds=(), history_len=5),
        # Item vectors in larger batches: scoring the whole catalogue is most of the series' LLM-SRec time.
        llmsrec=LLMSRecConfig(max_train_users=16, valid_users=8, max_steps=4, eval_every=2, batch_size=4, grad_accum=1,
                              eval_batch_size=64),
        # The generation protocol, the order diagnostic and the popularity-matched table on 8 of the 32 users: the same code paths.
        eval=EvalConfig(generation_users=8, shuffle_users=8, matched_users=8),
    )


def _cpu() -> RunConfig:
    # P2Rec lives in cpu-ablations: the hour is DELRec's and LLM-SRec's (and the known answer's five and a half minutes).
    return RunConfig(preset="cpu", teachers=TeachersConfig(rules=(KNOWN_ANSWER_TEACHER,)),
                     distill=DistillConfig(**KNOWN_ANSWER_SETTINGS, known_answer_steps=80), p2rec=P2RecConfig(variants=()))


def _cpu_long() -> RunConfig:
    """The cpu preset with both DELRec stages trained 3x longer: the learning curves' points beyond the hour."""
    cpu = _cpu()
    return replace(
        cpu,
        preset="cpu-long",
        # Evaluations as often in users seen as in the cpu preset would double stage 1's held-out scoring.
        distill=replace(cpu.distill, max_steps=3 * cpu.distill.max_steps, eval_every=2 * cpu.distill.eval_every),
        finetune=replace(cpu.finetune, max_steps=3 * cpu.finetune.max_steps),
    )


def _cpu_seeds() -> RunConfig:
    """The cpu preset with both stages trained again with seeds 1 and 2: each soft prompt ("sasrec-seed<N>"), then
    LoRA and DELRec-SASRec ("delrec-sasrec-seed<N>" reading "sasrec-seed<N>"): the seed study of both stages."""
    cpu = _cpu()
    return replace(cpu, preset="cpu-seeds", distill=replace(cpu.distill, seeds=(1, 2)),
                   finetune=replace(cpu.finetune, seeds=(1, 2)))  # fmt: skip


def _cpu_study() -> RunConfig:
    """The cpu preset's other choices, on a copy of a finished cpu run (its teachers are reused): the index head for
    every LLM method (with notebook 07's position bias), and stage 2's untrained-prompt control."""
    cpu = _cpu()
    return replace(cpu, preset="cpu-study", llm=replace(cpu.llm, head="index"),
                   finetune=replace(cpu.finetune, variants=(*cpu.finetune.variants, "delrec-sasrec-untrained")))


# LLM-SRec's Table 8 ablations and its training-time shuffle, beside the method.
LLMSREC_VARIANTS = tuple(LLMSREC + (f"-{s}" if s else "") for s in LLMSREC_SUFFIXES)
# The ablation study: TA only, RPS only and one DELRec per teacher, each beside the no-soft-prompt LoRA variant.
ABLATION_PROMPTS = ("sasrec", "sasrec-ta", "sasrec-rps", "gru4rec", "caser")
ABLATION_VARIANTS = ("lora",) + tuple(f"delrec-{p}" for p in ABLATION_PROMPTS)
# P2Rec's ablation study: every teacher enhanced beside its no-SFT twin, and the K sweep 8/16/32 on SASRec.
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
        # P2Rec: the kit's choice for a first GPU run, the paper's settings not being public.
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
    "cpu-study": _cpu_study,
    "cpu-ablations": _cpu_ablations,
    "paper": _paper,
}


def preset_config(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; expected one of: {', '.join(PRESETS)}")
    return PRESETS[name]()
