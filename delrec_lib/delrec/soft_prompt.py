"""Soft prompts: K trainable vectors spliced into a frozen LLM's input at a template slot.

DELRec's stage 1 writes a teacher's recommendation pattern into these vectors ("The
recommendation pattern of SASRec is: <K vectors>"), stage 2 reads it back frozen. A soft prompt
lives in the LLM's input-embedding space, so it is tied to one backbone and one prompt format:
it is saved with that identity and refuses to load against anything else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..artifacts import artifact_id, atomic_path, read_manifest, require_config, verify_outputs
from ..config import SEED_SUFFIX, RunConfig, parse_prompt_name, split_seed
from ..errors import ConfigError, DataError, StaleArtifactError
from ..llm.prompts import TEACHER_DISPLAY, prompt_format_id

SOFT_PROMPT_KIND = "soft-prompt"

DEFAULT_INIT_TEXT = (
    "{teacher} recommends the next movie from the order of the movies the user watched, "
    "weighting the most recent ones most."
)


class SoftPrompt(torch.nn.Module):
    """K virtual-token embeddings [K, hidden] at the input (DELRec), or a per-layer prompt: K keys and values
    [layers, 2, kv_heads, K, head_dim] that every layer reads at the slot (``distill.prompt_depth``,
    P-tuning v2). ``forward()`` returns the tensor for the scorer (``rank_candidates`` takes either)."""

    def __init__(self, embeddings: torch.Tensor):
        super().__init__()
        if embeddings.dim() not in (2, 5) or embeddings.shape[-2] < 1:
            raise ConfigError("soft prompt: expected a [K, hidden] tensor (or a per-layer prompt [layers, 2, kv_heads, "
                              f"K, head_dim]) with K >= 1, got {tuple(embeddings.shape)}")  # fmt: skip
        self.embeddings = torch.nn.Parameter(embeddings.detach().clone().float())

    @property
    def num_tokens(self) -> int:
        return int(self.embeddings.shape[-2])

    @property
    def every_layer(self) -> bool:
        return self.embeddings.dim() == 5

    def forward(self) -> torch.Tensor:
        return self.embeddings

    # -- initialisation ----------------------------------------------------------------------

    @classmethod
    def from_text(cls, backbone: Any, text: str, num_tokens: int, *, every_layer: bool = False) -> SoftPrompt:
        """Start from the embeddings of a text's tokens (cycled or cut to K): a prompt the
        frozen LLM already reads sensibly, which trains faster and more stably than noise.
        ``every_layer``: the keys and values every layer makes of those tokens."""
        ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError("distill.init_text: the initialisation text encodes to no tokens")
        ids = (ids * (num_tokens // len(ids) + 1))[:num_tokens]
        if every_layer:
            from ..llm.scoring import token_prefix_states

            return cls(token_prefix_states(backbone, [ids])[0].detach().cpu())
        weight = backbone.input_embeddings.weight
        return cls(weight[torch.tensor(ids, device=weight.device)].detach().cpu())

    @classmethod
    def from_vocabulary(cls, backbone: Any, num_tokens: int, seed: int = 0) -> SoftPrompt:
        """Start from the embeddings of K tokens sampled from the vocabulary."""
        weight = backbone.input_embeddings.weight
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, weight.shape[0], (num_tokens,), generator=g)
        return cls(weight[ids.to(weight.device)].detach().cpu())

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, metadata: dict[str, Any]) -> None:
        """safetensors with string metadata: backbone, teacher, K, template hash, data id, ..."""
        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
        meta["num_tokens"] = str(self.num_tokens)
        meta["hidden_size"] = str(self.embeddings.shape[1])
        with atomic_path(path) as tmp:
            save_file({"embeddings": self.embeddings.detach().cpu().contiguous()}, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect: dict[str, str] | None = None) -> tuple[SoftPrompt, dict[str, str]]:
        """Load a soft prompt; every ``expect`` key must equal the saved metadata (backbone, template, ...)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: soft prompt not found; run stage 1 (notebook 03) first")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensor = f.get_tensor("embeddings")
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise DataError(f"{path}: not a readable soft prompt ({e})") from e
        for key, want in (expect or {}).items():
            have = meta.get(key)
            if have != want:
                raise StaleArtifactError(
                    f"{path}: soft prompt was made for {key}={have!r}, not {want!r}; it belongs to another "
                    "backbone, template, teacher or dataset. Re-run stage 1 for this configuration."
                )
        return cls(tensor), meta


