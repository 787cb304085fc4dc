"""Per-layer prompts (``distill.prompt_depth = "every_layer"``, P-tuning v2 at the slot) on a tiny random model."""

from __future__ import annotations

import pytest
import torch

from delrec_lib.config import LLMConfig
from delrec_lib.delrec.soft_prompt import SoftPrompt, load_soft_prompt
from delrec_lib.errors import ConfigError
from delrec_lib.llm import load_backbone
from delrec_lib.llm.prompts import PromptBuilder
from delrec_lib.llm.scoring import layer_prompt_shape, lower_states, rank_candidates

from .llm_fixtures import TITLES, save_tiny_causal, scores_and_grads_with_and_without_prefixes

pytestmark = pytest.mark.usefixtures("one_torch_thread")
K = 3


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    return load_backbone(str(save_tiny_causal(tmp_path_factory.mktemp("tiny-llama"))), dtype="float32")


def prompts_of(causal, head="title"):
    builder = PromptBuilder(causal, LLMConfig(head=head), num_soft_tokens=K)
    return [builder.recommendation(TITLES[:3], TITLES[5:9], teacher="SASRec"),
            builder.pattern_simulating(TITLES[2:7], TITLES[7:9], TITLES[9:15], teacher="SASRec")]  # fmt: skip


def slot_states(causal, prompt, soft):
    """The keys and values each layer makes at the slot when ``soft`` [K, hidden] sits in the input there."""
    from transformers import DynamicCache

    embed = causal.input_embeddings
    x = torch.cat([embed(torch.tensor(prompt.before_ids)), soft])[None]
    cache = DynamicCache(config=causal.base_model.config)
    with torch.no_grad():
        causal.base_model.base_model(inputs_embeds=x, past_key_values=cache, use_cache=True)
    P = len(prompt.before_ids)
    return torch.stack([torch.stack([layer.keys[0, :, P:], layer.values[0, :, P:]]) for layer in cache.layers])


@pytest.mark.parametrize("head", ["title", "index"])
def test_a_layer_prompt_holding_an_input_prompts_states_scores_alike(causal, head):
    """An input prompt is the special case whose per-layer keys/values are what the layers make of K vectors: given
    those, the per-layer path must give the input path's scores (so the slot, positions and mask are right)."""
    torch.manual_seed(0)
    soft = torch.randn(K, causal.hidden_size)
    prompts = prompts_of(causal, head)
    with torch.no_grad():
        full = rank_candidates(causal, prompts, soft_prompt=soft)
        for i, p in enumerate(prompts):
            kv = slot_states(causal, p, soft)
            assert tuple(kv.shape) == layer_prompt_shape(causal, K)
            layered = rank_candidates(causal, [p], soft_prompt=kv)[0]
            n = len(p.candidates)
            torch.testing.assert_close(layered[:n], full[i, :n], atol=1e-4, rtol=0)


def test_a_layer_prompt_trains_over_cached_prefixes(causal):
    prompts = prompts_of(causal, "index")
    start = SoftPrompt.from_text(causal, "SASRec recommends", K, every_layer=True)
    assert start.every_layer and start.num_tokens == K
    kv = torch.nn.Parameter(start.embeddings.detach().clone())
    out = scores_and_grads_with_and_without_prefixes(causal, prompts, kv, [1, 0])
    torch.testing.assert_close(out[1][0], out[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1][1], out[0][1], atol=1e-6, rtol=1e-4)
    assert (out[0][1].abs().sum(dim=(1, 2, 3, 4)) > 0).all()  # every layer's slot gets a gradient
    # One step of gradient descent lowers the loss: the path is trainable end to end.
    with torch.no_grad():
        kv -= 0.5 * kv.grad / kv.grad.norm()
        after = torch.nn.functional.cross_entropy(rank_candidates(causal, prompts, soft_prompt=kv), torch.tensor([1, 0]))
    assert after < torch.nn.functional.cross_entropy(out[0][0], torch.tensor([1, 0]))


def test_layer_prompts_are_refused_where_they_cannot_be_read(causal, tmp_path):
    prompts = prompts_of(causal)
    kv = torch.zeros(layer_prompt_shape(causal, K))
    with pytest.raises(ConfigError, match="per-layer prompt of shape"):
        rank_candidates(causal, prompts, soft_prompt=kv[:1])
    with pytest.raises(ConfigError, match="lower_states: a per-layer prompt"):
        lower_states(causal, prompts, None, 1, soft_prompt=kv)
    causal.base_model.lm_head.weight.requires_grad_(True)  # a model being trained: the cache would carry no gradient
    try:
        with pytest.raises(ConfigError, match="trainable parameters"):
            rank_candidates(causal, prompts, soft_prompt=kv)
    finally:
        causal.base_model.lm_head.weight.requires_grad_(False)
    SoftPrompt(kv).save(tmp_path / "soft_prompt.safetensors", {"backbone": causal.identity})
    with pytest.raises(ConfigError, match="per-layer prompt.*stage 2 .* read input-layer soft prompts"):
        load_soft_prompt(tmp_path, causal, None, LLMConfig())
