"""Shared fixtures: a per-session cache for tiny backbones, small procedural data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny checkpoints are built offline into a fresh cache folder, once per session."""
    path = tmp_path_factory.mktemp("spatialreward-cache")
    os.environ["SPATIALREWARD_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small procedural data set (train/val/test manifests) shared by the tests that train."""
    from spatialscore.data.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic")
    for offset, (split, pairs) in enumerate((("train", 48), ("val", 16), ("test", 16))):
        write_synthetic_dataset(
            out, num_pairs=pairs, seed=100 + offset, image_size=64, stages=(1, 6), split=split, show_progress=False
        )
    return out
