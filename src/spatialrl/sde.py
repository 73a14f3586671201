"""One stochastic step of flow-matching sampling with its Gaussian log-probability (for GRPO).

Notation: ``x_sigma = (1 - sigma) x0 + sigma eps`` (sigma = 1 noise, 0 data), the model predicts the
velocity ``v ~ eps - x0``; a step goes from ``s = sigma`` to ``s' = sigma_next < s`` with ``D = s' - s < 0``,
``h = -D``, ``x0_hat = x - s v`` and ``eps_hat = x + (1 - s) v``. ``a = noise_level``.

Kinds:

* ``"sde"`` (Flow-GRPO): ``g = a sqrt(s / (1 - s*))`` with ``s* = s``, or ``s* = s'`` when ``s == 1`` (the
  division guard of the first step); ``mean = x + D (v + g^2 / (2 s) eps_hat)``, ``std = g sqrt(h)``.
* ``"dance"`` (DanceGRPO): the same with a constant ``g = a`` (eta).
* ``"cps"`` (coefficient-preserving): ``std = s' sin(a pi / 2)``,
  ``mean = (1 - s') x0_hat + sqrt(s'^2 - std^2) eps_hat``; its "log-prob" is ``-mean((x' - mean)^2)``,
  without the variance terms (hence a much smaller PPO clip range, ~1e-5).

So ``a`` means something else per kind (:data:`NOISE_LEVELS`): Flow-GRPO's noise level (0.7 on SD3.5, 0.9 on
FLUX), DanceGRPO's eta (0.3), or the CPS fraction ``sin(a pi / 2)`` of ``s'`` that is fresh noise, which must
be in (0, 1] (0.8 in Flow-GRPO's CPS recipes; 0.9 re-noises almost fully).

All arithmetic is float32 whatever the input dtype (bf16 log-probs are NaN-prone).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = ["NOISE_LEVELS", "SDEKind", "SDEStepOutput", "check_noise_level", "sde_step"]

SDEKind = Literal["sde", "dance", "cps"]
_KINDS = ("sde", "dance", "cps")
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
NOISE_LEVELS = {  # what noise_level means per kind, with the published values
    "sde": "Flow-GRPO's noise level a in g = a sqrt(s / (1 - s)), typically 0.7 (SD3.5) to 0.9 (FLUX)",
    "dance": "DanceGRPO's constant eta = g, typically 0.3",
    "cps": "a in (0, 1]: sin(a pi / 2) of sigma_next is fresh noise, typically 0.8 (0.9 re-noises almost fully)",
}


class SDEStepOutput(NamedTuple):
    """Result of :func:`sde_step`; every tensor is float32.

    ``prev_sample`` and ``mean`` have the sample's shape, ``log_prob`` and ``std`` have shape ``(B,)``.
    """

    prev_sample: Tensor
    log_prob: Tensor
    mean: Tensor
    std: Tensor


def _per_batch(value: float | Tensor, like: Tensor) -> Tensor:
    """``value`` (a float, a 0-d or a ``(B,)`` tensor) as a float32 tensor of shape ``(B, 1, ..., 1)``."""
    batch = like.shape[0]
    tensor = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if tensor.ndim > 1 or (tensor.ndim == 1 and tensor.shape[0] not in (1, batch)):
        raise ValueError(f"sigmas must be floats or tensors of shape (B,) = ({batch},), got {tuple(tensor.shape)}")
    return tensor.reshape(-1, *([1] * (like.ndim - 1))).expand(batch, *([1] * (like.ndim - 1)))


def check_noise_level(noise_level: float, kind: SDEKind, *, name: str = "noise_level") -> None:
    """Refuse a ``noise_level`` that is not finite, is negative, or (CPS) above 1, naming the kind's meaning.

    0 (the ODE step) is allowed; CPS levels above 1 would alias ``2 - a`` through ``sin(a pi / 2)``. ``name``
    is the setting the messages name.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if not math.isfinite(noise_level):
        raise ValueError(f"{name} must be finite, got {noise_level} (kind {kind!r}: {NOISE_LEVELS[kind]})")
    if noise_level < 0 or (kind == "cps" and noise_level > 1):
        allowed = "in [0, 1]" if kind == "cps" else ">= 0"
        raise ValueError(f"{name} must be {allowed} for kind {kind!r}, got {noise_level} ({NOISE_LEVELS[kind]})")


