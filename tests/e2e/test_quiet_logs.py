"""Quiet, honest logs: no bitsandbytes (and no network) unless quantization is asked for, no torchvision fallback
warnings, no Lightning advertisements or checkpoint warnings from the shipped configs, no hp_metric placeholder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_runner import TESTS, run_module

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# What the commands printed before: bitsandbytes' kernel-hub lookup, transformers' torchvision fallbacks,
# Lightning's litlogger / litmodels tips and its ModelCheckpoint warning (with a code sample) under manual
# optimisation; the FutureWarning of Lightning's own use of torch's deprecated LeafSpec; Lightning's warning
# that the GRPO transformer was in eval mode.
NOISE = (
    "gemm_4bit",
    "trust_remote_code",
    "torchvision",
    "💡 Tip",
    "litlogger",
    "litmodels",
    "manual optimization",
    "LeafSpec",
    "in eval mode at the start of training",
)

# Run in a fresh interpreter: records every attempt to resolve a host name (the kernel hub lookup starts there).
NETWORK_PROBE = """
import socket, sys
attempts = []
def refuse(host, *args, **kwargs):
    attempts.append(host)
    raise OSError("network disabled by the test")
socket.getaddrinfo = refuse
"""


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        },
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


@pytest.mark.parametrize(
    ("module", "args"),
    [("spatialscore.cli", ("synth", "--help")), ("spatialscore.cli", ("--help",)), ("spatialrl.cli", ("--help",))],
)
def test_help_prints_nothing_on_stderr(module, args, tmp_path):
    proc = run_module(module, *args, cwd=tmp_path)
    assert "usage" in proc.stdout
    assert proc.stderr.strip() == ""


def test_local_commands_import_no_bitsandbytes_and_reach_no_network(tmp_path):
    code = (
        NETWORK_PROBE
        + """
from spatialscore.cli import main
try:
    main(["synth", "--help"])
except SystemExit:
    pass
import spatialscore.data.synthetic, spatialscore.data.verify, spatialrl.cli
print("bitsandbytes" in sys.modules, attempts)
"""
    )
    proc = run_python(code, tmp_path)
    assert proc.stdout.strip().splitlines()[-1] == "False []"
    assert proc.stderr.strip() == ""


def test_training_stacks_import_bitsandbytes_only_for_a_quantized_backbone(tmp_path):
    """LoRA on SpatialScore and on FLUX without bitsandbytes; then QLoRA in the same process still gets its
    bitsandbytes layers (transformers imports it when the quantized backbone loads)."""
    code = (
        NETWORK_PROBE
        + """
import spatialscore.module, spatialrl.module, spatialrl.sft, spatialrl.callbacks, spatialrl.evaluate
from spatialscore.backbone import BackboneConfig
from spatialscore.model import RewardLoraConfig, SpatialScore, SpatialScoreConfig
from spatialrl.flux import FluxSource
from spatialrl.lora import FluxLoraConfig, add_lora
SpatialScore.build(SpatialScoreConfig(lora=RewardLoraConfig(rank=4)))
add_lora(FluxSource().load().transformer, FluxLoraConfig(rank=4))
print("bitsandbytes" in sys.modules, attempts)
qlora = SpatialScore.build(
    SpatialScoreConfig(backbone=BackboneConfig(quantization="4bit"), lora=RewardLoraConfig(rank=4))
)
import bitsandbytes as bnb
print("bitsandbytes" in sys.modules, any(isinstance(m, bnb.nn.Linear4bit) for m in qlora.modules()),
      any("lora_A" in n for n, _ in qlora.named_parameters()))
