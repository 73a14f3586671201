"""Lightning callbacks of the RL half: export the trained policy as a plain diffusers FLUX folder; watch the
training reward and a held-out judge for divergence (reward hacking)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from spatialrl.flux import SETTINGS_FILE, FluxPolicy
from spatialrl.lora import add_lora, has_lora, merged_copy, save_lora
from spatialscore.files import SHA256_KEY, folder_sha256

__all__ = ["LORA_FOLDER", "ExportPolicy", "RewardDivergence", "diverged", "export_policy", "sampling_settings"]

LORA_FOLDER = "lora"  # in an export: the adapter alone, as diffusers saves a FLUX LoRA


def export_policy(module: L.LightningModule, directory: str | Path, *, is_global_zero: bool = True) -> None:
    """Write ``module``'s policy (a ``source``, ``lora`` and trained ``transformer``) to ``directory``.

    ``directory/`` is a complete FLUX folder in the diffusers layout with the LoRA adapter merged (loadable by
    ``FluxSource(path=...)`` and ``FluxPipeline.from_pretrained``). When there is an adapter,
    ``directory/lora/pytorch_lora_weights.safetensors`` holds it alone, written by diffusers' FLUX LoRA saving
    with its alpha and rank (:func:`~spatialrl.lora.save_lora`): ``FluxPipeline.load_lora_weights(directory /
    "lora")`` on the base pipeline, then ``fuse_lora``, gives the merged transformer. ``spatialrl.json`` holds the
    T5 length it was trained with (read back by ``FluxSource``), when the module has them the image ``height`` and
    ``width`` it sampled at and its validation's ODE ``num_steps`` (:func:`sampling_settings`: ``spatialrl
    evaluate``'s defaults), and under ``weights_sha256`` the SHA-256 of every weights file (the merged
    components and the LoRA file), checked when ``FluxSource`` loads the folder. The weights are gathered as
    a full state dict first, so this works for sharded (FSDP2) models too; every rank must call it.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(module.transformer, options=options)
    encoders = {
        name: get_model_state_dict(getattr(module.policy, name), options=options)
        for name in getattr(module, "trained_text_encoder_names", ())
    }
    if not is_global_zero:
        return
    directory = Path(directory)
    policy = module.source.load(device="cpu")
    if has_lora(module.transformer):
        add_lora(policy.transformer, module.lora)
    # the adapter keeps its fp32 master weights (add_lora), so the LoRA file is not rounded to the policy's dtype
    policy.transformer.load_state_dict({k: v if "lora_" in k else v.to(policy.dtype) for k, v in state.items()})
    for name, encoder_state in encoders.items():  # text encoders the module trained (FlowMatchingModule)
        getattr(policy, name).load_state_dict(encoder_state)
    merged = FluxPolicy(
        transformer=merged_copy(policy.transformer),
        vae=policy.vae,
        text_encoder=policy.text_encoder,
        tokenizer=policy.tokenizer,
        text_encoder_2=policy.text_encoder_2,
        tokenizer_2=policy.tokenizer_2,
        scheduler_config=policy.scheduler_config,
    )
    merged.save_pretrained(directory)
    settings: dict[str, Any] = {"max_sequence_length": policy.max_sequence_length, **sampling_settings(module)}
    if has_lora(policy.transformer):
        save_lora(policy.transformer, directory / LORA_FOLDER)
    settings[SHA256_KEY] = folder_sha256(directory)  # checked by FluxSource.load
    (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def sampling_settings(module: L.LightningModule) -> dict[str, int]:
    """The image size a module trained and validated at and its validation's ODE steps: ``sampling.height``,
    ``sampling.width`` and ``eval_spec.num_steps`` of a :class:`~spatialrl.module.FluxGRPOModule`; ``height``,
    ``width`` and ``val_steps`` of a :class:`~spatialrl.sft.FlowMatchingModule`; ``{}`` for other modules."""
    sampling, evaluation = getattr(module, "sampling", None), getattr(module, "eval_spec", None)
    if sampling is not None and evaluation is not None:
        values = {"height": sampling.height, "width": sampling.width, "num_steps": evaluation.num_steps}
    elif all(hasattr(module, name) for name in ("height", "width", "val_steps")):
        values = {"height": module.height, "width": module.width, "num_steps": module.val_steps}
    else:
        return {}
    return {key: int(value) for key, value in values.items()}


class ExportPolicy(L.Callback):
    """At the end of ``fit``, write the trained policy with :func:`export_policy` (loadable without Lightning).

    Args:
        directory: folder the exported policy is written to (a diffusers FLUX folder, plus the LoRA adapter
            and the sampling settings; see :func:`export_policy`).
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with torch.no_grad():
            export_policy(pl_module, self.directory, is_global_zero=trainer.is_global_zero)
        trainer.strategy.barrier("export_policy")


def diverged(*, rewards: Sequence[float], judge: Sequence[float], tolerance: float, patience: int) -> bool:
    """True when the training reward and the judge have diverged over a run's validations.

    Diverged: for the last ``patience`` validations the judge sat more than ``tolerance`` below its best so far
    while the training reward stood above its value at the judge's best; the policy is gaining reward by
    something the judge counts as wrong. ``rewards[i]`` and ``judge[i]`` are the i-th validation's values.
    """
    if len(rewards) != len(judge):
        raise ValueError(f"{len(rewards)} rewards but {len(judge)} judge values")
    if patience < 1 or tolerance < 0:
        raise ValueError(f"patience must be >= 1 and tolerance >= 0, got {patience} and {tolerance}")
    streak, best = 0, 0
    for i, (reward, score) in enumerate(zip(rewards, judge, strict=True)):
        if score > judge[best]:
            best = i
        streak = streak + 1 if score < judge[best] - tolerance and reward > rewards[best] else 0
    return streak >= patience


class RewardDivergence(L.Callback):
    """Log the training reward next to a held-out judge at every validation; flag (and optionally stop on) divergence.

    After each validation this logs ``val/diverged`` (1.0 once :func:`diverged` holds for the validations so far);
    with ``stop=True`` it also ends training there, with a warning naming both values. When the module evaluated
    the initial policy before training (``FluxGRPOModule``'s ``eval.at_start``, kept in its ``start_metrics``), that
    evaluation is the first point of the history, so a judge that falls from the start is seen.

    Args:
        reward: validation metric of the training reward (on held-out prompts: ``val/reward``).
        judge: validation metric of the held-out judge (the strict judge's accuracy is ``val/strict_correct``
            when ``StrictReward`` is an eval metric).
        tolerance: how far below its best so far the judge must sit to count as fallen (>= 0).
        patience: number of consecutive validations the judge must stay fallen while the reward stands above
            its value at the judge's best (>= 1).
        stop: also end training once diverged (with a warning naming both values).
    """

    def __init__(
        self,
        *,
        reward: str = "val/reward",
        judge: str = "val/strict_correct",
        tolerance: float = 0.05,
        patience: int = 2,
        stop: bool = False,
    ) -> None:
        if patience < 1 or tolerance < 0:
            raise ValueError(f"patience must be >= 1 and tolerance >= 0, got {patience} and {tolerance}")
        self.reward, self.judge = reward, judge
        self.tolerance, self.patience, self.stop = tolerance, patience, stop
        self.rewards: list[float] = []
        self.scores: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        start = getattr(pl_module, "start_metrics", None) or {}
        if not self.rewards and self.reward in start and self.judge in start:
            self.rewards.append(float(start[self.reward]))
            self.scores.append(float(start[self.judge]))
        metrics = trainer.callback_metrics
        missing = [key for key in (self.reward, self.judge) if key not in metrics]
        if missing:
            raise KeyError(
                f"RewardDivergence: validation logged no {', '.join(missing)} (logged: {', '.join(sorted(metrics))})"
            )
        reward, score = float(metrics[self.reward]), float(metrics[self.judge])
        if not (math.isfinite(reward) and math.isfinite(score)):
            raise ValueError(f"RewardDivergence: {self.reward}={reward}, {self.judge}={score} are not finite")
        self.rewards.append(reward)
        self.scores.append(score)
        flag = diverged(rewards=self.rewards, judge=self.scores, tolerance=self.tolerance, patience=self.patience)
        for logger in trainer.loggers:
            logger.log_metrics({"val/diverged": float(flag)}, step=trainer.global_step)
        if flag and self.stop and not trainer.should_stop:
            best = max(range(len(self.scores)), key=self.scores.__getitem__)
            rank_zero_warn(
                f"RewardDivergence: stopping at step {trainer.global_step}: {self.reward} rose "
                f"{self.rewards[best]:.3f} -> {reward:.3f} while {self.judge} fell "
                f"{self.scores[best]:.3f} -> {score:.3f}"
            )
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"rewards": list(self.rewards), "scores": list(self.scores)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rewards = list(state_dict["rewards"])
        self.scores = list(state_dict["scores"])
