"""Rank candidate titles by the LLM's likelihood of each title after its prompt.

A candidate's score is the mean (default) or sum of the log-probabilities of its tokens: the
title's tokens followed by the backbone's answer-end tokens (``Backbone.answer_end_ids``, e.g.
``<|im_end|>``). Scoring the end token tells "Toy Story" apart from "Toy Story 2": without it
every prefix of a longer title would score at least as well as the title itself.

Each prompt is encoded once and all its candidates continue from that shared prefix:
- causal, ``mode="packed"`` (default): one forward pass per batch over rows laid out as
  ``[prompt | cand_1[:-1] | cand_2[:-1] | ...]`` with a block attention mask (every candidate
  sees the prompt and its own earlier tokens) and positions restarting after the prompt for each
  candidate. Nothing is copied per candidate. Needs "sdpa" or "eager" attention (a custom 4D mask).
- causal, ``mode="cache"``: the left-padded prompt batch fills a KV cache, the cache is repeated
  over the candidates (``batch_repeat_interleave``), then the candidate tokens run on top. Works
  with any attention implementation; on the 2-core CPU it measured ~3x slower than "packed"
  (the repeated cache is copied per candidate, and GQA repeats it again).
- seq2seq (T5): the encoder runs once; the decoder start token is the shared prefix (its
  self- and cross-attention cache is computed once and repeated over candidates), then every
  candidate is decoded in one batch.
The first token of every candidate is scored from the prompt's last position; the LM head only
runs where a log-probability is needed, in float32 (bf16 logits between 16 and 32 are 0.125
apart; the head is ~10% of the FLOPs, and float32 cost no measurable time here).

Two caches for training a frozen model's parts, each giving the same scores and gradients as the
full forward (tests), for a fraction of the work on every revisit of an example:
- ``prefix_states``: the keys/values of a prompt's text before its soft-prompt slot (nothing trainable
  comes before it); ``rank_candidates(..., prefixes=...)`` then runs only the slot, the text after it
  and the candidates (stage 1; LLM-SRec's item prompts use ``token_prefix_states``/``continue_prefixes``).
- ``lower_states``: a prompt's packed row as it enters layer L, when only layers >= L train (stage 2
  with LoRA on the top layers); ``rank_rows`` then runs only those layers. Llama-style decoders.

``rank_candidates_naive`` runs one full forward pass per candidate; it is the reference the
tests compare against and the baseline of the benchmark.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..phases import phase
from .backbone import Backbone
from .prompts import SOFT_PROMPT_MARKER, EncodedPrompt, encode_text

NORMALIZE = ("mean", "sum")
MODES = ("packed", "cache")


# --------------------------------------------------------------------------------------------
# Inputs: prompts, soft prompt, candidate tokens
# --------------------------------------------------------------------------------------------


def is_layer_prompt(soft_prompt: Any) -> bool:
    """A per-layer prompt (P-tuning v2 at the slot): keys and values [layers, 2, kv_heads, K, head_dim] that every
    layer reads at the slot's K positions, instead of K input vectors [K, hidden] that only the first reads."""
    return isinstance(soft_prompt, torch.Tensor) and soft_prompt.dim() == 5


def _as_prompts(
    backbone: Backbone, prompts: Sequence[EncodedPrompt | str], soft_prompt: Any
) -> list[EncodedPrompt]:
    num_soft = 0 if soft_prompt is None else int(soft_prompt.shape[-2])
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            p = encode_text(backbone, p, num_soft_tokens=num_soft if SOFT_PROMPT_MARKER in p else 0)
        if not isinstance(p, EncodedPrompt):
            raise ConfigError(f"prompts[{i}]: expected an EncodedPrompt or a str, got {type(p).__name__}")
        if p.num_soft_tokens and soft_prompt is None:
            raise ConfigError(
                f"prompts[{i}]: has a soft-prompt slot of {p.num_soft_tokens} tokens but no soft_prompt given"
            )
        if soft_prompt is not None and p.num_soft_tokens != num_soft:
            raise ConfigError(
                f"prompts[{i}]: soft_prompt has {num_soft} vectors but the prompt's slot holds {p.num_soft_tokens}"
                + (" (the prompt has no slot)" if not p.num_soft_tokens else "")
            )
        out.append(p)
    return out


def _check_soft_prompt(backbone: Backbone, soft_prompt: Any, n: int) -> torch.Tensor | None:
    if soft_prompt is None:
        return None
    if is_layer_prompt(soft_prompt):
        want = layer_prompt_shape(backbone, int(soft_prompt.shape[3]))
        if backbone.family != "causal" or tuple(soft_prompt.shape) != want:
            raise ConfigError(f"soft_prompt: a per-layer prompt of shape {tuple(soft_prompt.shape)}; this backbone "
                              f"takes [layers, 2, kv_heads, K, head_dim] = {want}" if backbone.family == "causal" else
                              "soft_prompt: per-layer prompts need a causal (decoder-only) model")  # fmt: skip
        return soft_prompt
    if not isinstance(soft_prompt, torch.Tensor) or soft_prompt.dim() not in (2, 3):
        raise ConfigError("soft_prompt: expected a tensor [K, hidden] (or [num_prompts, K, hidden]), or a per-layer "
                          "prompt [layers, 2, kv_heads, K, head_dim]")
    if soft_prompt.shape[-1] != backbone.hidden_size:
        raise ConfigError(
            f"soft_prompt: last dimension {soft_prompt.shape[-1]} != hidden size {backbone.hidden_size}"
        )
    if soft_prompt.dim() == 3 and soft_prompt.shape[0] != n:
        raise ConfigError(f"soft_prompt: {soft_prompt.shape[0]} per-prompt soft prompts for {n} prompts")
    return soft_prompt


