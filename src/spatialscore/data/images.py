"""Image loading shared by the data module, the input encoder, the benchmark and manifest validation.

Pillow's ``convert("RGB")`` clips 16-bit and 32-bit integer greyscale to 0..255, so a 16-bit PNG (mode ``I;16``)
comes out almost white. :func:`to_rgb` scales those modes to 8 bit instead and refuses what has no 8-bit meaning.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

__all__ = ["MAX_ASPECT_RATIO", "SIXTEEN_BIT_MODES", "aspect_ratio_problem", "open_rgb", "to_rgb"]

# Qwen2.5-VL's processor (transformers' ``smart_resize``) raises for max(h, w) / min(h, w) > 200.
MAX_ASPECT_RATIO = 200
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB.

    16-bit greyscale (modes ``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) is scaled 0..65535 -> 0..255 (rounded); so
    is 32-bit integer greyscale (mode ``I``, as some 16-bit files open) whose values lie in 0..65535. Mode ``I``
    with other values and floating-point images (mode ``F``) raise ``ValueError``: their range is unknown.
    Every other mode goes through Pillow's ``convert("RGB")``.
    """
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"32-bit integer image (mode I) with values {values.min()}..{values.max()}, outside 0..65535: "
                "save it as 8-bit RGB"
            )
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "F":
        raise ValueError("floating-point image (mode F) has no defined 0..255 range: save it as 8-bit RGB")
    return image.convert("RGB")


def open_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """The image file at ``path`` as 8-bit RGB (see :func:`to_rgb`); a refused image names the file.

    A file whose pixel data cannot be decoded (truncated or corrupt after a valid header) raises ``OSError``
    naming the file, as Pillow does for a file it cannot identify at all.
    """
    with Image.open(path) as image:
        try:
            image.load()
        except Exception as error:  # Pillow raises OSError, SyntaxError, zlib/struct errors on broken data
            raise OSError(f"{path}: cannot decode the image, the file is truncated or corrupt ({error})") from None
        try:
            return to_rgb(image)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


def aspect_ratio_problem(width: int, height: int) -> str | None:
    """Why Qwen2.5-VL's processor would refuse an image of this size (None if it would not)."""
    if min(width, height) < 1:
        return f"size {width}x{height}"
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        return (
            f"aspect ratio {ratio:g} ({width}x{height}) is over {MAX_ASPECT_RATIO}, which Qwen2.5-VL's "
            "processor refuses: crop or pad the image"
        )
    return None
