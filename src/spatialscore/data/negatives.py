"""Hard negatives made from a generator's own verified images: one object erased, duplicated, recoloured, or an
extra object added; or the whole image mirrored.

The paper's perturbations change the prompt's arrangement (swap, flip, predicate, attribute), so a reward model
trained on them learns where the objects are, not whether exactly the named objects are drawn. A policy optimised
against such a model learns to draw a stretched, off-colour object or to leave one out (README, "The paper in
miniature"). These edits give it the missing kinds of negative: each takes an image that the strict judge accepts
for its prompt and changes one object so that the judge rejects it, keeping everything else of the generator's
rendering (background, shading, the other object).

The object edits are failures a reward model can see without reading the prompt. ``mirror_image`` is the one it
cannot: the image flipped along the axes of the prompt's relations shows the same objects, drawn the same way, in
the opposite arrangement, which is the arrangement of the mirrored prompt it also returns. Used in both directions
(the original preferred under the prompt, the flipped copy preferred under the mirrored prompt), only the relation
words tell the two apart. One direction alone is not enough: a model then learns to spot a flipped rendering
(the generator's images are not mirror-symmetric in their details) and calls it bad under every prompt.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from spatialscore.data.strict import judge
from spatialscore.data.synthetic import BACKGROUND, PALETTE, colour_labels
from spatialscore.data.synthetic.checker import _parse_cached
from spatialscore.data.synthetic.scene import _DEFAULT_TOLERANCE, Relation

__all__ = ["MIRRORED", "NEGATIVE_KINDS", "edit_object", "mirror_image"]

NEGATIVE_KINDS: tuple[str, ...] = ("missing", "duplicated", "recoloured", "extra")
MIRRORED = "mirrored"  # the kind name of mirror_image negatives
_COLOURS = tuple(PALETTE)
_BACKGROUND_LABEL = len(PALETTE)
# Colours near no palette colour (each > 60 RGB units from every palette colour and the background).
_OFF_PALETTE: tuple[tuple[int, int, int], ...] = ((140, 90, 40), (120, 120, 120), (200, 140, 110), (90, 130, 90))


def _object_mask(labels: np.ndarray, colour: str) -> np.ndarray:
    """The pixels of ``colour`` and their one-pixel fringe (the generator's anti-aliased edge)."""
    return ndimage.binary_dilation(labels == _COLOURS.index(colour), structure=np.ones((3, 3), bool))


def _background(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The image's own background colour (median of its background pixels)."""
    pixels = rgb[labels == _BACKGROUND_LABEL]
    return np.median(pixels, axis=0) if len(pixels) else np.array(BACKGROUND, np.float32)


def _free_offset(
    mask: np.ndarray, occupied: np.ndarray, rng: np.random.Generator, *, tries: int = 50
) -> tuple[int, int] | None:
    """A shift (dy, dx) that moves ``mask`` fully inside the image onto pixels at least 2 px from ``occupied``."""
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    keep_out = ndimage.binary_dilation(occupied, structure=np.ones((5, 5), bool))
    for _ in range(tries):
        dy = int(rng.integers(-ys.min(), height - ys.max()))
        dx = int(rng.integers(-xs.min(), width - xs.max()))
        if not keep_out[ys + dy, xs + dx].any():
            return dy, dx
    return None


def edit_object(
    rgb: np.ndarray, *, prompt: str, kind: str, rng: np.random.Generator, tolerance: float = _DEFAULT_TOLERANCE
) -> np.ndarray | None:
    """An edited copy of ``rgb`` ((H, W, 3) uint8, an image the strict judge accepts for ``prompt``) in which one
    named object is ``kind``: erased ("missing"), drawn a second time elsewhere ("duplicated"), painted in an
    unnamed palette colour or a colour near none ("recoloured"), or joined by a copy of its shape in an unnamed
    palette colour ("extra"). None when the edit cannot be made (no free place) or the judge would still accept
    the result; the object and the place are drawn from ``rng``.
    """
    if kind not in NEGATIVE_KINDS:
        raise ValueError(f"kind must be one of {NEGATIVE_KINDS}, got {kind!r}")
    named = list(dict.fromkeys(c for relation in _parse_cached(prompt) for c, _ in relation.objects))
    image = rgb.astype(np.float32)
    labels = colour_labels(image, tolerance)
    colour = named[int(rng.integers(len(named)))]
    mask = _object_mask(labels, colour)
    if not mask.any():
        return None
    unnamed = [c for c in _COLOURS if c not in named]
    out = image.copy()
    if kind == "missing":
        out[mask] = _background(image, labels)
    elif kind == "recoloured":
        choices = [np.array(PALETTE[c], np.float32) for c in unnamed] + [np.array(c, np.float32) for c in _OFF_PALETTE]
        target = choices[int(rng.integers(len(choices)))]
        own = labels == _COLOURS.index(colour)
        # keep the generator's shading: shift the object's pixels by the difference of the two colours
        out[own] = image[own] - image[own].mean(axis=0) + target
    else:
        occupied = labels != _BACKGROUND_LABEL
        offset = _free_offset(mask, occupied, rng)
        if offset is None:
            return None
        ys, xs = np.nonzero(mask)
        dy, dx = offset
        if kind == "duplicated":
            out[ys + dy, xs + dx] = image[ys, xs]
        else:
            own = labels[ys, xs] == _COLOURS.index(colour)
            paint = np.array(PALETTE[unnamed[int(rng.integers(len(unnamed)))]], np.float32)
            out[ys[own] + dy, xs[own] + dx] = image[ys[own], xs[own]] - image[ys[own], xs[own]].mean(axis=0) + paint
    edited = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return None if judge(edited, prompt, tolerance=tolerance).correct else edited


# The image axes (numpy axis 1: left-right, 0: up-down) a relation's arrangement is read along; depth has none.
_MIRROR_AXES: dict[str, tuple[int, ...]] = {"horizontal": (1,), "row": (1,), "vertical": (0,), "corner": (0, 1)}
_EDGE_AXES: dict[str, tuple[int, ...]] = {"left": (1,), "right": (1,), "top": (0,), "bottom": (0,)}
# What each word becomes when the image is flipped along an axis.
_FLIPPED_WORDS: dict[int, dict[str, str]] = {
    1: {"left_of": "right_of", "right_of": "left_of", "left": "right", "right": "left"},
    0: {"above": "below", "below": "above", "upper": "lower", "lower": "upper", "top": "bottom", "bottom": "top"},
}


def _mirrored(relation: Relation, axes: set[int]) -> Relation:
    """``relation`` as it reads in the image flipped along ``axes``."""
    predicate, anchor, objects = relation.predicate, relation.anchor, relation.objects
    for axis in axes:
        words = _FLIPPED_WORDS[axis]
        predicate = words.get(predicate, predicate)
        anchor = "-".join(words.get(part, part) for part in anchor.split("-")) if anchor else anchor
        if axis == 1 and predicate == "row":
            objects = objects[::-1]
    return Relation(predicate, objects, anchor)


def mirror_image(
    rgb: np.ndarray, *, prompt: str, tolerance: float = _DEFAULT_TOLERANCE
) -> tuple[np.ndarray, str] | None:
    """``rgb`` ((H, W, 3) uint8, an image the strict judge accepts for ``prompt``) flipped along every axis that
    the prompt's relations are read along (left-right for left/right and rows, up-down for above/below, both for
    corners, the edge's own axis for edges), and the mirrored prompt that the flipped image shows.

    None when the prompt has no such relation (depth only), the judge would still accept the flipped image for
    ``prompt`` (a symmetric layout), or it does not accept it for the mirrored prompt.
    """
    relations = _parse_cached(prompt)
    axes: set[int] = set()
    for relation in relations:
        axes.update(
            _EDGE_AXES.get(relation.anchor, ()) if relation.axis == "edge" else _MIRROR_AXES.get(relation.axis, ())
        )
    if not axes:
        return None
    flipped = np.ascontiguousarray(np.flip(rgb, axis=tuple(sorted(axes))))
    mirrored_prompt = "; ".join(_mirrored(r, axes).text for r in relations)
    if (
        judge(flipped, prompt, tolerance=tolerance).correct
        or not judge(flipped, mirrored_prompt, tolerance=tolerance).correct
    ):
        return None
    return flipped, mirrored_prompt
