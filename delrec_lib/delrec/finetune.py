"""DELRec stage 2: fine-tune the LLM (LoRA / AdaLoRA) to recommend, the stage-1 soft prompt frozen.

Training examples come from train positions only: target = one of the user's last train items,
history = the train items before it, candidates = the target plus ``num_negatives`` items the
user never interacted with (so never their valid or test target). The loss is the softmax
cross-entropy over the candidates' scores, exactly as in stage 1 and in evaluation. The best
step is chosen on the validation candidate sets of a seeded subset of users.

A variant is either "lora" (no soft prompt: the no-stage-1 ablation) or "delrec-<name>", which
splices stage 1's soft prompt <name> into the template, frozen. Each variant writes
``<run>/finetune/<variant>/`` with the peft adapter in its standard format
(``PeftModel.from_pretrained(backbone_model, <dir>/adapter)`` reloads it), the soft prompt it
used, curves and validation metrics.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..artifacts import (
    is_complete,
    read_json,
    read_manifest,
    require_config,
    require_inputs,
    to_jsonable,
    verify_outputs,
    write_stage_output,
)
from ..config import SEED_SUFFIX, FinetuneConfig, RunConfig, parse_prompt_name, split_seed
from ..config.names import UNTRAINED_SUFFIX
from ..data.processed import ProcessedData
from ..errors import ConfigError, DataError
from ..llm import peft_wrapping
from ..llm.prompts import TEACHER_DISPLAY, prompt_format_id
from ..llm.ranker import (
    ZERO_SHOT,
    LLMRanker,
    RecExample,
    split_examples,
)
from ..llm.scoring import layer_split_supported
from ..metrics import per_user_frame, summarize
from ..training import TrainConfig, Trainer, TrainingTask
from .soft_prompt import SoftPrompt, load_run_soft_prompt, untrained_soft_prompt

log = logging.getLogger(__name__)

ADAPTER_KIND = "finetuned-adapter"
VALID_METRICS = ("HR@1", "HR@5", "NDCG@5", "NDCG@10", "MRR")


def training_examples(data: ProcessedData, users: list[int], cfg: FinetuneConfig) -> list[RecExample]:
    """Up to ``positions_per_user`` examples per user from their train items (latest first)."""
    out = []
    for uid in users:
        train = data.train_items(uid)
        seen = data.interacted_items(uid)
        pool = np.setdiff1d(np.arange(1, data.num_items + 1), seen)
        if len(pool) < cfg.num_negatives:
            raise ConfigError(f"finetune.num_negatives={cfg.num_negatives}: user {uid} has only {len(pool)} unseen items")
        for j in range(1, cfg.positions_per_user + 1):
            if len(train) - j < 1:  # keep at least one history item
                break
            target, history = train[-j], train[:-j]
            rng = np.random.default_rng([cfg.seed, uid, j])
            cands = [target, *rng.choice(pool, size=cfg.num_negatives, replace=False).tolist()]
            order = rng.permutation(len(cands))
            cands = [int(cands[i]) for i in order]
            out.append(RecExample(uid, tuple(history), tuple(cands), cands.index(target)))
    return out


def select_users(data: ProcessedData, cfg: FinetuneConfig, max_users: int | None) -> tuple[list[int], list[int]]:
    """(training users, validation users). Validation users are a seeded subset; training uses
    every user's train positions (their valid targets are never seen by training either way)."""
    users = data.user_ids(max_users).tolist()
    rng = np.random.default_rng([cfg.seed, 11])
    shuffled = [int(u) for u in rng.permutation(users)]
    valid = sorted(shuffled[: min(cfg.valid_users, len(shuffled))])
    train = sorted(shuffled if cfg.max_train_users is None else shuffled[: cfg.max_train_users])
    return train, valid


