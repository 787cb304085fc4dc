"""From raw interactions to the processed files every model reads.

Protocol (DESIGN.md, identical for every method):
- per user, interactions sorted by timestamp, ties kept in original row order;
- leave-one-out: test target = last item, valid target = second-to-last, train = the rest;
  the valid history is the train items, the test history is train + valid target;
- for each user and split, a candidate set of the target plus ``num_negatives`` items drawn
  uniformly without replacement from items the user never interacted with, seeded per
  (seed, user, split) and shuffled; written once and used by every model;
- beside them, stage 1's fixed report users (``report_users.py``), outside the data's identity.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..artifacts import is_complete, write_stage_output
from ..config import DataConfig
from ..errors import ConfigError, DataError
from .report_users import load_report_users
from .sources import RawDataset, get_source
from .titles import unique_titles, year_less_titles

log = logging.getLogger(__name__)

PROCESSED_KIND = "processed-data"
SPLITS = ("valid", "test")
MIN_INTERACTIONS = 3  # one train item, a valid target and a test target
# Recorded among the inputs: processed files written by an earlier version of the processing
# (before v2: titles shared by several items, int8 target positions) are rebuilt, not reused.
PROCESSING_VERSION = "v2"


@dataclass
class ProcessedTables:
    items: pa.Table
    sequences: pa.Table
    splits: pa.Table
    candidates: pa.Table
    stats: dict


def _natural_order(ids: pd.Series) -> list[str]:
    """Raw ids in numeric order when they are all integers, else in string order."""
    unique = pd.unique(ids)
    if all(re.fullmatch(r"-?\d+", u) for u in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def leave_one_out_split(sequence: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(train items, valid target, test target) of one chronological sequence."""
    if len(sequence) < MIN_INTERACTIONS:
        raise DataError(f"a sequence needs at least {MIN_INTERACTIONS} interactions for leave-one-out, got {len(sequence)}")
    return sequence[:-2], int(sequence[-2]), int(sequence[-1])


def sample_candidates(
    target: int,
    interacted: np.ndarray,
    num_items: int,
    num_negatives: int,
    *,
    seed: int,
    user_id: int,
    split: str,
) -> tuple[np.ndarray, int]:
    """The target plus ``num_negatives`` never-interacted items, shuffled; returns (candidates, target position).

    Seeded per (seed, user, split), so a user's candidates do not depend on which other users
    are processed or in what order.
    """
    pool = np.setdiff1d(np.arange(1, num_items + 1), interacted, assume_unique=False)
    if num_negatives > len(pool):
        raise ConfigError(
            f"num_negatives={num_negatives} is larger than the {len(pool)} items user {user_id} never "
            f"interacted with; lower data.num_negatives"
        )
    rng = np.random.default_rng([seed, user_id, SPLITS.index(split)])
    negatives = rng.choice(pool, size=num_negatives, replace=False)
    candidates = np.concatenate([[target], negatives])
    order = rng.permutation(len(candidates))
    return candidates[order].astype(np.int32), int(np.flatnonzero(order == 0)[0])


