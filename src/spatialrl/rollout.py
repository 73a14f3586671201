"""Rollouts: sample images from a :class:`~spatialrl.flux.FluxPolicy`, recording what GRPO trains on.

Each of the ``num_steps`` steps is an SDE step (stochastic, trained) or an ODE step (deterministic Euler, not
trained), chosen by a boolean step mask; the mask helpers cover Flow-GRPO (all but the last), Flow-GRPO-Fast /
MixGRPO (a window) and DanceGRPO (a random fraction). All step math is :func:`spatialrl.sde.sde_step` in float32.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np
import torch
from torch import Tensor

from spatialrl.flux import FluxPolicy
from spatialrl.sde import SDEKind, SDEStepOutput, sde_step

__all__ = [
    "SeedStream",
    "Trajectory",
    "eval_initial_noise",
    "seeded_noise",
    "ode_images",
    "prompt_key",
    "sample_seed",
    "replay_step",
    "sample",
    "sde_mask_all_but_last",
    "sde_mask_random",
    "sde_mask_window",
    "step_mask",
]


@dataclass
class Trajectory:
    """A batch of rollouts. Per trained (SDE) step k of K, batch first:

    ``latents`` / ``next_latents`` / ``means``: ``(B, K, tokens, 4C)`` float32 packed latents before the step,
    after it, and the transition mean; ``log_probs`` and ``stds``: ``(B, K)``; ``sigma`` / ``sigma_next``: ``(K,)``;
    ``step_indices``: ``(K,)`` positions in the ``num_steps`` schedule. ``final_latents`` ``(B, tokens, 4C)`` and
    ``images`` ``(B, 3, H, W)`` in [0, 1]. The prompt encodings and sampling settings are kept for replay.
    """

    prompts: list[str]
    prompt_embeds: Tensor
    pooled: Tensor
    height: int
    width: int
    guidance: float
    noise_level: float
    kind: SDEKind
    sigmas: Tensor
    step_indices: Tensor
    sigma: Tensor
    sigma_next: Tensor
    latents: Tensor
    next_latents: Tensor
    log_probs: Tensor
    means: Tensor
    stds: Tensor
    final_latents: Tensor
    images: Tensor

    _BATCHED = (
        "prompt_embeds",
        "pooled",
        "latents",
        "next_latents",
        "log_probs",
        "means",
        "stds",
        "final_latents",
        "images",
    )

    def select(self, rows: Tensor | Sequence[int]) -> Trajectory:
        """The sub-batch ``rows`` (e.g. a training micro-batch), sharing the sampling settings."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        fields = {name: getattr(self, name)[rows.to(getattr(self, name).device)] for name in self._BATCHED}
        return replace(self, prompts=[self.prompts[int(i)] for i in rows], **fields)

    @classmethod
    def concat(cls, parts: Sequence[Trajectory]) -> Trajectory:
        """One trajectory from rollouts of the same settings (e.g. sampled in chunks)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        fields = {name: torch.cat([getattr(p, name) for p in parts]) for name in cls._BATCHED}
        return replace(parts[0], prompts=[q for p in parts for q in p.prompts], **fields)


def sde_mask_all_but_last(num_steps: int) -> Tensor:
    """Flow-GRPO: every step but the last, nearly deterministic one is an SDE step."""
    return sde_mask_window(num_steps, start=0, size=num_steps - 1)


def sde_mask_window(num_steps: int, *, start: int, size: int) -> Tensor:
    """Steps ``start .. start + size - 1`` (clipped to the schedule) are SDE steps: Flow-GRPO-Fast, MixGRPO."""
    if num_steps < 1 or start < 0 or size < 0:
        raise ValueError(f"need num_steps >= 1, start >= 0, size >= 0; got {num_steps}, {start}, {size}")
    mask = torch.zeros(num_steps, dtype=torch.bool)
    mask[start : start + size] = True
    return mask


def sde_mask_random(num_steps: int, *, fraction: float, seed: int, exclude_last: bool = True) -> Tensor:
    """DanceGRPO: ``round(fraction * n)`` of the ``n`` candidate steps, drawn without replacement from ``seed``."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    candidates = num_steps - 1 if exclude_last else num_steps
    chosen = torch.randperm(candidates, generator=torch.Generator().manual_seed(seed))[: round(fraction * candidates)]
    mask = torch.zeros(num_steps, dtype=torch.bool)
    mask[chosen] = True
    return mask


def step_mask(sde_steps: Tensor | Sequence[int] | None, num_steps: int) -> Tensor:
    """A ``(num_steps,)`` bool mask from a mask, a list of step indices, or ``None`` (all but the last)."""
    if sde_steps is None:
        return sde_mask_all_but_last(num_steps)
    if isinstance(sde_steps, Tensor) and sde_steps.dtype == torch.bool:
        if sde_steps.shape != (num_steps,):
            raise ValueError(f"step mask must have shape ({num_steps},), got {tuple(sde_steps.shape)}")
        return sde_steps.cpu()
    indices = torch.as_tensor(sde_steps, dtype=torch.long).reshape(-1)
    if bool(((indices < 0) | (indices >= num_steps)).any()):
        raise ValueError(f"step indices must lie in [0, {num_steps}), got {indices.tolist()}")
    mask = torch.zeros(num_steps, dtype=torch.bool)
    mask[indices] = True
    return mask


