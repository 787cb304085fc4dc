"""Stage 1's known answer and the pieces notebook 03 teaches with: a rule teacher distilled like any
teacher, one training step taken apart, and the reading of a soft prompt's fidelity."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from delrec_lib.config import DistillConfig, LLMConfig, RunConfig, TeachersConfig
from delrec_lib.delrec.distill import anatomy_of_a_step, fidelity_reading, preview_prompts, stage1_table
from delrec_lib.llm import load_backbone
from delrec_lib.runner import RunPaths
from delrec_lib.teachers.stage import export_rule

from .llm_fixtures import save_tiny_causal
from .stage_fixtures import synthetic_data

RULE = "rule-sharedword"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("known")
    data = synthetic_data(root / "data")
    backbone = load_backbone(str(save_tiny_causal(root / "tiny")), dtype="float32")
    config = RunConfig(preset="smoke", llm=LLMConfig(history_len=4),
                       teachers=TeachersConfig(rules=(RULE,), rule_window=4),
                       distill=DistillConfig(prompts=(RULE + "-rps", "sasrec"), heldout_users=8, selection_users=6,
                                             num_soft_tokens=4, rps_top_k=3, rps_random=3, ta_candidates=6))  # fmt: skip
    paths = RunPaths(root / "run")
    export_rule(RULE, config.teachers, data, paths.teachers)
    return config, paths, data, backbone


def test_a_step_taken_apart_reaches_the_soft_prompt_only(world):
    config, paths, data, backbone = world
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    anatomy = anatomy_of_a_step(config, paths, data, backbone, RULE + "-rps")
    layout = anatomy.layout.set_index("segment")["tokens"]
    assert layout["soft prompt (trainable vectors)"] == 4
    assert layout["candidates scored after the prompt"] == len(anatomy.candidates) == 3 + 3
    assert (anatomy.candidates["teacher rank"] == 1).sum() == 1  # the label, once
    probs = torch.softmax(torch.tensor(anatomy.candidates["LLM score"].to_numpy(), dtype=torch.float64), 0)
    label = int((anatomy.candidates["teacher rank"] == 1).to_numpy().argmax())
    assert anatomy.loss == pytest.approx(float(-probs[label].log()), abs=1e-2)  # the loss is the label's cross-entropy
    grads = anatomy.gradients.set_index("parameters")
    assert grads.loc["soft prompt", "with a gradient"] == grads.loc["soft prompt", "count"] == 4 * backbone.hidden_size
    assert grads.loc["soft prompt", "gradient norm"] > 0
    assert grads.loc["LLM (frozen)", "with a gradient"] == 0 and grads.loc["LLM (frozen)", "count"] > 0
    assert all(torch.equal(before[k], v) for k, v in backbone.model.state_dict().items())  # nothing updated
    # The prompt it took apart is the one notebook 03 shows.
    assert preview_prompts(config, paths, data, backbone, RULE + "-rps")["rps"].num_soft_tokens == 4


def metrics(after: tuple[float, float, float], best: float = 0.3, chance: float = 0.1) -> dict:
    ci = dict(zip(("mean", "ci_low", "ci_high"), after, strict=True))
    return {"prompt": "rule-sharedword-rps", "fidelity_after": ci, "fidelity_before": {"mean": 0.05, "ci_low": 0.0, "ci_high": 0.1},
            "fidelity_baselines": {"most popular unlisted candidate": {"mean": best, "ci_low": best - 0.05, "ci_high": best + 0.05},
                                   "most popular candidate": {"mean": 0.1, "ci_low": 0.05, "ci_high": 0.15}},
            "fidelity_chance": chance, "heldout_users": 100, "best_step": 40}  # fmt: skip


def test_fidelity_reading_is_judged_by_the_interval():
    assert "learned beyond every heuristic" in fidelity_reading(metrics((0.85, 0.78, 0.91)))
    assert "not distinguishable from chance" in fidelity_reading(metrics((0.12, 0.07, 0.18)))
    assert "above chance but not beyond" in fidelity_reading(metrics((0.30, 0.21, 0.39)))
    # The interval, not the mean, decides: a mean above the heuristic whose interval reaches it is not "learned".
    assert "learned beyond" not in fidelity_reading(metrics((0.35, 0.28, 0.42)))
    # Copying the titles the prompt lists is named when the untrained prompt does it beyond chance, not otherwise.
    copying = metrics((0.02, 0.0, 0.05)) | {"picks_listed_chance": 0.4, "picks_listed_after": {"mean": 0.6},
                                            "picks_listed_before": {"mean": 0.9, "ci_low": 0.84, "ci_high": 0.95}}  # fmt: skip
    assert "a title the prompt lists" in fidelity_reading(copying) and "for 90% of the users, against 40%" in fidelity_reading(copying)
    by_chance = copying | {"picks_listed_before": {"mean": 0.45, "ci_low": 0.35, "ci_high": 0.55}}
    assert "a title the prompt lists" not in fidelity_reading(by_chance)


def test_the_uniform_loss_line_sits_at_ln_c():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from delrec_lib.plots import mark_uniform_loss

    fig, ax = plt.subplots()
    mark_uniform_loss(ax, chance=0.1)
    assert ax.lines[-1].get_ydata()[0] == pytest.approx(math.log(10))
    assert ax.get_legend().get_texts()[-1].get_text() == "uniform over 10 (ln C)"
    plt.close(fig)


def test_stage1_table_shows_every_heuristic_beside_the_llm():
    m = metrics((0.5, 0.4, 0.6))
    m |= {"ta_accuracy_before": None, "ta_accuracy_after": None, "ta_baselines": {}, "ta_chance": 0.1,
          "selection_users": 6, "selection": {"fidelity_best": 0.5}, "steps": 40, "train_users": 20, "seconds": 1.0}  # fmt: skip
    table = stage1_table(m)
    assert table["RPS fidelity, most popular unlisted candidate"].startswith("0.300")
    assert table["RPS fidelity, LLM trained"] == "0.500 [0.400, 0.600]"
    assert table["TA accuracy, LLM trained"] == "-"


def test_the_known_answer_may_have_its_own_head_depth_rate_and_candidates(world):
    import dataclasses

    from delrec_lib.delrec.distill import run_distillation
    from delrec_lib.delrec.soft_prompt import distill_stage_config, known_answer_names

    config, paths, data, backbone = world
    own = dataclasses.replace(config.distill, known_answer=RULE + "-rps", known_answer_steps=2, known_answer_users=8,
                              known_answer_head="index", known_answer_depth="every_layer", known_answer_lr=0.2,
                              known_answer_rps_top_k=2, known_answer_rps_random=4, known_answer_history_len=5,
                              known_answer_heldout_tasks="trained", known_answer_batch_size=3)  # fmt: skip
    config = dataclasses.replace(config, distill=own)
    known, real = distill_stage_config(config, RULE + "-rps"), distill_stage_config(config, "sasrec")
    assert (known["llm"].head, known["distill"].prompt_depth, known["distill"].lr) == ("index", "every_layer", 0.2)
    assert (real["llm"].head, real["distill"].prompt_depth, real["distill"].lr) == ("title", "input", own.lr)
    assert (known["distill"].rps_top_k, known["distill"].rps_random) == (2, 4)
    assert (known["llm"].history_len, real["llm"].history_len) == (5, 4)
    assert (real["distill"].rps_top_k, real["distill"].rps_random) == (own.rps_top_k, own.rps_random) == (3, 3)
    assert (known["distill"].heldout_tasks, real["distill"].heldout_tasks) == ("trained", "all")
    # a training seed's copy of the known answer keeps its settings and budget; only the seed differs
    seeded = distill_stage_config(config, RULE + "-rps-seed1")
    assert seeded == {**known, "train_seed": 1}
    # and the seed study trains the known answer's copies, beside the real teachers' (a run without one: none)
    with_seeds = dataclasses.replace(config, distill=dataclasses.replace(own, seeds=(1, 7)))
    assert known_answer_names(with_seeds) == [RULE + "-rps", RULE + "-rps-seed1", RULE + "-rps-seed7"]
    assert known_answer_names(config) == [RULE + "-rps"]
    assert known_answer_names(dataclasses.replace(config, distill=dataclasses.replace(own, known_answer=None, seeds=(1,)))) == []
    # its users per step in one micro-batch; the real teacher's steps keep the run's micro-batches
    assert (known["distill"].batch_size, known["distill"].grad_accum) == (3, 1)
    assert (real["distill"].batch_size, real["distill"].grad_accum) == (own.batch_size, own.grad_accum) != (3, 1)
    result = run_distillation(config, paths, data, backbone, RULE + "-rps", progress=False)
    # Held-out users scored on RPS alone, the task it trains: no TA accuracy anywhere, before, after or on the curve.
    assert result.metrics["ta_accuracy_before"] is None and result.metrics["ta_accuracy_after"] is None
    assert result.metrics["selection"]["ta_accuracy_before"] is None and "ta_accuracy" not in result.history
    assert result.metrics["fidelity_after"]["users"] == 8
    assert result.history["users_seen"].iloc[-1] == 2 * 3  # 2 steps of 3 users
    assert result.soft_prompt.embeddings.dim() == 5  # a per-layer prompt
    assert result.metrics["fidelity_chance"] == pytest.approx(1 / 6)  # its own 2 + 4 candidates
    assert result.metrics["picks_listed_chance"] == pytest.approx(1 / 6)  # one listed rank (the teacher's 2nd)
    import json

    trained_on = json.loads((result.directory / "examples.json").read_text())["rps"]  # the prompt stage 1 trained on
    assert "Candidates:\nA. " in trained_on and "Answer with the letter" in trained_on
    prompt = preview_prompts(config, paths, data, backbone, RULE + "-rps")["rps"]
    assert prompt.head == "index" and "Candidates:\nA. " in prompt.text


def test_a_stage1_study_sets_runs_side_by_side_on_the_same_report_users(world, tmp_path):
    import dataclasses
    import shutil

    from delrec_lib.delrec.distill import run_distillation
    from delrec_lib.errors import DataError
    from delrec_lib.report import stage1_study, write_stage1_study

    config, paths, data, backbone = world
    runs = []
    for lr, users in ((0.01, 8), (0.3, 8), (0.3, 6)):
        run = RunPaths(tmp_path / f"lr{lr}-u{users}")
        shutil.copytree(paths.teachers / RULE, run.teachers / RULE)
        cfg = dataclasses.replace(config, distill=dataclasses.replace(config.distill, known_answer=RULE + "-rps",
                                  known_answer_steps=2, known_answer_users=users, known_answer_lr=lr,
                                  known_answer_batch_size=3 if lr == 0.3 else None))  # fmt: skip
        run_distillation(cfg, run, data, backbone, RULE + "-rps", progress=False)
        runs.append(run.root)
    table, curves = stage1_study(runs[:2], RULE + "-rps")
    assert list(table.index) == [r.name for r in runs[:2]] and list(table["lr"]) == [0.01, 0.3]
    d = config.distill
    assert list(table["users per step"]) == [f"{d.batch_size} x {d.grad_accum}", "3 x 1"]
    assert list(table["history titles"]) == [config.llm.history_len] * 2 and list(table["held-out tasks"]) == ["all"] * 2
    assert list(curves.columns) == list(table.index) and list(curves.index) == [0, 1, 2]  # every eval_every step
    for run in runs[:2]:
        m = json.loads((run / "distill" / (RULE + "-rps") / "metrics.json").read_text())
        assert table.loc[run.name, "fidelity after"].startswith(f"{m['fidelity_after']['mean']:.3f} [")
        ta = table.loc[run.name, "TA accuracy, before -> after (best heuristic)"]  # TA is measured on RPS-only prompts too
        assert ta.startswith(f"{m['ta_accuracy_before']['mean']:.3f} [") and f"-> {m['ta_accuracy_after']['mean']:.3f} [" in ta
    page = write_stage1_study(runs[:2], RULE + "-rps", tmp_path / "study.md", pairs=["lr0.3-u8/lr0.01-u8"]).read_text()
    assert "## Paired comparisons" in page and "\n| lr0.3-u8 | lr0.01-u8 | report | 8 |" in page
    assert "## Over training seeds" not in page  # one seed per setting
    rps = f"{config.distill.rps_top_k} + {config.distill.rps_random}"
    teacher = json.loads((runs[1] / "teachers" / RULE / "manifest.json").read_text())["config_hash"][:8]
    assert f"| lr0.3-u8 | {RULE}-rps | {teacher} | prompt | title | False | input | {rps} | ce | 0.3 | constant |" in page
    assert "## Held-out (selection) fidelity by step" in page
    # the training loss each run logged, beside a uniform ranking's ln C
    from delrec_lib.report import stage1_losses

    losses = stage1_losses(runs[:2], RULE + "-rps")
    log = pd.read_csv(runs[1] / "distill" / (RULE + "-rps") / "train_log.csv").set_index("step")["loss_rps"]
    assert losses["lr0.3-u8"].drop("uniform (ln C)").dropna().tolist() == log.tolist()
    assert losses.loc["uniform (ln C)", "lr0.3-u8"] == pytest.approx(math.log(config.distill.rps_top_k + config.distill.rps_random))
    assert "## Training loss (RPS) by step" in page and f"| uniform (ln C) | {math.log(6):.3f} | {math.log(6):.3f} |" in page
    m = json.loads((runs[1] / "distill" / (RULE + "-rps") / "metrics.json").read_text())
    assert table.loc["lr0.3-u8", "picks a listed title, before -> after"].startswith(f"{m['picks_listed_before']['mean']:.3f} [")
    # a run of another rule teacher's prompt joins the table as "RUN:PROMPT" (the same fixed report users)
    other = RunPaths(tmp_path / "firstword")
    cfg = dataclasses.replace(config, teachers=dataclasses.replace(config.teachers, rules=(RULE, "rule-firstword")),
                              distill=dataclasses.replace(config.distill, known_answer="rule-firstword-rps", known_answer_steps=2,
                                                          known_answer_users=8, known_answer_lr=0.3))  # fmt: skip
    export_rule("rule-firstword", cfg.teachers, data, other.teachers)
    run_distillation(cfg, other, data, backbone, "rule-firstword-rps", progress=False)
    mixed, _ = stage1_study([runs[1], f"{other.root}:rule-firstword-rps"], RULE + "-rps")
    assert list(mixed["prompt"]) == [RULE + "-rps", "rule-firstword-rps"] and list(mixed.index) == ["lr0.3-u8", "firstword"]
    assert mixed["teacher config"].nunique() == 2  # two teachers, told apart
    assert table["teacher config"].nunique() == 1  # one teacher, exported to two runs
    with pytest.raises(DataError, match="different report users"):
        stage1_study(runs, RULE + "-rps")
    # a training seed's copy in the same run joins as "RUN:PROMPT-seed<N>", named by its suffix; a run given twice is refused
    seeded = dataclasses.replace(config, distill=dataclasses.replace(config.distill, known_answer=RULE + "-rps",
                                 known_answer_steps=2, known_answer_users=8, known_answer_lr=0.3, known_answer_batch_size=3))  # fmt: skip
    run_distillation(seeded, RunPaths(runs[1]), data, backbone, RULE + "-rps-seed1", progress=False)
    seeds, _ = stage1_study([runs[1], f"{runs[1]}:{RULE}-rps-seed1"], RULE + "-rps")
    assert list(seeds.index) == ["lr0.3-u8", "lr0.3-u8-seed1"] and seeds["fidelity after"].notna().all()
    page = write_stage1_study([runs[1], f"{runs[1]}:{RULE}-rps-seed1"], RULE + "-rps", tmp_path / "seeds.md").read_text()
    assert "## Over training seeds" in page and "## Paired comparisons" not in page
    assert f"| lr0.3-u8 | {config.distill.seed}, 1 | 2 |" in page
    with pytest.raises(DataError, match="two runs named 'lr0.3-u8'"):
        stage1_study([runs[1], runs[1]], RULE + "-rps")


def test_the_stage1_study_shows_temporal_analysis_beside_its_best_heuristic():
    from delrec_lib.report import _ta_cell

    def ci(mean):
        return {"mean": mean, "ci_low": mean - 0.05, "ci_high": mean + 0.05}

    m = {"ta_accuracy_before": ci(0.1), "ta_accuracy_after": ci(0.3),
         "ta_baselines": {"most popular candidate": ci(0.42), "another": ci(0.2)}}  # fmt: skip
    assert _ta_cell(m) == "0.100 [0.050, 0.150] -> 0.300 [0.250, 0.350] (most popular candidate: 0.420)"
    assert _ta_cell({"ta_accuracy_before": None, "ta_accuracy_after": None}) == "-"  # (no TA examples)


def test_stage1_runs_compared_user_by_user_and_over_seeds(tmp_path):
    """``stage1_paired`` pairs report users by id (not by row order), tests each pair and Holm-adjusts the family;
    ``stage1_over_seeds`` groups "R" with its copies "R-seed<N>"."""
    from delrec_lib.errors import DataError
    from delrec_lib.metrics import holm_adjust, paired_test
    from delrec_lib.report import stage1_over_seeds, stage1_paired

    users = list(range(100, 140))

    def fake(run: str, prompt: str, hits: list[int], seed: int, selection: float, order=None, ids=users) -> str:
        d = tmp_path / run / "distill" / prompt
        d.mkdir(parents=True)
        frame = pd.DataFrame({"user_id": ids, "fidelity_after": hits})
        frame.iloc[order if order is not None else slice(None)].to_parquet(d / "per_user.parquet", index=False)
        (d / "metrics.json").write_text(json.dumps({"train_seed": seed, "fidelity_after": {"mean": sum(hits) / len(hits)},
                                                    "selection": {"fidelity_best": selection}}))  # fmt: skip
        return str(tmp_path / run) + ("" if prompt == "p" else f":{prompt}")

    a = [1] * 30 + [0] * 10
    b = [1] * 10 + [0] * 30
    c = a[:30] + [1] + a[31:]  # one user more than A
    runs = [fake("ce", "p", a, 2024, 0.5), fake("kl", "p", b, 2024, 0.4, order=list(reversed(range(40)))),
            fake("kl", "p-seed1", c, 1, 0.3), fake("other", "p", a, 2024, 0.5, ids=[u + 1 for u in users])]  # fmt: skip
    table = stage1_paired(runs[:3], "p", ["ce/kl", "kl-seed1/ce"])
    ab, ca = paired_test(np.array(a, float), np.array(b, float)), paired_test(np.array(c, float), np.array(a, float))
    assert list(table["A"]) == ["ce", "kl-seed1"] and list(table["users"]) == [40, 40]
    assert list(table["fidelity A"]) == ["0.750", "0.775"] and list(table["fidelity B"]) == ["0.250", "0.750"]
    assert table.loc[0, "A - B [95% interval]"].startswith("+0.500 [") and table.loc[1, "A - B [95% interval]"].startswith("+0.025 [")
    assert table["p"].tolist() == pytest.approx([round(ab["p_value"], 4), round(ca["p_value"], 4)])
    assert table["p (Holm)"].tolist() == pytest.approx(holm_adjust([ab["p_value"], ca["p_value"]]).round(4).tolist())
    assert table["p (Holm)"][0] > table["p"][0]  # adjusted over the family of two
    assert list(table["reading at 0.05 (Holm)"]) == ["A higher", "no difference shown"]
    with pytest.raises(DataError, match="not found: nope.*|runs' names"):
        stage1_paired(runs[:3], "p", ["ce/nope"])
    with pytest.raises(DataError, match="different report users"):
        stage1_paired([runs[0], runs[3]], "p", ["ce/other"])
    seeds = stage1_over_seeds(runs[:3], "p")
    assert list(seeds.index) == ["ce", "kl"] and list(seeds["runs"]) == [1, 2]
    assert seeds.loc["kl", "train seeds"] == "2024, 1" and seeds.loc["kl", "fidelity per seed"] == "0.250, 0.775"
    assert (seeds.loc["kl", "mean"], seeds.loc["kl", "sd"], seeds.loc["ce", "sd"]) == ("0.512", "0.371", "-")
