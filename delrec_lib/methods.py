"""One interface for every recommender of the study, and the registry that names them.

A *method* is anything that ranks a user's candidates: the popularity floor, a teacher, the
zero-shot LLM, a fine-tuned LLM (``lora``, ``delrec-<soft prompt>``), LLM-SRec, a P2Rec-enhanced
teacher. Methods come in *families*, one per module that trains them. A family knows

- which method names a run's configuration produces (``names``),
- what a trained method's scores depend on (``identity``: artifact ids, backbone, settings), which
  keys the evaluation cache and refuses an artifact made with other settings than the run's,
- how to load one from the run folder as a ``Recommender`` (``load``),
- and, optionally, what it is compared with (``comparisons``), the teacher it learns from
  (``teacher``) and its training curves (``curves``).

Evaluation and analysis see only this module: they ask ``run_methods`` for the run's methods and go
through ``family_of(name)``. A new method is one module with a ``MethodFamily`` plus one line in
``FAMILIES`` (or, without editing the kit, a ``plugins`` entry of the run's config naming
``"module:FamilyClass"``); it then appears in every table, figure and diagnostic of the evaluation
and analysis notebooks.

Optional capabilities are declared (``Recommender.capabilities``), never probed:
``full_catalogue`` (``score_catalogue``: every item scored, so full-ranking metrics exist) and
``generation`` (``generate``: a free-text answer for the LLaRA-style protocol). Every method can be
asked to rank a shuffled history: ``visible_history`` says how many of the latest items it reads,
which is exactly what the order diagnostic shuffles.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import ConfigError

if TYPE_CHECKING:
    from .artifacts import RunPaths
    from .config import RunConfig
    from .data.processed import ProcessedData
    from .llm import Backbone

KINDS = ("baseline", "teacher", "llm")


@dataclass(frozen=True)
class Capabilities:
    """What a recommender can do beyond ranking candidates."""

    full_catalogue: bool = False  # score_catalogue(): a score for every item of the catalogue
    generation: bool = False  # generate(): a free-text answer after the recommendation prompt


@dataclass
class Generations:
    """Greedy answers of a generating method, with the candidate titles exactly as its prompts showed them
    (an answer is matched against these)."""

    answers: list[str]
    shown: list[list[str]]  # per user, the candidates' titles in candidate order


class Recommender(ABC):
    """A loaded method, ready to rank.

    Histories are item ids, oldest first (the split's history: train items for valid, train +
    valid target for test); ``candidates`` is an int array [U, C] of item ids in the shared order.
    """

    name: str = ""
    kind: str = "llm"  # one of KINDS: how tables and figures group it
    capabilities: Capabilities = Capabilities()

    @abstractmethod
    def visible_history(self, history: Sequence[int]) -> int:
        """How many of the latest items of ``history`` reach the model (the order diagnostic shuffles
        exactly these, so the set of items the model sees is unchanged)."""

    @abstractmethod
    def score(
        self, users: np.ndarray, histories: Sequence[Sequence[int]], candidates: np.ndarray, *, progress: bool = False
    ) -> np.ndarray:
        """[U, C] float scores of each user's candidates; higher is recommended first."""

    def score_catalogue(
        self, users: np.ndarray, histories: Sequence[Sequence[int]], *, progress: bool = False
    ) -> np.ndarray:
        """[U, N+1] scores of every item (column 0, the padding id, unused). Only with
        ``capabilities.full_catalogue``."""
        raise ConfigError(f"method '{self.name}' does not score the full catalogue")

    def generate(
        self, users: np.ndarray, histories: Sequence[Sequence[int]], candidates: np.ndarray, *, max_new_tokens: int
    ) -> Generations:
        """Greedy free-text answers after the recommendation prompt. Only with ``capabilities.generation``."""
        raise ConfigError(f"method '{self.name}' does not generate answers")


@dataclass(frozen=True)
class Curve:
    """One training curve of a method or of one of its stages, for the analysis notebook's overview."""

    stage: str  # panel title, e.g. "03 soft-prompt distillation"
    label: str  # the line's label (a method or soft-prompt name)
    frame: pd.DataFrame  # at least the x and y columns
    x: str
    y: str
    ylabel: str = ""


@dataclass
class MethodContext:
    """What families need to find and load a run's methods. The LLM backbone is loaded on first use
    and shared by every LLM method of a notebook."""

    config: RunConfig
    paths: RunPaths
    data: ProcessedData
    _backbone: Any = field(default=None, repr=False)
    # What the methods of one notebook may share, by name (e.g. an LLM's lower-layer states of the prompts
    # that several methods read alike); families own their entries' meaning.
    shared: dict[str, Any] = field(default_factory=dict, repr=False)

    # How to load the backbone on first use (``evaluation.method_context`` gives the LLM loader): the registry
    # itself knows no LLM, so that the LLM code may depend on it and not the other way round.
    load_backbone: Any = field(default=None, repr=False)

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            if self.load_backbone is None:
                raise ConfigError("MethodContext: no backbone and no way to load one; build the context with "
                                  "evaluation.method_context, or give it a backbone")  # fmt: skip
            self._backbone = self.load_backbone()
        return self._backbone

    def users(self) -> list[int]:
        """The users every method is evaluated on: all of them (the smoke preset's first ``max_users``)."""
        return self.data.user_ids(self.config.max_users).tolist()


