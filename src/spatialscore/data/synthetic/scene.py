"""Scenes as data: the palette, shapes and sizes, objects, relations, scenes and pairs, and the prompt grammar."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
