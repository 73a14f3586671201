"""Render preference pairs from perturbed prompts with a local text-to-image pipeline (``spatialscore make-pairs``).

Each record of a ``spatialscore perturb`` output file (``prompt``, ``perturbed_prompt``, ``edits``) becomes a pair:
the perfect prompt rendered as the *chosen* image and the perturbed prompt as the *rejected* image, with the same
seed (one CPU generator per image, both seeded alike) and the same settings, so only the spatial layout differs.
The result is an image folder plus a pair manifest (:mod:`spatialscore.data.manifest`) whose ``subset`` comes
from the number of perturbations and whose ``category`` joins the edit kinds (``swap+flip``).

Resumable: images are written first (temporary file, fsync, rename), then the manifest line (one append, fsync).
A restarted run drops a torn last line, re-renders pairs whose images are missing and skips every finished pair;
the settings of the first run are kept in ``make_pairs.json`` and a rerun with other settings is refused, so one
folder never mixes renders. Seeds are derived from ``(seed, id, image index)``, so an image does not depend on
batching, ordering or on where a run was interrupted.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from tqdm import tqdm

from spatialscore.cli import UsageError, run_command
from spatialscore.data.manifest import (
    JSONLineError,
    atomic_write,
    check_settings,
    exclusive_lock,
    json_line,
    parse_json_line,
)
from spatialscore.data.perturb import Edit, apply_edits, subset_for
from spatialscore.data.perturb.cli import _skipped_path

__all__ = [
    "MANIFEST_NAME",
    "MakePairsResult",
    "PerturbedPrompt",
    "PerturbedPromptsError",
    "SkippedPair",
    "check_settings",
    "cli_main",
    "exclusive_lock",
    "load_pipeline",
    "make_pairs",
    "pair_seed",
    "read_perturbed",
]

MANIFEST_NAME = "pairs.jsonl"
SETTINGS_NAME = "make_pairs.json"
SKIPPED_NAME = "skipped.jsonl"
IMAGE_DIR = "images"
_MAX_LISTED_ERRORS = 20
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
_EDIT_FIELDS = {"kind": str, "start": int, "end": int, "before": str, "after": str}
_TYPE_NAMES = {str: "a string", int: "an integer"}


# --------------------------------------------------------------------------------------------- input
@dataclass(frozen=True)
class PerturbedPrompt:
    """One renderable record of a perturbed-prompts file; ``source`` is ``"path:line"``."""

    id: str
    prompt: str
    perturbed_prompt: str
    edits: tuple[Edit, ...]
    num_perturbations: int
    source: str

    @property
    def subset(self) -> str:
        return subset_for(self.num_perturbations)

    @property
    def category(self) -> str:
        """The edit kinds in prompt order, joined with "+" (as ``spatialscore synth`` does)."""
        return "+".join(e.kind for e in self.edits)


@dataclass(frozen=True)
class SkippedPair:
    """A prompt that gives no pair, with the reason (the perturber's, or why it cannot be rendered)."""

    id: str
    prompt: str
    reason: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "reason": self.reason, "source": self.source}


class PerturbedPromptsError(ValueError):
    """Every problem found in a perturbed-prompts file, each as ``path:line: field 'x': reason``."""

    def __init__(self, errors: list[str], *, path: Path) -> None:
        self.errors = list(errors)
        listed = "\n".join(f"  {e}" for e in self.errors[:_MAX_LISTED_ERRORS])
        more = len(self.errors) - _MAX_LISTED_ERRORS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{path}: {len(self.errors)} error(s) in perturbed prompts:\n{listed}{tail}")


def _parse_edits(value: Any) -> tuple[list[Edit], list[tuple[str, str]]]:
    """Edits of one record, and ``(field, reason)`` problems."""
    if not isinstance(value, list) or not value:
        return [], [("edits", "expected a non-empty array of edits")]
    edits, problems = [], []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            problems.append((f"edits[{i}]", "expected an object"))
            continue
        bad = [
            (f"edits[{i}].{name}", f"expected {_TYPE_NAMES[kind]}")
            for name, kind in _EDIT_FIELDS.items()
            if not isinstance(item.get(name), kind) or isinstance(item.get(name), bool)
        ]
        if bad:
            problems += bad
            continue
        edits.append(Edit(**{name: item[name] for name in _EDIT_FIELDS}))
    return edits, problems