def layer_prompt_shape(backbone: Backbone, num_tokens: int) -> tuple[int, ...]:
    """[layers, 2, kv_heads, K, head_dim]: the keys and values a causal backbone's layers hold for K positions."""
    cfg = backbone.base_model.config
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return (cfg.num_hidden_layers, 2, kv, num_tokens, head_dim)


def candidate_token_ids(backbone: Backbone, titles: Sequence[str]) -> list[list[int]]:
    """Each title's tokens as the model writes it as an answer, plus the answer-end tokens."""
    encoded = backbone.tokenizer(list(titles), add_special_tokens=False)["input_ids"]
    return [list(ids) + list(backbone.answer_end_ids) for ids in encoded]


def answer_token_ids(backbone: Backbone, prompt: EncodedPrompt, candidates: Sequence[str]) -> list[list[int]]:
    """What is scored after ``prompt`` for each candidate: a title and the answer's end (title head), or one
    letter token, read at the answer position alone (index head: its log-probability orders the candidates as
    its logit does, and a softmax over the candidates is the same from either)."""
    if prompt.head != "index":
        return candidate_token_ids(backbone, candidates)
    out = []
    for label in candidates:
        ids = backbone.tokenizer(label, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ConfigError(f"index head: the label {label!r} is {len(ids)} tokens in the tokenizer of backbone "
                              f"{backbone.name!r}; the index head needs one-token labels")  # fmt: skip
        out.append(list(ids))
    return out


def prompt_embeddings(
    backbone: Backbone, prompt: EncodedPrompt, soft_prompt: torch.Tensor | None, *, after_slot: bool = False
) -> torch.Tensor:
    """[num_tokens, hidden]: embed(before) ++ soft prompt ++ embed(after); with ``after_slot`` only
    soft prompt ++ embed(after) (the part a cached prefix does not hold)."""
    embed = backbone.input_embeddings
    dev = embed.weight.device
    if not prompt.num_soft_tokens:
        return embed(torch.tensor(prompt.before_ids, dtype=torch.long, device=dev))
    after = embed(torch.tensor(prompt.after_ids, dtype=torch.long, device=dev))
    soft = soft_prompt.to(device=dev, dtype=after.dtype)
    if after_slot:
        return torch.cat([soft, after], dim=0)
    before = embed(torch.tensor(prompt.before_ids, dtype=torch.long, device=dev))
    return torch.cat([before, soft, after], dim=0)


def after_slot_embeddings(backbone: Backbone, prompt: EncodedPrompt, soft_prompt: torch.Tensor | None) -> torch.Tensor:
    """What a row continuing a cached prefix embeds: the soft prompt and the text after the slot, or (a per-layer
    prompt, held in the cache; ``soft_prompt`` None) the text after the slot alone."""
    if soft_prompt is not None:
        return prompt_embeddings(backbone, prompt, soft_prompt, after_slot=True)
    embed = backbone.input_embeddings
    return embed(torch.tensor(prompt.after_ids, dtype=torch.long, device=embed.weight.device))


def _head_logprobs(
    backbone: Backbone, hidden: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """log p(targets[i] | hidden[rows[i]]) for a causal LM, with the LM head in float32 on needed rows only.

    hidden: [N, d] hidden states after the final norm; rows, targets: [M].
    """
    base = backbone.base_model
    head = base.get_output_embeddings()
    used, inverse = torch.unique(
        rows, return_inverse=True
    )  # the prompt's last row is shared by all candidates
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        logits = F.linear(
            hidden[used].float(), head.weight.float(), None if head.bias is None else head.bias.float()
        )
    cfg = base.config
    if getattr(cfg, "logit_scale", None):  # Cohere
        logits = logits * cfg.logit_scale
    if getattr(cfg, "final_logit_softcapping", None):  # Gemma 2/3
        logits = torch.tanh(logits / cfg.final_logit_softcapping) * cfg.final_logit_softcapping
    # log_softmax, not logits - logsumexp: on CPU logsumexp over a 49k vocabulary ran ~7x slower.
    return torch.log_softmax(logits, dim=-1)[inverse, targets]  # [M]


def _finish(
    sums: torch.Tensor, lengths: torch.Tensor, cand_index: torch.Tensor, num: int, width: int, normalize: str
) -> torch.Tensor:
    """Scatter per-candidate sums into [num, width], -inf where a prompt has fewer candidates."""
    scores = sums / lengths if normalize == "mean" else sums
    out = torch.full((num * width,), float("-inf"), device=sums.device, dtype=scores.dtype)
    out = out.index_put((cand_index,), scores)
    return out.view(num, width)


# --------------------------------------------------------------------------------------------
# Shared-prefix scorers, one batch of prompts at a time
# --------------------------------------------------------------------------------------------


@dataclass
class PackedRow:
    """One prompt and its candidates laid out as one row of a forward pass:
    ``[prompt | cand_1[:-1] | cand_2[:-1] | ...]`` (a candidate's last token is only a target).

    ``x`` [T, d] is the row's input: embeddings, or the hidden states entering layer ``layer`` when a
    frozen lower part of the model has already run (``lower_states``). Everything else says how the
    row attends and what it predicts, so a row can be batched again with any others.
    """

    x: torch.Tensor
    seg: list[int]  # per position: 0 the prompt, c + 1 candidate c's input tokens
    pos: list[int]  # position ids (after a cached prefix of ``offset`` tokens)
    head_rows: list[int]  # per target token: the row position whose hidden state predicts it
    targets: list[int]
    target_cand: list[int]  # per target token: its candidate's index in the row
    lengths: list[int]  # per candidate: its scored tokens
    offset: int = 0  # tokens of a cached prefix (``prefix_states``) the row continues
    layer: int = 0  # the layer ``x`` enters


def _layout(backbone: Backbone, e: torch.Tensor, cands: list[list[int]], offset: int = 0) -> PackedRow:
    """A prompt's embeddings ``e`` [p, d] and its candidates' token ids as one ``PackedRow``."""
    p = e.shape[0]
    flat_inputs = [tok for t in cands for tok in t[:-1]]
    x = e
    if flat_inputs:
        x = torch.cat([e, backbone.input_embeddings(torch.tensor(flat_inputs, dtype=torch.long, device=e.device))])
    row = PackedRow(x, [0] * p, list(range(offset, offset + p)), [], [], [], [], offset)
    start = p
    for ci, t in enumerate(cands):
        n_in = len(t) - 1
        row.seg += [ci + 1] * n_in
        row.pos += range(offset + p, offset + p + n_in)
        # token j of the candidate is predicted from the prompt's last position (j = 0) or its own j - 1
        row.head_rows += [p - 1] + [start + j for j in range(n_in)]
        row.targets += t
        row.target_cand += [ci] * len(t)
        row.lengths.append(len(t))
        start += n_in
    return row


def _collate(rows: list[PackedRow], width: int):
    """Rows as one batch: inputs [B, T, d], visibility [B, T, T], positions [B, T], and the flat head rows,
    targets and owning candidates (``b * width + c``)."""
    dev = rows[0].x.device
    T = max(r.x.shape[0] for r in rows)
    x = torch.nn.utils.rnn.pad_sequence([r.x for r in rows], batch_first=True)  # zero rows are padding
    seg = torch.tensor([r.seg + [-1] * (T - len(r.seg)) for r in rows], device=dev)
    pos = torch.tensor([r.pos + [0] * (T - len(r.pos)) for r in rows], device=dev)
    q = torch.arange(T, device=dev)
    # key k visible to query q if k <= q and k is prompt or in q's own candidate. Padding queries
    # (segment -1) see the prompt too, so no softmax row is empty (no NaN).
    visible = (q[None, :, None] >= q[None, None, :]) & ((seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None]))
    head_rows = [b * T + h for b, r in enumerate(rows) for h in r.head_rows]
    targets = [t for r in rows for t in r.targets]
    target_cand = [b * width + c for b, r in enumerate(rows) for c in r.target_cand]
    return x, visible, pos, head_rows, targets, target_cand


def _score_rows(backbone: Backbone, rows: list[PackedRow], prefixes: list[torch.Tensor] | None = None):
    """One forward over the rows (from their ``layer`` on) and the log-probability of every target token."""
    width = max(len(r.lengths) for r in rows)
    x, visible, pos, head_rows, targets, target_cand = _collate(rows, width)
    dev, T = x.device, x.shape[1]
    layer = rows[0].layer
    if any(r.layer != layer for r in rows):
        raise ConfigError("rows entering different layers cannot share a forward pass")
    cache = None
    if prefixes is not None:
        # Every query sees all of its own prefix ([B, T, P], P the longest prefix; shorter ones right-padded).
        offsets = [r.offset for r in rows]
        P = max(offsets)
        seen = torch.arange(P, device=dev)[None, :] < torch.tensor(offsets, device=dev)[:, None]  # [B, P]
        visible = torch.cat([seen[:, None, :].expand(-1, T, -1), visible], dim=2)  # [B, T, P + T]
        cache = _prefix_cache(backbone, prefixes, P)
    mask = _attention_mask(backbone, visible[:, None])
    with backbone.autocast():
        if layer == 0:
            out = backbone.base_model.base_model(inputs_embeds=x, attention_mask=mask, position_ids=pos,
                                                 past_key_values=cache, use_cache=cache is not None)  # fmt: skip
            hidden = out.last_hidden_state
        else:
            hidden = run_layers(backbone, x, mask, pos, layer, None)
    logp = _head_logprobs(backbone, hidden.reshape(-1, x.shape[-1]), torch.tensor(head_rows, device=dev),
                          torch.tensor(targets, device=dev))  # fmt: skip
    return logp, torch.tensor(target_cand, device=dev), [n for r in rows for n in r.lengths], width


def _causal_packed(backbone: Backbone, embeds: list[torch.Tensor], cands: list[list[list[int]]],
                   prefixes: list[torch.Tensor] | None = None):  # fmt: skip
    """One forward over [prompt | cand_1[:-1] | cand_2[:-1] | ...] rows with a block mask.

    With ``prefixes`` (``prefix_states``, one per row), ``embeds`` are only what follows each prompt's
    frozen prefix (soft prompt + text after it): the prefix's keys and values enter as a cache every
    row attends to, and positions continue after it.
    """
    offsets = [0] * len(embeds) if prefixes is None else [int(k.shape[3]) for k in prefixes]
    rows = [_layout(backbone, e, c, off) for e, c, off in zip(embeds, cands, offsets, strict=True)]
    return _score_rows(backbone, rows, prefixes)


# --------------------------------------------------------------------------------------------
# Frozen lower layers: their output computed once, only the upper layers run again
# --------------------------------------------------------------------------------------------


def layer_split_supported(backbone: Backbone) -> bool:
    """Whether ``run_layers`` can run a part of this model's layers: decoder-only trunks with ``layers``,
    ``rotary_emb`` and ``norm`` (Llama, Qwen2, Mistral, SmolLM2) and sdpa or eager attention."""
    trunk = backbone.base_model.base_model
    impl = getattr(backbone.base_model.config, "_attn_implementation", "sdpa")
    return backbone.family == "causal" and impl in ("sdpa", "eager") and all(
        hasattr(trunk, a) for a in ("layers", "rotary_emb", "norm")
    )


def run_layers(backbone: Backbone, x: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, start: int,
               stop: int | None) -> torch.Tensor:  # fmt: skip
    """Hidden states after layers ``start .. stop - 1`` (``stop`` None: every layer from ``start`` on, then
    the final norm, as the model's own forward ends). ``x`` [B, T, d] enters layer ``start``; ``mask`` is
    the 4D mask of ``_attention_mask``. The caller applies autocast."""
    if not layer_split_supported(backbone):
        raise ConfigError(f"{type(backbone.base_model).__name__}: running a part of its layers needs a decoder-only "
                          "trunk with layers, rotary_emb and norm (Llama-style) and sdpa or eager attention")  # fmt: skip
    trunk = backbone.base_model.base_model
    embeddings = trunk.rotary_emb(x, position_ids=pos)
    h = x
    for layer in trunk.layers[start:stop]:
        h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=embeddings)
    return trunk.norm(h) if stop is None else h


