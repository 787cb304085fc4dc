"""The shared training loop: accumulation, early stopping, best state, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from delrec_lib.training import TrainConfig, Trainer, TrainingTask, process_seed, share_of


class Regression(TrainingTask):
    """y = Xw + noise through a dropout layer (so resuming must restore the RNG too)."""

    def __init__(self, n: int = 96, init_seed: int = 0):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=g)
        self.y = self.x @ torch.arange(1.0, 7.0) + 0.1 * torch.randn(n, generator=g)
        torch.manual_seed(init_seed)
        self.model = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(6, 1))
        self.seen: list[int] = []

    def trainable_module(self):
        return self.model

    def num_examples(self):
        return len(self.x)

    def make_batch(self, indices):
        self.seen.extend(indices)
        return self.x[indices], self.y[indices]

    def training_loss(self, batch):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.model(x).squeeze(-1), y)
        return loss, {}

    def evaluate(self):
        pred = self.model(self.x).squeeze(-1)
        return {"mse": float(torch.nn.functional.mse_loss(pred, self.y))}


CFG = TrainConfig(max_epochs=4, batch_size=8, grad_accum=2, lr=0.3, eval_every=5, metric="mse", log_every=2, seed=3)


def test_training_reduces_loss_and_keeps_best(tmp_path):
    task = Regression()
    result = Trainer(CFG, task, tmp_path / "ckpt", progress=False).train()
    assert result.steps == 4 * 6  # 96 examples / (8 x 2) per step, 4 epochs
    assert result.history[-1]["mse"] < result.history[0]["mse"] / 5
    best = min(h["mse"] for h in result.history)
    assert result.best_metric == best
    assert sorted(task.seen[:96]) == list(range(96)), "an epoch visits every example once"


class Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    full_task = Regression()
    full = Trainer(CFG, full_task, tmp_path / "full", progress=False).train()

    def stop_at_12(trainer, step):
        if step == 12:
            raise Interrupt

    task = Regression()
    with pytest.raises(Interrupt):
        Trainer(CFG, task, tmp_path / "resumed", progress=False, callbacks=[stop_at_12]).train()
    fresh = Regression(init_seed=99)  # a new process: other initial weights, restored from the checkpoint
    resumed = Trainer(CFG, fresh, tmp_path / "resumed", progress=False).train()
    assert resumed.history == full.history
    assert resumed.train_log == full.train_log
    for a, b in zip(full_task.model.parameters(), fresh.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_early_stopping_and_load_best(tmp_path):
    class Worsening(Regression):
        def evaluate(self):
            self.calls = getattr(self, "calls", 0) + 1
            return {"mse": float(self.calls)}  # never improves after the first evaluation

    task = Worsening()
    cfg = TrainConfig(max_epochs=50, batch_size=16, eval_every=1, patience=3, metric="mse", seed=0)
    trainer = Trainer(cfg, task, tmp_path / "ckpt", progress=False)
    result = trainer.train()
    assert result.stopped == "early stopping" and result.steps == 4 and result.best_step == 1
    first = {k: v.clone() for k, v in task.trainable_state().items()}
    assert trainer.load_best()
    after = task.trainable_state()
    assert any(not torch.equal(first[k], after[k]) for k in first), "the best (step 1) state was restored"


def test_checkpoint_of_another_config_or_identity_is_discarded_and_training_starts_afresh(tmp_path, caplog):
    Trainer(CFG, Regression(), tmp_path / "ckpt", progress=False).train()
    other = TrainConfig(**{**CFG.__dict__, "lr": 0.01})
    fresh_task, reused_task = Regression(), Regression()
    fresh = Trainer(other, fresh_task, tmp_path / "empty", progress=False).train()
    with caplog.at_level("WARNING", logger="delrec_lib.training"):
        reused = Trainer(other, reused_task, tmp_path / "ckpt", progress=False).train()
    assert "discarding the checkpoint" in caplog.text
    assert reused.history == fresh.history and reused.steps == fresh.steps
    assert reused_task.seen == fresh_task.seen, "every step trained again, none resumed"
    # the stage's identity (its settings and inputs) counts as much as the training config
    caplog.clear()
    with caplog.at_level("WARNING", logger="delrec_lib.training"):
        Trainer(other, Regression(), tmp_path / "ckpt", progress=False, identity={"data": "other"}).train()
    assert "discarding the checkpoint" in caplog.text


def test_bf16_autocast_trains(tmp_path):
    cfg = TrainConfig(max_epochs=3, batch_size=8, lr=0.05, metric="mse", bf16=True)
    result = Trainer(cfg, Regression(), None, progress=False).train()
    assert np.isfinite(result.best_metric)


def test_a_run_that_stopped_early_stays_stopped_when_resumed(tmp_path):
    class Worsening(Regression):
        def evaluate(self):
            self.calls = getattr(self, "calls", 0) + 1
            return {"mse": float(self.calls)}

    cfg = TrainConfig(max_epochs=50, batch_size=16, eval_every=1, patience=3, metric="mse", seed=0)
    first = Trainer(cfg, Worsening(), tmp_path / "ckpt", progress=False).train()
    task = Worsening()
    again = Trainer(cfg, task, tmp_path / "ckpt", progress=False).train()  # e.g. the process died while exporting
    assert again.stopped == "early stopping" and again.steps == first.steps == 4
    assert again.history == first.history and task.seen == [], "no further training after the early stop"


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 8])
@pytest.mark.parametrize("processes", [1, 2, 3, 4])
def test_process_shares_partition_every_batch_and_weigh_it_like_one_process(size, processes):
    batch = np.arange(100, 100 + size)
    shares = [share_of(batch, i, processes) for i in range(processes)]
    real = [set(mine.tolist()) for mine, weight in shares if weight > 0]
    assert set().union(*real) == set(batch.tolist()) and sum(len(r) for r in real) == size, "disjoint, whole batch"
    assert max(len(r) for r in real) - min(len(r) for r in real) <= 1, "balanced"
    # the mean over processes of (weight x mean loss of the share) is the mean over the batch
    losses = {int(i): float(i) ** 2 for i in batch}
    combined = np.mean([w * np.mean([losses[int(i)] for i in mine]) for mine, w in shares])
    assert combined == pytest.approx(np.mean(list(losses.values())))
    for mine, weight in shares:
        assert len(mine) >= 1, "every process runs a forward pass (it takes part in every collective)"
        assert weight > 0 or len(batch) < processes


def test_one_process_keeps_the_configured_seed_and_others_get_their_own():
    assert process_seed(7, 0) == 7
    assert len({process_seed(7, i) for i in range(8)}) == 8
    assert process_seed(7, 1) == process_seed(7, 1) != process_seed(8, 1)
