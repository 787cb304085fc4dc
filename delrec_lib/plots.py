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
