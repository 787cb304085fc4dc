"""Benchmark of int8 dynamic quantisation for test-time scoring (``python -m delrec_lib.bench int8``).

Scores real test users' candidate sets (zero-shot prompts, ``LLMRanker.scores``, packed shared-prefix
path) with the frozen backbone in float32 and with an int8 copy whose Linear layers torch's dynamic
quantisation replaced (weights int8, activations quantised per batch). Reports seconds per user of each
(timed chunk by chunk, the two alternating on the same users, after a warm-up batch), the speed-up, how
far the rankings agree (top-1 agreement, mean Kendall tau over users) and HR@1 / NDCG@10 of each against
the true target with the paired difference and its 95% bootstrap interval.

The backbone's weights come from a Q4_1 GGUF (4-bit blocks), so int8 weights may lose nothing that
matters. The LM head stays float32: the kit's scorer computes logits from ``head.weight`` on the needed
rows only (``scoring._head_logprobs``), and a dynamically quantised Linear holds no such float tensor.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings
from dataclasses import replace

import numpy as np
import torch

from ..bench.perf import ML100K_USERS

QCONFIGS = ("per_channel", "per_tensor")
METRICS = ("HR@1", "NDCG@10")
# torch.ao.quantization is deprecated in favour of torchao, which the kit does not depend on; the old
# API still runs. Its warnings are silenced here only, and the benchmark says which API it used.
AO_WARNINGS = (r"torch\.ao\.quantization is deprecated", r"torch\.quantize_per_tensor, torch\.quantize_per_channel")


def int8_copy(model: torch.nn.Module, *, qconfig: str = "per_channel", head: bool = False) -> tuple[torch.nn.Module, list[str]]:
    """A deep copy of ``model`` with its Linear layers dynamically quantised to int8, and the names of the
    Linear layers left float32 (the output embeddings unless ``head``: the kit's scorer reads their weight).

    ``qconfig``: int8 scales per output channel (row) or one per weight matrix."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    if qconfig not in QCONFIGS:
        raise ValueError(f"qconfig: expected one of {list(QCONFIGS)}, got {qconfig!r}")
    qc = per_channel_dynamic_qconfig if qconfig == "per_channel" else default_dynamic_qconfig
    out = copy.deepcopy(model)  # tied weights stay tied within the copy; the original is untouched
    out_head = out.get_output_embeddings() if hasattr(out, "get_output_embeddings") else None
    spec, kept = {}, []
    for name, module in out.named_modules():
        if isinstance(module, torch.nn.Linear):
            if module is out_head and not head:
                kept.append(name)
            else:
                spec[name] = qc
    with warnings.catch_warnings():
        for message in AO_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        quantize_dynamic(out, spec, dtype=torch.qint8, inplace=True)
    return out, kept


def compare(ref: np.ndarray, other: np.ndarray, target_position: np.ndarray, *, seed: int = 0) -> dict:
    """How far ``other``'s rankings agree with ``ref``'s ([users, candidates] scores, -inf pads), and both
    against the true targets: top-1 agreement, mean Kendall tau over users, HR@1 / NDCG@10 of each with the
    paired difference (other - ref), its 95% bootstrap interval and sign-flip p-value."""
    from scipy.stats import kendalltau

    from ..metrics import bootstrap_ci, paired_test, per_user_metrics

    ref, other = np.asarray(ref, np.float64), np.asarray(other, np.float64)
    if ref.shape != other.shape:
        raise ValueError(f"compare: score arrays differ in shape, {ref.shape} and {other.shape}")
    taus = []
    for a, b in zip(ref, other, strict=True):
        real = np.isfinite(a) & np.isfinite(b)
        tau = kendalltau(a[real], b[real]).statistic
        if not np.isnan(tau):  # a constant row has no ranking to compare
            taus.append(float(tau))
    finite = np.isfinite(ref) & np.isfinite(other)
    out = {
        "users": len(ref),
        "top1_agreement": float((ref.argmax(1) == other.argmax(1)).mean()),
        "kendall_tau_mean": float(np.mean(taus)) if taus else float("nan"),
        "kendall_users": len(taus),
        "max_abs_diff": float(np.abs(ref[finite] - other[finite]).max(initial=0.0)),
        "metrics": {},
    }
    m_ref, m_other = per_user_metrics(ref, target_position), per_user_metrics(other, target_position)
    for m in METRICS:
        a, b = m_ref[m].to_numpy(), m_other[m].to_numpy()
        test = paired_test(b, a, seed=seed)
        out["metrics"][m] = {
            "fp32": bootstrap_ci(a, seed=seed),
            "int8": bootstrap_ci(b, seed=seed),
            "diff": test["mean_diff"],
            "diff_ci": (test["ci_low"], test["ci_high"]),
            "p_value": test["p_value"],
        }
    return out


def run(args: argparse.Namespace) -> dict:
    from ..config import load_config, resolve_path
    from ..data import load_processed, prepare_dataset
    from ..llm import load_backbone_from_config
    from .ranker import LLMRanker, split_examples

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}, "
          f"quantized engine {torch.backends.quantized.engine}")  # fmt: skip
    config = load_config(args.preset, args.config, llm={"backbone": args.backbone})
    root = resolve_path(config.data_dir)
    prepare_dataset(config.data, root)
    data = load_processed(root, config.data.dataset)
    users = data.user_ids()
    rng = np.random.default_rng(args.seed)
    users = sorted(int(u) for u in rng.choice(users, size=min(args.users, len(users)), replace=False))
    examples = split_examples(data, args.split, users)

    t = time.perf_counter()
    backbone = load_backbone_from_config(config.llm)
    # Both copies compute in float32 (no autocast): int8 is compared with the float path it would replace.
    backbone = replace(backbone, compute_dtype=torch.float32)
    print(f"backbone {backbone.name}: loaded in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    qmodel, kept = int8_copy(backbone.model, qconfig=args.qconfig)
    quantize_s = time.perf_counter() - t
    n_int8 = sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in qmodel.modules())
    print(f"int8 copy ({args.qconfig} scales) in {quantize_s:.1f} s: {n_int8} Linear layers int8, "
          f"kept float32: {', '.join(kept) or 'none'}")  # fmt: skip

    rankers = {
        "fp32": LLMRanker(backbone, config.llm, data.titles, None, None),
        "int8": LLMRanker(backbone.with_model(qmodel), config.llm, data.titles, None, None),
    }
    for ranker in rankers.values():  # prompts rendered and tokenized before any timing
        for e in examples:
            for o in range(ranker.orderings):
                ranker.prompt(e, o)
    scores = {k: [] for k in rankers}
    seconds = {k: [] for k in rankers}
    chunk = args.chunk or config.llm.score_batch_size
    with torch.no_grad():
        for r in rankers.values():  # warm-up: thread pool, kernel selection, int8 weight packing
            r.scores(examples[:chunk])
        for i, start in enumerate(range(0, len(examples), chunk)):
            part = examples[start : start + chunk]
            # Alternating which goes first: neither is always the one that meets a busier moment.
            for name in (["fp32", "int8"] if i % 2 == 0 else ["int8", "fp32"]):
                t = time.perf_counter()
                s = rankers[name].scores(part)
                seconds[name].append(time.perf_counter() - t)
                scores[name].append(s.float().cpu().numpy())

    n = len(examples)
    results = {
        "backbone": backbone.name,
        "users": n,
        "split": args.split,
        "threads": torch.get_num_threads(),
        "engine": torch.backends.quantized.engine,
        "api": "torch.ao.quantization.quantize_dynamic",
        "qconfig": args.qconfig,
        "int8_linear_layers": n_int8,
        "float32_linear_layers": kept,
        "quantize_seconds": quantize_s,
        "chunk": chunk,
    }
    for name in rankers:
        total = sum(seconds[name])
        results[name] = {"seconds": total, "s_per_user": total / n, "minutes_943_users": ML100K_USERS * total / n / 60,
                         "chunk_seconds": seconds[name]}  # fmt: skip
    results["speedup"] = results["fp32"]["seconds"] / results["int8"]["seconds"]
    results["speedup_median_chunk"] = statistics.median(a / b for a, b in zip(seconds["fp32"], seconds["int8"], strict=True))
    target = np.array([e.label for e in examples])
    results["agreement"] = compare(np.concatenate(scores["fp32"]), np.concatenate(scores["int8"]), target, seed=args.seed)
    for line in _report(results):
        print(line)
    return results


