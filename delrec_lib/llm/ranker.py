"""An LLM ranking a user's candidates with the recommendation template, and the zero-shot method.

``LLMRanker`` renders the recommendation prompt (history titles, an optional frozen soft prompt,
optionally the candidates listed) and ranks the candidates by the likelihood of their titles
(``scoring.rank_candidates``). Stage 2 trains through it, and every LLM method of the study that
ranks this way (zero-shot, ``lora``, ``delrec-<prompt>``) is an ``LLMRecommender`` around one.

It also generates: greedy decoding after the same prompt with the candidates listed, for the
LLaRA-style protocol of the evaluation notebook.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..artifacts import sha256_json
from ..config import LLMConfig, RunConfig
from ..data.processed import ProcessedData
from ..errors import ConfigError
from ..methods import Capabilities, Generations, MethodContext, MethodFamily, Recommender
from ..metrics import per_user_frame
from .prompts import INDEX_LABELS, EncodedPrompt, PromptBuilder, prompt_format_id
from .scoring import (
    PackedRow,
    layer_split_supported,
    lower_states,
    prompt_embeddings,
    rank_candidates,
    rank_rows,
)

ZERO_SHOT = "zero-shot"


@dataclass(frozen=True)
class RecExample:
    """A recommendation example in item ids: which of ``candidates`` comes after ``history``.

    ``label`` indexes ``candidates`` (-1 when unknown: ranking needs no label)."""

    user_id: int
    history: tuple[int, ...]
    candidates: tuple[int, ...]
    label: int = -1

    @property
    def target(self) -> int:
        return self.candidates[self.label]


def split_examples(data: ProcessedData, split: str, users: list[int]) -> list[RecExample]:
    """The shared candidate sets of ``split`` for ``users`` (history = the split's history)."""
    sets = data.candidate_sets(split).set_index("user_id")
    out = []
    for uid in users:
        row = sets.loc[uid]
        out.append(RecExample(int(uid), tuple(data.history(uid, split)), tuple(int(c) for c in row["candidates"]),
                              int(row["target_position"])))  # fmt: skip
    return out


class LLMRanker:
    """Ranks recommendation examples with a (possibly peft-wrapped) backbone and an optional frozen soft prompt.

    ``frozen_below`` > 0 says that layers below it are the backbone's own, never trained (stage 2 with LoRA on
    the upper layers only): each example's hidden states entering that layer are computed once and kept, and
    every later scoring of the example runs only the layers above (``scoring.lower_states`` / ``rank_rows``).
    Rankers whose lower layers read a prompt alike (the zero-shot LLM and every LoRA variant without a soft
    prompt; the variants sharing a soft prompt) may share one ``shared_rows`` store: ``share_key`` names what
    the stored states depend on besides the prompt (the backbone, the soft prompt).
    """

    def __init__(self, backbone, llm_config: LLMConfig, titles: list[str], soft_prompt: torch.Tensor | None,
                 teacher: str | None, *, frozen_below: int = 0, shared_rows: dict | None = None,
                 share_key: tuple = (), rows_batch_size: int = 1):  # fmt: skip
        self.backbone = backbone
        self.frozen_below = frozen_below
        self._rows: dict[tuple, PackedRow] = {} if shared_rows is None else shared_rows
        self._share_key = share_key
        # 1 (training): a state never depends on its batch-mates, so a resumed training computes the same
        # states as an uninterrupted one, bit for bit; evaluation batches them.
        self.rows_batch_size = rows_batch_size
        self.llm = llm_config
        self.titles = titles
        self.soft = None if soft_prompt is None else soft_prompt.detach()
        k = 0 if soft_prompt is None else int(soft_prompt.shape[0])
        self.builder = PromptBuilder(backbone, llm_config, num_soft_tokens=k, catalogue=titles)
        self.teacher = teacher
        self._prompts: dict[tuple, EncodedPrompt] = {}
        self._row_prefix = (*share_key, frozen_below, self.builder.fingerprint(), teacher)

    def _key(self, ex: RecExample, ordering: int = 0) -> tuple:
        return ex.user_id, ex.history[-self.llm.history_len :] if self.llm.history_len else (), ex.candidates, ordering

    def prompt(self, ex: RecExample, ordering: int = 0) -> EncodedPrompt:
        key = self._key(ex, ordering)
        if key not in self._prompts:
            t = self.titles
            self._prompts[key] = self.builder.recommendation([t[i] for i in ex.history], [t[i] for i in ex.candidates],
                                                             teacher=self.teacher, ordering=ordering)  # fmt: skip
        return self._prompts[key]

    @property
    def orderings(self) -> int:
        """Listing orders each example is scored under (index head; the title head lists in one order or none)."""
        return self.llm.index_orderings if self.llm.head == "index" else 1

    def scores(self, examples: list[RecExample], progress: bool = False) -> torch.Tensor:
        """[examples, candidates]; with ``llm.index_orderings`` = k > 1 the mean over k listing orders."""
        total = None
        for ordering in range(self.orderings):
            if self.frozen_below:
                s = rank_rows(self.backbone, self.rows(examples, progress, ordering), normalize=self.llm.normalize,
                              batch_size=self.llm.score_batch_size, progress=progress)  # fmt: skip
            else:
                s = rank_candidates(self.backbone, [self.prompt(e, ordering) for e in examples], soft_prompt=self.soft,
                                    normalize=self.llm.normalize, batch_size=self.llm.score_batch_size, progress=progress)  # fmt: skip
            total = s if total is None else total + s
        return total / self.orderings

    def rows(self, examples: list[RecExample], progress: bool = False, ordering: int = 0) -> list[PackedRow]:
        """Each example's hidden states entering layer ``frozen_below``, computed at its first scoring."""
        keys = [(*self._row_prefix, *self._key(e, ordering)) for e in examples]
        missing = list({k: e for k, e in zip(keys, examples, strict=True) if k not in self._rows}.items())
        if missing:
            states = lower_states(self.backbone, [self.prompt(e, ordering) for _, e in missing], None, self.frozen_below,
                                  soft_prompt=self.soft, batch_size=self.rows_batch_size, progress=progress)  # fmt: skip
            self._rows.update({k: r for (k, _), r in zip(missing, states, strict=True)})
        return [self._rows[k] for k in keys]

    def evaluate(self, examples: list[RecExample], progress: bool = False) -> pd.DataFrame:
        """Per-example metrics (one row per user): rank, HR@k, NDCG@k, MRR."""
        with torch.no_grad():
            scores = self.scores(examples, progress).float().cpu().numpy()
        return per_user_frame([e.user_id for e in examples], scores, np.array([e.label for e in examples]))

    def listed(self) -> LLMRanker:
        """The same model and soft prompt with the candidates listed in the prompt, as LLaRA's generation
        protocol needs (a model cannot name a candidate it was not shown)."""
        if self.llm.list_candidates or self.llm.head == "index":
            return self
        # Generation runs the whole model: no lower-layer states.
        return LLMRanker(self.backbone, dataclasses.replace(self.llm, list_candidates=True), self.titles, self.soft,
                         self.teacher)  # fmt: skip

    def generate(self, examples: list[RecExample], *, max_new_tokens: int = 24, batch_size: int = 16) -> list[str]:
        """Greedy generation after each example's prompt (soft prompt spliced in), decoded to text."""
        bb = self.backbone
        tok = bb.tokenizer
        out: list[str] = []
        stop = list(bb.answer_end_ids) + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            embeds = [prompt_embeddings(bb, self.prompt(e), self.soft) for e in batch]
            width = max(e.shape[0] for e in embeds)
            hidden = embeds[0].shape[1]
            inputs = torch.zeros(len(batch), width, hidden, dtype=embeds[0].dtype, device=embeds[0].device)
            mask = torch.zeros(len(batch), width, dtype=torch.long, device=embeds[0].device)
            for i, e in enumerate(embeds):
                if bb.family == "causal":  # left padding: every prompt ends where generation starts
                    inputs[i, width - e.shape[0] :] = e
                    mask[i, width - e.shape[0] :] = 1
                else:
                    inputs[i, : e.shape[0]] = e
                    mask[i, : e.shape[0]] = 1
            with torch.no_grad(), bb.autocast():
                ids = bb.model.generate(inputs_embeds=inputs, attention_mask=mask, max_new_tokens=max_new_tokens,
                                        do_sample=False, eos_token_id=stop, pad_token_id=tok.pad_token_id)  # fmt: skip
            if bb.family == "causal" and ids.shape[1] > max_new_tokens:  # some versions return the prompt too
                ids = ids[:, width:]
            out += [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
        return out


class LLMRecommender(Recommender):
    """An ``LLMRanker`` as a method of the study: scores candidates, generates answers."""

    kind = "llm"
    capabilities = Capabilities(generation=True)

    def __init__(self, name: str, ranker: LLMRanker):
        self.name = name
        self.ranker = ranker

    def visible_history(self, history: Sequence[int]) -> int:
        # The prompt shows the latest history_len titles. (A prompt over llm.max_prompt_tokens drops
        # its oldest titles too; no preset comes near that budget.)
        return min(len(history), self.ranker.llm.history_len)

    def _examples(self, users, histories, candidates) -> list[RecExample]:
        return [RecExample(int(u), tuple(int(i) for i in h), tuple(int(c) for c in cands))
                for u, h, cands in zip(users, histories, np.asarray(candidates), strict=True)]  # fmt: skip

    def score(self, users, histories, candidates, *, progress=False) -> np.ndarray:
        with torch.no_grad():
            scores = self.ranker.scores(self._examples(users, histories, candidates), progress)
        return scores.float().cpu().numpy().astype(np.float64)

    def generate(self, users, histories, candidates, *, max_new_tokens: int) -> Generations:
        listed = self.ranker.listed()
        examples = self._examples(users, histories, candidates)
        answers = listed.generate(examples, max_new_tokens=max_new_tokens)
        prompts = [listed.prompt(e) for e in examples]
        # An index-head answer names a candidate by its letter: matched as the title that letter lists.
        answers = [letter_as_title(p, a) for p, a in zip(prompts, answers, strict=True)]
        return Generations(answers, [list(p.shown) for p in prompts])


def position_bias(ranker: LLMRanker, examples: list[RecExample], scores: np.ndarray | None = None) -> pd.DataFrame:
    """Index head: per listed position ("A", "B", ...), how many examples have their target there, HR@1 on those,
    and the share of all top-1 picks that land there. An unbiased ranker picks every letter about equally often
    and its HR@1 does not depend on where the target is listed. ``scores``: the ranker's, when already computed."""
    if ranker.llm.head != "index":
        raise ConfigError("position_bias: the title head lists no letters (llm.head='title')")
    if scores is None:
        with torch.no_grad():
            scores = ranker.scores(examples).float().cpu().numpy()
    listed = [ranker.prompt(e).listed_at for e in examples]
    picks = [int(np.argmax(s[: len(e.candidates)])) for e, s in zip(examples, scores, strict=True)]
    return position_table([at[e.label] for at, e in zip(listed, examples, strict=True)],
                          [at[p] for at, p in zip(listed, picks, strict=True)], len(examples[0].candidates))  # fmt: skip


def position_table(target_at: Sequence[int], picked_at: Sequence[int], width: int) -> pd.DataFrame:
    """Per listed position: targets there, HR@1 on them, and the share of top-1 picks there."""
    target_at, picked_at = np.asarray(target_at), np.asarray(picked_at)
    rows = []
    for j in range(width):
        here = target_at == j
        rows.append({"position": INDEX_LABELS[j], "targets": int(here.sum()),
                     "HR@1": float((picked_at[here] == j).mean()) if here.any() else float("nan"),
                     "share of picks": float((picked_at == j).mean())})  # fmt: skip
    return pd.DataFrame(rows)


def method_position_bias(ctx: MethodContext, per_user: pd.DataFrame) -> pd.DataFrame:
    """``position_table`` of an evaluated method from its per-user results (``top1``, ``target_position``): where the
    index head listed each user's test target and the method's pick (the listing depends on the candidate set only)."""
    builder = PromptBuilder(ctx.backbone, ctx.config.llm, catalogue=ctx.data.titles)
    sets = ctx.data.candidate_sets("test").set_index("user_id").loc[per_user["user_id"]]
    target_at, picked_at = [], []
    for cands, target, top in zip(sets["candidates"], per_user["target_position"], per_user["top1"], strict=True):
        order = builder.listing_order(builder.titles([ctx.data.titles[int(i)] for i in cands]))
        at = {i: j for j, i in enumerate(order)}
        target_at.append(at[int(target)])
        picked_at.append(at[int(top)])
    return position_table(target_at, picked_at, len(sets["candidates"].iloc[0]))


def letter_as_title(prompt: EncodedPrompt, answer: str) -> str:
    """An index-head answer that starts with a listed letter ("B", "B.", "B) ...") as that candidate's title; any
    other answer (and every title-head answer) as it is."""
    if prompt.head != "index":
        return answer
    head = answer.strip()[:2]
    if head and (len(head) == 1 or not head[1].isalnum()):
        for label, title in zip(prompt.candidates, prompt.shown, strict=True):
            if head[0] == label:
                return title
    return answer


def llm_identity(ctx: MethodContext, num_soft_tokens: int) -> dict[str, str]:
    """What an LLM method's scores depend on besides its trained parts: data, weights, prompt format."""
    return {
        "data": ctx.data.data_id,
        "backbone": ctx.backbone.identity,
        "template": prompt_format_id(ctx.backbone, ctx.config.llm, num_soft_tokens),
        "llm": sha256_json(ctx.config.llm),  # scoring settings (normalisation, dtype, batch) as well
    }


SHARED_ROWS = "llm lower-layer states"


def run_boundary(config: RunConfig, backbone) -> int:
    """The layer below which every stage-2 adapter of this run leaves the backbone as it is
    (``finetune.lora_layers``), when those layers' states may be cached (0: they may not)."""
    cfg = config.finetune
    if cfg.lora_layers is None or not cfg.cache_lower_layers or not layer_split_supported(backbone):
        return 0
    return max(0, int(backbone.base_model.config.num_hidden_layers) - cfg.lora_layers)


def evaluation_ranker(ctx: MethodContext, backbone, soft: torch.Tensor | None, teacher: str | None, frozen_below: int,
                      share_key: tuple) -> LLMRanker:  # fmt: skip
    """A ranker for evaluating a method, whose lower-layer states are shared with the run's other methods
    that read prompts alike through the same layers (``ctx.shared``): the zero-shot LLM and every adapter
    of the upper layers compute the lower layers of a test prompt once between them."""
    return LLMRanker(backbone, ctx.config.llm, ctx.data.titles, soft, teacher, frozen_below=frozen_below,
                     shared_rows=ctx.shared.setdefault(SHARED_ROWS, {}), share_key=(backbone.identity, *share_key),
                     rows_batch_size=ctx.config.llm.score_batch_size)  # fmt: skip


class ZeroShotFamily(MethodFamily):
    """The untouched backbone with the recommendation template: what titles alone give."""

    def names(self, config: RunConfig) -> list[str]:
        return [ZERO_SHOT]

    def identity(self, ctx: MethodContext, name: str) -> dict[str, str]:
        return llm_identity(ctx, 0)

    def load(self, ctx: MethodContext, name: str) -> Recommender:
        boundary = run_boundary(ctx.config, ctx.backbone)
        return LLMRecommender(ZERO_SHOT, evaluation_ranker(ctx, ctx.backbone, None, None, boundary, ("no soft prompt",)))

    def comparisons(self, config: RunConfig, name: str) -> list[str]:
        return ["popularity"]
