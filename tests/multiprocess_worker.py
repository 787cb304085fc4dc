"""One LLM training stage of the kit under however many processes launched it, recording what
each process did: the examples of every micro-batch with the weight its gradient got, and the
trainable tensors after every optimizer step.

``tests/test_multiprocess.py`` launches it with two processes (torchrun, which ``accelerate
launch --multi_gpu`` runs, with CUDA hidden: gloo on the CPU) and calls ``run_scenario``
in-process for the one-process reference of the same global batch.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/multiprocess_worker.py WORLD SCENARIO...

runs each scenario in ``WORLD/<scenario>-multi/run`` (prepared by the test) and writes each
process's record to ``WORLD/<scenario>-multi/records``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path


def exit_with_launcher(poll_s: float = 1.0) -> None:
    """End this process when its launcher dies (killed on a test's timeout): a worker waiting in
    a collective operation for a peer that is gone would otherwise wait on, orphaned."""
    launcher = os.getppid()

    def watch():
        while os.getppid() == launcher and launcher != 1:
            time.sleep(poll_s)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


if __name__ == "__main__":  # first, before the imports below take their seconds
    exit_with_launcher()

import torch  # noqa: E402

from delrec_lib.training import TrainingTask  # noqa: E402

GLOBAL_BATCH = 4  # examples per micro-batch over all processes; each process takes GLOBAL_BATCH / processes

# Each scenario is sized so that an epoch ends in a batch smaller than the global batch: its
# examples cannot be shared evenly, and with one example a process has none of its own.
SCENARIOS = {
    # stage 2, LoRA with the frozen stage-1 soft prompt; 9 examples: batches of 4, 4, 1.
    "lora": {"stage": "finetune", "variant": "delrec-sasrec",
             "finetune": {"max_train_users": 9, "max_steps": 4, "eval_every": 2, "grad_accum": 1}},
    # stage 2, AdaLoRA (rank reallocation from the gradients), two micro-batches per step;
    # 7 examples: batches of 4 and 3, one step per epoch.
    "adalora": {"stage": "finetune", "variant": "lora",
                "finetune": {"method": "adalora", "max_train_users": 7, "max_steps": 3, "eval_every": 3, "grad_accum": 2,
                             "lora_r": 2, "adalora_init_r": 4, "adalora_tinit": 1, "adalora_tfinal": 1,
                             "adalora_delta_t": 1}},
    # stage 1, TA + RPS with dynamic loss weighting; 5 training users: batches of 4, 1.
    "distill": {"stage": "distill", "name": "sasrec",
                "distill": {"max_train_users": 5, "max_steps": 3, "eval_every": 2, "grad_accum": 1, "weighting": "dynamic"}},
}  # fmt: skip


def scenario_config(scenario: str, processes: int):
    from delrec_lib.config import DistillConfig, FinetuneConfig, LLMConfig, RunConfig

    if GLOBAL_BATCH % processes:
        raise ValueError(f"{processes} processes cannot share a global batch of {GLOBAL_BATCH}")
    spec = SCENARIOS[scenario]
    # Only the stage being trained shares its global batch: stage 2 refuses a soft prompt made
    # with other stage-1 settings than its run's.
    per_process = GLOBAL_BATCH // processes
    ft_batch = per_process if spec["stage"] == "finetune" else GLOBAL_BATCH
    ds_batch = per_process if spec["stage"] == "distill" else GLOBAL_BATCH
    # lora_dropout 0: dropout masks come from each process's own RNG stream, so with dropout a
    # two-process run matches a one-process run in distribution only, not number for number.
    ft = FinetuneConfig(max_train_users=24, valid_users=8, max_steps=4, batch_size=ft_batch, grad_accum=1, lr=5e-3,
                        eval_every=2, warmup_steps=0, num_negatives=5, lora_r=4, lora_dropout=0.0, lora_layers=None,
                        positions_per_user=1)  # fmt: skip
    ds = DistillConfig(heldout_users=8, max_steps=2, batch_size=ds_batch, grad_accum=1, eval_every=2,
                       num_soft_tokens=4, warmup_steps=0, ta_candidates=6, rps_top_k=3, rps_random=3, lr=0.05)  # fmt: skip
    return RunConfig(
        preset="smoke", llm=LLMConfig(history_len=4, title_style="with_year"),
        distill=dataclasses.replace(ds, **spec.get("distill", {})),
        finetune=dataclasses.replace(ft, **spec.get("finetune", {})),
    )  # fmt: skip


def who_ran(state) -> dict:
    """Which process of how many, over which backend, with which checkout of the kit."""
    import delrec_lib

    return {"process_index": state.process_index, "num_processes": state.num_processes,
            "backend": str(state.backend), "delrec_lib": str(Path(delrec_lib.__file__).parent)}  # fmt: skip


class NoisyRegression(TrainingTask):
    """y = Xw + noise through dropout: a task whose training draws random numbers, so a resumed
    run matches an uninterrupted one only if every process's RNG state is restored."""

    def __init__(self, n: int = 37, init_seed: int = 0, worsening: bool = False):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=g)
        self.y = self.x @ torch.arange(1.0, 7.0) + 0.1 * torch.randn(n, generator=g)
        torch.manual_seed(init_seed)
        self.model = torch.nn.Sequential(torch.nn.Dropout(0.3), torch.nn.Linear(6, 1))
        self.worsening, self.evaluations = worsening, 0

    def trainable_module(self):
        return self.model

    def num_examples(self):
        return len(self.x)

    def make_batch(self, indices):
        return self.x[indices], self.y[indices]

    def training_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.model(x).squeeze(-1), y), {}

    def evaluate(self):
        self.evaluations += 1
        if self.worsening:  # never improves after the first evaluation
            return {"mse": float(self.evaluations)}
        return {"mse": float(torch.nn.functional.mse_loss(self.model(self.x).squeeze(-1), self.y))}


