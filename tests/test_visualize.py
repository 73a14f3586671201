"""The scored pair grid: one row per pair, green frame when ranked right, red otherwise."""

from __future__ import annotations

import numpy as np

from spatialscore.visualize import GREEN, RED, pair_grid


def test_pair_grid_layout_and_frames():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    grid = pair_grid(chosen=images[:2], rejected=images[2:], chosen_scores=[1.0, -2.0], rejected_scores=[0.5, 3.0], cell=32)
    assert grid.dtype == np.uint8 and grid.shape == (2 * (32 + 14 + 6) + 2, 2 * 32 + 12, 3)
    assert tuple(grid[1, 30]) == GREEN
    assert tuple(grid[32 + 14 + 6 + 1, 30]) == RED
