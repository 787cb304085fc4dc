"""Method names and their grammar: teachers, stage-1 soft prompts, P2Rec and LLM-SRec variants; the presets' names."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .rules import Satisfies, parsed_by

# The presets (presets.py builds each), here for RunConfig.preset's rule: the dataclasses cannot import the presets
# that build them.
PRESET_NAMES = ("smoke", "cpu", "cpu-long", "cpu-seeds", "cpu-study", "cpu-ablations", "paper")

TEACHER_NAMES = ("sasrec", "gru4rec", "caser")
# Synthetic teachers whose top-1 is a rule read from the prompt (``teachers/rules.py``): stage 1's known answer.
RULE_TEACHERS = ("rule-sharedword", "rule-firstword")

DISTILL_TASKS = ("ta", "rps")
# Notebook 02 always exports the popularity baseline's top-k too: a stage-1 teacher that trains in seconds.
POPULARITY = "popularity"
STAGE1_TEACHERS = (*TEACHER_NAMES, *RULE_TEACHERS, POPULARITY)


# A name trained again with another training seed: "<name>-seed<N>" (distill.seeds, finetune.seeds).
SEED_SUFFIX = "-seed"


def split_seed(name: str) -> tuple[str, int | None]:
    """"delrec-sasrec-seed1" -> ("delrec-sasrec", 1); "sasrec" -> ("sasrec", None)."""
    base, sep, seed = name.rpartition(SEED_SUFFIX)
    if sep and seed.isdigit() and base:
        return base, int(seed)
    return name, None


def parse_prompt_name(name: str) -> tuple[str, tuple[str, ...]]:
    """"sasrec" -> ("sasrec", ("ta", "rps")); "sasrec-ta" -> ("sasrec", ("ta",)); "rule-sharedword-rps" ->
    ("rule-sharedword", ("rps",)); a seed's copy "sasrec-seed1" (``distill.seeds``) as its soft prompt's."""
    name = split_seed(name)[0] if isinstance(name, str) else name
    teacher, dash, task = name, "", ""
    if name not in STAGE1_TEACHERS:
        teacher, dash, task = name.rpartition("-")
    if teacher not in STAGE1_TEACHERS or (dash and task not in DISTILL_TASKS):
        raise ConfigError(
            f"distill.prompts: '{name}' is not '<teacher>' or '<teacher>-ta' / '<teacher>-rps' with a teacher "
            f"among {', '.join(STAGE1_TEACHERS)}"
        )
    return teacher, (task,) if task else DISTILL_TASKS


# A configured soft prompt: a seed's copy is named by distill.seeds, never listed.
PROMPT_NAME = parsed_by(
    lambda name: parse_prompt_name(name) if split_seed(name)[1] is None else None,
    f"'<teacher>', '<teacher>-ta' or '<teacher>-rps' with a teacher among {', '.join(STAGE1_TEACHERS)}",
)
# Stage 2: "lora" (no soft prompt), "delrec-<p>" with stage 1's soft prompt <p>, or "delrec-<p>-untrained": the
# pattern line with <p> as stage 1 starts it, never trained (what the line does without what stage 1 taught).
UNTRAINED_SUFFIX = "-untrained"
FINETUNE_VARIANT = Satisfies(
    lambda v: v == "lora" or (isinstance(v, str) and v.startswith("delrec-")
                              and PROMPT_NAME.test(v.removeprefix("delrec-").removesuffix(UNTRAINED_SUFFIX))),
    f"'lora', 'delrec-<soft prompt>' or 'delrec-<soft prompt>-untrained', a soft prompt being {PROMPT_NAME.expected}",
)  # fmt: skip


P2REC_PREFIX = "p2rec-"


@dataclass(frozen=True)
class P2RecVariant:
    """A P2Rec method name, parsed: which teacher is enhanced, with which tuned LLM."""

    name: str
    teacher: str
    sft: bool  # False: the item embeddings come from the LLM as it is (the no-SFT ablation)
    num_categories: int | None  # K of the SFT (None: P2RecConfig.num_categories); None when not sft


def parse_p2rec_variant(name: str) -> P2RecVariant:
    """"p2rec-sasrec" -> SASRec enhanced by the tuned LLM (K from the config); "p2rec-sasrec-k8" -> K = 8;
    "p2rec-gru4rec-nosft" -> GRU4Rec initialised from the LLM without the SFT stage."""
    parts = name.removeprefix(P2REC_PREFIX).split("-") if name.startswith(P2REC_PREFIX) else []
    teacher, rest = (parts[0], parts[1:]) if parts else ("", [])
    sft, k = True, None
    if rest == ["nosft"]:
        sft = False
    elif len(rest) == 1 and rest[0].startswith("k") and rest[0][1:].isdigit() and int(rest[0][1:]) >= 2:
        k = int(rest[0][1:])
    elif rest:
        teacher = ""
    if teacher not in TEACHER_NAMES:
        raise ConfigError(
            f"p2rec.variants: '{name}' is not 'p2rec-<teacher>', 'p2rec-<teacher>-k<K>' (K >= 2) or "
            f"'p2rec-<teacher>-nosft' with a teacher among {', '.join(TEACHER_NAMES)}"
        )
    return P2RecVariant(name, teacher, sft, k)


P2REC_VARIANT = parsed_by(parse_p2rec_variant, "'p2rec-<teacher>', 'p2rec-<teacher>-k<K>' (K >= 2) or "
                          f"'p2rec-<teacher>-nosft' with a teacher among {', '.join(TEACHER_NAMES)}")  # fmt: skip


LLMSREC = "llm-srec"
# The paper's Table 8 ablations and its training-time shuffle, as method names (suffix -> what changes).
LLMSREC_SUFFIXES = {
    "": "the method as configured (L_ret + L_dist + L_unif by default)",
    "nounif": "without L_unif",
    "nodist": "without L_dist and L_unif (L_ret only)",
    "shuffled": "trained on shuffled histories (the LLM's and the teacher's), evaluated on the original order",
}


@dataclass(frozen=True)
class LLMSRecVariant:
    """An LLM-SRec method name, parsed: which losses it trains with, and on which order."""

    name: str
    dist: bool  # L_dist kept
    unif: bool  # L_unif kept
    shuffled: bool  # training histories shuffled


def parse_llmsrec_variant(name: str) -> LLMSRecVariant:
    """"llm-srec" -> the method; "llm-srec-nounif" / "-nodist" -> the loss ablations; "llm-srec-shuffled" ->
    trained on shuffled histories."""
    suffix = name[len(LLMSREC) + 1 :] if isinstance(name, str) and name.startswith(LLMSREC + "-") else ("" if name == LLMSREC else None)
    if suffix is None or suffix not in LLMSREC_SUFFIXES:
        raise ConfigError(f"llmsrec.variants: '{name}' is not one of " + ", ".join(f"'{LLMSREC}{'-' + s if s else ''}'" for s in LLMSREC_SUFFIXES))
    return LLMSRecVariant(name, dist=suffix not in ("nodist",), unif=suffix not in ("nounif", "nodist"), shuffled=suffix == "shuffled")



LLMSREC_VARIANT = parsed_by(parse_llmsrec_variant, "one of " + ", ".join(f"'{LLMSREC}{'-' + s if s else ''}'" for s in LLMSREC_SUFFIXES))
