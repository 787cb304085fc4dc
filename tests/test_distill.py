"""DELRec stage 1 on a tiny random LLM: leakage, frozen backbone, learnability, resume, mismatches."""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from delrec_lib.config import DistillConfig, LLMConfig, RunConfig
from delrec_lib.delrec.distill import (
    HEURISTICS,
    DistillExample,
    build_examples,
    heuristic_hits,
    read_teacher_scores,
    read_teacher_topk,
    run_distillation,
    split_users,
    stage1_loss,
    teacher_predictions,
)
from delrec_lib.delrec.soft_prompt import load_soft_prompt
from delrec_lib.errors import ConfigError, DataError, StaleArtifactError
from delrec_lib.llm import load_backbone
from delrec_lib.llm.scoring import layer_prompt_shape
from delrec_lib.runner import RunPaths

from .llm_fixtures import save_tiny_causal
from .stage_fixtures import FIXED_PREDICTION, synthetic_data, write_teacher_exports


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    data = synthetic_data(root / "data")
    backbone = load_backbone(str(save_tiny_causal(root / "tiny")), dtype="float32")
    return root, data, backbone


def config(**distill) -> RunConfig:
    base = DistillConfig(heldout_users=10, selection_users=6, max_steps=30, batch_size=4, grad_accum=1, lr=0.1,
                         eval_every=10, num_soft_tokens=4, warmup_steps=0, ta_candidates=6, rps_top_k=3, rps_random=3)  # fmt: skip
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


def ta_case(data, preds, uid) -> tuple:
    """A user's solved TA case as an in-context example shows it: (history, teacher top-1, hidden item)."""
    train = data.train_items(uid)
    return (tuple(train[:-1]), preds[uid][0], train[-1])


def never_interacted(data, uid) -> set[int]:
    return set(range(1, data.num_items + 1)) - set(data.interacted_items(uid).tolist())


def test_examples_show_train_items_and_the_teachers_ranking_as_it_is(world):
    root, data, _ = world
    paths = paths_for(root, "leak")
    # The teacher ranks each user's valid then test target right after its top-1.
    write_teacher_exports(paths.teachers / "sasrec", data, leak_targets=True)
    topk = read_teacher_topk(paths.teachers / "sasrec", data)
    preds = teacher_predictions(topk, data)
    cfg = config().distill
    users = split_users(data, cfg)
    examples = build_examples(data, preds, data.user_ids().tolist(), cfg, donors=users.train)
    ta, rps = examples["ta"], examples["rps"]
    assert len(ta) == len(rps) == data.num_users
    for row in topk.itertuples():
        train = set(data.train_items(row.user_id))
        assert preds[row.user_id] == [int(i) for i in row.items if i not in train]  # nothing else dropped
    for uid, ex in rps.items():
        valid, test = data.target(uid, "valid"), data.target(uid, "test")
        assert ex.history == tuple(data.train_items(uid))
        assert ex.target == preds[uid][0] == FIXED_PREDICTION
        assert ex.ranked == tuple(preds[uid][1:3]) == (valid, test), "the teacher's ranks 2..k, targets included"
        assert set(ex.candidates) - set(preds[uid][:3]) <= never_interacted(data, uid)  # the protocol's negatives
    for uid, ex in ta.items():
        assert ex.target == data.train_items(uid)[-1] and ex.history == tuple(data.train_items(uid)[:-1])
        assert ex.prediction == FIXED_PREDICTION
        assert set(ex.candidates) - {ex.target} <= never_interacted(data, uid)


def test_a_teacher_top1_that_is_a_later_target_stays_the_label(world):
    root, data, _ = world
    paths = paths_for(root, "target-first")
    write_teacher_exports(paths.teachers / "sasrec", data, fixed=None, leak_targets=True)
    preds = teacher_predictions(read_teacher_topk(paths.teachers / "sasrec", data), data)
    users = split_users(data, config().distill)
    examples = build_examples(data, preds, users.train, config().distill, donors=users.train)
    for uid in users.train:
        valid, test = data.target(uid, "valid"), data.target(uid, "test")
        assert preds[uid][:2] == [valid, test]
        assert examples["rps"][uid].target == valid and examples["rps"][uid].ranked[0] == test
        assert examples["ta"][uid].prediction == valid


