"""LLM-SRec on a tiny random LLM and a small SASRec: the frozen LLM, where gradients go, the losses, the
leakage guards, the shuffle diagnostic and the method family."""

from __future__ import annotations

import dataclasses
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from delrec_lib.artifacts import RunPaths
from delrec_lib.config import (
    DistillConfig,
    FinetuneConfig,
    LLMSRecConfig,
    P2RecConfig,
    RunConfig,
    SASRecConfig,
    TeachersConfig,
    load_config,
    parse_llmsrec_variant,
)
from delrec_lib.errors import ConfigError, StaleArtifactError
from delrec_lib.llm import load_backbone
from delrec_lib.llmsrec import (
    LLMSRecFamily,
    Prompts,
    Scorer,
    backbone_checksum,
    encode_slots,
    load_trained,
    losses,
    run_llmsrec,
    select_users,
    training_examples,
    uniformity,
)
from delrec_lib.llmsrec.model import HISTORY_SLOT, item_prompt_text, user_prompt_text
from delrec_lib.llmsrec.report import shuffle_cosine, valid_inputs
from delrec_lib.llmsrec.stage import LLMSRecTask, build_model, loss_weights, teacher_representations
from delrec_lib.methods import MethodContext
from delrec_lib.teachers import run_teachers

from .llm_fixtures import save_tiny_causal
from .stage_fixtures import synthetic_data


def small_config(**llmsrec) -> RunConfig:
    base = LLMSRecConfig(variants=("llm-srec", "llm-srec-nodist"), head_width=32, output_dim=8, valid_users=8,
                         max_steps=6, batch_size=4, grad_accum=1, eval_every=3, eval_batch_size=4, history_len=6,
                         lr=1e-2)  # fmt: skip
    return RunConfig(preset="smoke", teachers=TeachersConfig(models=("sasrec",), max_epochs=2, sasrec=SASRecConfig(hidden=16)),
                     distill=DistillConfig(prompts=()), finetune=FinetuneConfig(variants=("lora",)),
                     p2rec=P2RecConfig(variants=()), llmsrec=dataclasses.replace(base, **llmsrec))  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("llmsrec")
    data = synthetic_data(root / "data")
    backbone = load_backbone(str(save_tiny_causal(root / "tiny")), dtype="float32")
    paths = RunPaths(root / "run")
    run_teachers(small_config().teachers, data, paths.teachers, progress=False)
    return root, data, backbone, paths


@pytest.fixture(scope="module")
def trained(world):
    root, data, backbone, paths = world
    config = small_config()
    before = backbone_checksum(backbone)
    results = {n: run_llmsrec(config, paths, data, backbone, n, progress=False) for n in config.llmsrec.variants}
    return config, results, before


class TrainOnlyData:
    """A ProcessedData that fails the test on any read of a valid or test target or history."""

    def __init__(self, data):
        self._data = data

    def __getattr__(self, name):
        if name in ("sequences", "splits", "candidates", "candidate_sets"):
            raise AssertionError(f"LLM-SRec training read data.{name}")
        return getattr(self._data, name)

    def target(self, user_id, split):
        raise AssertionError(f"LLM-SRec training read the {split} target of user {user_id}")

    def history(self, user_id, split):
        raise AssertionError(f"LLM-SRec training read the {split} history of user {user_id}")


# -- prompts --------------------------------------------------------------------------------------


def test_prompt_slots_are_single_positions_filled_in_order(world):
    _, data, backbone, _ = world
    prompts = Prompts(backbone, data, small_config(time_format="date").llmsrec, "no_year")
    user = int(data.user_ids()[0])
    history = data.train_items(user)[:-1]
    p = prompts.user(user, history)
    assert p.items == tuple(history[-6:])  # the latest history_len items, oldest first
    assert p.text.count(HISTORY_SLOT) == 6 and p.text.endswith("[UserOut]")
    assert p.output_position == len(p.ids) - 1
    assert len(set(p.history_positions)) == 6 and max(p.history_positions) < p.output_position
    dates = re.findall(r"Time: (\d{4}-\d\d-\d\d)", p.text)
    assert dates == sorted(dates) and len(dates) == 6
    item = prompts.item(history[-1])
    assert item.items == (history[-1],) and item.text == item_prompt_text(prompts.titles[history[-1]])
    assert "Time:" not in prompts.__class__(backbone, data, small_config().llmsrec, "no_year").user(user, history).text
    with pytest.raises(ConfigError, match="history slots for 1 items"):
        encode_slots(backbone.tokenizer, user_prompt_text(["a", "b"], None), [1], 0)


