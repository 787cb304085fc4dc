"""What every LLM method of the kit shares (zero-shot, ``lora``, DELRec, LLM-SRec, P2Rec).

- ``backbone``: load an LLM by name (the embedded default, a local folder or a Hugging Face id), its
  family and compute dtype; the names below come from it;
- ``prompts``: the prompt templates, rendered and tokenized within a token budget;
- ``scoring``: candidates ranked by the LLM's likelihood of their titles, with the prefix caches;
- ``ranker``: an LLM ranking a user's candidates with the recommendation template, and the zero-shot method.
"""

from .backbone import (
    EMBEDDED_MODELS,
    PEFT_CHECKPOINTING_WARNING,
    Backbone,
    extract_gguf,
    fetch_embedded_gguf,
    load_backbone,
    load_backbone_from_config,
    peft_wrapping,
    resolve_dtype,
)

__all__ = [
    "EMBEDDED_MODELS",
    "PEFT_CHECKPOINTING_WARNING",
    "Backbone",
    "extract_gguf",
    "fetch_embedded_gguf",
    "load_backbone",
    "load_backbone_from_config",
    "peft_wrapping",
    "resolve_dtype",
]
