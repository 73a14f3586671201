"""Preference-pair manifests: reading, validation and writing.

A manifest lists preference pairs, one per JSON Lines row (or Parquet row)::

    {"id": 7, "prompt": "a cat left of a dog", "chosen": "images/7a.png",
     "rejected": "images/7b.png", "subset": "1-pert",
     "perturbed_prompt": "a cat right of a dog", "category": "left/right",
     "meta": {"seed": 3}}

``prompt``, ``chosen`` and ``rejected`` are required; image paths are relative to
the manifest's folder (absolute paths are accepted too). Everything is validated
before training: all problems are collected and reported together, each naming
the file, line and field. Images must decode and have an aspect ratio of at most 200 (Qwen2.5-VL's processor
refuses more); 16-bit greyscale is accepted and scaled to 8 bit when loaded
(:mod:`spatialscore.data.images`). ``prompt`` and ``perturbed_prompt`` hold at most :data:`MAX_PROMPT_CHARS`
characters: a batch is padded to its longest sequence, so one 100 KB prompt made step 0 allocate gigabytes.

Decoding every image is the slow part (minutes for 10,000 pairs), so the images that passed are remembered in
``.NAME.validated.json`` beside the manifest (under the project cache folder when that folder is not writable),
each by its absolute path, size, mtime and ctime, with the checks' settings and :data:`VALIDATION_CACHE_VERSION`:
a later read re-decodes only the images that changed, were added or failed before. Rows are always re-parsed.
"""

from __future__ import annotations

import difflib
import fcntl
import functools
import hashlib
import json
import os
import stat
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from spatialscore.data.images import MAX_ASPECT_RATIO, aspect_ratio_problem, to_rgb
from spatialscore.files import atomic_write, tiny_cache_dir

__all__ = [
    "ALLOWED_FIELDS",
    "MAX_PROMPT_CHARS",
    "JSONLineError",
    "Manifest",
    "ManifestError",
    "ManifestValidationError",
    "ManifestWarning",
    "PairRecord",
    "PromptRecord",
    "VALIDATION_CACHE_VERSION",
    "atomic_write",
    "check_settings",
    "exclusive_lock",
    "json_line",
    "parse_json_line",
    "read_manifest",
    "write_manifest",
]

REQUIRED_FIELDS: tuple[str, ...] = ("prompt", "chosen", "rejected")
OPTIONAL_FIELDS: tuple[str, ...] = ("id", "subset", "perturbed_prompt", "category", "meta")
ALLOWED_FIELDS: tuple[str, ...] = REQUIRED_FIELDS + OPTIONAL_FIELDS

# Longest prompt accepted (characters): far above any spatial prompt (the procedural ones have < 200), far below
# what blows up memory (the reward model pads a batch to its longest sequence, and 100 KB of text is ~25 K tokens).
MAX_PROMPT_CHARS = 4000
_PROMPT_FIELDS = ("prompt", "perturbed_prompt")

_PARQUET_SUFFIXES = (".parquet", ".pq")
_MAX_LISTED_ERRORS = 20
_MAX_WARNED_SOURCES = 5
_IMAGE_FIELDS = ("chosen", "rejected")

# Bump whenever _check_image could judge an unchanged file differently (a new check, another limit): every
# remembered verdict is then dropped and every image decoded again.
VALIDATION_CACHE_VERSION = 1
# Images changed (ctime) less than this before a check are checked again next time rather than remembered: file
# timestamps tick coarsely (a jiffy on Linux, up to 2 s on some file systems), so a same-size rewrite right after
# the check could leave size, mtime and ctime all unchanged.
_SETTLED_NS = 2_000_000_000
_CACHE_SUFFIX = ".validated.json"

# (field or None, reason) pairs collected while validating one row.
_Problems = list[tuple[str | None, str]]