def test_shuffle_keeps_the_shown_items_and_the_dates_by_position(world):
    _, data, backbone, _ = world
    prompts = Prompts(backbone, data, small_config(time_format="date").llmsrec, "no_year")
    user = int(data.user_ids()[1])
    history = data.train_items(user)
    shuffled = history[:-6] + list(reversed(history[-6:]))
    a, b = prompts.user(user, history), prompts.user(user, shuffled)
    assert sorted(a.items) == sorted(b.items) and a.items != b.items
    assert re.findall(r"Time: ([\d-]+)", a.text) == re.findall(r"Time: ([\d-]+)", b.text)


# -- losses ---------------------------------------------------------------------------------------


def test_losses_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    user, items, teacher = torch.randn(5, 4, generator=g), torch.randn(5, 4, 4, generator=g), torch.randn(5, 4, generator=g)
    parts = losses(user, items, teacher)
    logits = torch.stack([items[b] @ user[b] for b in range(5)])
    assert torch.allclose(parts["ret"], F.cross_entropy(logits, torch.zeros(5, dtype=torch.long)))
    u, t = F.normalize(user, dim=1), F.normalize(teacher, dim=1)
    assert torch.allclose(parts["dist"], ((u - t) ** 2).mean())
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    unif = lambda x: torch.stack([torch.exp(-2 * (x[i] - x[j]).pow(2).sum()) for i, j in pairs]).mean()  # noqa: E731
    assert torch.allclose(parts["unif"], unif(u) + unif(t))
    assert float(uniformity(torch.ones(1, 3))) == 0.0  # one row: no pair
    with pytest.raises(ConfigError):
        parse_llmsrec_variant("llm-srec-nothing")
    assert loss_weights(LLMSRecConfig(), parse_llmsrec_variant("llm-srec-nodist")) == {"ret": 1.0, "dist": 0.0, "unif": 0.0}
    assert loss_weights(LLMSRecConfig(), parse_llmsrec_variant("llm-srec-nounif")) == {"ret": 1.0, "dist": 1.0, "unif": 0.0}


def test_gradients_reach_the_projection_the_heads_and_both_token_vectors(world):
    _, data, backbone, paths = world
    config = small_config()
    model, teacher = build_model(config, paths, data, backbone)
    prompts = Prompts(backbone, data, config.llmsrec, "no_year")
    train = training_examples(data, data.user_ids().tolist()[:8], config.llmsrec)
    reps = teacher_representations(teacher, [e.user_id for e in train], [e.history for e in train])
    task = LLMSRecTask(model, prompts, train, reps, {}, loss_weights(config.llmsrec, parse_llmsrec_variant("llm-srec")), 4)
    loss, logs = task.training_loss([0, 1, 2, 3])
    loss.backward()
    for name in ("item_proj.0.weight", "user_head.0.weight", "item_head.3.weight", "cf_head.0.weight", "user_token", "item_token"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in backbone.model.parameters())  # the LLM is frozen
    assert set(logs) == {"loss_ret", "loss_dist", "loss_unif"}


def test_cached_item_prefixes_give_the_same_vectors_and_gradients(world):
    """llmsrec.cache_prefix: an item prompt's text before its embedding slot as stored keys/values."""
    _, data, backbone, paths = world
    config = small_config()
    prompts = Prompts(backbone, data, config.llmsrec, "no_year")
    items = [prompts.item(i) for i in (1, 5, 9, 5, 30)]  # titles of different lengths, one item twice
    results = []
    for cache in (False, True):
        model, _ = build_model(dataclasses.replace(config, llmsrec=dataclasses.replace(config.llmsrec, cache_prefix=cache)),
                               paths, data, backbone)  # fmt: skip
        vectors = model.item_vectors(items)
        vectors.pow(2).sum().backward()
        results.append((vectors.detach(), model.item_proj[0].weight.grad.clone(), model.item_token.grad.clone(), model))
    (full, g_full, t_full, _), (cached, g_cached, t_cached, model) = results
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_cached, g_full, atol=1e-5, rtol=1e-3)
    torch.testing.assert_close(t_cached, t_full, atol=1e-5, rtol=1e-3)
    assert len(model._item_prefixes) == 4  # one per distinct item, computed once
    assert all(not k.requires_grad for k in model._item_prefixes.values())


# -- training -------------------------------------------------------------------------------------


