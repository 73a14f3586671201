"""Tests for the pair manifest format (spatialscore.data.manifest)."""

from __future__ import annotations

import json
import os
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spatialscore.data.manifest import (
    MAX_PROMPT_CHARS,
    Manifest,
    ManifestError,
    ManifestValidationError,
    ManifestWarning,
    PairRecord,
    PromptRecord,
    read_manifest,
    write_manifest,
)


def make_png(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path)
    return path


def write_lines(path: Path, lines: list[str | dict]) -> Path:
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines), encoding="utf-8")
    return path


def pair(i: int, **extra: object) -> dict:
    row = {
        "id": f"p{i}",
        "prompt": f"prompt {i}",
        "chosen": f"images/{i}a.png",
        "rejected": f"images/{i}b.png",
    }
    return row | extra


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for i in range(4):
        make_png(tmp_path / "images" / f"{i}a.png")
        make_png(tmp_path / "images" / f"{i}b.png", (30, 30, 200))
    return tmp_path


def errors_of(path: Path, **kwargs: object) -> list[ManifestError]:
    with pytest.raises(ManifestValidationError) as info:
        read_manifest(path, **kwargs)
    return info.value.errors


def test_happy_path_jsonl(data: Path) -> None:
    rows = [
        pair(0, subset="1-pert", perturbed_prompt="p0 swapped", category="left/right", meta={"seed": 3}),
        pair(1, id=7, subset="2-3-pert"),
    ]
    manifest = read_manifest(write_lines(data / "pairs.jsonl", rows))
    assert isinstance(manifest, Manifest)
    assert len(manifest) == 2
    assert manifest.skipped == []
    first, second = manifest.records
    assert first == PairRecord(
        prompt="prompt 0",
        chosen=data / "images" / "0a.png",
        rejected=data / "images" / "0b.png",
        id="p0",
        subset="1-pert",
        perturbed_prompt="p0 swapped",
        category="left/right",
        meta={"seed": 3},
    )
    assert first.source == f"{data / 'pairs.jsonl'}:1"
    assert second.id == "7"
    assert (second.perturbed_prompt, second.category, second.meta) == (None, None, {})
    assert manifest.subsets() == {"1-pert": 1, "2-3-pert": 1}
    assert {first, first} == {first}  # hashable although meta is a dict


def test_parquet_gives_the_same_records(data: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        pair(0, subset="1-pert", category=None, meta={"seed": 3}),
        pair(1, subset=None, category="count", meta={"seed": 4}),
    ]
    from_jsonl = read_manifest(write_lines(data / "pairs.jsonl", rows))

    pq.write_table(pa.Table.from_pylist(rows), data / "pairs.parquet")  # meta as a struct
    from_struct = read_manifest(data / "pairs.parquet")
    as_json = [r | {"meta": json.dumps(r["meta"])} for r in rows]
    pq.write_table(pa.Table.from_pylist(as_json), data / "json_meta.parquet")  # meta as a JSON string
    from_string = read_manifest(data / "json_meta.parquet")

    assert from_struct.records == from_jsonl.records
    assert from_string.records == from_jsonl.records
    assert from_struct.records[1].source == f"{data / 'pairs.parquet'}:2"


def test_parquet_row_errors_and_schema_errors(data: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        pair(0, meta="{}"),
        pair(1, prompt=None, meta="{bad"),
        pair(2, chosen="images/none.png", meta=None),
    ]
    pq.write_table(pa.Table.from_pylist(rows), data / "rows.parquet")
    errors = errors_of(data / "rows.parquet")
    assert [(e.line, e.field) for e in errors] == [(2, "meta"), (2, "prompt"), (3, "chosen")]
    assert str(errors[1]) == f"{data / 'rows.parquet'}:2: field 'prompt': expected a string, got null"

    pq.write_table(pa.Table.from_pylist([{"prompt": "x", "choosen": "a.png"}]), data / "schema.parquet")
    errors = errors_of(data / "schema.parquet", skip_invalid=True)
    assert [(e.line, e.field) for e in errors] == [(None, "choosen"), (None, "chosen"), (None, "rejected")]
    assert "did you mean 'chosen'?" in str(errors[0])

    (data / "junk.parquet").write_bytes(b"not parquet")
    (error,) = errors_of(data / "junk.parquet")
    assert error.line is None and "cannot read Parquet file" in str(error)


