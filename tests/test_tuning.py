"""The tuning tools (teachers, stage 1, stage 2): typed grids, one row per point, no test split read (the
tools hand their stage a view of the data without it), and stage 1 never trains or selects on a report user."""

from __future__ import annotations

import json

import pytest

from delrec_lib.config import TeachersConfig
from delrec_lib.errors import ConfigError
from delrec_lib.teachers.tuning import grid_points, parse_grid, validation_grid

from .guards import NoTestReads
from .teacher_fixture import successor_data


def test_grid_is_typed_by_the_models_fields_and_bad_fields_are_named():
    grid = parse_grid(["lr=1e-3,2e-3", "hidden=64,128"], "sasrec")
    assert grid == {"lr": [0.001, 0.002], "hidden": [64, 128]}
    assert len(grid_points(grid)) == 4
    with pytest.raises(ConfigError, match="'width' is not a field of teachers.sasrec"):
        parse_grid(["width=3"], "sasrec")
    with pytest.raises(ConfigError, match=r"teachers.gru4rec.hidden takes int values"):
        parse_grid(["hidden=big"], "gru4rec")
    with pytest.raises(ConfigError, match="expected FIELD=V1,V2"):
        parse_grid(["lr"], "caser")


def test_grid_scores_validation_only(tmp_path, one_torch_thread):
    data = NoTestReads(successor_data(tmp_path), negatives=False)
    config = TeachersConfig(models=("sasrec",), max_epochs=2, patience=1)
    table = validation_grid("sasrec", {"dropout": [0.1, 0.3]}, config, data)
    assert list(table["dropout"].sort_values()) == [0.1, 0.3]
    assert table["valid_NDCG@10"].between(0, 1).all()
    assert (table["epochs"] <= 2).all()
    assert "valid" in data.splits_read and "test" not in data.splits_read


def test_llm_stage_grid_is_typed_by_the_stage_fields():
    from delrec_lib.delrec.tuning import parse_assignments, point_name

    grid = parse_assignments(["lr=1e-3,3e-3", "lora_layers=4,none", "target_modules=q_proj+v_proj"], "finetune", grid=True)
    assert grid == {"lr": [0.001, 0.003], "lora_layers": [4, None], "target_modules": [("q_proj", "v_proj")]}
    assert parse_assignments(["max_steps=100", "cache_prefix=false"], "distill", grid=False) == {"max_steps": 100, "cache_prefix": False}
    assert point_name({"lr": 0.001, "target_modules": ("q_proj", "v_proj")}) == "lr=0.001_target_modules=q_proj+v_proj"
    with pytest.raises(ConfigError, match="'width' is not a field of finetune"):
        parse_assignments(["width=3"], "finetune", grid=True)
    with pytest.raises(ConfigError, match="--set distill.max_steps: takes int values"):
        parse_assignments(["max_steps=many"], "distill", grid=False)
    with pytest.raises(ConfigError, match="expected one of"):
        parse_assignments(["weighting=sometimes"], "distill", grid=True)


def test_llm_stage_grid_trains_each_point_and_reads_no_test_split(tmp_path, one_torch_thread):
    from delrec_lib.config import FinetuneConfig, LLMConfig, RunConfig
    from delrec_lib.delrec.tuning import validation_grid
    from delrec_lib.llm import load_backbone

    from .llm_fixtures import save_tiny_causal
    from .stage_fixtures import synthetic_data

    data = synthetic_data(tmp_path / "data")
    backbone = load_backbone(str(save_tiny_causal(tmp_path / "tiny")), dtype="float32")
    (tmp_path / "from" / "teachers").mkdir(parents=True)
    guarded = NoTestReads(data)
    config = RunConfig(preset="smoke", llm=LLMConfig(history_len=4),
                       finetune=FinetuneConfig(variants=("lora",), max_train_users=8, valid_users=4, num_negatives=5,
                                               batch_size=4, grad_accum=1, eval_every=2, warmup_steps=0, lora_r=2, lora_layers=1))  # fmt: skip
    table = validation_grid("finetune", "lora", config, {"lr": [1e-3, 1e-2]}, {"max_steps": 2}, tmp_path / "from",
                            tmp_path / "out", backbone, guarded)  # fmt: skip
    assert list(table["lr"]) == [1e-3, 1e-2] and table["valid_NDCG@5"].between(0, 1).all()
    assert (table["best_step"] <= 2).all()
    assert "valid" in guarded.splits_read and "test" not in guarded.splits_read
    assert (tmp_path / "out" / "finetune" / "lora" / "max_steps=2_lr=0.01" / "finetune" / "lora" / "history.csv").is_file()


