"""The teacher stage: train (or skip), evaluate and export every teacher of a run, plus popularity.

Each teacher lands in ``outputs/<run>/teachers/<name>/`` (written atomically, manifest last):

=========================== ===============================================================
``model.safetensors``       weights (teachers only)
``config.json``             model class and hyper-parameters, sizes, data_id: what ``load_teacher`` rebuilds
``metrics.json``            mean and 95% bootstrap CI of HR@1/5/10, NDCG@5/10, MRR per split
                            (valid, test) and protocol (full, candidates); epochs, seconds
``per_user.parquet``        user_id, split, protocol, rank, HR@1, HR@5, HR@10, NDCG@5, NDCG@10, MRR
``topk_valid.parquet``      user_id, items, scores: top-k after the train items only (the valid
                            position; what stage 1 distils), history items excluded, best first;
                            scores are the teacher's raw next-item logits (softmax over the
                            catalogue gives probabilities), popularity's are train counts
``topk_test.parquet``       the same after train + valid items (the test position; for analysis)
``scores_valid.npz``        users [U], scores [U, N+1] float16: every item's score after the train
                            items, as in topk_valid (history items included, column 0 the padding
                            id): what stage 1's KL loss (``distill.loss = "kl"``) distils
``candidate_scores.parquet`` user_id, split, candidates, scores, target_position: the score of
                            every candidate of the shared valid and test sets, in their order
``curves.csv``              epoch, step, train_loss, valid NDCG@10 / HR@10 / MRR (teachers only)
``popularity.parquet``      item_id, count (popularity only)
``manifest.json``           kind, inputs {data: data_id}, config (the teacher's spec) and hashes
=========================== ===============================================================

A re-run skips a teacher whose manifest matches the current data and spec; one trained from
other data or settings is trained again (its checkpoints live under a folder named by the
spec's hash, so an interrupted run resumes from its last epoch and never from another's).
"""

from __future__ import annotations

import contextlib
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
from ..config import TEACHER_NAMES, CaserConfig, GRU4RecConfig, SASRecConfig, TeachersConfig
from ..data import ProcessedData
from ..errors import ConfigError, StaleArtifactError
from ..metrics import summarize
from ..phases import phase
from ..training import TrainConfig, Trainer, TrainResult
from .base import SequentialRecommender
from .batches import Examples, sequence_examples, window_examples
from .caser import Caser
from .evaluation import Scorer, evaluate_split, model_scorer, score_split, top_k
from .gru4rec import GRU4Rec
from .popularity import popularity_scorer, train_popularity
from .rules import is_rule_teacher, rule_scorer, rule_spec
from .sasrec import SASRec
from .task import TeacherTask

log = logging.getLogger(__name__)

TEACHER_KIND = "teacher"
POPULARITY_KIND = "popularity"
POPULARITY = "popularity"
MODELS: dict[str, type[SequentialRecommender]] = {"sasrec": SASRec, "gru4rec": GRU4Rec, "caser": Caser}
MODEL_CONFIGS = {"sasrec": SASRecConfig, "gru4rec": GRU4RecConfig, "caser": CaserConfig}
SPLITS = ("valid", "test")


# -- specs and models -----------------------------------------------------------------------------


def teacher_spec(name: str, config: TeachersConfig, data: ProcessedData) -> dict[str, Any]:
    """Everything that determines a trained teacher (its manifest's config): settings and data sizes."""
    if name not in MODELS:
        raise ConfigError(f"teachers.models: unknown teacher '{name}'; expected some of {', '.join(TEACHER_NAMES)}")
    return {
        "teacher": name,
        "model": to_jsonable(getattr(config, name)),
        "max_len": config.max_len,
        "stride": None if name == "caser" else config.stride,
        "loss": config.loss,
        "negatives": config.negatives if config.loss == "bce" else None,
        "max_epochs": config.max_epochs,
        "patience": config.patience,
        "weight_decay": config.weight_decay,
        "seed": config.seed,
        "top_k": config.top_k,
        "num_items": data.num_items,
        "num_users": data.num_users,
    }


def popularity_spec(config: TeachersConfig, data: ProcessedData) -> dict[str, Any]:
    """What the popularity export depends on (its manifest's config)."""
    return {"teacher": POPULARITY, "counted_on": "train items", "top_k": config.top_k, "num_items": data.num_items}


def export_spec(name: str, config: TeachersConfig, data: ProcessedData) -> dict[str, Any]:
    """The manifest config of ``teachers/<name>/`` under the run's settings (a teacher, a rule teacher or
    popularity)."""
    if name == POPULARITY:
        return popularity_spec(config, data)
    if is_rule_teacher(name):
        return rule_spec(name, config.seed, config.rule_window, config.top_k, data)
    return teacher_spec(name, config, data)


