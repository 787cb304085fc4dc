"""Training examples of the teachers, built from train items only.

Only ``ProcessedData.train_items`` enters here: a user's valid and test targets are neither
labels nor inputs of any training example (tests/test_teachers.py instruments the batches).

Sequence models (SASRec, GRU4Rec) train on windows of ``max_len`` inputs and predict at every
position at once. A user's train items x_0 .. x_{n-1} give label positions 1 .. n-1 (x_p is
predicted from x_0 .. x_{p-1}). Windows are cut from the end of the sequence: the latest window
holds the last ``max_len`` label positions, which is exactly the context the model sees when it
predicts the valid target; each earlier window ends where the previous one's labels begin.
With ``stride == max_len`` the windows do not overlap and each label sees the items of its
window before it. With a smaller stride a window also carries the ``max_len - stride`` positions
before its labels as context (inputs only). Either way every train position is a label exactly
once per epoch. The oldest window is left-padded.

Caser trains on its own formulation: one example per label position t >= 1, whose input is the
``window`` items before t (left-padded) and whose labels are the next ``targets`` train items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .base import TrainBatch


@dataclass
class Examples:
    """Precomputed training examples: users [E], inputs [E, L], labels [E, L'] (0 = padding / no label)."""

    users: np.ndarray
    inputs: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def batch(self, indices: Sequence[int]) -> TrainBatch:
        idx = np.asarray(indices, dtype=np.int64)
        return TrainBatch(
            users=torch.from_numpy(self.users[idx]),
            inputs=torch.from_numpy(self.inputs[idx]),
            labels=torch.from_numpy(self.labels[idx]),
        )


def sequence_windows(seq: Sequence[int], max_len: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, labels) windows of one train sequence, latest first; labels 0 where not a label."""
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride must be in 1..max_len={max_len}, got {stride}")
    seq = list(seq)
    out = []
    end = len(seq) - 1  # last label position not yet covered
    while end >= 1:
        start = max(1, end - max_len + 1)  # first position of the window
        first_label = 1 if start == 1 else max(start, end - stride + 1)
        inputs = seq[start - 1 : end]  # x_{p-1} for p in start..end
        labels = [seq[p] if p >= first_label else 0 for p in range(start, end + 1)]
        out.append((inputs, labels))
        end = first_label - 1
    return out


def _left_pad(rows: list[list[int]], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        if row:
            out[i, length - len(row) :] = row
    return out


def sequence_examples(users: Sequence[int], train_items: Sequence[Sequence[int]], max_len: int, stride: int) -> Examples:
    ex_users, ex_inputs, ex_labels = [], [], []
    for user, seq in zip(users, train_items, strict=True):
        for inputs, labels in sequence_windows(seq, max_len, stride):
            ex_users.append(int(user))
            ex_inputs.append(inputs)
            ex_labels.append(labels)
    return Examples(np.asarray(ex_users, dtype=np.int64), _left_pad(ex_inputs, max_len), _left_pad(ex_labels, max_len))


def window_examples(users: Sequence[int], train_items: Sequence[Sequence[int]], window: int, targets: int) -> Examples:
    """Caser's samples: for every train position t >= 1, (the ``window`` items before t, the next ``targets``)."""
    ex_users, ex_inputs, ex_labels = [], [], []
    for user, seq in zip(users, train_items, strict=True):
        seq = np.asarray(seq, dtype=np.int64)
        n = len(seq)
        if n < 2:
            continue
        padded = np.concatenate([np.zeros(window, np.int64), seq, np.zeros(targets, np.int64)])
        t = np.arange(1, n)  # label positions
        # input window of position t: seq[t-window .. t-1] = padded[t .. t+window-1]
        ex_inputs.append(padded[t[:, None] + np.arange(window)])
        ex_labels.append(padded[window + t[:, None] + np.arange(targets)])
        ex_users.append(np.full(n - 1, int(user), np.int64))
    if not ex_users:
        return Examples(np.zeros(0, np.int64), np.zeros((0, window), np.int64), np.zeros((0, targets), np.int64))
    return Examples(np.concatenate(ex_users), np.concatenate(ex_inputs), np.concatenate(ex_labels))