@phase("frozen-state caching")
def lower_states(backbone: Backbone, prompts: Sequence[EncodedPrompt], candidate_titles: Sequence[Sequence[str]] | None,
                 stop: int, *, soft_prompt: torch.Tensor | None = None, batch_size: int = 8,
                 progress: bool = False) -> list[PackedRow]:  # fmt: skip
    """Each prompt with its candidates as a ``PackedRow`` whose ``x`` is the hidden state entering layer
    ``stop``: what layers ``0 .. stop - 1`` make of it, computed once, no grad.

    When only the layers from ``stop`` on are trained (stage 2 with ``finetune.lora_layers``), the lower
    layers read every example the same way at every step: ``rank_rows`` then runs only the upper ones,
    forward and backward, for the same scores. Needs ``layer_split_supported``.
    """
    if not layer_split_supported(backbone):
        raise ConfigError("lower_states: " + ("an encoder-decoder model" if backbone.family != "causal" else
                          f"{type(backbone.base_model).__name__} is not a Llama-style decoder with sdpa/eager attention"))  # fmt: skip
    if is_layer_prompt(soft_prompt):
        raise ConfigError("lower_states: a per-layer prompt enters every layer, so no layer's input can be kept")
    soft_prompt = _check_soft_prompt(backbone, soft_prompt, len(prompts))
    encoded = _as_prompts(backbone, prompts, soft_prompt)
    titles = _candidate_lists(encoded, candidate_titles)
    out: list[PackedRow] = [None] * len(encoded)  # type: ignore[list-item]
    order = sorted(range(len(encoded)), key=lambda i: -encoded[i].num_tokens)
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"layers 0-{stop - 1}", unit="batch")
    for s in starts:
        idx = order[s : s + batch_size]
        with torch.no_grad():
            rows = [_layout(backbone, prompt_embeddings(backbone, encoded[i], _soft_for(soft_prompt, i)),
                            answer_token_ids(backbone, encoded[i], titles[i])) for i in idx]  # fmt: skip
            x, visible, pos, *_ = _collate(rows, max(len(r.lengths) for r in rows))
            with backbone.autocast():
                h = run_layers(backbone, x, _attention_mask(backbone, visible[:, None]), pos, 0, stop)
        for b, (i, r) in enumerate(zip(idx, rows, strict=True)):
            out[i] = dataclasses.replace(r, x=h[b, : r.x.shape[0]].clone(), layer=stop)
    return out


