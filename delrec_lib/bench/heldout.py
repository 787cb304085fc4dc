"""Held-out set sizes against the decisions they serve (``python -m delrec_lib.bench heldout``).

For each held-out user set of a preset: what it decides (it selects a step, or gives a reported number), by
which metric, how many users it holds, and the half-width of a 95% interval on a mean over those users: at
most ``1.96 * 0.5 / sqrt(n)`` for any per-user value in [0, 1] (a proportion of 0.5 is the worst case), and
the narrower one at a proportion of 0.2, about where the kit's hit rates and fidelities sit. Beside it, the
users a half-width of 0.05 would need. A set that *selects* with a wider interval than +-0.05 is flagged: its
choices are noise at the differences the kit's methods show. Sizes only, read from the config: no timing.
(P2Rec's SFT selects its step by the loss of ``p2rec.heldout_users`` users, a mean with no such bound: not listed;
its enhanced teachers select epochs as the teachers do.)
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass

from ..config import RunConfig, load_config
from .perf import ML100K_USERS

Z95 = 1.959963984540054
TARGET = 0.05  # the widest half-width a selecting set should have


def half_width(users: int, p: float = 0.5) -> float:
    """Half-width of a normal 95% interval on a mean of ``users`` 0/1 values of rate ``p``."""
    return Z95 * math.sqrt(p * (1 - p) / users)


def users_for(half: float, p: float = 0.5) -> int:
    """Users a 95% half-width of ``half`` needs at rate ``p``."""
    return math.ceil(Z95**2 * p * (1 - p) / half**2)


@dataclass(frozen=True)
class HeldoutSet:
    name: str
    setting: str  # the config field that sizes it
    decides: str  # "selects" (a step, a checkpoint) or "reports" (a number on a page)
    metric: str
    users: int

    @property
    def flagged(self) -> bool:
        return self.decides == "selects" and half_width(self.users) > TARGET


def heldout_sets(config: RunConfig, num_users: int = ML100K_USERS) -> list[HeldoutSet]:
    """Every held-out set the preset uses, at most ``num_users`` (or ``max_users``) users each."""
    cap = min(num_users, config.max_users or num_users)
    d, f, s, e = config.distill, config.finetune, config.llmsrec, config.eval
    # The teachers train and select on every user, whatever max_users (which bounds the LLM stages and evaluation).
    teachers = HeldoutSet("teachers' validation", "every user's valid item", "selects", "NDCG@10 (full ranking)", num_users)
    sets = [HeldoutSet("stage 1 selection", "distill.selection_users", "selects", "RPS fidelity", d.selection_users),
            HeldoutSet("stage 1 report", "distill.heldout_users", "reports", "RPS fidelity, TA accuracy", d.heldout_users)]  # fmt: skip
    if d.known_answer:
        sets += [HeldoutSet("known answer selection", "distill.known_answer_users / 2", "selects", "RPS fidelity",
                            max(1, d.known_answer_users // 2)),
                 HeldoutSet("known answer report", "distill.known_answer_users", "reports", "RPS fidelity",
                            d.known_answer_users)]  # fmt: skip
    if f.variants:
        sets.append(HeldoutSet("stage 2 validation", "finetune.valid_users", "selects", f.select_metric, f.valid_users))
    if s.variants:
        sets.append(HeldoutSet("LLM-SRec validation", "llmsrec.valid_users", "selects", s.select_metric, s.valid_users))
    sets.append(HeldoutSet("test", "every user (max_users)", "reports", "every metric", cap))
    for name, setting, users in (("generation protocol", "eval.generation_users", e.generation_users),
                                 ("order diagnostic", "eval.shuffle_users", e.shuffle_users),
                                 ("popularity-matched sets", "eval.matched_users", e.matched_users)):  # fmt: skip
        if users != 0:
            sets.append(HeldoutSet(name, setting, "reports", "HR@1, NDCG@10", cap if users is None else users))
    return [teachers, *(HeldoutSet(h.name, h.setting, h.decides, h.metric, min(h.users, cap)) for h in sets)]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", help="the preset whose held-out sets are listed (default cpu)")
    p.add_argument("--config", default=None, help="a config file instead (TOML/JSON)")


def run(args: argparse.Namespace) -> dict:
    config = load_config(args.preset, config_file=args.config)
    rows = []
    for h in heldout_sets(config):
        rows.append({**asdict(h), "half_width_worst": round(half_width(h.users), 3), "half_width_at_0.2": round(half_width(h.users, 0.2), 3),
                     "users_for_0.05": users_for(TARGET), "users_for_0.05_at_0.2": users_for(TARGET, 0.2), "flagged": h.flagged})  # fmt: skip
    print(f"held-out sets of the {config.preset} preset: 95% half-widths on a mean over users "
          f"(worst case / at a rate of 0.2); a selecting set wider than +-{TARGET} is flagged")  # fmt: skip
    for r in rows:
        flag = f"  <- selects with more than +-{TARGET}" if r["flagged"] else ""
        print(f"  {r['name']:<28} {r['users']:>4} users  +-{r['half_width_worst']:.3f} / +-{r['half_width_at_0.2']:.3f}  "
              f"{r['decides']} by {r['metric']} ({r['setting']}){flag}")  # fmt: skip
    print(f"  +-{TARGET} needs {users_for(TARGET)} users in the worst case, {users_for(TARGET, 0.2)} at a rate of 0.2")
    return {"preset": config.preset, "sets": rows}


def summary(results: dict) -> list[str]:
    flagged = [r["name"] for r in results["sets"] if r["flagged"]]
    return [f"heldout: {len(results['sets'])} sets in {results['preset']}; selecting wider than +-{TARGET}: "
            + (", ".join(flagged) or "none")]  # fmt: skip
