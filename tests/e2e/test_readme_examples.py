"""README's Python examples run as written, on tiny data: every ```python block of README is executed in a folder
where the paths it names exist (tiny exports under the same names), with only the substitutions listed here for
what cannot be tiny (absolute model paths, CUDA, 512 px, a 2,000-step run). A new example without a runner fails."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, spatialscore_export: Path, synthetic_dir: Path) -> Path:
    """A folder holding what the examples name: ``export``, ``runs/spatialscore*/export`` (a tiny SpatialScore),
    ``runs/spatialrl/export`` (a tiny LoRA policy), ``pairs/`` (procedural pairs), ``a.png``."""
    from spatialrl.callbacks import export_policy
    from spatialrl.flux import FluxSource
    from spatialrl.lora import FluxLoraConfig
    from spatialrl.sft import FlowMatchingModule

    ws = tmp_path_factory.mktemp("readme")
    for name in ("export", "runs/spatialscore/export", "runs/spatialscore-tiny/export", "runs/spatialscore-7b/export"):
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / name).symlink_to(spatialscore_export, target_is_directory=True)
    module = FlowMatchingModule(policy=FluxSource(max_sequence_length=16), lora=FluxLoraConfig(rank=4, alpha=8))
    module.configure_model()
    export_policy(module, ws / "runs" / "spatialrl" / "export")
    (ws / "pairs").symlink_to(synthetic_dir, target_is_directory=True)
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(ws / "a.png")
    return ws


def _flux_base() -> str:
    from spatialrl.flux import FluxSource

    return str(FluxSource().resolve())


def _qwen_base() -> str:
    return "export/base"


def _batch() -> dict:
    return {
        "mu_w": torch.tensor([1.0, 0.2, 0.4]),
        "mu_l": torch.tensor([0.0, 0.5, 0.1]),
        "batch": {"subset": ["1-pert", "2-3-pert", "1-pert"], "category": ["swap", "flip", "swap"]},
    }


# A marker found in exactly one README block -> the substitutions (old, new or a function giving new) for what
# cannot be tiny, and the names the snippet takes as given. The plain-transformers recipe is run exactly as README
# shows it by test_export_spatialscore.py (it needs a merged export), hence not here.
RUNNERS: dict[str, tuple[list[tuple[str, str | Callable[[], str]]], Callable[[], dict]]] = {
    "from spatialscore.launch import start_server": ([], dict),
    "PeftModel.from_pretrained(base,": ([('"/models/Qwen2.5-VL-7B-Instruct"', lambda: repr(_qwen_base()))], dict),
    "pipe.load_lora_weights(": ([('"/models/FLUX.1-dev"', lambda: repr(_flux_base()))], dict),
    "model = SpatialScore.from_pretrained(": (
        [],
        lambda: {"pil_image": Image.fromarray(np.zeros((48, 64, 3), np.uint8))},
    ),
    "acc = PairwiseAccuracy(": ([], _batch),
    "traj = sample(policy,": (
        [
            ('"/models/FLUX.1-dev"', lambda: repr(_flux_base())),
            ('"cuda"', '"cpu"'),
            ("height=512, width=512", "height=32, width=32"),
        ],
        lambda: {"p": "a red circle to the left of a blue square"},
    ),
    "module = FluxGRPOModule(": (
        [
            ('"/models/FLUX.1-dev", dtype="bfloat16"', lambda: f"{_flux_base()!r}, dtype='float32'"),
            ("SamplingConfig(height=512, width=512)", "SamplingConfig(height=32, width=32, num_steps=3)"),
            ("group_size=24, k=6", "group_size=4, k=1, micro_batch=2"),
            ("batch_size=3)", "batch_size=2)"),
            ('max_steps=2000, strategy="ddp"', 'max_steps=1, accelerator="cpu", logger=False, limit_val_batches=0'),
        ],
        dict,
    ),
}
RECIPE = "python score_with_transformers.py MERGED_FOLDER"
RUN = [block for block in BLOCKS if RECIPE not in block]


def test_every_readme_example_has_exactly_one_runner() -> None:
    assert len(BLOCKS) == len(RUN) + 1 == len(RUNNERS) + 1
    assert all(sum(marker in block for marker in RUNNERS) == 1 for block in RUN)


@pytest.mark.parametrize("block", RUN, ids=[next((m for m in RUNNERS if m in b), "no runner") for b in RUN])
def test_readme_example_runs(block: str, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = next(marker for marker in RUNNERS if marker in block)
    substitutions, names = RUNNERS[marker]
    for old, new in substitutions:
        assert old in block, f"the README example with {marker!r} no longer contains {old!r}: update its runner"
        block = block.replace(old, new() if callable(new) else new)
    monkeypatch.chdir(workspace)
    exec(compile(block, f"README.md: the example with {marker!r}", "exec"), {"__name__": "readme", **names()})
