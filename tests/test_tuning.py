"""The teachers' validation grid: typed grid parsing, one row per point, and no test split read."""

from __future__ import annotations

import pytest

from delrec_lib.config import TeachersConfig
from delrec_lib.data.processed import ProcessedData
from delrec_lib.errors import ConfigError
from delrec_lib.teachers.tuning import grid_points, parse_grid, validation_grid

from .teacher_fixture import successor_data


def test_grid_is_typed_by_the_models_fields_and_bad_fields_are_named():
    grid = parse_grid(["lr=1e-3,2e-3", "hidden=64,128"], "sasrec")
    assert grid == {"lr": [0.001, 0.002], "hidden": [64, 128]}
    assert len(grid_points(grid)) == 4
    with pytest.raises(ConfigError, match="'width' is not a field of teachers.sasrec"):
        parse_grid(["width=3"], "sasrec")
    with pytest.raises(ConfigError, match=r"teachers.gru4rec.hidden takes int values"):
        parse_grid(["hidden=big"], "gru4rec")
    with pytest.raises(ConfigError, match="expected FIELD=V1,V2"):
        parse_grid(["lr"], "caser")


def test_grid_scores_validation_only(tmp_path, monkeypatch, one_torch_thread):
    data = successor_data(tmp_path)
    splits_read = []
    for name in ("target", "history", "candidate_sets"):
        original = getattr(ProcessedData, name)

        def spy(self, *args, _original=original, **kwargs):
            split = kwargs.get("split", args[-1] if args else None)
            splits_read.append(split)
            if split == "test":
                raise AssertionError("the validation grid read the test split")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ProcessedData, name, spy)
    config = TeachersConfig(models=("sasrec",), max_epochs=2, patience=1)
    table = validation_grid("sasrec", {"dropout": [0.1, 0.3]}, config, data)
    assert list(table["dropout"].sort_values()) == [0.1, 0.3]
    assert table["valid_NDCG@10"].between(0, 1).all()
    assert (table["epochs"] <= 2).all()
    assert "valid" in splits_read and "test" not in splits_read
