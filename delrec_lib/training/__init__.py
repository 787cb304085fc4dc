"""The one training loop every stage shares: teachers, soft-prompt distillation, LoRA fine-tuning.

In the style of Hugging Face's example scripts: a plain loop over shuffled micro-batches with
gradient accumulation, optional bf16 autocast, gradient clipping, a learning-rate schedule,
periodic evaluation with early stopping and best-model selection, a tqdm progress bar, and
checkpoints that resume exactly. ``accelerate`` provides the device and process layout, so
the same code runs on one CPU and, under ``accelerate launch``, on several processes:

- every process starts from the main process's trainable weights and takes a disjoint,
  balanced share of every global batch (``batch_size`` examples per process); its loss is
  weighted by the size of its share, and the loop averages the gradients over processes
  before clipping (``distributed.average_gradients``), so P processes with ``batch_size`` b
  take the optimizer steps of one process with ``batch_size`` P x b (tests/test_multiprocess.py);
- only the main process evaluates (the metrics are broadcast, so every process takes the same
  early-stopping and best-step decisions) and writes checkpoints; each process's RNG state is
  saved and restored with them;
- ``load_best`` waits for the main process's file, then loads it in every process.

A stage plugs in by implementing ``TrainingTask``. Checkpoints hold no pickles: tensors go to
safetensors, counters and RNG states to JSON.

``distributed`` (in this package) holds the process helpers: the device, the launch, broadcasts and
gradient averaging.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..artifacts import atomic_dir, sha256_json, to_jsonable
from ..errors import ConfigError
from ..phases import phase
from . import distributed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one stage. Steps count optimizer updates (after accumulation)."""

    max_epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8  # examples per micro-batch, per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    eval_every: int | None = None  # optimizer steps between evaluations; None = end of each epoch
    eval_at_start: bool = False  # evaluate the untrained state too (step 0) for the curves
    patience: int | None = None  # evaluations without improvement before stopping early
    metric: str = "loss"  # key of the evaluation dict used for model selection
    greater_is_better: bool = False
    bf16: bool = False  # bf16 autocast for forward passes (the stages choose from the dtype policy)
    seed: int = 0
    log_every: int = 10


@dataclass
class TrainResult:
    steps: int
    epochs_completed: int
    best_step: int | None
    best_metric: float | None
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per evaluation
    train_log: list[dict[str, Any]] = field(default_factory=list)  # one row per log_every steps
    stopped: str = "finished"
    seconds: float = 0.0
    processes: int = 1  # processes that trained; each micro-batch held processes x batch_size examples


