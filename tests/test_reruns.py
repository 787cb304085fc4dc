"""Running again: what is recomputed, reused or refused, and what a refused or failed execution leaves.

The runner's tests replace papermill's ``execute_notebook`` by a stand-in that plays a notebook
(writes an artifact, fails, ...) so they take milliseconds; the stage tests use the synthetic data
and the tiny random LLM of the other stage tests.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import re
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import papermill
import pytest

import delrec_lib
from delrec_lib import artifacts, runner
from delrec_lib.artifacts import atomic_dir, build_manifest, read_manifest, write_manifest, write_stage_output
from delrec_lib.config import DataConfig, DistillConfig, EvalConfig, FinetuneConfig, LLMConfig, RunConfig
from delrec_lib.data import load_processed, prepare_dataset
from delrec_lib.errors import ConfigError, DelrecError, StaleArtifactError
from delrec_lib.runner import RunPaths, run_folder_lock, run_series, series_notebooks

from .llm_fixtures import save_tiny_causal
from .stage_fixtures import synthetic_data, write_teacher_exports

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# The runner, with a stand-in for papermill
# --------------------------------------------------------------------------------------------


class FakeSeries:
    """Plays the notebooks: ``actions[stem](paths)`` runs in place of notebook ``stem``."""

    def __init__(self, root: Path):
        self.root = root
        self.paths = RunPaths(root / "run")
        self.actions: dict[str, object] = {}
        self.executed: list[str] = []

    def __call__(self, input_path, output_path, *, parameters, **_):
        stem = Path(input_path).stem
        self.executed.append(stem)
        assert Path(parameters["config_file"]).is_file(), "the notebook reads the run's config.json"
        # as papermill: the output is written when the execution starts, and again when it ends;
        # each execution's differs, so that one written over another shows
        started = {"notebook": stem, "execution": len(self.executed), "config": parameters["config_file"]}
        Path(output_path).write_text(json.dumps({**started, "completed": False}))
        action = self.actions.get(stem)
        if action is not None:
            action(self.paths)
        Path(output_path).write_text(json.dumps({**started, "completed": True}))

    def config_file(self, seed: int = 2024) -> Path:
        f = self.root / f"seed{seed}.toml"
        f.write_text(f'preset = "smoke"\ndata_dir = "{self.root / "data"}"\n[data]\nseed = {seed}\n')
        return f

    def run(self, seed: int = 2024, **kwargs) -> Path:
        return run_series("smoke", self.paths.root, config_file=self.config_file(seed), progress=False, **kwargs)


@pytest.fixture
def series(tmp_path, monkeypatch):
    fake = FakeSeries(tmp_path)
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    return fake


def write_artifact(directory: Path, content: str = "x", kit: dict | None = None) -> None:
    with atomic_dir(directory) as tmp:
        (tmp / "out.txt").write_text(content)
        manifest = build_manifest("test", tmp, config={"content": content})
        if kit is not None:
            manifest["kit"] = kit
        write_manifest(tmp, manifest)


def fail(paths):
    raise papermill.PapermillExecutionError(0, 3, "x", "StaleArtifactError", "made with other settings", [])


def test_only_and_rerun_are_checked_before_anything_is_written(series):
    with pytest.raises(ConfigError, match=r"--only \['99'\]: no such notebook"):
        series.run(only=["99"])
    assert not series.paths.root.exists(), "a refused run creates nothing, not even the run folder"
    series.run()
    first = series.paths.config_file.read_text()
    assert json.loads(first)["data"]["seed"] == 2024
    for bad, message in [({"only": ["99"]}, "no such notebook"),
                         ({"rerun": ["teachers"], "only": ["07"]}, "not among the notebooks this run executes"),
                         ({"rerun": ["0"]}, f"names {len(series_notebooks())} notebooks"),
                         ({"rerun": ["bogus"]}, "names 0 notebooks")]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            series.run(seed=7, **bad)
        assert series.paths.config_file.read_text() == first, f"{bad}: config.json untouched"
    assert series.executed.count("01_data_prep") == 1


def test_config_json_is_put_back_when_no_notebook_completes(series, monkeypatch):
    series.run()
    first = series.paths.config_file.read_text()
    series.actions["02_teacher_training"] = fail
    with pytest.raises(DelrecError, match="02_teacher_training.ipynb failed in cell 3"):
        series.run(seed=7, only=["02"])
    assert series.paths.config_file.read_text() == first, "a rerun that did nothing leaves the old config"
    # one notebook completed under the new settings: config.json says them
    with pytest.raises(DelrecError, match="02_teacher_training.ipynb failed"):
        series.run(seed=7, only=["01", "02"])
    assert json.loads(series.paths.config_file.read_text())["data"]["seed"] == 7
    # a fresh folder whose first notebook fails keeps no config.json at all
    (series.root / "fresh").mkdir()
    fresh = FakeSeries(series.root / "fresh")
    fresh.actions["01_data_prep"] = fail
    monkeypatch.setattr(papermill, "execute_notebook", fresh)
    with pytest.raises(DelrecError):
        fresh.run()
    assert not fresh.paths.config_file.exists()


NOTEBOOK_SECONDS = 0.3  # how long the stand-in notebooks of the timing test take


def timed_run(series, calls: list, **kwargs) -> None:
    """``series.run``, appending the call's (wall-clock start, end, measured seconds) to ``calls``."""
    start, t0 = time.time(), time.perf_counter()
    try:
        series.run(**kwargs)
    finally:
        calls.append((start, time.time(), time.perf_counter() - t0))


