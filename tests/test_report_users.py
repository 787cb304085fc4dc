"""Stage 1's fixed report users: a property of the processed data, outside its identity, out of every
stage-1 setting's reach."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from delrec_lib.artifacts import read_manifest
from delrec_lib.config import DataConfig, DistillConfig
from delrec_lib.data import load_processed, prepare_dataset
from delrec_lib.data.report_users import REPORT_USERS_FILE, compute_report_users, report_set_size
from delrec_lib.delrec.distill import UserSplit, split_users
from delrec_lib.errors import DataError

from .stage_fixtures import NUM_USERS, synthetic_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_data(tmp_path_factory.mktemp("report") / "data")


def test_the_report_set_is_written_beside_the_data_and_leaves_its_identity_alone(data, tmp_path):
    path = data.directory / REPORT_USERS_FILE
    record = json.loads(path.read_text())
    assert record["users"] == data.report_users == compute_report_users(data.user_ids())
    assert len(data.report_users) == report_set_size(NUM_USERS) == NUM_USERS // 3
    assert len(compute_report_users(np.arange(1, 944))) == 300  # MovieLens-100K: the 300 users the cpu run reports
    assert record["users"] != sorted(record["users"]), "kept in its drawn order: heldout_users takes a prefix"
    assert REPORT_USERS_FILE not in read_manifest(data.directory)["outputs"]
    # Removed, it is written again, identically, and the data's identity never moved.
    data_id = data.data_id
    path.unlink()
    again = load_processed(data.directory.parent.parent, "toy")
    assert again.data_id == data_id and again.report_users == data.report_users and path.is_file()
    # Another data seed (other candidates, the same users): the same report users.
    other = synthetic_data(tmp_path)
    prepare_dataset(DataConfig(dataset="toy", num_negatives=5, seed=99), tmp_path)
    reseeded = load_processed(tmp_path, "toy")
    assert reseeded.data_id != other.data_id and reseeded.report_users == data.report_users


def test_an_edited_or_corrupt_report_file_is_refused_naming_it(tmp_path):
    synthetic_data(tmp_path)
    path = tmp_path / "processed" / "toy" / REPORT_USERS_FILE
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "users": [*record["users"][1:], record["users"][0]]}))
    with pytest.raises(DataError, match=rf"{REPORT_USERS_FILE}: not the report users .*differs in users\)"):
        _ = load_processed(tmp_path, "toy").report_users
    with pytest.raises(DataError, match=rf"{REPORT_USERS_FILE}: not the report users"):
        prepare_dataset(DataConfig(dataset="toy", num_negatives=5), tmp_path)  # up to date, but not its report file
    path.write_text("{not json")
    with pytest.raises(DataError, match=rf"{REPORT_USERS_FILE}: not valid JSON.*Delete it"):
        _ = load_processed(tmp_path, "toy").report_users


def check_report_users_untouched(split: UserSplit, data, cfg: DistillConfig, max_users: int | None) -> None:
    """The fixed report set is out of training and selection; the report set is its prefix (fixed order)."""
    fixed = data.report_users
    assert not set(split.train) & set(fixed), "a fixed report user is trained on"
    assert not set(split.selection) & set(fixed), "a fixed report user selects the step"
    present = set(data.user_ids(max_users).tolist())
    assert split.report == sorted([u for u in fixed if u in present][: cfg.heldout_users])


SETTINGS = list(itertools.product((0, 1, 2024), (1, 5, 13, 300), (1, 6, 100), (None, 3), (None, 10, 25)))


def test_no_stage1_setting_moves_a_report_user_into_training_or_selection(data):
    reports = {}
    for seed, heldout, selection, max_train, max_users in SETTINGS:
        cfg = DistillConfig(seed=seed, heldout_users=heldout, selection_users=selection, max_train_users=max_train)
        split = split_users(data, cfg, max_users)
        check_report_users_untouched(split, data, cfg, max_users)
        assert split.train and split.selection
        reports.setdefault((heldout, max_users), set()).add(tuple(split.report))
    assert all(len(r) == 1 for r in reports.values()), "the seed moved a report user"


def test_the_check_fails_on_a_split_drawn_from_the_stage_seed(data):
    """The user split before the fixed report set: one shuffle by distill.seed, the report set first."""

    def shuffled_split(cfg):
        users = [int(u) for u in np.random.default_rng([cfg.seed, 7]).permutation(data.user_ids())]
        n, k = cfg.heldout_users, cfg.selection_users
        return UserSplit(sorted(users[n + k :]), sorted(users[n : n + k]), sorted(users[:n]))

    with pytest.raises(AssertionError):
        for seed in (0, 1, 2024):
            cfg = DistillConfig(seed=seed, heldout_users=5, selection_users=6)
            check_report_users_untouched(shuffled_split(cfg), data, cfg, None)


def test_data_without_a_report_user_or_with_too_few_others_is_refused(data):
    with pytest.raises(DataError, match="at least 2 are needed"):
        split_users(data, DistillConfig(), max_users=2)
    elsewhere = dataclasses.replace(data, _report={**data._report_record(), "users": [NUM_USERS]})
    with pytest.raises(DataError, match=rf"none of the 5 users is one of the data's 1 fixed report users .*{REPORT_USERS_FILE}"):
        split_users(elsewhere, DistillConfig(), max_users=5)