@dataclass
class _Row:
    """One manifest row while it is being validated."""

    line: int
    is_object: bool
    fields: dict[str, Any]
    problems: _Problems
    images: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class PairRecord:
    """One validated preference pair. ``chosen``/``rejected`` are absolute paths.

    ``source`` ("path:line") is provenance only: it is ignored by ``==``.
    """

    prompt: str
    chosen: Path
    rejected: Path
    id: str
    subset: str | None = None
    perturbed_prompt: str | None = None
    category: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False)
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class PromptRecord:
    """One unique perfect prompt and the ids of the pairs that use it.

    ``subset``, ``category`` and ``meta`` come from the first pair with this prompt.
    """

    prompt: str
    ids: tuple[str, ...]
    subset: str | None = None
    category: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False)


class ManifestWarning(UserWarning):
    """Warned when ``read_manifest(..., skip_invalid=True)`` drops rows."""


class ManifestError(ValueError):
    """One problem in a manifest, e.g. ``pairs.jsonl:12: field 'chosen': image not found: x.png``.

    ``line`` is 1-based (the row for Parquet) and None for file-level problems;
    ``field`` is None when the problem is not tied to one field.
    """

    def __init__(
        self, reason: str, *, path: str | os.PathLike[str], line: int | None = None, field: str | None = None
    ) -> None:
        self.reason = reason
        self.path = Path(path)
        self.line = line
        self.field = field
        location = str(path) if line is None else f"{path}:{line}"
        where = f"field '{field}': " if field is not None else ""
        super().__init__(f"{location}: {where}{reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild = functools.partial(type(self), path=self.path, line=self.line, field=self.field)
        return rebuild, (self.reason,)


class ManifestValidationError(ValueError):
    """All problems found in a manifest; ``.errors`` holds every one of them."""

    def __init__(self, errors: list[ManifestError], *, path: str | os.PathLike[str]) -> None:
        self.errors = list(errors)
        self.path = Path(path)
        listed = "\n".join(f"  {e}" for e in self.errors[:_MAX_LISTED_ERRORS])
        more = len(self.errors) - _MAX_LISTED_ERRORS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{path}: {len(self.errors)} error(s) in manifest:\n{listed}{tail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return functools.partial(type(self), path=self.path), (self.errors,)


@dataclass
class Manifest:
    """A validated manifest: its records and the problems of any skipped rows."""

    path: Path
    records: list[PairRecord]
    skipped: list[ManifestError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def subsets(self) -> dict[str | None, int]:
        """Number of records per subset (None: no subset), in first-seen order."""
        counts: dict[str | None, int] = {}
        for record in self.records:
            counts[record.subset] = counts.get(record.subset, 0) + 1
        return counts

    def prompts(self) -> list[PromptRecord]:
        """Unique perfect prompts (``prompt`` only, never ``perturbed_prompt``) in first-seen order."""
        firsts: dict[str, PairRecord] = {}
        ids: dict[str, list[str]] = {}
        for record in self.records:
            firsts.setdefault(record.prompt, record)
            ids.setdefault(record.prompt, []).append(record.id)
        return [
            PromptRecord(prompt=p, ids=tuple(ids[p]), subset=r.subset, category=r.category, meta=dict(r.meta))
            for p, r in firsts.items()
        ]


def read_manifest(
    path: str | os.PathLike[str],
    *,
    skip_invalid: bool = False,
    check_images: bool = True,
    show_progress: bool = False,
    num_workers: int = 4,
    cache: bool = True,
) -> Manifest:
    """Read and validate a JSON Lines (or ``.parquet``) pair manifest.

    Every row is checked (JSON, types, unknown keys, duplicate ids and, when
    ``check_images``, that each distinct image exists and decodes, using
    ``num_workers`` threads). All problems are collected; unless ``skip_invalid``
    they raise one ``ManifestValidationError``. With ``skip_invalid`` the bad rows
    are dropped, listed in ``Manifest.skipped`` and a ``ManifestWarning`` is issued.
    File-level problems and a manifest without valid rows always raise.

    With ``cache`` an image that passed an earlier read and is unchanged since (same size, mtime and ctime) is not
    decoded again; failures are never remembered. The cache is ``.NAME.validated.json`` beside the manifest, or
    under the project cache folder when the manifest's folder is not writable; a cache that cannot be read or
    written is ignored.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    display = str(Path(path))
    if Path(display).suffix.lower() in _PARQUET_SUFFIXES:
        rows = _read_parquet_rows(display)
    else:
        rows = _read_jsonl_rows(display)
    folder = Path(os.path.abspath(display)).parent

    parsed: list[_Row] = []
    for line, obj, problems in rows:
        row = _Row(line=line, is_object=obj is not None, fields={}, problems=problems)
        if obj is not None:
            row.fields, field_problems = _parse_fields(obj)
            row.problems.extend(field_problems)
            for name in _IMAGE_FIELDS:
                if name in row.fields:
                    row.images[name] = Path(os.path.abspath(folder / row.fields[name]))
            if "chosen" in row.images and row.images.get("rejected") == row.images["chosen"]:
                row.problems.append(("rejected", f"same image as 'chosen': {row.fields['rejected']}"))
        parsed.append(row)
    _assign_ids(parsed, Path(display).stem)
    if check_images:
        cache_file = _ValidationCache(Path(os.path.abspath(display))) if cache else None
        _check_row_images(parsed, show_progress=show_progress, num_workers=num_workers, cache=cache_file)

    records: list[PairRecord] = []
    errors: list[ManifestError] = []
    bad_sources: list[str] = []
    for row in parsed:
        source = f"{display}:{row.line}"
        if row.problems:
            errors.extend(
                ManifestError(reason, path=display, line=row.line, field=name) for name, reason in row.problems
            )
            bad_sources.append(source)
            continue
        records.append(
            PairRecord(
                prompt=row.fields["prompt"],
                chosen=row.images["chosen"],
                rejected=row.images["rejected"],
                id=row.fields["id"],
                subset=row.fields.get("subset"),
                perturbed_prompt=row.fields.get("perturbed_prompt"),
                category=row.fields.get("category"),
                meta=row.fields.get("meta", {}),
                source=source,
            )
        )

    if not records:
        errors.append(ManifestError("manifest contains no valid records", path=display))
        raise ManifestValidationError(errors, path=display)
    if errors and not skip_invalid:
        raise ManifestValidationError(errors, path=display)
    if errors:
        shown = ", ".join(bad_sources[:_MAX_WARNED_SOURCES])
        more = ", ..." if len(bad_sources) > _MAX_WARNED_SOURCES else ""
        warnings.warn(
            f"{display}: skipped {len(bad_sources)} invalid row(s) of {len(parsed)} "
            f"({len(errors)} error(s), see Manifest.skipped): {shown}{more}",
            ManifestWarning,
            stacklevel=2,
        )
    return Manifest(path=Path(display), records=records, skipped=errors)


def write_manifest(path: str | os.PathLike[str], records: Iterable[PairRecord | Mapping[str, Any]]) -> None:
    """Write records as JSON Lines, atomically (temporary file + ``os.replace``).

    Image paths inside the manifest's folder are written relative to it; others stay
    absolute. A :class:`PairRecord`'s paths are file paths (a relative one is relative to the
    working directory); mapping records are validated like manifest rows (image files are not
    checked) and their relative paths are taken as relative to the manifest folder.
    """
    target = Path(os.path.abspath(path))
    if target.suffix.lower() in _PARQUET_SUFFIXES:
        raise ValueError(f"{path}: write_manifest writes JSON Lines; use a .jsonl path")
    folder = target.parent
    lines: list[str] = []
    seen_ids: dict[str, int] = {}
    for index, record in enumerate(records):
        row = _record_to_row(record, index=index, folder=folder)
        if "id" in row:
            if row["id"] in seen_ids:
                raise ValueError(f"records[{index}]: duplicate id {row['id']!r} (also records[{seen_ids[row['id']]}])")
            seen_ids[row["id"]] = index
        lines.append(json_line(row))

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda fh: fh.write("".join(lines).encode("utf-8")))


def json_line(obj: Any) -> str:
    """``obj`` as one JSON Lines line (UTF-8 text, newline included).

    U+2028, U+2029 and U+0085 are escaped: JSON allows them raw inside strings, but ``str.splitlines`` (and many
    other line readers) split lines there, which would cut the record in two.
    """
    text = json.dumps(obj, ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085") + "\n"


class JSONLineError(ValueError):
    """A JSON Lines line that does not parse; ``reason`` says why (with the column for syntax errors)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_json_line(text: str, **kwargs: Any) -> Any:
    """``json.loads(text, **kwargs)`` for one line, every parse failure raised as :class:`JSONLineError`.

    Besides syntax errors (column counted from 1 in ``text``: strip the line ending first), that includes what
    ``json`` lets escape as a bare ``RecursionError`` (nesting deeper than about 1000 levels) or ``ValueError``
    (an integer of more than ``sys.get_int_max_str_digits()`` digits). Exceptions of a subclass of ``ValueError``
    raised by an ``object_pairs_hook`` or ``object_hook`` propagate unchanged.
    """
    try:
        return json.loads(text, **kwargs)
    except json.JSONDecodeError as error:
        raise JSONLineError(f"{error.msg} at column {error.pos + 1}") from None
    except RecursionError:
        raise JSONLineError("nested too deeply (Python's JSON parser stops at about 1000 levels)") from None
    except ValueError as error:
        if type(error) is not ValueError:
            raise
        raise JSONLineError(f"an integer of more than {sys.get_int_max_str_digits()} digits") from None


# --------------------------------------------------------------------------- reading


@contextmanager
def exclusive_lock(path: Path, *, busy: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created if missing) for the block; if another process (or
    another open of it) holds it, raise ``RuntimeError(busy)`` at once instead of waiting."""
    with path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(busy) from None
        yield


def check_settings(
    path: Path,
    settings: dict[str, Any],
    *,
    made: str = "was rendered",
    hint: str = "use a new --out folder",
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Record ``settings`` in ``path`` (JSON) on the first run; refuse a rerun with other settings.

    ``defaults``: values of settings added later, read for a record written before they existed.
    The refusal reads ``{path}: {folder} {made} with other settings (key: old -> new; ...); {hint}``.
    """
    if not path.is_file():
        atomic_write(path, lambda fh: fh.write((json.dumps(settings, indent=2) + "\n").encode()))
        return
    previous = {**(defaults or {}), **json.loads(path.read_text(encoding="utf-8"))}
    changed = [f"{k}: {previous.get(k)!r} -> {settings[k]!r}" for k in settings if previous.get(k) != settings[k]]
    if changed:
        raise ValueError(f"{path}: {path.parent} {made} with other settings ({'; '.join(changed)}); {hint}")


def _read_jsonl_rows(path: str) -> Iterator[tuple[int, dict[str, Any] | None, _Problems]]:
    """Yield ``(line, object or None, problems)`` for each non-blank line."""
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            data = raw.removeprefix(b"\xef\xbb\xbf") if line == 1 else raw
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = data[e.start : e.start + 1].hex()
                yield line, None, [(None, f"invalid UTF-8: byte 0x{bad} at byte {e.start + 1} of the line")]
                continue
            if not text.strip():
                continue
            try:
                obj = parse_json_line(text.rstrip("\r\n"), object_pairs_hook=_reject_duplicate_keys)
            except JSONLineError as e:
                yield line, None, [(None, f"invalid JSON: {e.reason}")]
                continue
            except _DuplicateKeyError as e:
                yield line, None, [(None, f"duplicate key {e.key!r} in a JSON object")]
                continue
            if not isinstance(obj, dict):
                yield line, None, [(None, f"expected a JSON object, got {_json_type(obj)}")]
                continue
            yield line, obj, []


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKeyError(key)
        obj[key] = value
    return obj


def _read_parquet_rows(path: str) -> Iterator[tuple[int, dict[str, Any] | None, _Problems]]:
    """Yield ``(row, object, problems)`` for each Parquet row, after checking the schema."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(
            f"{path}: reading Parquet manifests needs pyarrow: pip install 'spatialreward[parquet]'"
        ) from e
    try:
        parquet_file = pq.ParquetFile(path)
        schema = parquet_file.schema_arrow
    except pa.ArrowException as e:
        raise ManifestValidationError([ManifestError(f"cannot read Parquet file: {e}", path=path)], path=path) from e
    index_columns = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
    columns = [name for name in schema.names if name not in index_columns]
    schema_errors = [
        ManifestError(_unknown_key_reason(name, "column"), path=path, field=name)
        for name in columns
        if name not in ALLOWED_FIELDS
    ]
    schema_errors += [
        ManifestError("missing required column", path=path, field=name)
        for name in REQUIRED_FIELDS
        if name not in columns
    ]
    if schema_errors:
        raise ManifestValidationError(schema_errors, path=path)
    return _iter_parquet(parquet_file, columns, path=path)


def _iter_parquet(
    parquet_file: Any, columns: list[str], *, path: str
) -> Iterator[tuple[int, dict[str, Any], _Problems]]:
    import pyarrow as pa

    row = 0
    try:
        for batch in parquet_file.iter_batches(columns=columns):
            for obj in batch.to_pylist():
                row += 1
                problems: _Problems = []
                if isinstance(obj.get("meta"), str):
                    try:
                        obj["meta"] = parse_json_line(obj["meta"])
                    except JSONLineError as e:
                        del obj["meta"]
                        problems.append(("meta", f"invalid JSON string: {e.reason}"))
                yield row, obj, problems
    except pa.ArrowException as e:
        raise ManifestValidationError(
            [ManifestError(f"cannot read Parquet data after row {row}: {e}", path=path)], path=path
        ) from e


# --------------------------------------------------------------------------- validation


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _unknown_key_reason(name: str, kind: str) -> str:
    close = difflib.get_close_matches(name, ALLOWED_FIELDS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {kind}{hint}; allowed: {', '.join(ALLOWED_FIELDS)}"


def _parse_fields(obj: Mapping[str, Any]) -> tuple[dict[str, Any], _Problems]:
    """Check one row's keys and types; return its valid fields and the problems found."""
    fields: dict[str, Any] = {}
    problems: _Problems = []
    for name in obj:
        if name not in ALLOWED_FIELDS:
            problems.append((name, _unknown_key_reason(str(name), "key")))
    for name in REQUIRED_FIELDS:
        if name not in obj:
            problems.append((name, "missing required key"))
            continue
        value = obj[name]
        if not isinstance(value, str):
            problems.append((name, f"expected a string, got {_json_type(value)}"))
        elif not value.strip():
            problems.append((name, "must not be empty or whitespace"))
        elif name in _PROMPT_FIELDS and len(value) > MAX_PROMPT_CHARS:
            problems.append((name, _too_long(value)))
        else:
            fields[name] = value
    for name in OPTIONAL_FIELDS:
        value = obj.get(name)
        if value is None:
            continue
        if name == "id":
            if isinstance(value, int) and not isinstance(value, bool):
                fields["id"] = str(value)
            elif isinstance(value, str) and value.strip():
                fields["id"] = value
            else:
                problems.append(("id", f"expected a non-empty string or an integer, got {_json_type(value)}"))
        elif name == "meta":
            if isinstance(value, Mapping):
                fields["meta"] = dict(value)
            else:
                problems.append(("meta", f"expected an object, got {_json_type(value)}"))
        elif isinstance(value, str):
            if name in _PROMPT_FIELDS and len(value) > MAX_PROMPT_CHARS:
                problems.append((name, _too_long(value)))
            else:
                fields[name] = value
        else:
            problems.append((name, f"expected a string or null, got {_json_type(value)}"))
    return fields, problems


def _too_long(prompt: str) -> str:
    return f"prompt of {len(prompt)} characters; at most {MAX_PROMPT_CHARS} (MAX_PROMPT_CHARS)"


def _assign_ids(parsed: list[_Row], stem: str) -> None:
    """Give id-less rows ``{stem}-{line}`` and flag every later use of an id."""
    first_use: dict[str, tuple[int, bool]] = {}
    for row in parsed:
        if not row.is_object or any(name == "id" for name, _ in row.problems):
            continue
        generated = "id" not in row.fields
        record_id = row.fields.setdefault("id", f"{stem}-{row.line}")
        if record_id in first_use:
            other, other_generated = first_use[record_id]
            mine = " (generated from the line number)" if generated else ""
            theirs = " (generated from the line number)" if other_generated else ""
            row.problems.append(("id", f"duplicate id {record_id!r}{mine}: already used at line {other}{theirs}"))
        else:
            first_use[record_id] = (row.line, generated)


def _check_row_images(
    parsed: list[_Row], *, show_progress: bool, num_workers: int, cache: _ValidationCache | None = None
) -> None:
    """Check every distinct image once, in a thread pool, and add problems to the rows.

    With ``cache``, images it remembers as passing with their current size and timestamps are not decoded, and
    the images that pass now (and had settled before the check) are remembered for the next read."""
    unique = list(dict.fromkeys(image for row in parsed for image in row.images.values()))
    results: dict[Path, tuple[str, str] | None] = {}
    pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="manifest-image-check")
    try:
        started = time.time_ns()
        keys = dict(zip(unique, pool.map(_stat_key, unique), strict=True)) if cache is not None else {}
        remembered = cache.load() if cache is not None else {}
        passed: dict[str, list[int]] = {}
        todo = []
        for image in unique:
            key = keys.get(image)
            if key is not None and remembered.get(str(image)) == key:
                results[image] = None
                passed[str(image)] = key
            else:
                todo.append(image)
        postfix = f"{len(unique) - len(todo)} unchanged since checked" if len(todo) < len(unique) else None
        with tqdm(
            total=len(todo), desc="Checking images", unit="img", disable=not show_progress, postfix=postfix
        ) as bar:
            for image, result in zip(todo, pool.map(_check_image, todo), strict=True):
                results[image] = result
                key = keys.get(image)
                settled = key is not None and key[2] < started - _SETTLED_NS  # last changed (ctime) well before
                if result is None and settled and _stat_key(image) == key:  # and not while it was checked
                    passed[str(image)] = key
                bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if cache is not None and passed != remembered:
        cache.save(passed)
    for row in parsed:
        for name, image in row.images.items():
            result = results[image]
            if result is not None:
                kind, detail = result
                row.problems.append((name, f"{kind}: {row.fields[name]}" + (f" ({detail})" if detail else "")))


def _check_image(path: Path) -> tuple[str, str] | None:
    """Return None if ``path`` is a decodable image, else ``(kind, detail)``."""
    try:
        if path.is_dir():
            return "not an image file", "is a directory"
        if not path.is_file():
            return "image not found", ""
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        return "image not readable", e.strerror or str(e)
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            width, height = image.size
            image.draft(None, (1, 1))
            image.load()
            mode_problem = _mode_problem(image)
    except UnidentifiedImageError:
        return "corrupt image", "unrecognised image format"
    except Exception as e:  # Pillow raises many exception types on malformed files.
        return "corrupt image", f"{type(e).__name__}: {e}"
    if width < 1 or height < 1:
        return "corrupt image", f"size {width}x{height}"
    if mode_problem is not None:
        return "unsupported image", mode_problem
    ratio_problem = aspect_ratio_problem(width, height)
    if ratio_problem is not None:
        return "unsupported image", ratio_problem
    return None


def _mode_problem(image: Image.Image) -> str | None:
    """Why the loaders would refuse this decoded image's pixel format (only integer and float modes can fail)."""
    if image.mode not in ("I", "F"):
        return None
    try:
        to_rgb(image)
    except ValueError as e:
        return str(e)
    return None


def _stat_key(path: Path) -> list[int] | None:
    """``[size, mtime_ns, ctime_ns]`` of a regular file (any write, ``touch``, ``chmod`` or rename over it changes
    it), else None."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def _folder_writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


class _ValidationCache:
    """The images of one manifest that passed :func:`_check_image`, by absolute path, with their
    :func:`_stat_key` when they passed. Stored as JSON beside the manifest (``.NAME.validated.json``), or under
    ``tiny_cache_dir()/manifest-validation/`` when the manifest's folder is not writable. Never raises: a
    missing, unreadable, corrupt or outdated cache is empty, and one that cannot be written is not written."""

    def __init__(self, manifest: Path) -> None:
        self.manifest = manifest
        self.beside = manifest.with_name(f".{manifest.name}{_CACHE_SUFFIX}")

    @staticmethod
    def settings() -> dict[str, Any]:
        """What the verdicts depend on besides the file: the checks' version, limits and decoder."""
        return {
            "version": VALIDATION_CACHE_VERSION,
            "pillow": PIL.__version__,
            "max_aspect_ratio": MAX_ASPECT_RATIO,
            "max_image_pixels": Image.MAX_IMAGE_PIXELS,
        }

    def fallback(self) -> Path:
        digest = hashlib.sha256(os.fsencode(self.manifest)).hexdigest()[:16]
        return tiny_cache_dir() / "manifest-validation" / f"{self.manifest.name}-{digest}{_CACHE_SUFFIX}"

    def paths(self) -> list[Path]:
        """Where the cache is read (later ones win) and written (the last one)."""
        if _folder_writable(self.beside.parent):
            return [self.beside]
        try:
            return [self.beside, self.fallback()]
        except Exception:  # no usable cache folder (e.g. no home directory): then only the manifest's
            return [self.beside]

    def load(self) -> dict[str, list[int]]:
        images: dict[str, list[int]] = {}
        for path in self.paths():
            images.update(self._read(path))
        return images

    def _read(self, path: Path) -> dict[str, list[int]]:
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError, RecursionError):
            return {}
        if not isinstance(data, dict) or data.get("settings") != self.settings():
            return {}
        images = data.get("images")
        if not isinstance(images, dict):
            return {}
        return {
            name: key
            for name, key in images.items()
            if isinstance(key, list) and len(key) == 3 and all(type(v) is int for v in key)
        }

    def save(self, images: dict[str, list[int]]) -> None:
        manifest = _stat_key(self.manifest) or [None, None]
        data = {
            "settings": self.settings(),
            "manifest": {"path": str(self.manifest), "size": manifest[0], "mtime_ns": manifest[1]},
            "images": images,
        }
        payload = (json.dumps(data, indent=0) + "\n").encode("utf-8")
        try:
            target = self.paths()[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, lambda fh: fh.write(payload))
        except Exception:  # a cache that cannot be written only makes the next read slower
            pass


