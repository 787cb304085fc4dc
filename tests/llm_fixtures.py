"""Tiny randomly initialised LLMs and a tokenizer trained in-process: LLM tests never need the network."""

from __future__ import annotations

from pathlib import Path

import torch

from delrec_lib.llm import prompts as P

TITLES = [
    "Toy Story (1995)",
    "Toy Story 2 (1999)",
    "GoldenEye (1995)",
    "Four Rooms (1995)",
    "Get Shorty (1995)",
    "The Usual Suspects (1995)",
    "Twelve Monkeys (1995)",
    "Babe (1995)",
    "Dead Man Walking (1995)",
    "Richard III (1995)",
    "Star Wars (1977)",
    "Fargo (1996)",
    "Return of the Jedi (1983)",
    "Contact (1997)",
    "The English Patient (1996)",
    "Scream (1996)",
    "Liar Liar (1997)",
    "Air Force One (1997)",
    "Independence Day (ID4) (1996)",
    "Willy Wonka and the Chocolate Factory (1971)",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(eos: str, pad: str | None, extra_special: list[str], t5_style: bool):
    """A small byte-level BPE trained on the templates and titles (a few hundred tokens, ~50 ms)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [s for s in [pad, eos, *extra_special] if s]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        P.SYSTEM_MESSAGE,
        P.PATTERN_LINE,
        P.RECOMMENDATION_TEMPLATE,
        P.TEMPORAL_ANALYSIS_TEMPLATE,
        P.PATTERN_SIMULATING_TEMPLATE,
        P.PLAIN_FRAME,
        *TITLES,
    ] * 3
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    if t5_style:  # T5 appends EOS to every encoded text
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", special_tokens=[(eos, tok.token_to_id(eos))]
        )
    kwargs = {"eos_token": eos}
    if pad:
        kwargs["pad_token"] = pad
    if extra_special:
        kwargs["additional_special_tokens"] = extra_special
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def save_tiny_causal(directory: Path, *, chat: bool = True, seed: int = 0) -> Path:
    """A 2-layer Llama-style model (GQA, tied embeddings) with its tokenizer, as save_pretrained writes it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    # No pad token on purpose: the loader must set one explicitly.
    tok = train_tokenizer("<|im_end|>", None, ["<|im_start|>"], t5_style=False)
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.3,  # large weights: candidate scores differ a lot, so comparisons are sharp
        bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def save_tiny_t5(directory: Path, *, seed: int = 0) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    tok = train_tokenizer("</s>", "<pad>", [], t5_style=True)
    config = T5Config(
        vocab_size=len(tok),
        d_model=48,
        d_kv=12,
        d_ff=96,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        initializer_factor=1.0,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def scores_and_grads_with_and_without_prefixes(backbone, prompts, soft, labels):
    """Scores and ``soft``'s gradient of a cross-entropy over ``prompts``, read in full and over their cached
    prefixes (``prefix_states``): [(scores, grad) full, (scores, grad) cached]."""
    from delrec_lib.llm.scoring import prefix_states, rank_candidates

    out = []
    for prefixes in (None, prefix_states(backbone, prompts)):
        soft.grad = None
        scores = rank_candidates(backbone, prompts, soft_prompt=soft, prefixes=prefixes)
        torch.nn.functional.cross_entropy(scores, torch.tensor(labels)).backward()
        out.append((scores.detach(), soft.grad.clone()))
    return out
