"""The wider-world overlays (``sft_tiny_wide.yaml``, ``tiny_wide.yaml``) resolve on top of the embedded defaults:
palette-ordered stage-3 data in folders of their own, the wide start read by the GRPO run, everything else as
the default (LightningCLI merges a config without ``class_path`` into the earlier one)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from spatialrl.cli import main as rl_main

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "spatialrl"


def _resolved(*configs: str) -> dict:
    out = io.StringIO()
    argv = ["fit", *[a for name in configs for a in ("--config", str(CONFIGS / name))], "--print_config"]
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        rl_main(argv)
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize(
    ("base", "overlay", "out"),
    [("sft_tiny.yaml", "sft_tiny_wide.yaml", "sft-tiny-wide"), ("tiny.yaml", "tiny_wide.yaml", "tiny-wide")],
)
def test_wide_overlay_changes_the_prompts_and_folders_only(base: str, overlay: str, out: str) -> None:
    default, wide = _resolved(base), _resolved(base, overlay)
    synthetic = wide["data"]["init_args"]["synthetic"]
    assert synthetic["palette_order"] is True and synthetic["stages"] == [3] and synthetic["eval_stages"] == [3]
    assert synthetic["directory"] != default["data"]["init_args"]["synthetic"]["directory"]
    assert default["data"]["init_args"]["synthetic"]["palette_order"] is False
    text = yaml.safe_dump(wide["trainer"])
    assert f"runs/spatialrl/{out}" in text and f"runs/spatialrl/{out.removesuffix('-wide')}/" not in text
    for key in ("max_time", "max_steps", "val_check_interval"):
        assert wide["trainer"][key] == default["trainer"][key]
    model, default_model = wide["model"]["init_args"], default["model"]["init_args"]
    if base == "tiny.yaml":
        assert model["policy"]["path"] == "runs/spatialrl/sft-tiny-wide/policy"
        assert model["reward"] == default_model["reward"] and model["grpo"] == default_model["grpo"]
    else:
        assert model["policy"]["tiny"] == default_model["policy"]["tiny"]
    assert model["policy"]["max_sequence_length"] == default_model["policy"]["max_sequence_length"] == 48
