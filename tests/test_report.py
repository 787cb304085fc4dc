"""The results page written from a run folder: its tables, times and versions, cross-run paired tests
that refuse other users or candidate sets, the comparison with a reference, the README's headline
block, and the executed notebooks rendered to Markdown."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from delrec_lib import __main__ as cli
from delrec_lib import report, runner
from delrec_lib.analysis import order_diagnostic, reading, shuffled_results
from delrec_lib.artifacts import (
    RunPaths,
    atomic_dir,
    atomic_write_json,
    build_manifest,
    sha256_file,
    write_manifest,
)
from delrec_lib.config import (
    DataConfig,
    DistillConfig,
    EvalConfig,
    FinetuneConfig,
    LLMConfig,
    LLMSRecConfig,
    P2RecConfig,
    RunConfig,
    TeachersConfig,
    config_to_dict,
)
from delrec_lib.data import load_processed
from delrec_lib.delrec.distill import run_distillation, stage1_matched
from delrec_lib.delrec.finetune import run_finetuning
from delrec_lib.errors import DataError, StaleArtifactError
from delrec_lib.evaluation import (
    EVAL_KIND,
    MethodResult,
    catalogue_table,
    chance_table,
    evaluate_method,
    format_table,
    generation_table,
    matched_table,
    method_context,
    paired_comparisons,
    per_user_frame,
    results_table,
    write_tables,
)
from delrec_lib.llm import load_backbone
from delrec_lib.metrics import METRICS, holm_adjust, paired_test
from delrec_lib.report import (
    ComparisonError,
    compare_runs,
    page_headline,
    readme_block,
    update_readme,
    write_report,
)
from delrec_lib.teachers.stage import export_popularity, export_rule

from .llm_fixtures import save_tiny_causal
from .stage_fixtures import synthetic_data
from .toy_method import TOY

REPO = Path(__file__).resolve().parents[1]
# a 1x1 PNG: what a figure is to the page and the rendered notebooks
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
MACHINE = {"cpu": "Test CPU 9000", "cores": 2, "usable_cores": 2, "gpus": [], "llm_dtype": "float32",
           "platform": "Linux", "versions": {"python": "3.11.7", "torch": "2.0"}}  # fmt: skip


def executed_notebook(path: Path) -> None:
    """A small executed notebook: text output, a pandas table (with its <style>) and a figure."""
    frame = pd.DataFrame({"HR@1": [0.25, 0.5]}, index=["popularity", TOY])
    nb = new_notebook(cells=[
        new_markdown_cell("# Evaluation\nEvery method on the same candidates."),
        new_code_cell("print('users: 40')", execution_count=1, outputs=[new_output("stream", name="stdout", text="users: 40\n")]),
        new_code_cell("table", execution_count=2, outputs=[new_output(
            "execute_result", execution_count=2, data={"text/html": frame._repr_html_(), "text/plain": repr(frame)})]),
        new_code_cell("plot()", execution_count=3, outputs=[new_output(
            "display_data", data={"image/png": base64.b64encode(PNG).decode(), "text/plain": "<Figure>"})]),
    ])  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def execution(notebook: str, seconds: float, skipped: bool, started: str = "2026-01-05T10:00:00+00:00") -> dict:
    return {"notebook": notebook, "started_at": started, "rerun": False, "seconds": seconds, "outcome": "done",
            "skipped_finished_work": skipped, "written": [] if skipped else [f"eval/{notebook}"], "machine": MACHINE}  # fmt: skip


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A run folder as notebooks 07 and 08 leave it, for two methods (popularity and the toy plugin) on
    the synthetic data, with its config, timings, metrics, reading, a figure and an executed notebook."""
    root = tmp_path_factory.mktemp("report")
    data = synthetic_data(root / "data")
    config = RunConfig(preset="smoke", data_dir=str(root / "data"), plugins=("tests.toy_method:ToyFamily",),
                       data=DataConfig(dataset="toy", num_negatives=5), eval=EvalConfig(bootstrap=100))  # fmt: skip
    paths = RunPaths(root / "smoke")
    atomic_write_json(paths.config_file, config_to_dict(config))
    export_popularity(data, paths.teachers)
    ctx = method_context(config, paths, data)
    results = {m: evaluate_method(ctx, m, progress=False) for m in ("popularity", TOY)}
    table = results_table(results, n_boot=100, seed=config.eval.seed)
    paired = paired_comparisons(results, [(TOY, "popularity")], ("HR@1", "NDCG@10"), replicas={}, seed=config.eval.seed)
    catalogue = {p: catalogue_table(results, p, n_boot=100) for p in ("masked", "unmasked")}
    write_tables(paths, table, paired, generation_table(results), catalogue, chance_table(6),
                 matched=matched_table(results, n_boot=100))
    users = ctx.users()
    order = order_diagnostic(results, {m: shuffled_results(ctx, m, users) for m in results})
    text = reading(table, paired, None, order)
    (paths.eval / "reading.md").write_text(text + "\n")
    runner.record_metrics(paths, "08_analysis", {"order": order.to_dict(orient="records"), "agreement": [], "reading": text})
    paths.figure("08_metrics.png").write_bytes(PNG)
    executed_notebook(paths.notebooks / "07_evaluation.ipynb")
    # 07 ran twice: the second found its work done; the page shows the first, which computed the results.
    # 03 ran twice, each writing artifacts: the second recomputed one of the first's two, whose other still counts.
    first03 = execution("03_delrec_stage1_distillation", 1200.0, False) | {"written": ["distill/sasrec", "distill/rule"]}
    second03 = execution("03_delrec_stage1_distillation", 300.0, False, "2026-01-06T10:00:00+00:00") | {"written": ["distill/rule"]}
    atomic_write_json(paths.root / "timings.json", {"executions": [
        execution("01_data_prep", 6.2, False), first03, execution("07_evaluation", 1555.0, False),
        execution("07_evaluation", 3.0, True, "2026-01-06T10:00:00+00:00"), second03]})  # fmt: skip
    return paths.root


