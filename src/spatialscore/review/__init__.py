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

from spatialscore.review.cli import cli_main, review_command
from spatialscore.review.decisions import DECISIONS, Decision, DecisionLog
from spatialscore.review.highlight import edit_segments
from spatialscore.review.server import ReviewServer, make_server
from spatialscore.review.session import ReviewSession

__all__ = [
    "DECISIONS",
    "Decision",
    "DecisionLog",
    "ReviewServer",
    "ReviewSession",
    "cli_main",
    "edit_segments",
    "make_server",
    "review_command",
]
