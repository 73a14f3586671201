"""Fitting a FluxGRPOModule for a few steps on procedural prompts (shared by the GRPO module tests)."""

from __future__ import annotations

import lightning as L

from spatialrl.module import FluxGRPOModule
from spatialscore.data.datamodule import PreferenceDataModule, SyntheticData


def fit(module: FluxGRPOModule, data: SyntheticData, *, steps: int = 1) -> dict[str, float]:
    """``steps`` GRPO steps on ``data``'s prompts (2 per batch, no validation); the logged metrics."""
    dm = PreferenceDataModule(synthetic=data, batch_size=2, view="prompts")
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, dm)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}
