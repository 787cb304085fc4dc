"""Protocol invariants of the processed data, checked on every load in the notebooks and in tests.

A leak between splits or a candidate the user already interacted with silently inflates every
number downstream, so these checks are cheap enough to run every time.
"""

from __future__ import annotations

import numpy as np

from .processed import ProcessedData


def protocol_violations(data: ProcessedData) -> list[str]:
    """Every violation of the data protocol found in ``data``; an empty list means it holds."""
    problems: list[str] = []
    seqs = {int(u): (np.asarray(items), np.asarray(ts)) for u, items, ts in
            zip(data.sequences["user_id"], data.sequences["items"], data.sequences["timestamps"], strict=True)}  # fmt: skip
    expected_size = data.manifest.get("extra", {}).get("candidates_per_set")
    for row in data.splits.itertuples(index=False):
        uid = int(row.user_id)
        items, stamps = seqs[uid]
        train = np.asarray(row.train_items)
        if np.any(np.diff(stamps) < 0):
            problems.append(f"user {uid}: sequence is not chronological")
        if len(items) != len(train) + 2 or not np.array_equal(items[:-2], train):
            problems.append(f"user {uid}: train items are not the sequence without its last two items")
        if int(row.test_target) != int(items[-1]):
            problems.append(f"user {uid}: test target is not the latest interaction")
        if int(row.valid_target) != int(items[-2]):
            problems.append(f"user {uid}: valid target is not the second-latest interaction")
        for name, target in (("valid", row.valid_target), ("test", row.test_target)):
            if int(target) in set(train.tolist()):
                problems.append(f"user {uid}: {name} target {int(target)} appears in the train items")
    for row in data.candidates.itertuples(index=False):
        uid = int(row.user_id)
        cands = np.asarray(row.candidates)
        interacted = set(seqs[uid][0].tolist())
        if expected_size is not None and len(cands) != expected_size:
            problems.append(f"user {uid} {row.split}: {len(cands)} candidates, expected {expected_size}")
        if len(set(cands.tolist())) != len(cands):
            problems.append(f"user {uid} {row.split}: duplicate candidates")
        if int(cands[row.target_position]) != int(row.target):
            problems.append(f"user {uid} {row.split}: target_position does not point at the target")
        target = data.target(uid, row.split)
        if int(row.target) != target:
            problems.append(f"user {uid} {row.split}: candidate target {int(row.target)} is not the split's target {target}")
        negatives = [c for c in cands.tolist() if c != target]
        if len(negatives) != len(cands) - 1:
            problems.append(f"user {uid} {row.split}: the target appears {len(cands) - len(negatives)} times")
        seen = [c for c in negatives if c in interacted]
        if seen:
            problems.append(f"user {uid} {row.split}: negatives {seen} were interacted with by the user")
        if any(c < 1 or c > data.num_items for c in cands.tolist()):
            problems.append(f"user {uid} {row.split}: candidate outside 1..{data.num_items}")
    return problems
