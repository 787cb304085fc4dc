"""Command line: ``python -m delrec_lib <command> ...``.

- ``run``: the whole notebook series with papermill (what ``make reproduce`` calls);
- one command per stage (``data``, ...) calling the same library functions as the notebooks,
  so the heavy stages can be launched on GPUs with ``accelerate launch -m delrec_lib <stage>``;
- ``report``: a run's results page, written from its folder (``delrec_lib.report``).

The commands that write a run folder hold its lock (``config.context.run_folder_lock``) while they work,
as ``run`` does: a second command or run on the same folder stops at once, naming the first.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import DelrecError
from .training.distributed import broadcast_object, is_main_process, launched_processes

# The commands that may run under ``accelerate launch`` / ``torchrun`` (several processes): the
# others write their outputs from every process.
MULTI_PROCESS_COMMANDS = ("distill", "finetune")

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {}
# The commands that write into the run folder and hold its lock while they work (``run`` takes it
# itself, once its arguments are checked; ``data`` writes the shared data folder, no run folder).
LOCKING_COMMANDS: set[str] = set()


def command(name: str, help: str, *, locks_run_folder: bool = True):
    """Register ``fn(args)`` as a sub-command; ``add_args(parser)`` declares its options."""

    def wrap(add_args):
        def register(fn):
            COMMANDS[name] = (help, add_args, fn)
            if locks_run_folder:
                LOCKING_COMMANDS.add(name)
            return fn

        return register

    return wrap


def _common(p: argparse.ArgumentParser) -> None:
    # No default here: a config file naming its preset must not meet a "cpu" the user never typed.
    p.add_argument("--preset", default=None, help="smoke | cpu | cpu-long | cpu-seeds | cpu-study | cpu-ablations | paper (default: the config file's, else cpu)")
    p.add_argument("--config", default=None, help="TOML/JSON file overriding preset fields, tables named like the dataclasses")
    p.add_argument("--run-dir", default=None, help="output folder of the run (default: outputs/<preset>)")


def _run_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--only", nargs="*", default=None, help="run only notebooks whose name starts with these (e.g. 01 02)")
    p.add_argument("--rerun", nargs="+", default=None, metavar="STAGE",
                   help="compute these stages again even where finished (a notebook's number, e.g. 02, or a stage: "
                        "data teachers distill finetune p2rec evaluation analysis); what depends on them follows "
                        "where their outputs change")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")


@command("run", "execute the notebook series with papermill", locks_run_folder=False)(_run_args)
def _run(args: argparse.Namespace) -> None:
    from .runner import run_series

    run_series(args.preset, args.run_dir, config_file=args.config, only=args.only, rerun=args.rerun,
               progress=not args.no_progress)  # fmt: skip


@command("data", "acquire and process the dataset into data/processed/", locks_run_folder=False)(_common)
def _data(args: argparse.Namespace) -> None:
    from .config import load_config, resolve_path
    from .data import load_processed, prepare_dataset

    config = load_config(args.preset, args.config)
    out = prepare_dataset(config.data, resolve_path(config.data_dir))
    data = load_processed(resolve_path(config.data_dir), config.data)
    print(f"{out}: {data.num_users} users, {data.num_items} items, {len(data.candidates)} candidate sets")


def _teachers_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--models", nargs="*", default=None, help="teachers to train (default: the preset's), e.g. sasrec caser")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


@command("teachers", "train, evaluate and export the preset's teachers and the popularity baseline")(_teachers_args)
def _teachers(args: argparse.Namespace) -> None:
    from .config.context import run_context
    from .teachers import run_teachers
    from .teachers.report import metrics_table

    # --models picks which of the run's teachers to train now; the run's config (which the later
    # stages check) stays the one the preset and file describe.
    config, paths, data_root = run_context(args.preset, args.run_dir, args.config)
    from .data import load_processed

    data = load_processed(data_root, config.data)
    names = tuple(args.models) if args.models else None
    results = run_teachers(config.teachers, data, paths.teachers, names=names, progress=not args.no_progress)
    print(metrics_table(results, split="test").to_string())
    print(f"exports: {paths.teachers}")


def _stage_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--only", nargs="*", default=None, help="a subset of the preset's soft prompts / variants")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _llm_stage(args: argparse.Namespace):
    from .config.context import run_context
    from .data import load_processed
    from .llm import load_backbone_from_config

    config, paths, data_root = run_context(args.preset, args.run_dir, args.config)
    data = load_processed(data_root, config.data)
    return config, paths, data, load_backbone_from_config(config.llm)


@command("distill", "stage 1: distil each teacher's pattern into a soft prompt (LLM frozen)")(_stage_args)
def _distill(args: argparse.Namespace) -> None:
    from .config import split_seed
    from .delrec.distill import run_distillation, stage1_matched
    from .delrec.soft_prompt import known_answer_names, stage1_names

    config, paths, data, backbone = _llm_stage(args)
    for name in args.only or [*known_answer_names(config), *stage1_names(config)]:
        r = run_distillation(config, paths, data, backbone, name, progress=not args.no_progress)
        m = r.metrics
        if is_main_process():
            print(f"{name}: fidelity {m['fidelity_before']['mean']:.3f} -> {m['fidelity_after']['mean']:.3f} "
                  f"(chance {m['fidelity_chance']:.3f}) in {m['seconds']:.0f} s: {r.directory}")  # fmt: skip
        # as notebook 03: the real teachers' prompts again on popularity-matched report examples
        if config.eval.matched_users and split_seed(name)[0] != config.distill.known_answer and is_main_process():
            mm = stage1_matched(config, paths, data, backbone, name)
            if mm is not None:
                print(f"{name}, popularity-matched report examples: fidelity {mm['fidelity_before']['mean']:.3f} -> "
                      f"{mm['fidelity_after']['mean']:.3f} (chance {mm['fidelity_chance']:.3f}): {paths.distill_matched(name)}")  # fmt: skip


@command("finetune", "stage 2: LoRA fine-tuning with the frozen soft prompt, per variant")(_stage_args)
def _finetune(args: argparse.Namespace) -> None:
    from .delrec.finetune import run_finetuning, seeded_names

    config, paths, data, backbone = _llm_stage(args)
    for variant in args.only or [*config.finetune.variants, *seeded_names(config)]:
        r = run_finetuning(config, paths, data, backbone, variant, progress=not args.no_progress)
        best = r.metrics["valid_best"]
        if is_main_process():
            print(f"{variant}: valid HR@1 {best['HR@1']:.3f} NDCG@5 {best['NDCG@5']:.3f} in {r.metrics['seconds']:.0f} s: {r.directory}")


@command("llmsrec", "LLM-SRec: a frozen LLM taught the teacher's user representation through small MLPs")(_stage_args)
def _llmsrec(args: argparse.Namespace) -> None:
    from .llmsrec import run_llmsrec

    config, paths, data, backbone = _llm_stage(args)
    for name in args.only or config.llmsrec.variants:
        r = run_llmsrec(config, paths, data, backbone, name, progress=not args.no_progress)
        best = r.metrics["valid_best"]
        print(f"{name}: valid HR@1 {best['HR@1']:.3f} NDCG@10 {best['NDCG@10']:.3f} in {r.metrics['seconds']:.0f} s: {r.directory}")


def _p2rec_args(p: argparse.ArgumentParser) -> None:
    _stage_args(p)
    p.add_argument("--no-seeds", action="store_true", help="skip the seed study (extra teacher seeds)")


@command("p2rec", "P2Rec: user-level SFT of the LLM, then teachers initialised from its item embeddings")(_p2rec_args)
def _p2rec(args: argparse.Namespace) -> None:
    from .p2rec import run_p2rec
    from .p2rec.report import seed_study, validation_table

    config, paths, data, backbone = _llm_stage(args)
    run = run_p2rec(config, paths, data, backbone, variants=tuple(args.only) if args.only else None,
                    seed_study=not args.no_seeds, progress=not args.no_progress)  # fmt: skip
    for name, r in run.sft.items():
        m = r.metrics
        if "heldout_best" in m:
            print(f"{name}: held-out {m['loss']} {m['heldout_best'][m['loss']]:.5f} (mean distribution "
                  f"{m['heldout_prior'][m['loss']]:.5f}) in {m['train_seconds']:.0f} s: {r.directory}")  # fmt: skip
    print(validation_table(paths, config).to_string())
    study = seed_study(paths, config)
    if not study.empty:
        print(study.to_string(index=False))


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, help="the run folder to report on (e.g. outputs/cpu)")
    p.add_argument("--out", default=None, help="where the page goes (default: <run>/report/<run>.md), e.g. docs/results/cpu.md")
    p.add_argument("--compare", nargs="+", default=[], metavar="RUN",
                   help="other run folders: paired tests of their per-user results (same test users and candidates)")  # fmt: skip
    p.add_argument("--reference", default=None, help="a run folder, results page or its .json summary: every metric "
                   "side by side with its interval (e.g. docs/results/cpu.md)")  # fmt: skip
    p.add_argument("--readme", default=None, help="a README whose <!-- results:<run>:start/end --> block gets the page's headline table")
    p.add_argument("--no-notebooks", action="store_true", help="do not render the executed notebooks")
    p.add_argument("--notebooks-dir", default=None, help="where the rendered notebooks go (default: <run>/report/notebooks)")


# Reads the run folder and writes only its report/ (or --out): a run may go on meanwhile.
@command("report", "write a run's results page (tables, tests, figures, machine, times) from its folder",
         locks_run_folder=False)(_report_args)  # fmt: skip
def _report(args: argparse.Namespace) -> None:
    from .report import update_readme, write_report

    page = write_report(args.run_dir, args.out, args.compare, args.reference, notebooks=not args.no_notebooks,
                        notebooks_dir=args.notebooks_dir)  # fmt: skip
    print(f"results page: {page} (summary: {page.with_suffix('.json')})")
    if args.readme:
        run = update_readme(args.readme, page)
        print(f"{args.readme}: headline table of run {run} updated between its markers")


def _stage1_study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True, help="the soft prompt every run trained (e.g. rule-sharedword-rps)")
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN[:PROMPT]",
                   help="run folders that trained it (RUN:PROMPT: that run's own soft prompt, e.g. another rule teacher's)")
    p.add_argument("--out", required=True, help="where the page goes, e.g. docs/results/known-answer.md")
    p.add_argument("--pairs", nargs="*", default=(), metavar="A/B",
                   help="runs compared user by user on the report set (row names, e.g. sasrec-k1-kl-seed1/sasrec-k1-seed1), "
                        "one Holm family")  # fmt: skip


@command("stage1-study", "one soft prompt as several runs trained it, side by side (settings, fidelity, curves)",
         locks_run_folder=False)(_stage1_study_args)  # fmt: skip
def _stage1_study(args: argparse.Namespace) -> None:
    from .report import write_stage1_study

    print(f"stage-1 study: {write_stage1_study(args.runs, args.prompt, args.out, pairs=args.pairs)}")


def run_folder(args: argparse.Namespace) -> Path:
    """The run folder a command writes: ``--run-dir``, else ``outputs/<the config's preset>``."""
    from .config.context import run_context

    return run_context(args.preset, args.run_dir, args.config)[1].root


