"""Figures shared by the notebooks; each draws on a given matplotlib Axes and returns it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np

from .data.explore import item_popularity
from .data.processed import ProcessedData
from .phases import phase


def plot_sequence_lengths(data: ProcessedData, ax: plt.Axes | None = None) -> plt.Axes:
    ax = ax or plt.gca()
    lengths = data.sequences["items"].map(len).to_numpy()
    ax.hist(lengths, bins=np.logspace(np.log10(max(1, lengths.min())), np.log10(lengths.max()), 30), color="#4C72B0")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.axvline(np.median(lengths), color="k", ls="--", lw=1, label=f"median {np.median(lengths):.0f}")
    ax.set(xlabel="interactions per user (log)", ylabel="users", title="Sequence length")
    ax.legend()
    return ax


def plot_item_popularity(data: ProcessedData, ax: plt.Axes | None = None) -> plt.Axes:
    ax = ax or plt.gca()
    pop = np.sort(item_popularity(data))[::-1]
    ax.loglog(np.arange(1, len(pop) + 1), np.maximum(pop, 1), color="#DD8452")
    ax.set(xlabel="item rank by popularity (log)", ylabel="interactions (log)", title="Item popularity: the long tail")
    return ax


def save(fig: plt.Figure, path) -> None:
    with phase("figures"):
        fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_prompt_layout(prompt, tokenizer, ax: plt.Axes | None = None, title: str = "") -> plt.Axes:
    """Where the soft prompt sits: the prompt's tokens as a strip, text in grey, the K soft vectors in orange."""
    ax = ax or plt.gca()
    before = [tokenizer.decode([i]) for i in prompt.before_ids]
    after = [tokenizer.decode([i]) for i in prompt.after_ids]
    k = prompt.num_soft_tokens
    segments = [("text before the slot", len(before), "#BBBBBB"), (f"{k} soft-prompt vectors", k, "#DD8452"),
                ("text after the slot", len(after), "#BBBBBB")]  # fmt: skip
    x = 0
    for label, width, color in segments:
        if width:
            ax.barh(0, width, left=x, color=color, edgecolor="white")
            ax.text(x + width / 2, 0, f"{label}\n({width} tokens)", ha="center", va="center", fontsize=8)
        x += width
    tail = "".join(before[-6:]).replace("\n", " ")
    head = "".join(after[:6]).replace("\n", " ")
    ax.set(xlim=(0, x), yticks=[], xlabel="token position", title=title or f"...{tail} [soft prompt] {head}...")
    return ax


def plot_curves(frame, x: str, ys: list[str], ax: plt.Axes | None = None, title: str = "", ylabel: str = "") -> plt.Axes:
    ax = ax or plt.gca()
    for y in ys:
        if y in frame.columns:
            ax.plot(frame[x], frame[y], marker="o", ms=3, label=y)
    ax.set(xlabel=x, ylabel=ylabel, title=title)
    ax.legend()
    return ax


def plot_metric_bars(table, metrics=("HR@1", "NDCG@10", "MRR"), ax: plt.Axes | None = None) -> plt.Axes:
    """Grouped bars of each method's mean with its bootstrap CI, one group per metric."""
    ax = ax or plt.gca()
    methods = list(table.index)
    width = 0.8 / len(methods)
    x = np.arange(len(metrics))
    for i, m in enumerate(methods):
        means = np.array([table.loc[m, (k, "mean")] for k in metrics])
        low = means - np.array([table.loc[m, (k, "ci_low")] for k in metrics])
        high = np.array([table.loc[m, (k, "ci_high")] for k in metrics]) - means
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, means, width, yerr=[low, high], capsize=2, label=m)
    ax.set(xticks=x, xticklabels=list(metrics), ylabel="mean over users (95% CI)", title="Test candidate sets (20 per user)")
    ax.legend(fontsize=8, ncol=2)
    return ax


def plot_grouped(frame, metric: str, ax: plt.Axes | None = None, title: str = "", xlabel: str = "") -> plt.Axes:
    """A metric per group (x) and method (line), from a tidy (method, group, users, metric) table."""
    ax = ax or plt.gca()
    groups = list(dict.fromkeys(frame["group"]))
    for method, f in frame.groupby("method", sort=False):
        f = f.set_index("group").loc[groups]
        ax.plot(range(len(groups)), f[metric], marker="o", label=method)
    users = frame.drop_duplicates("group").set_index("group").loc[groups, "users"]
    ax.set_xticks(range(len(groups)), [f"{g}\n(n={n})" for g, n in zip(groups, users, strict=True)], fontsize=8)
    ax.set(ylabel=metric, title=title, xlabel=xlabel)
    ax.legend(fontsize=8)
    return ax


