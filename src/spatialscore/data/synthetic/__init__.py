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

The package: ``scene``, ``render``, ``checker``, ``generate``, ``perturbations``, ``pairs``, ``write``; every
public name is importable from here."""

from __future__ import annotations

from spatialscore.data.synthetic.checker import (
    UNMATCHED,
    RuleChecker,
    colour_labels,
    detect_objects,
    image_list,
    majority_vote,
    parse_prompt,
    relation_score,
)
from spatialscore.data.synthetic.pairs import generate_pair
from spatialscore.data.synthetic.render import draw_shape, render_scene
from spatialscore.data.synthetic.scene import (
    BACKGROUND,
    CORNERS,
    EDGES,
    MARGIN,
    PALETTE,
    PERTURBATIONS,
    SHAPES,
    SIZES,
    Detection,
    Relation,
    Scene,
    SceneObject,
    ScenePair,
)
from spatialscore.data.synthetic.write import cli_main, synth_command, write_synthetic_dataset

__all__ = [
    "BACKGROUND",
    "CORNERS",
    "Detection",
    "EDGES",
    "MARGIN",
    "PALETTE",
    "PERTURBATIONS",
    "Relation",
    "RuleChecker",
    "SHAPES",
    "SIZES",
    "Scene",
    "SceneObject",
    "ScenePair",
    "UNMATCHED",
    "cli_main",
    "colour_labels",
    "detect_objects",
    "draw_shape",
    "generate_pair",
    "image_list",
    "majority_vote",
    "parse_prompt",
    "relation_score",
    "render_scene",
    "synth_command",
    "write_synthetic_dataset",
]
