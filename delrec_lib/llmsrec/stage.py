"""The LLM-SRec stage: training examples, the training task, and ``outputs/<run>/llmsrec/<variant>/``.

Each variant folder (written atomically, manifest last) holds ``heads.safetensors`` (the trainable
parts: f_I, f_user, f_item, f_CF and the two token vectors), ``history.csv`` (validation metrics and the
user/teacher cosine at every evaluation, step 0 included), ``train_log.csv`` (the three losses),
``metrics.json`` and ``examples.json`` (a rendered user and item prompt). A finished folder whose
manifest matches the data, teacher, backbone and settings is skipped.

Training reads train items only: one example per user, target = the last train item, history = the
train items before it (the LLM sees the latest ``history_len``, the teacher its own window), negatives
uniform among the items the user never interacted with (the protocol's rule; the one place where a
user's valid and test targets enter, as part of all their interactions). Validation candidate sets of
a seeded subset of users select the step; the test split is never read here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..artifacts import (
    RunPaths,
    artifact_id,
    is_complete,
    read_json,
    read_manifest,
    require_config,
    require_inputs,
    to_jsonable,
    verify_outputs,
    write_stage_output,
)
from ..config import LLMSRecConfig, LLMSRecVariant, RunConfig, parse_llmsrec_variant
from ..data.processed import ProcessedData
from ..errors import ConfigError, DataError
from ..metrics import per_user_metrics
from ..teachers import left_pad, load_teacher
from ..teachers.base import SequentialRecommender
from ..training import TrainConfig, Trainer, TrainingTask
from .model import LLMSRec, SlotPrompt, encode_slots, item_prompt_text, losses, user_prompt_text

log = logging.getLogger(__name__)

HEADS_KIND = "llmsrec-heads"
METRICS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")


@dataclass(frozen=True)
class SRecExample:
    """One training example in item ids: ``target`` follows ``history`` (oldest first)."""

    user_id: int
    history: tuple[int, ...]
    target: int
    negatives: tuple[int, ...]


def training_examples(data: ProcessedData, users: list[int], cfg: LLMSRecConfig, *, shuffled: bool = False) -> list[SRecExample]:
    """One example per user from their train items: the last one is the target. ``shuffled``
    permutes each history (seeded per user): the training-time shuffle of the paper's diagnostic."""
    out = []
    for uid in users:
        train = data.train_items(uid)
        if len(train) < 2:
            continue
        history = list(train[:-1])
        if shuffled:
            history = [history[i] for i in np.random.default_rng([cfg.seed, uid, 5]).permutation(len(history))]
        pool = np.setdiff1d(np.arange(1, data.num_items + 1), data.interacted_items(uid))
        if len(pool) < cfg.num_negatives:
            raise ConfigError(f"llmsrec.num_negatives={cfg.num_negatives}: user {uid} has only {len(pool)} unseen items")
        negatives = np.random.default_rng([cfg.seed, uid, 3]).choice(pool, size=cfg.num_negatives, replace=False)
        out.append(SRecExample(int(uid), tuple(int(i) for i in history), int(train[-1]), tuple(int(i) for i in negatives)))
    return out


def select_users(data: ProcessedData, cfg: LLMSRecConfig, max_users: int | None) -> tuple[list[int], list[int]]:
    """(training users, validation users): every user trains on train items; a seeded subset validates."""
    users = data.user_ids(max_users).tolist()
    rng = np.random.default_rng([cfg.seed, 13])
    shuffled = [int(u) for u in rng.permutation(users)]
    valid = sorted(shuffled[: min(cfg.valid_users, len(shuffled))])
    train = sorted(shuffled if cfg.max_train_users is None else shuffled[: cfg.max_train_users])
    return train, valid


class Prompts:
    """Renders and tokenizes the user and item prompts (items once each). A history's window keeps its
    positions' dates: the k-th shown item gets the k-th earliest timestamp of the window's items, so a
    shuffled history changes which title sits where, never the dates (which would tell the order)."""

    def __init__(self, backbone, data: ProcessedData, cfg: LLMSRecConfig, title_style: str):
        self.tokenizer, self.pad_id = backbone.tokenizer, backbone.tokenizer.pad_token_id
        self.data, self.cfg = data, cfg
        self.titles = data.display_titles(title_style)
        self._items: dict[int, SlotPrompt] = {}
        self._times: dict[int, dict[int, int]] = {}

    def window(self, history) -> list[int]:
        return [int(i) for i in history][-self.cfg.history_len :] if self.cfg.history_len else []

    def user(self, user_id: int, history) -> SlotPrompt:
        shown = self.window(history)
        times = None
        if self.cfg.time_format == "date":
            if user_id not in self._times:
                self._times[user_id] = self.data.item_times(user_id)
            stamps = self._times[user_id]
            missing = [i for i in shown if i not in stamps]
            if missing:
                raise DataError(f"LLM-SRec: user {user_id} has no interaction with items {missing[:5]} of the history given")
            times = sorted(stamps[i] for i in shown)
        return encode_slots(self.tokenizer, user_prompt_text([self.titles[i] for i in shown], times), shown, self.pad_id)

    def item(self, item: int) -> SlotPrompt:
        if item not in self._items:
            self._items[item] = encode_slots(self.tokenizer, item_prompt_text(self.titles[item]), [item], self.pad_id)
        return self._items[item]


