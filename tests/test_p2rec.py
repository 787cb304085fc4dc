"""P2Rec on a tiny random LLM and small teachers: targets, leakage, initialisation, ablations, the method family."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from delrec_lib.artifacts import RunPaths
from delrec_lib.config import (
    CaserConfig,
    GRU4RecConfig,
    LLMConfig,
    P2RecConfig,
    RunConfig,
    SASRecConfig,
    TeachersConfig,
    load_config,
    parse_p2rec_variant,
)
from delrec_lib.errors import ConfigError, StaleArtifactError
from delrec_lib.llm import load_backbone
from delrec_lib.methods import MethodContext
from delrec_lib.p2rec import P2RecFamily, latent_categories, run_p2rec, train_item_ids, user_targets
from delrec_lib.p2rec import stage as p2stage
from delrec_lib.p2rec.augment import llm_initialisation, pca_components
from delrec_lib.p2rec.categories import UNCLUSTERED
from delrec_lib.p2rec.sft import PreferencePrompts, item_states
from delrec_lib.teachers import build_model, run_teachers, teacher_spec
from delrec_lib.teachers.evaluation import model_scorer

from .llm_fixtures import save_tiny_causal
from .stage_fixtures import synthetic_data


class TrainOnlyData:
    """A ProcessedData that fails the test on any access revealing a test target, and on valid targets
    too unless ``allow_valid`` (the teachers' own early stopping reads those, as the plain teachers do)."""

    def __init__(self, data, allow_valid: bool):
        self._data, self._allow_valid = data, allow_valid

    def __getattr__(self, name):
        if name in ("sequences", "splits", "candidates", "candidate_sets", "interacted_items"):
            raise AssertionError(f"P2Rec training read data.{name}")
        return getattr(self._data, name)

    def target(self, user_id, split):
        if split != "valid" or not self._allow_valid:
            raise AssertionError(f"P2Rec training read the {split} target of user {user_id}")
        return self._data.target(user_id, split)

    def history(self, user_id, split):
        if split != "valid" or not self._allow_valid:
            raise AssertionError(f"P2Rec training read the {split} history of user {user_id}")
        return self._data.history(user_id, split)


def small_config(**p2rec) -> RunConfig:
    teachers = TeachersConfig(max_epochs=2, sasrec=SASRecConfig(hidden=16), gru4rec=GRU4RecConfig(embedding=16, hidden=16),
                              caser=CaserConfig(embedding=8, window=3))  # fmt: skip
    base = P2RecConfig(variants=("p2rec-sasrec", "p2rec-sasrec-nosft"), num_categories=4, heldout_users=8, max_steps=6,
                       batch_size=4, eval_every=3, warmup_steps=0, history_len=6, item_batch_size=8, seeds=(7,))  # fmt: skip
    return RunConfig(preset="smoke", teachers=teachers, llm=LLMConfig(history_len=4), p2rec=dataclasses.replace(base, **p2rec))


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("p2rec")
    data = synthetic_data(root / "data")
    backbone = load_backbone(str(save_tiny_causal(root / "tiny")), dtype="float32")
    teachers = RunPaths(root / "teachers-only").teachers
    run_teachers(small_config().teachers, data, teachers, progress=False)
    return root, data, backbone, teachers


def fresh_paths(root, name, teachers_dir) -> RunPaths:
    """A run folder holding a copy of the trained teachers."""
    import shutil

    paths = RunPaths(root / name)
    shutil.copytree(teachers_dir, paths.teachers)
    return paths


@pytest.fixture(scope="module")
def trained(world):
    """One run of the stage (SFT + no-SFT + seed study) on the small world."""
    root, data, backbone, teachers = world
    config = small_config()
    paths = fresh_paths(root, "run", teachers)
    run = run_p2rec(config, paths, data, backbone, progress=False)
    return config, paths, run


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# -- categories and targets -----------------------------------------------------------------------


def test_targets_sum_to_one_and_count_train_items_only(world):
    _, data, _, _ = world
    users = data.user_ids()
    clustered = train_item_ids(data)
    assert set(clustered.tolist()) == set().union(*(data.train_items(int(u)) for u in users))
    table = torch.randn(data.num_items + 1, 8, generator=torch.Generator().manual_seed(0))
    cats = latent_categories(table, clustered, 4, seed=0, restarts=2)
    assert set(np.flatnonzero(cats.labels != UNCLUSTERED).tolist()) == set(clustered.tolist())
    guarded = TrainOnlyData(data, allow_valid=False)
    for scope in ("train", "shown"):
        targets = user_targets(guarded, users, cats, scope=scope, history_len=3)
        np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
        for row, u in enumerate(users):
            items = data.train_items(int(u)) if scope == "train" else data.train_items(int(u))[-3:]
            expected = np.bincount(cats.labels[items], minlength=4) / len(items)
            np.testing.assert_allclose(targets[row], expected, rtol=1e-6)


def test_items_outside_every_train_sequence_are_not_clustered(world):
    _, data, _, _ = world
    clustered = set(train_item_ids(data).tolist())
    targets_only = {data.target(int(u), s) for u in data.user_ids() for s in ("valid", "test")} - clustered
    never = set(range(1, data.num_items + 1)) - clustered
    assert never  # the fixture's items 28..30 are never interacted with
    assert not (targets_only | never) & clustered


# -- leakage ------------------------------------------------------------------------------------------


def check_sft_prompts_per_user(config: RunConfig, data, backbone, prompts: list[list[int]]) -> None:
    """Each SFT prompt (training users', then held-out users', as ``split_users`` orders them) shows its own
    user's latest train items and nothing else."""
    train_users, held_users = p2stage.split_users(config, data)
    users = [*train_users, *held_users]
    assert len(prompts) == len(users), f"{len(prompts)} SFT prompts for {len(users)} users"
    builder = PreferencePrompts(backbone, config.llm, data.titles, config.p2rec.history_len)
    for u, ids in zip(users, prompts, strict=True):
        assert list(ids) == builder.ids(data.train_items(u)), f"the SFT prompt of user {u} is not built from that user's train items"


def check_examples_per_user(examples, data) -> None:
    """Every teacher training example (inputs and labels) holds only its own user's train items."""
    for row, u in enumerate(examples.users.tolist()):
        items = (set(examples.inputs[row].tolist()) | set(examples.labels[row].tolist())) - {0}
        targets = {data.target(u, "valid"), data.target(u, "test")}
        assert not items & targets, f"an example of user {u} holds their valid/test target {sorted(items & targets)}"
        foreign = items - set(data.train_items(u))
        assert not foreign, f"an example of user {u} holds items {sorted(foreign)} outside that user's train items"


def run_leakage_check(world, monkeypatch, name: str, seen: dict) -> None:
    """The SFT (categories, targets, prompts, held-out selection, item states) reads no valid or test target
    at all; the enhanced teacher's fit reads valid targets only for early stopping, as the plain teacher.
    Each user's SFT prompt and each training example hold that user's train items only. ``seen`` receives
    the SFT prompts and the teacher's training examples."""
    root, data, backbone, teachers = world
    config = small_config(variants=("p2rec-sasrec",), seeds=())
    paths = fresh_paths(root, name, teachers)
    real_task_init = p2stage.PreferenceTask.__init__

    def spy_task(self, model, train_ids, train_targets, heldout_ids, *args, **kwargs):
        seen["sft"] = [*train_ids, *heldout_ids]
        real_task_init(self, model, train_ids, train_targets, heldout_ids, *args, **kwargs)

    monkeypatch.setattr(p2stage.PreferenceTask, "__init__", spy_task)
    p2stage.run_sft(config, paths, TrainOnlyData(data, allow_valid=False), backbone, 4, progress=False)
    real_fit = p2stage.fit

    def guarded_fit(model, spec, fit_data, *args, **kwargs):
        result, examples = real_fit(model, spec, TrainOnlyData(fit_data, allow_valid=True), *args, **kwargs)
        seen.setdefault("examples", []).append(examples)
        return result, examples

    monkeypatch.setattr(p2stage, "fit", guarded_fit)
    run_p2rec(config, paths, data, backbone, progress=False)
    check_sft_prompts_per_user(config, data, backbone, seen["sft"])
    assert len(seen["examples"]) == 1  # the one enhanced teacher
    for examples in seen["examples"]:
        check_examples_per_user(examples, data)


def test_no_valid_or_test_target_reaches_p2rec_training(world, monkeypatch):
    run_leakage_check(world, monkeypatch, "leak", {})


def _next_user(data):
    users = [int(u) for u in data.user_ids()]
    return dict(zip(users, users[1:] + users[:1], strict=True))


def _prompts_of_the_next_user(world, monkeypatch):
    _, data, _, _ = world
    other, real = _next_user(data), p2stage.shown_items
    monkeypatch.setattr(p2stage, "shown_items", lambda d, u, n: real(d, other[int(u)], n))


def _examples_of_the_next_user(world, monkeypatch):
    from delrec_lib.teachers import stage as tstage

    _, data, _, _ = world
    other, real = _next_user(data), tstage.training_examples

    def examples(spec, fit_data):
        ex = real(spec, fit_data)
        return dataclasses.replace(ex, users=np.array([other[int(u)] for u in ex.users], dtype=np.int64))

    monkeypatch.setattr(tstage, "training_examples", examples)


def _valid_targets_as_labels(world, monkeypatch):
    """The latest label of each example becomes the user's valid target, for users whose valid target is
    another user's train item: a leak that the union of every user's train items cannot see."""
    from delrec_lib.teachers import stage as tstage

    _, data, _, _ = world
    union = set().union(*(data.train_items(int(u)) for u in data.user_ids()))
    leak = {int(u): data.target(int(u), "valid") for u in data.user_ids() if data.target(int(u), "valid") in union}
    assert leak, "the fixture must have valid targets that are other users' train items"
    real = tstage.training_examples

    def examples(spec, fit_data):
        ex = real(spec, fit_data)
        labels = ex.labels.copy()
        for row, u in enumerate(ex.users.tolist()):
            labels[row, -1] = leak.get(u, labels[row, -1])
        return dataclasses.replace(ex, labels=labels)

    monkeypatch.setattr(tstage, "training_examples", examples)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (_prompts_of_the_next_user, "the SFT prompt of user .* is not built from that user's train items"),
        (_examples_of_the_next_user, r"an example of user \d+ holds"),
        (_valid_targets_as_labels, "holds their valid/test target"),
    ],
)
def test_leakage_check_fails_on_another_users_items_or_a_valid_target(world, monkeypatch, fault, message):
    """Each fault passes the access guard and keeps every input inside the union of all users' train items
    (what this check once compared against); the per-user check fails on it."""
    _, data, _, _ = world
    fault(world, monkeypatch)
    seen: dict = {}
    with pytest.raises(AssertionError, match=message):
        run_leakage_check(world, monkeypatch, f"leak-{fault.__name__}", seen)
    union = set().union(*(data.train_items(int(u)) for u in data.user_ids())) | {0}
    for examples in seen.get("examples", []):
        assert set(np.unique(examples.inputs).tolist()) | set(np.unique(examples.labels).tolist()) <= union


