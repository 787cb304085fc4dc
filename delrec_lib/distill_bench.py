"""Benchmark of DELRec stage 1 (``python -m delrec_lib.bench distill``): seconds per optimizer step on
the preset's real prompts (a throw-away run whose teacher is the popularity baseline: its top-k lists
make prompts as long as any teacher's), tokens/s, and achieved GFLOP/s against the matmul peak in the LLM's compute dtype,
counting a training step as two forwards (the backward through a frozen trunk computes activation
gradients only); the preset's minutes per soft prompt.
"""

from __future__ import annotations

import argparse
import tempfile

from .distill import run_distillation
from .perf import FlopModel, StepClock, prompt_cost, training_args, training_bench_setup, training_row

add_args = training_args


def measure(config, paths, data, backbone, peak, planned) -> dict:
    cfg = config.distill
    clock = StepClock()
    run_distillation(config, paths, data, backbone, "popularity", progress=False, callbacks=[clock])
    task = clock.trainer.task
    users = task.users[:64]
    prompts = [task.prompt(task.train[t][u]) for u in users for t in task.tasks]
    tokens, flops = prompt_cost(FlopModel.of(backbone.model), backbone, prompts)
    n = cfg.batch_size * cfg.grad_accum * len(task.tasks)  # users per step x (TA, RPS)
    row = training_row("distill", clock, n, tokens * n, flops * n, peak)
    row["minutes_per_prompt"] = row["s_per_step"] * planned["distill"] / 60
    print(f"  {planned['distill']} steps of the run: {row['minutes_per_prompt']:.1f} min per soft prompt (evaluations excluded)")
    return row


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="delrec-bench-") as root:
        return measure(*training_bench_setup(args, root))




def summary(result: dict) -> list[str]:
    return [f"stage 1: {result['s_per_step']:.1f} s/step, {result['minutes_per_prompt']:.1f} min per soft prompt"]
