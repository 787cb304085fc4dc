"""Evaluation plumbing: per-user alignment, tables, Holm families, generation matching, the order diagnostic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from delrec_lib import evaluation
from delrec_lib.analysis import order_diagnostic, reading, shuffle_window
from delrec_lib.artifacts import RunPaths
from delrec_lib.evaluation import (
    MATCH_RULES,
    MethodResult,
    from_candidate_scores,
    generation_metrics,
    generation_table,
    named_candidates,
    paired_comparisons,
    per_user_frame,
    results_table,
    strict_candidates,
    write_tables,
)
from delrec_lib.metrics import holm_adjust


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
    paired = paired_comparisons({"a": a, "b": b}, [("a", "b")], ("HR@1",), replicas={})
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
    assert named_candidates("The Usual   Suspects\nToy Story\nBabe", cands) == [2]  # first line only
    assert named_candidates("the usual suspects", cands) == [], "case counts"
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
    from delrec_lib.evaluation import seed_study

    def row(a, b, diff, p, p_holm):
        return {"method": a, "versus": b, "metric": "HR@1", "mean_diff": diff, "ci_low": diff - 0.01,
                "ci_high": diff + 0.01, "p_value": p, "p_holm": p_holm}  # fmt: skip

    # seed 2's raw p = 0.02 is not significant once adjusted: the summary counts by p_holm
    paired = pd.DataFrame([row("delrec", "lora", 0.02, 0.01, 0.02), row("delrec", "zero-shot", 0.1, 0.001, 0.002),
                           row("delrec-seed1", "lora-seed1", -0.01, 0.3, 0.3),
                           row("delrec-seed2", "lora-seed2", 0.03, 0.02, 0.06),
                           row("delrec-seed1", "lora-seed2", 0.5, 0.0, 0.0)])  # mismatched seeds: never paired  # fmt: skip
    replicas = {"delrec-seed1": ("delrec", 1), "delrec-seed2": ("delrec", 2), "lora-seed1": ("lora", 1), "lora-seed2": ("lora", 2)}
    per_seed, summary = seed_study(paired, replicas)
    assert per_seed[["method", "versus", "seed"]].values.tolist() == [["delrec", "lora", "run"], ["delrec", "lora", "1"],
                                                                      ["delrec", "lora", "2"]]  # fmt: skip
    s = summary.iloc[0]
    assert (s["seeds"], s["seeds_p_holm<0.05_above"], s["seeds_p_holm<0.05_below"]) == (3, 1, 0)
    assert per_seed["p_holm"].tolist() == [0.02, 0.3, 0.06]
    assert s["mean_diff"] == pytest.approx(0.04 / 3) and s["sd_diff"] == pytest.approx(pd.Series([0.02, -0.01, 0.03]).std())
    assert len(seed_study(paired.iloc[:2], {})[0]) == 0  # no seeds, no seed study


# --------------------------------------------------------------------------------------------
# Holm-adjusted p-values: one family per table
# --------------------------------------------------------------------------------------------


def noisy(name, users, rng, skill):
    """A method that ranks the target first with probability ``skill`` (20 candidates)."""
    scores = rng.random((len(users), 20))
    right = rng.random(len(users)) < skill
    scores[right, 0] = 2.0
    return method(name, users, scores, np.zeros(len(users), dtype=int))


@pytest.fixture(scope="module")
def study():
    """Three methods and one seed's copies of two of them, on the same 80 users."""
    rng = np.random.default_rng(5)
    users = list(range(80))
    skills = {"a": 0.5, "b": 0.35, "c": 0.3, "a-seed1": 0.45, "b-seed1": 0.3}
    results = {m: noisy(m, users, rng, k) for m, k in skills.items()}
    pairs = [("a", "b"), ("a", "c"), ("b", "c"), ("a-seed1", "b-seed1")]
    replicas = {"a-seed1": ("a", 1), "b-seed1": ("b", 1)}
    return results, pairs, replicas


