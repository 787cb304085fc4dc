"""Results pages written by code from run folders: ``python -m delrec_lib report --run-dir outputs/cpu``.

A page (``<run>/report/<run>.md`` by default, ``--out docs/results/<name>.md`` for the docs) holds the
run's tables with their intervals, its paired tests, the reading notebook 08 wrote, its figures, and
where the numbers come from: the machine (recorded by the runner with each notebook execution), the dtype
the LLM computed in, the kit's version and commit (from the artifacts' manifests) and each notebook's
time (``timings.json``). Nothing on it is typed by hand; a page is regenerated, never edited.

Beside the page, a summary (``<page>.json``: the results table, users, data identity, machine, kit) lets
another run be compared with it without its run folder (``--reference``). Two run folders are compared
user by user (``compare_runs``): paired tests, Holm-adjusted within the comparison, refused unless both
were evaluated on the same test users with the same candidate sets.

The page's headline table (every method's HR@1 and NDCG@10 with intervals, chance beside) sits between
markers; ``update_readme`` copies it between the README's markers for the run
(``<!-- results:<run>:start -->`` ... ``<!-- results:<run>:end -->``). The run's executed notebooks are
rendered to Markdown with their figures (``render_notebooks``), readable without running anything.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .artifacts import (
    MANIFEST_NAME,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    describe_kit,
    read_json,
    read_manifest,
    sha256_json,
    verify_outputs,
)
from .config import project_root
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
    (all of its executions found their work done) the last one."""
    executions = [e for e in read_timings(Path(run_dir) / "timings.json") if e.get("outcome", "done") == "done"]
    chosen: dict[str, dict] = {}
    for e in executions:
        if e["notebook"] not in chosen or e.get("skipped_finished_work") is not True:
            chosen[e["notebook"]] = {**e, "executions": 0}
    for e in executions:
        chosen[e["notebook"]]["executions"] += 1
    return [chosen[k] for k in sorted(chosen)]


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
    table = read_results(root)
    per_user = per_user_results(root)
    users = sorted(int(u) for u in next(iter(per_user.values()))[0]["user_id"])
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
        "users_id": sha256_json(users),
        "data_id": data_ids[0] if len(data_ids) == 1 else data_ids,
        "num_candidates": num_candidates,
        "confidence": config.get("eval", {}).get("confidence"),
        "bootstrap": config.get("eval", {}).get("bootstrap"),
        "llm": {"backbone": config.get("llm", {}).get("backbone"), "dtype_setting": config.get("llm", {}).get("dtype")},
        "machines": list(machines.values()),
        "kits": dict(run_kits(root)),
        "table": {m: {k: {s: float(table.loc[m, (k, s)]) for s in ("mean", "ci_low", "ci_high")} for k in METRICS}
                  for m in table.index},  # fmt: skip
        "chance": {k: float(v) for k, v in chance_table(num_candidates).iloc[0].items()},
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


def reference_comparison(run: dict[str, Any], reference: dict[str, Any]) -> pd.DataFrame:
    """Every metric of every method both have, side by side with its interval, and whether the two agree
    within their intervals: each run's mean lies inside the other run's interval."""
    rows = []
    for method, row in run["table"].items():
        if method not in reference["table"]:
            continue
        for metric in METRICS:
            x, r = row[metric], reference["table"][method][metric]
            within = r["ci_low"] <= x["mean"] <= r["ci_high"] and x["ci_low"] <= r["mean"] <= x["ci_high"]
            rows.append({"method": method, "metric": metric, "run": _ci(x), "reference": _ci(r),
                         "difference": f"{x['mean'] - r['mean']:+.4f}", "within the intervals": "yes" if within else "NO"})  # fmt: skip
    return pd.DataFrame(rows).set_index("method")


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
             f"- Run folder `{summary['run_dir']}`, preset `{summary['preset']}`; processed data "
             f"`{str(summary['data_id'])[:12]}`, {summary['users']} test users.",
             f"- Machine: {_machines(summary)}.",
             f"- LLM: `{summary['llm']['backbone']}`, `llm.dtype = {summary['llm']['dtype_setting']}`.",
             f"- Kit: {_kits(summary)}.",
             "- Libraries: " + (", ".join(f"{k} {v}" for k, v in versions.items()) or "not recorded") + ".",
             ""]  # fmt: skip
    times = notebook_times(root)
    if times:
        rows = pd.DataFrame([{"notebook": t["notebook"], "wall time": _duration(t["seconds"]),
                              "started": t.get("started_at") or "", "executions": t["executions"],
                              "note": "its work was already done" if t.get("skipped_finished_work") is True else ""}
                             for t in times]).set_index("notebook")  # fmt: skip
        total = sum(float(t["seconds"]) for t in times)
        lines += ["### Time per notebook", "",
                  "The execution that computed each notebook's results (`timings.json`): the last that wrote "
                  f"artifacts. In all {_duration(total)}.", "", markdown_table(rows)]  # fmt: skip
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
            markdown_table(table)]  # fmt: skip


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
    lines += ["## Headline", "", _marked("headline", summary["run"], headline(summary))]
    lines += _eval_sections(root, summary)
    lines += _analysis_sections(root)
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
