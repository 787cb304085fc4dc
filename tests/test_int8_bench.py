"""The int8 benchmark: its ranking comparison, the int8 copy of a tiny model, and a run on synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from delrec_lib.llm import load_backbone
from delrec_lib.llm.int8_bench import compare, int8_copy
from delrec_lib.llm.scoring import rank_candidates

from .llm_fixtures import TITLES, save_tiny_causal
from .stage_fixtures import synthetic_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    return save_tiny_causal(tmp_path_factory.mktemp("int8") / "tiny-causal")


def _scores(users: int = 60, width: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(users, width))
    return scores, rng.integers(0, width, size=users)


def test_a_ranking_agrees_fully_with_itself():
    scores, target = _scores()
    a = compare(scores, scores.copy(), target)
    assert a["top1_agreement"] == 1.0 and a["kendall_tau_mean"] == pytest.approx(1.0)
    assert a["kendall_users"] == len(scores) and a["max_abs_diff"] == 0.0
    for m in ("HR@1", "NDCG@10"):
        v = a["metrics"][m]
        assert v["diff"] == 0.0 and v["diff_ci"] == (0.0, 0.0) and v["fp32"] == v["int8"]


def test_permuted_scores_lower_the_agreement():
    scores, target = _scores()
    rng = np.random.default_rng(1)
    permuted = np.stack([row[rng.permutation(len(row))] for row in scores])
    a = compare(scores, permuted, target)
    assert a["top1_agreement"] < 0.3 and abs(a["kendall_tau_mean"]) < 0.2
    # The top two swapped in every ranking: no top-1 agrees, the rest of the order does.
    swapped = scores.copy()
    rows = np.arange(len(scores))
    top2 = np.argsort(-scores, axis=1)[:, :2]
    swapped[rows, top2[:, 0]], swapped[rows, top2[:, 1]] = scores[rows, top2[:, 1]], scores[rows, top2[:, 0]]
    b = compare(scores, swapped, target)
    assert b["top1_agreement"] == 0.0 and b["kendall_tau_mean"] == pytest.approx(1 - 2 / 190)


def test_padded_candidates_are_left_out_of_the_agreement():
    scores, target = _scores(users=10, width=6)
    target = np.minimum(target, 4)
    scores[:, 5] = -np.inf  # every user has 5 candidates
    a = compare(scores, scores.copy(), target)
    assert a["kendall_tau_mean"] == pytest.approx(1.0) and a["max_abs_diff"] == 0.0


def test_int8_copy_ranks_like_float32_and_leaves_the_head_and_the_original_alone(causal_dir):
    bb = load_backbone(str(causal_dir), dtype="float32")
    qmodel, kept = int8_copy(bb.model)
    assert kept == ["lm_head"]
    assert qmodel.get_output_embeddings().weight is qmodel.get_input_embeddings().weight  # still tied in the copy
    assert isinstance(qmodel.model.layers[0].self_attn.q_proj, torch.ao.nn.quantized.dynamic.Linear)
    assert isinstance(qmodel.model.layers[1].mlp.down_proj, torch.ao.nn.quantized.dynamic.Linear)
    assert type(bb.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # the original is float still
    prompts = [f"Watched {TITLES[i]} and {TITLES[i + 1]}." for i in range(4)]
    cands = [TITLES[5:12]] * len(prompts)
    with torch.no_grad():
        ref = rank_candidates(bb, prompts, cands, batch_size=2)
        q = rank_candidates(bb.with_model(qmodel), prompts, cands, batch_size=2)
    assert not torch.equal(ref, q)  # int8 really ran
    assert (ref - q).abs().max() < 0.2 * ref.abs().max()


def test_a_quantised_head_does_not_fit_the_kits_scorer(causal_dir):
    # Why the head stays float32: the scorer reads ``head.weight`` as a tensor; an int8 Linear's is a method.
    bb = load_backbone(str(causal_dir), dtype="float32")
    qmodel, kept = int8_copy(bb.model, head=True)
    assert kept == []
    with torch.no_grad(), pytest.raises(AttributeError):
        rank_candidates(bb.with_model(qmodel), ["Watched Fargo (1996)."], [TITLES[:3]])


def test_int8_benchmark_runs_on_a_tiny_model(causal_dir, tmp_path, capsys):
    from delrec_lib import bench

    synthetic_data(tmp_path / "data")
    cfg = tmp_path / "bench.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[data]\ndataset = "toy"\nnum_negatives = 5\n')
    out = tmp_path / "int8.json"
    argv = ["int8", "--config", str(cfg), "--backbone", str(causal_dir), "--users", "6", "--chunk", "2",
            "--threads", "1", "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "speed-up int8 over fp32" in text and "top-1 agreement" in text and "kept float32: lm_head" in text
    r = json.loads(out.read_text())["int8"]
    assert r["users"] == 6 and r["float32_linear_layers"] == ["lm_head"] and r["int8_linear_layers"] == 14
    assert len(r["fp32"]["chunk_seconds"]) == len(r["int8"]["chunk_seconds"]) == 3
    assert r["fp32"]["s_per_user"] > 0 and r["int8"]["s_per_user"] > 0 and r["speedup"] > 0
    a = r["agreement"]
    assert set(a) == {"users", "top1_agreement", "kendall_tau_mean", "kendall_users", "max_abs_diff", "metrics"}
    assert set(a["metrics"]) == {"HR@1", "NDCG@10"} and 0 < a["max_abs_diff"]
    assert 0.0 <= a["top1_agreement"] <= 1.0 and -1.0 <= a["kendall_tau_mean"] <= 1.0
    assert bench._module("int8").summary(r)[0].startswith("int8 dynamic quantisation (6 users)")
