"""The study's evaluation: every method ranks the same test candidate sets, one table, paired tests.

Methods of a run: the popularity floor and each teacher (their exported candidate scores), the
zero-shot LLM, and each fine-tuned variant (``lora``, ``delrec-<soft prompt>``). Every method is
reduced to one row per user (its rank of the target among the user's 20 candidates and the
metrics derived from it); methods are compared by joining on ``user_id``, never by row order.

Secondary, LLaRA-compatible protocol for the LLM methods: the model greedily *generates* an
answer after the same prompt; ValidRatio is the share of answers whose first line names one of
the candidates, HR@1 the share that name the target (exact match after normalising case,
spacing, quotes and a trailing year).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .artifacts import (
    artifact_id,
    atomic_dir,
    build_manifest,
    is_complete,
    read_manifest,
    write_manifest,
)
from .config import RunConfig
from .data.processed import ProcessedData
from .finetune import RecExample, RecommendationScorer, load_recommender, split_examples
from .metrics import METRICS, paired_test, per_user_metrics, summarize
from .prompts import template_hash
from .scoring import prompt_embeddings

log = logging.getLogger(__name__)

EVAL_KIND = "method-evaluation"
POPULARITY = "popularity"
ZERO_SHOT = "zero-shot"


@dataclass
class MethodResult:
    method: str
    kind: str  # "baseline" | "teacher" | "llm"
    per_user: pd.DataFrame  # user_id, rank, HR@1 ... MRR
    generations: pd.DataFrame | None = None  # LLM methods: user_id, answer, matched, valid, hit


def run_methods(config: RunConfig) -> list[tuple[str, str]]:
    """(method, kind) of everything the run's preset produces, in table order."""
    methods = [(POPULARITY, "baseline")] + [(t, "teacher") for t in config.teachers.models]
    methods.append((ZERO_SHOT, "llm"))
    methods += [(v, "llm") for v in config.finetune.variants]
    return methods


def eval_users(data: ProcessedData, config: RunConfig) -> list[int]:
    """Every user (the smoke preset's first ``max_users``): the test split is never shrunk otherwise."""
    return data.user_ids(config.max_users).tolist()


def from_candidate_scores(frame: pd.DataFrame, users: list[int], split: str = "test") -> pd.DataFrame:
    """Per-user metrics from a teacher's exported candidate scores (user_id, split, scores, target_position)."""
    df = frame[frame["split"] == split].set_index("user_id")
    missing = [u for u in users if u not in df.index]
    if missing:
        raise ValueError(f"candidate scores lack users {missing[:5]} of the {split} split")
    df = df.loc[users]
    scores = np.stack(df["scores"].to_numpy()).astype(np.float64)
    return per_user_frame(users, scores, df["target_position"].to_numpy())


def per_user_frame(users: list[int], scores: np.ndarray, target_position: np.ndarray) -> pd.DataFrame:
    """user_id, target_position, top1 (the candidate ranked first; the lowest index among ties), rank, metrics."""
    per_user = per_user_metrics(scores, target_position)
    per_user.insert(0, "user_id", np.asarray(users, dtype=np.int64))
    per_user.insert(1, "target_position", np.asarray(target_position, dtype=np.int64))
    per_user.insert(2, "top1", np.argmax(scores, axis=1))
    return per_user


# --------------------------------------------------------------------------------------------
# LLaRA-compatible generation protocol
# --------------------------------------------------------------------------------------------


def normalise_title(text: str) -> str:
    text = text.strip().strip('"').strip().lower()
    text = re.sub(r"\s*\(\d{4}\)\s*$", "", text)
    return " ".join(text.split())


