"""A view of the processed data without its test split: what the tuning tools hand the stage they tune.

Settings chosen with a tuning tool go into ``delrec_lib/config/`` as defaults; had the tool read a test target,
every run's test numbers would carry that choice. The tools therefore never give a stage the data
itself but a ``NoTestView`` of it, which refuses every read of the test split, however it is asked
for (positional or keyword argument, or a table that holds test targets), with ``TestSplitRead``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..errors import DelrecError
from .processed import ProcessedData


class TestSplitRead(DelrecError, RuntimeError):
    """A stage asked a ``NoTestView`` for the test split, or for a table that holds it."""

    __test__ = False  # not a test class, whatever pytest thinks of its name


# ProcessedData members the view passes on as they are: none of them holds a valid or test target.
PASSED = frozenset({"directory", "manifest", "items", "data_id", "num_items", "num_users", "titles", "display_titles",
                    "user_ids", "train_items", "report_users", "report_users_id"})  # fmt: skip
# Members that hold the test split whole; what to read instead.
REFUSED = {
    "sequences": "every interaction, test targets included; read train_items, or interacted_items for negatives",
    "candidates": "both splits' candidate sets; read candidate_sets('valid')",
    "item_times": "the timestamps of every interaction, test targets included",
}
MEMBERS = frozenset({f.name for f in dataclasses.fields(ProcessedData)} | set(dir(ProcessedData)))


class NoTestView:
    """``data`` as a stage being tuned may see it: the items, the users, each user's train items, the
    validation split (targets, histories, candidate sets), ``splits`` without its ``test_target`` column,
    the fixed report users and the data's identity.

    ``interacted_items`` (a user's whole sequence, valid and test targets included) only with
    ``negatives``: the LLM stages read it to keep a user's own items out of the random negatives they
    draw (the protocol's rule for every candidate set), never as an input. Anything else of
    ``ProcessedData`` raises ``TestSplitRead``, naming ``who`` read it.
    """

    def __init__(self, data: ProcessedData | NoTestView, *, negatives: bool, who: str):
        self._data, self._negatives, self._who = data, negatives, who
        self._splits: pd.DataFrame | None = None

    def __getattr__(self, name: str):
        if name.startswith("__") or name not in MEMBERS:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        if name in PASSED:
            return getattr(self._data, name)
        raise TestSplitRead(f"{self._who} read data.{name} ({REFUSED.get(name, 'not given to a stage being tuned')}); "
                            "choosing settings must not read the test split")  # fmt: skip

    def __repr__(self) -> str:
        return f"NoTestView({self._data!r})"

    def _check(self, split: str, what: str) -> None:
        if split != "valid":
            raise TestSplitRead(f"{self._who} read the {split!r} split ({what}); choosing settings reads the "
                                "validation split only")  # fmt: skip

    @property
    def splits(self) -> pd.DataFrame:
        """The split table without its test targets: user_id, train_items, valid_target."""
        if self._splits is None:
            self._splits = self._data.splits.drop(columns=["test_target"], errors="ignore")
        return self._splits

    def target(self, user_id: int, split: str) -> int:
        self._check(split, f"the target of user {user_id}")
        return self._data.target(user_id, split)

    def history(self, user_id: int, split: str) -> list[int]:
        self._check(split, f"the history of user {user_id}")
        return self._data.history(user_id, split)

    def candidate_sets(self, split: str, max_users: int | None = None) -> pd.DataFrame:
        self._check(split, "candidate sets")
        return self._data.candidate_sets(split, max_users)

    def interacted_items(self, user_id: int) -> np.ndarray:
        if not self._negatives:
            raise TestSplitRead(f"{self._who} read data.interacted_items (user {user_id}'s valid and test targets "
                                "included), which this stage has no use for")  # fmt: skip
        return self._data.interacted_items(user_id)
