"""DELRec's prompt templates, rendered and tokenized within a token budget.

Three tasks, each with a soft-prompt slot ("The recommendation pattern of {teacher} is: <K
vectors>") when the builder has ``num_soft_tokens > 0``, and without it otherwise (zero-shot,
LoRA without stage 1):

- Temporal Analysis (TA, stage 1): an in-context example, then the user's history with its most
  recent item hidden and the teacher's prediction made after that item (from the full history);
  the answer is the hidden item.
- Recommendation Pattern Simulating (RPS, stage 1): the history and the teacher's predictions
  ranked 2..k; the answer is the teacher's top-1, among the teacher's top-k plus random items.
- Recommendation (stage 2 and evaluation): the history; the answer is the next item.

With ``list_candidates`` a template lists its candidates (DELRec's form); without it (the cpu
default) it saves ~6 tokens per candidate, a third of a 20-candidate prompt. Either way the scorer
ranks exactly the prompt's candidate titles (``EncodedPrompt.candidates``).

With ``head = "index"`` (LlamaRec's head) every template lists its candidates as "A. title", in an
order fixed by the candidate set alone (a seeded shuffle of its titles: the caller's order, where the
target may sit first, never shows), and asks for the letter; ``EncodedPrompt.candidates`` are then the
letters, each one token, and the scorer reads their logits at the answer position.

Token budget (every prompt token costs CPU time): the most recent ``history_len`` titles are
kept, titles are cut to ``title_max_tokens``, and when the prompt is still longer than
``max_prompt_tokens`` the OLDEST history titles are dropped first. Causal models with a chat
template get it, with a one-line system message instead of the model's default one.

The slot is the marker ``SOFT_PROMPT_MARKER`` in the rendered text; encoding splits the text
there, and the scorer splices the K soft-prompt vectors between the two parts' embeddings.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..artifacts import sha256_json
from ..config import LLMConfig
from ..data.titles import item_tagged, require_unique, untagged, without_year, year_less_titles
from ..errors import ConfigError, DataError

SOFT_PROMPT_MARKER = "<|soft_prompt|>"
# How templates name each teacher ("The recommendation pattern of SASRec is: ...").
TEACHER_DISPLAY = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "caser": "Caser", "rule-sharedword": "WordMatch",
                   "rule-firstword": "FirstWord"}
SYSTEM_MESSAGE = "You recommend movies."

# Named slots: {history}, {candidates}, {teacher}, {prediction}, {ranked}, {pattern} and the
# in-context example's {example_history}, {example_prediction}, {example_answer}.
# {pattern} is PATTERN_LINE (with the soft-prompt slot) or empty; {candidates} is CANDIDATES_BLOCK
# or empty. The pattern line closes every template, right before the answer: the text after the slot
# is then only the turn's end, so with the text before the slot cached (stage 1, ``distill.cache_prefix``)
# a training step runs the soft prompt, a few tokens and the candidates.
PATTERN_LINE = "\nThe recommendation pattern of {teacher} is:{soft_prompt}"
CANDIDATES_BLOCK = "Candidates:\n{titles}\n"

RECOMMENDATION_TEMPLATE = (
    "Movies the user watched, oldest first:\n{history}\n"
    "{candidates}"
    "Which movie will the user watch next?"
    "{pattern}"
)

TEMPORAL_ANALYSIS_TEMPLATE = (
    "Example. Movies watched, oldest first:\n{example_history}\n"
    "{teacher} predicts next: {example_prediction}\n"
    "Hidden most recent movie: {example_answer}\n\n"
    "Movies the user watched, oldest first, the most recent one hidden:\n{history}\n"
    "{teacher} predicts next: {prediction}\n"
    "{candidates}"
    "Which movie is the hidden most recent one?"
    "{pattern}"
)

PATTERN_SIMULATING_TEMPLATE = (
    "Movies the user watched, oldest first:\n{history}\n"
    "{teacher} also recommends, best first:\n{ranked}\n"
    "{candidates}"
    "Which movie does {teacher} recommend first?"
    "{pattern}"
)

# Plain-text framing for models without a chat template (base causal models, T5).
PLAIN_FRAME = "{system}\n{body}\nAnswer:"
# The index head: letters, a listed candidate's line, and the request for a letter (before the pattern line,
# so that the text after the soft-prompt slot stays the turn's end).
INDEX_LABELS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
INDEX_LINE = "{label}. {title}"
INDEX_INSTRUCTION = " Answer with the letter of one candidate."
LIST_SEPARATOR = "\n"
EMPTY_LIST = "(none)"


def template_hash() -> str:
    """Identity of the prompt format for manifests: changes whenever any template text changes."""
    return sha256_json(
        {
            "version": 2,
            "system": SYSTEM_MESSAGE,
            "marker": SOFT_PROMPT_MARKER,
            "pattern": PATTERN_LINE,
            "candidates": CANDIDATES_BLOCK,
            "recommendation": RECOMMENDATION_TEMPLATE,
            "temporal_analysis": TEMPORAL_ANALYSIS_TEMPLATE,
            "pattern_simulating": PATTERN_SIMULATING_TEMPLATE,
            "plain": PLAIN_FRAME,
            "separator": LIST_SEPARATOR,
            "empty": EMPTY_LIST,
        }
    )


@dataclass(frozen=True)
class EncodedPrompt:
    """A tokenized prompt, split at its soft-prompt slot.

    The model input is ``embed(before_ids) ++ soft_prompt[K] ++ embed(after_ids)``. Without a
    slot, ``after_ids`` is empty and ``num_soft_tokens`` is 0.
    """

    before_ids: tuple[int, ...]
    after_ids: tuple[int, ...]
    num_soft_tokens: int
    candidates: tuple[str, ...]  # what the scorer scores, in the caller's candidate order: titles, or letters (index head)
    text: str  # the rendered text, the slot shown as SOFT_PROMPT_MARKER
    history_shown: int = 0  # history titles kept after truncation
    head: str = "title"  # "index": ``candidates`` are one-token letters, scored at the answer position only
    shown: tuple[str, ...] = ()  # the candidates' titles as shown, in the caller's order
    listed_at: tuple[int, ...] = ()  # index head: each candidate's position in the listing (0 = "A")

    @property
    def num_tokens(self) -> int:
        return len(self.before_ids) + self.num_soft_tokens + len(self.after_ids)


@dataclass(frozen=True)
class TemporalExample:
    """The in-context example of a TA prompt: a history, the teacher's prediction, the hidden item."""

    history: Sequence[str]
    prediction: str
    answer: str


