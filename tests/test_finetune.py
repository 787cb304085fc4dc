"""DELRec stage 2 on a tiny random LLM: what trains, what stays frozen, reload, resume, leakage."""

from __future__ import annotations

import dataclasses
import hashlib
import re

import numpy as np
import pytest
import torch

from delrec_lib.config import DistillConfig, FinetuneConfig, LLMConfig, RunConfig
from delrec_lib.delrec.distill import run_distillation
from delrec_lib.delrec.finetune import (
    FinetuneTask,
    load_recommender,
    run_finetuning,
    select_users,
    training_examples,
)
from delrec_lib.errors import ConfigError
from delrec_lib.llm import load_backbone
from delrec_lib.llm.ranker import RecExample, split_examples
from delrec_lib.runner import RunPaths

from .llm_fixtures import save_tiny_causal
from .stage_fixtures import synthetic_data, write_teacher_exports


def config(**finetune) -> RunConfig:
    ft = FinetuneConfig(max_train_users=24, valid_users=8, max_steps=6, batch_size=4, grad_accum=1, lr=5e-3,
                        eval_every=3, warmup_steps=0, num_negatives=5, lora_r=4, lora_layers=None, positions_per_user=1)  # fmt: skip
    return RunConfig(
        preset="smoke", llm=LLMConfig(history_len=4, title_style="with_year"),
        distill=DistillConfig(heldout_users=8, max_steps=2, batch_size=4, grad_accum=1, eval_every=2, num_soft_tokens=4,
                              warmup_steps=0, ta_candidates=6, rps_top_k=3, rps_random=3, lr=0.05),
        finetune=dataclasses.replace(ft, **finetune),
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2")
    data = synthetic_data(root / "data")
    backbone = load_backbone(str(save_tiny_causal(root / "tiny")), dtype="float32")
    paths = RunPaths(root / "run")
    write_teacher_exports(paths.teachers / "sasrec", data)
    run_distillation(config(), paths, data, backbone, "sasrec", progress=False)
    return root, data, backbone, paths


def digest(tensors) -> str:
    h = hashlib.sha256()
    for name, t in sorted(tensors):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_no_training_example_touches_a_valid_or_test_target(world):
    _, data, _, _ = world
    cfg = config(positions_per_user=3).finetune
    train_users, _ = select_users(data, cfg, None)
    for ex in training_examples(data, train_users, cfg):
        forbidden = {data.target(ex.user_id, "valid"), data.target(ex.user_id, "test")}
        assert not (set(ex.history) | set(ex.candidates)) & forbidden
        assert ex.target in data.train_items(ex.user_id)
        train = data.train_items(ex.user_id)
        assert list(ex.history) == train[: train.index(ex.target)], "history = the train items before the target"
        negatives = set(ex.candidates) - {ex.target}
        assert not negatives & set(data.interacted_items(ex.user_id).tolist())


def test_only_the_adapter_trains(world):
    _, data, backbone, paths = world
    base_before = digest(backbone.model.state_dict().items())
    soft_file = paths.distill / "sasrec" / "soft_prompt.safetensors"
    soft_before = hashlib.sha256(soft_file.read_bytes()).hexdigest()
    grads_seen = []
    original = FinetuneTask.on_optimizer_step

    def spy(self, step):
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        assert all(p.grad is not None for p in params.values())
        grads_seen.append({n: bool(p.grad.abs().sum() > 0) for n, p in params.items()})
        return original(self, step)

    FinetuneTask.on_optimizer_step = spy
    try:
        result = run_finetuning(config(), paths, data, backbone, "delrec-sasrec", progress=False)
    finally:
        FinetuneTask.on_optimizer_step = original
    assert digest(backbone.model.state_dict().items()) == base_before, "base weights untouched"
    assert hashlib.sha256(soft_file.read_bytes()).hexdigest() == soft_before, "soft prompt untouched"
    # (lora_B starts at zero, so lora_A's gradient is zero on the very first step only)
    assert len(grads_seen) == 6 and all(grads_seen[-1].values()), "every adapter weight gets a gradient"
    assert all("lora_" in n for n in grads_seen[0]), "only LoRA weights are trainable"
    # the saved adapter differs from the zero-initialised LoRA B matrices it started from
    from safetensors.torch import load_file

    adapter = load_file(str(result.directory / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    assert (result.directory / "soft_prompt.safetensors").read_bytes() == soft_file.read_bytes()


def test_saved_adapter_reloads_to_identical_scores(world):
    _, data, backbone, paths = world
    cfg = config()
    result = run_finetuning(cfg, paths, data, backbone, "delrec-sasrec", progress=False)
    reloaded = load_recommender(paths, "delrec-sasrec", backbone, data, cfg)
    examples = split_examples(data, "test", data.user_ids(6).tolist())
    with torch.no_grad():
        a = reloaded.scores(examples)
        b = load_recommender(paths, "delrec-sasrec", backbone, data, cfg).scores(examples)
    assert torch.equal(a, b)
    # and the reloaded model is the trained one: its validation metric is the recorded best
    valid = split_examples(data, "valid", select_users(data, cfg.finetune, None)[1])
    best = reloaded.evaluate(valid)[cfg.finetune.select_metric].mean()
    assert best == pytest.approx(result.metrics["valid_best"][cfg.finetune.select_metric], abs=1e-6)


def test_upper_layer_lora_trains_over_cached_lower_layers_and_matches_the_full_forward(world, tmp_path):
    """finetune.lora_layers: adapters in the top layer only; training and validation run it over the lower
    layer's cached output, and the saved adapter scores like that on the full model (evaluation's path)."""
    _, data, backbone, paths = world
    cfg = config(lora_layers=1)
    run_paths = RunPaths(tmp_path / "upper")
    run_paths.distill.mkdir(parents=True)
    (run_paths.distill / "sasrec").symlink_to(paths.distill / "sasrec")
    seen = []
    original = FinetuneTask.training_loss

    def spy(self, batch):
        seen.append(self.scorer.frozen_below)
        return original(self, batch)

    FinetuneTask.training_loss = spy
    try:
        result = run_finetuning(cfg, run_paths, data, backbone, "delrec-sasrec", progress=False)
    finally:
        FinetuneTask.training_loss = original
    assert set(seen) == {1}  # every step ran layer 1 only, over cached layer-0 states
    from safetensors.torch import load_file

    adapter = load_file(str(result.directory / "adapter" / "adapter_model.safetensors"))
    assert adapter and all(".layers.1." in k for k in adapter)
    # the cached path's validation metric is what the full forward of the saved adapter gets
    reloaded = load_recommender(run_paths, "delrec-sasrec", backbone, data, cfg)
    assert reloaded.frozen_below == 0
    valid = split_examples(data, "valid", select_users(data, cfg.finetune, None)[1])
    best = reloaded.evaluate(valid)[cfg.finetune.select_metric].mean()
    assert best == pytest.approx(result.metrics["valid_best"][cfg.finetune.select_metric], abs=1e-4)
    with pytest.raises(ConfigError, match="lora_layers=3: the backbone has 2 layers"):
        run_finetuning(config(lora_layers=3), RunPaths(tmp_path / "too-many"), data, backbone, "lora", progress=False)


def test_a_seeded_copy_trains_with_its_own_seed_on_the_same_users(world, tmp_path):
    """finetune.seeds: "<variant>-seed<N>" is the variant trained again with training seed N (another adapter
    initialisation, order and negatives), on the same training and validation users."""
    from delrec_lib.delrec.finetune import parse_variant_name
    from delrec_lib.delrec.methods import FinetunedFamily

    _, data, backbone, paths = world
    cfg = config(seeds=(7,))
    family = FinetunedFamily()
    assert family.names(cfg) == ["lora", "delrec-sasrec", "lora-seed7", "delrec-sasrec-seed7"]
    assert parse_variant_name("delrec-sasrec-seed7") == ("delrec-sasrec", 7) and parse_variant_name("lora") == ("lora", None)
    assert family.replicate_of(cfg, "delrec-sasrec-seed7") == ("delrec-sasrec", 7) and family.replicate_of(cfg, "lora") is None
    assert family.comparisons(cfg, "delrec-sasrec-seed7") == ["lora-seed7"] and family.comparisons(cfg, "lora-seed7") == []
    run_paths = RunPaths(tmp_path / "seeds")
    main = run_finetuning(cfg, run_paths, data, backbone, "lora", progress=False)
    copy = run_finetuning(cfg, run_paths, data, backbone, "lora-seed7", progress=False)
    assert (main.metrics["train_seed"], copy.metrics["train_seed"]) == (cfg.finetune.seed, 7)
    assert main.metrics["valid_users"] == copy.metrics["valid_users"]
    assert main.metrics["valid_before"] == copy.metrics["valid_before"]  # the same validation examples, untrained
    a = (main.directory / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a != (copy.directory / "adapter" / "adapter_model.safetensors").read_bytes()
    # adding seeds does not make the variants themselves stale
    again = run_finetuning(config(seeds=(7, 8)), run_paths, data, backbone, "lora", progress=False)
    assert again.skipped
    with pytest.raises(ConfigError, match="finetune.seeds: 2024 is finetune.seed"):
        config(seeds=(2024,))


def test_evaluation_shares_lower_layer_states_between_zero_shot_and_upper_layer_adapters(world, tmp_path, monkeypatch):
    """With finetune.lora_layers, the zero-shot LLM and every adapter without a soft prompt read a test prompt
    alike through the lower layers: evaluation computes those states once, and scores as the full forward does."""
    from delrec_lib.delrec.methods import FinetunedFamily
    from delrec_lib.llm import scoring
    from delrec_lib.llm.ranker import ZeroShotFamily
    from delrec_lib.methods import MethodContext

    _, data, backbone, paths = world
    cfg = config(lora_layers=1, seeds=(7,))
    run_paths = RunPaths(tmp_path / "shared")
    run_paths.distill.mkdir(parents=True)
    (run_paths.distill / "sasrec").symlink_to(paths.distill / "sasrec")
    for name in ("lora", "lora-seed7", "delrec-sasrec"):
        run_finetuning(cfg, run_paths, data, backbone, name, progress=False)
    computed = []
    original = scoring.lower_states
    monkeypatch.setattr("delrec_lib.llm.ranker.lower_states",
                        lambda bb, prompts, *a, **k: computed.append(len(prompts)) or original(bb, prompts, *a, **k))  # fmt: skip
    ctx = MethodContext(cfg, run_paths, data, backbone)
    users = data.user_ids(8)
    histories = [data.history(int(u), "test") for u in users]
    candidates = np.stack(data.candidate_sets("test").set_index("user_id").loc[users, "candidates"].to_numpy())
    scored = {}
    for name, family in (("zero-shot", ZeroShotFamily()), ("lora", FinetunedFamily()), ("lora-seed7", FinetunedFamily()),
                         ("delrec-sasrec", FinetunedFamily())):  # fmt: skip
        rec = family.load(ctx, name)
        assert rec.ranker.frozen_below == 1
        scored[name] = rec.score(users, histories, candidates)
    assert computed == [8, 8]  # once without a soft prompt (zero-shot, lora, lora-seed7), once with it
    for name in scored:
        full = load_recommender(run_paths, name, backbone, data, cfg)
        examples = [RecExample(int(u), tuple(h), tuple(int(c) for c in cs))
                    for u, h, cs in zip(users, histories, candidates, strict=True)]  # fmt: skip
        with torch.no_grad():
            np.testing.assert_allclose(scored[name], full.scores(examples).numpy(), atol=1e-4)
    assert not np.allclose(scored["lora"], scored["lora-seed7"])  # the seeds' adapters differ, the lower states do not


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("lora_layers", [None, 1])  # 1: over cached lower-layer states, recomputed after the resume
def test_interrupted_finetuning_resumes_to_the_same_adapter(world, tmp_path, lora_layers):
    _, data, backbone, paths = world
    cfg = config(max_steps=6, eval_every=2, lora_layers=lora_layers)
    full_paths = RunPaths(tmp_path / "full")
    cut_paths = RunPaths(tmp_path / "cut")
    full = run_finetuning(cfg, full_paths, data, backbone, "lora", progress=False)

    def stop(trainer, step):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_finetuning(cfg, cut_paths, data, backbone, "lora", progress=False, callbacks=[stop])
    resumed = run_finetuning(cfg, cut_paths, data, backbone, "lora", progress=False)
    assert resumed.history.equals(full.history)
    a = (full.directory / "adapter" / "adapter_model.safetensors").read_bytes()
    b = (resumed.directory / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == b


def test_adalora_reallocates_ranks_every_step(world, tmp_path, monkeypatch):
    _, data, backbone, _ = world
    calls = []
    from peft.tuners.adalora import AdaLoraModel

    original = AdaLoraModel.update_and_allocate

    def count(self, step):
        calls.append(step)
        return original(self, step)

    monkeypatch.setattr(AdaLoraModel, "update_and_allocate", count)
    cfg = config(method="adalora", max_steps=6, adalora_tinit=1, adalora_tfinal=1, adalora_delta_t=1, lora_r=2, adalora_init_r=4)
    paths = RunPaths(tmp_path / "ada")
    result = run_finetuning(cfg, paths, data, backbone, "lora", progress=False)
    assert calls == list(range(6))
    assert result.metrics["method"] == "adalora"


def test_stage2_prints_no_gradient_checkpointing_deprecation(world, tmp_path):
    """peft asks the model it wraps for transformers' deprecated ``is_gradient_checkpointing``: the
    FutureWarning would land in every executed stage-2 notebook. It is silenced where peft wraps."""
    import copy
    import warnings

    from peft import LoraConfig, get_peft_model

    from delrec_lib.llm import PEFT_CHECKPOINTING_WARNING

    _, data, backbone, _ = world
    with warnings.catch_warnings(record=True) as bare:
        warnings.simplefilter("always")
        get_peft_model(copy.deepcopy(backbone.model), LoraConfig(r=2, target_modules=["q_proj"]))
    assert [w for w in bare if re.search(PEFT_CHECKPOINTING_WARNING, str(w.message))], (
        "transformers no longer warns on is_gradient_checkpointing: delrec_lib.llm.peft_wrapping can go"
    )
    cfg, paths = config(max_steps=2, eval_every=2), RunPaths(tmp_path / "run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_finetuning(cfg, paths, data, backbone, "lora", progress=False)
        load_recommender(paths, "lora", backbone, data, cfg)
    assert not [w for w in caught if issubclass(w.category, FutureWarning) and "is_gradient_checkpointing" in str(w.message)]
    # only that warning: the filter is gone once the wrap is done
    with pytest.warns(FutureWarning, match="is_gradient_checkpointing"):
        _ = backbone.model.is_gradient_checkpointing


def test_the_untrained_prompt_control_reads_stage_1s_starting_prompt(world, tmp_path):
    """"delrec-<p>-untrained": the pattern line with <p> as stage 1 starts it, through stage 2 like any variant,
    compared with the trained variant and with LoRA."""
    from delrec_lib.delrec.distill import initial_soft_prompt
    from delrec_lib.delrec.finetune import load_variant_parts
    from delrec_lib.delrec.methods import FinetunedFamily

    _, data, backbone, paths = world
    cfg = config(variants=("lora", "delrec-sasrec", "delrec-sasrec-untrained"))
    with pytest.raises(ConfigError, match="delrec-<soft prompt>-untrained"):
        config(variants=("delrec-sasrec-untrainedx",))
    soft, teacher, soft_id = load_variant_parts(cfg, paths, "delrec-sasrec-untrained", backbone, data)
    start = initial_soft_prompt(backbone, cfg.distill, "sasrec").embeddings
    trained, _, trained_id = load_variant_parts(cfg, paths, "delrec-sasrec", backbone, data)
    assert torch.equal(soft, start) and not torch.equal(soft, trained)  # stage 1 moved the trained one
    assert teacher == "SASRec" and soft_id.startswith("untrained-") and soft_id != trained_id
    family = FinetunedFamily()
    assert family.comparisons(cfg, "delrec-sasrec-untrained") == ["delrec-sasrec", "lora"]
    assert family.teacher("delrec-sasrec-untrained") == "sasrec"
    # It needs no stage-1 artifact: a run folder without distill/ trains it.
    run_paths = RunPaths(tmp_path / "untrained")
    result = run_finetuning(cfg, run_paths, data, backbone, "delrec-sasrec-untrained", progress=False)
    assert result.metrics["soft_prompt"] == "sasrec" and not run_paths.distill.exists()
    ranker = load_recommender(run_paths, "delrec-sasrec-untrained", backbone, data, cfg)
    assert torch.equal(ranker.soft, start)
