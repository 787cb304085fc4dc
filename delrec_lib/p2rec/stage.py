"""The P2Rec stage: categories and SFT, item states, enhanced teachers and the seed study, as artifacts.

``outputs/<run>/p2rec/`` (every folder written atomically, manifest last):

=============================== ==============================================================
``sft-<source>-k<K>/``          the tuned LLM: ``adapter/`` (peft), ``head.safetensors``,
                                ``categories.parquet`` (item_id, category), ``centroids.safetensors``,
                                ``targets.parquet`` (user_id, role train/heldout, target, prediction
                                for held-out users), ``history.csv`` (held-out loss per evaluation),
                                ``train_log.csv``, ``item_states.safetensors`` (every item alone through
                                the tuned LLM), ``metrics.json``
``llm-base/``                   ``item_states.safetensors`` of the LLM without SFT (the no-SFT ablation)
``p2rec-<teacher>[-...]/``      an enhanced teacher: the teacher exports of ``teachers/stage.py`` (model,
                                config, metrics, per-user metrics, top-k, candidate scores, curves) plus
                                ``init.safetensors``, the LLM-derived initial table(s)
``seeds/<teacher>-s<seed>/``    the seed study's plain teacher (random initialisation) with another seed
``seeds/<method>-s<seed>/``     and its enhanced twin: same spec and seed, only the item table differs
=============================== ==============================================================

A finished folder whose manifest matches the data, inputs and settings is skipped; what changed is
computed again. Nothing here reads a valid or test target except the teachers' own early stopping on
the validation split, exactly as the plain teachers do.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from ..artifacts import (
    RunPaths,
    artifact_id,
    atomic_write_json,
    is_complete,
    read_json,
    read_manifest,
    require_inputs,
    sha256_json,
    to_jsonable,
    verify_outputs,
    write_stage_output,
)
from ..config import P2RecConfig, P2RecVariant, RunConfig, parse_p2rec_variant
from ..data import ProcessedData
from ..errors import ConfigError, StaleArtifactError
from ..llm import Backbone, peft_wrapping
from ..teachers import build_model, export_model, fit, load_teacher, teacher_spec
from ..teachers.base import SequentialRecommender
from ..teachers.stage import torch_threads
from ..training import TrainConfig, Trainer
from .augment import apply_initialisation, llm_initialisation
from .categories import LatentCategories, latent_categories, shown_items, train_item_ids, user_targets
from .sft import (
    PREFERENCE_TEMPLATE,
    PreferenceModel,
    PreferencePrompts,
    PreferenceTask,
    distribution_metrics,
    item_states,
)

log = logging.getLogger(__name__)

SFT_KIND = "p2rec-sft"
STATES_KIND = "p2rec-item-states"
TEACHER_KIND = "p2rec-teacher"
BASE_STATES = "llm-base"
SEEDS = "seeds"
# What an SFT depends on (besides K, the data, the source teacher and the backbone).
SFT_FIELDS = ("source_teacher", "kmeans_restarts", "target_scope", "history_len", "loss", "lora_r", "lora_alpha",
              "lora_dropout", "target_modules", "heldout_users", "max_train_users", "seed", "epochs", "max_steps",
              "batch_size", "grad_accum", "lr", "warmup_steps", "eval_every")  # fmt: skip
# The LLM settings a preference prompt depends on.
LLM_FIELDS = ("backbone", "dtype", "title_max_tokens", "title_style", "max_prompt_tokens")


# -- names and settings ----------------------------------------------------------------------------


def sft_name(cfg: P2RecConfig, k: int) -> str:
    return f"sft-{cfg.source_teacher}-k{k}"


def num_categories(config: RunConfig, variant: P2RecVariant) -> int:
    return variant.num_categories or config.p2rec.num_categories


def states_name(config: RunConfig, variant: P2RecVariant) -> str:
    """The folder of the item states ``variant`` is initialised from."""
    return sft_name(config.p2rec, num_categories(config, variant)) if variant.sft else BASE_STATES


def states_config(config: RunConfig, variant: P2RecVariant) -> dict[str, Any]:
    """Everything the item states of ``variant`` depend on, from the configuration alone."""
    base = {"template": PREFERENCE_TEMPLATE, "llm": {f: getattr(config.llm, f) for f in LLM_FIELDS}}
    if not variant.sft:
        return {"source": "llm", **base}
    sft = {f: getattr(config.p2rec, f) for f in SFT_FIELDS}
    return {"source": "sft", "k": num_categories(config, variant), "sft": sft, "max_users": config.max_users, **base}


def method_spec(config: RunConfig, data: ProcessedData, teacher: str, seed: int | None = None) -> dict[str, Any]:
    """The teacher's spec of the run (that of notebook 02's plain teacher), with another seed if given."""
    spec = teacher_spec(teacher, config.teachers, data)
    return spec if seed is None else {**spec, "seed": int(seed)}


def method_config(config: RunConfig, data: ProcessedData, variant: P2RecVariant | None, teacher: str,
                  seed: int | None = None) -> dict[str, Any]:  # fmt: skip
    """An enhanced teacher's settings (its manifest's config): the plain spec and how its table starts.
    ``variant=None``: random initialisation, i.e. the plain teacher."""
    spec = method_spec(config, data, teacher, seed)
    if variant is None:
        return {"spec": spec, "init": "random"}
    cfg = config.p2rec
    init = {"states": states_name(config, variant), "states_config": states_config(config, variant),
            "whiten": cfg.whiten, "scale": cfg.scale}  # fmt: skip
    if teacher == "caser":
        init["caser_table"] = cfg.caser_table
    return {"spec": spec, "init": init}


# -- results -------------------------------------------------------------------------------------


@dataclass
class SFTResult:
    name: str
    directory: Path
    metrics: dict[str, Any]
    skipped: bool = False


@dataclass
class EnhancedResult:
    name: str  # the method name, or "<teacher>-s<seed>" / "<method>-s<seed>" in the seed study
    directory: Path
    metrics: dict[str, Any]
    skipped: bool = False


# -- SFT -----------------------------------------------------------------------------------------


def split_users(config: RunConfig, data: ProcessedData) -> tuple[list[int], list[int]]:
    """(SFT training users, held-out users): a seeded split of the run's users."""
    cfg = config.p2rec
    users = [int(u) for u in data.user_ids(config.max_users)]
    rng = np.random.default_rng([cfg.seed, 14])
    shuffled = [int(u) for u in rng.permutation(users)]
    n_held = min(cfg.heldout_users, max(0, len(users) - 1))
    held, rest = sorted(shuffled[:n_held]), shuffled[n_held:]
    train = sorted(rest if cfg.max_train_users is None else rest[: cfg.max_train_users])
    return train, held