class FinetuneTask(TrainingTask):
    def __init__(self, model, scorer: LLMRanker, train: list[RecExample], valid: list[RecExample],
                 cfg: FinetuneConfig, total_steps: int):  # fmt: skip
        self.model = model
        self.scorer = scorer
        self.train = train
        self.valid = valid
        self.cfg = cfg
        self.adalora = cfg.method == "adalora"

    def trainable_module(self):
        return self.model

    def num_examples(self):
        return len(self.train)

    def make_batch(self, indices):
        return [self.train[i] for i in indices]

    def training_loss(self, batch):
        scores = self.scorer.scores(batch)  # [B, C]
        labels = torch.tensor([e.label for e in batch], device=scores.device)
        loss = F.cross_entropy(scores.float(), labels)
        logs = {}
        if self.adalora:
            reg = adalora_orthogonal_penalty(self.model)
            logs["orth_reg"] = float(reg.detach())
            loss = loss + self.model.peft_config["default"].orth_reg_weight * reg
        return loss, logs

    def on_optimizer_step(self, step: int) -> None:
        if self.adalora:  # AdaLoRA reallocates ranks from the gradients, before they are zeroed
            self.model.base_model.update_and_allocate(step)

    def evaluate(self):
        per_user = self.scorer.evaluate(self.valid)
        return {m: float(per_user[m].mean()) for m in VALID_METRICS}

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """AdaLoRA's importance estimates, so a resumed run allocates ranks as an uninterrupted one."""
        if not self.adalora:
            return {}
        alloc = self.model.base_model.rankallocator
        out = {}
        for store in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            for name, t in getattr(alloc, store).items():
                out[f"{store}/{name}"] = t
        return out

    def restore_checkpoint_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if not self.adalora:
            return
        alloc = self.model.base_model.rankallocator
        for key, t in tensors.items():
            store, name = key.split("/", 1)
            getattr(alloc, store)[name] = t


def adalora_orthogonal_penalty(model) -> torch.Tensor:
    """AdaLoRA's orthogonality regulariser of P and Q (peft adds it only when the model computes a loss itself)."""
    terms = []
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and p.requires_grad:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            terms.append(torch.norm(cov - torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype), p="fro"))
    return torch.stack(terms).mean() if terms else torch.zeros(())


def peft_config_for(backbone, cfg: FinetuneConfig, total_steps: int):
    from peft import AdaLoraConfig, LoraConfig, TaskType

    task_type = TaskType.SEQ_2_SEQ_LM if backbone.family == "seq2seq" else TaskType.CAUSAL_LM
    modules = list(cfg.target_modules)
    if backbone.family == "seq2seq" and modules == ["q_proj", "k_proj", "v_proj", "o_proj"]:
        modules = ["q", "k", "v", "o"]  # T5's attention projections
    layers = {}
    if cfg.lora_layers is not None:
        n = num_layers(backbone)
        if backbone.family != "causal" or cfg.lora_layers > n:
            raise ConfigError(f"finetune.lora_layers={cfg.lora_layers}: " + (
                "the top layers of an encoder-decoder model are not defined; leave it unset" if backbone.family != "causal"
                else f"the backbone has {n} layers"))  # fmt: skip
        layers = {"layers_to_transform": list(range(n - cfg.lora_layers, n)), "layers_pattern": "layers"}
    if cfg.method == "adalora":
        return AdaLoraConfig(task_type=task_type, target_modules=modules, init_r=cfg.adalora_init_r,
                             target_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             tinit=cfg.adalora_tinit, tfinal=cfg.adalora_tfinal, deltaT=cfg.adalora_delta_t,
                             total_step=total_steps, **layers)  # fmt: skip
    return LoraConfig(task_type=task_type, target_modules=modules, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, **layers)  # fmt: skip


def num_layers(backbone) -> int:
    return int(backbone.base_model.config.num_hidden_layers)


def frozen_below(model, backbone, cfg: FinetuneConfig) -> int:
    """The first layer with a trainable parameter when ``finetune.lora_layers`` and ``cache_lower_layers``
    allow caching the layers below it (0: no caching). Checked on the wrapped model itself: a cached state
    from a layer that trains would be stale after the first step."""
    if cfg.lora_layers is None or not cfg.cache_lower_layers or not layer_split_supported(backbone):
        return 0
    trained = {int(m.group(1)) for n, p in model.named_parameters() if p.requires_grad
               for m in [re.search(r"\.layers\.(\d+)\.", n)] if m}  # fmt: skip
    untied = [n for n, p in model.named_parameters() if p.requires_grad and not re.search(r"\.layers\.\d+\.", n)]
    if untied or not trained:
        raise ConfigError(f"finetune.cache_lower_layers: trainable parameters outside the adapted layers ({untied[:3]})")
    return min(trained)


def train_config(cfg: FinetuneConfig) -> TrainConfig:
    return TrainConfig(
        max_epochs=10_000, max_steps=cfg.max_steps, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
        lr=cfg.lr, warmup_steps=cfg.warmup_steps, schedule="linear", max_grad_norm=1.0, eval_every=cfg.eval_every,
        metric=cfg.select_metric, greater_is_better=True, bf16=False, seed=cfg.seed, log_every=max(1, min(5, cfg.max_steps)),
    )  # fmt: skip


@dataclass
class FinetuneResult:
    variant: str
    directory: Path
    metrics: dict[str, Any]
    history: pd.DataFrame
    train_log: pd.DataFrame
    skipped: bool = False


