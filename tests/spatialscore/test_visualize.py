"""Pictures: the scored pair grid (prompt above each pair, green frame when ranked right, red otherwise), the
sample grid with prompt rows, and sending a picture to every logger that takes images."""

from __future__ import annotations

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from PIL import Image

from spatialscore.visualize import GREEN, RED, WHITE, image_grid, log_picture, pair_grid


def _has_text(band: np.ndarray) -> bool:
    """Dark (antialiased black) pixels in a band of the white canvas."""
    return bool((band.astype(int).sum(-1) < 200).any())


def test_pair_grid_layout_frames_and_prompts():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    grid = pair_grid(
        chosen=images[:2],
        rejected=images[2:],
        chosen_scores=[1.0, -2.0],
        rejected_scores=[0.5, 3.0],
        prompts=["a red circle to the left of a blue square", "x"],
        cell=32,
    )
    row = 32 + 2 * 14 + 6
    assert grid.dtype == np.uint8 and grid.shape == (2 * row + 2, 2 * 32 + 12, 3)
    assert tuple(grid[1, 30]) == GREEN
    assert tuple(grid[row + 1, 30]) == RED
    assert _has_text(grid[2:14, 4:60]), "the prompt is written above the first pair"
    with pytest.raises(ValueError, match="one entry per pair"):
        pair_grid(chosen=images[:2], rejected=images[2:], chosen_scores=[1, 2], rejected_scores=[1, 2], prompts=["x"])


def test_image_grid_writes_a_title_above_each_row():
    images = [np.full((8, 8, 3), 128, np.uint8)] * 4
    plain = image_grid(images=images, captions=[""] * 4, columns=2, cell=16)
    titled = image_grid(images=images, captions=[""] * 4, columns=2, cell=16, row_titles=["first", "second"])
    assert titled.shape[0] == plain.shape[0] + 2 * 14
    assert _has_text(titled[4:16]) and not _has_text(plain[4:16])
    assert (titled[4 + 14 : 4 + 14 + 16, 4:20] == 128).all(), "the first image sits under its title"
    with pytest.raises(ValueError, match="1 row titles for 2 rows"):
        image_grid(images=images, captions=[""] * 4, columns=2, row_titles=["one"])


class _ImageLogger(Logger):
    """A Lightning logger with a W&B-style ``log_image`` (the duck-typed path), recording what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, int, tuple[int, ...]]] = []

    @property
    def name(self) -> str:
        return "images"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_image(self, *, key: str, images: list, step: int) -> None:
        self.images.append((key, step, images[0].shape))


def test_log_picture_reaches_every_logger_that_takes_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    picture = np.zeros((10, 20, 3), np.uint8)
    picture[:, :10] = WHITE
    tensorboard, csv, other = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv"), _ImageLogger()
    sent = log_picture([tensorboard, csv, other], "val/samples", picture, 7)
    assert sent == ["TensorBoardLogger", "CSVLogger", "_ImageLogger"]
    tensorboard.experiment.flush()
    events = EventAccumulator(tensorboard.log_dir).Reload()
    assert [e.step for e in events.Images("val/samples")] == [7]
    saved = np.asarray(Image.open(tmp_path / "csv" / "version_0" / "images" / "val_samples-step-7.png"))
    assert (saved == picture).all()
    assert other.images == [("val/samples", 7, (10, 20, 3))]
