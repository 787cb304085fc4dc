"""The study's evaluation: every method ranks the same test candidate sets, one table, paired tests.

The methods are whatever the run's configuration produces, found through the registry
(``delrec_lib.methods``): the popularity floor, each teacher, the zero-shot LLM, each fine-tuned
variant and every other registered method. Nothing here knows a method by name or imports the stage
that trained it. Every method is reduced to one row per user (its rank of the target among the
user's 20 candidates and the metrics derived from it); methods are compared by joining on
``user_id``, never by row order.

Methods that score the whole catalogue (teachers, LLM-SRec, ...) are also ranked against every item
the user has not interacted with (history masked, the kit's protocol) and against every item
(unmasked, as RecBole reports sequential models).

Secondary, LLaRA-compatible protocol for methods that generate: the model greedily *generates* an
answer after the same prompt with the candidates listed; ValidRatio is the share of answers whose
first line names exactly one of the candidates, HR@1 the share that name the target. Two matching
rules are reported side by side (``MATCH_RULES``): "strict", the first line is a candidate's title,
and "words", a candidate's title occurs in the first line as whole words; both are case-sensitive.

Paired tests come with Holm-adjusted p-values (``p_holm``) within a family of tests that are read
together; ``paired_comparisons`` says which.
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

from .artifacts import atomic_write_text, is_complete, sha256_json, write_stage_output
from .config import RunConfig
from .data.popularity_matched import matched_inputs, set_inputs
from .data.processed import ProcessedData
from .methods import MethodContext, Recommender, family_of, run_methods
from .metrics import (
    METRICS,
    holm_adjust,
    metrics_from_counts,
    paired_test,
    per_user_frame,
    per_user_metrics,
    summarize,
)
from .phases import phase

log = logging.getLogger(__name__)

EVAL_KIND = "method-evaluation"
POPULARITY = "popularity"
ZERO_SHOT = "zero-shot"
# Bumped when the protocol changes, so cached evaluations are recomputed.
GENERATION_PROTOCOL = ("llara-v3: candidates listed in the prompt; valid = first line names exactly one candidate, "
                       "by two case-sensitive rules: strict (the line is the title) and words (the title occurs in it)")
CATALOGUE_PROTOCOLS = ("masked", "unmasked")


@dataclass
class MethodResult:
    method: str
    kind: str  # "baseline" | "teacher" | "llm"
    per_user: pd.DataFrame  # user_id, target_position, top1, rank, HR@1 ... MRR (the 20 candidates)
    # generating methods: user_id, answer, and matched_<rule>, valid_<rule>, hit_<rule> per MATCH_RULES rule
    generations: pd.DataFrame | None = None
    catalogue: pd.DataFrame | None = None  # full-catalogue methods: per user and protocol (masked/unmasked)
    matched: pd.DataFrame | None = None  # per_user's columns on the popularity-matched candidate sets (eval.matched_users)


def method_context(config: RunConfig, paths: Any, data: ProcessedData, backbone=None) -> MethodContext:
    """The context the registry's families load methods from (the backbone is loaded on first use)."""
    from functools import partial

    from .llm import load_backbone_from_config

    return MethodContext(config, paths, data, backbone, load_backbone=partial(load_backbone_from_config, config.llm))


def split_inputs(data: ProcessedData, users: list[int], split: str = "test"):
    """(users [U], histories, candidates [U, C], target positions [U]) of ``split``'s shared candidate sets."""
    return set_inputs(data, data.candidate_sets(split), users, split)


def from_candidate_scores(frame: pd.DataFrame, users: list[int], split: str = "test") -> pd.DataFrame:
    """Per-user metrics from exported candidate scores (user_id, split, scores, target_position)."""
    df = frame[frame["split"] == split].set_index("user_id")
    missing = [u for u in users if u not in df.index]
    if missing:
        raise ValueError(f"candidate scores lack users {missing[:5]} of the {split} split")
    df = df.loc[users]
    scores = np.stack(df["scores"].to_numpy()).astype(np.float64)
    return per_user_frame(users, scores, df["target_position"].to_numpy())


