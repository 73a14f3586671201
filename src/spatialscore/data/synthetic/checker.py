"""The lenient rule checker: objects by colour, relations tested geometrically on centroids (RuleChecker)."""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from spatialscore.data.images import to_rgb
from spatialscore.data.synthetic.scene import (
    _DEFAULT_TOLERANCE,
    _PAIR_PHRASES,
    _THIRD,
    BACKGROUND,
    CORNERS,
    EDGES,
    MARGIN,
    PALETTE,
    SHAPES,
    Detection,
    Relation,
)

# ----------------------------------------------------------------------------------------------------------
# Rule-based checker
# ----------------------------------------------------------------------------------------------------------

_COLOUR_NAMES = tuple(PALETTE)
_REFERENCE = np.array([*PALETTE.values(), BACKGROUND], dtype=np.float32)
_REFERENCE_SQ = (_REFERENCE**2).sum(1)
_OBJ = rf"an? ({'|'.join(PALETTE)}) ({'|'.join(SHAPES)})"
_PAIR_RE = re.compile(rf"{_OBJ} ({'|'.join(_PAIR_PHRASES.values())}) {_OBJ}")
_CORNER_RE = re.compile(rf"{_OBJ} in the ({'|'.join(CORNERS)}) corner")
_EDGE_RE = re.compile(rf"{_OBJ} at the ({'|'.join(EDGES)}) edge")
_OBJ_RE = re.compile(_OBJ)
_ROW_PREFIX = "from left to right: "
_PREDICATE_OF_PHRASE = {phrase: predicate for predicate, phrase in _PAIR_PHRASES.items()}


def _as_rgb(image: Any) -> np.ndarray:
    """(H, W, 3) float32 array in [0, 255] from a PIL image, a (3,H,W)/(H,W,3) array or a torch tensor."""
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image), dtype=np.float32)
    if hasattr(image, "detach"):
        image = image.detach().cpu()
        image = image.float().numpy() if hasattr(image, "float") else image.numpy()
    array = np.asarray(image)
    if array.ndim != 3 or 3 not in (array.shape[0], array.shape[-1]):
        raise ValueError(f"expected an image of shape (3, H, W) or (H, W, 3), got {array.shape}")
    if array.shape[-1] != 3:
        array = np.moveaxis(array, 0, -1)
    if array.dtype == np.uint8:
        return array.astype(np.float32)
    return np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0) * 255.0  # NaN counts as black


def _default_min_pixels(height: int, width: int) -> int:
    return max(4, round(0.002 * height * width))


UNMATCHED = -1  # colour_labels() value of a pixel near no palette colour and not near the background


def colour_labels(rgb: np.ndarray, tolerance: float) -> np.ndarray:
    """(H, W) int array: the index into ``PALETTE`` of each pixel's nearest colour, ``len(PALETTE)`` for the
    background, or ``UNMATCHED`` when the nearest reference colour is farther than ``tolerance`` (RGB distance)."""
    # Squared distance to every reference colour, expanded as |x|^2 - 2 x.r + |r|^2 (one small matmul).
    flat = rgb.reshape(-1, 3)
    partial = _REFERENCE_SQ - 2.0 * (flat @ _REFERENCE.T)
    nearest = partial.argmin(1)
    best = np.take_along_axis(partial, nearest[:, None], 1)[:, 0] + np.einsum("ij,ij->i", flat, flat)
    nearest[best > tolerance**2] = UNMATCHED
    return nearest.reshape(rgb.shape[:2])


def majority_vote(masks: np.ndarray) -> np.ndarray:
    """3x3 majority vote of (N, H, W) boolean masks (separable box sum): drops speckle and one-pixel seams,
    fills isolated holes."""
    n, height, width = masks.shape
    padded = np.zeros((n, height + 2, width + 2), np.uint8)
    padded[:, 1:-1, 1:-1] = masks
    rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    return rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:] >= 5


def _detect_rgb(
    rgb: np.ndarray, colours: Sequence[str], tolerance: float, min_pixels: int | None
) -> dict[str, Detection]:
    height, width = rgb.shape[:2]
    if min_pixels is None:
        min_pixels = _default_min_pixels(height, width)
    wanted = list(dict.fromkeys(colours))
    unknown = [c for c in wanted if c not in PALETTE]
    if unknown:
        raise ValueError(f"unknown colour(s) {unknown}; known: {list(PALETTE)}")
    if not wanted:
        return {}
    indices = np.array([_COLOUR_NAMES.index(c) for c in wanted])
    core = majority_vote(colour_labels(rgb, tolerance)[None] == indices[:, None, None])
    found = {}
    for colour, mask in zip(wanted, core, strict=True):
        ys, xs = np.nonzero(mask)
        if len(xs) < min_pixels:
            continue
        found[colour] = Detection(
            box=(xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height),
            centroid=((xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height),
            area=len(xs) / (height * width),
        )
    return found


def detect_objects(
    image: Any,
    colours: Iterable[str],
    *,
    tolerance: float = _DEFAULT_TOLERANCE,
    min_pixels: int | None = None,
) -> dict[str, Detection]:
    """Find each palette colour in ``image``; colours with too few pixels are absent from the result.

    A pixel belongs to the nearest palette/background colour when it lies within ``tolerance`` (RGB distance,
    0-255 scale), then a 3x3 majority vote removes noise and blend seams. ``min_pixels`` defaults to 0.2% of
    the image (at least 4). Works on PIL images, (3,H,W) float arrays in [0, 1] and torch tensors.
    """
    return _detect_rgb(_as_rgb(image), list(colours), tolerance, min_pixels)


def _parse_object(text: str, clause: str) -> tuple[str, str]:
    match = _OBJ_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"cannot parse object {text!r} in clause {clause!r}")
    return (match.group(1), match.group(2))


def _parse_clause(clause: str) -> Relation:
    if clause.startswith(_ROW_PREFIX):
        head, sep, last = clause[len(_ROW_PREFIX) :].rpartition(" and ")
        items = head.split(", ") + [last] if sep else []
        if len(items) < 3:
            raise ValueError(f"a row needs 3 or more objects ('x, y and z'): {clause!r}")
        return Relation("row", tuple(_parse_object(item, clause) for item in items))
    if match := _PAIR_RE.fullmatch(clause):
        c1, s1, phrase, c2, s2 = match.groups()
        return Relation(_PREDICATE_OF_PHRASE[phrase], ((c1, s1), (c2, s2)))
    if match := _CORNER_RE.fullmatch(clause):
        return Relation("corner", ((match.group(1), match.group(2)),), match.group(3))
    if match := _EDGE_RE.fullmatch(clause):
        return Relation("edge", ((match.group(1), match.group(2)),), match.group(3))
    raise ValueError(
        f"cannot parse clause {clause!r}; expected 'OBJ to the left of|to the right of|above|below|in front of|"
        "behind OBJ', 'OBJ in the upper-left|upper-right|lower-left|lower-right corner', "
        "'OBJ at the top|bottom|left|right edge' or 'from left to right: OBJ, OBJ and OBJ', "
        f"with OBJ = 'a|an <{'|'.join(PALETTE)}> <{'|'.join(SHAPES)}>'"
    )


@functools.lru_cache(maxsize=4096)
def _parse_cached(prompt: str) -> tuple[Relation, ...]:
    if not prompt.strip():
        raise ValueError("empty prompt: nothing to check")
    relations = tuple(_parse_clause(c.strip()) for c in prompt.strip().split("; "))
    shapes: dict[str, str] = {}
    for relation in relations:
        colours = [c for c, _ in relation.objects]
        if len(set(colours)) != len(colours):
            raise ValueError(f"an object is related to itself in {relation.text!r}")
        for colour, shape in relation.objects:
            if shapes.setdefault(colour, shape) != shape:
                raise ValueError(f"colour {colour!r} names both a {shapes[colour]} and a {shape} in {prompt!r}")
    return relations