def variant_soft_prompt(variant: str) -> str | None:
    """The stage-1 soft prompt a variant uses ("delrec-sasrec-ta" -> "sasrec-ta", "delrec-sasrec-seed1" ->
    "sasrec"), None for "lora"."""
    variant, _ = parse_variant_name(variant)
    if variant == "lora":
        return None
    if not variant.startswith("delrec-"):
        raise ConfigError(f"finetune.variants: '{variant}' is not 'lora', 'delrec-<soft prompt>' or "
                          "'delrec-<soft prompt>-untrained'")  # fmt: skip
    name = variant[len("delrec-") :].removesuffix(UNTRAINED_SUFFIX)
    parse_prompt_name(name)
    return name


def variant_prompt_artifact(config: RunConfig, variant: str) -> str | None:
    """The stage-1 artifact a variant reads: its soft prompt's, or for a seed's copy "delrec-<p>-seed<N>" the soft
    prompt trained again with seed N ("<p>-seed<N>") when N is among ``distill.seeds`` (both stages again);
    None for "lora"."""
    name = variant_soft_prompt(variant)
    seed = parse_variant_name(variant)[1]
    if name is not None and seed is not None and seed in config.distill.seeds and not is_untrained(variant):
        return f"{name}{SEED_SUFFIX}{seed}"
    return name


def is_untrained(variant: str) -> bool:
    """Whether a variant reads its soft prompt as stage 1 starts it (the untrained-prompt control)."""
    return parse_variant_name(variant)[0].endswith(UNTRAINED_SUFFIX)


def load_variant_parts(config: RunConfig, paths: Any, variant: str, backbone, data: ProcessedData):
    """(soft prompt tensor or None, teacher display name or None, soft prompt artifact id or None),
    the soft prompt checked against this run's stage-1 settings, backbone, prompt format and data."""
    name = variant_prompt_artifact(config, variant)
    if name is None:
        return None, None, None
    teacher, _ = parse_prompt_name(name)
    if is_untrained(variant):
        soft, soft_id = untrained_soft_prompt(config, backbone, name)
        return soft, TEACHER_DISPLAY.get(teacher, teacher), soft_id
    soft, soft_id = load_run_soft_prompt(config, paths, data, backbone, name)
    soft.requires_grad_(False)
    return soft.embeddings.detach(), TEACHER_DISPLAY.get(teacher, teacher), soft_id


def validation_baselines(paths: Any, data: ProcessedData, valid: list[RecExample], names: list[str]) -> dict[str, dict[str, float]]:
    """What rankings that are no LLM get on the very validation examples stage 2 selects on: each named
    exported ranking (``popularity``, a teacher) from its ``candidate_scores`` export, and chance
    (expected). Beside the stage-2 curve they tell "above chance" from "learned"."""
    from ..metrics import metrics_from_counts

    users = [e.user_id for e in valid]
    out = {}
    for name in names:
        directory = paths.teachers / name
        if not (directory / "candidate_scores.parquet").is_file():  # a run without that ranking
            continue
        manifest = read_manifest(directory)
        verify_outputs(directory, manifest)
        require_inputs(f"'{name}' exports", manifest, {"data": data.data_id}, directory)
        scores = pd.read_parquet(directory / "candidate_scores.parquet")
        rows = scores[scores["split"] == "valid"].set_index("user_id").loc[users]
        for e, cands in zip(valid, rows["candidates"], strict=True):
            if tuple(int(c) for c in cands) != e.candidates:  # the export must rank the same candidate sets
                raise DataError(f"{paths.teachers / name}: user {e.user_id}'s validation candidates differ from the run's")
        per_user = per_user_frame(users, np.stack(rows["scores"].to_numpy()), rows["target_position"].to_numpy())
        out[name] = {m: float(per_user[m].mean()) for m in VALID_METRICS}
    width = len(valid[0].candidates) if valid else 1
    chance = metrics_from_counts(np.array([0]), np.array([width - 1]))
    out["chance"] = {m: float(chance[m].iloc[0]) for m in VALID_METRICS}
    return out


# "delrec-sasrec-seed1" -> ("delrec-sasrec", 1): a variant trained again with another training seed (finetune.seeds).
parse_variant_name = split_seed


def seeded_names(config: RunConfig) -> list[str]:
    """Every variant trained again with each of ``finetune.seeds``, in variant order."""
    return [f"{v}{SEED_SUFFIX}{s}" for v in config.finetune.variants for s in config.finetune.seeds]


