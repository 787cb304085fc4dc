"""Benchmarks: ``python -m delrec_lib.bench <name> [options]``, or ``... bench all`` for every one
with its defaults followed by a one-line-per-stage summary (``make bench``).

Each benchmark lives beside what it measures and provides ``add_args(parser)``, ``run(args) -> dict``
(JSON-able results) and ``summary(results) -> list[str]``; this package lists them, and its
``perf`` module holds the measuring helpers they share. Timings on a
busy machine are 5-10x slower (torch's OpenMP threads spin against any other process): benchmark on a
quiet one.
"""

from __future__ import annotations

import argparse
import importlib

# name -> module providing add_args / run / summary, in the order ``all`` runs them.
BENCHMARKS: dict[str, str] = {
    "teachers": "delrec_lib.teachers.bench",
    "scoring": "delrec_lib.delrec.scoring_bench",
    "distill": "delrec_lib.delrec.distill_bench",
    "finetune": "delrec_lib.delrec.finetune_bench",
    "llmsrec": "delrec_lib.llmsrec.bench",
    "p2rec": "delrec_lib.p2rec.bench",
    "int8": "delrec_lib.llm.int8_bench",
    "heldout": "delrec_lib.bench.heldout",
}


def _module(name: str):
    return importlib.import_module(BENCHMARKS[name])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m delrec_lib.bench", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", help="also write the results to this JSON file")
    sub = parser.add_subparsers(dest="name", required=True)
    for name in BENCHMARKS:
        about = (_module(name).__doc__ or "").split("\n")[0].replace("%", "%%")  # argparse formats help with %
        _module(name).add_args(sub.add_parser(name, parents=[common], help=about))
    sub.add_parser("all", parents=[common], help="every benchmark with its defaults, then a summary")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    results = {}
    for name in names:
        module = _module(name)
        if args.name == "all":
            p = argparse.ArgumentParser()
            module.add_args(p)
            print(f"\n=== {name} ===", flush=True)
            results[name] = module.run(p.parse_args([]))
        else:
            results[name] = module.run(args)
    if args.name == "all":
        print("\n=== summary (this machine) ===")
        for name in names:
            for line in _module(name).summary(results[name]):
                print(line)
    if args.json:
        from ..artifacts import atomic_write_json

        atomic_write_json(args.json, results)
    return 0

