"""Verify rendered preference pairs and keep those that hold (``spatialscore filter-pairs``).

The paper has a person check every rendered pair: the chosen image must show its prompt and the rejected image
must not. ``filter-pairs`` does that check with a verifier and writes the kept pairs as a manifest, with a report
of how many were kept and why the others were dropped:

- ``rule``: the strict judge (:mod:`spatialscore.data.strict`) reads each image against the prompt (procedural
  prompts only). The chosen image must be strictly right for its prompt. The rejected image must violate the
  prompt (``rejected="violates"``, the default: a wrong layout, or extra, duplicated or missing objects, which are
  the hard negatives a policy learns to exploit) or, with ``rejected="faithful"``, show its own perturbed prompt
  strictly right (and so differ from the prompt only in the spatial arrangement, as the paper intends).
- ``review``: the decisions of ``spatialscore review`` (a decisions JSONL): ``accept`` keeps a pair, ``swap`` keeps
  it with chosen and rejected exchanged, ``reject`` drops it, ``skip`` and undecided pairs are dropped.

A weak generator places objects by its initial noise more than by its prompt: two images rendered with the same
seed then share the layout, and a same-seed pair whose chosen image is right rarely has a rejected image with the
other layout. ``pool=True`` (rule verifier only) pairs across seeds for every record whose own pair was dropped:
the chosen image is drawn (round robin) from the images that show the record's prompt strictly right, the rejected
one from the images rendered from its perturbed prompt that pass the rejected check, taking each kind of failure
(wrong layout, missing, duplicated, extra objects) in turn; each such pair is marked ``meta.pooled`` with the ids
its images come from.

``hard_negatives=True`` (rule verifier only) adds, for every written pair, pairs against edited copies of its chosen
image (:mod:`spatialscore.data.negatives`): one with an object erased, duplicated, recoloured, or an extra object
added (the kinds taken in turn), and two with the whole image mirrored along the prompt's relation axes (the
original preferred under the prompt; the copy preferred under the mirrored prompt); each image is checked by the
strict judge. The object edits teach a reward model the
object-level failures that a policy optimised against it produces and the prompt perturbations never show; the
mirrored pairs make the arrangement pay only through the prompt's relation words (README, "filter-pairs").
Their images go to ``OUT_STEM-negatives/``, their ``category`` is ``hard_negative:KIND``.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from spatialscore.cli import run_command
from spatialscore.data.images import open_rgb
from spatialscore.data.manifest import PairRecord, read_manifest, write_manifest
from spatialscore.data.negatives import MIRRORED, NEGATIVE_KINDS, edit_object, mirror_image
from spatialscore.data.strict import Judgement, judge
from spatialscore.files import atomic_write

__all__ = [
    "FilterResult",
    "Verdict",
    "cli_main",
    "filter_pairs",
    "in_turn",
    "review_verdicts",
    "rule_verdicts",
    "why_wrong",
]

RejectedCheck = Literal["violates", "faithful"]
KEPT = "kept"


@dataclass(frozen=True)
class Verdict:
    """What a verifier decided about one pair: ``reason`` is :data:`KEPT` or why the pair is dropped."""

    reason: str
    swap: bool = False

    @property
    def keep(self) -> bool:
        return self.reason == KEPT


def why_wrong(judgement: Judgement) -> str:
    """The first reason a strict judgement fails, in the order a reader checks an image ("" when correct)."""
    if judgement.missing:
        return "missing objects"
    if judgement.duplicated:
        return "duplicated objects"
    if judgement.extra:
        return "extra objects"
    if judgement.wrong_shape:
        return "wrong shape"
    if not judgement.correct:
        return "relation fails"
    return ""


def _rejected_reason(*, against_prompt: Judgement, against_own: Judgement | None) -> str:
    """Why a rejected image fails the rejected check ("" when it passes); ``against_own`` only when faithful."""
    if against_prompt.correct:
        return "rejected shows the prompt"
    if against_own is not None and not against_own.correct:
        return f"rejected does not show its own prompt: {why_wrong(against_own)}"
    return ""


class _Judge:
    """Strict judgements of image files, each file read and each (file, prompt) judged once."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Path, str], Judgement] = {}

    def __call__(self, path: Path, prompt: str) -> Judgement:
        key = (path, prompt)
        if key not in self._cache:
            self._cache[key] = judge(open_rgb(path), prompt)
        return self._cache[key]

    def chosen_reason(self, record: PairRecord) -> str:
        wrong = why_wrong(self(record.chosen, record.prompt))
        return f"chosen: {wrong}" if wrong else ""

    def rejected_reason(self, record: PairRecord, image: Path, own_prompt: str | None, check: RejectedCheck) -> str:
        own = None
        if check == "faithful":
            if own_prompt is None:
                return "rejected has no perturbed prompt to be faithful to"
            own = self(image, own_prompt)
        return _rejected_reason(against_prompt=self(image, record.prompt), against_own=own)


