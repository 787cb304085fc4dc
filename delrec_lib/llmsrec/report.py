"""Tables and figures of notebook 05: the prompt, the curves, validation beside trivial rankings, and
how much the user vector depends on the order of the history.

Everything here reads the validation split only (histories and candidate sets); the test split is the
evaluation notebook's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..data.explore import item_popularity
from ..data.processed import ProcessedData
from ..metrics import bootstrap_ci, per_user_metrics
from ..teachers import left_pad
from .model import SlotPrompt
from .stage import METRICS, Prompts, Scorer, select_users


def prompt_layout(backbone, prompt: SlotPrompt) -> pd.DataFrame:
    """The prompt's pieces in order: text runs with their token counts, and each slot with what fills it."""
    rows, start = [], 0
    slots = {p: "[HistoryEmb] = f_I(e_item)" for p in prompt.history_positions}
    slots[prompt.output_position] = "output slot: learnable vector; its last hidden state is the representation"
    for pos in sorted(slots):
        if pos > start:
            rows.append({"tokens": pos - start, "piece": backbone.tokenizer.decode(list(prompt.ids[start:pos]))})
        rows.append({"tokens": 1, "piece": slots[pos]})
        start = pos + 1
    return pd.DataFrame(rows)


def valid_inputs(config: RunConfig, data: ProcessedData) -> dict:
    """The validation users that select the step, their histories and shared candidate sets."""
    _, users = select_users(data, config.llmsrec, config.max_users)
    sets = data.candidate_sets("valid").set_index("user_id").loc[users]
    return {"users": np.array(users), "histories": [data.history(u, "valid") for u in users],
            "candidates": np.stack(sets["candidates"].to_numpy()).astype(np.int64),
            "labels": sets["target_position"].to_numpy().astype(np.int64)}  # fmt: skip


def _row(name: str, per_user: pd.DataFrame) -> dict:
    out = {"method": name, "users": len(per_user)}
    for m in ("HR@1", "NDCG@10", "MRR"):
        mean, lo, hi = bootstrap_ci(per_user[m].to_numpy())
        out[m] = f"{mean:.4f} [{lo:.4f}, {hi:.4f}]"
    return out


def validation_table(scorers: dict[str, Scorer], teacher_name: str, teacher, data: ProcessedData, inputs: dict,
                     user_vectors: dict[str, torch.Tensor] | None = None) -> pd.DataFrame:  # fmt: skip
    """Each variant's candidate metrics on the selection users, beside the teacher, popularity and chance
    on the same candidate sets (the step was chosen on these users: optimistic for the variants).
    ``user_vectors``: each variant's vectors of these users, when already computed."""
    c, labels = inputs["candidates"], inputs["labels"]
    rows = []
    for name, scorer in scorers.items():
        u = (user_vectors or {}).get(name)
        rows.append(_row(name, per_user_metrics(scorer.candidates(inputs["users"], inputs["histories"], c, u), labels)))
    with torch.no_grad():
        full = teacher.score(left_pad(inputs["histories"], teacher.max_len), torch.as_tensor(inputs["users"])).numpy()
    rows.append(_row(teacher_name, per_user_metrics(np.take_along_axis(full, c, axis=1), labels)))
    pop = item_popularity(data, split="train")
    rows.append(_row("popularity", per_user_metrics(pop[c - 1].astype(np.float64), labels)))
    rows.append(_row("chance", per_user_metrics(np.zeros(c.shape), labels)))  # all tied: a uniform random pick
    return pd.DataFrame(rows)


def shuffle_cosine(scorer: Scorer, users, histories, *, seed: int, repeats: int = 1,
                   original: torch.Tensor | None = None) -> pd.DataFrame:  # fmt: skip
    """Per user: the cosine between the user vector of the history and of the same history with its shown
    window shuffled (the items the LLM sees are unchanged, only their order), and whether the shuffle
    moved any item at all (a window of equal items cannot change). ``original``: the history's vectors,
    when already computed."""
    window = scorer.prompts.cfg.history_len
    original = F.normalize(scorer.users(users, histories) if original is None else original, dim=1)
    rows = []
    for r in range(repeats):
        shuffled = []
        for u, h in zip(users, histories, strict=True):
            h = list(h)
            k = min(len(h), window)
            tail = h[len(h) - k :]
            perm = np.random.default_rng([seed, int(u), r]).permutation(k)
            shuffled.append(h[: len(h) - k] + [tail[i] for i in perm])
        vec = F.normalize(scorer.users(users, shuffled), dim=1)
        cos = (original * vec).sum(1).numpy()
        rows += [{"user_id": int(u), "repeat": r, "cosine": float(x)} for u, x in zip(users, cos, strict=True)]
    return pd.DataFrame(rows)


def teacher_cosine(scorer: Scorer, teacher_vectors: torch.Tensor, users, histories,
                   user_vectors: torch.Tensor | None = None) -> np.ndarray:  # fmt: skip
    """Per user: cosine of the LLM's user vector f_user(h_u) and the teacher's f_CF(o_u) (both in the shared space)."""
    u = scorer.users(users, histories) if user_vectors is None else user_vectors
    return F.cosine_similarity(u, teacher_vectors, dim=1).numpy()


def plot_training(history: pd.DataFrame, train_log: pd.DataFrame, axes, *, label: str, metric: str = "NDCG@10",
                  baselines: dict[str, float] | None = None) -> None:  # fmt: skip
    """Left: the three losses per logged step; middle: validation ``metric`` per evaluation, with trivial
    rankings as lines; right: the cosine of the user vector with the teacher's."""
    for key, style in (("loss_ret", "-"), ("loss_dist", "--"), ("loss_unif", ":")):
        if key in train_log:
            axes[0].plot(train_log["step"], train_log[key], style, label=f"{label} {key[5:]}")
    axes[0].set(xlabel="optimizer step", ylabel="training loss", title="Losses (L_ret, L_dist, L_unif)")
    axes[0].legend(fontsize=7)
    axes[1].plot(history["step"], history[metric], "o-", label=label)
    for i, (name, value) in enumerate((baselines or {}).items()):
        axes[1].axhline(value, color=f"C{i + 3}", ls="--", lw=1, label=name)
    axes[1].set(xlabel="optimizer step", ylabel=f"valid {metric} (candidates)", title="Validation (selects the step)")
    axes[1].legend(fontsize=7)
    axes[2].plot(history["step"], history["teacher_cosine"], "o-", label=label)
    axes[2].set(xlabel="optimizer step", ylabel="cosine(user, teacher)", title="User vector vs the teacher's")
    axes[2].legend(fontsize=7)


__all__ = ["METRICS", "Prompts", "plot_training", "prompt_layout", "shuffle_cosine", "teacher_cosine",
           "valid_inputs", "validation_table"]  # fmt: skip
