"""Human review of preference pairs in a local web page (``spatialscore review``).

The page shows each pair side by side (chosen left, rejected right) with the prompt and the perturbed prompt, the
edits highlighted, and takes a decision per pair: ``accept`` (keep as is), ``reject`` (drop), ``swap`` (keep with
chosen and rejected exchanged) or ``skip`` (no verdict: not exported, not offered again), by button or key
(a / r / s / k). Every decision is appended to a JSONL log and fsynced before the page moves on, so a crash loses
nothing; a restarted session resumes at the first undecided pair. Changing a decision (go back with u or the left
arrow) appends a new line; the last one counts.

The export is a pair manifest of the accepted and swapped pairs (``meta.review`` says which) plus
``<export>.stats.json`` with reviewer statistics: counts per decision and per subset, seconds per decision.

The server is the standard library's :class:`~http.server.ThreadingHTTPServer`, bound to 127.0.0.1 by default.
It serves only the page, the pairs' JSON and the manifest's images (by pair index, never by file path); POSTs
must be small JSON bodies from the page's own origin, so another web site cannot record decisions. Every refused
request gets a 4xx answer with a JSON ``error``; a client that drops its connection is forgotten silently.

A session locks its decision log and its export (``.<name>.lock`` beside each) for as long as it is open, so a
second server or ``--export-only`` on the same files is refused instead of overwriting the other's export.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import mimetypes
import os
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from spatialscore.data.manifest import (
    JSONLineError,
    Manifest,
    PairRecord,
    exclusive_lock,
    parse_json_line,
    read_manifest,
    write_manifest,
)
from spatialscore.data.perturb import Edit, apply_edits, diff_edits

__all__ = [
    "DECISIONS",
    "Decision",
    "DecisionLog",
    "ReviewServer",
    "ReviewSession",
    "cli_main",
    "edit_segments",
    "make_server",
]

DECISIONS = ("accept", "reject", "swap", "skip")
MAX_BODY_BYTES = 4096
_MAX_INDEX_DIGITS = 18
MAX_ELAPSED_S = 24 * 3600.0
_EXPORTED = ("accept", "swap")
_EDIT_KEYS = ("kind", "start", "end", "before", "after")
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})

# A segment of displayed text: (text, edit kind or None for unchanged text).
Segment = tuple[str, str | None]


# --------------------------------------------------------------------------------------------- decisions
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
        if elapsed is not None and not _valid_elapsed(elapsed):
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


def _valid_elapsed(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= MAX_ELAPSED_S
    )


# --------------------------------------------------------------------------------------------- highlighting
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


# --------------------------------------------------------------------------------------------- session
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


# --------------------------------------------------------------------------------------------- HTTP
class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ReviewServer(ThreadingHTTPServer):
    """The review page's HTTP server; ``session`` holds the state, ``url`` is where to point a browser."""

    daemon_threads = True

    def __init__(self, session: ReviewSession, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.session = session
        self.page = resources.files(__package__).joinpath("page.html").read_bytes()
        # Bound to loopback, only loopback names are valid Host headers: a web site that rebinds its own DNS name
        # to 127.0.0.1 cannot reach the page. Bound to another address (a shared review), any name is accepted.
        loopback = host in _LOOPBACK_NAMES or host.startswith("127.")
        self.allowed_hosts = _LOOPBACK_NAMES | {host} if loopback else None
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that closed or reset its connection (a browser leaving the page) is not an error to report."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def make_server(
    *,
    pairs: str | os.PathLike[str],
    decisions: str | os.PathLike[str] | None = None,
    export: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> ReviewServer:
    """Open a :class:`ReviewSession` and bind its server (``port=0``: a free port); call ``serve_forever()``."""
    return ReviewServer(ReviewSession(pairs=pairs, decisions=decisions, export=export), host=host, port=port)


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "spatialscore-review"

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: the page is the interface."""

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
            "connect-src 'self'; frame-ancestors 'none'",
        )
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _route(self) -> list[str]:
        """The decoded path segments, once the Host header is checked and no segment climbs out of the path."""
        host = urlsplit("//" + self.headers.get("Host", "")).hostname
        if self.server.allowed_hosts is not None and host not in self.server.allowed_hosts:
            raise _BadRequest(HTTPStatus.FORBIDDEN, f"unexpected Host header {self.headers.get('Host')!r}")
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
        if any(p in ("..", ".") or "/" in p or "\\" in p for p in parts):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "path traversal is not allowed")
        return parts

    def _pair_index(self, text: str) -> int:
        """The pair index of a path segment: ASCII digits only (``str.isdigit`` also takes "٣" and "²")."""
        if not _ascii_number(text) or int(text) >= len(self.server.session.records):
            shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
            raise _BadRequest(HTTPStatus.NOT_FOUND, f"no pair with index {shown!r}")
        return int(text)

    def do_GET(self) -> None:
        try:
            self._get(self._route())
        except _BadRequest as exc:
            self._json({"error": exc.message}, exc.status)

    def do_POST(self) -> None:
        try:
            self._post(self._route())
        except _BadRequest as exc:
            self._json({"error": exc.message}, exc.status)

    def _get(self, parts: list[str]) -> None:
        session = self.server.session
        if not parts:
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif parts == ["api", "state"]:
            self._json({"total": len(session.records), "next": session.next_undecided(), "counts": session.counts()})
        elif parts == ["api", "stats"]:
            self._json(session.stats())
        elif len(parts) == 3 and parts[:2] == ["api", "pair"]:
            self._json(session.pair_view(self._pair_index(parts[2])))
        elif len(parts) == 3 and parts[0] == "image" and parts[2] in ("chosen", "rejected"):
            record = session.records[self._pair_index(parts[1])]
            path = record.chosen if parts[2] == "chosen" else record.rejected
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise _BadRequest(HTTPStatus.NOT_FOUND, f"image not readable: {exc.strerror}") from None
            self._send(HTTPStatus.OK, data, content_type)
        else:
            raise _BadRequest(HTTPStatus.NOT_FOUND, f"not found: {self.path}")

    def _body(self) -> dict[str, Any]:
        """The request's JSON object, after checking origin, type and size."""
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host"):
            raise _BadRequest(HTTPStatus.FORBIDDEN, f"cross-origin request from {origin} refused")
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise _BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "the body must be application/json")
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):
            raise _BadRequest(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
        if not _ascii_number(length) or int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            raise _BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
        try:
            body = parse_json_line(self.rfile.read(int(length)).decode("utf-8") or "{}")
        except UnicodeDecodeError as exc:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"invalid JSON body: {exc}") from None
        except JSONLineError as exc:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"invalid JSON body: {exc.reason}") from None
        if not isinstance(body, dict):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body

    def _post(self, parts: list[str]) -> None:
        session = self.server.session
        if parts == ["api", "decision"]:
            body = self._body()
            pair_id, decision, elapsed = body.get("id"), body.get("decision"), body.get("elapsed_s")
            if not isinstance(pair_id, str) or pair_id not in session.index:
                raise _BadRequest(HTTPStatus.NOT_FOUND, f"unknown pair id {pair_id!r}")
            if decision not in DECISIONS:
                raise _BadRequest(HTTPStatus.BAD_REQUEST, f"decision must be one of {', '.join(DECISIONS)}")
            if elapsed is not None and not _valid_elapsed(elapsed):
                raise _BadRequest(HTTPStatus.BAD_REQUEST, f"elapsed_s must be null or 0-{MAX_ELAPSED_S:.0f} seconds")
            self._json(session.decide(pair_id=pair_id, decision=decision, elapsed_s=elapsed))
        elif parts == ["api", "export"]:
            self._body()
            self._json(session.export())
        else:
            raise _BadRequest(HTTPStatus.NOT_FOUND, f"not found: {self.path}")


