"""The notebook series executed with papermill on the smoke preset, as `make smoke` does.

The series runs once per test session (it is the expensive part); each notebook's test reads
back the metrics that notebook recorded in its last cell.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable

import pandas as pd
import pytest

from delrec_lib.config import RunConfig, parse_p2rec_variant, preset_config
from delrec_lib.delrec.distill import HEURISTICS
from delrec_lib.delrec.finetune import seeded_names, variant_soft_prompt
from delrec_lib.p2rec.stage import states_name
from delrec_lib.runner import RunPaths, read_metrics, run_series, series_notebooks

# Only the tests that read the smoke run carry the mark: the checks' own tests below run without it.
series = pytest.mark.series


# -- what a run that learned must have recorded, whatever its numbers -----------------------------


def run_methods(cfg: RunConfig) -> set[str]:
    """Every method the run evaluates: what each table of notebook 07 must list, each once."""
    return {"popularity", "zero-shot", *cfg.teachers.models, *cfg.finetune.variants, *seeded_names(cfg),
            *cfg.llmsrec.variants, *cfg.p2rec.variants}  # fmt: skip


def full_catalogue_methods(cfg: RunConfig) -> set[str]:
    return {"popularity", *cfg.teachers.models, *cfg.llmsrec.variants, *cfg.p2rec.variants}


def eval_steps(max_steps: int, eval_every: int) -> list[int]:
    """Where a step-based stage evaluates: the untrained state, every ``eval_every`` steps, the last step."""
    return sorted({0, *range(eval_every, max_steps + 1, eval_every), max_steps})


def expected_curves(cfg: RunConfig) -> dict[str, tuple[list[str], str, list[int]]]:
    """{stage: (its curves' labels, x column, the x of every point)} of a run that trained to the end."""
    t = cfg.teachers
    assert t.patience >= t.max_epochs, "with early stopping possible the number of teacher epochs is not fixed"
    epochs = list(range(1, t.max_epochs + 1))  # one evaluation at the end of each epoch
    prompts = dict.fromkeys([*cfg.distill.prompts, *filter(None, map(variant_soft_prompt, cfg.finetune.variants))])
    p2 = [parse_p2rec_variant(v) for v in cfg.p2rec.variants]
    sfts = sorted({states_name(cfg, v) for v in p2 if v.sft})
    return {
        "02 teachers": (list(t.models), "epoch", epochs),
        "03 soft-prompt distillation": (list(prompts), "step", eval_steps(cfg.distill.max_steps, cfg.distill.eval_every)),
        "04 LLM fine-tuning": ([*cfg.finetune.variants, *seeded_names(cfg)], "step",
                               eval_steps(cfg.finetune.max_steps, cfg.finetune.eval_every)),
        "05 LLM-SRec": (list(cfg.llmsrec.variants), "step", eval_steps(cfg.llmsrec.max_steps, cfg.llmsrec.eval_every)),
        "06 P2Rec enhanced teachers": (list(cfg.p2rec.variants), "epoch", epochs),
        "06 P2Rec user-level SFT": (sfts, "step", eval_steps(cfg.p2rec.max_steps, cfg.p2rec.eval_every)),
    }  # fmt: skip


def recorded_curves(paths: RunPaths, cfg: RunConfig, data) -> dict[str, list[tuple[str, str, list]]]:
    """{stage: [(label, x column, x of every point)]}: the curves the run's families show in notebook 08."""
    from delrec_lib.analysis import collect_curves
    from delrec_lib.methods import MethodContext

    curves = collect_curves(MethodContext(cfg, paths, data))
    return {stage: [(c.label, c.x, c.frame[c.x].tolist()) for c in cs] for stage, cs in curves.items()}


def check_curves(curves: dict[str, list[tuple[str, str, list]]], expected: dict[str, tuple[list[str], str, list[int]]]) -> None:
    assert sorted(curves) == sorted(expected), f"stages with curves {sorted(curves)}, expected {sorted(expected)}"
    for stage, (labels, x, points) in expected.items():
        check_one_row_per_method([label for label, _, _ in curves[stage]], labels, f"curves of {stage}")
        for label, got_x, got in curves[stage]:
            assert (got_x, got) == (x, points), f"{stage} / {label}: points at {got_x} {got}, expected {x} {points}"


def check_one_row_per_method(rows: Iterable[str], expected: Iterable[str] | None, table: str) -> None:
    """Each method once, and (``expected`` given) exactly the expected methods."""
    counts = Counter(rows)
    twice = sorted(m for m, n in counts.items() if n > 1)
    assert not twice, f"{table}: {twice} more than once"
    if expected is not None:
        missing, extra = sorted(set(expected) - set(counts)), sorted(set(counts) - set(expected))
        assert not missing and not extra, f"{table}: missing {missing}, unexpected {extra}"


def markdown_rows(text: str) -> list[str]:
    """The first cell of every row of a Markdown table (below its header and rule lines)."""
    return [line.split("|")[1].strip() for line in text.strip().splitlines()[2:]]


def recorded_tables(paths: RunPaths) -> dict[str, list[str]]:
    """{table: the method (or method pair) of each row} of the tables notebooks 07 and 08 write."""
    ev = paths.eval
    tables = {
        "results.csv": pd.read_csv(ev / "results.csv", index_col=0).index.tolist(),
        "results.md": markdown_rows((ev / "results.md").read_text()),
        "generation_protocol.csv": pd.read_csv(ev / "generation_protocol.csv", index_col=0).index.tolist(),
    }
    for protocol in ("masked", "unmasked"):
        tables[f"catalogue_{protocol}.md"] = markdown_rows((ev / f"catalogue_{protocol}.md").read_text())
    for name in ("paired_tests.csv", "seed_summary.csv"):  # one row per comparison and metric (and Holm family)
        df = pd.read_csv(ev / name)
        keys = [c for c in ("method", "versus", "metric", "family") if c in df]
        tables[name] = [" / ".join(map(str, row)) for row in df[keys].itertuples(index=False)]
    order = read_metrics(paths, "08_analysis")["order"]
    for metric in sorted({r["metric"] for r in order}):
        tables[f"08 order diagnostic, {metric}"] = [r["method"] for r in order if r["metric"] == metric]
    return tables


def expected_tables(cfg: RunConfig) -> dict[str, set[str] | None]:
    """{table: its methods} (None: each row once, whichever they are)."""
    methods = run_methods(cfg)
    originals = methods - set(seeded_names(cfg))  # notebook 08 leaves out the seed study's copies
    return {
        "results.csv": methods,
        "results.md": methods | {"chance (expected)"},
        "generation_protocol.csv": {"zero-shot", *cfg.finetune.variants},
        "catalogue_masked.md": full_catalogue_methods(cfg),
        "catalogue_unmasked.md": full_catalogue_methods(cfg),
        "paired_tests.csv": None,
        "seed_summary.csv": None,
        **{f"08 order diagnostic, {m}": originals for m in ("HR@1", "NDCG@10")},
    }


def check_tables(tables: dict[str, list[str]], expected: dict[str, set[str] | None]) -> None:
    assert sorted(tables) == sorted(expected), f"tables {sorted(tables)}, expected {sorted(expected)}"
    for name, rows in tables.items():
        assert rows, f"{name}: no rows"
        check_one_row_per_method(rows, expected[name], name)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, real_data_dir) -> RunPaths:
    root = tmp_path_factory.mktemp("smoke-run")
    config = root / "smoke.toml"
    config.write_text(f'preset = "smoke"\ndata_dir = "{real_data_dir}"\n')
    run_series("smoke", root / "run", config_file=config, progress=False)
    return RunPaths(root / "run")


@series
def test_every_notebook_was_executed(smoke_run):
    executed = sorted(p.name for p in smoke_run.notebooks.glob("*.ipynb"))
    assert executed == [p.name for p in series_notebooks()]
    for name in executed:
        nb = json.loads((smoke_run.notebooks / name).read_text())
        errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{name}: {errors[:1]}"


@series
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


@series
def test_02_teacher_training_metrics(smoke_run):
    cfg = preset_config("smoke")
    m = read_metrics(smoke_run, "02_teacher_training")
    assert set(m["models"]) == {"sasrec", "gru4rec", "caser"}
    for name in ["popularity", *m["models"]]:
        assert m[name]["users"] == 943
    for name in m["models"]:
        assert m[name]["epochs"] == cfg.teachers.max_epochs
        exports = smoke_run.teachers / name
        for f in ("model.safetensors", "config.json", "metrics.json", "topk_valid.parquet", "topk_test.parquet",
                  "scores_valid.npz", "candidate_scores.parquet", "per_user.parquet", "curves.csv", "manifest.json"):  # fmt: skip
            assert (exports / f).is_file(), f"{name}: {f} missing"
    assert (smoke_run.figures / "02_teacher_curves.png").is_file()


@series
def test_03_delrec_stage1_distillation_metrics(smoke_run):
    cfg = preset_config("smoke")
    m = read_metrics(smoke_run, "03_delrec_stage1_distillation")
    d = cfg.distill
    assert sorted(m) == sorted([*d.prompts, "known_answer"])
    budgets = {name: (d.heldout_users, d.selection_users, d.max_steps) for name in d.prompts}
    # the known answer (a rule teacher's soft prompt) on its own budget
    budgets["known_answer"] = (d.known_answer_users, d.known_answer_users // 2, d.known_answer_steps)
    assert m["known_answer"]["prompt"] == d.known_answer
    for name, r in m.items():
        assert r["fidelity_chance"] == 1 / (d.rps_top_k + d.rps_random)
        # reported on the report set beside the heuristics; the step chosen on the selection set
        assert (r["heldout_users"], r["selection_users"], r["steps"]) == budgets[name]
        assert sorted(r["fidelity_baselines"]) == sorted(HEURISTICS["rps"])
        assert list(r["ta_baselines"]) == ["most popular candidate"]
        assert (smoke_run.distill / r.get("prompt", name) / "soft_prompt.safetensors").is_file()
    known = pd.read_csv(smoke_run.distill / d.known_answer / "history.csv")
    assert known["step"].tolist() == eval_steps(d.known_answer_steps, max(1, d.known_answer_steps // 4))
    assert known["soft_prompt_moved"].iloc[0] == 0.0 and known["soft_prompt_moved"].iloc[-1] > 0
    # the real teachers' prompts again on their report users' popularity-matched examples
    for name in d.prompts:
        matched = m[name]["matched"]
        assert matched["users"] == d.heldout_users and matched["fidelity_chance"] == 1 / (d.rps_top_k + d.rps_random)
        assert sorted(matched["fidelity_baselines"]) == sorted(HEURISTICS["rps"])
        assert (smoke_run.distill / "matched" / name / "manifest.json").is_file()
    for figure in ("03_distillation_curves.png", "03_known_answer_curves.png"):
        assert (smoke_run.figures / figure).is_file()


@series
def test_04_delrec_stage2_finetuning_metrics(smoke_run):
    cfg = preset_config("smoke")
    m = read_metrics(smoke_run, "04_delrec_stage2_finetuning")
    assert cfg.finetune.seeds and sorted(m) == sorted([*cfg.finetune.variants, *seeded_names(cfg)])
    for variant, r in m.items():
        assert r["steps"] == cfg.finetune.max_steps
        assert (smoke_run.finetune / variant / "adapter" / "adapter_config.json").is_file()
        # the same validation examples ranked without an LLM, beside the curve
        assert {"popularity", "chance", *cfg.teachers.models} == set(r["valid_baselines"])
        assert r["valid_baselines"]["chance"] == pytest.approx(sum(1 / math.log2(k + 1) for k in range(1, 6)) / 20)  # NDCG@5
    assert {r["train_seed"] for r in m.values()} == {cfg.finetune.seed, *cfg.finetune.seeds}
    assert (smoke_run.figures / "04_finetuning_curves.png").is_file()


@series
def test_07_evaluation_metrics(smoke_run):
    cfg = preset_config("smoke")
    m = read_metrics(smoke_run, "07_evaluation")
    assert set(m["methods"]) == run_methods(cfg)
    assert m["users"] == cfg.max_users
    for method, r in m["methods"].items():
        assert r["HR@1"] <= r["HR@5"] <= r["HR@10"], method
        assert r["NDCG@5"] <= r["NDCG@10"] <= r["HR@10"] + 1e-9, method
    assert {(p["method"], p["versus"]) for p in m["paired"]} >= {("delrec-sasrec", "sasrec"), ("delrec-sasrec", "lora")}
    assert set(m["generation"]) == {"zero-shot", *cfg.finetune.variants}  # not the seeds' copies
    # the seed study: DELRec against LoRA, the run's seed and every extra seed
    study = [r for r in m["seed_study"] if (r["method"], r["versus"]) == ("delrec-sasrec", "lora")]
    assert {r["metric"] for r in study} == set(cfg.eval.paired_metrics)
    assert all(r["seeds"] == 1 + len(cfg.finetune.seeds) for r in study)
    assert ("p2rec-sasrec", "sasrec") in {(p["method"], p["versus"]) for p in m["paired"]}
    for protocol in ("masked", "unmasked"):  # full-catalogue methods: popularity, the teachers, LLM-SRec, P2Rec's teachers
        assert set(m["catalogue"][protocol]) == full_catalogue_methods(cfg)
    assert m["chance"]["HR@1"] == 1 / 20


@series
def test_08_analysis_metrics(smoke_run):
    m = read_metrics(smoke_run, "08_analysis")
    assert {"08_metrics.png", "08_training_curves.png", "08_agreement.png", "08_segments.png",
            "08_order_diagnostic.png"} <= set(m["figures"])  # fmt: skip
    popularity = [r for r in m["order"] if r["method"] == "popularity"]
    assert popularity and all(r["drop"] == 0.0 and r["original"] == r["shuffled"] for r in popularity)
    assert "Best method" in m["reading"]


@series
def test_05_llm_srec_metrics(smoke_run):
    cfg = preset_config("smoke").llmsrec
    m = read_metrics(smoke_run, "05_llm_srec")
    assert m["variants"] == list(cfg.variants) and set(m["methods"]) == set(cfg.variants)
    checksums = set()
    for name, r in m["methods"].items():
        assert r["steps"] == cfg.max_steps and r["train_examples"] == cfg.max_train_users
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


@series
def test_06_p2rec_metrics(smoke_run):
    cfg = preset_config("smoke")
    m = read_metrics(smoke_run, "06_p2rec")
    assert m["variants"] == list(cfg.p2rec.variants)
    assert set(m["methods"]) == set(cfg.p2rec.variants)
    sft = f"sft-{cfg.p2rec.source_teacher}-k{cfg.p2rec.num_categories}"
    assert m["sft"][sft]["steps"] == cfg.p2rec.max_steps and m["sft"][sft]["k"] == cfg.p2rec.num_categories
    for name, r in m["methods"].items():
        v = parse_p2rec_variant(name)
        assert r["teacher"] == v.teacher and r["init"] == (sft if v.sft else "llm-base")
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


@series
def test_every_stage_records_each_curve_point(smoke_run, real_data):
    """Each stage's curves, as notebook 08 collects them: one per method (or soft prompt, SFT), each with a
    point at every evaluation the stage's settings call for (a stage that stops early or never evaluates
    fails here, whatever its numbers)."""
    cfg = preset_config("smoke")
    check_curves(recorded_curves(smoke_run, cfg, real_data), expected_curves(cfg))


@series
def test_every_table_lists_each_method_once(smoke_run):
    cfg = preset_config("smoke")
    check_tables(recorded_tables(smoke_run), expected_tables(cfg))
    assert markdown_rows((smoke_run.eval / "results.md").read_text())[-1] == "chance (expected)"
    assert run_methods(cfg) - set(seeded_names(cfg)) == set(read_metrics(smoke_run, "08_analysis")["methods"])


# -- the checks above fail on what they guard against (no series run) -------------------------------


def good_curves(expected: dict[str, tuple[list[str], str, list[int]]]) -> dict[str, list[tuple[str, str, list]]]:
    return {stage: [(label, x, list(points)) for label in labels] for stage, (labels, x, points) in expected.items()}


def test_eval_steps_of_the_smoke_preset():
    cfg = preset_config("smoke")
    assert eval_steps(4, 2) == [0, 2, 4] and eval_steps(5, 2) == [0, 2, 4, 5]
    expected = expected_curves(cfg)
    assert expected["03 soft-prompt distillation"][2] == [0, 2, 4]
    assert len(expected["03 soft-prompt distillation"][2]) == cfg.distill.max_steps // cfg.distill.eval_every + 1


def drop_last_point(c):
    return {**c, "04 LLM fine-tuning": [(lb, x, p[:-1]) for lb, x, p in c["04 LLM fine-tuning"]]}


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (drop_last_point, r"04 LLM fine-tuning / lora: points at step \[0, 2\]"),
        (lambda c: {**c, "02 teachers": c["02 teachers"][1:]}, r"curves of 02 teachers: missing \['sasrec'\]"),
        (lambda c: {**c, "05 LLM-SRec": c["05 LLM-SRec"] * 2}, r"curves of 05 LLM-SRec: \['llm-srec'\] more than once"),
        (lambda c: {k: v for k, v in c.items() if k != "06 P2Rec user-level SFT"}, "stages with curves"),
        (lambda c: {**c, "02 teachers": [(lb, "step", p) for lb, _, p in c["02 teachers"]]}, "points at step"),
    ],
)
def test_curve_check_fails_on_a_missing_point_or_curve(fault, message):
    expected = expected_curves(preset_config("smoke"))
    check_curves(good_curves(expected), expected)
    with pytest.raises(AssertionError, match=message):
        check_curves(fault(good_curves(expected)), expected)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (lambda t: {**t, "results.csv": [*t["results.csv"], "lora"]}, r"results\.csv: \['lora'\] more than once"),
        (lambda t: {**t, "results.md": [m for m in t["results.md"] if m != "zero-shot"]}, r"results\.md: missing \['zero-shot'\]"),
        (lambda t: {**t, "catalogue_masked.md": [*t["catalogue_masked.md"], "lora"]}, r"unexpected \['lora'\]"),
        (lambda t: {**t, "paired_tests.csv": t["paired_tests.csv"] * 2}, r"paired_tests\.csv: .* more than once"),
        (lambda t: {**t, "generation_protocol.csv": []}, r"generation_protocol\.csv: no rows"),
        (lambda t: {k: v for k, v in t.items() if k != "catalogue_unmasked.md"}, "tables"),
    ],
)
def test_table_check_fails_on_a_duplicated_or_missing_method(fault, message):
    expected = expected_tables(preset_config("smoke"))
    pairs = ["delrec-sasrec / lora / NDCG@10 / main", "delrec-sasrec / sasrec / NDCG@10 / main"]
    good = {name: sorted(methods) if methods is not None else list(pairs) for name, methods in expected.items()}
    check_tables(good, expected)
    with pytest.raises(AssertionError, match=message):
        check_tables(fault(good), expected)


@series
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
