"""Choosing the LLM stages' settings on held-out data: a grid over ``distill.*`` or ``finetune.*`` fields.

    python -m delrec_lib.delrec.tuning finetune --variant lora --grid lr=5e-4,1e-3 lora_layers=4,8 --set max_steps=120
    python -m delrec_lib.delrec.tuning distill --prompt sasrec --grid lr=1e-2,3e-2 num_soft_tokens=10,20

Each point trains the stage exactly as a run does, in its own folder under ``--out`` (the teachers, and
for a ``delrec-*`` variant the soft prompt, are read from ``--from-run``), and reports what the stage
itself measures on data it never trains on: stage 1 the selection set's RPS fidelity and TA accuracy,
stage 2 the validation metrics, at the selected step, with the seconds the point took. ``--csv`` keeps
the table; each point's folder keeps its curves (``history.csv``).

Screen, then confirm: ``--confirm 2 --seeds 1 2`` trains the screen's best two points again with training
seeds 1 and 2 (stage 1: another order of the same training users; stage 2: also another adapter
initialisation), and chooses the point with the highest mean over the three seeds or, among those within one
standard deviation of it, the cheapest:

    python -m delrec_lib.delrec.tuning distill --grid lr=0.01,0.03,0.1,0.3 --confirm 2 --seeds 1 2

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
from ..config import (
    SEED_SUFFIX,
    DistillConfig,
    FinetuneConfig,
    RunConfig,
    load_config,
    resolve_path,
    split_seed,
)
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

    data = NoTestView(data, negatives=True, who=f"the {stage} tuning grid")
    rows = []
    for point in grid_points(grid):
        rows.append({**point, **train_point(stage, name, config, point, fixed, from_run, out, backbone, data)})
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def selection_column(stage: str, config: RunConfig) -> str:
    """The table column a point is chosen by: stage 1's selection fidelity, stage 2's validation metric."""
    return "selection_fidelity" if stage == "distill" else f"valid_{config.finetune.select_metric}"


def train_point(stage: str, name: str, config: RunConfig, point: dict[str, Any], fixed: dict[str, Any], from_run: Path,
                out: Path, backbone, data) -> dict[str, Any]:  # fmt: skip
    """Train ``name`` (a soft prompt or variant, or a seed's copy "<name>-seed<N>") at one point, in the point's run
    folder; the held-out numbers at its selected step and its seconds. ``data`` is the tool's no-test view."""
    from .distill import run_distillation
    from .finetune import run_finetuning, variant_prompt_artifact

    source = RunPaths(from_run)
    section = dataclasses.replace(getattr(config, stage), **fixed, **point)
    cfg = dataclasses.replace(config, **{stage: section})
    paths = RunPaths(out / stage / split_seed(name)[0] / point_name({**fixed, **point}))
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
    return {**row, "seconds": round(time.perf_counter() - start, 1)}


def confirm_points(stage: str, name: str, config: RunConfig, grid: dict[str, list[Any]], screen: pd.DataFrame,
                   fixed: dict[str, Any], top: int, seeds: Sequence[int], from_run: Path, out: Path, backbone,
                   data) -> pd.DataFrame:  # fmt: skip
    """The ``top`` points of the screen (one training seed, the stage's own) trained again with each of ``seeds``
    (another order of training users, and for stage 2 another adapter initialisation): one row per point and
    seed, the screen's run as the stage's own seed."""
    from ..data.guard import NoTestView

    data = NoTestView(data, negatives=True, who=f"the {stage} tuning grid")
    metric = selection_column(stage, config)
    points = grid_points(grid)
    own = getattr(config, stage).seed
    rows = []
    for i in screen[metric].sort_values(ascending=False, kind="stable").index[:top]:
        point = points[i]
        rows.append({**point, "train_seed": own, **screen.loc[i].drop(list(point)).to_dict()})
        for seed in seeds:
            row = train_point(stage, f"{name}{SEED_SUFFIX}{seed}", config, point, fixed, from_run, out, backbone, data)
            rows.append({**point, "train_seed": seed, **row})
            print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def choose_point(confirmed: pd.DataFrame, grid: dict[str, list[Any]], metric: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per point: the mean and standard deviation of ``metric`` over its seeds and its mean seconds; and the chosen
    point: the highest mean, or, among the points whose mean lies within one standard deviation of it (the best
    point's), the cheapest."""
    keys = list(grid)
    summary = (confirmed.groupby(keys, sort=False, dropna=False)
               .agg(mean=(metric, "mean"), sd=(metric, "std"), seeds=(metric, "size"), seconds=("seconds", "mean"))
               .reset_index())  # fmt: skip
    best = summary.loc[summary["mean"].idxmax()]
    close = summary[summary["mean"] >= best["mean"] - (0.0 if pd.isna(best["sd"]) else best["sd"])]
    chosen = close.loc[close["seconds"].idxmin()]
    return summary, {k: chosen[k] for k in keys}


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
    parser.add_argument("--confirm", type=int, default=0,
                        help="train the best N points of the screen again with each of --seeds, then choose among them")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2],
                        help="training seeds of the confirmation (the screen ran the stage's own seed)")
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
    if args.confirm:
        if stage_cfg.seed in args.seeds:
            raise ConfigError(f"--seeds: {stage_cfg.seed} is {args.stage}.seed, the screen's own training seed; got {args.seeds}")
        confirmed = confirm_points(args.stage, name, config, grid, table, fixed, args.confirm, args.seeds, from_run,
                                   resolve_path(args.out), backbone, data)  # fmt: skip
        summary, chosen = choose_point(confirmed, grid, selection_column(args.stage, config))
        print(summary.to_string(index=False))
        print(f"chosen: {chosen} (the highest mean {selection_column(args.stage, config)} over "
              f"{1 + len(args.seeds)} training seeds; within one sd of it, the cheapest)")  # fmt: skip
        if args.csv:
            confirmed.to_csv(args.csv.with_name(args.csv.stem + "-confirm.csv"), index=False)


if __name__ == "__main__":
    main()
