"""A tiny FLUX VAE that decodes procedural colours: brief autoencoder pretraining on procedural scenes.

A randomly initialised decoder turns any latent into grey noise, so a colour-based reward of decoded samples
would be meaningless. :func:`pretrain_autoencoder` trains the VAE as a (KL-regularised) autoencoder on images
rendered by :mod:`spatialscore.data.synthetic`, then measures the shift and scale that make the encoded
latents zero-mean and unit-variance, as FLUX's transformer expects of ``(z - shift_factor) * scaling_factor``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from spatialscore.data.synthetic import BACKGROUND, generate_pair, render_scene
from spatialscore.imports import without_bitsandbytes

with without_bitsandbytes():  # diffusers imports it when installed; FLUX is never quantized here
    from diffusers import AutoencoderKL

__all__ = ["latent_statistics", "pretrain_autoencoder", "procedural_images"]

_ALL_STAGES: tuple[int, ...] = (1, 2, 3, 4, 5, 6)


def procedural_images(*, count: int, image_size: int, seed: int, stages: Sequence[int] = _ALL_STAGES) -> Tensor:
    """``count`` float32 images ``(count, 3, H, W)`` in [0, 1]: the perfect and perturbed scene of procedural
    pairs ``generate_pair(seed=(seed, i))``, cycling through ``stages`` (the default, stages 1-6, covers all 8
    colours, 2-5 objects and overlaps)."""
    images = []
    for index in range((count + 1) // 2):
        pair = generate_pair(seed=(seed, index), stage=stages[index % len(stages)], image_size=image_size)
        for scene in (pair.perfect, pair.perturbed):
            images.append(np.asarray(render_scene(scene, image_size=image_size)))
    array = np.stack(images[:count]).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, *, images: Tensor, batch_size: int = 64) -> tuple[float, float]:
    """``(shift, scale)`` = (mean, 1 / std) over every element of the posterior modes of ``images`` in [0, 1].

    The mode (not a sample) because that is what the supervised flow-matching mode encodes.
    """
    latents = torch.cat([vae.encode(chunk * 2 - 1).latent_dist.mode() for chunk in images.split(batch_size)]).double()
    return float(latents.mean()), float(1.0 / latents.std())


def pretrain_autoencoder(
    vae: AutoencoderKL,
    *,
    steps: int,
    image_size: int,
    seed: int,
    batch_size: int = 32,
    pool_size: int = 1024,
    lr: float = 5e-3,
    kl_weight: float = 1e-4,
    object_weight: float = 9.0,
) -> tuple[float, float]:
    """Train ``vae`` in place as an autoencoder on procedural images; return its latent ``(shift, scale)``.

    Loss: squared error of the decoded posterior sample (images in [-1, 1], as diffusers VAEs expect), with
    pixels that are not background weighted ``1 + object_weight`` (objects cover a few percent of an image and
    their exact colour is what a colour-based reward reads; unweighted, colours stayed washed out ~10x longer),
    plus ``kl_weight`` times the mean per-element KL to N(0, 1), which keeps the posterior a bounded space for the
    transformer to generate in. AdamW with a cosine decay; batches are drawn from a fixed pool of ``pool_size``
    images. Deterministic for ``seed`` (on one machine and thread count). The statistics are measured on a
    disjoint pool. The VAE is left in eval mode without gradients.
    """
    pool = procedural_images(count=pool_size, image_size=image_size, seed=seed)
    background = torch.tensor(BACKGROUND, dtype=torch.float32).reshape(1, 3, 1, 1) / 127.5 - 1
    generator = torch.Generator().manual_seed(seed)
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    for _ in range(steps):
        target = pool[torch.randint(pool_size, (batch_size,), generator=generator)] * 2 - 1
        posterior = vae.encode(target).latent_dist
        eps = torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(posterior.mean + posterior.std * eps).sample
        weight = 1 + object_weight * (target - background).abs().amax(1, keepdim=True).gt(0.01).float()
        mse = (weight * (recon - target).pow(2)).sum() / (weight.sum() * target.shape[1])
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1 - posterior.logvar).mean()
        loss = mse + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    vae.eval().requires_grad_(False)
    held_out = procedural_images(count=256, image_size=image_size, seed=seed + 1)
    return latent_statistics(vae, images=held_out)
