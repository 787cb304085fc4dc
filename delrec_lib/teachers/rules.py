"""Rule teachers: synthetic teachers whose top-1 is a rule that can be read from the prompt.

They are the known-answer case of stage 1: a soft prompt that learns a planted rule shows the
mechanism works, whatever it then does with a real teacher. A rule teacher is a ``Scorer`` like any
teacher, exported by the same code into ``teachers/rule-<name>/`` (same files, same manifest kind),
so stage 1 distils it unchanged (``distill.prompts = ["rule-sharedword", ...]``).

``sharedword``: the teacher's first choice is an unwatched movie whose title shares a word with the
most recent of the user's last ``window`` movies that has such a namesake; its other choices share
no word with any of those movies. The title words are read without the year, so the rule is visible
whichever ``llm.title_style`` the prompt uses, provided the prompt shows the ``window`` latest movies.
Why this rule: it needs the history *and* the candidate (no constant title or list position is its
answer), popularity cannot find it (the namesake is drawn uniformly among the unwatched ones), and a
language model reads word overlap directly.

``firstword``: the same with a title's first word only ("Star Trek: Generations" -> "star"): the answer
begins the way a recent movie begins, the copying a small language model does most readily (the first
token of a candidate is the one the prompt's end predicts).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data import ProcessedData
from ..data.titles import untagged, without_year
from ..errors import ConfigError
from .evaluation import Scorer

RULE_PREFIX = "rule-"
# The latest movies a rule reads; stage 1 refuses a prompt that shows fewer (``llm.history_len``).
RULE_WINDOW = 10
# Short function words carry no title identity: "The Man in the Moon" shares nothing with "The Net".
STOPWORDS = frozenset(
    "the a an and or of in on to for with from at by is it its my me you your his her our their "
    "be are was this that not no les la le il der die das el los las de du des un une".split()
)


def title_words(title: str) -> frozenset[str]:
    """Lower-case words of at least three letters or digits that are not function words, read without the
    year and the item tag that tell same-named titles apart ("Cape Fear (1991) [item 7]" -> {"cape", "fear"})."""
    name = without_year(untagged(title))
    return frozenset(w for w in re.findall(r"[a-z0-9']+", name.lower()) if len(w) >= 3 and w not in STOPWORDS)


def is_rule_teacher(name: str) -> bool:
    return name.startswith(RULE_PREFIX)


def rule_name(teacher: str) -> str:
    """"rule-sharedword" -> "sharedword", refused unless it names a known rule."""
    rule = teacher[len(RULE_PREFIX) :] if is_rule_teacher(teacher) else ""
    if rule not in RULES:
        raise ConfigError(f"rule teacher '{teacher}': expected one of {', '.join(RULE_PREFIX + r for r in RULES)}")
    return rule


def first_word(title: str) -> frozenset[str]:
    """The first of ``title_words`` in reading order, as a set of one (empty for a title with none):
    "Star Trek: Generations (1994)" -> {"star"}."""
    name = without_year(untagged(title))
    words = [w for w in re.findall(r"[a-z0-9']+", name.lower()) if len(w) >= 3 and w not in STOPWORDS]
    return frozenset(words[:1])


def sharedword_scorer(data: ProcessedData, seed: int, window: int, words_of=title_words) -> Scorer:
    """Scores [U, N+1]: one of the anchor's namesakes above 4 (the first choice), then the items that share
    no word with a shown movie in [0, 1), then those that do, below 0; each order a seeded draw per user.
    A title's words are ``words_of(title)``: all its words (``sharedword``) or its first (``firstword``)."""
    words = [frozenset()] + [words_of(t) for t in data.display_titles("no_year")[1:]]
    by_word: dict[str, set[int]] = {}
    for item, ws in enumerate(words):
        for w in ws:
            by_word.setdefault(w, set()).add(item)

    def namesakes(item: int) -> set[int]:
        return set().union(*(by_word[w] for w in words[item])) - {item} if words[item] else set()

    def score(users: np.ndarray, histories: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.empty((len(users), data.num_items + 1), dtype=np.float32)
        for row, (user, history) in enumerate(zip(users, histories, strict=True)):
            out[row] = np.random.default_rng([seed, int(user)]).random(data.num_items + 1)
            seen = set(int(i) for i in history)
            shown = [int(i) for i in history[-window:]]
            related = set().union(*(namesakes(i) for i in shown)) - seen if shown else set()
            out[row, sorted(related)] -= 2.0
            for anchor in reversed(shown):
                partners = sorted(namesakes(anchor) - seen)
                if partners:  # one of them, by the user's draw, is the first choice
                    out[row, partners[int(np.argmax(out[row, partners]))]] += 6.0
                    break
        return out

    return score


def firstword_scorer(data: ProcessedData, seed: int, window: int) -> Scorer:
    return sharedword_scorer(data, seed, window, words_of=first_word)


RULES = {"sharedword": sharedword_scorer, "firstword": firstword_scorer}
RULE_DESCRIPTIONS = {
    "sharedword": "first choice: an unwatched movie whose title shares a word with the user's most recent movie "
    "that has such a namesake (among the last {window} shown); the other choices share no word with them",
    "firstword": "first choice: an unwatched movie whose title begins with the same word as the user's most recent "
    "movie that has such a namesake (among the last {window} shown); the other choices begin with none of their "
    "first words",
}


def rule_spec(teacher: str, seed: int, window: int, top_k: int, data: ProcessedData) -> dict[str, Any]:
    """Everything that determines a rule teacher's exports (its manifest's config)."""
    rule = rule_name(teacher)
    return {"teacher": teacher, "rule": rule, "window": window, "seed": seed, "top_k": top_k, "num_items": data.num_items}


def rule_scorer(spec: dict[str, Any], data: ProcessedData) -> Scorer:
    return RULES[spec["rule"]](data, spec["seed"], spec["window"])


def describe_rule(teacher: str, window: int) -> str:
    return RULE_DESCRIPTIONS[rule_name(teacher)].format(window=window)
