"""Running a project CLI in a subprocess for end-to-end tests (one thread, the test helpers importable)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def run_module(module: str, *args: str, cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    """``python -m module args`` in ``cwd``; asserts the exit code and shows the output's tail when it differs."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc
