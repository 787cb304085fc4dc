"""Stage 1 learns: the cpu preset's known answer, trained as notebook 03 trains it, ends well beyond chance and
every heuristic on its report users; with the soft prompt's gradient switched off the same check fails.

About ten minutes on a 2-core CPU (the known answer's five and a half, then the companion's four without the
backward pass), so these tests are marked ``learning`` and left out of ``make test`` (its 15-minute ceiling);
``make test-learning`` runs them and CI runs both. The smoke preset's 32 users cannot show learning: 16 training
users are memorised and its few report users give no margin (measured: docs/choosing-settings.md).
"""

from __future__ import annotations

import pytest

from delrec_lib.config import load_config
from delrec_lib.config.presets import KNOWN_ANSWER, KNOWN_ANSWER_TEACHER
from delrec_lib.data import load_processed
from delrec_lib.delrec.distill import DistillTask, run_distillation
from delrec_lib.llm import load_backbone_from_config
from delrec_lib.runner import RunPaths
from delrec_lib.teachers.stage import export_rule

pytestmark = [pytest.mark.learning, pytest.mark.embedded_model]

# The stated margin: the lower end of fidelity's 95% interval on the report users must clear chance and every
# heuristic's mean by this much. Three training seeds gave 0.79, 0.69 and 0.69 (lower ends 0.71, 0.60, 0.60)
# against the best heuristic's 0.15, chance 0.10; an untrained prompt stays near chance.
MARGIN = 0.2
# A rule teacher no heuristic can follow: every heuristic the kit reports within this of chance.
HEURISTIC_SLACK = 0.1


def learning_failures(metrics: dict) -> list[str]:
    """What keeps a stage-1 result from "learned beyond chance and every heuristic by MARGIN" (empty: learned)."""
    chance, after = metrics["fidelity_chance"], metrics["fidelity_after"]
    floors = {"chance": chance, **{name: v["mean"] for name, v in metrics["fidelity_baselines"].items()}}
    return [f"fidelity's 95% interval {after['ci_low']:.3f}-{after['ci_high']:.3f} (mean {after['mean']:.3f}) does not "
            f"clear {name} {floor:.3f} by {MARGIN}" for name, floor in floors.items() if after["ci_low"] < floor + MARGIN]  # fmt: skip


@pytest.fixture(scope="module")
def cpu_world(real_data_dir, tmp_path_factory):
    """The cpu preset on the real MovieLens-100K and the embedded LLM."""
    config = load_config("cpu", data_dir=str(real_data_dir))
    data = load_processed(real_data_dir, config.data)
    return config, data, load_backbone_from_config(config.llm)


def distil_known_answer(cpu_world, run_dir):
    """The known answer as ``python -m delrec_lib distill --preset cpu`` trains it first, in a fresh run folder."""
    config, data, backbone = cpu_world
    paths = RunPaths(run_dir)
    export_rule(KNOWN_ANSWER_TEACHER, config.teachers, data, paths.teachers)
    return run_distillation(config, paths, data, backbone, KNOWN_ANSWER, progress=False).metrics


def test_the_known_answer_learns_beyond_chance_and_every_heuristic(cpu_world, tmp_path):
    metrics = distil_known_answer(cpu_world, tmp_path / "run")
    assert metrics["heldout_users"] == cpu_world[0].distill.known_answer_users
    for name, v in metrics["fidelity_baselines"].items():  # the rule is one no heuristic follows
        assert v["mean"] <= metrics["fidelity_chance"] + HEURISTIC_SLACK, (name, v)
    assert learning_failures({**metrics, "fidelity_after": metrics["fidelity_before"]})  # untrained, it fails the check
    assert not learning_failures(metrics), learning_failures(metrics)


def test_with_the_gradient_switched_off_the_learning_check_fails(cpu_world, tmp_path, monkeypatch):
    # The same run, every forward pass and evaluation, but no gradient reaches the soft prompt: it never moves.
    monkeypatch.setattr(DistillTask, "backward", lambda self, loss, accelerator, scale: None)
    metrics = distil_known_answer(cpu_world, tmp_path / "run")
    assert metrics["soft_prompt_moved"] == 0.0
    assert learning_failures(metrics), metrics["fidelity_after"]