def catalogue_frame(users: np.ndarray, scores: np.ndarray, histories, targets: np.ndarray) -> pd.DataFrame:
    """Full-catalogue per-user metrics, history masked and unmasked (padding id 0 never ranks)."""
    valid = np.ones(scores.shape, dtype=bool)
    valid[:, 0] = False
    frames = [per_user_metrics(scores, targets, valid).assign(user_id=users, protocol="unmasked")]
    for row, hist in enumerate(histories):
        valid[row, np.asarray(hist, dtype=np.int64)] = False
    frames.insert(0, per_user_metrics(scores, targets, valid).assign(user_id=users, protocol="masked"))
    out = pd.concat(frames, ignore_index=True)
    return out[["user_id", "protocol"] + [c for c in out.columns if c not in ("user_id", "protocol")]]


# --------------------------------------------------------------------------------------------
# LLaRA-compatible generation protocol
# --------------------------------------------------------------------------------------------


def normalise_title(text: str) -> str:
    """A title without surrounding quotes, its trailing "(year)" and repeated whitespace (case kept)."""
    text = text.strip().strip('"').strip()
    text = re.sub(r"\s*\(\d{4}\)\s*$", "", text)
    return " ".join(text.split())


def _first_line(answer: str) -> str:
    """The answer's first line, whitespace collapsed: small models often go on listing more titles after
    their answer."""
    return " ".join(answer.strip().split("\n", 1)[0].split())


def _title_forms(candidates: list[str]) -> list[set[str]]:
    """Each candidate's accepted forms: its title as shown and, unless another candidate has the same title
    without it ("Hamlet (1948)", "Hamlet (1996)"), the title without its year."""
    full = [" ".join(t.split()) for t in candidates]
    short = [normalise_title(t) for t in candidates]
    return [{f, s} if short.count(s) == 1 else {f} for f, s in zip(full, short, strict=True)]


_WRAPPERS = "\"'\u201c\u201d\u2018\u2019*`"  # quotes and Markdown emphasis around an answer
_TRAILING = ".,;:!?"


def _unwrapped(line: str) -> list[str]:
    """``line``, then each shorter form as surrounding quotes or emphasis and trailing punctuation are
    dropped one step at a time ('"Airplane!".' -> 'Airplane!".', 'Airplane!"', 'Airplane!', 'Airplane')."""
    out = [line]
    while out[-1]:
        last = out[-1]
        shorter = last.strip(_WRAPPERS).strip() if last[0] in _WRAPPERS or last[-1] in _WRAPPERS else last
        if shorter == last and last[-1] in _TRAILING:
            shorter = last[:-1].rstrip()
        if shorter == last:
            break
        out.append(shorter)
    return out


def strict_candidates(answer: str, candidates: list[str]) -> list[int]:
    """Indices of the candidates whose title the answer's first line *is* (the strict rule).

    The first line (whitespace collapsed) must equal a candidate's title as shown, or the title without
    its year as ``_title_forms`` allows; case counts. Only quotes or Markdown emphasis around it and
    punctuation after it may be dropped, the least needed: '"Fargo (1996)".' names "Fargo (1996)",
    "Airplane!" names "Airplane! (1980)", "I recommend Fargo" names nothing. Wherever the strict
    rule names one candidate, the words rule (``named_candidates``) names the same one.
    """
    forms = _title_forms(candidates)
    for line in _unwrapped(_first_line(answer)):
        named = [i for i, f in enumerate(forms) if line in f]
        if named:
            return named
    return []


def _occurrences(text: str, title: str) -> list[tuple[int, int]]:
    """Spans where ``title`` occurs in ``text`` as whole words (not inside a longer word), case-sensitive."""
    pattern = r"(?<!\w)" + re.escape(title) + r"(?!\w)"
    return [m.span() for m in re.finditer(pattern, text)]