def _report(r: dict) -> list[str]:
    a = r["agreement"]
    lines = [
        f"\n{r['users']} {r['split']} users, {r['threads']} threads, chunks of {r['chunk']} users (after a warm-up chunk):",
        *(f"  {k}: {r[k]['s_per_user']:.3f} s/user ({r[k]['seconds']:.1f} s; {r[k]['minutes_943_users']:.1f} min for 943 users)"
          for k in ("fp32", "int8")),
        f"  speed-up int8 over fp32: {r['speedup']:.2f}x (total time), {r['speedup_median_chunk']:.2f}x (median over chunks)",
        f"rankings: top-1 agreement {a['top1_agreement']:.1%}, mean Kendall tau {a['kendall_tau_mean']:.3f} "
        f"({a['kendall_users']} users), max |score diff| {a['max_abs_diff']:.4f}",
    ]  # fmt: skip
    for m, v in a["metrics"].items():
        (f, fl, fh), (q, ql, qh) = v["fp32"], v["int8"]
        lo, hi = v["diff_ci"]
        lines.append(f"  {m}: fp32 {f:.4f} [{fl:.4f}, {fh:.4f}], int8 {q:.4f} [{ql:.4f}, {qh:.4f}], "
                     f"int8 - fp32 {v['diff']:+.4f} (95% CI {lo:+.4f} .. {hi:+.4f}, p {v['p_value']:.3f})")  # fmt: skip
    return lines


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", help="the run configuration whose data and LLM settings are used")
    p.add_argument("--config", default=None, help="TOML/JSON overrides of the preset")
    p.add_argument("--backbone", default=None, help="LLM name or folder (default: the config's llm.backbone)")
    p.add_argument("--users", type=int, default=100, help="test users, drawn with --seed")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--chunk", type=int, default=0, help="users per timed chunk (0: llm.score_batch_size)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--qconfig", default="per_channel", choices=QCONFIGS, help="int8 weight scales per row or per matrix")
    p.add_argument("--seed", type=int, default=0)


def summary(results: dict) -> list[str]:
    a = results["agreement"]
    return [f"int8 dynamic quantisation ({results['users']} users): {results['speedup']:.2f}x fp32's speed, "
            f"top-1 agreement {a['top1_agreement']:.0%}, HR@1 int8 - fp32 {a['metrics']['HR@1']['diff']:+.3f}"]  # fmt: skip
