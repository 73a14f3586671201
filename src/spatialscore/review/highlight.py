"""The edits of a pair as highlighted segments of its two prompts (what the page shows)."""

from __future__ import annotations

from spatialscore.data.manifest import PairRecord
from spatialscore.data.perturb import Edit, apply_edits, diff_edits

# A segment of displayed text: (text, edit kind or None for unchanged text).
Segment = tuple[str, str | None]
_EDIT_KEYS = ("kind", "start", "end", "before", "after")


def _recorded_edits(record: PairRecord) -> list[Edit] | None:
    """The edits recorded in ``meta.edits`` if they turn the prompt into the perturbed prompt, else None."""
    raw = record.meta.get("edits")
    if not isinstance(raw, list):
        return None
    try:
        edits = [Edit(**{key: item[key] for key in _EDIT_KEYS}) for item in raw]
        if apply_edits(record.prompt, edits) == record.perturbed_prompt:
            return sorted(edits, key=lambda e: e.start)
    except (TypeError, KeyError, ValueError):
        pass
    return None


def edit_segments(record: PairRecord) -> tuple[list[Segment], list[Segment] | None]:
    """The prompt and perturbed prompt cut into unchanged and edited segments, for highlighting.

    Uses the edit spans recorded by ``make-pairs`` (``meta.edits``) when they are consistent, else a word diff of
    the two prompts. Without a perturbed prompt the second value is None.
    """
    if record.perturbed_prompt is None:
        return [(record.prompt, None)], None
    edits = _recorded_edits(record)
    if edits is None:
        edits = diff_edits(record.prompt, record.perturbed_prompt, kind="edit")
    before: list[Segment] = []
    after: list[Segment] = []
    cursor = 0
    for edit in edits:
        gap = record.prompt[cursor : edit.start]
        before += [(gap, None), (edit.before, edit.kind)]
        after += [(gap, None), (edit.after, edit.kind)]
        cursor = edit.end
    tail = record.prompt[cursor:]
    before.append((tail, None))
    after.append((tail, None))
    return [s for s in before if s[0]], [s for s in after if s[0]]