def named_candidates(answer: str, candidates: list[str]) -> list[int]:
    """Indices of the candidates whose whole title occurs in the answer's first line (the words rule:
    LLaRA's, made stricter).

    A title counts where it stands as whole words, with its case, and is not part of a longer
    candidate's title there: "Babe: Pig in the City" names that film, not "Babe" as well, and "a big
    hit" does not name "Big". The year may be left out as in ``_title_forms``.
    """
    first = _first_line(answer)
    spans = [[sp for form in forms if form for sp in _occurrences(first, form)] for forms in _title_forms(candidates)]

    def inside_longer(span: tuple[int, int], i: int) -> bool:
        return any(a <= span[0] and span[1] <= b and (b - a) > (span[1] - span[0])
                   for j, other in enumerate(spans) if j != i for a, b in other)  # fmt: skip

    return [i for i, own in enumerate(spans) if any(not inside_longer(sp, i) for sp in own)]


# Each rule: (answer, candidate titles) -> the candidates the answer names; valid when exactly one.
MATCH_RULES = {"strict": strict_candidates, "words": named_candidates}


def generation_metrics(users, answers: list[str], shown: list[list[str]], labels) -> pd.DataFrame:
    """Per user: the answer and, per rule of ``MATCH_RULES``, matched_<rule> (the candidate it names, -1
    unless exactly one), valid_<rule> and hit_<rule>."""
    rows = []
    for user, answer, titles, label in zip(users, answers, shown, labels, strict=True):
        row = {"user_id": int(user), "answer": answer}
        for rule, match in MATCH_RULES.items():
            named = match(answer, titles)
            matched = named[0] if len(named) == 1 else -1
            row |= {f"matched_{rule}": matched, f"valid_{rule}": matched >= 0, f"hit_{rule}": matched == int(label)}
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Running and caching each method's evaluation
# --------------------------------------------------------------------------------------------


def _eval_settings(ctx: MethodContext, users: list[int], *, generation: bool = True) -> dict[str, Any]:
    e = ctx.config.eval
    settings = {"users": {"count": len(users), "ids": sha256_json(users)}, "generation_users": e.generation_users if generation else 0,
                "max_new_tokens": e.max_new_tokens,
                "generation_protocol": GENERATION_PROTOCOL, "catalogue_protocols": list(CATALOGUE_PROTOCOLS)}  # fmt: skip
    if e.matched_users:  # only then: runs made without the matched protocol stay valid
        settings["matched"] = {"users": min(e.matched_users, len(users)), "sets": ctx.data.popularity_matched_record()}
    return settings


def evaluate_method(ctx: MethodContext, method: str, *, progress: bool = True) -> MethodResult:
    """One method on the test candidate sets (and, by its capabilities, the full catalogue and the
    generation protocol); cached in ``<run>/eval/<method>/``, keyed by the method's identity. Another
    seed's copy of a method (a seed study) is ranked like any method, without the generation protocol."""
    family = family_of(ctx.config, method)
    users = ctx.users()
    inputs = family.identity(ctx, method)
    replica = family.replicate_of(ctx.config, method) is not None
    settings = _eval_settings(ctx, users, generation=not replica)
    out = ctx.paths.eval / method
    kind = family.kind(method)
    if is_complete(out, EVAL_KIND, inputs=inputs, config=settings):
        def read(name):
            return pd.read_parquet(out / name) if (out / name).is_file() else None

        return MethodResult(method, kind, read("per_user.parquet"), read("generations.parquet"), read("catalogue.parquet"),
                            read("matched.parquet"))  # fmt: skip
    with phase("loading methods"):
        rec = family.load(ctx, method)
    result = score_method(rec, ctx.data, users, kind, generation_users=settings["generation_users"],
                          max_new_tokens=ctx.config.eval.max_new_tokens, progress=progress,
                          matched_users=settings.get("matched", {}).get("users", 0))  # fmt: skip
    with write_stage_output(out, EVAL_KIND, inputs=inputs, config=settings, extra={"method": method, "kind": kind}) as tmp:
        result.per_user.to_parquet(tmp / "per_user.parquet", index=False)
        if result.generations is not None:
            result.generations.to_parquet(tmp / "generations.parquet", index=False)
        if result.catalogue is not None:
            result.catalogue.to_parquet(tmp / "catalogue.parquet", index=False)
        if result.matched is not None:
            result.matched.to_parquet(tmp / "matched.parquet", index=False)
    return result


