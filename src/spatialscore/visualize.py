"""Pictures people would rather look at than read: scored preference pairs as an image grid."""

from __future__ import annotations

from collections.abc import Sequence

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
