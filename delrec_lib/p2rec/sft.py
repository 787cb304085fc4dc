"""P2Rec's information reconstruction: user-level SFT of the LLM, and its item states.

One example per user: the prompt lists the titles of the user's latest train items; the LLM's final
hidden state at the prompt's last token goes through a linear head to K logits, whose softmax must
reconstruct the user's distribution over the latent categories (MSE, or KL). LoRA on the attention
projections and the head are trained through the shared ``Trainer``; the step with the lowest loss on
held-out users (never trained on) is kept.

Information augmentation reads the same prompt with a one-item history: every item's final hidden state
is an "item state" [H]; ``augment.py`` turns them into a teacher's initial item table.
Shapes: B batch, L prompt tokens (right-padded), H LLM hidden size, K categories, N items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..artifacts import sha256_json
from ..errors import ConfigError, DataError
from ..llm import Backbone
from ..llm.prompts import LIST_SEPARATOR, PromptBuilder
from ..phases import phase
from ..training import TrainingTask

# The user-level task's text. The question names no category: the categories are latent, and the head,
# not generated text, reads the answer out of the final hidden state.
PREFERENCE_TEMPLATE = "Movies the user watched, oldest first:\n{history}\nWhich kinds of movies does the user like?"


class PreferencePrompts:
    """Token ids of the preference prompt for a list of item ids (oldest first; the latest
    ``history_len`` are shown), in the kit's prompt style (chat template, title style and length)."""

    def __init__(self, backbone: Backbone, llm_config, titles: Sequence[str], history_len: int):
        self.builder = PromptBuilder(backbone, llm_config, catalogue=titles)
        self.titles = titles
        self.history_len = history_len

    def fingerprint(self) -> str:
        return sha256_json({"template": PREFERENCE_TEMPLATE, "builder": self.builder.fingerprint(),
                            "history_len": self.history_len})  # fmt: skip

    def text(self, items: Sequence[int]) -> str:
        shown = self.builder.titles([self.titles[i] for i in items[-self.history_len :]])
        return self.builder.render(PREFERENCE_TEMPLATE.format(history=LIST_SEPARATOR.join(shown)))

    def ids(self, items: Sequence[int]) -> list[int]:
        items = list(items)[-self.history_len :]
        if not items:
            raise DataError("p2rec: a preference prompt needs at least one item")
        while True:  # over the token budget: drop the oldest titles, as every prompt of the kit does
            ids = list(self.builder.encode(self.text(items)).before_ids)
            if len(ids) <= self.builder.max_prompt_tokens or len(items) == 1:
                return ids
            items = items[1:]


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, L], attention mask [B, L]): rows right-padded, so every real token keeps its position."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def final_hidden(backbone: Backbone, model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, H]: the last layer's (normalised) hidden state at each row's last prompt token, the state the
    LM head would read. Causal models: the trunk without its LM head. Encoder-decoder models: the decoder's
    state at its start token, attending to the encoded prompt."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dev = backbone.device
    ids, mask = ids.to(dev), mask.to(dev)
    if backbone.family == "seq2seq":
        enc = base.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        start = torch.full((ids.shape[0], 1), base.config.decoder_start_token_id, dtype=torch.long, device=dev)
        out = base.get_decoder()(input_ids=start, encoder_hidden_states=enc, encoder_attention_mask=mask, use_cache=False)
        return out.last_hidden_state[:, 0]
    h = base.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # [B, L, H]
    return h[torch.arange(ids.shape[0], device=dev), mask.sum(1) - 1]


class PreferenceModel(nn.Module):
    """The LLM (LoRA-wrapped) and a linear head: prompt -> K category logits.

    The head starts at zero weight and the log of the training users' mean distribution as bias, so the
    untrained model predicts exactly that mean for everyone: the trivial heuristic the SFT must beat.
    """

    def __init__(self, backbone: Backbone, llm, prior: np.ndarray):
        super().__init__()
        self.backbone = backbone
        self.llm = llm
        k = len(prior)
        self.head = nn.Linear(backbone.hidden_size, k)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(torch.log(torch.as_tensor(prior, dtype=torch.float32).clamp(min=1e-6)))

    def states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with self.backbone.autocast():
            return final_hidden(self.backbone, self.llm, ids, mask).float()  # [B, H]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.states(ids, mask))  # [B, K] logits, float32


def preference_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """``mse``: mean squared error between softmax(logits) and the target distribution (over B x K);
    ``kl``: KL(target || softmax(logits)), mean over users."""
    if kind == "mse":
        return F.mse_loss(logits.softmax(-1), target)
    if kind == "kl":
        return F.kl_div(logits.log_softmax(-1), target, reduction="batchmean")
    raise ConfigError(f"p2rec.loss: expected 'mse' or 'kl', got {kind!r}")


def distribution_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Per-user means: MSE (over categories), KL(target || pred), L1 distance, and whether the most
    likely predicted category is the user's most frequent one."""
    pred = np.asarray(pred, np.float64)
    target = np.asarray(target, np.float64)
    safe = np.clip(pred, 1e-12, None)
    kl = np.where(target > 0, target * (np.log(np.clip(target, 1e-12, None)) - np.log(safe)), 0.0).sum(1)
    return {
        "mse": float(((pred - target) ** 2).mean()),
        "kl": float(kl.mean()),
        "l1": float(np.abs(pred - target).sum(1).mean()),
        "top1": float((pred.argmax(1) == target.argmax(1)).mean()),
    }


