"""Benchmark scorers on a pair manifest: pairwise accuracy per subset and category, with bootstrap CIs.

    spatialscore benchmark --pairs data/test.jsonl --scorer ours=spatialscore:runs/export \\
        --scorer rule --scorer constant --scorer random --out results/bench

Every scorer judges the chosen and the rejected image of each pair against the pair's prompt; a pair is won if
the chosen image scores higher (ties count half). Scorer specs (optionally ``NAME=SPEC``):

- ``spatialscore:PATH``: a folder written by ``SpatialScore.save_pretrained`` (scores are ``mu``);
- ``rule``: the procedural scenes' :class:`~spatialscore.data.synthetic.RuleChecker`;
- ``constant``: always 0 (all ties, accuracy 0.5); ``random[:SEED]``: uniform random scores;
- ``judge:pointwise,model=M,base_url=URL[,key=value...]`` and ``judge:pairwise,...``: a VLM judge behind any
  OpenAI-compatible chat endpoint (:mod:`spatialscore.judges`; the options are the fields of its
  :class:`~spatialscore.chat.EndpointConfig` and ``attempts``, an unknown one refused by name);
- ``module:Class`` or ``module:function``: a plug-in implementing :class:`Scorer` (a class is instantiated
  without arguments; the current directory is importable), or :class:`PairwiseScorer`.

A :class:`PairwiseScorer` (a pairwise judge) sees each pair at once instead of each image: its preference ``p``
for the chosen image becomes the scores ``(p, 1 - p)``, so ``p = 0.5`` is a tie.

A pair whose score difference is undefined (a NaN score, or both images at the same infinity, as from a scorer
that fails) has no outcome: rather than count it as a loss, the run fails (:class:`UndefinedScoresError`, exit
status 1 from the command line) naming each such scorer and its number of pairs, and writes nothing.

Images are decoded once and shared by all pointwise scorers (a pairwise scorer decodes each batch of pairs).
Writes ``results.json``, ``table.md`` (rows: subsets and overall; columns: scorers), ``categories.md``,
``scores.jsonl`` (per-pair scores) and ``accuracy.png``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from spatialscore.data.images import open_rgb
from spatialscore.data.manifest import Manifest, ManifestValidationError, PairRecord, read_manifest
from spatialscore.metrics import PairwiseAccuracy

__all__ = [
    "SCORER_FORMS",
    "ConstantScorer",
    "PairwiseScorer",
    "RandomScorer",
    "Scorer",
    "ScorerSpec",
    "ScorerSpecError",
    "SpatialScoreScorer",
    "UndefinedScoresError",
    "build_scorer",
    "cli_main",
    "draw_accuracy_chart",
    "format_tables",
    "parse_scorer_spec",
    "run_benchmark",
]

SCORER_FORMS = (
    "spatialscore:PATH (a saved SpatialScore folder)",
    "rule (RuleChecker)",
    "constant (always 0)",
    "random or random:SEED (uniform random scores)",
    "judge:pointwise|pairwise,model=M,base_url=URL[,key=value...] (a VLM judge on an OpenAI-compatible endpoint)",
    "module:Class or module:function (a plug-in scorer)",
    "any of these as NAME=SPEC to set the display name",
)
NO_LABEL = "(none)"
METRIC_KEYS = {
    "accuracy": "accuracy",
    "accuracy_no_ties": "accuracy_no_ties",
    "tie_rate": "tie_rate",
    "n": "num_pairs",
    "ci_low": "accuracy_ci_low",
    "ci_high": "accuracy_ci_high",
}
_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


class Scorer(Protocol):
    """A batched spatial scorer: one float per (prompt, image); higher means more spatially correct."""

    def __call__(self, *, prompts: list[str], images: list[Image.Image]) -> Sequence[float]: ...


@runtime_checkable
class PairwiseScorer(Protocol):
    """A batched pairwise scorer: the preference in [0, 1] for ``first[i]`` over ``second[i]`` given ``prompts[i]``."""

    def compare(
        self, *, prompts: Sequence[str], first: Sequence[Image.Image], second: Sequence[Image.Image]
    ) -> Sequence[float]: ...


class ScorerSpecError(ValueError):
    """A ``--scorer`` spec that cannot be parsed or loaded."""


class UndefinedScoresError(ValueError):
    """Scorers gave pairs an undefined score difference; ``counts[name]`` is the number of such pairs."""

    def __init__(self, counts: Mapping[str, int], *, total: int, examples: Mapping[str, PairRecord]) -> None:
        self.counts = dict(counts)
        lines = [
            f"  scorer {name!r}: {count} of {total} pairs, e.g. pair {examples[name].id!r} ({examples[name].source})"
            for name, count in counts.items()
        ]
        super().__init__(
            "undefined score differences (a NaN score, or the same infinite score for both images), which pairwise "
            "accuracy would count as losses:\n" + "\n".join(lines)
        )


@dataclass(frozen=True)
class ScorerSpec:
    """A parsed scorer spec: display ``name``, ``kind`` (spatialscore, rule, constant, random, plugin), ``target``."""

    name: str
    kind: str
    target: str = ""


class ConstantScorer:
    """Gives every image the same score: every pair is a tie (accuracy 0.5)."""

    def __init__(self, *, value: float = 0.0) -> None:
        self.value = float(value)

    def __call__(self, *, prompts: list[str], images: list[Image.Image]) -> list[float]:
        return [self.value] * len(prompts)


class RandomScorer:
    """Uniform random scores in [0, 1) from a seeded generator: the chance floor."""

    def __init__(self, *, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, *, prompts: list[str], images: list[Image.Image]) -> list[float]:
        return self.rng.random(len(prompts)).tolist()


class SpatialScoreScorer:
    """A saved SpatialScore as a :class:`Scorer` (its ``mu``)."""

    def __init__(self, path: str | os.PathLike[str], *, batch_size: int = 32, device: str | None = None) -> None:
        from spatialscore.model import SpatialScore

        self.model = SpatialScore.from_pretrained(path, device=device or _default_device())
        self.batch_size = batch_size

    def __call__(self, *, prompts: list[str], images: list[Image.Image]) -> list[float]:
        return self.model.score(prompts=prompts, images=images, batch_size=self.batch_size).mu.tolist()


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _unknown(spec: str, reason: str) -> ScorerSpecError:
    forms = "\n".join(f"  {form}" for form in SCORER_FORMS)
    return ScorerSpecError(f"scorer {spec!r}: {reason}; accepted forms:\n{forms}")


def parse_scorer_spec(spec: str) -> ScorerSpec:
    """Parse ``[NAME=]SPEC`` (see :data:`SCORER_FORMS`) without loading anything."""
    name, sep, body = spec.partition("=")
    if not sep or not name or any(c in name for c in ":/\\"):
        name, body = spec, spec
    name, body = name.strip(), body.strip()
    if not name or not body:
        raise _unknown(spec, "empty name or spec")
    head, colon, tail = body.partition(":")
    if not colon:
        if body in ("rule", "constant", "random"):
            return ScorerSpec(name, body)
        raise _unknown(spec, "unknown scorer")
    if not tail:
        raise _unknown(spec, f"nothing after {head + ':'!r}")
    if head == "spatialscore":
        return ScorerSpec(name, "spatialscore", tail)
    if head == "judge":
        from spatialscore.judges import parse_judge_spec

        try:
            mode, options = parse_judge_spec(tail)
        except ValueError as error:
            raise _unknown(spec, str(error)) from None
        return ScorerSpec(f"{mode}:{options['model']}" if name == body else name, "judge", tail)
    if head == "random":
        try:
            int(tail)
        except ValueError:
            raise _unknown(spec, f"random seed must be an integer, got {tail!r}") from None
        return ScorerSpec(name, "random", tail)
    if not all(part.isidentifier() for part in head.split(".") + tail.split(".")):
        raise _unknown(spec, "a plug-in must be module:attribute with Python identifiers")
    return ScorerSpec(name, "plugin", body)


def build_scorer(spec: ScorerSpec, *, batch_size: int = 32, device: str | None = None, seed: int = 0) -> Scorer:
    """Load the scorer of a parsed spec; ``seed`` is the default seed of ``random``."""
    if spec.kind == "rule":
        from spatialscore.data.synthetic import RuleChecker

        return RuleChecker()
    if spec.kind == "constant":
        return ConstantScorer()
    if spec.kind == "random":
        return RandomScorer(seed=int(spec.target) if spec.target else seed)
    if spec.kind == "spatialscore":
        try:
            return SpatialScoreScorer(spec.target, batch_size=batch_size, device=device)
        except FileNotFoundError as error:
            raise ScorerSpecError(f"scorer {spec.name!r}: {error}") from error
    if spec.kind == "judge":
        from spatialscore.judges import build_judge, parse_judge_spec

        try:
            return build_judge(*parse_judge_spec(spec.target))
        except ValueError as error:
            raise ScorerSpecError(f"scorer {spec.name!r}: {error}") from error
    if spec.kind == "plugin":
        return _load_plugin(spec)
    raise ScorerSpecError(f"scorer {spec.name!r}: unknown kind {spec.kind!r}")


def _load_plugin(spec: ScorerSpec) -> Scorer:
    module_name, _, attribute = spec.target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise _unknown(spec.target, f"cannot import module {module_name!r} ({error})") from error
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ScorerSpecError(f"scorer {spec.target!r}: {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if inspect.isclass(obj):
        try:
            obj = obj()
        except TypeError as error:
            raise ScorerSpecError(f"scorer {spec.target!r}: cannot instantiate without arguments: {error}") from error
    if not callable(obj):
        raise ScorerSpecError(f"scorer {spec.target!r}: {type(obj).__name__} object is not callable")
    return obj


def _as_scores(name: str, raw: Any, expected: int) -> np.ndarray:
    """Validate a scorer's output: ``expected`` floats (NaN and inf pass here; see :class:`UndefinedScoresError`)."""
    if hasattr(raw, "detach"):
        raw = raw.detach().cpu().float().numpy()
    scores = np.asarray(raw, dtype=np.float64).reshape(-1)
    if scores.shape[0] != expected:
        raise ValueError(f"scorer {name!r} returned {scores.shape[0]} scores for {expected} images")
    return scores


