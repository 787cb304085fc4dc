"""The floor every model must clear: rank items by how many users have them among their train items.

Counted on train items only (valid and test targets never count), the same counts for both
splits, evaluated by exactly the teachers' protocol (history excluded, ties expected-rank).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data import ProcessedData
from .evaluation import Scorer


def train_popularity(data: ProcessedData) -> np.ndarray:
    """[N+1] int64 counts over every user's train items (index 0, padding, is 0)."""
    items = np.concatenate([np.asarray(t, dtype=np.int64) for t in data.splits["train_items"]])
    return np.bincount(items, minlength=data.num_items + 1).astype(np.int64)


def popularity_scorer(counts: np.ndarray) -> Scorer:
    scores = counts.astype(np.float32)

    def score(users: np.ndarray, histories: Sequence[Sequence[int]]) -> np.ndarray:
        return np.broadcast_to(scores, (len(users), len(scores))).copy()

    return score
