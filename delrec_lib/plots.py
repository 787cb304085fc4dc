"""Figures shared by the notebooks; each draws on a given matplotlib Axes and returns it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np

from .data.explore import item_popularity
from .data.processed import ProcessedData


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
