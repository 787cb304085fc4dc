"""A tiny MovieLens-100K look-alike written in both source formats (GroupLens and recbole).

The same ratings and titles go into ``u.data``/``u.item`` (latin-1, '|' items, 19 genre flags)
and into a fake ``recbole`` wheel (``ml-100k.inter``/``ml-100k.item``, utf-8, typed headers,
year split off the title the way recbole did it), so the two parsers can be compared.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import numpy as np

from delrec_lib.data.sources import ML_GENRES, RECBOLE_ML100K

# (GroupLens title, genres) -- exercising articles, alternative titles, "(V)", accents, "unknown".
ITEMS = [
    ("Toy Story (1995)", ["Animation", "Children's", "Comedy"]),
    ("Usual Suspects, The (1995)", ["Crime", "Thriller"]),
    ("Horseman on the Roof, The (Hussard sur le toit, Le) (1995)", ["Drama"]),
    ("Misérables, Les (1995)", ["Drama", "Musical"]),
    ("Land Before Time III: The Time of the Great Giving (1995) (V)", ["Animation", "Children's"]),
    ("unknown", ["unknown"]),
    ("Seven (Se7en) (1995)", ["Crime", "Thriller"]),
    ("Cérémonie, La (1995)", ["Drama"]),
    ("Good, The Bad and The Ugly, The (1966)", ["Action", "Western"]),
    ("Nightmare on Elm Street, A (1984)", ["Horror"]),
] + [(f"Movie Number {i} (19{50 + i})", ["Drama"]) for i in range(10, 40)] + [
    # Titles MovieLens gives several items (items 41..47): one film under two ids, remakes that
    # share a name, and both at once.
    ("Chasing Amy (1997)", ["Comedy"]),
    ("Chasing Amy (1997)", ["Comedy"]),
    ("Cape Fear (1962)", ["Thriller"]),
    ("Cape Fear (1991)", ["Thriller"]),
    ("That Darn Cat! (1997)", ["Comedy"]),
    ("That Darn Cat! (1997)", ["Comedy"]),
    ("That Darn Cat! (1965)", ["Comedy"]),
]
NUM_USERS = 8


def with_filler(num_items: int) -> list[tuple[str, list[str]]]:
    """ITEMS plus filler films up to ``num_items`` (a catalogue large enough for many negatives)."""
    return ITEMS + [(f"Filler Film {i} (2001)", ["Drama"]) for i in range(len(ITEMS) + 1, num_items + 1)]


def make_ratings(seed: int = 0, num_items: int = len(ITEMS)) -> list[tuple[int, int, int, int]]:
    """(user, item, rating, timestamp) rows with timestamp ties, users interleaved at random.

    Each user's rows appear in the file in the intended chronological order, and equal
    timestamps come in pairs, so the expected sequence is known: it is the file order.
    Timestamps are not monotone in the file as a whole (users are interleaved).
    """
    rng = np.random.default_rng(seed)
    per_user = []
    for user in range(1, NUM_USERS + 1):
        n = int(rng.integers(5, 12))
        items = rng.choice(np.arange(1, num_items + 1), size=n, replace=False)
        t0 = 880_000_000 - user * 100_000
        per_user.append([(user, int(item), int(rng.integers(1, 6)), t0 + (k // 2) * 60) for k, item in enumerate(items)])
    # a random interleaving that keeps each user's own order
    owners = np.concatenate([[u] * len(r) for u, r in enumerate(per_user)])
    rng.shuffle(owners)
    cursors = [0] * len(per_user)
    rows = []
    for u in owners:
        rows.append(per_user[u][cursors[u]])
        cursors[u] += 1
    return rows


def expected_sequences(rows) -> dict[int, list[int]]:
    seqs: dict[int, list[int]] = {}
    for u, i, _, _ in rows:
        seqs.setdefault(u, []).append(i)
    return seqs


def udata_text(rows) -> str:
    return "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)


def uitem_text(items=ITEMS) -> str:
    lines = []
    for idx, (title, genres) in enumerate(items, start=1):
        flags = "|".join("1" if g in genres else "0" for g in ML_GENRES)
        if title == "unknown":
            lines.append(f"{idx}|unknown||||{flags}")
        else:
            lines.append(f"{idx}|{title}|01-Jan-1995||http://example.invalid/{idx}|{flags}")
    return "\n".join(lines) + "\n"


def write_grouplens(folder: Path, rows=None, info: bool = True, items=ITEMS) -> Path:
    rows = rows if rows is not None else make_ratings()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_bytes(udata_text(rows).encode("latin-1"))
    (folder / "u.item").write_bytes(uitem_text(items).encode("latin-1"))
    if info:
        users = len({r[0] for r in rows})
        (folder / "u.info").write_text(f"{users} users\n{len(items)} items\n{len(rows)} ratings\n")
    return folder


def write_grouplens_zip(path: Path, rows=None, items=ITEMS) -> Path:
    rows = rows if rows is not None else make_ratings()
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-100k/u.data", udata_text(rows).encode("latin-1"))
        zf.writestr("ml-100k/u.item", uitem_text(items).encode("latin-1"))
    return path


def recbole_texts(rows=None, items=ITEMS) -> tuple[str, str]:
    rows = rows if rows is not None else make_ratings()
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + udata_text(rows)
    lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for idx, (title, genres) in enumerate(items, start=1):
        if title == "unknown":
            name, year = "unkonwn", "unkonwn"  # as the real recbole copy spells it
        else:
            name, year = title[: title.rindex(" (")], title[title.rindex(" (") + 2 : -1]
        lines.append(f"{idx}\t{name}\t{year}\t{' '.join(genres)}")
    return inter, "\n".join(lines) + "\n"


def write_recbole_wheel(path: Path, rows=None, tamper: bool = False, items=ITEMS) -> str:
    """A zip laid out like the recbole wheel, with a RECORD; returns its sha256."""
    inter, item = recbole_texts(rows, items)
    files = {RECBOLE_ML100K + "ml-100k.inter": inter.encode(), RECBOLE_ML100K + "ml-100k.item": item.encode()}
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    if tamper:  # content no longer matches RECORD
        files[RECBOLE_ML100K + "ml-100k.inter"] += b"1\t1\t1\t1\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("recbole-1.2.1.dist-info/RECORD", "\n".join(record) + "\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()
