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

import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from spatialscore.cli import PositiveInt, UsageError, invoked_command, run_command
from spatialscore.data.images import open_rgb
from spatialscore.data.manifest import Manifest, ManifestValidationError, PairRecord, read_manifest
from spatialscore.metrics import PairwiseAccuracy
from spatialscore.report import ci_cell, draw_accuracy_chart, markdown_table, write_json
from spatialscore.scorers import (
    SCORER_FORMS,
    ConstantScorer,
    PairwiseScorer,
    RandomScorer,
    Scorer,
    ScorerSpec,
    ScorerSpecError,
    SpatialScoreScorer,
    build_scorer,
    parse_scorer_spec,
)

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

NO_LABEL = "(none)"
METRIC_KEYS = {
    "accuracy": "accuracy",
    "accuracy_no_ties": "accuracy_no_ties",
    "tie_rate": "tie_rate",
    "n": "num_pairs",
    "ci_low": "accuracy_ci_low",
    "ci_high": "accuracy_ci_high",
}


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
    return ci_cell(group["accuracy"], group["ci_low"], group["ci_high"])


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


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
    table += markdown_table(["subset", "n", *names], subset_rows)
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
    table += markdown_table(["scorer", "accuracy", "accuracy without ties", "tie rate", "seconds"], detail)
    categories = "# Pairwise accuracy by category\n\n" + _caption(results) + "\n"
    categories += markdown_table(["category", "n", *names], rows("categories", results["categories"]))
    return table, categories


def _write_outputs(
    out_dir: Path,
    results: Mapping[str, Any],
    records: Sequence[PairRecord],
    pair_scores: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
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


def benchmark_command(
    *,
    pairs: Path,
    scorer: list[str],
    out: Path,
    batch_size: PositiveInt = 32,
    bootstrap: int = 1000,
    seed: int = 0,
    device: str | None = None,
    no_progress: bool = False,
) -> int:
    """Pairwise accuracy of scorers on a pair manifest, per subset and category, with bootstrap CIs.

    Args:
        pairs: pair manifest (JSON Lines or Parquet)
        scorer: scorer spec (repeatable; the forms are listed below)
        out: output folder
        batch_size: images (pairs, for pairwise scorers) per scorer call (>= 1)
        bootstrap: bootstrap resamples (0: no CIs)
        seed: bootstrap seed and default seed of random
        device: device of spatialscore scorers (default: cuda if any)
        no_progress: hide progress bars
    """
    if bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0, got {bootstrap}")
    try:
        specs = [parse_scorer_spec(spec) for spec in scorer]
    except ScorerSpecError as error:
        raise UsageError(str(error)) from None
    duplicates = sorted({s.name for s in specs if [t.name for t in specs].count(s.name) > 1})
    if duplicates:
        raise UsageError(f"duplicate scorer names {duplicates}; name them with NAME=SPEC")
    if not pairs.is_file():
        raise UsageError(f"manifest not found: {pairs}")
    try:
        manifest = read_manifest(pairs, show_progress=not no_progress)
    except ManifestValidationError as error:
        raise UsageError(str(error)) from None
    try:
        scorers = {s.name: build_scorer(s, batch_size=batch_size, device=device, seed=seed) for s in specs}
    except ScorerSpecError as error:
        raise UsageError(str(error)) from None
    try:
        results = run_benchmark(
            manifest=manifest,
            scorers=scorers,
            out_dir=out,
            batch_size=batch_size,
            bootstrap=bootstrap,
            seed=seed,
            show_progress=not no_progress,
            command=invoked_command(),
        )
    except UndefinedScoresError as error:
        print(f"spatialscore benchmark: error: {error}", file=sys.stderr)
        return 1
    print(format_tables(results)[0], end="")
    print(f"wrote {out}/results.json, table.md, categories.md, scores.jsonl, accuracy.png")
    return 0


benchmark_command.epilog = "scorer specs: " + "; ".join(SCORER_FORMS)  # type: ignore[attr-defined]


def cli_main(argv: list[str] | None = None) -> int:
    """``spatialscore benchmark`` (:func:`benchmark_command`)."""
    return run_command(benchmark_command, argv, prog="spatialscore benchmark")
