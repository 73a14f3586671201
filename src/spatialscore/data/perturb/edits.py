"""Perturbation records: Edit, PerturbationResult, SkippedPrompt, the Perturber protocol; applying, diffing edits."""

from __future__ import annotations

import difflib
import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, get_args, runtime_checkable

KINDS = ("swap", "flip", "predicate", "anchor", "attribute_swap", "row_permute")
Num = Literal["1", "2-3"]  # edits per prompt: one, or two to three (the commands' --num)
NUM_CHOICES: tuple[str, ...] = get_args(Num)


# --------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Edit:
    """Replacement of ``prompt[start:end]`` (equal to ``before``) by ``after``."""

    kind: str
    start: int
    end: int
    before: str
    after: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def subset_for(num_perturbations: int) -> str:
    """Benchmark subset name for a perturbation count: ``"1-pert"`` or ``"2-3-pert"``."""
    return "1-pert" if num_perturbations == 1 else "2-3-pert"


def apply_edits(prompt: str, edits: Iterable[Edit]) -> str:
    """Apply non-overlapping edits to ``prompt``; raise ``ValueError`` if they do not fit it."""
    out: list[str] = []
    cursor = 0
    for edit in sorted(edits, key=lambda e: (e.start, e.end)):
        if not 0 <= edit.start <= edit.end <= len(prompt):
            raise ValueError(f"edit span {edit.start}:{edit.end} outside the prompt (length {len(prompt)})")
        if edit.start < cursor:
            raise ValueError(f"edit at {edit.start}:{edit.end} overlaps the previous edit")
        if prompt[edit.start : edit.end] != edit.before:
            raise ValueError(
                f"edit at {edit.start}:{edit.end} expects {edit.before!r}, prompt has {prompt[edit.start : edit.end]!r}"
            )
        out += [prompt[cursor : edit.start], edit.after]
        cursor = edit.end
    out.append(prompt[cursor:])
    return "".join(out)


@dataclass
class PerturbationResult:
    """A prompt, its perturbed variant and the edits that turn one into the other."""

    prompt: str
    perturbed_prompt: str
    edits: list[Edit]
    num_perturbations: int
    subset: str

    @classmethod
    def from_edits(
        cls, prompt: str, edits: Iterable[Edit], *, num_perturbations: int | None = None
    ) -> PerturbationResult:
        """Build a result by applying ``edits``; the count defaults to the number of edits."""
        ordered = sorted(edits, key=lambda e: (e.start, e.end))
        num = len(ordered) if num_perturbations is None else num_perturbations
        return cls(prompt, apply_edits(prompt, ordered), ordered, num, subset_for(num))

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "perturbed_prompt": self.perturbed_prompt,
            "num_perturbations": self.num_perturbations,
            "subset": self.subset,
            "edits": [e.to_dict() for e in self.edits],
        }


@dataclass(frozen=True)
class SkippedPrompt:
    """A prompt that could not be perturbed, with its position in the input and the reason."""

    index: int
    prompt: str
    reason: str


class PerturbationError(Exception):
    """Raised by a perturber that cannot perturb a prompt; ``available`` counts perturbable phrases."""

    def __init__(self, reason: str, *, available: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.available = available


@runtime_checkable
class Perturber(Protocol):
    """Turns a prompt into a :class:`PerturbationResult` with ``num`` spatial perturbations."""

    def __call__(self, prompt: str, *, num: int, rng: random.Random) -> PerturbationResult: ...


def diff_edits(prompt: str, perturbed: str, *, kind: str = "rewrite") -> list[Edit]:
    """Word-level edits that turn ``prompt`` into ``perturbed`` (for perturbers that rewrite whole text)."""
    a = [m.span() for m in _DIFF_TOKEN.finditer(prompt)]
    b = [m.span() for m in _DIFF_TOKEN.finditer(perturbed)]
    matcher = difflib.SequenceMatcher(None, [prompt[s:e] for s, e in a], [perturbed[s:e] for s, e in b], autojunk=False)
    edits = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        start = a[i1][0] if i1 < len(a) else len(prompt)
        end = a[i2 - 1][1] if i2 > i1 else start
        after = perturbed[b[j1][0] : b[j2 - 1][1]] if j2 > j1 else ""
        edits.append(Edit(kind, start, end, prompt[start:end], after))
    return edits


_DIFF_TOKEN = re.compile(r"\w+|\s+|[^\w\s]")