def _parse_record(
    obj: dict[str, Any], *, line: int, source: str
) -> PerturbedPrompt | SkippedPair | list[tuple[str, str]]:
    """A record, a skipped prompt, or the list of ``(field, reason)`` problems of the line."""
    raw_id = obj.get("id", line)
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or not str(raw_id).strip():
        return [("id", "expected a non-empty string or an integer")]
    record_id = str(raw_id)
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return [("prompt", "expected a non-empty string")]
    if "perturbed_prompt" not in obj and isinstance(obj.get("reason"), str):
        return SkippedPair(record_id, prompt, obj["reason"], source)
    perturbed = obj.get("perturbed_prompt")
    if not isinstance(perturbed, str):
        return [("perturbed_prompt", "expected a string (or a 'reason' for a prompt the perturber skipped)")]
    edits, problems = _parse_edits(obj.get("edits"))
    if problems:
        return problems
    try:
        rebuilt = apply_edits(prompt, edits)
    except ValueError as exc:
        return [("edits", str(exc))]
    if rebuilt != perturbed:
        return [("perturbed_prompt", "applying the edits to 'prompt' does not give 'perturbed_prompt'")]
    num = obj.get("num_perturbations", len(edits))
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        return [("num_perturbations", "expected a positive integer")]
    if obj.get("subset", subset_for(num)) != subset_for(num):
        return [("subset", f"{obj['subset']!r} does not match num_perturbations={num} ({subset_for(num)!r})")]
    if perturbed == prompt:
        return SkippedPair(record_id, prompt, "perturbed prompt equals the prompt", source)
    return PerturbedPrompt(record_id, prompt, perturbed, tuple(sorted(edits, key=lambda e: e.start)), num, source)


