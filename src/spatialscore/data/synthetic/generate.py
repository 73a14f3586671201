"""Scene generation: curriculum stages, layouts and the relations a prompt states."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from spatialscore.data.synthetic.checker import _slack
from spatialscore.data.synthetic.scene import (
    _AXIS,
    _GAP,
    _GEN_CLEAR,
    _OPPOSITE,
    _PAD,
    _SHAPE_AREA,
    _THIRD,
    CORNERS,
    EDGES,
    MARGIN,
    PALETTE,
    PERTURBATIONS,
    Detection,
    Relation,
    SceneObject,
)

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
        2,
        2,
        _RED_BLUE,
        ("horizontal",),
        ("swap",),
        palette_order=True,
        predicates=("left_of",),
        relations=1,
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
