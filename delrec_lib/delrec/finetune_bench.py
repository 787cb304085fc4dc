"""Benchmark of DELRec stage 2 (``python -m delrec_lib.bench finetune``): seconds per optimizer step on
the preset's real prompts (a throw-away run; its soft prompt comes from a one-step stage 1 on the
popularity baseline, whose quality does not change the cost), examples and tokens per second, achieved
GFLOP/s against the matmul peak in the LLM's compute dtype (the FLOPs that actually run; a backward
through frozen weights counted as one more forward), the preset's minutes per variant.

With ``finetune.lora_layers`` and ``cache_lower_layers`` a first visit of an example runs the frozen lower
layers forward once (no grad) and the adapted upper layers forward and backward; a revisit runs only
the upper layers. Both kinds of step are timed: the throw-away run trains on just enough users for the
timed steps, so its second epoch revisits them.
"""

from __future__ import annotations

import argparse
import tempfile
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
from .finetune import run_finetuning, select_users, training_examples

add_args = training_args


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="delrec-bench-") as root:
        return measure(*training_bench_setup(args, root), steps=args.steps)


def measure(config, paths, data, backbone, peak, planned, steps: int) -> dict:
    # Stage 2 needs a soft prompt: a one-step stage 1 (its quality does not change the cost).
    config = replace(config, distill=replace(config.distill, max_steps=1))
    run_distillation(config, paths, data, backbone, "popularity", progress=False)
    cfg = config.finetune
    per_step = cfg.batch_size * cfg.grad_accum
    epoch = steps + 1  # a warm-up step and `steps` timed first visits; epoch 2 revisits the same examples
    users = -(-per_step * epoch // cfg.positions_per_user)
    config = replace(config, finetune=replace(cfg, max_train_users=users, max_steps=2 * epoch + 1, eval_every=2 * epoch + 1))
    clock = StepClock()
    run_finetuning(config, paths, data, backbone, "delrec-popularity", progress=False, callbacks=[clock])
    task = clock.trainer.task
    times = clock.step_seconds()
    n_train = len(task.train)
    first_steps = -(-n_train // per_step) - 1  # the warm-up step is not timed
    first, later = times[:first_steps], times[first_steps:]
    prompts = [task.scorer.prompt(e) for e in task.train[:64]]
    tokens, flops = prompt_cost(FlopModel.of(backbone.model), backbone, prompts)
    fm = FlopModel.of(backbone.model)
    split = task.scorer.frozen_below
    upper = 1.0 if not split else (fm.layers - split) / fm.layers
    head = 2 * fm.hidden * fm.vocab * sum(len(t) for t in prompts[0].candidates) / max(len(prompts[0].candidates), 1)  # rough
    body = flops - head
    up_flops = body * upper + head
    # First visit: the lower layers forward once, the upper ones forward and backward; revisit: the upper ones only.
    row = training_row("finetune, first visit", PartClock(first), per_step, tokens * per_step,
                       (body * (1 - upper) / 2 + up_flops) * per_step, peak)  # fmt: skip
    revisit = training_row("finetune, revisit" + (f" (layers below {split} cached)" if split else ""), PartClock(later),
                           per_step, tokens * per_step, up_flops * per_step, peak)  # fmt: skip
    row.update({"frozen_below": split, "lora_layers": cfg.lora_layers, "revisit": revisit,
                "examples_per_minute": 60 * per_step / row["s_per_step"]})  # fmt: skip
    revisit["examples_per_minute"] = 60 * per_step / revisit["s_per_step"]
    # The preset's run: max_steps x examples-per-step visits, each training example once per epoch.
    full = planned["config"]
    n_examples = len(training_examples(data, select_users(data, full.finetune, full.max_users)[0], full.finetune))
    visits = planned["finetune"] * per_step
    firsts = min(visits, n_examples) / per_step
    row["minutes_per_variant"] = (firsts * row["s_per_step"] + (planned["finetune"] - firsts) * revisit["s_per_step"]) / 60
    print(f"  {planned['finetune']} steps of the run ({n_examples} training examples, {visits} visits): "
          f"{row['minutes_per_variant']:.1f} min per variant (evaluations excluded)")  # fmt: skip
    return row


def summary(result: dict) -> list[str]:
    return [f"stage 2: {result['s_per_step']:.1f} s/step first visit, {result['revisit']['s_per_step']:.1f} revisited "
            f"({result['examples_per_minute']:.0f} / {result['revisit']['examples_per_minute']:.0f} examples/min), "
            f"{result['minutes_per_variant']:.1f} min per variant"]  # fmt: skip