class Interrupt(Exception):
    pass


def run_trainer_scenario(run_dir: Path, record_dir: Path) -> dict:
    """The shared loop alone: an interrupted run resumed vs an uninterrupted one (37 examples,
    2 x 2 per step: the tail batch of one example is in an accumulation group), and early
    stopping decided from the main process's evaluation."""
    from safetensors.torch import save_file

    from delrec_lib.training import TrainConfig, Trainer
    from delrec_lib.training.distributed import process_state

    state = process_state()
    cfg = TrainConfig(max_epochs=3, batch_size=GLOBAL_BATCH // state.num_processes, grad_accum=2, lr=0.1,
                      eval_every=3, metric="mse", log_every=1, seed=5)  # fmt: skip
    full_task = NoisyRegression()
    full = Trainer(cfg, full_task, run_dir / "full", progress=False).train()

    def stop_at_4(trainer, step):
        if step == 4:
            raise Interrupt

    try:
        Trainer(cfg, NoisyRegression(), run_dir / "cut", progress=False, callbacks=[stop_at_4]).train()
        raise AssertionError("the interruption did not happen")
    except Interrupt:
        pass
    resumed_task = NoisyRegression(init_seed=99)  # restored from the checkpoint, not from its own init
    resumed = Trainer(cfg, resumed_task, run_dir / "cut", progress=False).train()
    stopping = dataclasses.replace(cfg, max_epochs=50, eval_every=1, patience=3)
    early = Trainer(stopping, NoisyRegression(worsening=True), run_dir / "early", progress=False).train()
    tensors = {f"full/{k}": v for k, v in full_task.trainable_state().items()}
    tensors |= {f"resumed/{k}": v for k, v in resumed_task.trainable_state().items()}
    record = {
        **who_ran(state),
        "full": {"history": full.history, "train_log": full.train_log, "steps": full.steps},
        "resumed": {"history": resumed.history, "train_log": resumed.train_log, "steps": resumed.steps},
        "early": {"steps": early.steps, "stopped": early.stopped, "best_step": early.best_step},
    }
    record_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(record_dir / f"rank{state.process_index}.safetensors"))
    (record_dir / f"rank{state.process_index}.json").write_text(json.dumps(record, indent=1, default=str))
    return record