@torch.no_grad()
def sample(
    policy: FluxPolicy,
    *,
    prompts: list[str],
    height: int,
    width: int,
    num_steps: int,
    noise_level: float,
    kind: SDEKind = "sde",
    sde_steps: Tensor | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    initial_noise: Tensor | None = None,
    step_noise: Tensor | None = None,
    guidance: float = 3.5,
) -> Trajectory:
    """Sample one image per prompt (repeat prompts for a group) and record the SDE steps.

    ``initial_noise`` is packed ``(B, tokens, 4C)`` like ``FluxPipeline(latents=...)``; otherwise it is drawn
    unpacked ``(B, C, h, w)`` from ``generator`` and packed, as FluxPipeline does, so the same seed gives the
    same start. SDE noise comes from ``generator`` too, unless ``step_noise`` ``(B, num_steps, tokens, 4C)``
    gives each step's standard-normal draw (so a sample's randomness need not depend on its batch). With
    ``noise_level=0`` every step is the Euler ODE step
    and the images equal FluxPipeline's. The transformer runs in its dtype; each step is float32.
    """
    mask = step_mask(sde_steps, num_steps)
    device = policy.device
    rows, cols = policy.latent_size(height, width)
    prompt_embeds, pooled = policy.encode_prompts(prompts)
    img_ids = policy.latent_image_ids(height, width)
    batch = len(prompts)
    if initial_noise is None:
        noise_device = generator.device if generator is not None else device
        shape = (batch, policy.latent_channels, rows, cols)
        latents = policy.pack_latents(torch.randn(shape, generator=generator, device=noise_device, dtype=torch.float32))
    else:
        expected = (batch, (rows // 2) * (cols // 2), 4 * policy.latent_channels)
        if tuple(initial_noise.shape) != expected:
            raise ValueError(f"initial_noise must have shape {expected}, got {tuple(initial_noise.shape)}")
        latents = initial_noise
    if step_noise is not None and tuple(step_noise.shape) != (batch, num_steps, *latents.shape[1:]):
        raise ValueError(
            f"step_noise must have shape {(batch, num_steps, *latents.shape[1:])}, got {tuple(step_noise.shape)}"
        )
    latents = latents.to(device=device, dtype=torch.float32)
    sigmas = policy.sigmas(num_steps, height, width)

    records: list[tuple[Tensor, SDEStepOutput]] = []
    for i in range(num_steps):
        out = policy_step(
            policy,
            latents=latents,
            sigma=float(sigmas[i]),
            sigma_next=float(sigmas[i + 1]),
            prompt_embeds=prompt_embeds,
            pooled=pooled,
            img_ids=img_ids,
            guidance=guidance,
            noise_level=noise_level if bool(mask[i]) else 0.0,
            kind=kind,
            generator=generator,
            noise=None if step_noise is None else step_noise[:, i].to(device=device, dtype=torch.float32),
        )
        if bool(mask[i]):
            records.append((latents, out))
        latents = out.prev_sample

    step_indices = mask.nonzero().reshape(-1)

    def stacked(values: list[Tensor], per_step_shape: tuple[int, ...]) -> Tensor:
        """(B, K, ...) from K per-step tensors; (B, 0, ...) when no step was recorded."""
        return torch.stack(values, dim=1) if values else latents.new_zeros(batch, 0, *per_step_shape)

    token_shape = tuple(latents.shape[1:])
    return Trajectory(
        prompts=list(prompts),
        prompt_embeds=prompt_embeds,
        pooled=pooled,
        height=height,
        width=width,
        guidance=guidance,
        noise_level=noise_level,
        kind=kind,
        sigmas=sigmas,
        step_indices=step_indices,
        sigma=sigmas[step_indices],
        sigma_next=sigmas[step_indices + 1],
        latents=stacked([x for x, _ in records], token_shape),
        next_latents=stacked([o.prev_sample for _, o in records], token_shape),
        log_probs=stacked([o.log_prob for _, o in records], ()),
        means=stacked([o.mean for _, o in records], token_shape),
        stds=stacked([o.std for _, o in records], ()),
        final_latents=latents,
        images=policy.decode(latents, height=height, width=width),
    )


def replay_step(policy: FluxPolicy, trajectory: Trajectory, *, index: int) -> SDEStepOutput:
    """Re-score trained step ``index`` (of K) under the policy's current weights, with gradients.

    Recomputes the velocity at the recorded latents and the log-probability of the recorded next latents:
    on-policy (unchanged weights, same batch) it equals the recorded log-prob, the PPO ratio's ``old`` term.
    """
    return policy_step(
        policy,
        latents=trajectory.latents[:, index],
        sigma=float(trajectory.sigma[index]),
        sigma_next=float(trajectory.sigma_next[index]),
        prompt_embeds=trajectory.prompt_embeds,
        pooled=trajectory.pooled,
        img_ids=policy.latent_image_ids(trajectory.height, trajectory.width),
        guidance=trajectory.guidance,
        noise_level=trajectory.noise_level,
        kind=trajectory.kind,
        prev_sample=trajectory.next_latents[:, index],
    )


def policy_step(
    policy: FluxPolicy,
    *,
    latents: Tensor,
    sigma: float,
    sigma_next: float,
    prompt_embeds: Tensor,
    pooled: Tensor,
    img_ids: Tensor,
    guidance: float,
    noise_level: float,
    kind: SDEKind,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    prev_sample: Tensor | None = None,
) -> SDEStepOutput:
    """One transition: the transformer's velocity (in its dtype), then :func:`sde_step` in float32.

    Sampling (``generator``) and re-scoring a recorded transition (``prev_sample``) share this function, so the
    recorded and the recomputed log-probabilities come from the same arithmetic.
    """
    velocity = policy.velocity(
        latents=latents,
        sigma=sigma,
        prompt_embeds=prompt_embeds,
        pooled=pooled,
        img_ids=img_ids,
        guidance=guidance,
    )
    return sde_step(
        velocity=velocity.float(),
        sample=latents,
        sigma=sigma,
        sigma_next=sigma_next,
        noise_level=noise_level,
        kind=kind,
        generator=generator,
        noise=noise,
        prev_sample=prev_sample,
    )


def sample_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: well mixed, platform independent)."""
    return int(np.random.SeedSequence([int(p) % (1 << 63) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class SeedStream(IntEnum):
    """The independent random streams of a GRPO training step: the last part of its :func:`sample_seed` key,
    ``sample_seed(seed, global_step, ..., stream)``, so no two draw the same numbers. The values are part of every
    recorded run's randomness: add a stream with a new value, never renumber one."""

    SDE_STEPS = 1
    """which steps are stochastic and trained, with ``sampling.sde_fraction`` (key: seed, step)"""
    STEP_NOISE = 2
    """the SDE noise of each step of a rollout (key: seed, step, prompt position, group member)"""
    INITIAL_NOISE = 3
    """the starting noise of a rollout (key: seed, step, prompt position, group member or 0 if shared)"""
    PPO_ORDER = 4
    """the order of the kept samples in each PPO epoch (key: seed, step, epoch)"""


def prompt_key(prompt: str) -> int:
    """A stable integer for a prompt's text (CRC-32 of its UTF-8 bytes), for per-prompt seeds."""
    return zlib.crc32(prompt.encode("utf-8"))


def seeded_noise(
    policy: FluxPolicy, *, seeds: Sequence[int], height: int, width: int, steps: int | None = None
) -> Tensor:
    """Packed standard-normal latents, one CPU generator per sample so a sample's noise depends on its seed only:
    ``(B, tokens, 4C)``, or ``(B, steps, tokens, 4C)`` per-step SDE noise when ``steps`` is given."""
    rows, cols = policy.latent_size(height, width)
    shape = (1 if steps is None else steps, policy.latent_channels, rows, cols)
    noise = [
        FluxPolicy.pack_latents(torch.randn(shape, generator=torch.Generator().manual_seed(seed))) for seed in seeds
    ]
    return torch.stack(noise)[:, 0] if steps is None else torch.stack(noise)


def eval_initial_noise(
    policy: FluxPolicy, *, prompts: Sequence[str], indices: Sequence[int], seed: int, height: int, width: int
) -> Tensor:
    """Packed initial noise ``(B, tokens, 4C)`` of sample ``indices[b]`` of ``prompts[b]``, drawn from
    ``sample_seed(seed, crc32(prompt), index)`` as ``FluxGRPOModule`` validation and ``spatialrl evaluate`` draw
    it: it depends on neither the policy, the batch nor the prompt's position."""
    seeds = [sample_seed(seed, prompt_key(prompt), index) for prompt, index in zip(prompts, indices, strict=True)]
    return seeded_noise(policy, seeds=seeds, height=height, width=width)


def ode_images(
    policy: FluxPolicy,
    *,
    prompts: Sequence[str],
    samples_per_prompt: int,
    seed: int,
    num_steps: int,
    height: int,
    width: int,
    guidance: float,
    batch_size: int,
) -> Iterator[Tensor]:
    """Euler ODE samples, prompt-major (``samples_per_prompt`` of each prompt, from :func:`eval_initial_noise`),
    yielded ``batch_size`` at a time as float ``(b, 3, H, W)`` images in [0, 1]; chunked as the module's
    validation chunks by ``sampling.rollout_batch``, so the same batch size gives the same arithmetic."""
    flat = [p for p in prompts for _ in range(samples_per_prompt)]
    indices = [i for _ in prompts for i in range(samples_per_prompt)]
    for start in range(0, len(flat), batch_size):
        chunk = slice(start, start + batch_size)
        noise = eval_initial_noise(
            policy, prompts=flat[chunk], indices=indices[chunk], seed=seed, height=height, width=width
        )
        yield sample(
            policy,
            prompts=flat[chunk],
            height=height,
            width=width,
            num_steps=num_steps,
            noise_level=0.0,
            sde_steps=[],
            initial_noise=noise,
            guidance=guidance,
        ).images