def source_categories(config: RunConfig, paths: RunPaths, data: ProcessedData, k: int) -> tuple[LatentCategories, str]:
    """k-means categories of the run's source teacher, and that teacher's artifact id."""
    loaded = load_teacher(paths.teachers / config.p2rec.source_teacher, data, config.teachers)
    table = loaded.model.item_embeddings().detach()
    cats = latent_categories(table, train_item_ids(data), k, seed=config.p2rec.seed, restarts=config.p2rec.kmeans_restarts)
    return cats, artifact_id(loaded.manifest)


def peft_model(backbone: Backbone, cfg: P2RecConfig):
    """A LoRA-wrapped copy of the backbone (the shared backbone stays untouched)."""
    from peft import LoraConfig, get_peft_model

    modules = list(cfg.target_modules)
    if backbone.family == "seq2seq" and modules == ["q_proj", "k_proj", "v_proj", "o_proj"]:
        modules = ["q", "k", "v", "o"]  # T5's attention projections
    lora = LoraConfig(target_modules=modules, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout)
    with peft_wrapping():
        return get_peft_model(copy.deepcopy(backbone.model), lora)


def sft_train_config(cfg: P2RecConfig) -> TrainConfig:
    # max_steps, when set, decides alone (it may span several epochs); otherwise whole epochs.
    return TrainConfig(
        max_epochs=cfg.epochs if cfg.max_steps is None else 10_000, max_steps=cfg.max_steps, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
        lr=cfg.lr, schedule="linear", warmup_steps=cfg.warmup_steps, max_grad_norm=1.0, eval_every=cfg.eval_every,
        eval_at_start=True, metric="loss", greater_is_better=False, seed=cfg.seed, log_every=5,
    )  # fmt: skip


