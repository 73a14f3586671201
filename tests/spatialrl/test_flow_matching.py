"""Flow-matching math against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from spatialrl.flow_matching import flow_matching_loss, noisy_latents, sample_timesteps, shift_sigmas
from spatialrl.schedule import calculate_shift, flux_sigmas


def test_shift_by_hand_and_as_flux_exponential_shift() -> None:
    sigma = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(shift_sigmas(sigma, 3.0), torch.tensor([0.0, 0.5, 0.75, 1.0]))
    assert torch.equal(shift_sigmas(sigma, 1.0), sigma)
    # FLUX's resolution-dependent shift is the same map with s = e^mu
    mu = calculate_shift(1024)
    base = torch.linspace(1.0, 0.25, 4)
    assert torch.allclose(shift_sigmas(base, math.exp(mu)), flux_sigmas(num_steps=4, image_seq_len=1024)[:-1])
    with pytest.raises(ValueError, match="shift"):
        shift_sigmas(sigma, 0.0)


def test_logit_normal_timesteps() -> None:
    sigma = sample_timesteps(20_000, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (20_000,) and sigma.dtype == torch.float32
    assert bool(((sigma > 0) & (sigma < 1)).all())
    assert abs(float(sigma.median()) - 0.5) < 0.02  # sigmoid of a symmetric normal
    assert abs(float((sigma < 0.5).float().mean()) - 0.5) < 0.02
    # a (nearly) degenerate normal gives sigmoid(mean): sigmoid(ln 3) = 3/4, shifted by 3: 2.25 / 1.5 = 0.9
    point = sample_timesteps(3, generator=torch.Generator().manual_seed(1), mean=math.log(3), std=1e-8)
    assert torch.allclose(point, torch.full((3,), 0.75))
    shifted = sample_timesteps(3, generator=torch.Generator().manual_seed(1), mean=math.log(3), std=1e-8, shift=3.0)
    assert torch.allclose(shifted, torch.full((3,), 0.9))
    # the generator decides the draw
    again = sample_timesteps(20_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sigma, again)


def test_uniform_timesteps() -> None:
    sigma = sample_timesteps(20_000, generator=torch.Generator().manual_seed(0), kind="uniform")
    assert bool(((sigma > 0) & (sigma < 1)).all())
    assert abs(float(sigma.mean()) - 0.5) < 0.01 and abs(float((sigma < 0.25).float().mean()) - 0.25) < 0.01
    with pytest.raises(ValueError, match="kind"):
        sample_timesteps(2, kind="beta")
    with pytest.raises(ValueError, match="batch"):
        sample_timesteps(0)


def test_noisy_latents_by_hand() -> None:
    x0 = torch.tensor([[1.0, 2.0]])
    eps = torch.tensor([[3.0, -1.0]])
    assert torch.allclose(noisy_latents(latents=x0, noise=eps, sigma=0.25), torch.tensor([[1.5, 1.25]]))
    assert torch.equal(noisy_latents(latents=x0, noise=eps, sigma=0.0), x0)
    assert torch.equal(noisy_latents(latents=x0, noise=eps, sigma=1.0), eps)
    # per-sample sigma broadcasts over the token and channel dimensions
    x0 = torch.ones(2, 3, 4)
    eps = torch.zeros(2, 3, 4)
    out = noisy_latents(latents=x0, noise=eps, sigma=torch.tensor([0.25, 0.75]))
    assert torch.equal(out[0], torch.full((3, 4), 0.75)) and torch.equal(out[1], torch.full((3, 4), 0.25))
    with pytest.raises(ValueError, match="sigma"):
        noisy_latents(latents=x0, noise=eps, sigma=torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="shape"):
        noisy_latents(latents=x0, noise=eps[:1], sigma=0.5)


def test_flow_matching_loss_by_hand() -> None:
    x0 = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    eps = torch.tensor([[3.0, -1.0], [1.0, 1.0]])
    v = torch.zeros(2, 2)
    # targets eps - x0: [2, -3] (squared errors 4, 9) and [1, 1] (1, 1): per sample 6.5 and 1
    assert torch.allclose(flow_matching_loss(velocity=v, latents=x0, noise=eps), torch.tensor(3.75))
    exact = eps - x0
    assert float(flow_matching_loss(velocity=exact, latents=x0, noise=eps)) == 0.0
    weighted = flow_matching_loss(velocity=v, latents=x0, noise=eps, weighting=torch.tensor([2.0, 0.0]))
    assert torch.allclose(weighted, torch.tensor(6.5))
    half = flow_matching_loss(velocity=v.bfloat16(), latents=x0, noise=eps)
    assert half.dtype == torch.float32 and torch.allclose(half, torch.tensor(3.75))
    with pytest.raises(ValueError, match="same shape"):
        flow_matching_loss(velocity=v[:1], latents=x0, noise=eps)
    with pytest.raises(ValueError, match="weighting"):
        flow_matching_loss(velocity=v, latents=x0, noise=eps, weighting=torch.ones(3))


def test_velocity_target_is_the_path_derivative() -> None:
    """d x_sigma / d sigma = eps - x0: the regression target is the straight path's velocity."""
    x0, eps = torch.randn(2, 5), torch.randn(2, 5)
    sigma = torch.tensor([0.3, 0.6], requires_grad=True)
    x = noisy_latents(latents=x0, noise=eps, sigma=sigma)
    (grad,) = torch.autograd.grad(x.sum(), sigma)
    assert torch.allclose(grad, (eps - x0).sum(1))
