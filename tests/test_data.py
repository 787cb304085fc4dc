"""Data protocol: sources, parsing, leave-one-out split, candidate sets, and bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from delrec_lib.artifacts import read_manifest, sha256_file
from delrec_lib.config import DataConfig, load_config
from delrec_lib.data import (
    MovieLens100K,
    build_tables,
    front_article,
    load_processed,
    parse_movielens_title,
    prepare_dataset,
    processed_dir,
    sources,
)
from delrec_lib.data.checks import protocol_violations
from delrec_lib.data.explore import timestamp_ties, title_collisions
from delrec_lib.data.sources import parse_interaction_lines
from delrec_lib.data.titles import unique_titles, year_less_titles
from delrec_lib.errors import ConfigError, DataError, StaleArtifactError
from delrec_lib.teachers.evaluation import SplitScores, candidate_ranking, candidate_scores

from .movielens_fixture import (
    ITEMS,
    expected_sequences,
    make_ratings,
    recbole_texts,
    with_filler,
    write_grouplens,
    write_grouplens_zip,
    write_recbole_wheel,
)

PROCESSED = ("items.parquet", "sequences.parquet", "splits.parquet", "candidates.parquet")


def fixture_config(**kw) -> DataConfig:
    # the fixture has 40 items and users with up to 11 interactions: 19 negatives fit
    return DataConfig(**kw)


def prepare_grouplens(tmp: Path, **kw) -> Path:
    write_grouplens(tmp / "raw" / "ml-100k")
    return prepare_dataset(fixture_config(**kw), tmp)


def prepare_recbole(tmp: Path, monkeypatch, **kw) -> Path:
    sha = write_recbole_wheel(tmp / "raw" / "recbole-1.2.1-py3-none-any.whl")
    monkeypatch.setattr("delrec_lib.data.sources.RECBOLE_SHA256", sha)
    source = MovieLens100K(recbole_sha256=sha)
    monkeypatch.setitem(sources.REGISTRY, "ml-100k", lambda: source)
    return prepare_dataset(fixture_config(**kw), tmp)


# ---------------------------------------------------------------------------------------------
# Titles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Usual Suspects, The (1995)", ("The Usual Suspects", 1995)),
        ("Toy Story (1995)", ("Toy Story", 1995)),
        ("Horseman on the Roof, The (Hussard sur le toit, Le) (1995)", ("The Horseman on the Roof (Le Hussard sur le toit)", 1995)),
        ("Misérables, Les (1995)", ("Les Misérables", 1995)),
        ("Land Before Time III: The Time of the Great Giving (1995) (V)", ("Land Before Time III: The Time of the Great Giving", 1995)),
        ("unknown", ("unknown", None)),
        ("unkonwn", ("unknown", None)),
        ("Seven (Se7en) (1995)", ("Seven (Se7en)", 1995)),
        ("Mrs. Brown (Her Majesty, Mrs. Brown) (1997)", ("Mrs. Brown (Her Majesty, Mrs. Brown)", 1997)),
        ("Good, The Bad and The Ugly, The (1966)", ("The Good, The Bad and The Ugly", 1966)),
    ],
)
def test_titles_are_normalised(raw, expected):
    assert parse_movielens_title(raw) == expected


def test_front_article_handles_elision():
    assert front_article("Appartement, L'") == "L'Appartement"
    assert front_article("Die Hard") == "Die Hard"


def test_shared_titles_are_told_apart_by_year_then_item_id():
    written = ["Chasing Amy (1997)", "Chasing Amy (1997)", "Cape Fear (1962)", "Cape Fear (1991)", "Toy Story (1995)", "unknown"]
    ids = [41, 42, 43, 44, 45, 46]
    full = unique_titles(written, ids)
    assert full == ["Chasing Amy (1997) [item 41]", "Chasing Amy (1997) [item 42]", *written[2:]]
    # the year stays only where the bare name is shared
    assert year_less_titles(full, ids) == [*full[:4], "Toy Story", "unknown"]
    # a name left unique by the first pass can equal another item's full title: that one keeps more
    tricky = ["Foo (1990) (1995)", "Foo (1990)", "Foo (1980)"]
    assert year_less_titles(tricky, [1, 2, 3]) == tricky
    with pytest.raises(DataError, match=r"title 'Toy Story \(1995\)' belongs to items \[1, 2\]"):
        year_less_titles(["Toy Story (1995)", "Toy Story (1995)"], [1, 2])


# ---------------------------------------------------------------------------------------------
# Both sources, same bytes
# ---------------------------------------------------------------------------------------------


def test_grouplens_folder_zip_and_recbole_give_identical_processed_files(tmp_path, monkeypatch):
    a = prepare_grouplens(tmp_path / "a")
    write_grouplens_zip(tmp_path / "b" / "raw" / "ml-100k.zip")
    b = prepare_dataset(fixture_config(), tmp_path / "b")
    c = prepare_recbole(tmp_path / "c", monkeypatch)
    for name in PROCESSED:
        assert sha256_file(a / name) == sha256_file(b / name) == sha256_file(c / name), name
    kinds = [read_manifest(d)["extra"]["source"]["kind"] for d in (a, b, c)]
    assert kinds == ["grouplens-folder", "grouplens-zip", "recbole-wheel"]


def test_fixture_titles_and_sequences(tmp_path):
    out = prepare_grouplens(tmp_path)
    data = load_processed(tmp_path, "ml-100k")
    assert data.num_items == len(ITEMS)
    titles = data.titles
    assert titles[2] == "The Usual Suspects (1995)"
    assert titles[6] == "unknown"
    assert titles[8] == "La Cérémonie (1995)"
    assert titles[41:48] == [
        "Chasing Amy (1997) [item 41]", "Chasing Amy (1997) [item 42]", "Cape Fear (1962)", "Cape Fear (1991)",
        "That Darn Cat! (1997) [item 45]", "That Darn Cat! (1997) [item 46]", "That Darn Cat! (1965)",
    ]  # fmt: skip
    no_year = data.display_titles("no_year")
    assert no_year[1] == "Toy Story" and no_year[41:48] == titles[41:48], "a shared name keeps its year"
    for style in ("with_year", "no_year"):
        shown = data.display_titles(style)[1:]
        assert len(set(shown)) == len(shown), style
    expected = expected_sequences(make_ratings())
    for row in data.sequences.itertuples():
        assert list(row.items) == expected[int(row.raw_user_id)], "chronological order, ties in file order"
    assert protocol_violations(data) == []
    assert out == processed_dir(tmp_path, "ml-100k")


# ---------------------------------------------------------------------------------------------
# Split and candidate invariants
# ---------------------------------------------------------------------------------------------


def check_invariants(data, negatives: int = 19):
    seqs = {int(r.user_id): np.asarray(r.items) for r in data.sequences.itertuples()}
    stamps = {int(r.user_id): np.asarray(r.timestamps) for r in data.sequences.itertuples()}
    for r in data.splits.itertuples():
        uid = int(r.user_id)
        assert np.all(np.diff(stamps[uid]) >= 0), "history is chronological"
        assert r.test_target == seqs[uid][-1], "test target is the latest interaction"
        assert r.valid_target == seqs[uid][-2]
        train = set(np.asarray(r.train_items).tolist())
        assert r.valid_target not in train and r.test_target not in train
        assert data.history(uid, "valid") == list(r.train_items)
        assert data.history(uid, "test") == [*r.train_items, r.valid_target]
    for split in ("valid", "test"):
        sets = data.candidate_sets(split)
        assert len(sets) == data.num_users
        for r in sets.itertuples():
            cands = np.asarray(r.candidates).tolist()
            assert len(cands) == negatives + 1 and len(set(cands)) == len(cands)
            assert cands.count(data.target(r.user_id, split)) == 1
            assert cands[r.target_position] == r.target
            seen = set(seqs[int(r.user_id)].tolist())
            assert all(c not in seen for c in cands if c != r.target), "negatives were never interacted with"


def test_invariants_on_fixture(tmp_path):
    prepare_grouplens(tmp_path)
    check_invariants(load_processed(tmp_path))


def test_invariants_on_real_movielens(real_data):
    assert (real_data.num_users, real_data.num_items) == (943, 1682)
    assert int(real_data.sequences["items"].map(len).sum()) == 100_000
    check_invariants(real_data)
    assert protocol_violations(real_data) == []
    assert real_data.titles[12] == "The Usual Suspects (1995)"


def test_real_movielens_titles_and_ties(real_data):
    """The numbers the README and notebook 01 state, on the real data."""
    collisions = title_collisions(real_data)
    assert collisions.loc[("with_year", "test"), "items sharing their title"] == 36
    assert collisions.loc[("no_year", "test"), "items sharing their title"] == 45
    assert collisions.loc[("no_year", "test"), "as written: sets where a negative reads like a history item"] == 15
    assert (collisions["unique titles: sets with either"] == 0).all()
    ties = timestamp_ties(real_data)["value"]
    assert ties["valid and test targets in the same second"] == 415
    assert ties["... and the last train item too"] == 238


def test_ties_are_counted_from_the_timestamps(tmp_path):
    prepare_grouplens(tmp_path)
    data = load_processed(tmp_path)
    expected_targets = expected_with_train = 0
    for stamps in data.sequences["timestamps"]:
        train_last, valid, test = stamps[-3:]
        expected_targets += valid == test
        expected_with_train += train_last == valid == test
    ties = timestamp_ties(data)["value"]
    # the fixture's timestamps come in equal pairs, so both kinds of tie occur
    assert ties["valid and test targets in the same second"] == expected_targets > 0
    assert ties["... and the last train item too"] == expected_with_train
    assert expected_with_train < expected_targets


def test_199_negatives_need_more_than_int8_positions(tmp_path):
    items = with_filler(240)
    rows = make_ratings(num_items=len(items))
    write_grouplens(tmp_path / "raw" / "ml-100k", rows, items=items)
    prepare_dataset(fixture_config(num_negatives=199), tmp_path)
    data = load_processed(tmp_path)
    check_invariants(data, negatives=199)
    assert protocol_violations(data) == []
    assert data.candidates["target_position"].max() > 127, "the fixture must put some target beyond int8"
    # teachers read the positions back: scoring the target highest must give rank 1 everywhere
    users = data.user_ids()
    scores = np.zeros((len(users), data.num_items + 1), dtype=np.float32)
    targets = np.array([data.target(int(u), "test") for u in users])
    scores[np.arange(len(users)), targets] = 1.0
    split = SplitScores("test", users, targets, scores, np.ones_like(scores, dtype=bool))
    cands = candidate_scores(split, data)
    assert cands["target_position"].max() > 127
    assert (candidate_ranking(cands)["rank"] == 1).all()


def test_same_seed_same_files_other_seed_other_candidates(tmp_path):
    a = prepare_grouplens(tmp_path / "a", seed=7)
    b = prepare_grouplens(tmp_path / "b", seed=7)
    c = prepare_grouplens(tmp_path / "c", seed=8)
    for name in PROCESSED:
        assert sha256_file(a / name) == sha256_file(b / name)
    assert sha256_file(a / "candidates.parquet") != sha256_file(c / "candidates.parquet")
    assert sha256_file(a / "splits.parquet") == sha256_file(c / "splits.parquet"), "the split does not depend on the seed"


def test_second_run_keeps_files_and_does_not_download(tmp_path, monkeypatch):
    out = prepare_grouplens(tmp_path)
    before = {n: (out / n).stat().st_mtime_ns for n in PROCESSED}
    prepare_dataset(fixture_config(), tmp_path)
    assert {n: (out / n).stat().st_mtime_ns for n in PROCESSED} == before


def serve_recbole_wheel(index: Path, monkeypatch) -> str:
    """A fixture recbole wheel served from a local find-links folder, the only place pip may look; returns
    its sha256. pip reads its settings from the environment, so the kit's own command stays as it is."""
    wheel = index / "recbole-1.2.1-py3-none-any.whl"
    write_recbole_wheel(wheel)
    with zipfile.ZipFile(wheel, "a") as zf:  # pip reads these two before it accepts a wheel
        zf.writestr("recbole-1.2.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: recbole\nVersion: 1.2.1\n")
        zf.writestr("recbole-1.2.1.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no user or site pip.conf
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    sha = sha256_file(wheel)
    monkeypatch.setattr("delrec_lib.data.sources.RECBOLE_SHA256", sha)
    monkeypatch.setitem(sources.REGISTRY, "ml-100k", lambda: MovieLens100K(recbole_sha256=sha))
    return sha


def count_pip_downloads(monkeypatch) -> list[list[str]]:
    """The pip download commands the data sources run from now on (each still runs)."""
    calls: list[list[str]] = []
    real_run = subprocess.run

    def counting_run(cmd, *args, **kwargs):
        if "pip" in cmd and "download" in cmd:
            calls.append(list(cmd))
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(sources.subprocess, "run", counting_run)
    return calls


def check_recbole_wheel_fetched_once(tmp_path: Path, monkeypatch) -> None:
    sha = serve_recbole_wheel(tmp_path / "index", monkeypatch)
    fetches = count_pip_downloads(monkeypatch)
    data_dir = tmp_path / "data"
    cached = data_dir / "raw" / "recbole-1.2.1-py3-none-any.whl"
    assert not cached.exists()
    out = prepare_dataset(fixture_config(), data_dir)
    assert len(fetches) == 1, f"the first run must fetch the wheel once, pip ran {len(fetches)} time(s)"
    assert cached.is_file() and sha256_file(cached) == sha, "the fetched wheel is kept in data/raw/"
    assert read_manifest(out)["extra"]["source"]["kind"] == "recbole-wheel"
    shutil.rmtree(out)  # the raw wheel must be read again, not the processed files reused
    prepare_dataset(fixture_config(), data_dir)
    assert len(fetches) == 1, f"the second run fetched the wheel again ({len(fetches) - 1} more pip download(s))"


def test_recbole_wheel_is_fetched_once_then_cached(tmp_path, monkeypatch):
    check_recbole_wheel_fetched_once(tmp_path, monkeypatch)


def _fetch_without_keeping(real_fetch, tmp_path: Path):
    scratch = iter(range(1_000))
    return lambda raw_dir, sha: real_fetch(tmp_path / f"scratch-{next(scratch)}", sha)


def _fetch_ignoring_the_cache(real_fetch, tmp_path: Path):
    def fetch(raw_dir, sha):
        (raw_dir / sources.RECBOLE_WHEEL).unlink(missing_ok=True)
        return real_fetch(raw_dir, sha)

    return fetch


@pytest.mark.parametrize(
    "fault, message",
    [(_fetch_without_keeping, "the fetched wheel is kept in data/raw/"), (_fetch_ignoring_the_cache, "fetched the wheel again")],
)
def test_a_fetch_that_does_not_cache_fails_the_cache_test(tmp_path, monkeypatch, fault, message):
    """The faults the cache test guards against: the wheel is not kept in data/raw/, or it is but fetched anyway."""
    monkeypatch.setattr(sources, "fetch_recbole_wheel", fault(sources.fetch_recbole_wheel, tmp_path))
    with pytest.raises(AssertionError, match=message):
        check_recbole_wheel_fetched_once(tmp_path, monkeypatch)


def test_csv_dataset_loader(tmp_path):
    folder = tmp_path / "raw" / "toy"
    folder.mkdir(parents=True)
    rows = ["user,item,timestamp"]
    for u in ("alice", "bob", "carol"):
        for k, item in enumerate(["i1", "i2", "i3", "i4", "i5"][: 3 + len(u) % 3]):
            rows.append(f"{u},{item},{100 + k}")
    (folder / "interactions.csv").write_text("\n".join(rows) + "\n")
    (folder / "items.csv").write_text("item,title,year\n" + "".join(f"i{i},Film {i},{2000 + i}\n" for i in range(1, 9)))
    prepare_dataset(DataConfig(dataset="toy", num_negatives=2), tmp_path)
    data = load_processed(tmp_path, "toy")
    assert data.num_items == 8 and data.num_users == 3
    assert data.titles[1] == "Film 1 (2001)"
    check_invariants(data, negatives=2)


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors, earlier outputs untouched
# ---------------------------------------------------------------------------------------------


def snapshot(out: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()}


@pytest.fixture
def processed_once(tmp_path):
    out = prepare_grouplens(tmp_path)
    return tmp_path, out, snapshot(out)


def _expect(tmp, out, before, exc, match, config=None):
    with pytest.raises(exc, match=match):
        prepare_dataset(config or fixture_config(), tmp)
    assert snapshot(out) == before, "earlier processed outputs must be left untouched"


def test_missing_file(processed_once):
    tmp, out, before = processed_once
    (tmp / "raw" / "ml-100k" / "u.item").unlink()
    _expect(tmp, out, before, DataError, r"u\.item: file not found")


def test_truncated_file_against_u_info(processed_once):
    tmp, out, before = processed_once
    path = tmp / "raw" / "ml-100k" / "u.data"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-5]))
    _expect(tmp, out, before, DataError, r"u\.info says \d+ ratings but the files hold")


