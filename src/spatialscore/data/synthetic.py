"""Procedural spatial scenes: the embedded default data set and a ground-truth test bed.

A scene is 2-5 flat shapes (circle, square, triangle, diamond; small or large) in colours unique within the
scene (8 saturated colours) on a light background, drawn without antialiasing. Its prompt states spatial
relations in a small templated English grammar; a perturbed twin of the scene breaks 1 ("1-pert") or 2-3
("2-3-pert") of them while keeping every object and attribute. Perturbation kinds: swap (two objects trade
places), flip (one object moves to the other side of the other), predicate (the relation changes axis,
e.g. left-of becomes above, or in-front-of becomes left-of), anchor (another corner/edge), attribute_swap
(two objects of the same shape and size trade colours) and row_permute (a left-to-right row is reordered).
The perturbed prompt uses the same template and objects, changing only relation words or row order.

Because the ground truth is known, the module also provides a rule-based checker (a verifiable reward):
objects are found by colour matching and each stated relation is tested geometrically. Every pair is
verified with it on the rendered images: the perfect image satisfies all original relations, the perturbed
image all perturbed ones, and each image violates exactly the changed relations of the other prompt.

Prompt grammar (lower case, no final period; clauses joined with ``"; "``)::

    prompt   := clause ("; " clause)*
    clause   := obj " to the left of " obj | obj " to the right of " obj
              | obj " above " obj | obj " below " obj
              | obj " in front of " obj | obj " behind " obj
              | obj " in the " ("upper-left"|"upper-right"|"lower-left"|"lower-right") " corner"
              | obj " at the " ("top"|"bottom"|"left"|"right") " edge"
              | "from left to right: " obj (", " obj)* " and " obj          (3 or more objects)
    obj      := ("a"|"an") " " colour " " shape

Relation semantics (normalised image coordinates, y down, centroids of the visible pixels):
left/right/above/below and rows compare centroids with a margin of ``MARGIN``; "in front of" means the
two bounding boxes overlap and the front object's base is lower by ``MARGIN`` (the renderer also draws it
later and larger); corners are the corner cells of a 3x3 grid; edges are the outer thirds (an object in the
upper-left corner is also at the top edge and at the left edge).

Curriculum stages (each adds one difficulty, as a tiny model needs; see README):
0 = warm-up without mirrors: every prompt says "a red ... to the left of a blue ...", so the image alone
decides (a model first learns to see the layout); 1 = red and blue, left or right, red named first, mirrored
(from here on the prompt matters); 2 = either naming order; 3 = adds above/below and flip; 4 = two objects of
all colours, adds predicate and attribute_swap; 5 = 2-3 objects, adds front/behind, corners, edges and anchor;
6 = the full task: 2-5 objects, adds rows and row_permute, and 2-3 perturbations in half of the pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from spatialscore.data.images import to_rgb
from spatialscore.data.manifest import atomic_write, check_settings

__all__ = [
    "BACKGROUND",
    "CORNERS",
    "EDGES",
    "MARGIN",
    "PALETTE",
    "PERTURBATIONS",
    "SHAPES",
    "SIZES",
    "Detection",
    "Relation",
    "RuleChecker",
    "Scene",
    "SceneObject",
    "UNMATCHED",
    "ScenePair",
    "cli_main",
    "colour_labels",
    "detect_objects",
    "draw_shape",
    "image_list",
    "majority_vote",
    "generate_pair",
    "parse_prompt",
    "relation_score",
    "render_scene",
    "write_synthetic_dataset",
]

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (250, 225, 30),
    "purple": (110, 40, 160),
    "orange": (245, 125, 15),
    "cyan": (20, 190, 210),
    "magenta": (225, 45, 185),
}
BACKGROUND: tuple[int, int, int] = (245, 245, 240)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: dict[str, float] = {"small": 0.07, "large": 0.1}  # half the side of the bounding box, normalised
PERTURBATIONS: tuple[str, ...] = ("swap", "flip", "predicate", "anchor", "attribute_swap", "row_permute")

MARGIN = 0.06  # a relation holds only when it holds by this much (normalised units)
BEHIND_SCALE = 0.8  # the object behind is drawn at this scale
CORNERS: tuple[str, ...] = ("upper-left", "upper-right", "lower-left", "lower-right")
EDGES: tuple[str, ...] = ("top", "bottom", "left", "right")

_PAIR_PHRASES: dict[str, str] = {
    "left_of": "to the left of",
    "right_of": "to the right of",
    "above": "above",
    "below": "below",
    "in_front_of": "in front of",
    "behind": "behind",
}
_AXIS: dict[str, str] = {
    "left_of": "horizontal",
    "right_of": "horizontal",
    "above": "vertical",
    "below": "vertical",
    "in_front_of": "depth",
    "behind": "depth",
    "corner": "corner",
    "edge": "edge",
    "row": "row",
}
_OPPOSITE: dict[str, str] = {
    "left_of": "right_of",
    "right_of": "left_of",
    "above": "below",
    "below": "above",
    "in_front_of": "behind",
    "behind": "in_front_of",
}
_SHAPE_AREA: dict[str, float] = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5}

_PAD = 0.02  # free border around the canvas
_GAP = 0.03  # free space between objects that do not overlap
_GEN_CLEAR = 0.05  # geometric slack required when a scene is built
_PIXEL_CLEAR = 0.025  # slack required on the rendered pixels when a pair is verified
_PIXEL_CLEAR_DEPTH = 0.04  # box overlaps shrink under blur: depth relations need more
_THIRD = 1.0 / 3.0
_DEFAULT_TOLERANCE = 60.0


# ----------------------------------------------------------------------------------------------------------
# Data model
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One flat shape. ``x``, ``y`` is the centre of its bounding box in [0, 1] (y down).

    ``scale`` shrinks an object that is behind another one; ``layer`` is the drawing order (higher later).
    """

    colour: str
    shape: str
    size: str
    x: float
    y: float
    scale: float = 1.0
    layer: int = 0

    @property
    def half(self) -> float:
        """Half the side of the bounding box (normalised)."""
        return SIZES[self.size] * self.scale

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Bounding box (x0, y0, x1, y1), normalised."""
        h = self.half
        return (self.x - h, self.y - h, self.x + h, self.y + h)

    @property
    def centroid(self) -> tuple[float, float]:
        """Area centroid; a triangle's (apex up) lies a third of the half-side below the box centre."""
        return (self.x, self.y + (self.half / 3.0 if self.shape == "triangle" else 0.0))

    @property
    def ref(self) -> tuple[str, str]:
        """(colour, shape): how prompts refer to the object (unique because colours are unique)."""
        return (self.colour, self.shape)

    def pixel_box(self, image_size: int) -> tuple[int, int, int, int]:
        """Inclusive pixel box the renderer fills at ``image_size``."""
        x0, y0, x1, y1 = self.box
        px0, py0 = round(x0 * image_size), round(y0 * image_size)
        px1, py1 = round(x1 * image_size) - 1, round(y1 * image_size) - 1
        return (px0, py0, max(px1, px0 + 2), max(py1, py0 + 2))

    def moved_to(self, cx: float, cy: float) -> SceneObject:
        """Copy whose centroid is at (cx, cy)."""
        return dataclasses.replace(self, x=cx, y=cy - (self.centroid[1] - self.y))


