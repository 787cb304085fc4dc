"""Rule teachers: the planted rule holds in every export, no constant answer finds it, and stage 1 reads
them like any teacher."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from delrec_lib.config import DistillConfig, LLMConfig, RunConfig, TeachersConfig, parse_prompt_name
from delrec_lib.data.titles import first_word, title_words
from delrec_lib.delrec.distill import read_teacher_topk, teacher_predictions
from delrec_lib.errors import ConfigError
from delrec_lib.teachers.stage import export_popularity, export_rule

from .stage_fixtures import synthetic_data

RULE = "rule-sharedword"
# Each rule teacher with the words of a title it reads: all of them, or the first.
RULES = {RULE: title_words, "rule-firstword": first_word}


def words_of(data, words_fn=title_words):
    return [frozenset()] + [words_fn(t) for t in data.display_titles("no_year")[1:]]


def check_sharedword_rule(data, predictions: dict[int, list[int]], k: int = 5, words_fn=title_words,
                          window: int = TeachersConfig().rule_window) -> int:  # fmt: skip
    """The rule as the notebook states it, checked on a teacher's predictions (train items dropped):
    its top-1 shares a word with the most recent of the ``window`` shown movies that has an unwatched namesake,
    and its ranks 2..k share no word with any shown movie while unwatched movies that share none remain
    (words: ``words_fn``, a title's words or its first). Returns how many users had such a movie."""
    words = words_of(data, words_fn)
    anchored = 0
    for uid, preds in predictions.items():
        train = data.train_items(uid)
        shown = train[-window:]
        anchor = next((a for a in reversed(shown)
                       if any(words[a] & words[i] for i in range(1, data.num_items + 1) if i not in set(train) and i != a)),
                      None)  # fmt: skip
        if anchor is not None:
            anchored += 1
            assert words[preds[0]] & words[anchor], f"user {uid}: top-1 {preds[0]} shares no word with the anchor {anchor}"
        unrelated = [i for i in range(1, data.num_items + 1)
                     if i not in set(train) and not any(words[i] & words[s] for s in shown)]  # fmt: skip
        for item in preds[1 : min(k, 1 + len(unrelated))]:
            assert item in unrelated, f"user {uid}: rank 2..{k} item {item} shares a word with a shown movie"
    return anchored


@pytest.mark.parametrize("rule", RULES)
def test_a_rule_teacher_follows_its_rule_and_no_constant_answer_does(tmp_path, rule):
    data = synthetic_data(tmp_path / "data")
    teachers = TeachersConfig(models=(), rules=(rule,))
    result = export_rule(rule, teachers, data, tmp_path / "teachers")
    assert set(result.metrics) >= {"valid", "test"}  # evaluated like a trained teacher
    topk = read_teacher_topk(tmp_path / "teachers" / rule, data, teachers)
    predictions = teacher_predictions(topk, data)
    check_sharedword_rule(data, predictions, words_fn=RULES[rule])
    # A constant title is the top-1 of few users: a soft prompt cannot pass by memorising one answer.
    top1 = Counter(p[0] for p in predictions.values())
    assert max(top1.values()) <= len(predictions) / 5
    # Same files as every other export (stage 1 and the teaching table read them alike).
    popularity = export_popularity(data, tmp_path / "teachers")
    assert {p.name for p in result.directory.iterdir()} == {p.name for p in popularity.directory.iterdir()} - {"popularity.parquet"}
    # Exported again unchanged: skipped.
    assert export_rule(rule, teachers, data, tmp_path / "teachers").skipped


def test_a_shorter_rule_window_reads_only_the_latest_movies(tmp_path):
    """teachers.rule_window = 2: the first choice is read from the two latest movies and the others share no word with
    those two only (so with older ones, often); a new export, not the 10-movie one."""
    data = synthetic_data(tmp_path / "data")
    short, default = TeachersConfig(models=(), rules=(RULE,), rule_window=2), TeachersConfig(models=(), rules=(RULE,))
    predictions = teacher_predictions(read_teacher_topk(export_rule(RULE, short, data, tmp_path / "t").directory, data, short), data)
    anchored = check_sharedword_rule(data, predictions, window=2)
    assert anchored == len(predictions)  # every toy title has namesakes
    with pytest.raises(AssertionError, match="shares a word with a shown movie"):  # the 10-movie rule's ranks 2..k
        check_sharedword_rule(data, predictions, window=10)
    assert not export_rule(RULE, default, data, tmp_path / "t").skipped


def test_a_prompt_that_shows_fewer_movies_than_the_rule_reads_is_refused():
    teachers = TeachersConfig(rules=(RULE,), rule_window=3)
    with pytest.raises(ConfigError, match=r"llm.history_len \(2\).*'rule-sharedword-rps'.*teachers.rule_window"):
        RunConfig(teachers=teachers, llm=LLMConfig(history_len=2), distill=DistillConfig(prompts=(RULE + "-rps", "sasrec")))
    known = DistillConfig(known_answer=RULE + "-rps", known_answer_history_len=2)
    with pytest.raises(ConfigError, match=r"distill.known_answer_history_len \(2\)"):
        RunConfig(teachers=teachers, distill=known)
    # the known answer's own history suffices even where the run's is shorter; a trained teacher's prompt needs none
    RunConfig(teachers=teachers, llm=LLMConfig(history_len=2),
              distill=DistillConfig(known_answer=RULE + "-rps", known_answer_history_len=3, prompts=("sasrec",)))  # fmt: skip


def test_first_word_reads_the_first_title_word_without_year_tag_or_function_words():
    assert first_word("Star Trek: Generations (1994)") == {"star"}
    assert first_word("The Man in the Moon (1991) [item 7]") == {"man"}
    assert first_word("It (1990)") == frozenset()


@pytest.mark.parametrize("rule", RULES)
def test_the_rule_check_fails_on_a_teacher_that_ignores_the_rule(tmp_path, rule):
    """Companion: random predictions (top-1 unrelated to the history) fail ``check_sharedword_rule``."""
    data = synthetic_data(tmp_path / "data")
    rng = np.random.default_rng(0)
    random_predictions = {}
    for uid in data.user_ids():
        train = set(data.train_items(int(uid)))
        random_predictions[int(uid)] = [int(i) for i in rng.permutation(np.arange(1, data.num_items + 1)) if i not in train]
    with pytest.raises(AssertionError):
        check_sharedword_rule(data, random_predictions, words_fn=RULES[rule])


def test_rule_prompt_names_parse_and_need_the_rule_exported():
    assert parse_prompt_name(RULE) == (RULE, ("ta", "rps"))
    assert parse_prompt_name(RULE + "-rps") == (RULE, ("rps",))
    with pytest.raises(ConfigError, match="rule-nothing"):
        parse_prompt_name("rule-nothing")
    with pytest.raises(ConfigError, match=r"teachers.rules \[\] does not export"):
        RunConfig(distill=DistillConfig(prompts=(RULE + "-rps", "sasrec")))
    RunConfig(teachers=TeachersConfig(rules=(RULE,)), distill=DistillConfig(prompts=(RULE, "sasrec")))


def test_firstword_answers_the_title_that_begins_like_the_anchor_not_one_sharing_a_later_word():
    """"Star Trek" watched last: firstword's first choice is "Star Wars" (its first word), never "Trek Home" (which
    shares a later word and is as unrelated as any other title to it); sharedword may answer either."""
    from delrec_lib.teachers.rules import firstword_scorer, sharedword_scorer

    class Titles:
        num_items = 6

        def display_titles(self, style):
            return ["", "Star Trek", "Star Wars", "Trek Home", "Blue Moon", "Green Hills", "Red Rock"]

    for seed in range(20):
        first = firstword_scorer(Titles(), seed, window=10)(np.array([1]), [[1]])[0]
        shared = sharedword_scorer(Titles(), seed, window=10)(np.array([1]), [[1]])[0]
        assert int(np.argmax(first[1:])) + 1 == 2
        assert int(np.argmax(shared[1:])) + 1 in (2, 3)
        assert shared[3] < 0 or int(np.argmax(shared[1:])) + 1 == 3  # sharedword: a namesake, never among the unrelated
        assert 0 <= first[3] < 1  # firstword: it begins otherwise, so it is as unrelated as "Blue Moon"


def test_the_first_choice_is_no_likelier_a_long_title_than_in_the_catalogue():
    """A title of many words shares one more often, so a namesake drawn uniformly would be a long title (a length
    heuristic would find it); the rule draws it with weights that give it the catalogue's share of long titles.
    The anchor "Night" has two namesakes: "Night Falls" (two words, like 7 of the catalogue's 9 titles)
    and "Long Dark Night Ahead Again" (five, like 1 of 9): the long one should be drawn about 1 time in 8, not 1 in 2."""
    from delrec_lib.teachers.rules import sharedword_scorer

    class Titles:
        titles = ["", "Night", "Night Falls", "Long Dark Night Ahead Again", "Blue Moon", "Green Hills", "Red Rock",
                  "Cold Water", "Deep Sea", "Wild Card"]  # fmt: skip
        num_items = len(titles) - 1

        def display_titles(self, style):
            return self.titles

    users = np.arange(1, 801)
    scores = sharedword_scorer(Titles(), seed=3, window=10)(users, [[1]] * len(users))
    first = scores[:, 1:].argmax(axis=1) + 1
    assert set(first) == {2, 3}
    share_long = float(np.mean(first == 3))
    # weights: 2 words 7/9 / 1 namesake, 5 words 1/9 / 1 namesake -> P(long) = 1/8
    assert abs(share_long - 1 / 8) < 0.04, share_long
