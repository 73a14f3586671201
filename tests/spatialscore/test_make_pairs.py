"""``spatialscore make-pairs`` on a tiny random FLUX built offline: manifest, seeds, resume, skipped prompts, errors."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from spatialrl.flux import resolve_tiny_flux
from spatialscore.data import pairs
from spatialscore.data.manifest import read_manifest
from spatialscore.data.pairs import (
    MANIFEST_NAME,
    PerturbedPromptsError,
    load_pipeline,
    make_pairs,
    pair_seed,
    read_perturbed,
)
from spatialscore.data.perturb import cli_main as perturb_main
from spatialscore.data.perturb import perturb_prompts

# Short prompts: the tiny FLUX's character-level encoders see every edit (CLIP stops at 77 characters).
PROMPTS = [
    "a red cup to the left of a blue vase",
    "a cat sits above a wooden box",
    "a lamp stands behind a green sofa",
    "a dog to the right of a bike",
    "a quiet beach at dawn",  # nothing spatial: the perturber skips it
    "a mug in front of a teapot",
]
TWO_EDITS = "a red cup to the left of a vase, and a cat sits above a box"
RENDER = {"steps": 2, "height": 32, "width": 32, "call_kwargs": {"max_sequence_length": 96}}


@pytest.fixture(scope="module")
def flux_dir() -> Path:
    return resolve_tiny_flux(seed=0)


@pytest.fixture(scope="module")
def pipe(flux_dir: Path) -> Any:
    return load_pipeline(flux_dir)


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``spatialscore perturb`` output (5 records, 1 skipped prompt) plus one 2-edit record."""
    folder = tmp_path_factory.mktemp("perturbed")
    source = folder / "prompts.jsonl"
    source.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    out = folder / "perturbed.jsonl"
    assert perturb_main(["--prompts", str(source), "--out", str(out), "--num", "1", "--seed", "0"]) == 0
    [result], _ = perturb_prompts([TWO_EDITS], num="2-3", seed=0)
    with out.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "two", **result.to_dict()}) + "\n")
    return out


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_pairs_form_a_valid_manifest_and_skipped_prompts_are_reported(
    pipe: Any, perturbed: Path, tmp_path: Path
) -> None:
    result = make_pairs(prompts=perturbed, pipeline=pipe, out=tmp_path, batch_size=4, show_progress=False, **RENDER)
    assert (result.written, result.already_done, result.remaining) == (6, 0, 0)
    manifest = read_manifest(tmp_path / MANIFEST_NAME)  # validates every field and decodes every image
    records = {r.id: r for r in manifest.records}
    assert list(records) == ["p0", "p1", "p2", "p3", "p5", "two"]
    assert manifest.subsets() == {"1-pert": 5, "2-3-pert": 1}
    inputs = {json.loads(line)["id"]: json.loads(line) for line in perturbed.read_text().splitlines()}
    for pair_id, record in records.items():
        edits = inputs[pair_id]["edits"]
        assert record.prompt == inputs[pair_id]["prompt"]
        assert record.perturbed_prompt == inputs[pair_id]["perturbed_prompt"]
        assert record.category == "+".join(e["kind"] for e in edits)
        assert record.meta["edits"] == edits
        assert record.meta["seed"] == pair_seed(seed=0, pair_id=pair_id, index=0)
        assert Image.open(record.chosen).size == (32, 32)
        assert (pixels(record.chosen) != pixels(record.rejected)).any(), "the edit must change the image"
    assert len(records["two"].meta["edits"]) >= 2
    # The prompt the perturber could not perturb is skipped with its reason, not silently.
    skipped = [(s.id, s.reason) for s in result.skipped]
    assert skipped == [("p4", "no spatial relation phrase found")]
    [row] = [json.loads(line) for line in (tmp_path / "skipped.jsonl").read_text().splitlines()]
    assert row["id"] == "p4" and row["reason"] == "no spatial relation phrase found"
    assert row["source"].endswith("perturbed.skipped.jsonl:1")
    assert result.identical == []