def rule_verdicts(
    records: Sequence[PairRecord], *, rejected: RejectedCheck = "violates", show_progress: bool = False
) -> list[Verdict]:
    """The strict judge's verdict on each same-seed pair (see the module docstring)."""
    check = _Judge()
    verdicts = []
    for record in tqdm(records, desc="filter-pairs", unit="pair", disable=not show_progress):
        reason = check.chosen_reason(record) or check.rejected_reason(
            record, record.rejected, record.perturbed_prompt, rejected
        )
        verdicts.append(Verdict(reason or KEPT))
    return verdicts


def review_verdicts(records: Sequence[PairRecord], decisions: str | os.PathLike[str]) -> list[Verdict]:
    """The reviewer's last decision on each pair (``spatialscore review``'s decisions JSONL)."""
    from spatialscore.review import DecisionLog

    if not Path(decisions).is_file():
        raise FileNotFoundError(f"{decisions}: no such review decisions file (spatialscore review writes it)")
    log = DecisionLog(decisions, ids=[r.id for r in records])
    verdicts = []
    for record in records:
        decision = log.latest.get(record.id)
        if decision is None:
            verdicts.append(Verdict("no review decision"))
        elif decision.decision in ("accept", "swap"):
            verdicts.append(Verdict(KEPT, swap=decision.decision == "swap"))
        else:
            verdicts.append(Verdict(f"reviewer: {decision.decision}"))
    return verdicts


