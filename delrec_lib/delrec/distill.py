"""DELRec stage 1: distil a teacher's recommendation pattern into a soft prompt (LLM frozen).

Two tasks, built from the teacher's exports and the users' train items only:

- Temporal Analysis (TA): the user's train history with its most recent item hidden, the
  teacher's top-1 prediction after the *full* train history (so made after the hidden item, which
  the teacher read), and an in-context example (another training user's solved case); the LLM must
  pick the hidden item from a candidate set (the hidden item plus random items the user never
  interacted with). It teaches how the teacher's next-item prediction follows from the latest item.
- Recommendation Pattern Simulating (RPS): the history and the teacher's predictions ranked
  2..k; the candidates are the teacher's top-k plus random items, and the LLM must rank the
  teacher's top-1 first.

The loss of each task is the softmax cross-entropy over its candidates' scores
(``rank_candidates`` with gradients through the soft prompt). The two are combined by dynamic
gradient-norm weighting: per step, each task's gradient on the soft prompt is rescaled to the
tasks' mean gradient norm, so neither task drowns the other (fixed weights as an option).

No valid or test target is shown as history, and no training input is chosen *by* one:

- histories are train items; the teacher's top-k is its ``topk_valid`` export, computed after the
  train items by a teacher trained on train items only, and is distilled as it is (train items
  dropped, nothing else). Where it ranks a user's later valid or test target, that item stays: the
  ranking is a function of train data, whereas removing the target would make the distilled input
  depend on the label.
- the in-context example comes from a training user (never a held-out one), drawn without
  looking at any target.
- random candidates are items the user never interacted with. That is the protocol's negative
  sampling (the rule of every candidate set of the kit), and the one place where a user's
  valid/test targets enter: as part of all the user's interactions, never singled out.

Held-out users are never trained on and never shown as in-context examples. They form two
disjoint sets: the *selection* set's RPS fidelity (how often the LLM's top-1 equals the
teacher's), every ``eval_every`` steps, picks the best step; the *report* set is scored before
training and with the selected soft prompt only, so its numbers carry no selection bias. The report
set comes from the data's fixed report users (``report_users.json``), which no stage-1 setting
trains or selects on (``split_users``). Beside
them, rankings that need no model on the same examples (``heuristic_hits``): the most popular
candidate, for RPS also the most popular candidate the prompt does not list, and chance.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..artifacts import (
    artifact_id,
    is_complete,
    read_json,
    read_manifest,
    require_config,
    require_inputs,
    sha256_json,
    to_jsonable,
    verify_outputs,
    write_stage_output,
)
from ..config import RunConfig, split_seed
from ..data.explore import item_popularity
from ..data.popularity_matched import DEFAULT_BINS, MATCHED_SEED, matched_range, popularity_bins, train_counts
from ..data.processed import ProcessedData
from ..data.titles import title_word_counts
from ..errors import ConfigError, DataError
from ..llm.prompts import TEACHER_DISPLAY, EncodedPrompt, PromptBuilder, TemporalExample, prompt_format_id
from ..llm.scoring import prefix_states, rank_candidates
from ..metrics import bootstrap_ci, per_user_metrics
from ..teachers import export_spec
from ..training import TrainConfig, Trainer, TrainingTask
from .soft_prompt import (
    SOFT_PROMPT_KIND,
    SoftPrompt,
    distill_stage_config,
    initial_soft_prompt,
    nearest_tokens,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillExample:
    """One stage-1 example in item ids. ``label`` indexes ``candidates``."""

    user_id: int
    task: str  # "ta" | "rps"
    history: tuple[int, ...]  # oldest first
    candidates: tuple[int, ...]
    label: int
    prediction: int | None = None  # TA: the teacher's top-1 after the full train history (hidden item included)
    ranked: tuple[int, ...] = ()  # RPS: the teacher's predictions ranked 2..k
    example: tuple[tuple[int, ...], int, int] | None = None  # TA in-context: (history, prediction, answer)
    teacher_scores: tuple[float, ...] = ()  # RPS with distill.loss "kl": the teacher's score of each candidate

    @property
    def target(self) -> int:
        return self.candidates[self.label]

    @property
    def key(self) -> tuple:
        """What its prompt and cached prefix are kept under: a user's task, with its candidates (a user's
        popularity-matched example lists other ones)."""
        return (self.task, self.user_id, self.candidates)


def teacher_predictions(topk: pd.DataFrame, data: ProcessedData) -> dict[int, list[int]]:
    """Each user's teacher ranking after their train items, train items dropped: as the teacher made
    it, a user's later valid/test targets included (dropping them would use the labels).

    ``topk`` is the teacher's ``topk_valid`` export (computed from the train items only).
    """
    out = {}
    for row in topk.itertuples(index=False):
        uid = int(row.user_id)
        train = set(data.train_items(uid))
        out[uid] = [int(i) for i in row.items if int(i) not in train]
    return out


def _random_items(rng: np.random.Generator, data: ProcessedData, user_id: int, exclude: set[int], n: int) -> list[int]:
    """n distinct items the user never interacted with (the protocol's negatives), not in exclude."""
    seen = set(data.interacted_items(user_id).tolist())
    pool = np.setdiff1d(np.arange(1, data.num_items + 1), np.fromiter(seen | exclude, dtype=np.int64))
    if len(pool) < n:
        raise ConfigError(f"user {user_id}: only {len(pool)} items available for {n} random candidates")
    return [int(i) for i in rng.choice(pool, size=n, replace=False)]


def build_examples(
    data: ProcessedData, predictions: dict[int, list[int]], users: list[int], config: Any, *, donors: list[int],
    teacher_scores: dict[int, np.ndarray] | None = None,
) -> dict[str, dict[int, DistillExample]]:
    """{"ta": ..., "rps": ...}: each task's examples for ``users`` by user id (users too short for a
    task are skipped). A TA in-context example is another user's case drawn from ``donors``, which
    must be training users only: a donor's case shows its history and its teacher top-1. With
    ``teacher_scores`` (user id -> every item's teacher score), RPS examples carry their candidates'."""
    ta, rps = {}, {}
    donors = [int(u) for u in donors if len(data.train_items(u)) >= 2 and predictions.get(u)]
    for uid in users:
        train = data.train_items(uid)
        preds = predictions.get(uid, [])
        if len(preds) >= config.rps_top_k and train:
            rng = np.random.default_rng([config.seed, uid, 1])
            top = preds[: config.rps_top_k]
            cands = top + _random_items(rng, data, uid, set(top), config.rps_random)
            order = rng.permutation(len(cands))
            cands = [cands[i] for i in order]
            scored = tuple(float(teacher_scores[uid][i]) for i in cands) if teacher_scores is not None else ()
            rps[uid] = DistillExample(uid, "rps", tuple(train), tuple(cands), cands.index(top[0]), ranked=tuple(top[1:]),
                                      teacher_scores=scored)  # fmt: skip
        pool = [d for d in donors if d != uid]
        if len(train) >= 2 and preds and pool:
            rng = np.random.default_rng([config.seed, uid, 0])
            hidden, prediction = train[-1], preds[0]
            cands = [hidden] + _random_items(rng, data, uid, {prediction}, config.ta_candidates - 1)
            order = rng.permutation(len(cands))
            cands = [cands[i] for i in order]
            # Its own stream: which donor a user gets does not depend on how the negatives were drawn.
            donor = pool[int(np.random.default_rng([config.seed, uid, 2]).integers(len(pool)))]
            d_train = data.train_items(donor)
            example = (tuple(d_train[:-1]), predictions[donor][0], d_train[-1])
            ta[uid] = DistillExample(uid, "ta", tuple(train[:-1]), tuple(cands), cands.index(hidden),
                                     prediction=prediction, example=example)  # fmt: skip
    return {"ta": ta, "rps": rps}


class UserSplit(NamedTuple):
    """Stage 1's disjoint user sets, each sorted."""

    train: list[int]
    selection: list[int]  # held out: their fidelity selects the step
    report: list[int]  # held out: their fidelity before and after is what stage 1 reports


def split_users(data: ProcessedData, config: Any, max_users: int | None = None) -> UserSplit:
    """The report set from the data's fixed report users, the selection and training sets from the others.

    The report set is the first ``heldout_users`` of the data's fixed report users (``data.report_users``,
    a property of the processed data with its own seed) among the run's users, in their fixed order. The
    selection set (the first ``selection_users`` of a ``seed``-ed shuffle) and the training users are
    drawn from the users outside the *whole* fixed set, so no stage-1 setting (seed, set sizes,
    ``max_train_users``, ``max_users``) can move a report user into training or selection; fixed-set users
    beyond ``heldout_users`` are left out. Data too small for the configured sets (the tests, a
    ``max_users`` run) shrinks them with a warning: the report set to the fixed users present, the
    selection set to half the other users.
    """
    users = data.user_ids(max_users).tolist()
    present = set(users)
    fixed = data.report_users
    available = [u for u in fixed if u in present]
    report = available[: config.heldout_users]
    if not report:
        raise DataError(f"stage 1: none of the {len(users)} users is one of the data's {len(fixed)} fixed report "
                        f"users ({data.directory / 'report_users.json'}); raise max_users")  # fmt: skip
    taken = set(fixed)
    rng = np.random.default_rng([config.seed, 7])
    others = [int(u) for u in rng.permutation([u for u in users if u not in taken])]
    n_select = min(config.selection_users, len(others) // 2)
    if n_select < 1:
        raise DataError(f"stage 1: {len(others)} of the {len(users)} users are outside the fixed report set; at "
                        "least 2 are needed (a selection and a training user)")  # fmt: skip
    if len(report) < config.heldout_users or n_select < config.selection_users:
        log.warning("stage 1: %d users (%d of them fixed report users) cannot spare distill.heldout_users=%d + "
                    "distill.selection_users=%d; holding out %d report + %d selection users", len(users),
                    len(available), config.heldout_users, config.selection_users, len(report), n_select)  # fmt: skip
    selection, train = others[:n_select], others[n_select:]
    if config.max_train_users is not None:
        train = train[: config.max_train_users]
    return UserSplit(sorted(train), sorted(selection), sorted(report))


LONGEST_UNLISTED = "unlisted candidate with the most title words"
HEURISTICS = {
    "rps": ("most popular unlisted candidate", "most popular candidate", LONGEST_UNLISTED),
    "ta": ("most popular candidate",),
}


def title_lengths(data: ProcessedData) -> np.ndarray:
    """Words per item title (index i-1 for item i), counted as the rule teachers read them (``title_words``)."""
    return np.array(title_word_counts(data.display_titles("no_year")[1:]), dtype=np.float64)


def heuristic_hits(examples: dict[int, DistillExample], popularity: np.ndarray,
                   lengths: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """Per user (sorted ids), the HR@1 of rankings that need no model, on the LLM's own examples.

    ``popularity``: train-split interactions per item (index i-1 for item i). "most popular
    candidate" ranks the candidates by it; "most popular unlisted candidate" (RPS) first drops the
    candidates the prompt lists as the teacher's ranks 2..k, which a reader of the prompt can tell
    are not its top-1. ``lengths`` (``title_lengths``): the unlisted candidate whose title has the most
    words (RPS), which finds a teacher whose first choice tends to be a long title (a title of many words
    shares one with a history title more often). Ties count as a uniform random choice (``metrics``).
    """
    rows = [examples[u] for u in sorted(examples)]
    if not rows:
        return {}
    task = rows[0].task
    labels = np.array([e.label for e in rows])
    unlisted = np.array([[i not in e.ranked for i in e.candidates] for e in rows])
    out = {}
    for name in HEURISTICS[task]:
        by = lengths if name == LONGEST_UNLISTED else popularity
        scores = np.array([[by[i - 1] for i in e.candidates] for e in rows], dtype=np.float64)
        valid = unlisted if name in ("most popular unlisted candidate", LONGEST_UNLISTED) else None
        out[name] = per_user_metrics(scores, labels, valid)["HR@1"].to_numpy()
    return out


class DistillTask(TrainingTask):
    """Trains a soft prompt on TA + RPS with the backbone frozen."""

    def __init__(self, backbone, builder: PromptBuilder, soft_prompt: SoftPrompt, titles: list[str],
                 train_examples: dict[str, dict[int, DistillExample]], selection: dict[str, dict[int, DistillExample]],
                 config: Any, teacher: str, llm_config: Any, tasks: tuple[str, ...] = ("ta", "rps")):  # fmt: skip
        self.backbone = backbone
        self.builder = builder
        self.soft_prompt = soft_prompt
        self.titles = titles
        self.config = config
        self.teacher = TEACHER_DISPLAY.get(teacher, teacher)
        self.llm = llm_config
        self.tasks = [t for t in ("ta", "rps") if t in tasks]
        # The tasks held-out users are scored on (distill.heldout_tasks).
        self.scored = tuple(self.tasks) if config.heldout_tasks == "trained" else ("ta", "rps")
        # A training unit is a user with an example for every task, so each step sees both tasks.
        self.train = train_examples
        self.users = sorted(set.intersection(*(set(train_examples[t]) for t in self.tasks)))
        self.selection = selection  # held-out examples whose RPS fidelity selects the step
        self.initial = soft_prompt.embeddings.detach().clone()  # how far the prompt moved is measured from it
        self._prompts: dict[tuple, EncodedPrompt] = {}
        # The frozen LLM's keys/values of each example's text before the slot, computed at its first use.
        self._prefixes: dict[tuple, torch.Tensor] = {}
        self._pending: dict[str, torch.Tensor] = {}

    # -- prompts -------------------------------------------------------------------------------

    def prompt(self, ex: DistillExample) -> EncodedPrompt:
        key = ex.key
        if key not in self._prompts:
            t = self.titles
            if ex.task == "rps":
                p = self.builder.pattern_simulating([t[i] for i in ex.history], [t[i] for i in ex.ranked],
                                                    [t[i] for i in ex.candidates], teacher=self.teacher)  # fmt: skip
            else:
                h, pred, ans = ex.example
                p = self.builder.temporal_analysis(
                    [t[i] for i in ex.history], t[ex.prediction], [t[i] for i in ex.candidates], teacher=self.teacher,
                    example=TemporalExample([t[i] for i in h], t[pred], t[ans]),
                )  # fmt: skip
            self._prompts[key] = p
        return self._prompts[key]

    def scores(self, examples: list[DistillExample], soft: torch.Tensor) -> torch.Tensor:
        prompts = [self.prompt(e) for e in examples]
        return rank_candidates(self.backbone, prompts, soft_prompt=soft, normalize=self.llm.normalize,
                               batch_size=self.llm.score_batch_size, prefixes=self.prefixes(examples, prompts))  # fmt: skip

    def prefixes(self, examples: list[DistillExample], prompts: list[EncodedPrompt]) -> list[torch.Tensor] | None:
        """The cached keys/values of each example's text before the slot (None: ``distill.cache_prefix``
        off, or a model the cache does not support). The LLM is frozen in stage 1, so they never change.
        A per-layer prompt always reads them (it sits in the cache after them). The LoRA control trains
        the upper layers, whose keys/values of the text then change: it reads the whole prompt every time."""
        layered = self.config.prompt_depth == "every_layer"
        if self.config.trainable == "lora" or not (self.config.cache_prefix or layered) or self.backbone.family != "causal":
            return None
        missing = [(e, p) for e, p in zip(examples, prompts, strict=True) if e.key not in self._prefixes]
        if missing:
            # Batched (about 1.35x one prompt at a time on a 2-core CPU), each batch drawn from this call's examples
            # only: a micro-batch's, a held-out set's. A state depends on its batch (padding, kernel blocking) in
            # the last bits; a resumed run makes the same calls (``replay``), so it computes the same states.
            states = prefix_states(self.backbone, [p for _, p in missing], batch_size=self.llm.score_batch_size)
            self._prefixes.update({e.key: st for (e, _), st in zip(missing, states, strict=True)})
        return [self._prefixes[e.key] for e in examples]

    # -- TrainingTask --------------------------------------------------------------------------

    def trainable_module(self) -> torch.nn.Module:
        return self.soft_prompt if self.config.trainable == "prompt" else self.backbone.model

    def num_examples(self) -> int:
        return len(self.users)

    def make_batch(self, indices):
        users = [self.users[i] for i in indices]
        return {t: [self.train[t][u] for u in users] for t in self.tasks}

    def replay(self, indices):
        for examples in self.make_batch(indices).values():  # as training_loss asks for them
            self.prefixes(examples, [self.prompt(e) for e in examples])

    def training_loss(self, batch):
        soft = self.soft_prompt()
        losses = {}
        for task, examples in batch.items():
            scores = self.scores(examples, soft)  # [B, C]
            losses[task] = stage1_loss(scores, examples, self.config)
        self._pending = losses
        weights = dict(zip(("ta", "rps"), self.config.task_weights, strict=True))
        total = sum(weights[t] * losses[t] for t in losses)
        return total, {f"loss_{t}": float(v.detach()) for t, v in losses.items()}

    def backward(self, loss, accelerator, scale):
        if self.config.weighting == "fixed" or len(self._pending) == 1:
            accelerator.backward(loss * scale)
            return None
        params = [p for p in self.trainable_module().parameters() if p.requires_grad]
        tasks = list(self._pending)
        grads = []  # per task, its gradient of every trained parameter, flattened into one vector
        for i, t in enumerate(tasks):
            g = torch.autograd.grad(self._pending[t] * scale, params, retain_graph=i < len(tasks) - 1, allow_unused=True)
            grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1) for x, p in zip(g, params, strict=True)]))
        if accelerator.num_processes > 1:
            grads = [accelerator.reduce(g, reduction="mean") for g in grads]
        norms = torch.stack([g.norm() for g in grads]).clamp_min(1e-12)
        weights = norms.mean() / norms  # every task's gradient gets the mean norm
        if self.config.max_task_weight is not None:
            weights = weights.clamp(max=self.config.max_task_weight)
        combined = sum(w * g for w, g in zip(weights, grads, strict=True))
        offset = 0
        for p in params:
            part = combined[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            p.grad = part if p.grad is None else p.grad + part
        self._pending = {}
        return {f"w_{t}": float(w) for t, w in zip(tasks, weights, strict=True)}

    def evaluate(self) -> dict[str, float]:
        metrics = selection_metrics(self.heldout_scores(self.soft_prompt(), self.selection))
        return {**metrics, "soft_prompt_moved": prompt_moved(self.soft_prompt.embeddings, self.initial)}

    # -- held-out evaluation ---------------------------------------------------------------------

    def heldout_scores(self, soft: torch.Tensor, heldout: dict[str, dict[int, DistillExample]],
                       tasks: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
        """Per held-out user (sorted ids): HR@1 of the LLM on each task (for RPS: the distillation fidelity)."""
        return {t: hits for t, (hits, _) in self.heldout_picks(soft, heldout, tasks).items()}

    def heldout_picks(self, soft: torch.Tensor, heldout: dict[str, dict[int, DistillExample]],
                      tasks: tuple[str, ...] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
        """Per task (None: those of distill.heldout_tasks), per held-out user (sorted ids): the LLM's HR@1 and the
        item it ranked first."""
        out = {}
        with torch.no_grad():
            for t in self.scored if tasks is None else tasks:
                examples = [heldout[t][u] for u in sorted(heldout.get(t, {}))]
                if not examples:
                    continue
                scores = self.scores(examples, soft).float().cpu().numpy()
                labels = np.array([e.label for e in examples])
                picks = np.array([e.candidates[int(i)] for e, i in zip(examples, scores.argmax(axis=1), strict=True)])
                out[t] = (per_user_metrics(scores, labels)["HR@1"].to_numpy(), picks)
        return out


def picks_listed(examples: dict[int, DistillExample], picks: np.ndarray) -> np.ndarray:
    """Per RPS example (sorted users): 1 where the LLM's first choice is one of the teacher's ranks 2..k, the
    candidates the prompt itself lists: a language model's pull towards a title it has just read."""
    return np.array([float(int(p) in examples[u].ranked) for u, p in zip(sorted(examples), picks, strict=True)])


def stage1_loss(scores: torch.Tensor, examples: list[DistillExample], config: Any) -> torch.Tensor:
    """The loss of one task's batch from the LLM's candidate scores [B, C]: cross-entropy on each example's label,
    or for RPS with ``config.loss == "kl"`` the KL divergence from the teacher's softmax over the candidates
    (teacher scores / ``kl_temperature``) to the LLM's, averaged over the batch."""
    scores = scores.float()
    if examples[0].task == "rps" and config.loss == "kl":
        teacher = torch.tensor([e.teacher_scores for e in examples], dtype=torch.float32, device=scores.device)
        target = torch.softmax(teacher / config.kl_temperature, dim=-1)  # [B, C]
        return F.kl_div(torch.log_softmax(scores, dim=-1), target, reduction="batchmean")
    labels = torch.tensor([e.label for e in examples], device=scores.device)
    return F.cross_entropy(scores, labels)


def prompt_moved(current: torch.Tensor, initial: torch.Tensor) -> float:
    """How far a soft prompt moved from its initialisation: ||current - initial|| / ||initial||."""
    return float((current.detach() - initial).norm() / initial.norm())


def selection_metrics(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """The selection set's RPS fidelity (it picks the step) and TA accuracy (for the learning curve)."""
    out = {"fidelity": float(per_user["rps"].mean()), "selection_users": float(len(per_user["rps"]))}
    if "ta" in per_user:
        out["ta_accuracy"] = float(per_user["ta"].mean())
    return out


@dataclass
class DistillResult:
    name: str  # the soft prompt's name: "<teacher>" or "<teacher>-ta" / "-rps"
    directory: Path
    metrics: dict[str, Any]
    history: pd.DataFrame
    train_log: pd.DataFrame
    soft_prompt: SoftPrompt
    skipped: bool = False


def read_teacher_topk(teacher_dir: Path, data: ProcessedData, teachers_config: Any = None) -> pd.DataFrame:
    """The teacher's top-k after each user's train items, refused unless made from this data (and,
    given the run's ``TeachersConfig``, with this run's teacher settings)."""
    manifest = read_manifest(teacher_dir)
    verify_outputs(teacher_dir, manifest)
    require_inputs(f"teacher '{teacher_dir.name}'", manifest, {"data": data.data_id}, teacher_dir)
    if teachers_config is not None:
        require_config(f"teacher '{teacher_dir.name}'", manifest, export_spec(teacher_dir.name, teachers_config, data),
                       teacher_dir, "Re-run the teacher stage (notebook 02 or `python -m delrec_lib teachers`).")  # fmt: skip
    path = teacher_dir / "topk_valid.parquet"
    if not path.is_file():
        raise DataError(f"{path}: missing; the teacher stage (notebook 02) exports it")
    return pd.read_parquet(path)


def read_teacher_scores(teacher_dir: Path, data: ProcessedData) -> dict[int, np.ndarray]:
    """Every item's teacher score after each user's train items (``scores_valid.npz``), by user id, as float32;
    call after ``read_teacher_topk``, which checks the export's manifest and hashes."""
    path = teacher_dir / "scores_valid.npz"
    if not path.is_file():
        raise DataError(f"{path}: missing. distill.loss = 'kl' reads the teacher's score of every candidate, which "
                        f"exports before this file existed lack: delete {teacher_dir} and re-run the teacher stage "
                        "(notebook 02 or `python -m delrec_lib teachers`)")  # fmt: skip
    with np.load(path) as f:
        users, scores = f["users"], f["scores"]
    if scores.shape != (len(users), data.num_items + 1):
        raise DataError(f"{path}: scores of shape {scores.shape}; expected {(len(users), data.num_items + 1)} (users x items + 1)")
    return {int(u): row.astype(np.float32) for u, row in zip(users, scores, strict=True)}


def distill_inputs(data: ProcessedData, teacher_dir: Path, backbone: Any, llm_config: Any, num_soft_tokens: int) -> dict[str, str]:
    return {
        "data": data.data_id,
        "teacher": artifact_id(read_manifest(teacher_dir)),
        "backbone": backbone.identity,
        "template": prompt_format_id(backbone, llm_config, num_soft_tokens),
        "report_users": data.report_users_id,  # the fixed report set the users are split around
    }


def train_config(cfg: Any, seed: int | None = None) -> TrainConfig:
    """The Trainer's settings; ``seed`` (a seed's copy, ``distill.seeds``) orders the training users, else ``cfg.seed``."""
    return TrainConfig(
        max_epochs=10_000, max_steps=cfg.max_steps, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
        lr=cfg.lr, warmup_steps=cfg.warmup_steps, schedule=cfg.schedule, max_grad_norm=cfg.max_grad_norm,
        eval_every=cfg.eval_every, metric="fidelity", greater_is_better=True, bf16=False,
        seed=cfg.seed if seed is None else seed,
        log_every=max(1, min(5, cfg.max_steps)),
    )  # fmt: skip


def _json(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False) + "\n"


def _ci(values: np.ndarray) -> dict[str, float]:
    mean, low, high = bootstrap_ci(values)
    return {"mean": mean, "ci_low": low, "ci_high": high, "users": len(values)}


def load_distilled(directory: Path) -> DistillResult:
    soft, _ = SoftPrompt.load(directory / "soft_prompt.safetensors")
    return DistillResult(
        name=directory.name, directory=directory, metrics=read_json(directory / "metrics.json"),
        history=pd.read_csv(directory / "history.csv"), train_log=pd.read_csv(directory / "train_log.csv"),
        soft_prompt=soft, skipped=True,
    )  # fmt: skip


def run_distillation(
    config: RunConfig, paths: Any, data: ProcessedData, backbone: Any, name: str, *, progress: bool = True,
    callbacks=(),
) -> DistillResult:
    """Stage 1 for one soft prompt (``name`` = "<teacher>" or an ablation "<teacher>-ta" / "-rps"):
    writes ``<run>/distill/<name>/``; skipped when already up to date."""
    stage_config = distill_stage_config(config, name)  # the soft prompt's settings, its teacher and tasks
    teacher, tasks = stage_config["teacher"], stage_config["tasks"]
    cfg = stage_config["distill"]
    if cfg.trainable == "lora" and cfg.prompt_depth != "input":
        raise ConfigError(f"soft prompt '{name}': distill.trainable='lora' (the control) keeps an input-layer prompt; its "
                          f"prompt depth is {cfg.prompt_depth!r} (distill.prompt_depth, or known_answer_depth for the known answer)")  # fmt: skip
    teacher_dir = paths.teachers / teacher
    topk = read_teacher_topk(teacher_dir, data, config.teachers)
    llm = stage_config["llm"]  # the run's, or the known answer's own head
    inputs = distill_inputs(data, teacher_dir, backbone, llm, cfg.num_soft_tokens)
    out_dir = paths.distill / name
    if is_complete(out_dir, SOFT_PROMPT_KIND, inputs=inputs, config=stage_config):
        log.info("%s is up to date", out_dir)
        return load_distilled(out_dir)

    predictions = teacher_predictions(topk, data)
    scores = read_teacher_scores(teacher_dir, data) if cfg.loss == "kl" else None
    users = split_users(data, cfg, config.max_users)
    # Donors (TA in-context examples) are training users for every set: a held-out user's case
    # would put its teacher top-1, the held-out RPS label, into a training prompt.
    train, selection, report = (build_examples(data, predictions, group, cfg, donors=users.train, teacher_scores=scores)
                                for group in users)  # fmt: skip
    for label, examples, field in (("selection", selection, "selection_users"), ("report", report, "heldout_users")):
        if not examples["rps"]:
            raise DataError(f"stage 1: no {label} user has an RPS example; raise distill.{field}")

    builder = PromptBuilder(backbone, llm, num_soft_tokens=cfg.num_soft_tokens, catalogue=data.titles)
    soft = initial_soft_prompt(backbone, cfg, teacher)
    initial = soft.embeddings.detach().clone()
    scorer = backbone
    if cfg.trainable == "lora":  # the control: the prompt as initialised, the top layers' adapters train
        soft.requires_grad_(False)
        scorer = backbone.with_model(lora_control_model(backbone, cfg))
    task = DistillTask(scorer, builder, soft, data.titles, train, selection, cfg, teacher, llm, tasks)
    if not task.users:
        raise DataError("stage 1: no training user has both a TA and an RPS example")

    start = time.perf_counter()
    before_picks = task.heldout_picks(initial, report)
    before = {t: hits for t, (hits, _) in before_picks.items()}
    selection_before = selection_metrics(task.heldout_scores(initial, selection))
    train_seed = stage_config.get("train_seed", cfg.seed)
    trainer = Trainer(train_config(cfg, train_seed), task, paths.distill / ".checkpoints" / name, desc=f"distill {name}",
                      progress=progress, callbacks=callbacks, identity={"inputs": inputs, "config": stage_config})  # fmt: skip
    result = trainer.train()
    trainer.load_best()
    after_picks = task.heldout_picks(soft.embeddings.detach(), report)  # the selected soft prompt only
    after = {t: hits for t, (hits, _) in after_picks.items()}
    listed = {when: picks_listed(report["rps"], p["rps"][1]) for when, p in (("before", before_picks), ("after", after_picks))}
    seconds = time.perf_counter() - start

    popularity, lengths = item_popularity(data, split="train"), title_lengths(data)
    baselines = {t: heuristic_hits(report[t], popularity, lengths) for t in ("ta", "rps")}
    history = pd.DataFrame([{"step": 0, **selection_before, "soft_prompt_moved": 0.0}, *result.history])
    # The x of a learning curve: training users seen (each brings one example per task).
    history.insert(1, "users_seen", history["step"] * cfg.batch_size * cfg.grad_accum * result.processes)
    train_log = pd.DataFrame(result.train_log)
    per_user = pd.DataFrame({"user_id": sorted(report["rps"]), "fidelity_before": before["rps"],
                             "fidelity_after": after["rps"], "picks_listed_before": listed["before"],
                             "picks_listed_after": listed["after"], **baselines["rps"]})  # fmt: skip
    metrics = {
        "prompt": name,
        "teacher": teacher,
        "tasks": list(tasks),
        "train_seed": train_seed,  # orders the training users; the users and examples come from distill.seed
        # The report set: never trained on, never a donor, not used to select the step.
        "fidelity_before": _ci(before["rps"]),
        "fidelity_after": _ci(after["rps"]),
        "fidelity_chance": 1.0 / (cfg.rps_top_k + cfg.rps_random),
        "fidelity_baselines": {k: _ci(v) for k, v in baselines["rps"].items()},
        # How often the LLM's first choice is a title the prompt lists (the teacher's ranks 2..k, wrong by
        # construction), and how often a uniform pick would be.
        "picks_listed_before": _ci(listed["before"]),
        "picks_listed_after": _ci(listed["after"]),
        "picks_listed_chance": (cfg.rps_top_k - 1) / (cfg.rps_top_k + cfg.rps_random),
        "ta_accuracy_before": _ci(before["ta"]) if "ta" in before else None,
        "ta_accuracy_after": _ci(after["ta"]) if "ta" in after else None,
        "ta_chance": 1.0 / cfg.ta_candidates,
        "ta_baselines": {k: _ci(v) for k, v in baselines["ta"].items()},
        # The selection set, whose curve is history.csv; its fidelity at the best step is
        # optimistic by construction (the step was chosen on it): set it beside fidelity_after.
        "selection": {
            "users": len(selection["rps"]),
            "fidelity_before": selection_before["fidelity"],
            "ta_accuracy_before": selection_before.get("ta_accuracy"),
            "fidelity_best": result.best_metric,
            "fidelity_baselines": {k: _ci(v) for k, v in heuristic_hits(selection["rps"], popularity, lengths).items()},
            "ta_baselines": {k: _ci(v) for k, v in heuristic_hits(selection["ta"], popularity, lengths).items()},
        },
        "train_users": len(task.users),
        "heldout_users": len(report["rps"]),
        # Who the report set is: equal hashes, same users (of the data's fixed report set, ``fixed_set``).
        "report_users": {"hash": sha256_json(sorted(report["rps"])), "fixed_set": data.report_users_id},
        "selection_users": len(selection["rps"]),
        "steps": result.steps,
        "best_step": result.best_step,
        "processes": result.processes,  # the global batch is processes x batch_size
        "seconds": round(seconds, 1),
        "soft_prompt_moved": prompt_moved(soft.embeddings, initial),
    }
    example_user = sorted(report["rps"])[0]
    examples_text = {"rps": task.prompt(report["rps"][example_user]).text}
    if example_user in report["ta"]:
        examples_text["ta"] = task.prompt(report["ta"][example_user]).text
    meta = {**inputs, "teacher": teacher, "prompt": name, "tasks": ",".join(tasks), "kind": SOFT_PROMPT_KIND}
    if trainer.is_main_process:  # every process holds the same soft prompt; one writes it
        extra = {"teacher": teacher, "prompt": name}
        with write_stage_output(out_dir, SOFT_PROMPT_KIND, inputs=inputs, config=stage_config, extra=extra) as tmp:
            soft.save(tmp / "soft_prompt.safetensors", meta)
            history.to_csv(tmp / "history.csv", index=False)
            train_log.to_csv(tmp / "train_log.csv", index=False)
            per_user.to_parquet(tmp / "per_user.parquet", index=False)
            (tmp / "metrics.json").write_text(_json(metrics))
            (tmp / "examples.json").write_text(_json(examples_text))
            if cfg.trainable == "lora":
                scorer.model.save_pretrained(str(tmp / "adapter"))
            if not soft.every_layer:  # a per-layer prompt has no input vectors to compare with the vocabulary
                (tmp / "nearest_tokens.json").write_text(_json(nearest_tokens(backbone, soft.embeddings)))
    trainer.wait_for_everyone()
    return DistillResult(name, out_dir, metrics, history, train_log, soft)


STAGE1_MATCHED_KIND = "stage1-popularity-matched"


def matched_rps_examples(data: ProcessedData, examples: dict[int, DistillExample],
                         bins: int = DEFAULT_BINS) -> tuple[dict[int, DistillExample], int]:  # fmt: skip
    """Each RPS example again with its random candidates replaced by as many never-interacted items from the
    teacher top-1's bin of train-interaction counts (the test sets' popularity-matched rule, widened alike), the
    teacher's ranks 2..k kept (the prompt lists them), shuffled; and how many users' bins were widened."""
    _, item_bins = popularity_bins(train_counts(data), bins)
    out, widened = {}, 0
    for uid, ex in examples.items():
        kept = [ex.target, *ex.ranked]
        unseen = np.ones(data.num_items + 1, dtype=bool)
        unseen[0] = False
        unseen[data.interacted_items(uid)] = False
        unseen[kept] = False
        needed = len(ex.candidates) - len(kept)
        low, high = matched_range(item_bins, unseen, int(item_bins[ex.target]), needed, f"stage 1 report user {uid}")
        widened += int(high > low)
        pool = np.flatnonzero(unseen & (item_bins >= low) & (item_bins <= high))
        rng = np.random.default_rng([MATCHED_SEED, uid, 1])
        cands = kept + [int(i) for i in rng.choice(pool, size=needed, replace=False)]
        cands = [cands[i] for i in rng.permutation(len(cands))]
        out[uid] = dataclasses.replace(ex, candidates=tuple(cands), label=cands.index(ex.target), teacher_scores=())
    return out, widened


def stage1_matched(config: RunConfig, paths: Any, data: ProcessedData, backbone: Any, name: str) -> dict[str, Any] | None:
    """Soft prompt ``name``'s RPS fidelity on its report users' popularity-matched examples (``matched_rps_examples``),
    untrained and trained, beside the heuristics on the same examples: whether stage 1 learned more than the
    teacher's taste for popular items. Written once as ``distill/matched/<name>/`` (its own artifact: the soft
    prompt is unchanged); returns its metrics, or None for the LoRA control, whose training is not its prompt."""
    directory = paths.distill / name
    manifest = read_manifest(directory, SOFT_PROMPT_KIND)
    if manifest["config"]["distill"].get("trainable", "prompt") != "prompt":
        return None
    inputs = {"soft_prompt": artifact_id(manifest), "data": data.data_id, "bins": str(DEFAULT_BINS), "seed": str(MATCHED_SEED)}
    out = paths.distill_matched(name)
    if is_complete(out, STAGE1_MATCHED_KIND, inputs=inputs):
        return read_json(out / "metrics.json")
    stage = distill_stage_config(config, name)
    initial = initial_soft_prompt(backbone, stage["distill"], stage["teacher"])
    trained = load_distilled(directory).soft_prompt.embeddings.detach()
    task, examples, _ = _report_examples(config, paths, data, backbone, name, initial)
    matched, widened = matched_rps_examples(data, examples["rps"])
    before, before_picks = task.heldout_picks(initial.embeddings.detach(), {"rps": matched}, tasks=("rps",))["rps"]
    after, after_picks = task.heldout_picks(trained, {"rps": matched}, tasks=("rps",))["rps"]
    baselines = heuristic_hits(matched, item_popularity(data, split="train"), title_lengths(data))
    metrics = {"prompt": name, "users": len(matched), "widened_users": widened, "bins": DEFAULT_BINS,
               "fidelity_before": _ci(before), "fidelity_after": _ci(after),
               "picks_listed_before": _ci(picks_listed(matched, before_picks)),
               "picks_listed_after": _ci(picks_listed(matched, after_picks)),
               "fidelity_chance": 1.0 / len(next(iter(matched.values())).candidates),
               "fidelity_baselines": {k: _ci(v) for k, v in baselines.items()}}  # fmt: skip
    with write_stage_output(out, STAGE1_MATCHED_KIND, inputs=inputs, extra={"prompt": name}) as tmp:
        (tmp / "metrics.json").write_text(_json(metrics))
        pd.DataFrame({"user_id": sorted(matched), "fidelity_before": before, "fidelity_after": after,
                      **baselines}).to_parquet(tmp / "per_user.parquet", index=False)  # fmt: skip
    return metrics


def lora_control_model(backbone: Any, cfg: Any) -> Any:
    """A copy of the backbone with LoRA adapters (rank ``lora_r``) on the attention projections of its top
    ``lora_layers`` layers, seeded: stage 1's LoRA control (``distill.trainable = "lora"``)."""
    import copy

    from peft import LoraConfig, TaskType, get_peft_model

    from ..llm import peft_wrapping

    n = int(backbone.base_model.config.num_hidden_layers)
    if backbone.family != "causal" or cfg.lora_layers > n:
        raise ConfigError(f"distill.lora_layers={cfg.lora_layers}: the control adapts the top layers of a causal "
                          f"model ({n} layers here)")  # fmt: skip
    torch.manual_seed(cfg.seed)
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0,
                        layers_to_transform=list(range(n - cfg.lora_layers, n)), layers_pattern="layers")  # fmt: skip
    with peft_wrapping():
        return get_peft_model(copy.deepcopy(backbone.model), config)


def _report_examples(config: RunConfig, paths: Any, data: ProcessedData, backbone: Any, name: str,
                     soft: SoftPrompt) -> tuple[DistillTask, dict[str, dict[int, DistillExample]], list[int]]:  # fmt: skip
    """Soft prompt ``name``'s report-set examples as stage 1 builds them, a task that scores them with
    ``soft``, and the report users (sorted)."""
    stage_config = distill_stage_config(config, name)
    teacher, cfg = stage_config["teacher"], stage_config["distill"]
    predictions = teacher_predictions(read_teacher_topk(paths.teachers / teacher, data, config.teachers), data)
    scores = read_teacher_scores(paths.teachers / teacher, data) if cfg.loss == "kl" else None
    split = split_users(data, cfg, config.max_users)
    examples = build_examples(data, predictions, split.report, cfg, donors=split.train, teacher_scores=scores)
    builder = PromptBuilder(backbone, stage_config["llm"], num_soft_tokens=cfg.num_soft_tokens, catalogue=data.titles)
    task = DistillTask(backbone, builder, soft, data.titles, examples, {}, cfg, teacher, stage_config["llm"])
    return task, examples, split.report


def teaching_table(config: RunConfig, paths: Any, data: ProcessedData, backbone: Any, name: str, trained: torch.Tensor,
                   users: int = 3) -> pd.DataFrame:  # fmt: skip
    """A few report-set users' RPS examples side by side, for a class: every candidate with the teacher's
    rank (1 is the label; "-" for the random candidates), its train popularity, and the LLM's score and rank
    with the soft prompt as initialised and as trained (``trained`` [K, hidden])."""
    stage_config = distill_stage_config(config, name)
    initial = initial_soft_prompt(backbone, stage_config["distill"], stage_config["teacher"])
    task, examples, _ = _report_examples(config, paths, data, backbone, name, initial)
    rps = examples["rps"]
    picked = [rps[u] for u in sorted(rps)[:users]]
    popularity = item_popularity(data, split="train")
    rows = []
    with torch.no_grad():
        before = task.scores(picked, initial.embeddings.detach()).float().cpu().numpy()
        after = task.scores(picked, trained.detach()).float().cpu().numpy()
    for e, s0, s1 in zip(picked, before, after, strict=True):
        ranks = {item: k + 1 for k, item in enumerate((e.target, *e.ranked))}
        r0, r1 = (-s0).argsort().argsort() + 1, (-s1).argsort().argsort() + 1
        for c, item in enumerate(e.candidates):
            rows.append({"user": e.user_id, "candidate": data.titles[item], "teacher rank": ranks.get(item, "-"),
                         "train popularity": int(popularity[item - 1]), "LLM score, initial": round(float(s0[c]), 3),
                         "LLM rank, initial": int(r0[c]), "LLM score, trained": round(float(s1[c]), 3),
                         "LLM rank, trained": int(r1[c])})  # fmt: skip
    return pd.DataFrame(rows).sort_values(["user", "LLM rank, trained"]).reset_index(drop=True)


def describe_examples(examples: dict[str, DistillExample]) -> pd.DataFrame:
    return pd.DataFrame([dataclasses.asdict(e) for e in examples.values()])


def preview_prompts(config: RunConfig, paths: Any, data: ProcessedData, backbone: Any, name: str) -> dict[str, EncodedPrompt]:
    """The TA and RPS prompts of the first report-set user (with an example of each task), as stage 1 renders them."""
    cfg = distill_stage_config(config, name)["distill"]
    blank = SoftPrompt(torch.zeros(cfg.num_soft_tokens, backbone.hidden_size))
    task, examples, report = _report_examples(config, paths, data, backbone, name, blank)
    user = next(u for u in report if u in examples["ta"] and u in examples["rps"])
    return {"ta": task.prompt(examples["ta"][user]), "rps": task.prompt(examples["rps"][user])}


@dataclass
class StepAnatomy:
    """One RPS training step taken apart (``anatomy_of_a_step``)."""

    layout: pd.DataFrame  # segment, tokens: the text before the slot, the K soft vectors, the text after
    candidates: pd.DataFrame  # candidate, teacher rank, LLM score, softmax probability
    loss: float  # the stage's RPS loss: cross-entropy of the teacher's top-1, or KL from the teacher's softmax
    loss_name: str  # which of the two (distill.loss)
    gradients: pd.DataFrame  # parameters, count, with a gradient, gradient norm: soft prompt vs the frozen LLM


def anatomy_of_a_step(config: RunConfig, paths: Any, data: ProcessedData, backbone: Any, name: str,
                      soft: torch.Tensor | None = None) -> StepAnatomy:  # fmt: skip
    """The first report user's RPS example through one forward and backward pass, as a training step runs it
    (nothing is updated): where the soft-prompt vectors are spliced, every candidate's score, the loss, and
    which parameters the gradient reaches (the soft prompt's vectors only; the LLM is frozen)."""
    stage_config = distill_stage_config(config, name)
    init = initial_soft_prompt(backbone, stage_config["distill"], stage_config["teacher"])
    vectors = (init.embeddings if soft is None else soft).detach().clone().requires_grad_(True)
    task, examples, report = _report_examples(config, paths, data, backbone, name, SoftPrompt(vectors.detach()))
    example = examples["rps"][next(u for u in report if u in examples["rps"])]
    prompt = task.prompt(example)
    scores = task.scores([example], vectors)[0]  # [C]
    cfg = stage_config["distill"]
    loss = stage1_loss(scores[None], [example], cfg)
    frozen = [p for p in backbone.model.parameters()]
    loss.backward()
    ranks = {item: k + 1 for k, item in enumerate((example.target, *example.ranked))}
    probs = torch.softmax(scores.detach().float(), dim=-1)
    candidates = pd.DataFrame({
        "candidate": [data.titles[i] for i in example.candidates],
        "teacher rank": [ranks.get(i, "-") for i in example.candidates],
        "LLM score": scores.detach().float().numpy().round(3),
        "probability": probs.numpy().round(3),
    }).sort_values("LLM score", ascending=False).reset_index(drop=True)  # fmt: skip
    layout = pd.DataFrame({
        "segment": ["text before the slot (frozen token embeddings)", "soft prompt (trainable vectors)",
                    "text after the slot (frozen token embeddings)", "candidates scored after the prompt"],
        "tokens": [len(prompt.before_ids), prompt.num_soft_tokens, len(prompt.after_ids), len(prompt.candidates)],
    })  # fmt: skip
    reached = [p for p in frozen if p.grad is not None]
    gradients = pd.DataFrame({
        "parameters": ["soft prompt", "LLM (frozen)"],
        "count": [vectors.numel(), sum(p.numel() for p in frozen)],
        "with a gradient": [vectors.numel() if vectors.grad is not None else 0, sum(p.numel() for p in reached)],
        "gradient norm": [float(vectors.grad.norm()) if vectors.grad is not None else 0.0,
                          float(sum(p.grad.norm() ** 2 for p in reached) ** 0.5) if reached else 0.0],
    })  # fmt: skip
    loss_name = "KL divergence from the teacher's softmax" if cfg.loss == "kl" else "cross-entropy of the teacher's top-1"
    return StepAnatomy(layout, candidates, float(loss.detach()), loss_name, gradients)


def _ci_text(v: dict[str, float] | None) -> str:
    return f"{v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]" if v else "-"


def stage1_table(metrics: dict[str, Any]) -> pd.Series:
    """A soft prompt's stage-1 numbers as notebook 03 shows them: the report set before and after, beside
    the heuristics on the same examples and chance, with 95% intervals; the selection set; the budget."""
    m = metrics
    return pd.Series({
        "RPS fidelity, LLM untrained": _ci_text(m["fidelity_before"]),
        "RPS fidelity, LLM trained": _ci_text(m["fidelity_after"]),
        **{f"RPS fidelity, {k}": _ci_text(v) for k, v in m["fidelity_baselines"].items()},
        "RPS fidelity, chance": f"{m['fidelity_chance']:.3f}",
        **({"RPS: LLM picks a title the prompt lists, untrained": _ci_text(m["picks_listed_before"]),
            "RPS: LLM picks a title the prompt lists, trained": _ci_text(m["picks_listed_after"]),
            "RPS: a title the prompt lists, by chance": f"{m['picks_listed_chance']:.3f}"} if "picks_listed_before" in m else {}),
        "TA accuracy, LLM untrained": _ci_text(m["ta_accuracy_before"]),
        "TA accuracy, LLM trained": _ci_text(m["ta_accuracy_after"]),
        **{f"TA accuracy, {k}": _ci_text(v) for k, v in m["ta_baselines"].items()},
        "TA accuracy, chance": f"{m['ta_chance']:.3f}",
        "report users": m["heldout_users"],
        "selection users": m["selection_users"],
        "selection fidelity at the chosen step": f"{m['selection']['fidelity_best']:.3f}",
        "steps (chosen)": f"{m['steps']} ({m['best_step']})",
        "training users": m["train_users"],
        "seconds": m["seconds"],
    })  # fmt: skip


def stage1_matched_table(metrics: dict[str, Any]) -> pd.Series:
    """``stage1_matched``'s numbers as notebook 03 shows them: the report users' popularity-matched examples,
    untrained and trained, beside the heuristics on them and chance."""
    m = metrics
    return pd.Series({
        "RPS fidelity, LLM untrained": _ci_text(m["fidelity_before"]),
        "RPS fidelity, LLM trained": _ci_text(m["fidelity_after"]),
        **{f"RPS fidelity, {k}": _ci_text(v) for k, v in m["fidelity_baselines"].items()},
        "RPS fidelity, chance": f"{m['fidelity_chance']:.3f}",
        "report users (bin widened)": f"{m['users']} ({m['widened_users']})",
    })  # fmt: skip


def stage1_seed_table(results: dict[str, DistillResult]) -> pd.DataFrame:
    """Soft prompts trained with several training seeds (``distill.seeds``): the report set's fidelity and TA accuracy
    per seed, and for each prompt trained more than once their mean and standard deviation over the seeds (stage
    1's own variance, which one run cannot show)."""
    rows = []
    for name, r in results.items():
        m = r.metrics
        rows.append({"soft prompt": split_seed(name)[0], "train seed": str(m.get("train_seed", "-")),
                     "fidelity": m["fidelity_after"]["mean"], "TA accuracy": (m.get("ta_accuracy_after") or {}).get("mean"),
                     "best step": m["best_step"]})  # fmt: skip
    parts = []
    for prompt, group in pd.DataFrame(rows).groupby("soft prompt", sort=False):
        parts.append(group)
        if len(group) > 1:
            values = group[["fidelity", "TA accuracy"]].astype(float)
            parts.append(pd.DataFrame([{"soft prompt": prompt, "train seed": "mean", **values.mean().to_dict()},
                                       {"soft prompt": prompt, "train seed": "sd", **values.std(ddof=1).to_dict()}]))  # fmt: skip
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(rows)


def fidelity_reading(metrics: dict[str, Any]) -> str:
    """One sentence on a soft prompt's report-set fidelity, judged by its 95% interval: beyond the best
    heuristic's mean and chance, not distinguishable from chance (or below it), or in between."""
    after, before = metrics["fidelity_after"], metrics["fidelity_before"]
    chance = metrics["fidelity_chance"]
    name, best = max(metrics["fidelity_baselines"].items(), key=lambda kv: kv[1]["mean"])
    floor = max(best["mean"], chance)
    numbers = (f"fidelity {_ci_text(after)} on {metrics['heldout_users']} report users after {metrics['best_step']} "
               f"steps (untrained {before['mean']:.3f}), against {name} {best['mean']:.3f} and chance {chance:.3f}")  # fmt: skip
    if after["ci_low"] > floor:
        verdict = f"{metrics['prompt']}: learned beyond every heuristic: {numbers}."
    elif after["ci_low"] <= chance:
        verdict = f"{metrics['prompt']}: not distinguishable from chance in this budget: {numbers}."
    else:
        verdict = f"{metrics['prompt']}: above chance but not beyond the best heuristic: {numbers}."
    listed = metrics.get("picks_listed_before")
    if listed and listed["ci_low"] > metrics["picks_listed_chance"]:  # the copying that starts it below chance
        verdict += (f" Untrained, its first choice was a title the prompt lists (the teacher's ranks 2..k, wrong by "
                    f"construction) for {listed['mean']:.0%} of the users, against {metrics['picks_listed_chance']:.0%} "
                    f"by chance; trained, {metrics['picks_listed_after']['mean']:.0%}.")  # fmt: skip
    return verdict