def build_model(spec: dict[str, Any]) -> SequentialRecommender:
    """A freshly initialised teacher (seeded by the spec) from a spec. The caller's RNG is untouched."""
    name = spec["teacher"]
    model_cfg = MODEL_CONFIGS[name](**spec["model"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        return MODELS[name](spec["num_items"], spec["max_len"], model_cfg, num_users=spec["num_users"])


def training_examples(spec: dict[str, Any], data: ProcessedData) -> Examples:
    """The teacher's training examples, from train items only (see ``batches``)."""
    users = data.user_ids()
    train = [data.train_items(int(u)) for u in users]
    if spec["teacher"] == "caser":
        return window_examples(users, train, spec["model"]["window"], spec["model"]["targets"])
    return sequence_examples(users, train, spec["max_len"], spec["stride"])


def train_config(spec: dict[str, Any], num_examples: int) -> TrainConfig:
    batch = spec["model"]["batch_size"]
    steps_per_epoch = -(-num_examples // batch)
    return TrainConfig(
        max_epochs=spec["max_epochs"], batch_size=batch, lr=spec["model"]["lr"], weight_decay=spec["weight_decay"],
        max_grad_norm=None, patience=spec["patience"], metric="NDCG@10", greater_is_better=True,
        seed=spec["seed"], log_every=steps_per_epoch,  # one training-loss row per epoch
    )  # fmt: skip


# -- results -----------------------------------------------------------------------------------


@dataclass
class TeacherResult:
    name: str
    directory: Path
    metrics: dict[str, Any]
    skipped: bool = False


def summary_table(per_user: pd.DataFrame) -> dict[str, Any]:
    """{split: {protocol: {metric: {mean, ci_low, ci_high}}, users}} from per-user metrics."""
    out: dict[str, Any] = {}
    for (split, protocol), df in per_user.groupby(["split", "protocol"], sort=False):
        table = summarize(df.drop(columns=["user_id", "split", "protocol", "rank"]))
        out.setdefault(split, {})[protocol] = {
            m: {"mean": float(r["mean"]), "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"])} for m, r in table.iterrows()
        }
        out[split][protocol]["users"] = int(len(df))
    return out


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    df.to_parquet(path, index=False)


@phase("teacher export (every user's full ranking)")
def _export_scores(scorer: Scorer, data: ProcessedData, directory: Path, k: int) -> dict[str, Any]:
    """Scores both splits once; writes per-user metrics, top-k and candidate scores; returns the summary."""
    per_user, cands = [], []
    for split in SPLITS:
        s = score_split(scorer, data, split)
        pu, cs = evaluate_split(s, data)
        per_user.append(pu)
        cands.append(cs)
        _write_parquet(top_k(s, k), directory / f"topk_{split}.parquet")
        if split == "valid":
            np.savez(directory / "scores_valid.npz", users=s.users.astype(np.int32), scores=s.scores.astype(np.float16))
    per_user_df = pd.concat(per_user, ignore_index=True)
    _write_parquet(per_user_df, directory / "per_user.parquet")
    _write_parquet(pd.concat(cands, ignore_index=True), directory / "candidate_scores.parquet")
    return summary_table(per_user_df)


def _curves(result) -> pd.DataFrame:
    hist = pd.DataFrame(result.history)
    if hist.empty:
        return pd.DataFrame(columns=["epoch", "step", "train_loss"])
    logs = pd.DataFrame(result.train_log)
    if not logs.empty:
        hist = hist.merge(logs[["step", "loss"]].rename(columns={"loss": "train_loss"}), on="step", how="left")
    first = ["epoch", "step", "train_loss"]
    return hist[[c for c in first if c in hist] + [c for c in hist if c not in first]]


# -- training one teacher ------------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` intra-op CPU threads (None: leave torch's setting), restored after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def checkpoint_dir(teachers_dir: Path, name: str, spec: dict[str, Any], data: ProcessedData) -> Path:
    return Path(teachers_dir) / ".checkpoints" / f"{name}-{sha256_json({'spec': spec, 'data': data.data_id})[:12]}"


def train_teacher(
    name: str,
    config: TeachersConfig,
    data: ProcessedData,
    teachers_dir: str | Path,
    *,
    progress: bool = True,
    callbacks=(),
) -> TeacherResult:
    """Train, evaluate and export one teacher into ``teachers_dir/name`` (skipped when up to date)."""
    spec = teacher_spec(name, config, data)
    teachers_dir = Path(teachers_dir)
    out = teachers_dir / name
    inputs = {"data": data.data_id}
    if is_complete(out, TEACHER_KIND, inputs=inputs, config=spec):
        return TeacherResult(name, out, read_json(out / "metrics.json"), skipped=True)
    if (out / "manifest.json").is_file():
        log.warning("%s was made from other data or settings; training it again", out)
    with torch_threads(config.threads):
        return _train_and_export(name, spec, data, teachers_dir, out, inputs, progress, callbacks)


def fit(
    model: SequentialRecommender,
    spec: dict[str, Any],
    data: ProcessedData,
    checkpoint: str | Path | None = None,
    *,
    progress: bool = True,
    callbacks=(),
) -> tuple[TrainResult, Examples]:
    """Train ``model`` as ``spec`` says through the shared Trainer, and leave its best validation
    state loaded. Resumes from ``checkpoint`` when it holds a checkpoint of the same spec and data."""
    examples = training_examples(spec, data)
    task = TeacherTask(model, examples, data, loss=spec["loss"], negatives=spec["negatives"] or 1)
    trainer = Trainer(train_config(spec, len(examples)), task, checkpoint, desc=spec["teacher"], progress=progress,
                      callbacks=callbacks, identity={"spec": spec, "data": data.data_id})  # fmt: skip
    result = trainer.train()
    trainer.load_best()
    return result, examples


def export_model(
    model: SequentialRecommender, spec: dict[str, Any], data: ProcessedData, directory: Path, result: TrainResult,
    examples: Examples,
) -> dict[str, Any]:
    """Write a trained teacher's weights, config, exports, curves and metrics into ``directory`` and
    return the metrics; the caller writes the manifest. Every teacher-shaped model (P2Rec's enhanced
    teachers too) goes through this, so they all have the same files and metrics."""
    start = time.perf_counter()
    directory = Path(directory)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    atomic_write_json(directory / "config.json", {"spec": spec, "data_id": data.data_id, "class": type(model).__name__})
    summary = _export_scores(model_scorer(model), data, directory, spec["top_k"])
    _curves(result).to_csv(directory / "curves.csv", index=False)
    best = next((h for h in result.history if h["step"] == result.best_step), {})
    metrics = {
        "teacher": spec["teacher"], **summary,
        "epochs": result.epochs_completed, "best_epoch": best.get("epoch"), "steps": result.steps,
        "stopped": result.stopped, "train_examples": len(examples),
        "train_seconds": round(result.seconds, 2),
        "seconds_per_epoch": round(result.seconds / max(1, result.epochs_completed), 3),
        "export_seconds": round(time.perf_counter() - start, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
    }  # fmt: skip
    atomic_write_json(directory / "metrics.json", metrics)
    return metrics


def _train_and_export(name, spec, data, teachers_dir, out, inputs, progress, callbacks) -> TeacherResult:
    model = build_model(spec)
    ckpt = checkpoint_dir(teachers_dir, name, spec, data)
    result, examples = fit(model, spec, data, ckpt, progress=progress, callbacks=callbacks)
    with write_stage_output(out, TEACHER_KIND, inputs=inputs, config=spec, extra={"teacher": name}) as tmp:
        metrics = export_model(model, spec, data, tmp, result, examples)
    shutil.rmtree(ckpt, ignore_errors=True)
    return TeacherResult(name, out, metrics)


def export_popularity(data: ProcessedData, teachers_dir: str | Path, top: int = 20) -> TeacherResult:
    """The popularity floor through the same evaluation and exports (``teachers/popularity/``)."""
    out = Path(teachers_dir) / POPULARITY
    spec = popularity_spec(TeachersConfig(top_k=top), data)
    inputs = {"data": data.data_id}
    if is_complete(out, POPULARITY_KIND, inputs=inputs, config=spec):
        return TeacherResult(POPULARITY, out, read_json(out / "metrics.json"), skipped=True)
    start = time.perf_counter()
    counts = train_popularity(data)
    with write_stage_output(out, POPULARITY_KIND, inputs=inputs, config=spec) as tmp:
        _write_parquet(pd.DataFrame({"item_id": np.arange(1, data.num_items + 1, dtype=np.int32), "count": counts[1:]}),
                       tmp / "popularity.parquet")  # fmt: skip
        atomic_write_json(tmp / "config.json", {"spec": spec, "data_id": data.data_id, "class": "Popularity"})
        summary = _export_scores(popularity_scorer(counts), data, tmp, top)
        metrics = {"teacher": POPULARITY, **summary, "train_seconds": round(time.perf_counter() - start, 2)}
        atomic_write_json(tmp / "metrics.json", metrics)
    return TeacherResult(POPULARITY, out, metrics)


def export_rule(name: str, config: TeachersConfig, data: ProcessedData, teachers_dir: str | Path) -> TeacherResult:
    """A rule teacher (``rules.py``) through the same evaluation and exports as a trained one
    (``teachers/rule-<name>/``, manifest kind "teacher"); it has no weights and is never evaluated as a method."""
    out = Path(teachers_dir) / name
    spec = export_spec(name, config, data)
    inputs = {"data": data.data_id}
    if is_complete(out, TEACHER_KIND, inputs=inputs, config=spec):
        return TeacherResult(name, out, read_json(out / "metrics.json"), skipped=True)
    start = time.perf_counter()
    with write_stage_output(out, TEACHER_KIND, inputs=inputs, config=spec, extra={"teacher": name}) as tmp:
        atomic_write_json(tmp / "config.json", {"spec": spec, "data_id": data.data_id, "class": "Rule"})
        summary = _export_scores(rule_scorer(spec, data), data, tmp, spec["top_k"])
        metrics = {"teacher": name, **summary, "train_seconds": round(time.perf_counter() - start, 2)}
        atomic_write_json(tmp / "metrics.json", metrics)
    return TeacherResult(name, out, metrics)


def run_teachers(
    config: TeachersConfig,
    data: ProcessedData,
    teachers_dir: str | Path,
    *,
    names: tuple[str, ...] | None = None,
    progress: bool = True,
) -> dict[str, TeacherResult]:
    """The stage: popularity, then every teacher of ``config.models`` (finished ones are skipped)."""
    names = tuple(config.models if names is None else names)
    for name in names:
        teacher_spec(name, config, data)  # unknown names fail before anything trains
    results = {POPULARITY: export_popularity(data, teachers_dir, config.top_k)}
    for name in config.rules:
        results[name] = export_rule(name, config, data, teachers_dir)
    for name in names:
        start = time.perf_counter()
        results[name] = train_teacher(name, config, data, teachers_dir, progress=progress)
        status = "up to date, skipped" if results[name].skipped else f"trained in {time.perf_counter() - start:.0f} s"
        print(f"[teachers] {name}: {status}", flush=True)
    return results


# -- loading -------------------------------------------------------------------------------------


@dataclass
class LoadedTeacher:
    name: str
    model: SequentialRecommender
    spec: dict[str, Any]
    manifest: dict[str, Any]
    directory: Path

    def scorer(self) -> Scorer:
        return model_scorer(self.model)


def load_teacher(
    directory: str | Path, data: ProcessedData, expected: TeachersConfig | dict[str, Any] | None = None
) -> LoadedTeacher:
    """Load an exported teacher, refusing one made from other data or (when given) other settings.

    ``expected`` is the run's ``TeachersConfig`` (the teacher's spec is derived from it) or a spec.
    """
    directory = Path(directory)
    manifest = read_manifest(directory, TEACHER_KIND)
    verify_outputs(directory, manifest)
    require_inputs(f"teacher '{directory.name}'", manifest, {"data": data.data_id}, directory)
    saved = read_json(directory / "config.json")
    spec = saved["spec"]
    if sha256_json(spec) != manifest.get("config_hash"):
        raise StaleArtifactError(f"{directory / 'config.json'}: does not match the hash in its manifest")
    if expected is not None:
        want = teacher_spec(spec["teacher"], expected, data) if isinstance(expected, TeachersConfig) else expected
        if sha256_json(want) != manifest["config_hash"]:
            diff = sorted(k for k in set(want) | set(spec) if want.get(k) != spec.get(k))
            raise StaleArtifactError(
                f"{directory}: teacher '{spec['teacher']}' was trained with other settings than this run's "
                f"(differing: {', '.join(diff)}). Re-run the teacher stage (notebook 02 or "
                "`python -m delrec_lib teachers`) to retrain it."
            )
    if spec["num_items"] != data.num_items or spec["num_users"] != data.num_users:
        raise StaleArtifactError(f"{directory}: teacher built for {spec['num_items']} items, the data has {data.num_items}")
    model = build_model(spec)
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    model.eval()
    return LoadedTeacher(spec["teacher"], model, spec, manifest, directory)


def read_exports(directory: str | Path, data: ProcessedData | None = None, kind: str | None = None) -> dict[str, Any]:
    """A teacher's (or popularity's) exported tables, checked against the manifest and the data."""
    directory = Path(directory)
    manifest = read_manifest(directory, kind)
    verify_outputs(directory, manifest)
    if data is not None:
        require_inputs(f"'{directory.name}' exports", manifest, {"data": data.data_id}, directory)
    out = {"metrics": read_json(directory / "metrics.json"), "manifest": manifest}
    for name in ("topk_valid", "topk_test", "candidate_scores", "per_user"):
        out[name] = pd.read_parquet(directory / f"{name}.parquet")
    if (directory / "curves.csv").is_file():
        out["curves"] = pd.read_csv(directory / "curves.csv")
    return out