# --------------------------------------------------------------------------- writing


def _record_to_row(record: PairRecord | Mapping[str, Any], *, index: int, folder: Path) -> dict[str, Any]:
    if isinstance(record, PairRecord):
        fields: dict[str, Any] = {
            "id": record.id,
            "prompt": record.prompt,
            "chosen": os.path.abspath(record.chosen),  # a PairRecord's paths are file paths (relative: to the cwd)
            "rejected": os.path.abspath(record.rejected),
            "subset": record.subset,
            "perturbed_prompt": record.perturbed_prompt,
            "category": record.category,
            "meta": record.meta,
        }
    elif isinstance(record, Mapping):
        converted = {
            k: os.fspath(v) if k in _IMAGE_FIELDS and isinstance(v, os.PathLike) else v for k, v in record.items()
        }
        fields, problems = _parse_fields(converted)
        if problems:
            name, reason = problems[0]
            extra = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ValueError(f"records[{index}]: field '{name}': {reason}{extra}")
    else:
        raise TypeError(f"records[{index}]: expected a PairRecord or a mapping, got {type(record).__name__}")
    row: dict[str, Any] = {}
    for name in ("id", "prompt", "perturbed_prompt", "chosen", "rejected", "subset", "category", "meta"):
        value = fields.get(name)
        if name in _IMAGE_FIELDS:
            value = _relative_to(value, folder)
        if value is not None and value != {}:
            row[name] = value
    return row


def _relative_to(image: str, folder: Path) -> str:
    """``image`` relative to ``folder`` (POSIX separators) if inside it, else unchanged."""
    path = Path(image)
    if not path.is_absolute():
        return image
    path = Path(os.path.abspath(path))
    if path.is_relative_to(folder):
        return path.relative_to(folder).as_posix()
    return str(path)
