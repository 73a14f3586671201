"""The strict judge: exactly the named objects, each once, nothing else, relations holding.

Each test builds images that fooled (or would fool) the lenient centroid checker: duplicates, extra colours,
blobs of colours outside the palette, the right layout drawn twice; and images it must still accept (touching
objects, specks below the size floor), plus agreement with the procedural ground truth at several sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from spatialrl.rewards import StrictReward, reward_components
from spatialscore.data.strict import StrictChecker, classify_shape, find_objects, judge
from spatialscore.data.synthetic import (
    BACKGROUND,
    PALETTE,
    RuleChecker,
    draw_shape,
    generate_pair,
    render_scene,
)

PROMPT = "a red circle to the left of a blue square"


def canvas(*objects: tuple[str, str, tuple[int, int, int, int]], size: int = 64) -> Image.Image:
    """An image with each (colour or RGB, shape, pixel box) drawn as the renderer draws it."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for colour, shape, box in objects:
        draw_shape(draw, shape, box, PALETTE.get(colour, colour))
    return image


RED_LEFT = ("red", "circle", (8, 26, 20, 38))
BLUE_RIGHT = ("blue", "square", (40, 26, 52, 38))


def lenient(image: Image.Image, prompt: str = PROMPT) -> float:
    return RuleChecker()(images=[image], prompts=[prompt])[0]


def test_the_right_image_is_correct():
    verdict = judge(canvas(RED_LEFT, BLUE_RIGHT), PROMPT)
    assert verdict.correct and verdict.relations == 1.0 and verdict.extra == 0
    assert verdict.missing == verdict.duplicated == verdict.wrong_shape == ()
    assert sorted(o.colour for o in verdict.objects) == ["blue", "red"]


def test_a_duplicated_object_fails_although_the_centroids_still_hold():
    image = canvas(RED_LEFT, BLUE_RIGHT, ("red", "circle", (2, 2, 12, 12)))
    assert lenient(image) == 1.0  # what the policy exploited
    verdict = judge(image, PROMPT)
    assert not verdict.correct and verdict.duplicated == ("red",) and verdict.extra == 1 and verdict.has_extra
    assert verdict.relations == 0.0  # no single red object to place
    (smaller,) = verdict.extras  # the larger red counts as the named object, the smaller one as extra
    assert smaller.colour == "red" and smaller.detection.box[0] < 4 / 64 < 8 / 64 == RED_LEFT[2][0] / 64


def test_the_right_layout_drawn_twice_fails():
    twice = canvas(
        ("red", "circle", (6, 6, 16, 16)),
        ("blue", "square", (40, 6, 50, 16)),
        ("red", "circle", (6, 44, 16, 54)),
        ("blue", "square", (40, 44, 50, 54)),
    )
    assert lenient(twice) == 1.0
    verdict = judge(twice, PROMPT)
    assert not verdict.correct and verdict.duplicated == ("red", "blue") and verdict.extra == 2


@pytest.mark.parametrize("colour", ["green", "purple", (120, 80, 40)])  # other palette colours, and brown
def test_an_object_of_another_colour_is_extra(colour):
    image = canvas(RED_LEFT, BLUE_RIGHT, (colour, "diamond", (26, 48, 38, 60)))
    assert lenient(image) == 1.0
    verdict = judge(image, PROMPT)
    assert not verdict.correct and verdict.extra == 1 and verdict.missing == ()
    assert verdict.relations == 1.0  # the layout itself is right: only the extra object fails it
    assert [o.colour for o in verdict.extras] == ["unmatched" if isinstance(colour, tuple) else colour]


def test_a_missing_object_fails():
    verdict = judge(canvas(RED_LEFT), PROMPT)
    assert not verdict.correct and verdict.missing == ("blue",) and verdict.has_missing and verdict.extra == 0


def test_touching_objects_of_two_colours_are_two_objects():
    image = canvas(("red", "square", (14, 26, 28, 40)), ("blue", "square", (29, 26, 43, 40)))
    verdict = judge(image, "a red square to the left of a blue square")
    assert verdict.correct, verdict


def test_the_wrong_relation_fails_and_specks_are_ignored():
    swapped = canvas(("red", "circle", (40, 26, 52, 38)), ("blue", "square", (8, 26, 20, 38)))
    assert not judge(swapped, PROMPT).correct
    speck = canvas(RED_LEFT, BLUE_RIGHT, ("green", "square", (30, 4, 32, 6)))  # 3x3 px: 5 survive the vote
    assert judge(speck, PROMPT).correct  # below the default floor, 0.2% of the image (8 px)
    assert judge(speck, PROMPT, min_pixels=4).extra == 1


