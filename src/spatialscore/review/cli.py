"""``spatialscore review``: serve a manifest's pairs for review, or export the decisions made so far."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spatialscore.review.decisions import DECISIONS
from spatialscore.review.server import ReviewServer
from spatialscore.review.session import ReviewSession


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