"""
    )
    proc = run_python(code, tmp_path)
    lines = proc.stdout.strip().splitlines()
    assert lines[-2] == "False []"
    assert lines[-1] == "True True True"


def test_shipped_tensorboard_loggers_have_no_hp_metric_placeholder():
    loggers = []
    for path in sorted(CONFIGS.glob("*/*.yaml")):
        logger = (yaml.safe_load(path.read_text()).get("trainer") or {}).get("logger")
        for entry in logger if isinstance(logger, list) else [logger] if logger else []:
            if entry["class_path"].endswith("TensorBoardLogger"):
                loggers.append((path.name, entry["init_args"].get("default_hp_metric", True)))
    assert len(loggers) == 8
    assert [name for name, hp_metric in loggers if hp_metric is not False] == []


def test_shipped_configs_checkpoint_after_validation_not_every_n_train_steps():
    """Checkpoints written after each validation: a run killed during a validation resumes from the one before
    and re-runs it (with every_n_train_steps the checkpoint of that step is written before its validation, and
    Lightning never runs that validation after a resume: test_a_validation_killed_midway_is_rerun_on_resume). For
    GRPO also: it optimises manually, and ModelCheckpoint(every_n_train_steps) then warns on every save."""
    checked = 0
    for path in sorted(CONFIGS.glob("*/*.yaml")):
        trainer = yaml.safe_load(path.read_text()).get("trainer") or {}
        callbacks = [c for c in trainer.get("callbacks") or [] if c["class_path"].endswith("ModelCheckpoint")]
        for callback in callbacks:
            assert "every_n_train_steps" not in callback["init_args"], path.name
            assert trainer["val_check_interval"], path.name
            checked += 1
    assert checked == 8


@pytest.mark.parametrize("every_n_train_steps", [None, 10])
def test_a_validation_killed_midway_is_rerun_on_resume(tmp_path, every_n_train_steps):
    """Lightning's behaviour the shipped configs rely on, checked: killed in the validation of step 20, a run that
    checkpoints after validations re-runs it on resume; one checkpointing every 10 steps skips it."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel

    validated: list[int] = []

    class Model(BoringModel):
        def on_validation_epoch_end(self) -> None:
            validated.append(self.global_step)

    class KillInValidation(L.Callback):
        def on_validation_start(self, trainer, pl_module) -> None:
            if trainer.global_step == 20:
                raise SystemExit(17)

    def fit(*callbacks: L.Callback, ckpt_path: str | None = None) -> None:
        checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=every_n_train_steps)
        trainer = L.Trainer(
            max_steps=30,
            val_check_interval=10,
            check_val_every_n_epoch=None,
            limit_val_batches=1,
            callbacks=[checkpoint, *callbacks],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(Model(), ckpt_path=ckpt_path)

    with pytest.raises(SystemExit):
        fit(KillInValidation())
    assert validated == [10]
    fit(ckpt_path=str(tmp_path / "last.ckpt"))
    assert validated == ([10, 20, 30] if every_n_train_steps is None else [10, 30])


def grpo_config(tmp: Path) -> Path:
    """configs/spatialrl/tiny.yaml with its loggers and callbacks as shipped, shrunk to two steps of a random FLUX."""
    from spatialscore.data.synthetic import write_synthetic_dataset

    data = tmp / "data"
    for offset, (split, pairs) in enumerate((("train", 4), ("val", 1))):
        write_synthetic_dataset(
            data, num_pairs=pairs, seed=400 + offset, image_size=32, stages=(1,), split=split, show_progress=False
        )
    config = yaml.safe_load((CONFIGS / "spatialrl" / "tiny.yaml").read_text())
    trainer = config["trainer"]
    del trainer["max_time"]
    trainer.update(
        max_steps=2,
        val_check_interval=1,
        limit_val_batches=1,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp / "run"),
    )
    for logger in trainer["logger"]:
        logger["init_args"]["save_dir"] = str(tmp / "run")
    for callback in trainer["callbacks"]:
        key = "dirpath" if "dirpath" in callback["init_args"] else "directory"
        callback["init_args"][key] = str(tmp / "run" / callback["class_path"].rsplit(".", 1)[-1])
    args = config["model"]["init_args"]
    args["policy"] = {"max_sequence_length": 16}  # the tiny random FLUX
    args["sampling"].update(num_steps=3, sde_steps=[0, 1], rollout_batch=8)
    args["grpo"].update(group_size=4, k=1, micro_batch=4)
    args["eval"].update(num_steps=2, samples_per_prompt=1, grid_prompts=1)
    config["data"]["init_args"] = {
        "train": str(data / "train.jsonl"),
        "val": str(data / "val.jsonl"),
        "view": "prompts",
        "batch_size": 1,
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_spatialrl_fit_with_the_shipped_logging_is_quiet(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = run_module("spatialrl.cli", "fit", "--config", str(grpo_config(tmp_path)), cwd=tmp_path)
    noisy = [line for line in proc.stderr.splitlines() if any(word in line for word in NOISE)]
    assert noisy == []
    run = tmp_path / "run"
    assert (run / "ModelCheckpoint" / "last.ckpt").is_file()  # checkpoints at validation
    assert (run / "ExportPolicy" / "model_index.json").is_file()
    (events,) = (run / "tensorboard").rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    assert "train/reward" in scalars and "hp_metric" not in scalars
    # ppo_epochs 1: approx_kl and clip_fraction would be 0 forever, so they are not logged.
    assert "train/policy_loss" in scalars and "train/approx_kl" not in scalars and "train/clip_fraction" not in scalars
