"""Benchmark of LLM-SRec on this machine: training examples/s, scoring users/s and items/s, % of the matmul
peak (in the LLM's compute dtype), and the minutes the preset's LLM-SRec costs (training, selection and test evaluation).

``python -m delrec_lib.bench llmsrec [--preset cpu] [--steps 4]`` (or ``python -m delrec_lib.llmsrec.bench``;
``python -m delrec_lib.bench all`` runs it with the others). Needs the run's trained teacher
(``outputs/<preset>/teachers/<llmsrec.teacher>``, or ``--run-dir``).

What is cached and what is recomputed: the LLM and the teacher are frozen. The teacher's user
representations of the training histories are computed once (one batched pass, milliseconds) and reused
at every step; the prompts are tokenized once. An item prompt's text before its [HistoryEmb] slot ("The
item title and item embedding are as follows: "<title>"", two thirds of its tokens) holds nothing
trainable, so with ``llmsrec.cache_prefix`` its keys/values are computed once per item and every later
use runs only the slot, the text after it and [ItemOut]. A user prompt's first trainable input (f_I of
the oldest shown item) sits a dozen tokens in and every later position depends on it, so each step runs
the whole user prompt forward and backward (activation gradients only: the LLM's weights get none).
Scoring runs each prompt forward once; an evaluation computes every needed item vector once.

- Training: ``steps`` optimizer steps (after one warm-up step) of the preset's batch (``batch_size`` x
  ``grad_accum`` users, each a user prompt and 1 + ``num_negatives`` item prompts), forward + backward +
  AdamW. FLOPs count a step as two forwards of the trunk (the backward through frozen weights computes
  activation gradients only).
- Scoring: user prompts of test histories and item prompts, forward only, the preset's batch size.
- Minutes of the preset: training steps x s/step, plus the selection evaluations (step 0, every
  ``eval_every``, the last: ``valid_users`` user prompts and their candidates' items), plus one test
  evaluation of every user and the catalogue's items, plus the order diagnostic's shuffled users.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from ..artifacts import RunPaths
from ..bench.perf import FlopModel, dtype_name, matmul_peak_gflops
from ..config import load_config, resolve_path
from ..data import load_processed, prepare_dataset
from ..llm import load_backbone_from_config
from .model import losses
from .stage import Prompts, Scorer, build_model, select_users, teacher_representations, training_examples


def forward_flops(fm: FlopModel, lengths: list[int]) -> float:
    """Forward FLOPs of right-padded prompts of these lengths through the trunk (no LM head: LLM-SRec reads
    the last hidden state)."""
    return sum(fm.tokens(n, n * (n + 1) // 2, 0) for n in lengths)


def bench_llmsrec(preset: str = "cpu", config_file: str | None = None, run_dir: str | None = None, steps: int = 4,
                  users: int = 64, items: int = 256, verbose: bool = True) -> dict:  # fmt: skip
    config = load_config(preset, config_file)
    cfg = config.llmsrec
    data_root = resolve_path(config.data_dir)
    prepare_dataset(config.data, data_root)
    data = load_processed(data_root, config.data)
    paths = RunPaths(resolve_path(run_dir or f"outputs/{config.preset}"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}", flush=True)
    backbone = load_backbone_from_config(config.llm)
    peak = matmul_peak_gflops(backbone.compute_dtype)
    fm = FlopModel.of(backbone.model)
    model, teacher = build_model(config, paths, data, backbone)
    prompts = Prompts(backbone, data, cfg, config.llm.title_style)
    train_users, valid_users = select_users(data, cfg, config.max_users)
    per_step = cfg.batch_size * cfg.grad_accum
    examples = training_examples(data, train_users, cfg)
    picked = [examples[i] for i in np.random.default_rng(0).choice(len(examples), size=per_step * (steps + 1))]
    reps = teacher_representations(teacher, [e.user_id for e in picked], [e.history for e in picked])

    # As training does: every item the steps read gets its prompt prefix computed once, before the first step.
    start = time.perf_counter()
    model.prepare_item_prefixes([prompts.item(i) for i in sorted({i for e in picked for i in (e.target, *e.negatives)})])
    prefix_s = time.perf_counter() - start
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    times, lengths = [], []
    for s in range(steps + 1):
        start = time.perf_counter()
        for a in range(cfg.grad_accum):
            first = (s * cfg.grad_accum + a) * cfg.batch_size
            batch = picked[first : first + cfg.batch_size]
            up = [prompts.user(e.user_id, e.history) for e in batch]
            ip = [prompts.item(i) for e in batch for i in (e.target, *e.negatives)]
            # the tokens that run: an item prompt's cached prefix does not
            lengths += [len(p.ids) for p in up] + [len(p.ids) - (p.history_positions[0] if model.cache_prefix else 0) for p in ip]
            u = model.user_vectors(up)
            it = model.item_vectors(ip).view(len(batch), 1 + cfg.num_negatives, -1)
            parts = losses(u, it, model.teacher_vectors(reps[first : first + cfg.batch_size]))
            (sum(parts.values()) / cfg.grad_accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    s_step = statistics.median(times[1:])
    step_flops = 2 * forward_flops(fm, lengths) / (steps + 1)
    train = {"s_per_step": s_step, "examples_per_step": per_step, "examples_per_s": per_step / s_step,
             "item_prefix_s": prefix_s,
             "tokens_per_s": sum(lengths) / (steps + 1) / s_step, "gflops": step_flops / s_step / 1e9,
             "pct_peak": 100 * step_flops / s_step / 1e9 / peak}  # fmt: skip

    model.eval()
    scorer = Scorer(model, prompts, cfg.eval_batch_size)
    test_users = data.user_ids(config.max_users)[:users]
    histories = [data.history(int(u), "test") for u in test_users]
    scorer.users(test_users[:4], histories[:4])  # warm-up
    start = time.perf_counter()
    scorer.users(test_users, histories)
    user_s = time.perf_counter() - start
    ulen = [len(prompts.user(int(u), h).ids) for u, h in zip(test_users, histories, strict=True)]
    n_items = min(items, data.num_items)
    start = time.perf_counter()
    scorer.items(range(1, n_items + 1))  # first visit: with cache_prefix, each item's prefix is computed here
    item_s = time.perf_counter() - start
    start = time.perf_counter()
    scorer.items(range(1, n_items + 1))  # revisit: only the slot and what follows run
    item_again_s = time.perf_counter() - start
    ilen = [len(prompts.item(i).ids) for i in range(1, n_items + 1)]
    score = {"users_per_s": len(test_users) / user_s, "user_prompt_tokens": float(np.mean(ulen)),
             "user_pct_peak": 100 * forward_flops(fm, ulen) / user_s / 1e9 / peak,
             "items_per_s": n_items / item_s, "item_prompt_tokens": float(np.mean(ilen)),
             "item_pct_peak": 100 * forward_flops(fm, ilen) / item_s / 1e9 / peak,
             "items_per_s_revisit": n_items / item_again_s}  # fmt: skip

    n_train = len(examples)
    total_steps = cfg.max_steps or -(-n_train // per_step) * cfg.epochs
    evals = 1 + total_steps // cfg.eval_every + (1 if total_steps % cfg.eval_every else 0)  # step 0, every eval_every, the last
    valid_items = min(data.num_items, len(valid_users) * (1 + config.data.num_negatives))  # at most, before dedup
    eval_minutes = evals * (len(valid_users) / score["users_per_s"] + valid_items / score["items_per_s"]) / 60
    n_test = len(data.user_ids(config.max_users))
    test_minutes = (n_test / score["users_per_s"] + data.num_items / score["items_per_s"]) / 60
    shuffled = config.eval.shuffle_users or n_test
    diag_minutes = (min(shuffled, n_test) / score["users_per_s"] + data.num_items / score["items_per_s"]) / 60
    per_variant = total_steps * s_step / 60 + eval_minutes
    plan = {"variants": len(cfg.variants), "steps": total_steps, "evaluations": evals, "train_minutes": total_steps * s_step / 60,
            "selection_minutes": eval_minutes, "test_minutes": test_minutes, "order_diagnostic_minutes": diag_minutes,
            "total_minutes": len(cfg.variants) * (per_variant + test_minutes + diag_minutes)}  # fmt: skip
    result = {"preset": config.preset, "peak_gflops": peak, "peak_dtype": dtype_name(backbone.compute_dtype), "train": train, "score": score, "plan": plan,
              "cached": "teacher user representations (once per training), tokenized prompts"
              + (", each item prompt's keys/values before its embedding slot (once per item)" if model.cache_prefix else "")
              + "; recomputed every time: the user prompts (trainable vectors from their first item on) and the rest of "
              "each item prompt"}  # fmt: skip
    if verbose:
        print(f"{dtype_name(backbone.compute_dtype)} matmul peak {peak:.0f} GFLOP/s")
        print(f"training: {s_step:.2f} s/step ({per_step} users, a user prompt and {1 + cfg.num_negatives} item prompts each) = "
              f"{train['examples_per_s']:.2f} examples/s, {train['tokens_per_s']:.0f} tokens/s, ~{train['gflops']:.0f} GFLOP/s = "
              f"{train['pct_peak']:.0f}% of the matmul peak")  # fmt: skip
        print(f"scoring: {score['users_per_s']:.1f} users/s ({score['user_prompt_tokens']:.0f} tokens, "
              f"{score['user_pct_peak']:.0f}% of the peak), {score['items_per_s']:.1f} items/s "
              f"({score['item_prompt_tokens']:.0f} tokens, {score['item_pct_peak']:.0f}% of the peak; "
              f"{score['items_per_s_revisit']:.1f} items/s revisited)")  # fmt: skip
        print(f"{config.preset} preset, per variant: {total_steps} steps = {plan['train_minutes']:.1f} min, {evals} selection "
              f"evaluations = {eval_minutes:.1f} min, test evaluation {test_minutes:.1f} min, order diagnostic "
              f"{diag_minutes:.1f} min; {len(cfg.variants)} variant(s): {plan['total_minutes']:.1f} min")  # fmt: skip
    return result


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu")
    p.add_argument("--config", default=None, help="TOML/JSON overrides of the preset")
    p.add_argument("--run-dir", default=None, help="run folder holding the trained teacher (default outputs/<preset>)")
    p.add_argument("--steps", type=int, default=4, help="training steps timed (after a warm-up step)")
    p.add_argument("--users", type=int, default=64, help="test users whose prompts are timed")
    p.add_argument("--items", type=int, default=256, help="item prompts timed")


def run(args: argparse.Namespace) -> dict:
    return bench_llmsrec(args.preset, args.config, args.run_dir, args.steps, args.users, args.items)


def summary(result: dict) -> list[str]:
    t, s, plan = result["train"], result["score"], result["plan"]
    return [
        f"LLM-SRec: {t['s_per_step']:.1f} s/step, {t['examples_per_s']:.2f} examples/s ({t['pct_peak']:.0f}% of the matmul "
        f"peak); scoring {s['users_per_s']:.1f} users/s, {s['items_per_s']:.0f} items/s; {result['preset']} preset "
        f"~{plan['total_minutes']:.0f} min (training {plan['train_minutes']:.1f}, selection {plan['selection_minutes']:.1f}, "
        f"test {plan['test_minutes']:.1f}, order diagnostic {plan['order_diagnostic_minutes']:.1f})"
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m delrec_lib.llmsrec.bench", description=__doc__.split("\n\n")[0])
    add_args(p)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    result = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