def run_sft(config: RunConfig, paths: RunPaths, data: ProcessedData, backbone: Backbone, k: int, *,
            progress: bool = True, callbacks=()) -> SFTResult:  # fmt: skip
    """Categories, user targets and the user-level SFT with K = ``k``; writes ``p2rec/sft-<source>-k<K>/``."""
    cfg = config.p2rec
    variant = P2RecVariant(f"p2rec-{cfg.source_teacher}-k{k}", cfg.source_teacher, True, k)
    name = sft_name(cfg, k)
    out = paths.p2rec / name
    prompts = PreferencePrompts(backbone, config.llm, data.titles, cfg.history_len)
    source_id = artifact_id(read_manifest(paths.teachers / cfg.source_teacher))
    inputs = {"data": data.data_id, "source_teacher": source_id, "backbone": backbone.identity,
              "prompt": prompts.fingerprint()}  # fmt: skip
    stage_config = states_config(config, variant)
    if is_complete(out, SFT_KIND, inputs=inputs, config=stage_config):
        return SFTResult(name, out, read_json(out / "metrics.json"), skipped=True)

    cats, _ = source_categories(config, paths, data, k)
    train_users, held_users = split_users(config, data)
    scope = dict(scope=cfg.target_scope, history_len=cfg.history_len)
    train_t = user_targets(data, train_users, cats, **scope)
    held_t = user_targets(data, held_users, cats, **scope)
    prior = train_t.mean(0)
    train_ids = [prompts.ids(shown_items(data, u, cfg.history_len)) for u in train_users]
    held_ids = [prompts.ids(shown_items(data, u, cfg.history_len)) for u in held_users]

    # The adapter's and the head's initialisation are seeded, whatever ran before in this process.
    torch.manual_seed(cfg.seed)
    model = PreferenceModel(backbone, peft_model(backbone, cfg), prior)
    task = PreferenceTask(model, train_ids, train_t, held_ids, held_t, cfg.loss)
    tcfg = sft_train_config(cfg)
    ckpt = paths.p2rec / ".checkpoints" / name
    trainer = Trainer(tcfg, task, ckpt, desc=f"p2rec {name}", progress=progress, callbacks=callbacks,
                      identity={"inputs": inputs, "config": stage_config})  # fmt: skip
    result = trainer.train()
    trainer.load_best()
    model.eval()
    held_pred = task.predict(held_ids)
    start = time.perf_counter()
    states = item_states(backbone, model.llm, prompts, data.num_items, batch_size=cfg.item_batch_size, progress=progress)
    states_seconds = time.perf_counter() - start

    history = pd.DataFrame(result.history)
    tokens = sum(len(r) for r in train_ids) / max(1, len(train_ids))
    metrics = {
        "name": name, "k": k, "source_teacher": cfg.source_teacher, "loss": cfg.loss, "target_scope": cfg.target_scope,
        "train_users": len(train_users), "heldout_users": len(held_users),
        "steps": result.steps, "epochs": result.epochs_completed, "best_step": result.best_step,
        "train_seconds": round(result.seconds, 1), "states_seconds": round(states_seconds, 1),
        "mean_prompt_tokens": round(tokens, 1), "item_prompt_tokens": round(float(np.mean([len(prompts.ids([i])) for i in range(1, min(50, data.num_items) + 1)])), 1),
        "heldout_prior": distribution_metrics(np.repeat(prior[None], len(held_users), 0), held_t),
        "heldout_uniform": distribution_metrics(np.full_like(held_t, 1.0 / k), held_t),
        "heldout_best": distribution_metrics(held_pred, held_t),
        "category_sizes": np.bincount(cats.labels[cats.labels >= 0], minlength=k).tolist(),
        "kmeans_inertia": cats.inertia,
        "trainable_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
    }  # fmt: skip
    with write_stage_output(out, SFT_KIND, inputs=inputs, config=stage_config, extra={"name": name}) as tmp:
        model.llm.save_pretrained(str(tmp / "adapter"))
        save_file({"weight": model.head.weight.detach().cpu().contiguous(), "bias": model.head.bias.detach().cpu().contiguous()},
                  str(tmp / "head.safetensors"))  # fmt: skip
        cats.frame(data.titles)[["item_id", "category"]].to_parquet(tmp / "categories.parquet", index=False)
        save_file({"centroids": torch.from_numpy(cats.centroids)}, str(tmp / "centroids.safetensors"))
        pd.DataFrame({
            "user_id": np.array(train_users + held_users, dtype=np.int32),
            "role": ["train"] * len(train_users) + ["heldout"] * len(held_users),
            "target": [*train_t, *held_t],
            "prediction": [None] * len(train_users) + list(held_pred),
        }).to_parquet(tmp / "targets.parquet", index=False)  # fmt: skip
        history.to_csv(tmp / "history.csv", index=False)
        pd.DataFrame(result.train_log).to_csv(tmp / "train_log.csv", index=False)
        save_file({"states": states}, str(tmp / "item_states.safetensors"))
        atomic_write_json(tmp / "metrics.json", metrics)
    shutil.rmtree(ckpt, ignore_errors=True)
    return SFTResult(name, out, to_jsonable(metrics))