@dataclass(frozen=True)
class Relation:
    """A stated spatial relation.

    ``predicate`` is one of left_of, right_of, above, below, in_front_of, behind (two objects), corner, edge
    (one object, ``anchor`` names the corner/edge) or row (3+ objects, left to right). ``objects`` holds
    (colour, shape) references in the order they are mentioned.
    """

    predicate: str
    objects: tuple[tuple[str, str], ...]
    anchor: str = ""

    @property
    def axis(self) -> str:
        """horizontal, vertical, depth, corner, edge or row."""
        return _AXIS[self.predicate]

    @property
    def text(self) -> str:
        """The clause in the prompt grammar."""
        names = [_noun_phrase(*ref) for ref in self.objects]
        if self.predicate == "corner":
            return f"{names[0]} in the {self.anchor} corner"
        if self.predicate == "edge":
            return f"{names[0]} at the {self.anchor} edge"
        if self.predicate == "row":
            return "from left to right: " + ", ".join(names[:-1]) + " and " + names[-1]
        return f"{names[0]} {_PAIR_PHRASES[self.predicate]} {names[1]}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "predicate": self.predicate,
            "objects": [list(o) for o in self.objects],
            "anchor": self.anchor,
        }


@dataclass(frozen=True)
class Scene:
    """Objects plus the relations its prompt states (all of which hold in the scene)."""

    objects: tuple[SceneObject, ...]
    relations: tuple[Relation, ...]

    @property
    def prompt(self) -> str:
        """The relations' clauses joined with ``"; "``."""
        return "; ".join(r.text for r in self.relations)

    def to_dict(self, *, image_size: int | None = None) -> dict[str, Any]:
        """JSON-ready form with normalised boxes and, given ``image_size``, the rendered pixel boxes."""
        objects = []
        for o in self.objects:
            entry = {k: float(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(o).items()}
            entry["box"] = [round(float(v), 6) for v in o.box]
            if image_size is not None:
                entry["box_px"] = list(o.pixel_box(image_size))
            objects.append(entry)
        return {"prompt": self.prompt, "objects": objects, "relations": [r.to_dict() for r in self.relations]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scene:
        """Inverse of :meth:`to_dict`."""
        fields = {f.name for f in dataclasses.fields(SceneObject)}
        objects = tuple(SceneObject(**{k: v for k, v in o.items() if k in fields}) for o in data["objects"])
        relations = tuple(
            Relation(r["predicate"], tuple((c, s) for c, s in r["objects"]), r.get("anchor", ""))
            for r in data["relations"]
        )
        return cls(objects, relations)


@dataclass(frozen=True)
class ScenePair:
    """A perfect scene and its perturbed twin (same objects; ``kinds`` lists the perturbations applied)."""

    perfect: Scene
    perturbed: Scene
    kinds: tuple[str, ...]
    stage: int

    @property
    def subset(self) -> str:
        """The benchmark subset: '1-pert' or '2-3-pert'."""
        return "1-pert" if len(self.kinds) == 1 else "2-3-pert"

    @property
    def category(self) -> str:
        """Perturbation kinds joined with "+" (in ``PERTURBATIONS`` order, which is also the order they were
        applied), e.g. "swap+anchor"."""
        return "+".join(self.kinds)


@dataclass(frozen=True)
class Detection:
    """An object found in an image: normalised box (x0, y0, x1, y1), centroid and area fraction."""

    box: tuple[float, float, float, float]
    centroid: tuple[float, float]
    area: float


def _noun_phrase(colour: str, shape: str) -> str:
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape}"


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill: Any) -> None:
    """Draw one shape (circle, square, triangle apex up, diamond) filling ``box`` = (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), (xm, y0)], fill=fill)
    else:
        draw.polygon([(xm, y0), (x1, ym), (xm, y1), (x0, ym)], fill=fill)


def render_scene(scene: Scene, *, image_size: int = 64) -> Image.Image:
    """Draw the scene without antialiasing (exact palette colours), lower layers first."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in sorted(scene.objects, key=lambda o: o.layer):
        draw_shape(draw, obj.shape, obj.pixel_box(image_size), PALETTE[obj.colour])
    return image


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
                raise ValueError(
                    f"colour {colour!r} names both a {shapes[colour]} and a {shape} in {prompt!r}"
                )
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
    return _score(
        relations, detect_objects(image, _colours_of(relations), tolerance=tolerance, min_pixels=min_pixels)
    )


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


