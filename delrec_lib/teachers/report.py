"""Tables and figures of the teacher stage (notebook 02 and the CLI)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..artifacts import read_json
from ..data import ProcessedData
from ..metrics import METRICS
from .stage import POPULARITY, TeacherResult


def _metrics_of(results: Mapping[str, TeacherResult] | str | Path, names=None) -> dict[str, dict]:
    if isinstance(results, (str, Path)):
        root = Path(results)
        names = names or [p.name for p in sorted(root.iterdir()) if (p / "metrics.json").is_file()]
        return {n: read_json(root / n / "metrics.json") for n in names}
    return {n: r.metrics for n, r in results.items() if names is None or n in names}


def metrics_long(results, names=None) -> pd.DataFrame:
    """One row per (model, split, protocol, metric): mean, ci_low, ci_high."""
    rows = []
    for name, m in _metrics_of(results, names).items():
        for split in ("valid", "test"):
            for protocol in ("full", "candidates"):
                for metric in METRICS:
                    v = m[split][protocol][metric]
                    rows.append({"model": name, "split": split, "protocol": protocol, "metric": metric, **v})
    return pd.DataFrame(rows)


def metrics_table(results, split: str = "test", protocol: str | None = None, names=None, digits: int = 4) -> pd.DataFrame:
    """Rows: models (popularity first); columns: (protocol, metric) as "mean [low, high]" (95% bootstrap CI)."""
    df = metrics_long(results, names)
    df = df[df["split"] == split]
    if protocol is not None:
        df = df[df["protocol"] == protocol]
    df = df.assign(value=[f"{r.mean:.{digits}f} [{r.ci_low:.{digits}f}, {r.ci_high:.{digits}f}]" for r in df.itertuples()])
    table = df.pivot_table(index="model", columns=["protocol", "metric"], values="value", aggfunc="first", sort=False)
    order = [POPULARITY] + [m for m in table.index if m != POPULARITY]
    table = table.reindex([m for m in order if m in table.index])
    cols = [(p, m) for p in ("full", "candidates") for m in METRICS if (p, m) in table.columns]
    return table[cols]


def training_summary(results, names=None) -> pd.DataFrame:
    rows = []
    for name, m in _metrics_of(results, names).items():
        if "epochs" not in m:  # popularity and rule teachers train nothing
            continue
        rows.append({
            "model": name, "epochs": m["epochs"], "best epoch": m["best_epoch"], "stopped": m["stopped"],
            "train examples": m["train_examples"], "parameters": m["parameters"],
            "train s": m["train_seconds"], "s / epoch": m["seconds_per_epoch"],
            "valid NDCG@10": round(m["valid"]["full"]["NDCG@10"]["mean"], 4),
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()


def plot_curves(teachers_dir: str | Path, names, axes=None):
    """Training loss and validation NDCG@10 (full ranking) per epoch, one line per teacher."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for name in names:
        path = Path(teachers_dir) / name / "curves.csv"
        if not path.is_file():
            continue
        c = pd.read_csv(path)
        axes[0].plot(c["epoch"], c["train_loss"], marker=".", label=name)
        axes[1].plot(c["epoch"], c["NDCG@10"], marker=".", label=name)
        best = c.loc[c["NDCG@10"].idxmax()]
        axes[1].scatter([best["epoch"]], [best["NDCG@10"]], s=60, facecolors="none", edgecolors="k")
    axes[0].set(xlabel="epoch", ylabel="training loss", title="Training loss")
    axes[1].set(xlabel="epoch", ylabel="NDCG@10", title="Validation NDCG@10 (full ranking; circle = kept)")
    for ax in axes:
        ax.legend()
    return axes


def example_user(data: ProcessedData, teachers_dir: str | Path, user_id: int, names, k: int = 10, split: str = "test") -> pd.DataFrame:
    """A user's latest history items and each model's top-k (titles; the target marked with *)."""
    titles = data.titles
    target = data.target(user_id, split)
    history = data.history(user_id, split)
    cols = {"latest history (oldest first)": [titles[i] for i in history[-k:]]}
    for name in names:
        top = pd.read_parquet(Path(teachers_dir) / name / f"topk_{split}.parquet").set_index("user_id")
        items = list(top.loc[user_id, "items"])[:k]
        cols[name] = [("* " if i == target else "") + titles[i] for i in items]
    n = max(len(v) for v in cols.values())
    table = pd.DataFrame({c: v + [""] * (n - len(v)) for c, v in cols.items()})
    table.index = pd.RangeIndex(1, n + 1, name="rank")
    return table


def plot_metric_bars(results, split: str = "test", metrics=("NDCG@10", "HR@10"), axes=None, names=None):
    """Bars with 95% CIs of each model's metrics, one panel per protocol (full, candidates)."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    df = metrics_long(results, names)
    df = df[(df["split"] == split) & df["metric"].isin(metrics)]
    for ax, protocol in zip(axes, ("full", "candidates"), strict=True):
        d = df[df["protocol"] == protocol]
        order = [POPULARITY] + [m for m in dict.fromkeys(d["model"]) if m != POPULARITY]
        mean, lo, hi = (d.pivot(index="model", columns="metric", values=c).reindex(order)[list(metrics)]
                        for c in ("mean", "ci_low", "ci_high"))  # fmt: skip
        mean.plot.bar(ax=ax, yerr=[(mean - lo).T.values, (hi - mean).T.values], capsize=3, rot=0)
        ax.set(title=f"{split.capitalize()}, {protocol} ranking (95% CI)", xlabel="")
    return axes
