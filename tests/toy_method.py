"""A method registered as a plugin (``plugins = ["tests.toy_method:ToyFamily"]``), for the test that
a new method appears in every table, figure and diagnostic of notebooks 07-08 without edits there.

"Nearest id": candidates ranked by how close their item id is to the latest history item's. Cheap and
deterministic; it reads the last two items in order and uses the later one, so the order diagnostic
(which swaps them half the time) must move it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from delrec_lib.methods import Capabilities, Curve, MethodContext, MethodFamily, Recommender

TOY = "toy-nearest-id"


class NearestId(Recommender):
    name = TOY
    kind = "baseline"
    capabilities = Capabilities(full_catalogue=True)

    def __init__(self, num_items: int):
        self.num_items = num_items

    def visible_history(self, history) -> int:
        return min(len(history), 2)

    def score_catalogue(self, users, histories, *, progress=False) -> np.ndarray:
        latest = np.array([h[-1] if len(h) else 0 for h in histories], dtype=np.float64)
        items = np.arange(self.num_items + 1, dtype=np.float64)
        return -np.abs(items[None, :] - latest[:, None])

    def score(self, users, histories, candidates, *, progress=False) -> np.ndarray:
        return np.take_along_axis(self.score_catalogue(users, histories), np.asarray(candidates), axis=1)


class ToyFamily(MethodFamily):
    def names(self, config) -> list[str]:
        return [TOY]

    def kind(self, name: str) -> str:
        return "baseline"

    def identity(self, ctx: MethodContext, name: str) -> dict[str, str]:
        return {"data": ctx.data.data_id, "toy": "v1"}

    def load(self, ctx: MethodContext, name: str) -> Recommender:
        return NearestId(ctx.data.num_items)

    def comparisons(self, config, name: str) -> list[str]:
        return ["popularity"]

    def teacher(self, name: str) -> str | None:
        return "sasrec"

    def curves(self, ctx: MethodContext) -> list[Curve]:
        frame = pd.DataFrame({"step": [0, 1, 2], "loss": [1.0, 0.5, 0.25]})
        return [Curve("toy training", TOY, frame, "step", "loss", "loss")]
