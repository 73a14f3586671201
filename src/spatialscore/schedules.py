"""Learning-rate schedules shared by the LightningModules of both halves (a pure function of the step)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

__all__ = ["warmup_schedule"]


def warmup_schedule(
    *,
    warmup_steps: int,
    schedule: Literal["constant", "cosine"] = "constant",
    total_steps: int = 0,
    min_lr_ratio: float = 0.1,
) -> Callable[[int], float]:
    """The LR multiplier of optimiser step ``step`` (for ``LambdaLR``): linear warm-up over ``warmup_steps``,
    then 1 ("constant") or a cosine decay to ``min_lr_ratio`` reached at ``total_steps`` ("cosine")."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