def score_method(rec: Recommender, data: ProcessedData, users: list[int], kind: str, *, generation_users: int | None,
                 max_new_tokens: int, progress: bool = False, matched_users: int = 0) -> MethodResult:  # fmt: skip
    """Everything the evaluation measures of one loaded method on the test split (``matched_users``: the first N
    users ranked again on their popularity-matched candidate sets)."""
    ids, histories, candidates, targets = split_inputs(data, users)
    with phase("test scoring: candidate sets"):
        scores = np.asarray(rec.score(ids, histories, candidates, progress=progress), dtype=np.float64)
    if scores.shape != candidates.shape:
        raise ValueError(f"method '{rec.name}': score() returned {scores.shape}, expected {candidates.shape}")
    per_user = per_user_frame(ids, scores, targets)
    catalogue = generations = None
    if rec.capabilities.full_catalogue:
        with phase("test scoring: full catalogue"):
            full = np.asarray(rec.score_catalogue(ids, histories, progress=progress), dtype=np.float64)
        if full.shape != (len(ids), data.num_items + 1):
            raise ValueError(f"method '{rec.name}': score_catalogue() returned {full.shape}, expected "
                             f"{(len(ids), data.num_items + 1)}")  # fmt: skip
        test_targets = np.array([data.target(int(u), "test") for u in ids], dtype=np.int64)
        catalogue = catalogue_frame(ids, full, histories, test_targets)
    n_gen = len(ids) if generation_users is None else min(generation_users, len(ids))
    if rec.capabilities.generation and n_gen:
        with phase("test scoring: generation"):
            g = rec.generate(ids[:n_gen], histories[:n_gen], candidates[:n_gen], max_new_tokens=max_new_tokens)
        generations = generation_metrics(ids[:n_gen], g.answers, g.shown, targets[:n_gen])
    matched = None
    if matched_users:
        m_ids, m_histories, m_candidates, m_targets = matched_inputs(data, list(users[:matched_users]))
        with phase("test scoring: popularity-matched sets"):
            m_scores = np.asarray(rec.score(m_ids, m_histories, m_candidates, progress=progress), dtype=np.float64)
        matched = per_user_frame(m_ids, m_scores, m_targets)
    return MethodResult(rec.name, kind, per_user, generations, catalogue, matched)


def matched_table(results: dict[str, MethodResult], **bootstrap) -> pd.DataFrame:
    """``results_table`` on the popularity-matched candidate sets (the methods that have them)."""
    on_matched = {m: dataclasses.replace(r, per_user=r.matched) for m, r in results.items() if r.matched is not None}
    return results_table(on_matched, **bootstrap) if on_matched else pd.DataFrame()


def evaluate_all(ctx: MethodContext, *, progress: bool = True) -> dict[str, MethodResult]:
    """Every method of the run, in table order."""
    return {m: evaluate_method(ctx, m, progress=progress) for m in run_methods(ctx.config)}


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


MAIN_FAMILY = "main"
PAIRED_COLUMNS = ["method", "versus", "metric", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm", "family",
                  "family_size", "users"]  # fmt: skip