def plot_order_diagnostic(order, metric: str = "NDCG@10", ax: plt.Axes | None = None) -> plt.Axes:
    ax = ax or plt.gca()
    o = order[order["metric"] == metric].reset_index(drop=True)
    x = np.arange(len(o))
    ax.bar(x - 0.2, o["original"], 0.4, label="original order")
    ax.bar(x + 0.2, o["shuffled"], 0.4, label="history shuffled")
    for i, row in o.iterrows():
        star = "*" if row["p_holm"] < 0.05 else ""
        ax.text(i, max(row["original"], row["shuffled"]), f"{-row['drop']:+.3f}{star}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, o["method"], rotation=20)
    ax.set(ylabel=metric, title=f"Order diagnostic (* Holm-adjusted p < 0.05, n={int(o['users'].iloc[0]) if len(o) else 0})")
    ax.legend(fontsize=8)
    return ax


def plot_agreement(agreement, ax: plt.Axes | None = None) -> plt.Axes:
    """Student-teacher top-1 agreement per group, with the popularity ranking's agreement and chance as marks."""
    ax = ax or plt.gca()
    a = agreement[agreement["group"] != "all users"].reset_index(drop=True)
    labels = [f"{r.student}\nvs {r.teacher}\n{r.group} (n={r.users})" for r in a.itertuples()]
    x = np.arange(len(a))
    ax.bar(x, a["agreement"], color=["#55A868" if "right" in g else "#C44E52" for g in a["group"]], label="student")
    if "popularity agreement" in a and a["popularity agreement"].notna().any():
        ax.scatter(x, a["popularity agreement"], marker="_", s=900, color="#555555", zorder=3, label="most popular candidate")
    if "chance" in a:
        ax.scatter(x, a["chance"], marker="_", s=900, color="#AAAAAA", zorder=3, label="chance")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set(ylim=(0, 1), ylabel="share of users with the teacher's top-1", title="Does each student follow its teacher?")
    ax.legend(fontsize=8)
    return ax


def plot_stage_curves(stage: str, curves, ax: plt.Axes | None = None) -> plt.Axes:
    """One stage's training curves (``methods.Curve``), one line per method or soft prompt."""
    ax = ax or plt.gca()
    ylabel = ""
    for c in curves:
        f = c.frame.dropna(subset=[c.y]) if c.y in c.frame else None
        if f is None or f.empty:
            continue
        ax.plot(f[c.x], f[c.y], marker="o", ms=3, label=c.label)
        ylabel = ylabel or c.ylabel or c.y
    ax.set(xlabel=curves[0].x if curves else "", ylabel=ylabel, title=stage)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return ax


BASELINE_STYLES = ("--", "-.", (0, (5, 1)), (0, (1, 1)))


def plot_learning_curve(frame, x: str, y: str, lines: dict[str, float], ax: plt.Axes | None = None, *, label: str = "LLM",
                        title: str = "", ylabel: str = "", point: tuple[float, dict] | None = None) -> plt.Axes:  # fmt: skip
    """A held-out metric against training examples seen, with what needs no training on the same examples
    as horizontal lines (``lines``: label -> value; "chance" drawn lightest), and optionally a reported
    point with its 95% CI (``point``: x, {"mean", "ci_low", "ci_high"}, its label in "label")."""
    ax = ax or plt.gca()
    f = frame.dropna(subset=[y])
    ax.plot(f[x], f[y], marker="o", ms=3, color="#4C72B0", label=label)
    styles = iter(BASELINE_STYLES)
    for name, value in lines.items():
        if value is None:
            continue
        if name == "chance":
            ax.axhline(value, color="#AAAAAA", ls=":", lw=1, label="chance")
        else:
            ax.axhline(value, color="#555555", ls=next(styles, "--"), lw=1, label=name)
    if point is not None:
        px, v = point
        ax.errorbar([px], [v["mean"]], yerr=[[v["mean"] - v["ci_low"]], [v["ci_high"] - v["mean"]]], fmt="s",
                    color="#DD8452", capsize=3, label=v.get("label", "reported"))  # fmt: skip
    ax.set(xlabel=x.replace("_", " "), ylabel=ylabel or y, ylim=(0, 1), title=title)
    ax.legend(fontsize=7)
    return ax


def plot_fidelity_curve(history, metrics: dict, ax: plt.Axes | None = None, title: str = "") -> plt.Axes:
    """Stage 1's held-out fidelity against training users seen on the selection set, the heuristics on the same
    users as horizontal lines, and the report set's fidelity with the selected soft prompt (95% CI)."""
    sel = metrics["selection"]
    lines = {k: v["mean"] for k, v in sel["fidelity_baselines"].items()} | {"chance": metrics["fidelity_chance"]}
    point = None
    if metrics.get("best_step") is not None:
        at = history.loc[history["step"] == metrics["best_step"], "users_seen"].iloc[-1]
        point = (at, {**metrics["fidelity_after"], "label": f"LLM, report set, selected step (n={metrics['heldout_users']})"})
    return plot_learning_curve(history, "users_seen", "fidelity", lines, ax, label=f"LLM, selection set (n={sel['users']})",
                               title=title, ylabel="LLM top-1 = teacher top-1", point=point)  # fmt: skip


def plot_ta_curve(history, metrics: dict, ax: plt.Axes | None = None, title: str = "") -> plt.Axes:
    """Stage 1's Temporal Analysis accuracy on the selection set against training users seen, beside the most
    popular candidate and chance on the same examples, and the report set's accuracy at the selected step."""
    sel = metrics["selection"]
    lines = {k: v["mean"] for k, v in sel.get("ta_baselines", {}).items()} | {"chance": metrics["ta_chance"]}
    point = None
    if metrics.get("best_step") is not None and metrics.get("ta_accuracy_after"):
        at = history.loc[history["step"] == metrics["best_step"], "users_seen"].iloc[-1]
        point = (at, {**metrics["ta_accuracy_after"], "label": f"LLM, report set (n={metrics['ta_accuracy_after']['users']})"})
    if "ta_accuracy" not in history:
        return ax or plt.gca()
    return plot_learning_curve(history, "users_seen", "ta_accuracy", lines, ax, label=f"LLM, selection set (n={sel['users']})",
                               title=title, ylabel="hidden item picked (TA accuracy)", point=point)  # fmt: skip


def plot_prompt_moved(history, ax: plt.Axes | None = None, title: str = "") -> plt.Axes:
    """How far the soft prompt moved from its initialisation (||p - p0|| / ||p0||) at each held-out evaluation,
    against training users seen: a flat fidelity curve over a prompt that moved says the steps taken did not help;
    over one that barely moved, that the steps were too small."""
    ax = ax or plt.gca()
    if "soft_prompt_moved" not in history:  # runs made before stage 1 recorded it
        ax.text(0.5, 0.5, "not recorded in this run", ha="center", va="center", transform=ax.transAxes)
    else:
        f = history.dropna(subset=["soft_prompt_moved"])
        ax.plot(f["users_seen"], f["soft_prompt_moved"], marker="o", ms=3)
    ax.set(title=title, xlabel="training users seen", ylabel="||p - p0|| / ||p0||")
    return ax


def mark_uniform_loss(ax: plt.Axes, chance: float) -> plt.Axes:
    """A dotted line at ln C, the cross-entropy of a ranking uniform over the C = 1/``chance`` candidates: a training
    loss above it prefers wrong candidates (the frozen LLM picking a title the prompt lists), at it prefers none,
    below it has learned something of the teacher's choice."""
    ax.axhline(float(np.log(1 / chance)), ls=":", color="grey", label=f"uniform over {round(1 / chance)} (ln C)")
    ax.legend(fontsize=8)
    return ax


def plot_validation_curves(results: dict, metric: str, ax: plt.Axes | None = None, title: str = "") -> plt.Axes:
    """Stage 2: each variant's validation ``metric`` against training examples seen (``results``: name ->
    (history, metrics)), beside popularity, the teachers and chance on the same validation examples."""
    ax = ax or plt.gca()
    baselines = {}
    for name, (history, _) in results.items():
        f = history.dropna(subset=[metric])
        ax.plot(f["examples_seen"], f[metric], marker="o", ms=3, label=name)
    for _, m in results.values():
        baselines = m.get("valid_baselines") or baselines
    styles = iter(BASELINE_STYLES)
    for name, values in baselines.items():
        chance = name == "chance"
        ax.axhline(values[metric], color="#AAAAAA" if chance else "#555555", ls=":" if chance else next(styles, "--"), lw=1,
                   label=name)  # fmt: skip
    ax.set(xlabel="training examples seen", ylabel=f"valid {metric} (20 candidates)", ylim=(0, 1), title=title)
    ax.legend(fontsize=7)
    return ax
