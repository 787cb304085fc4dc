"""Ranking metrics, bootstrap confidence intervals over users, paired tests between methods and Holm's
adjustment of a family of their p-values.

One module for every stage: teachers, zero-shot LLM, distillation fidelity, fine-tuning and the
final evaluation all turn scores into the same per-user metrics and average them the same way
(one value per user, then the mean over users).

Ties are broken uniformly at random *in expectation*: a target with ``g`` candidates scored
strictly higher and ``t`` others scored equal is at rank g+1 .. g+t+1 with equal probability, and
each metric is its expectation over those ranks. This is deterministic, never rewards a model
for constant scores (a constant scorer gets exactly the random-guess value), and equals the
usual definition when there are no ties.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

KS = (1, 5, 10)
METRICS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")


def rank_counts(scores: np.ndarray, target_index: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each row, how many valid entries score strictly above the target, and how many tie with it.

    scores: [U, C] float; target_index: [U] column of the target; valid: [U, C] bool mask of the
    entries that compete (e.g. items not in the user's history); the target must be valid.
    NaN scores are an error: they would silently rank anywhere.
    """
    scores = np.asarray(scores, dtype=np.float64)
    target_index = np.asarray(target_index, dtype=np.int64)
    if scores.ndim != 2 or target_index.shape != (scores.shape[0],):
        raise ValueError(f"scores must be [users, candidates] and target_index [users], got {scores.shape} and {target_index.shape}")
    rows = np.arange(scores.shape[0])
    if np.isnan(scores).any():
        bad = int(np.flatnonzero(np.isnan(scores).any(axis=1))[0])
        raise ValueError(f"scores of row {bad} contain NaN")
    if valid is None:
        valid = np.ones_like(scores, dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    if not valid[rows, target_index].all():
        bad = int(np.flatnonzero(~valid[rows, target_index])[0])
        raise ValueError(f"row {bad}: the target is masked out of the ranking")
    target = scores[rows, target_index][:, None]
    greater = ((scores > target) & valid).sum(axis=1)
    ties = ((scores == target) & valid).sum(axis=1) - 1  # minus the target itself
    return greater.astype(np.int64), ties.astype(np.int64)


def _expected(per_rank: np.ndarray, greater: np.ndarray, ties: np.ndarray) -> np.ndarray:
    """Mean of per_rank[r] for r in greater+1 .. greater+ties+1 (per_rank indexed from rank 1 at 0)."""
    cum = np.concatenate([[0.0], np.cumsum(per_rank)])
    return (cum[greater + ties + 1] - cum[greater]) / (ties + 1)


def metrics_from_counts(greater: np.ndarray, ties: np.ndarray, ks: Sequence[int] = KS) -> pd.DataFrame:
    """Per-user HR@k, NDCG@k and MRR (columns ``METRICS``), expected over random tie-breaking."""
    greater, ties = np.asarray(greater, np.int64), np.asarray(ties, np.int64)
    n = int((greater + ties).max(initial=0)) + 1
    ranks = np.arange(1, n + 1, dtype=np.float64)
    out = {}
    for k in ks:
        out[f"HR@{k}"] = _expected((ranks <= k).astype(float), greater, ties)
    for k in ks:
        if k > 1:
            out[f"NDCG@{k}"] = _expected(np.where(ranks <= k, 1.0 / np.log2(ranks + 1), 0.0), greater, ties)
    out["MRR"] = _expected(1.0 / ranks, greater, ties)
    return pd.DataFrame(out)[[m for m in METRICS if m in out]]


def per_user_metrics(scores: np.ndarray, target_index: np.ndarray, valid: np.ndarray | None = None) -> pd.DataFrame:
    greater, ties = rank_counts(scores, target_index, valid)
    df = metrics_from_counts(greater, ties)
    df.insert(0, "rank", greater + 1 + ties / 2.0)  # expected rank, for plots and tables
    return df


def per_user_frame(users, scores: np.ndarray, target_position: np.ndarray) -> pd.DataFrame:
    """user_id, target_position, top1 (the candidate ranked first; the lowest index among ties), rank, metrics.

    The one place where a method's candidate scores become its per-user results: row i of ``scores``
    belongs to ``users[i]``, and methods are later compared by joining on ``user_id``.
    """
    per_user = per_user_metrics(scores, target_position)
    per_user.insert(0, "user_id", np.asarray(users, dtype=np.int64))
    per_user.insert(1, "target_position", np.asarray(target_position, dtype=np.int64))
    per_user.insert(2, "top1", np.argmax(scores, axis=1))
    return per_user


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean over users."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-D array of per-user values")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    alpha = (1 - ci) / 2
    return float(values.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize(per_user: pd.DataFrame, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Mean and bootstrap CI of each metric over users: rows = metrics, columns mean/ci_low/ci_high/users.

    The same bootstrap resamples (same seed, same users) are used for every metric.
    """
    rows = {}
    for m in [c for c in METRICS if c in per_user.columns]:
        mean, low, high = bootstrap_ci(per_user[m].to_numpy(), n_boot=n_boot, ci=ci, seed=seed)
        rows[m] = {"mean": mean, "ci_low": low, "ci_high": high, "users": len(per_user)}
    return pd.DataFrame(rows).T


def paired_test(
    a: np.ndarray, b: np.ndarray, *, n_resamples: int = 10000, ci: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Paired comparison of two methods' per-user values on the same users.

    Returns the mean difference a-b, its bootstrap CI, and the two-sided p-value of a sign-flip
    permutation test (under H0 each user's difference is symmetric around 0).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_test needs two 1-D arrays over the same users, got {a.shape} and {b.shape}")
    d = a - b
    observed = d.mean()
    rng = np.random.default_rng(seed)
    if np.all(d == 0):
        p = 1.0
    else:
        signs = rng.choice([-1.0, 1.0], size=(n_resamples, len(d)))
        null = (signs * d).mean(axis=1)
        # +1 in numerator and denominator: the observed assignment is one of the permutations
        p = float((np.sum(np.abs(null) >= abs(observed) - 1e-12) + 1) / (n_resamples + 1))
    _, low, high = bootstrap_ci(d, n_boot=min(n_resamples, 2000), ci=ci, seed=seed)
    return {"mean_diff": float(observed), "ci_low": low, "ci_high": high, "p_value": p, "users": len(d)}


def holm_adjust(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of one family of p-values, in the order given.

    The family is every test whose conclusions are read together (a table's comparisons); rejecting
    where the adjusted value is below alpha keeps the chance of any false rejection in the family at
    most alpha. With the m p-values sorted ascending, the i-th smallest (i from 0) becomes
    max over j <= i of min(1, (m - j) * p_(j)): never below the raw value, monotone in it, at most 1.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"holm_adjust needs a 1-D array of p-values, got shape {p.shape}")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"holm_adjust: p-values must lie in [0, 1], got {p.tolist()}")
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(p)
    out[order] = stepped
    return out


def format_ci(row: pd.Series, digits: int = 4) -> str:
    return f"{row['mean']:.{digits}f} [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"