@contextlib.contextmanager
def recording(task_cls, log: list[dict]):
    """Record, per micro-batch, the example indices and the weight (``scale``) of their gradient."""
    make_batch, backward = task_cls.make_batch, task_cls.backward

    def spy_make_batch(self, indices):
        self._recorded_indices = [int(i) for i in indices]
        return make_batch(self, indices)

    def spy_backward(self, loss, accelerator, scale):
        log.append({"indices": self._recorded_indices, "scale": float(scale)})
        return backward(self, loss, accelerator, scale)

    task_cls.make_batch, task_cls.backward = spy_make_batch, spy_backward
    try:
        yield
    finally:
        task_cls.make_batch, task_cls.backward = make_batch, backward


def run_scenario(scenario: str, world: Path, run_dir: Path, record_dir: Path) -> dict:
    """Run ``scenario`` in ``run_dir`` with every process that launched this one; write this
    process's record to ``record_dir/rank<i>.json`` and ``.safetensors``; return the record."""
    from safetensors.torch import save_file

    from delrec_lib.artifacts import RunPaths
    from delrec_lib.data import load_processed
    from delrec_lib.delrec.distill import DistillTask, run_distillation
    from delrec_lib.delrec.finetune import FinetuneTask, run_finetuning
    from delrec_lib.llm import load_backbone
    from delrec_lib.training.distributed import process_state

    state = process_state()
    spec = SCENARIOS[scenario]
    config = scenario_config(scenario, state.num_processes)
    data = load_processed(world / "data", "toy")
    backbone = load_backbone(str(world / "tiny"), dtype="float32", device="cpu")
    paths = RunPaths(run_dir)
    micro_batches: list[dict] = []
    steps: dict[str, torch.Tensor] = {}
    step_log: list[dict] = []

    def after_step(trainer, step):
        for name, tensor in trainer.task.trainable_state().items():
            steps[f"{step}/{name}"] = tensor.contiguous()
        step_log.append({"step": step, "micro_batches": list(micro_batches)})
        micro_batches.clear()

    if spec["stage"] == "finetune":
        with recording(FinetuneTask, micro_batches):
            result = run_finetuning(config, paths, data, backbone, spec["variant"], progress=False, callbacks=[after_step])
    else:
        with recording(DistillTask, micro_batches):
            result = run_distillation(config, paths, data, backbone, spec["name"], progress=False, callbacks=[after_step])
    record = {
        **who_ran(state),
        "steps": step_log,
        "metrics": result.metrics,
        "history": result.history.to_dict(orient="records"),
        "directory": str(result.directory),
    }
    record_dir.mkdir(parents=True, exist_ok=True)
    save_file(steps, str(record_dir / f"rank{state.process_index}.safetensors"))
    (record_dir / f"rank{state.process_index}.json").write_text(json.dumps(record, indent=1, default=str))
    return record


def scenario_dir(world: Path, scenario: str, processes: str) -> Path:
    """Where a scenario runs ("multi" or "single") and where its records go (``/records``)."""
    return world / f"{scenario}-{processes}"


if __name__ == "__main__":
    torch.set_num_threads(1)
    world, scenarios = Path(sys.argv[1]), sys.argv[2:]
    for name in scenarios:  # one launch for several scenarios: process start-up is most of the time
        where = scenario_dir(world, name, "multi")
        if name == "trainer":
            run_trainer_scenario(where / "run", where / "records")
        else:
            run_scenario(name, world, where / "run", where / "records")
