"""The shared warm-up + constant/cosine learning-rate multiplier, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from spatialscore.schedules import warmup_schedule


def test_warmup_then_constant():
    f = warmup_schedule(warmup_steps=4)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_schedule(warmup_steps=0)(0) == 1.0


def test_warmup_then_cosine_to_the_floor():
    f = warmup_schedule(warmup_steps=2, schedule="cosine", total_steps=12, min_lr_ratio=0.1)
    assert f(0) == 0.5 and f(2) == pytest.approx(1.0)
    assert f(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(12) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="schedule"):
        warmup_schedule(warmup_steps=1, schedule="linear")
