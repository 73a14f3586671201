"""Tests for spatial prompt perturbation (spatialscore.data.perturb)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from spatialscore.data.perturb import (
    KINDS,
    Edit,
    PerturbationError,
    PerturbationResult,
    RulePerturber,
    SkippedPrompt,
    apply_edits,
    cli_main,
    diff_edits,
    load_perturber,
    perturb_prompts,
    read_prompts,
)

DATA = Path(__file__).parents[1] / "data" / "perturb_prompts.jsonl"
RECORDS = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
PROMPTS = [r["prompt"] for r in RECORDS]
IDS = [r["id"] for r in RECORDS]
RULES = RulePerturber()


def spans_of(text: str, phrase: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(re.escape(phrase), text)]


def assert_consistent(
    prompt: str, result: PerturbationResult, *, allowed: tuple[int, ...], kinds: tuple[str, ...] = KINDS
) -> None:
    """Edits reproduce the perturbed prompt, do not overlap, and leave the rest byte-identical."""
    assert result.prompt == prompt
    assert apply_edits(prompt, result.edits) == result.perturbed_prompt
    assert result.perturbed_prompt != prompt
    assert result.num_perturbations == len(result.edits)
    assert result.num_perturbations in allowed
    assert result.subset == ("1-pert" if result.num_perturbations == 1 else "2-3-pert")
    edits = sorted(result.edits, key=lambda e: e.start)
    cursor, out_cursor = 0, 0
    for edit in edits:
        assert edit.kind in kinds
        assert edit.start >= cursor, "edits overlap"
        assert prompt[edit.start : edit.end] == edit.before
        assert edit.before != edit.after
        gap = prompt[cursor : edit.start]
        assert result.perturbed_prompt[out_cursor : out_cursor + len(gap)] == gap
        out_cursor += len(gap) + len(edit.after)
        cursor = edit.end
    assert result.perturbed_prompt[out_cursor:] == prompt[cursor:]


# --------------------------------------------------------------------------------------------- the data
def test_dataset_is_long_and_covers_every_kind() -> None:
    assert len(RECORDS) >= 15
    for rec in RECORDS:
        assert 35 <= len(rec["prompt"].split()) <= 120, rec["id"]
    assert {e["kind"] for r in RECORDS for e in r["expect"]} == set(KINDS)


@pytest.mark.parametrize("rec", RECORDS, ids=IDS)
def test_expected_edits_are_offered(rec: dict) -> None:
    prompt = rec["prompt"]
    offered = RULES.candidates(prompt)
    for exp in rec["expect"]:
        context = exp.get("context", exp["before"])
        windows = spans_of(prompt, context)
        hits = [
            e
            for e in offered
            if (e.kind, e.before, e.after) == (exp["kind"], exp["before"], exp["after"])
            and any(s <= e.start and e.end <= t for s, t in windows)
        ]
        assert hits, f"{rec['id']}: missing {exp}"


@pytest.mark.parametrize("rec", RECORDS, ids=IDS)
def test_must_not_touch_phrases(rec: dict) -> None:
    prompt = rec["prompt"]
    offered = RULES.candidates(prompt)
    for phrase in rec["untouched"]:
        for s, t in spans_of(prompt, phrase):
            touching = [e for e in offered if e.start < t and s < e.end]
            assert not touching, f"{rec['id']}: {phrase!r} touched by {touching}"


@pytest.mark.parametrize("rec", RECORDS, ids=IDS)
def test_candidates_match_the_prompt(rec: dict) -> None:
    for edit in RULES.candidates(rec["prompt"]):
        assert rec["prompt"][edit.start : edit.end] == edit.before
        assert edit.after != edit.before


@pytest.mark.parametrize("num, allowed", [("1", (1,)), ("2-3", (2, 3))])
def test_results_reproduce_and_keep_the_rest(num: str, allowed: tuple[int, ...]) -> None:
    for seed in range(4):
        results, skipped = perturb_prompts(PROMPTS, num=num, seed=seed)
        assert len(results) + len(skipped) == len(PROMPTS)
        for result in results:
            assert_consistent(result.prompt, result, allowed=allowed)


def test_skip_reasons() -> None:
    for num in ("1", "2-3"):
        results, skipped = perturb_prompts(PROMPTS, num=num, seed=0)
        got = {IDS[s.index]: s.reason for s in skipped}
        want = {r["id"]: r["skip"][num] for r in RECORDS if r.get("skip", {}).get(num)}
        assert got == want
        assert all(isinstance(s, SkippedPrompt) and s.prompt == PROMPTS[s.index] for s in skipped)


def test_rule_perturber_error_reports_available_phrases() -> None:
    piano = PROMPTS[IDS.index("piano_single")]
    with pytest.raises(PerturbationError) as info:
        RULES(piano, num=2, rng=random.Random(0))
    assert info.value.available == 1
    assert "only 1 perturbable phrase" in info.value.reason
    with pytest.raises(ValueError):
        RULES(piano, num=4, rng=random.Random(0))


# --------------------------------------------------------------------------------------------- randomness
def test_deterministic_for_a_seed_and_independent_of_other_prompts() -> None:
    first = perturb_prompts(PROMPTS, num="2-3", seed=7)
    assert perturb_prompts(PROMPTS, num="2-3", seed=7) == first
    others = ["A plain sentence with nothing spatial in it at all."] * len(PROMPTS)
    mixed = list(others)
    mixed[3] = PROMPTS[3]
    alone, _ = perturb_prompts(mixed, num="2-3", seed=7)
    assert alone == [r for r in first[0] if r.prompt == PROMPTS[3]]


def test_variety_across_seeds() -> None:
    prompt = PROMPTS[IDS.index("alley_lanterns")]
    outputs, kinds, counts = set(), set(), set()
    for seed in range(30):
        results, _ = perturb_prompts([prompt], num="2-3", seed=seed)
        outputs.add(results[0].perturbed_prompt)
        kinds |= {e.kind for e in results[0].edits}
        counts.add(results[0].num_perturbations)
    assert len(outputs) >= 20
    assert len(kinds) >= 3
    assert counts == {2, 3}


def test_all_kinds_get_used() -> None:
    used = set()
    for seed in range(12):
        results, _ = perturb_prompts(PROMPTS, num="1", seed=seed)
        used |= {e.kind for r in results for e in r.edits}
    assert used == set(KINDS)


def test_kind_restriction() -> None:
    flips_only = RulePerturber(kinds=["flip"])
    assert {e.kind for p in PROMPTS for e in flips_only.candidates(p)} == {"flip"}
    with pytest.raises(ValueError):
        RulePerturber(kinds=["teleport"])


# --------------------------------------------------------------------------------------------- helpers
def test_case_article_and_agreement_in_one_swap() -> None:
    text = (
        "Three clay pots are stacked on top of an upturned crate. An apple sits to the left of a vase. "
        "TO THE LEFT OF THE DOOR hangs a coat."
    )
    offered = {(e.kind, e.before, e.after) for e in RULES.candidates(text)}
    assert (
        "swap",
        "Three clay pots are stacked on top of an upturned crate",
        "An upturned crate is stacked on top of three clay pots",
    ) in offered
    assert ("swap", "An apple sits to the left of a vase", "A vase sits to the left of an apple") in offered
    assert ("predicate", "TO THE LEFT OF", "IN FRONT OF") in offered


def test_apply_edits_rejects_bad_edits() -> None:
    text = "a cup to the left of a vase"
    with pytest.raises(ValueError, match="expects"):
        apply_edits(text, [Edit("flip", 0, 1, "b", "c")])
    with pytest.raises(ValueError, match="overlaps"):
        apply_edits(text, [Edit("flip", 0, 5, "a cup", "x"), Edit("flip", 2, 5, "cup", "y")])
    with pytest.raises(ValueError, match="outside"):
        apply_edits(text, [Edit("flip", 20, 99, text[20:], "")])


def test_diff_edits_round_trip() -> None:
    a = "A red cup sits to the left of a blue vase, and a lamp stands behind the sofa."
    b = "A red cup sits to the right of a blue vase, and a lamp stands in front of the sofa."
    edits = diff_edits(a, b, kind="llm")
    assert [e.before for e in edits] == ["left", "behind"]
    assert apply_edits(a, edits) == b
    assert PerturbationResult.from_edits(a, edits).subset == "2-3-pert"


def test_invalid_num_mode() -> None:
    with pytest.raises(ValueError):
        perturb_prompts(PROMPTS[:1], num="4", seed=0)


# --------------------------------------------------------------------------------------------- plug-ins
PLUGIN = '''
from spatialscore.data.perturb import PerturbationError, PerturbationResult, diff_edits


class FirstLeftToRight:
    """Stands in for an LLM rewriter: rewrites the text, then records the edits with diff_edits."""

    def __call__(self, prompt, *, num, rng):
        if " left " not in prompt:
            raise PerturbationError("no 'left' to rewrite")
        rewritten = prompt.replace(" left ", " right ", 1)
        return PerturbationResult.from_edits(prompt, diff_edits(prompt, rewritten, kind="llm"),
                                             num_perturbations=num)


class Broken:
    def __call__(self, prompt, *, num, rng):
        return PerturbationResult(prompt, prompt + "!", [], num, "1-pert")
'''


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "perturb_plugin_for_tests.py").write_text(PLUGIN, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "perturb_plugin_for_tests"


def test_plugin_perturber_in_api(plugin_module: str) -> None:
    plugin = load_perturber(f"{plugin_module}:FirstLeftToRight")
    results, skipped = perturb_prompts(PROMPTS, num="1", seed=0, perturber=plugin)
    assert results and skipped
    for result in results:
        assert_consistent(result.prompt, result, allowed=(1,), kinds=("llm",))
    assert {s.reason for s in skipped} == {"no 'left' to rewrite"}
    _, bad = perturb_prompts(PROMPTS[:2], num="1", seed=0, perturber=load_perturber(f"{plugin_module}:Broken"))
    assert [s.reason for s in bad] == ["invalid perturber output: no edits recorded"] * 2


def test_load_perturber_errors() -> None:
    for spec in ("no_colon", "nonexistent_module_xyz:Cls", "random:NoSuchThing", "math:pi"):
        with pytest.raises(ValueError):
            load_perturber(spec)


# --------------------------------------------------------------------------------------------- CLI
def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_cli_jsonl_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"]}) + "\n" for r in RECORDS) + "\n")
    out = tmp_path / "out" / "pairs.jsonl"
    assert cli_main(["--prompts", str(src), "--out", str(out), "--num", "2-3", "--seed", "3"]) == 0
    rows = read_jsonl(out)
    skipped = read_jsonl(tmp_path / "out" / "pairs.skipped.jsonl")
    assert {r["id"] for r in skipped} == {"portrait_none", "piano_single"}
    assert {r["reason"] for r in skipped} == {
        "no spatial relation phrase found",
        "only 1 perturbable phrase, 2-3 requested",
    }
    assert len(rows) + len(skipped) == len(RECORDS)
    for row in rows:
        assert set(row) == {"id", "prompt", "perturbed_prompt", "num_perturbations", "subset", "edits"}
        edits = [Edit(**e) for e in row["edits"]]
        result = PerturbationResult(
            row["prompt"], row["perturbed_prompt"], edits, row["num_perturbations"], row["subset"]
        )
        assert_consistent(row["prompt"], result, allowed=(2, 3))
    err = capsys.readouterr().err
    assert f"{len(rows)} of {len(RECORDS)} prompts perturbed" in err
    assert "2 skipped" in err and "1 x only 1 perturbable phrase, 2-3 requested" in err
    again = tmp_path / "again.jsonl"
    assert cli_main(["--prompts", str(src), "--out", str(again), "--num", "2-3", "--seed", "3"]) == 0
    assert again.read_text() == out.read_text()


def test_cli_text_input_and_plugin(tmp_path: Path, plugin_module: str) -> None:
    src = tmp_path / "prompts.txt"
    src.write_text(PROMPTS[0] + "\n\n" + PROMPTS[IDS.index("piano_single")] + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code = cli_main(["--prompts", str(src), "--out", str(out), "--perturber", f"{plugin_module}:FirstLeftToRight"])
    assert code == 0
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [1]
    assert rows[0]["edits"][0]["kind"] == "llm" and rows[0]["subset"] == "1-pert"
    assert read_jsonl(tmp_path / "out.skipped.jsonl")[0]["id"] == 3
    assert read_prompts(src) == [(1, PROMPTS[0]), (3, PROMPTS[IDS.index("piano_single")])]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "ok"}\n{not json}\n', "prompts.jsonl:2: invalid JSON"),
        (
            '{"prompt": "ok"}\n\n{"text": "no prompt"}\n',
            "prompts.jsonl:3: expected an object with a string field",
        ),
    ],
)
def test_cli_input_errors_name_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    src = tmp_path / "prompts.jsonl"
    src.write_text(content, encoding="utf-8")
    assert cli_main(["--prompts", str(src), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_bad_perturber_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "p.txt"
    src.write_text(PROMPTS[0] + "\n")
    assert cli_main(["--prompts", str(src), "--out", str(tmp_path / "o.jsonl"), "--perturber", "nope"]) == 2
    assert "must be module:attribute" in capsys.readouterr().err
    assert cli_main(["--prompts", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "missing.txt" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- issue 13 kinds
def offered(text: str) -> set[tuple[str, str, str]]:
    return {(e.kind, e.before, e.after) for e in RULES.candidates(text)}


@pytest.mark.parametrize(
    "text, edit",
    [
        ("a lantern right of a bench", ("swap", "a lantern right of a bench", "a bench right of a lantern")),
        ("a lantern right of a bench", ("flip", "right", "left")),
        ("a goat near a tractor", ("predicate", "near", "behind")),
        ("a kettle next to a toaster", ("predicate", "next to", "above")),
        ("a spoon on side of a bowl", ("predicate", "on side of", "in front of")),
        ("a chair hidden by a curtain", ("flip", "hidden by", "in front of")),
        (
            "a chair hidden by a curtain",
            ("swap", "a chair hidden by a curtain", "a curtain hidden by a chair"),
        ),
        ("Below, a red canoe drifts past the dock.", ("flip", "Below", "Above")),
        ("A lamp stands between the armchairs.", ("predicate", "between", "behind")),
        ("The mug sits below and to the right of the clock.", ("flip", "below", "above")),
        ("The mug sits below and to the right of the clock.", ("flip", "right", "left")),
        (
            "The mug sits below and to the right of the clock.",
            (
                "swap",
                "The mug sits below and to the right of the clock",
                "The clock sits below and to the right of the mug",
            ),
        ),
        ("a toaster below a traffic light", ("flip", "below", "above")),
        ("An easel occupies the midground.", ("anchor", "midground", "foreground")),
        ("In the distance, a windmill turns slowly.", ("flip", "In the distance", "In the foreground")),
        ("The background is filled with pine trees.", ("flip", "background", "foreground")),
        ("A delivery van is parked on the gravel shore.", ("predicate", "on", "behind")),
        # long descriptive prose
        ("A teapot cools on a tray, and to its right are two small cups.", ("flip", "right", "left")),
        ("On the right stands a tall lamp with a paper shade.", ("flip", "right", "left")),
        ("Overhead, strings of paper lanterns sway in the breeze.", ("flip", "Overhead", "Below")),
        ("The road winds into the hazy distance.", ("flip", "into the hazy distance", "into the foreground")),
        ("In the far distance, a windmill turns.", ("flip", "In the far distance", "In the foreground")),
        ("A row of poplars fills the background.", ("flip", "background", "foreground")),
        ("The background displays a row of barns.", ("flip", "background", "foreground")),
        ("The midground showcases a wooden barn.", ("anchor", "midground", "background")),
        ("A scholar stands amidst towering bookshelves.", ("predicate", "amidst", "next to")),
        ("A small cabin is nestled among the pines.", ("predicate", "among", "behind")),
        ("The statue is flanked by two marble columns.", ("predicate", "flanked by", "in front of")),
        ("A journal lies open before him, and a quill rests beside it.", ("flip", "before", "behind")),
        ("A busker plays under the glow of a nearby streetlamp.", ("flip", "nearby", "distant")),
        ("Her face is turned towards the viewer.", ("flip", "towards", "away from")),
        ("The gazebo is framed centrally against the lake.", ("anchor", "centrally", "off-center")),
        ("Surrounding the old well, a ring of daisies blooms.", ("predicate", "Surrounding", "Next to")),
        ("The shelves surrounding him hold dusty atlases.", ("predicate", "surrounding", "behind")),
        ("Two ferns, blurred in the periphery, frame the scene.", ("anchor", "in the periphery", "at the center")),
    ],
)
def test_relations_the_finder_used_to_miss(text: str, edit: tuple[str, str, str]) -> None:
    assert edit in offered(text)


def test_swaps_keep_whole_noun_phrases() -> None:
    framed = offered("a picture of a kettle left of a lamp")
    assert ("swap", "a kettle left of a lamp", "a lamp left of a kettle") in framed
    assert not any(kind == "swap" and "picture" in before for kind, before, _ in framed)
    # an object whose description starts like framing text moves whole when a verb follows it
    hung = offered("A painting of a ship hangs above a desk.")
    assert (
        "swap",
        "A painting of a ship hangs above a desk",
        "A desk hangs above a painting of a ship",
    ) in hung
    assert not offered("The poster shows the contrast between a white mug and a black kettle.")
    verb = offered("A girl holding a kite stands left of a tree.")
    assert not any(kind == "swap" for kind, _, _ in verb)  # "holding" would be cut


@pytest.mark.parametrize(
    "text",
    [
        "The branch bends under the weight of the snow.",
        "A tractor rolls away, leaving behind a trail of mud.",
        "A bear rears up and stands on its hind legs.",
        "A brooch glints under the morning sunlight.",
        "A drummer pauses in the middle of a routine.",
        "The floor beneath the table is covered in crumbs.",
        "The sky above is streaked with pink.",
        "Above, the sky is streaked with pink.",
        "The only part left of the castle is a tower.",
        "The sun dips below the horizon behind a red barn.",
        "A tent is pitched on the verge of the lane.",
        "A hawk, towering above it all, circles the valley.",
        "A kiosk stands on the busy waterfront.",
        "The scene is framed from a vantage point atop a hill.",
        "Shadows fall on the stone terrace beneath them.",
        "A bride poses in front of the camera with her bouquet.",
        "Overhead, the sky glows orange.",
        "We are on the right track, at the right time.",
        "He keeps his distance from the crowd.",
        "She dances amid the chaos of the festival.",
        "The boy sits surrounded by an aura of calm.",
        "He finished the letter before her husband arrived.",
        "A dog sleeps nearby.",
        "The surrounding hills glow in the dusk.",
        "Bright patches of sunlight fall amid areas of deep shadow.",
        "He wears a velvet coat, its rich textures surrounding him.",
    ],
)
def test_non_spatial_and_immovable_phrases_are_left_alone(text: str) -> None:
    assert not offered(text)


def test_frame_relations_only_flip() -> None:
    framed = offered("To the right of the frame, an old bicycle leans on a fence.")
    assert framed == {("flip", "right", "left")}


def test_no_op_flips_stale_mentions_and_corners() -> None:
    twins = offered("a phone in front of a phone")
    assert twins and not any(kind in {"flip", "swap"} for kind, _, _ in twins)
    stale = offered("A fox sits to the left of a hare. The hare on the right nibbles clover.")
    assert ("flip", "left", "right") not in stale
    assert ("flip", "left of a hare. The hare on the right", "right of a hare. The hare on the left") in stale
    corners = offered("A map hangs in the top-left corner and a clock hangs in the top-right corner.")
    assert ("anchor", "right", "left") not in corners and ("anchor", "left", "right") not in corners
    assert ("anchor", "top", "bottom") in corners


def test_every_result_passes_the_validity_rules() -> None:
    from spatialscore.data.perturb_validity import check_perturbation

    texts = [r["prompt"] for r in RECORDS] + [
        "A fox sits to the left of a hare. The hare on the right nibbles clover.",
        "a picture of a kettle left of a lamp",
        "The mug sits below and to the right of the clock, and a candle stands in front of the mug.",
    ]
    for num in ("1", "2-3"):
        for seed in range(3):
            results, _ = perturb_prompts(texts, num=num, seed=seed)
            for res in results:
                assert check_perturbation(res.prompt, res.perturbed_prompt, res.edits) == [], res


def test_unverified_rules_offer_more_than_verified() -> None:
    text = "A fox sits to the left of a hare. The hare on the right nibbles clover."
    raw = {(e.kind, e.before, e.after) for e in RulePerturber(verify=False).candidates(text)}
    assert ("flip", "left", "right") in raw and ("flip", "left", "right") not in offered(text)


def test_overhead_adjective_flips_unless_its_clause_says_up_or_down() -> None:
    rules = RulePerturber()
    assert [(e.kind, e.before, e.after) for e in rules.candidates("An overhead lamp lights the desk.")] == [
        ("flip", "An overhead", "A ground-level")
    ]
    assert rules.candidates("Overhead lights beam down on the rink.") == []
    assert not [e for e in rules.candidates("Stalls stand beneath a web of overhead tarps.") if "overhead" in e.before]


def test_depth_stale_mentions_are_not_offered() -> None:
    """A foreground/background flip that would leave a later mention of the same object stale is dropped."""
    prompt = "In the background, a lone kayak floats quietly on the horizon. A heron stands in the foreground."
    offered = {(e.before, e.after) for e in RulePerturber().candidates(prompt)}
    assert ("background", "foreground") not in offered
    assert ("foreground", "background") in offered


def test_label_repairs_stay_small() -> None:
    """A stale left/right label is repaired in the same edit, but not an object named on many sides."""
    prompt = (
        "A fox sits to the left of a hare. The hare on the right eats. The hare on the right naps. "
        "The hare on the right hops."
    )
    assert not [e for e in RulePerturber().candidates(prompt) if e.before.startswith("left of a hare")]


def test_scrutiny_mats_and_near_sides_are_not_offered() -> None:
    assert not offered("A diver twists under the intense scrutiny of the judges.")
    assert offered("A diver twists under the diving board.")
    mat = offered("A gymnast hangs in a leap above the foam mat.")
    assert mat and ("flip", "above", "below") not in mat
    prompt = (
        "The kettle sits on a shelf to the left of the stove, near the toaster. "
        "The toaster stands on a stool to the left of the stove."
    )
    assert not [e for e in RULES.candidates(prompt) if e.before == "left"]
    assert [e for e in RULES.candidates(prompt) if e.before == "to the left of"]  # predicates stay


@pytest.mark.parametrize(
    "text, edit",
    [
        ("Gulls circle over the pebbly foreground.", ("flip", "foreground", "background")),
        ("Boats bob in the choppy midground water.", ("anchor", "midground", "foreground")),
        ("A tram rolls in from the right foreground.", ("flip", "right", "left")),
        ("A hedge maze stretches across the foreground.", ("flip", "foreground", "background")),
        ("A barn sits on the hill, and a distant windmill turns.", ("flip", "distant", "nearby")),
        ("Cups are arranged upon a low wooden tray.", ("flip", "upon", "under")),
        ("Three friends sit quietly around the campfire.", ("predicate", "around", "behind")),
        ("Her red scarf flutters, the midground is filled with tents.", ("anchor", "midground", "background")),
    ],
)
def test_long_prompt_regions_distance_and_rings(text: str, edit: tuple[str, str, str]) -> None:
    assert edit in offered(text)


def test_focus_sounds_horizons_and_walks_are_not_regions_or_rings() -> None:
    assert not offered("The portrait has a blurred background.")
    assert not offered("A fox listens to the distant call of an owl.")
    assert not offered("Crickets chirp over distant truck horns.")
    ridge = [e.start for e in RULES.candidates("A distant mountain ridge meets the distant horizon.")]
    assert ridge == [2]  # the ridge may come near, the horizon may not
    assert not offered("He walks around the town.")
    assert not offered("Around noon, the market fills.")
    # a progression from the foreground to the horizon keeps its start; the camera's hill is not in the picture
    assert ("flip", "foreground", "background") not in offered("Dunes roll from the sandy foreground to the horizon.")
    assert ("flip", "foreground", "background") in offered("A trail winds from the foreground into the midground.")
    assert not offered("The scene is viewed from a vantage point atop a nearby ridge.")


def test_label_repairs_do_not_flip_relations_of_other_objects() -> None:
    """ "is to the right of" is a relation, not a label "the right <noun>": a flip is repaired by its own label
    only, not by also flipping an unrelated pair's relation."""
    prompt = (
        "The grey goat on the left stands to the left of the white goat. "
        "The black goat is to the right of the spotted goat."
    )
    edits = {(e.before, e.after) for e in RULES.candidates(prompt)}
    assert ("left stands to the left", "right stands to the right") in edits
    assert not [b for b, _ in edits if "left" in b and "spotted" in b]


def test_round_4_stale_edits_are_not_offered() -> None:
    """Edits the round-4 validity rules reject never reach the candidates; the valid ones stay."""
    rules = RulePerturber()
    prompt = "A grey horse stands on the meadow. A brown horse stands next to the grey horse."
    offered = {e.after for e in rules.candidates(prompt) if e.before == "next to"}
    assert offered and not offered & {"above", "below"}
    prompt = "A red scooter fills the foreground while the calm sea shines in the midground."
    offered = {(e.before, e.after) for e in rules.candidates(prompt)}
    assert ("foreground", "background") not in offered and ("midground", "background") in offered