def _labels(values: Sequence[str | None]) -> list[str] | None:
    """Group labels for the metric (None if no record has one; missing labels become ``NO_LABEL``)."""
    if all(value is None for value in values):
        return None
    return [NO_LABEL if value is None else value for value in values]


def _queries(records: Sequence[PairRecord]) -> list[tuple[str, Path]]:
    """Unique (prompt, image) queries, grouped by image so that each image is decoded once."""
    prompts_by_image: dict[Path, dict[str, None]] = {}
    for record in records:
        for image in (record.chosen, record.rejected):
            prompts_by_image.setdefault(image, {})[record.prompt] = None
    return [(prompt, image) for image, prompts in prompts_by_image.items() for prompt in prompts]


def _score_all(
    queries: list[tuple[str, Path]], scorers: Mapping[str, Scorer], *, batch_size: int, show_progress: bool
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Scores of every query by every scorer, batch by batch; images are decoded once and shared."""
    scores = {name: np.empty(len(queries)) for name in scorers}
    seconds = dict.fromkeys(scorers, 0.0)
    bars = {
        name: tqdm(total=len(queries), desc=f"scoring {name}", unit="img", position=i, disable=not show_progress)
        for i, name in enumerate(scorers)
    }
    loaded: dict[Path, Image.Image] = {}
    try:
        for start in range(0, len(queries), batch_size):
            batch = queries[start : start + batch_size]
            loaded = {
                path: loaded[path] if path in loaded else _load_rgb(path) for path in dict.fromkeys(p for _, p in batch)
            }
            prompts = [prompt for prompt, _ in batch]
            images = [loaded[path] for _, path in batch]
            for name, scorer in scorers.items():
                begin = time.perf_counter()
                raw = scorer(prompts=list(prompts), images=list(images))
                seconds[name] += time.perf_counter() - begin
                scores[name][start : start + len(batch)] = _as_scores(name, raw, len(batch))
                bars[name].update(len(batch))
    finally:
        for bar in bars.values():
            bar.close()
    return scores, seconds


def _compare_all(
    records: Sequence[PairRecord], name: str, scorer: PairwiseScorer, *, batch_size: int, show_progress: bool
) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    """A pairwise scorer's ``(chosen, rejected)`` scores ``(p, 1 - p)`` of every pair, and its seconds."""
    preference = np.empty(len(records))
    seconds = 0.0
    with tqdm(total=len(records), desc=f"comparing {name}", unit="pair", disable=not show_progress) as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            paths = dict.fromkeys(p for r in batch for p in (r.chosen, r.rejected))
            loaded = {path: _load_rgb(path) for path in paths}
            begin = time.perf_counter()
            raw = scorer.compare(
                prompts=[r.prompt for r in batch],
                first=[loaded[r.chosen] for r in batch],
                second=[loaded[r.rejected] for r in batch],
            )
            seconds += time.perf_counter() - begin
            preference[start : start + len(batch)] = _as_scores(name, raw, len(batch))
            bar.update(len(batch))
    return (preference, 1.0 - preference), seconds


def _load_rgb(path: Path) -> Image.Image:
    return open_rgb(path)


def _group(metrics: Mapping[str, torch.Tensor], prefix: str) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {}
    for key, source in METRIC_KEYS.items():
        value = metrics.get(prefix + source)
        if value is None or math.isnan(float(value)):
            out[key] = None
        else:
            out[key] = int(value) if key == "n" else float(value)
    return out


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("spatialreward", "torch", "torchmetrics", "transformers", "pillow", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def run_benchmark(
    *,
    manifest: Manifest | str | os.PathLike[str],
    scorers: Mapping[str, Scorer],
    out_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    bootstrap: int = 1000,
    seed: int = 0,
    show_progress: bool = True,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score every pair of ``manifest`` with every scorer and return the results dict (see ``results.json``).

    Raises :class:`UndefinedScoresError` (before writing anything) when a scorer leaves a pair's score difference
    undefined: a NaN score, or both images at the same infinity; other infinite scores order as usual.
    ``bootstrap``: resamples of the 95% CIs (0 disables them), seeded with ``seed``. With ``out_dir`` also
    writes ``results.json``, ``table.md``, ``categories.md``, ``scores.jsonl`` and ``accuracy.png``.
    ``command`` is recorded in the results (default: ``sys.argv``).
    """
    if not scorers:
        raise ValueError("no scorers given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(manifest, Manifest):
        if not Path(manifest).is_file():
            raise FileNotFoundError(f"manifest not found: {manifest}")
        manifest = read_manifest(manifest, show_progress=show_progress)
    records = manifest.records
    subsets = _labels([r.subset for r in records])
    categories = _labels([r.category for r in records])
    subset_names = sorted(set(subsets or []))
    category_names = sorted(set(categories or []))

    queries = _queries(records)
    index = {query: i for i, query in enumerate(queries)}
    chosen_rows = [index[(r.prompt, r.chosen)] for r in records]
    rejected_rows = [index[(r.prompt, r.rejected)] for r in records]
    pairwise = {name: s for name, s in scorers.items() if isinstance(s, PairwiseScorer)}
    pointwise = {name: s for name, s in scorers.items() if name not in pairwise}
    scores, seconds = (
        _score_all(queries, pointwise, batch_size=batch_size, show_progress=show_progress) if pointwise else ({}, {})
    )

    results: dict[str, Any] = {
        "command": list(sys.argv if command is None else command),
        "manifest": str(manifest.path),
        "num_pairs": len(records),
        "num_images": len({q[1] for q in queries}),
        "num_queries": len(queries),
        "batch_size": batch_size,
        "bootstrap": bootstrap,
        "seed": seed,
        "ci_level": 0.95,
        "versions": _versions(),
        "subsets": subset_names,
        "categories": category_names,
        "scorers": {},
    }
    pair_scores = {name: (scores[name][chosen_rows], scores[name][rejected_rows]) for name in pointwise}
    for name, scorer in pairwise.items():
        pair_scores[name], seconds[name] = _compare_all(
            records, name, scorer, batch_size=batch_size, show_progress=show_progress
        )
    pair_scores = {name: pair_scores[name] for name in scorers}
    undefined: dict[str, int] = {}
    examples: dict[str, PairRecord] = {}
    for name, (chosen, rejected) in pair_scores.items():
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(np.isnan(chosen - rejected))
        if bad.size:
            undefined[name], examples[name] = int(bad.size), records[int(bad[0])]
    if undefined:
        raise UndefinedScoresError(undefined, total=len(records), examples=examples)
    for name, (chosen, rejected) in pair_scores.items():
        metric = PairwiseAccuracy(
            subset_names=subset_names,
            category_names=category_names,
            bootstrap_samples=bootstrap,
            ci_seed=seed,
        )
        metric.update(
            chosen=torch.from_numpy(chosen),
            rejected=torch.from_numpy(rejected),
            subsets=subsets,
            categories=categories,
        )
        metrics = metric.compute()
        results["scorers"][name] = {
            "seconds": seconds[name],
            "overall": _group(metrics, ""),
            "subsets": {s: _group(metrics, f"subset/{s}/") for s in subset_names},
            "categories": {c: _group(metrics, f"category/{c}/") for c in category_names},
        }
    if out_dir is not None:
        _write_outputs(Path(out_dir), results, records, pair_scores)
    return results


def _cell(group: Mapping[str, Any]) -> str:
    if group["accuracy"] is None:
        return "–"
    if group["ci_low"] is None:
        return f"{group['accuracy']:.3f}"
    return f"{group['accuracy']:.3f} [{group['ci_low']:.3f}, {group['ci_high']:.3f}]"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric_from: int = 1) -> str:
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


def _caption(results: Mapping[str, Any]) -> str:
    ci = f", [95% bootstrap CI, {results['bootstrap']} resamples]" if results["bootstrap"] else ""
    return (
        f"Manifest `{results['manifest']}` ({results['num_pairs']} pairs). Pairwise accuracy (ties count half){ci}.\n"
    )


def format_tables(results: Mapping[str, Any]) -> tuple[str, str]:
    """``table.md`` (rows: subsets and overall; columns: scorers) and ``categories.md``, as Markdown."""
    names = list(results["scorers"])
    first = results["scorers"][names[0]]

    def rows(kind: str, labels: Sequence[str]) -> list[list[str]]:
        cells = [
            [str(first[kind][label]["n"])] + [_cell(results["scorers"][n][kind][label]) for n in names]
            for label in labels
        ]
        overall = [str(first["overall"]["n"])] + [_cell(results["scorers"][n]["overall"]) for n in names]
        return [[label, *row] for label, row in zip([*labels, "overall"], [*cells, overall], strict=True)]

    subset_rows = rows("subsets", results["subsets"])
    table = "# Pairwise accuracy by subset\n\n" + _caption(results) + "\n"
    table += _markdown_table(["subset", "n", *names], subset_rows)
    detail = [
        [
            name,
            _cell(s["overall"]),
            _rate(s["overall"]["accuracy_no_ties"]),
            _rate(s["overall"]["tie_rate"]),
            f"{s['seconds']:.2f}",
        ]
        for name, s in results["scorers"].items()
    ]
    table += "\n## Overall\n\n"
    table += _markdown_table(["scorer", "accuracy", "accuracy without ties", "tie rate", "seconds"], detail)
    categories = "# Pairwise accuracy by category\n\n" + _caption(results) + "\n"
    categories += _markdown_table(["category", "n", *names], rows("categories", results["categories"]))
    return table, categories


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def draw_accuracy_chart(
    *,
    groups: Sequence[str],
    series: Mapping[str, Sequence[tuple[float | None, float | None, float | None]]],
    size: tuple[int, int] = (800, 480),
    title: str = "Pairwise accuracy, ties count half (95% bootstrap CI)",
) -> Image.Image:
    """Grouped bar chart drawn with Pillow: one group per label, one bar per series, CI error bars.

    ``series[name][g]`` is ``(accuracy, ci_low, ci_high)`` for ``groups[g]`` (None: not drawn). The y axis
    spans [0, 1] with a dashed chance line at 0.5.
    """
    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font, small = _font(14), _font(12)
    legend_rows = math.ceil(len(series) / 4)
    left, right, top, bottom = 56, width - 16, 56 + 20 * legend_rows, height - 36
    draw.text((width // 2, 8), title, fill=(0, 0, 0), font=font, anchor="mt")
    for i, name in enumerate(series):
        x = left + (i % 4) * ((right - left) // 4)
        y = 32 + 20 * (i // 4)
        draw.rectangle([x, y, x + 12, y + 12], fill=_PALETTE[i % len(_PALETTE)])
        draw.text((x + 18, y + 6), name, fill=(0, 0, 0), font=small, anchor="lm")

    def y_of(value: float) -> float:
        return bottom - value * (bottom - top)

    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y_of(tick)
        draw.line([left, y, right, y], fill=(225, 225, 225))
        draw.line([left - 4, y, left, y], fill=(0, 0, 0))
        draw.text((left - 8, y), f"{tick:.2f}", fill=(0, 0, 0), font=small, anchor="rm")
    for x in range(left, right, 12):
        draw.line([x, y_of(0.5), min(x + 6, right), y_of(0.5)], fill=(120, 120, 120))

    slot = (right - left) / max(len(groups), 1)
    bar = slot * 0.8 / max(len(series), 1)
    for g, group in enumerate(groups):
        x0 = left + g * slot + slot * 0.1
        draw.text((left + (g + 0.5) * slot, bottom + 8), group, fill=(0, 0, 0), font=font, anchor="mt")
        for s, values in enumerate(series.values()):
            accuracy, low, high = values[g]
            if accuracy is None:
                continue
            bx = x0 + s * bar
            draw.rectangle([bx + 1, y_of(accuracy), bx + bar - 1, bottom], fill=_PALETTE[s % len(_PALETTE)])
            label_y = y_of(accuracy)
            if low is not None and high is not None:
                cx, cap = bx + bar / 2, max(bar / 4, 2)
                draw.line([cx, y_of(high), cx, y_of(low)], fill=(0, 0, 0), width=2)
                for end in (low, high):
                    draw.line([cx - cap, y_of(end), cx + cap, y_of(end)], fill=(0, 0, 0), width=2)
                label_y = min(label_y, y_of(high))
            if bar >= 30:
                draw.text((bx + bar / 2, label_y - 3), f"{accuracy:.2f}", fill=(0, 0, 0), font=small, anchor="mb")
    draw.line([left, top, left, bottom], fill=(0, 0, 0))
    draw.line([left, bottom, right, bottom], fill=(0, 0, 0))
    return image


def _write_outputs(
    out_dir: Path,
    results: Mapping[str, Any],
    records: Sequence[PairRecord],
    pair_scores: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    table, categories = format_tables(results)
    (out_dir / "table.md").write_text(table, encoding="utf-8")
    (out_dir / "categories.md").write_text(categories, encoding="utf-8")
    with (out_dir / "scores.jsonl").open("w", encoding="utf-8") as sink:
        for i, record in enumerate(records):
            row = {"id": record.id, "subset": record.subset, "category": record.category}
            row["scores"] = {
                name: {"chosen": _finite(chosen[i]), "rejected": _finite(rejected[i])}
                for name, (chosen, rejected) in pair_scores.items()
            }
            sink.write(json.dumps(row) + "\n")
    groups = [*results["subsets"], "overall"]
    series = {
        name: [
            (g["accuracy"], g["ci_low"], g["ci_high"])
            for g in [*(s["subsets"][label] for label in results["subsets"]), s["overall"]]
        ]
        for name, s in results["scorers"].items()
    }
    draw_accuracy_chart(groups=groups, series=series).save(out_dir / "accuracy.png")


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def cli_main(argv: list[str] | None = None) -> int:
    """``spatialscore benchmark``: pairwise accuracy of several scorers on one manifest."""
    parser = argparse.ArgumentParser(
        prog="spatialscore benchmark",
        description="Pairwise accuracy of scorers on a pair manifest, per subset and category, with bootstrap CIs.",
        epilog="scorer specs: " + "; ".join(SCORER_FORMS),
    )
    parser.add_argument("--pairs", required=True, help="pair manifest (JSON Lines or Parquet)")
    parser.add_argument("--scorer", required=True, action="append", help="scorer spec (repeatable)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="images (pairs, for pairwise scorers) per scorer call (>= 1)"
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: no CIs)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed and default seed of random")
    parser.add_argument("--device", default=None, help="device of spatialscore scorers (default: cuda if any)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.bootstrap < 0:
        parser.error(f"--bootstrap must be >= 0, got {args.bootstrap}")
    try:
        specs = [parse_scorer_spec(spec) for spec in args.scorer]
    except ScorerSpecError as error:
        parser.error(str(error))
    duplicates = sorted({s.name for s in specs if [t.name for t in specs].count(s.name) > 1})
    if duplicates:
        parser.error(f"duplicate scorer names {duplicates}; name them with NAME=SPEC")
    if not Path(args.pairs).is_file():
        parser.error(f"manifest not found: {args.pairs}")
    try:
        manifest = read_manifest(args.pairs, show_progress=not args.no_progress)
    except ManifestValidationError as error:
        parser.error(str(error))
    try:
        scorers = {
            s.name: build_scorer(s, batch_size=args.batch_size, device=args.device, seed=args.seed) for s in specs
        }
    except ScorerSpecError as error:
        parser.error(str(error))
    try:
        results = run_benchmark(
            manifest=manifest,
            scorers=scorers,
            out_dir=args.out,
            batch_size=args.batch_size,
            bootstrap=args.bootstrap,
            seed=args.seed,
            show_progress=not args.no_progress,
            command=["spatialscore", "benchmark", *argv],
        )
    except UndefinedScoresError as error:
        print(f"spatialscore benchmark: error: {error}", file=sys.stderr)
        return 1
    print(format_tables(results)[0], end="")
    print(f"wrote {args.out}/results.json, table.md, categories.md, scores.jsonl, accuracy.png")
    return 0