def rank_rows(backbone: Backbone, rows: Sequence[PackedRow], *, normalize: str = "mean", batch_size: int = 8,
              progress: bool = False) -> torch.Tensor:  # fmt: skip
    """Scores [num_rows, max_candidates] of rows from ``lower_states``: only the layers above them run
    (gradients reach what is trainable there). The same scores as ``rank_candidates`` on the prompts."""
    if normalize not in NORMALIZE:
        raise ConfigError(f"normalize: expected one of {list(NORMALIZE)}, got {normalize!r}")
    n = len(rows)
    if n == 0:
        return torch.empty(0, 0, device=backbone.device)
    width = max(len(r.lengths) for r in rows)
    order = sorted(range(n), key=lambda i: -rows[i].x.shape[0])
    pieces = []
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"layers {rows[0].layer}+", unit="batch")
    for s in starts:
        idx = order[s : s + batch_size]
        pieces.append(_scores_block(*_score_rows(backbone, [rows[i] for i in idx]), [len(rows[i].lengths) for i in idx],
                                    width, normalize))  # fmt: skip
    return _unsort(torch.cat(pieces, dim=0), order)


@phase("frozen-state caching")
def prefix_states(backbone: Backbone, prompts: Sequence[EncodedPrompt], batch_size: int = 8) -> list[torch.Tensor]:
    """Per prompt, the frozen LLM's keys and values of its text before the soft-prompt slot
    (``before_ids``): [layers, 2 (keys, values), kv_heads, len(before_ids), head_dim], no grad.

    A frozen model reads that text the same way at every step, so stage 1 computes it once per example
    and every step runs only the soft prompt, the text after it and the candidates on top
    (``rank_candidates(..., prefixes=...)``): about two thirds of a stage-1 prompt's tokens are never
    run again, forward or backward. Causal models only (a seq2seq encoder reads the text after the
    slot too). The states are kept in the dtype the model computes them in.
    """
    for i, p in enumerate(prompts):
        if not p.num_soft_tokens or not p.before_ids:
            raise ConfigError(f"prompts[{i}]: prefix_states caches the text before a soft-prompt slot; this prompt has "
                              + ("no slot" if not p.num_soft_tokens else "no text before its slot"))  # fmt: skip
    return token_prefix_states(backbone, [p.before_ids for p in prompts], batch_size)