# ----------------------------------------------------------------------------------------------------------
# Scene generation
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StageSpec:
    min_objects: int
    max_objects: int
    colours: tuple[str, ...]
    axes: tuple[str, ...]
    perturbations: tuple[str, ...]
    palette_order: bool = False  # name the objects of a pair relation in palette order (red before blue)
    predicates: tuple[str, ...] | None = None  # allowed pair predicates (None: every one of the axes)
    mirrored: bool = True  # also write the mirror record (False only for the warm-up stage)
    relations: int | None = None  # prompt relations: None = one per object pair and anchor, as drawn
    multi_perturbation: bool = False  # 2-3 perturbations in half of the pairs


_RED_BLUE = ("red", "blue")
_STAGES: dict[int, _StageSpec] = {
    0: _StageSpec(
        2, 2, _RED_BLUE, ("horizontal",), ("swap",), palette_order=True, predicates=("left_of",), relations=1,
        mirrored=False,
    ),
    1: _StageSpec(2, 2, _RED_BLUE, ("horizontal",), ("swap",), palette_order=True, relations=1),
    2: _StageSpec(2, 2, _RED_BLUE, ("horizontal",), ("swap",), relations=1),
    3: _StageSpec(2, 2, _RED_BLUE, ("horizontal", "vertical"), ("swap", "flip"), relations=1),
    4: _StageSpec(
        2,
        2,
        tuple(PALETTE),
        ("horizontal", "vertical"),
        ("swap", "flip", "predicate", "attribute_swap"),
        relations=1,
    ),
    5: _StageSpec(
        2,
        3,
        tuple(PALETTE),
        ("horizontal", "vertical", "depth", "corner", "edge"),
        ("swap", "flip", "predicate", "anchor", "attribute_swap"),
    ),
    6: _StageSpec(
        2,
        5,
        tuple(PALETTE),
        ("horizontal", "vertical", "depth", "corner", "edge", "row"),
        PERTURBATIONS,
        multi_perturbation=True,
    ),
}
FULL_STAGE = max(_STAGES)
_ANCHOR_PROBABILITY = 0.35
_DEPTH_PROBABILITY = 0.35
_ROW_PROBABILITY = 0.3
_REGIONS: dict[str, tuple[float, float, float, float]] = {
    "upper-left": (0.0, _THIRD, 0.0, _THIRD),
    "upper-right": (2 * _THIRD, 1.0, 0.0, _THIRD),
    "lower-left": (0.0, _THIRD, 2 * _THIRD, 1.0),
    "lower-right": (2 * _THIRD, 1.0, 2 * _THIRD, 1.0),
    "top": (0.0, 1.0, 0.0, _THIRD),
    "bottom": (0.0, 1.0, 2 * _THIRD, 1.0),
    "left": (0.0, _THIRD, 0.0, 1.0),
    "right": (2 * _THIRD, 1.0, 0.0, 1.0),
    "anywhere": (0.0, 1.0, 0.0, 1.0),
}


def _geometry(objects: Iterable[SceneObject]) -> dict[str, Detection]:
    """Detections computed from the scene description (no occlusion), for planning before rendering."""
    return {o.colour: Detection(o.box, o.centroid, (2 * o.half) ** 2 * _SHAPE_AREA[o.shape]) for o in objects}


def _boxes_apart(a: SceneObject, b: SceneObject) -> bool:
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    return max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1) >= _GAP


def _layout_ok(objects: Sequence[SceneObject], relations: Iterable[Relation]) -> bool:
    """Inside the canvas, and no two objects overlap unless a stated depth relation joins them."""
    if not all(_inside(o) for o in objects):
        return False
    depth_pairs = {frozenset(c for c, _ in r.objects) for r in relations if r.axis == "depth"}
    return all(
        frozenset((a.colour, b.colour)) in depth_pairs or _boxes_apart(a, b)
        for i, a in enumerate(objects)
        for b in objects[i + 1 :]
    )


def _centroid_range(obj: SceneObject, axis: int) -> tuple[float, float]:
    """Where the object's centroid may lie along ``axis`` (0 = x, 1 = y) with the object inside the canvas."""
    offset = obj.centroid[axis] - (obj.x, obj.y)[axis]
    return (obj.half + _PAD + offset, 1 - obj.half - _PAD + offset)


def _random_in_region(
    rng: np.random.Generator, obj: SceneObject, region: str | tuple[float, float, float, float]
) -> SceneObject | None:
    """``obj`` moved to a random spot whose centroid is inside ``region`` (a name in ``_REGIONS`` or bounds
    (x0, x1, y0, y1)), at least ``_GEN_CLEAR`` away from its inner borders; None if it cannot fit."""
    x0, x1, y0, y1 = _REGIONS[region] if isinstance(region, str) else region
    (min_x, max_x), (min_y, max_y) = _centroid_range(obj, 0), _centroid_range(obj, 1)
    lo_x = max(x0 + (_GEN_CLEAR if x0 > 0 else 0.0), min_x)
    hi_x = min(x1 - (_GEN_CLEAR if x1 < 1 else 0.0), max_x)
    lo_y = max(y0 + (_GEN_CLEAR if y0 > 0 else 0.0), min_y)
    hi_y = min(y1 - (_GEN_CLEAR if y1 < 1 else 0.0), max_y)
    if lo_x > hi_x or lo_y > hi_y:
        return None
    return obj.moved_to(rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y))