def _most_recent(titles: list[str], n: int) -> list[str]:
    return titles[-n:] if n > 0 else []


def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Tokens the tokenizer adds around a text on its own (BOS before, EOS after for T5)."""
    probe = "movie"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    return [], []


class PromptBuilder:
    """Renders DELRec prompts for one backbone and encodes them within the configured budget.

    ``num_soft_tokens`` (K) > 0 puts the soft-prompt slot in every template and counts K tokens
    against ``max_prompt_tokens``.
    """

    def __init__(
        self,
        backbone: Any,
        config: LLMConfig | None = None,
        *,
        num_soft_tokens: int = 0,
        catalogue: Sequence[str] | None = None,
    ) -> None:
        config = config or LLMConfig()
        if num_soft_tokens < 0:
            raise ConfigError(f"num_soft_tokens: expected an integer >= 0, got {num_soft_tokens}")
        self.tokenizer = backbone.tokenizer
        self.family = backbone.family
        self.chat = bool(backbone.uses_chat_template)
        self.config = config
        self.num_soft_tokens = num_soft_tokens
        self.max_prompt_tokens = config.max_prompt_tokens
        # A causal prompt and its longest candidate must fit in the model's positions.
        model_config = getattr(getattr(backbone, "model", None), "config", None)
        n_positions = (
            getattr(model_config, "max_position_embeddings", None) if self.family == "causal" else None
        )
        if isinstance(n_positions, int):
            longest_answer = config.title_max_tokens + len(getattr(backbone, "answer_end_ids", ()))
            self.max_prompt_tokens = min(self.max_prompt_tokens, n_positions - longest_answer)
        self._affixes = ([], []) if self.chat else _special_affixes(self.tokenizer)
        self._titles: dict[str, str] = {}  # title as given -> as shown
        self._shown_as: dict[str, str] = {}  # as shown -> title as given: no two items shown alike
        self._catalogued = catalogue is not None
        if catalogue is not None:
            self._show_catalogue(catalogue)
        self.head = config.head
        if self.head == "index":
            self._check_labels(backbone)

    def _check_labels(self, backbone: Any) -> None:
        """The index head reads one logit per candidate: every letter must be one token where an answer starts."""
        for label in INDEX_LABELS:
            ids = self.tokenizer(label, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ConfigError(
                    f"llm.head='index': the letter {label!r} is {len(ids)} tokens ({ids}) in the tokenizer of backbone "
                    f"{getattr(backbone, 'name', '?')!r}; the index head needs one-token labels (use llm.head='title')"
                )

    def fingerprint(self) -> str:
        """Identity of what this builder renders, for manifests: templates plus every setting used."""
        c = self.config
        return sha256_json(
            {
                "templates": template_hash(),
            "titles": 2,  # how catalogue titles are cut (2: an item tag is never cut)
                "chat": self.chat,
                "num_soft_tokens": self.num_soft_tokens,
                "max_prompt_tokens": self.max_prompt_tokens,
                "settings": [
                    c.history_len,
                    c.example_history_len,
                    c.title_max_tokens,
                    c.title_style,
                    c.list_candidates,
                ],
                # Only a non-default head enters: the title head's fingerprint, and the runs made under it, stay valid.
                **({"head": [c.head, INDEX_LABELS, INDEX_LINE, INDEX_INSTRUCTION]} if c.head != "title" else {}),
            }
        )

    # ---- titles -----------------------------------------------------------------------------

    # Why the builder is given the catalogue (``ProcessedData.titles``, indexed by item id) rather
    # than styling one title at a time: the processed titles are unique with their year, but
    # dropping the year ("Cape Fear (1962)", "Cape Fear (1991)") or cutting a title to
    # ``title_max_tokens`` can make two items read alike, and whether a title can lose its year
    # or its tail depends on every other title. With the catalogue the builder decides that once,
    # for all items, with the data step's own rule (``year_less_titles``, so prompts show the
    # processed ``title_no_year`` column), and tells cut titles apart by their item id. Without
    # it (unit tests, benchmarks on a title sample) titles are styled one by one and two titles
    # shown alike are refused. The fingerprint leaves the catalogue out: the titles are part of
    # the processed data, whose id every artifact records.

    def _cut(self, text: str, budget: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= budget:
            return text
        # A cut inside a multi-byte character decodes to U+FFFD; drop it.
        return self.tokenizer.decode(ids[:budget]).replace("\ufffd", "").strip()

    def _cut_tagged(self, text: str, item_id: int) -> str:
        """``text`` cut so that it still fits the budget with its item tag, "<cut> [item 12]"."""
        budget = self.config.title_max_tokens
        for keep in range(budget - 1, 0, -1):
            shown = item_tagged(self._cut(untagged(text), keep), item_id)
            if len(self.tokenizer(shown, add_special_tokens=False)["input_ids"]) <= budget:
                return shown
        raise ConfigError(
            f"llm.title_max_tokens={budget} is too small to tell item {item_id} ({text!r}) apart from another "
            "title cut to the same text; raise llm.title_max_tokens"
        )

    def _show_catalogue(self, catalogue: Sequence[str]) -> None:
        ids = [i for i, t in enumerate(catalogue) if t]  # index 0 is the padding slot
        given = [" ".join(str(catalogue[i]).split()) for i in ids]
        require_unique(given, ids)
        styled = year_less_titles(given, ids) if self.config.title_style == "no_year" else given
        shown = [self._cut(t, self.config.title_max_tokens) for t in styled]
        counts = Counter(shown)
        # A title cut alike to another, or one carrying the data's item tag, is cut before its tag, kept whole.
        shown = [self._cut_tagged(t, i) if counts[c] > 1 or (untagged(t) != t and c != t) else c
                 for t, c, i in zip(styled, shown, ids, strict=True)]  # fmt: skip
        for i, raw, text in zip(ids, (catalogue[i] for i in ids), shown, strict=True):
            if text in self._shown_as:
                raise ConfigError(
                    f"llm.title_max_tokens={self.config.title_max_tokens}: {raw!r} (item {i}) and "
                    f"{self._shown_as[text]!r} are both shown as {text!r}; raise llm.title_max_tokens"
                )
            self._titles[raw] = text
            self._shown_as[text] = raw

    def title(self, raw: str) -> str:
        """A title as prompts show it and the scorer scores it: year per style, cut to the budget,
        unique among the titles this builder shows."""
        if raw in self._titles:
            return self._titles[raw]
        if self._catalogued:
            raise DataError(f"title {raw!r} is not in the catalogue this prompt builder was given")
        text = " ".join(str(raw).split())
        if self.config.title_style == "no_year":
            text = without_year(text)
        text = self._cut(text, self.config.title_max_tokens)
        other = self._shown_as.get(text)
        if other is not None and other != raw:
            raise DataError(
                f"titles {other!r} and {raw!r} are both shown as {text!r} (llm.title_style={self.config.title_style!r}, "
                f"llm.title_max_tokens={self.config.title_max_tokens}); give the prompt builder the catalogue "
                "(catalogue=data.titles), which tells them apart"
            )
        self._titles[raw] = text
        self._shown_as[text] = raw
        return text

    def titles(self, raws: Sequence[str]) -> list[str]:
        return [self.title(t) for t in raws]

    # ---- tasks ------------------------------------------------------------------------------

    def recommendation(
        self, history: Sequence[str], candidates: Sequence[str], *, teacher: str | None = None, ordering: int = 0
    ) -> EncodedPrompt:
        """Stage 2 / evaluation: which candidate will the user watch next? (``ordering``: which of the index head's
        listing orders; 0 is the candidate set's own.)"""
        fields = {"candidates": candidates}
        return self._build(RECOMMENDATION_TEMPLATE, history, fields, teacher=teacher, ordering=ordering)

    def temporal_analysis(
        self,
        history: Sequence[str],
        prediction: str,
        candidates: Sequence[str],
        *,
        teacher: str,
        example: TemporalExample,
    ) -> EncodedPrompt:
        """TA: ``history`` must already exclude the hidden most recent item (it is among the candidates)."""
        fields = {
            "candidates": candidates,
            "prediction": self.title(prediction),
            "example_history": example.history,
            "example_prediction": self.title(example.prediction),
            "example_answer": self.title(example.answer),
        }
        return self._build(TEMPORAL_ANALYSIS_TEMPLATE, history, fields, teacher=teacher)

    def pattern_simulating(
        self,
        history: Sequence[str],
        teacher_ranked: Sequence[str],
        candidates: Sequence[str],
        *,
        teacher: str,
    ) -> EncodedPrompt:
        """RPS: ``teacher_ranked`` are the teacher's predictions ranked 2..k, best first."""
        fields = {"candidates": candidates, "ranked": self._list(self.titles(teacher_ranked))}
        return self._build(PATTERN_SIMULATING_TEMPLATE, history, fields, teacher=teacher)

    # ---- rendering and encoding -------------------------------------------------------------

    def _list(self, titles: Sequence[str]) -> str:
        return LIST_SEPARATOR.join(titles) if titles else EMPTY_LIST

    def render(self, body: str) -> str:
        """The full model input text around a template body (chat template or plain frame)."""
        if self.chat:
            messages = [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": body}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        text = PLAIN_FRAME.format(system=SYSTEM_MESSAGE, body=body)
        # A causal answer starts on its own line, tokenized as the scorer tokenizes a bare title.
        return text + "\n" if self.family == "causal" else text

    def encode(self, text: str, candidates: Sequence[str] = (), history_shown: int = 0) -> EncodedPrompt:
        """Tokenize rendered text, splitting it at the soft-prompt marker."""
        parts = text.split(SOFT_PROMPT_MARKER)
        if len(parts) > 2:
            raise ConfigError(f"prompt: the soft-prompt marker {SOFT_PROMPT_MARKER} appears more than once")
        has_slot = len(parts) == 2
        if has_slot != (self.num_soft_tokens > 0):
            raise ConfigError(
                f"prompt: {'has' if has_slot else 'has no'} soft-prompt slot but the builder has "
                f"num_soft_tokens={self.num_soft_tokens}"
            )
        prefix, suffix = self._affixes
        before = self.tokenizer(parts[0], add_special_tokens=False)["input_ids"]
        after = self.tokenizer(parts[1], add_special_tokens=False)["input_ids"] if has_slot else []
        if has_slot:
            before, after = prefix + before, after + suffix
        else:
            before = prefix + before + suffix
        return EncodedPrompt(
            before_ids=tuple(before),
            after_ids=tuple(after),
            num_soft_tokens=self.num_soft_tokens,
            candidates=tuple(candidates),
            text=text,
            history_shown=history_shown,
        )

    def listing_order(self, shown: Sequence[str], ordering: int = 0) -> list[int]:
        """The index head's listing: candidate indices in the order listed. A seeded shuffle of the candidate
        set's titles (their sorted list and ``ordering`` make the seed), so the caller's order never shows."""
        seed = int(sha256_json({"titles": sorted(shown), "ordering": ordering})[:16], 16)
        ranks = sorted(range(len(shown)), key=lambda i: shown[i])
        perm = np.random.default_rng(seed).permutation(len(shown))
        return [ranks[j] for j in perm]

    def _build(
        self, template: str, history: Sequence[str], fields: dict[str, Any], *, teacher: str | None, ordering: int = 0
    ) -> EncodedPrompt:
        candidates = self.titles(fields.pop("candidates"))
        if not candidates:
            raise DataError("candidates: empty candidate list; every prompt needs at least one candidate")
        index = self.head == "index"
        listed_at: list[int] = []
        if index:
            if len(candidates) > len(INDEX_LABELS):
                raise DataError(f"candidates: {len(candidates)} candidates, but llm.head='index' has "
                                f"{len(INDEX_LABELS)} letters to list them under")  # fmt: skip
            listing = self.listing_order(candidates, ordering)
            listed_at = [0] * len(candidates)
            for j, i in enumerate(listing):
                listed_at[i] = j
            listed = LIST_SEPARATOR.join(INDEX_LINE.format(label=INDEX_LABELS[j], title=candidates[i])
                                         for j, i in enumerate(listing))  # fmt: skip
        if self.num_soft_tokens > 0 and not teacher:
            raise ConfigError(
                "teacher: a prompt with a soft-prompt slot names the teacher whose pattern it holds"
            )
        pattern = (
            PATTERN_LINE.format(teacher=teacher, soft_prompt=SOFT_PROMPT_MARKER)
            if self.num_soft_tokens
            else ""
        )
        if index:
            pattern = INDEX_INSTRUCTION + pattern
        history = _most_recent(self.titles(history), self.config.history_len)
        example = fields.pop("example_history", None)
        if example is not None:
            example = _most_recent(self.titles(example), self.config.example_history_len)

        def encode_with(kept: list[str], example_kept: list[str] | None) -> EncodedPrompt:
            values = dict(fields, teacher=teacher or "", pattern=pattern)
            values["history"] = self._list(kept)
            if index:
                values["candidates"] = CANDIDATES_BLOCK.format(titles=listed)
            else:
                values["candidates"] = (
                    CANDIDATES_BLOCK.format(titles=self._list(candidates)) if self.config.list_candidates else ""
                )
            if example_kept is not None:
                values["example_history"] = self._list(example_kept)
            prompt = self.encode(self.render(template.format(**values)), candidates, len(kept))
            if not index:
                return dataclasses.replace(prompt, shown=tuple(candidates))
            return dataclasses.replace(prompt, head="index", candidates=tuple(INDEX_LABELS[j] for j in listed_at),
                                       shown=tuple(candidates), listed_at=tuple(listed_at))  # fmt: skip

        # Drop the oldest titles first: the user's history, then the in-context example's.
        prompt = encode_with(history, example)
        while prompt.num_tokens > self.max_prompt_tokens and history:
            history = history[1:]
            prompt = encode_with(history, example)
        while prompt.num_tokens > self.max_prompt_tokens and example:
            example = example[1:]
            prompt = encode_with(history, example)
        if prompt.num_tokens > self.max_prompt_tokens:
            raise ConfigError(
                f"prompt needs {prompt.num_tokens} tokens with an empty history ({self.num_soft_tokens} soft-prompt "
                f"tokens and {len(candidates)} candidates included) but the limit is {self.max_prompt_tokens} "
                "(llm.max_prompt_tokens); raise it, or lower llm.title_max_tokens or the number of candidates"
            )
        return prompt


def encode_text(
    backbone: Any, text: str, candidates: Sequence[str] = (), *, num_soft_tokens: int = 0
) -> EncodedPrompt:
    """Encode an already rendered prompt text as is (no template, no truncation)."""
    return PromptBuilder(backbone, num_soft_tokens=num_soft_tokens).encode(text, candidates)


def prompt_format_id(backbone: Any, config: LLMConfig, num_soft_tokens: int = 0) -> str:
    """Identity of how prompts are rendered for this backbone and config (for manifests): a soft
    prompt or an adapter trained under one format is refused under another."""
    return PromptBuilder(backbone, config, num_soft_tokens=num_soft_tokens).fingerprint()
