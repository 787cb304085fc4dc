"""Caser (Tang & Wang, "Personalized Top-N Sequential Recommendation via Convolutional Sequence
Embedding", WSDM 2018), following the authors' reference implementation.

The latest ``window`` (L) items form an L x d "image". Horizontal filters of heights 1..L slide
over it (union-level patterns, max-pooled over time); vertical filters weight the L rows
(point-level patterns). Their concatenation -> dropout -> fully connected -> ReLU gives z, which
is concatenated with the user's embedding P_u; scores are [z, P_u] . W_i + b_i.
Training (the paper's formulation): every train position t with at least one item before it is
a sample, the window is the L items before t (left-padded), the labels are the next T train items.
Shapes: B batch, L window, d embedding, N items.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CaserConfig
from .base import SequentialRecommender, TrainBatch


class Caser(SequentialRecommender):
    name = "caser"
    uses_users = True

    def __init__(self, num_items: int, max_len: int, config: CaserConfig, num_users: int = 0):
        super().__init__(num_items, max_len)
        d, L = config.embedding, config.window
        self.window = L
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)  # [N+1, d]
        self.user_emb = nn.Embedding(num_users + 1, d, padding_idx=0)  # [U+1, d]; 0 = unknown user
        self.conv_v = nn.Conv2d(1, config.vertical_filters, (L, 1))  # [B,1,L,d] -> [B,n_v,1,d]
        self.conv_h = nn.ModuleList(nn.Conv2d(1, config.horizontal_filters, (h, d)) for h in range(1, L + 1))
        self.drop = nn.Dropout(config.dropout)
        self.fc1 = nn.Linear(config.vertical_filters * d + config.horizontal_filters * L, d)
        self.out_emb = nn.Embedding(num_items + 1, 2 * d)  # W2: [N+1, 2d]
        self.out_bias = nn.Embedding(num_items + 1, 1)  # b2: [N+1, 1]
        # The reference code's initialisation: embeddings N(0, 1/width), zero bias, PyTorch's
        # defaults for the convolutions and the fully connected layer.
        for emb in (self.item_emb, self.user_emb, self.out_emb):
            nn.init.normal_(emb.weight, std=1.0 / emb.embedding_dim)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            self.user_emb.weight[0].zero_()
        nn.init.zeros_(self.out_bias.weight)

    def history_window(self) -> int:
        return self.window

    def user_representation(self, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        items = items[:, -self.window :]  # [B, L] the latest L items
        if items.shape[1] < self.window:
            items = F.pad(items, (self.window - items.shape[1], 0))
        B = items.shape[0]
        e = self.item_emb(items).unsqueeze(1)  # [B, 1, L, d]
        o_v = self.conv_v(e).view(B, -1)  # [B, n_v * d]
        o_h = [F.relu(conv(e).squeeze(3)).amax(dim=2) for conv in self.conv_h]  # L x [B, n_h]
        z = F.relu(self.fc1(self.drop(torch.cat([o_v, *o_h], dim=1))))  # [B, d]
        if users is None:
            users = torch.zeros(B, dtype=torch.long, device=items.device)
        ones = torch.ones(B, 1, device=z.device, dtype=z.dtype)
        return torch.cat([z, self.user_emb(users), ones], dim=1)  # [B, 2d + 1]; the 1 meets the bias

    def item_embeddings(self) -> torch.Tensor:
        return torch.cat([self.out_emb.weight, self.out_bias.weight], dim=1)  # [N+1, 2d + 1]

    def training_pairs(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_representation(batch.inputs, batch.users), batch.labels  # [B, D], [B, T]