@contextlib.contextmanager
def held_run_folder(root: Path) -> Iterator[None]:
    """``run_folder_lock(root)`` for a command, in one process or under a launcher.

    Under a launcher only the main process takes the lock (the processes of one launch are one
    run: each taking it would refuse its siblings), and tells the others whether it got it, so
    that a refused launch stops in every process instead of leaving them waiting for the main one.
    """
    from .config.context import run_folder_lock

    if launched_processes() == 1:
        with run_folder_lock(root):
            yield
        return
    with contextlib.ExitStack() as held:
        refused = None
        if is_main_process():
            try:
                held.enter_context(run_folder_lock(root))
            except (DelrecError, OSError) as e:  # told to the others before stopping, or they would wait
                refused = str(e)
        refused = broadcast_object(refused)
        if refused:
            raise DelrecError(refused)
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m delrec_lib", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if launched_processes() > 1 and args.command not in MULTI_PROCESS_COMMANDS:
        print(f"error: '{args.command}' runs in one process; launch only {' and '.join(MULTI_PROCESS_COMMANDS)} "
              f"with accelerate launch / torchrun ({launched_processes()} processes were started)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        with held_run_folder(run_folder(args)) if args.command in LOCKING_COMMANDS else contextlib.nullcontext():
            COMMANDS[args.command][2](args)
    except DelrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Finished stages are on disk with their manifests: the same command skips them.
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
