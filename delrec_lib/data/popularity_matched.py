"""A second fixed candidate set per user and split whose negatives are as popular as the target.

Against the shared sets' uniformly drawn negatives, item popularity alone ranks the target first far more
often than chance, so a method's hits there cannot be told apart from popularity. Here the same target is
joined by as many negatives as the shared sets hold, drawn from the items the user never interacted with
(any split, the shared sets' rule) whose train interaction count lies in the target's popularity bin.

Bins: quantile bins of the train interaction counts of the catalogue's items (``DEFAULT_BINS``). The edges
are counts that items have (numpy's "lower" quantiles), so no bin is empty. Bin ``i`` holds the counts
``edges[i] <= count < edges[i+1]`` (the last bin also holds the top edge): an item whose count equals an edge
goes to the upper bin, and items with equal counts always share a bin; quantile edges that coincide (many
items with one count) are merged, so there may be fewer bins than asked for. When fewer
unseen items than needed lie in the target's bin, the range widens by one bin on each side (as far as the
bins reach) until enough qualify; negatives are then drawn uniformly from the widened range, and the row
records the range (``bin_low`` .. ``bin_high``) and how many bins were added (``widened``).

Written as ``popularity_matched.parquet`` with a JSON sidecar beside the processed files, after and outside
their manifest (as ``report_users.json``): the data's identity, and every artifact made from it, is
unchanged. A missing pair is recomputed; a present one is checked against the recomputation and refused,
naming the file, when it differs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..artifacts import atomic_path, atomic_write_json, read_json, sha256_json
from ..errors import DataError
from ..metrics import bootstrap_ci, per_user_metrics
from .pipeline import SPLITS, _write_parquet, sample_candidates

# The functions take the processed data (``ProcessedData``), which reads its matched sets through this module:
# typed ``Any`` here so that the two modules do not import each other.
ProcessedData = Any

log = logging.getLogger(__name__)

MATCHED_FILE = "popularity_matched.parquet"
MATCHED_RECORD_FILE = "popularity_matched.json"
MATCHED_KIND = "popularity-matched-candidates"
# Its own seed: the matched sets depend on the interactions only, not on data.seed or any other setting.
MATCHED_SEED = 4242
# Targets are drawn roughly by popularity, so within a wide bin they sit near its top: on MovieLens-100K
# 10 bins (the top one spans 164..575 train interactions) leave popularity HR@1 0.091 [0.075, 0.109] on the
# test sets; with 60 (49 once coinciding edges merge) it is 0.052..0.060, chance inside the 95% interval on
# both splits and three seeds, with about 15% of the users widened; 80 and more overshoot below chance.
DEFAULT_BINS = 60
COLUMNS = ("user_id", "split", "target", "target_position", "candidates", "bin", "bin_low", "bin_high", "widened")


def train_counts(data: ProcessedData) -> np.ndarray:
    """[N+1] train interaction counts per item id (index 0, padding, is 0): the popularity teacher's counts."""
    items = np.concatenate([np.asarray(t, dtype=np.int64) for t in data.splits["train_items"]])
    return np.bincount(items, minlength=data.num_items + 1).astype(np.int64)


