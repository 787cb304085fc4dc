"""The notebook series: run layout, recorded metrics, and papermill execution in order.

``python -m delrec_lib run --preset cpu`` executes every ``notebooks/NN_*.ipynb`` in order into
``outputs/<run>/notebooks/``, passing the preset, the run folder and the resolved config file
as parameters. Each notebook ends by recording its metrics to ``outputs/<run>/metrics/``,
which is what the tests read. The run folder is locked while the series runs, ``timings.json``
records every completed execution, and ``--rerun STAGE`` recomputes a stage whatever its manifests
say (README, "Running again"). A notebook executes into a temporary file that replaces the
executed notebook only when it completes; a failed, refused or interrupted execution is kept in
``notebooks/failed/`` (its record in ``notebooks/failed/timings.json``), so it changes nothing else
of the run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .artifacts import (
    MANIFEST_NAME,
    RunPaths,
    atomic_write_bytes,
    atomic_write_json,
    describe_kit,
    kit_identity,
    read_json,
    same_kit,
    sha256_file,
)
from .config import RunConfig, config_to_dict, load_config, project_root, resolve_path
from .config.context import run_context, run_folder_lock, run_root, timestamp
from .errors import ConfigError, DataError, DelrecError
from .phases import phase_totals

log = logging.getLogger(__name__)


def notebook_context(
    preset: str | None = "cpu",
    run_dir: str | os.PathLike | None = None,
    config_file: str | os.PathLike | None = None,
    **overrides: Any,
) -> tuple[RunConfig, RunPaths, Path]:
    """What a notebook's first code cell needs: (config, run paths, data folder).

    The runner passes ``config_file`` (the run's resolved config); a student opening a notebook
    by hand gets the preset's defaults. Keyword overrides come from the ``parameters`` cell.
    """
    return run_context(preset, run_dir, config_file, **overrides)


def record_metrics(paths: RunPaths, notebook: str, metrics: dict[str, Any]) -> Path:
    """Record a notebook's headline metrics as JSON (read by the tests and by later notebooks), and where its
    seconds went so far (``delrec_lib.phases``), which the runner adds to the notebook's ``timings.json`` record."""
    path = paths.metrics / f"{notebook}.json"
    atomic_write_json(path, metrics)
    paths.phases(notebook).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(paths.phases(notebook), phase_totals())
    return path


def read_metrics(paths: RunPaths, notebook: str) -> dict[str, Any]:
    return read_json(paths.metrics / f"{notebook}.json")


def series_notebooks(root: Path | None = None) -> list[Path]:
    """The notebooks of the series, in order: ``notebooks/NN_name.ipynb``."""
    folder = (root or project_root()) / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


# What each notebook writes, as artifact folders (each artifact a folder with a manifest), under a
# stage name: what ``--rerun`` recomputes. A folder listed for one notebook inside another's
# (eval/shuffled inside eval) belongs to the deeper one only.
STAGES: dict[str, tuple[str, Callable[[RunConfig, RunPaths], list[Path]]]] = {
    "01_data_prep": ("data", lambda c, p: [processed_data_dir(c)]),
    "02_teacher_training": ("teachers", lambda c, p: [p.teachers]),
    "03_delrec_stage1_distillation": ("distill", lambda c, p: [p.distill]),
    "04_delrec_stage2_finetuning": ("finetune", lambda c, p: [p.finetune]),
    "05_llm_srec": ("llmsrec", lambda c, p: [p.llmsrec]),
    "06_p2rec": ("p2rec", lambda c, p: [p.p2rec]),
    "07_evaluation": ("evaluation", lambda c, p: [p.eval]),
    "08_analysis": ("analysis", lambda c, p: [p.eval / "shuffled"]),
}

# Notebooks of a method the run's preset may leave out: skipped (and recorded as such) when it trains none.
OPTIONAL: dict[str, tuple[Callable[[RunConfig], bool], str]] = {
    "05_llm_srec": (lambda c: bool(c.llmsrec.variants), "llmsrec.variants is empty"),
    "06_p2rec": (lambda c: bool(c.p2rec.variants), "p2rec.variants is empty"),
}

FAILED_DIR = "failed"  # under the run's notebooks/: executions that did not complete


def processed_data_dir(config: RunConfig) -> Path:
    return resolve_path(config.data_dir) / "processed" / config.data.dataset


def select_notebooks(notebooks: list[Path], only: list[str] | None) -> list[Path]:
    if only:
        unknown = [o for o in only if not any(nb.stem.startswith(o) for nb in notebooks)]
        if unknown:
            raise ConfigError(f"--only {unknown}: no such notebook in notebooks/ ({[nb.stem for nb in notebooks]})")
        notebooks = [nb for nb in notebooks if any(nb.stem.startswith(o) for o in only)]
    if not notebooks:
        raise ConfigError(f"no notebooks found in {project_root() / 'notebooks'}")
    return notebooks


def resolve_reruns(rerun: list[str] | None, every: list[Path], selected: list[Path]) -> set[str]:
    """The notebook stems ``--rerun`` names (a notebook's number or name prefix, or its stage name)."""
    out = set()
    for value in rerun or ():
        found = [nb.stem for nb in every if nb.stem.startswith(value) or STAGES.get(nb.stem, ("",))[0] == value]
        names = sorted({STAGES[nb.stem][0] for nb in every if nb.stem in STAGES})
        if len(found) != 1:
            raise ConfigError(f"--rerun {value!r}: names {len(found)} notebooks {found}; give one notebook's number "
                              f"or name ({[nb.stem for nb in every]}) or a stage ({names})")  # fmt: skip
        if found[0] not in STAGES:
            raise ConfigError(f"--rerun {value!r}: the runner does not know which artifacts {found[0]} writes")
        if found[0] not in {nb.stem for nb in selected}:
            raise ConfigError(f"--rerun {value!r}: {found[0]} is not among the notebooks this run executes "
                              f"({[nb.stem for nb in selected]}); add it to --only")  # fmt: skip
        out.add(found[0])
    return out


def _manifests(folder: Path, skip: list[Path]) -> list[Path]:
    """Manifests of the artifacts under ``folder``; temporary and checkpoint folders (hidden) excluded."""
    if not folder.is_dir():
        return []
    found = []
    for m in sorted(folder.rglob(MANIFEST_NAME)):
        rel = m.relative_to(folder).parts
        if any(part.startswith(".") for part in rel) or any(m.is_relative_to(s) for s in skip):
            continue
        found.append(m)
    return found


def stage_manifests(config: RunConfig, paths: RunPaths, stem: str) -> tuple[list[Path], list[Path]]:
    """(manifests of the artifacts notebook ``stem`` writes, its folders)."""
    folders = STAGES[stem][1](config, paths)
    others = [f for other, (_, fn) in STAGES.items() if other != stem for f in fn(config, paths)]
    out = []
    for folder in folders:
        out += _manifests(folder, [o for o in others if o != folder and o.is_relative_to(folder)])
    return out, folders


def invalidate_stage(config: RunConfig, paths: RunPaths, stem: str) -> list[Path]:
    """Make the stage's finished artifacts count as not done (their manifests and training checkpoints
    removed; their files stay until the stage replaces them), so that it computes them again."""
    manifests, folders = stage_manifests(config, paths, stem)
    for m in manifests:
        m.unlink()
    for folder in folders:
        shutil.rmtree(folder / ".checkpoints", ignore_errors=True)
    return [m.parent for m in manifests]


def artifact_snapshot(config: RunConfig, paths: RunPaths) -> dict[str, str]:
    """{artifact folder: hash of its manifest} for the run's artifacts and its processed data."""
    out = {}
    for folder in (paths.root, processed_data_dir(config)):
        for m in _manifests(folder, []):
            where = m.parent.relative_to(paths.root) if m.is_relative_to(paths.root) else m.parent
            out[str(where)] = sha256_file(m)
    return out


def other_kit_artifacts(config: RunConfig, paths: RunPaths) -> list[tuple[str, str]]:
    """(artifact folder, the kit that made it) for every artifact of the run not made by this code."""
    current, out = kit_identity(), []
    for folder in (processed_data_dir(config), paths.root):
        for m in _manifests(folder, []):
            try:
                recorded = read_json(m).get("kit")
            except (DataError, AttributeError):
                continue  # not a manifest: the stage that reads it says so
            if not same_kit(recorded, current):
                out.append((str(m.parent), describe_kit(recorded)))
    return out



def probe_machine(llm_dtype: str) -> dict[str, Any]:
    """The machine as a results page states it: CPU model, cores, GPUs, the dtype the LLM computes in
    here (``llm.dtype`` resolved as ``llm.load_backbone`` resolves it) and the main libraries' versions."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from .llm import resolve_dtype
    from .training.distributed import default_device

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("transformers", "peft"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "gpus": gpus, "llm_dtype": str(resolve_dtype(llm_dtype, default_device())).removeprefix("torch."),
            "platform": platform.platform(), "versions": versions}  # fmt: skip


@functools.cache
def machine_record(llm_dtype: str) -> dict[str, Any] | None:
    """``probe_machine`` in a child process, so that CUDA is never initialised in the runner (a CUDA
    context here would hold GPU memory while the notebooks run); None when the probe fails."""
    code = f"import json; from delrec_lib.runner import probe_machine; print(json.dumps(probe_machine({llm_dtype!r})))"
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=project_root(), capture_output=True, text=True, timeout=300)
        return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def read_timings(path: Path) -> list[dict[str, Any]]:
    """Every recorded execution of a notebook in this run folder, oldest first."""
    if not path.is_file():
        return []
    recorded = read_json(path)
    if isinstance(recorded, dict) and isinstance(recorded.get("executions"), list):
        return recorded["executions"]
    if isinstance(recorded, dict) and all(isinstance(v, (int, float)) for v in recorded.values()):
        # the earlier form: {notebook: seconds of its last execution}
        return [{"notebook": k, "seconds": v, "started_at": None, "outcome": "done", "skipped_finished_work": None,
                 "written": None} for k, v in recorded.items()]  # fmt: skip
    raise DataError(f"{path}: expected {{'executions': [...]}}; move it away to start a new record")


def run_series(
    preset: str | None,
    run_dir: str | os.PathLike | None = None,
    *,
    config_file: str | os.PathLike | None = None,
    only: list[str] | None = None,
    rerun: list[str] | None = None,
    kernel_name: str = "python3",
    progress: bool = True,
) -> Path:
    """Execute the notebook series with papermill; returns the run folder.

    Finished stages are skipped inside the notebooks themselves (their manifests match), so
    running again with the same run folder resumes where an interrupted run stopped. ``rerun``
    names notebooks (or stages) whose artifacts are computed again whatever their manifests say.
    The arguments are checked before anything is written; the run folder is locked for the run
    (a second run on it stops at once); ``config.json`` is written once the run proceeds, and put
    back as it was if no notebook completes. A notebook that does not complete leaves its last
    completed execution in ``notebooks/`` and ``timings.json`` as they were (see ``_execute``).
    """
    import papermill as pm

    config = load_config(preset, config_file)
    root = run_root(config, run_dir)
    paths = RunPaths(root)
    every = series_notebooks()
    notebooks = select_notebooks(every, only)
    forced = resolve_reruns(rerun, every, notebooks)
    with run_folder_lock(root):
        previous = paths.config_file.read_bytes() if paths.config_file.is_file() else None
        atomic_write_json(paths.config_file, config_to_dict(config))
        done: list[str] = []
        try:
            timings = _execute(pm, config, paths, notebooks, forced, kernel_name, progress, done)
        finally:
            if not done:
                _restore_config(paths, previous)
    summary = {"run_dir": str(root), "timings_s": timings}
    print(json.dumps(summary, indent=2))
    print_outcome(paths)
    return root


def _restore_config(paths: RunPaths, previous: bytes | None) -> None:
    """No notebook completed: the run's config.json goes back to describing what the folder holds."""
    if previous is None:
        paths.config_file.unlink(missing_ok=True)
    else:
        atomic_write_bytes(paths.config_file, previous)


def _execute(pm, config: RunConfig, paths: RunPaths, notebooks: list[Path], forced: set[str], kernel_name: str,
             progress: bool, done: list[str]) -> dict[str, float]:  # fmt: skip
    """Execute ``notebooks`` in order, appending each completed one's stem to ``done``.

    Each executes into a hidden sibling of its executed notebook, which it replaces only once the
    execution completes: a failed, refused (an upstream artifact of other settings) or interrupted
    execution goes to ``notebooks/failed/<name>.ipynb`` and its record to ``failed/timings.json``,
    never over the run's executed notebook or into its ``timings.json``.
    """
    root = paths.root
    paths.notebooks.mkdir(parents=True, exist_ok=True)
    for where, made_by in (other := other_kit_artifacts(config, paths))[:5]:
        print(f"[delrec] WARNING: {where} was made by delrec_lib {made_by}", flush=True)
    if other:
        print(f"[delrec] WARNING: {len(other)} artifacts of this run were made by another version of the kit than "
              f"this one ({describe_kit(kit_identity())}); they are reused as they are. --rerun STAGE recomputes "
              "a stage.", flush=True)  # fmt: skip
    timings_path = root / "timings.json"
    failed_dir = paths.notebooks / FAILED_DIR
    executions = read_timings(timings_path)
    timings: dict[str, float] = {}
    parameters = {"preset": config.preset, "run_dir": str(root), "config_file": str(paths.config_file)}
    machine = machine_record(config.llm.dtype)  # recorded with each execution: a run may resume elsewhere
    # The kernel imports the delrec_lib of this checkout, whatever is installed in the environment.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_root()), os.environ.get("PYTHONPATH")]))
    for nb in notebooks:
        out = paths.notebooks / nb.name
        running = paths.notebooks / f".{nb.stem}.running.ipynb"
        needed, why = OPTIONAL.get(nb.stem, (lambda c: True, ""))
        if not needed(config):
            print(f"[delrec] {nb.name} skipped: the {config.preset} preset trains no such method ({why})", flush=True)
            executions.append({"notebook": nb.stem, "started_at": timestamp(), "rerun": False, "seconds": 0.0,
                               "outcome": f"not in this preset ({why})", "skipped_finished_work": True, "written": []})  # fmt: skip
            atomic_write_json(timings_path, {"executions": executions})
            done.append(nb.stem)
            continue
        if nb.stem in forced:
            again = invalidate_stage(config, paths, nb.stem)
            print(f"[delrec] --rerun {nb.stem}: {len(again)} artifacts will be computed again", flush=True)
        log.info("executing %s -> %s", nb.name, out)
        print(f"[delrec] {nb.name} ...", flush=True)
        before = artifact_snapshot(config, paths)
        record = {"notebook": nb.stem, "started_at": timestamp(), "rerun": nb.stem in forced, "machine": machine}
        paths.phases(nb.stem).unlink(missing_ok=True)  # an earlier execution's phases are not this one's
        start = time.perf_counter()
        outcome = "interrupted"
        try:
            try:
                pm.execute_notebook(
                    str(nb), str(running), parameters=parameters, kernel_name=kernel_name,
                    cwd=str(nb.parent), progress_bar=progress, request_save_on_cell_execute=True,
                )  # fmt: skip
            except execution_errors() as e:
                outcome = "failed"
                kept = out if out.is_file() else None
                raise execution_failure(nb.name, failed_dir / nb.name, e, kept=kept) from None
            os.replace(running, out)
            outcome = "done"
        finally:
            elapsed = time.perf_counter() - start
            after = artifact_snapshot(config, paths)
            written = sorted(k for k, v in after.items() if before.get(k) != v)
            # skipped finished work: the notebook's stage was complete and it (re)wrote no artifact
            record.update(seconds=round(elapsed, 1), outcome=outcome, skipped_finished_work=not written, written=written)
            if paths.phases(nb.stem).is_file():  # seconds per phase, as the notebook's last cell left them
                record["phases"] = read_json(paths.phases(nb.stem))
            if outcome == "done":
                executions.append(record)
                atomic_write_json(timings_path, {"executions": executions})
            else:
                _keep_failed(running, failed_dir / nb.name, record)
        done.append(nb.stem)
        timings[nb.stem] = round(elapsed, 1)
        print(f"[delrec] {nb.name} done in {elapsed:.0f} s", flush=True)
    return timings


def _keep_failed(running: Path, failed: Path, record: dict[str, Any]) -> None:
    """Keep an execution that did not complete, and its record, in ``notebooks/failed/``."""
    failed.parent.mkdir(parents=True, exist_ok=True)
    if running.exists():
        os.replace(running, failed)
    else:  # it stopped before papermill wrote anything: an older failure must not pass for this one
        failed.unlink(missing_ok=True)
    log_path = failed.parent / "timings.json"
    atomic_write_json(log_path, {"executions": [*read_timings(log_path), record]})


def execution_errors() -> tuple[type[BaseException], ...]:
    """What papermill raises when a notebook does not finish (a cell's error, a dead kernel, ...)."""
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillException

    return (PapermillException, DeadKernelError, CellTimeoutError, NoSuchKernel)


def execution_failure(notebook: str, out: Path, error: BaseException, kept: Path | None = None) -> DelrecError:
    """One line naming the notebook and why it stopped, instead of nbclient's traceback.

    ``out``: where the failed execution is kept; ``kept``: the notebook's last completed execution,
    left as it was."""
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    unchanged = f"; {kept}, its last completed execution, is unchanged" if kept else ""
    if isinstance(error, PapermillExecutionError):
        return DelrecError(f"{notebook} failed in cell {error.exec_count}: {error.ename}: {error.evalue} "
                           f"(see {out}{unchanged})")  # fmt: skip
    if isinstance(error, DeadKernelError):
        return DelrecError(f"{notebook}: the kernel died while running it (killed, or out of memory?): {first_line}; "
                           f"the notebook as far as it ran: {out}{unchanged}")  # fmt: skip
    if isinstance(error, CellTimeoutError):
        return DelrecError(f"{notebook}: a cell ran past its timeout: {first_line} (see {out}{unchanged})")
    if isinstance(error, NoSuchKernel):
        return DelrecError(f"{notebook}: no Jupyter kernel named {error.args[0] if error.args else '?'!r}; "
                           "install one with: python -m ipykernel install --user")  # fmt: skip
    return DelrecError(f"{notebook}: papermill could not run it: {type(error).__name__}: {first_line}")


def print_outcome(paths: RunPaths) -> None:
    """Where a run's results are: the results table (shown), the written reading, the figures."""
    table = paths.eval / "results.md"
    if table.is_file():
        print(f"\n[delrec] results table: {table} (and results.csv beside it)\n")
        print(table.read_text(encoding="utf-8"))
    reading = paths.eval / "reading.md"
    if reading.is_file():
        print(f"[delrec] reading of the figures: {reading}")
    figures = sorted(paths.figures.glob("*.png")) if paths.figures.is_dir() else []
    if figures:
        print(f"[delrec] figures ({len(figures)} PNG): {paths.figures}")
        for f in figures:
            print(f"  {f.name}")
    print(f"[delrec] executed notebooks: {paths.notebooks}")
