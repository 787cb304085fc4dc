"""Stage 1's report users: a fixed set of users per processed dataset, never trained on or tuned on.

Stage 1 reports its fidelity on held-out users. If they were drawn with the stage's own settings, a change
of ``distill.seed`` or of the held-out set sizes (a tuning grid) would move users between the report set
and the training or selection sets, so settings chosen on some users could be reported on the same users.
The report set is therefore a property of the data: ``min(300, users // 3)`` users drawn from the
processed users by a constant seed of its own, in a fixed order, written as ``report_users.json`` in the
processed folder. Stage 1 reports on the first ``distill.heldout_users`` of them and trains and selects
only on the users outside the whole set (``delrec_lib.delrec.distill.split_users``).

The file is not one of the processed data's outputs (``manifest.json`` does not list it), so it leaves
the data's identity, and every artifact made from it, unchanged. It depends on the users only: a missing
file is recomputed; a present one is checked against the recomputation and refused, naming the file,
when it differs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..artifacts import atomic_write_json, read_json, sha256_json
from ..errors import DataError

log = logging.getLogger(__name__)

REPORT_USERS_FILE = "report_users.json"
REPORT_USERS_KIND = "report-users"
# Its own seed: independent of every setting of the kit (data.seed, distill.seed, ...).
REPORT_SEED = 2718
# 300 users give stage 1's fidelity a 95% interval of at most about +-0.06; a third of the users at most,
# so that small data (the tests, a few dozen users) keeps two thirds for selection and training.
MAX_REPORT_USERS = 300
REPORT_SHARE = 3


def report_set_size(num_users: int) -> int:
    return min(MAX_REPORT_USERS, num_users // REPORT_SHARE)


def compute_report_users(user_ids) -> list[int]:
    """The fixed report set of a dataset's users, in its fixed order (a seeded draw, not sorted)."""
    ids = np.sort(np.asarray(user_ids, dtype=np.int64))
    order = np.random.default_rng(REPORT_SEED).permutation(len(ids))
    return [int(u) for u in ids[order[: report_set_size(len(ids))]]]


def report_users_record(user_ids) -> dict:
    """The content of ``report_users.json``: the users, the rule that drew them, and their hash (what
    stage 1's metrics record, so two runs can be seen to report on the same users)."""
    users = compute_report_users(user_ids)
    return {
        "kind": REPORT_USERS_KIND,
        "seed": REPORT_SEED,
        "rule": f"min({MAX_REPORT_USERS}, users // {REPORT_SHARE}) users drawn by the seed, in this order",
        "data_users": len(user_ids),
        "data_users_hash": sha256_json(sorted(int(u) for u in user_ids)),
        "hash": sha256_json(users),
        "users": users,
    }


def load_report_users(directory: str | Path, user_ids) -> dict:
    """The record of ``<directory>/report_users.json`` for these processed users: written when missing
    (processed folders made before the file existed), checked when present."""
    path = Path(directory) / REPORT_USERS_FILE
    expected = report_users_record(user_ids)
    if not path.is_file():
        try:
            atomic_write_json(path, expected)
        except OSError as e:  # a read-only data folder: the set is the same, only not written down
            log.warning("%s: could not be written (%s); using the recomputed report users", path, e)
        return expected
    try:
        recorded = read_json(path)
    except DataError as e:
        raise DataError(f"{e}. Delete it: the next load writes it again.") from e
    if recorded != expected:
        fields = sorted(k for k in set(expected) | set(recorded if isinstance(recorded, dict) else {})
                        if not isinstance(recorded, dict) or recorded.get(k) != expected.get(k))  # fmt: skip
        raise DataError(
            f"{path}: not the report users of the processed data beside it (differs in {', '.join(fields)}); "
            f"it was edited, or made for other users or by another rule. Delete it: the next load writes it "
            f"again (the report users of stage 1 may then change)."
        )
    return recorded