# -- the view the tools hand their stage ------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm_world(tmp_path_factory):
    from delrec_lib.llm import load_backbone

    from .llm_fixtures import save_tiny_causal
    from .stage_fixtures import synthetic_data

    root = tmp_path_factory.mktemp("tuning")
    return root, synthetic_data(root / "data"), load_backbone(str(save_tiny_causal(root / "tiny")), dtype="float32")


TEST_READS = {
    "target, keyword": lambda d, u: d.target(u, split="test"),
    "target, keywords only": lambda d, u: d.target(user_id=u, split="test"),
    "history, positional": lambda d, u: d.history(u, "test"),
    "candidate sets, keyword": lambda d, u: d.candidate_sets(split="test"),
    "sequences": lambda d, u: d.sequences,
    "candidates": lambda d, u: d.candidates,
    "item times": lambda d, u: d.item_times(u),
}


def test_the_view_refuses_the_test_split_however_asked(llm_world):
    from delrec_lib.data.guard import NoTestView, TestSplitRead

    _, data, _ = llm_world
    view, user = NoTestView(data, negatives=True, who="a test"), int(data.user_ids()[3])
    for name, read in TEST_READS.items():
        with pytest.raises(TestSplitRead, match="a test read"):
            read(view, user)
            pytest.fail(name)
    assert "test_target" not in view.splits and view.splits["train_items"].equals(data.splits["train_items"])
    assert view.target(user, split="valid") == data.target(user, "valid")
    assert view.history(user_id=user, split="valid") == data.history(user, "valid")
    assert view.candidate_sets("valid").equals(data.candidate_sets("valid"))
    assert view.train_items(user) == data.train_items(user) and view.data_id == data.data_id
    assert view.report_users == data.report_users and list(view.interacted_items(user)) == list(data.interacted_items(user))
    with pytest.raises(TestSplitRead, match="interacted_items"):
        NoTestView(data, negatives=False, who="a teacher").interacted_items(user)
    assert not hasattr(view, "no_such_member")


def tool_runs(tool: str, monkeypatch, tmp_path, data, stage):
    """Runs one tuning ``tool`` on a one-point grid with its stage replaced by ``stage(data)``."""
    if tool == "teachers":
        from delrec_lib.config import TeachersConfig

        monkeypatch.setattr("delrec_lib.teachers.tuning.fit", lambda model, spec, data, **kw: stage(data))
        return validation_grid("sasrec", {"dropout": [0.1]}, TeachersConfig(models=("sasrec",)), data)
    from delrec_lib.config import RunConfig
    from delrec_lib.delrec.tuning import validation_grid as llm_grid

    (tmp_path / "from" / "teachers").mkdir(parents=True, exist_ok=True)
    target = "delrec_lib.delrec.distill.run_distillation" if tool == "distill" else "delrec_lib.delrec.finetune.run_finetuning"
    monkeypatch.setattr(target, lambda config, paths, data, backbone, name, **kw: stage(data))
    name = "sasrec" if tool == "distill" else "lora"
    return llm_grid(tool, name, RunConfig(preset="smoke"), {"lr": [1e-3]}, {}, tmp_path / "from", tmp_path / "out", None, data)


@pytest.mark.parametrize("tool", ["teachers", "distill", "finetune"])
def test_each_tool_hands_its_stage_a_view_that_refuses_the_test_split(llm_world, tmp_path, monkeypatch, tool):
    """The protection is in the tool: a stage that asks for the test split, however, fails under it."""
    from delrec_lib.data.guard import NoTestView, TestSplitRead

    _, data, _ = llm_world
    user = int(data.user_ids()[0])
    given = []

    def stage_reading(read):
        def stage(d):
            given.append(d)
            read(d, user)

        return stage

    for name, read in TEST_READS.items():
        with pytest.raises(TestSplitRead, match=f"the {tool}'? tuning grid read"):
            tool_runs(tool, monkeypatch, tmp_path, data, stage_reading(read))
            pytest.fail(f"{tool}: {name} was not refused")
    assert len(given) == len(TEST_READS) and all(isinstance(d, NoTestView) for d in given)
    if tool == "teachers":  # a teacher has no use for interacted_items (its test targets included)
        with pytest.raises(TestSplitRead, match="interacted_items"):
            tool_runs(tool, monkeypatch, tmp_path, data, stage_reading(lambda d, u: d.interacted_items(u)))


# -- stage 1: the report set is out of reach --------------------------------------------------------------