def test_parquet_without_pyarrow_says_how_to_install(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pip install 'spatialreward\[parquet\]'"):
        read_manifest(data / "pairs.parquet")


def test_relative_and_absolute_paths(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = data / "manifests"
    sub.mkdir()
    outside = make_png(data / "elsewhere" / "x.png")
    rows = [
        pair(0, chosen="../images/0a.png", rejected=str(outside)),
        pair(1, chosen="../images/./1a.png", rejected="../images/1b.png"),
    ]
    write_lines(sub / "pairs.jsonl", rows)
    monkeypatch.chdir(data)
    manifest = read_manifest(Path("manifests/pairs.jsonl"))  # relative manifest path, relative to cwd
    first, second = manifest.records
    assert first.chosen == data / "images" / "0a.png"
    assert first.rejected == outside
    assert second.chosen == data / "images" / "1a.png"
    assert all(r.chosen.is_absolute() and r.rejected.is_absolute() for r in manifest.records)
    assert first.source == "manifests/pairs.jsonl:1"


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        (
            '{"prompt": "a", ',
            None,
            "invalid JSON: Expecting property name enclosed in double quotes at column 17",
        ),
        ("[1, 2]", None, "expected a JSON object, got array"),
        (
            '{"id": "x", "chosen": "images/0a.png", "rejected": "images/0b.png"}',
            "prompt",
            "missing required key",
        ),
        (
            '{"prompt": 3, "chosen": "images/0a.png", "rejected": "images/0b.png"}',
            "prompt",
            "expected a string, got number",
        ),
        (
            '{"prompt": " \\t", "chosen": "images/0a.png", "rejected": "images/0b.png"}',
            "prompt",
            "must not be empty or whitespace",
        ),
        (
            '{"prompt": "a", "chosen": "images/0a.png", "rejected": "images/0b.png", "id": true}',
            "id",
            "expected a non-empty string or an integer, got boolean",
        ),
        (
            '{"prompt": "a", "chosen": "images/0a.png", "rejected": "images/0b.png", "meta": [1]}',
            "meta",
            "expected an object, got array",
        ),
        (
            '{"prompt": "a", "chosen": "images/0a.png", "rejected": "images/0b.png", "subset": 1}',
            "subset",
            "expected a string or null, got number",
        ),
        (
            '{"prompt": "a", "chosen": "images/x.png", "rejected": "images/0b.png"}',
            "chosen",
            "image not found: images/x.png",
        ),
        (
            '{"prompt": "a", "chosen": "images", "rejected": "images/0b.png"}',
            "chosen",
            "not an image file: images (is a directory)",
        ),
        (
            '{"prompt": "a", "chosen": "images/0a.png", "rejected": "images/../images/0a.png"}',
            "rejected",
            "same image as 'chosen': images/../images/0a.png",
        ),
        (
            '{"prompt": "a", "chosen": "images/0a.png", "rejected": "images/0b.png", "meta": {"k": 1, "k": 2}}',
            None,
            "duplicate key 'k' in a JSON object",
        ),
    ],
)
def test_each_error_names_file_line_and_field(data: Path, line: str, field: str | None, message: str) -> None:
    path = write_lines(data / "pairs.jsonl", [pair(0), "", line])
    (error, *rest) = errors_of(path)
    assert (error.path, error.line, error.field) == (path, 3, field)
    where = f"field '{field}': " if field else ""
    assert str(error) == f"{path}:3: {where}{message}"
    assert rest == []


