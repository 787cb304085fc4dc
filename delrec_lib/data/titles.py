"""Human-readable item titles: MovieLens's "Usual Suspects, The (1995)" -> "The Usual Suspects (1995)".

Both MovieLens-100K sources go through ``parse_movielens_title`` with the GroupLens spelling of
the title, so they give the same titles character for character.
"""

from __future__ import annotations

import re

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
