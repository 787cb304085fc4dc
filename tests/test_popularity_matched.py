"""The popularity-matched candidate sets: unseen distinct negatives in the target's popularity bin, a fixed
artifact beside the processed data outside its identity, and popularity near chance on them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from delrec_lib.artifacts import read_manifest
from delrec_lib.data import SPLITS, load_processed
from delrec_lib.data.popularity_matched import (
    DEFAULT_BINS,
    MATCHED_FILE,
    MATCHED_RECORD_FILE,
    matched_inputs,
    popularity_bins,
    popularity_check,
    train_counts,
)
from delrec_lib.errors import DataError
from delrec_lib.evaluation import split_inputs
from delrec_lib.teachers import train_popularity

from .stage_fixtures import synthetic_data


def check_matched_sets(data, split: str) -> None:
    """Every row: the split's target at its position, as many distinct never-interacted negatives as the
    shared set, each in the stated bin range, the range the narrowest one holding enough such items."""
    counts = train_counts(data)
    _, item_bins = popularity_bins(counts, DEFAULT_BINS)
    shared = data.candidate_sets(split).set_index("user_id")
    sets = data.popularity_matched_sets(split)
    assert sets["user_id"].tolist() == sorted(data.user_ids().tolist())
    top = int(item_bins.max())
    for row in sets.itertuples():
        cands = np.asarray(row.candidates)
        assert row.target == data.target(row.user_id, split)
        assert cands[row.target_position] == row.target, f"user {row.user_id}: target not at target_position"
        assert len(cands) == len(shared.loc[row.user_id, "candidates"])
        assert len(set(cands.tolist())) == len(cands), f"user {row.user_id}: a duplicate candidate"
        negatives = np.delete(cands, row.target_position)
        interacted = set(data.interacted_items(row.user_id).tolist())
        assert not interacted & set(negatives.tolist()), f"user {row.user_id}: an interacted item among the negatives"
        assert row.bin == item_bins[row.target]
        assert row.bin_low <= row.bin <= row.bin_high and row.widened == row.bin_high - row.bin_low
        neg_bins = item_bins[negatives]
        assert ((neg_bins >= row.bin_low) & (neg_bins <= row.bin_high)).all(), f"user {row.user_id}: a negative outside its bins"
        unseen = np.ones(len(item_bins), dtype=bool)
        unseen[0] = False
        unseen[list(interacted)] = False
        steps = max(row.bin - row.bin_low, row.bin_high - row.bin)
        assert (row.bin_low, row.bin_high) == (max(0, row.bin - steps), min(top, row.bin + steps))
        if steps:  # one step narrower did not hold enough
            low, high = max(0, row.bin - steps + 1), min(top, row.bin + steps - 1)
            assert (unseen & (item_bins >= low) & (item_bins <= high)).sum() < len(negatives), f"user {row.user_id}: widened needlessly"


@pytest.mark.parametrize("split", SPLITS)
def test_matched_sets_hold_the_target_and_unseen_distinct_negatives_of_its_bin(real_data, split):
    check_matched_sets(real_data, split)
    record = json.loads((real_data.directory / MATCHED_RECORD_FILE).read_text())
    sets = real_data.popularity_matched_sets(split)
    assert record["widened_users"][split] == int((sets["widened"] > 0).sum()) > 0  # MovieLens has widened users
    assert record["widened_bins_max"][split] == int(sets["widened"].max())
    shared = real_data.candidate_sets(split)
    assert list(sets.columns[: len(shared.columns)]) == list(shared.columns)
    assert (sets["target"] == shared["target"]).all()


def test_the_check_fails_on_negatives_drawn_ignoring_the_bin(real_data, monkeypatch):
    """The shared sets (uniform negatives) under the matched sets' bin columns: the check must refuse them."""
    matched = real_data.popularity_matched_sets("test")
    shared = real_data.candidate_sets("test").assign(**{c: matched[c] for c in ("bin", "bin_low", "bin_high", "widened")})
    monkeypatch.setattr(real_data, "popularity_matched_sets", lambda split: shared)
    with pytest.raises(AssertionError, match="a negative outside its bins"):
        check_matched_sets(real_data, "test")