def check_recorded_time(record: dict, call: tuple[float, float, float]) -> None:
    """The record's start lies within the call, and its seconds are the notebook's: at least what it
    slept, at most the whole call (rounded to 0.1 s)."""
    start, end, seconds = call
    started = datetime.datetime.fromisoformat(record["started_at"]).timestamp()
    assert int(start) <= started <= end, f"started_at {record['started_at']} outside the call"
    assert NOTEBOOK_SECONDS - 0.05 <= record["seconds"] <= seconds + 0.05, (
        f"seconds {record['seconds']}: the notebook took at least {NOTEBOOK_SECONDS} s, the call {seconds:.2f} s"
    )


def test_timings_keep_every_execution_and_whether_it_skipped_finished_work(series):
    def train(paths):
        time.sleep(NOTEBOOK_SECONDS)
        if not artifacts.is_complete(paths.teachers / "sasrec", "test"):
            write_artifact(paths.teachers / "sasrec")

    def refused(paths):
        time.sleep(NOTEBOOK_SECONDS)
        fail(paths)

    series.actions["02_teacher_training"] = train
    calls: list[tuple[float, float, float]] = []
    timed_run(series, calls, only=["02"])
    timed_run(series, calls, only=["02"])
    series.actions["02_teacher_training"] = refused
    with pytest.raises(DelrecError):
        timed_run(series, calls, only=["02"])
    runs = json.loads((series.paths.root / "timings.json").read_text())["executions"]
    assert [(r["notebook"], r["outcome"]) for r in runs] == [("02_teacher_training", "done")] * 2
    assert [r["skipped_finished_work"] for r in runs] == [False, True]
    assert runs[0]["written"] == ["teachers/sasrec"] and runs[1]["written"] == []
    # the execution that did not complete is recorded beside its notebook, not in the run's record
    failed = json.loads((series.paths.notebooks / "failed" / "timings.json").read_text())["executions"]
    assert [(r["notebook"], r["outcome"], r["written"]) for r in failed] == [("02_teacher_training", "failed", [])]
    for record, call in zip([*runs, *failed], calls, strict=True):
        check_recorded_time(record, call)


def test_the_timing_check_fails_when_the_runner_records_no_time(series, monkeypatch):
    """Companion: a runner whose clock does not move records 0 s, which ``seconds >= 0`` let through."""
    monkeypatch.setattr(runner, "time", types.SimpleNamespace(perf_counter=lambda: 100.0))
    with pytest.raises(AssertionError, match=r"seconds 0\.0: the notebook took at least"):
        test_timings_keep_every_execution_and_whether_it_skipped_finished_work(series)