def build_tables(raw: RawDataset, seed: int, num_negatives: int) -> ProcessedTables:
    items_df = raw.items
    dup = items_df["item"].duplicated()
    if dup.any():
        raise DataError(f"{raw.name}: item id {items_df['item'][dup].iloc[0]!r} appears twice in the item table")
    item_order = _natural_order(items_df["item"])
    item_index = {raw_id: i for i, raw_id in enumerate(item_order, start=1)}
    num_items = len(item_order)

    inter = raw.interactions.copy()
    if inter.empty:
        raise DataError(f"{raw.interactions_file}: no interactions")
    unknown = ~inter["item"].isin(item_index)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        where = f"{raw.interactions_file} line {int(inter['line'].iloc[row])}" if "line" in inter else raw.interactions_file
        raise DataError(
            f"{where}: item {inter['item'].iloc[row]!r} is not in {raw.items_file} "
            f"({int(unknown.sum())} interaction(s) name an unknown item)"
        )
    inter["row"] = np.arange(len(inter))
    inter["item_id"] = inter["item"].map(item_index).astype(np.int32)
    # Stable chronological order: ties keep the original file order.
    inter = inter.sort_values(["user", "timestamp", "row"], kind="stable")
    n_before = len(inter)
    inter = inter.drop_duplicates(["user", "item_id"], keep="first")
    duplicates = n_before - len(inter)
    if duplicates:
        log.warning(
            "%s: dropped %d repeated interaction(s) of a user with an item already in their sequence "
            "(the earliest is kept)", raw.interactions_file, duplicates,
        )  # fmt: skip
    counts = inter.groupby("user", sort=False).size()
    short = counts.index[counts < MIN_INTERACTIONS]
    if len(short):
        log.warning("%s: dropping %d users with fewer than %d interactions", raw.name, len(short), MIN_INTERACTIONS)
        inter = inter[~inter["user"].isin(short)]
    if inter.empty:
        raise DataError(f"{raw.name}: no user has {MIN_INTERACTIONS} or more interactions")

    user_order = _natural_order(inter["user"])
    user_index = {raw_id: i for i, raw_id in enumerate(user_order, start=1)}
    inter["user_id"] = inter["user"].map(user_index).astype(np.int32)
    inter = inter.sort_values(["user_id", "timestamp", "row"], kind="stable")

    grouped = inter.groupby("user_id", sort=True)
    user_ids = np.array(list(grouped.groups.keys()), dtype=np.int32)
    seqs = [g["item_id"].to_numpy(np.int32) for _, g in grouped]
    stamps = [g["timestamp"].to_numpy(np.int64) for _, g in grouped]
    # Every user's candidate sets need num_negatives never-interacted items: refuse before sampling any.
    most_seen = max(len(s) for s in seqs)
    if num_negatives > num_items - most_seen:
        raise ConfigError(
            f"data.num_negatives = {num_negatives}: at most {num_items - most_seen} for {raw.name}, whose catalogue has "
            f"{num_items} items of which one user interacted with {most_seen}"
        )

    train, valid_t, test_t = [], [], []
    cand_rows = {"user_id": [], "split": [], "target": [], "target_position": [], "candidates": []}
    for uid, seq in zip(user_ids, seqs, strict=True):
        tr, v, t = leave_one_out_split(seq)
        train.append(tr)
        valid_t.append(v)
        test_t.append(t)
        for split, target in (("valid", v), ("test", t)):
            cands, pos = sample_candidates(target, seq, num_items, num_negatives, seed=seed, user_id=int(uid), split=split)
            cand_rows["user_id"].append(int(uid))
            cand_rows["split"].append(split)
            cand_rows["target"].append(target)
            cand_rows["target_position"].append(pos)
            cand_rows["candidates"].append(cands)

    items_sorted = items_df.set_index("item").loc[item_order].reset_index()
    # Unique titles are made here, from the source-independent item table and the kit's item
    # ids, so both MovieLens sources still give the same bytes; one column per title style, so
    # the file shows exactly what prompts show (the prompt builder derives its "no_year" titles
    # from the catalogue with the same function, never title by title).
    item_ids = list(range(1, num_items + 1))
    titles = unique_titles(items_sorted["title"].tolist(), item_ids)
    items_table = pa.table(
        {
            "item_id": pa.array(np.arange(1, num_items + 1, dtype=np.int32)),
            "raw_item_id": pa.array(items_sorted["item"].tolist(), pa.string()),
            "title": pa.array(titles, pa.string()),
            "title_no_year": pa.array(year_less_titles(titles, item_ids), pa.string()),
            "year": pa.array([None if pd.isna(y) else int(y) for y in items_sorted["year"]], pa.int32()),
            "genres": pa.array(items_sorted["genres"].tolist(), pa.string()),
        }
    )
    raw_users = pa.array(user_order, pa.string())
    sequences_table = pa.table(
        {
            "user_id": pa.array(user_ids),
            "raw_user_id": raw_users,
            "items": pa.array([s.tolist() for s in seqs], pa.list_(pa.int32())),
            "timestamps": pa.array([s.tolist() for s in stamps], pa.list_(pa.int64())),
        }
    )
    splits_table = pa.table(
        {
            "user_id": pa.array(user_ids),
            "train_items": pa.array([s.tolist() for s in train], pa.list_(pa.int32())),
            "valid_target": pa.array(valid_t, pa.int32()),
            "test_target": pa.array(test_t, pa.int32()),
        }
    )
    candidates_table = pa.table(
        {
            "user_id": pa.array(cand_rows["user_id"], pa.int32()),
            "split": pa.array(cand_rows["split"], pa.string()),
            "target": pa.array(cand_rows["target"], pa.int32()),
            "target_position": pa.array(cand_rows["target_position"], pa.int32()),
            "candidates": pa.array([c.tolist() for c in cand_rows["candidates"]], pa.list_(pa.int32())),
        }
    )
    lengths = np.array([len(s) for s in seqs])
    stats = {
        "users": len(user_ids),
        "items": num_items,
        "interactions": int(lengths.sum()),
        "duplicate_interactions_removed": int(duplicates),
        "users_dropped_too_short": len(short),
        "sequence_length": {"min": int(lengths.min()), "median": float(np.median(lengths)), "mean": float(lengths.mean()), "max": int(lengths.max())},
        "candidates_per_set": num_negatives + 1,
    }
    return ProcessedTables(items_table, sequences_table, splits_table, candidates_table, stats)


