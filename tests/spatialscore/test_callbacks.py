"""TrainUntil: the reward model trains until its held-out accuracy exceeds a bar, from ``min_steps`` on."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from spatialscore.callbacks import TrainUntil


class ScriptedAccuracy(L.LightningModule):
    """Trains a linear layer; validation ``k`` logs ``val/accuracy = accuracies[k]``."""

    def __init__(self, accuracies: list[float]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.accuracies = accuracies
        self.validations: list[int] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val/accuracy", self.accuracies[len(self.validations)])

    def on_validation_epoch_end(self) -> None:
        self.validations.append(self.global_step)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(accuracies: list[float], callback: TrainUntil, *, max_steps: int = 10) -> ScriptedAccuracy:
    data = TensorDataset(torch.randn(64, 2))
    module = ScriptedAccuracy(accuracies)
    trainer = L.Trainer(
        max_steps=max_steps,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=1), DataLoader(data, batch_size=64))
    return module


def test_stops_at_the_first_validation_above_the_bar() -> None:
    module = _fit([0.5, 0.85, 0.86, 0.9, 0.95], TrainUntil(bar=0.85))
    assert module.validations == [2, 4, 6]  # 0.85 equals the bar: stock EarlyStopping's threshold is strict
    assert module.global_step == 6


def test_a_bar_reached_before_min_steps_does_not_stop_the_fit() -> None:
    """Stock EarlyStopping's early decision would stick and stop at min_steps (step 6) with accuracy 0.5."""
    module = _fit([0.9, 0.5, 0.5, 0.88, 0.95], TrainUntil(bar=0.85, min_steps=6))
    assert module.validations == [2, 4, 6, 8]
    assert module.global_step == 8


def test_a_bar_never_reached_trains_to_max_steps() -> None:
    module = _fit([0.5, 0.6, 0.7, 0.8, 0.84], TrainUntil(bar=0.85))
    assert module.validations == [2, 4, 6, 8, 10]


def test_a_missing_metric_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="val/missing"):
        _fit([0.9] * 5, TrainUntil(bar=0.85, monitor="val/missing"))