def test_the_page_shows_every_method_with_intervals_times_machine_and_versions(run_folder):
    page = write_report(run_folder, notebooks=False)
    assert page == run_folder / "report" / "smoke.md"
    text = page.read_text()
    table = report.read_results(run_folder)
    assert list(table.index) == ["popularity", TOY]
    shown = format_table(table)
    for method in table.index:
        row = "| " + " | ".join([method, *shown.loc[method, list(METRICS)]]) + " |"
        assert row in text, f"{method}'s row with every metric and its interval"
        assert re.search(rf"\| {re.escape(method)} \| \d\.\d{{4}} \[\d\.\d{{4}}, \d\.\d{{4}}\] \|", text)
    assert "| chance (expected) | 0.1667 |" in text
    # times: the execution that computed 07's results, not the later one that found them done
    assert "| 07_evaluation | 25 min 55 s | - | 2026-01-05T10:00:00+00:00 | 2 |" in text
    assert "| 01_data_prep | 6 s |" in text
    assert ("| 03_delrec_stage1_distillation | 5 min 00 s | - | 2026-01-06T10:00:00+00:00 | 2 | also an earlier execution "
            "(2026-01-05T10:00:00+00:00, 20 min 00 s) whose distill/sasrec the results still hold |") in text
    assert f"those executions took {report._duration(6.2 + 1200 + 300 + 1555)}." in text  # the 3-second one computed nothing
    assert "Test CPU 9000, 2 cores (2 usable), no GPU; the LLM computed in float32" in text
    assert re.search(r"Kit: version \S+ at commit [0-9a-f]{12}.* \(\d+ artifacts\)", text), "the kit's version and commit"
    assert "python 3.11.7, torch 2.0" in text
    # the paired test, the order diagnostic and the reading, as the run wrote them
    paired = pd.read_csv(run_folder / "eval" / "paired_tests.csv")
    for r in paired.itertuples():
        assert f"| {r.method} | {r.versus} | {r.metric} | {r.mean_diff:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}] | {r.p_value:.3g} | {r.p_holm:.3g} |" in text
    assert (run_folder / "eval" / "reading.md").read_text().strip() in text
    assert "## Order diagnostic" in text and "## Full catalogue (history masked)" in text
    matched = pd.read_csv(run_folder / "eval" / "results_matched.csv", index_col=0)
    assert "## Popularity-matched candidates" in text and list(matched.index) == ["popularity", TOY]
    assert f"| popularity | {matched.loc['popularity', 'HR@1 mean']:.4f} [" in text
    (link,) = re.findall(r"!\[08_metrics\]\((.+?)\)", text)
    assert (page.parent / link).resolve() == (run_folder / "figures" / "08_metrics.png").resolve()
    summary = json.loads(page.with_suffix(".json").read_text())
    assert summary["users"] == 40 and summary["machines"] == [MACHINE] and set(summary["table"]) == {"popularity", TOY}


def test_a_page_outside_the_run_folder_takes_its_figures_along(run_folder, tmp_path):
    page = write_report(run_folder, tmp_path / "docs" / "results" / "smoke.md", notebooks=False)
    (link,) = re.findall(r"!\[08_metrics\]\((.+?)\)", page.read_text())
    assert link == "smoke_figures/08_metrics.png" and (page.parent / link).read_bytes() == PNG


def test_executed_notebooks_are_rendered_with_their_figures(run_folder, tmp_path):
    pages = report.render_notebooks(run_folder, tmp_path / "nb")
    assert [p.name for p in pages] == ["07_evaluation.md"]
    body = pages[0].read_text()
    assert "# Evaluation" in body and "users: 40" in body and "<table" in body
    assert "<style" not in body and "vertical-align" not in body, "pandas' CSS would show as text"
    (image,) = re.findall(r"!\[png\]\((.+?)\)", body)
    assert (pages[0].parent / image).read_bytes() == PNG
    assert 0 < report.folder_size(tmp_path / "nb") < 20_000
    # the page links them from the default place, with their size
    page = write_report(run_folder)
    text = page.read_text()
    assert "- [07_evaluation](notebooks/07_evaluation.md)" in text and "kB in all" in text
    assert (page.parent / "notebooks" / "07_evaluation.md").is_file()


