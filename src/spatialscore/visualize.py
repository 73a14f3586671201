"""Pictures people would rather look at than read: scored preference pairs and generated samples as grids."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger
from PIL import Image, ImageDraw

GREEN, RED, WHITE, BLACK = (30, 160, 60), (200, 40, 40), (255, 255, 255), (0, 0, 0)


def pair_grid(
    *,
    chosen: Sequence[np.ndarray],
    rejected: Sequence[np.ndarray],
    chosen_scores: Sequence[float],
    rejected_scores: Sequence[float],
    prompts: Sequence[str],
    cell: int = 128,
) -> np.ndarray:
    """One row per pair under its prompt: chosen image, rejected image, each captioned with its score.

    A pair the model ranks correctly gets a green frame, a wrong or tied one a red frame. Returns an
    (H, W, 3) uint8 array (for :func:`log_picture`).
    """
    if not len(chosen) == len(rejected) == len(chosen_scores) == len(rejected_scores) == len(prompts):
        raise ValueError("chosen, rejected, their scores and prompts must have one entry per pair")
    line = 14
    rows = len(chosen)
    height = cell + 2 * line + 6
    canvas = Image.new("RGB", (2 * cell + 12, rows * height + 2), WHITE)
    draw = ImageDraw.Draw(canvas)
    for row in range(rows):
        top = row * height + 2
        correct = chosen_scores[row] > rejected_scores[row]
        colour = GREEN if correct else RED
        draw.rectangle([0, top - 2, 2 * cell + 11, top + height - 3], outline=colour, width=2)
        draw.text((4, top), prompts[row], fill=BLACK)
        for col, (image, score, label) in enumerate(
            ((chosen[row], chosen_scores[row], "chosen"), (rejected[row], rejected_scores[row], "rejected"))
        ):
            left = 4 + col * (cell + 4)
            tile = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (left, top + line))
            draw.text((left, top + line + cell + 1), f"{label} {score:+.2f}", fill=BLACK)
    return np.asarray(canvas)


def image_grid(
    *,
    images: Sequence[Any],
    captions: Sequence[str],
    columns: int,
    cell: int = 96,
    row_titles: Sequence[str] | None = None,
) -> np.ndarray:
    """Images (``(3, H, W)`` floats in [0, 1], or ``(H, W, 3)`` uint8) in rows of ``columns``, each captioned.

    Used for generated samples: one row per prompt's group, ``row_titles`` (one per row, e.g. the prompt) above
    each row and each sample's verdict or reward under it. Returns an (H, W, 3) uint8 array.
    """
    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    caption = 14
    rows = -(-len(images) // columns)
    if row_titles is not None and len(row_titles) != rows:
        raise ValueError(f"got {len(row_titles)} row titles for {rows} rows")
    title = caption if row_titles is not None else 0
    height = cell + caption + title + 4
    canvas = Image.new("RGB", (columns * (cell + 4) + 4, rows * height + 4), WHITE)
    draw = ImageDraw.Draw(canvas)
    for row, text in enumerate(row_titles or ()):
        draw.text((4, 4 + row * height), text, fill=BLACK)
    for index, (image, text) in enumerate(zip(images, captions, strict=True)):
        array = np.asarray(image.detach().cpu().float() if hasattr(image, "detach") else image)
        if array.dtype != np.uint8:
            array = (np.clip(np.moveaxis(array, 0, -1), 0, 1) * 255).round().astype(np.uint8)
        left = 4 + (index % columns) * (cell + 4)
        top = 4 + (index // columns) * height + title
        canvas.paste(Image.fromarray(array).resize((cell, cell), Image.NEAREST), (left, top))
        draw.text((left, top + cell + 1), text, fill=BLACK)
    return np.asarray(canvas)


def log_picture(loggers: Iterable[Any], tag: str, picture: np.ndarray, step: int) -> list[str]:
    """Send an (H, W, 3) uint8 picture to every logger that takes images; return the names of those that did.

    TensorBoard gets ``add_image``; loggers with a ``log_image(key=..., images=[...], step=...)`` method
    (Weights & Biases) get that; MLflow gets a PNG artefact ``TAG/step-N.png``; CSV loggers, which keep
    files, get ``images/TAG-step-N.png`` in their log folder (``/`` in the tag becomes ``_``).
    """
    sent = []
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, picture, step, dataformats="HWC")
        elif callable(getattr(logger, "log_image", None)):
            logger.log_image(key=tag, images=[picture], step=step)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_image(logger.run_id, picture, f"{tag}/step-{step}.png")
        elif isinstance(logger, CSVLogger):
            folder = Path(logger.log_dir) / "images"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(folder / f"{tag.replace('/', '_')}-step-{step}.png")
        else:
            continue
        sent.append(type(logger).__name__)
    return sent