def paired_comparisons(results: dict[str, MethodResult], pairs: list[tuple[str, str]], metrics: tuple[str, ...], *,
                       replicas: dict[str, tuple[str, int]], seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Paired sign-flip tests of method a against method b on the same users, per metric, with the raw
    p-value (``p_value``) and its Holm adjustment within the test's family (``p_holm``).

    A family is the set of tests read together, all metrics included: family "main" is every
    comparison between the run's methods as trained (the study's table of comparisons); the
    comparisons of another seed's copies (``replicas``: ``methods.replicates``) are "seed N", one
    family per seed, as each seed repeats the study's comparisons for its copies. So a main comparison
    gets the same ``p_holm`` whether or not the seeds' copies are among ``results``. ``family_size``
    is the number of tests in the row's family.
    """
    frames = aligned(results)
    rows = []
    for a, b in pairs:
        if a not in frames or b not in frames:
            continue
        seeds = sorted({str(replicas[x][1]) for x in (a, b) if x in replicas})
        family = f"seed {'/'.join(seeds)}" if seeds else MAIN_FAMILY
        for m in metrics:
            r = paired_test(frames[a][m].to_numpy(), frames[b][m].to_numpy(), seed=seed)
            rows.append({"method": a, "versus": b, "metric": m, **r, "family": family})
    out = pd.DataFrame(rows, columns=[c for c in PAIRED_COLUMNS if c not in ("p_holm", "family_size")])
    by_family = out.groupby("family", sort=False)["p_value"]
    out["p_holm"] = by_family.transform(holm_adjust) if len(out) else []
    out["family_size"] = by_family.transform("size") if len(out) else []
    return out[PAIRED_COLUMNS]


def chance_table(num_candidates: int, digits: int = 4) -> pd.DataFrame:
    """What a random ranking gets in expectation among ``num_candidates`` (a row for the results table)."""
    m = metrics_from_counts(np.array([0]), np.array([num_candidates - 1]))
    return pd.DataFrame({k: [f"{float(m[k].iloc[0]):.{digits}f}"] for k in METRICS},
                        index=pd.Index(["chance (expected)"], name="method"))  # fmt: skip


def catalogue_table(results: dict[str, MethodResult], protocol: str = "masked", *, n_boot: int = 1000,
                    ci: float = 0.95, seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Full-catalogue ranking of the methods that score every item, like ``results_table``.

    ``protocol``: "masked" ranks the target among items the user never interacted with (the kit's
    protocol), "unmasked" among every item (RecBole's for sequential models)."""
    if protocol not in CATALOGUE_PROTOCOLS:
        raise ValueError(f"protocol must be one of {CATALOGUE_PROTOCOLS}, got {protocol!r}")
    frames = {m: MethodResult(m, r.kind, r.catalogue[r.catalogue["protocol"] == protocol].drop(columns="protocol"))
              for m, r in results.items() if r.catalogue is not None}  # fmt: skip
    if not frames:
        return pd.DataFrame()
    return results_table(frames, n_boot=n_boot, ci=ci, seed=seed)


def generation_table(results: dict[str, MethodResult]) -> pd.DataFrame:
    """Per generating method, the matching rules side by side: ValidRatio_<rule> (share of answers that
    name exactly one candidate), HR@1_<rule> (share that name the target) and "HR@1 among valid_<rule>"."""
    rows = {}
    for m, r in results.items():
        if r.generations is not None and len(r.generations):
            g = r.generations
            valid = {rule: g[f"valid_{rule}"].astype(bool) for rule in MATCH_RULES}
            hit = {rule: g[f"hit_{rule}"].astype(bool) for rule in MATCH_RULES}
            rows[m] = {"users": len(g), **{f"ValidRatio_{k}": v.mean() for k, v in valid.items()},
                       **{f"HR@1_{k}": h.mean() for k, h in hit.items()},
                       **{f"HR@1 among valid_{k}": hit[k][v].mean() if v.any() else float("nan") for k, v in valid.items()}}  # fmt: skip
    return pd.DataFrame(rows).T


