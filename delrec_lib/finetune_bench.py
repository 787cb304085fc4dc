"""Benchmark of DELRec stage 2 (``python -m delrec_lib.bench finetune``): seconds per optimizer step on
the preset's real prompts (a throw-away run; its soft prompt comes from a one-step stage 1 on the
popularity baseline, whose quality does not change the cost), tokens/s, achieved GFLOP/s against the
matmul peak in the LLM's compute dtype (a training step counted as two forwards), the preset's minutes per variant.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace

from .distill import run_distillation
from .finetune import run_finetuning
from .perf import FlopModel, StepClock, prompt_cost, training_args, training_bench_setup, training_row

add_args = training_args


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="delrec-bench-") as root:
        return measure(*training_bench_setup(args, root))


def measure(config, paths, data, backbone, peak, planned) -> dict:
    # Stage 2 needs a soft prompt: a one-step stage 1 (its quality does not change the cost).
    config = replace(config, distill=replace(config.distill, max_steps=1))
    run_distillation(config, paths, data, backbone, "popularity", progress=False)
    cfg = config.finetune
    clock = StepClock()
    run_finetuning(config, paths, data, backbone, "delrec-popularity", progress=False, callbacks=[clock])
    task = clock.trainer.task
    prompts = [task.scorer.prompt(e) for e in task.train[:64]]
    tokens, flops = prompt_cost(FlopModel.of(backbone.model), backbone, prompts)
    n = cfg.batch_size * cfg.grad_accum
    row = training_row("finetune", clock, n, tokens * n, flops * n, peak)
    row["minutes_per_variant"] = row["s_per_step"] * planned["finetune"] / 60
    print(f"  {planned['finetune']} steps of the run: {row['minutes_per_variant']:.1f} min per variant (evaluations excluded)")
    return row




def summary(result: dict) -> list[str]:
    return [f"stage 2: {result['s_per_step']:.1f} s/step, {result['minutes_per_variant']:.1f} min per variant"]
