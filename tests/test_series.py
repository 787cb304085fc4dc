"""The notebook series executed with papermill on the smoke preset, as `make smoke` does.

The series runs once per test session (it is the expensive part); each notebook's test reads
back the metrics that notebook recorded in its last cell.
"""

from __future__ import annotations

import json

import pytest

from delrec_lib.runner import RunPaths, read_metrics, run_series, series_notebooks

pytestmark = pytest.mark.series


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, real_data_dir) -> RunPaths:
    root = tmp_path_factory.mktemp("smoke-run")
    config = root / "smoke.toml"
    config.write_text(f'preset = "smoke"\ndata_dir = "{real_data_dir}"\n')
    run_series("smoke", root / "run", config_file=config, progress=False)
    return RunPaths(root / "run")


def test_every_notebook_was_executed(smoke_run):
    executed = sorted(p.name for p in smoke_run.notebooks.glob("*.ipynb"))
    assert executed == [p.name for p in series_notebooks()]
    for name in executed:
        nb = json.loads((smoke_run.notebooks / name).read_text())
        errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{name}: {errors[:1]}"


def test_01_data_prep_metrics(smoke_run):
    m = read_metrics(smoke_run, "01_data_prep")
    assert m["dataset"] == "ml-100k"
    assert (m["users"], m["items"], m["interactions"]) == (943, 1682, 100_000)
    assert m["candidates_per_set"] == 20
    assert m["protocol_violations"] == 0
    assert (smoke_run.figures / "01_dataset.png").is_file()


def test_02_teacher_training_metrics(smoke_run):
    m = read_metrics(smoke_run, "02_teacher_training")
    assert set(m["models"]) == {"sasrec", "gru4rec", "caser"}
    for name in ["popularity", *m["models"]]:
        assert m[name]["users"] == 943
        assert 0 < m[name]["test_full_NDCG@10"] < 1 and 0 < m[name]["test_candidates_NDCG@10"] <= 1
    for name in m["models"]:
        assert m[name]["epochs"] >= 1
        exports = smoke_run.teachers / name
        for f in ("model.safetensors", "config.json", "metrics.json", "topk_valid.parquet", "topk_test.parquet",
                  "candidate_scores.parquet", "per_user.parquet", "curves.csv", "manifest.json"):  # fmt: skip
            assert (exports / f).is_file(), f"{name}: {f} missing"
    assert (smoke_run.figures / "02_teacher_curves.png").is_file()
