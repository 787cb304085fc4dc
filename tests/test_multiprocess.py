"""The multi-process path: stages 1 and 2 trained by two processes (gloo on the CPU) against one
process with the same global batch.

Two processes must (1) hold identical trainable weights after every step, (2) each take a
disjoint share of every global batch, together the whole batch, and (3) end with the saved
adapter / soft prompt of the one-process run, within float tolerance (the gradient sums are
added in another order). This is what ``accelerate launch`` on several GPUs relies on; the
processes here talk over gloo instead of NCCL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from delrec_lib.artifacts import RunPaths, read_manifest, verify_outputs
from delrec_lib.delrec.distill import run_distillation
from delrec_lib.llm import load_backbone

from .llm_fixtures import save_tiny_causal
from .multiprocess_worker import SCENARIOS, run_scenario, scenario_config, scenario_dir
from .stage_fixtures import synthetic_data, write_teacher_exports

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

REPO = Path(__file__).resolve().parents[1]
PROCESSES = 2
LAUNCH_TIMEOUT_S = 600  # a deadlocked collective must fail the test, not hang it (~1 min on 2 busy cores)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data, a tiny LLM, a teacher's exports and a stage-1 soft prompt (one process)."""
    root = tmp_path_factory.mktemp("multiprocess")
    data = synthetic_data(root / "data")
    save_tiny_causal(root / "tiny")
    backbone = load_backbone(str(root / "tiny"), dtype="float32", device="cpu")
    base = RunPaths(root / "base")
    write_teacher_exports(base.teachers / "sasrec", data)
    run_distillation(scenario_config("lora", 1), base, data, backbone, "sasrec", progress=False)
    return root, data, backbone


def prepare_run(root: Path, scenario: str, processes: str) -> RunPaths:
    """A run folder holding the base run's teacher exports and, for stage 2, its soft prompt."""
    paths = RunPaths(scenario_dir(root, scenario, processes) / "run")
    shutil.copytree(root / "base" / "teachers", paths.teachers)
    if SCENARIOS[scenario]["stage"] == "finetune":
        shutil.copytree(root / "base" / "distill" / "sasrec", paths.distill / "sasrec")
    return paths


