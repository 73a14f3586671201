"""Reward hacking in view: `diverged` on validation histories, and RewardDivergence in a real Trainer."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from spatialrl.callbacks import RewardDivergence, diverged


@pytest.mark.parametrize(
    ("rewards", "judge", "expected"),
    [
        ([0.1, 0.2, 0.3, 0.4], [0.2, 0.4, 0.5, 0.6], False),  # both rise: learning
        ([0.1, 0.2, 0.3, 0.4], [0.2, 0.4, 0.3, 0.2], True),  # reward rises, judge falls twice past tolerance
        ([0.1, 0.2, 0.3, 0.4], [0.2, 0.4, 0.3, 0.5], False),  # one dip, then a new best: streak broken
        ([0.4, 0.3, 0.2, 0.1], [0.6, 0.4, 0.3, 0.2], False),  # both fall: a failing run, not a hacked one
        ([0.1, 0.2, 0.3, 0.4], [0.40, 0.38, 0.37, 0.36], False),  # within the 0.05 tolerance
        ([0.1, 0.2, 0.3], [0.4, 0.3, 0.2], True),  # best at the first validation
        ([], [], False),
    ],
)
def test_diverged(rewards, judge, expected):
    assert diverged(rewards=rewards, judge=judge, tolerance=0.05, patience=2) is expected


def test_diverged_patience_and_arguments():
    rewards, judge = [0.1, 0.2, 0.3], [0.5, 0.3, 0.2]
    assert diverged(rewards=rewards, judge=judge, tolerance=0.05, patience=2)
    assert not diverged(rewards=rewards, judge=judge, tolerance=0.05, patience=3)
    with pytest.raises(ValueError, match="2 rewards but 3"):
        diverged(rewards=[0.1, 0.2], judge=judge, tolerance=0.05, patience=2)
    with pytest.raises(ValueError, match="patience"):
        RewardDivergence(patience=0)


class Scripted(L.LightningModule):
    """A one-parameter module whose validation logs scripted values of a training reward and of a judge."""

    def __init__(self, rewards: list[float], judge: list[float]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.rewards, self.judge, self.validations = rewards, judge, 0

    def training_step(self, batch, batch_idx):
        return (self.weight - batch.sum()) ** 2

    def validation_step(self, batch, batch_idx):
        self.log_dict(
            {"val/reward": self.rewards[self.validations], "val/strict_correct": self.judge[self.validations]}
        )

    def on_validation_epoch_end(self):
        self.validations += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def run(callback: RewardDivergence, tmp_path, start=None) -> tuple[L.Trainer, list[dict[str, str]]]:
    import csv

    module = Scripted([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.3, 0.5, 0.4, 0.3, 0.2, 0.1])
    module.start_metrics = start or {}
    data = torch.utils.data.DataLoader(torch.ones(64, 1), batch_size=4)
    trainer = L.Trainer(
        max_steps=12,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        accelerator="cpu",
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=CSVLogger(tmp_path, name="csv", version=0),
    )
    trainer.fit(module, train_dataloaders=data, val_dataloaders=data)
    rows = list(csv.DictReader((tmp_path / "csv" / "version_0" / "metrics.csv").open()))
    return trainer, rows


def test_callback_logs_divergence_and_stops_only_when_asked(tmp_path):
    trainer, rows = run(RewardDivergence(), tmp_path / "watch")
    flags = [float(r["val/diverged"]) for r in rows if r.get("val/diverged")]
    assert flags == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0] and trainer.global_step == 12  # watched, not stopped
    with pytest.warns(
        UserWarning, match=r"val/reward rose 0.200 -> 0.400 while val/strict_correct fell 0.500 -> 0.300"
    ):
        trainer, rows = run(RewardDivergence(stop=True), tmp_path / "stop")
    assert trainer.global_step == 8  # stopped at the 4th validation, the second past tolerance
    assert [float(r["val/diverged"]) for r in rows if r.get("val/diverged")] == [0.0, 0.0, 0.0, 1.0]


def test_callback_names_a_missing_metric(tmp_path):
    with pytest.raises(KeyError, match="validation logged no val/judge"):
        run(RewardDivergence(judge="val/judge"), tmp_path)


def test_the_initial_policys_evaluation_is_the_first_point(tmp_path):
    # FluxGRPOModule evaluates the initial policy before training and keeps the values in start_metrics: a judge
    # that falls from there (0.9 -> 0.3 at the first validation) is a divergence the validations alone would miss.
    start = {"val/reward": 0.0, "val/strict_correct": 0.9}
    callback = RewardDivergence()
    _, rows = run(callback, tmp_path, start=start)
    assert [float(r["val/diverged"]) for r in rows if r.get("val/diverged")] == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert callback.scores[:2] == pytest.approx([0.9, 0.3]) and callback.rewards[:2] == pytest.approx([0.0, 0.1])
