"""DELRec's method family: the stage-2 variants (``lora``, ``delrec-<soft prompt>`` and their seeded
copies) in every table, figure and diagnostic of the evaluation, loaded from the run folder and checked
against the run's settings (``finetune``'s loaders)."""

from __future__ import annotations

import pandas as pd

from ..artifacts import artifact_id
from ..config import RunConfig, parse_prompt_name
from ..llm.ranker import ZERO_SHOT, LLMRecommender, evaluation_ranker, llm_identity, run_boundary
from ..methods import Curve, MethodContext, MethodFamily, Recommender
from .finetune import (
    SEED_SUFFIX,
    check_adapter,
    first_adapted_layer,
    is_untrained,
    load_adapter,
    load_variant_parts,
    parse_variant_name,
    seeded_names,
    variant_prompt_artifact,
    variant_soft_prompt,
)


class FinetunedFamily(MethodFamily):
    """DELRec's stage-2 variants: ``lora`` (no soft prompt) and ``delrec-<soft prompt>``."""

    def names(self, config: RunConfig) -> list[str]:
        return list(config.finetune.variants) + seeded_names(config)

    def replicate_of(self, config: RunConfig, name: str) -> tuple[str, int] | None:
        variant, seed = parse_variant_name(name)
        return None if seed is None else (variant, seed)

    def identity(self, ctx: MethodContext, name: str) -> dict[str, str]:
        soft, _, soft_id = load_variant_parts(ctx.config, ctx.paths, name, ctx.backbone, ctx.data)
        manifest = check_adapter(ctx.config, ctx.paths, name, ctx.backbone, ctx.data, soft, soft_id)
        k = 0 if soft is None else int(soft.shape[0])
        return {**llm_identity(ctx, k), "model": artifact_id(manifest)}

    def load(self, ctx: MethodContext, name: str) -> Recommender:
        soft, teacher, soft_id = load_variant_parts(ctx.config, ctx.paths, name, ctx.backbone, ctx.data)
        model = load_adapter(ctx.config, ctx.paths, name, ctx.backbone, ctx.data, soft, soft_id)
        # Adapters in the upper layers only: the layers below are the backbone's, so their states of a test
        # prompt are shared with the zero-shot LLM (no soft prompt) or the variants of the same soft prompt.
        boundary = run_boundary(ctx.config, ctx.backbone)
        first = first_adapted_layer(model)
        frozen = boundary if boundary and first is not None and first >= boundary else 0
        ranker = evaluation_ranker(ctx, ctx.backbone.with_model(model), soft, teacher, frozen, (soft_id or "no soft prompt",))
        return LLMRecommender(name, ranker)

    def comparisons(self, config: RunConfig, name: str) -> list[str]:
        variant, seed = parse_variant_name(name)
        if seed is not None:  # a seed's copy is compared with LoRA of the same seed (the seed study)
            return [] if variant == "lora" else [f"lora{SEED_SUFFIX}{seed}"]
        prompt = variant_soft_prompt(name)
        if prompt is None:
            return [ZERO_SHOT]
        if is_untrained(name):  # the control: what stage 1's training adds, and what the pattern line alone does
            trained = f"delrec-{prompt}"
            return [trained, "lora"] if trained in config.finetune.variants else ["lora"]
        teacher, _ = parse_prompt_name(prompt)
        return [teacher, "lora", ZERO_SHOT]

    def teacher(self, name: str) -> str | None:
        prompt = variant_soft_prompt(name)
        return None if prompt is None else parse_prompt_name(prompt)[0]

    def curves(self, ctx: MethodContext) -> list[Curve]:
        out = []
        prompts = dict.fromkeys(p for v in self.names(ctx.config) if (p := variant_prompt_artifact(ctx.config, v)))
        for p in [*ctx.config.distill.prompts, *prompts]:
            f = ctx.paths.distill / p / "history.csv"
            if f.is_file() and not any(c.label == p for c in out):
                out.append(Curve("03 soft-prompt distillation", p, pd.read_csv(f), "step", "fidelity", "held-out fidelity"))
        metric = ctx.config.finetune.select_metric
        for v in self.names(ctx.config):
            f = ctx.paths.finetune / v / "history.csv"
            if f.is_file():
                out.append(Curve("04 LLM fine-tuning", v, pd.read_csv(f), "step", metric, f"valid {metric} (candidates)"))
        return out