def teacher_representations(teacher: SequentialRecommender, users, histories, *, dropout: bool = False,
                            batch_size: int = 256) -> torch.Tensor:  # fmt: skip
    """[U, d_t] o_u: the teacher's user representation after each history (its own window), no grad."""
    was = teacher.training
    teacher.train(dropout)
    out = []
    window = teacher.max_len
    with torch.no_grad():
        for s in range(0, len(histories), batch_size):
            items = left_pad([list(h) for h in histories[s : s + batch_size]], window)
            u = torch.as_tensor(np.asarray(users[s : s + batch_size]), dtype=torch.long)
            out.append(teacher.user_representation(items, u).float())
    teacher.train(was)
    return torch.cat(out) if out else torch.empty(0, 0)


def _batched(fn, prompts: list[SlotPrompt], batch_size: int, progress: str | None = None) -> torch.Tensor:
    # Similar lengths together waste little padding; the result comes back in the given order.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].ids))
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=progress, unit="batch")
    parts = [fn([prompts[i] for i in order[s : s + batch_size]]) for s in starts]
    out = torch.cat(parts)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return out[inverse]


class Scorer:
    """User and item vectors of a trained (or training) LLM-SRec, for ranking."""

    def __init__(self, model: LLMSRec, prompts: Prompts, batch_size: int):
        self.model, self.prompts, self.batch_size = model, prompts, batch_size

    @torch.no_grad()
    def users(self, users, histories, progress: bool = False) -> torch.Tensor:
        prompts = [self.prompts.user(int(u), h) for u, h in zip(users, histories, strict=True)]
        return _batched(self.model.user_vectors, prompts, self.batch_size, "user vectors" if progress else None)

    @torch.no_grad()
    def items(self, items, progress: bool = False) -> torch.Tensor:
        prompts = [self.prompts.item(int(i)) for i in items]
        return _batched(self.model.item_vectors, prompts, self.batch_size * 4, "item vectors" if progress else None)

    def candidates(self, users, histories, candidates: np.ndarray, user_vectors: torch.Tensor | None = None) -> np.ndarray:
        """[U, C] scores of each user's candidates (item vectors computed once per distinct item; the users'
        vectors computed here unless given)."""
        candidates = np.asarray(candidates, dtype=np.int64)
        distinct, inverse = np.unique(candidates, return_inverse=True)
        table = self.items(distinct.tolist())  # [I, D]
        u = self.users(users, histories) if user_vectors is None else user_vectors  # [U, D]
        cand = table[torch.as_tensor(inverse.reshape(candidates.shape))]  # [U, C, D]
        return torch.einsum("ud,ucd->uc", u, cand).double().numpy()


class LLMSRecTask(TrainingTask):
    def __init__(self, model: LLMSRec, prompts: Prompts, train: list[SRecExample], teacher_reps: torch.Tensor,
                 valid: dict[str, Any], weights: dict[str, float], eval_batch_size: int):  # fmt: skip
        self.model, self.prompts, self.train = model, prompts, train
        self.teacher_reps = teacher_reps  # [len(train), d_t], cached: the teacher is frozen and its inputs fixed
        self.valid = valid  # users, histories, candidates, labels, teacher_reps
        self.weights = weights
        self.scorer = Scorer(model, prompts, eval_batch_size)
        # Every item training and validation read, its prompt prefix computed once up front in item order.
        items = {i for e in train for i in (e.target, *e.negatives)} | set(np.asarray(valid.get("candidates", [])).ravel().tolist())
        model.prepare_item_prefixes([prompts.item(int(i)) for i in sorted(items)])

    def trainable_module(self):
        return self.model

    def num_examples(self):
        return len(self.train)

    def make_batch(self, indices):
        return list(indices)

    def training_loss(self, batch):
        ex = [self.train[i] for i in batch]
        user = self.model.user_vectors([self.prompts.user(e.user_id, e.history) for e in ex])  # [B, D]
        items = self.model.item_vectors([self.prompts.item(i) for e in ex for i in (e.target, *e.negatives)])
        items = items.view(len(ex), 1 + len(ex[0].negatives), -1)  # [B, C, D], target first
        teacher = self.model.teacher_vectors(self.teacher_reps[torch.as_tensor(batch)].to(user.device))
        parts = losses(user, items, teacher)
        total = sum(self.weights[k] * v for k, v in parts.items() if self.weights[k])
        return total, {f"loss_{k}": float(v.detach()) for k, v in parts.items()}

    def evaluate(self):
        v = self.valid
        u = self.scorer.users(v["users"], v["histories"])
        per_user = per_user_metrics(self.scorer.candidates(v["users"], v["histories"], v["candidates"], u), v["labels"])
        with torch.no_grad():
            t = self.model.teacher_vectors(v["teacher_reps"])
        cosine = F.cosine_similarity(u, t, dim=1)
        return {**{m: float(per_user[m].mean()) for m in METRICS}, "teacher_cosine": float(cosine.mean())}


