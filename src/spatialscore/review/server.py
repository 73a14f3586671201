"""The review page's HTTP server (standard library, 127.0.0.1 by default): the page, the pairs' JSON and images by
pair index, same-origin small JSON POSTs; every refusal a 4xx with a JSON ``error``."""

from __future__ import annotations

import json
import mimetypes
import os
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

from spatialscore.data.manifest import JSONLineError, parse_json_line
from spatialscore.review.decisions import DECISIONS, MAX_ELAPSED_S, valid_elapsed
from spatialscore.review.session import ReviewSession

MAX_BODY_BYTES = 4096
_MAX_INDEX_DIGITS = 18
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


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
            if elapsed is not None and not valid_elapsed(elapsed):
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
