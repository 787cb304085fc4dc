"""LLM-SRec's variants as methods of the study (``delrec_lib.methods``).

Items are ranked by the inner product of the user vector with every item vector, so the full catalogue
costs one pass of the item prompts per loaded method (cached) plus one user prompt per user. Every
variant is compared with its teacher, popularity, DELRec's variants and LoRA; an ablation also with the
main ``llm-srec``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..artifacts import artifact_id
from ..config import LLMSREC, RunConfig
from ..methods import Capabilities, Curve, MethodContext, MethodFamily, Recommender
from .stage import Prompts, Scorer, check_trained, load_trained, stage_inputs


class LLMSRecRecommender(Recommender):
    kind = "llm"
    capabilities = Capabilities(full_catalogue=True)

    def __init__(self, name: str, scorer: Scorer, num_items: int):
        self.name = name
        self.scorer = scorer
        self.num_items = num_items
        self._table: torch.Tensor | None = None
        self._last: tuple[tuple, torch.Tensor] | None = None  # the evaluation asks score() and score_catalogue() alike

    def visible_history(self, history: Sequence[int]) -> int:
        return min(len(history), self.scorer.prompts.cfg.history_len)

    def item_table(self) -> torch.Tensor:
        """[N+1, D] item vectors (row 0, the padding id, zero), computed once."""
        if self._table is None:
            items = self.scorer.items(range(1, self.num_items + 1), progress=True)
            self._table = torch.cat([torch.zeros(1, items.shape[1]), items.cpu()])
        return self._table

    def user_vectors(self, users, histories, progress: bool = False) -> torch.Tensor:
        key = (tuple(int(u) for u in users), tuple(tuple(int(i) for i in h) for h in histories))
        if self._last is None or self._last[0] != key:
            self._last = (key, self.scorer.users(users, histories, progress=progress).cpu())
        return self._last[1]

    def score_catalogue(self, users, histories, *, progress=False) -> np.ndarray:
        table = self.item_table()
        u = self.user_vectors(users, histories, progress)
        scores = (u @ table.T).double().numpy()
        scores[:, 0] = -np.inf
        return scores

    def score(self, users, histories, candidates, *, progress=False) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        if self._table is not None:  # the catalogue's vectors are there already
            full = self.score_catalogue(users, histories, progress=progress)
            return np.take_along_axis(full, candidates, axis=1)
        # Only the candidates' item vectors (the order diagnostic needs no more); the same numbers.
        distinct, inverse = np.unique(candidates, return_inverse=True)
        items = self.scorer.items(distinct.tolist())  # [I, D]
        u = self.user_vectors(users, histories, progress)  # [U, D]
        cand = items[torch.as_tensor(inverse.reshape(candidates.shape))]  # [U, C, D]
        return torch.einsum("ud,ucd->uc", u, cand).double().numpy()


class LLMSRecFamily(MethodFamily):
    def names(self, config: RunConfig) -> list[str]:
        return list(config.llmsrec.variants)

    def identity(self, ctx: MethodContext, name: str) -> dict[str, str]:
        manifest = check_trained(ctx.config, ctx.paths, ctx.data, ctx.backbone, name)
        return {**stage_inputs(ctx.data, ctx.paths, ctx.backbone, ctx.config.llmsrec.teacher), "model": artifact_id(manifest)}

    def load(self, ctx: MethodContext, name: str) -> Recommender:
        model, _ = load_trained(ctx.config, ctx.paths, ctx.data, ctx.backbone, name)
        prompts = Prompts(ctx.backbone, ctx.data, ctx.config.llmsrec, ctx.config.llm.title_style)
        return LLMSRecRecommender(name, Scorer(model, prompts, ctx.config.llmsrec.eval_batch_size), ctx.data.num_items)

    def comparisons(self, config: RunConfig, name: str) -> list[str]:
        others = [config.llmsrec.teacher, "popularity", *(v for v in config.finetune.variants if v.startswith("delrec-")), "lora"]
        return others + ([LLMSREC] if name != LLMSREC else [])

    def teacher_in(self, config: RunConfig, name: str) -> str | None:
        return config.llmsrec.teacher

    def curves(self, ctx: MethodContext) -> list[Curve]:
        out = []
        metric = ctx.config.llmsrec.select_metric
        for name in self.names(ctx.config):
            f = ctx.paths.llmsrec / name / "history.csv"
            if f.is_file():
                out.append(Curve("05 LLM-SRec", name, pd.read_csv(f), "step", metric, f"valid {metric} (candidates)"))
        return out
