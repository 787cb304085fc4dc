import math

import numpy as np
import pytest

from delrec_lib.metrics import (
    bootstrap_ci,
    holm_adjust,
    metrics_from_counts,
    paired_test,
    per_user_metrics,
    rank_counts,
    summarize,
)


def one(scores, target, valid=None):
    s = np.array([scores], dtype=float)
    v = None if valid is None else np.array([valid])
    return per_user_metrics(s, np.array([target]), v).iloc[0]


def test_rank_one():
    m = one([0.9, 0.1, 0.5], 0)
    assert m["HR@1"] == m["HR@5"] == m["NDCG@5"] == m["NDCG@10"] == m["MRR"] == 1.0


def test_rank_three():
    m = one([5, 4, 3, 2, 1], 2)
    assert (m["HR@1"], m["HR@5"]) == (0.0, 1.0)
    assert m["NDCG@5"] == pytest.approx(1 / math.log2(4))
    assert m["MRR"] == pytest.approx(1 / 3)


def test_rank_beyond_k():
    scores = list(range(20, 0, -1))  # target at index 11 -> rank 12
    m = one(scores, 11)
    assert m["HR@10"] == 0.0 and m["NDCG@10"] == 0.0
    assert m["MRR"] == pytest.approx(1 / 12)
    assert m["rank"] == 12


def test_ties_are_broken_at_random_in_expectation():
    m = one([1.0, 1.0, 0.0], 0)  # rank 1 or 2
    assert m["HR@1"] == pytest.approx(0.5)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert m["MRR"] == pytest.approx(0.75)
    constant = one([0.0] * 20, 7)
    assert constant["HR@1"] == pytest.approx(1 / 20)
    assert constant["HR@10"] == pytest.approx(0.5)


def test_masked_entries_do_not_compete():
    m = one([9.0, 1.0, 5.0], 1, valid=[False, True, False])
    assert m["HR@1"] == 1.0
    with pytest.raises(ValueError, match="target is masked"):
        one([1.0, 2.0], 0, valid=[False, True])


def test_nan_scores_are_an_error():
    with pytest.raises(ValueError, match="NaN"):
        rank_counts(np.array([[np.nan, 1.0]]), np.array([1]))


def test_counts_vectorised():
    g, t = rank_counts(np.array([[3, 2, 1], [1, 1, 1]], dtype=float), np.array([1, 2]))
    assert g.tolist() == [1, 0] and t.tolist() == [0, 2]
    df = metrics_from_counts(g, t)
    assert df["HR@1"].tolist() == pytest.approx([0.0, 1 / 3])


def test_summary_is_mean_over_users_with_ci():
    per_user = per_user_metrics(np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]]), np.zeros(4, dtype=int))
    s = summarize(per_user, n_boot=500)
    assert s.loc["HR@1", "mean"] == pytest.approx(0.75)
    assert s.loc["HR@1", "ci_low"] <= 0.75 <= s.loc["HR@1", "ci_high"]
    assert s.loc["HR@1", "users"] == 4


def test_paired_test_identical_methods_show_no_difference():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    r = paired_test(a, a.copy())
    assert r["mean_diff"] == 0.0 and r["p_value"] == 1.0


def test_paired_test_always_right_vs_always_wrong_is_significant():
    r = paired_test(np.ones(100), np.zeros(100))
    assert r["mean_diff"] == 1.0 and r["p_value"] < 0.001
    assert r["ci_low"] == r["ci_high"] == 1.0


def test_paired_test_noise_is_not_significant():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, 300).astype(float), rng.integers(0, 2, 300).astype(float)
    assert paired_test(a, b)["p_value"] > 0.01


def test_bootstrap_ci_matches_the_binomial_standard_error():
    """A hit rate of 0.3 over 2,000 users: the 95% interval is 0.3 +- 1.96 sqrt(0.21 / 2000) = +- 0.020."""
    values = np.zeros(2000)
    values[:600] = 1.0
    mean, low, high = bootstrap_ci(values, n_boot=2000, seed=3)
    assert mean == 0.3
    assert high - low == pytest.approx(2 * 1.96 * math.sqrt(0.21 / 2000), rel=0.1)
    assert low < 0.3 < high


def test_bootstrap_ci_of_identical_users_has_no_width():
    assert bootstrap_ci(np.full(50, 0.25)) == (0.25, 0.25, 0.25)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci(np.array([]))


def test_holm_adjust_matches_a_hand_computed_family():
    """Sorted: 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, 1 x 0.04 = 0.04
    raised to the running maximum 0.06; back in the order given."""
    p = np.array([0.01, 0.04, 0.03, 0.005])
    adjusted = holm_adjust(p)
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert (adjusted >= p).all()
    order = np.argsort(p)
    assert (np.diff(adjusted[order]) >= 0).all(), "monotone in the raw p-value"
    assert holm_adjust([0.6, 0.7, 0.2]).tolist() == pytest.approx([1.0, 1.0, 0.6]), "capped at 1"
    assert holm_adjust([0.02]).tolist() == [0.02] and holm_adjust([]).tolist() == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjust([0.1, float("nan")])

