"""Reading the processed dataset: the one view of the data every stage shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..artifacts import artifact_id, read_manifest, require_config, verify_outputs
from ..config import DataConfig
from ..errors import ConfigError
from .pipeline import PROCESSED_KIND, SPLITS, processed_dir
from .popularity_matched import load_popularity_matched
from .report_users import load_report_users


@dataclass
class ProcessedData:
    """Items, chronological sequences, leave-one-out splits and the fixed candidate sets.

    Item ids run 1..num_items (0 is free for padding); user ids run 1..num_users.
    """

    directory: Path
    manifest: dict
    items: pd.DataFrame
    sequences: pd.DataFrame
    splits: pd.DataFrame
    candidates: pd.DataFrame
    _split_index: dict = field(default_factory=dict, repr=False)
    _report: dict | None = field(default=None, repr=False, compare=False)
    _matched: pd.DataFrame | None = field(default=None, repr=False, compare=False)
    _matched_record: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self._split_index = {int(u): i for i, u in enumerate(self.splits["user_id"])}

    @property
    def data_id(self) -> str:
        """Identity of the processed files, recorded by every downstream artifact."""
        return artifact_id(self.manifest)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_users(self) -> int:
        return len(self.splits)

    @property
    def titles(self) -> list[str]:
        """Display titles (with year, unique) indexed by item id (index 0 is the padding slot, an
        empty string): the catalogue a ``PromptBuilder`` is given."""
        return ["", *self.items["title"].tolist()]

    def display_titles(self, style: str) -> list[str]:
        """The unique titles of one ``llm.title_style``, indexed by item id, as prompts show them
        (before any cut to ``llm.title_max_tokens``)."""
        columns = {"with_year": "title", "no_year": "title_no_year"}
        if style not in columns:
            raise ConfigError(f"llm.title_style: expected one of {sorted(columns)}, got {style!r}")
        return ["", *self.items[columns[style]].tolist()]

    @property
    def report_users(self) -> list[int]:
        """Stage 1's fixed report users, in their fixed order (``report_users.json``; see ``delrec_lib.data.report_users``)."""
        return list(self._report_record()["users"])

    @property
    def report_users_id(self) -> str:
        """The hash of the fixed report set, as ``report_users.json`` records it."""
        return self._report_record()["hash"]

    def _report_record(self) -> dict:
        if self._report is None:
            self._report = load_report_users(self.directory, self.user_ids())
        return self._report

    def user_ids(self, max_users: int | None = None) -> np.ndarray:
        ids = self.splits["user_id"].to_numpy(np.int64)
        return ids if max_users is None else ids[:max_users]

    def train_items(self, user_id: int) -> list[int]:
        return list(self.splits["train_items"].iloc[self._row(user_id)])

    def interacted_items(self, user_id: int) -> np.ndarray:
        """Every item the user ever interacted with (train, valid and test): what negatives avoid."""
        return np.asarray(self.sequences["items"].iloc[self._row(user_id)])

    def item_times(self, user_id: int) -> dict[int, int]:
        """{item id: timestamp} of every interaction of the user (seconds; the protocol's own order)."""
        row = self.sequences.iloc[self._row(user_id)]
        return {int(i): int(t) for i, t in zip(row["items"], row["timestamps"], strict=True)}

    def target(self, user_id: int, split: str) -> int:
        self._check_split(split)
        return int(self.splits[f"{split}_target"].iloc[self._row(user_id)])

    def history(self, user_id: int, split: str) -> list[int]:
        """Items a model may see before predicting ``split``'s target: train items, plus the valid target for test."""
        self._check_split(split)
        train = self.train_items(user_id)
        return train if split == "valid" else [*train, self.target(user_id, "valid")]

    def candidate_sets(self, split: str, max_users: int | None = None) -> pd.DataFrame:
        """user_id, target, target_position, candidates (array of item ids) for one split, by user id."""
        self._check_split(split)
        df = self.candidates[self.candidates["split"] == split].sort_values("user_id").reset_index(drop=True)
        return df if max_users is None else df.iloc[:max_users].reset_index(drop=True)

    def popularity_matched_record(self) -> dict:
        """The matched sets' record (bin edges, seed, widenings, the sets' hash), loaded and checked once."""
        if self._matched is None:
            table, self._matched_record = load_popularity_matched(self)
            self._matched = table.to_pandas()
        return self._matched_record

    def popularity_matched_sets(self, split: str, max_users: int | None = None) -> pd.DataFrame:
        """The popularity-matched candidate sets of one split (``popularity_matched.parquet``; see
        ``delrec_lib.data.popularity_matched``), in the frame of ``candidate_sets`` plus the target's bin,
        the bin range drawn from and how many bins were added."""
        self._check_split(split)
        self.popularity_matched_record()
        df = self._matched[self._matched["split"] == split].sort_values("user_id").reset_index(drop=True)
        return df if max_users is None else df.iloc[:max_users].reset_index(drop=True)

    def _row(self, user_id: int) -> int:
        try:
            return self._split_index[int(user_id)]
        except KeyError:
            raise KeyError(f"unknown user id {user_id}") from None

    @staticmethod
    def _check_split(split: str) -> None:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")


def load_processed(data_dir: str | Path, dataset: str | DataConfig = "ml-100k") -> ProcessedData:
    """Load ``<data_dir>/processed/<dataset>/`` after checking every file against its manifest.

    Given the run's ``DataConfig`` (what every stage passes), the files must also have been made with
    exactly its settings: the folder is one per dataset name, so data processed for another run
    (another seed or number of negatives) is refused, naming both settings, instead of being used."""
    settings = dataset if isinstance(dataset, DataConfig) else None
    directory = processed_dir(Path(data_dir), settings.dataset if settings else dataset)
    manifest = read_manifest(directory, PROCESSED_KIND)
    verify_outputs(directory, manifest)
    if settings is not None:
        require_config("the processed data", manifest, settings, directory,
                       "Re-run notebook 01 (or `python -m delrec_lib data`) with this run's config to process it again.")  # fmt: skip

    def read(name: str) -> pd.DataFrame:
        return pq.read_table(directory / name).to_pandas()

    items = read("items.parquet")
    items["year"] = items["year"].astype("Int32")
    return ProcessedData(
        directory=directory,
        manifest=manifest,
        items=items,
        sequences=read("sequences.parquet"),
        splits=read("splits.parquet"),
        candidates=read("candidates.parquet"),
    )
