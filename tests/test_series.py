"""The notebook series executed with papermill on the smoke preset, as `make smoke` does.

The series runs once per test session (it is the expensive part); each notebook's test reads
back the metrics that notebook recorded in its last cell.
"""

from __future__ import annotations

import json
import math

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
    assert (m["items_sharing_full_title"], m["items_sharing_year_less_title"]) == (36, 45)
    assert (m["test_sets_with_lookalike_negative_before"], m["sets_with_lookalikes_after"]) == (15, 0)
    assert (m["users_valid_test_same_second"], m["users_last_three_same_second"]) == (415, 238)
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


def test_03_pattern_distillation_metrics(smoke_run):
    from delrec_lib.config import preset_config

    cfg = preset_config("smoke")
    m = read_metrics(smoke_run, "03_pattern_distillation")
    assert sorted(m) == sorted(cfg.distill.prompts)
    for name, r in m.items():
        assert 0 <= r["fidelity_before"] <= 1 and 0 <= r["fidelity_after"] <= 1
        assert r["fidelity_chance"] == 1 / (cfg.distill.rps_top_k + cfg.distill.rps_random)
        # reported on the report set beside the heuristics; the step chosen on the selection set
        assert (r["heldout_users"], r["selection_users"]) == (cfg.distill.heldout_users, cfg.distill.selection_users)
        assert sorted(r["fidelity_baselines"]) == ["most popular candidate", "most popular unlisted candidate"]
        assert list(r["ta_baselines"]) == ["most popular candidate"]
        for v in [*r["fidelity_baselines"].values(), *r["ta_baselines"].values(), r["selection_fidelity_best"]]:
            assert 0 <= v <= 1
        assert r["steps"] == cfg.distill.max_steps
        assert (smoke_run.distill / name / "soft_prompt.safetensors").is_file()
    assert (smoke_run.figures / "03_distillation_curves.png").is_file()


def test_04_llm_finetuning_metrics(smoke_run):
    from delrec_lib.config import preset_config
    from delrec_lib.finetune import seeded_names

    cfg = preset_config("smoke")
    m = read_metrics(smoke_run, "04_llm_finetuning")
    assert cfg.finetune.seeds and sorted(m) == sorted([*cfg.finetune.variants, *seeded_names(cfg)])
    for variant, r in m.items():
        assert 0 <= r["valid_HR@1"] <= 1 and 0 <= r["valid_NDCG@5"] <= 1
        assert r["steps"] == cfg.finetune.max_steps
        assert (smoke_run.finetune / variant / "adapter" / "adapter_config.json").is_file()
        # the same validation examples ranked without an LLM, beside the curve
        assert {"popularity", "chance", *cfg.teachers.models} == set(r["valid_baselines"])
        assert r["valid_baselines"]["chance"] == pytest.approx(sum(1 / math.log2(k + 1) for k in range(1, 6)) / 20)  # NDCG@5
    assert {r["train_seed"] for r in m.values()} == {cfg.finetune.seed, *cfg.finetune.seeds}
    assert (smoke_run.figures / "04_finetuning_curves.png").is_file()


def test_07_evaluation_metrics(smoke_run):
    from delrec_lib.config import preset_config

    cfg = preset_config("smoke")
    m = read_metrics(smoke_run, "07_evaluation")
    from delrec_lib.finetune import seeded_names

    expected = {
        "popularity", "zero-shot", *cfg.teachers.models, *cfg.finetune.variants, *seeded_names(cfg), *cfg.llmsrec.variants,
        *cfg.p2rec.variants,
    }
    assert set(m["methods"]) == expected
    assert m["users"] == cfg.max_users
    for method, r in m["methods"].items():
        assert all(0 <= v <= 1 for v in r.values()), method
        assert r["HR@1"] <= r["HR@5"] <= r["HR@10"], method
        assert r["NDCG@5"] <= r["NDCG@10"] <= r["HR@10"] + 1e-9, method
    assert {(p["method"], p["versus"]) for p in m["paired"]} >= {("delrec-sasrec", "sasrec"), ("delrec-sasrec", "lora")}
    assert all(0 < p["p_value"] <= 1 for p in m["paired"])
    assert set(m["generation"]) == {"zero-shot", *cfg.finetune.variants}  # not the seeds' copies
    # the seed study: DELRec against LoRA, the run's seed and every extra seed
    study = [r for r in m["seed_study"] if (r["method"], r["versus"]) == ("delrec-sasrec", "lora")]
    assert {r["metric"] for r in study} == set(cfg.eval.paired_metrics)
    assert all(r["seeds"] == 1 + len(cfg.finetune.seeds) for r in study)
    assert (smoke_run.eval / "seed_study.csv").is_file()
    assert ("p2rec-sasrec", "sasrec") in {(p["method"], p["versus"]) for p in m["paired"]}
    for protocol in ("masked", "unmasked"):  # full-catalogue methods: popularity, the teachers, LLM-SRec, P2Rec's teachers
        full = {"popularity", *cfg.teachers.models, *cfg.llmsrec.variants, *cfg.p2rec.variants}
        assert set(m["catalogue"][protocol]) == full
    assert m["chance"]["HR@1"] == 1 / 20
    for name in ("results.csv", "results.md", "paired_tests.csv", "generation_protocol.csv"):
        assert (smoke_run.eval / name).is_file()


def test_08_analysis_metrics(smoke_run):
    m = read_metrics(smoke_run, "08_analysis")
    assert {"08_metrics.png", "08_training_curves.png", "08_agreement.png", "08_segments.png",
            "08_order_diagnostic.png"} <= set(m["figures"])  # fmt: skip
    popularity = [r for r in m["order"] if r["method"] == "popularity"]
    assert popularity and all(r["drop"] == 0.0 and r["original"] == r["shuffled"] for r in popularity)
    assert "Best method" in m["reading"]


