"""Scoring users, and the two evaluation protocols every teacher and the popularity floor go through.

- Full ranking: the target ranked among all items, the user's history items (and the padding
  id 0) excluded from the ranking.
- Candidate sets: the target ranked among the shared 1+19 candidates of ``data/processed``.

A ``Scorer`` maps (user ids [U], histories) to next-item scores [U, N+1] (column 0 unused). The
history of the valid split is the user's train items; that of the test split adds the valid target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..data import ProcessedData
from ..metrics import per_user_metrics
from .base import SequentialRecommender, left_pad

Scorer = Callable[[np.ndarray, Sequence[Sequence[int]]], np.ndarray]
PROTOCOLS = ("full", "candidates")


def model_scorer(model: SequentialRecommender, batch_size: int = 512) -> Scorer:
    """Scores of a teacher in eval mode, by batches of users; histories cut to its max_len."""

    @torch.no_grad()
    def score(users: np.ndarray, histories: Sequence[Sequence[int]]) -> np.ndarray:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = []
        for i in range(0, len(users), batch_size):
            items = left_pad(histories[i : i + batch_size], model.max_len).to(device)
            u = torch.as_tensor(np.asarray(users[i : i + batch_size]), dtype=torch.long, device=device)
            out.append(model.score(items, u if model.uses_users else None).float().cpu().numpy())
        model.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, model.num_items + 1), np.float32)

    return score


def history_mask(histories: Sequence[Sequence[int]], num_items: int) -> np.ndarray:
    """[U, N+1] True where an item may be ranked: not padding, not in the user's history."""
    mask = np.ones((len(histories), num_items + 1), dtype=bool)
    mask[:, 0] = False
    for row, hist in enumerate(histories):
        mask[row, np.asarray(hist, dtype=np.int64)] = False
    return mask


@dataclass
class SplitScores:
    """Everything derived from one scoring pass over a split: users, targets, scores, ranking mask."""

    split: str
    users: np.ndarray  # [U]
    targets: np.ndarray  # [U]
    scores: np.ndarray  # [U, N+1] float32
    mask: np.ndarray  # [U, N+1] bool, rankable items


def score_split(scorer: Scorer, data: ProcessedData, split: str, users: np.ndarray | None = None) -> SplitScores:
    users = data.user_ids() if users is None else np.asarray(users, dtype=np.int64)
    histories = [data.history(int(u), split) for u in users]
    targets = np.array([data.target(int(u), split) for u in users], dtype=np.int64)
    scores = np.asarray(scorer(users, histories), dtype=np.float32)
    if scores.shape != (len(users), data.num_items + 1):
        raise ValueError(f"scorer returned {scores.shape}, expected {(len(users), data.num_items + 1)}")
    return SplitScores(split, users, targets, scores, history_mask(histories, data.num_items))


def full_ranking(s: SplitScores) -> pd.DataFrame:
    return per_user_metrics(s.scores, s.targets, s.mask)


def candidate_scores(s: SplitScores, data: ProcessedData) -> pd.DataFrame:
    """user_id, split, candidates, scores (same order as the shared candidate sets), target_position."""
    sets = data.candidate_sets(s.split).set_index("user_id").loc[s.users]
    row = {int(u): i for i, u in enumerate(s.users)}
    cand = [np.asarray(c, dtype=np.int32) for c in sets["candidates"]]
    scores = [s.scores[row[int(u)], c].astype(np.float32) for u, c in zip(sets.index, cand, strict=True)]
    return pd.DataFrame(
        {
            "user_id": sets.index.to_numpy(np.int32),
            "split": s.split,
            "candidates": cand,
            "scores": scores,
            "target_position": sets["target_position"].to_numpy(np.int32),
        }
    )


def candidate_ranking(cands: pd.DataFrame) -> pd.DataFrame:
    scores = np.stack(cands["scores"].to_list())
    return per_user_metrics(scores, cands["target_position"].to_numpy(np.int64))


def top_k(s: SplitScores, k: int) -> pd.DataFrame:
    """user_id, items [k], scores [k]: best-scored rankable items, best first (ties: lower item id first)."""
    masked = np.where(s.mask, s.scores, -np.inf)
    k = min(k, int(s.mask.sum(axis=1).min()))
    part = np.argpartition(-masked, k - 1, axis=1)[:, :k]  # unordered top k
    part_scores = np.take_along_axis(masked, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)  # by score desc, then item id
    items = np.take_along_axis(part, order, axis=1)
    scores = np.take_along_axis(part_scores, order, axis=1)
    return pd.DataFrame(
        {
            "user_id": s.users.astype(np.int32),
            "items": list(items.astype(np.int32)),
            "scores": list(scores.astype(np.float32)),
        }
    )


def evaluate_split(s: SplitScores, data: ProcessedData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-user metrics of both protocols with user_id/split/protocol columns, candidate scores)."""
    cands = candidate_scores(s, data)
    frames = []
    for protocol, df in (("full", full_ranking(s)), ("candidates", candidate_ranking(cands))):
        users = s.users if protocol == "full" else cands["user_id"].to_numpy()
        frames.append(df.assign(user_id=users.astype(np.int32), split=s.split, protocol=protocol))
    per_user = pd.concat(frames, ignore_index=True)
    first = ["user_id", "split", "protocol"]
    return per_user[first + [c for c in per_user.columns if c not in first]], cands
