"""`spatialscore score` in-process: JSON lines on success; every user error exits 2 with one stderr line, naming
the file (and, for a tampered config, the field), and no traceback (issue 15)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spatialscore.cli import main
from spatialscore.model import RewardLoraConfig, SpatialScore, SpatialScoreConfig

PROMPT = "a red circle to the left of a blue square"


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("score-cli") / "export"
    SpatialScore.build(SpatialScoreConfig(lora=RewardLoraConfig(rank=4), head_hidden_size=32)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("score-images") / "scene.png"
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def score(capsys, *args: str | Path) -> tuple[int, str, str]:
    """Exit status (SystemExit from argparse included), stdout and stderr of ``spatialscore score ARGS``."""
    try:
        code = main(["score", *map(str, args)])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("spatialscore score: error: "), err
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == [lines[-1]], err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def test_score_prints_one_json_line_per_image(capsys, export, image):
    code, out, err = score(capsys, "--model", export, "--prompt", PROMPT, "--batch-size", "1", image, image)
    assert code == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["image"] for r in rows] == [str(image)] * 2 and rows[0]["score"] == rows[1]["score"]


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_score_refuses_a_batch_size_below_one(capsys, export, image, value):
    code, _, err = score(capsys, "--model", export, "--prompt", PROMPT, "--batch-size", value, image)
    assert_user_error(
        code,
        err,
        f"argument --batch_size: must be a positive integer, got {value!r}"
        if value == "two"
        else f"argument --batch_size: must be a positive integer, got {value}",
    )


def test_score_names_a_truncated_image(capsys, export, image, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    code, out, err = score(capsys, "--model", export, "--prompt", PROMPT, image, broken)
    assert_user_error(code, err, str(broken), "cannot decode the image, the file is truncated or corrupt")
    assert out == ""


def test_score_names_a_missing_or_non_image_file(capsys, export, image, tmp_path):
    missing = tmp_path / "missing.png"
    code, _, err = score(capsys, "--model", export, "--prompt", PROMPT, missing)
    assert_user_error(code, err, f"no such image file: {missing}")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    code, _, err = score(capsys, "--model", export, "--prompt", PROMPT, text)
    assert_user_error(code, err, str(text))


def test_score_names_a_missing_model_folder(capsys, image, tmp_path):
    code, _, err = score(capsys, "--model", tmp_path / "nowhere", "--prompt", PROMPT, image)
    assert_user_error(code, err, str(tmp_path / "nowhere" / "spatialscore_config.json"), "not a SpatialScore folder")


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda raw: '{"backbone": ', "invalid JSON"),
        (lambda raw: {**raw, "head_hidden_size": [64]}, "field 'head_hidden_size' must be int, got list"),
        (
            lambda raw: {**raw, "template": {**raw["template"], "system": 3}},
            "field 'template.system' must be str | None",
        ),
        (lambda raw: {**raw, "lora": {**raw["lora"], "ranks": 8}}, "unknown field 'lora.ranks'"),
    ],
    ids=["json", "type", "nested-type", "unknown"],
)
def test_score_names_the_file_and_field_of_a_tampered_config(capsys, export, image, tmp_path, edit, field):
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    config_file = folder / "spatialscore_config.json"
    edited = edit(json.loads(config_file.read_text()))
    config_file.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    code, _, err = score(capsys, "--model", folder, "--prompt", PROMPT, image)
    assert_user_error(code, err, f"{config_file}: ", field)


def test_score_refuses_modified_weights(capsys, export, image, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    weights = folder / "reward_head.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x80
    weights.write_bytes(bytes(data))
    code, _, err = score(capsys, "--model", folder, "--prompt", PROMPT, image)
    assert_user_error(code, err, f"{weights}: SHA-256 ", "corrupt or was modified")


def test_score_a_manifest_writes_one_line_per_pair_and_the_accuracy(capsys, export, tmp_path):
    from spatialscore.data.manifest import write_manifest
    from spatialscore.model import SpatialScore

    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(paths[-1])
    prompts = [PROMPT, "a blue square above a red circle", "a green triangle below a blue square"]
    rows = [
        {"id": f"p{i}", "prompt": prompts[i], "chosen": paths[2 * i].name, "rejected": paths[2 * i + 1].name}
        for i in range(3)
    ]
    write_manifest(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "scores.jsonl"
    code, stdout, err = score(
        capsys,
        "--model",
        export,
        "--manifest",
        tmp_path / "pairs.jsonl",
        "--out",
        out,
        "--batch-size",
        "4",
        "--no-progress",
    )
    assert code == 0, err
    assert stdout == ""
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    model = SpatialScore.from_pretrained(export)
    expected = model.score(prompts=[p for p in prompts for _ in (0, 1)], images=[str(p) for p in paths])
    assert [line["id"] for line in lines] == ["p0", "p1", "p2"]
    np.testing.assert_allclose(
        [[x["chosen_score"], x["rejected_score"]] for x in lines],
        expected.mu.reshape(3, 2).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    assert [x["chosen_wins"] for x in lines] == [x["chosen_score"] > x["rejected_score"] for x in lines]
    accuracy = sum(x["chosen_wins"] for x in lines) / 3
    assert f"pairwise accuracy {accuracy:.4f} over 3 pairs" in err


def test_score_a_prompt_image_list_keeps_extra_keys_and_names_a_bad_line(capsys, export, image, tmp_path):
    listing = tmp_path / "list.jsonl"
    shutil.copy(image, tmp_path / "a.png")
    listing.write_text(
        json.dumps({"prompt": PROMPT, "image": "a.png", "tag": 7})
        + "\n"
        + json.dumps({"prompt": "a blue square above a red circle", "image": str(image)})
        + "\n"
    )
    code, out, err = score(capsys, "--model", export, "--list", listing, "--no-progress")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["prompt"], r.get("tag"), r["image"]) for r in rows] == [
        (PROMPT, 7, str(tmp_path / "a.png")),
        ("a blue square above a red circle", None, str(image)),
    ]
    assert rows[0]["score"] != rows[1]["score"]
    listing.write_text(json.dumps({"prompt": PROMPT, "image": "a.png"}) + "\n" + '{"prompt": 3, "image": "a.png"}\n')
    code, _, err = score(capsys, "--model", export, "--list", listing)
    assert_user_error(code, err, f"{listing}:2", 'string "prompt" and "image"')


def test_predict_is_not_offered_and_points_to_score(capsys):
    assert main(["predict"]) == 2
    assert "spatialscore score --help" in capsys.readouterr().err
