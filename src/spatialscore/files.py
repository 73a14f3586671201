"""Files both halves write: atomic files, folders staged and moved in one rename, and the cache folder of tiny
builds. Readers (and concurrent writers: test workers, ranks) never see half-written output."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "SHA256_KEY",
    "atomic_write",
    "check_sha256",
    "file_sha256",
    "folder_sha256",
    "staged_directory",
    "tiny_cache_dir",
]

SHA256_KEY = "weights_sha256"
"""In an export's config: the SHA-256 of each weights file, checked when it is loaded."""


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file through ``write(binary file)`` into a temporary sibling, fsync, then rename over ``path``:
    readers and crashed writers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_directory(directory: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into, then move it to ``directory`` in one rename.

    Concurrent builders (several test workers, ranks) never see a half-written folder; if another process
    finished first, its folder is kept and this one is discarded.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if directory.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, directory)


def tiny_cache_dir() -> Path:
    """Where tiny backbones built offline are kept (``$SPATIALREWARD_CACHE``, else ~/.cache/spatialreward)."""
    return Path(os.environ.get("SPATIALREWARD_CACHE", Path.home() / ".cache" / "spatialreward"))


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, as lowercase hex (recorded for every exported weights file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(directory: str | Path, pattern: str = "**/*.safetensors") -> dict[str, str]:
    """The SHA-256 of every file under ``directory`` matching ``pattern``, by POSIX path relative to it."""
    directory = Path(directory)
    return {p.relative_to(directory).as_posix(): file_sha256(p) for p in sorted(directory.glob(pattern)) if p.is_file()}


def check_sha256(path: str | Path, expected: str, *, recorded_in: str | Path) -> None:
    """Refuse, naming the file, a weights file that is missing or whose SHA-256 is not the one recorded at export
    (in ``recorded_in``): a corrupt or modified file fails here, not as wrong numbers later."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing, but {recorded_in} records its SHA-256; export the model again")
    if (actual := file_sha256(path)) != expected:
        raise ValueError(
            f"{path}: SHA-256 {actual} differs from {expected} recorded in {recorded_in}: the weights "
            "file is corrupt or was modified after export; export the model again"
        )