def test_truncated_mid_line(processed_once):
    tmp, out, before = processed_once
    path = tmp / "raw" / "ml-100k" / "u.data"
    text = path.read_text()
    path.write_text(text[: len(text) - 8])
    n = text.count("\n")
    _expect(tmp, out, before, DataError, rf"u\.data line {n}: the file ends mid-line; it is truncated")


@pytest.mark.parametrize(
    "line, match",
    [
        ("1\t2\t3\n", r"u\.data line 3: expected 4 '\\t'-separated fields"),
        ("x\t2\t3\t880000000\n", r"u\.data line 3: user id must be an integer, got 'x'"),
        ("1\t2.5\t3\t880000000\n", r"u\.data line 3: item id must be an integer"),
        ("1\t2\t3\tyesterday\n", r"u\.data line 3: timestamp must be a number, got 'yesterday'"),
    ],
)
def test_malformed_rows(processed_once, line, match):
    tmp, out, before = processed_once
    path = tmp / "raw" / "ml-100k" / "u.data"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = line
    path.write_text("".join(lines))
    _expect(tmp, out, before, DataError, match)


def test_malformed_item_row(processed_once):
    tmp, out, before = processed_once
    path = tmp / "raw" / "ml-100k" / "u.item"
    lines = path.read_bytes().decode("latin-1").splitlines(keepends=True)
    lines[4] = "5|Broken Title (1995)|01-Jan-1995\n"
    path.write_bytes("".join(lines).encode("latin-1"))
    _expect(tmp, out, before, DataError, r"u\.item line 5: expected 24 '\|'-separated fields")