def _place_all(
    rng: np.random.Generator,
    objects: list[SceneObject],
    depth: tuple[int, int] | None,
    regions: Sequence[str | tuple[float, float, float, float]],
) -> list[SceneObject] | None:
    """Random non-overlapping positions (object i inside ``regions[i]``); a depth pair (front, back) is
    placed first, overlapping, with the front one lower. None when the objects do not fit."""
    placed: dict[int, SceneObject] = {}
    if depth is not None:
        front, back = depth
        for _ in range(10):
            back_obj = _random_in_region(rng, objects[back], "anywhere")
            if back_obj is None:
                return None
            reach = objects[front].half + back_obj.half
            dx = rng.choice((-1, 1)) * rng.uniform(0.15, 0.5) * reach
            dy = rng.uniform(0.45, 0.65) * reach
            front_obj = dataclasses.replace(objects[front], x=back_obj.x + dx, y=back_obj.y + dy)
            if _inside(front_obj) and front_obj.box[3] - back_obj.box[3] >= MARGIN + _GEN_CLEAR:
                placed[back], placed[front] = back_obj, front_obj
                break
        else:
            return None
    order = sorted(range(len(objects)), key=lambda k: regions[k] == "anywhere")
    for i in order:
        obj = objects[i]
        if i in placed:
            continue
        for _ in range(30):
            candidate = _random_in_region(rng, obj, regions[i])
            if candidate is not None and all(_boxes_apart(candidate, other) for other in placed.values()):
                placed[i] = candidate
                break
        else:
            return None
    return [placed[i] for i in range(len(objects))]


def _inside(obj: SceneObject) -> bool:
    return min(obj.box) >= _PAD and max(obj.box) <= 1 - _PAD


def _candidate_relations(
    rng: np.random.Generator,
    objects: Sequence[SceneObject],
    axes: Sequence[str],
    depth: tuple[int, int] | None,
    *,
    palette_order: bool = False,
    predicates: Sequence[str] | None = None,
) -> list[Relation]:
    """Every relation of an allowed axis that clearly holds, each in a random one of its phrasings
    (or, with ``palette_order``, naming the object that comes first in the palette first).

    The depth pair, if any, is related by depth only.
    """
    found = _geometry(objects)
    depth_colours = set() if depth is None else {objects[depth[0]].colour, objects[depth[1]].colour}
    pair_predicates = [
        p
        for p in _OPPOSITE
        if _AXIS[p] in ("horizontal", "vertical") and _AXIS[p] in axes and (predicates is None or p in predicates)
    ]
    candidates: list[Relation] = []
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            if {a.colour, b.colour} != depth_colours:
                if palette_order:
                    refs = tuple(sorted((a.ref, b.ref), key=lambda ref: list(PALETTE).index(ref[0])))
                else:
                    refs = (a.ref, b.ref) if rng.random() < 0.5 else (b.ref, a.ref)
                candidates += [Relation(p, refs) for p in pair_predicates]
        for anchor_kind, anchors in (("corner", CORNERS), ("edge", EDGES)):
            if anchor_kind in axes:
                candidates += [Relation(anchor_kind, (a.ref,), anchor) for anchor in anchors]
    if "row" in axes and len(objects) >= 3:
        for _ in range(4):
            size = int(rng.integers(3, len(objects) + 1))
            members = sorted(rng.choice(len(objects), size, replace=False), key=lambda k: objects[k].x)
            candidates.append(Relation("row", tuple(objects[k].ref for k in members)))
    return list(dict.fromkeys(r for r in candidates if _slack(r, found) >= _GEN_CLEAR))


def _conflicts(relation: Relation, other: Relation) -> bool:
    """At most one relation per object pair, one anchor per object, one row, no left/right inside a row."""
    colours = {c for c, _ in relation.objects}
    other_colours = {c for c, _ in other.objects}
    axes = {relation.axis, other.axis}
    if axes == {"row"}:
        return True
    if axes <= {"corner", "edge"}:
        return colours == other_colours
    if axes == {"row", "horizontal"}:
        return colours <= other_colours or other_colours <= colours
    return len(colours) == 2 and colours == other_colours


def _choose_relations(
    rng: np.random.Generator,
    candidates: list[Relation],
    objects: Sequence[SceneObject],
    count: int,
    required: Sequence[Relation],
) -> list[Relation] | None:
    """``required`` plus random non-conflicting relations, balanced over axes, until there are ``count``
    and every object is mentioned; None when the candidates cannot do that."""
    chosen = list(required)
    uncovered = {o.colour for o in objects} - {c for r in chosen for c, _ in r.objects}
    pool = [r for r in candidates if not any(_conflicts(r, c) for c in chosen)]
    while pool and (uncovered or len(chosen) < count):
        usable = [r for r in pool if not uncovered or uncovered & {c for c, _ in r.objects}]
        if not usable:
            return None
        axes = sorted({r.axis for r in usable})
        axis = axes[int(rng.integers(len(axes)))]
        options = [r for r in usable if r.axis == axis]
        relation = options[int(rng.integers(len(options)))]
        pool = [r for r in pool if r != relation and not _conflicts(r, relation)]
        chosen.append(relation)
        uncovered -= {c for c, _ in relation.objects}
    return chosen if not uncovered and len(chosen) >= count else None


# ----------------------------------------------------------------------------------------------------------
# Perturbations: each edits ``objects`` in place so that one target relation fails and returns the relation
# that holds instead, or None (the caller then discards the objects).
# ----------------------------------------------------------------------------------------------------------

_Objects = list[SceneObject]


def _index(objects: Sequence[SceneObject], ref: tuple[str, str]) -> int:
    return next(i for i, o in enumerate(objects) if o.colour == ref[0])


def _fits(objects: Sequence[SceneObject], *moved: int) -> bool:
    """The moved objects lie inside the canvas and keep clear of every other object."""
    return all(
        _inside(objects[i]) and all(_boxes_apart(objects[i], o) for k, o in enumerate(objects) if k != i)
        for i in moved
    )