# -- the initialisation ------------------------------------------------------------------------------


def test_enhanced_teacher_starts_from_the_llm_table(world, monkeypatch):
    root, data, backbone, teachers = world
    config = small_config(variants=("p2rec-sasrec",), seeds=())
    paths = fresh_paths(root, "init", teachers)
    real_fit = p2stage.fit
    at_start = {}

    def spy(model, spec, fit_data, *args, **kwargs):
        at_start["table"] = model.item_emb.weight.detach().clone()
        at_start["spec"] = spec
        return real_fit(model, spec, fit_data, *args, **kwargs)

    monkeypatch.setattr(p2stage, "fit", spy)
    run = run_p2rec(config, paths, data, backbone, progress=False)
    directory = run.methods["p2rec-sasrec"].directory
    saved = load_file(str(directory / "init.safetensors"))["item_emb"]
    torch.testing.assert_close(at_start["table"], saved, rtol=0, atol=0)
    # ... which is the PCA of the tuned LLM's item states, at the fresh SASRec's initialisation scale
    states = load_file(str(paths.p2rec / "sft-sasrec-k4" / "item_states.safetensors"))["states"]
    fresh = build_model(teacher_spec("sasrec", config.teachers, data))
    expected = llm_initialisation(fresh, states, "sasrec")["item_emb"]
    torch.testing.assert_close(saved, expected, rtol=0, atol=0)
    assert torch.all(saved[0] == 0)  # padding row
    # the spread of SASRec's own N(0, 0.02) initialisation of the same table
    assert float(saved[1:].std()) == pytest.approx(float(fresh.item_emb.weight[1:].detach().std()), rel=1e-4)
    assert float(saved[1:].std()) == pytest.approx(0.02, rel=0.05)
    assert not torch.allclose(saved, fresh.item_emb.weight)
    assert at_start["spec"] == teacher_spec("sasrec", config.teachers, data)  # the plain teacher's spec
    trained = load_file(str(directory / "model.safetensors"))["item_emb.weight"]
    assert not torch.allclose(trained, saved)  # and then it trained