# --------------------------------------------------------------------------------------------
# Two runs compared user by user
# --------------------------------------------------------------------------------------------


def hand_run(root: Path, methods: dict[str, MethodResult], data_id: str = "data-1") -> Path:
    """A run folder holding only what notebook 07 writes: per-user results with manifests and tables."""
    paths = RunPaths(root)
    for name, result in methods.items():
        with atomic_dir(paths.eval / name) as tmp:
            result.per_user.to_parquet(tmp / "per_user.parquet", index=False)
            write_manifest(tmp, build_manifest(EVAL_KIND, tmp, inputs={"data": data_id}, extra={"method": name}))
    write_tables(paths, results_table(methods, n_boot=100), pd.DataFrame(), pd.DataFrame())
    return root


def toy_method(name: str, users: list[int], skill: float, seed: int, positions=None) -> MethodResult:
    rng = np.random.default_rng(seed)
    scores = rng.random((len(users), 20))
    target = np.asarray(positions if positions is not None else np.arange(len(users)) % 20)
    right = rng.random(len(users)) < skill
    scores[right, target[right]] = 2.0
    return MethodResult(name, "llm", per_user_frame(users, scores, target))


@pytest.fixture
def two_runs(tmp_path):
    users = list(range(1, 61))
    a = hand_run(tmp_path / "a", {"lora": toy_method("lora", users, 0.5, 1), "delrec": toy_method("delrec", users, 0.3, 2)})
    # run b wrote its users in another order: compared by user_id, never by row
    b_methods = {m: toy_method(m, users, s, k) for m, s, k in (("lora", 0.3, 3), ("delrec", 0.35, 4), ("extra", 0.1, 5))}
    for r in b_methods.values():
        r.per_user = r.per_user.iloc[::-1].reset_index(drop=True)
    b = hand_run(tmp_path / "b", b_methods)
    return a, b, users


def test_compare_runs_gives_the_paired_tests_of_the_same_users_holm_adjusted(two_runs):
    a, b, _ = two_runs
    out = compare_runs(a, b, seed=3)
    assert out[["method", "versus", "metric"]].values.tolist() == [
        ["lora", "lora", "HR@1"], ["lora", "lora", "NDCG@10"], ["delrec", "delrec", "HR@1"], ["delrec", "delrec", "NDCG@10"]]
    for r in out.itertuples():
        fa = pd.read_parquet(a / "eval" / r.method / "per_user.parquet").set_index("user_id").sort_index()
        fb = pd.read_parquet(b / "eval" / r.versus / "per_user.parquet").set_index("user_id").loc[fa.index]
        expected = paired_test(fa[r.metric].to_numpy(), fb[r.metric].to_numpy(), seed=3)
        assert (r.mean_diff, r.ci_low, r.ci_high, r.p_value, r.users) == pytest.approx(
            (expected["mean_diff"], expected["ci_low"], expected["ci_high"], expected["p_value"], 60))
        assert r.mean_a == pytest.approx(fa[r.metric].mean()) and r.mean_b == pytest.approx(fb[r.metric].mean())
    assert out["p_holm"].to_numpy() == pytest.approx(holm_adjust(out["p_value"].to_numpy()))
    assert (out["family_size"] == 4).all()
    pairs = compare_runs(a, b, [("delrec", "extra")])
    assert pairs[["method", "versus"]].drop_duplicates().values.tolist() == [["delrec", "extra"]]


def test_compare_runs_refuses_other_users_or_candidate_sets(two_runs, tmp_path):
    a, _, users = two_runs
    fewer = hand_run(tmp_path / "fewer", {"lora": toy_method("lora", users[:-3] + [90, 91, 92], 0.5, 1)})
    with pytest.raises(ComparisonError, match=rf"{a} \(lora\) and {fewer} \(lora\) were evaluated on other test users: "
                                              r"60 and 60 users, 3 only in the first \(e.g. \[58, 59, 60\]\), 3 only in the second"):
        compare_runs(a, fewer)
    other_data = hand_run(tmp_path / "other-data", {"lora": toy_method("lora", users, 0.5, 1)}, data_id="data-2")
    with pytest.raises(ComparisonError, match=rf"{a} and {other_data} were evaluated on other candidate sets: processed "
                                              r"data data-1 against data-2"):
        compare_runs(a, other_data)
    moved = hand_run(tmp_path / "moved", {"lora": toy_method("lora", users, 0.5, 1, positions=np.zeros(60, int))})
    with pytest.raises(ComparisonError, match=r"ranked other candidate sets: the test target sits at another position for 57 users"):
        compare_runs(a, moved)