@pytest.mark.parametrize("stem, outcome", [
    ("07_evaluation", "failed"),  # `--only 07` after a stage-2 change: the adapter has other settings
    ("02_teacher_training", "failed"),  # `--only 02` with another data.seed: so has the processed data
    ("07_evaluation", "interrupted"),  # Ctrl-C in the middle of it
])  # fmt: skip
def test_a_refused_rerun_leaves_every_file_of_the_finished_run_as_it_was(series, stem, outcome):
    """Only ``notebooks/failed/`` is new: the execution as far as it ran, and its record."""

    def train(paths):
        if not artifacts.is_complete(paths.teachers / "sasrec", "test"):
            write_artifact(paths.teachers / "sasrec")

    def interrupt(paths):
        raise KeyboardInterrupt

    series.actions["02_teacher_training"] = train
    series.run()
    before = files_of(series.paths.root)
    series.actions[stem] = interrupt if outcome == "interrupted" else fail
    kept, out = series.paths.notebooks / "failed" / f"{stem}.ipynb", series.paths.notebooks / f"{stem}.ipynb"
    if outcome == "interrupted":
        with pytest.raises(KeyboardInterrupt):
            series.run(seed=7, only=[stem[:2]])
    else:
        message = rf"{stem}.ipynb failed in cell 3: .*\(see {re.escape(str(kept))}; {re.escape(str(out))}, its last completed execution, is unchanged\)"
        with pytest.raises(DelrecError, match=message):
            series.run(seed=7, only=[stem[:2]])
    after = files_of(series.paths.root)
    new = sorted(set(after) - set(before))
    assert new == [f"notebooks/failed/{stem}.ipynb", "notebooks/failed/timings.json"], new
    changed = sorted(name for name in before if after.get(name) != before[name])
    assert changed == [], f"a refused execution changed files of the finished run: {changed}"
    assert json.loads(after[f"notebooks/failed/{stem}.ipynb"])["completed"] is False, "the execution as far as it ran"
    (record,) = json.loads(after["notebooks/failed/timings.json"])["executions"]
    assert (record["notebook"], record["outcome"]) == (stem, outcome)


def files_of(root: Path) -> dict[str, bytes]:
    """{path under ``root``: content} of every file."""
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_a_method_notebook_the_preset_trains_nothing_for_is_skipped_and_recorded(series, capsys):
    f = series.root / "no-p2rec.toml"
    f.write_text(f'preset = "smoke"\ndata_dir = "{series.root / "data"}"\n[p2rec]\nvariants = []\n')
    run_series("smoke", series.paths.root, config_file=f, progress=False, only=["05", "06"])
    assert series.executed == ["05_llm_srec"]
    assert "06_p2rec.ipynb skipped: the smoke preset trains no such method (p2rec.variants is empty)" in capsys.readouterr().out
    runs = json.loads((series.paths.root / "timings.json").read_text())["executions"]
    assert [(r["notebook"], r["outcome"]) for r in runs] == [("05_llm_srec", "done"),
                                                             ("06_p2rec", "not in this preset (p2rec.variants is empty)")]


def test_timings_of_the_earlier_form_are_kept(series):
    series.paths.root.mkdir(parents=True)
    (series.paths.root / "timings.json").write_text('{"01_data_prep": 12.5}')
    series.run(only=["01"])
    first, second = json.loads((series.paths.root / "timings.json").read_text())["executions"]
    assert (first["notebook"], first["seconds"], first["skipped_finished_work"]) == ("01_data_prep", 12.5, None)
    assert second["notebook"] == "01_data_prep" and second["outcome"] == "done"


def test_every_notebook_of_the_series_has_its_artifacts_declared_for_rerun():
    assert sorted(nb.stem for nb in series_notebooks()) == sorted(runner.STAGES)