def parse_prompt(prompt: str) -> list[Relation]:
    """Parse a prompt of the synthetic grammar (see the module docstring); ValueError if it does not fit."""
    return list(_parse_cached(prompt))


def _front_slack(front: Detection, back: Detection) -> float:
    overlap_x = min(front.box[2], back.box[2]) - max(front.box[0], back.box[0])
    overlap_y = min(front.box[3], back.box[3]) - max(front.box[1], back.box[1])
    return min(overlap_x, overlap_y, front.box[3] - back.box[3] - MARGIN)


def _anchor_slack(anchor: str, cx: float, cy: float) -> float:
    sides = {
        "top": _THIRD - cy,
        "bottom": cy - 2 * _THIRD,
        "left": _THIRD - cx,
        "right": cx - 2 * _THIRD,
        "upper": _THIRD - cy,
        "lower": cy - 2 * _THIRD,
    }
    return min(sides[part] for part in anchor.split("-"))


def _slack(relation: Relation, found: Mapping[str, Detection]) -> float:
    """How far the relation holds (> 0) or fails (<= 0); -inf when an object is missing."""
    dets = [found.get(colour) for colour, _ in relation.objects]
    if any(d is None for d in dets):
        return -math.inf
    p = relation.predicate
    if p in ("corner", "edge"):
        return _anchor_slack(relation.anchor, *dets[0].centroid)
    if p == "row":
        return min(b.centroid[0] - a.centroid[0] for a, b in itertools.pairwise(dets)) - MARGIN
    a, b = dets
    if p == "in_front_of":
        return _front_slack(a, b)
    if p == "behind":
        return _front_slack(b, a)
    offsets = {
        "left_of": b.centroid[0] - a.centroid[0],
        "right_of": a.centroid[0] - b.centroid[0],
        "above": b.centroid[1] - a.centroid[1],
        "below": a.centroid[1] - b.centroid[1],
    }
    return offsets[p] - MARGIN


def _score(relations: Sequence[Relation], found: Mapping[str, Detection]) -> float:
    return sum(_slack(r, found) > 0 for r in relations) / len(relations)


def _colours_of(relations: Iterable[Relation]) -> list[str]:
    return list(dict.fromkeys(c for r in relations for c, _ in r.objects))


def relation_score(
    image: Any, prompt: str, *, tolerance: float = _DEFAULT_TOLERANCE, min_pixels: int | None = None
) -> float:
    """Fraction of the prompt's relations that hold in ``image`` (a missing object violates its relations)."""
    relations = _parse_cached(prompt)
    return _score(relations, detect_objects(image, _colours_of(relations), tolerance=tolerance, min_pixels=min_pixels))


class RuleChecker:
    """Batched, verifiable spatial reward: ``RuleChecker()(images=..., prompts=...) -> list[float]``.

    Each score is :func:`relation_score`. ``images`` may be a list of PIL images or arrays, a (B,3,H,W)
    float array in [0, 1], or a torch tensor (converted with ``.detach().cpu()``; torch is not imported).
    """

    def __init__(self, *, tolerance: float = _DEFAULT_TOLERANCE, min_pixels: int | None = None) -> None:
        self.tolerance = tolerance
        self.min_pixels = min_pixels

    def __call__(self, *, images: Any, prompts: Sequence[str]) -> list[float]:
        return [
            relation_score(image, prompt, tolerance=self.tolerance, min_pixels=self.min_pixels)
            for image, prompt in zip(image_list(images, prompts), prompts, strict=True)
        ]


def image_list(images: Any, prompts: Sequence[str]) -> list[Any]:
    """A checker's batch as a list of single images: a list of PIL images or arrays, a (B,3,H,W) float array
    in [0, 1], or a torch tensor (converted with ``.detach().cpu()``; torch is not imported). Checks the count."""
    if hasattr(images, "detach"):
        images = images.detach().cpu()
        images = images.float().numpy() if hasattr(images, "float") else images.numpy()
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise ValueError(f"a batch array must have shape (B, 3, H, W), got {images.shape}")
    images = list(images)
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    return images
