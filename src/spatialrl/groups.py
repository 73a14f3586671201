"""Where the samples of a GRPO batch live across processes: which prompts and group members a rank samples, and
how its rewards join the global ``(prompts, group_size)`` matrix that group filtering and advantages need.

Rank ``r`` of ``W`` holds the prompts at global positions ``i * W + r`` (the order of Lightning's distributed
sampler), so W processes see the positions one process with W times the batch sees. Two layouts:

- whole groups (default): a rank samples all G members of its own prompts; the global matrix stacks the ranks'
  rows back in position order;
- groups across ranks: every rank samples G/W members of *every* prompt of the global batch (the prompts are
  gathered first); the global matrix joins the ranks' columns.

A pure object around slicing and stacking: the communication (``all_gather``) stays with the caller, so the layout
is tested without processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["GroupLayout"]

T = TypeVar("T")


@dataclass(frozen=True)
class GroupLayout:
    """One rank's share of the GRPO batch.

    Args:
        group_size: G, the samples per prompt.
        world: the number of processes.
        rank: this process, in ``[0, world)``.
        across_ranks: every rank samples G/W members of every prompt (needs G divisible by W) instead of whole
            groups of its own prompts.
    """

    group_size: int
    world: int = 1
    rank: int = 0
    across_ranks: bool = False

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in [0, world), got rank {self.rank} of world {self.world}")
        if self.split and self.group_size % self.world:
            raise ValueError(
                f"groups_across_ranks needs group_size ({self.group_size}) divisible by the world size ({self.world})"
            )

    @property
    def split(self) -> bool:
        """Whether groups are split over the ranks (across ranks, more than one process)."""
        return self.across_ranks and self.world > 1

    def columns(self) -> list[int]:
        """The group members this rank samples for each of its prompts."""
        if not self.split:
            return list(range(self.group_size))
        per = self.group_size // self.world
        return list(range(self.rank * per, (self.rank + 1) * per))

    def own_positions(self, count: int) -> list[int]:
        """The global positions of this rank's ``count`` own prompts."""
        return [i * self.world + self.rank for i in range(count)]

    def join(self, per_rank: Sequence[Sequence[T]]) -> list[T]:
        """Every rank's own items (``per_rank[r]``, as many per rank) in global-position order."""
        if len(per_rank) != self.world or len({len(items) for items in per_rank}) > 1:
            raise ValueError(f"need {self.world} equally long lists, got lengths {[len(i) for i in per_rank]}")
        return [per_rank[r][i] for i in range(len(per_rank[0])) for r in range(self.world)]

    def to_global(self, gathered: Tensor) -> Tensor:
        """``(W, P_local, G_local)`` local reward matrices, gathered in rank order -> the global ``(P, G)`` matrix,
        rows in global-position order."""
        if gathered.ndim != 3 or gathered.shape[0] != self.world:
            raise ValueError(f"gathered must be (world={self.world}, P_local, G_local), got {tuple(gathered.shape)}")
        if self.split:
            return torch.cat(list(gathered), dim=1)
        return gathered.transpose(0, 1).reshape(-1, gathered.shape[2])

    def to_local(self, matrix: Tensor) -> Tensor:
        """Inverse of :meth:`to_global`: this rank's ``(P_local, G_local)`` block of a global ``(P, G)`` matrix."""
        if self.split:
            per = matrix.shape[1] // self.world
            return matrix[:, self.rank * per : (self.rank + 1) * per]
        return matrix[self.rank :: self.world]
