"""Atomic writes, content hashes and manifests: the contracts between stages.

Every artifact directory holds a ``manifest.json`` naming the hashes of its inputs, its
configuration and its output files, and the kit's version (and git commit) that made it. A
stage compares the manifest of what it is about to read with what it expects and refuses stale
or mismatched inputs instead of mixing runs; outputs of another version of the kit are reused
with a warning (a code change need not change a result).
Nothing is pickled: tensors go to safetensors, tables to Parquet/CSV, the rest to JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import DataError, StaleArtifactError
from ..phases import phase

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


def _umask() -> int:
    # mkstemp/mkdtemp create private files; artifacts get the permissions of ordinary files.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Field metadata of a setting added after artifacts existed: at its default it stays out of identities (hashes).
OMIT_DEFAULT_FROM_IDENTITY = "omit_default_from_identity"


def to_jsonable(obj: Any, *, identity: bool = False) -> Any:
    """Dataclasses, paths and tuples as plain JSON values (for configs in manifests). ``identity``: the value an
    artifact's hash reads, which leaves out a later-added setting left at its default, so finished runs stay valid."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name), identity=identity) for f in dataclasses.fields(obj)
                if not (identity and f.metadata.get(OMIT_DEFAULT_FROM_IDENTITY) and getattr(obj, f.name) == f.default)}  # fmt: skip
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, identity=identity) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, identity=identity) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and getattr(obj, "ndim", 0) > 0:  # numpy arrays, tensors
        return obj.tolist()
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        obj = obj.item()
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON; null says "undefined"
        return None
    return obj


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able value, independent of key order."""
    text = json.dumps(to_jsonable(obj, identity=True), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return sha256_bytes(text.encode())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` as a whole if the block succeeds.

    On failure the temporary directory is removed and an existing ``path`` is left untouched,
    so an interrupted or failed stage never destroys the previous outputs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def hash_outputs(directory: str | os.PathLike, names: list[str] | None = None) -> dict[str, str]:
    """sha256 of the files in ``directory`` (recursively, manifest excluded), keyed by relative path."""
    directory = Path(directory)
    if names is None:
        names = sorted(
            p.relative_to(directory).as_posix()
            for p in directory.rglob("*")
            if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")
        )
    return {n: sha256_file(directory / n) for n in names}


@functools.cache
def kit_identity() -> dict[str, Any]:
    """The code that makes an artifact: the kit's version and, in a git checkout of the kit, its commit
    and whether ``delrec_lib/`` has uncommitted changes (None when unknown: no git, or an installed copy)."""
    package = Path(__file__).resolve().parents[1]  # delrec_lib/
    commit = dirty = None
    try:
        def git(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, timeout=10)

        top = git("rev-parse", "--show-toplevel")
        # An installed copy may sit inside some other repository (a venv in a project): only the
        # kit's own checkout, whose top level holds this package, has a commit that means anything.
        if top.returncode == 0 and Path(top.stdout.strip()).resolve() == package.parent:
            head = git("rev-parse", "HEAD")
            if head.returncode == 0:
                commit = head.stdout.strip()
                dirty = git("diff", "--quiet", "HEAD", "--", ".").returncode == 1
    except (OSError, subprocess.SubprocessError):
        pass
    return {"version": __version__, "commit": commit, "dirty": dirty}


def describe_kit(kit: Mapping[str, Any] | None) -> str:
    if not kit:
        return "an unrecorded version (made before manifests recorded the kit's version)"
    commit = kit.get("commit")
    where = f" at commit {commit[:12]}{' with uncommitted changes' if kit.get('dirty') else ''}" if commit else ""
    return f"version {kit.get('version')}{where}"


def same_kit(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> bool:
    """Whether an artifact's recorded kit is this one: same version and, when both know it, same commit."""
    if not recorded:
        return False
    if recorded.get("version") != current["version"]:
        return False
    return not (recorded.get("commit") and current["commit"] and recorded["commit"] != current["commit"])


_warned_kit: set[tuple[str, str]] = set()


def warn_if_other_kit(directory: str | os.PathLike, manifest: Mapping[str, Any]) -> bool:
    """Log (once per artifact and process) that ``directory`` was made by other code than this; True if so.

    Not an error: a code change need not change a result. ``python -m delrec_lib run --rerun STAGE``
    recomputes the stage with this code."""
    recorded, current = manifest.get("kit"), kit_identity()
    if same_kit(recorded, current):
        return False
    key = (str(Path(directory).resolve()), json.dumps(recorded, sort_keys=True))
    if key not in _warned_kit:
        _warned_kit.add(key)
        log.warning(
            "!! %s was made by delrec_lib %s; this is %s. Its results are reused as they are; "
            "`python -m delrec_lib run --rerun STAGE` recomputes a stage with this code.",
            directory, describe_kit(recorded), describe_kit(current),
        )  # fmt: skip
    return True