class TrainingTask:
    """What a stage provides to the loop. Subclasses implement the four abstract methods."""

    def trainable_module(self) -> torch.nn.Module:
        """The module holding every trainable parameter."""
        raise NotImplementedError

    def num_examples(self) -> int:
        raise NotImplementedError

    def make_batch(self, indices: Sequence[int]) -> Any:
        """Collate the training examples with these indices into one micro-batch."""
        raise NotImplementedError

    def training_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to minimise for one micro-batch, and scalars to log."""
        raise NotImplementedError

    def backward(self, loss: torch.Tensor, accelerator, scale: float) -> dict[str, float] | None:
        """Backpropagate ``loss * scale``: scale = 1 / micro-batches per step, times this process's
        share of the micro-batch x processes (0 for a stand-in example, see ``Trainer``). Override
        for tasks that combine per-task gradients themselves (dynamic loss weighting; such an
        override must make the same collective calls in every process); scalars returned are
        logged."""
        accelerator.backward(loss * scale)
        return None

    def replay(self, indices: Sequence[int]) -> None:
        """A resumed run first hands the task the indices of each micro-batch the interrupted run trained on, in that
        order (``make_batch``'s): a task whose caches depend on which examples shared a call (stage 1's batched
        frozen states) rebuilds them as they were, so the resumed run computes what the uninterrupted one did, bit
        for bit. Default: nothing."""

    def on_optimizer_step(self, step: int) -> None:
        """Called after each optimizer update, before gradients are zeroed (AdaLoRA's rank allocation)."""

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """Extra training state a checkpoint must hold for an exact resume (e.g. AdaLoRA's importance scores)."""
        return {}

    def restore_checkpoint_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of ``checkpoint_tensors``."""

    def evaluate(self) -> dict[str, float]:
        """Validation metrics; must contain the config's ``metric``. Runs in eval mode, no grad."""
        return {}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Tensors that define the trained state (saved for the best model and in checkpoints)."""
        module = self.trainable_module()
        return {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        module = self.trainable_module()
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / max(1, config.warmup_steps)
        if config.schedule == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        progress = min(1.0, progress)
        if config.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def process_seed(seed: int, process_index: int) -> int:
    """The main process keeps ``seed`` (one process runs as before); the others get independent
    streams, so that dropout masks and sampled negatives differ between their examples."""
    if process_index == 0:
        return seed
    return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])


def share_of(batch: np.ndarray, process_index: int, num_processes: int) -> tuple[np.ndarray, float]:
    """This process's examples of a micro-batch of the global batch, and the weight of its mean loss.

    Shares are disjoint, balanced (sizes differ by at most one) and together the whole batch.
    The weight ``len(share) * processes / len(batch)`` makes the mean over processes of the
    weighted losses (and gradients) equal the mean over the whole batch when shares differ in
    size. A process whose share is empty (a batch shorter than the number of processes) gets
    the batch's first example with weight 0: it still runs the forward and backward passes
    and so takes part in every collective operation, but contributes nothing.
    """
    mine = batch[process_index::num_processes]
    if len(mine) == 0:
        return batch[:1], 0.0
    return mine, len(mine) * num_processes / len(batch)


def autocast_context(enabled: bool, device: torch.device):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def epoch_batches(seed: int, epoch: int, n_examples: int, global_batch: int) -> list[np.ndarray]:
    """An epoch's micro-batches of example indices: the same on every process and after a resume, a permutation
    seeded by (seed, epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_examples)
    return [order[i : i + global_batch] for i in range(0, n_examples, global_batch)]


class Trainer:
    """Runs a ``TrainingTask``; checkpoints to ``checkpoint_dir`` and resumes from it.

    A checkpoint resumes only the computation it belongs to: ``identity`` (what the stage's result
    depends on: its settings and input hashes) with the training config. One of another identity
    (the settings changed since an interruption) is discarded with a warning and training starts afresh.

    ``callbacks`` are called as ``cb(trainer, step)`` after every optimizer step; a callback may
    raise to stop training (the tests use this to simulate an interruption).
    """

    def __init__(
        self,
        config: TrainConfig,
        task: TrainingTask,
        checkpoint_dir: str | Path | None = None,
        *,
        desc: str = "train",
        progress: bool = True,
        callbacks: Sequence[Callable[[Trainer, int], None]] = (),
        identity: Any = None,
    ):
        from accelerate import Accelerator

        if config.batch_size < 1 or config.grad_accum < 1:
            raise ConfigError(f"batch_size and grad_accum must be >= 1, got {config.batch_size} and {config.grad_accum}")
        if config.max_steps is None and config.max_epochs < 1:
            raise ConfigError("set max_epochs >= 1 or max_steps")
        self.config = config
        self.task = task
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.desc = desc
        self.progress = progress
        self.callbacks = list(callbacks)
        distributed.process_state()  # refuses a launch that accelerate did not set up as launched
        # Autocast is applied by the loop itself (accelerate's mixed-precision state is
        # process-global and cannot differ between stages run in one process).
        self.accelerator = Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available())
        self.device = self.accelerator.device
        # What the checkpoint must match to be resumed: the config plus what the stage adds
        # (its data and model hashes), so a checkpoint of another run is never picked up. The
        # number of processes sets the global batch, so it is part of it (when there are several:
        # one-process identities stay as they were).
        processes = self.accelerator.num_processes
        self.identity = sha256_json({"train": config, "task": identity, **({"processes": processes} if processes > 1 else {})})

    @property
    def is_main_process(self) -> bool:
        """Whether this process writes the stage's outputs (the only process when not launched)."""
        return self.accelerator.is_main_process

    def wait_for_everyone(self) -> None:
        """Barrier between the processes (a no-op in one process)."""
        self.accelerator.wait_for_everyone()

    # -- checkpoints -----------------------------------------------------------------------

    def _save_checkpoint(self, state: dict[str, Any], optimizer, scheduler) -> None:
        """Called in every process: each one's RNG state goes into the main process's checkpoint."""
        if self.checkpoint_dir is None:
            return
        rngs = distributed.gather_objects(_rng_state())
        if not self.accelerator.is_main_process:
            return
        with atomic_dir(self.checkpoint_dir / "last") as tmp:
            save_file(self.task.trainable_state(), str(tmp / "params.safetensors"))
            opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            # Process 0's under the names one process uses, the others' prefixed "process<i>/".
            rng = {f"process{i}/{k}" if i else k: v for i, (tensors, _) in enumerate(rngs) for k, v in tensors.items()}
            save_file(rng, str(tmp / "rng.safetensors"))
            extra = {k: v.detach().cpu().contiguous() for k, v in self.task.checkpoint_tensors().items()}
            if extra:
                save_file(extra, str(tmp / "task.safetensors"))
            meta = {
                **state,
                "identity": self.identity,
                "optimizer": opt_meta,
                "scheduler": to_jsonable(scheduler.state_dict()),
                **rngs[0][1],
                "process_rng": [meta for _, meta in rngs[1:]],
            }
            (tmp / "state.json").write_text(json.dumps(to_jsonable(meta), indent=1))

    def _load_checkpoint(self, optimizer, scheduler) -> dict[str, Any] | None:
        if self.checkpoint_dir is None:
            return None
        last = self.checkpoint_dir / "last"
        meta = json.loads((last / "state.json").read_text()) if (last / "state.json").is_file() else None
        if meta is not None and meta.get("identity") != self.identity:
            # The stage's settings or inputs changed since it was interrupted: its progress belongs to
            # another computation, so the stage starts afresh (as its artifact is recomputed).
            log.warning("%s: discarding the checkpoint at step %s, made with other settings or inputs than this "
                        "run's; training starts afresh", self.desc, meta.get("step"))  # fmt: skip
            meta = None
        if meta is None:
            self._discard_checkpoints()
            return None
        self.task.load_trainable_state(load_file(str(last / "params.safetensors")))
        optimizer.load_state_dict(_unflatten_optimizer(load_file(str(last / "optimizer.safetensors")), meta["optimizer"]))
        scheduler.load_state_dict(meta["scheduler"])
        if (last / "task.safetensors").is_file():
            self.task.restore_checkpoint_tensors(load_file(str(last / "task.safetensors")))
        index = self.accelerator.process_index
        prefix = f"process{index}/" if index else ""
        rng = {k.removeprefix(prefix): v for k, v in load_file(str(last / "rng.safetensors")).items()
               if k.startswith(prefix) and (prefix or "/" not in k)}  # fmt: skip
        _set_rng_state(rng, meta["process_rng"][index - 1] if index else meta)
        log.info("%s: resumed from step %d", self.desc, meta["step"])
        return meta

    def _discard_checkpoints(self) -> None:
        """Remove what a fresh start must not pick up: a stale ``last``, and a ``best`` that no
        evaluation of this training wrote (``load_best`` would otherwise load another run's state)."""
        # Every process has decided the same (same file, same identity) before the main one deletes.
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            for name in ("last", "best"):
                shutil.rmtree(self.checkpoint_dir / name, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def _save_best(self) -> None:
        if self.checkpoint_dir is None or not self.accelerator.is_main_process:
            return
        with atomic_dir(self.checkpoint_dir / "best") as tmp:
            save_file(self.task.trainable_state(), str(tmp / "params.safetensors"))

    def load_best(self) -> bool:
        """Load the best evaluated state into the task; False if none was saved.

        Under several processes every process must call it: it waits until the main process
        has written the file."""
        self.accelerator.wait_for_everyone()
        path = None if self.checkpoint_dir is None else self.checkpoint_dir / "best" / "params.safetensors"
        if path is None or not path.is_file():
            return False
        self.task.load_trainable_state(load_file(str(path)))
        return True

    # -- the loop ---------------------------------------------------------------------------

    def _batch_mean(self, values: dict[str, float], fraction: float) -> dict[str, float]:
        """Logged scalars over the whole micro-batch: each process's weighted by its share of it."""
        keys = sorted(values)
        t = torch.tensor([values[k] * fraction for k in keys], dtype=torch.float64, device=self.device)
        return dict(zip(keys, distributed.all_reduce_sum(t).tolist(), strict=True))

    def train(self) -> TrainResult:
        cfg, acc, task = self.config, self.accelerator, self.task
        set_seed(process_seed(cfg.seed, acc.process_index))
        module = task.trainable_module().to(self.device)
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"{self.desc}: the task has no trainable parameters")
        n_examples = task.num_examples()
        if n_examples == 0:
            raise ConfigError(f"{self.desc}: no training examples")
        global_batch = cfg.batch_size * acc.num_processes
        batches_per_epoch = math.ceil(n_examples / global_batch)
        steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
        total_steps = cfg.max_steps or steps_per_epoch * cfg.max_epochs
        if cfg.max_steps is not None:
            total_steps = min(cfg.max_steps, steps_per_epoch * cfg.max_epochs) if cfg.max_epochs else cfg.max_steps

        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
        state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": None, "best_step": None,
                 "bad_evals": 0, "history": [], "train_log": [], "running": {}, "seconds": 0.0,
                 "stopped": "finished"}  # fmt: skip
        resumed = self._load_checkpoint(optimizer, scheduler)
        if resumed:
            # (.get: checkpoints written before "stopped" was recorded)
            state.update({k: resumed.get(k, state[k]) for k in state})
        if resumed and state["stopped"] == "finished" and state["step"] < total_steps:  # it trains on
            for epoch in range(state["epoch"] + 1):
                batches = epoch_batches(cfg.seed, epoch, n_examples, global_batch)
                for micro in batches[: state["batch_in_epoch"] if epoch == state["epoch"] else len(batches)]:
                    task.replay(share_of(micro, acc.process_index, acc.num_processes)[0].tolist())
        # Every process starts from the main process's weights (a resumed run: from the same file).
        distributed.broadcast_parameters(params)
        start_time = time.perf_counter() - state["seconds"]

        def evaluate(step: int) -> bool:
            """Evaluate, track the best state; returns True when early stopping triggers."""
            module.eval()
            metrics = {}
            if acc.is_main_process:
                with phase("held-out evaluation"), torch.no_grad(), autocast_context(cfg.bf16, self.device):
                    metrics = {k: float(v) for k, v in task.evaluate().items()}
            module.train()
            metrics = distributed.broadcast_object(metrics)  # every process decides best and stopping alike
            if cfg.metric not in metrics:
                raise ConfigError(f"{self.desc}: evaluation returned {sorted(metrics)}, no '{cfg.metric}' to select on")
            value = metrics[cfg.metric]
            state["history"].append({"step": step, "epoch": state["epoch"], **metrics})
            best = state["best_metric"]
            improved = best is None or (value > best if cfg.greater_is_better else value < best)
            if improved:
                state["best_metric"], state["best_step"], state["bad_evals"] = value, step, 0
                self._save_best()
            else:
                state["bad_evals"] += 1
            bar.set_postfix({cfg.metric: f"{value:.4f}", "best": f"{state['best_metric']:.4f}"})
            stop = cfg.patience is not None and state["bad_evals"] >= cfg.patience
            if stop:  # recorded in the checkpoint: a resumed run that had stopped early stays stopped
                state["stopped"] = "early stopping"
            return stop

        bar = tqdm(total=total_steps, initial=state["step"], desc=self.desc, dynamic_ncols=True,
                   disable=not self.progress or not acc.is_main_process)  # fmt: skip
        if cfg.eval_at_start and state["step"] == 0 and not state["history"]:
            evaluate(0)
        module.train()
        running: dict[str, list[float]] = state["running"]  # losses since the last log row
        while state["epoch"] < cfg.max_epochs and state["step"] < total_steps and state["stopped"] == "finished":
            batches = epoch_batches(cfg.seed, state["epoch"], n_examples, global_batch)
            b = state["batch_in_epoch"]
            stop_now = False
            while b < len(batches) and state["step"] < total_steps:
                group = batches[b : b + cfg.grad_accum]
                for micro in group:
                    mine, weight = share_of(micro, acc.process_index, acc.num_processes)
                    with phase("training forward"):
                        batch = task.make_batch(mine.tolist())
                        with autocast_context(cfg.bf16, self.device):
                            loss, logs = task.training_loss(batch)
                    with phase("training backward"):
                        extra = task.backward(loss, acc, weight / len(group)) or {}
                    values = {"loss": float(loss.detach()), **logs, **extra}
                    if acc.num_processes > 1:  # the whole micro-batch's values, as one process logs them
                        values = self._batch_mean(values, weight / acc.num_processes)
                    for k, v in values.items():
                        running.setdefault(k, []).append(float(v))
                with phase("optimizer step"):
                    distributed.average_gradients(params)
                    if cfg.max_grad_norm is not None:
                        acc.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    task.on_optimizer_step(state["step"])
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                b += len(group)
                state["step"] += 1
                state["batch_in_epoch"] = b
                step = state["step"]
                bar.update(1)
                if step % cfg.log_every == 0 or step == total_steps:
                    row = {"step": step, "epoch": state["epoch"], "lr": scheduler.get_last_lr()[0],
                           **{k: float(np.mean(v)) for k, v in running.items()}}  # fmt: skip
                    state["train_log"].append(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                    running.clear()
                at_epoch_end = b >= len(batches)
                if at_epoch_end:
                    state["epoch"] += 1
                    state["batch_in_epoch"] = 0
                due = (cfg.eval_every is not None and step % cfg.eval_every == 0) or (
                    cfg.eval_every is None and at_epoch_end
                ) or step == total_steps  # fmt: skip
                if due:
                    stop_now = evaluate(step)
                    state["seconds"] = time.perf_counter() - start_time
                    with phase("checkpoints"):
                        self._save_checkpoint(state, optimizer, scheduler)
                for cb in self.callbacks:
                    cb(self, step)
                if stop_now:
                    break
                if at_epoch_end:
                    break
            if stop_now:
                break
        bar.close()
        state["seconds"] = time.perf_counter() - start_time
        if state["history"] and state["history"][-1]["step"] != state["step"]:
            evaluate(state["step"])
        self._save_checkpoint(state, optimizer, scheduler)
        acc.wait_for_everyone()
        return TrainResult(
            steps=state["step"], epochs_completed=state["epoch"], best_step=state["best_step"],
            best_metric=state["best_metric"], history=state["history"], train_log=state["train_log"],
            stopped=state["stopped"], seconds=state["seconds"], processes=acc.num_processes,
        )  # fmt: skip


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as safetensors tensors plus JSON metadata (no pickles)."""
    tensors, scalars = {}, {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": to_jsonable(sd["param_groups"]), "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: (tensors for safetensors, JSON values)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    return tensors, {"python_rng": _py_rng_to_json(random.getstate()),
                     "numpy_rng": to_jsonable(np.random.get_state(legacy=False))}  # fmt: skip


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    random.setstate(_py_rng_from_json(meta["python_rng"]))
    np_state = meta["numpy_rng"]
    np_state["state"]["key"] = np.array(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)


def _py_rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_rng_from_json(data: list) -> tuple:
    return (data[0], tuple(data[1]), data[2])