def test_chosen_and_rejected_share_seed_and_settings(pipe: Any, perturbed: Path, tmp_path: Path) -> None:
    """A spy renders the perfect prompt on both sides: same seed and settings must give identical bytes."""
    calls: list[dict[str, Any]] = []
    perfect = {r.perturbed_prompt: r.prompt for r in read_perturbed(perturbed)[0]}

    def spy(*, prompt: list[str], generator: list[Any], **kwargs: Any) -> Any:
        calls.append({"prompt": prompt, "seeds": [g.initial_seed() for g in generator], **kwargs})
        return pipe(prompt=[perfect.get(p, p) for p in prompt], generator=generator, **kwargs)

    result = make_pairs(
        prompts=perturbed,
        pipeline=spy,
        out=tmp_path,
        batch_size=4,
        images_per_prompt=2,
        show_progress=False,
        **RENDER,
    )
    assert result.written == 12 and len(calls) == 3
    for call in calls:
        assert call["seeds"][0::2] == call["seeds"][1::2]  # chosen and rejected of a pair: one seed
        assert len(set(call["seeds"][0::2])) == len(call["seeds"]) // 2  # every pair its own seed
        assert (call["num_inference_steps"], call["height"], call["max_sequence_length"]) == (2, 32, 96)
        assert call["output_type"] == "pil"
    rows = [json.loads(line) for line in (tmp_path / MANIFEST_NAME).read_text().splitlines()]
    assert [r["id"] for r in rows[:4]] == ["p0-0", "p0-1", "p1-0", "p1-1"]
    for row in rows:
        assert (tmp_path / row["chosen"]).read_bytes() == (tmp_path / row["rejected"]).read_bytes()
    assert rows[0]["meta"]["seed"] != rows[1]["meta"]["seed"]
    assert (pixels(tmp_path / rows[0]["chosen"]) != pixels(tmp_path / rows[1]["chosen"])).any()
    assert result.identical == [r["id"] for r in rows]  # flagged: such pairs carry no signal


