import math

import numpy as np
import pytest
import torch
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from test_schedule import FLUX_DEV_SCHEDULER

from spatialrl.schedule import calculate_shift, flux_sigmas
from spatialrl.sde import check_noise_level, sde_step

KINDS = ["sde", "dance", "cps"]


def reference_step(kind, x, v, s, s_next, a, z):
    """float64 numpy version of the field notes' formulas, written independently of the library."""
    x, v, z = (np.asarray(t, dtype=np.float64) for t in (x, v, z))
    d = s_next - s
    x0_hat = x - s * v
    eps_hat = x + (1 - s) * v
    if kind == "cps":
        std = s_next * math.sin(a * math.pi / 2)
        mean = (1 - s_next) * x0_hat + math.sqrt(s_next**2 - std**2) * eps_hat
        prev = mean + std * z
        return mean, std, prev, -np.mean((prev - mean) ** 2)
    if kind == "sde":
        s_star = s_next if s == 1 else s
        g = a * math.sqrt(s / (1 - s_star))
    else:
        g = a
    mean = x + d * (v + g**2 / (2 * s) * eps_hat)
    std = g * math.sqrt(-d)
    prev = mean + std * z
    density = -((prev - mean) ** 2) / (2 * std**2) - math.log(std) - math.log(math.sqrt(2 * math.pi))
    return mean, std, prev, density.mean()


def tensors(shape=(2, 3, 4), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=gen) for _ in range(3))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("s", "s_next", "a"), [(1.0, 0.904, 0.9), (0.653, 0.484, 0.7), (0.273, 0.0, 0.5)])
def test_matches_hand_computed_formulas(kind, s, s_next, a):
    x, v, z = tensors()
    out = sde_step(velocity=v, sample=x, sigma=s, sigma_next=s_next, noise_level=a, kind=kind, noise=z)
    s32, n32 = float(np.float32(s)), float(np.float32(s_next))  # the step works on float32 sigmas
    for b in range(x.shape[0]):
        mean, std, prev, log_prob = reference_step(kind, x[b], v[b], s32, n32, a, z[b])
        np.testing.assert_allclose(out.mean[b].numpy(), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.prev_sample[b].numpy(), prev, rtol=1e-5, atol=1e-6)
        assert out.std[b].item() == pytest.approx(std, rel=1e-6, abs=1e-7)
        if std > 0:
            assert out.log_prob[b].item() == pytest.approx(log_prob, rel=1e-5, abs=1e-6)
        else:
            assert out.log_prob[b].item() == 0.0
    assert out.log_prob.shape == (2,) and out.std.shape == (2,)


def test_log_prob_is_the_averaged_gaussian_density():
    x, v, z = tensors()
    out = sde_step(velocity=v, sample=x, sigma=0.79, sigma_next=0.65, noise_level=0.9, noise=z)
    target = torch.randn_like(x)
    scored = sde_step(velocity=v, sample=x, sigma=0.79, sigma_next=0.65, noise_level=0.9, prev_sample=target)
    normal = torch.distributions.Normal(out.mean, out.std.view(-1, 1, 1))
    torch.testing.assert_close(scored.log_prob, normal.log_prob(target).mean(dim=(1, 2)))
    torch.testing.assert_close(scored.prev_sample, target)


@pytest.mark.parity
@pytest.mark.parametrize("kind", KINDS)
def test_zero_noise_is_diffusers_euler_step(kind):
    num_steps, seq_len = 6, 1024
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / num_steps, num_steps), mu=calculate_shift(seq_len))
    sigmas = flux_sigmas(num_steps=num_steps, image_seq_len=seq_len)
    gen = torch.Generator().manual_seed(1)
    ours = theirs = torch.randn(2, 16, 64, generator=gen)
    for i, t in enumerate(scheduler.timesteps):
        velocity = torch.randn(2, 16, 64, generator=gen)
        theirs = scheduler.step(velocity, t, theirs, return_dict=False)[0]
        out = sde_step(
            velocity=velocity,
            sample=ours,
            sigma=sigmas[i].item(),
            sigma_next=sigmas[i + 1].item(),
            noise_level=0.0,
            kind=kind,
        )
        ours = out.prev_sample
        assert torch.equal(ours, theirs)
        assert torch.equal(out.log_prob, torch.zeros(2)) and torch.equal(out.std, torch.zeros(2))