def _ascii_number(text: str) -> bool:
    """ASCII digits, few enough for ``int`` (which refuses over 4300) and for any index or length here."""
    return text.isascii() and text.isdigit() and len(text) <= _MAX_INDEX_DIGITS


# --------------------------------------------------------------------------------------------- CLI
def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _summary(stats: Mapping[str, Any]) -> str:
    counts = ", ".join(f"{stats['decisions'][name]} {name}" for name in (*DECISIONS, "undecided"))
    return f"{stats['exported']} pairs exported -> {stats['export']} ({counts}); statistics -> {stats['stats_file']}"


def cli_main(argv: list[str] | None = None) -> int:
    """``spatialscore review``: serve the review page until Ctrl-C (or SIGTERM), then write the export."""
    parser = argparse.ArgumentParser(
        prog="spatialscore review",
        description="Review preference pairs in a local web page: accept (a), reject (r), swap (s), skip (k).",
    )
    parser.add_argument("--pairs", required=True, type=Path, help="pair manifest (JSONL) to review")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port, printed)")
    parser.add_argument(
        "--decisions", type=Path, default=None, help="decision log (default: PAIRS_STEM.decisions.jsonl)"
    )
    parser.add_argument(
        "--export", type=Path, default=None, help="exported manifest (default: PAIRS_STEM.reviewed.jsonl)"
    )
    parser.add_argument("--export-only", action="store_true", help="write the export from the decision log and exit")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        try:
            session = stack.enter_context(ReviewSession(pairs=args.pairs, decisions=args.decisions, export=args.export))
            if args.export_only:
                print(f"spatialscore review: {_summary(session.export())}", file=sys.stderr)
                return 0
            server = ReviewServer(session, host=args.host, port=args.port)
        except (OSError, ValueError, RuntimeError) as exc:
            print(f"spatialscore review: error: {exc}", file=sys.stderr)
            return 2
        return _serve(session, server)


def _serve(session: ReviewSession, server: ReviewServer) -> int:
    """Serve until Ctrl-C or SIGTERM, then write the export."""
    signal.signal(signal.SIGTERM, _interrupt)
    counts = session.counts()
    print(
        f"spatialscore review: {len(session.records)} pairs ({counts['undecided']} undecided) at {server.url}  "
        "(Ctrl-C to stop and export)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print(f"spatialscore review: {_summary(session.export())}", file=sys.stderr)
    return 0