def test_05_llm_srec_metrics(smoke_run):
    from delrec_lib.config import preset_config

    cfg = preset_config("smoke").llmsrec
    m = read_metrics(smoke_run, "05_llm_srec")
    assert m["variants"] == list(cfg.variants) and set(m["methods"]) == set(cfg.variants)
    checksums = set()
    for name, r in m["methods"].items():
        assert r["steps"] == cfg.max_steps and r["train_examples"] == cfg.max_train_users
        assert 0 < r["valid_NDCG@10"] <= 1 and -1 <= r["teacher_cosine_after"] <= 1
        assert -1 <= r["shuffle_cosine"] <= 1
        checksums.add(r["backbone_checksum"])
        for f in ("heads.safetensors", "history.csv", "train_log.csv", "metrics.json", "manifest.json"):
            assert (smoke_run.llmsrec / name / f).is_file(), f"{name}: {f} missing"
    assert len(checksums) == 1  # every variant trained around the same, untouched LLM
    assert {"popularity", "chance", cfg.teacher} <= set(m["baselines"])
    assert (smoke_run.figures / "05_llmsrec_training.png").is_file()
    ev = read_metrics(smoke_run, "07_evaluation")
    assert set(cfg.variants) <= set(ev["methods"]) and set(cfg.variants) <= set(ev["catalogue"]["masked"])
    assert ("llm-srec", "sasrec") in {(p["method"], p["versus"]) for p in ev["paired"]}
    order = read_metrics(smoke_run, "08_analysis")["order"]
    assert "llm-srec" in {r["method"] for r in order}


def test_06_p2rec_metrics(smoke_run):
    from delrec_lib.config import parse_p2rec_variant, preset_config

    cfg = preset_config("smoke")
    m = read_metrics(smoke_run, "06_p2rec")
    assert m["variants"] == list(cfg.p2rec.variants)
    assert set(m["methods"]) == set(cfg.p2rec.variants)
    sft = f"sft-{cfg.p2rec.source_teacher}-k{cfg.p2rec.num_categories}"
    assert m["sft"][sft]["steps"] == cfg.p2rec.max_steps and m["sft"][sft]["k"] == cfg.p2rec.num_categories
    assert 0 <= m["sft"][sft]["heldout_loss"] and 0 <= m["sft"][sft]["heldout_prior_loss"]
    for name, r in m["methods"].items():
        v = parse_p2rec_variant(name)
        assert r["teacher"] == v.teacher and r["init"] == (sft if v.sft else "llm-base")
        for key in ("valid_full_NDCG@10", "valid_candidates_NDCG@10", "plain_valid_full_NDCG@10"):
            assert 0 < r[key] <= 1, (name, key)
        for f in ("model.safetensors", "init.safetensors", "metrics.json", "per_user.parquet", "topk_valid.parquet",
                  "candidate_scores.parquet", "curves.csv", "manifest.json"):  # fmt: skip
            assert (smoke_run.p2rec / name / f).is_file(), f"{name}: {f} missing"
    seeds = [cfg.teachers.seed, *cfg.p2rec.seeds]
    assert [(r["method"], r["seed"]) for r in m["seed_study"]] == [(n, s) for n in cfg.p2rec.seed_study_variants() for s in seeds]
    first = m["seed_study"][0]  # the run's own seed: notebook 02's teacher and the method itself
    assert first["plain full"] == m["methods"][first["method"]]["plain_valid_full_NDCG@10"]
    assert m["minutes"] > 0
    for f in ("06_p2rec_sft.png", "06_p2rec_predictions.png", "06_p2rec_teacher_curves.png"):
        assert (smoke_run.figures / f).is_file(), f


def test_a_registered_method_appears_in_every_table_figure_and_diagnostic(smoke_run, tmp_path):
    """A toy method registered as a plugin (tests/toy_method.py), nothing else changed: notebooks 07 and
    08 show it in the results, full-catalogue and paired tables, the agreement, segment and order
    diagnostics and the curves page."""
    import shutil

    from .toy_method import TOY

    run = tmp_path / "run"
    shutil.copytree(smoke_run.root, run)
    config = tmp_path / "toy.toml"
    data_dir = json.loads((smoke_run.root / "config.json").read_text())["data_dir"]
    config.write_text(f'preset = "smoke"\ndata_dir = "{data_dir}"\nplugins = ["tests.toy_method:ToyFamily"]\n')
    run_series("smoke", run, config_file=config, only=["07", "08"], progress=False)
    paths = RunPaths(run)
    ev = read_metrics(paths, "07_evaluation")
    assert TOY in ev["methods"] and TOY in ev["catalogue"]["masked"] and TOY in ev["catalogue"]["unmasked"]
    assert (TOY, "popularity") in {(p["method"], p["versus"]) for p in ev["paired"]}
    assert TOY in (paths.eval / "results.md").read_text()
    an = read_metrics(paths, "08_analysis")
    assert TOY in an["methods"] and TOY in an["segments"]
    assert {r["method"] for r in an["order"] if r["method"] == TOY} == {TOY}
    toy_order = [r for r in an["order"] if r["method"] == TOY and r["metric"] == "NDCG@10"][0]
    assert toy_order["original"] != toy_order["shuffled"]  # it reads the latest item: shuffling moves it
    assert (TOY, "sasrec") in {(r["student"], r["teacher"]) for r in an["agreement"]}
    assert TOY in an["curves"]["toy training"]
    # the methods the smoke run had are unchanged: their cached evaluations were reused as they were
    before = read_metrics(smoke_run, "07_evaluation")["methods"]
    assert {m: ev["methods"][m] for m in before} == before
