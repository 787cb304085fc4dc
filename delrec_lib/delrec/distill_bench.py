"""Benchmark of DELRec stage 1 (``python -m delrec_lib.bench distill``): seconds per optimizer step on
the preset's real prompts (a throw-away run whose teacher is the popularity baseline: its top-k lists
make prompts as long as any teacher's), users and tokens per second, and achieved GFLOP/s against the
matmul peak in the LLM's compute dtype (the FLOPs that actually run; a training step's backward through
the frozen trunk computes activation gradients only, counted as one more forward); the preset's minutes
per soft prompt.

With ``distill.cache_prefix`` (the default) a step costs less once its users have been seen: the
first visit of an example computes the keys/values of its text before the soft-prompt slot (forward
only) and every visit runs the slot, the text after it and the candidates forward and backward. Both
kinds of step are timed: the throw-away run trains on just enough users for the timed steps, so its
second epoch revisits them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace

from ..bench.perf import (
    FlopModel,
    PartClock,
    StepClock,
    prompt_cost,
    training_args,
    training_bench_setup,
    training_row,
)
from .distill import run_distillation

add_args = training_args


def measure(config, paths, data, backbone, peak, planned, steps: int) -> dict:
    cfg = config.distill
    users_per_step = cfg.batch_size * cfg.grad_accum
    # Epoch 1: a warm-up step and `steps` timed first visits; epoch 2 revisits the same users.
    epoch = steps + 1
    config = replace(config, distill=replace(cfg, max_train_users=users_per_step * epoch, max_steps=2 * epoch + 1,
                                             eval_every=2 * epoch + 1))  # fmt: skip
    clock = StepClock()
    run_distillation(config, paths, data, backbone, "popularity", progress=False, callbacks=[clock])
    task = clock.trainer.task
    times = clock.step_seconds()  # steps 2 .. 2 * epoch (the warm-up and the closing evaluation dropped)
    first, later = times[: epoch - 1], times[epoch - 1 :]
    prompts = [task.prompt(task.train[t][u]) for u in task.users for t in task.tasks]
    cached = config.distill.cache_prefix and backbone.family == "causal"
    fm = FlopModel.of(backbone.model)
    n = users_per_step * len(task.tasks)  # prompts per step: (TA, RPS) per user
    if cached:
        prefix_tokens, prefix_flops, rest_tokens, rest_flops = prompt_cost(fm, backbone, prompts, split_at_slot=True)
    else:
        rest_tokens, rest_flops = prompt_cost(fm, backbone, prompts)
        prefix_tokens = prefix_flops = 0.0
    # A first visit runs the prefix forward only (one forward's FLOPs); the rest forward and backward (two).
    row_first = training_row("distill, first visit", PartClock(first), n, (prefix_tokens + rest_tokens) * n,
                             (prefix_flops / 2 + rest_flops) * n, peak)  # fmt: skip
    row_later = training_row("distill, revisit (cached prefix)" if cached else "distill, revisit", PartClock(later), n,
                             rest_tokens * n, rest_flops * n, peak)  # fmt: skip
    row = {**row_first, "users_per_step": users_per_step, "users_per_minute": 60 * users_per_step / row_first["s_per_step"],
           "revisit": row_later, "cache_prefix": cached, "prefix_tokens": prefix_tokens, "rest_tokens": rest_tokens}  # fmt: skip
    row["revisit"]["users_per_minute"] = 60 * users_per_step / row_later["s_per_step"]
    if cached:
        sample = prompts[:16]  # timed twice; its own mean prefix FLOPs, not the whole set's
        sample_flops = prompt_cost(fm, backbone, sample, split_at_slot=True)[1]
        row["caching"] = caching_rows(backbone, sample, config.llm.score_batch_size, sample_flops, peak)
    # The preset's run: its steps visit max_steps x users-per-step users, each training user once per epoch.
    train_users = len(task_users(config=planned["config"], data=data))
    visits = planned["distill"] * users_per_step
    firsts = min(visits, train_users) / users_per_step
    row["minutes_per_prompt"] = (firsts * row_first["s_per_step"] + (planned["distill"] - firsts) * row_later["s_per_step"]) / 60
    print(f"  {planned['distill']} steps of the run ({train_users} training users, {visits} user visits): "
          f"{row['minutes_per_prompt']:.1f} min per soft prompt (evaluations excluded)")  # fmt: skip
    return row


def caching_rows(backbone, prompts: list, batch_size: int, prefix_flops: float, peak: float) -> dict:
    """The frozen states of ``prompts``' text before the slot, one prompt at a time and in batches of
    ``batch_size`` (stage 1's way): ms per prompt and the share of the matmul peak (``prefix_flops``: mean forward
    FLOPs of one prompt's prefix)."""
    from ..llm.scoring import prefix_states

    rows = {}
    for size in dict.fromkeys((1, batch_size)):
        start = time.perf_counter()
        prefix_states(backbone, prompts, batch_size=size)
        seconds = (time.perf_counter() - start) / len(prompts)
        rows[f"batch_{size}"] = {"ms_per_prompt": 1000 * seconds, "pct_peak": 100 * prefix_flops / seconds / 1e9 / peak}
        print(f"frozen-state caching in batches of {size}: {1000 * seconds:.0f} ms per prompt, "
              f"{rows[f'batch_{size}']['pct_peak']:.0f}% of the matmul peak")  # fmt: skip
    return rows


def task_users(config, data) -> list[int]:
    from .distill import split_users

    return split_users(data, config.distill, config.max_users).train


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="delrec-bench-") as root:
        return measure(*training_bench_setup(args, root), steps=args.steps)


def summary(result: dict) -> list[str]:
    return [f"stage 1: {result['s_per_step']:.1f} s/step first visit, {result['revisit']['s_per_step']:.1f} revisited "
            f"({result['users_per_minute']:.0f} / {result['revisit']['users_per_minute']:.0f} users/min), "
            f"{result['minutes_per_prompt']:.1f} min per soft prompt"]  # fmt: skip
