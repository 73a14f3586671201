"""Verified pairs: a scene and its perturbed twin, rendered and checked (generate_pair)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from spatialscore.data.synthetic.checker import _slack, detect_objects
from spatialscore.data.synthetic.generate import (
    _ANCHOR_PROBABILITY,
    _DEPTH_PROBABILITY,
    _ROW_PROBABILITY,
    _STAGES,
    FULL_STAGE,
    _candidate_relations,
    _choose_relations,
    _conflicts,
    _geometry,
    _layout_ok,
    _place_all,
    _StageSpec,
)
from spatialscore.data.synthetic.perturbations import _OPERATIONS, _TARGET_AXES, _index
from spatialscore.data.synthetic.render import render_scene
from spatialscore.data.synthetic.scene import (
    _GEN_CLEAR,
    _PIXEL_CLEAR,
    _PIXEL_CLEAR_DEPTH,
    BEHIND_SCALE,
    CORNERS,
    EDGES,
    PERTURBATIONS,
    SHAPES,
    SIZES,
    Detection,
    Relation,
    Scene,
    SceneObject,
    ScenePair,
)


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
    rng: np.random.Generator, stage: int, plan: Sequence[str], *, palette_order: bool = False
) -> tuple[Scene, Scene, set[int]] | None:
    """One attempt at a scene pair: perfect scene, perturbed scene and the indices of the changed relations.

    Lay out the objects, pick one target relation per planned perturbation, perturb, then fill the prompt
    with relations that clearly hold in both scenes (``palette_order``: every stage names pairs in palette
    order, as stages 0-1 do). None when this draw does not work out.
    """
    spec = _STAGES[stage]
    if palette_order:
        spec = dataclasses.replace(spec, palette_order=True)
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
            Relation("in_front_of", (front, back)) if rng.random() < 0.5 else Relation("behind", (back, front))
        )
    targets: list[Relation] = []
    for kind in plan:
        options = [
            r
            for r in dict.fromkeys([*required, *candidates])
            if r not in targets and _suits(kind, r, placed) and not any(_conflicts(r, q) for q in required if q != r)
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
    rng: np.random.Generator, stage: int, image_size: int, *, palette_order: bool = False
) -> tuple[ScenePair, Image.Image, Image.Image]:
    """Draw a perturbation plan (1 kind, or 2-3 distinct kinds at the full stage), then pairs until one
    verifies on the rendered pixels."""
    if stage not in _STAGES:
        raise ValueError(f"stage must be one of {sorted(_STAGES)}, got {stage}")
    kinds = _STAGES[stage].perturbations
    count = int(rng.choice((1, 2, 3), p=(0.5, 0.3, 0.2))) if _STAGES[stage].multi_perturbation else 1
    plan = [str(k) for k in rng.choice(kinds, count, replace=False)]
    plan.sort(key=PERTURBATIONS.index)
    for _ in range(5000):
        drawn = _draw_pair(rng, stage, plan, palette_order=palette_order)
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
            and _consistent(scene.relations, perturbed.relations, changed, found, perturbed_found, _PIXEL_CLEAR)
        ):
            return ScenePair(scene, perturbed, tuple(plan), stage), image, perturbed_image
    raise RuntimeError(f"could not generate a verified stage-{stage} {'+'.join(plan)} pair at {image_size} px")


def generate_pair(
    *, seed: int | Sequence[int], stage: int = FULL_STAGE, image_size: int = 64, palette_order: bool = False
) -> ScenePair:
    """One verified perfect/perturbed scene pair; ``seed=(dataset_seed, pair_index)`` reproduces a record.

    Verified on the rendered ``image_size`` images: the perfect image satisfies every original relation,
    the perturbed image every perturbed relation, and each image clearly violates exactly the changed ones.
    ``palette_order`` names the two objects of every pair relation in palette order (red before blue) at any
    stage, so that a relation word, not word order, tells a prompt from its mirror (for text encoders that
    barely read word order, like the tiny random ones of the embedded RL).
    """
    return _generate(np.random.default_rng(seed), stage, _checked_size(image_size), palette_order=palette_order)[0]


def _checked_size(image_size: int) -> int:
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 px (objects stay a few pixels wide), got {image_size}")
    return image_size
