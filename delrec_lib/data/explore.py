"""Tables that describe a processed dataset (notebook 01 shows them)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .processed import ProcessedData


def dataset_statistics(data: ProcessedData) -> pd.DataFrame:
    """One row per statistic: sizes, sparsity, sequence lengths, item popularity."""
    lengths = data.sequences["items"].map(len).to_numpy()
    popularity = item_popularity(data)
    n_inter = int(lengths.sum())
    rows = {
        "users": data.num_users,
        "items": data.num_items,
        "interactions": n_inter,
        "density (%)": round(100 * n_inter / (data.num_users * data.num_items), 3),
        "sequence length: min": int(lengths.min()),
        "sequence length: median": float(np.median(lengths)),
        "sequence length: mean": round(float(lengths.mean()), 1),
        "sequence length: max": int(lengths.max()),
        "items with < 5 interactions": int((popularity < 5).sum()),
        "share of interactions on top 10% items (%)": round(
            100 * np.sort(popularity)[::-1][: max(1, data.num_items // 10)].sum() / n_inter, 1
        ),
        "candidate sets per split": int((data.candidates["split"] == "test").sum()),
        "candidates per set": int(data.candidates["candidates"].map(len).iloc[0]),
    }
    return pd.DataFrame({"value": rows})


def item_popularity(data: ProcessedData, split: str | None = None) -> np.ndarray:
    """Interactions per item id (index i-1 for item i); with ``split='train'`` train items only."""
    column = data.splits["train_items"] if split == "train" else data.sequences["items"]
    counts = np.bincount(np.concatenate(column.to_numpy()), minlength=data.num_items + 1)
    return counts[1:]


def example_users(data: ProcessedData, user_ids: list[int], history: int = 8) -> pd.DataFrame:
    """For each user: the latest train titles, the valid and test targets, and the test candidates."""
    titles = data.titles
    test = data.candidate_sets("test").set_index("user_id")
    rows = []
    for uid in user_ids:
        cands = test.loc[uid, "candidates"]
        target = data.target(uid, "test")
        rows.append(
            {
                "user": uid,
                f"last {history} train items": " | ".join(titles[i] for i in data.train_items(uid)[-history:]),
                "valid target": titles[data.target(uid, "valid")],
                "test target": titles[target],
                "test candidates (target in *stars*)": " | ".join(
                    f"*{titles[c]}*" if c == target else titles[c] for c in cands
                ),
            }
        )
    return pd.DataFrame(rows).set_index("user")
