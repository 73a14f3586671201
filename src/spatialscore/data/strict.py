"""The strict judge: an image is right only when it shows exactly the objects its prompt names, each once,
nothing else, with every stated relation holding.

The lenient :class:`~spatialscore.data.synthetic.RuleChecker` judges each named colour by the centroid of all
its pixels, so duplicated objects, stray blobs and objects of other colours are invisible to it, and a policy
trained against it learned to scatter blobs (README, "What the embedded defaults learn"). This judge counts
objects instead: every pixel is labelled with its nearest palette colour (or "unmatched" when it is near no
palette colour and not background), each label's mask is cleaned by the same 3x3 majority vote as the lenient
checker, and its 8-connected components of at least ``min_pixels`` pixels are the objects. Then, for a prompt of
the procedural grammar (:func:`~spatialscore.data.synthetic.parse_prompt`):

- a named colour with no component is **missing**; one with several components is **duplicated**;
- every component of a named colour beyond its largest (which counts as the named object), of an unnamed palette
  colour, or of unmatched pixels (a blob of a colour outside the palette) is an **extra** object;
- an object whose bounding box is at least ``shape_min_side`` pixels on both sides has its shape read by
  comparing it with each shape drawn in the same box (best intersection over union); an object of another
  shape than the prompt names is a **wrong shape**. Smaller objects, and objects whose box overlaps another's
  (partly hidden), are not judged for shape: at a few pixels, or half covered, shapes cannot be told apart;
- the relations are tested on the single component of each named colour with the lenient checker's geometry
  (:data:`~spatialscore.data.synthetic.MARGIN`); a relation with a missing or duplicated object fails.

Touching objects of different colours stay apart (one component per colour); two touching objects of one colour
merge into one component, so they count once (and usually fail the shape or a relation).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from spatialscore.data.synthetic import (
    PALETTE,
    SHAPES,
    UNMATCHED,
    Detection,
    colour_labels,
    draw_shape,
    image_list,
    majority_vote,
)
from spatialscore.data.synthetic.checker import _as_rgb, _default_min_pixels, _parse_cached, _slack
from spatialscore.data.synthetic.scene import _DEFAULT_TOLERANCE

__all__ = ["FoundObject", "Judgement", "StrictChecker", "classify_shape", "find_objects", "judge"]

_COLOURS = tuple(PALETTE)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class FoundObject:
    """One connected blob: its colour (a palette name, or ``"unmatched"``), geometry and shape (None when too
    small to tell)."""

    colour: str
    detection: Detection
    shape: str | None


@dataclass(frozen=True)
class Judgement:
    """The strict verdict on one image against one prompt (see the module docstring for each field)."""

    correct: bool
    relations: float
    missing: tuple[str, ...]
    duplicated: tuple[str, ...]
    extras: tuple[FoundObject, ...]
    wrong_shape: tuple[str, ...]
    objects: tuple[FoundObject, ...]

    @property
    def extra(self) -> int:
        """How many extra objects the image shows (``extras``: which ones)."""
        return len(self.extras)

    @property
    def has_extra(self) -> bool:
        """True when the image shows anything beyond one object of each named colour."""
        return self.extra > 0

    @property
    def clean(self) -> bool:
        """Exactly the named objects, each once, nothing else, no wrong shape (the relations may still fail)."""
        return not (self.missing or self.duplicated or self.extra or self.wrong_shape)

    @property
    def has_missing(self) -> bool:
        """True when a named object is not found at all."""
        return bool(self.missing)


@functools.lru_cache(maxsize=1024)
def _templates(height: int, width: int) -> tuple[tuple[str, np.ndarray], ...]:
    """Each shape drawn as :func:`~spatialscore.data.synthetic.render_scene` draws it, filling an (h, w) box,
    then cleaned by the same majority vote as an object's mask (which rounds small corners)."""
    out = []
    for shape in SHAPES:
        canvas = Image.new("1", (width + 2, height + 2), 0)  # drawn one pixel larger: the vote erodes one
        draw_shape(ImageDraw.Draw(canvas), shape, (0, 0, width + 1, height + 1), 1)
        out.append((shape, majority_vote(np.asarray(canvas, dtype=bool)[None])[0, 1:-1, 1:-1]))
    return tuple(out)


def classify_shape(mask: np.ndarray) -> str:
    """The shape (one of ``SHAPES``) whose drawing in the same bounding box overlaps the (h, w) boolean
    ``mask`` best (intersection over union)."""
    scores = {
        shape: (mask & template).sum() / max((mask | template).sum(), 1) for shape, template in _templates(*mask.shape)
    }
    return max(scores, key=scores.get)


