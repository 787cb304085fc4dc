"""Tables and figures of notebook 06 (P2Rec): clusters, the SFT, enhanced vs plain teachers, the seed study.

Everything here reads the stage's artifacts and reports the validation split only: the test table is the
evaluation notebook's, where the enhanced teachers appear through the method registry.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..artifacts import RunPaths, read_json
from ..config import RunConfig, parse_p2rec_variant
from ..data import ProcessedData
from ..metrics import paired_test
from ..teachers.stage import POPULARITY
from .stage import SEEDS, states_name


def cluster_table(sft_dir: Path, data: ProcessedData, examples: int = 4) -> pd.DataFrame:
    """Per latent category: items, share of all train interactions, and its most watched titles."""
    cats = pd.read_parquet(Path(sft_dir) / "categories.parquet")
    counts = np.zeros(data.num_items + 1, dtype=np.int64)
    for u in data.user_ids():
        np.add.at(counts, np.asarray(data.train_items(int(u)), dtype=np.int64), 1)
    cats["train_count"] = counts[cats["item_id"].to_numpy()]
    total = cats["train_count"].sum()
    rows = []
    for k, g in cats.groupby("category"):
        top = g.sort_values("train_count", ascending=False).head(examples)
        rows.append({"category": int(k), "items": len(g), "share of train interactions": round(g["train_count"].sum() / total, 3),
                     "most watched": " | ".join(data.titles[i] for i in top["item_id"])})  # fmt: skip
    return pd.DataFrame(rows).set_index("category")


def plot_sft(sft_dir: Path, axes=None):
    """Training loss (per logged step) and held-out users' loss per evaluation, with the heuristics."""
    sft_dir = Path(sft_dir)
    m = read_json(sft_dir / "metrics.json")
    history = pd.read_csv(sft_dir / "history.csv")
    log = pd.read_csv(sft_dir / "train_log.csv")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    metric = m["loss"]
    axes[0].plot(log["step"], log["loss"], marker=".")
    axes[0].set(xlabel="step", ylabel=f"training {metric}", title="User-level SFT: training loss")
    axes[1].plot(history["step"], history[metric], marker="o", label="tuned LLM (held-out users)")
    axes[1].axhline(m["heldout_prior"][metric], color="gray", ls="--", label="mean distribution for everyone")
    axes[1].axhline(m["heldout_uniform"][metric], color="gray", ls=":", label="uniform")
    best = history.loc[history["step"] == m["best_step"]]
    axes[1].scatter(best["step"], best[metric], s=80, facecolors="none", edgecolors="k")
    axes[1].set(xlabel="step", ylabel=f"held-out {metric}", title="Held-out users (circle = kept)")
    axes[1].legend(fontsize=8)
    return axes


def sft_summary(sft_dir: Path) -> pd.DataFrame:
    """Held-out users: the tuned LLM beside the two trivial predictions, on every distribution metric."""
    m = read_json(Path(sft_dir) / "metrics.json")
    rows = {"uniform": m["heldout_uniform"], "mean distribution (train users)": m["heldout_prior"],
            "tuned LLM (kept step)": m["heldout_best"]}  # fmt: skip
    return pd.DataFrame(rows).T.rename(columns={"top1": "top category right"})


