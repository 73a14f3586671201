"""A callback for tests that simulates a crash at a given step (after that step's optimizer update)."""

from __future__ import annotations

import lightning as L


class CrashAtStep(L.Callback):
    """Raise SystemExit once ``trainer.global_step`` reaches ``step``, like a killed job."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise SystemExit(17)
