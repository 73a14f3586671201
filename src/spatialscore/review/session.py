"""A review session: the manifest, its decision log, the next pair to show, the export of accepted and swapped
pairs and the reviewer statistics; locked for as long as it is open."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from spatialscore.data.manifest import Manifest, exclusive_lock, read_manifest, write_manifest
from spatialscore.review.decisions import DECISIONS, DecisionLog
from spatialscore.review.highlight import edit_segments

_EXPORTED = ("accept", "swap")


def _stats_path(export: Path) -> Path:
    stem = export.name.removesuffix(".jsonl")
    return export.with_name(stem + ".stats.json")


class ReviewSession:
    """A manifest under review with its decision log; all the server's state and the export.

    ``decisions`` defaults to ``<manifest stem>.decisions.jsonl`` and ``export`` to ``<manifest stem>.reviewed.jsonl``,
    both beside the manifest. The manifest is validated (images included) when the session opens. Thread-safe:
    one lock serialises the server's threads. Until :meth:`close` (or the end of a ``with`` block) the session
    holds a file lock on its decision log and on its export; opening another session on either raises
    ``RuntimeError``.
    """

    def __init__(
        self,
        *,
        pairs: str | os.PathLike[str],
        decisions: str | os.PathLike[str] | None = None,
        export: str | os.PathLike[str] | None = None,
    ) -> None:
        pairs = Path(pairs)
        self.manifest: Manifest = read_manifest(pairs)
        self.records = self.manifest.records
        self.index = {record.id: i for i, record in enumerate(self.records)}
        self.decisions_path = Path(decisions) if decisions else pairs.with_name(f"{pairs.stem}.decisions.jsonl")
        self.export_path = Path(export) if export else pairs.with_name(f"{pairs.stem}.reviewed.jsonl")
        for name, path in (("decisions", self.decisions_path), ("export", self.export_path)):
            if path.resolve() == pairs.resolve():
                raise ValueError(f"{path}: the {name} file must not be the manifest under review")
        self._files = contextlib.ExitStack()
        try:
            for path in dict.fromkeys((self.decisions_path, self.export_path)):
                path.parent.mkdir(parents=True, exist_ok=True)
                busy = (
                    f"{path}: another review session (a server or --export-only) is using this file; stop it "
                    "first or give other --decisions and --export files"
                )
                self._files.enter_context(exclusive_lock(path.with_name(f".{path.name}.lock"), busy=busy))
            self.log = DecisionLog(self.decisions_path, ids=self.index)
        except BaseException:
            self._files.close()
            raise
        self._lock = threading.RLock()

    def close(self) -> None:
        """Release the locks on the decision log and the export (the session must not be used afterwards)."""
        self._files.close()

    def __enter__(self) -> ReviewSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def next_undecided(self, *, after: int = -1) -> int:
        """The first undecided pair after index ``after`` (wrapping around), or ``len(records)`` if none is left."""
        order = list(range(after + 1, len(self.records))) + list(range(0, after + 1))
        with self._lock:
            return next((i for i in order if self.records[i].id not in self.log.latest), len(self.records))

    def counts(self) -> dict[str, int]:
        """Pairs per current decision, plus ``undecided``."""
        with self._lock:
            tally = Counter(d.decision for d in self.log.latest.values())
            undecided = len(self.records) - len(self.log.latest)
        return {name: tally[name] for name in DECISIONS} | {"undecided": undecided}

    def pair_view(self, index: int) -> dict[str, Any]:
        """What the page shows for pair ``index``."""
        record = self.records[index]
        prompt, perturbed = edit_segments(record)
        with self._lock:
            current = self.log.latest.get(record.id)
        return {
            "index": index,
            "total": len(self.records),
            "id": record.id,
            "prompt": prompt,
            "perturbed_prompt": perturbed,
            "subset": record.subset,
            "category": record.category,
            "chosen_url": f"/image/{index}/chosen",
            "rejected_url": f"/image/{index}/rejected",
            "decision": current.decision if current else None,
        }

    def decide(self, *, pair_id: str, decision: str, elapsed_s: float | None) -> dict[str, Any]:
        """Record a decision; return the index of the next undecided pair and the counts."""
        if pair_id not in self.index:
            raise KeyError(f"unknown pair id {pair_id!r}")
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        with self._lock:
            self.log.append(pair_id=pair_id, decision=decision, elapsed_s=elapsed_s)
            return {"next": self.next_undecided(after=self.index[pair_id]), "counts": self.counts()}

    def stats(self) -> dict[str, Any]:
        """Reviewer statistics: counts per decision and per subset, time per decision."""
        per_subset: dict[str, Counter[str]] = {}
        with self._lock:
            for record in self.records:
                tally = per_subset.setdefault(record.subset or "(none)", Counter())
                tally["total"] += 1
                current = self.log.latest.get(record.id)
                tally[current.decision if current else "undecided"] += 1
            times = [d.elapsed_s for d in self.log.events if d.elapsed_s is not None]
            counts = self.counts()
            changed = len(self.log.events) - len(self.log.latest)
        return {
            "manifest": str(self.manifest.path),
            "decisions_file": str(self.decisions_path),
            "total": len(self.records),
            "reviewed": len(self.records) - counts["undecided"],
            "decisions": counts,
            "exported": counts["accept"] + counts["swap"],
            "changed_decisions": changed,
            "per_subset": {
                name: {key: tally[key] for key in ("total", *DECISIONS, "undecided")}
                for name, tally in per_subset.items()
            },
            "time_per_decision_s": {
                "count": len(times),
                "mean": statistics.fmean(times) if times else None,
                "median": statistics.median(times) if times else None,
                "total": sum(times),
            },
        }

    def export(self) -> dict[str, Any]:
        """Write the accepted and swapped pairs (swapped: chosen and rejected exchanged) and the statistics."""
        with self._lock:
            exported = []
            for record in self.records:
                current = self.log.latest.get(record.id)
                if current is None or current.decision not in _EXPORTED:
                    continue
                meta = {**record.meta, "review": current.decision}
                if current.decision == "swap":
                    record = dataclasses.replace(record, chosen=record.rejected, rejected=record.chosen)
                exported.append(dataclasses.replace(record, meta=meta))
            write_manifest(self.export_path, exported)
            stats = self.stats() | {"export": str(self.export_path)}
            data = json.dumps(stats, indent=2, ensure_ascii=False) + "\n"
            stats_path = _stats_path(self.export_path)
            tmp = stats_path.with_name(f".{stats_path.name}.{os.getpid()}.tmp")
            tmp.write_text(data, encoding="utf-8")
            os.replace(tmp, stats_path)
            return stats | {"stats_file": str(stats_path)}
