"""Choosing the LLM stages' settings on held-out data: a grid over ``distill.*`` or ``finetune.*`` fields.

    python -m delrec_lib.delrec.tuning finetune --variant lora --grid lr=5e-4,1e-3 lora_layers=4,8 --set max_steps=120
    python -m delrec_lib.delrec.tuning distill --prompt sasrec --grid lr=1e-2,3e-2 num_soft_tokens=10,20

Each point trains the stage exactly as a run does, in its own folder under ``--out`` (the teachers, and
for a ``delrec-*`` variant the soft prompt, are read from ``--from-run``), and reports what the stage
itself measures on data it never trains on: stage 1 the selection set's RPS fidelity and TA accuracy,
stage 2 the validation metrics, at the selected step, with the seconds the point took. ``--csv`` keeps
the table; each point's folder keeps its curves (``history.csv``).

What a point may read, so that the defaults chosen with this tool in ``delrec_lib/config/`` never saw a test
target, nor stage 1's its report users:

- the stage is handed a ``NoTestView`` of the data (``delrec_lib.data.guard``), never the data itself:
  items, users, train items, the validation split, and ``interacted_items`` only to keep a user's own
  items (their valid and test targets among them) out of the random negatives both stages draw. Any read
  of the test split raises ``TestSplitRead``.
- stage 1 trains and selects only on users outside the data's fixed report set (``report_users.json``),
  whatever the grid (``seed``, ``heldout_users``, ``selection_users``, ``max_train_users`` included):
  ``split_users`` draws its training and selection users from the other users. The report set's numbers
  in each point's ``metrics.json`` are not read into the table.
- stage 2 trains on train items and selects on the validation split.

The selected step's score is a maximum over evaluations, optimistic for every point alike: it ranks the
points, it does not estimate test quality.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..artifacts import RunPaths
from ..config import DistillConfig, FinetuneConfig, RunConfig, load_config, resolve_path
from ..errors import ConfigError

STAGES = {"distill": DistillConfig, "finetune": FinetuneConfig}


def _typed(value: str, annotation: Any, where: str) -> Any:
    """A command-line value as the field's type: int, float, bool, str, None ("none"), or a tuple of those
    written with "+" between its items ("q_proj+v_proj")."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple:
        return tuple(_typed(v, args[0], where) for v in value.split("+"))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value.lower() == "none" and type(None) in args:
            return None
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got '{value}'")
        return value
    try:
        if annotation is bool:
            if value.lower() not in ("true", "false"):
                raise ValueError(value)
            return value.lower() == "true"
        if annotation is int:
            return int(float(value)) if float(value).is_integer() else int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return value
    except ValueError:
        raise ConfigError(f"{where}: takes {getattr(annotation, '__name__', annotation)} values, got '{value}'") from None
    raise ConfigError(f"{where}: a {annotation} field cannot be set from the command line")


def parse_assignments(items: Sequence[str], stage: str, *, grid: bool) -> dict[str, Any]:
    """``["lr=1e-3,2e-3", "lora_layers=4"]`` -> {"lr": [0.001, 0.002], ...} (lists when ``grid``), typed by the
    stage's config fields; an unknown field is an error naming the stage's fields."""
    cls = STAGES[stage]
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    flag = "--grid" if grid else "--set"
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"{flag}: expected FIELD={'V1,V2,...' if grid else 'VALUE'}, got '{item}'")
        if name not in hints:
            raise ConfigError(f"{flag}: '{name}' is not a field of {stage}; expected one of {', '.join(hints)}")
        parts = values.split(",") if grid else [values]
        typed = [_typed(v, hints[name], f"{flag} {stage}.{name}") for v in parts]
        out[name] = typed if grid else typed[0]
    return out


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]


def point_name(point: dict[str, Any]) -> str:
    """A folder name for a point: "lr=0.001_target_modules=q_proj+v_proj"."""
    return "_".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in point.items()) or "default"


