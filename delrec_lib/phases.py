"""Where a notebook's seconds go: wall time per named phase, accumulated in the process that runs the notebook.

The library marks its costly steps (``with phase("training backward"): ...``): the training loop's forward,
backward, optimizer step, held-out evaluations and checkpoints, the frozen LLM's cached states, test-time
scoring, teacher exports, figures, artifact writes and model loading. Times are exclusive: a phase inside
another (caching inside a held-out evaluation) is taken out of the outer one, so the phases of a notebook add up
to at most its wall time; the rest is setup, data and tables. ``record_metrics`` writes the totals beside the
notebook's metrics and the runner puts them in ``timings.json`` with the notebook's seconds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

_totals: dict[str, float] = {}
_stack: list[list] = []  # [name, start of its current exclusive stretch]


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the block's wall time to ``name``, less the phases entered inside it."""
    now = time.perf_counter()
    if _stack:  # the enclosing phase pauses
        outer = _stack[-1]
        _totals[outer[0]] = _totals.get(outer[0], 0.0) + now - outer[1]
    _stack.append([name, now])
    try:
        yield
    finally:
        end = time.perf_counter()
        _, start = _stack.pop()
        _totals[name] = _totals.get(name, 0.0) + end - start
        if _stack:  # the enclosing phase resumes
            _stack[-1][1] = end


def phase_totals() -> dict[str, float]:
    """Seconds per phase so far in this process, largest first (a phase still open counts up to now)."""
    totals = dict(_totals)
    now = time.perf_counter()
    if _stack:
        name, start = _stack[-1]
        totals[name] = totals.get(name, 0.0) + now - start
    return {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def reset_phases() -> None:
    _totals.clear()
