"""The results page written from a run folder: its tables, times and versions, cross-run paired tests
that refuse other users or candidate sets, the comparison with a reference, the README's headline
block, and the executed notebooks rendered to Markdown."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from delrec_lib import __main__ as cli
from delrec_lib import report, runner
from delrec_lib.analysis import order_diagnostic, reading, shuffled_results
from delrec_lib.artifacts import RunPaths, atomic_dir, atomic_write_json, build_manifest, write_manifest
from delrec_lib.config import DataConfig, EvalConfig, RunConfig, config_to_dict
from delrec_lib.evaluation import (
    EVAL_KIND,
    MethodResult,
    catalogue_table,
    chance_table,
    evaluate_method,
    format_table,
    generation_table,
    method_context,
    paired_comparisons,
    per_user_frame,
    results_table,
    write_tables,
)
from delrec_lib.metrics import METRICS, holm_adjust, paired_test
from delrec_lib.report import (
    ComparisonError,
    compare_runs,
    page_headline,
    readme_block,
    update_readme,
    write_report,
)
from delrec_lib.teachers.stage import export_popularity

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
    write_tables(paths, table, paired, generation_table(results), catalogue, chance_table(6))
    users = ctx.users()
    order = order_diagnostic(results, {m: shuffled_results(ctx, m, users) for m in results})
    text = reading(table, paired, None, order)
    (paths.eval / "reading.md").write_text(text + "\n")
    runner.record_metrics(paths, "08_analysis", {"order": order.to_dict(orient="records"), "agreement": [], "reading": text})
    paths.figure("08_metrics.png").write_bytes(PNG)
    executed_notebook(paths.notebooks / "07_evaluation.ipynb")
    # 07 ran twice: the second found its work done; the page shows the first, which computed the results
    atomic_write_json(paths.root / "timings.json", {"executions": [
        execution("01_data_prep", 6.2, False), execution("07_evaluation", 1555.0, False),
        execution("07_evaluation", 3.0, True, "2026-01-06T10:00:00+00:00")]})  # fmt: skip
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
    assert "| 07_evaluation | 25 min 55 s | 2026-01-05T10:00:00+00:00 | 2 |" in text
    assert "| 01_data_prep | 6 s |" in text
    assert "Test CPU 9000, 2 cores (2 usable), no GPU; the LLM computed in float32" in text
    assert re.search(r"Kit: version \S+ at commit [0-9a-f]{12}.* \(\d+ artifacts\)", text), "the kit's version and commit"
    assert "python 3.11.7, torch 2.0" in text
    # the paired test, the order diagnostic and the reading, as the run wrote them
    paired = pd.read_csv(run_folder / "eval" / "paired_tests.csv")
    for r in paired.itertuples():
        assert f"| {r.method} | {r.versus} | {r.metric} | {r.mean_diff:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}] | {r.p_value:.3g} | {r.p_holm:.3g} |" in text
    assert (run_folder / "eval" / "reading.md").read_text().strip() in text
    assert "## Order diagnostic" in text and "## Full catalogue (history masked)" in text
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
        check_readme_matches(REPO / "README.md", REPO / "docs" / "results" / f"{run}.md")


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
