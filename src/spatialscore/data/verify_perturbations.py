"""The perturbation verifier: is a (prompt, perturbed prompt, edits) record a valid minimal spatial perturbation?

:func:`verify_perturbation` adds to the automatic validity rules of
:func:`spatialscore.data.perturb_validity.check_perturbation` (only relation words or whole object phrases
touched, the same objects, grammatical noun phrases, a different arrangement, no self-contradiction; the edits
must reproduce the perturbed prompt) the checks of a requested perturbation: the number of edits is the number
asked for, and every edit is of a known kind. The LLM perturber (:mod:`spatialscore.data.llm_perturb`) runs it
on every reply; ``spatialscore verify-perturbations`` runs it on an existing file from any source::

    spatialscore verify-perturbations perturbed.jsonl [--num 1|2-3] [--report report.jsonl] [--keep valid.jsonl]

Each line is a JSON object with ``prompt`` and ``perturbed_prompt`` and, where known, ``edits`` (``kind``,
``start``, ``end``, ``before``, ``after``; also read from ``meta.edits`` of a pair manifest),
``num_perturbations`` and ``subset`` (``spatialscore perturb``'s output and ``make-pairs`` manifests have them).
Without edits they are derived from a word diff, and their number is not checked (a swap is one edit but two
changed words). Problems are printed per line as ``FILE:LINE (id ID): problem``; the exit status is 0 when
every record is valid, 1 otherwise, 2 when a file cannot be read.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spatialscore.cli import run_command
from spatialscore.data.perturb import KINDS, Edit, Num, diff_edits, subset_for
from spatialscore.data.perturb_validity import check_perturbation

__all__ = [
    "RecordCheck",
    "cli_main",
    "verify_file",
    "verify_perturbation",
    "verify_perturbations_command",
    "verify_record",
]

_SUBSET_COUNTS = {"1-pert": (1,), "2-3-pert": (2, 3)}
_EDIT_FIELDS = {"kind": str, "start": int, "end": int, "before": str, "after": str}


def verify_perturbation(
    prompt: str,
    perturbed: str,
    edits: Sequence[Edit],
    *,
    num: Collection[int] | None = None,
    kinds: Collection[str] | None = KINDS,
) -> list[str]:
    """Problems of a perturbation; empty when it is valid.

    ``num``: the allowed numbers of edits (``None``: not checked); ``kinds``: the allowed edit kinds (``None``:
    not checked). Then every rule of :func:`~spatialscore.data.perturb_validity.check_perturbation`.
    """
    problems = []
    if kinds is not None:
        problems += [f"edit kind {e.kind!r} is not one of {sorted(kinds)}" for e in edits if e.kind not in kinds]
    if num is not None and len(edits) not in num:
        wanted = " or ".join(str(n) for n in sorted(num))
        problems.append(f"{len(edits)} edit{'s' if len(edits) != 1 else ''}, {wanted} requested")
    return problems + check_perturbation(prompt, perturbed, edits)


@dataclass
class RecordCheck:
    """The verdict on one line of a file: its 1-based ``line``, its ``text``, ``id`` (if any) and ``problems``."""

    line: int
    text: str
    id: Any
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems


def _edits(raw: Any) -> tuple[list[Edit], list[str]]:
    if not isinstance(raw, list):
        return [], [f"'edits' must be a list, got {type(raw).__name__}"]
    edits, problems = [], []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            problems.append(f"edits[{i}] must be an object")
            continue
        wrong = [k for k, t in _EDIT_FIELDS.items() if not isinstance(item.get(k), t) or isinstance(item.get(k), bool)]
        if wrong:
            problems.append(f"edits[{i}] needs {', '.join(wrong)} ({', '.join(_EDIT_FIELDS)})")
            continue
        edits.append(Edit(**{k: item[k] for k in _EDIT_FIELDS}))
    return edits, problems


def verify_record(record: Any, *, num: Collection[int] | None = None) -> list[str]:
    """Problems of one parsed record (see the module docstring); ``num`` overrides the recorded count."""
    if not isinstance(record, dict):
        return [f"expected a JSON object, got {type(record).__name__}"]
    prompt, perturbed = record.get("prompt"), record.get("perturbed_prompt")
    if not isinstance(prompt, str) or not isinstance(perturbed, str):
        return ["needs string fields 'prompt' and 'perturbed_prompt'"]
    meta = record.get("meta")
    raw = record.get("edits", meta.get("edits") if isinstance(meta, dict) else None)
    recorded = record.get("num_perturbations")
    problems = []
    if recorded is not None and (isinstance(recorded, bool) or not isinstance(recorded, int)):
        problems.append(f"num_perturbations must be an integer, got {recorded!r}")
        recorded = None
    subset = record.get("subset")
    if recorded is not None and subset is not None and subset != subset_for(recorded):
        problems.append(f"subset {subset!r} does not match num_perturbations={recorded}")
    if num is None and recorded is not None:
        num = (recorded,)
    elif num is None and isinstance(subset, str):
        num = _SUBSET_COUNTS.get(subset)
    if raw is None:
        if recorded is not None and num is not None and recorded not in num:
            problems.append(f"num_perturbations={recorded}, {' or '.join(map(str, num))} requested")
        return problems + check_perturbation(prompt, perturbed, diff_edits(prompt, perturbed))
    edits, bad = _edits(raw)
    if bad:
        return problems + bad
    return problems + verify_perturbation(prompt, perturbed, edits, num=num)


def verify_file(path: str | Path, *, num: Collection[int] | None = None) -> list[RecordCheck]:
    """:func:`verify_record` of every non-blank line of a JSONL file (invalid JSON is a problem of its line)."""
    checks = []
    with Path(path).open(encoding="utf-8") as source:
        for lineno, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                checks.append(RecordCheck(lineno, line, None, [f"invalid JSON ({error})"]))
                continue
            record_id = record.get("id") if isinstance(record, dict) else None
            checks.append(RecordCheck(lineno, line, record_id, verify_record(record, num=num)))
    return checks


def verify_perturbations_command(
    files: list[Path], *, num: Num | None = None, report: Path | None = None, keep: Path | None = None
) -> int:
    """Check every record of perturbed-prompt files (JSONL) against the perturbation verifier, line by line.

    Exit status 0 when every record is valid, 1 otherwise, 2 when a file cannot be read.

    Args:
        files: JSONL files (spatialscore perturb output, manifests)
        num: required edits per record (default: as recorded)
        report: write one JSON verdict per record here
        keep: write the valid lines, unchanged, here
    """
    prog = "spatialscore verify-perturbations"
    counts = None if num is None else ((1,) if num == "1" else (2, 3))
    try:
        checks = {path: verify_file(path, num=counts) for path in files}
    except (OSError, UnicodeDecodeError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    total = sum(len(c) for c in checks.values())
    invalid = 0
    for path, file_checks in checks.items():
        for check in file_checks:
            invalid += not check.valid
            where = f"{path}:{check.line}" + (f" (id {check.id})" if check.id is not None else "")
            for problem in check.problems:
                print(f"{where}: {problem}")
    if report is not None:
        with report.open("w", encoding="utf-8") as sink:
            for path, file_checks in checks.items():
                for c in file_checks:
                    row = {
                        "file": str(path),
                        "line": c.line,
                        "id": c.id,
                        "valid": c.valid,
                        "problems": c.problems,
                    }
                    sink.write(json.dumps(row, ensure_ascii=False) + "\n")
    if keep is not None:
        with keep.open("w", encoding="utf-8") as sink:
            for file_checks in checks.values():
                sink.writelines(c.text if c.text.endswith("\n") else c.text + "\n" for c in file_checks if c.valid)
    print(f"{prog}: {total - invalid} of {total} records valid, {invalid} with problems", file=sys.stderr)
    return 1 if invalid else 0


def cli_main(argv: list[str] | None = None) -> int:
    """``spatialscore verify-perturbations`` (:func:`verify_perturbations_command`)."""
    return run_command(verify_perturbations_command, argv, prog="spatialscore verify-perturbations")