def test_rerun_recomputes_exactly_that_stage(series):
    p = series.paths
    for d in (p.teachers / "sasrec", p.distill / "sasrec", p.eval / "lora", p.eval / "shuffled" / "lora"):
        write_artifact(d)
    checkpoint = p.teachers / ".checkpoints" / "sasrec-abc" / "last"
    checkpoint.mkdir(parents=True)
    seen = {}

    def teachers(paths):
        seen["teachers"] = artifacts.is_complete(paths.teachers / "sasrec", "test")
        seen["checkpoint"] = checkpoint.exists()
        seen["distill"] = artifacts.is_complete(paths.distill / "sasrec", "test")
        write_artifact(paths.teachers / "sasrec")

    series.actions["02_teacher_training"] = teachers
    series.run(only=["02", "03"], rerun=["teachers"])
    assert seen == {"teachers": False, "checkpoint": False, "distill": True}, "only stage 2's artifacts are redone"
    runs = json.loads((p.root / "timings.json").read_text())["executions"]
    assert [(r["notebook"], r["rerun"], r["written"]) for r in runs] == [
        ("02_teacher_training", True, ["teachers/sasrec"]), ("03_delrec_stage1_distillation", False, [])]  # fmt: skip
    # by number: evaluation's caches go, the analysis' (eval/shuffled) stay
    series.run(only=["07"], rerun=["07"])
    assert not (p.eval / "lora" / "manifest.json").exists()
    assert (p.eval / "shuffled" / "lora" / "manifest.json").is_file()


def test_second_run_on_the_same_folder_stops_at_once_naming_the_first(series):
    root = series.paths.root
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from pathlib import Path
            from delrec_lib.runner import run_folder_lock
            with run_folder_lock(Path({str(root)!r})):
                print("held", flush=True)
                sys.stdin.read()
        """)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DelrecError, match=rf"{re.escape(str(root))} is in use by another run \(pid {holder.pid}, started 20"):
            series.run()
        assert series.executed == [] and not (root / "config.json").exists()
    finally:
        holder.communicate("")
    series.run(only=["01"])  # released when the holder ended
    assert series.executed == ["01_data_prep"]


def test_two_lock_acquisitions_in_one_process_conflict(tmp_path):
    with run_folder_lock(tmp_path):
        with pytest.raises(DelrecError, match="in use by another run"):
            with run_folder_lock(tmp_path):
                pass
    with run_folder_lock(tmp_path):  # and it was released
        pass


# --------------------------------------------------------------------------------------------
# The kit's version in every manifest
# --------------------------------------------------------------------------------------------


def test_manifests_record_the_kits_version(tmp_path):
    write_artifact(tmp_path / "a")
    assert read_manifest(tmp_path / "a")["kit"]["version"] == delrec_lib.__version__
    assert artifacts.artifact_id(read_manifest(tmp_path / "a")) == artifacts.sha256_json({"out.txt": artifacts.sha256_bytes(b"x")}), (
        "the kit is not part of an artifact's identity: same outputs, same id"
    )  # fmt: skip


def test_a_stage_output_is_written_whole_with_its_manifest_or_not_at_all(tmp_path):
    out = tmp_path / "stage"
    with write_stage_output(out, "test", inputs={"data": "d"}, config={"k": 1}, extra={"name": "a"}) as tmp:
        (tmp / "out.txt").write_text("x")
    manifest = read_manifest(out, "test")
    assert manifest["outputs"] == {"out.txt": artifacts.sha256_bytes(b"x")}, "the manifest hashes every file written"
    assert manifest["extra"] == {"name": "a"} and artifacts.is_complete(out, "test", inputs={"data": "d"}, config={"k": 1})
    with pytest.raises(RuntimeError, match="the stage failed"), write_stage_output(out, "test", config={"k": 2}) as tmp:
        (tmp / "out.txt").write_text("y")
        raise RuntimeError("the stage failed")
    assert (out / "out.txt").read_text() == "x", "a failed stage left its files in the output folder"
    assert artifacts.is_complete(out, "test", inputs={"data": "d"}, config={"k": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["stage"], "a temporary folder was left behind"


def kit_checkout_head() -> str:
    """HEAD of the kit's own git checkout; skips the calling test outside one (a copy, an unpacked archive)."""
    try:
        top, head = (subprocess.run(["git", "rev-parse", what], cwd=REPO, capture_output=True, text=True, timeout=10)
                     for what in ("--show-toplevel", "HEAD"))  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"git cannot be run ({e}): the commit a manifest records cannot be checked")
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != REPO or head.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout of the kit: the commit a manifest records cannot be checked")
    return head.stdout.strip()