def test_bins_are_item_count_quantiles_with_equal_counts_sharing_a_bin(real_data):
    counts = train_counts(real_data)
    assert (counts == train_popularity(real_data)).all()  # popularity's own counts
    edges, item_bins = popularity_bins(counts, DEFAULT_BINS)
    assert item_bins[0] == -1 and item_bins[1:].min() == 0 and item_bins.max() == len(edges) - 2
    for c in np.unique(counts[1:]):
        assert len(set(item_bins[1:][counts[1:] == c].tolist())) == 1, f"items with count {c} split across bins"
    for i, edge in enumerate(edges[1:-1], start=1):  # a count equal to an edge goes to the upper bin
        at = counts[1:] == edge
        assert (item_bins[1:][at] == i).all()
    inside = (counts[1:] >= edges[item_bins[1:]]) & (counts[1:] <= edges[item_bins[1:] + 1])
    assert inside.all()


def test_the_artifact_is_deterministic_and_outside_the_data_identity(tmp_path):
    paths = []
    for name in ("a", "b"):
        data = synthetic_data(tmp_path / name)
        data.popularity_matched_sets("test")
        paths.append(data.directory)
        check_matched_sets(data, "test")
        check_matched_sets(data, "valid")
    for file in (MATCHED_FILE, MATCHED_RECORD_FILE):
        assert (paths[0] / file).read_bytes() == (paths[1] / file).read_bytes(), f"{file}: two builds differ"
        assert file not in read_manifest(paths[0])["outputs"]
    data_id = data.data_id
    first = (paths[1] / MATCHED_FILE).read_bytes()
    (paths[1] / MATCHED_FILE).unlink()
    again = load_processed(tmp_path / "b", "toy")
    assert again.data_id == data_id
    assert again.popularity_matched_sets("test").equals(data.popularity_matched_sets("test"))
    assert (paths[1] / MATCHED_FILE).read_bytes() == first


def test_an_edited_or_corrupt_matched_file_is_refused_naming_it(tmp_path):
    synthetic_data(tmp_path).popularity_matched_sets("test")
    folder = tmp_path / "processed" / "toy"
    table_path, record_path = folder / MATCHED_FILE, folder / MATCHED_RECORD_FILE
    good_table, good_record = table_path.read_bytes(), record_path.read_text()

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(table_path)
    cands = table.column("candidates").to_pylist()
    cands[0] = cands[0][1:] + cands[0][:1]  # the same items in another order
    pq.write_table(table.set_column(table.schema.get_field_index("candidates"), "candidates",
                                    pa.array(cands, pa.list_(pa.int32()))), table_path)  # fmt: skip
    with pytest.raises(DataError, match=rf"{MATCHED_FILE}: not the popularity-matched .*differs in candidates"):
        load_processed(tmp_path, "toy").popularity_matched_sets("test")
    table_path.write_bytes(b"not parquet")
    with pytest.raises(DataError, match=rf"{MATCHED_FILE}: not the popularity-matched .*unreadable"):
        load_processed(tmp_path, "toy").popularity_matched_sets("test")
    table_path.write_bytes(good_table)
    record_path.write_text(json.dumps({**json.loads(good_record), "seed": 1}))
    with pytest.raises(DataError, match=rf"{MATCHED_RECORD_FILE}: not the popularity-matched .*differs in seed\)"):
        load_processed(tmp_path, "toy").popularity_matched_sets("valid")
    record_path.write_text("{not json")
    with pytest.raises(DataError, match=rf"{MATCHED_RECORD_FILE}: not valid JSON.*Delete it"):
        load_processed(tmp_path, "toy").popularity_matched_sets("valid")
    record_path.write_text(good_record)
    assert len(load_processed(tmp_path, "toy").popularity_matched_sets("valid")) > 0


def test_popularity_sits_at_chance_on_the_matched_sets_only(real_data):
    result = popularity_check(real_data, "test")
    matched, shared = result["matched"], result["shared"]
    assert matched["users"] == shared["users"] == 943 and matched["chance"] == 0.05
    assert result["accepted"] and matched["ci_low"] <= 0.05 <= matched["ci_high"]
    assert not shared["ci_low"] <= 0.05 <= shared["ci_high"] and shared["ci_low"] > 0.15


def test_matched_inputs_mirror_split_inputs(real_data):
    users = [int(u) for u in real_data.user_ids()[[5, 0, 17]]]
    got, want = matched_inputs(real_data, users), split_inputs(real_data, users)
    assert len(got) == len(want) == 4
    for a, b in zip(got, want, strict=True):
        assert type(a) is type(b) and (not isinstance(a, np.ndarray) or (a.shape, a.dtype) == (b.shape, b.dtype))
    assert (got[0] == want[0]).all() and got[1] == want[1]
    targets = [real_data.target(u, "test") for u in users]
    assert (got[2][np.arange(len(users)), got[3]] == targets).all()
    assert not (got[2] == want[2]).all()