def popularity_bins(counts: np.ndarray, bins: int = DEFAULT_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(edges, bin per item id) for the items 1..N of ``counts`` [N+1]; index 0 of the bins is -1."""
    if bins < 1:
        raise DataError(f"popularity bins: at least 1 expected, got {bins}")
    edges = np.unique(np.quantile(counts[1:], np.linspace(0, 1, bins + 1), method="lower")).astype(np.int64)
    item_bins = np.searchsorted(edges[1:-1], counts, side="right")
    item_bins[0] = -1
    return edges, item_bins


def matched_range(item_bins: np.ndarray, unseen: np.ndarray, target_bin: int, needed: int, who: str) -> tuple[int, int]:
    """The bins ``low..high`` around ``target_bin``, widened one bin each side until ``needed`` items of ``unseen``
    [N+1] (a mask) lie in them."""
    top = int(item_bins.max())
    low, high = target_bin, target_bin
    while (unseen & (item_bins >= low) & (item_bins <= high)).sum() < needed:
        if low == 0 and high == top:
            raise DataError(f"{who} has fewer than {needed} never-interacted items")
        low, high = max(0, low - 1), min(top, high + 1)
    return low, high


def build_matched(data: ProcessedData, bins: int = DEFAULT_BINS) -> tuple[pa.Table, dict]:
    """The matched sets of every user and split (a table of ``COLUMNS``) and their sidecar record."""
    counts = train_counts(data)
    edges, item_bins = popularity_bins(counts, bins)
    num_negatives = len(data.candidates["candidates"].iloc[0]) - 1
    rows = {c: [] for c in COLUMNS}
    for uid in data.user_ids():
        uid = int(uid)
        interacted = data.interacted_items(uid)
        unseen = np.ones(data.num_items + 1, dtype=bool)
        unseen[0] = False
        unseen[interacted] = False
        for split in SPLITS:
            target = data.target(uid, split)
            b = int(item_bins[target])
            low, high = matched_range(item_bins, unseen, b, num_negatives, f"user {uid}")
            # Items outside the range count as seen, so the shared sets' draw (and shuffle) is reused.
            excluded = np.flatnonzero(~unseen | (item_bins < low) | (item_bins > high))
            cands, pos = sample_candidates(target, excluded, data.num_items, num_negatives,
                                           seed=MATCHED_SEED, user_id=uid, split=split)  # fmt: skip
            for name, value in zip(COLUMNS, (uid, split, target, pos, cands, b, low, high, high - low), strict=True):
                rows[name].append(value)
    table = pa.table(
        {
            **{c: pa.array(rows[c], pa.int32()) for c in COLUMNS if c not in ("split", "candidates")},
            "split": pa.array(rows["split"], pa.string()),
            "candidates": pa.array([c.tolist() for c in rows["candidates"]], pa.list_(pa.int32())),
        }
    ).select(list(COLUMNS))
    widened = np.asarray(rows["widened"])
    splits = np.asarray(rows["split"])
    record = {
        "kind": MATCHED_KIND,
        "file": MATCHED_FILE,
        "seed": MATCHED_SEED,
        "bins_requested": bins,
        "bins": len(edges) - 1,
        "edges": [int(e) for e in edges],
        "rule": (
            "bins are 'lower' quantiles of the items' train interaction counts; bin i holds edges[i] <= count < "
            "edges[i+1] (the last bin also its top edge), coinciding edges merged; negatives drawn uniformly "
            "from the user's never-interacted items in the target's bin, widened one bin each side until enough"
        ),
        "negatives": num_negatives,
        "data_users": data.num_users,
        "widened_users": {s: int((widened[splits == s] > 0).sum()) for s in SPLITS},
        "widened_bins_max": {s: int(widened[splits == s].max(initial=0)) for s in SPLITS},
        "hash": sha256_json({c: table.column(c).to_pylist() for c in ("user_id", "split", "candidates", "target_position")}),
    }
    return table, record


def load_popularity_matched(data: ProcessedData, bins: int = DEFAULT_BINS) -> tuple[pa.Table, dict]:
    """The matched sets beside ``data`` and their record: written when missing, checked when present."""
    table_path, record_path = data.directory / MATCHED_FILE, data.directory / MATCHED_RECORD_FILE
    table, record = build_matched(data, bins)
    if not table_path.is_file() or not record_path.is_file():
        try:
            with atomic_path(table_path) as tmp:
                _write_parquet(table, tmp)
            atomic_write_json(record_path, record)
        except OSError as e:  # a read-only data folder: the sets are the same, only not written down
            log.warning("%s: could not be written (%s); using the recomputed matched sets", table_path, e)
        return table, record
    _check_record(record_path, record)
    _check_table(table_path, table)
    return table, record


def _refusal(path: Path, what: str) -> DataError:
    return DataError(
        f"{path}: not the popularity-matched candidate sets of the processed data beside it ({what}); it was "
        f"edited, or made for other data or by another rule. Delete {MATCHED_FILE} and {MATCHED_RECORD_FILE}: "
        f"the next load writes them again."
    )


def _check_record(path: Path, expected: dict) -> None:
    try:
        recorded = read_json(path)
    except DataError as e:
        raise DataError(f"{e}. Delete it and {MATCHED_FILE}: the next load writes them again.") from e
    if recorded != expected:
        got = recorded if isinstance(recorded, dict) else {}
        fields = sorted(k for k in set(expected) | set(got) if got.get(k) != expected.get(k))
        raise _refusal(path, f"differs in {', '.join(fields)}")


def _check_table(path: Path, expected: pa.Table) -> None:
    try:
        recorded = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise _refusal(path, f"unreadable: {e}") from e
    if recorded.schema != expected.schema:
        raise _refusal(path, "other columns or types")
    differing = [c for c in COLUMNS if not recorded.column(c).equals(expected.column(c))]
    if differing:
        raise _refusal(path, f"differs in {', '.join(differing)}")


def matched_inputs(data: ProcessedData, users: list[int], split: str = "test"):
    """(users [U], histories, candidates [U, C], target positions [U]) of ``split``'s popularity-matched
    sets: what ``delrec_lib.evaluation.split_inputs`` gives for the shared sets."""
    return set_inputs(data, data.popularity_matched_sets(split), users, split)


def set_inputs(data: ProcessedData, sets, users: list[int], split: str):
    """(users [U], histories, candidates [U, C], target positions [U]) of ``users``' rows of candidate sets ``sets``
    (a frame of ``candidate_sets``' shape), each history the split's."""
    sets = sets.set_index("user_id").loc[users]
    candidates = np.stack(sets["candidates"].to_numpy()).astype(np.int64)
    histories = [data.history(int(u), split) for u in users]
    return np.asarray(users, dtype=np.int64), histories, candidates, sets["target_position"].to_numpy(np.int64)


def popularity_hr1(data: ProcessedData, sets, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Popularity's HR@1 (ties expected over a uniform choice, as ``metrics`` breaks them) with its 95%
    bootstrap interval over users, on candidate sets of the ``candidate_sets`` shape."""
    counts = train_counts(data)
    candidates = np.stack(sets["candidates"].to_numpy()).astype(np.int64)
    hits = per_user_metrics(counts[candidates].astype(np.float64), sets["target_position"].to_numpy(np.int64))["HR@1"]
    mean, low, high = bootstrap_ci(hits.to_numpy(), n_boot=n_boot, seed=seed)
    chance = 1.0 / candidates.shape[1]
    return {"hr1": mean, "ci_low": low, "ci_high": high, "chance": chance, "users": len(sets),
            "contains_chance": bool(low <= chance <= high)}  # fmt: skip


def popularity_check(data: ProcessedData, split: str = "test", **bootstrap) -> dict:
    """Popularity's HR@1 with 95% intervals on the matched and on the shared sets of ``split``; the protocol
    is accepted when the matched sets' interval contains chance (1/C)."""
    out = {
        "matched": popularity_hr1(data, data.popularity_matched_sets(split), **bootstrap),
        "shared": popularity_hr1(data, data.candidate_sets(split), **bootstrap),
    }
    out["accepted"] = out["matched"]["contains_chance"]
    return out