@pytest.mark.parametrize("kind", KINDS)
def test_zero_noise_scores_any_prev_sample_without_nans(kind):
    x, v, z = tensors()
    out = sde_step(velocity=v, sample=x, sigma=1.0, sigma_next=0.9, noise_level=0.0, kind=kind, prev_sample=z)
    assert torch.equal(out.log_prob, torch.zeros(2))
    torch.testing.assert_close(out.mean, x - 0.1 * v)


@pytest.mark.parametrize("kind", KINDS)
def test_sampled_log_prob_equals_recomputed(kind):
    x, v, _ = tensors()
    gen = torch.Generator().manual_seed(3)
    kwargs = dict(velocity=v, sample=x, sigma=0.904, sigma_next=0.79, noise_level=0.8, kind=kind)
    sampled = sde_step(**kwargs, generator=gen)
    rescored = sde_step(**kwargs, prev_sample=sampled.prev_sample)
    torch.testing.assert_close(rescored.log_prob, sampled.log_prob)
    again = sde_step(**kwargs, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.prev_sample, sampled.prev_sample)


@pytest.mark.parametrize("kind", KINDS)
def test_empirical_mean_and_std_of_samples(kind):
    n = 20000
    x = torch.tensor([[0.3, -1.2, 2.0]]).expand(n, 3)
    v = torch.tensor([[-0.5, 0.7, 1.1]]).expand(n, 3)
    gen = torch.Generator().manual_seed(4)
    out = sde_step(velocity=v, sample=x, sigma=0.79, sigma_next=0.65, noise_level=0.9, kind=kind, generator=gen)
    std = out.std[0].item()
    assert std > 0
    torch.testing.assert_close(out.prev_sample.mean(0), out.mean[0], rtol=0, atol=5 * std / math.sqrt(n))
    empirical_std = out.prev_sample.std(0)
    torch.testing.assert_close(empirical_std, torch.full((3,), std), rtol=0.03, atol=0)


def test_bf16_inputs_give_finite_float32_results():
    x, v, z = tensors(shape=(2, 8, 64))
    x16, v16 = x.bfloat16(), v.bfloat16()
    for kind in KINDS:
        out = sde_step(velocity=v16, sample=x16, sigma=0.273, sigma_next=0.0, noise_level=0.9, kind=kind, noise=z)
        ref = sde_step(
            velocity=v16.float(),
            sample=x16.float(),
            sigma=0.273,
            sigma_next=0.0,
            noise_level=0.9,
            kind=kind,
            noise=z,
        )
        for got, want in zip(out, ref, strict=True):
            assert got.dtype == torch.float32
            assert bool(torch.isfinite(got).all())
            assert torch.equal(got, want)


def test_per_batch_sigmas_equal_separate_calls():
    x, v, z = tensors(shape=(3, 5))
    sigma = torch.tensor([1.0, 0.79, 0.273])
    sigma_next = torch.tensor([0.904, 0.653, 0.0])
    for kind in KINDS:
        batched = sde_step(
            velocity=v, sample=x, sigma=sigma, sigma_next=sigma_next, noise_level=0.7, kind=kind, noise=z
        )
        for b in range(3):
            single = sde_step(
                velocity=v[b : b + 1],
                sample=x[b : b + 1],
                sigma=sigma[b].item(),
                sigma_next=sigma_next[b].item(),
                noise_level=0.7,
                kind=kind,
                noise=z[b : b + 1],
            )
            for got, want in zip(batched, single, strict=True):
                torch.testing.assert_close(got[b : b + 1], want)


