"""P2Rec's enhanced teachers as methods of the study (``delrec_lib.methods``).

An enhanced teacher is a teacher: it is loaded as ``ModelRecommender``, so it gets full-catalogue
scores, its model's history window, and every table, paired test and diagnostic the plain teachers get.
Each is compared with its plain teacher (same spec and seed: the random-initialisation ablation),
popularity, and, for an ablation, the main ``p2rec-<teacher>``.
"""

from __future__ import annotations

import pandas as pd

from ..artifacts import artifact_id, sha256_json
from ..config import RunConfig, parse_p2rec_variant
from ..errors import StaleArtifactError
from ..methods import Curve, MethodContext, MethodFamily, Recommender
from ..teachers.methods import ModelRecommender
from ..teachers.stage import POPULARITY
from .stage import load_enhanced, method_config, read_states, states_name


class P2RecFamily(MethodFamily):
    def names(self, config: RunConfig) -> list[str]:
        return list(config.p2rec.variants)

    def kind(self, name: str) -> str:
        return "teacher"

    def identity(self, ctx: MethodContext, name: str) -> dict[str, str]:
        variant = parse_p2rec_variant(name)
        directory = ctx.paths.p2rec / name
        expected = method_config(ctx.config, ctx.data, variant, variant.teacher)
        loaded = load_enhanced(directory, ctx.data, expected)  # refuses other data or settings, naming them
        states_dir = ctx.paths.p2rec / states_name(ctx.config, variant)
        _, states_id = read_states(states_dir, ctx.data)
        if loaded.manifest["inputs"].get("item_states") != states_id:
            raise StaleArtifactError(
                f"{directory}: initialised from other item states than {states_dir} holds now; re-run notebook 06 "
                "or `python -m delrec_lib p2rec` to train it again"
            )
        return {"data": ctx.data.data_id, "model": artifact_id(loaded.manifest), "spec": sha256_json(expected)}

    def load(self, ctx: MethodContext, name: str) -> Recommender:
        self.identity(ctx, name)
        return ModelRecommender(name, load_enhanced(ctx.paths.p2rec / name, ctx.data).model)

    def comparisons(self, config: RunConfig, name: str) -> list[str]:
        variant = parse_p2rec_variant(name)
        main = f"p2rec-{variant.teacher}"
        return [variant.teacher, POPULARITY] + ([main] if name != main else [])

    def curves(self, ctx: MethodContext) -> list[Curve]:
        out = []
        for name in self.names(ctx.config):
            f = ctx.paths.p2rec / name / "curves.csv"
            if f.is_file():
                out.append(Curve("06 P2Rec enhanced teachers", name, pd.read_csv(f), "epoch", "NDCG@10",
                                 "valid NDCG@10 (full ranking)"))  # fmt: skip
        sfts = sorted({states_name(ctx.config, v) for v in map(parse_p2rec_variant, self.names(ctx.config)) if v.sft})
        for name in sfts:
            f = ctx.paths.p2rec / name / "history.csv"
            if f.is_file():
                out.append(Curve("06 P2Rec user-level SFT", name, pd.read_csv(f), "step", "loss",
                                 "held-out users' loss"))  # fmt: skip
        return out