def _swap(rng: np.random.Generator, objects: _Objects, rel: Relation) -> Relation | None:
    i, j = (_index(objects, r) for r in rel.objects)
    a, b = objects[i], objects[j]
    objects[i], objects[j] = dataclasses.replace(a, x=b.x, y=b.y), dataclasses.replace(b, x=a.x, y=a.y)
    return Relation(_OPPOSITE[rel.predicate], rel.objects) if _fits(objects, i, j) else None


def _flip(rng: np.random.Generator, objects: _Objects, rel: Relation) -> Relation | None:
    i, j = (_index(objects, r) for r in rel.objects)
    a, b = objects[i], objects[j]
    if rel.axis == "depth":
        objects[i] = dataclasses.replace(a, x=b.x, y=b.y, scale=b.scale, layer=b.layer)
        objects[j] = dataclasses.replace(b, x=a.x, y=a.y, scale=a.scale, layer=a.layer)
        return Relation(_OPPOSITE[rel.predicate], rel.objects)
    axis = 0 if rel.axis == "horizontal" else 1
    # Mirror either object about the other; if the mirror image does not fit, try other distances.
    for mover, pivot in (i, j), (j, i):
        centre = objects[pivot].centroid[axis]
        offset = objects[mover].centroid[axis] - centre
        lo, hi = _centroid_range(objects[mover], axis)
        room = (centre - lo) if offset > 0 else (hi - centre)
        nearest = MARGIN + 2 * _GEN_CLEAR
        if room < nearest:
            continue
        for distance in (abs(offset), *rng.uniform(nearest, room, 3)):
            moved = list(objects[mover].centroid)
            moved[axis] = centre - math.copysign(distance, offset)
            trial = list(objects)
            trial[mover] = objects[mover].moved_to(*moved)
            if _fits(trial, mover):
                objects[:] = trial
                return Relation(_OPPOSITE[rel.predicate], rel.objects)
    return None


def _predicate(rng: np.random.Generator, objects: _Objects, rel: Relation) -> Relation | None:
    i, j = (_index(objects, r) for r in rel.objects)
    new_axis = "vertical" if rel.axis == "horizontal" else "horizontal"
    if rel.axis == "depth" and rng.random() < 0.5:
        new_axis = "vertical"
    predicates = ["above", "below"] if new_axis == "vertical" else ["left_of", "right_of"]
    found = _geometry(objects)
    # The new relation must be clearly false in the current scene, or the mirror pair would tie.
    options = [p for p in predicates if _slack(Relation(p, rel.objects), found) <= -_GEN_CLEAR]
    if not options:
        return None
    for _ in range(6):
        predicate = options[int(rng.integers(len(options)))]
        # Move the first object next to the second one, or the second next to the first.
        mover, anchor, sign = (i, j, 1.0) if rng.random() < 0.5 else (j, i, -1.0)
        if predicate in ("above", "left_of"):
            sign = -sign
        a, b = objects[mover], objects[anchor]
        distance = sign * (a.half + b.half + _GAP + rng.uniform(0.01, 0.1))
        bx, by = b.centroid
        trial = list(objects)
        trial[mover] = (
            a.moved_to(bx, by + distance) if new_axis == "vertical" else a.moved_to(bx + distance, by)
        )
        if _fits(trial, mover):
            objects[:] = trial
            return Relation(predicate, rel.objects)
    return None


def _anchor(rng: np.random.Generator, objects: _Objects, rel: Relation) -> Relation | None:
    i = _index(objects, rel.objects[0])
    centroid = objects[i].centroid
    anchors = CORNERS if rel.axis == "corner" else EDGES
    options = [x for x in anchors if x != rel.anchor and _anchor_slack(x, *centroid) <= -_GEN_CLEAR]
    for _ in range(10):
        if not options:
            return None
        anchor = options[int(rng.integers(len(options)))]
        trial = list(objects)
        moved = _random_in_region(rng, objects[i], anchor)
        if moved is not None and _anchor_slack(rel.anchor, *moved.centroid) <= -_GEN_CLEAR:
            trial[i] = moved
            if _fits(trial, i):
                objects[:] = trial
                return Relation(rel.predicate, rel.objects, anchor)
    return None


def _attribute_swap(rng: np.random.Generator, objects: _Objects, rel: Relation) -> Relation | None:
    i, j = (_index(objects, r) for r in rel.objects)
    a, b = objects[i], objects[j]
    objects[i], objects[j] = dataclasses.replace(a, colour=b.colour), dataclasses.replace(b, colour=a.colour)
    return Relation(_OPPOSITE[rel.predicate], rel.objects)


def _row_permute(rng: np.random.Generator, objects: _Objects, rel: Relation) -> Relation | None:
    members = [_index(objects, r) for r in rel.objects]
    for _ in range(6):
        order = [int(k) for k in rng.permutation(len(members))]
        if order == sorted(order):
            continue
        trial = list(objects)
        for k, source in zip(members, order, strict=True):
            trial[k] = dataclasses.replace(objects[k], x=objects[members[source]].x)
        if _fits(trial, *members):
            objects[:] = trial
            return Relation("row", tuple(trial[k].ref for k in sorted(members, key=lambda k: trial[k].x)))
    return None


_OPERATIONS = {
    "swap": _swap,
    "flip": _flip,
    "predicate": _predicate,
    "anchor": _anchor,
    "attribute_swap": _attribute_swap,
    "row_permute": _row_permute,
}
_TARGET_AXES: dict[str, tuple[str, ...]] = {
    "swap": ("horizontal", "vertical"),
    "flip": ("horizontal", "vertical", "depth"),
    "predicate": ("horizontal", "vertical", "depth"),
    "anchor": ("corner", "edge"),
    "attribute_swap": ("horizontal", "vertical", "depth"),
    "row_permute": ("row",),
}