def test_training_leaves_the_llm_unchanged_and_improves_its_objective(world, trained):
    _, data, backbone, paths = world
    config, results, before = trained
    assert backbone_checksum(backbone) == before
    for r in results.values():
        assert r.metrics["backbone_checksum"] == before
        assert r.metrics["steps"] == config.llmsrec.max_steps
        assert list(r.history["step"])[0] == 0  # evaluated before training too
        assert (paths.llmsrec / r.name / "heads.safetensors").is_file()
    # the objective on all the training examples at once: lower with the trained parts than as initialised
    variant = parse_llmsrec_variant("llm-srec")
    prompts = Prompts(backbone, data, config.llmsrec, "no_year")
    train_users, _ = select_users(data, config.llmsrec, config.max_users)
    train = training_examples(data, train_users, config.llmsrec)
    initial, teacher = build_model(config, paths, data, backbone)
    reps = teacher_representations(teacher, [e.user_id for e in train], [e.history for e in train])
    losses_of = {}
    for label, model in (("initial", initial), ("trained", load_trained(config, paths, data, backbone, "llm-srec")[0])):
        task = LLMSRecTask(model.eval(), prompts, train, reps, {}, loss_weights(config.llmsrec, variant), 4)
        with torch.no_grad():
            losses_of[label] = float(task.training_loss(list(range(len(train))))[0])
    assert losses_of["trained"] < losses_of["initial"], losses_of


def test_switching_off_the_distillation_changes_the_learned_user_vectors(world, trained):
    _, data, backbone, paths = world
    config, results, _ = trained
    inputs = valid_inputs(config, data)
    vectors = {}
    for name in ("llm-srec", "llm-srec-nodist"):
        model, _ = load_trained(config, paths, data, backbone, name)
        vectors[name] = Scorer(model, Prompts(backbone, data, config.llmsrec, "no_year"), 4).users(inputs["users"], inputs["histories"])
    assert not torch.allclose(vectors["llm-srec"], vectors["llm-srec-nodist"], atol=1e-4)
    # Without L_dist (and L_unif on it), f_CF gets no gradient: it stays as initialised.
    fresh, _ = build_model(config, paths, data, backbone)
    nodist, _ = load_trained(config, paths, data, backbone, "llm-srec-nodist")
    assert torch.equal(fresh.cf_head[0].weight, nodist.cf_head[0].weight)
    assert not torch.equal(fresh.item_proj[0].weight, nodist.item_proj[0].weight)


def test_no_valid_or_test_target_reaches_training(world):
    _, data, _, _ = world
    cfg = small_config().llmsrec
    users = data.user_ids().tolist()
    for shuffled in (False, True):
        examples = training_examples(TrainOnlyData(data), users, cfg, shuffled=shuffled)
        assert len(examples) == len(users)
        for e in examples:
            train = data.train_items(e.user_id)
            held = {data.target(e.user_id, "valid"), data.target(e.user_id, "test")}
            assert e.target == train[-1] and sorted(e.history) == sorted(train[:-1])
            assert not held & ({e.target, *e.history, *e.negatives})
            assert not set(e.negatives) & set(data.interacted_items(e.user_id).tolist())
        if shuffled:
            assert any(list(e.history) != data.train_items(e.user_id)[:-1] for e in examples)


def test_shuffling_a_history_changes_the_user_vector(world, trained):
    _, data, backbone, paths = world
    config, _, _ = trained
    model, _ = load_trained(config, paths, data, backbone, "llm-srec")
    scorer = Scorer(model, Prompts(backbone, data, config.llmsrec, "no_year"), 4)
    inputs = valid_inputs(config, data)
    cos = shuffle_cosine(scorer, inputs["users"], inputs["histories"], seed=0)
    assert len(cos) == len(inputs["users"])
    assert (cos["cosine"] < 1 - 1e-6).any()  # the LLM reads positions: the order moves the vector
    assert (cos["cosine"] <= 1 + 1e-5).all()


# -- the method family ----------------------------------------------------------------------------