def in_turn(groups: Sequence[Sequence[Any]], turn: int) -> Any:
    """The ``turn``-th pick when the groups take turns and each group cycles through its items.

    Pooled rejected images are picked this way from their kinds of failure (wrong layout, missing, duplicated,
    extra objects), so each kind is an equal share of the negatives, not the generator's share, where one kind
    (a weak generator's missing objects) would crowd out the rest.
    """
    group = groups[turn % len(groups)]
    return group[(turn // len(groups)) % len(group)]


def _pooled(records: Sequence[PairRecord], verdicts: Sequence[Verdict], *, rejected: RejectedCheck) -> list[PairRecord]:
    """Cross-seed pairs for the records whose own pair was dropped (see the module docstring)."""
    check = _Judge()
    shows: dict[str, list[tuple[str, Path]]] = defaultdict(list)  # prompt -> images rendered from it, right
    rendered: dict[str, list[tuple[str, Path]]] = defaultdict(list)  # prompt -> every image rendered from it
    for record in records:
        for prompt, image in ((record.prompt, record.chosen), (record.perturbed_prompt, record.rejected)):
            if prompt is None:
                continue
            rendered[prompt].append((record.id, image))
            if check(image, prompt).correct:
                shows[prompt].append((record.id, image))
    turn: Counter[tuple[str, str]] = Counter()
    out = []
    for record, verdict in zip(records, verdicts, strict=True):
        if verdict.keep or record.perturbed_prompt is None:
            continue
        chosen = shows.get(record.prompt, [])
        by_reason: dict[str, list[tuple[str, Path]]] = defaultdict(list)
        for source, image in rendered.get(record.perturbed_prompt, []):
            if not check.rejected_reason(record, image, record.perturbed_prompt, rejected):
                by_reason[why_wrong(check(image, record.prompt))].append((source, image))
        if not chosen or not by_reason:
            continue
        key = (record.prompt, record.perturbed_prompt)
        (chosen_id, chosen_image), (rejected_id, rejected_image) = (
            chosen[turn[key] % len(chosen)],
            in_turn(list(by_reason.values()), turn[key]),
        )
        turn[key] += 1
        out.append(
            replace(
                record,
                id=f"{record.id}-pooled",
                chosen=chosen_image,
                rejected=rejected_image,
                meta={**record.meta, "pooled": {"chosen_from": chosen_id, "rejected_from": rejected_id}},
            )
        )
    return out


def _negative_pair(record: PairRecord, path: Path, kind: str, *, prompt: str | None = None) -> PairRecord:
    """``record`` with the image at ``path`` as its rejected image, marked as a ``kind`` hard negative; with
    ``prompt``, the pair is reversed: that prompt, ``path`` chosen, the record's chosen image rejected."""
    chosen, rejected = (path, record.chosen) if prompt is not None else (record.chosen, path)
    return replace(
        record,
        id=f"{record.id}-{kind}",
        prompt=prompt or record.prompt,
        chosen=chosen,
        rejected=rejected,
        perturbed_prompt=None,
        category=f"hard_negative:{kind}",
        meta={**record.meta, "hard_negative": {"kind": kind, "from": record.id}},
    )


def _save(image: np.ndarray, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    Image.fromarray(image).save(path)
    return path


def _hard_negatives(records: Sequence[PairRecord], folder: Path, *, show_progress: bool) -> list[PairRecord]:
    """Edited-negative pairs per record (module docstring): an object edit, the kinds in turn (the next kind when
    an edit cannot be made), and the chosen image mirrored, in both directions; the object edit is seeded by the
    record id, so a rerun writes the same images."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for turn, record in enumerate(tqdm(records, desc="hard negatives", unit="pair", disable=not show_progress)):
        rgb = np.asarray(open_rgb(record.chosen))
        rng = np.random.default_rng(zlib.crc32(record.id.encode()))
        for kind in (NEGATIVE_KINDS[(turn + i) % len(NEGATIVE_KINDS)] for i in range(len(NEGATIVE_KINDS))):
            edited = edit_object(rgb, prompt=record.prompt, kind=kind, rng=rng)
            if edited is not None:
                out.append(_negative_pair(record, _save(edited, folder, f"{record.id}-{kind}"), kind))
                break
        mirrored = mirror_image(rgb, prompt=record.prompt)
        if mirrored is not None:
            image, mirrored_prompt = mirrored
            path = _save(image, folder, f"{record.id}-{MIRRORED}")  # one file for both directions
            out.append(_negative_pair(record, path, MIRRORED))
            out.append(_negative_pair(record, path, f"{MIRRORED}-reversed", prompt=mirrored_prompt))
    return out


@dataclass(frozen=True)
class FilterResult:
    """What :func:`filter_pairs` wrote: ``kept`` same-seed pairs, ``pooled`` cross-seed pairs, ``negatives``
    (hard-negative pairs per kind), ``dropped`` reasons with counts, and the report (a JSON file next to the
    output manifest)."""

    total: int
    kept: int
    pooled: int
    dropped: dict[str, int]
    out: Path
    report: Path
    negatives: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "kept": self.kept,
            "pooled": self.pooled,
            "hard_negatives": self.negatives,
            "written": self.kept + self.pooled + sum(self.negatives.values()),
            "dropped": self.dropped,
            "out": str(self.out),
        }


def _swapped(record: PairRecord) -> PairRecord:
    return replace(record, chosen=record.rejected, rejected=record.chosen, meta={**record.meta, "review": "swap"})


def _read_all(paths: Sequence[str | os.PathLike[str]]) -> list[PairRecord]:
    """The records of several manifests, in order; an id in two of them is an error naming both."""
    records, seen = [], {}
    for path in paths:
        for record in read_manifest(path).records:
            if record.id in seen:
                raise ValueError(f"pair id {record.id!r} is in both {seen[record.id]} and {path}")
            seen[record.id] = path
            records.append(record)
    return records


def filter_pairs(
    *,
    pairs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    verifier: str = "rule",
    rejected: RejectedCheck = "violates",
    pool: bool = False,
    hard_negatives: bool = False,
    show_progress: bool = True,
) -> FilterResult:
    """Keep the pairs of a manifest (or of several, e.g. renders of two generators) that ``verifier`` accepts;
    write them to ``out`` and a report beside it.

    ``verifier`` is ``"rule"`` (the strict judge) or ``"review:DECISIONS.jsonl"`` (a reviewer's decisions);
    ``rejected``, ``pool`` and ``hard_negatives`` are the rule verifier's options (module docstring). The report
    (``OUT.report.json``) holds the counts: total, kept, pooled, and dropped per reason.
    """
    if rejected not in ("violates", "faithful"):
        raise ValueError(f"rejected must be 'violates' or 'faithful', got {rejected!r}")
    paths = [pairs] if isinstance(pairs, str | os.PathLike) else list(pairs)
    records = _read_all(paths)
    if verifier == "rule":
        verdicts = rule_verdicts(records, rejected=rejected, show_progress=show_progress)
    elif verifier.startswith("review:"):
        if pool or hard_negatives:
            raise ValueError(
                "pool=True and hard_negatives=True need the rule verifier: a review decides about pairs, not images"
            )
        verdicts = review_verdicts(records, verifier.removeprefix("review:"))
    else:
        raise ValueError(f"verifier must be 'rule' or 'review:DECISIONS.jsonl', got {verifier!r}")
    kept = [_swapped(r) if v.swap else r for r, v in zip(records, verdicts, strict=True) if v.keep]
    pooled = _pooled(records, verdicts, rejected=rejected) if pool else []
    if not kept and not pooled:
        raise ValueError(
            f"{', '.join(map(str, paths))}: no pair passed the {verifier} verifier "
            f"({Counter(v.reason for v in verdicts)})"
        )
    out = Path(out)
    negatives = (
        _hard_negatives(kept + pooled, out.with_name(f"{out.stem}-negatives"), show_progress=show_progress)
        if hard_negatives
        else []
    )
    write_manifest(out, kept + pooled + negatives)
    dropped = dict(Counter(v.reason for v in verdicts if not v.keep).most_common())
    report = out.with_name(f"{out.stem}.report.json")
    kinds = Counter(r.meta["hard_negative"]["kind"] for r in negatives)
    result = FilterResult(len(records), len(kept), len(pooled), dropped, out, report, dict(sorted(kinds.items())))
    settings = {
        "pairs": [str(p) for p in paths],
        "verifier": verifier,
        "rejected": rejected,
        "pool": pool,
        "hard_negatives": hard_negatives,
    }
    text = json.dumps({**result.to_dict(), "settings": settings}, indent=2) + "\n"
    atomic_write(report, lambda fh: fh.write(text.encode()))
    return result


def filter_pairs_command(
    *,
    pairs: list[Path],
    out: Path,
    verifier: str = "rule",
    rejected: RejectedCheck = "violates",
    pool: bool = False,
    hard_negatives: bool = False,
    no_progress: bool = False,
) -> int:
    """Keep the rendered pairs a verifier accepts; report why the others were dropped.

    Args:
        pairs: pair manifest(s) (e.g. make-pairs' pairs.jsonl)
        out: manifest of the kept pairs (.jsonl)
        verifier: rule (the strict judge, procedural prompts) or review:DECISIONS.jsonl (spatialscore review's log)
        rejected: rule verifier: the rejected image must violate the prompt, or show its own perturbed prompt
        pool: rule verifier: pair verified images across seeds for records whose own pair was dropped
        hard_negatives: rule verifier: add up to three pairs per written pair against edited copies of its chosen
            image (an object erased, duplicated, recoloured, or an extra one; the image mirrored, in both
            directions)
        no_progress: no progress bar
    """
    try:
        result = filter_pairs(
            pairs=pairs,
            out=out,
            verifier=verifier,
            rejected=rejected,
            pool=pool,
            hard_negatives=hard_negatives,
            show_progress=not no_progress,
        )
    except (OSError, ValueError) as exc:
        print(f"spatialscore filter-pairs: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"spatialscore filter-pairs: {result.kept} of {result.total} pairs kept"
        + (f", {result.pooled} pooled across seeds" if pool else "")
        + (f", {sum(result.negatives.values())} hard negatives" if hard_negatives else "")
        + f" -> {result.out} (report: {result.report})",
        file=sys.stderr,
    )
    for reason, count in result.dropped.items():
        print(f"  {count} x dropped: {reason}", file=sys.stderr)
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    """``spatialscore filter-pairs`` (:func:`filter_pairs_command`)."""
    return run_command(filter_pairs_command, argv, prog="spatialscore filter-pairs")
