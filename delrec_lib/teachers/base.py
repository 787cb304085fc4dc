"""The interface every teacher implements, and the batches they train on.

A teacher reads a user's history as a left-padded row of item ids ``[B, L]`` (0 = padding, the
most recent item in the last column) and, for Caser, the user ids ``[B]``. It exposes:

- ``user_representation(items, users) -> [B, D]``: the state after the whole history;
- ``item_embeddings() -> [N+1, D]``: the output item table (row 0 is the padding id);
- ``score(items, users) -> [B, N+1]``: next-item scores, exactly ``user_rep @ item_emb.T``;
- ``training_pairs(batch) -> (hidden [M, D], labels [M, T])``: the representations of a training
  batch that have labels (T of them, 0 = none; T = 1 except for Caser), scored against the same
  table by the loss.

so the loss, the evaluation and the exports are written once, for every model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TrainBatch:
    """One micro-batch. ``inputs`` [B, L] left-padded item ids; ``labels`` [B, L'] with 0 = no label.

    Sequence models (SASRec, GRU4Rec): L' = L and ``labels[b, t]`` is the item that follows
    ``inputs[b, :t+1]``. Caser: ``inputs`` is a window of the latest items and ``labels`` its
    next ``targets`` items. ``users`` [B] are the user ids every row belongs to.
    """

    users: torch.Tensor
    inputs: torch.Tensor
    labels: torch.Tensor


class SequentialRecommender(nn.Module):
    """Base class of the teachers (see the module docstring)."""

    name: str = ""
    uses_users: bool = False  # Caser conditions on the user id; the others only on the history

    def __init__(self, num_items: int, max_len: int):
        super().__init__()
        self.num_items = num_items
        self.max_len = max_len

    # -- to implement -------------------------------------------------------------------------
    def forward(self, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence models: hidden state after every position, [B, L, D] (causal)."""
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def history_window(self) -> int:
        """How many of the latest history items the model reads (Caser: its window)."""
        return self.max_len

    def user_representation(self, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward(items, users)[:, -1]  # left padding: the latest item is the last column

    def score(self, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return self.user_representation(items, users) @ self.item_embeddings().T

    def training_pairs(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.forward(batch.inputs, batch.users)  # [B, L, D]
        keep = batch.labels > 0  # only labelled positions reach the (costly) output layer
        return hidden[keep], batch.labels[keep][:, None]  # [M, D], [M, 1]

    def init_weights(self, std: float = 0.02) -> None:
        """Normal(0, std) linear/embedding weights, zero biases, unit LayerNorm, zero padding row."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
                if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def left_pad(rows: list[list[int]] | list, length: int) -> torch.Tensor:
    """The last ``length`` items of each row, left-padded with 0: [B, length] int64."""
    out = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        tail = list(row)[-length:] if length > 0 else []
        if tail:
            out[i, length - len(tail) :] = torch.as_tensor(tail, dtype=torch.long)
    return out