def launch(root: Path, scenarios: list[str]) -> dict[str, list[dict]]:
    """Run the worker's scenarios under ``PROCESSES`` processes; each one's records, by rank.

    torchrun is what ``accelerate launch --multi_gpu`` runs; ``--standalone`` lets its rendezvous
    bind a free port itself (a port chosen here could be taken by another program before the
    launcher binds it, and the workers would wait for it forever). With no GPU visible the
    processes use gloo on the CPU. (`accelerate launch --cpu --num_processes 2` would start one
    process: accelerate hands multi-CPU launches to mpirun.)
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc_per_node", str(PROCESSES), str(REPO / "tests" / "multiprocess_worker.py"), str(root), *scenarios]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM: torchrun stops its workers (they run in sessions of their own); the workers
        # also exit by themselves once their launcher is gone (multiprocess_worker.exit_with_launcher).
        proc.terminate()
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"{PROCESSES} processes did not finish in {LAUNCH_TIMEOUT_S} s (deadlock?)\n{stdout}\n{stderr}")
    assert proc.returncode == 0, f"launch failed ({proc.returncode}):\n{stdout[-4000:]}\n{stderr[-8000:]}"
    out = {}
    for scenario in scenarios:
        folder = scenario_dir(root, scenario, "multi") / "records"
        out[scenario] = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(PROCESSES)]
        for r, rec in enumerate(out[scenario]):
            assert (rec["process_index"], rec["num_processes"]) == (r, PROCESSES), "the launch did not start two processes"
            assert rec["backend"] == "gloo"
            assert Path(rec["delrec_lib"]) == REPO / "delrec_lib", "the workers must import this checkout"
    return out


@pytest.fixture(scope="module")
def launched(world):
    """Every scenario, trained by two processes in one launch (start-up is most of its time)."""
    root, _, _ = world
    for scenario in SCENARIOS:
        prepare_run(root, scenario, "multi")
    return launch(root, [*sorted(SCENARIOS), "trainer"])


def states_by_step(path: Path) -> dict[int, dict[str, torch.Tensor]]:
    out: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(path)).items():
        step, name = key.split("/", 1)
        out.setdefault(int(step), {})[name] = tensor
    return out


def assert_close_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    """Equal within float tolerance (rtol 1e-4, atol 1e-5) for at least 99% of each tensor's elements,
    and every element within 2e-4. Adam divides each element's gradient by its own running norm, so an
    element whose gradient is nearly cancelled amplifies the reduction-order noise of the two-process
    average (seen: 1 element of 192 off by 8e-5 after two steps at lr 5e-3); a process that trained on
    the wrong share or skipped the average moves most elements by about lr per step, far outside both."""
    assert sorted(a) == sorted(b), what
    for name in a:
        x, y = a[name].float(), b[name].float()
        torch.testing.assert_close(x, y, rtol=0, atol=2e-4, msg=lambda m, n=name: f"{what}, {n}: {m}")
        loose = ~torch.isclose(x, y, rtol=1e-4, atol=1e-5)
        assert loose.float().mean() <= 0.01, f"{what}, {name}: {int(loose.sum())} of {loose.numel()} elements beyond rtol 1e-4, atol 1e-5"


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def runs(request, world, launched):
    """(scenario, two-process records, one-process record, their run folders)."""
    scenario = request.param
    root, _, _ = world
    single = prepare_run(root, scenario, "single")
    reference = run_scenario(scenario, root, single.root, scenario_dir(root, scenario, "single") / "records")
    return scenario, launched[scenario], reference, RunPaths(scenario_dir(root, scenario, "multi") / "run"), single


def test_processes_hold_identical_weights_after_every_step(runs):
    scenario, records, _, multi, _ = runs
    folder = multi.root.parent / "records"
    per_rank = [states_by_step(folder / f"rank{r}.safetensors") for r in range(PROCESSES)]
    assert per_rank[0], "no optimizer step recorded"
    assert sorted(per_rank[0]) == sorted(per_rank[1]) == list(range(1, len(per_rank[0]) + 1))
    for step, state in per_rank[0].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, per_rank[1][step][name]), f"step {step}: {name} differs between processes"
    # and so do the evaluations, the best step and what each process reports
    assert records[0]["history"] == records[1]["history"]
    assert records[0]["metrics"]["best_step"] == records[1]["metrics"]["best_step"]


def test_each_process_takes_its_share_of_every_global_batch(runs):
    _, records, reference, _, _ = runs
    steps = [rec["steps"] for rec in records]
    assert len(steps[0]) == len(steps[1]) == len(reference["steps"]), "the processes step in lockstep with one process"
    for s, ref_step in enumerate(reference["steps"]):
        mine = [st[s]["micro_batches"] for st in steps]
        assert len(mine[0]) == len(mine[1]) == len(ref_step["micro_batches"]), f"step {s + 1}: micro-batches per step"
        for m, ref_micro in enumerate(ref_step["micro_batches"]):
            # a process whose share of a short batch is empty runs a stand-in example with weight 0
            shares = [set(st[m]["indices"]) if st[m]["scale"] > 0 else set() for st in mine]
            assert not shares[0] & shares[1], f"step {s + 1}, micro-batch {m}: an example seen by both processes"
            assert shares[0] | shares[1] == set(ref_micro["indices"]), f"step {s + 1}, micro-batch {m}: not the whole batch"
            assert all(len(sh) <= -(-len(ref_micro["indices"]) // PROCESSES) for sh in shares), "shares are balanced"
    seen = [i for st in steps for step in st for mb in step["micro_batches"] if mb["scale"] > 0 for i in mb["indices"]]
    assert seen, "nothing trained"


def test_two_processes_train_what_one_process_trains_on_the_same_global_batch(runs, world):
    scenario, records, reference, multi, single = runs
    root, data, backbone = world
    ms = states_by_step(multi.root.parent / "records" / "rank0.safetensors")
    ss = states_by_step(single.root.parent / "records" / "rank0.safetensors")
    assert sorted(ms) == sorted(ss)
    for step in ss:
        assert_close_states(ms[step], ss[step], f"step {step}")
    assert records[0]["metrics"]["best_step"] == reference["metrics"]["best_step"]
    assert (records[0]["metrics"]["processes"], reference["metrics"]["processes"]) == (PROCESSES, 1)
    for a, b in zip(records[0]["history"], reference["history"], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-6, nan_ok=True), f"validation history: {k} at step {a['step']}"
    spec = SCENARIOS[scenario]
    if spec["stage"] == "distill":
        out_multi, out_single = multi.distill / spec["name"], single.distill / spec["name"]
        verify_outputs(out_multi, read_manifest(out_multi))
        assert_close_states(load_file(str(out_multi / "soft_prompt.safetensors")),
                            load_file(str(out_single / "soft_prompt.safetensors")), "saved soft prompt")  # fmt: skip
        return
    from delrec_lib.delrec.finetune import load_recommender, split_examples

    out_multi = multi.finetune / spec["variant"]
    verify_outputs(out_multi, read_manifest(out_multi))
    assert_close_states(load_file(str(out_multi / "adapter" / "adapter_model.safetensors")),
                        load_file(str(single.finetune / spec["variant"] / "adapter" / "adapter_model.safetensors")),
                        "saved adapter")  # fmt: skip
    one, two = scenario_config(scenario, 1), scenario_config(scenario, PROCESSES)  # each run's own settings
    examples = split_examples(data, "test", data.user_ids(12).tolist())
    with torch.no_grad():
        a = load_recommender(multi, spec["variant"], backbone, data, two).scores(examples)
        b = load_recommender(single, spec["variant"], backbone, data, one).scores(examples)
        base = load_recommender(single, spec["variant"], backbone, data, one, adapter=False).scores(examples)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(a, base, atol=1e-3), "the adapter changed the scores (the comparison is not vacuous)"


def test_an_interrupted_two_process_run_resumes_exactly(world, launched):
    """Checkpoints hold every process's RNG state (dropout draws from it); both processes stop
    early at the same step, from the main process's evaluations."""
    records = launched["trainer"]
    folder = scenario_dir(world[0], "trainer", "multi")
    for r, rec in enumerate(records):
        assert rec["resumed"] == rec["full"], f"process {r}: the resumed run's evaluations and losses differ"
        tensors = load_file(str(folder / "records" / f"rank{r}.safetensors"))
        for key in [k for k in tensors if k.startswith("full/")]:
            assert torch.equal(tensors[key], tensors[key.replace("full/", "resumed/")]), f"process {r}: {key}"
        assert rec["early"] == {"steps": 4, "stopped": "early stopping", "best_step": 1}
    assert records[0]["full"] == records[1]["full"], "the processes log the same (whole-batch) losses"
    rng = load_file(str(folder / "run" / "cut" / "last" / "rng.safetensors"))
    assert "torch" in rng and "process1/torch" in rng, "each process's RNG state is in the checkpoint"
    assert not torch.equal(rng["torch"], rng["process1/torch"]), "the processes draw from independent streams"
