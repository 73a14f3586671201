"""Lightning callbacks of the reward-model half."""

from __future__ import annotations

from pathlib import Path

import lightning as L


class ExportSpatialScore(L.Callback):
    """At the end of ``fit``, write the trained model with ``save_pretrained`` (loadable without Lightning).

    Args:
        directory: folder the trained model is written to (read back by ``SpatialScore.from_pretrained``,
            ``spatialscore score`` and ``SpatialScoreReward``).
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = pl_module.model.trainable_state_dict()
        if trainer.is_global_zero:
            pl_module.model.save_pretrained(self.directory, state=state)
        trainer.strategy.barrier("export_spatialscore")
