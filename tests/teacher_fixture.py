"""A small dataset whose next items are known: every user walks the same cycle of items.

Items 1..M form one random cycle (a successor map); each user starts at a random item and
follows it for 12-20 steps, so no item repeats within a user and a user's next item is always
the successor of their latest one. A teacher that learned the pattern must put each user's
own next item first, which also shows its exports are attached to the right users.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from delrec_lib.config import DataConfig
from delrec_lib.data import load_processed, prepare_dataset

NUM_ITEMS = 40
NUM_USERS = 128


def successor_map(seed: int = 0) -> dict[int, int]:
    order = np.random.default_rng(seed).permutation(np.arange(1, NUM_ITEMS + 1))
    return {int(a): int(b) for a, b in zip(order, np.roll(order, -1), strict=True)}


def write_successor_dataset(data_dir: Path, name: str = "cycle", seed: int = 0) -> dict[int, int]:
    succ = successor_map(seed)
    rng = np.random.default_rng(seed + 1)
    folder = Path(data_dir) / "raw" / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["user,item,timestamp"]
    for user in range(1, NUM_USERS + 1):
        item = int(rng.integers(1, NUM_ITEMS + 1))
        for step in range(int(rng.integers(12, 21))):
            rows.append(f"u{user},{item},{1_000_000 + user * 1000 + step}")
            item = succ[item]
    (folder / "interactions.csv").write_text("\n".join(rows) + "\n")
    (folder / "items.csv").write_text("item,title,year\n" + "".join(f"{i},Film {i},{1950 + i}\n" for i in range(1, NUM_ITEMS + 1)))
    return succ


def successor_data(data_dir: Path, name: str = "cycle", seed: int = 0):
    write_successor_dataset(data_dir, name, seed)
    prepare_dataset(DataConfig(dataset=name, seed=seed), data_dir)
    return load_processed(data_dir, name)
