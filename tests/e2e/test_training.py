"""End-to-end training through the CLI: fit/validate/test, export, mid-epoch resume, DDP and FSDP2 vs 1 process.

These spawn real training processes on the tiny model (marked slow; CI runs them too).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from cli_runner import run_module
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def write_config(tmp: Path, data: Path, *, max_steps: int, curriculum: bool, every: int = 2, **trainer) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "val_check_interval": max_steps,
            "check_val_every_n_epoch": None,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "gradient_clip_val": 0.5,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp / "run"),
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(tmp / "run"), "name": "csv"},
                },
                {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": str(tmp / "run"), "name": "tb"},
                },
            ],
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(tmp / "run" / "ckpt"),
                        "save_last": True,
                        "every_n_train_steps": every,
                    },
                },
                {
                    "class_path": "spatialscore.callbacks.ExportSpatialScore",
                    "init_args": {"directory": str(tmp / "export")},
                },
            ],
            **trainer,
        },
        "model": {
            "model": {
                "lora": {"rank": 4},
                "template": {"system": None, "instruction": ""},
                "head_hidden_size": 32,
                "train_vision_merger": True,
            },
            "optimizer": {"lr": 3e-3, "warmup_steps": 2},
            "loss": "uncertainty",
        },
        "data": {
            "train": str(data / "train.jsonl"),
            "val": str(data / "val.jsonl"),
            "test": str(data / "test.jsonl"),
            "batch_size": 8,
            "curriculum": {"boundaries": [0.5]} if curriculum else None,
        },
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*args: str, cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    return run_module("spatialscore.cli", *args, cwd=cwd, expect=expect)


def exported(tmp: Path) -> dict[str, torch.Tensor]:
    """Every weights file of the export (adapter, head and reward token, trained base parts), in one dict."""
    return {k: v for path in sorted((tmp / "export").glob("*.safetensors")) for k, v in load_file(str(path)).items()}


def metrics(tmp: Path) -> list[dict[str, str]]:
    import csv

    files = sorted((tmp / "run" / "csv").glob("version_*/metrics.csv"))
    return [row for f in files for row in csv.DictReader(f.open())]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key, **tol)


def test_fit_validate_test_and_score(tmp_path, synthetic_dir):
    config = write_config(tmp_path, synthetic_dir, max_steps=6, curriculum=False)
    run_cli("fit", "--config", str(config), cwd=tmp_path)
    rows = metrics(tmp_path)
    assert any("val/accuracy" in r and r["val/accuracy"] for r in rows)
    assert any(r.get("val/subset/2-3-pert/num_pairs") for r in rows) or any(
        r.get("val/subset/1-pert/num_pairs") for r in rows
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "run" / "tb").glob("version_*"))))
    events.Reload()
    assert "val/pairs" in events.Tags()["images"] and "val/accuracy" in events.Tags()["scalars"]
    ckpt = tmp_path / "run" / "ckpt" / "last.ckpt"
    out = run_cli("test", "--config", str(config), "--ckpt_path", str(ckpt), cwd=tmp_path)
    assert "test/accuracy" in out.stdout
    image = next((synthetic_dir / "images").glob("*.png"))
    scored = run_cli(
        "score",
        "--model",
        str(tmp_path / "export"),
        "--prompt",
        "a red circle to the left of a blue square",
        str(image),
        str(image),
        cwd=tmp_path,
    )
    lines = [json.loads(line) for line in scored.stdout.strip().splitlines()]
    assert len(lines) == 2 and lines[0]["score"] == lines[1]["score"] and lines[0]["sigma"] > 0


@pytest.mark.parametrize("curriculum", [False, True], ids=["epochs", "curriculum"])
def test_resume_mid_epoch_matches_uninterrupted(tmp_path, synthetic_dir, curriculum):
    # 96 records / batch 8 = 12 batches per epoch: crash at step 15 (mid second epoch), last checkpoint at 14.
    steps = 18
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    for folder in (full, crashed):
        folder.mkdir()
    run_cli("fit", "--config", str(write_config(full, synthetic_dir, max_steps=steps, curriculum=curriculum)), cwd=full)
    config = write_config(crashed, synthetic_dir, max_steps=steps, curriculum=curriculum)
    run_cli(
        "fit",
        "--config",
        str(config),
        "--trainer.callbacks+=crash_callback.CrashAtStep",
        "--trainer.callbacks.step=15",
        cwd=crashed,
        expect=17,
    )
    ckpt = crashed / "run" / "ckpt" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 14
    run_cli("fit", "--config", str(config), "--ckpt_path", str(ckpt), cwd=crashed)
    assert_same_weights(exported(full), exported(crashed), rtol=0, atol=0)
    final = lambda rows: [r["val/accuracy"] for r in rows if r.get("val/accuracy")][-1]  # noqa: E731
    assert final(metrics(full)) == final(metrics(crashed))


STRATEGIES = {
    "ddp": ["--trainer.strategy=ddp"],
    "fsdp": [
        "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
        "--trainer.strategy.data_parallel_size=2",
        "--trainer.strategy.tensor_parallel_size=1",
    ],
}


def test_ddp_and_fsdp_match_single_process(tmp_path, synthetic_dir):
    steps = 4
    single = tmp_path / "single"
    single.mkdir()
    run_cli("fit", "--config", str(write_config(single, synthetic_dir, max_steps=steps, curriculum=False)), cwd=single)
    reference = exported(single)
    for name, args in STRATEGIES.items():
        folder = tmp_path / name
        folder.mkdir()
        config = write_config(folder, synthetic_dir, max_steps=steps, curriculum=False)
        run_cli("fit", "--config", str(config), "--trainer.devices=2", "--data.batch_size=4", *args, cwd=folder)
        assert_same_weights(exported(folder), reference, rtol=1e-3, atol=1e-4)
        losses = [float(r["train/loss"]) for r in metrics(folder) if r.get("train/loss")]
        ref_losses = [float(r["train/loss"]) for r in metrics(single) if r.get("train/loss")]
        assert len(losses) == len(ref_losses) == steps
        assert losses == pytest.approx(ref_losses, rel=1e-5)


def test_fsdp_checkpoint_resumes(tmp_path, synthetic_dir):
    """A 2-process FSDP2 run killed mid-epoch resumes from its sharded checkpoint to the uninterrupted result."""
    steps, args = 6, ["--trainer.devices=2", "--data.batch_size=4", *STRATEGIES["fsdp"]]
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    for folder in (full, crashed):
        folder.mkdir()
    run_cli(
        "fit", "--config", str(write_config(full, synthetic_dir, max_steps=steps, curriculum=True)), *args, cwd=full
    )
    config = write_config(crashed, synthetic_dir, max_steps=steps, curriculum=True)
    run_cli(
        "fit",
        "--config",
        str(config),
        *args,
        "--trainer.callbacks+=crash_callback.CrashAtStep",
        "--trainer.callbacks.step=5",
        cwd=crashed,
        expect=17,
    )
    ckpt = crashed / "run" / "ckpt" / "last.ckpt"
    assert ckpt.is_dir(), "FSDP2 checkpoints are sharded (torch.distributed.checkpoint folders)"
    run_cli("fit", "--config", str(config), "--ckpt_path", str(ckpt), *args, cwd=crashed)
    assert_same_weights(exported(full), exported(crashed), rtol=0, atol=0)


def test_fsdp_bf16_trains_fp32_master_weights(tmp_path, synthetic_dir):
    """bf16 frozen weights under FSDP2 (the 7B recipe's setting): LoRA, vision merger, head and reward token are
    stored in fp32 (FSDP2 refuses mixed trainable dtypes in a unit, and bf16 would round small Adam steps away)
    and are trained."""
    config = write_config(tmp_path, synthetic_dir, max_steps=2, curriculum=False)
    fsdp = [*STRATEGIES["fsdp"][:1], "--trainer.strategy.data_parallel_size=1", *STRATEGIES["fsdp"][2:]]
    run_cli("fit", "--config", str(config), "--model.model.backbone.dtype=bfloat16", *fsdp, cwd=tmp_path)
    weights = exported(tmp_path)
    assert {v.dtype for v in weights.values()} == {torch.float32}
    assert any("merger" in k for k in weights) and "reward_embedding" in weights
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().max() > 0 for v in lora_b)
    assert all(torch.isfinite(v).all() for v in weights.values())
