"""Benchmark of the teachers on this machine: training seconds per epoch and users/s at inference.

``python -m delrec_lib.teachers.bench [--preset cpu] [--models sasrec ...] [--epochs 2]`` (also
wired as ``python -m delrec_lib.bench teachers``). Training is timed over whole epochs of the
preset's real training examples (forward, loss, backward, optimizer step; no evaluation);
inference scores every user's full catalogue for the test position, as the exports do.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..config import load_config, resolve_path
from ..data import load_processed, prepare_dataset
from ..training import set_seed
from .evaluation import model_scorer
from .stage import build_model, teacher_spec, torch_threads, train_config, training_examples
from .task import next_item_loss


def bench_teachers(
    preset: str = "cpu",
    names: Sequence[str] | None = None,
    epochs: int = 2,
    repeats: int = 3,
    config_file: str | None = None,
    verbose: bool = True,
    threads: int | None = None,
) -> pd.DataFrame:
    """Per teacher: training examples, s/epoch (mean over ``epochs``), inference users/s (best of ``repeats``).

    Runs with the preset's ``teachers.threads`` CPU threads unless ``threads`` is given.
    """
    config = load_config(preset, config_file)
    with torch_threads(threads or config.teachers.threads):
        return _bench(config, names, epochs, repeats, verbose)


def _bench(config, names, epochs, repeats, verbose) -> pd.DataFrame:
    data_dir = resolve_path(config.data_dir)
    prepare_dataset(config.data, data_dir)
    data = load_processed(data_dir, config.data.dataset)
    users = data.user_ids()
    histories = [data.history(int(u), "test") for u in users]
    rows = []
    for name in names or config.teachers.models:
        spec = teacher_spec(name, config.teachers, data)
        model = build_model(spec)
        examples = training_examples(spec, data)
        tc = train_config(spec, len(examples))
        optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        set_seed(tc.seed)
        model.train()
        epoch_seconds = []
        for epoch in range(epochs):
            order = np.random.default_rng([tc.seed, epoch]).permutation(len(examples))
            start = time.perf_counter()
            for i in range(0, len(order), tc.batch_size):
                loss, _ = next_item_loss(model, examples.batch(order[i : i + tc.batch_size]), spec["loss"], spec["negatives"] or 1)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            epoch_seconds.append(time.perf_counter() - start)
        scorer = model_scorer(model)
        infer = []
        for _ in range(repeats):
            start = time.perf_counter()
            scorer(users, histories)
            infer.append(time.perf_counter() - start)
        row = {
            "teacher": name,
            "train_examples": len(examples),
            "batch_size": tc.batch_size,
            "s_per_epoch": round(float(np.mean(epoch_seconds)), 3),
            "s_per_epoch_min": round(float(np.min(epoch_seconds)), 3),
            "inference_users_per_s": round(len(users) / min(infer), 1),
            "threads": torch.get_num_threads(),
        }
        rows.append(row)
        if verbose:
            print(f"{name:8s} {row['s_per_epoch']:7.2f} s/epoch ({len(examples)} examples, batch {tc.batch_size})  "
                  f"{row['inference_users_per_s']:9.0f} users/s at inference", flush=True)  # fmt: skip
    return pd.DataFrame(rows)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu")
    p.add_argument("--config", default=None, help="TOML/JSON overrides of the preset")
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--epochs", type=int, default=2, help="training epochs timed per teacher")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the preset's teachers.threads)")


def run(args: argparse.Namespace) -> dict:
    df = bench_teachers(args.preset, args.models, args.epochs, args.repeats, args.config, threads=args.threads)
    print(df.to_string(index=False))
    return {"rows": df.to_dict(orient="records")}


def summary(result: dict) -> list[str]:
    return [f"teacher {row['teacher']}: {row['s_per_epoch']:.1f} s/epoch (early stopping decides the epochs)"
            for row in result.get("rows", [])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m delrec_lib.teachers.bench", description=__doc__.split("\n\n")[0])
    add_args(p)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    result = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result["rows"], f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
