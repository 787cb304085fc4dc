"""Latent item categories and each user's prior preference distribution over them.

The categories are k-means clusters of a trained teacher's item embeddings, L2-normalised (so the
clusters group items the teacher scores alike by direction, not by popularity-driven norm), fitted
on the items that occur in some user's train items only: an item seen only as a valid or test target
was never a training positive of the teacher, so its embedding says nothing of its own.

A user's target is the normalised count of their train items per category (all of them, or only the
latest ``history_len`` the prompt shows). Valid and test targets never enter either step.
Shapes: N items (ids 1..N, 0 = padding), D teacher width, K categories, U users.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..data import ProcessedData
from ..errors import ConfigError, DataError

UNCLUSTERED = -1  # category of an item that occurs in no user's train items


@dataclass
class LatentCategories:
    labels: np.ndarray  # [N+1] int: category of each item id, UNCLUSTERED for padding and unclustered items
    centroids: np.ndarray  # [K, D] unit-norm centroids
    inertia: float

    @property
    def num_categories(self) -> int:
        return int(self.centroids.shape[0])

    def frame(self, titles: Sequence[str]) -> pd.DataFrame:
        """item_id, category, title (clustered items only)."""
        ids = np.flatnonzero(self.labels != UNCLUSTERED)
        return pd.DataFrame({"item_id": ids.astype(np.int32), "category": self.labels[ids].astype(np.int16),
                             "title": [titles[i] for i in ids]})  # fmt: skip


def train_item_ids(data: ProcessedData, users: Sequence[int] | None = None) -> np.ndarray:
    """Sorted ids of the items in at least one user's train items."""
    users = data.user_ids() if users is None else users
    seen = set()
    for u in users:
        seen.update(data.train_items(int(u)))
    return np.array(sorted(seen), dtype=np.int64)


def latent_categories(item_table: torch.Tensor | np.ndarray, item_ids: np.ndarray, k: int, *, seed: int,
                      restarts: int = 10) -> LatentCategories:  # fmt: skip
    """k-means (k-means++ init, ``restarts`` runs, best inertia kept) of the L2-normalised rows
    ``item_ids`` of ``item_table`` [N+1, D]."""
    from sklearn.cluster import KMeans

    table = np.asarray(item_table.detach().cpu().float() if torch.is_tensor(item_table) else item_table, dtype=np.float64)
    if len(item_ids) < k:
        raise ConfigError(f"p2rec.num_categories: {k} categories need at least {k} clustered items, got {len(item_ids)}")
    x = table[item_ids]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    km = KMeans(n_clusters=k, n_init=restarts, random_state=seed).fit(x)
    labels = np.full(table.shape[0], UNCLUSTERED, dtype=np.int64)
    labels[item_ids] = km.labels_
    centroids = km.cluster_centers_ / np.maximum(np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True), 1e-12)
    return LatentCategories(labels, centroids.astype(np.float32), float(km.inertia_))


def shown_items(data: ProcessedData, user_id: int, history_len: int) -> list[int]:
    """The train items an SFT prompt shows: the latest ``history_len``, oldest first."""
    return data.train_items(int(user_id))[-history_len:]


def user_targets(data: ProcessedData, users: Sequence[int], categories: LatentCategories, *, scope: str = "train",
                 history_len: int = 20) -> np.ndarray:  # fmt: skip
    """[U, K] float32: each user's distribution of train items (``scope="train"``) or shown train items
    (``"shown"``) over the categories; rows sum to one."""
    if scope not in ("train", "shown"):
        raise ConfigError(f"p2rec.target_scope: expected 'train' or 'shown', got {scope!r}")
    k = categories.num_categories
    out = np.zeros((len(users), k), dtype=np.float64)
    for row, u in enumerate(users):
        items = data.train_items(int(u)) if scope == "train" else shown_items(data, int(u), history_len)
        if not items:
            raise DataError(f"user {u}: no train items, so no preference distribution")
        labels = categories.labels[np.asarray(items, dtype=np.int64)]
        if (labels == UNCLUSTERED).any():  # cannot happen when the clusters cover every train item
            raise ConfigError(f"user {u}: train items without a category; cluster every train item")
        out[row] = np.bincount(labels, minlength=k)
        out[row] /= out[row].sum()
    return out.astype(np.float32)
