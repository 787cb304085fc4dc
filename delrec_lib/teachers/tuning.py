"""Choosing a teacher's settings on validation: a small grid, each point trained as the stage trains it.

``python -m delrec_lib.teachers.tuning --model sasrec --grid dropout=0.2,0.5 lr=1e-3,2e-3`` trains every
combination with the run's protocol (train items only, early stopping on validation NDCG@10, full
ranking, history excluded) and prints, per point, the best validation NDCG@10 and the epoch it was
reached. ``--csv`` keeps the table.

The teacher is handed a ``NoTestView`` of the data (``delrec_lib.data.guard``), never the data itself:
it may read the items, the users, their train items (training) and the validation split (early
stopping and the table), nothing else; any read of the test split, and of ``interacted_items`` (which
holds the test targets and which a teacher has no use for), raises ``TestSplitRead``. So the chosen
defaults in ``delrec_lib/config/`` can be justified without looking at test.

The best-epoch validation score is the early-stopping maximum, so it is optimistic for every point
alike; it ranks the points, it is not an estimate of test quality.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import TEACHER_NAMES, TeachersConfig, load_config, resolve_path
from ..data import load_processed, prepare_dataset
from ..data.guard import NoTestView
from ..data.processed import ProcessedData
from ..errors import ConfigError
from .stage import build_model, fit, teacher_spec, torch_threads


def parse_grid(items: Sequence[str], model: str) -> dict[str, list[Any]]:
    """``["lr=1e-3,2e-3", "hidden=64,128"]`` -> {"lr": [0.001, 0.002], "hidden": [64, 128]}, typed by the
    model's config fields (an unknown field is an error naming the model's fields)."""
    config_type = type(getattr(TeachersConfig(), model))
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--grid: expected FIELD=V1,V2,... got '{item}'")
        if name not in fields:
            raise ConfigError(f"--grid: '{name}' is not a field of teachers.{model}; expected one of {', '.join(fields)}")
        kind = type(getattr(config_type(), name))
        try:
            grid[name] = [kind(v) if kind is not int else int(float(v)) for v in values.split(",")]
        except ValueError as e:
            raise ConfigError(f"--grid: teachers.{model}.{name} takes {kind.__name__} values, got '{values}'") from e
    return grid


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]


def validation_grid(
    model: str, grid: dict[str, list[Any]], config: TeachersConfig, data: ProcessedData, *, progress: bool = False
) -> pd.DataFrame:
    """One row per grid point: its settings, best validation NDCG@10 (and HR@10), the best epoch, epochs run."""
    if model not in TEACHER_NAMES:
        raise ConfigError(f"--model: expected one of {', '.join(TEACHER_NAMES)}, got '{model}'")
    data = NoTestView(data, negatives=False, who="the teachers' tuning grid")
    rows = []
    for point in grid_points(grid):
        cfg = dataclasses.replace(config, **{model: dataclasses.replace(getattr(config, model), **point)})
        spec = teacher_spec(model, cfg, data)
        start = time.perf_counter()
        with torch_threads(cfg.threads):
            result, _ = fit(build_model(spec), spec, data, checkpoint=None, progress=progress)
        best = max(result.history, key=lambda r: r["NDCG@10"])
        rows.append({**point, "valid_NDCG@10": best["NDCG@10"], "valid_HR@10": best.get("HR@10"),
                     "best_epoch": best.get("epoch"), "epochs": result.epochs_completed,
                     "seconds": round(time.perf_counter() - start, 1)})  # fmt: skip
        print(rows[-1], flush=True)
    return pd.DataFrame(rows).sort_values("valid_NDCG@10", ascending=False, ignore_index=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=TEACHER_NAMES)
    parser.add_argument("--grid", nargs="+", required=True, help="FIELD=V1,V2 ... over the model's config fields")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--config", default=None)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    config = load_config(args.preset, args.config)
    data_dir = resolve_path(config.data_dir)
    prepare_dataset(config.data, data_dir)
    data = load_processed(data_dir, config.data)
    table = validation_grid(args.model, parse_grid(args.grid, args.model), config.teachers, data)
    print(table.to_string(index=False))
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
