"""A processed dataset that fails the test on any read of the test split, however it is asked for."""

from __future__ import annotations


class NoTestReads:
    """A ProcessedData that fails the test (AssertionError) on a read of the test split: ``target``,
    ``history`` or ``candidate_sets`` of it, by positional or keyword argument, or a table that holds it
    (``sequences``, ``candidates``, ``item_times``); ``splits`` comes without its test targets. With
    ``negatives=False``, ``interacted_items`` fails too. ``splits_read`` records every split asked for."""

    def __init__(self, data, *, negatives: bool = True):
        self._data, self._negatives = data, negatives
        self.splits_read: list[str] = []

    def __getattr__(self, name):
        if name in ("sequences", "candidates", "item_times"):
            raise AssertionError(f"read data.{name}, which holds the test split")
        return getattr(self._data, name)

    def _read(self, split: str, what: str) -> None:
        self.splits_read.append(split)
        if split != "valid":
            raise AssertionError(f"read the {split} split ({what})")

    @property
    def splits(self):
        return self._data.splits.drop(columns=["test_target"])

    def target(self, user_id, split):
        self._read(split, f"target of user {user_id}")
        return self._data.target(user_id, split)

    def history(self, user_id, split):
        self._read(split, f"history of user {user_id}")
        return self._data.history(user_id, split)

    def candidate_sets(self, split, max_users=None):
        self._read(split, "candidate sets")
        return self._data.candidate_sets(split, max_users)

    def interacted_items(self, user_id):
        if not self._negatives:
            raise AssertionError(f"read data.interacted_items of user {user_id} (valid and test targets included)")
        return self._data.interacted_items(user_id)