def test_the_page_compares_with_another_run_and_with_a_reference(run_folder, tmp_path):
    # the reference: the same run's summary with one metric moved outside both intervals
    reference = report.run_summary(run_folder)
    reference.update(run="ref", run_dir="docs/results/ref", machines=[{**MACHINE, "cpu": "Other CPU", "llm_dtype": "bfloat16"}])
    stats = reference["table"][TOY]["NDCG@10"]
    width = stats["ci_high"] - stats["ci_low"]
    reference["table"][TOY]["NDCG@10"] = {k: v + 2 * width for k, v in stats.items()}
    (tmp_path / "ref.json").write_text(json.dumps(reference))
    page = write_report(run_folder, tmp_path / "page.md", compare=[run_folder], reference=tmp_path / "ref.md", notebooks=False)
    text = page.read_text()
    assert "## Compared with run `smoke`" in text and "are one Holm family" in text
    mean = report.read_results(run_folder).loc[TOY, ("NDCG@10", "mean")]
    assert "| method | metric | this run | run `smoke` | difference [interval] | p | p (Holm) |" in text
    assert f"| {TOY} | NDCG@10 | {mean:.4f} | {mean:.4f} | +0.0000 [+0.0000, +0.0000] | 1 | 1 |" in text
    assert "Other CPU, 2 cores (2 usable), no GPU; the LLM computed in bfloat16" in text
    assert "Test CPU 9000, 2 cores (2 usable), no GPU; the LLM computed in float32" in text
    assert "each run's mean lies inside the other run's 95% interval. 11 of 12 agree." in text
    assert re.search(rf"\| {re.escape(TOY)} \| NDCG@10 \| .* \| [+-]\d\.\d{{4}} \| NO \|", text)
    assert re.search(rf"\| {re.escape(TOY)} \| HR@1 \| .* \| \+0\.0000 \| yes \|", text)
    assert "Same test users: yes; same processed data (candidate sets): yes." in text
    with pytest.raises(report.DataError, match=r"ref.json: not a run folder .*compared metric by metric with --reference"):
        write_report(run_folder, tmp_path / "page.md", compare=[tmp_path / "ref.json"], notebooks=False)


# --------------------------------------------------------------------------------------------
# The README's headline table
# --------------------------------------------------------------------------------------------


def check_readme_matches(readme: Path, page: Path) -> None:
    """The README's block for the page's run is the page's headline block, character for character."""
    run, block = page_headline(page.read_text(), str(page))
    shown = readme_block(readme.read_text(), run, str(readme))
    assert shown == block, f"{readme}: the results block of run {run} differs from {page}'s headline:\n{shown}\n---\n{block}"


@pytest.fixture
def readme(tmp_path, run_folder) -> tuple[Path, Path]:
    page = write_report(run_folder, notebooks=False)
    f = tmp_path / "README.md"
    f.write_text("# Kit\n\nBefore.\n\n<!-- results:smoke:start -->\nold table\n<!-- results:smoke:end -->\n\nAfter.\n")
    update_readme(f, page)
    return f, page


def test_the_readme_block_is_the_pages_headline(readme):
    f, page = readme
    check_readme_matches(f, page)
    text = f.read_text()
    assert text.startswith("# Kit\n\nBefore.\n\n<!-- results:smoke:start -->\nRun `smoke`") and text.endswith("<!-- results:smoke:end -->\n\nAfter.\n")
    assert "old table" not in text
    for method in ("popularity", TOY, "chance (expected)"):
        assert re.search(rf"^\| {re.escape(method)} \| [^|]+ \| [^|]+ \|$", text, re.M), f"{method}: HR@1 and NDCG@10"
    update_readme(f, page)
    assert f.read_text() == text, "regenerating changes nothing"


def test_the_readme_check_fails_when_one_number_differs(readme):
    """Companion: the planted fault is one number of the README's table edited by hand."""
    f, page = readme
    text = f.read_text()
    number = re.search(r"\| popularity \| (\d\.\d{4})", text).group(1)
    f.write_text(text.replace(f"| popularity | {number}", f"| popularity | {float(number) + 0.0001:.4f}", 1))
    with pytest.raises(AssertionError, match="differs from"):
        check_readme_matches(f, page)


def test_update_readme_refuses_a_readme_without_markers_for_the_run(readme, tmp_path):
    _, page = readme
    bare = tmp_path / "bare.md"
    bare.write_text("# Kit\n")
    with pytest.raises(report.DataError, match=r"expected one '<!-- results:smoke:start -->'.*found 0"):
        update_readme(bare, page)
    assert bare.read_text() == "# Kit\n"


def test_the_kits_readme_agrees_with_its_results_pages():
    runs = report.readme_runs(REPO / "README.md")
    if not runs:
        pytest.skip("README.md has no results block yet")
    for run in runs:
        page = REPO / "docs" / "results" / f"{run}.md"
        if not page.exists():
            # Not generated yet: the block may hold a note, never a table typed by hand.
            block = readme_block((REPO / "README.md").read_text(), run)
            assert "|" not in block, f"README.md: run {run}'s results block holds a table, but {page} does not exist"
            pytest.skip(f"{page} not generated yet")
        check_readme_matches(REPO / "README.md", page)


