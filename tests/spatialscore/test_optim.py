"""The shared optimiser block: transformers' schedules by name, parameter groups, refusals, old spellings."""

from __future__ import annotations

import math

import pytest
import torch

from spatialscore.optim import SCHEDULES, OptimizerConfig, configure_adamw


def _lrs(config: OptimizerConfig, *, steps: int, total: float = 10) -> list[list[float]]:
    groups = {"a": [torch.nn.Parameter(torch.zeros(2))], "b": [torch.nn.Parameter(torch.zeros(3))]}
    out = configure_adamw(groups=groups, known_groups=("a", "b", "frozen"), config=config, total_steps=lambda: total)
    optimizer, scheduler = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert out["lr_scheduler"]["interval"] == "step"
    seen = []
    for _ in range(steps):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


def test_warmup_then_constant_with_a_rate_per_group() -> None:
    lrs = _lrs(OptimizerConfig(lr=1e-3, warmup_steps=4, group_lr={"b": 1e-2}), steps=6)
    assert [a for a, _ in lrs] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert [b for _, b in lrs] == pytest.approx([0.0, 2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2])


def test_cosine_to_a_floor_reaches_it_at_the_last_step() -> None:
    config = OptimizerConfig(
        lr=1.0, warmup_steps=2, schedule="cosine_with_min_lr", schedule_kwargs={"min_lr_rate": 0.1}
    )
    lrs = [a for a, _ in _lrs(config, steps=13, total=12)]
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert lrs[7] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[12] == pytest.approx(0.1)
    assert all(x >= y for x, y in zip(lrs[2:], lrs[3:], strict=False))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_transformers_schedule_is_available(schedule: str) -> None:
    from transformers import SchedulerType

    kwargs = {"num_decay_steps": 2} if schedule == "warmup_stable_decay" else {}
    if schedule in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        kwargs = {"min_lr_rate": 0.1}
    warmup = 0 if schedule == "constant" else 2
    lrs = _lrs(OptimizerConfig(lr=1.0, warmup_steps=warmup, schedule=schedule, schedule_kwargs=kwargs), steps=8)
    assert all(0 <= a <= 1 for a, _ in lrs)
    assert {s.value for s in SchedulerType} - set(SCHEDULES) <= {"reduce_lr_on_plateau", "greedy"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr": -1.0}, r"optimizer.lr must be finite and >= 0, got -1.0"),
        ({"group_lr": {"b": math.nan}}, r"optimizer.group_lr.b must be finite"),
        ({"warmup_steps": -1}, r"optimizer.warmup_steps must be >= 0"),
        ({"schedule": "cosine_annealing"}, r"optimizer.schedule must be one of linear, cosine, .*'cosine_annealing'"),
        ({"schedule": "constant", "warmup_steps": 5}, r"'constant' has no warm-up .*use 'constant_with_warmup'"),
    ],
)
def test_bad_settings_are_refused_by_name(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**settings)


def test_unknown_group_and_missing_run_length_are_refused() -> None:
    params = {"a": [torch.nn.Parameter(torch.zeros(1))]}
    with pytest.raises(ValueError, match=r"group_lr names unknown groups \['lora'\]; this module's groups: a"):
        configure_adamw(
            groups=params, known_groups=("a",), config=OptimizerConfig(group_lr={"lora": 1.0}), total_steps=lambda: 5
        )
    with pytest.raises(ValueError, match=r"'cosine' needs the number of training steps: set trainer.max_steps"):
        configure_adamw(
            groups=params, known_groups=("a",), config=OptimizerConfig(schedule="cosine"), total_steps=lambda: math.inf
        )


def test_frozen_groups_are_left_out_and_their_rate_accepted() -> None:
    params = {"a": [torch.nn.Parameter(torch.zeros(1))], "frozen": []}
    config = OptimizerConfig(group_lr={"frozen": 1.0})
    out = configure_adamw(groups=params, known_groups=("a", "frozen"), config=config, total_steps=lambda: 5)
    assert [g["name"] for g in out["optimizer"].param_groups] == ["a"]


def test_spellings_of_0_1_0_are_read_from_checkpoints_with_a_warning() -> None:
    old = {
        "lr": 1e-3,
        "head_lr": 1e-2,
        "token_lr": None,
        "vision_lr": 2e-3,
        "weight_decay": 0.0,
        "betas": [0.9, 0.99],
        "warmup_steps": 5,
        "schedule": "cosine",
        "min_lr_ratio": 0.2,
    }
    with pytest.warns(DeprecationWarning, match="spelling of 0.1.0"):
        config = OptimizerConfig.from_dict(old)
    assert config == OptimizerConfig(
        lr=1e-3,
        group_lr={"head": 1e-2, "vision": 2e-3},
        betas=(0.9, 0.99),
        warmup_steps=5,
        schedule="cosine_with_min_lr",
        schedule_kwargs={"min_lr_rate": 0.2},
    )
    with pytest.warns(DeprecationWarning):
        assert OptimizerConfig.from_dict({"warmup_steps": 3, "schedule": "constant", "min_lr_ratio": 0.1}).schedule == (
            "constant_with_warmup"
        )
    with pytest.raises(ValueError, match="unknown optimizer keys: momentum"):
        OptimizerConfig.from_dict({"momentum": 0.9})
