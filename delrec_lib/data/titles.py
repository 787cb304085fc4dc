"""Human-readable item titles: MovieLens's "Usual Suspects, The (1995)" -> "The Usual Suspects (1995)".

Both MovieLens-100K sources go through ``parse_movielens_title`` with the GroupLens spelling of
the title, so they give the same titles character for character.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from ..errors import DataError

# Trailing articles MovieLens moves behind a comma, English and the European languages in the
# catalogue ("Misérables, Les", "Blaue Engel, Der").
ARTICLES = (
    "The", "A", "An", "Les", "La", "Le", "L'", "Il", "Lo", "I", "Gli", "Der", "Die", "Das",
    "El", "Los", "Las", "Det", "Den", "De", "Het", "Une", "Un",
)  # fmt: skip
_TRAILING_ARTICLE = re.compile(r"^(?P<body>.+), (?P<article>" + "|".join(re.escape(a) for a in ARTICLES) + r")$")
# "<name> (<year>)" optionally followed by MovieLens's release-format tags such as " (V)".
_YEAR = re.compile(r"^(?P<name>.*?) \((?P<year>\d{4})\)(?P<tags>(?: \([^()]*\))*)$")
# The last parenthesised part of a name, e.g. an original-language title "(Hussard sur le toit, Le)".
_ALT = re.compile(r"^(?P<main>.*?) \((?P<alt>[^()]*)\)$")

UNKNOWN_TITLES = {"unknown", "unkonwn"}  # the recbole copy spells MovieLens's item 267 "unkonwn"


def front_article(text: str) -> str:
    """Move a trailing ", The" (or another article) to the front: "Usual Suspects, The" -> "The Usual Suspects"."""
    m = _TRAILING_ARTICLE.match(text)
    if not m:
        return text
    article = m["article"]
    return f"{article}{m['body']}" if article.endswith("'") else f"{article} {m['body']}"


def normalise_name(name: str) -> str:
    """Front the article of the main title and of a parenthesised alternative title."""
    name = " ".join(name.split())
    m = _ALT.match(name)
    if m and m["main"]:
        return f"{front_article(m['main'])} ({front_article(m['alt'])})"
    return front_article(name)


def parse_movielens_title(full_title: str) -> tuple[str, int | None]:
    """Split a GroupLens-style title into (normalised name, year or None)."""
    full_title = " ".join(full_title.split())
    if full_title.lower() in UNKNOWN_TITLES or not full_title:
        return "unknown", None
    m = _YEAR.match(full_title)
    if not m:
        return normalise_name(full_title), None
    return normalise_name(m["name"]), int(m["year"])


def display_title(name: str, year: int | None) -> str:
    return name if year is None else f"{name} ({year})"


# --------------------------------------------------------------------------------------------
# Unique display titles
# --------------------------------------------------------------------------------------------
# MovieLens-100K holds the same film under two ids (e.g. "Chasing Amy (1997)", items 246 and
# 268) and remakes that share a name ("Cape Fear", 1962 and 1991). A prompt that shows two
# items alike makes a negative indistinguishable from an item the user has seen, and makes the
# scorer rank two identical texts; so every title a prompt shows is unique in the catalogue, in
# every title style. Collisions are told apart by the year first, then by the kit's item id.

_YEAR_SUFFIX = re.compile(r"\s*\(\d{4}\)\s*$")  # the year as display_title writes it
_ITEM_TAG = re.compile(r" \[item [^\[\]]+\]$")


def without_year(title: str) -> str:
    """A display title without its trailing year: "Toy Story (1995)" -> "Toy Story"."""
    return _YEAR_SUFFIX.sub("", title) or title


def item_tagged(title: str, item_id: int) -> str:
    """A title told apart by its item id: "Chasing Amy (1997) [item 246]"."""
    return f"{title} [item {item_id}]"


def untagged(title: str) -> str:
    """A title without the item tag ``item_tagged`` adds."""
    return _ITEM_TAG.sub("", title)


def _first_clash(titles: Sequence[str], ids: Sequence[int]) -> tuple[str, list[int]] | None:
    owners: dict[str, list[int]] = {}
    for title, item in zip(titles, ids, strict=True):
        owners.setdefault(title, []).append(item)
    return next(((t, items) for t, items in owners.items() if len(items) > 1), None)


def require_unique(titles: Sequence[str], item_ids: Sequence[int]) -> None:
    clash = _first_clash(titles, item_ids)
    if clash:
        raise DataError(
            f"title {clash[0]!r} belongs to items {clash[1]}; titles must be unique (processed data from before "
            "unique titles: run the data step again)"
        )


def unique_titles(titles: Sequence[str], item_ids: Sequence[int]) -> list[str]:
    """Display titles (with year) made unique: a title several items share gets each item's id."""
    counts = Counter(titles)
    out = [item_tagged(t, i) if counts[t] > 1 else t for t, i in zip(titles, item_ids, strict=True)]
    clash = _first_clash(out, item_ids)
    if clash:  # only a raw title that itself ends like a tag, "X [item 7]", can get here
        raise DataError(f"items {clash[1]} would all be shown as {clash[0]!r}; rename one in the items file")
    return out


def year_less_titles(titles: Sequence[str], item_ids: Sequence[int]) -> list[str]:
    """The "no_year" style of unique titles, still unique: a title keeps its year (and its item
    tag) wherever dropping the year would make it read like another item's title."""
    require_unique(titles, item_ids)
    # Judged on the titles before their item tags: of three "That Darn Cat!" (1965, and 1997
    # twice) none may read as the bare name, although the tags already tell the 1997 ones apart.
    names = [without_year(untagged(t)) for t in titles]
    shared = Counter(names)
    out = [n if shared[n] == 1 else t for n, t in zip(names, titles, strict=True)]
    while True:
        counts = Counter(out)
        clashing = [k for k, t in enumerate(out) if counts[t] > 1 and t != titles[k]]
        if not clashing:
            return out  # unique: every clash left holds a full title, and full titles are unique
        for k in clashing:
            out[k] = titles[k]


# Short function words carry no title identity: "The Man in the Moon" shares nothing with "The Net".
STOPWORDS = frozenset(
    "the a an and or of in on to for with from at by is it its my me you your his her our their "
    "be are was this that not no les la le il der die das el los las de du des un une".split()
)


def _words_in_order(title: str) -> list[str]:
    name = without_year(untagged(title))
    return [w for w in re.findall(r"[a-z0-9']+", name.lower()) if len(w) >= 3 and w not in STOPWORDS]


def title_words(title: str) -> frozenset[str]:
    """Lower-case words of at least three letters or digits that are not function words, read without the
    year and the item tag that tell same-named titles apart ("Cape Fear (1991) [item 7]" -> {"cape", "fear"})."""
    return frozenset(_words_in_order(title))


def first_word(title: str) -> frozenset[str]:
    """The first of ``title_words`` in reading order, as a set of one (empty for a title with none):
    "Star Trek: Generations (1994)" -> {"star"}."""
    return frozenset(_words_in_order(title)[:1])


def title_word_counts(titles: Sequence[str]) -> list[int]:
    """How many ``title_words`` each title has: what a title-length heuristic ranks by."""
    return [len(title_words(t)) for t in titles]
