"""The index head (``llm.head = "index"``): candidates listed under letters, scored by the letters' logits at the
answer position, on tiny random models built here."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from delrec_lib.config import LLMConfig, load_config
from delrec_lib.errors import ConfigError
from delrec_lib.llm import load_backbone
from delrec_lib.llm.prompts import INDEX_LABELS, PromptBuilder
from delrec_lib.llm.ranker import LLMRanker, RecExample, letter_as_title
from delrec_lib.llm.scoring import rank_candidates, rank_candidates_naive

from .llm_fixtures import TITLES, save_tiny_causal, scores_and_grads_with_and_without_prefixes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

INDEX = LLMConfig(head="index")


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    return load_backbone(str(save_tiny_causal(tmp_path_factory.mktemp("tiny-llama"))), dtype="float32")


def letter_logits_by_hand(backbone, prompt) -> torch.Tensor:
    """The whole prompt through the model once; the next-token log-probabilities of each candidate's letter."""
    ids = torch.tensor([list(prompt.before_ids)])
    with torch.no_grad():
        logits = backbone.model(input_ids=ids).logits[0, -1]
    letter = [backbone.tokenizer.convert_tokens_to_ids(c) for c in prompt.candidates]
    return torch.log_softmax(logits.float(), dim=-1)[letter]


def test_index_scores_are_the_letters_logits_at_the_answer_position(causal):
    builder = PromptBuilder(causal, INDEX)
    prompts = [builder.recommendation(TITLES[:3], TITLES[5:11]), builder.recommendation(TITLES[4:9], TITLES[12:20])]
    with torch.no_grad():
        scores = rank_candidates(causal, prompts, batch_size=2)
    for i, p in enumerate(prompts):
        hand = letter_logits_by_hand(causal, p)
        torch.testing.assert_close(scores[i, : len(hand)], hand, atol=1e-4, rtol=0)
        # A softmax over the candidates is the same from log-probabilities as from raw logits.
        with torch.no_grad():
            raw = causal.model(input_ids=torch.tensor([list(p.before_ids)])).logits[0, -1]
        letters = [causal.tokenizer.convert_tokens_to_ids(c) for c in p.candidates]
        torch.testing.assert_close(scores[i, : len(hand)].softmax(0), raw[letters].float().softmax(0), atol=1e-5, rtol=0)
    assert torch.isinf(scores[0, 6:]).all()  # the shorter candidate list is padded
    torch.testing.assert_close(scores[:1, :6], rank_candidates_naive(causal, prompts[:1]), atol=1e-4, rtol=0)


def test_both_heads_rank_the_same_candidates_each_in_its_own_way(causal):
    history, cands = TITLES[:4], TITLES[6:14]
    title = PromptBuilder(causal, LLMConfig()).recommendation(history, cands)
    index = PromptBuilder(causal, INDEX).recommendation(history, cands)
    shown = tuple(PromptBuilder(causal, LLMConfig()).titles(cands))  # as prompts show them (no year)
    assert title.shown == index.shown == shown and title.candidates == shown
    # Candidate c of the caller is listed under the letter index.candidates[c], at index.listed_at[c].
    assert [INDEX_LABELS[j] for j in index.listed_at] == list(index.candidates)
    assert sorted(index.listed_at) == list(range(len(cands)))
    for c, title_c in enumerate(shown):
        assert f"\n{index.candidates[c]}. {title_c}\n" in index.text
    assert "Candidates:" not in title.text  # the cpu default does not list candidates for the title head
    with torch.no_grad():
        s_title, s_index = (rank_candidates(causal, [p])[0] for p in (title, index))
    assert s_title.shape == s_index.shape == (len(cands),) and torch.isfinite(s_index).all()
    assert not torch.equal(s_title.argsort(), s_index.argsort())  # two heads, two rankings of one candidate set


def test_listing_order_is_the_candidate_sets_own_and_hides_the_callers(causal):
    builder = PromptBuilder(causal, INDEX)
    cands = TITLES[2:12]
    first = builder.recommendation(TITLES[:2], cands)
    shuffled = builder.recommendation(TITLES[:2], cands[::-1])
    assert first.text == shuffled.text  # the listing depends on the set, not on the caller's order
    assert builder.recommendation(TITLES[:2], cands, ordering=1).text != first.text  # another ordering, another list
    # Over many candidate sets, the caller's first candidate (where a target may sit) lands at every letter.
    places = Counter()
    for start in range(0, 20):
        titles = [TITLES[(start + k) % len(TITLES)] for k in range(5)]
        places[builder.recommendation([], titles).listed_at[0]] += 1
    assert len(places) == 5 and max(places.values()) <= 8


def test_index_head_trains_a_soft_prompt_over_a_cached_prefix(causal):
    builder = PromptBuilder(causal, INDEX, num_soft_tokens=3)
    prompts = [builder.pattern_simulating(TITLES[:4], TITLES[4:6], TITLES[6:12], teacher="SASRec"),
               builder.recommendation(TITLES[:2], TITLES[12:17], teacher="SASRec")]  # fmt: skip
    # The listing comes before the slot: the cached prefix holds it, and a step runs the slot and the turn's end.
    assert all("Candidates:" in causal.tokenizer.decode(p.before_ids) for p in prompts)
    torch.manual_seed(0)
    soft = torch.nn.Parameter(torch.randn(3, causal.hidden_size))
    out = scores_and_grads_with_and_without_prefixes(causal, prompts, soft, [2, 0])
    torch.testing.assert_close(out[1][0], out[0][0], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1][1], out[0][1], atol=1e-5, rtol=1e-3)
    assert out[0][1].abs().sum() > 0


