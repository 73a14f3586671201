"""Shared fixtures: a per-session cache for tiny backbones, small procedural data sets. The test helpers
(``tests/helpers``: toy rewards, the chat stub, CLI runners) are importable by name from every tier."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))


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


@pytest.fixture(scope="session")
def spatialscore_export(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export folder of a tiny random SpatialScore (LoRA rank 4, seed 0; its base model copied inside)."""
    import torch

    from spatialscore.model import RewardLoraConfig, SpatialScore, SpatialScoreConfig

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("spatialscore-export") / "export"
    SpatialScore.build(SpatialScoreConfig(lora=RewardLoraConfig(rank=4))).save_pretrained(path)
    return path