def finetune_stage_config(config: RunConfig, name: str) -> dict[str, Any]:
    """The settings a stage-2 variant (or a seeded copy) depends on (its manifest's config)."""
    variant, seed = parse_variant_name(name)
    cfg = dataclasses.replace(config.finetune, variants=(variant,), seeds=())
    return {"finetune": cfg, "llm": config.llm, "max_users": config.max_users, "variant": variant,
            "train_seed": cfg.seed if seed is None else seed}  # fmt: skip


def finetune_inputs(data: ProcessedData, backbone, llm_config: Any, soft: torch.Tensor | None, soft_id: str | None) -> dict[str, str]:
    k = 0 if soft is None else int(soft.shape[0])
    inputs = {"data": data.data_id, "backbone": backbone.identity, "template": prompt_format_id(backbone, llm_config, k)}
    if soft_id is not None:
        inputs["soft_prompt"] = soft_id
    return inputs


def load_finetuned(directory: Path) -> FinetuneResult:
    return FinetuneResult(
        variant=directory.name, directory=directory, metrics=read_json(directory / "metrics.json"),
        history=pd.read_csv(directory / "history.csv"), train_log=pd.read_csv(directory / "train_log.csv"), skipped=True,
    )  # fmt: skip


def run_finetuning(
    config: RunConfig, paths: Any, data: ProcessedData, backbone, variant: str, *, progress: bool = True, callbacks=()
) -> FinetuneResult:
    """Stage 2 for one variant: writes ``<run>/finetune/<variant>/`` (skipped when up to date).

    A seeded name (``<variant>-seed<N>``, ``finetune.seeds``) trains the variant again with training seed
    N: another adapter initialisation, example order, dropout and training negatives; the same training
    users and validation users (chosen by ``finetune.seed``), so seeds differ only in the training's chance.
    """
    from peft import get_peft_model

    stage_config = finetune_stage_config(config, variant)
    base = stage_config["finetune"]
    cfg = dataclasses.replace(base, seed=stage_config["train_seed"])
    soft, teacher, soft_id = load_variant_parts(config, paths, variant, backbone, data)
    inputs = finetune_inputs(data, backbone, config.llm, soft, soft_id)
    out_dir = paths.finetune / variant
    if is_complete(out_dir, ADAPTER_KIND, inputs=inputs, config=stage_config):
        log.info("%s is up to date", out_dir)
        return load_finetuned(out_dir)

    train_users, valid_users = select_users(data, base, config.max_users)
    train = training_examples(data, train_users, cfg)
    valid = split_examples(data, "valid", valid_users)
    if not train:
        raise DataError("stage 2: no training examples (users need at least two train items)")
    tcfg = train_config(cfg)
    # Each variant starts from the same untouched base weights (peft injects adapters in place),
    # and from the same seeded adapter initialisation, whatever ran before in this process.
    torch.manual_seed(cfg.seed)
    with peft_wrapping():
        model = get_peft_model(copy.deepcopy(backbone.model), peft_config_for(backbone, cfg, tcfg.max_steps))
    tuned = backbone.with_model(model)
    scorer = LLMRanker(tuned, config.llm, data.titles, soft, teacher, frozen_below=frozen_below(model, tuned, cfg))
    task = FinetuneTask(model, scorer, train, valid, cfg, tcfg.max_steps)

    start = time.perf_counter()
    model.eval()
    before = scorer.evaluate(valid)
    trainer = Trainer(tcfg, task, paths.finetune / ".checkpoints" / variant, desc=f"finetune {variant}",
                      progress=progress, callbacks=callbacks, identity={"inputs": inputs, "config": stage_config})  # fmt: skip
    result = trainer.train()
    trainer.load_best()
    model.eval()
    seconds = time.perf_counter() - start

    history = pd.DataFrame([{"step": 0, **{m: float(before[m].mean()) for m in VALID_METRICS}}, *result.history])
    # The x of a learning curve: training examples seen (visits; an epoch visits every example once).
    history.insert(1, "examples_seen", history["step"] * cfg.batch_size * cfg.grad_accum * result.processes)
    best = history[history["step"] == result.best_step].iloc[-1] if result.best_step is not None else history.iloc[-1]
    metrics = {
        "variant": variant,
        "train_seed": cfg.seed,
        "soft_prompt": variant_prompt_artifact(config, variant),
        "method": cfg.method,
        "train_examples": len(train),
        "valid_users": len(valid),
        "steps": result.steps,
        "best_step": result.best_step,
        "processes": result.processes,  # the global batch is processes x batch_size
        "seconds": round(seconds, 1),
        "valid_before": summarize(before).to_dict(orient="index"),
        "valid_best": {m: float(best[m]) for m in VALID_METRICS},
        # The same validation examples ranked by popularity, the teachers and chance.
        "valid_baselines": validation_baselines(paths, data, valid, ["popularity", *config.teachers.models]),
        "trainable_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
    }
    if trainer.is_main_process:  # every process holds the same adapter; one writes it
        with write_stage_output(out_dir, ADAPTER_KIND, inputs=inputs, config=stage_config, extra={"variant": variant}) as tmp:
            model.save_pretrained(str(tmp / "adapter"))
            if soft is not None and is_untrained(variant):
                SoftPrompt(soft).save(tmp / "soft_prompt.safetensors", {"untrained": variant_soft_prompt(variant), "id": soft_id})
            elif soft is not None:
                (tmp / "soft_prompt.safetensors").write_bytes((paths.distill / variant_prompt_artifact(config, variant) / "soft_prompt.safetensors").read_bytes())
            history.to_csv(tmp / "history.csv", index=False)
            pd.DataFrame(result.train_log).to_csv(tmp / "train_log.csv", index=False)
            (tmp / "metrics.json").write_text(json.dumps(to_jsonable(metrics), indent=2) + "\n")
    trainer.wait_for_everyone()
    return FinetuneResult(variant, out_dir, metrics, history, pd.DataFrame(result.train_log))