def train_config(cfg: LLMSRecConfig) -> TrainConfig:
    return TrainConfig(
        max_epochs=cfg.epochs, max_steps=cfg.max_steps, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
        lr=cfg.lr, warmup_steps=cfg.warmup_steps, schedule="constant", max_grad_norm=None, eval_every=cfg.eval_every,
        eval_at_start=True, metric=cfg.select_metric, greater_is_better=True, bf16=False, seed=cfg.seed, log_every=5,
    )  # fmt: skip


def loss_weights(cfg: LLMSRecConfig, variant: LLMSRecVariant) -> dict[str, float]:
    return {"ret": cfg.ret_weight, "dist": cfg.dist_weight if variant.dist else 0.0,
            "unif": cfg.unif_weight if variant.unif else 0.0}  # fmt: skip


def stage_config(config: RunConfig, name: str) -> dict[str, Any]:
    """What a variant's artifact depends on (its manifest's config)."""
    cfg = dataclasses.replace(config.llmsrec, variants=(name,))
    return {"llmsrec": cfg, "title_style": config.llm.title_style, "dtype": config.llm.dtype, "max_users": config.max_users,
            "variant": name}  # fmt: skip


def stage_inputs(data: ProcessedData, paths: RunPaths, backbone, teacher: str) -> dict[str, str]:
    return {"data": data.data_id, "teacher": artifact_id(read_manifest(paths.teachers / teacher)), "backbone": backbone.identity}


@dataclass
class LLMSRecResult:
    name: str
    directory: Path
    metrics: dict[str, Any]
    history: pd.DataFrame
    train_log: pd.DataFrame
    skipped: bool = False


def load_result(directory: Path) -> LLMSRecResult:
    return LLMSRecResult(directory.name, directory, read_json(directory / "metrics.json"),
                         pd.read_csv(directory / "history.csv"), pd.read_csv(directory / "train_log.csv"), skipped=True)  # fmt: skip


def build_model(config: RunConfig, paths: RunPaths, data: ProcessedData, backbone) -> tuple[LLMSRec, SequentialRecommender]:
    """A fresh LLM-SRec around the backbone and the run's teacher (seeded), and the teacher itself."""
    cfg = config.llmsrec
    teacher = load_teacher(paths.teachers / cfg.teacher, data, config.teachers).model.eval()
    torch.manual_seed(cfg.seed)
    model = LLMSRec(backbone, teacher.item_embeddings().detach(), head_width=cfg.head_width, output_dim=cfg.output_dim,
                    cache_prefix=cfg.cache_prefix)  # fmt: skip
    return model, teacher