def test_item_states_alone_match_a_batch_and_the_shared_prefix_cache(world):
    _, data, backbone, _ = world
    from delrec_lib.phases import phase_totals, reset_phases

    prompts = PreferencePrompts(backbone, LLMConfig(), data.titles, 5)
    reset_phases()
    full = item_states(backbone, backbone.model, prompts, data.num_items, batch_size=1, prefix_cache=False)
    assert phase_totals().get("item states (every item through the LLM)", 0) > 0  # notebook 06's timings name it
    batched = item_states(backbone, backbone.model, prompts, data.num_items, batch_size=7, prefix_cache=False)
    cached = item_states(backbone, backbone.model, prompts, data.num_items, batch_size=7)
    assert torch.all(full[0] == 0)
    torch.testing.assert_close(batched, full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)
    # each row is its own item's state: the model's final hidden state of that item's prompt alone
    from delrec_lib.p2rec.sft import final_hidden, pad_right

    ids, mask = pad_right([prompts.ids([3])], int(backbone.tokenizer.pad_token_id))
    torch.testing.assert_close(full[3], final_hidden(backbone, backbone.model, ids, mask)[0], rtol=1e-4, atol=1e-5)


def test_pca_components_are_deterministic_whitened_and_bounded():
    g = torch.Generator().manual_seed(0)
    states = torch.randn(21, 12, generator=g)
    z = pca_components(states, 5)
    assert z.shape == (20, 5)
    torch.testing.assert_close(z, pca_components(states.clone(), 5))
    var = z.var(0)
    assert torch.all(var[:-1] >= var[1:])  # principal axes in order of variance
    torch.testing.assert_close(pca_components(states, 5, whiten=True).var(0), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ConfigError, match="principal axes"):
        pca_components(states, 12)


