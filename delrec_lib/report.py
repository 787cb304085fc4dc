"""Results pages written by code from run folders: ``python -m delrec_lib report --run-dir outputs/cpu``.

A page (``<run>/report/<run>.md`` by default, ``--out docs/results/<name>.md`` for the docs) holds the
run's tables with their intervals, its paired tests, the reading notebook 08 wrote, its figures, and
where the numbers come from: the machine (recorded by the runner with each notebook execution), the dtype
the LLM computed in, the kit's version and commit (from the artifacts' manifests) and each notebook's
time (``timings.json``). Its "Stages" section gives each stage's own numbers as the stage's folder records
them (``stage_results``: the teachers' validation metrics, stage 1's report-set fidelity and TA accuracy and
its selection curve, stage 2's validation curve, LLM-SRec's and P2Rec's validation tables), every LLM number
beside the heuristics the stage recorded on the same examples. Nothing on it is typed by hand; a page is
regenerated, never edited.

Beside the page, a summary (``<page>.json``: the results table, the stages' numbers, users, data identity,
machine, kit) lets another run be compared with it without its run folder (``--reference``, stage 1's
report-set numbers included). Two run folders are compared
user by user (``compare_runs``): paired tests, Holm-adjusted within the comparison, refused unless both
were evaluated on the same test users with the same candidate sets.

The page's headline table (every method's HR@1 and NDCG@10 with intervals, chance beside) sits between
markers; ``update_readme`` copies it between the README's markers for the run
(``<!-- results:<run>:start -->`` ... ``<!-- results:<run>:end -->``). The run's executed notebooks are
rendered to Markdown with their figures (``render_notebooks``), readable without running anything.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .artifacts import (
    DISTILL_MATCHED,
    MANIFEST_NAME,
    RunPaths,
    StaleArtifactError,
    artifact_id,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    describe_kit,
    read_json,
    read_manifest,
    sha256_json,
    verify_outputs,
)
from .config import project_root, split_seed
from .errors import DataError
from .evaluation import EVAL_KIND, chance_table, format_table, markdown_table
from .metrics import METRICS, holm_adjust, paired_test
from .runner import read_timings

SUMMARY_FORMAT = 1
HEADLINE_METRICS = ("HR@1", "NDCG@10")
ALPHA = 0.05


class ComparisonError(DataError):
    """Two runs that cannot be compared user by user (other test users or candidate sets)."""


# --------------------------------------------------------------------------------------------
# Reading a run folder
# --------------------------------------------------------------------------------------------


def _shown(path: Path) -> str:
    """A path as a page shows it: relative to the kit's folder when inside it."""
    path = Path(path).resolve()
    root = project_root().resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: not found; {what}")
    return path


def read_results(run_dir: Path) -> pd.DataFrame:
    """The run's results table as notebook 07 wrote it (``eval/results.csv``): rows methods, columns
    (metric, mean/ci_low/ci_high)."""
    path = _require(Path(run_dir) / "eval" / "results.csv", "the run has no evaluation yet (notebook 07 writes it)")
    flat = pd.read_csv(path, index_col=0)
    table = flat.copy()
    table.columns = pd.MultiIndex.from_tuples([tuple(c.rsplit(" ", 1)) for c in flat.columns])
    table.index.name = "method"
    return table


def per_user_results(run_dir: Path, methods: Iterable[str] | None = None) -> dict[str, tuple[pd.DataFrame, dict]]:
    """{method: (per-user test results, its manifest)} from ``<run>/eval/<method>/``, each checked
    against its manifest. Default: the methods of the run's results table."""
    run_dir = Path(run_dir)
    names = list(methods) if methods is not None else list(read_results(run_dir).index)
    out = {}
    for m in names:
        directory = _require(run_dir / "eval" / m, f"no evaluation of method '{m}' in {run_dir}")
        manifest = read_manifest(directory, EVAL_KIND)
        verify_outputs(directory, manifest)
        out[m] = (pd.read_parquet(directory / "per_user.parquet"), manifest)
    return out


def run_kits(run_dir: Path) -> Counter:
    """{the kit that made an artifact, as ``describe_kit`` says it: how many of the run's artifacts}."""
    kits: Counter = Counter()
    for m in sorted(Path(run_dir).rglob(MANIFEST_NAME)):
        if any(part.startswith(".") for part in m.relative_to(run_dir).parts):
            continue  # temporary and checkpoint folders
        try:
            kits[describe_kit(read_json(m).get("kit"))] += 1
        except (DataError, AttributeError):
            continue
    return kits


def notebook_times(run_dir: Path) -> list[dict[str, Any]]:
    """Per notebook, the execution that computed its results: the last one that wrote artifacts, else
    (all of its executions found their work done) the last one. ``earlier`` lists the earlier executions whose
    artifacts no later one wrote again (a rerun that recomputed part of a notebook's work leaves the rest of its
    results resting on them): their ``seconds`` and what of theirs the results still hold (``kept``)."""
    executions = [e for e in read_timings(Path(run_dir) / "timings.json") if e.get("outcome", "done") == "done"]
    chosen: dict[str, int] = {}
    for i, e in enumerate(executions):
        if e["notebook"] not in chosen or e.get("skipped_finished_work") is not True:
            chosen[e["notebook"]] = i
    out = []
    for name in sorted(chosen):
        last = chosen[name]
        written = set(executions[last].get("written") or [])
        earlier = []
        for e in reversed(executions[:last]):
            if e["notebook"] != name:
                continue
            kept = sorted(set(e.get("written") or []) - written)
            if kept:
                earlier.append({"seconds": float(e["seconds"]), "started_at": e.get("started_at"), "kept": kept})
            written |= set(e.get("written") or [])
        count = sum(e["notebook"] == name for e in executions)
        out.append({**executions[last], "executions": count, "earlier": earlier[::-1]})
    return out


def _time_note(t: dict[str, Any]) -> str:
    if t.get("skipped_finished_work") is True:
        return "its work was already done"
    return "; ".join(f"also an earlier execution ({e['started_at'] or 'start not recorded'}, {_duration(e['seconds'])}) "
                     f"whose {', '.join(e['kept'])} the results still hold" for e in t["earlier"])  # fmt: skip


def where_time_went(execution: dict[str, Any], top: int = 4) -> str:
    """A notebook execution's largest phases (``delrec_lib.phases``) in minutes, and the rest of its wall time
    (setup, data, tables); "-" for executions recorded before phases were."""
    phases = execution.get("phases")
    if not phases:
        return "-"
    shown = sorted(phases.items(), key=lambda kv: -kv[1])[:top]
    rest = float(execution["seconds"]) - sum(phases.values())
    parts = [f"{name} {seconds / 60:.1f}" for name, seconds in shown]
    if len(phases) > top:
        parts.append(f"{len(phases) - top} more phases {sum(sorted(phases.values())[: len(phases) - top]) / 60:.1f}")
    return "; ".join([*parts, f"other {max(rest, 0.0) / 60:.1f}"]) + " (min)"


def describe_machine(machine: dict | None) -> str:
    if not machine:
        return "not recorded (the runner recorded no machine for these executions)"
    gpus = ", ".join(machine.get("gpus") or []) or "no GPU"
    return (f"{machine.get('cpu')}, {machine.get('cores')} cores ({machine.get('usable_cores')} usable), {gpus}; "
            f"the LLM computed in {machine.get('llm_dtype')}")  # fmt: skip


def run_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What a comparison needs of a run without its run folder (JSON-able): the results table, the
    test users' and data's identity, the machine, the kit."""
    root = Path(run_dir).resolve()
    config = read_json(_require(root / "config.json", "not a run folder (the runner writes config.json)"))
    # A run that stopped before notebook 07 (e.g. `--only 01 02 06`) has stages and no test results.
    evaluated = (root / "eval" / "results.csv").is_file()
    table = read_results(root) if evaluated else pd.DataFrame()
    per_user = per_user_results(root) if evaluated else {}
    users = sorted(int(u) for u in next(iter(per_user.values()))[0]["user_id"]) if per_user else []
    data_ids = sorted({str(man.get("inputs", {}).get("data")) for _, man in per_user.values()})
    times = notebook_times(root)
    machines = {sha256_json(t.get("machine")): t.get("machine") for t in times if t.get("machine")}
    num_candidates = int(config["data"]["num_negatives"]) + 1
    return {
        "format": SUMMARY_FORMAT,
        "run": root.name,
        "run_dir": _shown(root),
        "preset": config.get("preset"),
        "users": len(users),
        "users_id": sha256_json(users) if users else None,
        "data_id": data_ids[0] if len(data_ids) == 1 else data_ids or None,
        "num_candidates": num_candidates,
        "confidence": config.get("eval", {}).get("confidence"),
        "bootstrap": config.get("eval", {}).get("bootstrap"),
        "llm": {"backbone": config.get("llm", {}).get("backbone"), "dtype_setting": config.get("llm", {}).get("dtype")},
        "machines": list(machines.values()),
        "kits": dict(run_kits(root)),
        "table": {m: {k: {s: float(table.loc[m, (k, s)]) for s in ("mean", "ci_low", "ci_high")} for k in METRICS}
                  for m in table.index},  # fmt: skip
        "chance": {k: float(v) for k, v in chance_table(num_candidates).iloc[0].items()},
        "stages": stage_results(root),
    }


def load_reference(path: str | os.PathLike) -> dict[str, Any]:
    """A run to compare with: a run folder, a summary JSON written beside a page, or the page itself."""
    path = Path(path)
    if path.is_dir():
        return run_summary(path)
    if path.suffix == ".md":
        path = path.with_suffix(".json")
    summary = read_json(_require(path, "expected a run folder, a results page or its summary (.json)"))
    if not isinstance(summary, dict) or summary.get("format") != SUMMARY_FORMAT or "table" not in summary:
        raise DataError(f"{path}: not a results summary of format {SUMMARY_FORMAT} (written by the report command)")
    return summary


def summary_table(summary: dict[str, Any]) -> pd.DataFrame:
    """A summary's results as ``evaluation.results_table`` lays them out."""
    table = pd.DataFrame({m: {(k, s): v for k, stats in row.items() for s, v in stats.items()}
                          for m, row in summary["table"].items()}).T  # fmt: skip
    table.index.name = "method"
    return table