def test_log_prob_has_gradient_through_velocity():
    x, v, z = tensors()
    v.requires_grad_(True)
    out = sde_step(velocity=v, sample=x, sigma=0.79, sigma_next=0.65, noise_level=0.9, prev_sample=z)
    out.log_prob.sum().backward()
    assert v.grad is not None and bool(torch.isfinite(v.grad).all()) and v.grad.abs().sum() > 0


def test_invalid_arguments():
    x, v, z = tensors()
    base = dict(velocity=v, sample=x, noise_level=0.7)
    with pytest.raises(ValueError):
        sde_step(**base, sigma=0.5, sigma_next=0.5)
    with pytest.raises(ValueError):
        sde_step(**base, sigma=1.5, sigma_next=0.5)
    with pytest.raises(ValueError):
        sde_step(**base, sigma=0.5, sigma_next=-0.1)
    with pytest.raises(ValueError):
        sde_step(**base, sigma=0.5, sigma_next=0.4, kind="ode")
    with pytest.raises(ValueError):
        sde_step(**base, sigma=0.5, sigma_next=0.4, prev_sample=z, noise=z)
    with pytest.raises(ValueError):
        sde_step(**base, sigma=torch.ones(3), sigma_next=0.4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("noise_level", [math.nan, math.inf, -math.inf, -0.1])
def test_non_finite_or_negative_noise_level_is_refused(kind, noise_level):
    x, v, _ = tensors()
    allowed = r"in \[0, 1\]" if kind == "cps" else ">= 0"
    message = "finite" if not math.isfinite(noise_level) else allowed
    with pytest.raises(ValueError, match=f"noise_level must be {message}.*'{kind}'"):
        sde_step(velocity=v, sample=x, sigma=0.5, sigma_next=0.4, noise_level=noise_level, kind=kind)


def test_cps_noise_level_is_a_fraction_up_to_one():
    x, v, _ = tensors()
    base = dict(velocity=v, sample=x, sigma=0.5, sigma_next=0.4, kind="cps")
    full = sde_step(**base, noise_level=1.0, noise=torch.zeros_like(x))  # sin(pi / 2) = 1: all fresh noise
    assert full.std.tolist() == pytest.approx([0.4, 0.4])
    torch.testing.assert_close(full.mean, 0.6 * (x - 0.5 * v))  # no eps_hat left: (1 - s') x0_hat
    with pytest.raises(ValueError, match=r"in \[0, 1\] for kind 'cps'.*0\.8"):
        sde_step(**base, noise_level=1.2)  # would alias to 0.8 through sin(1.2 pi / 2)
    assert sde_step(**{**base, "kind": "sde"}, noise_level=1.2).std[0] > 0  # a > 1 is a valid Flow-GRPO level
    check_noise_level(0.0, "cps")  # the ODE step
    with pytest.raises(ValueError, match="sampling.noise_level must be finite"):
        check_noise_level(math.nan, "sde", name="sampling.noise_level")


@pytest.mark.parametrize(("kind", "noise_level"), [("sde", 0.7), ("dance", 0.3)])
def test_sde_with_exact_velocity_keeps_the_data_marginal(kind, noise_level):
    # data x0 ~ N(0, c^2): x_s = (1 - s) x0 + s eps has the exact velocity E[eps - x0 | x_s] = k(s) x_s;
    # with a correct drift correction the SDE, like the ODE, carries pure noise to std c
    c, n, steps = 0.5, 20000, 200
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n, 1, generator=gen)
    for i in range(steps):
        s = sigmas[i].item()
        velocity = (s - (1 - s) * c**2) / ((1 - s) ** 2 * c**2 + s**2) * x
        x = sde_step(
            velocity=velocity,
            sample=x,
            sigma=s,
            sigma_next=sigmas[i + 1].item(),
            noise_level=noise_level,
            kind=kind,
            generator=gen,
        ).prev_sample
    assert x.std().item() == pytest.approx(c, rel=0.03)
    assert abs(x.mean().item()) < 4 * c / math.sqrt(n)