@phase("frozen-state caching")
def token_prefix_states(backbone: Backbone, token_ids: Sequence[Sequence[int]], batch_size: int = 8) -> list[torch.Tensor]:
    """Per token sequence, the frozen causal LLM's keys and values: [layers, 2, kv_heads, len, head_dim], no grad.
    What ``prefix_states`` computes for prompts; LLM-SRec uses it for the text before an item's embedding slot."""
    if backbone.family != "causal":
        raise ConfigError("prefix_states: cached prefixes need a causal (decoder-only) model")
    from transformers import DynamicCache

    if any(len(ids) == 0 for ids in token_ids):
        raise ConfigError("prefix_states: an empty prefix")
    dev = backbone.input_embeddings.weight.device
    out: list[torch.Tensor] = [None] * len(token_ids)  # type: ignore[list-item]
    order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        lens = [len(token_ids[i]) for i in idx]
        ids = torch.full((len(idx), max(lens)), backbone.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(idx), max(lens), dtype=torch.long)
        for b, i in enumerate(idx):  # right padding: positions 0..P-1 as in the full prompt
            ids[b, : lens[b]] = torch.tensor(list(token_ids[i]))
            mask[b, : lens[b]] = 1
        cache = DynamicCache(config=backbone.base_model.config)
        with torch.no_grad(), backbone.autocast():
            backbone.base_model.base_model(input_ids=ids.to(dev), attention_mask=mask.to(dev), past_key_values=cache,
                                           use_cache=True)  # fmt: skip
        layers = [(layer.keys, layer.values) for layer in cache.layers]  # each [B, kv_heads, P, head_dim]
        for b, i in enumerate(idx):
            out[i] = torch.stack([torch.stack([k[b, :, : lens[b]], v[b, :, : lens[b]]]) for k, v in layers])
    return out