def test_labels_must_be_one_token(causal):
    class SplitsQ:  # a tokenizer that writes "Q" as two tokens
        def __init__(self, tok):
            self.tok = tok

        def __getattr__(self, name):
            return getattr(self.tok, name)

        def __call__(self, text, **kw):
            out = self.tok(text, **kw)
            if text == "Q":
                out["input_ids"] = out["input_ids"] * 2
            return out

    odd = dataclasses.replace(causal, tokenizer=SplitsQ(causal.tokenizer), name="odd-tokenizer")
    with pytest.raises(ConfigError, match="llm.head='index'.*'Q' is 2 tokens.*'odd-tokenizer'"):
        PromptBuilder(odd, INDEX)
    PromptBuilder(odd, LLMConfig())  # the title head needs no letters
    with pytest.raises(ConfigError, match="llm.head"):
        load_config("smoke", llm={"head": "letters"})


def test_explicit_candidates_are_refused_for_an_index_prompt(causal):
    p = PromptBuilder(causal, INDEX).recommendation(TITLES[:2], TITLES[3:6])
    with pytest.raises(ConfigError, match="candidate_titles\\[0\\].*own listed letters"):
        rank_candidates(causal, [p], [TITLES[3:6]])


def test_averaging_over_orderings_is_the_mean_of_each_orderings_scores(causal):
    titles = [""] + TITLES  # item ids index the catalogue; 0 is padding
    examples = [RecExample(1, (1, 2, 3), (5, 6, 7, 8, 9), 0), RecExample(2, (4, 5), (10, 11, 12, 13, 14), 0)]
    one = LLMRanker(causal, INDEX, titles, None, None)
    three = LLMRanker(causal, dataclasses.replace(INDEX, index_orderings=3), titles, None, None)
    with torch.no_grad():
        each = [rank_candidates(causal, [one.prompt(e, k) for e in examples]) for k in range(3)]
        torch.testing.assert_close(three.scores(examples), sum(each) / 3, atol=1e-5, rtol=0)
    assert len({one.prompt(examples[0], k).text for k in range(3)}) == 3


def test_an_answer_letter_is_matched_as_the_title_it_lists(causal):
    p = PromptBuilder(causal, INDEX).recommendation(TITLES[:2], TITLES[3:7])
    for c, title in enumerate(p.shown):
        letter = p.candidates[c]
        assert letter_as_title(p, letter) == title
        assert letter_as_title(p, f"{letter}. {title}") == title
    assert letter_as_title(p, "Babe") == "Babe"  # not a letter: left for the title rules
    assert letter_as_title(p, "Contact") == "Contact"  # starts with a capital, not a letter alone
    title_prompt = PromptBuilder(causal, LLMConfig()).recommendation(TITLES[:2], TITLES[3:7])
    assert letter_as_title(title_prompt, "A") == "A"


def test_position_bias_counts_where_targets_sit_and_where_picks_land(causal):
    import numpy as np

    from delrec_lib.llm.ranker import position_bias

    titles = [""] + TITLES
    examples = [RecExample(u, (1, 2), tuple(range(3 + u, 8 + u)), u % 5) for u in range(10)]
    ranker = LLMRanker(causal, INDEX, titles, None, None)
    at = [[ranker.prompt(e).listed_at[c] for c in range(5)] for e in examples]
    always_a = np.array([[1.0 if j == 0 else 0.0 for j in row] for row in at])  # a ranker that always answers "A"
    table = position_bias(ranker, examples, always_a).set_index("position")
    assert table.loc["A", "share of picks"] == 1.0 and table["share of picks"].sum() == pytest.approx(1.0)
    assert table["targets"].sum() == 10
    target_at = [row[e.label] for row, e in zip(at, examples, strict=True)]
    for j, letter in enumerate("ABCDE"):
        hits = [t == 0 for t in target_at if t == j]
        assert table.loc[letter, "targets"] == len(hits)
        if hits:
            assert table.loc[letter, "HR@1"] == (1.0 if j == 0 else 0.0)
    with pytest.raises(ConfigError, match="title head"):
        position_bias(LLMRanker(causal, LLMConfig(), titles, None, None), examples, always_a)


def test_an_evaluated_methods_position_bias_matches_the_rankers(causal, tmp_path):
    """Notebook 07 reads position bias from per-user results; it must place targets and picks where the prompts did."""
    import numpy as np

    from delrec_lib.artifacts import RunPaths
    from delrec_lib.config import RunConfig
    from delrec_lib.evaluation import per_user_frame
    from delrec_lib.llm.ranker import method_position_bias, position_bias, split_examples
    from delrec_lib.methods import MethodContext

    from .stage_fixtures import synthetic_data

    data = synthetic_data(tmp_path / "data")
    config = RunConfig(preset="smoke", llm=INDEX)
    users = data.user_ids().tolist()[:12]
    examples = split_examples(data, "test", users)
    ranker = LLMRanker(causal, INDEX, data.titles, None, None)
    scores = np.random.default_rng(0).normal(size=(len(examples), len(examples[0].candidates)))
    per_user = per_user_frame(users, scores, np.array([e.label for e in examples]))
    ctx = MethodContext(config, RunPaths(tmp_path / "run"), data, causal)
    import pandas as pd

    pd.testing.assert_frame_equal(method_position_bias(ctx, per_user), position_bias(ranker, examples, scores))
