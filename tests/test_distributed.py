"""The process-layout helpers in one process, and the CLI's refusal to run single-process
commands under a launcher (the two-process behaviour is in test_multiprocess.py)."""

from __future__ import annotations

import pytest
import torch

from delrec_lib.__main__ import main
from delrec_lib.training import distributed


def test_launched_processes_reads_the_launchers_variables(monkeypatch):
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched_processes() == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "3")
    assert distributed.launched_processes() == 3
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched_processes() == 2


def test_one_process_helpers_are_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    distributed.average_gradients([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.gather_objects(5) == [5]
    assert distributed.is_main_process() and distributed.num_processes() == 1


@pytest.mark.parametrize("command", ["data", "teachers", "run"])
def test_single_process_commands_refuse_a_launcher(monkeypatch, capsys, command):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert f"'{command}' runs in one process" in err and "distill and finetune" in err
