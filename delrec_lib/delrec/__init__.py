"""DELRec under the kit's protocol: a teacher's recommendation pattern distilled into a soft prompt
(stage 1), then the LLM fine-tuned to recommend with that soft prompt frozen (stage 2).

- ``soft_prompt``: the K trainable vectors spliced into the frozen LLM's input, and the stage-1
  artifact stage 2 reads (saved with its backbone, prompt format and settings; refused otherwise);
- ``distill``: stage 1, the Temporal Analysis and Recommendation Pattern Simulating tasks;
- ``finetune``: stage 2, LoRA / AdaLoRA with the soft prompt frozen (``lora`` is the variant without one);
- ``methods``: the fine-tuned variants in every table of the evaluation;
- ``scoring_bench``, ``distill_bench``, ``finetune_bench``: the benchmarks of the LLM's candidate
  scoring and of the two stages (``python -m delrec_lib.bench``);
- ``tuning``: a grid over the stages' settings on held-out data (``python -m delrec_lib.delrec.tuning``).

Stage 1 and stage 2 meet only through the soft prompt's files and manifest (``soft_prompt``): neither
imports the other. What every LLM method shares (backbone, prompts, scoring, the ranker) is in
``delrec_lib.llm``.
"""

from .distill import DistillResult, run_distillation
from .finetune import FinetuneResult, run_finetuning
from .methods import FinetunedFamily
from .soft_prompt import SoftPrompt, load_soft_prompt

__all__ = [
    "DistillResult",
    "FinetuneResult",
    "FinetunedFamily",
    "SoftPrompt",
    "load_soft_prompt",
    "run_distillation",
    "run_finetuning",
]
