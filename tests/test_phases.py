"""Where a notebook's seconds go: exclusive phase times, recorded with the notebook's execution, shown on the page."""

from __future__ import annotations

import json

import pytest

from delrec_lib import phases
from delrec_lib.phases import phase, phase_totals, reset_phases
from delrec_lib.report import where_time_went


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(phases.time, "perf_counter", c)
    reset_phases()
    yield c
    reset_phases()


def test_a_phase_inside_another_is_taken_out_of_it(clock):
    with phase("training forward"):
        clock.now += 2.0
        with phase("frozen-state caching"):
            clock.now += 5.0
        clock.now += 1.0
    with phase("frozen-state caching"):
        clock.now += 0.5

    @phase("figures")  # as a decorator: counted at every call
    def draw():
        clock.now += 0.25

    draw()
    draw()
    assert phase_totals() == {"frozen-state caching": 5.5, "training forward": 3.0, "figures": 0.5}


def test_a_phase_that_raises_still_counts_and_closes(clock):
    with pytest.raises(ValueError), phase("held-out evaluation"):
        clock.now += 1.0
        raise ValueError
    with phase("optimizer step"):
        clock.now += 1.0
    assert phase_totals() == {"held-out evaluation": 1.0, "optimizer step": 1.0}


def test_the_runner_records_each_executions_own_phases(tmp_path, monkeypatch):
    import papermill

    from delrec_lib.runner import record_metrics

    from .test_reruns import FakeSeries

    series = FakeSeries(tmp_path)
    monkeypatch.setattr(papermill, "execute_notebook", series)
    reset_phases()

    def notebook_02(paths):
        with phase("training backward"):
            pass
        record_metrics(paths, "02_teacher_training", {"ok": True})

    series.actions["02_teacher_training"] = notebook_02
    series.run(only=["01", "02"])
    runs = json.loads((series.paths.root / "timings.json").read_text())["executions"]
    assert "phases" not in runs[0]  # 01 recorded no metrics: no phases to attribute
    assert set(runs[1]["phases"]) == {"training backward"}
    # A later execution that records nothing does not inherit the earlier one's phases.
    series.actions["02_teacher_training"] = lambda paths: None
    series.run(only=["02"], rerun=["teachers"])
    runs = json.loads((series.paths.root / "timings.json").read_text())["executions"]
    assert runs[-1]["notebook"] == "02_teacher_training" and "phases" not in runs[-1]
    reset_phases()


def test_the_page_says_where_a_notebooks_minutes_went():
    execution = {"seconds": 600.0, "phases": {"training backward": 240.0, "training forward": 120.0, "figures": 6.0,
                                              "writing artifacts": 3.0, "checkpoints": 3.0, "loading the LLM": 18.0}}  # fmt: skip
    assert where_time_went(execution) == (
        "training backward 4.0; training forward 2.0; loading the LLM 0.3; figures 0.1; 2 more phases 0.1; other 3.5 (min)"
    )
    assert where_time_went({"seconds": 5.0}) == "-"  # recorded before phases were