def test_all_errors_are_collected_in_one_exception(data: Path) -> None:
    rows = [pair(i, chosen="missing.png", rejected="images/0b.png") for i in range(25)] + [pair(0, id="ok")]
    path = write_lines(data / "pairs.jsonl", rows)
    with pytest.raises(ManifestValidationError) as info:
        read_manifest(path)
    error = info.value
    assert len(error.errors) == 25
    assert [e.line for e in error.errors] == list(range(1, 26))
    text = str(error)
    assert text.startswith(f"{path}: 25 error(s) in manifest:\n")
    assert f"{path}:20: field 'chosen'" in text and f"{path}:21:" not in text
    assert text.endswith("... and 5 more")
    assert isinstance(error, ValueError)


def test_unknown_key_is_rejected_with_the_allowed_ones(data: Path) -> None:
    row = {"prompt": "a", "choosen": "images/0a.png", "chosen": "images/0a.png", "rejected": "images/0b.png"}
    (error,) = errors_of(write_lines(data / "pairs.jsonl", [row, pair(1)]))
    assert (error.line, error.field) == (1, "choosen")
    assert "unknown key (did you mean 'chosen'?)" in str(error)
    assert "allowed: prompt, chosen, rejected, id, subset, perturbed_prompt, category, meta" in str(error)


def test_duplicate_id_names_both_lines(data: Path) -> None:
    path = write_lines(data / "pairs.jsonl", [pair(0), pair(1), pair(2, id="p0"), pair(3, id=5), pair(1, id="5")])
    errors = errors_of(path)
    assert [(e.line, e.field) for e in errors] == [(3, "id"), (5, "id")]
    assert str(errors[0]) == f"{path}:3: field 'id': duplicate id 'p0': already used at line 1"
    assert "duplicate id '5': already used at line 4" in str(errors[1])


def test_generated_ids_use_stem_and_line_and_clash_with_explicit_ones(data: Path) -> None:
    rows = [
        {k: v for k, v in pair(0).items() if k != "id"},
        "",
        {k: v for k, v in pair(1).items() if k != "id"},
    ]
    manifest = read_manifest(write_lines(data / "pairs.jsonl", rows))
    assert [r.id for r in manifest.records] == ["pairs-1", "pairs-3"]

    (error,) = errors_of(write_lines(data / "pairs.jsonl", [*rows, pair(2, id="pairs-3")]))
    assert error.line == 4
    assert "already used at line 3 (generated from the line number)" in str(error)


def test_skip_invalid_drops_exactly_the_bad_rows(data: Path) -> None:
    rows = [pair(0), pair(1, chosen="nope.png"), "{oops", pair(2), pair(3, prompt="", subset=2), pair(0)]
    path = write_lines(data / "pairs.jsonl", rows)
    with pytest.warns(ManifestWarning) as caught:
        manifest = read_manifest(path, skip_invalid=True)
    assert [r.id for r in manifest.records] == ["p0", "p2"]
    assert [(e.line, e.field) for e in manifest.skipped] == [
        (2, "chosen"),
        (3, None),
        (5, "prompt"),
        (5, "subset"),
        (6, "id"),
    ]
    (warning,) = caught
    message = str(warning.message)
    assert "skipped 4 invalid row(s) of 6 (5 error(s)" in message
    assert f"{path}:2, {path}:3, {path}:5, {path}:6" in message
    assert warning.filename == __file__


def test_no_valid_records_is_an_error_even_when_skipping(data: Path) -> None:
    path = write_lines(data / "pairs.jsonl", ["", "   ", pair(0, chosen="nope.png")])
    errors = errors_of(path, skip_invalid=True)
    assert [(e.line, e.field) for e in errors] == [(3, "chosen"), (None, None)]
    assert str(errors[-1]) == f"{path}: manifest contains no valid records"
    (empty,) = errors_of(write_lines(data / "empty.jsonl", []))
    assert empty.reason == "manifest contains no valid records"


