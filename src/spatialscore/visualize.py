"""Pictures people would rather look at than read: scored preference pairs and generated samples as grids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

GREEN, RED, WHITE, BLACK = (30, 160, 60), (200, 40, 40), (255, 255, 255), (0, 0, 0)


def pair_grid(
    *,
    chosen: Sequence[np.ndarray],
    rejected: Sequence[np.ndarray],
    chosen_scores: Sequence[float],
    rejected_scores: Sequence[float],
    cell: int = 128,
) -> np.ndarray:
    """One row per pair: chosen image, rejected image, each captioned with its score.

    A pair the model ranks correctly gets a green frame, a wrong or tied one a red frame. Returns an
    (H, W, 3) uint8 array (TensorBoard's ``add_image(..., dataformats="HWC")``).
    """
    caption = 14
    rows = len(chosen)
    canvas = Image.new("RGB", (2 * cell + 12, rows * (cell + caption + 6) + 2), WHITE)
    draw = ImageDraw.Draw(canvas)
    for row in range(rows):
        top = row * (cell + caption + 6) + 2
        correct = chosen_scores[row] > rejected_scores[row]
        colour = GREEN if correct else RED
        draw.rectangle([0, top - 2, 2 * cell + 11, top + cell + caption + 3], outline=colour, width=2)
        for col, (image, score, label) in enumerate(
            ((chosen[row], chosen_scores[row], "chosen"), (rejected[row], rejected_scores[row], "rejected"))
        ):
            left = 4 + col * (cell + 4)
            tile = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (left, top))
            draw.text((left, top + cell + 1), f"{label} {score:+.2f}", fill=BLACK)
    return np.asarray(canvas)


def image_grid(*, images: Sequence[Any], captions: Sequence[str], columns: int, cell: int = 96) -> np.ndarray:
    """Images (``(3, H, W)`` floats in [0, 1], or ``(H, W, 3)`` uint8) in rows of ``columns``, each captioned.

    Used for generated samples: one row per prompt's group, the caption holding each sample's reward. Returns
    an (H, W, 3) uint8 array for TensorBoard's ``add_image(..., dataformats="HWC")``.
    """
    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    caption = 14
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (columns * (cell + 4) + 4, rows * (cell + caption + 4) + 4), WHITE)
    draw = ImageDraw.Draw(canvas)
    for index, (image, text) in enumerate(zip(images, captions, strict=True)):
        array = np.asarray(image.detach().cpu().float() if hasattr(image, "detach") else image)
        if array.dtype != np.uint8:
            array = (np.clip(np.moveaxis(array, 0, -1), 0, 1) * 255).round().astype(np.uint8)
        left = 4 + (index % columns) * (cell + 4)
        top = 4 + (index // columns) * (cell + caption + 4)
        canvas.paste(Image.fromarray(array).resize((cell, cell), Image.NEAREST), (left, top))
        draw.text((left, top + cell + 1), text, fill=BLACK)
    return np.asarray(canvas)
