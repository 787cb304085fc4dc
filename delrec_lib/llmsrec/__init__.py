"""LLM-SRec (Kim et al., "Lost in Sequence: Do Large Language Models Understand Sequential
Recommendation?", KDD 2025; authors' code Sein-Kim/LLM-SRec at b81019c), under the kit's protocol.

The LLM stays frozen. A user prompt lists the latest ``history_len`` items, each as its title followed by
the teacher's item embedding projected into the LLM (f_I); the LLM's last hidden state at a learnable
[UserOut] input vector, through f_user, is the user's vector. An item prompt (title + projected
embedding + [ItemOut]) through f_item gives the item's vector. Items are ranked by inner product.
Trained: f_I, f_user, f_item, f_CF and the two input vectors, with

    L = L_ret + L_dist + L_unif
    L_ret  = cross-entropy of the target among itself and ``num_negatives`` random unseen items
    L_dist = MSE(normalise(f_user(h_u)), normalise(f_CF(o_u))), o_u the frozen teacher's user representation
    L_unif = uniformity(normalise(f_user(h_u))) + uniformity(normalise(f_CF(o_u)))

As the authors' code runs it: the prompts (purchases -> movies), the slot vectors, the MLP shapes and
initialisation, the losses, one example per user (target = the last train item), 3 negatives, lr 1e-4,
a global batch of 20. Where the kit differs, by design or for this CPU (each a config field):

- the teacher's user representation is computed in eval mode (``llmsrec.teacher_dropout=False``); the
  authors' code leaves the teacher's dropout on while computing it (True reproduces that);
- negatives are drawn once per user (seeded), not again every epoch; the cpu preset trains one epoch,
  where the two agree;
- the protocol is the kit's: leave-one-out, the shared 1+19 candidate sets and the full catalogue, the
  step chosen on validation users (the authors report 1+99 candidates and the last of 10 epochs);
- titles follow ``llm.title_style`` (the cpu preset drops the year, as for every LLM method of the kit);
- a history's dates stay with their positions (the k-th title shown gets the k-th earliest date of the
  shown items), so shuffling a history never lets the dates tell its order; in the original order this
  is exactly the authors' prompt;
- the backbone is the run's ``llm.backbone`` (SmolLM2-135M on the cpu preset, Llama-3.2-3B in the paper);
  with an encoder-decoder (the paper preset's Flan-T5) the representation is the encoder's last hidden
  state at the output slot.

``stage`` trains and writes the variants, ``methods`` puts them in every table of the evaluation.
"""

from .methods import LLMSRecFamily, LLMSRecRecommender
from .model import LLMSRec, SlotPrompt, encode_slots, losses, uniformity
from .stage import (
    HEADS_KIND,
    LLMSRecResult,
    Prompts,
    Scorer,
    SRecExample,
    backbone_checksum,
    load_trained,
    run_llmsrec,
    select_users,
    teacher_representations,
    training_examples,
)

__all__ = [
    "HEADS_KIND",
    "LLMSRec",
    "LLMSRecFamily",
    "LLMSRecRecommender",
    "LLMSRecResult",
    "Prompts",
    "SRecExample",
    "Scorer",
    "SlotPrompt",
    "backbone_checksum",
    "encode_slots",
    "load_trained",
    "losses",
    "run_llmsrec",
    "select_users",
    "teacher_representations",
    "training_examples",
    "uniformity",
]
