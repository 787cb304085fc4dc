"""DELRec stage 1 on a tiny random LLM: leakage, frozen backbone, learnability, resume, mismatches."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from delrec_lib.config import DistillConfig, LLMConfig, RunConfig
from delrec_lib.distill import (
    build_examples,
    forbidden_items,
    read_teacher_topk,
    run_distillation,
    split_users,
    teacher_predictions,
)
from delrec_lib.errors import StaleArtifactError
from delrec_lib.llm import load_backbone
from delrec_lib.runner import RunPaths
from delrec_lib.soft_prompt import load_soft_prompt

from .llm_fixtures import save_tiny_causal
from .stage_fixtures import FIXED_PREDICTION, synthetic_data, write_teacher_exports


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    data = synthetic_data(root / "data")
    backbone = load_backbone(str(save_tiny_causal(root / "tiny")), dtype="float32")
    return root, data, backbone


def config(**distill) -> RunConfig:
    base = DistillConfig(heldout_users=10, max_steps=30, batch_size=4, grad_accum=1, lr=0.1, eval_every=10,
                         num_soft_tokens=4, warmup_steps=0, ta_candidates=6, rps_top_k=3, rps_random=3)  # fmt: skip
    return RunConfig(preset="smoke", llm=LLMConfig(history_len=4, title_style="with_year"),
                     distill=dataclasses.replace(base, **distill))  # fmt: skip


def paths_for(root, name) -> RunPaths:
    paths = RunPaths(root / name)
    return paths


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_no_example_touches_a_valid_or_test_target(world):
    root, data, _ = world
    paths = paths_for(root, "leak")
    write_teacher_exports(paths.teachers / "sasrec", data, leak_targets=True)
    preds = teacher_predictions(read_teacher_topk(paths.teachers / "sasrec", data), data)
    cfg = config().distill
    train, held = split_users(data, cfg)
    ta, rps = build_examples(data, preds, train + held, cfg)
    assert len(ta) == len(rps) == data.num_users
    for examples in (ta, rps):
        for uid, ex in examples.items():
            assert not ex.items() & forbidden_items(data, uid), f"user {uid}: {ex}"
            assert set(ex.history) <= set(data.train_items(uid))
    for uid, ex in ta.items():
        assert ex.target == data.train_items(uid)[-1] and ex.history == tuple(data.train_items(uid)[:-1])
    for uid, ex in rps.items():
        assert ex.target == preds[uid][0] == FIXED_PREDICTION
        assert ex.ranked == tuple(preds[uid][1:3])


def test_stage1_learns_a_fixed_teacher_and_leaves_the_backbone_untouched(world):
    root, data, backbone = world
    paths = paths_for(root, "learn")
    write_teacher_exports(paths.teachers / "sasrec", data)
    before = weights_digest(backbone.model)
    result = run_distillation(config(), paths, data, backbone, "sasrec", progress=False)
    assert weights_digest(backbone.model) == before, "the backbone must stay bit-identical"
    assert not any(p.requires_grad for p in backbone.model.parameters())
    m = result.metrics
    chance = m["fidelity_chance"]
    assert m["fidelity_after"]["mean"] >= 0.8 > chance * 2
    assert m["fidelity_after"]["mean"] > m["fidelity_before"]["mean"] + 0.3
    assert m["soft_prompt_moved"] > 0
    soft, meta = load_soft_prompt(paths.distill / "sasrec", backbone, data, config().llm)
    assert torch.equal(soft.embeddings, result.soft_prompt.embeddings)
    assert meta["teacher"] == "sasrec"
    # a second call finds the artifact up to date and does not train again
    again = run_distillation(config(), paths, data, backbone, "sasrec", progress=False)
    assert again.skipped and again.metrics == result.metrics


class Interrupt(Exception):
    pass


def test_interrupted_stage1_resumes_to_the_same_result(world):
    root, data, backbone = world
    cfg = config(max_steps=12, eval_every=4)
    full_paths, cut_paths = paths_for(root, "full"), paths_for(root, "cut")
    for p in (full_paths, cut_paths):
        write_teacher_exports(p.teachers / "sasrec", data)
    full = run_distillation(cfg, full_paths, data, backbone, "sasrec", progress=False)

    def stop(trainer, step):
        if step == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_distillation(cfg, cut_paths, data, backbone, "sasrec", progress=False, callbacks=[stop])
    resumed = run_distillation(cfg, cut_paths, data, backbone, "sasrec", progress=False)
    assert torch.equal(resumed.soft_prompt.embeddings, full.soft_prompt.embeddings)
    assert resumed.history.equals(full.history)
    assert resumed.metrics["fidelity_after"] == full.metrics["fidelity_after"]


def test_mismatched_inputs_are_refused(world, tmp_path):
    root, data, backbone = world
    paths = paths_for(root, "learn")  # trained above (module scope)
    if not (paths.distill / "sasrec" / "soft_prompt.safetensors").is_file():
        write_teacher_exports(paths.teachers / "sasrec", data)
        run_distillation(config(max_steps=2), paths, data, backbone, "sasrec", progress=False)
    other = load_backbone(str(save_tiny_causal(tmp_path / "other", seed=1)), dtype="float32")
    with pytest.raises(StaleArtifactError, match="soft prompt was made for backbone="):
        load_soft_prompt(paths.distill / "sasrec", other, data, config().llm)
    from delrec_lib.config import LLMConfig

    with pytest.raises(StaleArtifactError, match="soft prompt was made for template="):
        load_soft_prompt(paths.distill / "sasrec", backbone, data, LLMConfig(history_len=4, title_style="with_year", list_candidates=True))
    # teacher exports made from other data
    other_data = synthetic_data(tmp_path / "data2", seed=5)
    with pytest.raises(StaleArtifactError, match="teacher 'sasrec' was made from another 'data'"):
        run_distillation(config(), paths, other_data, backbone, "sasrec", progress=False)


@pytest.mark.parametrize("stage", ["distill", "finetune"])
def test_training_benchmark_times_real_steps(world, tmp_path, stage):
    """``python -m delrec_lib.bench distill|finetune`` on a tiny model: steps timed, costs counted."""
    import json

    from delrec_lib import bench

    root, _, backbone = world
    toml = tmp_path / "bench.toml"
    toml.write_text(
        f'data_dir = "{root / "data"}"\n[data]\ndataset = "toy"\nnum_negatives = 5\n'
        f'[llm]\nbackbone = "{backbone.name}"\ndtype = "float32"\nhistory_len = 4\n'
        "[distill]\nnum_soft_tokens = 4\nrps_top_k = 3\nrps_random = 3\nta_candidates = 6\n"
        "[finetune]\nnum_negatives = 5\n"
    )
    out = tmp_path / "bench.json"
    assert bench.main([stage, "--preset", "smoke", "--config", str(toml), "--steps", "2", "--json", str(out)]) == 0
    row = json.loads(out.read_text())[stage]
    assert row["timed_steps"] == 2 and row["s_per_step"] > 0
    assert row["examples_per_step"] == (8 if stage == "distill" else 2)  # smoke: 2 users x accum (2 | 1)
    assert row["tokens_per_step"] > row["examples_per_step"] * 10 and row["pct_bf16_peak"] > 0
    minutes = row["minutes_per_prompt" if stage == "distill" else "minutes_per_variant"]
    assert minutes == pytest.approx(row["s_per_step"] * 4 / 60)  # the smoke preset's 4 steps, not the bench's


@pytest.mark.parametrize("ablation, trained", [("sasrec-ta", {"ta"}), ("sasrec-rps", {"rps"})])
def test_stage1_ablations_train_only_their_task(world, ablation, trained):
    root, data, backbone = world
    paths = paths_for(root, "ablation")
    write_teacher_exports(paths.teachers / "sasrec", data)
    cfg = config(max_steps=2, eval_every=2)
    result = run_distillation(cfg, paths, data, backbone, ablation, progress=False)
    assert set(result.metrics["tasks"]) == trained and result.metrics["teacher"] == "sasrec"
    losses = {c.removeprefix("loss_") for c in result.train_log.columns if c.startswith("loss_")}
    assert losses == trained
    assert (paths.distill / ablation / "soft_prompt.safetensors").is_file()
