"""Tests for the procedural spatial scenes, the perturbations, the manifest writer and the rule checker."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from spatialscore.data.synthetic import (
    PALETTE,
    PERTURBATIONS,
    Relation,
    RuleChecker,
    Scene,
    cli_main,
    detect_objects,
    generate_pair,
    parse_prompt,
    relation_score,
    render_scene,
    write_synthetic_dataset,
)

STAGES = (0, 1, 2, 3, 4, 5, 6)
MIRRORED_STAGES = STAGES[1:]  # stage 0 is the mirror-free warm-up
PAIRS_PER_STAGE = 60


@pytest.fixture(scope="module")
def pairs():
    """(pair, perfect image, perturbed image) for many seeds of every stage."""
    out = []
    for stage in STAGES:
        for index in range(PAIRS_PER_STAGE):
            pair = generate_pair(seed=(1234, stage, index), stage=stage)
            out.append((pair, render_scene(pair.perfect), render_scene(pair.perturbed)))
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    manifest = write_synthetic_dataset(out, num_pairs=60, seed=7, stages=MIRRORED_STAGES, show_progress=False)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    return manifest, records


def _as_chw(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0


def _violated(image: Image.Image, prompt: str) -> int:
    relations = parse_prompt(prompt)
    return round(len(relations) * (1.0 - relation_score(image, prompt)))


# ----------------------------------------------------------------------------------------------------------
# Writer and manifest
# ----------------------------------------------------------------------------------------------------------


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_is_byte_identical_for_a_seed_and_differs_for_another(tmp_path):
    kwargs = dict(num_pairs=12, stages=STAGES, show_progress=False)
    write_synthetic_dataset(tmp_path / "a", seed=3, **kwargs)
    write_synthetic_dataset(tmp_path / "b", seed=3, **kwargs)
    write_synthetic_dataset(tmp_path / "c", seed=4, **kwargs)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert len(a) == 2 + 2 * 12  # the manifest, its settings (train.synth.json) and the images
    assert a == b
    assert a.keys() == c.keys()
    assert a["train.jsonl"] != c["train.jsonl"]
    assert sum(a[name] != c[name] for name in a if name.endswith(".png")) > 12


def test_manifest_fields_and_relative_paths(dataset):
    manifest, records = dataset
    assert len(records) == 120
    assert len({r["id"] for r in records}) == 120
    for record in records:
        assert set(record) == {
            "id",
            "prompt",
            "chosen",
            "rejected",
            "subset",
            "perturbed_prompt",
            "category",
            "meta",
        }
        for key in ("chosen", "rejected"):
            assert not Path(record[key]).is_absolute()
            assert (manifest.parent / record[key]).is_file()
        assert record["chosen"] != record["rejected"]
        assert record["subset"] in ("1-pert", "2-3-pert")
        kinds = record["category"].split("+")
        assert all(kind in PERTURBATIONS for kind in kinds)
        assert (len(kinds) == 1) == (record["subset"] == "1-pert") and len(kinds) <= 3
        meta = record["meta"]
        assert meta["seed"] == 7 and meta["image_size"] == 64 and isinstance(meta["mirror"], bool)
        assert meta["scene"]["prompt"] == record["prompt"]
        assert meta["rejected_scene"]["prompt"] == record["perturbed_prompt"]
        for obj in meta["scene"]["objects"]:
            assert len(obj["box"]) == 4 and len(obj["box_px"]) == 4


def test_mirror_records_are_exactly_half_and_mirror_their_pair(dataset):
    _, records = dataset
    by_id = {r["id"]: r for r in records}
    mirrors = [r for r in records if r["meta"]["mirror"]]
    assert len(mirrors) == len(records) // 2
    for mirror in mirrors:
        original = by_id[mirror["id"].removesuffix("-mirror")]
        assert not original["meta"]["mirror"]
        assert (mirror["prompt"], mirror["perturbed_prompt"]) == (
            original["perturbed_prompt"],
            original["prompt"],
        )
        assert (mirror["chosen"], mirror["rejected"]) == (original["rejected"], original["chosen"])
        assert mirror["category"] == original["category"] and mirror["subset"] == original["subset"]


def test_stages_are_spread_evenly_in_order(dataset):
    _, records = dataset
    stages = [r["meta"]["stage"] for r in records]
    assert stages == sorted(stages)
    assert Counter(stages) == dict.fromkeys(MIRRORED_STAGES, 20)


def test_a_stage_listed_twice_gets_two_shares(tmp_path):
    manifest = write_synthetic_dataset(tmp_path, num_pairs=6, seed=2, stages=(1, 4, 4), show_progress=False)
    stages = [json.loads(line)["meta"]["stage"] for line in manifest.read_text().splitlines()]
    assert Counter(stages) == {1: 4, 4: 8}  # pairs and their mirrors


def test_manifest_reads_with_the_manifest_reader(dataset):
    from spatialscore.data.manifest import read_manifest

    manifest, _ = dataset
    assert len(read_manifest(manifest)) == 120


def test_prompt_ignoring_scorers_are_exactly_at_chance(dataset):
    manifest, records = dataset

    def mean_pixel(path: str) -> float:
        return float(np.asarray(Image.open(manifest.parent / path)).mean())

    def pixel_hash(path: str) -> float:
        return float(hash((manifest.parent / path).read_bytes()) % 1000)

    for image_score in (mean_pixel, pixel_hash):
        wins = sum(
            1.0
            if image_score(r["chosen"]) > image_score(r["rejected"])
            else 0.5 * (image_score(r["chosen"]) == image_score(r["rejected"]))
            for r in records
        )
        assert wins / len(records) == 0.5


def test_record_is_reproducible_from_its_meta(dataset):
    _, records = dataset
    for record in records[::9]:
        meta = record["meta"]
        pair = generate_pair(seed=(meta["seed"], meta["pair_index"]), stage=meta["stage"])
        prompts = {pair.perfect.prompt, pair.perturbed.prompt}
        assert prompts == {record["prompt"], record["perturbed_prompt"]}
        assert Scene.from_dict(meta["scene"]) in (pair.perfect, pair.perturbed)


def test_palette_order_names_red_first_on_both_axes_and_is_recorded(tmp_path):
    """Stage 3 with palette_order: red/blue, left/right/above/below, red always named first, so a prompt and its
    mirror differ in the relation word only; the images still satisfy their prompts; the flag is in the settings
    and the meta, and a record regenerates from its meta."""
    manifest = write_synthetic_dataset(
        tmp_path, num_pairs=40, seed=5, stages=(3,), palette_order=True, show_progress=False
    )
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    words = Counter()
    for r in records:
        for prompt in (r["prompt"], r["perturbed_prompt"]):
            assert prompt.startswith("a red ") and " a blue " in prompt, prompt
            words.update(w for w in ("left", "right", "above", "below") if f" {w} " in f" {prompt} ")
        assert relation_score(Image.open(tmp_path / r["chosen"]), r["prompt"]) == 1.0
        assert relation_score(Image.open(tmp_path / r["rejected"]), r["prompt"]) == 0.0
        meta = r["meta"]
        assert meta["palette_order"] is True
        pair = generate_pair(seed=(meta["seed"], meta["pair_index"]), stage=3, palette_order=True)
        assert {pair.perfect.prompt, pair.perturbed.prompt} == {r["prompt"], r["perturbed_prompt"]}
    assert min(words[w] for w in ("left", "right", "above", "below")) >= 10, words
    settings = json.loads((tmp_path / "train.synth.json").read_text())
    assert settings["palette_order"] is True
    with pytest.raises(ValueError, match="palette_order"):  # the same folder without the flag is refused
        write_synthetic_dataset(tmp_path, num_pairs=40, seed=5, stages=(3,), show_progress=False)
    plain = write_synthetic_dataset(tmp_path / "plain", num_pairs=40, seed=5, stages=(3,), show_progress=False)
    plain_records = [json.loads(line) for line in plain.read_text().splitlines()]
    assert json.loads((tmp_path / "plain" / "train.synth.json").read_text())["palette_order"] is False
    record = tmp_path / "plain" / "train.synth.json"  # written before the option: no key, read as off
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "palette_order"}))
    assert write_synthetic_dataset(tmp_path / "plain", num_pairs=40, seed=5, stages=(3,), show_progress=False) == plain
    assert "palette_order" not in plain_records[0]["meta"]
    assert any(r["prompt"].startswith("a blue ") for r in plain_records)  # without it stage 3 names either first


def test_warm_up_stage_has_no_mirrors_and_one_prompt_form(tmp_path):
    manifest = write_synthetic_dataset(tmp_path, num_pairs=8, seed=3, stages=(0,), show_progress=False)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(records) == 8 and not any(r["meta"]["mirror"] for r in records)
    for r in records:
        assert " to the left of a blue " in r["prompt"] and r["prompt"].startswith("a red ")
        assert relation_score(Image.open(tmp_path / r["chosen"]), r["prompt"]) == 1.0
        assert relation_score(Image.open(tmp_path / r["rejected"]), r["prompt"]) == 0.0


def test_cli_writes_and_reports_counts(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--num-pairs", "6", "--seed", "1", "--stages", "1", "6", "--split", "val"]
    assert cli_main([*args, "--image-size", "48", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 12 records" in printed and "per subset" in printed and "per category" in printed
    lines = (out / "val.jsonl").read_text().splitlines()
    assert len(lines) == 12
    assert Image.open(out / json.loads(lines[0])["chosen"]).size == (48, 48)


def test_rerun_is_a_no_op_and_other_settings_or_foreign_files_are_refused(tmp_path, capsys):
    out = tmp_path / "synth"
    args = ["--out", str(out), "--num-pairs", "3", "--seed", "1", "--stages", "1", "--no-progress"]
    assert cli_main(args) == 0
    capsys.readouterr()
    written = _tree(out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert json.loads((out / "train.synth.json").read_text()) == {
        "split": "train", "num_pairs": 3, "seed": 1, "image_size": 64, "stages": [1], "palette_order": False
    }  # fmt: skip
    assert cli_main(args) == 0  # the same settings: nothing is written again
    assert "train.jsonl already holds these 6 records (same settings)" in capsys.readouterr().out
    assert _tree(out) == written and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--num-pairs", "2"])
    assert exit_info.value.code == 2
    assert (
        f"{out / 'train.synth.json'}: {out} holds a 'train' split written with other settings (num_pairs: 3 -> 2); "
        f"use another --out folder (or delete {out} to write it anew)"
    ) in capsys.readouterr().err
    assert _tree(out) == written
    assert cli_main([*args, "--split", "val"]) == 0  # another split beside it is fine
    # A folder with a manifest that synth did not write (the user's own) is never overwritten.
    own = tmp_path / "own"
    (own / "images").mkdir(parents=True)
    (own / "train.jsonl").write_text('{"prompt": "mine", "chosen": "images/a.png", "rejected": "images/b.png"}\n')
    with pytest.raises(ValueError) as info:
        write_synthetic_dataset(own, num_pairs=3, seed=1, show_progress=False)
    assert str(info.value) == (
        f"{own / 'train.jsonl'} was not written by spatialscore synth (there is no {own / 'train.synth.json'}): "
        f"use another --out folder or --split (or move {own / 'train.jsonl'} away)"
    )
    assert (own / "train.jsonl").read_text().startswith('{"prompt": "mine"')
    assert not list((own / "images").iterdir())


@pytest.mark.parametrize("kwargs", [dict(num_pairs=0), dict(stages=(7,)), dict(image_size=16), dict(split="../x")])
def test_writer_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_synthetic_dataset(tmp_path, **{"num_pairs": 1, "seed": 0, "show_progress": False, **kwargs})


# ----------------------------------------------------------------------------------------------------------
# Scenes and perturbations
# ----------------------------------------------------------------------------------------------------------


def test_perfect_scores_one_and_perturbed_violates_exactly_the_perturbed_relations(pairs):
    for pair, perfect, perturbed in pairs:
        k = len(pair.kinds)
        assert pair.subset == ("1-pert" if k == 1 else "2-3-pert")
        assert relation_score(perfect, pair.perfect.prompt) == 1.0
        assert relation_score(perturbed, pair.perturbed.prompt) == 1.0
        assert relation_score(perturbed, pair.perfect.prompt) < 1.0
        assert _violated(perturbed, pair.perfect.prompt) == k
        assert _violated(perfect, pair.perturbed.prompt) == k
        changed = [a != b for a, b in zip(pair.perfect.relations, pair.perturbed.relations, strict=True)]
        assert sum(changed) == k


def test_objects_and_attributes_are_kept_and_colours_unique(pairs):
    for pair, _, _ in pairs:
        perfect = Counter((o.colour, o.shape, o.size) for o in pair.perfect.objects)
        assert perfect == Counter((o.colour, o.shape, o.size) for o in pair.perturbed.objects)
        colours = [o.colour for o in pair.perfect.objects]
        assert len(set(colours)) == len(colours)
        mentioned = {c for r in pair.perfect.relations for c, _ in r.objects}
        assert mentioned == set(colours) == {c for r in pair.perturbed.relations for c, _ in r.objects}


def test_stages_follow_the_curriculum(pairs):
    axes_seen: dict[int, set[str]] = {s: set() for s in STAGES}
    kinds_seen: dict[int, set[str]] = {s: set() for s in STAGES}
    for pair, _, _ in pairs:
        n = len(pair.perfect.objects)
        axes_seen[pair.stage] |= {r.axis for r in pair.perfect.relations}
        kinds_seen[pair.stage] |= set(pair.kinds)
        if pair.stage <= 2:
            assert {o.colour for o in pair.perfect.objects} == {"red", "blue"}
            assert len(pair.perfect.relations) == 1
        if pair.stage == 0:
            assert pair.perfect.relations[0].objects[0][0] == "red"
        assert 2 <= n <= {0: 2, 1: 2, 2: 2, 3: 2, 4: 2, 5: 3, 6: 5}[pair.stage]
        if pair.stage < 6:
            assert len(pair.kinds) == 1
    predicates = {p.perfect.relations[0].predicate for p, _, _ in pairs if p.stage == 0}
    assert predicates == {"left_of"}
    assert {p.perfect.relations[0].predicate for p, _, _ in pairs if p.stage == 1} == {"left_of", "right_of"}
    assert {p.perfect.relations[0].objects[0][0] for p, _, _ in pairs if p.stage == 1} == {"red"}
    assert {p.perfect.relations[0].objects[0][0] for p, _, _ in pairs if p.stage == 2} == {"red", "blue"}
    for stage in (0, 1, 2):
        assert axes_seen[stage] == {"horizontal"} and kinds_seen[stage] == {"swap"}
    assert axes_seen[3] == {"horizontal", "vertical"} and kinds_seen[3] == {"swap", "flip"}
    colours = {s: {o.colour for p, _, _ in pairs if p.stage == s for o in p.perfect.objects} for s in (3, 4)}
    assert colours[3] == {"red", "blue"} and colours[4] == set(PALETTE)
    assert axes_seen[4] == {"horizontal", "vertical"}
    assert kinds_seen[4] == {"swap", "flip", "predicate", "attribute_swap"}
    assert axes_seen[5] == {"horizontal", "vertical", "depth", "corner", "edge"}
    assert axes_seen[6] == axes_seen[5] | {"row"} and kinds_seen[6] == set(PERTURBATIONS)
    subsets = Counter(pair.subset for pair, _, _ in pairs if pair.stage == 6)
    assert subsets["1-pert"] > 15 and subsets["2-3-pert"] > 15


def test_depth_is_drawn_with_overlap_scale_and_order(pairs):
    seen = 0
    for pair, _, _ in pairs:
        for scene in (pair.perfect, pair.perturbed):
            objects = {o.colour: o for o in scene.objects}
            for relation in scene.relations:
                if relation.axis == "depth":
                    front, back = (objects[c] for c, _ in relation.objects)
                    if relation.predicate == "behind":
                        front, back = back, front
                    assert front.layer > back.layer and front.half > back.half
                    assert front.box[3] > back.box[3]
                    seen += 1
    assert seen > 10


# ----------------------------------------------------------------------------------------------------------
# Parser and checker
# ----------------------------------------------------------------------------------------------------------


def test_parse_round_trip(pairs):
    for pair, _, _ in pairs:
        for scene in (pair.perfect, pair.perturbed):
            relations = parse_prompt(scene.prompt)
            assert tuple(relations) == scene.relations
            assert "; ".join(r.text for r in relations) == scene.prompt


def test_parse_the_documented_templates():
    prompt = (
        "a red circle to the left of a blue square; a green triangle above a yellow circle; "
        "a purple square in front of an orange circle; a red circle in the upper-left corner; "
        "a blue square at the bottom edge; from left to right: a red circle, a green triangle and a blue square"
    )
    relations = parse_prompt(prompt)
    assert [r.predicate for r in relations] == ["left_of", "above", "in_front_of", "corner", "edge", "row"]
    assert relations[3].anchor == "upper-left" and relations[4].anchor == "bottom"
    assert relations[5].objects == (("red", "circle"), ("green", "triangle"), ("blue", "square"))
    assert "; ".join(r.text for r in relations) == prompt
    assert (
        Relation("below", (("orange", "diamond"), ("cyan", "circle"))).text == "an orange diamond below a cyan circle"
    )


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        "a red circle left of a blue square",
        "a pink circle to the left of a blue square",
        "a red circle to the left of a red circle",
        "a red circle above a blue square; a red square below a green circle",
        "from left to right: a red circle and a blue square",
        "a red circle to the left of a blue square, and a green square above a red circle",
    ],
)
def test_parse_rejects_other_text_with_a_clear_message(prompt):
    with pytest.raises(ValueError, match="parse|row|empty|itself|names both"):
        parse_prompt(prompt)


def test_checker_is_robust_to_mild_noise_and_blur(pairs):
    rng = np.random.default_rng(0)
    checker = RuleChecker()
    sample = pairs[::3]
    for sigma in (0.03, 0.06):
        images, prompts, expected = [], [], []
        for pair, perfect, perturbed in sample:
            n, k = len(pair.perfect.relations), len(pair.kinds)
            for image, score in ((perfect, 1.0), (perturbed, (n - k) / n)):
                noisy = np.clip(_as_chw(image) + rng.normal(0.0, sigma, (3, 64, 64)), 0.0, 1.0)
                images.append(noisy.astype(np.float32))
                prompts.append(pair.perfect.prompt)
                expected.append(score)
        assert checker(images=images, prompts=prompts) == pytest.approx(expected)
    blurred = [(pair, perfect.filter(ImageFilter.GaussianBlur(0.5))) for pair, perfect, _ in sample]
    assert checker(images=[b for _, b in blurred], prompts=[p.perfect.prompt for p, _ in blurred]) == [1.0] * len(
        blurred
    )


class _FakeTensor:
    """Duck-typed stand-in for a torch tensor."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def detach(self) -> _FakeTensor:
        return self

    def cpu(self) -> _FakeTensor:
        return self

    def numpy(self) -> np.ndarray:
        return self.array


