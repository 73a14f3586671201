"""``spatialscore review``: serve a manifest's pairs for review, or export the decisions made so far."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spatialscore.cli import run_command
from spatialscore.review.decisions import DECISIONS
from spatialscore.review.server import ReviewServer
from spatialscore.review.session import ReviewSession


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _summary(stats: Mapping[str, Any]) -> str:
    counts = ", ".join(f"{stats['decisions'][name]} {name}" for name in (*DECISIONS, "undecided"))
    return f"{stats['exported']} pairs exported -> {stats['export']} ({counts}); statistics -> {stats['stats_file']}"


def review_command(
    *,
    pairs: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    decisions: Path | None = None,
    export: Path | None = None,
    export_only: bool = False,
) -> int:
    """Review preference pairs in a local web page: accept (a), reject (r), swap (s), skip (k). Serves until
    Ctrl-C (or SIGTERM), then writes the export.

    Args:
        pairs: pair manifest (JSONL) to review
        host: address to bind (default: this machine only)
        port: port (default 0: any free port, printed)
        decisions: decision log (default: PAIRS_STEM.decisions.jsonl)
        export: exported manifest (default: PAIRS_STEM.reviewed.jsonl)
        export_only: write the export from the decision log and exit
    """
    with contextlib.ExitStack() as stack:
        try:
            session = stack.enter_context(ReviewSession(pairs=pairs, decisions=decisions, export=export))
            if export_only:
                print(f"spatialscore review: {_summary(session.export())}", file=sys.stderr)
                return 0
            server = ReviewServer(session, host=host, port=port)
        except (OSError, ValueError, RuntimeError) as exc:
            print(f"spatialscore review: error: {exc}", file=sys.stderr)
            return 2
        return _serve(session, server)


def cli_main(argv: list[str] | None = None) -> int:
    """``spatialscore review`` (:func:`review_command`)."""
    return run_command(review_command, argv, prog="spatialscore review")


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