@pytest.mark.parametrize(("choice", "tables"), [("input", {"item_emb"}), ("output", {"out_emb"}), ("both", {"item_emb", "out_emb"})])
def test_caser_table_choice(world, choice, tables):
    _, data, _, _ = world
    config = small_config()
    model = build_model(teacher_spec("caser", config.teachers, data))
    states = torch.randn(data.num_items + 1, 24, generator=torch.Generator().manual_seed(1))
    init = llm_initialisation(model, states, "caser", caser_table=choice)
    assert set(init) == tables
    for name, table in init.items():
        fresh = getattr(model, name).weight
        assert table.shape == fresh.shape
        torch.testing.assert_close(table[0], fresh[0])  # row 0 stays as built
        assert float(table[1:].std()) == pytest.approx(float(fresh[1:].detach().std()), rel=1e-4)


# -- ablations ------------------------------------------------------------------------------------


def test_random_initialisation_is_the_plain_teacher(trained, world):
    """The seed study's plain arm goes through the same code as the enhanced one, with no LLM table; at the
    run's teacher seed it reproduces notebook 02's teacher bit for bit, so each pair differs only by the table."""
    config, paths, _ = trained
    _, data, _, _ = world
    result = p2stage.enhance(config, paths, data, "sasrec-plain", "sasrec", None, paths.p2rec / "plain-check", progress=False)
    mine = load_file(str(result.directory / "model.safetensors"))
    plain = load_file(str(paths.teachers / "sasrec" / "model.safetensors"))
    assert mine.keys() == plain.keys()
    for k in plain:
        torch.testing.assert_close(mine[k], plain[k], rtol=0, atol=0)


