"""P2Rec (Liu et al., "A Practice-Friendly LLM-Enhanced Paradigm with Preference Parsing for Sequential
Recommendation", arXiv 2406.00333; first titled TSLRec) under the kit's protocol.

The LLM helps the conventional recommender, which stays the model that serves:

1. Information reconstruction (``categories.py``, ``sft.py``): k-means over the L2-normalised item
   embeddings of the run's trained teacher gives K latent categories; a user's prior preference
   distribution is the normalised count of their train items per category. The LLM reads the user's
   history titles and a linear head on its final hidden state predicts that distribution (LoRA + head,
   MSE). One example per user, not one per interaction: the paper's efficiency argument.
2. Information augmentation (``sft.py``, ``augment.py``): every item alone (a one-item history) through
   the tuned LLM gives a final hidden state; projected to the teacher's width it initialises the item
   table of a fresh teacher (SASRec, GRU4Rec or Caser), which then trains exactly as the plain one
   (``delrec_lib.teachers.fit``: same spec, seed and early stopping) and is exported the same way.

No code of the paper is public and only its abstract was available to the kit, so every choice below is
the kit's reading, each a field of ``config.P2RecConfig``:

- Categories from the run's SASRec (``source_teacher``), K = 16 (``num_categories``; the K sweep 8/16/32
  is ``p2rec-sasrec-k8`` / ``-k32``), clustering only items present in some user's train items.
- Target over all of the user's train items (``target_scope="train"``), while the prompt shows the latest
  20 titles (``history_len``): the LLM must infer the whole profile from its recent part, as the paper's
  "reconstruct a prior preference distribution from the interaction sequence" says; ``"shown"`` restricts
  the target to the titles shown.
- The prompt: the kit's chat framing and title style (``prompts.PromptBuilder``) around "Movies the user
  watched, oldest first: ... Which kinds of movies does the user like?"; the final hidden state is that of
  the prompt's last token (the state the LM head would read), through a linear head with softmax output.
  The head starts at zero weight and the log of the training users' mean distribution, so step 0 is the
  "everyone gets the mean distribution" heuristic, shown beside every SFT number.
- Loss MSE between softmax output and target (``loss="kl"``: KL(target || prediction)); LoRA r = 8 on the
  attention projections; one epoch on the cpu preset.
- Selection: the step with the lowest loss on ``heldout_users`` users never trained on. It is what the SFT
  optimises, costs one forward per held-out user, and needs no valid or test target; selecting on the
  enhanced teacher's validation NDCG would train a teacher per candidate step (minutes each) and tune the
  SFT to the split the teachers already early-stop on.
- Augmentation prompt = the SFT prompt with a one-item history; projection = PCA with a rescale to the
  fresh teacher's own initialisation scale (``augment.py`` says why not a learned projection); Caser's
  input table by default (``caser_table``).
- Ablations: random initialisation is the plain teacher of notebook 02 (same spec, same seed: the code
  path with no LLM table gives it bit for bit, a test checks); ``p2rec-<teacher>-nosft`` initialises from
  the LLM without the SFT (no training step runs); the K sweep.
- Seed study: each of ``seed_variants`` and its plain teacher trained again with every seed of ``seeds``
  (the SFT is not repeated: the seeds are the teachers' training seeds), paired per seed.
"""

from .categories import LatentCategories, latent_categories, train_item_ids, user_targets
from .methods import P2RecFamily
from .stage import (
    BASE_STATES,
    EnhancedResult,
    P2RecRun,
    SFTResult,
    enhance,
    load_enhanced,
    run_base_states,
    run_p2rec,
    run_sft,
    sft_name,
    states_name,
)

__all__ = [
    "BASE_STATES",
    "EnhancedResult",
    "LatentCategories",
    "P2RecFamily",
    "P2RecRun",
    "SFTResult",
    "enhance",
    "latent_categories",
    "load_enhanced",
    "run_base_states",
    "run_p2rec",
    "run_sft",
    "sft_name",
    "states_name",
    "train_item_ids",
    "user_targets",
]