def run_base_states(config: RunConfig, paths: RunPaths, data: ProcessedData, backbone: Backbone, *,
                    progress: bool = True) -> SFTResult:  # fmt: skip
    """Item states of the LLM as it is (no SFT, no training step): ``p2rec/llm-base/``."""
    out = paths.p2rec / BASE_STATES
    prompts = PreferencePrompts(backbone, config.llm, data.titles, 1)
    inputs = {"data": data.data_id, "backbone": backbone.identity, "prompt": prompts.fingerprint()}
    stage_config = states_config(config, P2RecVariant("", config.p2rec.source_teacher, False, None))
    if is_complete(out, STATES_KIND, inputs=inputs, config=stage_config):
        return SFTResult(BASE_STATES, out, read_json(out / "metrics.json"), skipped=True)
    start = time.perf_counter()
    states = item_states(backbone, backbone.model, prompts, data.num_items, batch_size=config.p2rec.item_batch_size,
                         progress=progress)  # fmt: skip
    metrics = {"name": BASE_STATES, "states_seconds": round(time.perf_counter() - start, 1), "items": data.num_items}
    with write_stage_output(out, STATES_KIND, inputs=inputs, config=stage_config, extra={"name": BASE_STATES}) as tmp:
        save_file({"states": states}, str(tmp / "item_states.safetensors"))
        atomic_write_json(tmp / "metrics.json", metrics)
    return SFTResult(BASE_STATES, out, metrics)


def read_states(directory: Path, data: ProcessedData) -> tuple[torch.Tensor, str]:
    """(item states [N+1, H], artifact id) of an SFT or base-LLM folder, checked against its manifest."""
    manifest = read_manifest(directory)
    if manifest["kind"] not in (SFT_KIND, STATES_KIND):
        raise StaleArtifactError(f"{directory}: holds a '{manifest['kind']}' artifact, expected P2Rec item states")
    verify_outputs(directory, manifest)
    require_inputs(f"P2Rec item states '{directory.name}'", manifest, {"data": data.data_id}, directory)
    return load_file(str(directory / "item_states.safetensors"))["states"], artifact_id(manifest)


# -- enhanced teachers ------------------------------------------------------------------------------


def enhance(config: RunConfig, paths: RunPaths, data: ProcessedData, name: str, teacher: str,
            variant: P2RecVariant | None, out: Path, *, seed: int | None = None, progress: bool = True) -> EnhancedResult:  # fmt: skip
    """Train ``teacher`` from a fresh model whose item table starts from ``variant``'s item states
    (``variant=None``: as built, i.e. the plain teacher), through the teachers' own ``fit`` (same spec,
    seed and early stopping as notebook 02), and export it as notebook 02 exports a teacher."""
    spec = method_spec(config, data, teacher, seed)
    stage_config = method_config(config, data, variant, teacher, seed)
    inputs = {"data": data.data_id}
    states = None
    if variant is not None:
        states, inputs["item_states"] = read_states(paths.p2rec / states_name(config, variant), data)
    if is_complete(out, TEACHER_KIND, inputs=inputs, config=stage_config):
        return EnhancedResult(name, out, read_json(out / "metrics.json"), skipped=True)
    model = build_model(spec)
    tables: dict[str, torch.Tensor] = {}
    if states is not None:
        cfg = config.p2rec
        tables = llm_initialisation(model, states, teacher, whiten=cfg.whiten, scale=cfg.scale, caser_table=cfg.caser_table)
        apply_initialisation(model, tables)
    ckpt = paths.p2rec / ".checkpoints" / f"{out.name}-{sha256_json({'config': stage_config, 'inputs': inputs})[:12]}"
    with torch_threads(config.teachers.threads):
        result, examples = fit(model, spec, data, ckpt, progress=progress)
        with write_stage_output(out, TEACHER_KIND, inputs=inputs, config=stage_config, extra={"method": name}) as tmp:
            metrics = export_model(model, spec, data, tmp, result, examples)
            metrics.update(method=name, seed=spec["seed"], init="random" if variant is None else states_name(config, variant))
            atomic_write_json(tmp / "metrics.json", metrics)
            if tables:
                save_file({k: v.detach().cpu().contiguous() for k, v in tables.items()}, str(tmp / "init.safetensors"))
    shutil.rmtree(ckpt, ignore_errors=True)
    return EnhancedResult(name, out, to_jsonable(metrics))