def continue_prefixes(backbone: Backbone, x: torch.Tensor, lengths: Sequence[int], prefixes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Last-layer hidden states [B, T, d] of right-padded rows ``x`` [B, T, d] (``lengths`` real positions each),
    each continuing its cached prefix (``token_prefix_states``): causal attention within the row, every
    position seeing its whole prefix, positions counted after it. The caller applies autocast."""
    dev = x.device
    B, T = x.shape[:2]
    offsets = [int(p.shape[3]) for p in prefixes]
    P = max(offsets)
    q = torch.arange(T, device=dev)
    real = q[None, :] < torch.tensor(list(lengths), device=dev)[:, None]  # [B, T] keys that are not padding
    # Padding queries see their row's real keys and prefix like the rest, so no softmax row is empty.
    visible = (q[None, :, None] >= q[None, None, :]) & real[:, None, :]  # [B, T, T]
    seen = torch.arange(P, device=dev)[None, :] < torch.tensor(offsets, device=dev)[:, None]  # [B, P]
    visible = torch.cat([seen[:, None, :].expand(-1, T, -1), visible], dim=2)
    pos = torch.tensor(offsets, device=dev)[:, None] + q[None, :]
    out = backbone.base_model.base_model(inputs_embeds=x, attention_mask=_attention_mask(backbone, visible[:, None]),
                                         position_ids=pos, past_key_values=_prefix_cache(backbone, list(prefixes), P),
                                         use_cache=True)  # fmt: skip
    return out.last_hidden_state


def _prefix_cache(backbone: Backbone, prefixes: list[torch.Tensor], length: int):
    """A ``DynamicCache`` holding the batch's prefixes, right-padded to ``length`` (the mask hides the padding)."""
    from transformers import DynamicCache

    padded = torch.stack([F.pad(p, (0, 0, 0, length - p.shape[3])) for p in prefixes])  # [B, L, 2, kvh, P, hd]
    return DynamicCache(ddp_cache_data=[(padded[:, layer, 0], padded[:, layer, 1]) for layer in range(padded.shape[1])],
                        config=backbone.base_model.config)  # fmt: skip


def _attention_mask(backbone: Backbone, visible: torch.Tensor) -> torch.Tensor:
    """A 4D boolean visibility mask in the form the model's attention implementation expects."""
    impl = getattr(backbone.base_model.config, "_attn_implementation", "sdpa")
    if impl == "sdpa":
        return visible
    if impl == "eager":
        # Additive, in float32: under autocast eager attention adds it to bf16 scores, promoting them.
        return torch.zeros(visible.shape, device=visible.device).masked_fill(
            ~visible, torch.finfo(torch.float32).min
        )
    raise ConfigError(
        f"scoring mode 'packed' needs 'sdpa' or 'eager' attention, the model uses '{impl}'; use mode='cache'"
    )


def _pad_candidates(cands: list[list[list[int]]], pad_id: int) -> tuple[torch.Tensor, int, int]:
    """[B * width, Lmax] candidate input tokens (each without its last token), right-padded."""
    width = max(len(c) for c in cands)
    lmax = max(len(t) - 1 for c in cands for t in c)
    grid = torch.full((len(cands) * width, max(lmax, 1)), pad_id, dtype=torch.long)
    for b, c in enumerate(cands):
        for ci, t in enumerate(c):
            if len(t) > 1:
                grid[b * width + ci, : len(t) - 1] = torch.tensor(t[:-1])
    return grid, width, lmax


def _targets_from_grid(cands, width: int, first_rows: list[int], grid_row0: int, lmax: int):
    """Head rows, targets and owning candidate for a prefix row per prompt plus a [B*width, lmax] grid."""
    head_rows, targets, target_cand, lengths = [], [], [], []
    for b, c in enumerate(cands):
        for ci, t in enumerate(c):
            r = b * width + ci
            head_rows += [first_rows[b]] + [grid_row0 + r * lmax + j for j in range(len(t) - 1)]
            targets += t
            target_cand += [r] * len(t)
            lengths.append(len(t))
    return head_rows, targets, target_cand, lengths


def _causal_cache(backbone: Backbone, embeds: list[torch.Tensor], cands: list[list[list[int]]]):
    """Prompt batch (left-padded) into a KV cache, repeated over candidates, then the candidate tokens."""
    from transformers import DynamicCache

    dev = embeds[0].device
    trunk = backbone.base_model.base_model
    B, P = len(embeds), max(e.shape[0] for e in embeds)
    x = torch.zeros(B, P, embeds[0].shape[-1], device=dev, dtype=embeds[0].dtype)
    mask = torch.zeros(B, P, dtype=torch.long, device=dev)
    x = torch.stack([torch.cat([x[b, : P - e.shape[0]], e]) for b, e in enumerate(embeds)])  # keeps grad
    for b, e in enumerate(embeds):
        mask[b, P - e.shape[0] :] = 1
    prompt_pos = (mask.cumsum(-1) - 1).clamp(min=0)
    grid, width, lmax = _pad_candidates(cands, backbone.tokenizer.pad_token_id)
    with backbone.autocast():
        cache = DynamicCache(config=backbone.base_model.config)
        out = trunk(
            inputs_embeds=x,
            attention_mask=mask,
            position_ids=prompt_pos,
            past_key_values=cache,
            use_cache=True,
        )
        hidden = [out.last_hidden_state[:, -1]]  # [B, d]: left padding puts every prompt's end last
        if lmax > 0:
            cache.batch_repeat_interleave(width)
            lens = mask.sum(-1).repeat_interleave(width)  # [B*width]
            full_mask = torch.cat(
                [mask.repeat_interleave(width, 0), torch.ones_like(grid, device=dev)], dim=1
            )
            pos = lens[:, None] + torch.arange(grid.shape[1], device=dev)[None]
            out = trunk(
                input_ids=grid.to(dev),
                attention_mask=full_mask,
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
            )
            hidden.append(out.last_hidden_state[:, :lmax].reshape(-1, x.shape[-1]))
    hidden = torch.cat(hidden, dim=0)
    head_rows, targets, target_cand, lengths = _targets_from_grid(cands, width, list(range(B)), B, lmax)
    logp = _head_logprobs(
        backbone, hidden, torch.tensor(head_rows, device=dev), torch.tensor(targets, device=dev)
    )
    return logp, torch.tensor(target_cand, device=dev), lengths, width


def _seq2seq(backbone: Backbone, embeds: list[torch.Tensor], cands: list[list[list[int]]]):
    """Encode once; the decoder start token's caches are computed once and repeated over candidates."""
    from transformers import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    dev = embeds[0].device
    model = backbone.base_model
    B, P = len(embeds), max(e.shape[0] for e in embeds)
    x = torch.nn.utils.rnn.pad_sequence(embeds, batch_first=True)  # [B, P, d], right-padded
    mask = torch.zeros(B, P, dtype=torch.long, device=dev)
    for b, e in enumerate(embeds):
        mask[b, : e.shape[0]] = 1
    grid, width, lmax = _pad_candidates(cands, backbone.tokenizer.pad_token_id)
    start = torch.full((B, 1), model.config.decoder_start_token_id, dtype=torch.long, device=dev)
    with backbone.autocast():
        enc = model.get_encoder()(inputs_embeds=x, attention_mask=mask).last_hidden_state  # [B, P, d]
        cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
        first = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=enc),
            attention_mask=mask,
            decoder_input_ids=start,
            past_key_values=cache,
            use_cache=True,
        ).logits[:, 0]  # [B, V]
        logits = [first]
        if lmax > 0:
            cache.batch_repeat_interleave(width)
            rest = model(
                encoder_outputs=BaseModelOutput(last_hidden_state=enc.repeat_interleave(width, 0)),
                attention_mask=mask.repeat_interleave(width, 0),
                decoder_input_ids=grid.to(dev),
                past_key_values=cache,
                use_cache=True,
            ).logits[:, :lmax]  # [B*width, lmax, V]
            logits.append(rest.reshape(-1, rest.shape[-1]))
    logits = torch.cat(logits, dim=0).float()
    head_rows, targets, target_cand, lengths = _targets_from_grid(cands, width, list(range(B)), B, lmax)
    rows, tgt = torch.tensor(head_rows, device=dev), torch.tensor(targets, device=dev)
    logp = torch.log_softmax(logits, dim=-1)[rows, tgt]
    return logp, torch.tensor(target_cand, device=dev), lengths, width


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def rank_candidates(
    backbone: Backbone,
    prompts: Sequence[EncodedPrompt | str],
    candidate_titles: Sequence[Sequence[str]] | None = None,
    *,
    soft_prompt: torch.Tensor | None = None,
    normalize: str = "mean",
    batch_size: int = 8,
    mode: str = "packed",
    progress: bool = False,
    prefixes: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Scores [num_prompts, max_candidates] (higher is better; -inf pads shorter candidate lists).

    ``candidate_titles[i]`` are scored after ``prompts[i]``; ``None`` takes each prompt's own
    ``candidates`` (the titles as the prompt shows them: pass those, not raw data titles).
    ``soft_prompt`` [K, hidden] (or [num_prompts, K, hidden]) fills every prompt's slot; gradients
    reach it, and any trainable (e.g. LoRA) parameters of ``backbone.model``, unless the caller
    runs under ``torch.no_grad()``. The backbone's autocast is applied here.

    ``prefixes`` (``prefix_states`` of the same prompts) replaces each prompt's text before its soft-prompt
    slot by its cached keys and values (causal models, packed mode, prompts with a slot): the same scores,
    for the cost of what follows the slot.

    A per-layer ``soft_prompt`` [layers, 2, kv_heads, K, head_dim] (``is_layer_prompt``) is read by every layer
    as the keys and values of the slot's K positions, after the cached text before it (computed here when
    ``prefixes`` is None, which needs a frozen model: the cache carries no gradient).
    """
    if normalize not in NORMALIZE:
        raise ConfigError(f"normalize: expected one of {list(NORMALIZE)}, got {normalize!r}")
    if mode not in MODES:
        raise ConfigError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size: expected an integer >= 1, got {batch_size}")
    soft_prompt = _check_soft_prompt(backbone, soft_prompt, len(prompts))
    encoded = _as_prompts(backbone, prompts, soft_prompt)
    titles = _candidate_lists(encoded, candidate_titles)
    n = len(encoded)
    if n == 0:
        return torch.empty(0, 0, device=backbone.device)
    layered = is_layer_prompt(soft_prompt)
    if layered and prefixes is None:
        if any(p.requires_grad for p in backbone.model.parameters()):
            raise ConfigError("soft_prompt: a per-layer prompt over a model with trainable parameters needs the text "
                              "before the slot run with them (not supported); train the prompt with the model frozen")  # fmt: skip
        prefixes = prefix_states(backbone, encoded, batch_size=batch_size)
    if prefixes is not None:
        _check_prefixes(backbone, encoded, prefixes, mode)
    if layered:  # the slot's keys and values join each prompt's cached prefix; the rows start after the slot
        prefixes = [torch.cat([k, soft_prompt.to(k.dtype)], dim=3) for k in prefixes]
    cand_ids = [answer_token_ids(backbone, p, c) for p, c in zip(encoded, titles, strict=True)]
    width = max(len(c) for c in titles)
    # Longest first: batches of similar length waste little padding.
    cost = [encoded[i].num_tokens + sum(len(t) for t in cand_ids[i]) for i in range(n)]
    order = sorted(range(n), key=lambda i: -cost[i])
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="scoring", unit="batch")
    if backbone.family == "seq2seq":
        scorer = _seq2seq
    else:
        scorer = _causal_packed if mode == "packed" else _causal_cache
    pieces = []
    for idx in batches:
        cands = [cand_ids[i] for i in idx]
        if prefixes is None:
            embeds = [prompt_embeddings(backbone, encoded[i], _soft_for(soft_prompt, i)) for i in idx]
            out = scorer(backbone, embeds, cands)
        else:
            embeds = [after_slot_embeddings(backbone, encoded[i], None if layered else _soft_for(soft_prompt, i))
                      for i in idx]  # fmt: skip
            out = _causal_packed(backbone, embeds, cands, [prefixes[i] for i in idx])
        pieces.append(_scores_block(*out, [len(c) for c in cands], width, normalize))
    return _unsort(torch.cat(pieces, dim=0), order)


def _scores_block(logp: torch.Tensor, target_cand: torch.Tensor, lengths: list[int], w: int, counts: list[int],
                  width: int, normalize: str) -> torch.Tensor:  # fmt: skip
    """[B, width] scores of one batch from its target tokens' log-probabilities (-inf past each prompt's
    ``counts`` candidates)."""
    sums = torch.zeros(len(counts) * w, device=logp.device, dtype=logp.dtype).index_add(0, target_cand, logp)
    cand_index = torch.tensor([b * w + ci for b, c in enumerate(counts) for ci in range(c)], device=logp.device)
    lens = torch.tensor(lengths, device=logp.device, dtype=logp.dtype)
    block = _finish(sums[cand_index], lens, cand_index, len(counts), w, normalize)
    return F.pad(block, (0, width - w), value=float("-inf"))


def _unsort(scores: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Rows scored in ``order`` back in the callers' order."""
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return scores[inverse.to(scores.device)]