def test_shapes_are_judged_only_where_they_can_be_told_apart():
    big = canvas(("red", "square", (10, 40, 50, 80)), ("blue", "square", (70, 40, 110, 80)), size=128)
    assert judge(big, "a red square to the left of a blue square").correct
    verdict = judge(big, PROMPT)  # the prompt names a red circle
    assert not verdict.correct and verdict.wrong_shape == ("red",) and verdict.relations == 1.0
    small = canvas(("red", "square", (4, 14, 9, 19)), ("blue", "square", (20, 14, 25, 19)), size=32)
    assert judge(small, PROMPT).correct  # 6 px: too small to tell a square from a circle


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "diamond"])
@pytest.mark.parametrize("side", [18, 23, 40])  # drawn box; the vote trims tips by a pixel or two
def test_classify_shape_reads_each_drawn_shape(shape, side):
    (obj,) = find_objects(canvas(("red", shape, (20, 20, 20 + side - 1, 20 + side - 1)), size=96))
    assert obj.shape == shape and classify_shape(np.ones((20, 20), bool)) == "square"


@pytest.mark.parametrize("size", [32, 64, 128])
def test_agrees_with_the_procedural_ground_truth(size):
    """Every perfect render is right and every perturbed render wrong against the perfect prompt (all stages)."""
    for stage in (1, 3, 4, 5, 6):
        for index in range(12):
            pair = generate_pair(seed=[size, stage, index], stage=stage, image_size=size)
            prompt = pair.perfect.prompt
            assert judge(render_scene(pair.perfect, image_size=size), prompt).correct, (size, stage, index, prompt)
            assert not judge(render_scene(pair.perturbed, image_size=size), prompt).correct, (size, stage, index)


def test_checker_batches_tensors_and_checks_counts():
    images = [canvas(RED_LEFT, BLUE_RIGHT), canvas(RED_LEFT)]
    batch = torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).float() / 255
    verdicts = StrictChecker()(images=batch, prompts=[PROMPT, PROMPT])
    assert [v.correct for v in verdicts] == [True, False]
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        StrictChecker()(images=batch, prompts=[PROMPT])


def test_strict_reward_components_match_the_judge():
    images = [
        canvas(RED_LEFT, BLUE_RIGHT),
        canvas(RED_LEFT, BLUE_RIGHT, ("red", "circle", (2, 2, 12, 12))),
        canvas(RED_LEFT),
        canvas(RED_LEFT, ("green", "square", (26, 48, 38, 60))),
    ]
    batch = torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).float() / 255
    reward = StrictReward()
    parts = reward_components(reward, images=batch, prompts=[PROMPT] * 4)
    assert list(parts) == ["strict", "strict_correct", "strict_extra", "strict_missing", "strict_lenient"]
    assert parts["strict"].tolist() == parts["strict_correct"].tolist() == [1, 0, 0, 0]
    assert parts["strict_extra"].tolist() == [0, 1, 0, 1]
    assert parts["strict_missing"].tolist() == [0, 0, 1, 1]
    assert parts["strict_lenient"].tolist() == [1, 1, 0, 0]
    assert reward(images=batch, prompts=[PROMPT] * 4).tolist() == [1, 0, 0, 0]
    with pytest.raises(ValueError, match="cannot check prompt 0"):
        reward(images=batch[:1], prompts=["a cat on a mat"])


def test_clean_credit_rewards_a_clean_wrong_layout_below_a_right_one():
    swapped = canvas(("red", "circle", (40, 26, 52, 38)), ("blue", "square", (8, 26, 20, 38)))
    images = [canvas(RED_LEFT, BLUE_RIGHT), swapped, canvas(RED_LEFT, BLUE_RIGHT, ("red", "circle", (2, 2, 12, 12)))]
    batch = torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).float() / 255
    assert judge(swapped, PROMPT).clean and not judge(images[2], PROMPT).clean
    shaped = StrictReward(clean_credit=0.25)
    assert shaped(images=batch, prompts=[PROMPT] * 3).tolist() == [1.0, 0.25, 0.0]
    parts = reward_components(shaped, images=batch, prompts=[PROMPT] * 3)
    assert parts["strict"].tolist() == [1.0, 0.25, 0.0] and parts["strict_correct"].tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="clean_credit"):
        StrictReward(clean_credit=1.0)