class PreferenceTask(TrainingTask):
    """The SFT as a ``TrainingTask``: train users' prompts and targets; held-out users' loss selects."""

    def __init__(self, model: PreferenceModel, train_ids: list[list[int]], train_targets: np.ndarray,
                 heldout_ids: list[list[int]], heldout_targets: np.ndarray, loss: str, eval_batch_size: int = 16):  # fmt: skip
        if len(train_ids) != len(train_targets) or len(heldout_ids) != len(heldout_targets):
            raise ValueError("p2rec: one target per prompt")
        self.model = model
        self.train_ids, self.train_targets = train_ids, torch.as_tensor(train_targets, dtype=torch.float32)
        self.heldout_ids, self.heldout_targets = heldout_ids, np.asarray(heldout_targets, np.float32)
        self.loss = loss
        self.eval_batch_size = eval_batch_size
        self.pad_id = int(model.backbone.tokenizer.pad_token_id)

    def trainable_module(self) -> nn.Module:
        return self.model

    def num_examples(self) -> int:
        return len(self.train_ids)

    def make_batch(self, indices):
        ids, mask = pad_right([self.train_ids[i] for i in indices], self.pad_id)
        return ids, mask, self.train_targets[list(indices)]

    def training_loss(self, batch):
        ids, mask, target = batch
        return preference_loss(self.model(ids, mask), target.to(self.model.head.weight.device), self.loss), {}

    @torch.no_grad()
    def predict(self, prompts: list[list[int]]) -> np.ndarray:
        """[U, K] predicted distributions (eval mode is the caller's)."""
        out = []
        for i in range(0, len(prompts), self.eval_batch_size):
            ids, mask = pad_right(prompts[i : i + self.eval_batch_size], self.pad_id)
            out.append(self.model(ids, mask).softmax(-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.heldout_targets.shape[1]), np.float32)

    def evaluate(self) -> dict[str, float]:
        metrics = distribution_metrics(self.predict(self.heldout_ids), self.heldout_targets)
        return {"loss": metrics[self.loss], **metrics}


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix every row shares, leaving each row at least one token of its own."""
    first, n = rows[0], min(len(r) for r in rows) - 1
    for r in rows[1:]:
        n = next((j for j in range(n) if r[j] != first[j]), n)
    return max(n, 0)


def _cached_prefix_states(backbone: Backbone, model, prefix: list[int], rows: list[list[int]]):
    """Returns f(batch of row indices) -> [B, H] that runs the shared ``prefix`` once (its key/value cache
    copied per batch) and only each row's own tokens on top: the same states as the full rows (a causal
    model's prefix does not depend on what follows), at a fraction of the cost for short rows."""
    import copy

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    dev = backbone.device
    with backbone.autocast():
        cache = decoder(input_ids=torch.tensor([prefix], device=dev), use_cache=True).past_key_values
    pad = int(backbone.tokenizer.pad_token_id)

    def run(batch: list[int]) -> torch.Tensor:
        ids, mask = pad_right([rows[i][len(prefix) :] for i in batch], pad)
        ids, mask = ids.to(dev), mask.to(dev)
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(len(batch))
        full_mask = torch.cat([torch.ones(len(batch), len(prefix), dtype=mask.dtype, device=dev), mask], dim=1)
        with backbone.autocast():
            h = decoder(input_ids=ids, attention_mask=full_mask, past_key_values=past, use_cache=True).last_hidden_state
        return h[torch.arange(len(batch), device=dev), mask.sum(1) - 1]

    return run


@phase("item states (every item through the LLM)")
@torch.no_grad()
def item_states(backbone: Backbone, model, prompts: PreferencePrompts, num_items: int, *, batch_size: int = 32,
                progress: bool = False, prefix_cache: bool = True) -> torch.Tensor:  # fmt: skip
    """[N+1, H] float32: each item fed alone (a one-item history) through ``model``; row 0 (padding) is 0.

    Every one-item prompt starts with the same tokens (system message, chat framing, the template's first
    line): on a causal model they run once and their key/value cache is shared (``prefix_cache``), which
    more than halves the cost. Items are batched by prompt length; ``model`` is put in eval mode.
    """
    was_training = model.training
    model.eval()
    ids_of = [prompts.ids([i]) for i in range(1, num_items + 1)]
    order = sorted(range(num_items), key=lambda j: len(ids_of[j]))
    out = torch.zeros(num_items + 1, backbone.hidden_size, dtype=torch.float32)
    pad = int(backbone.tokenizer.pad_token_id)
    shared = common_prefix(ids_of) if prefix_cache and backbone.family == "causal" and num_items > 1 else 0
    if shared:
        states_of = _cached_prefix_states(backbone, model, ids_of[0][:shared], ids_of)
    else:
        def states_of(batch: list[int]) -> torch.Tensor:
            ids, mask = pad_right([ids_of[j] for j in batch], pad)
            with backbone.autocast():
                return final_hidden(backbone, model, ids, mask)

    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="item states", disable=not progress, dynamic_ncols=True):
        out[torch.as_tensor(batch) + 1] = states_of(batch).float().cpu()
    model.train(was_training)
    return out
