"""LLM-SRec's trainable parts around a frozen LLM, and the prompts they fill.

Two prompts, as the authors' code writes them (movies instead of purchases):

    user: This user has watched a series of movies in the following order: Item No.1, Time: 1997-09-20,
          "Toy Story"[HistoryEmb],Item No.2, ... . Based on this sequence of movies, generate user
          representation token:[UserOut]
    item: The item title and item embedding are as follows: "Toy Story"[HistoryEmb], then generate item
          representation token:[ItemOut]

Each [HistoryEmb] input vector is f_I(e_i), the teacher's item embedding projected to the LLM's width;
[UserOut] and [ItemOut] are two learnable input vectors. A prompt's representation is the LLM's last
hidden state (after the final norm) at its output slot, then f_user or f_item maps it to the shared
``output_dim`` space, and f_CF maps the teacher's user representation there too. Shapes: B prompts,
T tokens, d the LLM's width, d_t the teacher's, D = output_dim.

The text between slots is tokenized piece by piece, so a slot is exactly one position (the authors add
the slot names as special tokens, which splits the text at the same places) and the backbone's
vocabulary and identity stay untouched.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..llm.scoring import continue_prefixes, token_prefix_states

HISTORY_SLOT, USER_SLOT, ITEM_SLOT = "[HistoryEmb]", "[UserOut]", "[ItemOut]"
USER_HEAD = "This user has watched a series of movies in the following order: "
USER_ITEM = {"date": 'Item No.{k}, Time: {time}, "{title}"' + HISTORY_SLOT, "none": 'Item No.{k}, "{title}"' + HISTORY_SLOT}
USER_TAIL = ". Based on this sequence of movies, generate user representation token:" + USER_SLOT
ITEM_TEMPLATE = 'The item title and item embedding are as follows: "{title}"' + HISTORY_SLOT + ", then generate item representation token:" + ITEM_SLOT
_SLOTS = re.compile(r"(\[HistoryEmb\]|\[UserOut\]|\[ItemOut\])")


def format_time(seconds: int) -> str:
    """A timestamp (seconds, UTC) as the authors print it: 1997-09-20."""
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC).strftime("%Y-%m-%d")


def user_prompt_text(titles: Sequence[str], times: Sequence[int] | None) -> str:
    """The user prompt for history titles (oldest first) and, when times are shown, their timestamps."""
    style = "none" if times is None else "date"
    items = [USER_ITEM[style].format(k=k + 1, title=t, time=format_time(times[k]) if times is not None else "")
             for k, t in enumerate(titles)]  # fmt: skip
    return USER_HEAD + ",".join(items) + USER_TAIL


def item_prompt_text(title: str) -> str:
    return ITEM_TEMPLATE.format(title=title)


@dataclass(frozen=True)
class SlotPrompt:
    """A tokenized prompt: ``ids`` with a placeholder where a slot is, the positions of its
    [HistoryEmb] slots (one per ``items`` entry, in order) and of its output slot (the last token)."""

    text: str
    ids: tuple[int, ...]
    history_positions: tuple[int, ...]
    items: tuple[int, ...]
    output_position: int


def encode_slots(tokenizer, text: str, items: Sequence[int], pad_id: int) -> SlotPrompt:
    """Tokenize ``text`` between its slots; each [HistoryEmb] takes the next of ``items``."""
    pieces = _SLOTS.split(text)
    texts = [p for p in pieces[::2]]
    encoded = tokenizer([t for t in texts if t], add_special_tokens=False)["input_ids"] if any(texts) else []
    it = iter(encoded)
    ids: list[int] = []
    hist: list[int] = []
    out = -1
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if piece:
                ids += list(next(it))
        else:
            if piece == HISTORY_SLOT:
                hist.append(len(ids))
            elif out >= 0:
                raise ConfigError(f"LLM-SRec prompt has two output slots: {text!r}")
            else:
                out = len(ids)
            ids.append(pad_id)  # replaced by a vector before the forward pass
    if out != len(ids) - 1:
        raise ConfigError(f"LLM-SRec prompt must end with its output slot: {text!r}")
    if len(hist) != len(items):
        raise ConfigError(f"LLM-SRec prompt has {len(hist)} history slots for {len(items)} items")
    return SlotPrompt(text, tuple(ids), tuple(hist), tuple(int(i) for i in items), out)


def _mlp(d_in: int, d_hidden: int, d_out: int, act: nn.Module) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(d_in, d_hidden), nn.LayerNorm(d_hidden), act, nn.Linear(d_hidden, d_out))
    nn.init.xavier_normal_(net[0].weight)  # the authors' initialisation
    nn.init.xavier_normal_(net[3].weight)
    return net


def uniformity(x: torch.Tensor) -> torch.Tensor:
    """mean over pairs of exp(-2 ||x_i - x_j||^2) (Wang & Isola's uniformity, t = 2); 0 for one row."""
    if x.shape[0] < 2:
        return x.sum() * 0.0
    return torch.pdist(x, p=2).pow(2).mul(-2).exp().mean()


class LLMSRec(nn.Module):
    """The trainable parts: f_I, f_user, f_item, f_CF and the [UserOut]/[ItemOut] vectors. The backbone
    (frozen) and the teacher's item table (a buffer, not saved) are attached, not owned."""

    def __init__(self, backbone, teacher_items: torch.Tensor, *, head_width: int = 2048, output_dim: int = 128,
                 cache_prefix: bool = True):  # fmt: skip
        super().__init__()
        self.backbone = backbone  # not an nn.Module attribute of ours: never saved, never trained
        # The frozen LLM's keys/values of each item prompt's text before its embedding slot (the same at every
        # step and evaluation: nothing trainable comes before it), computed at its first use. Causal models only.
        self.cache_prefix = cache_prefix and backbone.family == "causal"
        self._item_prefixes: dict[tuple[int, ...], torch.Tensor] = {}
        d, d_t = backbone.hidden_size, int(teacher_items.shape[1])
        self.register_buffer("teacher_items", teacher_items.detach().float().clone(), persistent=False)  # [N+1, d_t]
        self.item_proj = _mlp(d_t, d, d, nn.LeakyReLU())  # f_I
        self.user_head = _mlp(d, head_width, output_dim, nn.LeakyReLU())  # f_user
        self.item_head = _mlp(d, head_width, output_dim, nn.LeakyReLU())  # f_item
        self.cf_head = _mlp(d_t, output_dim, output_dim, nn.GELU())  # f_CF
        table = backbone.input_embeddings.weight
        mean, std = float(table.mean()), float(table.std())
        self.user_token = nn.Parameter(torch.randn(d) * std + mean)  # [UserOut]
        self.item_token = nn.Parameter(torch.randn(d) * std + mean)  # [ItemOut]

    def hidden_at_output(self, prompts: Sequence[SlotPrompt], token: torch.Tensor,
                         prefixes: Sequence[torch.Tensor] | None = None) -> torch.Tensor:  # fmt: skip
        """[B, d] float32: the last layer's hidden state at each prompt's output slot.

        With ``prefixes`` (``token_prefix_states`` of each prompt's ids before its first slot) only the rest
        of each prompt runs, continuing its cached prefix: the same states for a fraction of the tokens.
        """
        bb = self.backbone
        dev = bb.input_embeddings.weight.device
        start = [0] * len(prompts) if prefixes is None else [int(k.shape[3]) for k in prefixes]
        B, T = len(prompts), max(len(p.ids) - s for p, s in zip(prompts, start, strict=True))
        ids = torch.full((B, T), bb.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        for b, (p, s) in enumerate(zip(prompts, start, strict=True)):  # right padding: the output slot ends each row
            ids[b, : len(p.ids) - s] = torch.tensor(p.ids[s:])
            mask[b, : len(p.ids) - s] = 1
        x = bb.input_embeddings(ids.to(dev)).float()  # [B, T, d], frozen
        rows = torch.tensor([b for b, p in enumerate(prompts) for _ in p.items], dtype=torch.long, device=dev)
        cols = torch.tensor([c - s for p, s in zip(prompts, start, strict=True) for c in p.history_positions],
                            dtype=torch.long, device=dev)  # fmt: skip
        items = torch.tensor([i for p in prompts for i in p.items], dtype=torch.long, device=dev)
        if len(items):
            x = x.index_put((rows, cols), self.item_proj(self.teacher_items[items]))  # [M, d] into the slots
        out = torch.tensor([p.output_position - s for p, s in zip(prompts, start, strict=True)], dtype=torch.long, device=dev)
        x = x.index_put((torch.arange(B, device=dev), out), token.expand(B, -1))
        with bb.autocast():
            if prefixes is not None:
                h = continue_prefixes(bb, x, [len(p.ids) - s for p, s in zip(prompts, start, strict=True)], prefixes)
            elif bb.family == "seq2seq":  # an encoder-decoder (the paper preset's T5): its encoder's last layer
                h = bb.base_model.get_encoder()(inputs_embeds=x, attention_mask=mask.to(dev)).last_hidden_state
            else:
                h = bb.base_model.base_model(inputs_embeds=x, attention_mask=mask.to(dev), use_cache=False).last_hidden_state
        return h[torch.arange(B, device=dev), out].float()

    def user_vectors(self, prompts: Sequence[SlotPrompt]) -> torch.Tensor:
        """[B, D] f_user(h_u), not normalised (L_ret and ranking use it as it is)."""
        return self.user_head(self.hidden_at_output(prompts, self.user_token))

    def item_vectors(self, prompts: Sequence[SlotPrompt]) -> torch.Tensor:
        """[B, D] f_item(h_i)."""
        return self.item_head(self.hidden_at_output(prompts, self.item_token, self.item_prefixes(prompts)))

    def item_prefixes(self, prompts: Sequence[SlotPrompt]) -> list[torch.Tensor] | None:
        """The cached keys/values of each item prompt's text before its embedding slot (None: not cached);
        missing ones are computed here, in batches of the prompts' own order (``prepare_item_prefixes`` fixes
        that order up front where exact reproducibility matters: training)."""
        if not self.cache_prefix or any(not p.history_positions or not p.history_positions[0] for p in prompts):
            return None
        self.prepare_item_prefixes(prompts)
        return [self._item_prefixes[tuple(p.ids[: p.history_positions[0]])] for p in prompts]

    def prepare_item_prefixes(self, prompts: Sequence[SlotPrompt], batch_size: int = 16) -> None:
        """Compute the item prefixes of ``prompts`` not cached yet, in their order. Training calls it once with
        every item it will read, sorted: the batches (hence the float rounding) never depend on which items a
        step happened to need first, so an interrupted training resumes to the same numbers."""
        if not self.cache_prefix:
            return
        keys = [tuple(p.ids[: p.history_positions[0]]) for p in prompts if p.history_positions and p.history_positions[0]]
        missing = list(dict.fromkeys(k for k in keys if k not in self._item_prefixes))
        if missing:
            self._item_prefixes.update(zip(missing, token_prefix_states(self.backbone, missing, batch_size=batch_size),
                                           strict=True))  # fmt: skip

    def teacher_vectors(self, teacher_reps: torch.Tensor) -> torch.Tensor:
        """[B, D] f_CF(o_u) for the teacher's user representations o_u [B, d_t]."""
        return self.cf_head(teacher_reps.float())


def losses(user: torch.Tensor, items: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three losses of one batch. user [B, D]; items [B, C, D], the target first; teacher [B, D] = f_CF(o_u).

    L_ret: cross-entropy of the target among its candidates by dot product; L_dist: MSE between the
    L2-normalised user and teacher vectors (mean over all B x D elements, as torch's MSELoss); L_unif: the
    uniformity of the normalised user vectors plus that of the normalised teacher vectors.
    """
    logits = torch.einsum("bd,bcd->bc", user, items)  # [B, C]
    ret = F.cross_entropy(logits, torch.zeros(len(user), dtype=torch.long, device=user.device))
    u, t = F.normalize(user, dim=1), F.normalize(teacher, dim=1)
    return {"ret": ret, "dist": F.mse_loss(u, t), "unif": uniformity(u) + uniformity(t)}