# --------------------------------------------------------------------------------------------
# The stages' own numbers (notebooks 02-06), read from the folders each stage wrote
# --------------------------------------------------------------------------------------------

# Validation columns of a teacher-shaped model: the shared candidate sets (where chance is known) and the
# full catalogue (the teachers' own selection protocol).
TEACHER_COLUMNS = (("candidates", "HR@1"), ("candidates", "NDCG@10"), ("full", "HR@10"), ("full", "NDCG@10"))
# What notebook 05 records of LLM-SRec's baselines (``metrics/05_llm_srec.json``): NDCG@10 on its validation users.
LLMSREC_BASELINE_METRIC = "NDCG@10"


def _stage_folders(stage_dir: Path, first: Sequence[str] = ()) -> list[Path]:
    """A stage's artifact folders, the run's configured names first (temporary and checkpoint folders,
    named with a leading dot, left out)."""
    if not stage_dir.is_dir():
        return []
    folders = [p for p in stage_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    order = {name: i for i, name in enumerate(first)}
    return sorted(folders, key=lambda p: (order.get(p.name, len(order)), p.name))


def _stage_file(directory: Path, name: str) -> Path:
    """``directory/name`` as the stage wrote it: listed in the folder's manifest with the same hash."""
    manifest = read_manifest(directory)
    path = directory / name
    if name not in manifest["outputs"]:
        raise DataError(f"{path}: not among the files {directory / MANIFEST_NAME} lists (another version of the "
                        "stage wrote the folder?); re-run the stage")  # fmt: skip
    verify_outputs(directory, {"outputs": {name: manifest["outputs"][name]}})
    return path


@contextlib.contextmanager
def _reading(path: Path):
    """Turns a missing field or column of a stage's file into an error naming that file."""
    try:
        yield
    except DataError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise DataError(f"{path}: unreadable as the stage writes it ({type(e).__name__}: {e}); re-run the stage "
                        "that wrote it") from e  # fmt: skip


def _stage_metrics(directory: Path) -> tuple[dict[str, Any], Path]:
    path = _stage_file(directory, "metrics.json")
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: expected a JSON object of metrics")
    return metrics, path


def _curve(directory: Path, x: str, y: str, best_step: int | None) -> list[dict[str, Any]]:
    """A stage's learning curve (``history.csv``): one point per evaluation, the selected step marked."""
    path = _stage_file(directory, "history.csv")
    try:
        history = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from e
    missing = [c for c in ("step", x, y) if c not in history.columns]
    if missing:
        raise DataError(f"{path}: no column {missing} (columns: {list(history.columns)}); re-run the stage that wrote it")
    with _reading(path):
        return [{"x": int(r[x]), "y": float(r[y]), "selected": best_step is not None and int(r["step"]) == int(best_step)}
                for _, r in history.dropna(subset=[y]).iterrows()]  # fmt: skip


def _teacher_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """Validation metrics of a teacher-shaped export (``teachers/stage.py``'s ``metrics.json``)."""
    valid, shown = metrics["valid"], {}
    for protocol, metric in TEACHER_COLUMNS:
        shown.setdefault(protocol, {})[metric] = {s: float(valid[protocol][metric][s]) for s in ("mean", "ci_low", "ci_high")}
    return {"valid": shown, "users": int(valid["candidates"]["users"]), "epochs": metrics.get("epochs"),
            "best_epoch": metrics.get("best_epoch"), "seconds": metrics.get("train_seconds")}  # fmt: skip


def _teachers_stage(paths: RunPaths, config: dict[str, Any]) -> dict[str, Any]:
    teachers = config.get("teachers", {})
    out = {}
    for d in _stage_folders(paths.teachers, ["popularity", *teachers.get("rules", ()), *teachers.get("models", ())]):
        metrics, path = _stage_metrics(d)
        with _reading(path):
            out[d.name] = _teacher_row(metrics)
    return out


def _distill_stage(paths: RunPaths, config: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for d in _stage_folders(paths.distill, config.get("distill", {}).get("prompts", ())):
        if d.name == DISTILL_MATCHED:  # the soft prompts' popularity-matched fidelities, read with each prompt below
            continue
        m, path = _stage_metrics(d)
        with _reading(path):
            out[d.name] = {
                "teacher": m["teacher"], "tasks": list(m["tasks"]),
                "report_users": int(m["heldout_users"]), "report_users_id": (m.get("report_users") or {}).get("hash"),
                "fidelity_before": m["fidelity_before"], "fidelity_after": m["fidelity_after"],
                "fidelity_baselines": m["fidelity_baselines"], "fidelity_chance": float(m["fidelity_chance"]),
                "picks_listed": ({"before": m["picks_listed_before"], "after": m["picks_listed_after"],
                                  "chance": float(m["picks_listed_chance"])} if "picks_listed_before" in m else None),
                "ta_accuracy_before": m.get("ta_accuracy_before"), "ta_accuracy_after": m.get("ta_accuracy_after"),
                "ta_baselines": m.get("ta_baselines") or {}, "ta_chance": m.get("ta_chance"),
                "selection": {"users": int(m["selection"]["users"]), "fidelity_before": float(m["selection"]["fidelity_before"]),
                              "fidelity_best": m["selection"]["fidelity_best"]},
                "train_users": m.get("train_users"), "steps": int(m["steps"]), "best_step": m.get("best_step"),
                "seconds": float(m["seconds"]),
            }  # fmt: skip
        out[d.name]["curve"] = _curve(d, "users_seen", "fidelity", out[d.name]["best_step"])
        matched = paths.distill_matched(d.name)
        if (matched / "metrics.json").is_file():  # the report users' popularity-matched examples (notebook 03)
            m, path = _stage_metrics(matched)
            with _reading(path):
                out[d.name]["matched"] = {k: m[k] for k in ("users", "fidelity_before", "fidelity_after", "fidelity_chance",
                                                            "fidelity_baselines")}  # fmt: skip
    return out


def _finetune_stage(paths: RunPaths, config: dict[str, Any]) -> dict[str, Any]:
    cfg = config.get("finetune", {})
    folders = _stage_folders(paths.finetune, cfg.get("variants", ()))
    metric = cfg.get("select_metric")
    if folders and metric is None:
        raise DataError(f"{paths.config_file}: no finetune.select_metric, the metric that selected stage 2's step")
    out = {}
    for d in folders:
        m, path = _stage_metrics(d)
        with _reading(path):
            out[d.name] = {
                "metric": metric, "valid_users": int(m["valid_users"]), "train_examples": int(m["train_examples"]),
                "before": {s: float(m["valid_before"][metric][s]) for s in ("mean", "ci_low", "ci_high")},
                "best": float(m["valid_best"][metric]),
                "baselines": {name: float(v[metric]) for name, v in m["valid_baselines"].items()},
                "steps": int(m["steps"]), "best_step": m.get("best_step"), "seconds": float(m["seconds"]),
                "train_seed": m.get("train_seed"),
            }  # fmt: skip
        out[d.name]["curve"] = _curve(d, "examples_seen", metric, out[d.name]["best_step"])
    return out


def _llmsrec_stage(paths: RunPaths, config: dict[str, Any]) -> dict[str, Any]:
    variants = {}
    metric = LLMSREC_BASELINE_METRIC
    for d in _stage_folders(paths.llmsrec, config.get("llmsrec", {}).get("variants", ())):
        m, path = _stage_metrics(d)
        with _reading(path):
            variants[d.name] = {
                "valid_users": int(m["valid_users"]), "train_examples": int(m["train_examples"]),
                "before": float(m["valid_before"][metric]), "best": float(m["valid_best"][metric]),
                "teacher_cosine_before": float(m["teacher_cosine_before"]), "teacher_cosine_best": float(m["teacher_cosine_best"]),
                "steps": int(m["steps"]), "best_step": m.get("best_step"), "seconds": float(m["seconds"]),
            }  # fmt: skip
    if not variants:
        return {}
    recorded = paths.metrics / "05_llm_srec.json"
    baselines = None
    if recorded.is_file():
        with _reading(recorded):
            baselines = {k: float(v) for k, v in read_json(recorded)["baselines"].items()}
    return {"metric": metric, "variants": variants, "baselines": baselines}


def _p2rec_stage(paths: RunPaths, config: dict[str, Any]) -> dict[str, Any]:
    sft, methods = {}, {}
    for d in _stage_folders(paths.p2rec, config.get("p2rec", {}).get("variants", ())):
        if d.name.startswith("sft-"):
            m, path = _stage_metrics(d)
            with _reading(path):
                sft[d.name] = {"k": int(m["k"]), "loss": m["loss"], "heldout_users": int(m["heldout_users"]),
                               **{p: {k: float(v) for k, v in m[f"heldout_{p}"].items()} for p in ("best", "prior", "uniform")},
                               "steps": int(m["steps"]), "best_step": m.get("best_step"), "seconds": float(m["train_seconds"])}  # fmt: skip
        elif d.name.startswith("p2rec-"):  # an enhanced teacher, exported as the teacher stage exports one
            m, path = _stage_metrics(d)
            with _reading(path):
                methods[d.name] = {**_teacher_row(m), "teacher": m["teacher"], "init": m.get("init")}
    return {"sft": sft, "methods": methods} if sft or methods else {}


def stage_results(run_dir: str | os.PathLike) -> dict[str, Any]:
    """{stage: its numbers} for the stages the run has (teachers, distill, finetune, llmsrec, p2rec), read
    from the files each stage wrote and checked against their manifests (JSON-able, the page's summary
    holds it). A stage without a folder is left out; a folder that cannot be read is an error naming the file."""
    paths = RunPaths(Path(run_dir))
    config = read_json(_require(paths.config_file, "not a run folder (the runner writes config.json)"))
    stages = {"teachers": _teachers_stage, "distill": _distill_stage, "finetune": _finetune_stage,
              "llmsrec": _llmsrec_stage, "p2rec": _p2rec_stage}  # fmt: skip
    out = {}
    for name, read in stages.items():
        found = read(paths, config)
        if found:
            out[name] = found
    return out


# --------------------------------------------------------------------------------------------
# Comparing runs
# --------------------------------------------------------------------------------------------


def _pairs(methods, a: list[str], b: list[str]) -> list[tuple[str, str]]:
    if methods is None:
        pairs = [(m, m) for m in a if m in b]
    else:
        pairs = [(m, m) if isinstance(m, str) else tuple(m) for m in methods]
    if not pairs:
        raise ComparisonError(f"the two runs have no method in common (first: {a}; second: {b})")
    return pairs


def _check_same_protocol(run_a: Path, run_b: Path, a: dict, b: dict, pairs: list[tuple[str, str]]) -> None:
    """Refuse, naming both run folders and what differs, unless every compared pair was evaluated on the
    same test users with the same candidate sets (the processed data's identity and each user's target
    position among its candidates)."""
    ids_a = {str(man.get("inputs", {}).get("data")) for _, man in a.values()}
    ids_b = {str(man.get("inputs", {}).get("data")) for _, man in b.values()}
    if ids_a != ids_b or len(ids_a) != 1:
        raise ComparisonError(
            f"{run_a} and {run_b} were evaluated on other candidate sets: processed data "
            f"{', '.join(i[:12] for i in sorted(ids_a))} against {', '.join(i[:12] for i in sorted(ids_b))} "
            "(the data_id their evaluations' manifests record)")  # fmt: skip
    for ma, mb in pairs:
        fa, fb = a[ma][0].set_index("user_id"), b[mb][0].set_index("user_id")
        only_a, only_b = sorted(set(fa.index) - set(fb.index)), sorted(set(fb.index) - set(fa.index))
        if only_a or only_b:
            raise ComparisonError(
                f"{run_a} ({ma}) and {run_b} ({mb}) were evaluated on other test users: {len(fa)} and {len(fb)} "
                f"users, {len(only_a)} only in the first (e.g. {only_a[:5]}), {len(only_b)} only in the second "
                f"(e.g. {only_b[:5]})")  # fmt: skip
        moved = fa.index[fa["target_position"].to_numpy() != fb.loc[fa.index, "target_position"].to_numpy()]
        if len(moved):
            raise ComparisonError(
                f"{run_a} ({ma}) and {run_b} ({mb}) ranked other candidate sets: the test target sits at another "
                f"position for {len(moved)} users (e.g. user {int(moved[0])})")  # fmt: skip


def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike, methods: Sequence[str | tuple[str, str]] | None = None,
                 *, metrics: Sequence[str] = HEADLINE_METRICS, seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Paired tests of two runs' per-user test results: each method of ``run_a`` against the method of the
    same name in ``run_b`` (``methods``: names, or (method in a, method in b) pairs; default every name
    both have), per metric: ``metrics.paired_test`` of a - b on the same users.

    Every test of the call is one family: ``p_holm`` is Holm's adjustment of their raw p-values. Refused
    (``ComparisonError``) when the runs were evaluated on other test users or candidate sets."""
    run_a, run_b = Path(run_a), Path(run_b)
    names_a = list(read_results(run_a).index) if (run_a / "eval" / "results.csv").is_file() else []
    names_b = list(read_results(run_b).index) if (run_b / "eval" / "results.csv").is_file() else []
    pairs = _pairs(methods, names_a, names_b)
    a = per_user_results(run_a, dict.fromkeys(ma for ma, _ in pairs))
    b = per_user_results(run_b, dict.fromkeys(mb for _, mb in pairs))
    _check_same_protocol(run_a, run_b, a, b, pairs)
    rows = []
    for ma, mb in pairs:
        fa = a[ma][0].set_index("user_id").sort_index()
        fb = b[mb][0].set_index("user_id").loc[fa.index]
        for m in metrics:
            test = paired_test(fa[m].to_numpy(), fb[m].to_numpy(), seed=seed)
            rows.append({"method": ma, "versus": mb, "metric": m, "mean_a": float(fa[m].mean()),
                         "mean_b": float(fb[m].mean()), **test})  # fmt: skip
    out = pd.DataFrame(rows)
    out["p_holm"] = holm_adjust(out["p_value"].to_numpy())
    out["family_size"] = len(out)
    return out[["method", "versus", "metric", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "p_value",
                "p_holm", "family_size", "users"]]  # fmt: skip


def _side_by_side(x: dict[str, float], r: dict[str, float]) -> dict[str, str]:
    """One number of this run and the reference with their intervals; they agree *within the intervals*
    when each mean lies inside the other's interval."""
    within = r["ci_low"] <= x["mean"] <= r["ci_high"] and x["ci_low"] <= r["mean"] <= x["ci_high"]
    return {"run": _ci(x), "reference": _ci(r), "difference": f"{x['mean'] - r['mean']:+.4f}",
            "within the intervals": "yes" if within else "NO"}  # fmt: skip


def reference_comparison(run: dict[str, Any], reference: dict[str, Any]) -> pd.DataFrame:
    """Every metric of every method both have, side by side with its interval, and whether the two agree
    within their intervals: each run's mean lies inside the other run's interval."""
    rows = []
    for method, row in run["table"].items():
        if method not in reference["table"]:
            continue
        for metric in METRICS:
            rows.append({"method": method, "metric": metric, **_side_by_side(row[metric], reference["table"][method][metric])})
    return pd.DataFrame(rows).set_index("method")


STAGE1_COMPARED = {"fidelity_before": "RPS fidelity, untrained prompt", "fidelity_after": "RPS fidelity, trained",
                   "ta_accuracy_before": "TA accuracy, untrained prompt", "ta_accuracy_after": "TA accuracy, trained"}  # fmt: skip


def stage1_comparison(run: dict[str, Any], reference: dict[str, Any]) -> pd.DataFrame:
    """Stage 1's report-set numbers of every soft prompt both runs trained, side by side with their
    intervals (the rule of ``reference_comparison``), and whether the two report sets are the same users.
    Empty when either summary has no stage 1 (summaries written before the stages were recorded)."""
    mine = (run.get("stages") or {}).get("distill", {})
    theirs = (reference.get("stages") or {}).get("distill", {})
    rows = []
    for prompt, x in mine.items():
        r = theirs.get(prompt)
        if r is None:
            continue
        same = x.get("report_users_id") is not None and x.get("report_users_id") == r.get("report_users_id")
        for key, label in STAGE1_COMPARED.items():
            if x.get(key) is not None and r.get(key) is not None:
                rows.append({"prompt": prompt, "report set": label, **_side_by_side(x[key], r[key]),
                             "same report users": "yes" if same else "NO"})  # fmt: skip
    return pd.DataFrame(rows).set_index("prompt") if rows else pd.DataFrame()


def _ci(stats: dict[str, float], digits: int = 4) -> str:
    return f"{stats['mean']:.{digits}f} [{stats['ci_low']:.{digits}f}, {stats['ci_high']:.{digits}f}]"


# --------------------------------------------------------------------------------------------
# Rendering the executed notebooks
# --------------------------------------------------------------------------------------------

_STYLE = re.compile(r"<style[^>]*>.*?</style>\s*", re.DOTALL)


def render_notebooks(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Each executed notebook of the run (``<run>/notebooks/NN_*.ipynb``) as Markdown with its figures
    (``<stem>_files/``) in ``out_dir``, which is replaced as a whole. Returns the pages."""
    import nbformat
    from nbconvert import MarkdownExporter

    notebooks = sorted((Path(run_dir) / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    exporter = MarkdownExporter()
    pages = []
    with atomic_dir(out_dir) as tmp:
        for path in notebooks:
            nb = nbformat.read(path, as_version=4)
            for cell in nb.cells:
                for output in cell.get("outputs", []):
                    # pandas' table CSS would show as text where Markdown is rendered (GitHub drops <style>)
                    if "text/html" in output.get("data", {}):
                        output["data"]["text/html"] = _STYLE.sub("", output["data"]["text/html"])
            body, resources = exporter.from_notebook_node(
                nb, resources={"output_files_dir": f"{path.stem}_files", "unique_key": path.stem})  # fmt: skip
            for name, data in resources.get("outputs", {}).items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(data)
            (tmp / f"{path.stem}.md").write_text(body, encoding="utf-8")
            pages.append(Path(out_dir) / f"{path.stem}.md")
    return pages


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(float(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _table(frame: pd.DataFrame, digits: int = 4, index: bool = True) -> str:
    shown = frame.copy()
    for c in shown.columns:
        if pd.api.types.is_float_dtype(shown[c]):
            shown[c] = [("" if np.isnan(v) else f"{v:.{digits}f}") for v in shown[c]]
    if not index:
        shown = shown.set_index(shown.columns[0])
    return markdown_table(shown)


def _p(p: float) -> str:
    return f"{p:.3g}"


def headline(summary: dict[str, Any]) -> str:
    """The headline block: every method's HR@1 and NDCG@10 with intervals, chance beside."""
    table = summary_table(summary)
    rows = format_table(table)[list(HEADLINE_METRICS)]
    chance = pd.DataFrame({k: [f"{summary['chance'][k]:.4f}"] for k in HEADLINE_METRICS},
                          index=pd.Index(["chance (expected)"], name="method"))  # fmt: skip
    conf = summary.get("confidence") or 0.95
    caption = (f"Run `{summary['run']}` (preset {summary['preset']}), test split: {summary['users']} users, "
               f"{summary['num_candidates']} candidates each (the target and {summary['num_candidates'] - 1} items the "
               f"user never interacted with); mean over users with its {conf:.0%} bootstrap interval "
               f"({summary.get('bootstrap')} resamples); the last row is what a random ranking gets.")  # fmt: skip
    return caption + "\n\n" + markdown_table(pd.concat([rows, chance]))


def _marked(kind: str, run: str, body: str) -> str:
    return f"<!-- {kind}:{run}:start -->\n{body.strip()}\n<!-- {kind}:{run}:end -->\n"


def _between(text: str, kind: str, run: str, where: str) -> str:
    found = re.findall(rf"<!-- {kind}:{re.escape(run)}:start -->\n(.*?)<!-- {kind}:{re.escape(run)}:end -->", text, re.DOTALL)
    if len(found) != 1:
        raise DataError(f"{where}: expected one '<!-- {kind}:{run}:start -->' ... '<!-- {kind}:{run}:end -->' block, "
                        f"found {len(found)}")  # fmt: skip
    return found[0].strip()


def page_headline(page: str, where: str = "the page") -> tuple[str, str]:
    """(run name, headline block) of a results page."""
    runs = re.findall(r"<!-- headline:(.+?):start -->", page)
    if len(runs) != 1:
        raise DataError(f"{where}: expected one headline block, found {len(runs)}")
    return runs[0], _between(page, "headline", runs[0], where)


def readme_block(readme: str, run: str, where: str = "README") -> str:
    """What the README holds between its markers for ``run``."""
    return _between(readme, "results", run, where)


def update_readme(readme: str | os.PathLike, page: str | os.PathLike) -> str:
    """Replace what the README holds between ``<!-- results:<run>:start -->`` and ``...:end -->`` with the
    page's headline block; returns the run's name."""
    readme, page = Path(readme), Path(page)
    run, block = page_headline(page.read_text(encoding="utf-8"), str(page))
    text = readme.read_text(encoding="utf-8")
    readme_block(text, run, str(readme))  # exactly one block, or a clear error
    pattern = re.compile(rf"<!-- results:{re.escape(run)}:start -->\n.*?<!-- results:{re.escape(run)}:end -->\n?", re.DOTALL)
    atomic_write_text(readme, pattern.sub(lambda _: _marked("results", run, block), text, count=1))
    return run


def _machines(summary: dict[str, Any]) -> str:
    machines = summary.get("machines") or [None]
    return "; ".join(describe_machine(m) for m in machines)


def _kits(summary: dict[str, Any]) -> str:
    return "; ".join(f"{kit} ({n} artifacts)" for kit, n in summary.get("kits", {}).items()) or "not recorded"


def _run_section(root: Path, summary: dict[str, Any]) -> list[str]:
    versions = {k: v for m in summary.get("machines") or [] for k, v in (m.get("versions") or {}).items()}
    lines = ["## The run", "",
             f"- Run folder `{summary['run_dir']}`, preset `{summary['preset']}`; "
             + (f"processed data `{str(summary['data_id'])[:12]}`, {summary['users']} test users."
                if summary["users"] else "not evaluated on the test split."),
             f"- Machine: {_machines(summary)}.",
             f"- LLM: `{summary['llm']['backbone']}`, `llm.dtype = {summary['llm']['dtype_setting']}`.",
             f"- Kit: {_kits(summary)}.",
             "- Libraries: " + (", ".join(f"{k} {v}" for k, v in versions.items()) or "not recorded") + ".",
             ""]  # fmt: skip
    times = notebook_times(root)
    if times:
        rows = pd.DataFrame([{"notebook": t["notebook"], "wall time": _duration(t["seconds"]),
                              "where it went": where_time_went(t),
                              "started": t.get("started_at") or "", "executions": t["executions"],
                              "note": _time_note(t)} for t in times]).set_index("notebook")  # fmt: skip
        total = sum(float(t["seconds"]) + sum(e["seconds"] for e in t["earlier"]) for t in times)
        lines += ["### Time per notebook", "",
                  "The execution that computed each notebook's results (`timings.json`): the last that wrote "
                  "artifacts, with any earlier execution whose artifacts the results still hold (a later one "
                  f"recomputed only part of the notebook's work). In all, those executions took {_duration(total)}.",
                  "", markdown_table(rows)]  # fmt: skip
    else:
        lines += ["No notebook execution recorded (`timings.json`).", ""]
    return lines


def _eval_sections(root: Path, summary: dict[str, Any]) -> list[str]:
    ev = root / "eval"
    table = summary_table(summary)
    chance = chance_table(summary["num_candidates"])
    lines = ["## Every metric", "",
             f"Test split, {summary['users']} users, {summary['num_candidates']} candidates each; mean "
             "[interval] over users (`eval/results.csv`).", "",
             markdown_table(pd.concat([format_table(table), chance]))]  # fmt: skip
    if (ev / "paired_tests.csv").is_file():
        paired = pd.read_csv(ev / "paired_tests.csv")
        if len(paired):
            shown = pd.DataFrame({"method": paired["method"], "versus": paired["versus"], "metric": paired["metric"],
                                  "difference [interval]": [f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" for d, lo, hi in
                                                            zip(paired["mean_diff"], paired["ci_low"], paired["ci_high"], strict=True)],
                                  "p": paired["p_value"].map(_p), "p (Holm)": paired["p_holm"].map(_p),
                                  "family": paired["family"], "users": paired["users"]}).set_index("method")  # fmt: skip
            lines += ["## Paired tests", "",
                      "Sign-flip permutation tests of the per-user difference on the same users (`eval/paired_tests.csv`); "
                      f"a difference is significant where its Holm-adjusted p (within its family) is below {ALPHA}.", "",
                      markdown_table(shown)]  # fmt: skip
    f = ev / "results_matched.md"
    if f.is_file():
        lines += ["## Popularity-matched candidates", "",
                  "The first users ranked again on their second candidate set, whose 19 negatives share the target's "
                  "bin of train-interaction counts (`eval/results_matched.csv`): popularity is near chance there, so a "
                  "method above chance learned something beyond item popularity.", "", f.read_text(encoding="utf-8")]  # fmt: skip
    for protocol in ("masked", "unmasked"):
        f = ev / f"catalogue_{protocol}.md"
        if f.is_file():
            what = "history masked" if protocol == "masked" else "every item, history included"
            lines += [f"## Full catalogue ({what})", "", f.read_text(encoding="utf-8")]
    f = ev / "generation_protocol.csv"
    if f.is_file() and f.stat().st_size > 2:
        generation = pd.read_csv(f, index_col=0)
        if len(generation):
            generation.index.name = "method"
            lines += ["## Generation protocol (LLaRA-compatible)", "", _table(generation)]
    f = ev / "seed_summary.csv"
    if f.is_file():
        lines += ["## Seed study", "", _table(pd.read_csv(f), index=False)]
    return lines


def _analysis_sections(root: Path) -> list[str]:
    lines = []
    f = root / "metrics" / "08_analysis.json"
    analysis = read_json(f) if f.is_file() else {}
    if analysis.get("order"):
        order = pd.DataFrame(analysis["order"])
        shown = order[["method", "metric", "users", "original", "shuffled", "drop"]].copy()
        shown["drop interval"] = [f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in zip(order["drop_ci_low"], order["drop_ci_high"], strict=True)]
        shown["p"], shown["p (Holm)"] = order["p_value"].map(_p), order["p_holm"].map(_p)
        lines += ["## Order diagnostic", "", "Each method's visible history shuffled at test time, on the same users "
                  "(one Holm family).", "", _table(shown, index=False)]  # fmt: skip
    if analysis.get("agreement"):
        lines += ["## Teacher agreement", "", _table(pd.DataFrame(analysis["agreement"]), index=False)]
    if (root / "eval" / "reading.md").is_file():
        lines += ["## The reading", "", "As notebook 08 wrote it (`eval/reading.md`).", "",
                  (root / "eval" / "reading.md").read_text(encoding="utf-8").strip(), ""]  # fmt: skip
    return lines


def _maybe_ci(stats: dict[str, float] | None) -> str:
    return "not measured" if stats is None else _ci(stats)


def _points(curve: list[dict[str, Any]]) -> str:
    """A learning curve in one cell: ``x: y`` per evaluation, the selected step marked *."""
    return ", ".join(f"{p['x']}: {p['y']:.3f}" + ("*" if p["selected"] else "") for p in curve)


def _steps(stage: dict[str, Any]) -> str:
    return f"{stage['steps']} ({stage['best_step'] if stage['best_step'] is not None else 'last'})"


def _each(columns: dict[str, Any], cell) -> dict[str, str]:
    """One row of a table with a column per prompt or variant: ``cell`` of each."""
    return {name: cell(stage) for name, stage in columns.items()}


def _columns_table(rows: dict[str, dict[str, str]], columns: list[str], label: str) -> str:
    """Rows of quantities, one column per prompt or variant (a quantity a column lacks left blank)."""
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=columns, dtype=object).fillna("")
    frame.index.name = label
    return markdown_table(frame)


def _distill_section(prompts: dict[str, Any]) -> list[str]:
    rps = list(dict.fromkeys(h for p in prompts.values() for h in p["fidelity_baselines"]))
    ta = list(dict.fromkeys(h for p in prompts.values() for h in p["ta_baselines"]))
    each = partial(_each, prompts)
    rows = {
        "teacher (tasks trained)": each(lambda p: f"{p['teacher']} ({' + '.join(t.upper() for t in p['tasks'])})"),
        "report users": each(lambda p: str(p["report_users"])),
        "RPS fidelity, untrained prompt": each(lambda p: _ci(p["fidelity_before"])),
        "RPS fidelity, trained (selected step)": each(lambda p: _ci(p["fidelity_after"])),
        **{f"RPS: {h}": {n: _ci(p["fidelity_baselines"][h]) for n, p in prompts.items() if h in p["fidelity_baselines"]} for h in rps},
        "RPS: chance": each(lambda p: f"{p['fidelity_chance']:.4f}"),
        "RPS: LLM's first choice is a title the prompt lists (untrained -> trained; chance)": {
            n: f"{_ci(p['picks_listed']['before'])} -> {_ci(p['picks_listed']['after'])}; {p['picks_listed']['chance']:.4f}"
            for n, p in prompts.items() if p.get("picks_listed")},
        "popularity-matched RPS, users": {n: str(p["matched"]["users"]) for n, p in prompts.items() if "matched" in p},
        "popularity-matched RPS fidelity, untrained prompt": {n: _ci(p["matched"]["fidelity_before"]) for n, p in prompts.items() if "matched" in p},
        "popularity-matched RPS fidelity, trained": {n: _ci(p["matched"]["fidelity_after"]) for n, p in prompts.items() if "matched" in p},
        **{f"popularity-matched RPS: {h}": {n: _ci(p["matched"]["fidelity_baselines"][h]) for n, p in prompts.items()
                                             if "matched" in p and h in p["matched"]["fidelity_baselines"]} for h in rps},
        "popularity-matched RPS: chance": {n: f"{p['matched']['fidelity_chance']:.4f}" for n, p in prompts.items() if "matched" in p},
        "TA accuracy, untrained prompt": each(lambda p: _maybe_ci(p["ta_accuracy_before"])),
        "TA accuracy, trained (selected step)": each(lambda p: _maybe_ci(p["ta_accuracy_after"])),
        **{f"TA: {h}": {n: _ci(p["ta_baselines"][h]) for n, p in prompts.items() if h in p["ta_baselines"]} for h in ta},
        "TA: chance": each(lambda p: "" if p["ta_chance"] is None else f"{p['ta_chance']:.4f}"),
        "selection set: users, fidelity untrained -> selected step": each(
            lambda p: f"{p['selection']['users']}: {p['selection']['fidelity_before']:.4f} -> "
                      + ("" if p["selection"]["fidelity_best"] is None else f"{p['selection']['fidelity_best']:.4f}")),
        "selection fidelity by users seen (* selected)": each(lambda p: _points(p["curve"])),
        "steps (selected step)": each(_steps),
        "training users; seconds": each(lambda p: f"{p['train_users']}; {p['seconds']:.0f} s"),
    }  # fmt: skip
    rows = {k: v for k, v in rows.items() if v}  # no prompt has it (the popularity-matched rows of older runs)
    return ["### Stage 1: soft-prompt distillation (notebook 03)", "",
            "On the report set: the run's fixed report users, never trained on, never an in-context example, "
            "not used to pick the step; mean [95% bootstrap interval] over users (`distill/<prompt>/metrics.json`). "
            "RPS fidelity: the LLM's top-1 is the teacher's top-1; TA accuracy: the LLM picks the hidden latest item. "
            "The heuristics rank the very same examples without a model. The selection set picked the step, so its "
            "fidelity there is optimistic; its curve is `history.csv`. The popularity-matched rows rank the same "
            "users' examples with their random candidates drawn from the teacher top-1's popularity band "
            "(`distill/matched/<prompt>/`): there the popularity heuristics fall towards chance.", "",
            _columns_table(rows, list(prompts), "prompt")]  # fmt: skip


def _finetune_section(variants: dict[str, Any]) -> list[str]:
    metric = next(iter(variants.values()))["metric"]
    names = list(dict.fromkeys(b for v in variants.values() for b in v["baselines"] if b != "chance"))
    each = partial(_each, variants)
    rows = {
        "validation users": each(lambda v: str(v["valid_users"])),
        f"valid {metric}, before training": each(lambda v: _ci(v["before"])),
        f"valid {metric}, selected step": each(lambda v: f"{v['best']:.4f}"),
        **{f"{b} (same examples)": {n: f"{v['baselines'][b]:.4f}" for n, v in variants.items() if b in v["baselines"]} for b in names},
        "chance (same examples)": {n: f"{v['baselines']['chance']:.4f}" for n, v in variants.items() if "chance" in v["baselines"]},
        f"valid {metric} by examples seen (* selected)": each(lambda v: _points(v["curve"])),
        "steps (selected step)": each(_steps),
        "training examples; seconds": each(lambda v: f"{v['train_examples']}; {v['seconds']:.0f} s"),
    }  # fmt: skip
    return ["### Stage 2: LLM fine-tuning (notebook 04)", "",
            f"Validation users' shared candidate sets; {metric} picks the step (so the selected step's value is "
            "optimistic), popularity, the teachers and chance ranked the same examples (`finetune/<variant>/metrics.json`, "
            "curve `history.csv`). Before training: mean [95% bootstrap interval].", "",
            _columns_table(rows, list(variants), "variant")]  # fmt: skip


def _teacher_rows(rows: dict[str, dict[str, Any]], num_candidates: int | None) -> pd.DataFrame:
    out = {}
    for name, r in rows.items():
        out[name] = {f"{p} {k}": _ci(r["valid"][p][k]) for p, k in TEACHER_COLUMNS}
        out[name]["users"] = str(r["users"])
        out[name]["epochs (best)"] = "" if r.get("epochs") is None else f"{r['epochs']} ({r.get('best_epoch')})"
        out[name]["seconds"] = "" if r.get("seconds") is None else f"{r['seconds']:.0f}"
    if num_candidates:
        chance = chance_table(num_candidates).iloc[0]
        out["chance (expected)"] = {f"{p} {k}": chance[k] if p == "candidates" else "" for p, k in TEACHER_COLUMNS}
    frame = pd.DataFrame.from_dict(out, orient="index", dtype=object).fillna("")
    frame.index.name = "model"
    return frame


def _llmsrec_section(stage: dict[str, Any]) -> list[str]:
    metric = stage["metric"]
    rows = {n: {f"valid {metric}": f"{v['best']:.4f}", "before training": f"{v['before']:.4f}",
                "user/teacher cosine, before -> selected": f"{v['teacher_cosine_before']:.3f} -> {v['teacher_cosine_best']:.3f}",
                "steps (selected step)": _steps(v), "seconds": f"{v['seconds']:.0f}", "validation users": str(v["valid_users"])}
            for n, v in stage["variants"].items()}  # fmt: skip
    for name, value in (stage["baselines"] or {}).items():
        rows[f"{name} (same examples)"] = {f"valid {metric}": f"{value:.4f}"}
    frame = pd.DataFrame.from_dict(rows, orient="index", dtype=object).fillna("")
    frame.index.name = "method"
    note = ("" if stage["baselines"] else " Notebook 05 recorded no baselines (`metrics/05_llm_srec.json`): "
            "the variants stand alone here.")  # fmt: skip
    return ["### LLM-SRec (notebook 05)", "",
            f"Validation users' shared candidate sets, {metric} at the step it selected (optimistic) and before training "
            "(`llmsrec/<variant>/metrics.json`), beside the teacher, popularity and chance on the same users as notebook 05 "
            "recorded them." + note, "", markdown_table(frame)]  # fmt: skip


def _p2rec_section(stage: dict[str, Any], teachers: dict[str, Any], num_candidates: int) -> list[str]:
    lines = ["### P2Rec (notebook 06)", ""]
    if stage["sft"]:
        rows = {}
        for name, s in stage["sft"].items():
            for key, label in (("best", "tuned LLM"), ("prior", "training users' mean"), ("uniform", "uniform")):
                rows[f"{name}: {label}"] = {**{k: f"{v:.4f}" for k, v in s[key].items()}, "held-out users": str(s["heldout_users"]),
                                            "steps (selected step)": _steps(s) if key == "best" else "",
                                            "seconds": f"{s['seconds']:.0f}" if key == "best" else ""}  # fmt: skip
        frame = pd.DataFrame.from_dict(rows, orient="index", dtype=object).fillna("")
        frame.index.name = "SFT (K categories)"
        lines += ["User-level SFT: each held-out user's category distribution predicted by the tuned LLM, beside two "
                  "predictions without a model (`p2rec/sft-*/metrics.json`; the loss named in each folder selects the step).",
                  "", markdown_table(frame)]  # fmt: skip
    if stage["methods"]:
        plain = dict.fromkeys(["popularity", *(m["teacher"] for m in stage["methods"].values())])
        rows = {**{n: teachers[n] for n in plain if n in teachers}, **stage["methods"]}
        lines += ["Enhanced teachers (item table initialised from the LLM) beside the plain teachers and popularity, "
                  "validation split, mean [95% bootstrap interval] (`p2rec/<method>/metrics.json`).", "",
                  markdown_table(_teacher_rows(rows, num_candidates))]  # fmt: skip
    return lines


def _stage_sections(summary: dict[str, Any]) -> list[str]:
    """Each stage's own numbers, every LLM figure beside what the heuristics got on the same examples."""
    stages = summary.get("stages") or {}
    if not stages:
        return []
    lines = ["## Stages", "", "Each stage's own numbers, as its folder records them (notebooks 02-06).", ""]
    if "teachers" in stages:
        lines += ["### Teachers (notebook 02)", "",
                  "Validation split (early stopping's), mean [95% bootstrap interval] over users "
                  "(`teachers/<name>/metrics.json`): the shared candidate sets and the full catalogue (history excluded).",
                  "", markdown_table(_teacher_rows(stages["teachers"], summary["num_candidates"]))]  # fmt: skip
    if "distill" in stages:
        lines += _distill_section(stages["distill"])
    if "finetune" in stages:
        lines += _finetune_section(stages["finetune"])
    if "llmsrec" in stages:
        lines += _llmsrec_section(stages["llmsrec"])
    if "p2rec" in stages:
        lines += _p2rec_section(stages["p2rec"], stages.get("teachers", {}), summary["num_candidates"])
    return lines


def _figures(root: Path, page_dir: Path, copy_to: Path | None) -> list[str]:
    figures = sorted((root / "figures").glob("*.png"))
    if not figures:
        return []
    lines = ["## Figures", ""]
    if copy_to is not None:  # the page lives outside the run folder: its figures go with it
        with atomic_dir(copy_to) as tmp:
            for f in figures:
                shutil.copy2(f, tmp / f.name)
        figures = [copy_to / f.name for f in figures]
    for f in figures:
        lines += [f"![{f.stem}]({Path(os.path.relpath(f, page_dir)).as_posix()})", ""]
    return lines


def _comparison_section(root: Path, summary: dict[str, Any], other: Path, seed: int) -> list[str]:
    if not (other / "config.json").is_file():
        raise DataError(f"--compare {other}: not a run folder (no config.json); a results page or its summary is "
                        "compared metric by metric with --reference")  # fmt: skip
    theirs = run_summary(other)
    paired = compare_runs(root, other, seed=seed)
    shown = pd.DataFrame({
        "method": paired["method"], "metric": paired["metric"], "this run": paired["mean_a"].map("{:.4f}".format),
        f"run `{theirs['run']}`": paired["mean_b"].map("{:.4f}".format),
        "difference [interval]": [f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" for d, lo, hi in
                                  zip(paired["mean_diff"], paired["ci_low"], paired["ci_high"], strict=True)],
        "p": paired["p_value"].map(_p), "p (Holm)": paired["p_holm"].map(_p)}).set_index("method")  # fmt: skip
    return [f"## Compared with run `{theirs['run']}`", "",
            f"Paired sign-flip tests of this run's per-user results against `{theirs['run_dir']}`'s for each method "
            f"both have, on the same {paired['users'].iloc[0]} test users and candidate sets; the {len(paired)} tests "
            f"are one Holm family. This run: {_machines(summary)}; kit {_kits(summary)}. `{theirs['run']}`: "
            f"{_machines(theirs)}; kit {_kits(theirs)}.", "", markdown_table(shown)]  # fmt: skip


def _reference_section(summary: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    table = reference_comparison(summary, reference)
    same_users = summary["users_id"] == reference.get("users_id")
    same_data = summary["data_id"] == reference.get("data_id")
    missing = [m for m in summary["table"] if m not in reference["table"]]
    agree = int((table["within the intervals"] == "yes").sum())
    return [f"## Compared with the reference `{reference['run']}`", "",
            f"The reference: `{reference.get('run_dir')}`, {_machines(reference)}; kit {_kits(reference)}.",
            f"This run: {_machines(summary)}; kit {_kits(summary)}.",
            f"Same test users: {'yes' if same_users else 'NO'}; same processed data (candidate sets): "
            f"{'yes' if same_data else 'NO'}." + ("" if same_users and same_data else
                                                 " The runs ranked other examples, so their numbers may differ for that reason alone."),
            "",
            "Rule: a metric agrees *within the intervals* when each run's mean lies inside the other run's "
            f"{(summary.get('confidence') or 0.95):.0%} interval. {agree} of {len(table)} agree."
            + (f" Methods the reference does not have: {', '.join(missing)}." if missing else ""), "",
            markdown_table(table)] + _stage1_reference(summary, reference)  # fmt: skip


def _stage1_reference(summary: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    table = stage1_comparison(summary, reference)
    if table.empty:
        return []
    agree = int((table["within the intervals"] == "yes").sum())
    return ["### Stage 1 on the report set", "",
            f"Each soft prompt both runs trained, on its report set (95% bootstrap intervals), by the same rule: "
            f"{agree} of {len(table)} agree.", "", markdown_table(table)]  # fmt: skip


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, compare: Sequence[str | os.PathLike] = (),
                 reference: str | os.PathLike | None = None, *, notebooks: bool = True,
                 notebooks_dir: str | os.PathLike | None = None) -> Path:  # fmt: skip
    """Write the run's results page (default ``<run>/report/<run>.md``) and its summary (``<page>.json``).

    ``compare``: other run folders, each compared user by user (``compare_runs``); ``reference``: a run
    folder or a page's summary, compared metric by metric with intervals. ``notebooks``: render the run's
    executed notebooks into ``notebooks_dir`` (default ``<run>/report/notebooks``), linked from the page.
    Figures are linked where they are when the page is inside the run folder, else copied beside it
    (``<page stem>_figures/``)."""
    root = Path(run_dir).resolve()
    _require(root / "config.json", "not a run folder (the runner writes config.json)")
    out = Path(out).resolve() if out else root / "report" / f"{root.name}.md"
    summary = run_summary(root)
    seed = int(read_json(root / "config.json").get("eval", {}).get("seed", 0))
    lines = [f"# Results of run `{summary['run']}`", "",
             f"Written by `python -m delrec_lib report` from the run folder `{summary['run_dir']}`: every number "
             "below is read from the run's files. Regenerate the page; do not edit it.", ""]  # fmt: skip
    lines += _run_section(root, summary)
    if summary["table"]:
        lines += ["## Headline", "", _marked("headline", summary["run"], headline(summary))]
        lines += _eval_sections(root, summary)
        lines += _analysis_sections(root)
    else:
        lines += ["## Test results", "", "None: this run stopped before the evaluation (notebook 07), so the page "
                  "shows its stages' own numbers only.", ""]  # fmt: skip
    lines += _stage_sections(summary)
    lines += _figures(root, out.parent, None if out.is_relative_to(root) else out.parent / f"{out.stem}_figures")
    if notebooks:
        target = Path(notebooks_dir).resolve() if notebooks_dir else root / "report" / "notebooks"
        pages = render_notebooks(root, target)
        if pages:
            size = folder_size(target)
            shown = f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"
            lines += ["## Executed notebooks", "",
                      f"Rendered to Markdown with their outputs and figures ({shown} in all):", ""]
            lines += [f"- [{p.stem}]({Path(os.path.relpath(p, out.parent)).as_posix()})" for p in pages] + [""]
    for other in compare:
        lines += _comparison_section(root, summary, Path(other).resolve(), seed)
    if reference is not None:
        lines += _reference_section(summary, load_reference(reference))
    atomic_write_text(out, "\n".join(lines).rstrip() + "\n")
    atomic_write_json(out.with_suffix(".json"), summary)
    return out


def readme_runs(readme: str | os.PathLike) -> list[str]:
    """The runs whose headline tables the README holds between markers."""
    return re.findall(r"<!-- results:(.+?):start -->", Path(readme).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Stage 1 across runs: one soft prompt trained under different settings
# --------------------------------------------------------------------------------------------


def stage1_study(run_dirs: Sequence[str | os.PathLike], prompt: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Soft prompt ``prompt`` as each run trained it (a run given as "RUN:PROMPT" its own prompt, e.g. another rule
    teacher's): one row per run (its head, prompt depth, RPS candidates, rate, tokens and initialisation text, history
    titles, users per step, held-out tasks, report-set fidelity before and after with intervals, the best heuristic
    on the same examples, chance, how often its first choice is a title the prompt lists, the popularity-matched
    fidelity where measured, steps, seconds and how far the prompt moved), and the selection-set fidelity per step,
    one column per run. Refused unless every run scored the same report users."""
    from .delrec.distill import LONGEST_UNLISTED

    rows, curves, report_sets = [], {}, {}
    for name, (run, own, directory) in _stage1_named_runs(run_dirs, prompt).items():
        manifest = read_manifest(directory, "soft-prompt")
        verify_outputs(directory, manifest)
        m = read_json(directory / "metrics.json")
        cfg, llm = manifest["config"]["distill"], manifest["config"]["llm"]
        report_sets[name] = (m.get("report_users") or {}).get("hash")
        best = max(m["fidelity_baselines"].items(), key=lambda kv: kv[1]["mean"])
        if LONGEST_UNLISTED not in m["fidelity_baselines"]:  # (runs before the title-length heuristic)
            best = (best[0] + " (title length not measured)", best[1])
        listed = (f"{_ci(m['picks_listed_before'], 3)} -> {_ci(m['picks_listed_after'], 3)}"
                  if "picks_listed_before" in m else "-")  # (runs before it was recorded)
        teacher = Path(run) / "teachers" / manifest["config"]["teacher"] / "manifest.json"
        rows.append({"run": name, "prompt": own or prompt,
                     # the teacher's settings (its manifest's config hash): the same for runs of the same teacher
                     "teacher config": read_json(teacher)["config_hash"][:8] if teacher.is_file() else "-",
                     "trains": cfg.get("trainable", "prompt"),
                     "head": llm.get("head", "title"),  # (runs before the field: title)
                     "candidates listed": bool(llm.get("list_candidates")) or llm.get("head") == "index",
                     "prompt depth": cfg.get("prompt_depth", "input"),
                     "RPS candidates": f"{cfg['rps_top_k']} + {cfg['rps_random']}",
                     "loss": cfg.get("loss", "ce"),  # (runs before the field: cross-entropy)
                     "lr": cfg["lr"], "lr schedule": cfg.get("schedule", "constant"),  # (runs before the field: held)
                     "soft tokens": cfg["num_soft_tokens"], "init text": cfg["init_text"],
                     "history titles": llm["history_len"],
                     "users per step": f"{cfg['batch_size']} x {cfg['grad_accum']}",  # micro-batch x accumulation
                     "held-out tasks": cfg.get("heldout_tasks", "all"),  # (runs before the field: all)
                     "steps": int(m["steps"]), "report users": int(m["heldout_users"]),
                     "fidelity before": _ci(m["fidelity_before"], 3), "fidelity after": _ci(m["fidelity_after"], 3),
                     "best heuristic": f"{best[0]}: {_ci(best[1], 3)}", "chance": round(float(m["fidelity_chance"]), 3),
                     "picks a listed title, before -> after": listed,
                     "TA accuracy, before -> after (best heuristic)": _ta_cell(m),
                     "popularity-matched fidelity, before -> after (chance)": _matched_cell(
                         Path(run) / "distill" / DISTILL_MATCHED / (own or prompt), manifest),
                     "prompt moved": round(float(m.get("soft_prompt_moved", float("nan"))), 3),
                     "seconds": round(float(m["seconds"])), "kit": describe_kit(manifest.get("kit"))})  # fmt: skip
        history = pd.read_csv(directory / "history.csv")
        curves[name] = history.set_index("step")["fidelity"]
    if len(set(report_sets.values())) > 1:
        raise DataError(f"stage1_study: the runs scored {prompt} on different report users ({report_sets}); "
                        "only runs on the same report set are compared")  # fmt: skip
    return pd.DataFrame(rows).set_index("run"), pd.DataFrame(curves)


def _stage1_run(spec: str | os.PathLike, prompt: str) -> tuple[str, str, Path]:
    """(run folder, its own prompt or "", the soft prompt's folder) of a stage-1 study's "RUN" or "RUN:PROMPT"."""
    run, _, own = str(spec).partition(":")  # "RUN:PROMPT": that run's own soft prompt (another rule teacher)
    return run, own, Path(run) / "distill" / (own or prompt)


def _stage1_named_runs(run_dirs: Sequence[str | os.PathLike], prompt: str) -> dict[str, tuple[str, str, Path]]:
    """A stage-1 study's runs by their row names: the run folder's name, and a copy of the prompt in the same run
    ("RUN:<prompt>-seed1") by its suffix ("RUN-seed1"). Refused when two runs get one name."""
    named = {}
    for spec in run_dirs:
        run, own, directory = _stage1_run(spec, prompt)
        name = Path(run).name + (own.removeprefix(prompt) if own.startswith(prompt) else "")
        if name in named:
            raise DataError(f"stage1_study: two runs named {name!r} ({spec}); give each run once")
        named[name] = (run, own, directory)
    return named


def _stage1_per_user(name: str, directory: Path) -> pd.Series:
    """A stage-1 run's report-set RPS hits after training (1: its first choice is the teacher's), by user."""
    frame = pd.read_parquet(_require(directory / "per_user.parquet", "stage 1 writes each report user's hit there"))
    return frame.set_index("user_id")["fidelity_after"].astype(float).rename(name)


def stage1_over_seeds(run_dirs: Sequence[str | os.PathLike], prompt: str) -> pd.DataFrame:
    """Report fidelity per setting over its training seeds: rows named "R" and "R-seed<N>" (``stage1_study``'s names)
    are one setting "R" trained with several seeds. One row per setting: its seeds, fidelity per seed, their mean,
    standard deviation and range, and the selection set's best fidelity per seed."""
    rows: dict[str, dict[str, list]] = {}
    for name, (_, _, directory) in _stage1_named_runs(run_dirs, prompt).items():
        m = read_json(_require(directory / "metrics.json", "stage 1 writes its metrics there"))
        setting = rows.setdefault(split_seed(name)[0], {"seeds": [], "fidelity": [], "selection": []})
        setting["seeds"].append(str(m.get("train_seed", "-")))
        setting["fidelity"].append(float(m["fidelity_after"]["mean"]))
        setting["selection"].append(float(m["selection"]["fidelity_best"]))
    out = []
    for setting, v in rows.items():
        f = np.array(v["fidelity"])
        out.append({"setting": setting, "train seeds": ", ".join(v["seeds"]), "runs": len(f),
                    "fidelity per seed": ", ".join(f"{x:.3f}" for x in f), "mean": f"{f.mean():.3f}",
                    "sd": f"{f.std(ddof=1):.3f}" if len(f) > 1 else "-",
                    "range": f"{f.min():.3f}-{f.max():.3f}",
                    "selection best per seed": ", ".join(f"{x:.3f}" for x in v["selection"])})  # fmt: skip
    return pd.DataFrame(out).set_index("setting")


def _stage1_matched_per_user(name: str, run: str, own: str, prompt: str, directory: Path) -> pd.Series | None:
    """A stage-1 run's hits on its report users' popularity-matched examples (None: not measured)."""
    matched = Path(run) / "distill" / DISTILL_MATCHED / (own or prompt)
    if not (matched / MANIFEST_NAME).is_file():
        return None
    return _stage1_per_user(name, _matched_dir(matched, read_manifest(directory, "soft-prompt")))


def stage1_paired(run_dirs: Sequence[str | os.PathLike], prompt: str, pairs: Sequence[str]) -> pd.DataFrame:
    """Paired comparisons of stage-1 runs on their report users: for each pair "A/B" of ``stage1_study``'s row names,
    the per-user fidelity difference A - B (hits, the same users) with its bootstrap interval and the sign-flip
    permutation test's p-value (``metrics.paired_test``); again on the report users' popularity-matched examples
    where both runs measured them. Holm-adjusted over every row (one family)."""
    runs = _stage1_named_runs(run_dirs, prompt)
    rows, diffs = [], []
    for pair in pairs:
        a, sep, b = pair.partition("/")
        missing = [x for x in (a, b) if x not in runs]
        if not sep or missing:
            raise DataError(f"stage1_paired: pair {pair!r}: expected 'A/B' with A and B among the runs' names "
                            f"({', '.join(runs)})" + (f"; not found: {', '.join(missing)}" if sep else ""))  # fmt: skip
        sets = {"report": [_stage1_per_user(x, runs[x][2]) for x in (a, b)],
                "popularity-matched": [_stage1_matched_per_user(x, *runs[x][:2], prompt, runs[x][2]) for x in (a, b)]}  # fmt: skip
        for examples, per_user in sets.items():
            if any(h is None for h in per_user):
                continue
            row, diff = _paired_row(a, b, examples, pd.concat(per_user, axis=1))
            rows.append(row)
            diffs.append(diff)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p (Holm)"] = holm_adjust(table["p"].to_numpy())
    table["reading at 0.05 (Holm)"] = [("A higher" if d > 0 else "B higher") if p < 0.05 else "no difference shown"
                                       for d, p in zip(diffs, table["p (Holm)"], strict=True)]  # fmt: skip
    return table.round({"p": 4, "p (Holm)": 4})


def _paired_row(a: str, b: str, examples: str, hits: pd.DataFrame) -> tuple[dict[str, Any], float]:
    """One row of ``stage1_paired`` (and A - B's mean) from the two runs' hits by user."""
    if hits.isna().any().any():
        raise DataError(f"stage1_paired: {a} and {b} scored different report users ({examples} examples); only the "
                        "same users are paired")  # fmt: skip
    test = paired_test(hits[a].to_numpy(), hits[b].to_numpy())
    return {"A": a, "B": b, "examples": examples, "users": test["users"], "fidelity A": f"{hits[a].mean():.3f}",
            "fidelity B": f"{hits[b].mean():.3f}",
            "A - B [95% interval]": f"{test['mean_diff']:+.3f} [{test['ci_low']:+.3f}, {test['ci_high']:+.3f}]",
            "p": test["p_value"]}, test["mean_diff"]  # fmt: skip


def stage1_losses(run_dirs: Sequence[str | os.PathLike], prompt: str) -> pd.DataFrame:
    """The RPS training loss each run logged (``train_log.csv``: "loss_rps", else "loss"), by step, one column per
    run (named and given as ``stage1_study``'s), and a last row "uniform (ln C)": the cross-entropy of a ranking
    uniform over each run's C RPS candidates, where a prompt that only stopped preferring some candidates sits
    (None for a KL run, whose loss is no cross-entropy)."""
    losses, uniform = {}, {}
    for spec in run_dirs:
        run, _, directory = _stage1_run(spec, prompt)
        log = pd.read_csv(_require(directory / "train_log.csv", "the stage-1 run logs its training loss there"))
        losses[Path(run).name] = log.set_index("step")["loss_rps" if "loss_rps" in log else "loss"]
        cfg = read_manifest(directory, "soft-prompt")["config"]["distill"]
        ce = cfg.get("loss", "ce") == "ce"
        uniform[Path(run).name] = math.log(cfg["rps_top_k"] + cfg["rps_random"]) if ce else None
    frame = pd.DataFrame(losses)
    frame.index = frame.index.astype(object)
    frame.loc["uniform (ln C)"] = pd.Series(uniform)
    return frame


def _matched_dir(directory: Path, soft_prompt: dict[str, Any]) -> Path | None:
    """A stage-1 prompt's popularity-matched table (None: not measured, as for the known answer); refused when made
    from another soft prompt than ``soft_prompt`` (its manifest)."""
    from .delrec.distill import STAGE1_MATCHED_KIND

    if not (directory / MANIFEST_NAME).is_file():
        return None
    manifest = read_manifest(directory, STAGE1_MATCHED_KIND)
    verify_outputs(directory, manifest)
    if manifest.get("inputs", {}).get("soft_prompt") != artifact_id(soft_prompt):
        raise StaleArtifactError(f"{directory}: made from another soft prompt than the run's; run the stage-1 "
                                 "popularity-matched table again (notebook 03, or `distill`)")  # fmt: skip
    return directory


def _matched_cell(directory: Path, soft_prompt: dict[str, Any]) -> str:
    """A stage-1 prompt's RPS fidelity on its report users' popularity-matched examples before -> after, and chance
    ("-": not measured, as for the known answer); refused when made from another soft prompt than the row's."""
    if _matched_dir(directory, soft_prompt) is None:
        return "-"
    m = read_json(directory / "metrics.json")
    return f"{_ci(m['fidelity_before'], 3)} -> {_ci(m['fidelity_after'], 3)} ({m['fidelity_chance']:.3f})"


def _ta_cell(m: dict[str, Any]) -> str:
    """A stage-1 prompt's Temporal Analysis accuracy before -> after, and its best heuristic's ("-": none measured)."""
    if not m.get("ta_accuracy_after"):
        return "-"
    name, best = max(m["ta_baselines"].items(), key=lambda kv: kv[1]["mean"])
    return f"{_ci(m['ta_accuracy_before'], 3)} -> {_ci(m['ta_accuracy_after'], 3)} ({name}: {best['mean']:.3f})"


def write_stage1_study(run_dirs: Sequence[str | os.PathLike], prompt: str, out: str | os.PathLike,
                       pairs: Sequence[str] = ()) -> Path:  # fmt: skip
    """``stage1_study`` as a Markdown page: each run's settings and numbers, and the selection curves; settings
    trained with several seeds (``stage1_over_seeds``) and the paired comparisons asked for (``stage1_paired``)."""
    table, curves = stage1_study(run_dirs, prompt)
    lines = [f"# Stage 1 on `{prompt}` under different settings", "",
             "Written by `python -m delrec_lib stage1-study` from the run folders "
             f"({', '.join(f'`{Path(str(r).partition(chr(58))[0]).name}`' for r in run_dirs)}); fidelity on the same fixed report users, "
             "mean [95% interval]. The best heuristic is the best of the rankings that need no model (popularity, "
             "title length) on the same examples. Runs with the same teacher config distilled the same teacher.",
             "", markdown_table(table), "", "## Held-out (selection) fidelity by step", "",
             markdown_table(curves.round(3).astype(object).where(curves.notna(), "-"))]  # fmt: skip
    losses = stage1_losses(run_dirs, prompt)
    lines += ["", "## Training loss (RPS) by step", "",
              "As each run logged it on its training batches (`train_log.csv`; cross-entropy on the teacher's top-1, "
              "KL for `loss = kl`). Users are rarely seen twice within these budgets, so it is close to a held-out "
              "loss. The last row is the cross-entropy of a ranking uniform over the run's candidates (none for a KL "
              "run): a prompt that has only stopped preferring the listed titles sits there, one that learned the rule "
              "below it.", "",
              markdown_table(losses.round(3).astype(object).where(losses.notna(), "-"))]  # fmt: skip
    seeds = stage1_over_seeds(run_dirs, prompt)
    if (seeds["runs"] > 1).any():
        lines += ["", "## Over training seeds", "",
                  "Rows named `R` and `R-seed<N>` are one setting trained with several training seeds (the same users "
                  "and examples, another order): report fidelity per seed, its mean, standard deviation (ddof 1) and "
                  "range; the spread is stage 1's own variance, against which a difference between settings is read.",
                  "", markdown_table(seeds)]  # fmt: skip
    if pairs:
        lines += ["", "## Paired comparisons", "",
                  "Each pair on the same report users: the per-user difference in fidelity A - B (hit or miss) with its "
                  "95% bootstrap interval, the two-sided sign-flip permutation test's p-value, and Holm's adjustment "
                  "over every row of this table (one family); a pair is compared again on the report users' popularity-matched "
                  "examples where both runs measured them.", "",
                  markdown_table(stage1_paired(run_dirs, prompt, pairs).set_index("A"))]  # fmt: skip
    atomic_write_text(out, "\n".join(lines) + "\n")
    return Path(out)