def test_checker_accepts_pil_arrays_batches_and_tensors(pairs):
    pair, perfect, perturbed = pairs[-1]
    prompt = pair.perfect.prompt
    expected = [1.0, relation_score(perturbed, prompt)]
    batch = np.stack([_as_chw(perfect), _as_chw(perturbed)])
    checker = RuleChecker()
    assert checker(images=[perfect, perturbed], prompts=[prompt, prompt]) == expected
    assert checker(images=batch, prompts=[prompt, prompt]) == expected
    assert checker(images=_FakeTensor(batch), prompts=[prompt, prompt]) == expected
    assert checker(images=[_FakeTensor(batch[0]), batch[1]], prompts=[prompt, prompt]) == expected
    assert checker(images=[np.asarray(perfect)], prompts=[prompt]) == [1.0]
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        checker(images=batch, prompts=[prompt])


def test_checker_accepts_real_torch_tensors(pairs):
    import torch

    pair, perfect, perturbed = pairs[-2]
    batch = torch.from_numpy(np.stack([_as_chw(perfect), _as_chw(perturbed)])).to(torch.bfloat16)
    scores = RuleChecker()(images=batch, prompts=[pair.perfect.prompt] * 2)
    assert scores[0] == 1.0 and scores[1] < 1.0


def test_missing_objects_violate_their_relations():
    blank = Image.new("RGB", (64, 64), (245, 245, 240))
    assert detect_objects(blank, PALETTE) == {}
    assert relation_score(blank, "a red circle to the left of a blue square") == 0.0
    with pytest.raises(ValueError, match="unknown colour"):
        detect_objects(blank, ["pink"])


def test_detect_objects_reports_boxes_centroids_and_areas(pairs):
    pair, perfect, _ = pairs[0]
    found = detect_objects(perfect, [o.colour for o in pair.perfect.objects])
    for obj in pair.perfect.objects:
        detection = found[obj.colour]
        assert detection.centroid[0] == pytest.approx(obj.centroid[0], abs=1.5 / 64)
        assert detection.centroid[1] == pytest.approx(obj.centroid[1], abs=1.5 / 64)
        assert all(a == pytest.approx(b, abs=2.5 / 64) for a, b in zip(detection.box, obj.box, strict=True))
        assert 0.0 < detection.area < (2 * obj.half) ** 2