def generate_answers(scorer: RecommendationScorer, examples: list[RecExample], *, max_new_tokens: int = 24,
                     batch_size: int = 16) -> list[str]:  # fmt: skip
    """Greedy generation after each example's prompt (soft prompt spliced in), decoded to text."""
    bb = scorer.backbone
    tok = bb.tokenizer
    out: list[str] = []
    stop = list(bb.answer_end_ids) + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        embeds = [prompt_embeddings(bb, scorer.prompt(e), scorer.soft) for e in batch]
        width = max(e.shape[0] for e in embeds)
        hidden = embeds[0].shape[1]
        inputs = torch.zeros(len(batch), width, hidden, dtype=embeds[0].dtype, device=embeds[0].device)
        mask = torch.zeros(len(batch), width, dtype=torch.long, device=embeds[0].device)
        for i, e in enumerate(embeds):
            if bb.family == "causal":  # left padding: every prompt ends where generation starts
                inputs[i, width - e.shape[0] :] = e
                mask[i, width - e.shape[0] :] = 1
            else:
                inputs[i, : e.shape[0]] = e
                mask[i, : e.shape[0]] = 1
        with torch.no_grad(), bb.autocast():
            ids = bb.model.generate(inputs_embeds=inputs, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    do_sample=False, eos_token_id=stop, pad_token_id=tok.pad_token_id)  # fmt: skip
        if bb.family == "causal" and ids.shape[1] > max_new_tokens:  # some versions return the prompt too
            ids = ids[:, width:]
        out += [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    return out


# Bumped when the protocol changes, so cached evaluations are recomputed.
GENERATION_PROTOCOL = "llara-v2: candidates listed in the prompt; valid = first line names exactly one candidate"


def generation_scorer(scorer: RecommendationScorer) -> RecommendationScorer:
    """The same model and soft prompt with the candidates listed in the prompt, as LLaRA asks.

    Without the list a model cannot know what to name, whatever it learned; the cpu preset
    scores with unlisted prompts (cheaper), so its fine-tuned variants meet the listed template
    only here.
    """
    if scorer.llm.list_candidates:
        return scorer
    return RecommendationScorer(scorer.backbone, dataclasses.replace(scorer.llm, list_candidates=True), scorer.titles,
                                scorer.soft, scorer.teacher)  # fmt: skip


def named_candidates(answer: str, candidates: list[str]) -> list[int]:
    """Indices of the candidates whose title occurs in the answer's first line (LLaRA's rule).

    Small models often go on listing more titles after their answer, hence the first line.
    """
    first = " ".join(answer.strip().split("\n", 1)[0].lower().split())
    return [i for i, t in enumerate(candidates) if normalise_title(t) and normalise_title(t) in first]


def generation_metrics(scorer: RecommendationScorer, examples: list[RecExample], answers: list[str]) -> pd.DataFrame:
    """Per user: the answer, the candidate it names (-1 unless exactly one), valid, hit."""
    rows = []
    for ex, answer in zip(examples, answers, strict=True):
        named = named_candidates(answer, list(scorer.prompt(ex).candidates))
        matched = named[0] if len(named) == 1 else -1
        rows.append({"user_id": ex.user_id, "answer": answer, "matched": matched, "valid": matched >= 0,
                     "hit": matched == ex.label})  # fmt: skip
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Running and caching each method's evaluation
# --------------------------------------------------------------------------------------------


def _method_inputs(config: RunConfig, paths: Any, data: ProcessedData, method: str, kind: str, backbone) -> dict[str, str]:
    inputs = {"data": data.data_id}
    if kind in ("baseline", "teacher"):
        inputs["model"] = artifact_id(read_manifest(paths.teachers / method))
    else:
        inputs["backbone"] = backbone.identity
        inputs["template"] = template_hash()
        if method != ZERO_SHOT:
            inputs["model"] = artifact_id(read_manifest(paths.finetune / method))
    return inputs


def evaluate_method(
    config: RunConfig, paths: Any, data: ProcessedData, method: str, kind: str, backbone=None, *, progress: bool = True
) -> MethodResult:
    """One method on the test candidate sets; cached in ``<run>/eval/<method>/`` with a manifest."""
    users = eval_users(data, config)
    inputs = _method_inputs(config, paths, data, method, kind, backbone)
    stage_config = {"eval": config.eval, "llm": config.llm if kind == "llm" else None, "users": len(users),
                    "generation_protocol": GENERATION_PROTOCOL if kind == "llm" else None}  # fmt: skip
    out = paths.eval / method
    if is_complete(out, EVAL_KIND, inputs=inputs, config=stage_config):
        gen = out / "generations.parquet"
        return MethodResult(method, kind, pd.read_parquet(out / "per_user.parquet"),
                            pd.read_parquet(gen) if gen.is_file() else None)  # fmt: skip
    generations = None
    if kind in ("baseline", "teacher"):
        from .teachers import read_exports

        per_user = from_candidate_scores(read_exports(paths.teachers / method, data)["candidate_scores"], users)
    else:
        scorer = load_recommender(paths, method, backbone, data, config)
        examples = split_examples(data, "test", users)
        per_user = scorer.evaluate(examples, progress=progress)
        n_gen = len(examples) if config.eval.generation_users is None else min(config.eval.generation_users, len(examples))
        if n_gen:
            subset = examples[:n_gen]
            listed = generation_scorer(scorer)
            answers = generate_answers(listed, subset, max_new_tokens=config.eval.max_new_tokens)
            generations = generation_metrics(listed, subset, answers)
    with atomic_dir(out) as tmp:
        per_user.to_parquet(tmp / "per_user.parquet", index=False)
        if generations is not None:
            generations.to_parquet(tmp / "generations.parquet", index=False)
        write_manifest(tmp, build_manifest(EVAL_KIND, tmp, inputs=inputs, config=stage_config, extra={"method": method, "kind": kind}))
    return MethodResult(method, kind, per_user, generations)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def aligned(results: dict[str, MethodResult]) -> dict[str, pd.DataFrame]:
    """Each method's per-user frame indexed by user_id, all on the same users in the same order."""
    frames = {m: r.per_user.set_index("user_id").sort_index() for m, r in results.items()}
    users = None
    for m, f in frames.items():
        if f.index.has_duplicates:
            raise ValueError(f"{m}: a user appears twice in its per-user results")
        users = f.index if users is None else users
        if not f.index.equals(users):
            raise ValueError(f"{m}: evaluated on other users than the other methods")
    return frames


def results_table(results: dict[str, MethodResult], *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Rows: methods; columns: (metric, mean/ci_low/ci_high)."""
    frames = aligned(results)
    rows = {}
    for method, f in frames.items():
        s = summarize(f, n_boot=n_boot, ci=ci, seed=seed)
        rows[method] = {(m, c): s.loc[m, c] for m in METRICS for c in ("mean", "ci_low", "ci_high")}
    table = pd.DataFrame(rows).T
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    table.index.name = "method"
    return table


def format_table(table: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """'mean [low, high]' strings per metric, for display and Markdown."""
    out = pd.DataFrame(index=table.index)
    for m in METRICS:
        out[m] = [f"{r[(m, 'mean')]:.{digits}f} [{r[(m, 'ci_low')]:.{digits}f}, {r[(m, 'ci_high')]:.{digits}f}]"
                  for _, r in table.iterrows()]  # fmt: skip
    return out


def paired_comparisons(results: dict[str, MethodResult], pairs: list[tuple[str, str]], metrics: tuple[str, ...],
                       seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Paired sign-flip tests of method a against method b on the same users, per metric."""
    frames = aligned(results)
    rows = []
    for a, b in pairs:
        if a not in frames or b not in frames:
            continue
        for m in metrics:
            r = paired_test(frames[a][m].to_numpy(), frames[b][m].to_numpy(), seed=seed)
            rows.append({"method": a, "versus": b, "metric": m, **r})
    return pd.DataFrame(rows)


def comparison_pairs(config: RunConfig) -> list[tuple[str, str]]:
    """DELRec against its own teacher and against the no-soft-prompt variant."""
    from .config import parse_prompt_name

    pairs = []
    for v in config.finetune.variants:
        if v.startswith("delrec-"):
            teacher, _ = parse_prompt_name(v[len("delrec-") :])
            pairs.append((v, teacher))
            if "lora" in config.finetune.variants:
                pairs.append((v, "lora"))
            pairs.append((v, ZERO_SHOT))
    return pairs


def generation_table(results: dict[str, MethodResult]) -> pd.DataFrame:
    rows = {}
    for m, r in results.items():
        if r.generations is not None and len(r.generations):
            g = r.generations
            rows[m] = {"users": len(g), "ValidRatio": g["valid"].mean(), "HR@1": g["hit"].mean(),
                       "HR@1 among valid": g.loc[g["valid"], "hit"].mean() if g["valid"].any() else float("nan")}  # fmt: skip
    return pd.DataFrame(rows).T


def write_tables(paths: Any, table: pd.DataFrame, paired: pd.DataFrame, generation: pd.DataFrame) -> dict[str, Path]:
    """results.csv / results.md (and the paired tests and generation protocol) under ``<run>/eval/``."""
    from .artifacts import atomic_write_text

    flat = table.copy()
    flat.columns = [f"{m} {c}" for m, c in flat.columns]
    files = {
        "results_csv": paths.eval / "results.csv",
        "results_md": paths.eval / "results.md",
        "paired_csv": paths.eval / "paired_tests.csv",
        "generation_csv": paths.eval / "generation_protocol.csv",
    }
    atomic_write_text(files["results_csv"], flat.to_csv())
    atomic_write_text(files["results_md"], markdown_table(format_table(table)))
    atomic_write_text(files["paired_csv"], paired.to_csv(index=False))
    atomic_write_text(files["generation_csv"], generation.to_csv())
    return files


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    header = [frame.index.name or ""] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [str(v) for v in row]) + " |")
    return "\n".join(lines) + "\n"
