"""The paper loop's stage-1 configs (``configs/paper/sft_tiny.yaml``, ``rule_tiny.yaml``) are the embedded
defaults (``configs/spatialrl/sft_tiny.yaml``, ``tiny.yaml``) on other prompts, in other folders, and nothing
else; the loop's two GRPO runs share their prompts. Checked on the configs as LightningCLI resolves them."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from spatialrl.cli import main as rl_main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PROMPTS = ("directory", "stages", "eval_stages", "palette_order", "val_pairs")


def _resolved(config: str) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), mock.patch.object(sys, "argv", ["spatialrl"]), pytest.raises(SystemExit):
        rl_main(["fit", "--config", str(CONFIGS / config), "--print_config"])
    return yaml.safe_load(out.getvalue())


def _without(config: dict[str, Any], runs: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config`` with its run folders renamed by ``runs`` and its prompt settings taken out (returned apart)."""
    text = yaml.safe_dump(config)
    for old, new in runs.items():
        text = text.replace(old, new)
    config = yaml.safe_load(text)
    synthetic = config["data"]["init_args"]["synthetic"]
    return config, {key: synthetic.pop(key) for key in PROMPTS}


@pytest.mark.parametrize(
    ("default", "paper", "runs"),
    [
        ("spatialrl/sft_tiny.yaml", "paper/sft_tiny.yaml", {"runs/paper/sft": "runs/spatialrl/sft-tiny"}),
        (
            "spatialrl/tiny.yaml",
            "paper/rule_tiny.yaml",
            {"runs/paper/rl-rule": "runs/spatialrl/tiny", "runs/paper/sft": "runs/spatialrl/sft-tiny"},
        ),
    ],
)
def test_paper_configs_are_the_defaults_on_stage_1(default: str, paper: str, runs: dict[str, str]) -> None:
    wide, wide_prompts = _without(_resolved(default), {})
    stage1, stage1_prompts = _without(_resolved(paper), runs)
    assert stage1 == wide
    assert wide_prompts["stages"] == [3] and wide_prompts["palette_order"] is True
    assert stage1_prompts["stages"] == [1] and stage1_prompts["palette_order"] is False
    assert stage1_prompts["directory"] != wide_prompts["directory"]


def test_the_loops_two_grpo_runs_share_their_prompts() -> None:
    rule = _resolved("paper/rule_tiny.yaml")["data"]["init_args"]
    spatialscore = _resolved("paper/rl_spatialscore_tiny.yaml")["data"]["init_args"]
    assert rule == spatialscore
    sft = _resolved("paper/sft_tiny.yaml")["data"]["init_args"]["synthetic"]
    assert (
        sft["stages"] == rule["synthetic"]["stages"] == [1]
        and sft["palette_order"] is rule["synthetic"]["palette_order"]
    )
