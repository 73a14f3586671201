"""Perturbations: each edits a scene so that a target relation fails.

Kinds: swap, flip, predicate, anchor, attribute swap, row permute.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from spatialscore.data.synthetic.checker import _anchor_slack, _slack
from spatialscore.data.synthetic.generate import (
    _boxes_apart,
    _centroid_range,
    _geometry,
    _inside,
    _random_in_region,
)
from spatialscore.data.synthetic.scene import (
    _GAP,
    _GEN_CLEAR,
    _OPPOSITE,
    CORNERS,
    EDGES,
    MARGIN,
    Relation,
    SceneObject,
)

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
        _inside(objects[i]) and all(_boxes_apart(objects[i], o) for k, o in enumerate(objects) if k != i) for i in moved
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
        trial[mover] = a.moved_to(bx, by + distance) if new_axis == "vertical" else a.moved_to(bx + distance, by)
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
