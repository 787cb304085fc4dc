"""The process layout under ``accelerate launch`` (or ``torchrun``), and the few collectives the
training loop needs.

One process (notebooks, tests, ``python -m delrec_lib``) is the common case: every function is
then the identity or a no-op. Under a launcher, each process owns one device (GPU ``LOCAL_RANK``,
or the CPU with gloo), trains on its share of every global batch, and the training loop averages
the gradients itself (``average_gradients``) rather than through DDP: the stages' forward
passes call into the model's inner modules and stage 1 combines per-task gradients by hand,
neither of which DDP's hooks see.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError

BUCKET_ELEMENTS = 1 << 24  # gradients are averaged in flat buffers of at most this many values


def launched_processes() -> int:
    """How many processes the launcher started (torchrun / accelerate: WORLD_SIZE; MPI: its size)."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name):
            return int(os.environ[name])
    return 1


def process_state():
    """accelerate's shared process state, initialised as every part of the kit must see it.

    ``cpu=True`` when no GPU is visible: without it, processes started by a launcher on a
    CPU-only machine each come up as a lone process, train alone and overwrite each other's
    outputs. Raises if the state was already set up for another number of processes.
    """
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    launched = launched_processes()
    if state.num_processes != launched:
        raise ConfigError(
            f"{launched} processes were launched but accelerate set up {state.num_processes}: something "
            "initialised accelerate's PartialState before the kit did (on a CPU-only machine it needs cpu=True); "
            "create it with delrec_lib.training.distributed.process_state()"
        )
    return state


def num_processes() -> int:
    return 1 if launched_processes() == 1 else process_state().num_processes


def is_main_process() -> bool:
    """True in the process that writes artifacts (the only process when not launched)."""
    return launched_processes() == 1 or process_state().is_main_process


def default_device() -> torch.device:
    """Where this process computes: its own GPU under a launcher, else the GPU if any, else the CPU."""
    if launched_processes() > 1:
        return process_state().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def wait_for_everyone() -> None:
    """Barrier: returns when every process got here (e.g. after the main process wrote a file)."""
    if launched_processes() > 1:
        process_state().wait_for_everyone()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as process ``src`` has it, in every process (pickled in memory, never on disk)."""
    if launched_processes() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, indexed by process."""
    if launched_processes() == 1:
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over processes, in place (the tensor must be on this process's device)."""
    if launched_processes() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def broadcast_parameters(params: Sequence[torch.Tensor], src: int = 0) -> None:
    """Copy process ``src``'s values into every process's ``params`` (a common starting point)."""
    if launched_processes() == 1:
        return
    with torch.no_grad():
        for p in params:
            torch.distributed.broadcast(p.data, src=src)


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over processes, as DDP would.

    A parameter without a gradient in some process counts as a zero there; one without a
    gradient in every process keeps ``grad = None``, so the optimizer skips it exactly as it
    does in one process.
    """
    n = num_processes()
    if n == 1:
        return
    device = params[0].device
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    all_reduce_sum(has_grad)
    used = [p for p, h in zip(params, has_grad.tolist(), strict=True) if h]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in used:
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for group in groups.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for p in [*group, None]:
            if p is not None and (not bucket or size + p.numel() <= BUCKET_ELEMENTS):
                bucket.append(p)
                size += p.numel()
                continue
            flat = torch.cat([q.grad.reshape(-1) for q in bucket])
            all_reduce_sum(flat).div_(n)
            offset = 0
            for q in bucket:
                q.grad.copy_(flat[offset : offset + q.numel()].view_as(q.grad))
                offset += q.numel()
            bucket, size = ([p], p.numel()) if p is not None else ([], 0)
