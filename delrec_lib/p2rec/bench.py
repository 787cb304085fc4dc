"""Benchmark of P2Rec on this machine: SFT examples/s, augmentation items/s, % of the matmul peak (in the LLM's compute dtype),
and the minutes the preset's P2Rec stage costs.

``python -m delrec_lib.bench p2rec [--preset cpu] [--steps 4] [--items 256]`` (or ``python -m
delrec_lib.p2rec.bench``; ``python -m delrec_lib.bench all`` runs it with the others).

- SFT: ``steps`` optimizer steps (after one warm-up step) of the preset's real task (its users' prompts,
  batch and LoRA), forward + backward + AdamW, no evaluation; FLOPs count a step as two forwards of the
  trunk (the backward through frozen weights computes activation gradients; LoRA's weight gradients are
  negligible), the LM head excluded because P2Rec never runs it.
- Augmentation: ``items`` one-item prompts through the LLM (``item_states``), one forward each.
- Teachers: seconds per epoch of each enhanced teacher (``teachers.bench``: an enhanced teacher trains
  exactly like the plain one, so its epoch costs the same).
- Minutes of the preset: SFT steps x s/step + held-out evaluations (a forward costs about half a training
  example) + one augmentation pass per item-state source + every enhanced and seed-study teacher x
  ``--teacher-epochs`` epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from ..bench.perf import FlopModel, dtype_name, matmul_peak_gflops
from ..config import load_config, parse_p2rec_variant, resolve_path
from ..data import load_processed, prepare_dataset
from ..llm import load_backbone_from_config
from .categories import shown_items
from .sft import PreferenceModel, PreferencePrompts, common_prefix, item_states, pad_right, preference_loss
from .stage import peft_model, split_users, states_name


def forward_flops(fm: FlopModel, lengths: list[int]) -> float:
    """Forward FLOPs of right-padded prompts of these lengths through the trunk (padding not counted; no LM
    head: P2Rec reads the final hidden state and never runs it)."""
    return sum(fm.tokens(n, n * (n + 1) // 2, 0) for n in lengths)


def bench_p2rec(preset: str = "cpu", config_file: str | None = None, steps: int = 4, items: int = 256,
                teacher_epochs: int = 16, verbose: bool = True) -> dict:  # fmt: skip
    config = load_config(preset, config_file)
    cfg = config.p2rec
    data_root = resolve_path(config.data_dir)
    prepare_dataset(config.data, data_root)
    data = load_processed(data_root, config.data.dataset)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}", flush=True)
    backbone = load_backbone_from_config(config.llm)
    peak = matmul_peak_gflops(backbone.compute_dtype)
    fm = FlopModel.of(backbone.model)
    prompts = PreferencePrompts(backbone, config.llm, data.titles, cfg.history_len)
    train_users, held_users = split_users(config, data)
    users_per_step = cfg.batch_size * cfg.grad_accum
    rng = np.random.default_rng(0)
    picked = rng.choice(train_users, size=users_per_step * (steps + 1), replace=len(train_users) < users_per_step * (steps + 1))
    rows = [prompts.ids(shown_items(data, int(u), cfg.history_len)) for u in picked]

    torch.manual_seed(0)
    k = cfg.num_categories
    model = PreferenceModel(backbone, peft_model(backbone, cfg), np.full(k, 1.0 / k))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    target = torch.full((cfg.batch_size, k), 1.0 / k)
    times = []
    for s in range(steps + 1):
        start = time.perf_counter()
        for a in range(cfg.grad_accum):
            first = (s * cfg.grad_accum + a) * cfg.batch_size
            ids, mask = pad_right(rows[first : first + cfg.batch_size], int(backbone.tokenizer.pad_token_id))
            (preference_loss(model(ids, mask), target[: len(ids)], cfg.loss) / cfg.grad_accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    per_step = statistics.median(times[1:])
    lengths = [len(r) for r in rows]
    step_flops = 2 * forward_flops(fm, lengths) / (steps + 1)
    sft = {
        "s_per_step": per_step, "users_per_step": users_per_step, "examples_per_s": users_per_step / per_step,
        "tokens_per_s": sum(lengths) / (steps + 1) / per_step, "mean_prompt_tokens": float(np.mean(lengths)),
        "gflops": step_flops / per_step / 1e9, "pct_peak": 100 * step_flops / per_step / 1e9 / peak,
    }  # fmt: skip

    n_items = min(items, data.num_items)  # items 1..n_items, one forward each (prompt building included)
    item_states(backbone, backbone.model, prompts, 4, batch_size=cfg.item_batch_size)  # warm-up
    start = time.perf_counter()
    item_states(backbone, backbone.model, prompts, n_items, batch_size=cfg.item_batch_size)
    seconds = time.perf_counter() - start
    item_ids = [prompts.ids([i]) for i in range(1, n_items + 1)]
    # What actually ran: the shared prefix once, then each item's own tokens attending to it.
    shared = common_prefix(item_ids) if backbone.family == "causal" else 0
    own = [len(r) - shared for r in item_ids]
    aug_flops = forward_flops(fm, [shared]) + sum(fm.tokens(n, n * shared + n * (n + 1) // 2, 0) for n in own)
    aug = {"items": n_items, "items_per_s": n_items / seconds, "mean_prompt_tokens": float(np.mean([len(r) for r in item_ids])),
           "shared_prefix_tokens": shared,
           "gflops": aug_flops / seconds / 1e9, "pct_peak": 100 * aug_flops / seconds / 1e9 / peak}  # fmt: skip

    from ..teachers.bench import bench_teachers

    variants = [parse_p2rec_variant(v) for v in cfg.variants]
    teacher_names = sorted({v.teacher for v in variants})
    teachers = bench_teachers(preset, teacher_names, epochs=1, repeats=1, config_file=config_file, verbose=False)
    s_epoch = dict(zip(teachers["teacher"], teachers["s_per_epoch"], strict=True))

    sources = {states_name(config, v): v for v in variants}
    n_sft = sum(1 for v in sources.values() if v.sft)
    sft_steps = cfg.max_steps or -(-len(train_users) // users_per_step) * cfg.epochs
    evals = sft_steps // cfg.eval_every + 2  # step 0, every eval_every, the last
    sft_minutes = n_sft * (sft_steps * per_step + evals * len(held_users) / (2 * sft["examples_per_s"])) / 60
    aug_minutes = len(sources) * data.num_items / aug["items_per_s"] / 60
    trained = [v.teacher for v in variants]
    trained += [parse_p2rec_variant(n).teacher for n in cfg.seed_study_variants() for _ in cfg.seeds for _ in range(2)]
    teacher_minutes = sum(s_epoch[t] for t in trained) * teacher_epochs / 60
    plan = {"sft_runs": n_sft, "sft_steps": sft_steps, "item_state_passes": len(sources), "teacher_trainings": len(trained),
            "teacher_epochs_assumed": teacher_epochs, "sft_minutes": sft_minutes, "augmentation_minutes": aug_minutes,
            "teacher_minutes": teacher_minutes, "total_minutes": sft_minutes + aug_minutes + teacher_minutes}  # fmt: skip
    result = {"preset": config.preset, "peak_gflops": peak, "peak_dtype": dtype_name(backbone.compute_dtype), "sft": sft, "augmentation": aug,
              "teacher_s_per_epoch": s_epoch, "plan": plan}  # fmt: skip
    if verbose:
        print(f"{dtype_name(backbone.compute_dtype)} matmul peak {peak:.0f} GFLOP/s")
        print(f"SFT: {per_step:.2f} s/step ({users_per_step} users, {sft['mean_prompt_tokens']:.0f} tokens each) = "
              f"{sft['examples_per_s']:.2f} examples/s, {sft['tokens_per_s']:.0f} tokens/s, ~{sft['gflops']:.0f} GFLOP/s "
              f"= {sft['pct_peak']:.0f}% of the matmul peak")  # fmt: skip
        print(f"augmentation: {aug['items_per_s']:.1f} items/s ({aug['mean_prompt_tokens']:.0f} tokens each, the first "
              f"{shared} shared and run once), "
              f"~{aug['gflops']:.0f} GFLOP/s = {aug['pct_peak']:.0f}% of the matmul peak")  # fmt: skip
        print("teachers: " + ", ".join(f"{t} {s:.1f} s/epoch" for t, s in s_epoch.items()))
        print(f"{config.preset} preset: {n_sft} SFT x {sft_steps} steps = {sft_minutes:.1f} min (held-out evaluations "
              f"included), {len(sources)} item passes = {aug_minutes:.1f} min, {len(trained)} teacher trainings x "
              f"{teacher_epochs} epochs = {teacher_minutes:.1f} min; total {plan['total_minutes']:.1f} min")  # fmt: skip
    return result


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu")
    p.add_argument("--config", default=None, help="TOML/JSON overrides of the preset")
    p.add_argument("--steps", type=int, default=4, help="SFT optimizer steps timed (after a warm-up step)")
    p.add_argument("--items", type=int, default=256, help="items fed through the LLM for the augmentation timing")
    p.add_argument("--teacher-epochs", type=int, default=16, help="epochs per teacher training assumed by the plan "
                   "(early stopping decides; the cpu preset's six SASRec trainings took 10-25, 16 on average)")  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    return bench_p2rec(args.preset, args.config, args.steps, args.items, args.teacher_epochs)


def summary(result: dict) -> list[str]:
    sft, aug, plan = result["sft"], result["augmentation"], result["plan"]
    return [
        f"P2Rec SFT: {sft['s_per_step']:.1f} s/step, {sft['examples_per_s']:.2f} examples/s ({sft['pct_peak']:.0f}% of "
        f"the matmul peak); item states {aug['items_per_s']:.1f} items/s; {result['preset']} preset "
        f"~{plan['total_minutes']:.0f} min (SFT {plan['sft_minutes']:.1f}, items {plan['augmentation_minutes']:.1f}, "
        f"teachers {plan['teacher_minutes']:.1f})"
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m delrec_lib.p2rec.bench", description=__doc__.split("\n\n")[0])
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
