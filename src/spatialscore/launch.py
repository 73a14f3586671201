"""``spatialscore serve`` as a local subprocess: start it, wait until ``/health`` answers, stop it with its workers.

For a Python script (or a test, or a benchmark) that wants a reward server next to it, e.g. for
:class:`spatialrl.rewards.RemoteReward`; a cluster job runs the command itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import requests

from spatialscore.serve import TOKEN_ENV

__all__ = ["free_port", "serve_command", "start_server", "stop_server"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(export: str | Path, *, port: int, options: Sequence[str] = ()) -> list[str]:
    """The ``spatialscore serve`` command line for ``export`` on ``port``, in this interpreter."""
    command = [sys.executable, "-m", "spatialscore.cli", "serve", "--model", str(export), "--port", str(port)]
    return [*command, "--log-level", "warning", *options]


def start_server(
    export: str | Path,
    *,
    port: int | None = None,
    options: Sequence[str] = (),
    token: str | None = None,
    log: str | Path | None = None,
    threads: int = 1,
    timeout: float = 180.0,
) -> tuple[subprocess.Popen, str]:
    """Start ``spatialscore serve`` in its own process group and return it with its URL once ``/health`` answers.

    ``token``: the bearer token (``TOKEN_ENV``; None: none, even if this process has one set); ``log``: a file for
    its output (appended; None: discarded), quoted in the error when it exits or stays unhealthy past ``timeout``
    seconds; ``threads``: its ``OMP_NUM_THREADS``."""
    port = free_port() if port is None else port
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop(TOKEN_ENV, None)
    if token is not None:
        env[TOKEN_ENV] = token
    with open(log if log is not None else os.devnull, "ab") as out:
        process = subprocess.Popen(
            serve_command(export, port=port, options=options),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"spatialscore serve exited with status {process.returncode}{_tail(log)}")
        try:
            if requests.get(f"{url}/health", headers=headers, timeout=1).status_code == 200:
                return process, url
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    stop_server(process, graceful=False)
    raise RuntimeError(f"spatialscore serve at {url} not healthy within {timeout:g} s{_tail(log)}")


def stop_server(process: subprocess.Popen, *, graceful: bool = True, timeout: float = 30.0) -> None:
    """Stop the server and every process it started (LitServe's HTTP and inference workers): SIGTERM, LitServe's
    graceful shutdown, then SIGKILL if it lingers past ``timeout`` seconds; ``graceful=False``: SIGKILL at once."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM if graceful else signal.SIGKILL)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _tail(log: str | Path | None, chars: int = 4000) -> str:
    return f":\n{Path(log).read_text(errors='replace')[-chars:]}" if log is not None and Path(log).is_file() else ""