def test_manifests_record_the_kits_commit(tmp_path):
    before = kit_checkout_head()
    artifacts.kit_identity.cache_clear()  # the commit now, not at this session's first manifest
    write_artifact(tmp_path / "a")
    # HEAD read before and after: another commit may land in between
    assert read_manifest(tmp_path / "a")["kit"]["commit"] in {before, kit_checkout_head()}, "the checkout's commit"


def test_the_commit_check_fails_on_a_manifest_without_the_commit(tmp_path, monkeypatch):
    """Companion: the fault it guards against, a manifest that records no commit in a checkout."""
    monkeypatch.setattr(artifacts, "kit_identity", functools.cache(lambda: {"version": delrec_lib.__version__,
                                                                             "commit": None, "dirty": None}))  # fmt: skip
    with pytest.raises(AssertionError, match="the checkout's commit"):
        test_manifests_record_the_kits_commit(tmp_path)


def test_the_commit_check_skips_outside_a_git_checkout_instead_of_passing(tmp_path, monkeypatch):
    """Companion: where git knows no checkout the test says it checked nothing (a skip and its reason)."""
    not_a_checkout = subprocess.CompletedProcess([], 128, "", "fatal: not a git repository")
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: not_a_checkout)
    try:
        with pytest.raises(pytest.skip.Exception, match="is not a git checkout of the kit"):
            test_manifests_record_the_kits_commit(tmp_path)
    finally:
        artifacts.kit_identity.cache_clear()