def _check_prefixes(backbone: Backbone, prompts: list[EncodedPrompt], prefixes: Sequence[torch.Tensor], mode: str) -> None:
    if backbone.family != "causal" or mode != "packed":
        raise ConfigError("prefixes: cached prefixes need a causal model and mode='packed'")
    if len(prefixes) != len(prompts):
        raise ConfigError(f"prefixes: {len(prefixes)} cached prefixes for {len(prompts)} prompts")
    for i, (p, k) in enumerate(zip(prompts, prefixes, strict=True)):
        if not p.num_soft_tokens:
            raise ConfigError(f"prompts[{i}]: a cached prefix needs a prompt with a soft-prompt slot")
        if k.dim() != 5 or k.shape[3] != len(p.before_ids):
            raise ConfigError(f"prefixes[{i}]: shape {tuple(k.shape)} does not hold the {len(p.before_ids)} tokens "
                              "before the prompt's slot (prefix_states of another prompt?)")  # fmt: skip


def _soft_for(soft_prompt: torch.Tensor | None, i: int) -> torch.Tensor | None:
    if soft_prompt is None:
        return None
    return soft_prompt[i] if soft_prompt.dim() == 3 else soft_prompt


def _candidate_lists(
    prompts: list[EncodedPrompt], candidate_titles: Sequence[Sequence[str]] | None
) -> list[list[str]]:
    if candidate_titles is None:
        titles = [list(p.candidates) for p in prompts]
    else:
        if len(candidate_titles) != len(prompts):
            raise ConfigError(f"candidate_titles: {len(candidate_titles)} lists for {len(prompts)} prompts")
        titles = [list(c) for c in candidate_titles]
        for i, (p, c) in enumerate(zip(prompts, titles, strict=True)):
            if p.head == "index" and tuple(c) != p.candidates:
                raise ConfigError(f"candidate_titles[{i}]: an index-head prompt scores its own listed letters "
                                  f"{list(p.candidates)}; pass candidate_titles=None")  # fmt: skip
    for i, c in enumerate(titles):
        if not c:
            raise DataError(
                f"candidate_titles[{i}]: empty candidate list; every prompt needs at least one candidate"
            )
    return titles


