"""Rectified-flow (flow-matching) training math for FLUX, as pure functions.

Convention of :mod:`spatialrl.sde` and FLUX: ``x_sigma = (1 - sigma) x0 + sigma eps``, ``sigma = 1`` is noise,
``sigma = 0`` is data, and the transformer predicts the velocity ``v = eps - x0`` (``dx/dsigma``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "TimestepKind",
    "TimestepSampling",
    "flow_matching_loss",
    "noisy_latents",
    "sample_timesteps",
    "shift_sigmas",
]

TimestepKind = Literal["logit_normal", "uniform"]
_EPS = 1e-6  # keeps uniform draws inside the open interval (0, 1)


@dataclass
class TimestepSampling:
    """How training sigmas are drawn, as a config block (the keyword arguments of :func:`sample_timesteps`).

    Args:
        kind: ``logit_normal`` (SD3/FLUX practice): ``sigmoid(mean + std * n)``, ``n ~ N(0, 1)``, which spends
            the training signal on intermediate noise levels; ``uniform``: ``U(0, 1)``.
        mean: the logit-normal's mean (``logit_normal`` only).
        std: the logit-normal's standard deviation (> 0; ``logit_normal`` only).
        shift: apply SD3's time shift ``s u / (1 + (s - 1) u)`` with this ``s`` afterwards (> 1 moves sigmas
            towards noise); null: no shift.
    """

    kind: TimestepKind = "logit_normal"
    mean: float = 0.0
    std: float = 1.0
    shift: float | None = None


def shift_sigmas(sigma: Tensor, shift: float) -> Tensor:
    """SD3's time shift ``s u / (1 + (s - 1) u)``: ``s > 1`` moves sigmas towards noise.

    FLUX's resolution-dependent exponential shift ``e^mu u / (e^mu u + 1 - u)`` is the same map with
    ``s = e^mu`` (``mu`` from :func:`spatialrl.schedule.calculate_shift`).
    """
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_timesteps(
    batch: int,
    *,
    generator: torch.Generator | None = None,
    kind: TimestepKind = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    shift: float | None = None,
) -> Tensor:
    """``(batch,)`` float32 training sigmas in (0, 1), on the generator's device (CPU without one).

    ``logit_normal`` (SD3/FLUX practice): ``sigmoid(mean + std * n)``, ``n ~ N(0, 1)``, which spends the
    training signal on intermediate noise levels. ``uniform``: ``u ~ U(0, 1)`` clamped to ``[1e-6, 1 - 1e-6]``.
    ``shift``: optionally apply :func:`shift_sigmas` afterwards.
    """
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    device = generator.device if generator is not None else "cpu"
    if kind == "logit_normal":
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        normal = torch.randn(batch, generator=generator, device=device, dtype=torch.float32)
        sigma = torch.sigmoid(mean + std * normal)
    elif kind == "uniform":
        sigma = torch.rand(batch, generator=generator, device=device, dtype=torch.float32).clamp(_EPS, 1 - _EPS)
    else:
        raise ValueError(f"kind must be 'logit_normal' or 'uniform', got {kind!r}")
    return sigma if shift is None else shift_sigmas(sigma, shift)


def _per_sample(sigma: float | Tensor, like: Tensor) -> Tensor:
    """``sigma`` (a float or ``(B,)``) shaped to broadcast over ``like`` ``(B, ...)``."""
    sigma = torch.as_tensor(sigma, device=like.device, dtype=like.dtype)
    if sigma.ndim == 0:
        return sigma
    if sigma.shape != like.shape[:1]:
        raise ValueError(f"sigma must be a scalar or have shape ({like.shape[0]},), got {tuple(sigma.shape)}")
    return sigma.reshape(-1, *[1] * (like.ndim - 1))


def noisy_latents(*, latents: Tensor, noise: Tensor, sigma: float | Tensor) -> Tensor:
    """``(1 - sigma) x0 + sigma eps`` for clean ``latents`` x0 and ``noise`` eps; ``sigma`` a float or ``(B,)``."""
    if latents.shape != noise.shape:
        raise ValueError(f"latents {tuple(latents.shape)} and noise {tuple(noise.shape)} differ in shape")
    s = _per_sample(sigma, latents)
    return (1 - s) * latents + s * noise


def flow_matching_loss(*, velocity: Tensor, latents: Tensor, noise: Tensor, weighting: Tensor | None = None) -> Tensor:
    """Scalar float32 ``mean((v - (eps - x0))^2)``; with ``weighting`` ``(B,)``, the per-sample means are
    weighted by it before the batch mean. Computed in float32 whatever the velocity's dtype."""
    if not velocity.shape == latents.shape == noise.shape:
        raise ValueError(
            f"velocity {tuple(velocity.shape)}, latents {tuple(latents.shape)} and noise {tuple(noise.shape)} "
            "must have the same shape"
        )
    error = (velocity.float() - (noise.float() - latents.float())).pow(2)
    per_sample = error.reshape(error.shape[0], -1).mean(1)
    if weighting is None:
        return per_sample.mean()
    if weighting.shape != per_sample.shape:
        raise ValueError(f"weighting must have shape ({per_sample.shape[0]},), got {tuple(weighting.shape)}")
    return (weighting.float() * per_sample).mean()