def plot_predictions(sft_dir: Path, users: int = 4, axes=None):
    """True vs predicted category distribution of the first ``users`` held-out users."""
    t = pd.read_parquet(Path(sft_dir) / "targets.parquet")
    held = t[t["role"] == "heldout"].head(users)
    if axes is None:
        _, axes = plt.subplots(1, len(held), figsize=(3.2 * len(held), 3), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, row in zip(axes, held.itertuples(), strict=False):
        k = np.arange(len(row.target))
        ax.bar(k - 0.2, row.target, width=0.4, label="true (train items)")
        ax.bar(k + 0.2, row.prediction, width=0.4, label="predicted")
        ax.set(title=f"user {row.user_id}", xlabel="category")
    axes[0].set_ylabel("share")
    axes[0].legend(fontsize=8)
    return axes


def _metric(m: dict, protocol: str, metric: str, split: str = "valid") -> dict:
    return m[split][protocol][metric]


def validation_table(paths: RunPaths, config: RunConfig, metrics=("NDCG@10", "HR@10")) -> pd.DataFrame:
    """Validation split, both protocols: popularity, each plain teacher the run enhances, each P2Rec method;
    "mean [95% CI]" per cell."""
    names = {POPULARITY: paths.teachers / POPULARITY}
    for v in map(parse_p2rec_variant, config.p2rec.variants):
        names.setdefault(v.teacher, paths.teachers / v.teacher)
    for v in config.p2rec.variants:
        names[v] = paths.p2rec / v
    rows = {}
    for name, d in names.items():
        if not (d / "metrics.json").is_file():
            continue
        m = read_json(d / "metrics.json")
        rows[name] = {(p, k): "{mean:.4f} [{ci_low:.4f}, {ci_high:.4f}]".format(**_metric(m, p, k))
                      for p in ("full", "candidates") for k in metrics}  # fmt: skip
        if name != POPULARITY:
            rows[name][("training", "epochs")] = m["epochs"]
    return pd.DataFrame(rows).T


def paired_validation(paths: RunPaths, config: RunConfig, metric: str = "NDCG@10") -> pd.DataFrame:
    """Each P2Rec method minus its plain teacher (and an ablation minus the main method), per user on the
    validation split: mean difference, 95% CI and sign-flip p-value, both protocols."""
    def per_user(d: Path, protocol: str) -> pd.Series:
        pu = pd.read_parquet(d / "per_user.parquet")
        pu = pu[(pu["split"] == "valid") & (pu["protocol"] == protocol)]
        return pu.set_index("user_id")[metric].sort_index()

    rows = []
    for v in map(parse_p2rec_variant, config.p2rec.variants):
        others = [(v.teacher, paths.teachers / v.teacher)]
        main = f"p2rec-{v.teacher}"
        if v.name != main and main in config.p2rec.variants:
            others.append((main, paths.p2rec / main))
        if not (paths.p2rec / v.name / "per_user.parquet").is_file():
            continue
        for other, d in others:
            if not (d / "per_user.parquet").is_file():
                continue
            for protocol in ("full", "candidates"):
                a, b = per_user(paths.p2rec / v.name, protocol), per_user(d, protocol)
                t = paired_test(a.to_numpy(), b.loc[a.index].to_numpy())
                rows.append({"method": v.name, "versus": other, "protocol": protocol, f"{metric} diff": round(t["mean_diff"], 4),
                             "ci_low": round(t["ci_low"], 4), "ci_high": round(t["ci_high"], 4), "p_value": round(t["p_value"], 4)})  # fmt: skip
    return pd.DataFrame(rows)


def seed_study(paths: RunPaths, config: RunConfig, metric: str = "NDCG@10") -> pd.DataFrame:
    """One row per (method, seed): the plain and the enhanced teacher's validation ``metric`` (full ranking and
    candidates) and their difference. The first seed is the run's teachers.seed (notebook 02's teacher and
    the method itself)."""
    rows = []
    for name in config.p2rec.seed_study_variants():
        v = parse_p2rec_variant(name)
        pairs = [(config.teachers.seed, paths.teachers / v.teacher, paths.p2rec / name)]
        pairs += [(s, paths.p2rec / SEEDS / f"{v.teacher}-s{s}", paths.p2rec / SEEDS / f"{name}-s{s}") for s in config.p2rec.seeds]
        for seed, plain_dir, enh_dir in pairs:
            if not ((plain_dir / "metrics.json").is_file() and (enh_dir / "metrics.json").is_file()):
                continue
            plain, enh = read_json(plain_dir / "metrics.json"), read_json(enh_dir / "metrics.json")
            row = {"method": name, "seed": seed}
            for protocol in ("full", "candidates"):
                p, e = _metric(plain, protocol, metric)["mean"], _metric(enh, protocol, metric)["mean"]
                row.update({f"plain {protocol}": round(p, 4), f"enhanced {protocol}": round(e, 4), f"diff {protocol}": round(e - p, 4)})
            row.update({"plain epochs": plain["epochs"], "enhanced epochs": enh["epochs"]})
            rows.append(row)
    return pd.DataFrame(rows)


def seed_summary(study: pd.DataFrame) -> pd.DataFrame:
    """Per method: seeds, mean and standard deviation of the paired differences, and how many seeds the
    enhanced teacher wins."""
    if study.empty:
        return pd.DataFrame()
    out = {}
    for name, g in study.groupby("method", sort=False):
        row = {"seeds": len(g)}
        for protocol in ("full", "candidates"):
            d = g[f"diff {protocol}"]
            row.update({f"mean diff {protocol}": round(d.mean(), 4), f"sd {protocol}": round(d.std(ddof=1), 4) if len(d) > 1 else float("nan"),
                        f"enhanced wins {protocol}": int((d > 0).sum())})  # fmt: skip
        out[name] = row
    return pd.DataFrame(out).T


def time_budget(paths: RunPaths, config: RunConfig) -> pd.DataFrame:
    """Wall seconds of every part of the stage, as each artifact recorded them (re-runs skipped count 0)."""
    rows = []
    for name in sorted({states_name(config, parse_p2rec_variant(v)) for v in config.p2rec.variants}):
        f = paths.p2rec / name / "metrics.json"
        if f.is_file():
            m = read_json(f)
            if "train_seconds" in m:
                rows.append({"part": f"{name}: SFT", "seconds": m["train_seconds"]})
            rows.append({"part": f"{name}: item states", "seconds": m["states_seconds"]})
    teachers = [paths.p2rec / v for v in config.p2rec.variants]
    teachers += sorted((paths.p2rec / SEEDS).glob("*")) if (paths.p2rec / SEEDS).is_dir() else []
    for d in teachers:
        if (d / "metrics.json").is_file():
            m = read_json(d / "metrics.json")
            rows.append({"part": f"{d.relative_to(paths.p2rec)}: teacher", "seconds": m["train_seconds"] + m["export_seconds"]})
    df = pd.DataFrame(rows)
    if not df.empty:
        df = pd.concat([df, pd.DataFrame([{"part": "total", "seconds": df["seconds"].sum()}])], ignore_index=True)
        df["minutes"] = (df["seconds"] / 60).round(2)
    return df