def _suits(kind: str, relation: Relation, objects: Sequence[SceneObject]) -> bool:
    """Whether perturbation ``kind`` can target ``relation`` (attribute_swap needs same shape and size)."""
    if relation.axis not in _TARGET_AXES[kind]:
        return False
    if kind == "attribute_swap":
        a, b = (objects[_index(objects, r)] for r in relation.objects)
        return (a.shape, a.size) == (b.shape, b.size)
    return True


def _sample_layout(
    rng: np.random.Generator, spec: _StageSpec, plan: Sequence[str]
) -> tuple[list[SceneObject], tuple[int, int] | None, list[int]] | None:
    """Objects for a stage, placed; also the depth pair (front, back) and the designed row, if any.

    The layout is shaped by the plan: twins (same shape and size) for attribute_swap, a row for
    row_permute, an object in a corner or at an edge for anchor.
    """
    low = max(spec.min_objects, len(plan) + (len(plan) > 1), 2 + len(plan) if "row_permute" in plan else 0)
    n = int(rng.integers(low, spec.max_objects + 1))
    colours = [str(c) for c in rng.choice(spec.colours, n, replace=False)]
    shapes = [str(s) for s in rng.choice(SHAPES, n)]
    sizes = [str(z) for z in rng.choice(sorted(SIZES), n)]
    depth = None
    if "depth" in spec.axes and n - ("row_permute" in plan) * 3 >= 2 and rng.random() < _DEPTH_PROBABILITY:
        front, back = (int(k) for k in rng.choice(n, 2, replace=False))
        depth = (front, back)
        sizes[front] = sizes[back] = "large"  # small overlapping objects are hard to read at 64 px
    if "attribute_swap" in plan:
        i, j = (int(k) for k in rng.choice(n, 2, replace=False))
        shapes[j], sizes[j] = shapes[i], sizes[i]
        if depth is not None and {i, j} & set(depth):
            sizes[i] = sizes[j] = "large"
    objects = [SceneObject(c, s, z, 0.5, 0.5) for c, s, z in zip(colours, shapes, sizes, strict=True)]
    if depth is not None:
        objects[depth[0]] = dataclasses.replace(objects[depth[0]], layer=1)
        objects[depth[1]] = dataclasses.replace(objects[depth[1]], scale=BEHIND_SCALE)
    free = [i for i in range(n) if depth is None or i not in depth]
    regions: list[str | tuple[float, float, float, float]] = ["anywhere"] * n
    row: list[int] = []
    if "row" in spec.axes and len(free) >= 3 and ("row_permute" in plan or rng.random() < _ROW_PROBABILITY):
        row = [int(k) for k in rng.choice(free, int(rng.integers(3, min(len(free), 4) + 1)), replace=False)]
        y_row = rng.uniform(0.25, 0.75)
        for slot, k in enumerate(row):
            regions[k] = (slot / len(row), (slot + 1) / len(row), y_row - 0.1, y_row + 0.1)
    if "corner" in spec.axes:
        free = [i for i in free if i not in row]
        anchored = [i for i in free if rng.random() < _ANCHOR_PROBABILITY]
        if "anchor" in plan and not anchored and free:
            anchored = [free[int(rng.integers(len(free)))]]
        for i, anchor in zip(anchored, rng.permutation(CORNERS + EDGES), strict=False):
            regions[i] = str(anchor)
    placed = _place_all(rng, objects, depth, regions)
    return None if placed is None else (placed, depth, row)


def _draw_pair(
    rng: np.random.Generator, stage: int, plan: Sequence[str]
) -> tuple[Scene, Scene, set[int]] | None:
    """One attempt at a scene pair: perfect scene, perturbed scene and the indices of the changed relations.

    Lay out the objects, pick one target relation per planned perturbation, perturb, then fill the prompt
    with relations that clearly hold in both scenes. None when this draw does not work out.
    """
    spec = _STAGES[stage]
    layout = _sample_layout(rng, spec, plan)
    if layout is None:
        return None
    placed, depth, row = layout
    n = len(placed)
    candidates = _candidate_relations(
        rng, placed, spec.axes, depth, palette_order=spec.palette_order, predicates=spec.predicates
    )
    if row:
        designed = Relation("row", tuple(placed[k].ref for k in sorted(row, key=lambda k: placed[k].x)))
        if _slack(designed, _geometry(placed)) >= _GEN_CLEAR:
            candidates.insert(0, designed)
    required: list[Relation] = []
    if depth is not None:
        front, back = placed[depth[0]].ref, placed[depth[1]].ref
        required.append(
            Relation("in_front_of", (front, back))
            if rng.random() < 0.5
            else Relation("behind", (back, front))
        )
    targets: list[Relation] = []
    for kind in plan:
        options = [
            r
            for r in dict.fromkeys([*required, *candidates])
            if r not in targets
            and _suits(kind, r, placed)
            and not any(_conflicts(r, q) for q in required if q != r)
        ]
        if not options:
            return None
        targets.append(options[int(rng.integers(len(options)))])
        required = list(dict.fromkeys([*required, targets[-1]]))

    perturbed = list(placed)
    replacements = {}
    for kind, target in zip(plan, targets, strict=True):
        replacement = _OPERATIONS[kind](rng, perturbed, target)
        if replacement is None:
            return None
        replacements[target] = replacement
    if not _layout_ok(perturbed, [replacements.get(r, r) for r in required]):
        return None

    if spec.relations is not None:
        count = spec.relations
    elif not spec.multi_perturbation:
        count = int(rng.integers(n - 1, n + 1))
    else:
        count = int(rng.integers(max(n - 1, len(plan)), n + 2))
    after = _geometry(perturbed)
    stable = [r for r in candidates if r not in targets and _slack(r, after) >= _GEN_CLEAR]
    relations = _choose_relations(rng, stable, placed, count, required)
    if relations is None:
        return None
    rng.shuffle(relations)
    changed = {k for k, r in enumerate(relations) if r in replacements}
    original = Scene(tuple(placed), tuple(relations))
    twin = Scene(tuple(perturbed), tuple(replacements.get(r, r) for r in relations))
    if not _consistent(original.relations, twin.relations, changed, _geometry(placed), after, _GEN_CLEAR):
        return None
    return original, twin, changed


