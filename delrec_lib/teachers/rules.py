"""Rule teachers: synthetic teachers whose top-1 is a rule that can be read from the prompt.

They are the known-answer case of stage 1: a soft prompt that learns a planted rule shows the
mechanism works, whatever it then does with a real teacher. A rule teacher is a ``Scorer`` like any
teacher, exported by the same code into ``teachers/rule-<name>/`` (same files, same manifest kind),
so stage 1 distils it unchanged (``distill.prompts = ["rule-sharedword", ...]``).

``sharedword``: the teacher's first choice is an unwatched movie whose title shares a word with the
most recent of the user's last ``window`` movies that has such a namesake; its other choices share
no word with any of those movies. The title words are read without the year, so the rule is visible
whichever ``llm.title_style`` the prompt uses, provided the prompt shows the ``window`` latest movies
(``teachers.rule_window``; a run whose prompt shows fewer is refused).
Why this rule: it needs the history *and* the candidate (no constant title or list position is its
answer), popularity cannot find it (the namesake is drawn at random among the unwatched ones), and a
language model reads word overlap directly. A title of many words shares one more often, so a namesake
drawn uniformly would be a long title, which "the unlisted candidate with the most title words" finds
(docs/teachers.md); the draw is weighted so that the first choice's number of title words is distributed
as over the catalogue.

``firstword``: the same with a title's first word only ("Star Trek: Generations" -> "star"): the answer
begins the way a recent movie begins, the copying a small language model does most readily (the first
token of a candidate is the one the prompt's end predicts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data import ProcessedData
from ..data.titles import first_word, title_word_counts, title_words
from ..errors import ConfigError
from .evaluation import Scorer

RULE_PREFIX = "rule-"


def is_rule_teacher(name: str) -> bool:
    return name.startswith(RULE_PREFIX)


def rule_name(teacher: str) -> str:
    """"rule-sharedword" -> "sharedword", refused unless it names a known rule."""
    rule = teacher[len(RULE_PREFIX) :] if is_rule_teacher(teacher) else ""
    if rule not in RULES:
        raise ConfigError(f"rule teacher '{teacher}': expected one of {', '.join(RULE_PREFIX + r for r in RULES)}")
    return rule


def sharedword_scorer(data: ProcessedData, seed: int, window: int, words_of=title_words) -> Scorer:
    """Scores [U, N+1]: one of the anchor's namesakes above 4 (the first choice, drawn with title-length weights),
    then the items that share no word with a shown movie in [0, 1), then those that do, below 0; each order a
    seeded draw per user.
    A title's words are ``words_of(title)``: all its words (``sharedword``) or its first (``firstword``)."""
    titles = data.display_titles("no_year")
    words = [frozenset()] + [words_of(t) for t in titles[1:]]
    # Weight of a namesake with n title words: the catalogue's share of n-word titles over the namesakes' share.
    lengths = np.array([0] + title_word_counts(titles[1:]))
    catalogue_share = np.bincount(lengths[1:], minlength=lengths.max() + 1) / data.num_items
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
                if partners:  # one of them, by the user's draw weighted by title length, is the first choice
                    n = lengths[partners]
                    weight = catalogue_share[n] / np.bincount(n, minlength=len(catalogue_share))[n]
                    uniform = out[row, partners] + 2.0  # the user's draw, before the shift of related items
                    key = np.log(uniform) / weight  # weighted sampling (Efraimidis-Spirakis), in logs
                    out[row, partners[int(np.argmax(key))]] += 6.0
                    break
        return out

    return score


def firstword_scorer(data: ProcessedData, seed: int, window: int) -> Scorer:
    return sharedword_scorer(data, seed, window, words_of=first_word)


RULES = {"sharedword": sharedword_scorer, "firstword": firstword_scorer}
RULE_DESCRIPTIONS = {
    "sharedword": "first choice: an unwatched movie whose title shares a word with the user's most recent movie "
    "that has such a namesake (among the last {window} shown), drawn so that long titles are no likelier than in "
    "the catalogue; the other choices share no word with them",
    "firstword": "first choice: an unwatched movie whose title begins with the same word as the user's most recent "
    "movie that has such a namesake (among the last {window} shown), drawn so that long titles are no likelier than "
    "in the catalogue; the other choices begin with none of their first words",
}


def rule_spec(teacher: str, seed: int, window: int, top_k: int, data: ProcessedData) -> dict[str, Any]:
    """Everything that determines a rule teacher's exports (its manifest's config)."""
    rule = rule_name(teacher)
    return {"teacher": teacher, "rule": rule, "window": window, "seed": seed, "top_k": top_k, "num_items": data.num_items,
            "answer_length": "catalogue"}  # the first choice's title length weighted as in the catalogue


def rule_scorer(spec: dict[str, Any], data: ProcessedData) -> Scorer:
    return RULES[spec["rule"]](data, spec["seed"], spec["window"])


def describe_rule(teacher: str, window: int) -> str:
    return RULE_DESCRIPTIONS[rule_name(teacher)].format(window=window)