def check_paired_table(paired: pd.DataFrame, sizes: dict[str, int]) -> None:
    """The paired tests' table: every family's p_holm is Holm's adjustment of its raw p-values."""
    assert paired.groupby("family").size().to_dict() == sizes
    assert (paired["family_size"] == paired["family"].map(sizes)).all()
    assert (paired["p_holm"] >= paired["p_value"]).all() and (paired["p_holm"] <= 1).all()
    for family, g in paired.groupby("family"):
        assert g["p_holm"].to_numpy() == pytest.approx(holm_adjust(g["p_value"].to_numpy())), family
    assert (paired["p_holm"] > paired["p_value"]).any(), "an adjustment that changes nothing"


def test_paired_tests_are_holm_adjusted_per_family_in_the_written_table(study, tmp_path):
    results, pairs, replicas = study
    paired = paired_comparisons(results, pairs, ("HR@1", "NDCG@10"), replicas=replicas)
    table = results_table(results, n_boot=50)
    files = write_tables(RunPaths(tmp_path), table, paired, pd.DataFrame())
    written = pd.read_csv(files["paired_csv"])
    check_paired_table(written, {"main": 6, "seed 1": 2})
    # notebook 08 leaves the seeds' copies out: the main comparisons keep their adjusted p-values
    main = {m: r for m, r in results.items() if m not in replicas}
    alone = paired_comparisons(main, pairs, ("HR@1", "NDCG@10"), replicas=replicas)
    assert alone["p_holm"].tolist() == pytest.approx(written.loc[written["family"] == "main", "p_holm"].tolist())


def test_the_paired_table_check_fails_on_raw_p_values(study, monkeypatch):
    results, pairs, replicas = study
    monkeypatch.setattr(evaluation, "holm_adjust", lambda p: np.asarray(p, dtype=float))  # no adjustment
    paired = paired_comparisons(results, pairs, ("HR@1", "NDCG@10"), replicas=replicas)
    with pytest.raises(AssertionError):
        check_paired_table(paired, {"main": 6, "seed 1": 2})


def test_order_diagnostic_is_one_family_and_the_reading_states_the_adjusted_value(study):
    results, _, _ = study
    rng = np.random.default_rng(9)
    shuffled = {m: noisy(m, list(range(80)), rng, 0.3).per_user for m in ("a", "b", "c")}
    order = order_diagnostic(results, shuffled)
    assert len(order) == 6
    assert order["p_holm"].to_numpy() == pytest.approx(holm_adjust(order["p_value"].to_numpy()))
    # raw p below 0.05, adjusted above: not significant, in both the comparisons and the order diagnostic
    table = results_table({m: results[m] for m in ("a", "b")}, n_boot=50)
    paired = pd.DataFrame([{"method": "a", "versus": "b", "metric": "NDCG@10", "mean_diff": 0.1, "ci_low": 0.01,
                            "ci_high": 0.2, "p_value": 0.01, "p_holm": 0.2}])  # fmt: skip
    one = order.iloc[[0]].assign(metric="NDCG@10", drop=0.1, p_value=0.01, p_holm=0.08)
    text = reading(table, paired, None, one)
    assert "a vs b** (NDCG@10): 0.1000 above [+0.0100, +0.2000], not significant (Holm-adjusted p = 0.2, raw p = 0.01)" in text
    assert "shows no significant use of the order" in text and "Holm-adjusted p = 0.08" in text


# --------------------------------------------------------------------------------------------
# Generation protocol: two matching rules
# --------------------------------------------------------------------------------------------

CANDS = ["Big (1988)", "Fargo (1996)", "Airplane! (1980)", "The Usual Suspects (1995)", "Babe (1995)",
         "Babe: Pig in the City (1998)"]  # fmt: skip


def test_a_common_word_names_no_candidate_under_either_rule():
    for answer in ("a big hit", "A big hit", "The big one"):
        assert strict_candidates(answer, CANDS) == [] and named_candidates(answer, CANDS) == [], answer