def nearest_tokens(backbone: Any, vectors: torch.Tensor, k: int = 3) -> list[list[str]]:
    """For each vector, the k vocabulary tokens whose input embeddings are most cosine-similar."""
    weight = backbone.input_embeddings.weight.detach().float()
    v = torch.nn.functional.normalize(vectors.detach().float().to(weight.device), dim=-1)
    w = torch.nn.functional.normalize(weight, dim=-1)
    top = (v @ w.T).topk(k, dim=-1).indices.cpu()
    tok = backbone.tokenizer
    return [[tok.convert_tokens_to_string([tok.convert_ids_to_tokens(int(i))]).strip() or repr(tok.convert_ids_to_tokens(int(i)))
             for i in row] for row in top]  # fmt: skip


# --------------------------------------------------------------------------------------------
# The stage-1 artifact: what stage 2 (and anything else) reads of stage 1
# --------------------------------------------------------------------------------------------


def distill_stage_config(config: RunConfig, name: str) -> dict[str, Any]:
    """The settings a stage-1 soft prompt ``name`` depends on (its manifest's config): the stage's own,
    not the list of other soft prompts the run distils; the known answer (``distill.known_answer``) trains
    and is evaluated on its own budget."""
    import dataclasses

    base, seed = split_seed(name)  # a seed's copy (distill.seeds) differs from its soft prompt only by its training seed
    teacher, tasks = parse_prompt_name(base)
    own = config.distill
    defaults = {f.name: f.default for f in dataclasses.fields(own) if f.name.startswith("known_answer")}
    cfg = dataclasses.replace(own, prompts=(base,), seeds=(), **defaults)  # the known answer's budget is not the others'
    llm = config.llm
    if base == own.known_answer:  # its own budget and settings (a seed's copy too: only its training seed differs)
        steps, users = own.known_answer_steps, own.known_answer_users
        cfg = dataclasses.replace(cfg, max_steps=steps, eval_every=max(1, steps // 4), heldout_users=users,
                                  selection_users=max(1, users // 2), known_answer=base,
                                  prompt_depth=own.known_answer_depth or own.prompt_depth,
                                  lr=own.known_answer_lr or own.lr,
                                  heldout_tasks=own.known_answer_heldout_tasks or own.heldout_tasks,
                                  batch_size=own.known_answer_batch_size or own.batch_size,
                                  grad_accum=1 if own.known_answer_batch_size else own.grad_accum,
                                  rps_top_k=own.known_answer_rps_top_k or own.rps_top_k,
                                  rps_random=own.rps_random if own.known_answer_rps_random is None
                                  else own.known_answer_rps_random)  # fmt: skip
        llm = dataclasses.replace(llm, head=own.known_answer_head or llm.head,
                                  history_len=own.known_answer_history_len or llm.history_len)
    stage = {"distill": cfg, "llm": llm, "max_users": config.max_users, "teacher": teacher, "tasks": tasks}
    return stage if seed is None else {**stage, "train_seed": seed}


def stage1_names(config: RunConfig) -> list[str]:
    """The soft prompts stage 1 trains besides the known answer: ``distill.prompts``, then each one's seed copies
    (``distill.seeds``), in prompt order."""
    seeds = [f"{p}{SEED_SUFFIX}{s}" for p in config.distill.prompts for s in config.distill.seeds]
    return [*config.distill.prompts, *seeds]


def known_answer_names(config: RunConfig) -> list[str]:
    """Stage 1's known answer (``distill.known_answer``), then its seed copies (``distill.seeds``): the seed study
    reads the known answer's own variance beside the real teachers'. Empty when the run has no known answer."""
    known = config.distill.known_answer
    return [known, *(f"{known}{SEED_SUFFIX}{s}" for s in config.distill.seeds)] if known else []


def initial_soft_prompt(backbone: Any, cfg: Any, teacher: str) -> SoftPrompt:
    """The soft prompt before training: the embeddings of ``init_text`` (or seeded vocabulary rows)."""
    every_layer = cfg.prompt_depth == "every_layer"
    if cfg.init == "text":
        return SoftPrompt.from_text(backbone, cfg.init_text.format(teacher=TEACHER_DISPLAY.get(teacher, teacher)),
                                    cfg.num_soft_tokens, every_layer=every_layer)  # fmt: skip
    if every_layer:
        raise ConfigError("distill.init: a per-layer prompt (distill.prompt_depth='every_layer') starts from a text")
    return SoftPrompt.from_vocabulary(backbone, cfg.num_soft_tokens, cfg.seed)


def untrained_soft_prompt(config: RunConfig, backbone: Any, name: str) -> tuple[torch.Tensor, str]:
    """Soft prompt ``name`` as stage 1 starts it, never trained (the ``delrec-<name>-untrained`` control of stage 2),
    with an id naming what made it."""
    from ..artifacts import sha256_json

    stage = distill_stage_config(config, name)
    cfg = stage["distill"]
    if cfg.prompt_depth != "input":
        raise ConfigError(f"finetune.variants: delrec-{name}-untrained: stage 2 reads input-layer soft prompts; "
                          f"distill.prompt_depth is {cfg.prompt_depth!r}")  # fmt: skip
    soft = initial_soft_prompt(backbone, cfg, stage["teacher"]).embeddings.detach()
    made_of = {"untrained": name, "init": cfg.init, "init_text": cfg.init_text, "num_soft_tokens": cfg.num_soft_tokens,
               "seed": cfg.seed, "backbone": backbone.identity}  # fmt: skip
    return soft, "untrained-" + sha256_json(made_of)[:16]


def load_soft_prompt(
    distill_dir: str | os.PathLike, backbone: Any, data: Any, llm_config: Any
) -> tuple[SoftPrompt, dict[str, str]]:
    """A stage-1 soft prompt, refused unless it was made for this backbone, prompt format and data."""
    path = Path(distill_dir) / "soft_prompt.safetensors"
    soft, _ = SoftPrompt.load(path)
    if soft.every_layer:
        raise ConfigError(f"{path}: a per-layer prompt (distill.prompt_depth='every_layer'), a stage-1 study option; "
                          "stage 2 and the evaluation read input-layer soft prompts (distill.prompt_depth='input')")  # fmt: skip
    expect = {
        "backbone": backbone.identity,
        "template": prompt_format_id(backbone, llm_config, soft.num_tokens),
        "data": data.data_id,
    }
    return SoftPrompt.load(path, expect=expect)


def load_run_soft_prompt(config: RunConfig, paths: Any, data: Any, backbone: Any, name: str) -> tuple[SoftPrompt, str]:
    """Soft prompt ``name`` of this run, checked against the run's stage-1 settings as well as its
    backbone, prompt format and data; returns it with its artifact id."""
    directory = Path(paths.distill) / name
    manifest = read_manifest(directory, SOFT_PROMPT_KIND)
    verify_outputs(directory, manifest)
    if manifest["config"]["distill"].get("trainable", "prompt") != "prompt":
        raise ConfigError(f"{directory}: stage 1's LoRA control (distill.trainable='lora') trained adapters, not this "
                          "soft prompt; stage 2 reads a trained soft prompt (distill.trainable='prompt')")  # fmt: skip
    require_config(f"soft prompt '{name}'", manifest, distill_stage_config(config, name), directory,
                   "Re-run stage 1 (notebook 03 or `python -m delrec_lib distill`) with this run's settings.")  # fmt: skip
    soft, _ = load_soft_prompt(directory, backbone, data, config.llm)
    return soft, artifact_id(manifest)

