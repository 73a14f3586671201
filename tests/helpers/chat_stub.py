"""A small OpenAI-compatible chat-completions stub on 127.0.0.1 for the tests (test code, standard library only).

``StubChatServer(responder)`` answers ``POST /v1/chat/completions`` with whatever ``responder(body)`` returns: a
string (the assistant's reply) or a :class:`StubReply` (status code, delay). It records every request body and
its headers, and the most requests it had in flight at once. :func:`serve_stubs` is the body of the tests'
``chat_stub`` fixture: it starts servers on port 0 and stops them after the test.
"""

from __future__ import annotations

import json
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class StubReply:
    """A reply with ``content`` after ``delay`` seconds, or an error ``status`` (with an OpenAI error body)."""

    content: str = ""
    status: int = 200
    delay: float = 0.0


Responder = Callable[[dict[str, Any]], "str | StubReply"]


class StubChatServer:
    """The stub server; ``url`` is its ``base_url`` (``http://127.0.0.1:PORT/v1``)."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.released = threading.Event()  # set at stop: slow replies return at once
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.bodies.append(body)
                    stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    if self.path != "/v1/chat/completions":
                        reply: str | StubReply = StubReply(status=404)
                    else:
                        try:
                            reply = stub.responder(body)
                        except Exception:  # a broken test responder: a 500 (retried), the traceback shown
                            traceback.print_exc()
                            reply = StubReply(status=500)
                    reply = reply if isinstance(reply, StubReply) else StubReply(content=reply)
                    if reply.delay:
                        stub.released.wait(reply.delay)
                finally:
                    with stub.lock:
                        stub.in_flight -= 1
                if reply.status == 200:
                    payload: dict[str, Any] = {
                        "id": f"stub-{len(stub.bodies)}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model", ""),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply.content},
                                "finish_reason": "stop",
                            }
                        ],
                    }
                else:
                    payload = {"error": {"message": f"stub error {reply.status}", "type": "stub"}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def count(self) -> int:
        """Requests received so far."""
        with self.lock:
            return len(self.bodies)

    def start(self) -> StubChatServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message of a request (its text parts joined)."""
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content if part["type"] == "text")


def images_of(body: dict[str, Any]) -> list[str]:
    """The image data URLs of a request's last user message with images (feedback turns have none), in order."""
    for message in reversed(body["messages"]):
        if message["role"] == "user" and not isinstance(message["content"], str):
            return [part["image_url"]["url"] for part in message["content"] if part["type"] == "image_url"]
    return []


def serve_stubs() -> Iterator[Callable[[Responder], StubChatServer]]:
    """Body of the tests' ``chat_stub`` fixture: yields ``start(responder)``, which starts a stub on 127.0.0.1
    (port 0); every stub started is stopped afterwards."""
    servers: list[StubChatServer] = []

    def start(responder: Responder) -> StubChatServer:
        servers.append(StubChatServer(responder).start())
        return servers[-1]

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
