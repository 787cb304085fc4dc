"""A teacher as a ``TrainingTask`` of the shared training loop: batches, loss, validation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data import ProcessedData
from ..metrics import per_user_metrics
from ..training import TrainingTask
from .base import SequentialRecommender, TrainBatch, left_pad
from .batches import Examples
from .evaluation import history_mask

VALID_METRICS = ("NDCG@10", "HR@10", "MRR")


def next_item_loss(
    model: SequentialRecommender, batch: TrainBatch, loss: str = "ce", negatives: int = 1
) -> tuple[torch.Tensor, int]:
    """Mean loss over the labels of a batch, and how many labels there were.

    ``ce``: softmax cross-entropy over the whole catalogue (padding id excluded); a representation
    with several labels (Caser's T targets) shares one softmax.
    ``bce``: the original SASRec objective, binary cross-entropy of each label against
    ``negatives`` items drawn uniformly from the other items (torch's RNG, so resumable).
    """
    hidden, labels = model.training_pairs(batch)  # [M, D], [M, T]
    table = model.item_embeddings()  # [N+1, D]
    keep = labels > 0
    if loss == "ce":
        logp = (hidden @ table[1:].T).log_softmax(-1)  # [M, N]
        nll = -logp.gather(1, (labels - 1).clamp(min=0))  # [M, T]
        return nll[keep].mean(), int(keep.sum())
    rows, pos = keep.nonzero()[:, 0], labels[keep]  # one entry per label
    h = hidden[rows]  # [P, D]
    n = model.num_items
    neg = torch.randint(1, n, (len(pos), negatives), device=pos.device)  # 1 .. n-1
    neg = neg + (neg >= pos[:, None]).long()  # uniform over the n-1 items other than the label
    pos_logit = (h * table[pos]).sum(-1)  # [P]
    neg_logit = torch.einsum("pd,pkd->pk", h, table[neg])  # [P, K]
    value = F.softplus(-pos_logit) + F.softplus(neg_logit).sum(-1)
    return value.mean(), len(pos)


class TeacherTask(TrainingTask):
    """Trains ``model`` on precomputed ``examples``; validates by full ranking of the valid targets."""

    def __init__(self, model: SequentialRecommender, examples: Examples, data: ProcessedData,
                 loss: str = "ce", negatives: int = 1, eval_batch_size: int = 512):  # fmt: skip
        self.model = model
        self.examples = examples
        self.loss = loss
        self.negatives = negatives
        self.eval_batch_size = eval_batch_size
        # The valid split's inputs, computed once: histories = train items, targets = valid targets.
        self.valid_users = data.user_ids()
        histories = [data.history(int(u), "valid") for u in self.valid_users]
        self.valid_items = left_pad(histories, model.max_len)
        self.valid_targets = np.array([data.target(int(u), "valid") for u in self.valid_users], dtype=np.int64)
        self.valid_mask = history_mask(histories, data.num_items)

    def trainable_module(self) -> torch.nn.Module:
        return self.model

    def num_examples(self) -> int:
        return len(self.examples)

    def make_batch(self, indices: Sequence[int]) -> TrainBatch:
        return self.examples.batch(indices)

    def training_loss(self, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        value, _ = next_item_loss(self.model, batch, self.loss, self.negatives)
        return value, {}

    @torch.no_grad()
    def valid_scores(self) -> np.ndarray:
        model, out = self.model, []
        for i in range(0, len(self.valid_users), self.eval_batch_size):
            items = self.valid_items[i : i + self.eval_batch_size]
            users = torch.from_numpy(self.valid_users[i : i + self.eval_batch_size]) if model.uses_users else None
            out.append(model.score(items, users).float().numpy())
        return np.concatenate(out)

    def evaluate(self) -> dict[str, float]:
        per_user = per_user_metrics(self.valid_scores(), self.valid_targets, self.valid_mask)
        return {m: float(per_user[m].mean()) for m in VALID_METRICS}