def _jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line, object, error)`` for each non-blank line of a JSONL file."""
    with path.open("rb") as fh:
        for line, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield line, None, f"invalid UTF-8 at byte {exc.start + 1} of the line"
                continue
            if not text.strip():
                continue
            try:
                obj = parse_json_line(text.rstrip("\r\n"))
            except JSONLineError as exc:
                yield line, None, f"invalid JSON: {exc.reason}"
                continue
            if not isinstance(obj, dict):
                yield line, None, "expected a JSON object"
                continue
            yield line, obj, None


def read_perturbed(path: str | os.PathLike[str]) -> tuple[list[PerturbedPrompt], list[SkippedPair]]:
    """Read a ``spatialscore perturb`` output file and, if present, its ``*.skipped.jsonl`` sibling.

    Rows with a ``reason`` and no ``perturbed_prompt`` (the perturber's skipped prompts) and records whose
    perturbed prompt equals the prompt come back as :class:`SkippedPair`. Every problem (JSON, types, edits that do
    not turn ``prompt`` into ``perturbed_prompt``, duplicate ids) is collected and raised together as
    :class:`PerturbedPromptsError`, each naming the file, line and field.
    """
    path = Path(path)
    records: list[PerturbedPrompt] = []
    skipped: list[SkippedPair] = []
    errors: list[str] = []
    first_line: dict[str, str] = {}
    sibling = _skipped_path(path)
    files = [path] + ([sibling] if sibling != path and sibling.is_file() else [])
    for file in files:
        for line, obj, error in _jsonl_objects(file):
            source = f"{file}:{line}"
            if obj is None:
                errors.append(f"{source}: {error}")
                continue
            parsed = _parse_record(obj, line=line, source=source)
            if isinstance(parsed, list):
                errors += [f"{source}: field '{name}': {reason}" for name, reason in parsed]
                continue
            if parsed.id in first_line:
                errors.append(
                    f"{source}: field 'id': duplicate id {parsed.id!r}, already used at {first_line[parsed.id]}"
                )
                continue
            first_line[parsed.id] = source
            (records if isinstance(parsed, PerturbedPrompt) else skipped).append(parsed)
    if errors:
        raise PerturbedPromptsError(errors, path=path)
    return records, skipped


# --------------------------------------------------------------------------------------------- rendering
def pair_seed(*, seed: int, pair_id: str, index: int) -> int:
    """The generator seed of image ``index`` of pair ``pair_id``: stable under reordering, batching and resume."""
    digest = hashlib.sha256(f"{seed}\0{pair_id}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _default_dtype(device: str) -> str:
    return "bfloat16" if device.startswith("cuda") else "float32"


def load_pipeline(path: str | os.PathLike[str], *, device: str = "cpu", dtype: str | None = None) -> Any:
    """Load any diffusers text-to-image pipeline from a local folder (never the hub), on ``device``.

    ``dtype`` (``float32``, ``bfloat16``, ``float16``) defaults to bfloat16 on CUDA and float32 elsewhere.
    """
    from spatialscore.imports import without_bitsandbytes
    from spatialscore.precision import DTYPES

    with without_bitsandbytes():  # diffusers imports it when installed; only quantized backbones need it
        from diffusers import DiffusionPipeline

    dtype = dtype or _default_dtype(device)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    folder = Path(path)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder}: no model_index.json (expected a local diffusers pipeline folder)")
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=DTYPES[dtype], local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@dataclass
class MakePairsResult:
    """What a :func:`make_pairs` run did: pairs ``written`` now, ``already_done`` before, ``remaining`` after.

    ``identical`` lists the pairs written now whose two images are pixel-identical: usually the edit lies beyond the
    text encoders' truncation (``max_sequence_length``), so the pair carries no signal; review or drop them.
    """

    manifest: Path
    written: int
    already_done: int
    remaining: int
    skipped: list[SkippedPair]
    identical: list[str]


@dataclass(frozen=True)
class _Job:
    record: PerturbedPrompt
    pair_id: str
    seed: int


def _image_stem(pair_id: str) -> str:
    """A file name for ``pair_id``: the id itself if it is safe, else a sanitised prefix plus a hash."""
    if _SAFE_NAME.fullmatch(pair_id):
        return pair_id
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", pair_id).strip("._-")[:60]
    return f"{cleaned}-{hashlib.sha256(pair_id.encode()).hexdigest()[:10]}"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    data = "".join(json_line(row) for row in rows).encode()
    atomic_write(path, lambda fh: fh.write(data))


def _exclusive(out: Path) -> AbstractContextManager[None]:
    """Hold an exclusive lock on ``out`` so that two runs never append to one manifest."""
    return exclusive_lock(out / ".make_pairs.lock", busy=f"{out}: another make-pairs run is writing to this folder")


def _load_done(manifest: Path, jobs: Mapping[str, _Job]) -> dict[str, dict[str, Any]]:
    """Finished pairs of an earlier run, by id, after dropping a torn last line and rows whose images are gone."""
    if not manifest.is_file():
        return {}
    data = manifest.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    rows: dict[str, dict[str, Any]] = {}
    # Split at "\n" only: earlier versions wrote U+2028, U+2029 and U+0085 raw, where str.splitlines splits too.
    for line, text in enumerate(complete.decode("utf-8").split("\n")[:-1], start=1):
        if not text.strip():
            continue
        try:
            row = parse_json_line(text.rstrip("\r"))
        except JSONLineError as exc:
            raise ValueError(f"{manifest}:{line}: invalid JSON ({exc.reason}); not a make-pairs manifest?") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("id", "chosen", "rejected")):
            raise ValueError(f"{manifest}:{line}: expected a pair with string 'id', 'chosen' and 'rejected'")
        job = jobs.get(row["id"])
        if job is not None and (row.get("prompt"), row.get("perturbed_prompt")) != (
            job.record.prompt,
            job.record.perturbed_prompt,
        ):
            raise ValueError(
                f"{manifest}:{line}: pair {row['id']!r} was rendered from other prompts than {job.record.source}; "
                "use a new --out folder"
            )
        if all((manifest.parent / row[side]).is_file() for side in ("chosen", "rejected")):
            rows[row["id"]] = row
        else:
            print(
                f"make-pairs: {manifest}:{line}: images of {row['id']!r} are missing; rendering it again",
                file=sys.stderr,
            )
    if complete != data or len(rows) != complete.count(b"\n"):
        _write_jsonl(manifest, list(rows.values()))
    return rows


def _save_png(image: Image.Image, path: Path) -> None:
    atomic_write(path, lambda fh: image.save(fh, format="PNG"))


def make_pairs(
    *,
    prompts: str | os.PathLike[str],
    pipeline: str | os.PathLike[str] | Any,
    out: str | os.PathLike[str],
    steps: int | None = None,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    batch_size: int = 4,
    images_per_prompt: int = 1,
    device: str = "cpu",
    dtype: str | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    limit: int | None = None,
    show_progress: bool = True,
    on_pair: Callable[[dict[str, Any]], None] | None = None,
) -> MakePairsResult:
    """Render the pairs of a perturbed-prompts file into ``out`` (``images/``, ``pairs.jsonl``, ``skipped.jsonl``).

    ``pipeline`` is a local diffusers folder (loaded with :func:`load_pipeline` on ``device`` in ``dtype``) or an
    already loaded pipeline (any callable taking ``prompt``, ``generator``, ``output_type="pil"``). ``steps``,
    ``guidance``, ``height``, ``width`` and ``call_kwargs`` are passed to every call (None: the pipeline's default).
    ``batch_size`` counts pairs per call (two images each); ``images_per_prompt`` > 1 makes pairs ``{id}-{k}``
    with their own seeds. ``limit`` stops after that many new pairs. ``on_pair`` sees each manifest row right after
    it is written (a hook for progress reporting, and for tests that interrupt a run).
    """
    if batch_size < 1 or images_per_prompt < 1 or (limit is not None and limit < 0):
        raise ValueError("batch_size and images_per_prompt must be >= 1 and limit >= 0")
    records, skipped = read_perturbed(prompts)
    jobs: dict[str, _Job] = {}
    for record in records:
        for k in range(images_per_prompt):
            pair_id = record.id if images_per_prompt == 1 else f"{record.id}-{k}"
            jobs[pair_id] = _Job(record, pair_id, pair_seed(seed=seed, pair_id=record.id, index=k))
    if isinstance(pipeline, str | os.PathLike):
        name = str(Path(pipeline).resolve())
        pipeline = load_pipeline(pipeline, device=device, dtype=dtype)
    else:
        name = str(getattr(pipeline, "name_or_path", None) or type(pipeline).__qualname__)
    out = Path(out)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    settings = {
        "pipeline": name,
        "dtype": str(getattr(pipeline, "dtype", dtype)).removeprefix("torch."),
        "steps": steps,
        "guidance": guidance,
        "height": height,
        "width": width,
        "seed": seed,
        "images_per_prompt": images_per_prompt,
        "call_kwargs": dict(call_kwargs or {}),
    }
    manifest = out / MANIFEST_NAME
    with _exclusive(out):
        check_settings(out / SETTINGS_NAME, settings)
        _write_jsonl(out / SKIPPED_NAME, [s.to_dict() for s in skipped])
        done = _load_done(manifest, jobs)
        todo = [job for pair_id, job in jobs.items() if pair_id not in done]
        if limit is not None:
            todo = todo[:limit]
        already = sum(1 for pair_id in jobs if pair_id in done)
        written = 0
        identical: list[str] = []
        with (
            manifest.open("ab") as log,
            tqdm(
                total=already + len(todo),
                initial=already,
                desc="make-pairs",
                unit="pair",
                disable=not show_progress,
            ) as bar,
        ):
            _fsync_dir(out)  # the manifest's and the settings' directory entries
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                images = _render(pipeline, batch, settings)
                rows = [
                    _write_pair(out, job, c, r) for job, c, r in zip(batch, images[0::2], images[1::2], strict=True)
                ]
                _fsync_dir(out / IMAGE_DIR)  # the images are durable before any line names them
                for job, chosen, rejected, row in zip(batch, images[0::2], images[1::2], rows, strict=True):
                    if chosen.size == rejected.size and chosen.tobytes() == rejected.tobytes():
                        identical.append(job.pair_id)
                    log.write(json_line(row).encode())
                    log.flush()
                    os.fsync(log.fileno())
                    written += 1
                    bar.update(1)
                    if on_pair is not None:
                        on_pair(row)
    return MakePairsResult(manifest, written, already, len(jobs) - already - written, skipped, identical)


def _render(pipeline: Any, batch: list[_Job], settings: Mapping[str, Any]) -> list[Image.Image]:
    """One pipeline call for a batch: ``[chosen, rejected]`` per job, both from generators seeded alike."""
    import torch

    prompts = [p for job in batch for p in (job.record.prompt, job.record.perturbed_prompt)]
    generators = [torch.Generator().manual_seed(job.seed) for job in batch for _ in range(2)]
    options = {
        "num_inference_steps": settings["steps"],
        "guidance_scale": settings["guidance"],
        "height": settings["height"],
        "width": settings["width"],
    }
    kwargs = {key: value for key, value in options.items() if value is not None}
    output = pipeline(prompt=prompts, generator=generators, output_type="pil", **kwargs, **settings["call_kwargs"])
    images = list(getattr(output, "images", output))
    if len(images) != len(prompts) or not all(isinstance(im, Image.Image) for im in images):
        raise RuntimeError(
            f"the pipeline returned {len(images)} objects for {len(prompts)} prompts, expected PIL images"
        )
    return images


def _write_pair(out: Path, job: _Job, chosen: Image.Image, rejected: Image.Image) -> dict[str, Any]:
    """Save both images and return the pair's manifest row (key order as :func:`write_manifest`)."""
    stem = _image_stem(job.pair_id)
    paths = {"chosen": f"{IMAGE_DIR}/{stem}-chosen.png", "rejected": f"{IMAGE_DIR}/{stem}-rejected.png"}
    _save_png(chosen, out / paths["chosen"])
    _save_png(rejected, out / paths["rejected"])
    record = job.record
    return {
        "id": job.pair_id,
        "prompt": record.prompt,
        "perturbed_prompt": record.perturbed_prompt,
        **paths,
        "subset": record.subset,
        "category": record.category,
        "meta": {
            "seed": job.seed,
            "num_perturbations": record.num_perturbations,
            "edits": [e.to_dict() for e in record.edits],
            "source": record.source,
        },
    }


# --------------------------------------------------------------------------------------------- CLI
def make_pairs_command(
    *,
    prompts: Path,
    pipeline: Path,
    out: Path,
    steps: int | None = None,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    batch_size: int = 4,
    images_per_prompt: int = 1,
    device: str = "cpu",
    dtype: Literal["float32", "bfloat16", "float16"] | None = None,
    call_arg: list[str] | None = None,
    limit: int | None = None,
    no_progress: bool = False,
) -> int:
    """Render each perfect and perturbed prompt with the same seed and settings; write images and
    OUT/pairs.jsonl. Rerun the same command to resume.

    Args:
        prompts: output of `spatialscore perturb` (JSONL); its .skipped.jsonl sibling is reported too
        pipeline: local diffusers pipeline folder
        out: output folder (created; resumed if it exists)
        steps: inference steps (default: the pipeline's)
        guidance: guidance scale (default: the pipeline's)
        height: image height in pixels (default: the pipeline's)
        width: image width in pixels (default: the pipeline's)
        seed: base seed; each pair's seed is derived from it and its id
        batch_size: pairs per pipeline call (2 images each)
        images_per_prompt: pairs per prompt, each with its own seed
        device: torch device to run the pipeline on (cpu, cuda, cuda:1, ...)
        dtype: default: bfloat16 on CUDA, float32 elsewhere
        call_arg: extra pipeline argument as KEY=VALUE, VALUE parsed as JSON if it can be (e.g.
            max_sequence_length=256; repeatable)
        limit: stop after this many new pairs
        no_progress: no progress bar
    """
    from spatialscore.chat import parse_options

    try:
        call_kwargs = parse_options(call_arg or [], what="--call_arg")
    except ValueError as error:
        raise UsageError(str(error)) from None
    from transformers.utils import logging as transformers_logging

    from spatialscore.imports import without_bitsandbytes

    with without_bitsandbytes():
        from diffusers.utils import logging as diffusers_logging

    # Long prompts make CLIP (77 tokens) warn on every batch; the identical-images check reports what matters.
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        result = make_pairs(
            prompts=prompts,
            pipeline=pipeline,
            out=out,
            steps=steps,
            guidance=guidance,
            height=height,
            width=width,
            seed=seed,
            batch_size=batch_size,
            images_per_prompt=images_per_prompt,
            device=device,
            dtype=dtype,
            call_kwargs=call_kwargs,
            limit=limit,
            show_progress=not no_progress,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"spatialscore make-pairs: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"spatialscore make-pairs: {result.written} pairs rendered, {result.already_done} already done, "
        f"{result.remaining} remaining -> {result.manifest}",
        file=sys.stderr,
    )
    if result.identical:
        shown = ", ".join(result.identical[:5]) + (", ..." if len(result.identical) > 5 else "")
        print(
            f"  warning: {len(result.identical)} pairs have pixel-identical images (is the edit beyond the text "
            f"encoders' max_sequence_length?): {shown}",
            file=sys.stderr,
        )
    reasons = Counter(s.reason for s in result.skipped)
    if reasons:
        plural = "" if len(result.skipped) == 1 else "s"
        print(f"  {len(result.skipped)} prompt{plural} skipped -> {out / SKIPPED_NAME}:", file=sys.stderr)
        for reason, count in reasons.most_common():
            print(f"    {count} x {reason}", file=sys.stderr)
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    """``spatialscore make-pairs`` (:func:`make_pairs_command`)."""
    return run_command(make_pairs_command, argv, prog="spatialscore make-pairs")