def test_an_interrupted_run_resumes_to_the_same_manifest(
    pipe: Any, perturbed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = make_pairs(
        prompts=perturbed, pipeline=pipe, out=tmp_path / "full", batch_size=2, show_progress=False, **RENDER
    )
    assert reference.written == 6

    class Crash(Exception):
        pass

    def crash_after_three(row: dict[str, Any]) -> None:
        if row["id"] == "p2":  # the third pair, the first of the second batch
            raise Crash

    out = tmp_path / "resumed"
    with pytest.raises(Crash):
        make_pairs(
            prompts=perturbed,
            pipeline=pipe,
            out=out,
            batch_size=2,
            on_pair=crash_after_three,
            show_progress=False,
            **RENDER,
        )
    lines = (out / MANIFEST_NAME).read_bytes().splitlines(keepends=True)
    assert [json.loads(line)["id"] for line in lines] == ["p0", "p1", "p2"]
    assert all(line.endswith(b"\n") for line in lines)
    # A process killed in the middle of the next append leaves a torn line: the rerun drops it.
    with (out / MANIFEST_NAME).open("ab") as fh:
        fh.write(b'{"id": "p3", "prompt": "a dog to the ri')
    resumed = make_pairs(prompts=perturbed, pipeline=pipe, out=out, batch_size=2, show_progress=False, **RENDER)
    assert (resumed.written, resumed.already_done, resumed.remaining) == (3, 3, 0)
    assert (out / MANIFEST_NAME).read_bytes() == (tmp_path / "full" / MANIFEST_NAME).read_bytes()
    for name in sorted(p.name for p in (tmp_path / "full" / "images").iterdir()):
        # Other batch compositions may move a rounding by one level; the seeds make everything else identical.
        diff = np.abs(pixels(out / "images" / name) - pixels(tmp_path / "full" / "images" / name))
        assert diff.max() <= 1, name
    assert not list(out.glob("images/.*.tmp"))
    again = make_pairs(prompts=perturbed, pipeline=pipe, out=out, show_progress=False, **RENDER)
    assert (again.written, again.already_done) == (0, 6)
    # A pair whose image was deleted is rendered again (its line moves to the end).
    (out / "images" / "p3-rejected.png").unlink()
    healed = make_pairs(prompts=perturbed, pipeline=pipe, out=out, show_progress=False, **RENDER)
    assert (healed.written, healed.already_done) == (1, 5)
    assert "images of 'p3' are missing" in capsys.readouterr().err
    reference_lines = (tmp_path / "full" / MANIFEST_NAME).read_text().splitlines()
    assert sorted((out / MANIFEST_NAME).read_text().splitlines()) == sorted(reference_lines)


def test_cli_limit_resume_and_settings_guard(
    flux_dir: Path, perturbed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--prompts", str(perturbed), "--pipeline", str(flux_dir), "--out", str(tmp_path), "--steps", "2",
            "--height", "32", "--width", "32", "--call-arg", "max_sequence_length=96", "--no-progress"]  # fmt: skip
    assert pairs.cli_main([*args, "--limit", "2", "--batch-size", "3"]) == 0
    err = capsys.readouterr().err
    assert "2 pairs rendered, 0 already done, 4 remaining" in err
    assert "1 x no spatial relation phrase found" in err
    assert len((tmp_path / MANIFEST_NAME).read_text().splitlines()) == 2
    assert pairs.cli_main(args) == 0
    assert "4 pairs rendered, 2 already done, 0 remaining" in capsys.readouterr().err
    settings = json.loads((tmp_path / "make_pairs.json").read_text())
    assert settings["steps"] == 2 and settings["call_kwargs"] == {"max_sequence_length": 96}
    assert pairs.cli_main([*args[:-3], "--no-progress", "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "make_pairs.json" in err and "steps: 2 -> 3" in err and "call_kwargs" in err
    assert len(read_manifest(tmp_path / MANIFEST_NAME)) == 6
    with (tmp_path / ".make_pairs.lock").open("w") as lock:  # another run is writing to the folder
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert pairs.cli_main(args) == 2
        assert "another make-pairs run is writing to this folder" in capsys.readouterr().err


def test_bad_perturbed_file_names_file_line_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = {"id": "a", "prompt": "a cup left of a vase", "perturbed_prompt": "a cup right of a vase",
            "edits": [{"kind": "flip", "start": 6, "end": 10, "before": "left", "after": "right"}]}  # fmt: skip
    bad_lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "id": "b", "perturbed_prompt": "a cup above a vase"}),
        json.dumps({**good, "id": "c", "edits": [{**good["edits"][0], "start": "6"}]}),
        json.dumps({**good, "id": "a"}),
        json.dumps({**good, "id": "d", "subset": "2-3-pert"}),
        json.dumps({k: v for k, v in good.items() if k != "prompt"}),
        "",
        json.dumps({**good, "id": "e", "edits": [{**good["edits"][0], "before": "right"}]}),
        json.dumps({"id": "f", "prompt": "a beach", "reason": "no spatial relation phrase found"}),
        json.dumps(
            {
                **good,
                "id": "g",
                "perturbed_prompt": good["prompt"],
                "edits": [{**good["edits"][0], "after": "left"}],
            }
        ),
    ]
    path = tmp_path / "perturbed.jsonl"
    path.write_bytes("\n".join(bad_lines).encode() + b"\n\xff{}\n")
    with pytest.raises(PerturbedPromptsError) as info:
        read_perturbed(path)
    assert info.value.errors == [
        f"{path}:2: invalid JSON: Expecting property name enclosed in double quotes at column 2",
        f"{path}:3: field 'perturbed_prompt': applying the edits to 'prompt' does not give 'perturbed_prompt'",
        f"{path}:4: field 'edits[0].start': expected an integer",
        f"{path}:5: field 'id': duplicate id 'a', already used at {path}:1",
        f"{path}:6: field 'subset': '2-3-pert' does not match num_perturbations=1 ('1-pert')",
        f"{path}:7: field 'prompt': expected a non-empty string",
        f"{path}:9: field 'edits': edit at 6:10 expects 'right', prompt has 'left'",
        f"{path}:12: invalid UTF-8 at byte 1 of the line",
    ]
    out = tmp_path / "out"
    code = pairs.cli_main(["--prompts", str(path), "--pipeline", str(tmp_path), "--out", str(out)])
    assert code == 2
    assert f"{path}:4: field 'edits[0].start'" in capsys.readouterr().err
    assert not out.exists()
    path.write_text("\n".join([bad_lines[0], *bad_lines[-2:]]) + "\n")
    records, skipped = read_perturbed(path)
    assert [r.id for r in records] == ["a"]
    assert [(s.id, s.reason) for s in skipped] == [
        ("f", "no spatial relation phrase found"),
        ("g", "perturbed prompt equals the prompt"),
    ]
    code = pairs.cli_main(["--prompts", str(path), "--pipeline", str(tmp_path), "--out", str(out)])
    assert code == 2 and "no model_index.json" in capsys.readouterr().err


