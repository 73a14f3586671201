"""GRPO end to end through ``spatialrl fit``: DDP / FSDP2 (2 CPU processes) against 1 process, groups spread
over ranks, and a run killed mid-epoch resumed to the uninterrupted result. Slow; CI runs them too."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from cli_runner import run_module
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
STRATEGIES = {
    "ddp": ["--trainer.strategy=ddp"],
    "fsdp": [
        "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
        "--trainer.strategy.data_parallel_size=2",
        "--trainer.strategy.tensor_parallel_size=1",
    ],
}


@pytest.fixture(scope="module")
def rl_data(tmp_path_factory) -> Path:
    from spatialscore.data.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("rl-prompts")
    for offset, (split, pairs) in enumerate((("train", 16), ("val", 2))):
        write_synthetic_dataset(
            out, num_pairs=pairs, seed=300 + offset, image_size=32, stages=(1,), split=split, show_progress=False
        )
    return out


def write_config(tmp: Path, data: Path, *, max_steps: int, spread: bool = False) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "val_check_interval": max_steps // 2,  # in batches: each batch takes 2 optimiser steps (PPO epochs)
            "check_val_every_n_epoch": None,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp / "run"),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp / "run"), "name": "csv"},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(tmp / "run" / "ckpt"), "save_last": True, "every_n_train_steps": 1},
                },
                {"class_path": "spatialrl.callbacks.ExportPolicy", "init_args": {"directory": str(tmp / "export")}},
            ],
        },
        "model": {
            "class_path": "spatialrl.module.FluxGRPOModule",
            "init_args": {
                "reward": {"class_path": "toy_rewards.LeftRed"},
                "lora": {"rank": 4},
                "sampling": {"height": 32, "width": 32, "num_steps": 3, "rollout_batch": 4},
                "grpo": {
                    "group_size": 4,
                    "k": 1,
                    "micro_batch": 2,
                    "kl_beta": 0.1,
                    "clip_range": 0.2,
                    "ppo_epochs": 2,
                    "groups_across_ranks": spread,
                },
                "optimizer": {"lr": 1e-2},
                "ema_decay": 0.5,
                "eval": {"num_steps": 3, "samples_per_prompt": 1, "at_start": False},
            },
        },
        "data": {
            "class_path": "spatialscore.data.datamodule.PreferenceDataModule",
            "init_args": {
                "train": str(data / "train.jsonl"),
                "val": str(data / "val.jsonl"),
                "view": "prompts",
                "batch_size": 4,
            },
        },
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*args: str, cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    return run_module("spatialrl.cli", *args, cwd=cwd, expect=expect)


def adapter(tmp: Path) -> dict[str, torch.Tensor]:
    return load_file(str(tmp / "export" / "lora" / "pytorch_lora_weights.safetensors"))


def logged_in(version: Path, key: str) -> list[float]:
    import csv

    return [float(r[key]) for r in csv.DictReader((version / "metrics.csv").open()) if r.get(key)]


def logged(tmp: Path, key: str) -> list[float]:
    return [v for version in sorted((tmp / "run" / "csv").glob("version_*")) for v in logged_in(version, key)]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key, **tol)


def single_run(tmp_path: Path, data: Path, steps: int) -> Path:
    folder = tmp_path / "single"
    folder.mkdir()
    run_cli("fit", "--config", str(write_config(folder, data, max_steps=steps)), cwd=folder)
    return folder


def test_ddp_fsdp_and_spread_groups_match_single_process(tmp_path, rl_data):
    steps = 4  # 2 batches x 2 PPO epochs
    single = single_run(tmp_path, rl_data, steps)
    reference, rewards = adapter(single), logged(single, "train/reward_mean")
    assert len(rewards) == 2 and any(v.abs().max() > 0 for k, v in reference.items() if "lora_B" in k)
    runs = {**STRATEGIES, "ddp-spread": STRATEGIES["ddp"]}
    for name, args in runs.items():
        folder = tmp_path / name
        folder.mkdir()
        config = write_config(folder, rl_data, max_steps=steps, spread=name.endswith("spread"))
        run_cli("fit", "--config", str(config), "--trainer.devices=2", "--data.batch_size=2", *args, cwd=folder)
        assert logged(folder, "train/reward_mean") == pytest.approx(rewards, rel=1e-5, abs=1e-7), name
        assert_same(adapter(folder), reference, rtol=1e-3, atol=1e-4)


def test_killed_run_resumes_exactly(tmp_path, rl_data):
    steps = 8  # 4 batches x 2 PPO epochs; killed after batch 3 (step 6), before its checkpoint: resumes at step 4
    single = single_run(tmp_path, rl_data, steps)
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    config = write_config(crashed, rl_data, max_steps=steps)
    run_cli(
        "fit",
        "--config",
        str(config),
        "--trainer.callbacks+=crash_callback.CrashAtStep",
        "--trainer.callbacks.step=6",
        cwd=crashed,
        expect=17,
    )
    ckpt = crashed / "run" / "ckpt" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 4 and "ema" in state
    assert all("lora_" in k for k in state["state_dict"]), "checkpoints hold the adapter, not the frozen base"
    run_cli("fit", "--config", str(config), "--ckpt_path", str(ckpt), cwd=crashed)
    assert_same(adapter(single), adapter(crashed), rtol=0, atol=0)
    resumed = sorted((crashed / "run" / "csv").glob("version_*"))[-1]
    assert logged_in(resumed, "train/reward_mean") == logged(single, "train/reward_mean")[2:]


def test_fsdp_run_with_ema_resumes_exactly(tmp_path, rl_data):
    """2-process FSDP2: sharded checkpoint (adapter, optimiser, full-tensor EMA re-sharded on load) resumes exactly."""
    steps, args = 8, ["--trainer.devices=2", "--data.batch_size=2", *STRATEGIES["fsdp"]]
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    for folder in (full, crashed):
        folder.mkdir()
    run_cli("fit", "--config", str(write_config(full, rl_data, max_steps=steps)), *args, cwd=full)
    config = write_config(crashed, rl_data, max_steps=steps)
    run_cli(
        "fit",
        "--config",
        str(config),
        *args,
        "--trainer.callbacks+=crash_callback.CrashAtStep",
        "--trainer.callbacks.step=6",
        cwd=crashed,
        expect=17,
    )
    ckpt = crashed / "run" / "ckpt" / "last.ckpt"
    assert ckpt.is_dir(), "FSDP2 checkpoints are sharded (torch.distributed.checkpoint folders)"
    run_cli("fit", "--config", str(config), "--ckpt_path", str(ckpt), *args, cwd=crashed)
    assert_same(adapter(full), adapter(crashed), rtol=0, atol=0)
    final = logged(full, "val/reward")
    assert len(final) == 1 and final == logged(crashed, "val/reward")[-1:]


def test_fsdp_bf16_policy_trains_fp32_adapter(tmp_path, rl_data):
    """A bf16 policy under FSDP2: the adapter is stored (and exported) in fp32 and trained."""
    fsdp = [*STRATEGIES["fsdp"][:1], "--trainer.strategy.data_parallel_size=1", *STRATEGIES["fsdp"][2:]]
    config = write_config(tmp_path, rl_data, max_steps=2)
    run_cli("fit", "--config", str(config), "--model.init_args.policy.dtype=bfloat16", *fsdp, cwd=tmp_path)
    weights = adapter(tmp_path)
    assert {v.dtype for v in weights.values()} == {torch.float32}
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)
