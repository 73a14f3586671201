"""One optimiser block for the three LightningModules: AdamW and a ``transformers.get_scheduler`` schedule.

The same YAML spelling in ``SpatialScoreModule``, ``FluxGRPOModule`` and ``FlowMatchingModule``::

    optimizer:
      lr: 1.0e-3
      weight_decay: 0.0
      betas: [0.9, 0.999]
      warmup_steps: 50
      schedule: cosine_with_min_lr          # any transformers.SchedulerType name
      schedule_kwargs: {min_lr_rate: 0.1}   # the schedule's own arguments (scheduler_specific_kwargs)
      group_lr: {head: 2.0e-5}              # per parameter group; the groups are the module's (SpatialScore:
                                            # lm, head, token, vision; FLUX modules: transformer)

The schedule is stepped once per optimiser step. Schedules that need the run's length (``linear``, ``cosine``,
...) take ``trainer.estimated_stepping_batches``, so they need ``max_steps`` (or epochs), not only ``max_time``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from spatialscore.imports import without_bitsandbytes

__all__ = ["OptimizerConfig", "configure_adamw"]

# transformers.SchedulerType's values, spelled out so that checking a config does not import transformers.
SCHEDULES = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)
# Schedules whose shape is fixed by the number of training steps.
_NEEDS_TOTAL = frozenset(SCHEDULES) - {"constant", "constant_with_warmup", "inverse_sqrt"}


@dataclass
class OptimizerConfig:
    """AdamW over the module's trainable weights with a learning-rate schedule from ``transformers``.

    Args:
        lr: learning rate of every parameter group not named in ``group_lr`` (finite, >= 0).
        weight_decay: AdamW's decoupled weight decay.
        betas: AdamW's moment coefficients.
        warmup_steps: linear warm-up from 0 over this many optimiser steps.
        schedule: a ``transformers.get_scheduler`` name: ``constant_with_warmup`` (the default), ``linear``,
            ``cosine``, ``cosine_with_min_lr``, ``warmup_stable_decay``, ... (``constant`` has no warm-up).
        schedule_kwargs: the schedule's own arguments, e.g. ``{min_lr_rate: 0.1}`` for ``cosine_with_min_lr``.
        group_lr: learning rate per parameter group, by the module's group names (unknown names refused).
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: str = "constant_with_warmup"
    schedule_kwargs: dict[str, Any] = field(default_factory=dict)
    group_lr: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in [("lr", self.lr), *((f"group_lr.{k}", v) for k, v in self.group_lr.items())]:
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"optimizer.{name} must be finite and >= 0, got {value}")
        if self.warmup_steps < 0:
            raise ValueError(f"optimizer.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optimizer.schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if self.schedule == "constant" and self.warmup_steps > 0:
            raise ValueError(
                "optimizer.schedule 'constant' has no warm-up (transformers' meaning), but warmup_steps is "
                f"{self.warmup_steps}: use 'constant_with_warmup'"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptimizerConfig:
        """Read a config back from a checkpoint's hyper-parameters, including the spellings of 0.1.0.

        In 0.1.0 ``SpatialScoreModule`` had ``head_lr``/``token_lr``/``vision_lr``, and ``schedule`` meant
        the project's own "constant" (with warm-up) or "cosine" (to ``min_lr_ratio``); they are mapped to
        ``group_lr`` and to ``constant_with_warmup`` / ``cosine_with_min_lr`` with a ``DeprecationWarning``.
        """
        data = dict(data)
        legacy = {key: data.pop(key) for key in ("head_lr", "token_lr", "vision_lr", "min_lr_ratio") if key in data}
        if legacy:
            warnings.warn(
                f"optimizer keys {sorted(legacy)} are the spelling of 0.1.0; see OptimizerConfig",
                DeprecationWarning,
                stacklevel=2,
            )
            group_lr = dict(data.get("group_lr") or {})
            for key in ("head_lr", "token_lr", "vision_lr"):
                if legacy.get(key) is not None:
                    group_lr[key.removesuffix("_lr")] = legacy[key]
            data["group_lr"] = group_lr
            if "min_lr_ratio" in legacy:
                schedule = data.get("schedule", "constant")
                if schedule == "cosine":
                    data["schedule"] = "cosine_with_min_lr"
                    data["schedule_kwargs"] = {"min_lr_rate": legacy["min_lr_ratio"]}
                elif schedule == "constant":
                    data["schedule"] = "constant_with_warmup"
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown optimizer keys: {', '.join(sorted(unknown))}")
        return cls(**data)


def configure_adamw(
    *,
    groups: Mapping[str, Sequence[torch.nn.Parameter]],
    known_groups: Sequence[str],
    config: OptimizerConfig,
    total_steps: Callable[[], float],
) -> dict[str, Any]:
    """AdamW over the named parameter groups and the config's schedule, as ``configure_optimizers`` returns it.

    ``groups``: the trainable parameters by group name (empty groups are left out); ``known_groups``: every
    group name the module defines, so that a ``group_lr`` for a frozen group is accepted and a misspelt one is
    refused. ``total_steps``: returns the optimiser steps of the run (``trainer.estimated_stepping_batches``);
    called only for schedules whose shape depends on it, so the others need no trainer.
    """
    unknown = sorted(set(config.group_lr) - set(known_groups))
    if unknown:
        raise ValueError(
            f"optimizer.group_lr names unknown groups {unknown}; this module's groups: {', '.join(known_groups)}"
        )
    param_groups = [
        {"params": list(params), "lr": config.group_lr.get(name, config.lr), "name": name}
        for name, params in groups.items()
        if params
    ]
    optimizer = torch.optim.AdamW(param_groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    total = None
    if config.schedule in _NEEDS_TOTAL:
        steps = total_steps()
        if not math.isfinite(steps) or steps < 1:
            raise ValueError(
                f"optimizer.schedule {config.schedule!r} needs the number of training steps: set trainer.max_steps "
                f"(got {steps} estimated steps)"
            )
        total = int(steps)
    with without_bitsandbytes():
        from transformers.optimization import get_scheduler

    scheduler = get_scheduler(
        config.schedule,
        optimizer,
        num_warmup_steps=config.warmup_steps,
        num_training_steps=total,
        scheduler_specific_kwargs=dict(config.schedule_kwargs),
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