def build_manifest(
    kind: str,
    directory: str | os.PathLike,
    *,
    inputs: Mapping[str, str] | None = None,
    config: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Manifest of an artifact directory whose files are all written already."""
    return {
        "format": MANIFEST_FORMAT,
        "kind": kind,
        "inputs": dict(sorted((inputs or {}).items())),
        "config": to_jsonable(config) if config is not None else None,
        "config_hash": sha256_json(config) if config is not None else None,
        "outputs": hash_outputs(directory),
        "extra": to_jsonable(dict(extra or {})),
        "kit": dict(kit_identity()),  # what made it: a loader warns when that is not this code
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def write_manifest(directory: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    atomic_write_json(Path(directory) / MANIFEST_NAME, manifest)


@contextlib.contextmanager
def write_stage_output(
    directory: str | os.PathLike,
    kind: str,
    *,
    inputs: Mapping[str, str] | None = None,
    config: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> Iterator[Path]:
    """A stage's output folder, written whole or not at all: yields a temporary folder for the block to
    fill; when the block completes, the manifest (over every file in it) is written and the folder
    replaces ``directory`` (``atomic_dir``). A block that raises leaves ``directory`` as it was."""
    with phase("writing artifacts"), atomic_dir(directory) as tmp:
        yield tmp
        write_manifest(tmp, build_manifest(kind, tmp, inputs=inputs, config=config, extra=extra))


def read_manifest(directory: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise StaleArtifactError(f"{path}: no manifest; the stage that writes {directory} has not completed")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or "outputs" not in manifest or "kind" not in manifest:
        raise DataError(f"{path}: not a manifest (fields 'kind' and 'outputs' expected)")
    if kind is not None and manifest["kind"] != kind:
        raise StaleArtifactError(f"{path}: holds a '{manifest['kind']}' artifact, expected '{kind}'")
    warn_if_other_kit(directory, manifest)
    return manifest


def artifact_id(manifest: Mapping[str, Any]) -> str:
    """Identity of an artifact: the hash of its output files (not of when it was made)."""
    return sha256_json(manifest["outputs"])


def verify_outputs(directory: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """Raise if any file listed in the manifest is missing or differs from its recorded hash."""
    directory = Path(directory)
    for name, digest in manifest["outputs"].items():
        f = directory / name
        if not f.is_file():
            raise StaleArtifactError(f"{f}: listed in {directory / MANIFEST_NAME} but missing")
        if sha256_file(f) != digest:
            raise StaleArtifactError(
                f"{f}: content differs from the hash in {directory / MANIFEST_NAME}; it was changed after "
                "the stage wrote it. Re-run the stage that produces it."
            )


def is_complete(
    directory: str | os.PathLike,
    kind: str,
    *,
    inputs: Mapping[str, str] | None = None,
    config: Any = None,
) -> bool:
    """True when ``directory`` holds a finished ``kind`` artifact made from exactly these inputs/config.

    Used to skip finished stages on a re-run; any difference means the stage must run again.
    """
    try:
        manifest = read_manifest(directory, kind)
        verify_outputs(directory, manifest)
    except (StaleArtifactError, DataError):
        return False
    if inputs is not None and manifest.get("inputs") != dict(sorted(inputs.items())):
        return False
    if config is not None and manifest.get("config_hash") != sha256_json(config):
        return False
    return True


def require_inputs(
    what: str, manifest: Mapping[str, Any], expected: Mapping[str, str], directory: str | os.PathLike
) -> None:
    """Refuse an artifact whose recorded inputs differ from the ones at hand."""
    recorded = manifest.get("inputs", {})
    for name, digest in expected.items():
        if recorded.get(name) != digest:
            raise StaleArtifactError(
                f"{Path(directory) / MANIFEST_NAME}: {what} was made from another '{name}' "
                f"(recorded {str(recorded.get(name))[:12]}, current {digest[:12]}). Re-run the stage that "
                f"writes {directory}."
            )


DISTILL_MATCHED = "matched"  # distill/matched/<prompt>/: never a soft prompt's name (the prompt names refuse it)


@dataclass(frozen=True)
class RunPaths:
    """Where a run's artifacts live (DESIGN.md, "Artifacts and contracts between notebooks").

    Stages write under their own folder and read another stage's only through its artifact and
    manifest."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "config.json"

    @property
    def teachers(self) -> Path:
        return self.root / "teachers"

    @property
    def distill(self) -> Path:
        return self.root / "distill"

    def distill_matched(self, prompt: str) -> Path:
        """Soft prompt ``prompt``'s fidelity on popularity-matched report examples (its own artifact)."""
        return self.distill / DISTILL_MATCHED / prompt

    @property
    def finetune(self) -> Path:
        return self.root / "finetune"

    @property
    def p2rec(self) -> Path:
        return self.root / "p2rec"

    @property
    def llmsrec(self) -> Path:
        return self.root / "llmsrec"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    def phases(self, notebook: str) -> Path:
        """Where a notebook's seconds per phase are left for the runner (``delrec_lib.phases``)."""
        return self.metrics / "phases" / f"{notebook}.json"

    def figure(self, name: str) -> Path:
        self.figures.mkdir(parents=True, exist_ok=True)
        return self.figures / name


def config_differences(recorded: Any, expected: Any, prefix: str = "") -> list[str]:
    """'dotted.field: recorded -> expected' for every leaf where two JSON-able configs differ."""
    recorded, expected = to_jsonable(recorded), to_jsonable(expected)
    if isinstance(recorded, dict) and isinstance(expected, dict):
        out = []
        for key in sorted(set(recorded) | set(expected)):
            out += config_differences(recorded.get(key), expected.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if recorded == expected else [f"{prefix or '(config)'}: {recorded!r} -> {expected!r}"]


def require_config(what: str, manifest: Mapping[str, Any], expected: Any, directory: str | os.PathLike, remedy: str) -> None:
    """Refuse an artifact made with other settings than the run's, naming each differing field
    (as recorded -> as the run has it) and what recomputes it."""
    if manifest.get("config_hash") == sha256_json(expected):
        return
    diffs = config_differences(manifest.get("config"), expected)
    shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
    raise StaleArtifactError(
        f"{Path(directory) / MANIFEST_NAME}: {what} was made with other settings than this run's "
        f"({shown or 'settings differ'}). {remedy}"
    )