def find_objects(
    image: Any,
    *,
    tolerance: float = _DEFAULT_TOLERANCE,
    min_pixels: int | None = None,
    shape_min_side: int = 16,
) -> list[FoundObject]:
    """Every object in ``image``: 8-connected components of each palette colour and of unmatched pixels.

    ``min_pixels`` (default 0.2% of the image, at least 4, as the lenient checker) drops specks. Accepts what
    :func:`~spatialscore.data.synthetic.detect_objects` accepts.
    """
    rgb = _as_rgb(image)
    height, width = rgb.shape[:2]
    if min_pixels is None:
        min_pixels = _default_min_pixels(height, width)
    labels = colour_labels(rgb, tolerance)
    indices = (*range(len(_COLOURS)), UNMATCHED)
    masks = majority_vote(labels[None] == np.array(indices)[:, None, None])
    found = []
    for index, mask in zip(indices, masks, strict=True):
        components, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        for label, box in enumerate(ndimage.find_objects(components), start=1):
            crop = components[box] == label
            pixels = int(crop.sum())
            if pixels < min_pixels:
                continue
            ys, xs = np.nonzero(crop)
            y0, x0 = box[0].start, box[1].start
            side = min(crop.shape)
            found.append(
                FoundObject(
                    colour="unmatched" if index == UNMATCHED else _COLOURS[index],
                    detection=Detection(
                        box=(x0 / width, y0 / height, box[1].stop / width, box[0].stop / height),
                        centroid=((x0 + xs.mean() + 0.5) / width, (y0 + ys.mean() + 0.5) / height),
                        area=pixels / (height * width),
                    ),
                    shape=classify_shape(crop) if side >= shape_min_side else None,
                )
            )
    return [_unless_occluded(obj, found) for obj in found]


def _unless_occluded(obj: FoundObject, found: Sequence[FoundObject]) -> FoundObject:
    """``obj`` without a shape when its box overlaps another object's: a partly hidden shape cannot be read."""
    x0, y0, x1, y1 = obj.detection.box
    for other in found:
        a0, b0, a1, b1 = other.detection.box
        if other is not obj and min(x1, a1) > max(x0, a0) and min(y1, b1) > max(y0, b0):
            return dataclasses.replace(obj, shape=None)
    return obj


def judge(
    image: Any,
    prompt: str,
    *,
    tolerance: float = _DEFAULT_TOLERANCE,
    min_pixels: int | None = None,
    shape_min_side: int = 16,
) -> Judgement:
    """The strict :class:`Judgement` of ``image`` against a prompt of the procedural grammar."""
    relations = _parse_cached(prompt)
    named = {colour: shape for relation in relations for colour, shape in relation.objects}
    objects = find_objects(image, tolerance=tolerance, min_pixels=min_pixels, shape_min_side=shape_min_side)
    by_colour: dict[str, list[FoundObject]] = {}
    for obj in objects:
        by_colour.setdefault(obj.colour, []).append(obj)
    missing = tuple(c for c in named if c not in by_colour)
    duplicated = tuple(c for c in named if len(by_colour.get(c, ())) > 1)
    extras = tuple(
        obj
        for colour, found in by_colour.items()
        for obj in (sorted(found, key=lambda o: -o.detection.area)[1:] if colour in named else found)
    )
    single = {c: by_colour[c][0] for c in named if len(by_colour.get(c, ())) == 1}
    wrong_shape = tuple(c for c, obj in single.items() if obj.shape is not None and obj.shape != named[c])
    geometry = {c: obj.detection for c, obj in single.items()}
    held = sum(_slack(relation, geometry) > 0 for relation in relations) / len(relations)
    return Judgement(
        correct=held == 1.0 and not (missing or duplicated or extras or wrong_shape),  # clean, relations held
        relations=held,
        missing=missing,
        duplicated=duplicated,
        extras=extras,
        wrong_shape=wrong_shape,
        objects=tuple(objects),
    )


class StrictChecker:
    """Batched strict judge: ``StrictChecker()(images=..., prompts=...) -> list[Judgement]``.

    ``images`` as for :class:`~spatialscore.data.synthetic.RuleChecker` (PIL images, arrays, a (B,3,H,W) array
    in [0, 1] or a torch tensor); options as :func:`judge`.
    """

    def __init__(
        self, *, tolerance: float = _DEFAULT_TOLERANCE, min_pixels: int | None = None, shape_min_side: int = 16
    ) -> None:
        self.tolerance = tolerance
        self.min_pixels = min_pixels
        self.shape_min_side = shape_min_side

    def __call__(self, *, images: Any, prompts: Sequence[str]) -> list[Judgement]:
        options = {"tolerance": self.tolerance, "min_pixels": self.min_pixels, "shape_min_side": self.shape_min_side}
        return [
            judge(image, prompt, **options) for image, prompt in zip(image_list(images, prompts), prompts, strict=True)
        ]
