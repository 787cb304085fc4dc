"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018), nanoGPT style.

A GPT over item ids: item + learned position embeddings, pre-LayerNorm transformer blocks with
causal self-attention, a final LayerNorm, and scores by dot product with the (shared) item
embeddings. It predicts at every position of a window at once, which is how the paper trains it.
Shapes: B batch, L window (max_len), D hidden, N items.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SASRecConfig
from .base import SequentialRecommender


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        assert d % heads == 0, "hidden must be divisible by heads"
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x [B, L, D]
        q, k, v = (t.view(B, L, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))  # [B, H, L, D/H]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, L, D)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class SASRec(SequentialRecommender):
    name = "sasrec"

    def __init__(self, num_items: int, max_len: int, config: SASRecConfig, num_users: int = 0):
        super().__init__(num_items, max_len)
        d = config.hidden
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)  # [N+1, D], row 0 = padding
        self.pos_emb = nn.Embedding(max_len, d)  # [L, D]; the latest item is always position L-1
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(d, config.heads, config.dropout) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(d)
        self.init_weights()

    def forward(self, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        B, L = items.shape  # left-padded ids, L <= max_len
        pos = torch.arange(self.max_len - L, self.max_len, device=items.device)  # right-aligned positions
        x = self.item_emb(items) * math.sqrt(self.item_emb.embedding_dim) + self.pos_emb(pos)  # [B, L, D]
        x = self.drop(x * (items > 0).unsqueeze(-1))  # padding stays zero
        # query i attends to keys j <= i that are items; a padding query attends to itself only
        causal = torch.ones(L, L, dtype=torch.bool, device=items.device).tril()
        keys = (items > 0)[:, None, None, :] | torch.eye(L, dtype=torch.bool, device=items.device)
        mask = causal & keys  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)  # [B, L, D]

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight  # [N+1, D]
