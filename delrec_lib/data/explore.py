"""Tables that describe a processed dataset (notebook 01 shows them)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from .processed import ProcessedData
from .titles import untagged, without_year


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


def timestamp_ties(data: ProcessedData) -> pd.DataFrame:
    """How many users' held-out targets share a second with each other and with the last train item.

    Leave-one-out takes "last" and "second-to-last" from the timestamp order; within one second
    the order is the file's, and GroupLens randomised rows within a second. For such a user
    which item is the test target and which the valid target, or the latest train item, is a
    coin toss, and every claim about order (the teachers' sequential patterns, shuffled-history
    diagnostics, Temporal Analysis's "most recent item") inherits that.
    """
    stamps = data.sequences.set_index("user_id")["timestamps"].loc[data.splits["user_id"]]
    last3 = np.stack([np.asarray(s[-3:]) for s in stamps])  # last train item, valid target, test target
    targets = last3[:, 1] == last3[:, 2]
    with_train = targets & (last3[:, 0] == last3[:, 1])
    rows = {
        "users": data.num_users,
        "valid and test targets in the same second": int(targets.sum()),
        "... and the last train item too": int(with_train.sum()),
    }
    return pd.DataFrame({"value": rows})


def title_collisions(data: ProcessedData) -> pd.DataFrame:
    """Items whose title alone would not tell them apart, per title style, and the candidate sets in
    which, titles shown as written (one at a time, year dropped per style), a negative would read like
    an item of the user's history or like another candidate; after: with the unique titles."""
    written = [untagged(t) for t in data.items["title"]]  # the source's titles, before item tags
    naive = {"with_year": written, "no_year": [without_year(t) for t in written]}
    rows = []
    for style, titles in naive.items():
        counts = Counter(titles)
        unique = data.display_titles(style)
        for split in ("valid", "test"):
            sets = data.candidate_sets(split)
            like_history, alike = _lookalikes(data, sets, split, ["", *titles])
            rows.append({
                "title style": style,
                "split": split,
                "items sharing their title": sum(c for c in counts.values() if c > 1),
                "as written: sets where a negative reads like a history item": like_history,
                "as written: sets where two candidates read alike": alike,
                "unique titles: sets with either": sum(_lookalikes(data, sets, split, unique)),
            })  # fmt: skip
    return pd.DataFrame(rows).set_index(["title style", "split"])


def _lookalikes(data: ProcessedData, sets: pd.DataFrame, split: str, titles: list[str]) -> tuple[int, int]:
    """(sets where a negative shows a history item's text, sets where two candidates show the same text)."""
    like_history = alike = 0
    for row in sets.itertuples(index=False):
        seen = {titles[i] for i in data.history(int(row.user_id), split)}
        shown = [titles[c] for c in row.candidates]
        like_history += any(titles[c] in seen for c in row.candidates if c != row.target)
        alike += len(set(shown)) < len(shown)
    return like_history, alike