def test_without_git_the_commit_is_none_and_nothing_fails(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(artifacts.subprocess, "run", no_git)
    artifacts.kit_identity.cache_clear()
    try:
        assert artifacts.kit_identity() == {"version": delrec_lib.__version__, "commit": None, "dirty": None}
    finally:
        artifacts.kit_identity.cache_clear()


def test_outputs_of_another_version_are_reused_with_a_loud_warning(series, caplog, capsys):
    old = {"version": "0.0.1", "commit": "f" * 40, "dirty": False}
    write_artifact(series.paths.teachers / "sasrec", kit=old)
    with caplog.at_level(logging.WARNING, logger="delrec_lib.artifacts"):
        assert artifacts.is_complete(series.paths.teachers / "sasrec", "test"), "not an error: reused"
    assert "made by delrec_lib version 0.0.1 at commit ffffffffffff" in caplog.text
    assert f"this is version {delrec_lib.__version__}" in caplog.text
    series.run(only=["01"])
    out = capsys.readouterr().out
    assert "WARNING: 1 artifacts of this run were made by another version" in out and "--rerun STAGE" in out
    # same version, another commit: also another version of the code
    current = artifacts.kit_identity()
    if current["commit"]:
        assert not artifacts.same_kit({**current, "commit": "0" * 40}, current)
    assert artifacts.same_kit(dict(current), current) and not artifacts.same_kit(None, current)


# --------------------------------------------------------------------------------------------
# Processed data checked against the run's data settings
# --------------------------------------------------------------------------------------------


def test_processed_data_of_another_seed_is_refused_naming_both_then_recomputed(tmp_path):
    synthetic_data(tmp_path)  # raw files, processed with seed 2024
    seed7 = DataConfig(dataset="toy", seed=7, num_negatives=5)
    prepare_dataset(seed7, tmp_path)
    ours = DataConfig(dataset="toy", seed=2024, num_negatives=5)
    with pytest.raises(StaleArtifactError, match=r"processed data was made with other settings.*seed: 7 -> 2024.*notebook 01"):
        load_processed(tmp_path, ours)  # what `--only 02` of a seed-2024 run does
    with pytest.raises(StaleArtifactError, match=r"num_negatives: 5 -> 9"):
        load_processed(tmp_path, dataclasses.replace(seed7, num_negatives=9))
    old_id = load_processed(tmp_path, seed7).data_id
    prepare_dataset(ours, tmp_path)  # what a full run's notebook 01 does
    assert load_processed(tmp_path, ours).data_id != old_id, "recomputed: every downstream input hash changes"


def test_every_notebook_after_01_loads_the_data_with_the_runs_settings():
    for nb in series_notebooks():
        text = nb.read_text()
        if nb.stem != "01_data_prep" and "load_processed(" in text:
            assert "load_processed(data_root, config.data)" in text, nb.name


# --------------------------------------------------------------------------------------------
# Stages 1 and 2 after a settings change; evaluation of a stale adapter
# --------------------------------------------------------------------------------------------


def config(lr: float = 5e-3, distill_lr: float = 0.05) -> RunConfig:
    return RunConfig(
        preset="smoke", llm=LLMConfig(history_len=4, title_style="with_year"),
        distill=DistillConfig(heldout_users=8, max_steps=2, batch_size=4, grad_accum=1, eval_every=2, num_soft_tokens=4,
                              warmup_steps=0, ta_candidates=6, rps_top_k=3, rps_random=3, lr=distill_lr),
        finetune=FinetuneConfig(max_train_users=16, valid_users=6, max_steps=2, batch_size=4, grad_accum=1, lr=lr,
                                eval_every=2, warmup_steps=0, num_negatives=5, lora_r=4, lora_layers=None, positions_per_user=1),
        eval=EvalConfig(generation_users=2, max_new_tokens=4),
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_torch_thread):
    from delrec_lib.llm import load_backbone

    root = tmp_path_factory.mktemp("reruns")
    data = synthetic_data(root / "data")
    backbone = load_backbone(str(save_tiny_causal(root / "tiny")), dtype="float32")
    paths = RunPaths(root / "run")
    write_teacher_exports(paths.teachers / "sasrec", data)
    return data, backbone, paths


def test_stage_1_and_2_rerun_after_a_settings_change_recompute_instead_of_failing(world, caplog):
    from delrec_lib.delrec.distill import run_distillation
    from delrec_lib.delrec.finetune import run_finetuning

    data, backbone, paths = world
    run_distillation(config(), paths, data, backbone, "sasrec", progress=False)
    assert (paths.distill / ".checkpoints" / "sasrec" / "last").is_dir(), "the finished stage's checkpoint stays"
    with caplog.at_level(logging.WARNING, logger="delrec_lib.training"):
        again = run_distillation(config(distill_lr=0.02), paths, data, backbone, "sasrec", progress=False)
    assert not again.skipped and "discarding the checkpoint" in caplog.text
    assert read_manifest(again.directory)["config"]["distill"]["lr"] == 0.02
    caplog.clear()
    run_finetuning(config(), paths, data, backbone, "lora", progress=False)
    with caplog.at_level(logging.WARNING, logger="delrec_lib.training"):
        tuned = run_finetuning(config(lr=1e-2), paths, data, backbone, "lora", progress=False)
    assert not tuned.skipped and "discarding the checkpoint" in caplog.text
    assert read_manifest(tuned.directory)["config"]["finetune"]["lr"] == 1e-2


def test_evaluation_refuses_an_adapter_of_other_stage_2_settings_naming_both(world):
    from delrec_lib.delrec.finetune import load_recommender, run_finetuning
    from delrec_lib.evaluation import evaluate_method
    from delrec_lib.methods import MethodContext

    data, backbone, paths = world
    old, new = config(lr=5e-3), config(lr=2e-2)
    run_finetuning(old, paths, data, backbone, "lora", progress=False)
    ctx = MethodContext(old, paths, data, _backbone=backbone)
    cached = evaluate_method(ctx, "lora", progress=False)
    assert (paths.eval / "lora" / "manifest.json").is_file()
    # `--only 07` with the new stage-2 setting: neither the cached results nor the adapter are used
    stale = MethodContext(new, paths, data, _backbone=backbone)
    with pytest.raises(StaleArtifactError, match=r"fine-tuned 'lora' was made with other settings.*finetune\.lr: 0\.005 -> 0\.02"):
        evaluate_method(stale, "lora", progress=False)
    with pytest.raises(StaleArtifactError, match=r"finetune\.lr: 0\.005 -> 0\.02"):
        load_recommender(paths, "lora", backbone, data, new)
    # a full run recomputes stage 2 first; evaluation then scores the new adapter, not the cache
    run_finetuning(new, paths, data, backbone, "lora", progress=False)
    before = read_manifest(paths.eval / "lora")["inputs"]
    fresh = evaluate_method(stale, "lora", progress=False)
    assert read_manifest(paths.eval / "lora")["inputs"]["model"] != before["model"]
    assert fresh.per_user["user_id"].tolist() == cached.per_user["user_id"].tolist()
