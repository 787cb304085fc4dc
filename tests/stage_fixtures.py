"""A small synthetic dataset, fake teacher exports and a tiny backbone for the LLM-stage tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from delrec_lib.artifacts import atomic_dir, build_manifest, write_manifest
from delrec_lib.config import DataConfig, TeachersConfig
from delrec_lib.data import load_processed, prepare_dataset
from delrec_lib.teachers import export_spec

NUM_USERS, NUM_ITEMS, NEVER_SEEN = 40, 30, 27  # items 28..30 nobody interacts with
FIXED_PREDICTION = 30


def synthetic_data(root: Path, seed: int = 0):
    """Users with 8-12 interactions among items 1..27; items 28..30 are never interacted with."""
    rng = np.random.default_rng(seed)
    folder = root / "raw" / "toy"
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["user,item,timestamp"]
    for u in range(1, NUM_USERS + 1):
        items = rng.choice(np.arange(1, NEVER_SEEN + 1), size=int(rng.integers(8, 13)), replace=False)
        rows += [f"u{u},{i},{1000 + k}" for k, i in enumerate(items)]
    (folder / "interactions.csv").write_text("\n".join(rows) + "\n")
    names = ["Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Fargo", "Contact", "Scream", "Babe",
             "Star Wars", "Liar Liar"]  # fmt: skip
    titles = [f"{names[i % len(names)]} {i // len(names) + 1}" for i in range(NUM_ITEMS)]
    (folder / "items.csv").write_text("item,title\n" + "".join(f"{i + 1},{t}\n" for i, t in enumerate(titles)))
    prepare_dataset(DataConfig(dataset="toy", num_negatives=5), root)
    return load_processed(root, "toy")


def write_teacher_exports(directory: Path, data, *, fixed: int | None = FIXED_PREDICTION, seed: int = 0,
                          leak_targets: bool = True, with_scores: bool = True) -> Path:  # fmt: skip
    """A teacher export whose top-1 is always ``fixed`` (when not None), then random items.

    With ``leak_targets`` the user's valid and test targets come right after the top-1, as a real
    teacher may rank them: stage 1 distils them as they are (dropping them would use the labels).
    With ``with_scores``, every item's score (``scores_valid.npz``): the top 10's from 1 down to 0, the others -1.
    """
    rng = np.random.default_rng(seed)
    rows = []
    scores = np.full((len(data.user_ids()), data.num_items + 1), -1.0, dtype=np.float16)
    for uid in data.user_ids():
        train = set(data.train_items(uid))
        rest = [i for i in rng.permutation(np.arange(1, data.num_items + 1)).tolist() if i not in train and i != fixed]
        if leak_targets:
            targets = [data.target(uid, "valid"), data.target(uid, "test")]
            rest = targets + [i for i in rest if i not in targets]
        items = ([fixed] if fixed is not None else []) + rest
        items = items[:10]
        rows.append({"user_id": int(uid), "items": np.array(items, np.int32), "scores": np.linspace(1, 0, len(items)).astype(np.float32)})
        scores[len(rows) - 1, items] = rows[-1]["scores"]
    with atomic_dir(directory) as tmp:
        pd.DataFrame(rows).to_parquet(tmp / "topk_valid.parquet", index=False)
        if with_scores:
            np.savez(tmp / "scores_valid.npz", users=data.user_ids().astype(np.int32), scores=scores)
        # recorded with the default teacher settings, which the tests' run configs use
        spec = export_spec(directory.name, TeachersConfig(), data)
        write_manifest(tmp, build_manifest("teacher", tmp, inputs={"data": data.data_id}, config=spec, extra={"fake": True}))
    return directory
