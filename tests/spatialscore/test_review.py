"""``spatialscore review``: decision log, highlighting, export, refused requests, and the page in a real browser.

The browser test drives a headless Chromium over the DevTools protocol through ``--remote-debugging-pipe`` (JSON
messages separated by NUL bytes on file descriptors 3 and 4): no Python dependency, no port to race for.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from spatialscore.data.manifest import read_manifest, write_manifest
from spatialscore.review import DecisionLog, ReviewSession, cli_main, edit_segments, make_server

PROMPT = "a red cup to the left of a blue vase"
EDITS = [{"kind": "flip", "start": 10, "end": 24, "before": "to the left of", "after": "to the right of"}]


def write_pairs(folder: Path, n: int = 6) -> Path:
    """``n`` pairs of 16 px images; pairs 0-3 record edits, 4 has only a perturbed prompt, 5 has neither."""
    (folder / "images").mkdir(parents=True)
    records = []
    for i in range(n):
        for side, colour in (("chosen", (200, 10 * i, 0)), ("rejected", (0, 10 * i, 200))):
            Image.new("RGB", (16, 16), colour).save(folder / "images" / f"{i}-{side}.png")
        record: dict[str, Any] = {
            "id": f"pair-{i}",
            "prompt": PROMPT,
            "chosen": f"images/{i}-chosen.png",
            "rejected": f"images/{i}-rejected.png",
            "subset": "1-pert" if i % 2 == 0 else "2-3-pert",
        }
        if i < 5:
            record["perturbed_prompt"] = PROMPT.replace("left", "right")
        if i < 4:
            record |= {"category": "flip", "meta": {"seed": i, "edits": EDITS}}
        records.append(record)
    write_manifest(folder / "pairs.jsonl", records)
    return folder / "pairs.jsonl"


# --------------------------------------------------------------------------------------------- units
def test_edit_segments_use_recorded_edits_else_a_word_diff(tmp_path: Path) -> None:
    records = read_manifest(write_pairs(tmp_path)).records
    before, after = edit_segments(records[0])
    assert before == [("a red cup ", None), ("to the left of", "flip"), (" a blue vase", None)]
    assert after == [("a red cup ", None), ("to the right of", "flip"), (" a blue vase", None)]
    before, after = edit_segments(records[4])  # no recorded edits: diff of the two prompts
    assert before == [("a red cup to the ", None), ("left", "edit"), (" of a blue vase", None)]
    assert after == [("a red cup to the ", None), ("right", "edit"), (" of a blue vase", None)]
    assert edit_segments(records[5]) == ([(PROMPT, None)], None)


def test_decision_log_keeps_every_complete_line_and_names_bad_ones(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, ids=["a", "b"])
    log.append(pair_id="a", decision="accept", elapsed_s=1.5)
    log.append(pair_id="b", decision="skip", elapsed_s=None)
    log.append(pair_id="a", decision="swap", elapsed_s=0.25)
    with path.open("ab") as fh:
        fh.write(b'{"id": "b", "decision": "rej')  # a crash in the middle of a write
    reopened = DecisionLog(path, ids=["a", "b"])
    assert [(d.id, d.decision, d.elapsed_s) for d in reopened.events] == [
        ("a", "accept", 1.5),
        ("b", "skip", None),
        ("a", "swap", 0.25),
    ]
    assert {k: d.decision for k, d in reopened.latest.items()} == {"a": "swap", "b": "skip"}
    assert path.read_bytes().endswith(b"}\n")  # the torn line is gone
    good = path.read_text().splitlines()[0]
    for bad, message in [
        (good.replace('"a"', '"zzz"'), "field 'id': 'zzz' is not a pair of the manifest"),
        (
            good.replace("accept", "maybe"),
            "field 'decision': 'maybe' is not one of accept, reject, swap, skip",
        ),
        (good.replace("1.5", "-3"), "field 'elapsed_s': expected a number of seconds or null"),
        ("[1]", "expected a JSON object"),
    ]:
        path.write_text(f"{good}\n{bad}\n")
        with pytest.raises(ValueError, match="^" + str(path) + ":2: " + message.replace("(", r"\(")):
            DecisionLog(path, ids=["a", "b"])


def test_export_only_swaps_and_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = write_pairs(tmp_path / "data")
    session = ReviewSession(pairs=pairs)
    for pair_id, decision in [
        ("pair-0", "accept"),
        ("pair-1", "swap"),
        ("pair-2", "reject"),
        ("pair-1", "accept"),
    ]:
        session.decide(pair_id=pair_id, decision=decision, elapsed_s=2.0)
    session.decide(pair_id="pair-3", decision="swap", elapsed_s=None)
    session.close()  # its lock on the decision log would refuse the export below
    export = tmp_path / "elsewhere" / "reviewed.jsonl"
    assert cli_main(["--pairs", str(pairs), "--export", str(export), "--export-only"]) == 0
    assert "3 pairs exported" in capsys.readouterr().err
    records = {r.id: r for r in read_manifest(export).records}
    originals = {r.id: r for r in read_manifest(pairs).records}
    assert list(records) == ["pair-0", "pair-1", "pair-3"]
    assert records["pair-1"].chosen == originals["pair-1"].chosen  # swapped, then accepted: the last one counts
    assert (records["pair-3"].chosen, records["pair-3"].rejected) == (
        originals["pair-3"].rejected,
        originals["pair-3"].chosen,
    )
    assert records["pair-3"].meta == {"seed": 3, "edits": EDITS, "review": "swap"}
    stats = json.loads((tmp_path / "elsewhere" / "reviewed.stats.json").read_text())
    assert stats["decisions"] == {"accept": 2, "reject": 1, "swap": 1, "skip": 0, "undecided": 2}
    assert stats["per_subset"]["2-3-pert"] == {
        "total": 3, "accept": 1, "reject": 0, "swap": 1, "skip": 0, "undecided": 1
    }  # fmt: skip
    assert stats["time_per_decision_s"] == {"count": 4, "mean": 2.0, "median": 2.0, "total": 8.0}
    assert (stats["exported"], stats["changed_decisions"], stats["reviewed"]) == (3, 1, 4)
    with pytest.raises(ValueError, match="must not be the manifest under review"):
        ReviewSession(pairs=pairs, export=pairs)


# --------------------------------------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    srv = make_server(pairs=write_pairs(tmp_path_factory.mktemp("http")))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def request(
    server: Any, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """Send a raw request (the path is sent exactly as given) and return the status and the JSON answer."""
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    try:
        conn.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def decision_post(payload: Any, **headers: str) -> tuple[bytes, dict[str, str]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return body, {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}


GOOD = {"id": "pair-0", "decision": "accept", "elapsed_s": 1.0}
BAD_REQUESTS = {
    "unknown pair id": ("POST", "/api/decision", *decision_post({**GOOD, "id": "pair-99"}), 404, "unknown pair id"),
    "bad decision": ("POST", "/api/decision", *decision_post({**GOOD, "decision": "maybe"}), 400, "decision must"),
    "negative time": ("POST", "/api/decision", *decision_post({**GOOD, "elapsed_s": -1}), 400, "elapsed_s"),
    "invalid json": ("POST", "/api/decision", *decision_post(b"{oops"), 400, "invalid JSON"),
    "not an object": ("POST", "/api/decision", *decision_post([GOOD]), 400, "JSON object"),
    "oversized body": (
        "POST", "/api/decision", b"{}", {"Content-Type": "application/json", "Content-Length": "10000000"}, 413, "over"
    ),
    "no length": ("POST", "/api/decision", None, {"Content-Type": "application/json"}, 411, "Content-Length"),
    "form post": (
        "POST", "/api/decision", b"id=pair-0", {"Content-Type": "text/plain", "Content-Length": "9"}, 415, "json"
    ),
    "other origin": (
        "POST", "/api/decision", *decision_post(GOOD, Origin="http://evil.example"), 403, "cross-origin"
    ),
    "rebound host": ("GET", "/api/state", None, {"Host": "evil.example:8765"}, 403, "unexpected Host"),
    "traversal": ("GET", "/image/../../etc/passwd", None, {}, 400, "path traversal"),
    "encoded traversal": ("GET", "/image/%2e%2e/%2e%2e/etc/passwd", None, {}, 400, "path traversal"),
    "encoded slash": ("GET", "/image/..%2F..%2Fetc%2Fpasswd/chosen", None, {}, 400, "path traversal"),
    "image index": ("GET", "/image/99/chosen", None, {}, 404, "no pair with index"),
    "image side": ("GET", "/image/0/secret", None, {}, 404, "not found"),
    "pair index": ("GET", "/api/pair/-1", None, {}, 404, "no pair with index"),
    "arabic-indic digit": ("GET", "/api/pair/%D9%A3", None, {}, 404, "no pair with index"),
    "superscript digit": ("GET", "/api/pair/%C2%B2", None, {}, 404, "no pair with index"),
    "5000 digits": ("GET", "/api/pair/" + "9" * 5000, None, {}, 404, "no pair with index"),
    "image 5000 digits": ("GET", "/image/" + "1" * 5000 + "/chosen", None, {}, 404, "no pair with index"),
    "deep json": ("POST", "/api/decision", *decision_post(b"[" * 4000), 400, "invalid JSON body: nested too deeply"),
    "length digit": ("POST", "/api/decision", b"{}", {"Content-Type": "application/json", "Content-Length": "\u00b2"},
                     411, "Content-Length"),
    "length 5000 digits": ("POST", "/api/decision", b"{}",
                           {"Content-Type": "application/json", "Content-Length": "9" * 5000}, 413, "over"),
    "unknown route": ("POST", "/api/nothing", *decision_post(GOOD), 404, "not found"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_get_a_clear_4xx_and_change_nothing(server: Any, case: tuple) -> None:
    method, path, body, headers, status, message = case
    got, answer = request(server, method, path, body, headers)
    assert got == status
    assert message.lower() in answer["error"].lower()
    assert not server.session.decisions_path.exists()
    assert not server.session.export_path.exists()
    assert request(server, "GET", "/api/state")[1]["counts"]["undecided"] == 6


def test_good_requests_through_the_same_client_are_recorded(tmp_path: Path) -> None:
    srv = make_server(pairs=write_pairs(tmp_path))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        origin = {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"}
        status, answer = request(srv, "POST", "/api/decision", *decision_post(GOOD, **origin))
        assert (status, answer["next"], answer["counts"]["accept"]) == (200, 1, 1)
        assert request(srv, "GET", "/api/pair/0")[1]["decision"] == "accept"
        # Concurrent decisions from several connections: one complete line each.
        ids = [f"pair-{i}" for i in range(1, 6)]
        workers = [
            threading.Thread(target=request, args=(srv, "POST", "/api/decision", *decision_post({**GOOD, "id": i})))
            for i in ids
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        lines = [json.loads(line) for line in srv.session.decisions_path.read_text().splitlines()]
        assert sorted(d["id"] for d in lines) == ["pair-0", *ids]
        assert request(srv, "GET", "/api/state")[1] == {
            "total": 6, "next": 6, "counts": {"accept": 6, "reject": 0, "swap": 0, "skip": 0, "undecided": 0}
        }  # fmt: skip
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_dropped_connection_prints_no_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    srv = make_server(pairs=write_pairs(tmp_path))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        sock = socket.create_connection(srv.server_address[:2])
        sock.sendall(  # a browser that gives up halfway through its request and resets the connection
            b"POST /api/decision HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        # Connections are accepted in order: once this one is answered, the dropped one has a handler thread.
        assert request(srv, "GET", "/api/state")[0] == 200
        for thread in threading.enumerate():
            if thread.name.endswith("(process_request_thread)"):
                thread.join(timeout=10)
    finally:
        srv.shutdown()
        srv.server_close()
    assert capsys.readouterr().err == ""
    assert not srv.session.decisions_path.exists()


@pytest.mark.slow
def test_a_second_session_on_the_same_files_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = write_pairs(tmp_path / "data")
    decisions, export = pairs.with_name("pairs.decisions.jsonl"), pairs.with_name("pairs.reviewed.jsonl")
    proc, url = start_review(pairs)
    try:
        # Its export would be overwritten by the first server's on exit (or the reverse): refused while it runs.
        assert cli_main(["--pairs", str(pairs), "--export-only"]) == 2
        assert capsys.readouterr().err == (
            f"spatialscore review: error: {decisions}: another review session (a server or --export-only) is "
            "using this file; stop it first or give other --decisions and --export files\n"
        )
        assert not export.exists()
        with pytest.raises(RuntimeError, match=f"^{export}: another review session"):
            ReviewSession(pairs=pairs, decisions=tmp_path / "other.decisions.jsonl")  # the same export
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "0 pairs exported" in err
    with ReviewSession(pairs=pairs) as session:  # free again once the server has exited
        assert session.counts()["undecided"] == 6


# --------------------------------------------------------------------------------------------- browser
def find_chromium() -> str:
    names = [
        os.environ.get("CHROMIUM", ""),
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    for name in filter(None, names):
        if path := shutil.which(name):
            return path
    pytest.fail("the review page test needs a headless Chromium: apt-get install chromium (or set $CHROMIUM)")


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe; one page, synchronous commands."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_r, self._out = os.pipe()
        self._in, from_browser_w = os.pipe()
        # Copies above 2 so that the dup2 onto 3 and 4 below cannot overwrite one another.
        child_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        log = os.open(profile / "chromium.log", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        args = ["--headless", "--no-sandbox", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--disable-background-networking", "--no-proxy-server",
                "--window-size=1280,1000", "about:blank"]  # fmt: skip
        self.pid = os.posix_spawn(
            binary,
            [binary, *args],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, child_r, 3),
                (os.POSIX_SPAWN_DUP2, child_w, 4),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, log, 2),
            ],
        )
        for fd in (to_browser_r, from_browser_w, child_r, child_w, log):
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def send(self, method: str, timeout: float = 20.0, **params: Any) -> dict[str, Any]:
        """Send one command (to the page once attached) and wait for its result; events are dropped."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                if not select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise TimeoutError(f"Chromium did not answer {method} in {timeout} s")
                chunk = os.read(self._in, 1 << 16)
                if not chunk:
                    raise EOFError("Chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, _, self._buffer = self._buffer.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                state = self.evaluate(
                    "JSON.stringify({...document.body?.dataset, "
                    "status: document.getElementById('status')?.textContent})"
                )
                raise TimeoutError(f"still false after {timeout} s: {expression}; page: {state}")
            time.sleep(0.05)

    def press(self, key: str) -> None:
        """A real key press, as typed by a user: a letter (keyDown with its text, keyUp) or an arrow key."""
        if key.startswith("Arrow"):
            down = {
                "type": "rawKeyDown",
                "code": key,
                "windowsVirtualKeyCode": {"ArrowLeft": 37, "ArrowRight": 39}[key],
            }
        else:
            down = {
                "type": "keyDown",
                "code": f"Key{key.upper()}",
                "windowsVirtualKeyCode": ord(key.upper()),
                "text": key,
            }
        self.send("Input.dispatchKeyEvent", key=key, **down)
        up = {name: value for name, value in down.items() if name != "text"}
        self.send("Input.dispatchKeyEvent", key=key, **up | {"type": "keyUp"})

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        x, y = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            "e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (OSError, EOFError, TimeoutError, RuntimeError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self._in)
        os.close(self._out)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    chromium = Chromium(find_chromium(), profile)
    yield chromium
    chromium.close()