def seed_study(paired: pd.DataFrame, replicas: dict[str, tuple[str, int]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paired tests of every comparison whose methods were also trained with other seeds, one row per
    seed ("run" is the methods as the run trains them; N their copies with seed N, compared with each
    other), and a summary per comparison and metric: the seeds' mean difference, its spread (sample sd),
    and how many seeds have a Holm-adjusted p < 0.05 in each direction. ``paired``: ``paired_comparisons``,
    whose ``p_holm`` each row keeps (the run's row adjusted within the main family, seed N's within
    seed N's). ``replicas``: ``methods.replicates``."""
    cols = ["method", "versus", "metric", "seed", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm"]
    rows = []
    for r in paired.to_dict(orient="records"):
        a, b = replicas.get(r["method"]), replicas.get(r["versus"])
        if a is None and b is None:
            rows.append({**r, "seed": "run"})
        elif a is not None and b is not None and a[1] == b[1]:
            rows.append({**r, "method": a[0], "versus": b[0], "seed": str(a[1])})
    per_seed = pd.DataFrame(rows, columns=[*cols, *[c for c in paired.columns if c not in cols]])
    seeded = {(m, v) for m, v, s in zip(per_seed["method"], per_seed["versus"], per_seed["seed"], strict=True) if s != "run"}
    per_seed = per_seed[[(m, v) in seeded for m, v in zip(per_seed["method"], per_seed["versus"], strict=True)]]
    per_seed = per_seed[cols].reset_index(drop=True)
    summary = []
    for (m, v, metric), g in per_seed.groupby(["method", "versus", "metric"], sort=False):
        summary.append({"method": m, "versus": v, "metric": metric, "seeds": len(g), "mean_diff": g["mean_diff"].mean(),
                        "sd_diff": g["mean_diff"].std(ddof=1) if len(g) > 1 else float("nan"),
                        "min_diff": g["mean_diff"].min(), "max_diff": g["mean_diff"].max(),
                        "seeds_p_holm<0.05_above": int(((g["p_holm"] < 0.05) & (g["mean_diff"] > 0)).sum()),
                        "seeds_p_holm<0.05_below": int(((g["p_holm"] < 0.05) & (g["mean_diff"] < 0)).sum())})  # fmt: skip
    return per_seed, pd.DataFrame(summary)


def write_tables(paths: Any, table: pd.DataFrame, paired: pd.DataFrame, generation: pd.DataFrame,
                 catalogue: dict[str, pd.DataFrame] | None = None, chance: pd.DataFrame | None = None,
                 seeds: tuple[pd.DataFrame, pd.DataFrame] | None = None,
                 matched: pd.DataFrame | None = None) -> dict[str, Path]:  # fmt: skip
    """results.csv / results.md (and the paired tests with their Holm families, the generation protocol, the
    full-catalogue tables per protocol and the seed study's per-seed tests and summary) under ``<run>/eval/``."""
    flat = table.copy()
    flat.columns = [f"{m} {c}" for m, c in flat.columns]
    files = {
        "results_csv": paths.eval / "results.csv",
        "results_md": paths.eval / "results.md",
        "paired_csv": paths.eval / "paired_tests.csv",
        "generation_csv": paths.eval / "generation_protocol.csv",
    }
    atomic_write_text(files["results_csv"], flat.to_csv())
    shown = format_table(table) if chance is None else pd.concat([format_table(table), chance])
    atomic_write_text(files["results_md"], markdown_table(shown))
    atomic_write_text(files["paired_csv"], paired.to_csv(index=False))
    atomic_write_text(files["generation_csv"], generation.to_csv())
    if matched is not None and len(matched):
        files["matched_csv"], files["matched_md"] = paths.eval / "results_matched.csv", paths.eval / "results_matched.md"
        flat_m = matched.copy()
        flat_m.columns = [f"{m} {c}" for m, c in flat_m.columns]
        atomic_write_text(files["matched_csv"], flat_m.to_csv())
        atomic_write_text(files["matched_md"], markdown_table(format_table(matched) if chance is None
                                                              else pd.concat([format_table(matched), chance])))  # fmt: skip
    for protocol, frame in (catalogue or {}).items():
        if len(frame):
            files[f"catalogue_{protocol}_md"] = paths.eval / f"catalogue_{protocol}.md"
            atomic_write_text(files[f"catalogue_{protocol}_md"], markdown_table(format_table(frame)))
    if seeds is not None and len(seeds[0]):
        files["seed_study_csv"], files["seed_summary_csv"] = paths.eval / "seed_study.csv", paths.eval / "seed_summary.csv"
        atomic_write_text(files["seed_study_csv"], seeds[0].to_csv(index=False))
        atomic_write_text(files["seed_summary_csv"], seeds[1].to_csv(index=False))
    return files


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    header = [frame.index.name or ""] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [str(v) for v in row]) + " |")
    return "\n".join(lines) + "\n"