def rank_candidates_naive(
    backbone: Backbone,
    prompts: Sequence[EncodedPrompt | str],
    candidate_titles: Sequence[Sequence[str]] | None = None,
    *,
    soft_prompt: torch.Tensor | None = None,
    normalize: str = "mean",
) -> torch.Tensor:
    """Reference scorer: one full forward pass per (prompt, candidate), float32, no shared prefix."""
    if normalize not in NORMALIZE:
        raise ConfigError(f"normalize: expected one of {list(NORMALIZE)}, got {normalize!r}")
    if is_layer_prompt(soft_prompt):
        raise ConfigError("rank_candidates_naive: input-layer soft prompts only (a per-layer prompt needs a cache)")
    soft_prompt = _check_soft_prompt(backbone, soft_prompt, len(prompts))
    encoded = _as_prompts(backbone, prompts, soft_prompt)
    titles = _candidate_lists(encoded, candidate_titles)
    model = backbone.model
    dev = backbone.input_embeddings.weight.device
    width = max((len(c) for c in titles), default=0)
    scores = torch.full((len(encoded), width), float("-inf"), device=dev)
    for i, (prompt, cands) in enumerate(zip(encoded, titles, strict=True)):
        e = prompt_embeddings(backbone, prompt, _soft_for(soft_prompt, i))  # [p, d]
        p = e.shape[0]
        for c, t in enumerate(answer_token_ids(backbone, prompt, cands)):
            target = torch.tensor(t, device=dev)
            if backbone.family == "seq2seq":
                start = [model.config.decoder_start_token_id]
                dec = torch.tensor([start + t[:-1]], device=dev)
                logits = model(inputs_embeds=e[None], decoder_input_ids=dec).logits[0]  # [L, V]
            else:
                x = torch.cat([e, backbone.input_embeddings(target[:-1])])[None]  # [1, p + L - 1, d]
                logits = model(inputs_embeds=x).logits[0, p - 1 :]  # [L, V]: rows predicting the candidate
            logp = torch.log_softmax(logits.float(), dim=-1).gather(1, target[:, None])[:, 0]
            scores[i, c] = logp.mean() if normalize == "mean" else logp.sum()
    return scores
