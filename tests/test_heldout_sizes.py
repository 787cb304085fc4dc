"""``bench heldout``: each held-out set's size against the decision it serves, from the preset alone."""

from __future__ import annotations

import argparse

import pytest

from delrec_lib.bench.heldout import TARGET, half_width, heldout_sets, run, users_for
from delrec_lib.config import preset_config


def test_interval_half_widths_and_the_users_they_need():
    assert half_width(100) == pytest.approx(0.098, abs=5e-4)  # 1.96 * 0.5 / 10
    assert half_width(100, 0.2) == pytest.approx(0.0784, abs=5e-4)
    assert users_for(0.05) == 385 and half_width(385) <= 0.05 < half_width(384)
    assert users_for(0.05, 0.2) == 246


def test_the_cpu_presets_selecting_sets_narrower_or_flagged():
    sets = {h.name: h for h in heldout_sets(preset_config("cpu"))}
    assert sets["stage 1 selection"].users == 100 and sets["stage 2 validation"].users == 150
    assert {n for n, h in sets.items() if h.flagged} == {
        "stage 1 selection", "known answer selection", "stage 2 validation", "LLM-SRec validation"}  # fmt: skip
    assert not sets["stage 1 report"].flagged  # a reported number is not a choice: shown with its interval instead
    assert not sets["teachers' validation"].flagged and sets["test"].users == 943
    assert all(h.decides in ("selects", "reports") for h in sets.values())


def test_smoke_caps_the_llm_sets_at_max_users_but_not_the_teachers():
    smoke = preset_config("smoke")
    sets = {h.name: h for h in heldout_sets(smoke)}
    assert sets["teachers' validation"].users == 943
    assert sets["test"].users == smoke.max_users
    assert all(h.users <= smoke.max_users for n, h in sets.items() if n != "teachers' validation")


def test_the_benchmark_prints_every_set_and_returns_them(capsys):
    out = run(argparse.Namespace(preset="cpu", config=None))
    printed = capsys.readouterr().out
    assert [r["name"] for r in out["sets"]] == [h.name for h in heldout_sets(preset_config("cpu"))]
    for r in out["sets"]:
        assert r["name"] in printed and r["half_width_worst"] == round(half_width(r["users"]), 3)
    assert f"selects with more than +-{TARGET}" in printed