# --------------------------------------------------------------------------------------------
# The command, and the machine the runner records
# --------------------------------------------------------------------------------------------


def test_the_report_command_reads_a_locked_run_and_fills_the_readme(readme, run_folder, capsys):
    f, _ = readme
    f.write_text(f.read_text().replace("| popularity |", "| popularity (stale) |"))
    with runner.run_folder_lock(run_folder):  # a run in progress: the report only reads its folder
        code = cli.main(["report", "--run-dir", str(run_folder), "--no-notebooks", "--readme", str(f)])
    assert code == 0, capsys.readouterr().err
    check_readme_matches(f, run_folder / "report" / "smoke.md")
    assert cli.main(["report", "--run-dir", str(run_folder / "nope")]) == 2
    assert "config.json: not found; not a run folder" in capsys.readouterr().err


def test_the_runner_records_the_machine_with_each_execution(tmp_path, monkeypatch):
    import papermill

    from delrec_lib.config import load_config

    from .test_reruns import FakeSeries

    series = FakeSeries(tmp_path)
    monkeypatch.setattr(papermill, "execute_notebook", series)
    series.run(only=["01", "02"])
    runs = json.loads((series.paths.root / "timings.json").read_text())["executions"]
    machine = runner.probe_machine(load_config("smoke").llm.dtype)  # here, in this process
    assert [r["machine"] for r in runs] == [machine, machine]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["versions"]["torch"]
    assert runner.probe_machine("bfloat16")["llm_dtype"] == "bfloat16"


# --------------------------------------------------------------------------------------------
# The stages' own numbers (notebooks 02-06)
# --------------------------------------------------------------------------------------------

RULE = "rule-sharedword"
PROMPTS = (RULE, f"{RULE}-rps")
VARIANTS = ("lora", f"delrec-{RULE}")


def staged_config(base: dict) -> RunConfig:
    """The run folder's config with stage 1 and 2 on a rule teacher (the only teacher whose export needs no training)."""
    return RunConfig(
        preset="smoke", data_dir=base["data_dir"], plugins=tuple(base["plugins"]),
        data=DataConfig(dataset="toy", num_negatives=5), eval=EvalConfig(bootstrap=100),
        teachers=TeachersConfig(models=(), rules=(RULE,), rule_window=4), llm=LLMConfig(history_len=4, title_style="with_year"),
        distill=DistillConfig(prompts=PROMPTS, heldout_users=10, selection_users=6, max_steps=4, batch_size=4, grad_accum=1,
                              lr=0.1, eval_every=2, num_soft_tokens=4, warmup_steps=0, ta_candidates=6, rps_top_k=3, rps_random=3),
        finetune=FinetuneConfig(variants=VARIANTS, max_train_users=24, valid_users=8, max_steps=4, batch_size=4, grad_accum=1,
                                lr=5e-3, eval_every=2, warmup_steps=0, num_negatives=5, lora_r=4, lora_layers=None,
                                positions_per_user=1),
        llmsrec=LLMSRecConfig(variants=()), p2rec=P2RecConfig(variants=()),
    )  # fmt: skip


@pytest.fixture(scope="module")
def staged_run(run_folder, tmp_path_factory) -> Path:
    """The run folder with the teachers, stage 1 and stage 2 written by the stages themselves (a tiny random LLM)."""
    root = tmp_path_factory.mktemp("staged")
    shutil.copytree(run_folder, root / "smoke")
    paths = RunPaths(root / "smoke")
    config = staged_config(json.loads(paths.config_file.read_text()))
    atomic_write_json(paths.config_file, config_to_dict(config))
    data = load_processed(config.data_dir, "toy")
    export_rule(RULE, config.teachers, data, paths.teachers)
    backbone = load_backbone(str(save_tiny_causal(root / "tiny")), dtype="float32")
    for name in PROMPTS:
        run_distillation(config, paths, data, backbone, name, progress=False)
    stage1_matched(config, paths, data, backbone, RULE)  # the first prompt only: the page leaves the other's cells blank
    for name in VARIANTS:
        run_finetuning(config, paths, data, backbone, name, progress=False)
    return paths.root


def ci(stats: dict) -> str:
    return f"{stats['mean']:.4f} [{stats['ci_low']:.4f}, {stats['ci_high']:.4f}]"


def row(label: str, cells) -> str:
    return "| " + " | ".join([label, *cells]) + " |"


def curve_cell(history: pd.DataFrame, x: str, y: str, best_step: int) -> str:
    return ", ".join(f"{int(r[x])}: {r[y]:.3f}" + ("*" if r["step"] == best_step else "") for _, r in history.iterrows())