def test_no_heldout_user_appears_in_a_training_example(world):
    root, data, _ = world
    paths = paths_for(root, "donors")
    write_teacher_exports(paths.teachers / "sasrec", data, fixed=None, seed=3)  # a different top-1 per user
    preds = teacher_predictions(read_teacher_topk(paths.teachers / "sasrec", data), data)
    cfg = config().distill
    users = split_users(data, cfg)
    held = users.selection + users.report
    assert not set(held) & set(users.train) and not set(users.selection) & set(users.report)
    held_cases = {ta_case(data, preds, u) for u in held}
    train_cases = {ta_case(data, preds, u) for u in users.train}
    assert not held_cases & train_cases
    for group in (users.train, users.selection, users.report):
        ta = build_examples(data, preds, group, cfg, donors=users.train)["ta"]
        assert set(ta) == set(group)
        for uid, ex in ta.items():
            assert ex.example in train_cases and ex.example != ta_case(data, preds, uid), f"user {uid}: {ex.example}"
    # The check can fail: donors drawn from every user (the old behaviour) do show held-out cases.
    everyone = build_examples(data, preds, users.train, cfg, donors=users.train + held)["ta"]
    assert any(ex.example in held_cases for ex in everyone.values())


def test_stage1_trains_on_training_users_only(world):
    """Through run_distillation itself: the task it trains holds no held-out user, as trainee or donor."""
    root, data, backbone = world
    paths = paths_for(root, "wiring")
    write_teacher_exports(paths.teachers / "sasrec", data, fixed=None, seed=3)
    seen = {}

    def capture(trainer, step):
        seen["task"] = trainer.task
        raise Interrupt

    with pytest.raises(Interrupt):
        run_distillation(config(), paths, data, backbone, "sasrec", progress=False, callbacks=[capture])
    task = seen["task"]
    preds = teacher_predictions(read_teacher_topk(paths.teachers / "sasrec", data), data)
    users = split_users(data, config().distill)
    held = set(users.selection + users.report)
    held_cases = {ta_case(data, preds, u) for u in held}
    assert task.users and not set(task.users) & held
    for t in ("ta", "rps"):
        assert not set(task.train[t]) & held
        assert set(task.selection[t]) <= set(users.selection)
    for ex in task.train["ta"].values():
        assert ex.example not in held_cases
        for u in held:  # nor a held-out user's history with some other prediction
            h = data.train_items(u)[:-1]
            assert ex.example[0] != tuple(h)


def test_changing_a_users_targets_changes_only_their_negatives(world):
    root, data, _ = world
    cfg = config().distill
    users = split_users(data, cfg)
    uid = users.train[0]
    seq = list(data.interacted_items(uid).tolist())
    others = [i for i in range(1, 28) if i not in seq][:2]  # items nobody in the user's sequence
    splits, sequences = data.splits.copy(), data.sequences.copy()
    row = data.splits.index[data.splits["user_id"] == uid][0]
    splits.at[row, "valid_target"], splits.at[row, "test_target"] = others
    srow = data.sequences.index[data.sequences["user_id"] == uid][0]
    sequences.at[srow, "items"] = np.array(seq[:-2] + others, dtype=np.asarray(seq).dtype)
    changed = dataclasses.replace(data, splits=splits, sequences=sequences)
    assert changed.target(uid, "test") == others[1] and changed.train_items(uid) == data.train_items(uid)
    # One teacher export for both: the teacher saw train items only, which did not change.
    rng = np.random.default_rng(0)
    topk = pd.DataFrame([{"user_id": int(u), "items": np.array(
        [data.target(u, "valid"), data.target(u, "test"), *rng.permutation([i for i in range(1, 31)
         if i not in data.train_items(u) and i not in (data.target(u, "valid"), data.target(u, "test"))])][:8])}
        for u in data.user_ids()])  # fmt: skip
    before, after = teacher_predictions(topk, data), teacher_predictions(topk, changed)
    assert before == after and before[uid][:2] == [data.target(uid, "valid"), data.target(uid, "test")]
    ex_before = build_examples(data, before, users.train, cfg, donors=users.train)
    ex_after = build_examples(changed, after, users.train, cfg, donors=users.train)
    for t in ("ta", "rps"):
        assert set(ex_before[t]) == set(ex_after[t])
        for u in ex_before[t]:
            a, b = ex_before[t][u], ex_after[t][u]
            if u != uid:
                assert a == b, f"user {u} ({t}) changed with another user's targets"
                continue
            # All but the random negatives: history, teacher predictions, label, donor case.
            assert (a.history, a.prediction, a.ranked, a.example, a.target) == (b.history, b.prediction, b.ranked, b.example, b.target)
            shown = {a.target, *a.ranked} if t == "rps" else {a.target}
            assert set(b.candidates) - shown <= never_interacted(changed, uid)


def test_heuristic_baselines_on_hand_made_examples():
    popularity = np.array([5, 9, 7, 1, 7])  # items 1..5
    rps = {
        # the teacher's top-1 is item 3; item 2 (the most popular) is listed as its rank 2
        1: DistillExample(1, "rps", (4,), candidates=(1, 2, 3, 4), label=2, ranked=(2,)),
        # unlisted items 3 and 5 tie on popularity: half a hit in expectation
        2: DistillExample(2, "rps", (4,), candidates=(3, 2, 5, 1), label=0, ranked=(2,)),
    }
    # title words per item: item 2 (listed) is the longest, then item 3; items 5 and 1 tie
    lengths = np.array([2, 6, 4, 1, 2])
    hits = heuristic_hits(rps, popularity, lengths)
    assert hits["most popular candidate"].tolist() == [0.0, 0.0]
    assert hits["most popular unlisted candidate"].tolist() == [1.0, 0.5]
    # user 1: the longest unlisted title is item 3, the label; user 2: item 3 again, the label
    assert hits["unlisted candidate with the most title words"].tolist() == [1.0, 1.0]
    rps[2] = DistillExample(2, "rps", (4,), candidates=(5, 2, 3, 1), label=0, ranked=(2,))  # label 5: shorter than 3
    assert heuristic_hits(rps, popularity, lengths)["unlisted candidate with the most title words"].tolist() == [1.0, 0.0]
    ta = {3: DistillExample(3, "ta", (1,), candidates=(4, 2, 1), label=1, prediction=5)}
    assert heuristic_hits(ta, popularity, lengths) == {"most popular candidate": pytest.approx(np.array([1.0]))}


def test_held_out_sets_are_disjoint_sized_and_shrink_loudly(world, caplog):
    _, data, _ = world
    users = split_users(data, config().distill)
    fixed, others = len(data.report_users), data.num_users - len(data.report_users)  # 13 fixed report users of 40
    assert (len(users.report), len(users.selection), len(users.train)) == (10, 6, others - 6)
    with caplog.at_level(logging.WARNING, logger="delrec_lib.delrec.distill"):
        small = split_users(data, DistillConfig(heldout_users=300, selection_users=100))
    assert (len(small.report), len(small.selection)) == (fixed, others // 2)
    assert f"holding out {fixed} report + {others // 2} selection" in caplog.text
    assert len(set(small.train) | set(small.selection) | set(small.report)) == data.num_users
    with pytest.raises(DataError, match="at least 2 are needed"):
        split_users(data, config().distill, max_users=2)


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
    # The fixed top-1 is never among the listed ranks 2..k: a first choice that is a listed title is a miss.
    assert m["picks_listed_chance"] == pytest.approx(2 / 6)
    assert m["picks_listed_after"]["mean"] <= 1 - m["fidelity_after"]["mean"] + 1e-9
    # how far the prompt moved, at every evaluation: from 0 at the start to the selected step's reported value
    moved = result.history.set_index("step")["soft_prompt_moved"]
    assert moved.loc[0] == 0.0 and (moved.iloc[1:] > 0).all()
    assert moved.loc[m["best_step"]] == pytest.approx(m["soft_prompt_moved"])
    # Reported on the report set; the step was selected on the disjoint selection set.
    assert (m["heldout_users"], m["selection_users"]) == (10, 6) and m["selection"]["users"] == 6
    assert (result.history["step"].tolist(), result.history["selection_users"].dropna().unique().tolist()) == ([0, 10, 20, 30], [6])
    assert m["selection"]["fidelity_best"] == result.history["fidelity"].iloc[1:].max()
    assert m["selection"]["fidelity_before"] == result.history["fidelity"].iloc[0]
    # Heuristic baselines on the same report examples, with intervals like the LLM's.
    for key, names in (("fidelity_baselines", ["most popular unlisted candidate", "most popular candidate",
                                               "unlisted candidate with the most title words"]),
                       ("ta_baselines", ["most popular candidate"])):  # fmt: skip
        assert list(m[key]) == names
        for v in m[key].values():
            assert v["users"] == 10 and v["ci_low"] <= v["mean"] <= v["ci_high"]
    assert list(m["selection"]["fidelity_baselines"]) == list(m["fidelity_baselines"])
    per_user = pd.read_parquet(paths.distill / "sasrec" / "per_user.parquet")
    assert per_user["most popular candidate"].mean() == pytest.approx(m["fidelity_baselines"]["most popular candidate"]["mean"])
    soft, meta = load_soft_prompt(paths.distill / "sasrec", backbone, data, config().llm)
    assert torch.equal(soft.embeddings, result.soft_prompt.embeddings)
    assert meta["teacher"] == "sasrec"
    # a second call finds the artifact up to date and does not train again
    again = run_distillation(config(), paths, data, backbone, "sasrec", progress=False)
    assert again.skipped and again.metrics == result.metrics
    # The teaching table: three report users, each candidate with the teacher's rank and both LLM rankings.
    from delrec_lib.delrec.distill import teaching_table

    table = teaching_table(config(), paths, data, backbone, "sasrec", result.soft_prompt.embeddings, users=3)
    assert table["user"].nunique() == 3 and len(table) == 3 * 6  # rps_top_k 3 + rps_random 3 candidates each
    for _, g in table.groupby("user"):
        for col in ("LLM rank, initial", "LLM rank, trained"):
            assert sorted(g[col]) == list(range(1, 7))
        assert sorted(r for r in g["teacher rank"] if r != "-") == [1, 2, 3]
    top = table[table["teacher rank"] == 1]
    assert (top["LLM rank, trained"] == 1).mean() >= 2 / 3  # the trained prompt puts the fixed top-1 first
    assert not (top["LLM rank, initial"] == 1).all()


class Interrupt(Exception):
    pass


def test_interrupted_stage1_resumes_to_the_same_result(world):
    root, data, backbone = world
    cfg = config(max_steps=12, eval_every=4, schedule="linear")  # the schedule's state resumes too
    full_paths, cut_paths = paths_for(root, "full"), paths_for(root, "cut")
    for p in (full_paths, cut_paths):
        write_teacher_exports(p.teachers / "sasrec", data)
    full = run_distillation(cfg, full_paths, data, backbone, "sasrec", progress=False)
    lrs = full.train_log["lr"].tolist()
    assert len(lrs) >= 2 and lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0] < cfg.distill.lr  # decays from lr to 0

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
        # the smoke preset's known answer reads 10 movies: its own prompt keeps showing them
        "[distill]\nnum_soft_tokens = 4\nrps_top_k = 3\nrps_random = 3\nta_candidates = 6\nknown_answer_history_len = 10\n"
        "[finetune]\nnum_negatives = 5\nlora_layers = 1\n"
    )
    out = tmp_path / "bench.json"
    assert bench.main([stage, "--preset", "smoke", "--config", str(toml), "--steps", "2", "--json", str(out)]) == 0
    row = json.loads(out.read_text())[stage]
    assert row["timed_steps"] == 2 and row["s_per_step"] > 0
    assert row["examples_per_step"] == (8 if stage == "distill" else 2)  # smoke: 2 users x accum (2 | 1)
    assert row["tokens_per_step"] > row["examples_per_step"] * 10 and row["pct_peak"] > 0
    minutes = row["minutes_per_prompt" if stage == "distill" else "minutes_per_variant"]
    assert minutes == pytest.approx(row["s_per_step"] * 4 / 60)  # the smoke preset's 4 steps, not the bench's
    if stage == "distill":  # frozen-state caching one prompt at a time and in the run's batches
        assert sorted(row["caching"]) == ["batch_1", "batch_8"]
        assert all(r["ms_per_prompt"] > 0 and r["pct_peak"] > 0 for r in row["caching"].values())


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


def test_stage1_with_a_per_layer_prompt_learns_and_runs_on_the_index_head(world):
    """Stage 1's options: a prompt at every layer (learns the fixed teacher on the title head), clipping, capped task
    weights, and the index head end to end (a random 2-layer model cannot tie a letter to the title beside it, so
    only the real backbone's learning is measured: notebook 03 and the study)."""
    root, data, backbone = world
    before = weights_digest(backbone.model)
    for head in ("title", "index"):
        paths = paths_for(root, f"layered-{head}")
        write_teacher_exports(paths.teachers / "sasrec", data)
        cfg = config(prompt_depth="every_layer", max_grad_norm=1.0, max_task_weight=1.5, lr=0.3, max_steps=20)
        cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, head=head))
        result = run_distillation(cfg, paths, data, backbone, "sasrec", progress=False)
        assert weights_digest(backbone.model) == before
        m = result.metrics
        assert tuple(result.soft_prompt.embeddings.shape) == layer_prompt_shape(backbone, 4)
        if head == "title":
            assert m["fidelity_after"]["mean"] >= 0.8 > m["fidelity_chance"] * 2
        weights = result.train_log.filter(like="w_").to_numpy()
        assert weights.size and weights.max() <= 1.5 + 1e-6  # the cap held
        assert not (paths.distill / "sasrec" / "nearest_tokens.json").exists()  # no input vectors to read as tokens
        with pytest.raises(ConfigError, match="per-layer prompt"):  # stage 2 reads input prompts only
            load_soft_prompt(paths.distill / "sasrec", backbone, data, cfg.llm)


def test_the_lora_control_trains_adapters_and_leaves_the_prompt_and_backbone_alone(world):
    """distill.trainable = "lora": the soft prompt stays as initialised, adapters on the top layers learn the same
    examples (here the fixed teacher), saved as a peft folder; stage 2 refuses to read its prompt as trained."""
    from delrec_lib.delrec.finetune import load_variant_parts

    root, data, backbone = world
    paths = paths_for(root, "lora-control")
    write_teacher_exports(paths.teachers / "sasrec", data)
    cfg = config(trainable="lora", lora_layers=1, lora_r=4, lr=0.01, max_steps=20)
    before = weights_digest(backbone.model)
    result = run_distillation(cfg, paths, data, backbone, "sasrec", progress=False)
    assert weights_digest(backbone.model) == before and not any(p.requires_grad for p in backbone.model.parameters())
    m = result.metrics
    assert m["soft_prompt_moved"] == 0.0  # the prompt did not train
    from delrec_lib.delrec.distill import stage1_matched

    assert stage1_matched(cfg, paths, data, backbone, "sasrec") is None  # nothing trained in its prompt to measure
    assert m["fidelity_after"]["mean"] >= 0.8 > m["fidelity_chance"] * 2  # the adapters learned the fixed teacher
    from safetensors.torch import load_file

    adapter = load_file(str(result.directory / "adapter" / "adapter_model.safetensors"))
    assert adapter and all(".layers.1." in k for k in adapter)  # the top layer only
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero: it trained
    with pytest.raises(ConfigError, match="LoRA control"):
        load_variant_parts(cfg, paths, "delrec-sasrec", backbone, data)
    with pytest.raises(ConfigError, match="keeps an input-layer prompt; its prompt depth is 'every_layer'"):
        run_distillation(config(trainable="lora", prompt_depth="every_layer"), paths_for(root, "lora-deep"), data,
                         backbone, "sasrec", progress=False)  # fmt: skip


def test_the_kl_loss_distils_the_teachers_softmax_over_each_examples_candidates(world):
    """distill.loss = "kl": RPS examples carry the teacher's score of each candidate (scores_valid.npz), the loss
    is KL(teacher softmax at kl_temperature || LLM softmax), TA keeps its cross-entropy, a stage 1 on it learns
    the fixed teacher, and an export made before the file existed is refused by name."""
    root, data, backbone = world
    paths = paths_for(root, "kl")
    write_teacher_exports(paths.teachers / "sasrec", data)
    cfg = config(loss="kl", kl_temperature=0.1)
    scores = read_teacher_scores(paths.teachers / "sasrec", data)
    preds = teacher_predictions(read_teacher_topk(paths.teachers / "sasrec", data), data)
    users = data.user_ids()[:12].tolist()
    examples = build_examples(data, preds, users, cfg.distill, donors=users, teacher_scores=scores)
    with np.load(paths.teachers / "sasrec" / "scores_valid.npz") as f:
        raw = dict(zip(f["users"].tolist(), f["scores"].astype(np.float32), strict=True))
    for e in examples["rps"].values():
        assert e.teacher_scores == tuple(float(raw[e.user_id][i]) for i in e.candidates)
        assert int(np.argmax(e.teacher_scores)) == e.label  # the teacher's top-1 is its best-scored candidate
    assert all(e.teacher_scores == () for e in examples["ta"].values())

    rps, ta = list(examples["rps"].values())[:3], list(examples["ta"].values())[:3]
    llm = torch.randn(3, len(rps[0].candidates), generator=torch.Generator().manual_seed(0))
    target = torch.softmax(torch.tensor([e.teacher_scores for e in rps]) / 0.1, dim=-1)
    by_hand = (target * (target.log() - llm.log_softmax(-1))).sum(-1).mean()
    assert float(stage1_loss(llm, rps, cfg.distill)) == pytest.approx(float(by_hand), rel=1e-5)
    ce = torch.nn.functional.cross_entropy(llm, torch.tensor([e.label for e in rps]))
    assert float(stage1_loss(llm, rps, dataclasses.replace(cfg.distill, loss="ce"))) == pytest.approx(float(ce))
    ta_scores = torch.randn(3, len(ta[0].candidates))
    ta_ce = torch.nn.functional.cross_entropy(ta_scores, torch.tensor([e.label for e in ta]))
    assert float(stage1_loss(ta_scores, ta, cfg.distill)) == pytest.approx(float(ta_ce))

    result = run_distillation(cfg, paths, data, backbone, "sasrec", progress=False)
    assert result.metrics["fidelity_after"]["mean"] >= 0.8 > result.metrics["fidelity_chance"] * 2
    # a stage-1 study shows its KL loss with no uniform-ranking cross-entropy beside it (no like to compare)
    from delrec_lib.report import stage1_losses

    assert pd.isna(stage1_losses([paths.root], "sasrec").loc["uniform (ln C)", "kl"])

    old = paths_for(root, "kl-old-export")
    write_teacher_exports(old.teachers / "sasrec", data, with_scores=False)
    with pytest.raises(DataError, match=r"scores_valid.npz: missing.*distill.loss = 'kl'"):
        run_distillation(cfg, old, data, backbone, "sasrec", progress=False)
    assert not (old.distill / "sasrec").exists()


def test_a_seed_copy_of_a_soft_prompt_trains_the_same_examples_in_another_order_and_stage_2_reads_it(world):
    """distill.seeds: "sasrec-seed<N>" trains on the same users and examples with training seed N (another order),
    adding seeds leaves the soft prompt itself up to date, and stage 2's seed copy reads the same seed's prompt."""
    from delrec_lib.delrec.distill import stage1_seed_table
    from delrec_lib.delrec.finetune import variant_prompt_artifact
    from delrec_lib.delrec.soft_prompt import load_run_soft_prompt, stage1_names

    root, data, backbone = world
    paths = paths_for(root, "seeds")
    write_teacher_exports(paths.teachers / "sasrec", data)
    cfg = config(max_steps=6, eval_every=3)
    base = run_distillation(cfg, paths, data, backbone, "sasrec", progress=False)
    seeded = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, seeds=(5,)))
    assert stage1_names(seeded) == ["sasrec", "sasrec-seed5"] and stage1_names(cfg) == ["sasrec"]
    assert run_distillation(seeded, paths, data, backbone, "sasrec", progress=False).skipped
    copy = run_distillation(seeded, paths, data, backbone, "sasrec-seed5", progress=False)
    assert (base.metrics["train_seed"], copy.metrics["train_seed"]) == (cfg.distill.seed, 5)
    for key in ("report_users", "fidelity_before", "train_users", "selection_users"):
        assert copy.metrics[key] == base.metrics[key], key
    assert not torch.equal(copy.soft_prompt.embeddings, base.soft_prompt.embeddings)
    loaded, _ = load_run_soft_prompt(seeded, paths, data, backbone, "sasrec-seed5")
    assert torch.equal(loaded.embeddings, copy.soft_prompt.embeddings)

    assert variant_prompt_artifact(seeded, "delrec-sasrec-seed5") == "sasrec-seed5"  # both stages again
    assert variant_prompt_artifact(cfg, "delrec-sasrec-seed5") == "sasrec"  # stage 2 again over the one soft prompt
    assert variant_prompt_artifact(seeded, "delrec-sasrec-untrained-seed5") == "sasrec"  # untrained: no seed to read
    assert variant_prompt_artifact(seeded, "lora-seed5") is None

    table = stage1_seed_table({"sasrec": base, "sasrec-seed5": copy})
    assert table["train seed"].tolist() == [str(cfg.distill.seed), "5", "mean", "sd"]
    fidelities = [base.metrics["fidelity_after"]["mean"], copy.metrics["fidelity_after"]["mean"]]
    assert table["fidelity"].iloc[2] == pytest.approx(np.mean(fidelities))
    assert table["fidelity"].iloc[3] == pytest.approx(np.std(fidelities, ddof=1))

    with pytest.raises(ConfigError, match="distill.prompts"):  # a seed's copy is named by distill.seeds, never listed
        DistillConfig(prompts=("sasrec-seed1",))
    with pytest.raises(ConfigError, match="distill.seeds: 2024 is distill.seed"):
        DistillConfig(seeds=(2024,))


def test_stage1_fidelity_on_popularity_matched_report_examples(world):
    """Each report user's RPS example again with its random candidates drawn from the teacher top-1's popularity bin
    (widened as the test sets' are), the teacher's ranks kept; fidelity before and after with the heuristics on the
    same examples, written once as its own artifact beside the soft prompt."""
    from delrec_lib.data.popularity_matched import popularity_bins, train_counts
    from delrec_lib.delrec.distill import _report_examples, matched_rps_examples, stage1_matched
    from delrec_lib.delrec.soft_prompt import SoftPrompt

    root, data, backbone = world
    paths = paths_for(root, "matched")
    write_teacher_exports(paths.teachers / "sasrec", data)
    cfg = config(max_steps=6, eval_every=3)
    run_distillation(cfg, paths, data, backbone, "sasrec", progress=False)
    m = stage1_matched(cfg, paths, data, backbone, "sasrec")

    blank = SoftPrompt(torch.zeros(cfg.distill.num_soft_tokens, backbone.hidden_size))
    _, examples, report = _report_examples(cfg, paths, data, backbone, "sasrec", blank)
    matched, widened = matched_rps_examples(data, examples["rps"])
    _, item_bins = popularity_bins(train_counts(data))
    for uid, ex in matched.items():
        orig = examples["rps"][uid]
        assert (ex.target, ex.ranked, ex.history) == (orig.target, orig.ranked, orig.history)
        assert len(ex.candidates) == len(set(ex.candidates)) == len(orig.candidates)
        negatives = set(ex.candidates) - {ex.target, *ex.ranked}
        assert not negatives & set(data.interacted_items(uid).tolist())
        unseen = np.ones(data.num_items + 1, dtype=bool)
        unseen[[0, *data.interacted_items(uid).tolist(), ex.target, *ex.ranked]] = False
        b, reach = item_bins[ex.target], 0  # the narrowest range around the top-1's bin that holds enough items
        while (unseen & (np.abs(item_bins - b) <= reach)).sum() < len(negatives):
            reach += 1
        assert all(abs(item_bins[i] - b) <= reach for i in negatives), f"user {uid}: a negative outside the matched bins"
    assert m["users"] == len(matched) == 10 and m["widened_users"] == widened
    assert m["fidelity_chance"] == pytest.approx(1 / 6)
    per_user = pd.read_parquet(paths.distill / "matched" / "sasrec" / "per_user.parquet")
    assert per_user["user_id"].tolist() == sorted(matched)
    assert per_user["fidelity_after"].mean() == pytest.approx(m["fidelity_after"]["mean"])
    assert set(m["fidelity_baselines"]) == set(HEURISTICS["rps"])
    assert stage1_matched(cfg, paths, data, backbone, "sasrec") == m  # read back, not recomputed

    # the stage-1 study shows it beside the prompt's other numbers; one made from another soft prompt is refused
    import shutil

    from delrec_lib.errors import StaleArtifactError
    from delrec_lib.report import stage1_study

    cell = stage1_study([paths.root], "sasrec")[0].loc["matched", "popularity-matched fidelity, before -> after (chance)"]
    assert cell == (f"{m['fidelity_before']['mean']:.3f} [{m['fidelity_before']['ci_low']:.3f}, "
                    f"{m['fidelity_before']['ci_high']:.3f}] -> {m['fidelity_after']['mean']:.3f} "
                    f"[{m['fidelity_after']['ci_low']:.3f}, {m['fidelity_after']['ci_high']:.3f}] (0.167)")  # fmt: skip
    # paired with another run user by user on both sets (here a copy of the run: no difference, the same hits)
    from delrec_lib.report import stage1_paired

    shutil.copytree(paths.root, root / "matched-copy")
    paired = stage1_paired([paths.root, root / "matched-copy"], "sasrec", ["matched/matched-copy"])
    assert list(paired["examples"]) == ["report", "popularity-matched"] and list(paired["users"]) == [10, m["users"]]
    assert paired["fidelity A"].iloc[1] == f"{m['fidelity_after']['mean']:.3f}" and paired["p"].tolist() == [1.0, 1.0]
    other = paths_for(root, "matched-other")
    write_teacher_exports(other.teachers / "sasrec", data)
    run_distillation(config(max_steps=3, eval_every=3), other, data, backbone, "sasrec", progress=False)
    shutil.copytree(paths.distill / "matched", other.distill / "matched")
    with pytest.raises(StaleArtifactError, match="another soft prompt"):
        stage1_study([other.root], "sasrec")
    with pytest.raises(StaleArtifactError, match="another soft prompt"):
        stage1_paired([paths.root, other.root], "sasrec", ["matched/matched-other"])


def test_picks_listed_counts_first_choices_among_the_titles_the_prompt_lists():
    from delrec_lib.delrec.distill import picks_listed

    examples = {7: DistillExample(7, "rps", (1, 2), (10, 11, 12, 13), 0, ranked=(11, 12)),
                3: DistillExample(3, "rps", (1,), (20, 21, 22, 23), 2, ranked=(20,))}  # fmt: skip
    # users in sorted order (3, then 7): 3 picked 20 (listed), 7 picked 13 (a random candidate)
    assert picks_listed(examples, np.array([20, 13])).tolist() == [1.0, 0.0]
    assert picks_listed(examples, np.array([22, 12])).tolist() == [0.0, 1.0]  # 22: the label, not listed


def test_rps_with_the_top1_alone_lists_no_teacher_rank(world):
    """rps_top_k = 1 (the known answer's setting): the candidates are the teacher's top-1 and random never-interacted
    items, the prompt lists no teacher prediction, and no first choice can be a listed title."""
    root, data, backbone = world
    paths = paths_for(root, "top1")
    write_teacher_exports(paths.teachers / "sasrec", data)
    cfg = config(rps_top_k=1, rps_random=4, max_steps=2, eval_every=1)
    preds = teacher_predictions(read_teacher_topk(paths.teachers / "sasrec", data), data)
    rps = build_examples(data, preds, data.user_ids().tolist(), cfg.distill, donors=[])["rps"]
    assert len(rps) == data.num_users
    for uid, ex in rps.items():
        assert ex.ranked == () and ex.candidates[ex.label] == FIXED_PREDICTION == preds[uid][0]
        assert len(ex.candidates) == 5 and set(ex.candidates) - {FIXED_PREDICTION} <= never_interacted(data, uid)
    result = run_distillation(cfg, paths, data, backbone, "sasrec-rps", progress=False)
    m = result.metrics
    assert m["fidelity_chance"] == pytest.approx(1 / 5) and m["picks_listed_chance"] == 0
    assert m["picks_listed_before"]["mean"] == m["picks_listed_after"]["mean"] == 0
    text = (result.directory / "examples.json").read_text()
    assert "(none)" in text  # where the template lists the teacher's ranks 2..k
