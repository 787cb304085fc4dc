"""Benchmarks: ``python -m delrec_lib.bench <name> [options]`` or ``... bench all``.

``scoring``: users/s and tokens/s of candidate ranking (20 candidates per user) on the embedded
default backbone with ML-100K-like prompts, for the shared-prefix scorer (bf16 autocast where the
CPU has it) and the naive one-forward-per-candidate scorer (float32), for prompt variants (title
style with or without year; candidates listed in the prompt or not);
achieved GFLOP/s against a bf16 matmul peak measured in the same run; the extrapolated time for
all 943 ML-100K users.

``teachers``: seconds per training epoch and inference users/s of each teacher (the preset's
real training examples).

``distill`` / ``finetune``: seconds per optimizer step of stage 1 / stage 2 on the preset's
real prompts (a throw-away run whose stage-1 teacher is the popularity baseline: its top-k
lists make prompts as long as any teacher's), tokens/s, and achieved GFLOP/s against the bf16
matmul peak, counting a training step as two forwards (the backward through a frozen trunk
computes activation gradients only); the preset's minutes per soft prompt / variant.

``all``: every benchmark with its defaults, then a one-line-per-stage summary.

The scoring benchmark's prompts use a built-in list of ML-100K titles (not the processed data
set), so it runs before and independently of data preparation.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

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


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of an n x n x n matrix product (the machine's practical peak)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up: thread pool, oneDNN kernel selection
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


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


def _timed_chunks(
    repeats: int, chunk: int, fn: Callable[..., object], prompts: list, flops: list[float], **kwargs
) -> list[dict]:
    """Time ``fn`` on consecutive chunks of ``prompts``, ``repeats`` times over.

    On a shared machine one long timing mixes quiet and busy moments; many short ones let the best
    approach the quiet speed while the median shows the typical one. A quick matmul peak taken just
    before each chunk puts every sample against the machine's speed at that moment.
    """
    samples = []
    for _ in range(repeats):
        for i in range(0, len(prompts), chunk):
            peak = matmul_peak_gflops(torch.bfloat16, 1024, repeats=3)
            t = time.perf_counter()
            fn(prompts[i : i + chunk], **kwargs)
            dt = time.perf_counter() - t
            f = sum(flops[i : i + chunk])
            samples.append(
                {"users": len(prompts[i : i + chunk]), "seconds": dt, "gflops": f / dt / 1e9, "peak": peak}
            )
    return samples


def bench_scoring(args: argparse.Namespace) -> dict:
    from .config import LLMConfig
    from .llm import load_backbone
    from .prompts import PromptBuilder
    from .scoring import candidate_token_ids, rank_candidates, rank_candidates_naive

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
    )
    peak_bf16 = matmul_peak_gflops(torch.bfloat16, args.peak_size)
    peak_fp32 = matmul_peak_gflops(torch.float32, args.peak_size)
    print(f"matmul peak {args.peak_size}^3: bf16 {peak_bf16:.0f} GFLOP/s, fp32 {peak_fp32:.0f} GFLOP/s")

    t = time.perf_counter()
    backbone = load_backbone(args.backbone, dtype=args.dtype)
    print(
        f"backbone {backbone.name}: loaded in {time.perf_counter() - t:.1f} s, compute {backbone.compute_dtype}"
    )
    fp32 = replace(backbone, compute_dtype=torch.float32)
    fm = FlopModel.of(backbone.model)
    users = synthetic_users(max(args.users, args.naive_users), seed=args.seed)
    config = LLMConfig(backbone=args.backbone)

    rows, results = [], {"peak_bf16_gflops": peak_bf16, "peak_fp32_gflops": peak_fp32, "runs": []}

    def record(label, style, bb, samples, tokens_per_user, flops_per_user, extra):
        # Rates from FLOP throughput, so chunks of longer or shorter prompts compare fairly.
        best = max(x["gflops"] for x in samples)
        median = statistics.median(x["gflops"] for x in samples)
        ups = best * 1e9 / flops_per_user
        row = {
            "path": label,
            "prompts": style,
            "dtype": str(bb.compute_dtype).replace("torch.", ""),
            "users": sum(x["users"] for x in samples),
            "seconds": sum(x["seconds"] for x in samples),
            "users_per_s": ups,
            "users_per_s_median": median * 1e9 / flops_per_user,
            "tokens_per_user": tokens_per_user,
            "tokens_per_s": tokens_per_user * ups,
            "gflops": best,
            "pct_bf16_peak": 100 * best / peak_bf16,
            "pct_concurrent_peak_median": 100 * statistics.median(x["gflops"] / x["peak"] for x in samples),
            "minutes_943_users": ML100K_USERS / ups / 60,
            "minutes_943_users_median": ML100K_USERS * flops_per_user / (median * 1e9) / 60,
            "samples": samples,
            **extra,
        }
        rows.append(row)
        results["runs"].append(row)
        print(
            f"  {label}: {ups:.2f} users/s best, {row['users_per_s_median']:.2f} median "
            f"({len(samples)} timed chunks, {row['seconds']:.0f} s)"
        )
        return row

    for variant in args.variants:
        style, _, listed = variant.partition("-")
        first = variant == args.variants[0]
        builder = PromptBuilder(backbone, replace(config, title_style=style, list_candidates=bool(listed)))
        prompts = [builder.recommendation(h, c) for h, c in users]
        cand_lens = [[len(t) for t in candidate_token_ids(backbone, p.candidates)] for p in prompts]
        prompt_tokens = statistics.mean(p.num_tokens for p in prompts)
        title_tokens = statistics.mean(
            len(backbone.tokenizer(builder.title(t), add_special_tokens=False)["input_ids"])
            for t in ML100K_TITLES
        )
        scored = statistics.mean(sum(c) for c in cand_lens)
        print(
            f"\n[{variant}] title {title_tokens:.1f} tokens on average; per user: prompt {prompt_tokens:.0f} tokens, "
            f"20 candidates {scored:.0f} scored tokens (titles + end token)"
        )
        extra = {"prompt_tokens": prompt_tokens, "scored_tokens": scored, "title_tokens": title_tokens}

        n = args.users
        sf = [shared_flops(fm, p.num_tokens, cl) for p, cl in zip(prompts[:n], cand_lens[:n], strict=True)]
        modes = ["packed", "cache"] if first else ["packed"]
        for mode in modes:
            with torch.no_grad():
                # warm-up: thread pool, kernel selection
                rank_candidates(backbone, prompts[: args.batch_size], mode=mode, batch_size=args.batch_size)
                samples = _timed_chunks(
                    args.repeats,
                    args.batch_size,
                    partial(rank_candidates, backbone),
                    prompts[:n],
                    [s[1] for s in sf],
                    mode=mode,
                    batch_size=args.batch_size,
                )
            tok_u, flop_u = statistics.mean(s[0] for s in sf), statistics.mean(s[1] for s in sf)
            record(f"shared/{mode}", variant, backbone, samples, tok_u, flop_u, extra)

        if first and args.naive_users > 0:
            m = args.naive_users
            nf = [naive_flops(fm, p.num_tokens, cl) for p, cl in zip(prompts[:m], cand_lens[:m], strict=True)]
            with torch.no_grad():
                samples = _timed_chunks(
                    1, 1, partial(rank_candidates_naive, fp32), prompts[:m], [s[1] for s in nf]
                )
            tok_u, flop_u = statistics.mean(s[0] for s in nf), statistics.mean(s[1] for s in nf)
            record("naive", variant, fp32, samples, tok_u, flop_u, extra)
            # The same prompts through both paths: how far bf16 shared-prefix scores are from float32.
            with torch.no_grad():
                fast = rank_candidates(backbone, prompts[:m], batch_size=args.batch_size)
                ref = rank_candidates_naive(fp32, prompts[:m])
            agree = (fast.argmax(1) == ref.argmax(1)).float().mean().item()
            results["bf16_vs_fp32"] = {
                "max_abs_diff": (fast - ref).abs().max().item(),
                "top1_agreement": agree,
            }

    _print_table(rows)
    naive = next((r for r in rows if r["path"] == "naive"), None)
    if naive:
        print("\nspeed-up over naive float32 (users/s ratio, same prompts; best and median):")
        for r in rows:
            if r["path"] != "naive" and r["prompts"] == naive["prompts"]:
                best = r["users_per_s"] / naive["users_per_s"]
                med = r["users_per_s_median"] / naive["users_per_s_median"]
                print(f"  {r['path']} ({r['dtype']}): {best:.1f}x best, {med:.1f}x median")
                results[f"speedup_{r['path'].replace('/', '_')}"] = {"best": best, "median": med}
    if "bf16_vs_fp32" in results:
        d = results["bf16_vs_fp32"]
        print(
            f"shared ({backbone.compute_dtype}) vs naive float32 on the same prompts: max |diff| "
            f"{d['max_abs_diff']:.3f}, top-1 agreement {d['top1_agreement']:.0%}"
        )
    return results


def _print_table(rows: list[dict]) -> None:
    cols = [
        ("path", "path", "{}"),
        ("prompts", "prompts", "{}"),
        ("dtype", "dtype", "{}"),
        ("users", "users", "{}"),
        ("users_per_s", "users/s", "{:.2f}"),
        ("users_per_s_median", "(median)", "{:.2f}"),
        ("tokens_per_user", "tok/user", "{:.0f}"),
        ("tokens_per_s", "tok/s", "{:.0f}"),
        ("gflops", "GFLOP/s", "{:.0f}"),
        ("pct_bf16_peak", "% bf16 peak", "{:.0f}"),
        ("pct_concurrent_peak_median", "(median, concurrent)", "{:.0f}"),
        ("minutes_943_users", "min/943 users", "{:.1f}"),
        ("minutes_943_users_median", "(median)", "{:.1f}"),
    ]
    cells = [[h for _, h, _ in cols]] + [[f.format(r[k]) for k, _, f in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    print()
    for i, line in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="smollm2-135m-instruct")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--users", type=int, default=64, help="users scored by the shared-prefix path")
    p.add_argument("--naive-users", type=int, default=4, help="users scored by the naive path (slow)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="passes over the users, each batch timed")
    variants = ["no_year", "no_year-listed", "with_year", "with_year-listed"]
    p.add_argument(
        "--variants",
        nargs="+",
        default=["no_year", "no_year-listed", "with_year-listed"],
        choices=variants,
        help="prompt variants: title style; '-listed': candidates listed in the prompt (DELRec's form)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-size", type=int, default=2048, help="matrix size of the matmul peak measurement")


# --------------------------------------------------------------------------------------------
# Training stages: teachers, stage 1 (distill), stage 2 (finetune)
# --------------------------------------------------------------------------------------------


def _teachers_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu")
    p.add_argument("--config", default=None, help="TOML/JSON overrides of the preset")
    p.add_argument("--epochs", type=int, default=2, help="training epochs timed per teacher")


def bench_teachers(args: argparse.Namespace) -> dict:
    from .teachers.bench import bench_teachers as run

    df = run(args.preset, epochs=args.epochs, config_file=args.config)
    print(df.to_string(index=False))
    return {"rows": df.to_dict(orient="records")}


def _training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu")
    p.add_argument("--config", default=None, help="TOML/JSON overrides of the preset")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps timed (after a warm-up step)")


class _StepClock:
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


def _prompt_cost(fm: FlopModel, backbone, prompts: list) -> tuple[float, float]:
    """Mean (tokens, forward FLOPs) of scoring one prompt with all its candidates (shared prefix)."""
    from .scoring import candidate_token_ids

    costs = [shared_flops(fm, p.num_tokens, [len(t) for t in candidate_token_ids(backbone, p.candidates)]) for p in prompts]
    return statistics.mean(c[0] for c in costs), statistics.mean(c[1] for c in costs)


def _training_bench_setup(args: argparse.Namespace, root: str):
    """A throw-away run on the preset's data whose stage-1 teacher is the popularity baseline.

    Trains in seconds, and its top-k lists give prompts as long as any teacher's, so the timed
    steps cost what they cost in a real run.
    """
    from pathlib import Path

    from .config import load_config, resolve_path
    from .data import load_processed, prepare_dataset
    from .llm import load_backbone_from_config
    from .runner import RunPaths
    from .teachers import run_teachers

    config = load_config(args.preset, args.config)
    planned = {"distill": config.distill.max_steps, "finetune": config.finetune.max_steps}
    data_root = resolve_path(config.data_dir)
    prepare_dataset(config.data, data_root)
    data = load_processed(data_root, config.data.dataset)
    paths = RunPaths(Path(root))
    run_teachers(replace(config.teachers, models=()), data, paths.teachers, progress=False)
    config = replace(
        config,
        distill=replace(config.distill, prompts=("popularity",), heldout_users=4, max_steps=args.steps + 2,
                        eval_every=None, warmup_steps=0),
        finetune=replace(config.finetune, variants=("delrec-popularity",), valid_users=4, max_steps=args.steps + 2,
                         eval_every=None, warmup_steps=0),
    )  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    peak = matmul_peak_gflops(torch.bfloat16)
    print(f"bf16 matmul peak {peak:.0f} GFLOP/s")
    backbone = load_backbone_from_config(config.llm)
    return config, paths, data, backbone, peak, planned


def _training_row(stage: str, clock: _StepClock, examples_per_step: int, tokens: float, flops: float, peak: float) -> dict:
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
        "pct_bf16_peak": 100 * 2 * flops / per_step / 1e9 / peak,
    }
    print(
        f"{stage}: {per_step:.2f} s/step (median of {len(secs)}), {examples_per_step} prompts/step, "
        f"{tokens:.0f} tokens/step, {row['tokens_per_s']:.0f} tokens/s, ~{row['gflops']:.0f} GFLOP/s "
        f"= {row['pct_bf16_peak']:.0f}% of the bf16 peak"
    )
    return row


def _bench_distill_run(config, paths, data, backbone, peak, planned) -> dict:
    from .distill import run_distillation

    cfg = config.distill
    clock = _StepClock()
    run_distillation(config, paths, data, backbone, "popularity", progress=False, callbacks=[clock])
    task = clock.trainer.task
    users = task.users[:64]
    prompts = [task.prompt(task.train[t][u]) for u in users for t in task.tasks]
    tokens, flops = _prompt_cost(FlopModel.of(backbone.model), backbone, prompts)
    n = cfg.batch_size * cfg.grad_accum * len(task.tasks)  # users per step x (TA, RPS)
    row = _training_row("distill", clock, n, tokens * n, flops * n, peak)
    row["minutes_per_prompt"] = row["s_per_step"] * planned["distill"] / 60
    print(f"  {planned['distill']} steps of the run: {row['minutes_per_prompt']:.1f} min per soft prompt (evaluations excluded)")
    return row


def bench_distill(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="delrec-bench-") as root:
        return _bench_distill_run(*_training_bench_setup(args, root))


def bench_finetune(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="delrec-bench-") as root:
        return _bench_finetune_run(*_training_bench_setup(args, root))


def _bench_finetune_run(config, paths, data, backbone, peak, planned) -> dict:
    from .distill import run_distillation
    from .finetune import run_finetuning

    # Stage 2 needs a soft prompt: a one-step stage 1 (its quality does not change the cost).
    run_distillation(replace(config, distill=replace(config.distill, max_steps=1)), paths, data, backbone,
                     "popularity", progress=False)  # fmt: skip
    cfg = config.finetune
    clock = _StepClock()
    run_finetuning(config, paths, data, backbone, "delrec-popularity", progress=False, callbacks=[clock])
    task = clock.trainer.task
    prompts = [task.scorer.prompt(e) for e in task.train[:64]]
    tokens, flops = _prompt_cost(FlopModel.of(backbone.model), backbone, prompts)
    n = cfg.batch_size * cfg.grad_accum
    row = _training_row("finetune", clock, n, tokens * n, flops * n, peak)
    row["minutes_per_variant"] = row["s_per_step"] * planned["finetune"] / 60
    print(f"  {planned['finetune']} steps of the run: {row['minutes_per_variant']:.1f} min per variant (evaluations excluded)")
    return row


# name -> (argument setup, runner returning a JSON-able dict). Later stages add theirs here.
BENCHMARKS: dict[
    str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], dict]]
] = {
    "teachers": (_teachers_args, bench_teachers),
    "scoring": (_scoring_args, bench_scoring),
    "distill": (_training_args, bench_distill),
    "finetune": (_training_args, bench_finetune),
}


def _print_summary(results: dict) -> None:
    """One line per stage: what the cpu preset's run of it costs on this machine."""
    print("\n=== summary (cpu preset, this machine) ===")
    for row in results.get("teachers", {}).get("rows", []):
        print(f"teacher {row['teacher']}: {row['s_per_epoch']:.1f} s/epoch (early stopping decides the epochs)")
    runs = results.get("scoring", {}).get("runs", [])
    default = next((r for r in runs if r["path"] == "shared/packed"), None)
    if default:
        print(f"LLM scoring, 943 users x 20 candidates ({default['prompts']} prompts): "
              f"{default['minutes_943_users']:.1f} min per method (best), {default['minutes_943_users_median']:.1f} (median)")  # fmt: skip
    if "distill" in results:
        print(f"stage 1: {results['distill']['s_per_step']:.1f} s/step, {results['distill']['minutes_per_prompt']:.1f} min per soft prompt")
    if "finetune" in results:
        print(f"stage 2: {results['finetune']['s_per_step']:.1f} s/step, {results['finetune']['minutes_per_variant']:.1f} min per variant")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m delrec_lib.bench", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", help="also write the results to this JSON file")
    sub = parser.add_subparsers(dest="name", required=True)
    for name, (add_args, _) in BENCHMARKS.items():
        add_args(sub.add_parser(name, parents=[common]))
    sub.add_parser("all", parents=[common], help="every benchmark with its defaults")
    args = parser.parse_args(argv)
    if args.name == "all":
        results = {}
        for name, (add_args, run) in BENCHMARKS.items():
            p = argparse.ArgumentParser()
            add_args(p)
            print(f"\n=== {name} ===", flush=True)
            results[name] = run(p.parse_args([]))
        _print_summary(results)
    else:
        results = {args.name: BENCHMARKS[args.name][1](args)}
    if args.json:
        from .artifacts import atomic_write_json

        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