def _write_parquet(table: pa.Table, path: Path) -> None:
    # Fixed writer options and no pandas metadata: the same rows always give the same bytes.
    pq.write_table(table, path, compression="zstd", compression_level=3, write_statistics=False, store_schema=True)


def processed_dir(data_dir: Path, dataset: str) -> Path:
    return Path(data_dir) / "processed" / dataset


def prepare_dataset(config: DataConfig, data_dir: str | Path) -> Path:
    """Acquire, parse and process a dataset into ``<data_dir>/processed/<dataset>/``; returns that folder.

    Re-running with the same raw files and config leaves the existing files untouched. Any
    error leaves earlier processed outputs as they were (everything is written to a temporary
    folder that replaces the old one only at the end).
    """
    if config.num_negatives < 1:
        raise ConfigError(f"data.num_negatives must be at least 1, got {config.num_negatives}")
    data_dir = Path(data_dir)
    raw_dir = data_dir / "raw"
    source = get_source(config.dataset, raw_dir)
    raw = source.load(raw_dir)
    out = processed_dir(data_dir, config.dataset)
    inputs = {**raw.input_hashes, "processing": PROCESSING_VERSION}
    if is_complete(out, PROCESSED_KIND, inputs=inputs, config=config):
        log.info("%s is up to date", out)
        write_report_users(out)
        return out
    tables = build_tables(raw, config.seed, config.num_negatives)
    extra = {"dataset": raw.name, "source": raw.source, "seed": config.seed, **tables.stats}
    with write_stage_output(out, PROCESSED_KIND, inputs=inputs, config=config, extra=extra) as tmp:
        _write_parquet(tables.items, tmp / "items.parquet")
        _write_parquet(tables.sequences, tmp / "sequences.parquet")
        _write_parquet(tables.splits, tmp / "splits.parquet")
        _write_parquet(tables.candidates, tmp / "candidates.parquet")
    write_report_users(out)
    return out


def write_report_users(out: Path) -> None:
    """Stage 1's fixed report users beside the processed files (written after the manifest, which does
    not list them: the data's identity stays that of the processed files alone)."""
    load_report_users(out, pq.read_table(out / "splits.parquet", columns=["user_id"]).column("user_id").to_numpy())