def _link(source: Path, target: Path) -> None:
    """``target`` -> ``source`` (an artifact folder of the run the grid starts from)."""
    if not source.is_dir():
        raise ConfigError(f"--from-run: {source} is missing; run the stage that writes it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(source.resolve(), target_is_directory=True)


def validation_grid(stage: str, name: str, config: RunConfig, grid: dict[str, list[Any]], fixed: dict[str, Any],
                    from_run: Path, out: Path, backbone, data) -> pd.DataFrame:  # fmt: skip
    """One row per grid point: its settings, the held-out numbers at the selected step, and its cost."""
    from ..data.guard import NoTestView
    from .distill import run_distillation
    from .finetune import run_finetuning, variant_prompt_artifact

    data = NoTestView(data, negatives=True, who=f"the {stage} tuning grid")
    source = RunPaths(from_run)
    rows = []
    for point in grid_points(grid):
        section = dataclasses.replace(getattr(config, stage), **fixed, **point)
        cfg = dataclasses.replace(config, **{stage: section})
        paths = RunPaths(out / stage / name / point_name({**fixed, **point}))
        _link(source.teachers, paths.teachers)
        start = time.perf_counter()
        if stage == "distill":
            r = run_distillation(cfg, paths, data, backbone, name, progress=False)
            h, m = r.history, r.metrics
            best = h[h["step"] == m["best_step"]].iloc[-1]
            row = {"selection_fidelity": m["selection"]["fidelity_best"], "selection_ta_accuracy": best.get("ta_accuracy"),
                   "best_step": m["best_step"], "users_seen": int(best["users_seen"]),
                   "last_fidelity": float(h["fidelity"].iloc[-1])}  # fmt: skip
        else:
            prompt = variant_prompt_artifact(cfg, name)
            if prompt is not None:
                _link(source.distill / prompt, paths.distill / prompt)
            r = run_finetuning(cfg, paths, data, backbone, name, progress=False)
            m = r.metrics
            row = {f"valid_{k}": v for k, v in m["valid_best"].items()}
            row.update({"best_step": m["best_step"], "examples": m["train_examples"],
                        "last_" + section.select_metric: float(r.history[section.select_metric].iloc[-1])})  # fmt: skip
        rows.append({**point, **row, "seconds": round(time.perf_counter() - start, 1)})
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=list(STAGES))
    parser.add_argument("--prompt", default=None, help="distill: the soft prompt to train (default: the preset's first)")
    parser.add_argument("--variant", default=None, help="finetune: the variant to train (default: the preset's first)")
    parser.add_argument("--grid", nargs="+", default=[], help="FIELD=V1,V2 ... over the stage's config fields")
    parser.add_argument("--set", nargs="+", default=[], help="FIELD=VALUE fixed for every point")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--config", default=None)
    parser.add_argument("--from-run", default=None, help="run folder holding the teachers (and soft prompts); default outputs/<preset>")
    parser.add_argument("--out", default="outputs/tuning", help="where each point's run folder goes")
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)

    from ..data import load_processed, prepare_dataset
    from ..llm import load_backbone_from_config

    config = load_config(args.preset, args.config)
    stage_cfg = getattr(config, args.stage)
    name = (args.prompt if args.stage == "distill" else args.variant) or (
        stage_cfg.prompts[0] if args.stage == "distill" else stage_cfg.variants[0]
    )
    grid = parse_assignments(args.grid, args.stage, grid=True)
    fixed = parse_assignments(args.set, args.stage, grid=False)
    for point in grid_points(grid):  # every point's settings checked before anything trains
        dataclasses.replace(stage_cfg, **fixed, **point)
    data_dir = resolve_path(config.data_dir)
    prepare_dataset(config.data, data_dir)
    data = load_processed(data_dir, config.data)
    backbone = load_backbone_from_config(config.llm)
    from_run = resolve_path(args.from_run or os.path.join("outputs", config.preset))
    table = validation_grid(args.stage, name, config, grid, fixed, from_run, resolve_path(args.out), backbone, data)
    print(table.to_string(index=False))
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
