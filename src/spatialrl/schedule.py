"""FLUX.1 sigma schedule: ``linspace(1, 1/N, N)`` with the resolution-dependent exponential shift.

Stateless replacement for ``FlowMatchEulerDiscreteScheduler.set_timesteps`` (a stateful scheduler that is
re-``set_timesteps`` between rollout and training silently corrupts the sigmas). The transformer receives
``timestep = sigma``; ``sigma = 1`` is pure noise, ``sigma = 0`` is data.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["calculate_shift", "flux_sigmas"]


def calculate_shift(
    image_seq_len: int,
    *,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Shift ``mu``, linear in the image token count.

    ``mu = base_shift`` at ``base_seq_len`` tokens and ``max_shift`` at ``max_seq_len`` tokens.

    FLUX packs 2x2 latent patches of a VAE with 8x downsampling, so an ``H x W`` image has
    ``(H // 16) * (W // 16)`` tokens (512^2 -> 1024). Outside the range the line is extrapolated, as in
    diffusers.
    """
    if max_seq_len == base_seq_len:
        raise ValueError("max_seq_len must differ from base_seq_len")
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + slope * (image_seq_len - base_seq_len)


def flux_sigmas(
    *,
    num_steps: int,
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> Tensor:
    """The ``num_steps + 1`` sigmas ``1 = s_0 > ... > s_N = 0`` of FLUX.1 sampling (float32, on CPU).

    ``s = linspace(1, 1/N, N)`` is shifted by ``s <- e^mu s / (e^mu s + 1 - s)`` with
    ``mu = calculate_shift(image_seq_len, ...)``, then the terminal 0 is appended. The arithmetic (float32,
    as ``e^mu / (e^mu + 1/s - 1)``) follows diffusers' ``FlowMatchEulerDiscreteScheduler`` with dynamic
    shifting, so the result is bitwise equal to its ``sigmas`` after
    ``set_timesteps(sigmas=linspace(1, 1/N, N), mu=mu)``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    mu = calculate_shift(
        image_seq_len,
        base_seq_len=base_seq_len,
        max_seq_len=max_seq_len,
        base_shift=base_shift,
        max_shift=max_shift,
    )
    base = np.linspace(1.0, 1.0 / num_steps, num_steps).astype(np.float32)
    scale = math.exp(mu)
    shifted = scale / (scale + (1.0 / base - 1.0))
    return torch.cat([torch.from_numpy(shifted.astype(np.float32)), torch.zeros(1)])