def test_an_exact_title_matches_under_both_rules():
    for answer, expected in (("Fargo (1996)", [1]), ("Fargo", [1]), ('"Fargo (1996)".', [1]), ("**Airplane!**", [2]),
                             ("Big", [0]), ("The Usual Suspects (1995)\nBig (1988)", [3]),
                             ("Babe: Pig in the City", [5])):  # fmt: skip
        assert strict_candidates(answer, CANDS) == expected, answer
        assert named_candidates(answer, CANDS) == expected, answer
    assert strict_candidates("the usual suspects", CANDS) == [], "case counts"


def test_a_title_inside_a_longer_line_matches_only_the_words_rule():
    for answer, expected in (("I recommend Fargo (1996).", [1]), ("Answer: Big", [0]), ("Babe, I think", [4])):
        assert strict_candidates(answer, CANDS) == [], answer
        assert named_candidates(answer, CANDS) == expected, answer


def test_whatever_the_strict_rule_names_the_words_rule_names_too():
    answers = ["Fargo", "Fargo (1996)!", "'Fargo'", "Big Fargo", "Airplane", "Airplane!", "Babe", "Babe (1995)",
               "The Usual Suspects", "Usual Suspects, The", "", "...", "Babe: Pig in the City (1998)"]  # fmt: skip
    for answer in answers:
        strict = strict_candidates(answer, CANDS)
        if len(strict) == 1:
            assert named_candidates(answer, CANDS) == strict, answer


def test_generation_table_reports_both_rules_side_by_side():
    answers = ["Fargo (1996)", "I recommend Fargo (1996)", "a big hit", "Big"]
    g = generation_metrics([1, 2, 3, 4], answers, [CANDS] * 4, [1, 1, 0, 1])
    assert g["matched_strict"].tolist() == [1, -1, -1, 0] and g["matched_words"].tolist() == [1, 1, -1, 0]
    table = generation_table({"m": MethodResult("m", "llm", pd.DataFrame(), generations=g)})
    row = table.loc["m"]
    assert list(table.columns) == ["users", *[f"{k}_{r}" for k in ("ValidRatio", "HR@1", "HR@1 among valid")
                                              for r in MATCH_RULES]]  # fmt: skip
    assert (row["ValidRatio_strict"], row["ValidRatio_words"]) == (0.5, 0.75)
    assert (row["HR@1_strict"], row["HR@1_words"]) == (0.25, 0.5)
    assert row["HR@1 among valid_strict"] == 0.5 and row["HR@1 among valid_words"] == pytest.approx(2 / 3)



def test_the_matched_protocol_ranks_the_first_users_again_on_their_matched_sets(tmp_path):
    from delrec_lib.config import DataConfig, EvalConfig, RunConfig
    from delrec_lib.data.popularity_matched import popularity_hr1
    from delrec_lib.evaluation import evaluate_method, matched_table, method_context
    from delrec_lib.teachers.stage import export_popularity

    from .stage_fixtures import synthetic_data

    data = synthetic_data(tmp_path / "data")
    results = {}
    for n in (10, 0):
        config = RunConfig(preset="smoke", data_dir=str(tmp_path / "data"), data=DataConfig(dataset="toy", num_negatives=5),
                           eval=EvalConfig(bootstrap=100, matched_users=n))  # fmt: skip
        paths = RunPaths(tmp_path / f"run{n}")
        export_popularity(data, paths.teachers)
        ctx = method_context(config, paths, data)
        results[n] = evaluate_method(ctx, "popularity", progress=False)
    first = ctx.users()[:10]
    matched = results[10].matched
    assert results[0].matched is None and matched["user_id"].tolist() == first
    sets = data.popularity_matched_sets("test").set_index("user_id").loc[first]
    assert matched["target_position"].tolist() == sets["target_position"].tolist()  # ranked on the matched sets
    expected = popularity_hr1(data, sets.reset_index(), n_boot=100)["hr1"]
    assert matched["HR@1"].mean() == pytest.approx(expected)
    assert results[10].per_user.equals(results[0].per_user)  # the shared-set results are untouched
    table = matched_table({"popularity": results[10]}, n_boot=100)
    assert table.loc["popularity", ("HR@1", "mean")] == pytest.approx(expected)
    assert matched_table({"popularity": results[0]}).empty