def test_wrong_sha256_of_wheel(tmp_path, monkeypatch):
    prepare_recbole(tmp_path, monkeypatch)
    out = processed_dir(tmp_path, "ml-100k")
    before = snapshot(out)
    wheel = tmp_path / "raw" / "recbole-1.2.1-py3-none-any.whl"
    write_recbole_wheel(wheel, tamper=True)  # different bytes, sha256 no longer the pinned one
    with pytest.raises(DataError, match=r"recbole-1\.2\.1-py3-none-any\.whl: sha256 [0-9a-f]{64} does not match the pinned"):
        prepare_dataset(fixture_config(), tmp_path)
    assert snapshot(out) == before


def test_wheel_member_not_matching_record(tmp_path, monkeypatch):
    wheel = tmp_path / "raw" / "recbole-1.2.1-py3-none-any.whl"
    sha = write_recbole_wheel(wheel, tamper=True)
    source = MovieLens100K(recbole_sha256=sha)
    with pytest.raises(DataError, match="does not match its RECORD hash"):
        source.load(tmp_path / "raw")


def test_truncated_wheel(tmp_path):
    wheel = tmp_path / "raw" / "recbole-1.2.1-py3-none-any.whl"
    write_recbole_wheel(wheel)
    data = wheel.read_bytes()
    wheel.write_bytes(data[: len(data) // 2])
    source = MovieLens100K(recbole_sha256=sha256_file(wheel))  # pinned to the truncated bytes: the zip check speaks
    with pytest.raises(DataError, match=r"py3-none-any\.whl: not a readable wheel/zip"):
        source.load(tmp_path / "raw")


def test_truncated_zip(tmp_path):
    zpath = write_grouplens_zip(tmp_path / "raw" / "ml-100k.zip")
    data = zpath.read_bytes()
    zpath.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"ml-100k\.zip: not a readable zip"):
        prepare_dataset(fixture_config(), tmp_path)


def test_unknown_preset_and_dataset(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'fast'; expected one of: smoke, cpu, cpu-long, cpu-seeds, cpu-study, cpu-ablations, paper"):
        load_config("fast")
    with pytest.raises(ConfigError, match="unknown dataset 'ml-1m'"):
        prepare_dataset(DataConfig(dataset="ml-1m"), tmp_path)


def test_too_many_negatives(processed_once):
    tmp, out, before = processed_once
    # every user has at least 5 of the items: len(ITEMS) - 4 negatives cannot be drawn for anyone
    n = len(ITEMS) - 4
    _expect(tmp, out, before, ConfigError, rf"data\.num_negatives = {n}: at most \d+ for ml-100k", fixture_config(num_negatives=n))


def test_edited_processed_file_is_refused(tmp_path):
    out = prepare_grouplens(tmp_path)
    shutil.copy(out / "splits.parquet", out / "candidates.parquet")
    with pytest.raises(StaleArtifactError, match=r"candidates\.parquet: content differs"):
        load_processed(tmp_path)


def test_unknown_item_names_the_file_and_line(processed_once):
    tmp, out, before = processed_once
    path = tmp / "raw" / "ml-100k" / "u.data"
    lines = path.read_text().splitlines(keepends=True)
    lines[4] = "1\t999\t3\t880000000\n"
    path.write_text("".join(lines))
    _expect(tmp, out, before, DataError, r"ml-100k/u\.data line 5: item '999' is not in .*ml-100k/u\.item \(1 interaction")


def test_unknown_item_in_recbole_names_the_member_and_line(tmp_path):
    rows = make_ratings()
    rows[6] = (rows[6][0], 999, 3, rows[6][3])
    sha = write_recbole_wheel(tmp_path / "raw" / "recbole-1.2.1-py3-none-any.whl", rows)
    raw = MovieLens100K(recbole_sha256=sha).load(tmp_path / "raw")
    # line 1 of ml-100k.inter is its header: the 7th row is line 8
    with pytest.raises(DataError, match=r"whl!recbole/dataset_example/ml-100k/ml-100k\.inter line 8: item '999' is not in"):
        build_tables(raw, seed=1, num_negatives=3)


def test_header_only_interactions_say_no_interactions(tmp_path):
    inter, _ = recbole_texts()
    header_only = inter.split("\n", 1)[0] + "\n"
    with pytest.raises(DataError, match=r"ml-100k\.inter: no interactions \(the file holds only its header line\)"):
        parse_interaction_lines(header_only, "ml-100k.inter", sep="\t", ncols=4, columns="", header=True)
    folder = tmp_path / "raw" / "toy"
    folder.mkdir(parents=True)
    (folder / "interactions.csv").write_text("user,item,timestamp\n")
    (folder / "items.csv").write_text("item,title\ni1,Film 1\n")
    with pytest.raises(DataError, match=r"interactions\.csv: no interactions \(the file holds only its header line\)"):
        prepare_dataset(DataConfig(dataset="toy", num_negatives=1), tmp_path)


def test_duplicate_interactions_are_dropped_with_a_warning(tmp_path, caplog):
    rows = make_ratings()
    repeats = [(u, i, r, t + 1) for u, i, r, t in rows[:3]]  # the same user and item, rated again later
    write_grouplens(tmp_path / "raw" / "ml-100k", rows + repeats)
    with caplog.at_level("WARNING", logger="delrec_lib.data.pipeline"):
        prepare_dataset(fixture_config(), tmp_path)
    warned = [r.getMessage() for r in caplog.records if "repeated interaction" in r.getMessage()]
    assert len(warned) == 1 and "dropped 3 repeated interaction(s)" in warned[0] and "u.data" in warned[0]
    data = load_processed(tmp_path)
    assert data.manifest["extra"]["duplicate_interactions_removed"] == 3
    expected = expected_sequences(rows)
    assert {int(r.raw_user_id): list(r.items) for r in data.sequences.itertuples()} == expected, "the earliest is kept"
    caplog.clear()
    with caplog.at_level("WARNING", logger="delrec_lib.data.pipeline"):
        prepare_grouplens(tmp_path / "clean")
    assert not [r for r in caplog.records if "repeated interaction" in r.getMessage()]