def load_recommender(
    paths: Any, variant: str, backbone, data: ProcessedData, config: RunConfig, *, adapter: bool = True
) -> LLMRanker:
    """A fine-tuned variant ready to rank candidates, checked against this run's data and settings;
    "zero-shot" is the untouched backbone, and ``adapter=False`` gives the variant's prompt (and soft
    prompt) on the base model, i.e. before stage 2."""
    if variant == ZERO_SHOT:
        return LLMRanker(backbone, config.llm, data.titles, None, None)
    soft, teacher, soft_id = load_variant_parts(config, paths, variant, backbone, data)
    if not adapter:
        return LLMRanker(backbone, config.llm, data.titles, soft, teacher)
    return LLMRanker(backbone.with_model(load_adapter(config, paths, variant, backbone, data, soft, soft_id)), config.llm,
                     data.titles, soft, teacher)  # fmt: skip


def load_adapter(config: RunConfig, paths: Any, variant: str, backbone, data: ProcessedData, soft, soft_id):
    """The backbone with the variant's trained adapter (a copy: the backbone stays untouched), in eval mode."""
    from peft import PeftModel

    check_adapter(config, paths, variant, backbone, data, soft, soft_id)
    with peft_wrapping():
        model = PeftModel.from_pretrained(copy.deepcopy(backbone.model), str(paths.finetune / variant / "adapter"))
    return model.eval()


def first_adapted_layer(model) -> int | None:
    """The lowest layer index holding an adapter (None: an adapter outside the numbered layers, or none)."""
    layers = set()
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and len(module.lora_A):
            m = re.search(r"\.layers\.(\d+)\.", name)
            if m is None:
                return None
            layers.add(int(m.group(1)))
    return min(layers) if layers else None


def check_adapter(config: RunConfig, paths: Any, variant: str, backbone, data: ProcessedData, soft, soft_id) -> dict:
    """The variant's manifest, refused unless made from these inputs with this run's stage-2 settings."""
    directory = paths.finetune / variant
    manifest = read_manifest(directory, ADAPTER_KIND)
    verify_outputs(directory, manifest)
    require_inputs(f"fine-tuned '{variant}'", manifest, finetune_inputs(data, backbone, config.llm, soft, soft_id), directory)
    require_config(f"fine-tuned '{variant}'", manifest, finetune_stage_config(config, variant), directory,
                   "Re-run stage 2 (notebook 04 or `python -m delrec_lib finetune`) with this run's settings.")  # fmt: skip
    return manifest


def worked_example(scorers: dict[str, LLMRanker], example: RecExample, titles: list[str]) -> pd.DataFrame:
    """One example's candidates with each scorer's score and rank (1 = recommended first)."""
    rows = pd.DataFrame({"candidate": [titles[i] for i in example.candidates],
                         "target": ["<- next item" if i == example.label else "" for i in range(len(example.candidates))]})  # fmt: skip
    for name, scorer in scorers.items():
        with torch.no_grad():
            s = scorer.scores([example])[0].float().cpu().numpy()
        rows[f"score ({name})"] = s.round(3)
        rows[f"rank ({name})"] = (-s).argsort().argsort() + 1
    return rows.sort_values(f"rank ({list(scorers)[-1]})").reset_index(drop=True)
