"""A smooth toy reward for RL tests: random tiny decoders give the rule reward 0 everywhere (no signal)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from spatialrl.rewards import Reward


class LeftRed(Reward):
    """Mean red of the left half minus the right half: every image gets a different, finite reward."""

    def __init__(self, *, name: str = "left_red") -> None:
        self.name = name

    def __call__(
        self, *, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> Tensor:
        half = images.shape[-1] // 2
        return images[:, 0, :, :half].mean((1, 2)) - images[:, 0, :, half:].mean((1, 2))