def _consistent(
    original: Sequence[Relation],
    perturbed: Sequence[Relation],
    targets: set[int],
    found_original: Mapping[str, Detection],
    found_perturbed: Mapping[str, Detection],
    clear: float,
) -> bool:
    """Each scene satisfies its own relations; exactly the targets differ and fail on the other image."""
    for k, (rel, new) in enumerate(zip(original, perturbed, strict=True)):
        if _slack(new, found_perturbed) < clear or (rel == new) == (k in targets):
            return False
        if k in targets and (_slack(rel, found_perturbed) > -clear or _slack(new, found_original) > -clear):
            return False
    return True


def _render_checked(scene: Scene, image_size: int) -> tuple[Image.Image, dict[str, Detection]]:
    """Render and detect; objects less than 40% visible (occluded, eaten by the vote) count as missing."""
    image = render_scene(scene, image_size=image_size)
    found = detect_objects(image, [o.colour for o in scene.objects])
    expected = _geometry(scene.objects)
    return image, {c: d for c, d in found.items() if d.area >= 0.4 * expected[c].area}


def _depth_readable(scene: Scene, found: Mapping[str, Detection]) -> bool:
    """Depth relations hold with an extra pixel of slack and the object behind is visibly, not mostly,
    covered, so that mild blur cannot undo them."""
    expected = _geometry(scene.objects)
    for relation in scene.relations:
        if relation.axis == "depth":
            back = relation.objects[1 if relation.predicate == "in_front_of" else 0][0]
            visible = found[back].area / expected[back].area
            if _slack(relation, found) < _PIXEL_CLEAR_DEPTH or not 0.4 <= visible <= 0.85:
                return False
    return True


def _generate(
    rng: np.random.Generator, stage: int, image_size: int
) -> tuple[ScenePair, Image.Image, Image.Image]:
    """Draw a perturbation plan (1 kind, or 2-3 distinct kinds at stage 3), then pairs until one verifies
    on the rendered pixels."""
    if stage not in _STAGES:
        raise ValueError(f"stage must be one of {sorted(_STAGES)}, got {stage}")
    kinds = _STAGES[stage].perturbations
    count = int(rng.choice((1, 2, 3), p=(0.5, 0.3, 0.2))) if _STAGES[stage].multi_perturbation else 1
    plan = [str(k) for k in rng.choice(kinds, count, replace=False)]
    plan.sort(key=PERTURBATIONS.index)
    for _ in range(5000):
        drawn = _draw_pair(rng, stage, plan)
        if drawn is None:
            continue
        scene, perturbed, changed = drawn
        image, found = _render_checked(scene, image_size)
        perturbed_image, perturbed_found = _render_checked(perturbed, image_size)
        if (
            len(found) == len(perturbed_found) == len(scene.objects)
            and all(_slack(r, found) >= _PIXEL_CLEAR for r in scene.relations)
            and _depth_readable(scene, found)
            and _depth_readable(perturbed, perturbed_found)
            and _consistent(
                scene.relations, perturbed.relations, changed, found, perturbed_found, _PIXEL_CLEAR
            )
        ):
            return ScenePair(scene, perturbed, tuple(plan), stage), image, perturbed_image
    raise RuntimeError(
        f"could not generate a verified stage-{stage} {'+'.join(plan)} pair at {image_size} px"
    )


def generate_pair(*, seed: int | Sequence[int], stage: int = FULL_STAGE, image_size: int = 64) -> ScenePair:
    """One verified perfect/perturbed scene pair; ``seed=(dataset_seed, pair_index)`` reproduces a record.

    Verified on the rendered ``image_size`` images: the perfect image satisfies every original relation,
    the perturbed image every perturbed relation, and each image clearly violates exactly the changed ones.
    """
    return _generate(np.random.default_rng(seed), stage, _checked_size(image_size))[0]


def _checked_size(image_size: int) -> int:
    if image_size < 32:
        raise ValueError(
            f"image_size must be at least 32 px (objects stay a few pixels wide), got {image_size}"
        )
    return image_size


# ----------------------------------------------------------------------------------------------------------
# Data set writer and CLI
# ----------------------------------------------------------------------------------------------------------


def write_synthetic_dataset(
    out_dir: str | Path,
    *,
    num_pairs: int,
    seed: int,
    image_size: int = 64,
    stages: Sequence[int] = (FULL_STAGE,),
    split: str = "train",
    show_progress: bool = True,
) -> Path:
    """Write ``2 * num_pairs`` preference records to ``out_dir/{split}.jsonl`` and PNGs to ``out_dir/images``.

    Each scene pair yields the record (perfect prompt, chosen=perfect, rejected=perturbed) and its mirror
    (perturbed prompt, chosen=perturbed, rejected=perfect), so a scorer that ignores the prompt is exactly
    at chance; stage 0, a warm-up whose prompts all say "red to the left of blue", has no mirrors. Stages are spread evenly over the pairs in order (a stage listed k times gets k shares). Output is byte-identical for a seed (with
    the same numpy and Pillow). Pair i is ``generate_pair(seed=(seed, i), stage=...)``; its record ids are
    ``{split}-{i:06d}`` and ``{split}-{i:06d}-mirror``; ``category`` joins the perturbation kinds with "+".

    The settings are recorded in ``out_dir/{split}.synth.json`` before anything else is written, and the manifest
    appears (atomically) only once every image is written. A rerun with the same settings finds the manifest and
    writes nothing; a rerun with other settings, or a ``{split}.jsonl`` that synth did not write (no settings
    file beside it), raises ``ValueError``: a data set is never overwritten nor mixed with stale images.
    """
    return _write_synthetic(
        out_dir,
        num_pairs=num_pairs,
        seed=seed,
        image_size=image_size,
        stages=stages,
        split=split,
        show_progress=show_progress,
    )[0]