def check_stage_rows(text: str, run: Path) -> None:
    """Stage 1 and 2's rows on the page are the report set's and the validation examples' numbers, every
    heuristic each stage recorded beside them, and the curves' points."""
    m = {p: json.loads((run / "distill" / p / "metrics.json").read_text()) for p in PROMPTS}
    assert row("RPS fidelity, untrained prompt", [ci(m[p]["fidelity_before"]) for p in PROMPTS]) in text
    assert row("RPS fidelity, trained (selected step)", [ci(m[p]["fidelity_after"]) for p in PROMPTS]) in text
    assert row("TA accuracy, trained (selected step)", [ci(m[p]["ta_accuracy_after"]) if m[p]["ta_accuracy_after"] else "not measured"
                                                        for p in PROMPTS]) in text  # fmt: skip
    for key, task in (("fidelity_baselines", "RPS"), ("ta_baselines", "TA")):
        assert list(m[PROMPTS[0]][key]), "the stage records its heuristics"
        for h in m[PROMPTS[0]][key]:
            assert row(f"{task}: {h}", [ci(m[p][key][h]) for p in PROMPTS]) in text, f"{task} heuristic '{h}'"
    assert row("RPS: chance", [f"{m[p]['fidelity_chance']:.4f}" for p in PROMPTS]) in text
    assert row("TA: chance", [f"{m[p]['ta_chance']:.4f}" for p in PROMPTS]) in text
    assert row("report users", [str(m[p]["heldout_users"]) for p in PROMPTS]) in text
    curves = [curve_cell(pd.read_csv(run / "distill" / p / "history.csv"), "users_seen", "fidelity", m[p]["best_step"]) for p in PROMPTS]
    assert row("selection fidelity by users seen (* selected)", curves) in text
    assert row("steps (selected step)", [f"{m[p]['steps']} ({m[p]['best_step']})" for p in PROMPTS]) in text

    f = {v: json.loads((run / "finetune" / v / "metrics.json").read_text()) for v in VARIANTS}
    metric = json.loads((run / "config.json").read_text())["finetune"]["select_metric"]
    assert row(f"valid {metric}, before training", [ci(f[v]["valid_before"][metric]) for v in VARIANTS]) in text
    assert row(f"valid {metric}, selected step", [f"{f[v]['valid_best'][metric]:.4f}" for v in VARIANTS]) in text
    assert set(f[VARIANTS[0]]["valid_baselines"]) == {"popularity", "chance"}
    for b in f[VARIANTS[0]]["valid_baselines"]:
        assert row(f"{b} (same examples)", [f"{f[v]['valid_baselines'][b][metric]:.4f}" for v in VARIANTS]) in text, f"stage-2 baseline {b}"
    curves = [curve_cell(pd.read_csv(run / "finetune" / v / "history.csv"), "examples_seen", metric, f[v]["best_step"]) for v in VARIANTS]
    assert row(f"valid {metric} by examples seen (* selected)", curves) in text


def test_the_page_shows_each_stages_numbers_beside_the_heuristics(staged_run):
    m = json.loads((staged_run / "distill" / RULE / "metrics.json").read_text())
    # the selection set's numbers differ from the report set's: a number taken from the wrong set shows
    assert m["selection"]["fidelity_baselines"] != m["fidelity_baselines"]
    assert m["selection"]["ta_baselines"] != m["ta_baselines"]
    text = write_report(staged_run, notebooks=False).read_text()
    assert "## Stages" in text and "### Stage 1: soft-prompt distillation (notebook 03)" in text
    check_stage_rows(text, staged_run)
    assert row("teacher (tasks trained)", [f"{RULE} (TA + RPS)", f"{RULE} (RPS)"]) in text
    listed = [f"{ci(m2['picks_listed_before'])} -> {ci(m2['picks_listed_after'])}; {m2['picks_listed_chance']:.4f}"
              for m2 in (json.loads((staged_run / "distill" / p / "metrics.json").read_text()) for p in PROMPTS)]
    assert row("RPS: LLM's first choice is a title the prompt lists (untrained -> trained; chance)", listed) in text
    matched = json.loads((staged_run / "distill" / "matched" / RULE / "metrics.json").read_text())
    assert row("popularity-matched RPS fidelity, trained", [ci(matched["fidelity_after"]), ""]) in text
    for h, v in matched["fidelity_baselines"].items():
        assert row(f"popularity-matched RPS: {h}", [ci(v), ""]) in text
    # the teachers' validation metrics beside popularity and chance, with their intervals
    for name in ("popularity", RULE):
        valid = json.loads((staged_run / "teachers" / name / "metrics.json").read_text())["valid"]
        assert row(name, [ci(valid[p][k]) for p, k in report.TEACHER_COLUMNS])[:-2] + " | 40 | " in text, name
    chance = chance_table(6).iloc[0]
    assert row("chance (expected)", [chance["HR@1"], chance["NDCG@10"], "", ""]) in text
    assert "### LLM-SRec" not in text and "### P2Rec" not in text, "stages the run does not have are left out"
    summary = json.loads((staged_run / "report" / "smoke.json").read_text())
    assert set(summary["stages"]) == {"teachers", "distill", "finetune"}
    assert summary["stages"]["distill"][RULE]["fidelity_after"] == m["fidelity_after"]
    assert summary["stages"]["distill"][RULE]["report_users_id"] == m["report_users"]["hash"]


