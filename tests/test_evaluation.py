"""Evaluation plumbing: per-user alignment, tables, the order diagnostic's shuffling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from delrec_lib.analysis import shuffle_window
from delrec_lib.evaluation import (
    MethodResult,
    from_candidate_scores,
    named_candidates,
    paired_comparisons,
    per_user_frame,
    results_table,
)


def method(name, users, scores, target):
    return MethodResult(name, "llm", per_user_frame(users, np.asarray(scores, float), np.asarray(target)))


def test_candidate_scores_are_attached_to_their_users():
    # exported rows in a scrambled order: each user's scores must stay with that user
    frame = pd.DataFrame({
        "user_id": [3, 1, 2], "split": ["test"] * 3,
        "scores": [[0.1, 0.9], [0.9, 0.1], [0.2, 0.8]], "target_position": [1, 0, 0],
    })  # fmt: skip
    per_user = from_candidate_scores(frame, [1, 2, 3])
    assert per_user["user_id"].tolist() == [1, 2, 3]
    assert per_user["HR@1"].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="lack users"):
        from_candidate_scores(frame, [1, 2, 4])


def test_methods_are_compared_on_the_same_users_whatever_their_row_order():
    a = method("a", [1, 2, 3, 4], [[1, 0]] * 4, [0, 0, 0, 0])
    b = method("b", [4, 3, 2, 1], [[0, 1], [0, 1], [1, 0], [1, 0]], [0, 0, 0, 0])  # right for users 1, 2
    table = results_table({"a": a, "b": b}, n_boot=200)
    assert table.loc["a", ("HR@1", "mean")] == 1.0 and table.loc["b", ("HR@1", "mean")] == 0.5
    paired = paired_comparisons({"a": a, "b": b}, [("a", "b")], ("HR@1",))
    assert paired.loc[0, "mean_diff"] == 0.5
    other = method("c", [1, 2, 3, 5], [[1, 0]] * 4, [0, 0, 0, 0])
    with pytest.raises(ValueError, match="other users"):
        results_table({"a": a, "c": other}, n_boot=200)
    twice = method("d", [1, 1, 2, 3], [[1, 0]] * 4, [0, 0, 0, 0])
    with pytest.raises(ValueError, match="appears twice"):
        results_table({"a": a, "d": twice}, n_boot=200)


def test_shuffle_window_permutes_only_the_visible_items():
    rng = np.random.default_rng(0)
    history = list(range(1, 31))
    shuffled = shuffle_window(history, 10, rng)
    assert shuffled[:20] == history[:20]
    assert sorted(shuffled[20:]) == history[20:] and shuffled[20:] != history[20:]
    assert shuffle_window([5], 10, rng) == [5]


def test_generation_answer_is_valid_only_when_it_names_exactly_one_candidate():
    cands = ["Toy Story", "Fargo", "The Usual Suspects", "Babe"]
    assert named_candidates('I recommend "Fargo (1996)".', cands) == [1]
    assert named_candidates("the usual   suspects\nToy Story\nBabe", cands) == [2]  # first line only
    assert named_candidates("Fargo or Toy Story", cands) == [0, 1]  # two: not a valid answer
    assert named_candidates("Which movie will the user watch next?", cands) == []


def test_generation_matches_whole_titles_not_prefixes():
    cands = ["Babe", "Babe: Pig in the City", "Toy Story", "Toy Story 2", "Hamlet (1948)", "Hamlet (1996)"]
    assert named_candidates("Babe: Pig in the City", cands) == [1], "not also Babe"
    assert named_candidates("Babe", cands) == [0]
    assert named_candidates("Babe or Babe: Pig in the City", cands) == [0, 1]
    assert named_candidates("Toy Story 2 (1999)", cands) == [3]
    assert named_candidates("Babes in Toyland", cands) == [], "a title inside a longer word is no match"
    # the year may be left out only where it does not decide between candidates
    assert named_candidates("Hamlet (1996)", cands) == [5]
    assert named_candidates("Hamlet", cands) == []


def test_seed_study_pairs_each_seeds_copies_and_summarises_them():
    import pandas as pd

    from delrec_lib.evaluation import seed_study

    def row(a, b, diff, p):
        return {"method": a, "versus": b, "metric": "HR@1", "mean_diff": diff, "ci_low": diff - 0.01,
                "ci_high": diff + 0.01, "p_value": p}  # fmt: skip

    paired = pd.DataFrame([row("delrec", "lora", 0.02, 0.01), row("delrec", "zero-shot", 0.1, 0.001),
                           row("delrec-seed1", "lora-seed1", -0.01, 0.3), row("delrec-seed2", "lora-seed2", 0.03, 0.02),
                           row("delrec-seed1", "lora-seed2", 0.5, 0.0)])  # mismatched seeds: never paired  # fmt: skip
    replicas = {"delrec-seed1": ("delrec", 1), "delrec-seed2": ("delrec", 2), "lora-seed1": ("lora", 1), "lora-seed2": ("lora", 2)}
    per_seed, summary = seed_study(paired, replicas)
    assert per_seed[["method", "versus", "seed"]].values.tolist() == [["delrec", "lora", "run"], ["delrec", "lora", "1"],
                                                                      ["delrec", "lora", "2"]]  # fmt: skip
    s = summary.iloc[0]
    assert (s["seeds"], s["seeds_p<0.05_above"], s["seeds_p<0.05_below"]) == (3, 2, 0)
    assert s["mean_diff"] == pytest.approx(0.04 / 3) and s["sd_diff"] == pytest.approx(pd.Series([0.02, -0.01, 0.03]).std())
    assert len(seed_study(paired.iloc[:2], {})[0]) == 0  # no seeds, no seed study