def run_llmsrec(config: RunConfig, paths: RunPaths, data: ProcessedData, backbone, name: str, *,
                progress: bool = True, callbacks=()) -> LLMSRecResult:  # fmt: skip
    """Train one variant (``name`` = "llm-srec" or an ablation) and write ``<run>/llmsrec/<name>/``."""
    variant = parse_llmsrec_variant(name)
    cfg = config.llmsrec
    stage = stage_config(config, name)
    inputs = stage_inputs(data, paths, backbone, cfg.teacher)
    out_dir = paths.llmsrec / name
    if is_complete(out_dir, HEADS_KIND, inputs=inputs, config=stage):
        log.info("%s is up to date", out_dir)
        return load_result(out_dir)

    model, teacher = build_model(config, paths, data, backbone)
    before_weights = backbone_checksum(backbone)
    prompts = Prompts(backbone, data, cfg, config.llm.title_style)
    train_users, valid_users = select_users(data, cfg, config.max_users)
    train = training_examples(data, train_users, cfg, shuffled=variant.shuffled)
    if len(train) < 2:
        raise DataError(f"LLM-SRec: {len(train)} training examples; at least 2 are needed (users need two train items)")
    reps = teacher_representations(teacher, [e.user_id for e in train], [e.history for e in train], dropout=cfg.teacher_dropout)
    sets = data.candidate_sets("valid").set_index("user_id").loc[valid_users]
    valid_histories = [data.history(u, "valid") for u in valid_users]
    valid = {"users": np.array(valid_users), "histories": valid_histories,
             "candidates": np.stack(sets["candidates"].to_numpy()).astype(np.int64),
             "labels": sets["target_position"].to_numpy().astype(np.int64),
             "teacher_reps": teacher_representations(teacher, valid_users, valid_histories)}  # fmt: skip
    task = LLMSRecTask(model, prompts, train, reps, valid, loss_weights(cfg, variant), cfg.eval_batch_size)

    start = time.perf_counter()
    trainer = Trainer(train_config(cfg), task, paths.llmsrec / ".checkpoints" / name, desc=f"llm-srec {name}",
                      progress=progress, callbacks=callbacks, identity={"inputs": inputs, "config": stage})  # fmt: skip
    result = trainer.train()
    trainer.load_best()
    model.eval()
    seconds = time.perf_counter() - start
    if backbone_checksum(backbone) != before_weights:
        raise RuntimeError("LLM-SRec changed the backbone's weights; the LLM must stay frozen")

    history = pd.DataFrame(result.history)
    best = history[history["step"] == result.best_step].iloc[-1] if result.best_step is not None else history.iloc[-1]
    first = history.iloc[0]
    metrics = {
        "variant": name,
        "teacher": cfg.teacher,
        "losses": {k: w for k, w in loss_weights(cfg, variant).items()},
        "shuffled_training": variant.shuffled,
        "train_examples": len(train),
        "valid_users": len(valid_users),
        "steps": result.steps,
        "best_step": result.best_step,
        "processes": result.processes,
        "seconds": round(seconds, 1),
        "valid_before": {m: float(first[m]) for m in METRICS},
        "valid_best": {m: float(best[m]) for m in METRICS},
        "teacher_cosine_before": float(first["teacher_cosine"]),
        "teacher_cosine_best": float(best["teacher_cosine"]),
        "trainable_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "backbone_checksum": before_weights,
    }
    example = train[0]
    examples = {"user": prompts.user(example.user_id, example.history).text, "item": prompts.item(example.target).text}
    if trainer.is_main_process:
        with write_stage_output(out_dir, HEADS_KIND, inputs=inputs, config=stage, extra={"variant": name}) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "heads.safetensors"))
            history.to_csv(tmp / "history.csv", index=False)
            pd.DataFrame(result.train_log).to_csv(tmp / "train_log.csv", index=False)
            (tmp / "metrics.json").write_text(json.dumps(to_jsonable(metrics), indent=2) + "\n")
            (tmp / "examples.json").write_text(json.dumps(examples, indent=2, ensure_ascii=False) + "\n")
    trainer.wait_for_everyone()
    return LLMSRecResult(name, out_dir, metrics, history, pd.DataFrame(result.train_log))


def backbone_checksum(backbone) -> str:
    """A digest of every backbone weight: equal before and after training, or the LLM was not frozen."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(backbone.model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def load_trained(config: RunConfig, paths: RunPaths, data: ProcessedData, backbone, name: str) -> tuple[LLMSRec, dict]:
    """A trained variant, refused unless made from this run's data, teacher, backbone and settings."""
    directory = paths.llmsrec / name
    manifest = check_trained(config, paths, data, backbone, name)
    model, _ = build_model(config, paths, data, backbone)
    state = load_file(str(directory / "heads.safetensors"))
    model.load_state_dict(state, strict=False)  # the teacher table is a non-persistent buffer
    missing = sorted(set(model.state_dict()) - set(state) - {"teacher_items"})
    if missing:
        raise DataError(f"{directory / 'heads.safetensors'}: lacks {missing}")
    return model.eval(), manifest


def check_trained(config: RunConfig, paths: RunPaths, data: ProcessedData, backbone, name: str) -> dict:
    directory = paths.llmsrec / name
    manifest = read_manifest(directory, HEADS_KIND)
    verify_outputs(directory, manifest)
    require_inputs(f"LLM-SRec '{name}'", manifest, stage_inputs(data, paths, backbone, config.llmsrec.teacher), directory)
    require_config(f"LLM-SRec '{name}'", manifest, stage_config(config, name), directory,
                   "Re-run notebook 05 (or `python -m delrec_lib llmsrec`) with this run's settings.")  # fmt: skip
    return manifest
