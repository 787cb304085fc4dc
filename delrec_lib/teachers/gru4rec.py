"""GRU4Rec (Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR
2016) as RecBole applies it to user sequences: item embeddings -> dropout -> GRU -> linear back
to the embedding width; scores by dot product with the same item embeddings. Trained at every
position of a window at once (the GRU is causal by construction).
Shapes: B batch, L window, E embedding width, H GRU width, N items.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..config import GRU4RecConfig
from .base import SequentialRecommender


class GRU4Rec(SequentialRecommender):
    name = "gru4rec"

    def __init__(self, num_items: int, max_len: int, config: GRU4RecConfig, num_users: int = 0):
        super().__init__(num_items, max_len)
        self.item_emb = nn.Embedding(num_items + 1, config.embedding, padding_idx=0)  # [N+1, E]
        self.drop = nn.Dropout(config.dropout)
        self.gru = nn.GRU(config.embedding, config.hidden, num_layers=config.layers, batch_first=True)
        self.dense = nn.Linear(config.hidden, config.embedding)  # [H] -> [E]
        self.init_weights()
        for name, p in self.gru.named_parameters():  # RecBole: xavier for the GRU weights
            if "weight" in name:
                nn.init.xavier_uniform_(p)

    def forward(self, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        B, L = items.shape  # left-padded ids
        lengths = (items > 0).sum(1).clamp(min=1)  # [B]
        # The GRU must start at each row's first item, not run over its padding: shift every row
        # to the left (right padding), run the packed GRU, and shift the outputs back.
        cols = torch.arange(L, device=items.device)
        shift = (cols[None, :] + (L - lengths)[:, None]) % L  # [B, L]
        x = self.drop(self.item_emb(items.gather(1, shift)))  # [B, L, E], right-padded
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=L)  # [B, L, H]
        back = (cols[None, :] - (L - lengths)[:, None]) % L
        out = out.gather(1, back[:, :, None].expand(-1, -1, out.shape[-1]))  # left-padded again
        return self.dense(out)  # [B, L, E]

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight  # [N+1, E]