def test_the_family_ranks_candidates_as_the_full_catalogue_does(world, trained):
    _, data, backbone, paths = world
    config, _, _ = trained
    ctx = MethodContext(config, paths, data, backbone)
    family = LLMSRecFamily()
    rec = family.load(ctx, "llm-srec")
    users = data.user_ids()[:5]
    histories = [data.history(int(u), "test") for u in users]
    sets = data.candidate_sets("test").set_index("user_id").loc[users]
    cands = np.stack(sets["candidates"].to_numpy())
    only_candidates = family.load(ctx, "llm-srec").score(users, histories, cands)  # no catalogue table computed
    full = rec.score_catalogue(users, histories)
    assert full.shape == (5, data.num_items + 1) and np.isneginf(full[:, 0]).all()
    np.testing.assert_allclose(rec.score(users, histories, cands), np.take_along_axis(full, cands, axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(only_candidates, np.take_along_axis(full, cands, axis=1), rtol=1e-4, atol=1e-4)
    assert rec.visible_history(histories[0]) == min(len(histories[0]), config.llmsrec.history_len)
    assert family.comparisons(config, "llm-srec-nodist")[-1] == "llm-srec"
    assert family.teacher_in(config, "llm-srec") == "sasrec"


def test_an_artifact_of_other_settings_is_refused_and_rerun(world, trained):
    root, data, backbone, paths = world
    config, results, _ = trained
    changed = small_config(lr=5e-3)
    ctx = MethodContext(changed, paths, data, backbone)
    with pytest.raises(StaleArtifactError, match="lr"):
        LLMSRecFamily().identity(ctx, "llm-srec")
    again = run_llmsrec(config, paths, data, backbone, "llm-srec", progress=False)
    assert again.skipped


def test_config_names_the_teacher_and_variants():
    with pytest.raises(ConfigError, match="llmsrec.teacher: 'caser' is not among teachers.models"):
        RunConfig(teachers=TeachersConfig(models=("sasrec",)), llmsrec=LLMSRecConfig(teacher="caser"),
                  p2rec=P2RecConfig(variants=()))  # fmt: skip
    with pytest.raises(ConfigError, match=r"llmsrec.variants\[0\]"):
        load_config("cpu", llmsrec={"variants": ["llm-srec-x"]})
    with pytest.raises(ConfigError, match="llmsrec.max_train_users"):
        load_config("cpu", llmsrec={"max_train_users": 1})
    assert load_config("paper").llmsrec.time_format == "date"
    assert set(load_config("cpu-ablations").llmsrec.variants) == {"llm-srec", "llm-srec-nounif", "llm-srec-nodist", "llm-srec-shuffled"}


def test_training_is_reproducible(world, tmp_path):
    """A second training in the same process starts from the same seeded heads (a re-run is reproducible)."""
    _, data, backbone, paths = world
    config = small_config()
    other = RunPaths(tmp_path / "other")
    shutil.copytree(paths.teachers, other.teachers)
    a = run_llmsrec(config, other, data, backbone, "llm-srec", progress=False)
    b_dir = tmp_path / "again"
    shutil.copytree(paths.teachers, RunPaths(b_dir).teachers)
    b = run_llmsrec(config, RunPaths(b_dir), data, backbone, "llm-srec", progress=False)
    assert a.history["NDCG@10"].tolist() == pytest.approx(b.history["NDCG@10"].tolist())


def test_benchmark_times_real_steps_and_plans_the_preset(world, tmp_path):
    """``python -m delrec_lib.bench llmsrec`` on the tiny world: steps and prompts timed, the plan counted."""
    import json

    from delrec_lib import bench

    root, _, backbone, paths = world
    toml = tmp_path / "bench.toml"
    toml.write_text(
        f'data_dir = "{root / "data"}"\n[data]\ndataset = "toy"\nnum_negatives = 5\n'
        f'[llm]\nbackbone = "{backbone.name}"\ndtype = "float32"\n'
        '[teachers]\nmodels = ["sasrec"]\nmax_epochs = 2\n[teachers.sasrec]\nhidden = 16\n'
        '[distill]\nprompts = []\n[finetune]\nvariants = ["lora"]\nnum_negatives = 5\n[p2rec]\nvariants = []\n'
        "[llmsrec]\nhead_width = 32\noutput_dim = 8\nvalid_users = 8\n"
    )
    out = tmp_path / "bench.json"
    args = ["llmsrec", "--preset", "smoke", "--config", str(toml), "--run-dir", str(paths.root), "--steps", "2",
            "--users", "8", "--items", "16", "--json", str(out)]  # fmt: skip
    assert bench.main(args) == 0
    row = json.loads(out.read_text())["llmsrec"]
    assert row["train"]["s_per_step"] > 0 and row["train"]["examples_per_step"] == 4  # smoke: 4 users x 1
    assert row["train"]["pct_peak"] > 0 and row["score"]["users_per_s"] > 0 and row["score"]["items_per_s"] > 0
    plan = row["plan"]
    assert plan["steps"] == 4 and plan["evaluations"] == 3  # smoke: 4 steps, evaluated at 0, 2 and 4 (the last)
    assert plan["total_minutes"] == pytest.approx(plan["train_minutes"] + plan["selection_minutes"] + plan["test_minutes"]
                                                  + plan["order_diagnostic_minutes"])  # fmt: skip
