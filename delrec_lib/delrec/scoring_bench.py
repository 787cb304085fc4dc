"""Benchmark of LLM candidate scoring (``python -m delrec_lib.bench scoring``).

Users/s and tokens/s of ranking 20 candidates per user on the embedded default backbone with
ML-100K-like prompts, for the shared-prefix scorer (bf16 autocast where the CPU has it) and the naive
one-forward-per-candidate scorer (float32), for prompt variants (title style with or without year;
candidates listed in the prompt or not); achieved GFLOP/s against the matmul peak (in the compute dtype) measured in the
same run; the extrapolated time for all 943 ML-100K users. The prompts use a built-in list of ML-100K
titles, so it runs before and independently of data preparation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from functools import partial

import torch

from ..bench.perf import (
    ML100K_TITLES,
    ML100K_USERS,
    FlopModel,
    dtype_name,
    matmul_peak_gflops,
    naive_flops,
    shared_flops,
    synthetic_users,
    timed_chunks,
)


def run(args: argparse.Namespace) -> dict:
    from ..config import LLMConfig
    from ..llm import load_backbone
    from ..llm.prompts import PromptBuilder
    from ..llm.scoring import answer_token_ids, rank_candidates, rank_candidates_naive

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
    )
    t = time.perf_counter()
    backbone = load_backbone(args.backbone, dtype=args.dtype)
    print(
        f"backbone {backbone.name}: loaded in {time.perf_counter() - t:.1f} s, compute {backbone.compute_dtype}"
    )
    # The peak of the dtype the shared path computes in (bf16 only where the CPU has it natively).
    peak = matmul_peak_gflops(backbone.compute_dtype, args.peak_size)
    peak_fp32 = peak if backbone.compute_dtype == torch.float32 else matmul_peak_gflops(torch.float32, args.peak_size)
    print(f"matmul peak {args.peak_size}^3: {dtype_name(backbone.compute_dtype)} {peak:.0f} GFLOP/s, fp32 {peak_fp32:.0f} GFLOP/s")
    fp32 = replace(backbone, compute_dtype=torch.float32)
    fm = FlopModel.of(backbone.model)
    users = synthetic_users(max(args.users, args.naive_users), seed=args.seed)
    config = LLMConfig(backbone=args.backbone)

    rows, results = [], {"peak_gflops": peak, "peak_dtype": dtype_name(backbone.compute_dtype),
                         "peak_fp32_gflops": peak_fp32, "runs": []}

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
            "pct_peak": 100 * best / (peak if bb.compute_dtype == backbone.compute_dtype else peak_fp32),
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
        cand_lens = [[len(t) for t in answer_token_ids(backbone, p, p.candidates)] for p in prompts]
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
                samples = timed_chunks(
                    args.repeats,
                    args.batch_size,
                    partial(rank_candidates, backbone),
                    prompts[:n],
                    [s[1] for s in sf],
                    peak_dtype=backbone.compute_dtype,
                    mode=mode,
                    batch_size=args.batch_size,
                )
            tok_u, flop_u = statistics.mean(s[0] for s in sf), statistics.mean(s[1] for s in sf)
            record(f"shared/{mode}", variant, backbone, samples, tok_u, flop_u, extra)

        if first and args.naive_users > 0:
            m = args.naive_users
            nf = [naive_flops(fm, p.num_tokens, cl) for p, cl in zip(prompts[:m], cand_lens[:m], strict=True)]
            with torch.no_grad():
                samples = timed_chunks(
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
        ("pct_peak", "% peak", "{:.0f}"),
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


def add_args(p: argparse.ArgumentParser) -> None:
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




def summary(results: dict) -> list[str]:
    runs = results.get("runs", [])
    default = next((r for r in runs if r["path"] == "shared/packed"), None)
    if not default:
        return []
    return [f"LLM scoring, 943 users x 20 candidates ({default['prompts']} prompts): "
            f"{default['minutes_943_users']:.1f} min per method (best), {default['minutes_943_users_median']:.1f} (median)"]