def teacher_without_targets(directory, data):
    """A teacher export that ranks no user's valid or test target: item 30 (nobody's) first, then items the
    user never interacted with."""
    import numpy as np
    import pandas as pd

    from delrec_lib.artifacts import atomic_dir, build_manifest, write_manifest
    from delrec_lib.config import TeachersConfig
    from delrec_lib.teachers import export_spec

    rows = []
    for uid in data.user_ids():
        seen = set(data.interacted_items(uid).tolist())
        items = [30, *[i for i in range(1, 30) if i not in seen][:9]]
        rows.append({"user_id": int(uid), "items": np.array(items, np.int32), "scores": np.linspace(1, 0, 10).astype(np.float32)})
    with atomic_dir(directory) as tmp:
        pd.DataFrame(rows).to_parquet(tmp / "topk_valid.parquet", index=False)
        spec = export_spec(directory.name, TeachersConfig(), data)
        write_manifest(tmp, build_manifest("teacher", tmp, inputs={"data": data.data_id}, config=spec))


def check_no_own_target(examples, data) -> None:
    """No stage-1 example shows its user's valid or test target (the in-context example is another user's case)."""
    for ex in examples:
        targets = {data.target(ex.user_id, "valid"), data.target(ex.user_id, "test")}
        shown = {*ex.history, *ex.candidates, *ex.ranked, ex.prediction}
        assert not shown & targets, f"user {ex.user_id} ({ex.task}): a valid/test target in the prompt"


def test_distill_grid_trains_and_selects_outside_the_report_set_and_shows_no_target(llm_world, tmp_path, monkeypatch):
    """Whatever the grid, stage 1 under the tuning tool trains, draws in-context examples and selects only on
    users outside the data's fixed report set, reports on a prefix of it, and no prompt shows its user's
    valid or test target (interacted_items keeps them out of the random negatives)."""
    import pandas as pd

    from delrec_lib.artifacts import sha256_json
    from delrec_lib.config import DistillConfig, LLMConfig, RunConfig
    from delrec_lib.delrec import distill
    from delrec_lib.delrec.tuning import point_name
    from delrec_lib.delrec.tuning import validation_grid as llm_grid

    _, data, backbone = llm_world
    teacher_without_targets(tmp_path / "from" / "teachers" / "sasrec", data)
    tasks, shown = [], []

    class Recording(distill.DistillTask):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            tasks.append(self)

        def prompt(self, ex):
            shown.append(ex)
            return super().prompt(ex)

    monkeypatch.setattr(distill, "DistillTask", Recording)
    config = RunConfig(preset="smoke", llm=LLMConfig(history_len=4),
                       distill=DistillConfig(num_soft_tokens=2, ta_candidates=4, rps_top_k=3, rps_random=2, batch_size=4,
                                             grad_accum=1, warmup_steps=0))  # fmt: skip
    grid = {"seed": [1, 2], "heldout_users": [3, 300], "selection_users": [4, 100], "max_train_users": [None, 5]}
    guarded = NoTestReads(data)
    fixed_settings = {"max_steps": 1, "eval_every": 1}
    table = llm_grid("distill", "sasrec", config, grid, fixed_settings, tmp_path / "from", tmp_path / "out", backbone, guarded)
    assert len(table) == len(tasks) == 16 and table["selection_fidelity"].between(0, 1).all()
    assert "test" not in guarded.splits_read
    fixed = set(data.report_users)
    cases = {u: (tuple(data.train_items(u)[:-1]), 30, data.train_items(u)[-1]) for u in data.user_ids().tolist()}
    for task in tasks:
        assert task.users and not set(task.users) & fixed, "a report user is trained on"
        assert task.selection["rps"] and not set(task.selection["rps"]) & fixed, "a report user selects the step"
        donors = {ex.example for ex in task.train["ta"].values()}
        assert not donors & {cases[u] for u in fixed}, "a report user's case is an in-context example"
    check_no_own_target(shown, data)
    reports = {}
    for point in grid_points(grid):
        out = tmp_path / "out" / "distill" / "sasrec" / point_name({**fixed_settings, **point}) / "distill" / "sasrec"
        users = pd.read_parquet(out / "per_user.parquet")["user_id"].tolist()
        assert users == sorted(data.report_users[: point["heldout_users"]])
        report = json.loads((out / "metrics.json").read_text())["report_users"]
        assert report == {"hash": sha256_json(users), "fixed_set": data.report_users_id}
        reports.setdefault(point["heldout_users"], set()).add(report["hash"])
    assert all(len(h) == 1 for h in reports.values()), "a setting other than heldout_users moved the report set"