def test_unparsable_lines_name_file_line_and_column(tmp_path: Path) -> None:
    cut = '{"id": "a", "prompt": "a cup left of a vase"'  # an object cut off at the line end
    path = tmp_path / "perturbed.jsonl"
    path.write_text("\n".join([cut, "[" * 100_000, '{"id": ' + "7" * 5000 + "}", cut + "\r"]) + "\n")
    with pytest.raises(PerturbedPromptsError) as info:
        read_perturbed(path)
    assert info.value.errors == [
        f"{path}:1: invalid JSON: Expecting ',' delimiter at column {len(cut) + 1}",
        f"{path}:2: invalid JSON: nested too deeply (Python's JSON parser stops at about 1000 levels)",
        f"{path}:3: invalid JSON: an integer of more than 4300 digits",
        f"{path}:4: invalid JSON: Expecting ',' delimiter at column {len(cut) + 1}",
    ]


def flip(pair_id: str, prompt: str, before: str, after: str) -> dict[str, Any]:
    """A perturbed-prompts record that replaces ``before`` with ``after`` in ``prompt``."""
    start = prompt.index(before)
    edit = {"kind": "flip", "start": start, "end": start + len(before), "before": before, "after": after}
    return {
        "id": pair_id,
        "prompt": prompt,
        "perturbed_prompt": prompt.replace(before, after),
        "edits": [edit],
    }


def test_prompts_with_unicode_line_separators_resume(pipe: Any, tmp_path: Path) -> None:
    rows = [
        flip("sep", "a red cup to the left of\u2028a blue vase", "left", "right"),
        flip("par", "a cat sits\u2029above a box", "above", "below"),
        flip("nel", "a dog\x85to the right of a bike", "right", "left"),
    ]
    prompts = tmp_path / "perturbed.jsonl"
    prompts.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "out"
    first = make_pairs(prompts=prompts, pipeline=pipe, out=out, limit=2, show_progress=False, **RENDER)
    assert (first.written, first.remaining) == (2, 1)
    manifest = out / MANIFEST_NAME
    text = manifest.read_text(encoding="utf-8")
    # Escaped, so that even str.splitlines sees one line per pair.
    assert "\\u2028" in text and "\\u2029" in text and len(text.splitlines()) == 2
    # Manifests of earlier versions hold the separators raw: resuming must read them too.
    manifest.write_text(text.replace("\\u2028", "\u2028").replace("\\u2029", "\u2029"), encoding="utf-8")
    resumed = make_pairs(prompts=prompts, pipeline=pipe, out=out, show_progress=False, **RENDER)
    assert (resumed.written, resumed.already_done, resumed.remaining) == (1, 2, 0)
    assert "\\u0085" in manifest.read_text(encoding="utf-8").split("\n")[2]  # the line written now
    records = read_manifest(manifest).records
    assert [(r.id, r.prompt, r.perturbed_prompt) for r in records] == [
        (row["id"], row["prompt"], row["perturbed_prompt"]) for row in rows
    ]
    again = make_pairs(prompts=prompts, pipeline=pipe, out=out, show_progress=False, **RENDER)
    assert (again.written, again.already_done) == (0, 3)
