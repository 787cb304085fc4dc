"""Measuring speed: the machine's matmul peak, a FLOP model of a decoder-only LLM, chunked timings,
and the throw-away run the training-stage benchmarks time their steps on.

Used by the benchmarks beside each stage (``delrec/scoring_bench.py``, ``delrec/distill_bench.py``,
``delrec/finetune_bench.py``, ``teachers/bench.py``, ...); ``python -m delrec_lib.bench`` lists and runs them.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

ML100K_USERS = 943

# A sample of ML-100K titles in the kit's form (article in front, year kept).
ML100K_TITLES = [
    "Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Get Shorty (1995)", "Copycat (1995)",
    "Shanghai Triad (Yao a yao yao dao waipo qiao) (1995)", "Twelve Monkeys (1995)", "Babe (1995)",
    "Dead Man Walking (1995)", "Richard III (1995)", "Seven (Se7en) (1995)", "The Usual Suspects (1995)",
    "Mighty Aphrodite (1995)", "The Postman (Il Postino) (1994)", "Mr. Holland's Opus (1995)",
    "French Twist (Gazon maudit) (1995)", "From Dusk Till Dawn (1996)", "The White Balloon (1995)",
    "Antonia's Line (1995)", "Angels and Insects (1995)", "Muppet Treasure Island (1996)", "Braveheart (1995)",
    "Taxi Driver (1976)", "Rumble in the Bronx (1995)", "The Birdcage (1996)", "The Brothers McMullen (1995)",
    "Bad Boys (1995)", "Apollo 13 (1995)", "Batman Forever (1995)", "Belle de jour (1967)", "Crimson Tide (1995)",
    "Crumb (1994)", "Desperado (1995)", "The Doom Generation (1995)", "Free Willy 2: The Adventure Home (1995)",
    "Mad Love (1995)", "Nadja (1994)", "The Net (1995)", "Strange Days (1995)",
    "To Wong Foo, Thanks for Everything! Julie Newmar (1995)", "Billy Madison (1995)", "Clerks (1994)",
    "Disclosure (1994)", "Dolores Claiborne (1994)", "Eat Drink Man Woman (1994)", "Exotica (1994)",
    "Ed Wood (1994)", "Hoop Dreams (1994)", "I.Q. (1994)", "Star Wars (1977)", "Legends of the Fall (1994)",
    "The Madness of King George (1994)", "Natural Born Killers (1994)", "Outbreak (1995)",
    "The Professional (1994)", "Pulp Fiction (1994)", "Priest (1994)", "Quiz Show (1994)",
    "Three Colors: Red (1994)", "Three Colors: Blue (1993)", "Three Colors: White (1994)", "Stargate (1994)",
    "The Santa Clause (1994)", "The Shawshank Redemption (1994)", "What's Eating Gilbert Grape (1993)",
    "While You Were Sleeping (1995)", "Ace Ventura: Pet Detective (1994)", "The Crow (1994)",
    "Forrest Gump (1994)", "Four Weddings and a Funeral (1994)", "The Lion King (1994)", "The Mask (1994)",
    "Maverick (1994)", "Faster Pussycat! Kill! Kill! (1965)",
    "Brother Minister: The Assassination of Malcolm X (1994)", "Carlito's Way (1993)", "The Firm (1993)",
    "Free Willy (1993)", "The Fugitive (1993)", "Hot Shots! Part Deux (1993)", "The Hudsucker Proxy (1994)",
    "Jurassic Park (1993)", "Much Ado About Nothing (1993)", "Robert A. Heinlein's The Puppet Masters (1994)",
    "The Ref (1994)", "The Remains of the Day (1993)", "Searching for Bobby Fischer (1993)",
    "Sleepless in Seattle (1993)", "Blade Runner (1982)", "So I Married an Axe Murderer (1993)",
    "The Nightmare Before Christmas (1993)", "True Romance (1993)", "Welcome to the Dollhouse (1995)",
    "Home Alone (1990)", "Aladdin (1992)", "Terminator 2: Judgment Day (1991)", "Dances with Wolves (1990)",
    "The Silence of the Lambs (1991)", "Snow White and the Seven Dwarfs (1937)", "Fargo (1996)",
    "Heavy Metal (1981)", "The Aristocats (1970)", "All Dogs Go to Heaven 2 (1996)", "Theodore Rex (1995)",
    "Sgt. Bilko (1996)", "Diabolique (1996)", "Moll Flanders (1996)", "Kids in the Hall: Brain Candy (1996)",
    "Mystery Science Theater 3000: The Movie (1996)", "Operation Dumbo Drop (1995)",
    "The Truth About Cats & Dogs (1996)", "Flipper (1996)",
    "The Horseman on the Roof (Hussard sur le toit, Le) (1995)",
    "Wallace & Gromit: The Best of Aardman Animation (1996)", "The Haunted World of Edward D. Wood Jr. (1995)",
    "Cold Comfort Farm (1995)", "The Rock (1996)", "Twister (1996)", "Maya Lin: A Strong Clear Vision (1994)",
    "Striptease (1996)", "Independence Day (ID4) (1996)", "The Cable Guy (1996)", "The Frighteners (1996)",
    "Lone Star (1996)", "Phenomenon (1996)", "The Spitfire Grill (1996)", "The Godfather (1972)",
    "Supercop (1992)", "Bound (1996)", "Kansas City (1996)", "Breakfast at Tiffany's (1961)",
    "The Wizard of Oz (1939)", "Gone with the Wind (1939)", "Citizen Kane (1941)",
    "2001: A Space Odyssey (1968)", "Mr. Smith Goes to Washington (1939)", "Big Night (1996)",
    "D3: The Mighty Ducks (1996)", "The Love Bug (1969)", "Homeward Bound: The Incredible Journey (1993)",
    "20,000 Leagues Under the Sea (1954)", "Bedknobs and Broomsticks (1971)", "The Sound of Music (1965)",
    "Die Hard (1988)", "The Lawnmower Man (1992)", "Unhook the Stars (1996)", "The Long Kiss Goodnight (1996)",
    "The Ghost and the Darkness (1996)", "Jude (1996)", "Swingers (1996)",
    "Willy Wonka and the Chocolate Factory (1971)", "Sleeper (1973)", "A Fish Called Wanda (1988)",
    "Monty Python's Life of Brian (1979)", "Dirty Dancing (1987)", "Reservoir Dogs (1992)", "Platoon (1986)",
    "Weekend at Bernie's (1989)", "Basic Instinct (1992)", "Glengarry Glen Ross (1992)", "Top Gun (1986)",
    "On Golden Pond (1981)", "The Return of the Pink Panther (1974)", "The Abyss (1989)",
    "Manon of the Spring (Manon des sources) (1986)", "Private Benjamin (1980)",
    "Monty Python and the Holy Grail (1974)",
]  # fmt: skip


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of an n x n x n matrix product (the machine's practical peak).

    Benchmarks measure it in the dtype the LLM computes in (``Backbone.compute_dtype``): bf16 on a CPU
    with native bf16, float32 elsewhere (an AVX2-only CPU multiplies bf16 some 60x slower than float32,
    so neither the stages nor the peak use bf16 there)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up: thread pool, oneDNN kernel selection
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float32", "fp32")


def synthetic_users(n: int, seed: int = 0, history: int = 10, candidates: int = 20):
    """(history, candidates) pairs drawn from the built-in titles, like the ML-100K test split."""
    rng = random.Random(seed)
    users = []
    for _ in range(n):
        picked = rng.sample(ML100K_TITLES, history + candidates)
        users.append((picked[:history], picked[history:]))
    return users


@dataclass(frozen=True)
class FlopModel:
    """Forward FLOPs of a decoder-only model: 2 per weight per token, attention, LM head rows."""

    trunk_params: int  # weights applied to every token (embeddings and LM head excluded)
    layers: int
    attn_width: int  # heads x head_dim
    hidden: int
    vocab: int

    @classmethod
    def of(cls, model) -> FlopModel:
        cfg = model.config
        emb = model.get_input_embeddings().weight.numel()
        trunk = sum(p.numel() for p in model.parameters()) - emb
        if not cfg.tie_word_embeddings:
            trunk -= model.get_output_embeddings().weight.numel()
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(
            trunk, cfg.num_hidden_layers, cfg.num_attention_heads * head_dim, cfg.hidden_size, cfg.vocab_size
        )

    def tokens(self, n_tokens: int, attended_pairs: int, head_rows: int) -> float:
        # QK^T and AV: 2 x 2 x width FLOPs per (query, visible key) pair and layer.
        return (
            2 * self.trunk_params * n_tokens
            + 4 * self.attn_width * attended_pairs * self.layers
            + 2 * self.hidden * self.vocab * head_rows
        )


def shared_flops(fm: FlopModel, p: int, cand_lens: list[int]) -> tuple[int, float]:
    """(tokens run, FLOPs) of one user on the shared-prefix path: prompt + every candidate but its last token."""
    n_in = [L - 1 for L in cand_lens]
    pairs = p * (p + 1) // 2 + sum(n * p + n * (n + 1) // 2 for n in n_in)
    tokens = p + sum(n_in)
    return tokens, fm.tokens(tokens, pairs, 1 + sum(n_in))


def naive_flops(fm: FlopModel, p: int, cand_lens: list[int]) -> tuple[int, float]:
    """(tokens run, FLOPs) of one user on the naive path: a full forward (and full logits) per candidate."""
    tokens, flops = 0, 0.0
    for L in cand_lens:
        s = p + L - 1
        tokens += s
        flops += fm.tokens(s, s * (s + 1) // 2, s)
    return tokens, flops


def timed_chunks(
    repeats: int, chunk: int, fn: Callable[..., object], prompts: list, flops: list[float],
    peak_dtype: torch.dtype = torch.float32, **kwargs,
) -> list[dict]:
    """Time ``fn`` on consecutive chunks of ``prompts``, ``repeats`` times over.

    On a shared machine one long timing mixes quiet and busy moments; many short ones let the best
    approach the quiet speed while the median shows the typical one. A quick matmul peak taken just
    before each chunk puts every sample against the machine's speed at that moment.
    """
    samples = []
    for _ in range(repeats):
        for i in range(0, len(prompts), chunk):
            peak = matmul_peak_gflops(peak_dtype, 1024, repeats=3)
            t = time.perf_counter()
            fn(prompts[i : i + chunk], **kwargs)
            dt = time.perf_counter() - t
            f = sum(flops[i : i + chunk])
            samples.append(
                {"users": len(prompts[i : i + chunk]), "seconds": dt, "gflops": f / dt / 1e9, "peak": peak}
            )
    return samples


def training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu")
    p.add_argument("--config", default=None, help="TOML/JSON overrides of the preset")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps timed (after a warm-up step)")


class StepClock:
    """Trainer callback: wall time of every optimizer step, and the trainer (for its task)."""

    def __init__(self) -> None:
        self.times: list[float] = [time.perf_counter()]
        self.trainer = None

    def __call__(self, trainer, step: int) -> None:
        self.times.append(time.perf_counter())
        self.trainer = trainer

    def step_seconds(self) -> list[float]:
        # Step 1 warms up (thread pool, kernels); the last one includes the closing evaluation.
        d = [b - a for a, b in itertools.pairwise(self.times)]
        return d[1:-1]


class PartClock:
    """The step times of a part of a run (first visits, revisits), read as ``training_row`` reads a ``StepClock``."""

    def __init__(self, seconds: list[float]) -> None:
        self.seconds = seconds

    def step_seconds(self) -> list[float]:
        return self.seconds


def prompt_cost(fm: FlopModel, backbone, prompts: list, *, split_at_slot: bool = False) -> tuple[float, ...]:
    """Mean (tokens, forward FLOPs) of scoring one prompt with all its candidates (shared prefix).

    ``split_at_slot``: (prefix tokens, prefix FLOPs, rest tokens, rest FLOPs), the prefix being the text
    before the soft-prompt slot (run once when cached) and the rest the slot, the text after it and the
    candidates, which attend to the prefix.
    """
    from ..llm.scoring import answer_token_ids

    costs = []
    for p in prompts:
        lens = [len(t) for t in answer_token_ids(backbone, p, p.candidates)]
        tokens, flops = shared_flops(fm, p.num_tokens, lens)
        if not split_at_slot:
            costs.append((tokens, flops))
            continue
        P = len(p.before_ids)
        pre_tokens, pre_flops = P, fm.tokens(P, P * (P + 1) // 2, 0)
        costs.append((pre_tokens, pre_flops, tokens - P, flops - pre_flops))
    return tuple(statistics.mean(c[i] for c in costs) for i in range(len(costs[0])))


def training_bench_setup(args: argparse.Namespace, root: str):
    """A throw-away run on the preset's data whose stage-1 teacher is the popularity baseline.

    Trains in seconds, and its top-k lists give prompts as long as any teacher's, so the timed
    steps cost what they cost in a real run.
    """
    from pathlib import Path

    from ..artifacts import RunPaths
    from ..config import load_config, resolve_path
    from ..data import load_processed, prepare_dataset
    from ..llm import load_backbone_from_config
    from ..teachers import run_teachers

    config = load_config(args.preset, args.config)
    planned = {"distill": config.distill.max_steps, "finetune": config.finetune.max_steps, "config": config}
    data_root = resolve_path(config.data_dir)
    prepare_dataset(config.data, data_root)
    data = load_processed(data_root, config.data.dataset)
    paths = RunPaths(Path(root))
    run_teachers(replace(config.teachers, models=()), data, paths.teachers, progress=False)
    # Evaluation only after the last step: the timed steps are training steps.
    config = replace(
        config,
        distill=replace(config.distill, prompts=("popularity",), heldout_users=4, selection_users=4, max_steps=args.steps + 2,
                        eval_every=args.steps + 2, warmup_steps=0),
        finetune=replace(config.finetune, variants=("delrec-popularity",), valid_users=4, max_steps=args.steps + 2,
                         eval_every=args.steps + 2, warmup_steps=0),
    )  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    backbone = load_backbone_from_config(config.llm)
    peak = matmul_peak_gflops(backbone.compute_dtype)
    print(f"{dtype_name(backbone.compute_dtype)} matmul peak {peak:.0f} GFLOP/s (the dtype the LLM computes in)")
    return config, paths, data, backbone, peak, planned


def training_row(stage: str, clock: StepClock, examples_per_step: int, tokens: float, flops: float, peak: float) -> dict:
    # Backward through a frozen trunk computes activation gradients only (no weight gradients for
    # the frozen weights, LoRA's are negligible): about one more forward's worth of FLOPs.
    secs = clock.step_seconds()
    per_step = statistics.median(secs)
    row = {
        "stage": stage,
        "timed_steps": len(secs),
        "s_per_step": per_step,
        "examples_per_step": examples_per_step,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / per_step,
        "gflops": 2 * flops / per_step / 1e9,
        "pct_peak": 100 * 2 * flops / per_step / 1e9 / peak,
    }
    print(
        f"{stage}: {per_step:.2f} s/step (median of {len(secs)}), {examples_per_step} prompts/step, "
        f"{tokens:.0f} tokens/step, {row['tokens_per_s']:.0f} tokens/s, ~{row['gflops']:.0f} GFLOP/s "
        f"= {row['pct_peak']:.0f}% of the matmul peak"
    )
    return row


