"""The popularity floor and the teachers as methods of the study (``delrec_lib.methods``).

A teacher is evaluated by running its saved model on the split's histories, so the candidate
ranking and the full-catalogue ranking come from one scoring pass, and a shuffled history (the order
diagnostic) goes through the same code. ``ModelRecommender`` wraps any ``SequentialRecommender``, so
methods that produce a teacher-shaped model (P2Rec's enhanced teachers) reuse it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..artifacts import artifact_id, read_manifest, sha256_json
from ..config import RunConfig
from ..errors import StaleArtifactError
from ..methods import Capabilities, Curve, MethodContext, MethodFamily, Recommender
from .base import SequentialRecommender
from .evaluation import model_scorer
from .popularity import popularity_scorer
from .stage import POPULARITY, POPULARITY_KIND, TEACHER_KIND, load_teacher, read_exports, teacher_spec


class ModelRecommender(Recommender):
    """A trained sequential recommender as a method: every item scored by ``user_rep @ item_table.T``."""

    kind = "teacher"
    capabilities = Capabilities(full_catalogue=True)

    def __init__(self, name: str, model: SequentialRecommender, kind: str = "teacher"):
        self.name = name
        self.kind = kind
        self.model = model.eval()
        self._scorer = model_scorer(model)

    def visible_history(self, history: Sequence[int]) -> int:
        return min(len(history), self.model.history_window())

    def score_catalogue(self, users, histories, *, progress=False) -> np.ndarray:
        return self._scorer(np.asarray(users), histories)

    def score(self, users, histories, candidates, *, progress=False) -> np.ndarray:
        full = self.score_catalogue(users, histories)
        return np.take_along_axis(full, np.asarray(candidates, dtype=np.int64), axis=1).astype(np.float64)


class PopularityRecommender(Recommender):
    """Train-split interaction counts: the same ranking for every user, whatever their history."""

    kind = "baseline"
    capabilities = Capabilities(full_catalogue=True)

    def __init__(self, counts: np.ndarray):
        self.name = POPULARITY
        self._scorer = popularity_scorer(counts)

    def visible_history(self, history: Sequence[int]) -> int:
        return 0  # it reads none of the history: the order diagnostic must find no change at all

    def score_catalogue(self, users, histories, *, progress=False) -> np.ndarray:
        return self._scorer(np.asarray(users), histories)

    def score(self, users, histories, candidates, *, progress=False) -> np.ndarray:
        full = self.score_catalogue(users, histories)
        return np.take_along_axis(full, np.asarray(candidates, dtype=np.int64), axis=1).astype(np.float64)


class PopularityFamily(MethodFamily):
    def names(self, config: RunConfig) -> list[str]:
        return [POPULARITY]

    def kind(self, name: str) -> str:
        return "baseline"

    def identity(self, ctx: MethodContext, name: str) -> dict[str, str]:
        directory = ctx.paths.teachers / POPULARITY
        read_exports(directory, ctx.data, kind=POPULARITY_KIND)  # refuses another data set's counts
        return {"data": ctx.data.data_id, "model": artifact_id(read_manifest(directory))}

    def load(self, ctx: MethodContext, name: str) -> Recommender:
        self.identity(ctx, name)
        counts = pd.read_parquet(ctx.paths.teachers / POPULARITY / "popularity.parquet")["count"].to_numpy()
        return PopularityRecommender(np.concatenate([[0], counts]))


class TeacherFamily(MethodFamily):
    def names(self, config: RunConfig) -> list[str]:
        return list(config.teachers.models)

    def kind(self, name: str) -> str:
        return "teacher"

    def identity(self, ctx: MethodContext, name: str) -> dict[str, str]:
        directory = ctx.paths.teachers / name
        manifest = read_manifest(directory, TEACHER_KIND)
        spec = teacher_spec(name, ctx.config.teachers, ctx.data)
        if manifest.get("config_hash") != sha256_json(spec):
            # load_teacher names the differing settings
            load_teacher(directory, ctx.data, ctx.config.teachers)
            raise StaleArtifactError(f"{directory}: trained with other settings than this run's")
        return {"data": ctx.data.data_id, "model": artifact_id(manifest), "spec": sha256_json(spec)}

    def load(self, ctx: MethodContext, name: str) -> Recommender:
        loaded = load_teacher(ctx.paths.teachers / name, ctx.data, ctx.config.teachers)
        return ModelRecommender(name, loaded.model)

    def comparisons(self, config: RunConfig, name: str) -> list[str]:
        return [POPULARITY]

    def curves(self, ctx: MethodContext) -> list[Curve]:
        out = []
        for name in self.names(ctx.config):
            f = ctx.paths.teachers / name / "curves.csv"
            if f.is_file():
                out.append(Curve("02 teachers", name, pd.read_csv(f), "epoch", "NDCG@10", "valid NDCG@10 (full ranking)"))
        return out