def test_blank_lines_bom_and_crlf_are_accepted(data: Path) -> None:
    path = data / "pairs.jsonl"
    body = "\r\n".join(["", json.dumps(pair(0)), "  ", "\t", json.dumps(pair(1)), "", ""])
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    manifest = read_manifest(path)
    assert [r.source for r in manifest.records] == [f"{path}:2", f"{path}:5"]


def test_non_utf8_line_is_named(data: Path) -> None:
    path = data / "pairs.jsonl"
    good = json.dumps(pair(0)).encode()
    path.write_bytes(good + b"\n" + b'{"prompt": "caf\xe9"}\n' + json.dumps(pair(1), ensure_ascii=False).encode())
    (error,) = errors_of(path)
    assert (error.line, error.field) == (2, None)
    assert str(error) == f"{path}:2: invalid UTF-8: byte 0xe9 at byte 16 of the line"


def test_unicode_prompt_round_trips(data: Path) -> None:
    path = write_lines(data / "pairs.jsonl", [pair(0, prompt="un café à gauche d'un chien")])
    assert read_manifest(path).records[0].prompt == "un café à gauche d'un chien"


def test_corrupt_and_unreadable_images(data: Path) -> None:
    png = (data / "images" / "0a.png").read_bytes()
    (data / "images" / "truncated.png").write_bytes(png[: len(png) // 2])
    (data / "images" / "empty.png").write_bytes(b"")
    jpeg = data / "images" / "photo.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(jpeg, quality=90)
    (data / "images" / "truncated.jpg").write_bytes(jpeg.read_bytes()[:-40])  # passes verify(), fails decode
    rows = [
        pair(0, chosen="images/truncated.png"),
        pair(1, rejected="images/empty.png"),
        pair(2, chosen="images/truncated.jpg", rejected="images/photo.jpg"),
        pair(3),
    ]
    errors = errors_of(write_lines(data / "pairs.jsonl", rows))
    assert [(e.line, e.field) for e in errors] == [(1, "chosen"), (2, "rejected"), (3, "chosen")]
    assert errors[0].reason.startswith("corrupt image: images/truncated.png (")
    assert errors[1].reason == "corrupt image: images/empty.png (unrecognised image format)"
    assert "truncated" in errors[2].reason


@pytest.mark.parity
def test_aspect_ratio_over_200_is_refused_as_the_processor_does(data: Path) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    Image.new("RGB", (1, 200), (200, 30, 30)).save(data / "images" / "tall.png")  # 200: accepted
    Image.new("RGB", (201, 1), (200, 30, 30)).save(data / "images" / "wide.png")
    path = write_lines(data / "pairs.jsonl", [pair(0, chosen="images/tall.png"), pair(1, rejected="images/wide.png")])
    (error,) = errors_of(path)
    assert (error.path, error.line, error.field) == (path, 2, "rejected")
    assert str(error) == (
        f"{path}:2: field 'rejected': unsupported image: images/wide.png (aspect ratio 201 (201x1) is over 200, "
        "which Qwen2.5-VL's processor refuses: crop or pad the image)"
    )
    smart_resize(200, 1)  # the processor's own rule, on both sides of the limit
    with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
        smart_resize(1, 201)


def test_16_bit_images_are_scaled_to_8_bit_wherever_they_are_loaded(data: Path) -> None:
    from spatialscore import benchmark
    from spatialscore.data.datamodule import ImageDataset, PairDataset
    from spatialscore.data.synthetic import checker
    from spatialscore.encode import to_uint8_rgb

    grey = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    expected = np.repeat(np.array([[0, 1, 128, 255]], dtype=np.uint8)[..., None], 3, axis=-1)
    files = {"deep.png": ("I;16", grey), "big-endian.tif": ("I;16B", grey.astype(">u2")),
             "int32.tif": ("I", grey.astype(np.int32))}  # fmt: skip
    for name, (mode, values) in files.items():
        Image.fromarray(values).save(data / "images" / name)
        with Image.open(data / "images" / name) as image:
            assert image.mode == mode
    rows = [pair(i, chosen=f"images/{name}") for i, name in enumerate(files)]
    manifest = read_manifest(write_lines(data / "pairs.jsonl", rows))
    for record in manifest.records:
        assert np.array_equal(PairDataset([record])[0]["chosen"], expected), record.chosen
        assert np.array_equal(to_uint8_rgb(record.chosen), expected)
        with Image.open(record.chosen) as image:
            assert np.array_equal(to_uint8_rgb(image), expected)
            assert np.array_equal(checker._as_rgb(image), expected.astype(np.float32))
        assert np.array_equal(np.asarray(benchmark._load_rgb(record.chosen)), expected)
        tensor = ImageDataset([record], image_size=None)[0]["image"]
        assert np.array_equal((tensor * 255).round().byte().permute(1, 2, 0).numpy(), expected)
    # 32-bit values beyond 16 bit have no 8-bit meaning: refused up front, and by the loaders, naming the file.
    huge = data / "images" / "huge.tif"
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(huge)
    path = write_lines(data / "huge.jsonl", [pair(0, chosen="images/huge.tif"), pair(1)])
    (error,) = errors_of(path)
    assert str(error) == (
        f"{path}:1: field 'chosen': unsupported image: images/huge.tif (32-bit integer image (mode I) with values "
        "0..70000, outside 0..65535: save it as 8-bit RGB)"
    )
    record = read_manifest(path, check_images=False).records[0]
    with pytest.raises(ValueError, match=f"^{huge}: 32-bit integer image"):
        PairDataset([record])[0]


def test_prompts_longer_than_max_prompt_chars_are_refused_by_file_line_and_field(data: Path) -> None:
    at_limit = "a red circle left of a blue square " * (MAX_PROMPT_CHARS // 35) + "x" * (MAX_PROMPT_CHARS % 35)
    assert len(at_limit) == MAX_PROMPT_CHARS == 4000
    long = "a red circle left of a blue square " * 3000  # 105,000 characters: gigabytes at step 0 before
    rows = [pair(0, prompt=at_limit), pair(1, prompt=long), pair(2, perturbed_prompt=at_limit + "y"), pair(3)]
    path = write_lines(data / "pairs.jsonl", rows)
    assert [str(e) for e in errors_of(path)] == [
        f"{path}:2: field 'prompt': prompt of {len(long)} characters; at most 4000 (MAX_PROMPT_CHARS)",
        f"{path}:3: field 'perturbed_prompt': prompt of 4001 characters; at most 4000 (MAX_PROMPT_CHARS)",
    ]
    with pytest.warns(ManifestWarning):
        kept = read_manifest(path, skip_invalid=True)
    assert [r.id for r in kept.records] == ["p0", "p3"] and kept.records[0].prompt == at_limit
    with pytest.raises(ValueError, match=r"records\[0\]: field 'prompt': prompt of 105000 characters"):
        write_manifest(data / "out.jsonl", [pair(1, prompt=long)])


def test_too_deep_json_and_too_long_integers_name_file_and_line(data: Path) -> None:
    rows = [pair(0), '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}", '{"id": ' + "7" * 5000 + "}", pair(1)]
    path = write_lines(data / "pairs.jsonl", rows)
    assert [str(e) for e in errors_of(path)] == [
        f"{path}:2: invalid JSON: nested too deeply (Python's JSON parser stops at about 1000 levels)",
        f"{path}:3: invalid JSON: an integer of more than 4300 digits",
    ]
    assert [(e.line, e.field) for e in errors_of(path)] == [(2, None), (3, None)]


def test_unreadable_image(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spatialscore.data import manifest as module

    def open_denying_0b(file: Path, *args: object, **kwargs: object) -> object:
        if Path(file).name == "0b.png":
            raise PermissionError(13, "Permission denied")
        return open(file, *args, **kwargs)

    monkeypatch.setattr(module, "open", open_denying_0b, raising=False)  # fails as root too, unlike chmod
    rows = [pair(0, chosen="images/0b.png", rejected="images/1b.png"), pair(1)]
    (error,) = errors_of(write_lines(data / "pairs.jsonl", rows))
    assert (
        str(error) == f"{data / 'pairs.jsonl'}:1: field 'chosen': image not readable: images/0b.png (Permission denied)"
    )


def test_each_image_is_checked_once(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spatialscore.data import manifest as module

    checked: list[Path] = []
    original = module._check_image

    def spy(path: Path) -> tuple[str, str] | None:
        checked.append(path)
        return original(path)

    monkeypatch.setattr(module, "_check_image", spy)
    rows = [
        pair(0),
        pair(1, chosen="images/0a.png"),
        pair(2, chosen="./images/0b.png", rejected="images/1b.png"),
    ]
    manifest = read_manifest(write_lines(data / "pairs.jsonl", rows), num_workers=2, show_progress=True)
    assert len(manifest) == 3
    assert sorted(checked) == sorted({data / "images" / n for n in ("0a.png", "0b.png", "1b.png")})


def test_check_images_false_skips_file_checks(data: Path) -> None:
    manifest = read_manifest(write_lines(data / "pairs.jsonl", [pair(0, chosen="nope.png")]), check_images=False)
    assert manifest.records[0].chosen == data / "nope.png"


def test_num_workers_must_be_positive(data: Path) -> None:
    with pytest.raises(ValueError, match="num_workers"):
        read_manifest(data / "pairs.jsonl", num_workers=0)


def test_prompts_view_dedups_in_first_seen_order(data: Path) -> None:
    rows = [
        pair(0, prompt="B", perturbed_prompt="A", subset="1-pert", category="left", meta={"k": 1}),
        pair(1, prompt="A", subset="2-3-pert"),
        pair(2, prompt="B", subset="2-3-pert", category="other"),
        pair(3, prompt="C"),
    ]
    manifest = read_manifest(write_lines(data / "pairs.jsonl", rows))
    assert manifest.prompts() == [
        PromptRecord(prompt="B", ids=("p0", "p2"), subset="1-pert", category="left", meta={"k": 1}),
        PromptRecord(prompt="A", ids=("p1",), subset="2-3-pert"),
        PromptRecord(prompt="C", ids=("p3",)),
    ]
    assert manifest.subsets() == {"1-pert": 1, "2-3-pert": 2, None: 1}


def test_write_manifest_round_trip(data: Path) -> None:
    outside = make_png(data.parent / f"{data.name}-outside" / "x.png")
    rows = [
        pair(0, subset="1-pert", perturbed_prompt="swapped", category="left", meta={"seed": 1, "tags": ["a"]}),
        pair(1, rejected=str(outside)),
        {k: v for k, v in pair(2).items() if k != "id"},
    ]
    original = read_manifest(write_lines(data / "pairs.jsonl", rows))

    write_manifest(data / "copy.jsonl", original.records)
    written = [json.loads(line) for line in (data / "copy.jsonl").read_text(encoding="utf-8").splitlines()]
    assert written[0] == rows[0]
    assert written[1]["rejected"] == str(outside)
    assert written[2]["id"] == "pairs-3"
    assert read_manifest(data / "copy.jsonl").records == original.records

    nested = data / "exports" / "filtered.jsonl"
    write_manifest(nested, [r for r in original.records if r.subset is None])
    assert json.loads(nested.read_text().splitlines()[0])["chosen"] == str(data / "images" / "1a.png")
    assert [r.id for r in read_manifest(nested).records] == ["p1", "pairs-3"]
    assert sorted(p.name for p in nested.parent.iterdir()) == ["filtered.jsonl"]  # no temp file left


def test_write_manifest_accepts_and_validates_dicts(data: Path) -> None:
    path = data / "dicts.jsonl"
    write_manifest(path, [pair(0, id=3), pair(1, chosen=data / "images" / "1a.png")])
    assert [json.loads(line)["chosen"] for line in path.read_text().splitlines()] == [
        "images/0a.png",
        "images/1a.png",
    ]
    assert [r.id for r in read_manifest(path).records] == ["3", "p1"]

    with pytest.raises(ValueError, match=r"records\[1\]: field 'choosen': unknown key"):
        write_manifest(path, [pair(0), pair(1) | {"choosen": "x.png"}])
    with pytest.raises(ValueError, match=r"records\[1\]: duplicate id 'p0' \(also records\[0\]\)"):
        write_manifest(path, [pair(0), pair(1, id="p0")])
    with pytest.raises(ValueError, match="JSON Lines"):
        write_manifest(data / "out.parquet", [pair(0)])
    assert [r.id for r in read_manifest(path).records] == ["3", "p1"]  # failed writes left it untouched


def test_errors_pickle(data: Path) -> None:
    path = write_lines(data / "pairs.jsonl", [pair(0, chosen="nope.png")])
    error = errors_of(path, skip_invalid=True)[0]
    clone = pickle.loads(pickle.dumps(error))
    assert (str(clone), clone.path, clone.line, clone.field) == (
        str(error),
        error.path,
        error.line,
        error.field,
    )
    with pytest.raises(ManifestValidationError) as info:
        read_manifest(path)
    bundle = pickle.loads(pickle.dumps(info.value))
    assert str(bundle) == str(info.value) and len(bundle.errors) == 2


def test_valid_manifest_warns_nothing(data: Path) -> None:
    path = write_lines(data / "pairs.jsonl", [pair(0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_manifest(path, skip_invalid=True)) == 1


def test_pair_record_paths_relative_to_the_working_directory_are_written_right(tmp_path, monkeypatch):
    from spatialscore.data.manifest import PairRecord

    (tmp_path / "renders").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "renders" / name)
    monkeypatch.chdir(tmp_path)
    record = PairRecord(id="p", prompt="x", chosen=Path("renders/a.png"), rejected=Path("renders/b.png"))
    write_manifest(tmp_path / "out" / "pairs.jsonl", [record])  # the manifest lives in another folder
    read = read_manifest(tmp_path / "out" / "pairs.jsonl").records[0]
    assert (read.chosen, read.rejected) == (tmp_path / "renders" / "a.png", tmp_path / "renders" / "b.png")


# --------------------------------------------------------------------------- validation cache


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remember images however recently they were written (by default images changed less than 2 s before a
    check are checked again next time, as a same-size rewrite within one timestamp tick could go unseen)."""
    from spatialscore.data import manifest as module

    monkeypatch.setattr(module, "_SETTLED_NS", -3600 * 10**9)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The images validation decodes, in order (``_check_image`` is the one function that opens them)."""
    from spatialscore.data import manifest as module

    calls: list[Path] = []
    original = module._check_image

    def spy(path: Path) -> tuple[str, str] | None:
        calls.append(path)
        return original(path)

    monkeypatch.setattr(module, "_check_image", spy)
    return calls


def four_pairs(data: Path) -> Path:
    return write_lines(data / "pairs.jsonl", [pair(i) for i in range(4)])


def test_second_read_of_an_unchanged_manifest_opens_no_image(data: Path, settled: None, opened: list[Path]) -> None:
    path = four_pairs(data)
    first = read_manifest(path)
    assert len(opened) == 8
    cache = data / ".pairs.jsonl.validated.json"
    assert sorted(json.loads(cache.read_text())["images"]) == sorted(str(p) for p in opened)
    opened.clear()
    second = read_manifest(path, show_progress=True)
    assert opened == [] and second.records == first.records
    assert read_manifest(path, cache=False).records == first.records and len(opened) == 8  # cache=False: all


def test_a_touched_or_rewritten_image_alone_is_checked_again(data: Path, settled: None, opened: list[Path]) -> None:
    path = four_pairs(data)
    read_manifest(path)
    touched = data / "images" / "2a.png"
    info = touched.stat()
    os.utime(touched, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    opened.clear()
    read_manifest(path)
    assert opened == [touched]
    opened.clear()
    read_manifest(path)
    assert opened == []  # re-remembered
    noise = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(noise).save(data / "images" / "1b.png")  # new bytes, same 8x6 size
    read_manifest(path)
    assert opened == [data / "images" / "1b.png"]


def test_an_image_corrupted_after_caching_is_still_caught(data: Path, settled: None, opened: list[Path]) -> None:
    path = four_pairs(data)
    read_manifest(path)
    broken = data / "images" / "3a.png"
    broken.write_bytes(broken.read_bytes()[:20])  # truncated
    opened.clear()
    cached = errors_of(path)
    assert opened == [broken]
    assert [str(e) for e in cached] == [str(e) for e in errors_of(path, cache=False)]
    assert str(cached[0]).startswith(f"{path}:4: field 'chosen': corrupt image: images/3a.png (")
    opened.clear()
    errors_of(path)
    assert opened == [broken]  # a failure is never remembered: checked again every time
    assert str(broken) not in json.loads((data / ".pairs.jsonl.validated.json").read_text())["images"]


def test_a_manifest_edit_checks_only_the_new_images(data: Path, settled: None, opened: list[Path]) -> None:
    path = write_lines(data / "pairs.jsonl", [pair(0), pair(1)])
    read_manifest(path)
    make_png(data / "images" / "9a.png")
    write_lines(path, [pair(0), pair(1, rejected="images/9a.png")])
    opened.clear()
    assert read_manifest(path).records[1].rejected == data / "images" / "9a.png"
    assert opened == [data / "images" / "9a.png"]
    cached = json.loads((data / ".pairs.jsonl.validated.json").read_text())
    assert str(data / "images" / "1b.png") not in cached["images"]  # no longer in the manifest: forgotten
    assert cached["manifest"]["size"] == path.stat().st_size


def test_new_version_or_corrupt_cache_checks_everything(
    data: Path, settled: None, opened: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from spatialscore.data import manifest as module

    path = four_pairs(data)
    read_manifest(path)
    monkeypatch.setattr(module, "VALIDATION_CACHE_VERSION", module.VALIDATION_CACHE_VERSION + 1)
    opened.clear()
    read_manifest(path)
    assert len(opened) == 8
    (data / ".pairs.jsonl.validated.json").write_text("{not json")
    opened.clear()
    read_manifest(path)
    assert len(opened) == 8
    opened.clear()
    read_manifest(path)
    assert opened == []  # the corrupt cache was replaced


def test_recently_changed_images_are_not_remembered(data: Path, opened: list[Path]) -> None:
    path = four_pairs(data)  # the fixture's images were written just now
    read_manifest(path)
    opened.clear()
    read_manifest(path)
    assert len(opened) == 8
    assert not (data / ".pairs.jsonl.validated.json").exists()


def test_read_only_folder_caches_in_the_project_cache_folder(
    data: Path, settled: None, opened: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path_factory
) -> None:
    from spatialscore.data import manifest as module

    cache_dir = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SPATIALREWARD_CACHE", str(cache_dir))
    monkeypatch.setattr(module, "_folder_writable", lambda folder: False)  # as root, chmod cannot make one
    path = four_pairs(data)
    read_manifest(path)
    opened.clear()
    read_manifest(path)
    assert opened == []
    assert not (data / ".pairs.jsonl.validated.json").exists()
    (stored,) = (cache_dir / "manifest-validation").iterdir()
    assert stored.name.startswith("pairs.jsonl-") and json.loads(stored.read_text())["manifest"]["path"] == str(path)


def test_a_cache_that_cannot_be_written_falls_back_to_validating(
    data: Path, settled: None, opened: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from spatialscore.data import manifest as module

    def refuse(path: Path, write: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(module, "atomic_write", refuse)
    path = four_pairs(data)
    assert len(read_manifest(path)) == 4
    opened.clear()
    assert len(read_manifest(path)) == 4
    assert len(opened) == 8