def test_nosft_ablation_runs_no_training_step(world, monkeypatch):
    root, data, backbone, teachers = world
    config = small_config(variants=("p2rec-sasrec-nosft",), seeds=())
    paths = fresh_paths(root, "nosft", teachers)

    def no_training(*args, **kwargs):
        raise AssertionError("the no-SFT ablation must not train the LLM")

    # nothing that could train the LLM may even be built (the teacher still trains, through its own fit)
    monkeypatch.setattr(p2stage, "run_sft", no_training)
    monkeypatch.setattr(p2stage, "peft_model", no_training)
    monkeypatch.setattr(p2stage.PreferenceTask, "__init__", no_training)
    before = weights_digest(backbone.model)
    run = run_p2rec(config, paths, data, backbone, progress=False)
    assert set(run.sft) == {"llm-base"} and not list(paths.p2rec.glob("sft-*"))
    assert weights_digest(backbone.model) == before
    states = load_file(str(paths.p2rec / "llm-base" / "item_states.safetensors"))["states"]
    prompts = PreferencePrompts(backbone, config.llm, data.titles, 1)
    torch.testing.assert_close(states, item_states(backbone, backbone.model, prompts, data.num_items))
    assert (paths.p2rec / "p2rec-sasrec-nosft" / "init.safetensors").is_file()


def test_sft_trains_only_lora_and_head_and_states_differ_from_the_base_llm(trained, world):
    config, paths, run = trained
    _, _, backbone, _ = world
    m = run.sft["sft-sasrec-k4"].metrics
    assert m["steps"] == config.p2rec.max_steps and m["heldout_users"] == config.p2rec.heldout_users
    assert m["train_users"] == 40 - config.p2rec.heldout_users
    n_head = backbone.hidden_size * 4 + 4
    assert n_head < m["trainable_parameters"] < sum(p.numel() for p in backbone.model.parameters()) / 10
    # the item states come from the kept step's LLM: the base LLM itself when step 0 (no SFT) was best
    tuned = load_file(str(paths.p2rec / "sft-sasrec-k4" / "item_states.safetensors"))["states"]
    base = load_file(str(paths.p2rec / "llm-base" / "item_states.safetensors"))["states"]
    if m["best_step"] == 0:
        torch.testing.assert_close(tuned, base)
    else:
        assert not torch.allclose(tuned, base)
    # step 0 is the "mean distribution for everyone" heuristic, which the head starts from
    import pandas as pd

    history = pd.read_csv(paths.p2rec / "sft-sasrec-k4" / "history.csv")
    assert history["step"].iloc[0] == 0
    assert history["mse"].iloc[0] == pytest.approx(m["heldout_prior"]["mse"], rel=1e-4)


def test_sft_learns_a_learnable_target(world):
    """With one shown item per user and its category as target, the LLM must map titles to categories:
    the training loss falls well below the mean-distribution heuristic's."""
    root, data, backbone, teachers = world
    config = small_config(variants=("p2rec-sasrec",), target_scope="shown", history_len=1, max_steps=60, lr=1e-2,
                          eval_every=60, heldout_users=4, batch_size=8, lora_dropout=0.0, seeds=())  # fmt: skip
    paths = fresh_paths(root, "learn", teachers)
    result = p2stage.run_sft(config, paths, data, backbone, 4, progress=False)
    import pandas as pd

    log = pd.read_csv(result.directory / "train_log.csv")
    assert log["loss"].iloc[-3:].mean() < 0.5 * log["loss"].iloc[0]
    assert result.metrics["best_step"] > 0
    tuned = load_file(str(result.directory / "item_states.safetensors"))["states"]
    base = item_states(backbone, backbone.model, PreferencePrompts(backbone, config.llm, data.titles, 1), data.num_items)
    assert not torch.allclose(tuned, base)


# -- seed study, re-runs and the method family -----------------------------------------------------


