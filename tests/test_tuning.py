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


def forbid_test_split(monkeypatch) -> list:
    """Every split ProcessedData is asked for, recorded; asking for the test split fails the test."""
    splits_read = []
    for name in ("target", "history", "candidate_sets"):
        original = getattr(ProcessedData, name)

        def spy(self, *args, _original=original, **kwargs):
            split = kwargs.get("split", args[-1] if args else None)
            splits_read.append(split)
            if split == "test":
                raise AssertionError("a validation grid read the test split")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ProcessedData, name, spy)
    return splits_read


def test_grid_scores_validation_only(tmp_path, monkeypatch, one_torch_thread):
    data = successor_data(tmp_path)
    splits_read = forbid_test_split(monkeypatch)
    config = TeachersConfig(models=("sasrec",), max_epochs=2, patience=1)
    table = validation_grid("sasrec", {"dropout": [0.1, 0.3]}, config, data)
    assert list(table["dropout"].sort_values()) == [0.1, 0.3]
    assert table["valid_NDCG@10"].between(0, 1).all()
    assert (table["epochs"] <= 2).all()
    assert "valid" in splits_read and "test" not in splits_read


def test_llm_stage_grid_is_typed_by_the_stage_fields():
    from delrec_lib.tuning import parse_assignments, point_name

    grid = parse_assignments(["lr=1e-3,3e-3", "lora_layers=4,none", "target_modules=q_proj+v_proj"], "finetune", grid=True)
    assert grid == {"lr": [0.001, 0.003], "lora_layers": [4, None], "target_modules": [("q_proj", "v_proj")]}
    assert parse_assignments(["max_steps=100", "cache_prefix=false"], "distill", grid=False) == {"max_steps": 100, "cache_prefix": False}
    assert point_name({"lr": 0.001, "target_modules": ("q_proj", "v_proj")}) == "lr=0.001_target_modules=q_proj+v_proj"
    with pytest.raises(ConfigError, match="'width' is not a field of finetune"):
        parse_assignments(["width=3"], "finetune", grid=True)
    with pytest.raises(ConfigError, match="--set distill.max_steps: takes int values"):
        parse_assignments(["max_steps=many"], "distill", grid=False)
    with pytest.raises(ConfigError, match="expected one of"):
        parse_assignments(["weighting=sometimes"], "distill", grid=True)


def test_llm_stage_grid_trains_each_point_and_reads_no_test_split(tmp_path, monkeypatch, one_torch_thread):
    from delrec_lib.config import FinetuneConfig, LLMConfig, RunConfig
    from delrec_lib.llm import load_backbone
    from delrec_lib.tuning import validation_grid

    from .llm_fixtures import save_tiny_causal
    from .stage_fixtures import synthetic_data

    data = synthetic_data(tmp_path / "data")
    backbone = load_backbone(str(save_tiny_causal(tmp_path / "tiny")), dtype="float32")
    (tmp_path / "from" / "teachers").mkdir(parents=True)
    read = forbid_test_split(monkeypatch)
    config = RunConfig(preset="smoke", llm=LLMConfig(history_len=4),
                       finetune=FinetuneConfig(variants=("lora",), max_train_users=8, valid_users=4, num_negatives=5,
                                               batch_size=4, grad_accum=1, eval_every=2, warmup_steps=0, lora_r=2, lora_layers=1))  # fmt: skip
    table = validation_grid("finetune", "lora", config, {"lr": [1e-3, 1e-2]}, {"max_steps": 2}, tmp_path / "from",
                            tmp_path / "out", backbone, data)  # fmt: skip
    assert list(table["lr"]) == [1e-3, 1e-2] and table["valid_NDCG@5"].between(0, 1).all()
    assert (table["best_step"] <= 2).all()
    assert "valid" in read and "test" not in read
    assert (tmp_path / "out" / "finetune" / "lora" / "max_steps=2_lr=0.01" / "finetune" / "lora" / "history.csv").is_file()
