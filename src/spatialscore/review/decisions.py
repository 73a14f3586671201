"""Decisions of a review session: one record per decision, an append-only, fsynced JSONL log that survives
a crash (the last line for a pair counts)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spatialscore.data.manifest import JSONLineError, parse_json_line

DECISIONS = ("accept", "reject", "swap", "skip")
MAX_ELAPSED_S = 24 * 3600.0


@dataclass(frozen=True)
class Decision:
    """One reviewer decision: the pair ``id``, the ``decision``, when (``time``, ISO 8601 UTC) and how long the
    pair was on screen (``elapsed_s``, measured by the page; None if unknown)."""

    id: str
    decision: str
    time: str
    elapsed_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DecisionLog:
    """The append-only JSONL decision log of one manifest; the last line for an id is its decision.

    Opening it drops a torn last line (a crash in the middle of a write) and checks every other line: an unknown
    pair id or a bad field raises ``ValueError`` naming the file, line and field. Not thread-safe by itself:
    :class:`ReviewSession` serialises access.
    """

    def __init__(self, path: str | os.PathLike[str], *, ids: Iterable[str]) -> None:
        self.path = Path(path)
        self.events: list[Decision] = []
        self.latest: dict[str, Decision] = {}
        known = set(ids)
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if complete != data:
            with self.path.open("r+b") as fh:
                fh.truncate(len(complete))
                os.fsync(fh.fileno())
        for line, raw in enumerate(complete.splitlines(), start=1):
            if raw.strip():
                self._remember(self._parse(raw, line=line, known=known))

    def _parse(self, raw: bytes, *, line: int, known: set[str]) -> Decision:
        where = f"{self.path}:{line}"
        try:
            obj = parse_json_line(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{where}: invalid UTF-8 at byte {exc.start + 1}") from None
        except JSONLineError as exc:
            raise ValueError(f"{where}: invalid JSON: {exc.reason}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object")
        if obj.get("id") not in known:
            raise ValueError(f"{where}: field 'id': {obj.get('id')!r} is not a pair of the manifest")
        if obj.get("decision") not in DECISIONS:
            raise ValueError(f"{where}: field 'decision': {obj.get('decision')!r} is not one of {', '.join(DECISIONS)}")
        if not isinstance(obj.get("time"), str):
            raise ValueError(f"{where}: field 'time': expected a string")
        elapsed = obj.get("elapsed_s")
        if elapsed is not None and not valid_elapsed(elapsed):
            raise ValueError(f"{where}: field 'elapsed_s': expected a number of seconds or null")
        return Decision(obj["id"], obj["decision"], obj["time"], elapsed)

    def _remember(self, decision: Decision) -> None:
        self.events.append(decision)
        self.latest[decision.id] = decision

    def append(self, *, pair_id: str, decision: str, elapsed_s: float | None) -> Decision:
        """Write one decision and fsync it before returning."""
        record = Decision(pair_id, decision, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), elapsed_s)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        with self.path.open("ab") as fh:
            fh.write((json.dumps(record.to_dict(), ensure_ascii=False) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())
        if created:  # make the new file's directory entry durable too
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        self._remember(record)
        return record


def valid_elapsed(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= MAX_ELAPSED_S
    )
