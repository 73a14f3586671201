"""Tests for the automatic validity rules of perturbed prompts (spatialscore.data.perturb_validity)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spatialscore.data.perturb import Edit, RulePerturber, apply_edits, diff_edits
from spatialscore.data.perturb_validity import check_perturbation


def edit_once(prompt: str, before: str, after: str) -> tuple[str, list[Edit]]:
    """One edit replacing the first occurrence of ``before``."""
    start = prompt.index(before)
    edit = Edit("test", start, start + len(before), before, after)
    return apply_edits(prompt, [edit]), [edit]


def problems(prompt: str, before: str, after: str) -> list[str]:
    perturbed, edits = edit_once(prompt, before, after)
    return check_perturbation(prompt, perturbed, edits)


def rewrite_problems(prompt: str, perturbed: str) -> list[str]:
    return check_perturbation(prompt, perturbed, diff_edits(prompt, perturbed, kind="llm"))


# --------------------------------------------------------------------------------------------- valid
@pytest.mark.parametrize(
    "prompt, before, after",
    [
        ("A kettle stands to the left of a toaster.", "left", "right"),
        (
            "Three jars sit behind a bread bin.",
            "Three jars sit behind a bread bin",
            "A bread bin sits behind three jars",
        ),
        ("A painting of a lighthouse hangs above a desk.", "above", "below"),
        (
            "A close-up photo of a mug in front of a spoon",
            "a mug in front of a spoon",
            "a spoon in front of a mug",
        ),
        (
            "A green bowl on the left and a white plate on the right.",
            "green bowl on the left and a white",
            "white bowl on the left and a green",
        ),
        ("From left to right: a pear, a plum, a fig.", "a pear, a plum", "a plum, a pear"),
        ("The upper drawer is open.", "upper", "lower"),
        ("A scarf lies in the top-left corner of the bed.", "top-left", "top-right"),
        ("A heron stands next to a boat on the shore.", "next to", "behind"),
        ("A heron stands amidst tall reeds.", "amidst", "next to"),
        ("A lamp glows in a nearby window.", "nearby", "distant"),
        ("Her face is turned towards the camera.", "towards", "away from"),
        ("A map lies open before him.", "before", "behind"),
        (
            "A vase filled with lilies sits left of a clock.",
            "A vase filled with lilies sits left of a clock",
            "A clock sits left of a vase filled with lilies",
        ),
    ],
)
def test_valid_edits_pass(prompt: str, before: str, after: str) -> None:
    assert problems(prompt, before, after) == []


def test_word_level_rewrites_pass() -> None:
    prompt = "a lantern to the left of a basket on a bench"
    assert rewrite_problems(prompt, "a basket to the left of a lantern on a bench") == []
    assert rewrite_problems(prompt, "a lantern in front of a basket on a bench") == []
    assert (
        rewrite_problems(
            "A boy holding a kite stands left of a bicycle.", "A bicycle stands left of a boy holding a kite."
        )
        == []
    )


def test_the_rule_engine_candidates_of_the_test_prompts_pass() -> None:
    """The rules alone (no built-in verification) make valid edits on the hand-written test prompts."""
    rules = RulePerturber(verify=False)
    data = Path(__file__).parents[1] / "data" / "perturb_prompts.jsonl"
    for line in data.read_text(encoding="utf-8").splitlines():
        prompt = json.loads(line)["prompt"]
        for edit in rules.candidates(prompt):
            assert check_perturbation(prompt, apply_edits(prompt, [edit]), [edit]) == [], edit


# --------------------------------------------------------------------------------------------- invalid
def test_inconsistent_records() -> None:
    prompt = "a cup left of a vase"
    assert check_perturbation(prompt, prompt, []) == ["no edits recorded"]
    assert check_perturbation(prompt, "a cup right of a vase", [Edit("flip", 6, 10, "left", "above")]) == [
        "applying the edits does not give the perturbed prompt"
    ]
    assert "do not fit" in check_perturbation(prompt, "x", [Edit("flip", 0, 3, "xyz", "x")])[0]
    same = [Edit("flip", 6, 10, "left", "left")]
    assert check_perturbation(prompt, prompt, same) == ["the perturbed prompt equals the original"]


def test_non_relation_words_changed() -> None:
    got = problems("a yellow towel right of a sink", "yellow", "green")
    assert got and "words other than relation words changed" in got[0]
    assert rewrite_problems("She left the umbrella by the door.", "She right the umbrella by the door.")
    assert rewrite_problems("the right answer is a cat left of a dog", "the left answer is a cat left of a dog")


def test_framing_text_dragged_into_a_swap() -> None:
    prompt = "a photo of a kite above a bench"
    got = problems(prompt, prompt, "a bench above a photo of a kite")
    assert got and "framing text moved into an object phrase" in got[0]
    assert problems(prompt, "a kite above a bench", "a bench above a kite") == []


def test_noun_phrase_cut_at_a_verb_or_comma() -> None:
    assert problems(
        "A candle flickers beside a mirror.",
        "A candle flickers beside a mirror",
        "A mirror beside a candle flickers",
    )
    assert problems(
        "A spoon, a fork left of a knife.",
        "A spoon, a fork left of a knife",
        "A knife left of a spoon, a fork",
    )
    assert rewrite_problems(
        "A girl holding a balloon stands left of a tree.", "A girl holding a tree stands left of a balloon."
    )


def test_abstract_argument_and_between_with_one_argument() -> None:
    prompt = "The painting shows the tension between a calm lake and a burning forest."
    assert problems(prompt, "the tension between a calm lake", "a calm lake between the tension")
    got = problems("A goat stands beside a fence.", "beside", "between")
    assert got == ["'between' in 'between' has only one argument 'a fence'"]
    assert problems("A goat stands between two fences.", "between", "behind") == []


@pytest.mark.parametrize(
    "prompt, before, after",
    [
        ("The shelf sags under the weight of old atlases.", "under", "on top of"),
        ("A tractor rolls away, leaving behind deep ruts.", "behind", "in front of"),
        ("A bear rears up on its hind legs.", "on", "under"),
        ("A brooch glints under the evening sunlight.", "under", "above"),
        ("A drummer stops in the middle of a performance.", "in the middle of", "on the left side of"),
    ],
)
def test_non_spatial_phrases_are_not_edited(prompt: str, before: str, after: str) -> None:
    assert problems(prompt, before, after)


def test_no_op_flips_and_converses() -> None:
    assert problems("a mug in front of a mug", "in front of", "behind") == [
        "the arrangement does not change (the new relation says the same as the old one)"
    ]
    assert problems("a sock left of a shoe", "a sock left of a shoe", "a shoe right of a sock")
    assert problems("a mug beside a spoon", "a mug beside a spoon", "a spoon beside a mug")
    assert problems("A Cup left of a vase", "A Cup", "A cup") == [
        "the perturbed prompt describes the same arrangement (only case or articles changed)"
    ]


def test_implausible_landmark_flips() -> None:
    assert problems("The cat beneath the armchair is asleep.", "beneath", "above") == []
    assert problems("The rug beneath the armchair is red.", "beneath", "above") == [
        "implausible: 'the rug' (a floor covering) placed above something"
    ]
    assert problems("The floor beneath the armchair is wet.", "beneath", "above") == [
        "implausible: 'the floor' placed above or on something"
    ]
    assert "implausible: 'the sky' placed below something" in problems("The sky above is pale.", "above", "below")


def test_stale_left_right_and_same_corner() -> None:
    prompt = "A fox sits to the left of a hare. The hare on the right nibbles clover."
    got = problems(prompt, "left", "right")
    assert got == ["'hare' is now placed both left and right (the mention 'on the right' not updated?)"]
    assert problems(prompt, "A fox sits to the left of a hare", "A hare sits to the left of a fox")
    corners = "A map hangs in the top-left corner and a clock in the top-right corner."
    assert problems(corners, "top-right", "top-left") == ["two mentions now name the same position 'top-left'"]
    assert problems(corners, "top-right", "bottom-right") == []
    labels = "The left jar is amber, the right one is clear."
    assert problems(labels, "right", "left") == ["two mentions now name the same position 'left'"]


def test_the_frame_and_the_camera_are_not_objects() -> None:
    prompt = "A tall cactus stands to the left of the frame."
    assert problems(prompt, "left", "right") == []
    assert problems(prompt, "to the left of", "above") == [
        "relation 'above' places something relative to 'the frame', the picture or its viewer"
    ]
    assert problems("A bride poses in front of the camera.", "in front of", "behind")
    assert problems("A clock hangs to the left of the picture.", "to the left of", "above") == []
    assert problems("A clock sits next to the white picture frame.", "next to", "above") == []


@pytest.mark.parametrize(
    "prompt, before, after, stale",
    [
        (
            "In the background, a lone kayak with a red hull floats quietly on the horizon.",
            "background",
            "foreground",
            "on the horizon",
        ),
        (
            "A low hedge in the background is behind the two benches.",
            "background",
            "foreground",
            "behind the two benches",
        ),
        (
            "A wooden gate stands in the background. Beyond the meadow, the gate is behind all the cows.",
            "background",
            "foreground",
            "behind all the cows",
        ),
        (
            "A tent is in front of the cabin. The tent is in front of the cabin, near a creek.",
            "in front of",
            "behind",
            "in front of the cabin",
        ),
        (
            "A lamp glows at the center of the stage. The lamp at the center flickers.",
            "at the center",
            "in the periphery",
            "at the center",
        ),
        (
            "Surrounding the fountain, a crowd of children, laughing loudly, encircle it.",
            "Surrounding",
            "In front of",
            "encircle it",
        ),
        (
            "There is a row of parked bikes on the left side, which is to the left of all the runners.",
            "left of all",
            "right of all",
            "on the left side",
        ),
        (
            "In the background, we can see tall pines and a red barn. The background features tall pines and a red"
            " barn.",
            "background",
            "foreground",
            "The background features",
        ),
        (
            "In the background we can see a shed, a wheelbarrow and pine trees. The background features a stone"
            " wall and a pine tree.",
            "The background",
            "The foreground",
            "In the background",
        ),
        (
            "Two goats, standing in front of the hay bales, closer to the camera, chew slowly.",
            "in front of",
            "behind",
            "closer to the camera",
        ),
        (
            "There are goats lying on the straw in the lower part of the pen, situated in front of the goats standing"
            " on the straw, closer to the camera.",
            "in front of",
            "behind",
            "closer to the camera",
        ),
        (
            "In the background we can see a fence and wooden sticks, a tree, and grass. The background features a"
            " fenced area with wooden posts and some trees, indicating a farm.",
            "The background",
            "The foreground",
            "In the background",
        ),
        (
            "The girl in a red coat is to the left of the bench and further back on the path.",
            "to the left of",
            "in front of",
            "further back",
        ),
        # round 4: the vertical axis and image depth
        # what "beneath them" stood under is no longer on the desk (the desk now above it, or beside it)
        (
            "A stack of old letters is arranged upon a time-worn oak desk. The lens catches the grain of the worn"
            " desk beneath them.",
            "upon",
            "under",
            "beneath them",
        ),
        (
            "A stack of old letters is arranged upon a time-worn oak desk. The lens catches the grain of the worn"
            " desk beneath them.",
            "upon",
            "next to",
            "beneath them",
        ),
        (
            "A kitten dozes on top of the bookcase. The bookcase under the kitten is made of pine.",
            "on top of",
            "below",
            "under the kitten",
        ),
        # upper part of the ground = far: a dog lying on the road there is not in the foreground
        (
            "A tired dog lies on the road at the bottom of the photo, in the foreground.",
            "bottom",
            "top",
            "in the foreground",
        ),
        # the subject of "are in front of" is the goats, not the bucket they eat from
        (
            "The goats eating from a bucket are in front of the gate, and the gate is behind all the goats.",
            "in front of",
            "behind",
            "behind all the goats",
        ),
    ],
)
def test_stale_depth_region_vertical_and_around_mentions(prompt: str, before: str, after: str, stale: str) -> None:
    """Moving an object along an axis while another mention of it still says the opposite is invalid."""
    got = problems(prompt, before, after)
    assert len(got) == 1 and f"(the mention {stale!r} not updated?)" in got[0], got


@pytest.mark.parametrize(
    "prompt, before, after",
    [
        ("In the background, a lone kayak floats. A gull dives on the horizon.", "background", "foreground"),
        ("A red barn sits in the foreground. The silo in the foreground is rusty.", "foreground", "background"),
        ("In the foreground, a bench stands. In the background, trees sway.", "foreground", "background"),
        ("A black goat stands in the foreground. A brown goat is behind the fence.", "foreground", "background"),
        (
            "A lamp stands at the center of the stage. The chair at the periphery is empty.",
            "at the center",
            "on the left side",
        ),
        ("Surrounding the fountain, a crowd of children play. A dog sleeps near it.", "Surrounding", "In front of"),
        ("A woman with bright eyes stands beside a canvas.", "beside", "behind"),
    ],
)
def test_same_word_for_another_object_is_not_stale(prompt: str, before: str, after: str) -> None:
    assert problems(prompt, before, after) == []


def test_water_surface_and_graded_center() -> None:
    assert problems("Pelicans skim above the gentle surf.", "above", "below") == [
        "implausible: something placed below 'the gentle surf'"
    ]
    assert problems("the crowd, barely in the periphery, waits.", "in the periphery", "at the center") == [
        "'barely' cannot grade 'at the center' (a point is not barely or partly reached)"
    ]
    assert problems("the crowd, clearly in the periphery, waits.", "in the periphery", "at the center") == []


def test_overhead_as_an_adjective() -> None:
    assert problems("An overhead lamp lights the desk.", "An overhead", "A ground-level") == []
    assert problems("Overhead, paper lanterns sway.", "Overhead", "Below") == []


# --------------------------------------------------------------------------------------------- round 3 rules
def test_near_with_sides_of_a_third_object() -> None:
    """ "A near B" cannot survive A and B moving to opposite sides of the same third object."""
    prompt = (
        "The kettle sits on a shelf to the left of the stove, near the toaster. "
        "The toaster stands on a stool to the left of the stove."
    )
    got = problems(prompt, "left", "right")
    assert len(got) == 1 and "which it is near" in got[0], got
    # the same flip is fine when the two are placed against different objects
    other = "The kettle sits to the left of the stove, near the toaster. The toaster stands to the left of the sink."
    assert problems(other, "left", "right") == []


def test_region_summaries_and_comparatives_that_stay_consistent() -> None:
    assert problems("The girl in a red coat is to the left of the bench and further back.", "left", "right") == []
    assert problems("The foreground features a wooden bench. A lamp post stands behind it.", "fore", "back") == []
    # a table lamp is not the table: "the table" moving left does not contradict the lamp on the right
    prompt = "A table lamp stands in the right part of the room. The chair is in front of the table."
    assert problems(prompt, "in front of", "to the left of") == []


def test_this_person_names_the_person_of_the_sentence_before() -> None:
    prompt = (
        "There is a person walking a grey dog. This person is located in the left part of the image. "
        "There is a person pushing a red pram. This person is located in the right part of the image. "
        "The person walking a grey dog is to the left of the person pushing a red pram."
    )
    got = problems(prompt, "to the left of the person", "to the right of the person")
    assert got and all("not updated?" in p for p in got), got
    assert problems(prompt, "to the left of the person", "in front of the person") == []


def test_scrutiny_is_not_a_place_and_nothing_goes_under_a_mat() -> None:
    got = problems("A diver twists under the watchful scrutiny of the judges.", "under", "in front of")
    assert "an edit changes the non-spatial phrase 'under the watchful scrutiny'" in got
    assert problems("An acrobat hangs in a leap above the rubber mat.", "above", "below") == [
        "implausible: something placed below 'the rubber mat' (a floor covering)"
    ]
    assert problems("A coin lies beneath the yoga mat.", "beneath", "on top of") == []


# --------------------------------------------------------------------------------------------- round 4 rules
def test_nothing_beyond_the_sea_or_the_mountains_of_its_sentence() -> None:
    prompt = "A bike's wheels and frame fill the foreground while the calm sea shines in the midground."
    assert problems(prompt, "foreground", "background") == [
        "'the background' now puts something beyond the sea of its sentence"
    ]
    assert problems(prompt, "midground", "background") == []  # the sea moves further away: fine
    prompt = "In the foreground a fishing hut stands, while snowy mountains rise in the midground."
    assert problems(prompt, "foreground", "background") == [
        "'In the background' now puts something beyond the mountain of its sentence"
    ]
    # no landmark, or the landmark is what moves
    assert problems("A red kite dances in the foreground while a dog runs in the midground.", "fore", "back") == []
    assert (
        problems("Cliffs fill the foreground while the sea glints in the midground.", "midground", "foreground") == []
    )


def test_things_standing_on_the_ground_are_not_stacked() -> None:
    prompt = "A grey horse stands on the meadow. A brown horse stands next to the grey horse."
    assert problems(prompt, "next to", "above") == [
        "implausible: two of the horses, which stand on the ground here, placed one above the other"
    ]
    assert problems(prompt, "next to", "behind") == []
    assert (
        problems("A grey horse stands on the meadow. A hawk circles next to the grey horse.", "next to", "above") == []
    )
    assert problems("A cat sits on the shelf. A small cat sleeps next to the cat.", "next to", "above") == []


@pytest.mark.parametrize(
    "prompt, before, after",
    [
        ("A stack of old letters is arranged upon a writing desk. A cat sleeps beneath it.", "upon", "under"),
        ("A paper lantern hangs from a hook at the bottom of the photo, in the foreground.", "bottom", "top"),
        ("A tired dog lies on the road at the bottom of the photo.", "bottom", "top"),
        # two mentions introduced with "a" are two goats, however alike
        (
            "A black goat stands in the lower part of the image. There is also a black goat near the gate in the"
            " lower part of the image.",
            "lower part of the image.",
            "upper part of the image.",
        ),
        # "on the desk there are pens" places the pens, not the stool before the comma
        (
            "The stool is in front of the desk. There is a wooden stool, on the desk there are pens.",
            "in front of",
            "below",
        ),
    ],
)
def test_round_4_rules_leave_valid_edits_alone(prompt: str, before: str, after: str) -> None:
    assert problems(prompt, before, after) == []