def test_the_stage_check_fails_on_a_dropped_heuristic_or_the_selection_sets_numbers(staged_run, monkeypatch):
    """Companion: the page made with a heuristic dropped, or with stage 1's heuristics read from the
    selection set instead of the report set, fails ``check_stage_rows``."""
    original = report._distill_stage

    def selection_numbers(paths, config):
        out = original(paths, config)
        for name, p in out.items():
            p["fidelity_baselines"] = json.loads((paths.distill / name / "metrics.json").read_text())["selection"]["fidelity_baselines"]
        return out

    monkeypatch.setattr(report, "_distill_stage", selection_numbers)
    with pytest.raises(AssertionError, match="RPS heuristic"):
        check_stage_rows(write_report(staged_run, notebooks=False).read_text(), staged_run)
    monkeypatch.setattr(report, "_distill_stage", original)
    dropped = report._finetune_stage

    def no_popularity(paths, config):
        out = dropped(paths, config)
        for v in out.values():
            v["baselines"].pop("popularity")
        return out

    monkeypatch.setattr(report, "_finetune_stage", no_popularity)
    with pytest.raises(AssertionError, match="stage-2 baseline popularity"):
        check_stage_rows(write_report(staged_run, notebooks=False).read_text(), staged_run)


def test_a_run_without_evaluation_gets_a_page_of_its_stages(staged_run, tmp_path):
    """A run stopped before notebook 07 (e.g. ``--only 01 02 06``): its stages, and no test numbers."""
    partial = tmp_path / "partial"
    shutil.copytree(staged_run, partial, ignore=shutil.ignore_patterns("eval", "report"))
    text = write_report(partial, notebooks=False).read_text()
    assert "None: this run stopped before the evaluation" in text and "not evaluated on the test split" in text
    assert "## Headline" not in text and "<!-- headline:" not in text
    check_stage_rows(text, partial)
    with pytest.raises(DataError, match="results.csv: not found"):
        report.read_results(partial)


def test_a_reference_shows_stage_1_side_by_side_with_intervals(staged_run, tmp_path):
    summary = report.run_summary(staged_run)
    reference = json.loads(json.dumps(summary))
    reference.update(run="ref", run_dir="docs/results/ref")
    moved = reference["stages"]["distill"][RULE]["fidelity_after"]
    reference["stages"]["distill"][RULE]["fidelity_after"] = {**moved, **{k: moved[k] + 0.5 for k in ("mean", "ci_low", "ci_high")}}
    reference["stages"]["distill"][PROMPTS[1]]["report_users_id"] = "other users"
    (tmp_path / "ref.json").write_text(json.dumps(reference))
    text = write_report(staged_run, tmp_path / "page.md", reference=tmp_path / "ref.json", notebooks=False).read_text()
    assert "### Stage 1 on the report set" in text and "by the same rule: 7 of 8 agree." in text
    mine = summary["stages"]["distill"]
    after = mine[RULE]["fidelity_after"]
    assert row(RULE, ["RPS fidelity, trained", ci(after), ci(reference["stages"]["distill"][RULE]["fidelity_after"]), "-0.5000", "NO", "yes"]) in text
    ta = mine[PROMPTS[1]]["ta_accuracy_after"]
    assert row(PROMPTS[1], ["TA accuracy, trained", ci(ta), ci(ta), "+0.0000", "yes", "NO"]) in text
    # a summary written before the stages were recorded still compares its results table
    del reference["stages"]
    (tmp_path / "ref.json").write_text(json.dumps(reference))
    text = write_report(staged_run, tmp_path / "page.md", reference=tmp_path / "ref.json", notebooks=False).read_text()
    assert "## Compared with the reference `ref`" in text and "### Stage 1 on the report set" not in text


def rewrite(directory: Path, name: str, text: str) -> None:
    """A stage's file replaced and its manifest's hash updated: what a stage with another format would write."""
    (directory / name).write_text(text)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["outputs"][name] = sha256_file(directory / name)
    write_manifest(directory, manifest)


def edit_metrics(directory: Path, change) -> None:
    metrics = json.loads((directory / "metrics.json").read_text())
    change(metrics)
    rewrite(directory, "metrics.json", json.dumps(metrics))


def hand_artifact(directory: Path, kind: str, metrics: dict, **files: str) -> None:
    with atomic_dir(directory) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics))
        for name, text in files.items():
            (tmp / name).write_text(text)
        write_manifest(tmp, build_manifest(kind, tmp))


@pytest.fixture
def staged_copy(staged_run, tmp_path) -> Path:
    shutil.copytree(staged_run, tmp_path / "smoke")
    return tmp_path / "smoke"