@dataclass
class LoadedEnhanced:
    name: str
    model: SequentialRecommender
    manifest: dict[str, Any]
    directory: Path


def load_enhanced(directory: Path, data: ProcessedData, expected_config: dict[str, Any] | None = None) -> LoadedEnhanced:
    """An enhanced teacher ready to score, refusing one made from other data or (when given) other settings."""
    directory = Path(directory)
    manifest = read_manifest(directory, TEACHER_KIND)
    verify_outputs(directory, manifest)
    require_inputs(f"P2Rec teacher '{directory.name}'", manifest, {"data": data.data_id}, directory)
    if expected_config is not None and manifest.get("config_hash") != sha256_json(expected_config):
        recorded = manifest.get("config") or {}
        diff = sorted(k for k in set(expected_config) | set(recorded) if expected_config.get(k) != recorded.get(k))
        raise StaleArtifactError(
            f"{directory}: trained with other settings than this run's (differing: {', '.join(diff)}). Re-run "
            "notebook 06 or `python -m delrec_lib p2rec` to train it again."
        )
    spec = read_json(directory / "config.json")["spec"]
    model = build_model(spec)
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    model.eval()
    return LoadedEnhanced(directory.name, model, manifest, directory)


# -- the stage -----------------------------------------------------------------------------------


@dataclass
class P2RecRun:
    sft: dict[str, SFTResult]  # by folder name (sft-<source>-k<K>, llm-base)
    methods: dict[str, EnhancedResult]  # by method name
    seeds: dict[str, EnhancedResult]  # seed study, by folder name under seeds/


def run_p2rec(config: RunConfig, paths: RunPaths, data: ProcessedData, backbone: Backbone, *,
              variants: tuple[str, ...] | None = None, seed_study: bool = True, progress: bool = True) -> P2RecRun:  # fmt: skip
    """The whole stage for ``variants`` (default: the run's), then the seed study (finished parts skipped)."""
    cfg = config.p2rec
    parsed = [parse_p2rec_variant(v) for v in (variants if variants is not None else cfg.variants)]
    if not parsed:
        raise ConfigError(f"p2rec.variants is empty in the {config.preset} preset: it trains no P2Rec method (the cpu "
                          "preset leaves P2Rec to cpu-ablations); set [p2rec] variants, or run with --preset cpu-ablations")  # fmt: skip
    run = P2RecRun({}, {}, {})
    for v in parsed:
        name = states_name(config, v)
        if name in run.sft:
            continue
        start = time.perf_counter()
        if v.sft:
            run.sft[name] = run_sft(config, paths, data, backbone, num_categories(config, v), progress=progress)
        else:
            run.sft[name] = run_base_states(config, paths, data, backbone, progress=progress)
        _say(name, run.sft[name].skipped, start)
    for v in parsed:
        start = time.perf_counter()
        run.methods[v.name] = enhance(config, paths, data, v.name, v.teacher, v, paths.p2rec / v.name, progress=progress)
        _say(v.name, run.methods[v.name].skipped, start)
    if seed_study:
        for v in parsed:
            if v.name not in cfg.seed_study_variants():
                continue
            for seed in cfg.seeds:
                for name, arm in ((f"{v.teacher}-s{seed}", None), (f"{v.name}-s{seed}", v)):
                    if name in run.seeds:
                        continue
                    start = time.perf_counter()
                    run.seeds[name] = enhance(config, paths, data, name, v.teacher, arm, paths.p2rec / SEEDS / name,
                                              seed=seed, progress=progress)  # fmt: skip
                    _say(f"{SEEDS}/{name}", run.seeds[name].skipped, start)
    return run


def _say(what: str, skipped: bool, start: float) -> None:
    status = "up to date, skipped" if skipped else f"done in {time.perf_counter() - start:.0f} s"
    print(f"[p2rec] {what}: {status}", flush=True)
