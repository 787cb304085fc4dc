"""The notebook series: run layout, recorded metrics, and papermill execution in order.

``python -m delrec_lib run --preset cpu`` executes every ``notebooks/NN_*.ipynb`` in order into
``outputs/<run>/notebooks/``, passing the preset, the run folder and the resolved config file
as parameters. Each notebook ends by recording its metrics to ``outputs/<run>/metrics/``,
which is what the tests read.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .artifacts import RunPaths, atomic_write_json, read_json
from .config import RunConfig, config_to_dict, load_config, project_root, resolve_path
from .errors import ConfigError, DelrecError

log = logging.getLogger(__name__)


def default_run_dir(preset: str) -> Path:
    return resolve_path(Path("outputs") / preset)


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
    config = load_config(preset, config_file, **overrides)
    root = resolve_path(run_dir) if run_dir else default_run_dir(config.preset)
    root.mkdir(parents=True, exist_ok=True)
    return config, RunPaths(root), resolve_path(config.data_dir)


def record_metrics(paths: RunPaths, notebook: str, metrics: dict[str, Any]) -> Path:
    """Record a notebook's headline metrics as JSON (read by the tests and by later notebooks)."""
    path = paths.metrics / f"{notebook}.json"
    atomic_write_json(path, metrics)
    return path


def read_metrics(paths: RunPaths, notebook: str) -> dict[str, Any]:
    return read_json(paths.metrics / f"{notebook}.json")


def series_notebooks(root: Path | None = None) -> list[Path]:
    """The notebooks of the series, in order: ``notebooks/NN_name.ipynb``."""
    folder = (root or project_root()) / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def run_series(
    preset: str | None,
    run_dir: str | os.PathLike | None = None,
    *,
    config_file: str | os.PathLike | None = None,
    only: list[str] | None = None,
    kernel_name: str = "python3",
    progress: bool = True,
) -> Path:
    """Execute the notebook series with papermill; returns the run folder.

    Finished stages are skipped inside the notebooks themselves (their manifests match), so
    running again with the same run folder resumes where an interrupted run stopped.
    """
    import papermill as pm

    config = load_config(preset, config_file)
    root = resolve_path(run_dir) if run_dir else default_run_dir(config.preset)
    paths = RunPaths(root)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(paths.config_file, config_to_dict(config))
    notebooks = series_notebooks()
    if only:
        unknown = [o for o in only if not any(nb.stem.startswith(o) for nb in notebooks)]
        if unknown:
            raise ConfigError(f"--only {unknown}: no such notebook in notebooks/ ({[nb.stem for nb in notebooks]})")
        notebooks = [nb for nb in notebooks if any(nb.stem.startswith(o) for o in only)]
    if not notebooks:
        raise ConfigError(f"no notebooks found in {project_root() / 'notebooks'}")
    paths.notebooks.mkdir(parents=True, exist_ok=True)
    timings_path = root / "timings.json"
    timings = read_json(timings_path) if timings_path.is_file() else {}
    parameters = {"preset": config.preset, "run_dir": str(root), "config_file": str(paths.config_file)}
    # The kernel imports the delrec_lib of this checkout, whatever is installed in the environment.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_root()), os.environ.get("PYTHONPATH")]))
    for nb in notebooks:
        out = paths.notebooks / nb.name
        log.info("executing %s -> %s", nb.name, out)
        print(f"[delrec] {nb.name} ...", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(
                str(nb), str(out), parameters=parameters, kernel_name=kernel_name,
                cwd=str(nb.parent), progress_bar=progress, request_save_on_cell_execute=True,
            )  # fmt: skip
        except execution_errors() as e:
            raise execution_failure(nb.name, out, e) from None
        elapsed = time.perf_counter() - start
        timings[nb.stem] = round(elapsed, 1)
        atomic_write_json(timings_path, timings)
        print(f"[delrec] {nb.name} done in {elapsed:.0f} s", flush=True)
    summary = {"run_dir": str(root), "timings_s": timings}
    print(json.dumps(summary, indent=2))
    print_outcome(paths)
    return root


def execution_errors() -> tuple[type[BaseException], ...]:
    """What papermill raises when a notebook does not finish (a cell's error, a dead kernel, ...)."""
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillException

    return (PapermillException, DeadKernelError, CellTimeoutError, NoSuchKernel)


def execution_failure(notebook: str, out: Path, error: BaseException) -> DelrecError:
    """One line naming the notebook and why it stopped, instead of nbclient's traceback."""
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, PapermillExecutionError):
        return DelrecError(f"{notebook} failed in cell {error.exec_count}: {error.ename}: {error.evalue} (see {out})")
    if isinstance(error, DeadKernelError):
        return DelrecError(f"{notebook}: the kernel died while running it (killed, or out of memory?): {first_line}; "
                           f"the notebook as far as it ran: {out}")  # fmt: skip
    if isinstance(error, CellTimeoutError):
        return DelrecError(f"{notebook}: a cell ran past its timeout: {first_line} (see {out})")
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