def sde_step(
    *,
    velocity: Tensor,
    sample: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    noise_level: float,
    kind: SDEKind = "sde",
    prev_sample: Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> SDEStepOutput:
    """Take (or score) one transition ``x_sigma -> x_sigma_next`` of the kind's Gaussian policy.

    ``velocity`` and ``sample`` have shape ``(B, ...)`` and any floating dtype; both are cast to float32
    first. ``sigma`` and ``sigma_next`` are floats or per-batch ``(B,)`` tensors with
    ``1 >= sigma > sigma_next >= 0``.

    If ``prev_sample`` is given, only its log-probability under the transition is computed (replaying a
    rollout in training); otherwise ``prev_sample = mean + std * noise`` with the given standard-normal
    ``noise`` (the sample's shape), else with noise drawn from ``generator``. The log-probability is the
    Gaussian log-density ``-(x' - mean)^2 / (2 std^2) - log std - log sqrt(2 pi)`` **averaged** (not summed)
    over the non-batch elements, with ``prev_sample`` detached: gradients flow through ``mean`` and ``std``.

    Deterministic transitions (``std == 0``) get log-prob exactly 0 and ``prev_sample = mean``; a stored
    ``prev_sample`` is then not compared with the mean. This covers ``noise_level == 0``, the Euler ODE step
    ``x + D v`` for every kind (no noise is drawn), and the CPS step into ``sigma_next = 0``. The SDE and
    DanceGRPO steps into ``sigma_next = 0`` keep ``std = g sqrt(sigma) > 0`` and stay finite; that final step
    is not trained (Flow-GRPO trains all but the last), so rollouts take it with ``noise_level=0``.
    """
    check_noise_level(noise_level, kind)
    if sample.ndim < 2:
        raise ValueError(f"sample must have shape (B, ...) with at least 2 dims, got {tuple(sample.shape)}")
    if velocity.shape != sample.shape:
        raise ValueError(f"velocity {tuple(velocity.shape)} and sample {tuple(sample.shape)} differ in shape")
    if prev_sample is not None and noise is not None:
        raise ValueError("pass prev_sample (to score it) or noise (to sample), not both")
    x = sample.float()
    v = velocity.float()
    s = _per_batch(sigma, x)
    s_next = _per_batch(sigma_next, x)
    if not bool(((s_next >= 0) & (s_next < s) & (s <= 1)).all()):
        raise ValueError("sigmas must satisfy 1 >= sigma > sigma_next >= 0")
    d = s_next - s

    if noise_level == 0:
        mean = x + d * v
        std = torch.zeros_like(s)
    elif kind == "cps":
        std = s_next * math.sin(noise_level * math.pi / 2)
        x0_hat = x - s * v
        eps_hat = x + (1 - s) * v
        mean = (1 - s_next) * x0_hat + torch.sqrt((s_next**2 - std**2).clamp_min(0)) * eps_hat
    else:
        if kind == "sde":
            s_star = torch.where(s == 1, s_next, s)
            g = noise_level * torch.sqrt(s / (1 - s_star))
        else:
            g = torch.full_like(s, noise_level)
        eps_hat = x + (1 - s) * v
        mean = x + d * (v + g**2 / (2 * s) * eps_hat)
        std = g * torch.sqrt(-d)

    if prev_sample is not None:
        if prev_sample.shape != x.shape:
            raise ValueError(f"prev_sample {tuple(prev_sample.shape)} and sample {tuple(x.shape)} differ in shape")
        prev = prev_sample.float()
    elif noise_level == 0:
        prev = mean
    else:
        if noise is None:
            device = generator.device if generator is not None else x.device
            noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32)
        elif noise.shape != x.shape:
            raise ValueError(f"noise {tuple(noise.shape)} and sample {tuple(x.shape)} differ in shape")
        prev = mean + std * noise.to(device=x.device, dtype=torch.float32)

    sq_err = (prev.detach() - mean) ** 2
    stochastic = std > 0
    if kind == "cps":
        log_prob = -sq_err
    else:
        safe_std = torch.where(stochastic, std, torch.ones_like(std))
        log_prob = -sq_err / (2 * safe_std**2) - torch.log(safe_std) - _LOG_SQRT_2PI
    log_prob = log_prob.mean(dim=tuple(range(1, x.ndim)))
    log_prob = torch.where(stochastic.reshape(-1), log_prob, torch.zeros_like(log_prob))
    return SDEStepOutput(prev_sample=prev, log_prob=log_prob, mean=mean, std=std.reshape(-1))