class MethodFamily(ABC):
    """The methods one module trains (see the module docstring)."""

    @abstractmethod
    def names(self, config: RunConfig) -> list[str]:
        """The method names this run's configuration produces, in table order."""

    @abstractmethod
    def identity(self, ctx: MethodContext, name: str) -> dict[str, str]:
        """What ``name``'s scores depend on (artifact ids, backbone, settings hashes): the evaluation
        cache key. Raises ``StaleArtifactError`` when the trained artifact does not belong to this run's
        data and settings (naming both), and a clear error when it has not been trained yet."""

    @abstractmethod
    def load(self, ctx: MethodContext, name: str) -> Recommender:
        """``name`` loaded from the run folder, checked as ``identity`` checks it."""

    def kind(self, name: str) -> str:
        return "llm"

    def comparisons(self, config: RunConfig, name: str) -> list[str]:
        """Methods ``name`` is compared with by paired tests (those the run does not have are skipped)."""
        return []

    def teacher(self, name: str) -> str | None:
        """The method whose behaviour ``name`` is trained to follow (teacher-agreement analysis)."""
        return None

    def replicate_of(self, config: RunConfig, name: str) -> tuple[str, int] | None:
        """(method, seed) when ``name`` is ``method`` trained again with another seed (a seed study): it
        appears in the results table and the seed study, and the per-method diagnostics skip it."""
        return None

    def teacher_in(self, config: RunConfig, name: str) -> str | None:
        """``teacher`` for a family whose teacher is a setting of the run rather than part of the name."""
        return self.teacher(name)

    def curves(self, ctx: MethodContext) -> list[Curve]:
        """Training curves of this family's methods in the run (those already trained)."""
        return []


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

# Table order. Each value is "module:FamilyClass", imported when first asked for, so that nothing
# here (and nothing that imports this module) imports a stage module.
FAMILIES: dict[str, str] = {
    "popularity": "delrec_lib.teachers.methods:PopularityFamily",
    "teachers": "delrec_lib.teachers.methods:TeacherFamily",
    "zero-shot": "delrec_lib.llm.ranker:ZeroShotFamily",
    "finetuned": "delrec_lib.delrec.methods:FinetunedFamily",
    "llm-srec": "delrec_lib.llmsrec.methods:LLMSRecFamily",
    "p2rec": "delrec_lib.p2rec.methods:P2RecFamily",
}

_loaded: dict[str, MethodFamily] = {}


def _load_family(spec: str, where: str) -> MethodFamily:
    if spec in _loaded:
        return _loaded[spec]
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{where}: '{spec}' is not 'module:FamilyClass'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{where}: cannot import '{module_name}' ({e})") from e
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"{where}: module '{module_name}' has no '{attr}'")
    family = cls() if isinstance(cls, type) else cls
    if not isinstance(family, MethodFamily):
        raise ConfigError(f"{where}: '{spec}' is not a MethodFamily")
    _loaded[spec] = family
    return family


def families(config: RunConfig) -> list[MethodFamily]:
    """The registered families in table order, then the run's plugins."""
    out = [_load_family(spec, f"methods.FAMILIES['{key}']") for key, spec in FAMILIES.items()]
    out += [_load_family(spec, f"plugins[{i}]") for i, spec in enumerate(config.plugins)]
    return out


def method_families(config: RunConfig) -> dict[str, MethodFamily]:
    """{method name: its family} for every method the run produces, in table order."""
    out: dict[str, MethodFamily] = {}
    for family in families(config):
        for name in family.names(config):
            if name in out:
                raise ConfigError(f"method '{name}' is produced by two families ({type(out[name]).__name__}, "
                                  f"{type(family).__name__}); method names must be unique")  # fmt: skip
            out[name] = family
    return out


def run_methods(config: RunConfig) -> list[str]:
    """Every method the run's configuration produces, in table order."""
    return list(method_families(config))


def family_of(config: RunConfig, name: str) -> MethodFamily:
    found = method_families(config)
    if name not in found:
        raise ConfigError(f"method '{name}' is not produced by this run's configuration; it has {list(found)}")
    return found[name]


def comparison_pairs(config: RunConfig) -> list[tuple[str, str]]:
    """(method, versus) pairs of the paired tests: what each family asks for, among the run's methods."""
    found = method_families(config)
    pairs = []
    for name, family in found.items():
        for other in family.comparisons(config, name):
            if other in found and other != name and (name, other) not in pairs:
                pairs.append((name, other))
    return pairs


def replicates(config: RunConfig) -> dict[str, tuple[str, int]]:
    """{replicate: (method, seed)} for every method that is another seed's copy of a method of the run."""
    return {n: r for n, f in method_families(config).items() if (r := f.replicate_of(config, n)) is not None}


def teacher_pairs(config: RunConfig) -> list[tuple[str, str]]:
    """(student, teacher) pairs among the run's methods, for the teacher-agreement analysis."""
    found = method_families(config)
    return [(n, t) for n, f in found.items() if (t := f.teacher_in(config, n)) is not None and t in found]
