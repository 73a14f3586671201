"""GroupLayout: W simulated ranks sample exactly the global batch one process samples, and their reward blocks
join to (and split from) the global matrix, without a Trainer or processes."""

from __future__ import annotations

import pytest
import torch

from spatialrl.groups import GroupLayout


@pytest.mark.parametrize("across", [False, True])
@pytest.mark.parametrize(("world", "prompts_per_rank", "group_size"), [(1, 3, 4), (2, 3, 4), (4, 2, 8), (3, 1, 6)])
def test_ranks_cover_the_global_batch_once_and_join_to_the_global_matrix(
    across: bool, world: int, prompts_per_rank: int, group_size: int
) -> None:
    total = world * prompts_per_rank
    # the global reward of (position p, member c): unique, so any misplaced entry shows
    reward = torch.arange(total * group_size, dtype=torch.float32).reshape(total, group_size)
    # the sampler gives rank r the prompts at positions i * W + r
    own = [[f"prompt {i * world + r}" for i in range(prompts_per_rank)] for r in range(world)]
    seen, blocks = [], []
    for rank in range(world):
        layout = GroupLayout(group_size=group_size, world=world, rank=rank, across_ranks=across)
        if layout.split:
            prompts = layout.join(own)
            positions = list(range(len(prompts)))
        else:
            prompts, positions = own[rank], layout.own_positions(prompts_per_rank)
        assert prompts == [f"prompt {p}" for p in positions]
        columns = layout.columns()
        seen += [(p, c) for p in positions for c in columns]
        blocks.append(reward[positions][:, columns])  # what this rank's rollout scores
        torch.testing.assert_close(layout.to_local(reward), blocks[-1], rtol=0, atol=0)
    assert sorted(seen) == [(p, c) for p in range(total) for c in range(group_size)]
    for rank in range(world):
        layout = GroupLayout(group_size=group_size, world=world, rank=rank, across_ranks=across)
        torch.testing.assert_close(layout.to_global(torch.stack(blocks)), reward, rtol=0, atol=0)


def test_one_process_is_the_identity_layout() -> None:
    layout = GroupLayout(group_size=5, across_ranks=True)
    assert not layout.split and layout.columns() == list(range(5)) and layout.own_positions(3) == [0, 1, 2]
    matrix = torch.rand(3, 5)
    assert torch.equal(layout.to_global(matrix[None]), matrix) and torch.equal(layout.to_local(matrix), matrix)


def test_refuses_what_cannot_be_laid_out() -> None:
    with pytest.raises(ValueError, match=r"group_size \(6\) divisible by the world size \(4\)"):
        GroupLayout(group_size=6, world=4, rank=0, across_ranks=True)
    GroupLayout(group_size=6, world=4, rank=3)  # whole groups: any group size
    with pytest.raises(ValueError, match="rank must be in"):
        GroupLayout(group_size=4, world=2, rank=2)
    with pytest.raises(ValueError, match="gathered must be"):
        GroupLayout(group_size=4, world=2, rank=0).to_global(torch.zeros(3, 1, 4))
    with pytest.raises(ValueError, match="equally long"):
        GroupLayout(group_size=4, world=2, rank=0, across_ranks=True).join([["a"], ["b", "c"]])