def test_llmsrec_p2rec_and_a_prompt_without_ta_numbers(staged_copy):
    """LLM-SRec and P2Rec folders in the layout their stages write, and a soft prompt with no TA numbers."""
    run = staged_copy
    edit_metrics(run / "distill" / PROMPTS[1], lambda m: m.update(ta_accuracy_before=None, ta_accuracy_after=None))
    scores = {m: 0.1 * i for i, m in enumerate(METRICS)}
    hand_artifact(run / "llmsrec" / "llm-srec", "llmsrec-heads", {
        "variant": "llm-srec", "teacher": "sasrec", "train_examples": 40, "valid_users": 8, "steps": 10, "best_step": 8,
        "processes": 1, "seconds": 12.3, "valid_before": scores, "valid_best": {**scores, "NDCG@10": 0.3125},
        "teacher_cosine_before": 0.1, "teacher_cosine_best": 0.5}, **{"history.csv": "step,NDCG@10\n0,0.4\n"})  # fmt: skip
    runner.record_metrics(RunPaths(run), "05_llm_srec", {"baselines": {"sasrec": 0.41, "popularity": 0.52, "chance": 0.29}})
    hand_artifact(run / "p2rec" / "sft-sasrec-k4", "p2rec-sft", {
        "name": "sft-sasrec-k4", "k": 4, "loss": "kl", "heldout_users": 8, "steps": 6, "best_step": 6, "train_seconds": 3.0,
        "heldout_best": {"mse": 0.01, "kl": 0.2, "l1": 0.3, "top1": 0.5},
        "heldout_prior": {"mse": 0.02, "kl": 0.25, "l1": 0.35, "top1": 0.375},
        "heldout_uniform": {"mse": 0.03, "kl": 0.5, "l1": 0.6, "top1": 0.25}})  # fmt: skip
    plain = json.loads((run / "teachers" / RULE / "metrics.json").read_text())
    enhanced = json.loads(json.dumps(plain))
    enhanced["valid"]["candidates"]["HR@1"] = {"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75}
    enhanced.update(epochs=3, best_epoch=2, method="p2rec-x", seed=0, init="sft-sasrec-k4")
    hand_artifact(run / "p2rec" / "p2rec-x", "teacher", enhanced)
    hand_artifact(run / "p2rec" / "llm-base", "p2rec-states", {"name": "llm-base", "states_seconds": 1.0})
    text = write_report(run, notebooks=False).read_text()
    assert row("TA accuracy, trained (selected step)", [ci(json.loads((run / "distill" / RULE / "metrics.json").read_text())["ta_accuracy_after"]),
                                                        "not measured"]) in text  # fmt: skip
    assert row("llm-srec", ["0.3125", f"{scores['NDCG@10']:.4f}", "0.100 -> 0.500", "10 (8)", "12", "8"]) in text
    for name, value in (("sasrec", "0.4100"), ("popularity", "0.5200"), ("chance", "0.2900")):
        assert row(f"{name} (same examples)", [value, "", "", "", "", ""]) in text
    assert row("sft-sasrec-k4: tuned LLM", ["0.0100", "0.2000", "0.3000", "0.5000", "8", "6 (6)", "3"]) in text
    assert row("sft-sasrec-k4: training users' mean", ["0.0200", "0.2500", "0.3500", "0.3750", "8", "", ""]) in text
    assert row("sft-sasrec-k4: uniform", ["0.0300", "0.5000", "0.6000", "0.2500", "8", "", ""]) in text
    p2rec = text[text.index("### P2Rec"):]
    assert row("p2rec-x", ["0.5000 [0.2500, 0.7500]"])[:-2] in p2rec and " | 3 (2) | " in p2rec
    assert row(RULE, [ci(plain["valid"]["candidates"]["HR@1"])])[:-2] in p2rec and "| popularity |" in p2rec
    assert "llm-base" not in p2rec, "item states alone have no validation numbers"


@pytest.mark.parametrize("fault, message", [
    ("edited", r"distill/rule-sharedword/metrics.json: content differs from the hash in .*manifest.json"),
    ("field", r"distill/rule-sharedword/metrics.json: unreadable as the stage writes it \(KeyError: 'fidelity_after'\)"),
    ("column", r"finetune/lora/history.csv: no column \['examples_seen'\]"),
    ("manifest", r"teachers/rule-sharedword/manifest.json: no manifest"),
])  # fmt: skip
def test_an_unreadable_stage_folder_is_an_error_naming_its_file(staged_copy, fault, message):
    run = staged_copy
    if fault == "edited":
        (run / "distill" / RULE / "metrics.json").write_text("{}")
    elif fault == "field":
        edit_metrics(run / "distill" / RULE, lambda m: m.pop("fidelity_after"))
    elif fault == "column":
        history = pd.read_csv(run / "finetune" / "lora" / "history.csv").drop(columns="examples_seen")
        rewrite(run / "finetune" / "lora", "history.csv", history.to_csv(index=False))
    else:
        (run / "teachers" / RULE / "manifest.json").unlink()
    with pytest.raises((DataError, StaleArtifactError), match=message):
        write_report(run, notebooks=False)
