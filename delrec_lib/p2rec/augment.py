"""P2Rec's information augmentation: the LLM's item states initialise a fresh teacher's item table.

Projection: PCA of the item states (rows 1..N, centred) to the table's width, then one global rescale so
the table's standard deviation equals that of the fresh model's own initialisation of that table
(SASRec / GRU4Rec: 0.02; Caser: 1/width), or kept as PCA gives it (``scale="pca"``). Why PCA and not a
learned projection:

- a projection learned against the source teacher's embeddings would copy that teacher's table, and the
  LLM would add nothing the teacher did not already know; learned inside the fresh teacher, a linear map
  in front of the table is only a re-parameterisation of the same model;
- PCA needs no training and no labels (no split can leak into it), is deterministic, and keeps the
  directions along which the items' states differ most, which is where the SFT put the categories (the
  common component of a shared prompt is removed by the centring).

The rescale matters because the teachers' optimisation is tuned to their initialisation: SASRec multiplies
its item embeddings by sqrt(d) and starts them at std 0.02; a table at PCA's scale (units of the LLM's
hidden state) would start far outside that regime.

Which table: SASRec and GRU4Rec read and score with one item table (``item_emb``). Caser has an input
table (``item_emb``, the "image" its convolutions read) and an output table (``out_emb`` + bias, scored
against the user representation). The default initialises the input table: it is where an item's
meaning enters the model, the role item embeddings have in the SRS the paper enhances; the output
table (``caser_table="output"``) or both are options.
Shapes: N items, H LLM hidden size, D table width.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..teachers.base import SequentialRecommender

CASER_TABLES = {"input": ("item_emb",), "output": ("out_emb",), "both": ("item_emb", "out_emb")}


def init_table_names(teacher: str, caser_table: str = "input") -> tuple[str, ...]:
    """The embedding modules of ``teacher`` that the LLM initialises."""
    if teacher == "caser":
        if caser_table not in CASER_TABLES:
            raise ConfigError(f"p2rec.caser_table: expected one of {list(CASER_TABLES)}, got {caser_table!r}")
        return CASER_TABLES[caser_table]
    return ("item_emb",)


def pca_components(states: torch.Tensor, width: int, *, whiten: bool = False) -> torch.Tensor:
    """[N, width]: the item states' (rows 1..N of [N+1, H]) coordinates on their ``width`` principal axes,
    in float64 for a stable SVD. Each axis's sign makes its largest loading positive (deterministic);
    ``whiten`` gives every axis unit variance."""
    x = states[1:].double()
    x = x - x.mean(0, keepdim=True)
    rank = min(x.shape) - 1  # centring removes one dimension
    if width > rank:
        raise ConfigError(
            f"p2rec: a table of width {width} needs {width} principal axes, but {x.shape[0]} item states of size "
            f"{x.shape[1]} have at most {rank}"
        )
    _, s, vt = torch.linalg.svd(x, full_matrices=False)
    vt = vt[:width]
    signs = torch.sign(vt.gather(1, vt.abs().argmax(1, keepdim=True)))  # [width, 1]
    z = x @ (vt * signs).T  # [N, width]
    if whiten:
        z = z / (s[:width] / (x.shape[0] - 1) ** 0.5)
    return z


def llm_initialisation(model: SequentialRecommender, states: torch.Tensor, teacher: str, *, whiten: bool = False,
                       scale: str = "init", caser_table: str = "input") -> dict[str, torch.Tensor]:  # fmt: skip
    """{table name: [N+1, D] initial weights} for the fresh ``model``: rows 1..N from the item states'
    PCA, row 0 (padding) and anything else as the fresh model has it."""
    if scale not in ("init", "pca"):
        raise ConfigError(f"p2rec.scale: expected 'init' or 'pca', got {scale!r}")
    names = init_table_names(teacher, caser_table)
    tables = {n: getattr(model, n).weight.detach() for n in names}
    n_items = model.num_items
    if states.shape[0] != n_items + 1:
        raise ConfigError(f"p2rec: {states.shape[0] - 1} item states for a teacher of {n_items} items")
    z = pca_components(states, max(t.shape[1] for t in tables.values()), whiten=whiten)
    out = {}
    for name, fresh in tables.items():
        width = fresh.shape[1]
        zi = z[:, :width]
        if scale == "init":  # the fresh table's own spread (its padding row excluded)
            zi = zi * (fresh[1:].double().std() / zi.std())
        table = fresh.clone()
        table[1:] = zi.to(table.dtype)
        out[name] = table
    return out


def apply_initialisation(model: SequentialRecommender, tables: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, table in tables.items():
            weight = getattr(model, name).weight
            if weight.shape != table.shape:
                raise ConfigError(f"p2rec: initial table '{name}' is {tuple(table.shape)}, the model's {tuple(weight.shape)}")
            weight.copy_(table)
