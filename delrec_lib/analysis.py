"""The analyses of notebook 08: where methods differ, whether a student follows its teacher, and
whether each method uses the order of the history at all.

Every function takes the per-user results of notebook 07 (one row per user and method, joined on
``user_id``) and returns a tidy table that the plots in ``plots.py`` draw. Methods are reached only
through the registry (``delrec_lib.methods``), so every registered method is analysed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .artifacts import is_complete, sha256_json, write_stage_output
from .config import RunConfig
from .data.explore import item_popularity
from .data.processed import ProcessedData
from .evaluation import POPULARITY, MethodResult, aligned, split_inputs
from .methods import Curve, MethodContext, families, family_of
from .metrics import holm_adjust, paired_test, per_user_frame

SHUFFLE_KIND = "order-diagnostic"


# --------------------------------------------------------------------------------------------
# Teacher-student agreement
# --------------------------------------------------------------------------------------------


def teacher_agreement(results: dict[str, MethodResult], student: str, teacher: str, num_candidates: int) -> pd.DataFrame:
    """How often the student's top-1 candidate is the teacher's, split by whether the teacher was right.

    Beside it, what needs no learning gets on the same users: the popularity ranking's agreement with
    the same teacher (when the run has popularity) and chance (one candidate in C)."""
    frames = aligned({student: results[student], teacher: results[teacher]})
    s, t = frames[student], frames[teacher]
    teacher_right = t["top1"] == t["target_position"]
    same = s["top1"] == t["top1"]
    student_right = s["top1"] == s["target_position"]
    pop_same = None
    if POPULARITY in results and POPULARITY not in (student, teacher):
        p = aligned({POPULARITY: results[POPULARITY], teacher: results[teacher]})[POPULARITY]
        pop_same = p["top1"] == t["top1"]
    chance = 1.0 / num_candidates
    rows = []
    for label, mask in (("teacher right", teacher_right), ("teacher wrong", ~teacher_right), ("all users", teacher_right | True)):
        rows.append({
            "student": student, "teacher": teacher, "group": label, "users": int(mask.sum()),
            "agreement": float(same[mask].mean()) if mask.any() else float("nan"),
            "popularity agreement": float(pop_same[mask].mean()) if pop_same is not None and mask.any() else float("nan"),
            "chance": chance,
            "student HR@1": float(student_right[mask].mean()) if mask.any() else float("nan"),
        })  # fmt: skip
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Accuracy by history length and by the target's popularity
# --------------------------------------------------------------------------------------------


def _by_group(results: dict[str, MethodResult], groups: pd.Series, metrics=("HR@1", "NDCG@10")) -> pd.DataFrame:
    frames = aligned(results)
    rows = []
    for method, f in frames.items():
        g = groups.loc[f.index]
        for label in groups.cat.categories:
            mask = (g == label).to_numpy()
            rows.append({"method": method, "group": label, "users": int(mask.sum()),
                         **{m: float(f[m].to_numpy()[mask].mean()) if mask.any() else float("nan") for m in metrics}})  # fmt: skip
    return pd.DataFrame(rows)


def by_history_length(results: dict[str, MethodResult], data: ProcessedData, edges=(0, 30, 60, 120, 250, 10_000)) -> pd.DataFrame:
    """Metrics per bin of the test history's length (train + valid items)."""
    users = next(iter(aligned(results).values())).index
    lengths = pd.Series({int(u): len(data.history(int(u), "test")) for u in users})
    labels = [f"{lo + 1}-{hi}" if hi < 10_000 else f">{lo}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    groups = pd.cut(lengths, bins=list(edges), labels=labels)
    return _by_group(results, groups)


def by_target_popularity(results: dict[str, MethodResult], data: ProcessedData) -> pd.DataFrame:
    """Metrics for cold, mid and popular test targets (tertiles of the target's train-split popularity)."""
    users = next(iter(aligned(results).values())).index
    pop = item_popularity(data, split="train")
    counts = pd.Series({int(u): int(pop[data.target(int(u), "test") - 1]) for u in users})
    low, high = np.quantile(counts, [1 / 3, 2 / 3])
    labels = [f"cold (<= {low:.0f})", f"mid ({low:.0f}-{high:.0f}]", f"popular (> {high:.0f})"]
    groups = pd.cut(counts, bins=[-1, low, high, np.inf], labels=labels)
    return _by_group(results, groups)


# --------------------------------------------------------------------------------------------
# "Lost in Sequence" order diagnostic
# --------------------------------------------------------------------------------------------


def shuffle_window(history: list[int], window: int, rng: np.random.Generator) -> list[int]:
    """The history with the order of its last ``window`` items (what the model sees) permuted.

    Shuffling inside the window keeps the set of items the model sees unchanged, so any change in
    its ranking comes from the order alone.
    """
    if window <= 1 or len(history) <= 1:
        return list(history)
    head, tail = list(history[:-window]), list(history[-window:])
    return head + [tail[i] for i in rng.permutation(len(tail))]


def diagnostic_users(data: ProcessedData, config: RunConfig) -> list[int]:
    users = data.user_ids(config.max_users).tolist()
    n = config.eval.shuffle_users
    if n is None or n >= len(users):
        return users
    rng = np.random.default_rng([config.eval.seed, 13])
    return sorted(int(u) for u in rng.choice(users, size=n, replace=False))


def shuffled_histories(ctx: MethodContext, method: str, users: list[int]):
    """(method loaded, users, shuffled test histories, candidates, targets): each user's history with the
    items the method reads (``visible_history``) in a seeded random order, the rest untouched."""
    rec = family_of(ctx.config, method).load(ctx, method)
    ids, histories, candidates, targets = split_inputs(ctx.data, users)
    shuffled = [shuffle_window(h, rec.visible_history(h), np.random.default_rng([ctx.config.eval.seed, int(u), 17]))
                for u, h in zip(ids, histories, strict=True)]  # fmt: skip
    return rec, ids, shuffled, candidates, targets


def shuffled_results(ctx: MethodContext, method: str, users: list[int]) -> pd.DataFrame:
    """Per-user test results of ``method`` with every user's visible history shuffled (cached)."""
    family = family_of(ctx.config, method)
    inputs = family.identity(ctx, method)
    settings = {"seed": ctx.config.eval.seed, "users": sha256_json(users), "window": "visible_history"}
    out = ctx.paths.eval / "shuffled" / method
    if is_complete(out, SHUFFLE_KIND, inputs=inputs, config=settings):
        return pd.read_parquet(out / "per_user.parquet")
    rec, ids, shuffled, candidates, targets = shuffled_histories(ctx, method, users)
    frame = per_user_frame(ids, np.asarray(rec.score(ids, shuffled, candidates), dtype=np.float64), targets)
    with write_stage_output(out, SHUFFLE_KIND, inputs=inputs, config=settings, extra={"method": method}) as tmp:
        frame.to_parquet(tmp / "per_user.parquet", index=False)
    return frame


def order_diagnostic(original: dict[str, MethodResult], shuffled: dict[str, pd.DataFrame],
                     metrics=("HR@1", "NDCG@10"), seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Each method's metric on the same users with the original and with shuffled history order.

    ``p_value`` is the raw p-value of the paired test of the drop, ``p_holm`` its Holm adjustment within
    this table: the order diagnostic's tests (every method and metric) are one family, apart from the
    evaluation's paired tests."""
    rows = []
    for method, sh in shuffled.items():
        orig = original[method].per_user.set_index("user_id").loc[sh["user_id"]]
        sh = sh.set_index("user_id")
        for m in metrics:
            test = paired_test(orig[m].to_numpy(), sh[m].to_numpy(), seed=seed)
            rows.append({"method": method, "metric": m, "users": len(sh), "original": float(orig[m].mean()),
                         "shuffled": float(sh[m].mean()), "drop": test["mean_diff"], "drop_ci_low": test["ci_low"],
                         "drop_ci_high": test["ci_high"], "p_value": test["p_value"]})  # fmt: skip
    out = pd.DataFrame(rows, columns=["method", "metric", "users", "original", "shuffled", "drop", "drop_ci_low",
                                      "drop_ci_high", "p_value"])  # fmt: skip
    out["p_holm"] = holm_adjust(out["p_value"].to_numpy())
    return out


# --------------------------------------------------------------------------------------------
# A written reading of the numbers
# --------------------------------------------------------------------------------------------


def _sig(p_holm: float, p_raw: float, alpha: float = 0.05) -> str:
    """Significance by the Holm-adjusted p-value, the raw one beside it."""
    verdict = "significant" if p_holm < alpha else "not significant"
    return f"{verdict} (Holm-adjusted p = {p_holm:.3g}, raw p = {p_raw:.3g})"


def reading(table: pd.DataFrame, paired: pd.DataFrame, agreement: pd.DataFrame | None, order: pd.DataFrame | None,
            metric: str = "NDCG@10") -> str:  # fmt: skip
    """A short paragraph per finding, every number taken from the tables passed in. Significance is stated
    by the Holm-adjusted p-values (``p_holm``) of ``paired`` (``evaluation.paired_comparisons``) and
    ``order`` (``order_diagnostic``)."""
    means = table[(metric, "mean")].sort_values(ascending=False)
    best, second = means.index[0], means.index[1] if len(means) > 1 else None
    lines = [f"- **Best method by {metric}**: {best} with {means.iloc[0]:.4f} "
             f"[{table.loc[best, (metric, 'ci_low')]:.4f}, {table.loc[best, (metric, 'ci_high')]:.4f}]"
             + (f", ahead of {second} ({means.iloc[1]:.4f})." if second else ".")]  # fmt: skip
    if POPULARITY in means.index:
        floor = means[POPULARITY]
        below = [m for m in means.index if m != POPULARITY and means[m] <= floor]
        lines.append(f"- **Popularity floor** ({metric} {floor:.4f}): "
                     + (f"not cleared by {', '.join(below)}." if below else "every other method clears it."))  # fmt: skip
    for row in paired.itertuples(index=False):
        if row.metric != metric and row.metric != "HR@1":
            continue
        direction = "above" if row.mean_diff > 0 else "below"
        lines.append(f"- **{row.method} vs {row.versus}** ({row.metric}): {abs(row.mean_diff):.4f} {direction} "
                     f"[{row.ci_low:+.4f}, {row.ci_high:+.4f}], {_sig(row.p_holm, row.p_value)}.")  # fmt: skip
    if agreement is not None and len(agreement):
        for (student, teacher), g in agreement.groupby(["student", "teacher"], sort=False):
            right = g[g["group"] == "teacher right"].iloc[0]
            wrong = g[g["group"] == "teacher wrong"].iloc[0]
            every = g[g["group"] == "all users"].iloc[0]
            baseline = f"chance {every['chance']:.1%}"
            if every["popularity agreement"] == every["popularity agreement"]:  # not NaN
                baseline = f"the most popular candidate {every['popularity agreement']:.1%}, " + baseline
            lines.append(f"- **{student} follows {teacher}**: same top-1 for {every['agreement']:.1%} of all users "
                         f"({baseline}); {right['agreement']:.1%} where the teacher is right and "
                         f"{wrong['agreement']:.1%} where it is wrong.")  # fmt: skip
    if order is not None and len(order):
        o = order[order["metric"] == metric]
        for row in o.itertuples(index=False):
            effect = "uses the order" if row.p_holm < 0.05 and row.drop > 0 else "shows no significant use of the order"
            lines.append(f"- **Shuffled history, {row.method}**: {metric} {row.original:.4f} -> {row.shuffled:.4f} "
                         f"(drop {row.drop:+.4f}, {_sig(row.p_holm, row.p_value)}): it {effect}.")  # fmt: skip
    return "\n".join(lines)


def collect_curves(ctx: MethodContext) -> dict[str, list[Curve]]:
    """Every registered family's training curves in the run, grouped by stage (one panel each)."""
    out: dict[str, list[Curve]] = {}
    for family in families(ctx.config):
        for curve in family.curves(ctx):
            out.setdefault(curve.stage, []).append(curve)
    return out