def test_seed_study_pairs_differ_only_by_the_item_table(trained, world):
    config, paths, run = trained
    _, data, _, _ = world
    assert set(run.seeds) == {"sasrec-s7", "p2rec-sasrec-s7"}
    plain, enhanced = run.seeds["sasrec-s7"], run.seeds["p2rec-sasrec-s7"]
    assert plain.metrics["seed"] == enhanced.metrics["seed"] == 7
    assert plain.metrics["init"] == "random" and enhanced.metrics["init"] == "sft-sasrec-k4"
    spec = {**teacher_spec("sasrec", config.teachers, data), "seed": 7}
    fresh = build_model(spec)
    init = load_file(str(enhanced.directory / "init.safetensors"))["item_emb"]
    main = load_file(str(paths.p2rec / "p2rec-sasrec" / "init.safetensors"))["item_emb"]
    # the same LLM table whatever the seed, up to the rescale to each fresh table's own spread ...
    ratio = float(init[1:].std() / main[1:].std())
    assert ratio == pytest.approx(1.0, abs=0.05)
    torch.testing.assert_close(init, main * ratio, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(init, fresh.item_emb.weight)  # ... and not the seed's random one


def test_rerun_skips_and_settings_change_retrains(trained, world):
    config, paths, _ = trained
    _, data, backbone, _ = world
    again = run_p2rec(config, paths, data, backbone, progress=False)
    assert all(r.skipped for r in [*again.sft.values(), *again.methods.values(), *again.seeds.values()])
    ctx = MethodContext(dataclasses.replace(config, p2rec=dataclasses.replace(config.p2rec, whiten=True)), paths, data)
    with pytest.raises(StaleArtifactError, match="other settings"):
        P2RecFamily().identity(ctx, "p2rec-sasrec")


def test_family_loads_full_catalogue_teachers_that_match_their_exports(trained, world):
    import pandas as pd

    config, paths, _ = trained
    _, data, _, _ = world
    family = P2RecFamily()
    ctx = MethodContext(config, paths, data)
    assert family.names(config) == ["p2rec-sasrec", "p2rec-sasrec-nosft"]
    assert family.comparisons(config, "p2rec-sasrec") == ["sasrec", "popularity"]
    assert family.comparisons(config, "p2rec-sasrec-nosft") == ["sasrec", "popularity", "p2rec-sasrec"]
    rec = family.load(ctx, "p2rec-sasrec")
    assert rec.kind == "teacher" and rec.capabilities.full_catalogue
    cands = pd.read_parquet(paths.p2rec / "p2rec-sasrec" / "candidate_scores.parquet")
    cands = cands[cands["split"] == "valid"]
    users = cands["user_id"].to_numpy().copy()  # parquet columns are read-only arrays
    scores = rec.score(users, [data.history(int(u), "valid") for u in users], np.stack(cands["candidates"].to_list()))
    np.testing.assert_allclose(scores, np.stack(cands["scores"].to_list()), rtol=1e-5, atol=1e-6)
    full = model_scorer(rec.model)(users[:3], [data.history(int(u), "valid") for u in users[:3]])
    np.testing.assert_allclose(rec.score_catalogue(users[:3], [data.history(int(u), "valid") for u in users[:3]]), full)
    labels = {(c.stage, c.label) for c in family.curves(ctx)}
    assert ("06 P2Rec user-level SFT", "sft-sasrec-k4") in labels
    assert ("06 P2Rec enhanced teachers", "p2rec-sasrec") in labels


def test_family_is_registered_after_finetuned():
    from delrec_lib.methods import FAMILIES

    keys = list(FAMILIES)
    assert FAMILIES["p2rec"] == "delrec_lib.p2rec.methods:P2RecFamily"
    assert keys.index("p2rec") > keys.index("finetuned")


# -- configuration ---------------------------------------------------------------------------------


def test_variant_names():
    v = parse_p2rec_variant("p2rec-gru4rec-k32")
    assert (v.teacher, v.sft, v.num_categories) == ("gru4rec", True, 32)
    v = parse_p2rec_variant("p2rec-caser-nosft")
    assert (v.teacher, v.sft) == ("caser", False)
    for bad in ("p2rec-bert4rec", "sasrec", "p2rec-sasrec-k1", "p2rec-sasrec-k8-nosft", "p2rec-sasrec-x"):
        with pytest.raises(ConfigError, match="p2rec.variants"):
            parse_p2rec_variant(bad)


def test_config_refuses_what_the_run_cannot_pair():
    with pytest.raises(ConfigError, match="teachers"):
        load_config("cpu", teachers={"models": ["gru4rec"]})  # p2rec-sasrec needs the plain SASRec
    with pytest.raises(ConfigError, match="teachers.seed"):
        load_config("cpu", p2rec={"seeds": [2024]})
    with pytest.raises(ConfigError, match="seed_variants"):
        load_config("cpu", p2rec={"seed_variants": ["p2rec-caser"]})
    with pytest.raises(ConfigError, match="num_categories"):
        load_config("cpu", p2rec={"num_categories": 1})
    cfg = load_config("cpu-ablations")
    assert {"p2rec-sasrec-k8", "p2rec-sasrec-k32", "p2rec-gru4rec", "p2rec-caser-nosft"} <= set(cfg.p2rec.variants)
