"""A run's context, where every entry point starts: the run's config, its folder and the data folder,
and the lock a command holds on the run folder while it writes there.

The notebooks (``runner.notebook_context``), the series runner and the command line all take their
context from here, so that a stage's command needs nothing of the notebook runner.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..artifacts import RunPaths
from ..errors import DelrecError
from .loading import load_config, resolve_path
from .sections import RunConfig

LOCK_NAME = ".lock"


def default_run_dir(preset: str) -> Path:
    return resolve_path(Path("outputs") / preset)


def run_root(config: RunConfig, run_dir: str | os.PathLike | None = None) -> Path:
    """The run folder: ``run_dir``, else ``outputs/<the config's preset>``."""
    return resolve_path(run_dir) if run_dir else default_run_dir(config.preset)


def run_context(
    preset: str | None,
    run_dir: str | os.PathLike | None = None,
    config_file: str | os.PathLike | None = None,
    **overrides: Any,
) -> tuple[RunConfig, RunPaths, Path]:
    """(config, run paths, data folder) of a run: the preset (None: the config file's, else cpu) with the
    config file and the keyword overrides over it; the run folder is created."""
    config = load_config(preset, config_file, **overrides)
    root = run_root(config, run_dir)
    root.mkdir(parents=True, exist_ok=True)
    return config, RunPaths(root), resolve_path(config.data_dir)


def timestamp() -> str:
    """Now, in local time with its UTC offset (what the lock's holder and the timings record)."""
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


@contextlib.contextmanager
def run_folder_lock(root: Path) -> Iterator[None]:
    """Hold ``root`` for this process: a second run on the same folder stops at once, naming this one.

    Stopping (rather than waiting) because a waiting run would mostly find everything done or would
    recompute with settings the first run has just overwritten; the message says who holds the folder.
    The lock is ``fcntl.flock`` on ``<root>/.lock``, released by the system when the process ends,
    however it ends (no stale lock after a crash). The holder's description is emptied on release,
    so that a run leaves the file as it found it."""
    import fcntl  # POSIX only: imported here so that notebooks can use this module anywhere

    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
                who = f"pid {holder['pid']}, started {holder['started_at']}: {holder['command']}"
            except (ValueError, KeyError, TypeError):
                who = "a process that is just starting"
            raise DelrecError(f"{root} is in use by another run ({who}); wait for it to end or use another "
                              "--run-dir") from None  # fmt: skip
        holder = {"pid": os.getpid(), "started_at": timestamp(), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock
