"""Teachers: windows, no leakage, exports attached to the right users, resume, stale artifacts."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from delrec_lib.config import CaserConfig, GRU4RecConfig, SASRecConfig, TeachersConfig, load_config
from delrec_lib.errors import ConfigError, StaleArtifactError
from delrec_lib.teachers import (
    build_model,
    left_pad,
    load_teacher,
    read_exports,
    run_teachers,
    teacher_spec,
    train_teacher,
)
from delrec_lib.teachers.batches import sequence_windows
from delrec_lib.teachers.evaluation import SplitScores, top_k
from delrec_lib.teachers.stage import training_examples
from delrec_lib.teachers.task import TeacherTask
from delrec_lib.training import TrainConfig, Trainer

from .teacher_fixture import successor_data

# Small teachers that learn the fixture's successor pattern in a few seconds each.
FAST = TeachersConfig(
    max_len=8,
    stride=4,
    max_epochs=30,
    patience=30,
    seed=0,
    top_k=5,
    sasrec=SASRecConfig(hidden=32, layers=1, dropout=0.0, batch_size=8, lr=1e-2),
    gru4rec=GRU4RecConfig(embedding=32, hidden=32, dropout=0.0, batch_size=8, lr=1e-2),
    caser=CaserConfig(embedding=32, window=3, targets=1, dropout=0.0, batch_size=64, lr=1e-2),
)
NAMES = ("sasrec", "gru4rec", "caser")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cycle(tmp_path_factory):
    return successor_data(tmp_path_factory.mktemp("cycle-data"))


@pytest.fixture(scope="module")
def trained(cycle, tmp_path_factory):
    out = tmp_path_factory.mktemp("teachers")
    results = run_teachers(FAST, cycle, out, progress=False)
    return out, results


# -- windows and batches --------------------------------------------------------------------------


@pytest.mark.parametrize("n,max_len,stride", [(2, 5, 5), (5, 5, 5), (6, 5, 5), (23, 5, 5), (23, 5, 2), (23, 7, 1), (51, 50, 50), (120, 50, 25)])
def test_every_train_position_is_a_label_exactly_once(n, max_len, stride):
    seq = list(range(101, 101 + n))
    windows = sequence_windows(seq, max_len, stride)
    labels = [x for _, lab in windows for x in lab if x]
    assert sorted(labels) == seq[1:]
    for inputs, lab in windows:
        assert 1 <= len(inputs) <= max_len and len(inputs) == len(lab)
        first = seq.index(inputs[0])
        assert inputs == seq[first : first + len(inputs)], "a window is a contiguous piece of the sequence"
        for i, y in enumerate(lab):
            assert y == 0 or y == seq[first + i + 1], "each label is the item right after its input"
    assert windows[0][1][-1] == seq[-1] and windows[0][0][-min(n - 1, max_len):] == seq[-min(n - 1, max_len) - 1 : -1]
    if stride < max_len:  # labels keep at least max_len - stride items of context (except at the start)
        for inputs, lab in windows:
            if inputs[0] != seq[0]:
                assert all(y == 0 for y in lab[: max_len - stride])


@pytest.mark.parametrize("name", NAMES)
def test_training_batches_hold_no_valid_or_test_item(cycle, name, tmp_path):
    """Instrument the batch builder during real training: every row of every batch is a piece of
    its own user's train items; the valid/test targets are never labels nor inputs."""
    # Caser with several targets per window: the next T items must all be train items too.
    spec = teacher_spec(name, replace(FAST, max_epochs=2, caser=replace(FAST.caser, targets=3)), cycle)
    model = build_model(spec)
    examples = training_examples(spec, cycle)
    task = TeacherTask(model, examples, cycle)
    seen = []
    original = task.make_batch

    def recording(indices):
        batch = original(indices)
        seen.append(batch)
        return batch

    task.make_batch = recording
    Trainer(TrainConfig(max_epochs=2, batch_size=16, metric="NDCG@10", greater_is_better=True), task, None, progress=False).train()
    assert seen
    labels_per_user: dict[int, list[int]] = {}
    for batch in seen:
        for user, inputs, labels in zip(batch.users.tolist(), batch.inputs.tolist(), batch.labels.tolist(), strict=True):
            train = cycle.train_items(user)
            held_out = {cycle.target(user, "valid"), cycle.target(user, "test")}
            items = [i for i in inputs if i] + [i for i in labels if i]
            assert not held_out & set(items), f"user {user}: a held-out item in a training batch"
            assert set(items) <= set(train)
            real = [i for i in inputs if i]
            start = train.index(real[0])
            assert real == train[start : start + len(real)]
            labels_per_user.setdefault(user, []).extend(i for i in labels if i)
    for user in cycle.user_ids():
        train = cycle.train_items(int(user))
        labels = sorted(labels_per_user[int(user)])
        if name == "caser":  # each position is the first label of exactly one window per epoch
            assert set(labels) == set(train[1:])
        else:  # two epochs: each train position (after the first) is a label exactly twice
            assert labels == sorted(train[1:] * 2)


# -- models ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_score_is_representation_times_item_table_and_ignores_padding(name):
    spec = teacher_spec(name, replace(FAST, max_len=8), type("D", (), {"num_items": 30, "num_users": 5})())
    model = build_model(spec).eval()
    histories = [[3, 4, 5], [7, 1, 2, 9, 11, 12, 13, 14, 15, 16], [2]]
    items, users = left_pad(histories, 8), torch.tensor([1, 2, 3])
    with torch.no_grad():
        scores = model.score(items, users)
        assert scores.shape == (3, 31)
        rep = model.user_representation(items, users)
        torch.testing.assert_close(scores, rep @ model.item_embeddings().T)
        # the amount of left padding does not change a user's scores
        shorter = model.score(left_pad(histories[:1], 3), users[:1])
        torch.testing.assert_close(shorter, scores[:1], rtol=1e-4, atol=1e-5)


def test_top_k_excludes_history_and_breaks_ties_by_item_id():
    scores = np.array([[9.0, 1.0, 5.0, 5.0, 7.0, 0.0]], dtype=np.float32)
    mask = np.array([[False, True, True, True, False, True]])  # item 4 is in the history, 0 is padding
    df = top_k(SplitScores("valid", np.array([7]), np.array([2]), scores, mask), 3)
    assert df["user_id"].tolist() == [7]
    assert df["items"][0].tolist() == [2, 3, 1] and df["scores"][0].tolist() == [5.0, 5.0, 1.0]


# -- trained teachers on the successor fixture ----------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_exported_top1_is_each_users_next_item(trained, cycle, name):
    out, results = trained
    ex = read_exports(out / name, cycle)
    splits = cycle.splits.set_index("user_id")
    top_valid = ex["topk_valid"].set_index("user_id")
    top_test = ex["topk_test"].set_index("user_id")
    assert len(top_valid) == len(top_test) == cycle.num_users
    for user in cycle.user_ids():
        assert top_valid.loc[user, "items"][0] == splits.loc[user, "valid_target"], f"{name}: user {user} (valid)"
        assert top_test.loc[user, "items"][0] == splits.loc[user, "test_target"], f"{name}: user {user} (test)"
        assert not set(top_valid.loc[user, "items"]) & set(cycle.history(int(user), "valid"))
    cands = ex["candidate_scores"]
    best = cands["scores"].map(np.argmax)
    assert (best == cands["target_position"]).all()
    for split in ("valid", "test"):
        assert results[name].metrics[split]["full"]["HR@1"]["mean"] == 1.0
        assert results[name].metrics[split]["candidates"]["NDCG@10"]["mean"] == 1.0
    # and the candidates are those of the shared sets, in their order
    shared = cycle.candidates.set_index(["user_id", "split"])
    for row in cands.head(10).itertuples():
        assert list(row.candidates) == list(shared.loc[(row.user_id, row.split), "candidates"])


def test_popularity_and_teachers_share_the_evaluation(trained, cycle):
    out, results = trained
    pop = read_exports(out / "popularity", cycle)
    assert set(pop["per_user"]["protocol"]) == {"full", "candidates"}
    counts = pd.read_parquet(out / "popularity" / "popularity.parquet")
    assert counts["count"].sum() == sum(len(t) for t in cycle.splits["train_items"])
    for name in NAMES:
        assert results[name].metrics["test"]["full"]["NDCG@10"]["mean"] > results["popularity"].metrics["test"]["full"]["NDCG@10"]["mean"]
    curves = read_exports(out / "sasrec", cycle)["curves"]
    assert {"epoch", "train_loss", "NDCG@10"} <= set(curves.columns) and len(curves) == FAST.max_epochs


def test_rerun_skips_finished_teachers_and_load_teacher_rebuilds_the_model(trained, cycle):
    out, results = trained
    again = run_teachers(FAST, cycle, out, progress=False)
    assert all(r.skipped for r in again.values())
    assert not (out / ".checkpoints").exists() or not any((out / ".checkpoints").iterdir())
    loaded = load_teacher(out / "sasrec", cycle, FAST)
    users = cycle.user_ids()[:5]
    scores = loaded.scorer()(users, [cycle.history(int(u), "valid") for u in users])
    top = read_exports(out / "sasrec", cycle)["topk_valid"].set_index("user_id")
    for row, user in enumerate(users):
        np.testing.assert_allclose(scores[row, top.loc[user, "items"]], top.loc[user, "scores"], rtol=1e-5, atol=1e-5)
    # scores_valid: every item's score at the valid position (what a KL loss in stage 1 distils), in float16
    with np.load(out / "sasrec" / "scores_valid.npz") as f:
        exported = dict(zip(f["users"].tolist(), f["scores"], strict=True))
    assert sorted(exported) == cycle.user_ids().tolist()
    for row, user in enumerate(users):
        assert exported[int(user)].dtype == np.float16 and exported[int(user)].shape == (cycle.num_items + 1,)
        np.testing.assert_allclose(exported[int(user)][1:].astype(np.float32), scores[row, 1:], rtol=2e-3, atol=2e-3)


def test_loading_a_teacher_of_other_data_or_settings_fails_clearly(trained, cycle, tmp_path):
    out, _ = trained
    other_data = successor_data(tmp_path / "other", seed=5)
    with pytest.raises(StaleArtifactError, match="made from another 'data'"):
        load_teacher(out / "sasrec", other_data)
    with pytest.raises(StaleArtifactError, match=r"other settings than this run's \(differing: model\)"):
        load_teacher(out / "sasrec", cycle, replace(FAST, sasrec=replace(FAST.sasrec, lr=3e-3)))
    with pytest.raises(StaleArtifactError, match="holds a 'popularity' artifact"):
        load_teacher(out / "popularity", cycle)
    # a run with other data retrains instead of reusing the stale teacher
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(out, copy)
    result = train_teacher("caser", replace(FAST, max_epochs=1), other_data, copy, progress=False)
    assert not result.skipped
    assert json.loads((copy / "caser" / "manifest.json").read_text())["inputs"]["data"] == other_data.data_id


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("name", ["sasrec", "caser"])
def test_interrupted_training_resumes_to_the_same_metrics(cycle, tmp_path, name):
    cfg = replace(FAST, max_epochs=4, sasrec=replace(FAST.sasrec, dropout=0.3), caser=replace(FAST.caser, dropout=0.3))
    full = train_teacher(name, cfg, cycle, tmp_path / "full", progress=False)

    def stop(trainer, step):
        if step == 2 * (trainer.config.log_every) + 1:  # in the middle of the third epoch
            raise Interrupt

    with pytest.raises(Interrupt):
        train_teacher(name, cfg, cycle, tmp_path / "resumed", progress=False, callbacks=[stop])
    assert not (tmp_path / "resumed" / name).exists()
    assert any((tmp_path / "resumed" / ".checkpoints").iterdir())
    resumed = train_teacher(name, cfg, cycle, tmp_path / "resumed", progress=False)
    timing = {"train_seconds", "seconds_per_epoch", "export_seconds"}
    assert {k: v for k, v in resumed.metrics.items() if k not in timing} == {k: v for k, v in full.metrics.items() if k not in timing}
    a = pd.read_csv(tmp_path / "full" / name / "curves.csv")
    b = pd.read_csv(tmp_path / "resumed" / name / "curves.csv")
    pd.testing.assert_frame_equal(a, b)
    assert (tmp_path / "full" / name / "model.safetensors").read_bytes() == (tmp_path / "resumed" / name / "model.safetensors").read_bytes()


# -- configuration --------------------------------------------------------------------------------


def test_presets_train_every_teacher_and_unknown_names_fail(cycle, tmp_path):
    for preset in ("smoke", "cpu", "paper"):
        assert set(load_config(preset).teachers.models) == set(NAMES)
    assert load_config("smoke").teachers.max_epochs <= 2
    with pytest.raises(ConfigError, match=r"teachers\.models\[1\]: expected one of 'sasrec', 'gru4rec', 'caser', got 'bert4rec'"):
        load_config("smoke", teachers={"models": ["sasrec", "bert4rec"]})
    with pytest.raises(ConfigError, match="stride"):
        load_config("smoke", teachers={"stride": 80})


def test_losses_full_softmax_and_sampled_bce(cycle):
    import torch.nn.functional as F

    from delrec_lib.teachers.task import next_item_loss

    spec = teacher_spec("sasrec", FAST, cycle)
    model = build_model(spec)
    batch = training_examples(spec, cycle).batch(range(8))
    ce, n = next_item_loss(model, batch, "ce")
    hidden, labels = model.training_pairs(batch)
    expected = F.cross_entropy(hidden @ model.item_embeddings()[1:].T, labels[:, 0] - 1)
    torch.testing.assert_close(ce, expected)
    assert n == int((batch.labels > 0).sum())
    torch.manual_seed(0)
    bce, m = next_item_loss(model, batch, "bce", negatives=4)
    assert m == n and torch.isfinite(bce) and bce > 0


def test_sampled_bce_option_trains_a_teacher(cycle, tmp_path):
    cfg = replace(FAST, loss="bce", negatives=4, max_epochs=15, patience=15)
    result = train_teacher("sasrec", cfg, cycle, tmp_path, progress=False)
    pop = run_teachers(replace(cfg, models=()), cycle, tmp_path, progress=False)["popularity"]
    assert result.metrics["test"]["full"]["NDCG@10"]["mean"] > 2 * pop.metrics["test"]["full"]["NDCG@10"]["mean"]
    assert json.loads((tmp_path / "sasrec" / "manifest.json").read_text())["config"]["loss"] == "bce"


def test_building_a_teacher_leaves_the_callers_rng_alone(cycle):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_model(teacher_spec("caser", FAST, cycle))
    assert torch.equal(state, torch.get_rng_state())
    b = build_model(teacher_spec("caser", FAST, cycle))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