def test_the_target_check_fails_on_negatives_drawn_from_unseen_train_items_only(llm_world, tmp_path):
    """Companion: negatives that avoid only the train items (not interacted_items) do show targets."""
    import numpy as np

    from delrec_lib.config import DistillConfig
    from delrec_lib.delrec import distill

    _, data, _ = llm_world
    teacher_without_targets(tmp_path / "teachers" / "sasrec", data)
    preds = distill.teacher_predictions(distill.read_teacher_topk(tmp_path / "teachers" / "sasrec", data), data)
    cfg = DistillConfig(ta_candidates=10, rps_top_k=3, rps_random=8)
    users = data.user_ids().tolist()
    built = distill.build_examples(data, preds, users, cfg, donors=users)
    check_no_own_target([*built["ta"].values(), *built["rps"].values()], data)

    def train_only(rng, d, user_id, exclude, n):
        pool = np.setdiff1d(np.arange(1, d.num_items + 1), list(set(d.train_items(user_id)) | exclude))
        return [int(i) for i in rng.choice(pool, size=n, replace=False)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distill, "_random_items", train_only)
        leaky = distill.build_examples(data, preds, users, cfg, donors=users)
    with pytest.raises(AssertionError, match="a valid/test target in the prompt"):
        check_no_own_target([*leaky["ta"].values(), *leaky["rps"].values()], data)


def test_the_choice_is_the_best_mean_or_within_one_sd_of_it_the_cheapest():
    import pandas as pd

    from delrec_lib.delrec.tuning import choose_point

    grid = {"lr": [0.01, 0.1, 0.3]}
    rows = [(0.1, 0.30, 100), (0.1, 0.40, 100), (0.1, 0.35, 100),  # mean 0.35, sd 0.05
            (0.3, 0.33, 40), (0.3, 0.31, 40), (0.3, 0.32, 40),  # mean 0.32: within one sd of 0.35, cheaper
            (0.01, 0.10, 10), (0.01, 0.12, 10), (0.01, 0.11, 10)]  # fmt: skip
    confirmed = pd.DataFrame(rows, columns=["lr", "selection_fidelity", "seconds"])
    summary, chosen = choose_point(confirmed, grid, "selection_fidelity")
    assert chosen == {"lr": 0.3}
    assert summary.set_index("lr").loc[0.1, "mean"] == pytest.approx(0.35) and list(summary["seeds"]) == [3, 3, 3]
    wide_apart = confirmed.assign(selection_fidelity=[0.35, 0.35, 0.35, 0.20, 0.21, 0.22, 0.1, 0.1, 0.1])
    assert choose_point(wide_apart, grid, "selection_fidelity")[1] == {"lr": 0.1}  # sd 0: only the best mean


def test_the_confirmation_trains_the_best_points_again_with_other_training_seeds(llm_world, tmp_path):
    from delrec_lib.config import DistillConfig, LLMConfig, RunConfig
    from delrec_lib.delrec.tuning import confirm_points, validation_grid

    _, data, backbone = llm_world
    teacher_without_targets(tmp_path / "from" / "teachers" / "sasrec", data)
    config = RunConfig(preset="smoke", llm=LLMConfig(history_len=4),
                       distill=DistillConfig(num_soft_tokens=2, ta_candidates=4, rps_top_k=3, rps_random=2, batch_size=4,
                                             grad_accum=1, warmup_steps=0, heldout_users=3, selection_users=6))  # fmt: skip
    grid, fixed = {"lr": [0.001, 0.3, 1.0]}, {"max_steps": 3, "eval_every": 1}
    screen = validation_grid("distill", "sasrec", config, grid, fixed, tmp_path / "from", tmp_path / "out", backbone, data)
    confirmed = confirm_points("distill", "sasrec", config, grid, screen, fixed, 2, [7], tmp_path / "from",
                               tmp_path / "out", backbone, data)  # fmt: skip
    best_two = screen.sort_values("selection_fidelity", ascending=False, kind="stable")["lr"].tolist()[:2]
    assert confirmed["lr"].tolist() == [best_two[0], best_two[0], best_two[1], best_two[1]]
    assert confirmed["train_seed"].tolist() == [config.distill.seed, 7, config.distill.seed, 7]
    for lr in best_two:
        folder = tmp_path / "out" / "distill" / "sasrec" / f"max_steps=3_eval_every=1_lr={lr}" / "distill"
        seeded = json.loads((folder / "sasrec-seed7" / "metrics.json").read_text())
        assert seeded["train_seed"] == 7 and (folder / "sasrec" / "metrics.json").is_file()