def start_review(pairs: Path) -> tuple[subprocess.Popen[str], str]:
    """Run ``spatialscore review`` in a subprocess; return it and the URL it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "spatialscore.review", "--pairs", str(pairs), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    line = proc.stdout.readline()
    assert " at http://127.0.0.1:" in line, proc.stderr.read() if proc.poll() is not None else line
    return proc, line.split(" at ")[1].split()[0]


def showing(pair_id: str) -> str:
    return f"document.body?.dataset.state === 'ready' && document.body?.dataset.pairId === '{pair_id}'"


@pytest.mark.slow
def test_review_page_in_a_headless_browser(browser: Chromium, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "data")
    decisions = pairs.with_name("pairs.decisions.jsonl")
    proc, url = start_review(pairs)
    try:
        browser.send("Page.navigate", url=url)
        browser.wait_for(showing("pair-0"))
        assert browser.evaluate("[...document.querySelectorAll('#prompt mark')].map(m => m.textContent)") == [
            "to the left of"
        ]
        assert browser.evaluate("document.querySelector('#perturbed mark').textContent") == "to the right of"
        browser.wait_for("['chosen-img', 'rejected-img'].every(id => document.getElementById(id).naturalWidth === 16)")
        browser.press("a")
        browser.wait_for(showing("pair-1"))
        browser.press("r")
        browser.wait_for(showing("pair-2"))
        browser.click("#swap")
        browser.wait_for(showing("pair-3"))
        browser.press("k")
        browser.wait_for(showing("pair-4"))
        # Pair 4 has no recorded edits: the word diff is highlighted.
        assert browser.evaluate("document.querySelector('#prompt mark').textContent") == "left"
        lines = [json.loads(line) for line in decisions.read_text().splitlines()]
        assert [(d["id"], d["decision"]) for d in lines] == [
            ("pair-0", "accept"), ("pair-1", "reject"), ("pair-2", "swap"), ("pair-3", "skip")
        ]  # fmt: skip
        assert all(isinstance(d["elapsed_s"], float) and 0 < d["elapsed_s"] < 60 for d in lines)
    finally:
        proc.kill()  # a crash: nothing is exported, every decision must already be on disk
        proc.wait()

    proc, url = start_review(pairs)
    try:
        browser.send("Page.navigate", url=url)
        browser.wait_for(showing("pair-4"))  # resumed at the first undecided pair
        assert "1 accept · 1 reject · 1 swap · 1 skip · 2 undecided" in browser.evaluate("$('counts').textContent")
        browser.press("a")
        browser.wait_for(showing("pair-5"))
        assert browser.evaluate("$('perturbed-block').hidden") is True
        browser.press("u")
        browser.wait_for(showing("pair-4"))
        assert browser.evaluate("$('current').textContent") == "decided: accept"
        browser.press("s")  # changed from accept to swap; on to the next undecided pair
        browser.wait_for(showing("pair-5"))
        browser.click("#accept")
        browser.wait_for("document.body?.dataset.state === 'done'")
        browser.press("ArrowLeft")
        browser.wait_for(showing("pair-5"))
        assert browser.evaluate("$('current').textContent") == "decided: accept"
        browser.press("e")
        browser.wait_for("document.body?.dataset.exported === '4'")
        stats = json.loads(browser.evaluate("$('stats').textContent"))
        assert stats["decisions"] == {"accept": 2, "reject": 1, "swap": 2, "skip": 1, "undecided": 0}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "4 pairs exported" in err

    export = pairs.with_name("pairs.reviewed.jsonl")
    originals = {r.id: r for r in read_manifest(pairs).records}
    exported = read_manifest(export).records
    assert [(r.id, r.meta["review"]) for r in exported] == [
        ("pair-0", "accept"), ("pair-2", "swap"), ("pair-4", "swap"), ("pair-5", "accept")
    ]  # fmt: skip
    for record in exported:
        original = originals[record.id]
        sides = (
            (original.rejected, original.chosen)
            if record.meta["review"] == "swap"
            else (original.chosen, original.rejected)
        )
        assert (record.chosen, record.rejected) == sides
    stats = json.loads(pairs.with_name("pairs.reviewed.stats.json").read_text())
    assert stats["changed_decisions"] == 1 and stats["time_per_decision_s"]["count"] == 7
    assert stats["per_subset"]["1-pert"] == {
        "total": 3,
        "accept": 1,
        "reject": 0,
        "swap": 2,
        "skip": 0,
        "undecided": 0,
    }
    assert len(decisions.read_text().splitlines()) == 7