def _write_synthetic(
    out_dir: str | Path,
    *,
    num_pairs: int,
    seed: int,
    image_size: int,
    stages: Sequence[int],
    split: str,
    show_progress: bool,
) -> tuple[Path, bool]:
    """:func:`write_synthetic_dataset`, and whether it wrote anything (False: the same data set was there)."""
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be positive, got {num_pairs}")
    stages = [int(s) for s in stages]
    if not stages or any(s not in _STAGES for s in stages):
        raise ValueError(f"stages must be a non-empty selection of {sorted(_STAGES)}, got {stages}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", split):
        raise ValueError(f"split must be a plain file-name stem, got {split!r}")
    image_size = _checked_size(image_size)
    out_dir = Path(out_dir)
    manifest = out_dir / f"{split}.jsonl"
    record_path = out_dir / f"{split}.synth.json"
    if manifest.exists() and not record_path.is_file():
        raise ValueError(
            f"{manifest} was not written by spatialscore synth (there is no {record_path}): "
            f"use another --out folder or --split (or move {manifest} away)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "split": split,
        "num_pairs": num_pairs,
        "seed": int(seed),
        "image_size": image_size,
        "stages": stages,
    }
    check_settings(
        record_path,
        settings,
        made=f"holds a {split!r} split written",
        hint=f"use another --out folder (or delete {out_dir} to write it anew)",
    )
    if manifest.is_file():
        return manifest, False
    (out_dir / "images").mkdir(exist_ok=True)

    def write(sink: Any) -> None:
        for index in tqdm(range(num_pairs), desc=f"synth {split}", unit="pair", disable=not show_progress):
            stage = stages[index * len(stages) // num_pairs]
            pair, perfect_image, perturbed_image = _generate(
                np.random.default_rng((seed, index)), stage, image_size
            )
            name = f"{split}-{index:06d}"
            paths = {}
            for role, image in (("perfect", perfect_image), ("perturbed", perturbed_image)):
                paths[role] = f"images/{name}-{role}.png"
                image.save(out_dir / paths[role], format="PNG")
            scenes = {
                role: scene.to_dict(image_size=image_size)
                for role, scene in (("perfect", pair.perfect), ("perturbed", pair.perturbed))
            }
            roles = ((False, ("perfect", "perturbed")), (True, ("perturbed", "perfect")))
            for mirror, (good, bad) in roles if _STAGES[stage].mirrored else roles[:1]:
                record = {
                    "id": f"{name}-mirror" if mirror else name,
                    "prompt": scenes[good]["prompt"],
                    "chosen": paths[good],
                    "rejected": paths[bad],
                    "subset": pair.subset,
                    "perturbed_prompt": scenes[bad]["prompt"],
                    "category": pair.category,
                    "meta": {
                        "stage": stage,
                        "mirror": mirror,
                        "seed": seed,
                        "pair_index": index,
                        "image_size": image_size,
                        "scene": scenes[good],
                        "rejected_scene": scenes[bad],
                    },
                }
                sink.write((json.dumps(record) + "\n").encode("utf-8"))

    atomic_write(manifest, write)
    return manifest, True


def cli_main(argv: list[str] | None = None) -> int:
    """``spatialscore synth``: write a synthetic preference data set and print what was written."""
    parser = argparse.ArgumentParser(
        prog="spatialscore synth", description="Write procedural spatial preference pairs (PNG + JSON Lines)."
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output folder; rerunning with the same settings writes nothing, other settings are refused",
    )
    parser.add_argument("--num-pairs", required=True, type=int, help="scene pairs (two records each)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed; the output is byte-identical for a seed")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square images in pixels (default: 64)")
    parser.add_argument(
        "--stages",
        type=int,
        nargs="+",
        default=[FULL_STAGE],
        choices=sorted(_STAGES),
        help=f"curriculum stages, spread evenly over the pairs (0 = red/blue warm-up ... 4 = two objects of all "
        f"colours ... {FULL_STAGE} = the full task, the default; a stage listed k times gets k shares)",
    )
    parser.add_argument("--split", default="train", help="manifest name: OUT/SPLIT.jsonl")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        manifest, wrote = _write_synthetic(
            args.out,
            num_pairs=args.num_pairs,
            seed=args.seed,
            image_size=args.image_size,
            stages=args.stages,
            split=args.split,
            show_progress=not args.no_progress,
        )
    except ValueError as error:
        parser.error(str(error))
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").split("\n") if line]
    if wrote:
        print(f"wrote {len(records)} records ({args.num_pairs} pairs, {2 * args.num_pairs} images) to {manifest}")
    else:
        print(f"{manifest} already holds these {len(records)} records (same settings): nothing written")
    for title, key in (("subset", "subset"), ("category", "category")):
        counts = Counter(r[key] for r in records)
        print(f"  per {title}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    stage_counts = Counter(r["meta"]["stage"] for r in records)
    print("  per stage: " + ", ".join(f"{k}={v}" for k, v in sorted(stage_counts.items())))
    return 0
