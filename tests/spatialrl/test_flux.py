"""FluxPolicy and rollouts on a tiny random FLUX: agreement with diffusers' FluxPipeline, replayable log-probs."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline

from spatialrl.flux import FluxPolicy, TinyFluxConfig, build_tiny_flux, resolve_tiny_flux
from spatialrl.rollout import (
    replay_step,
    sample,
    sde_mask_all_but_last,
    sde_mask_random,
    sde_mask_window,
    step_mask,
)

PROMPTS = ["a red circle left of a blue square", "a green triangle above a cube"]
T5_LENGTH = 16


@pytest.fixture(scope="module")
def policy() -> FluxPolicy:
    return FluxPolicy.from_pretrained(resolve_tiny_flux(seed=0), dtype=torch.float32, max_sequence_length=T5_LENGTH)


def _pipeline_images(policy: FluxPolicy, *, height: int, width: int, steps: int, **kwargs) -> torch.Tensor:
    pipe = policy.pipeline()
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt=PROMPTS,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=3.5,
        output_type="pt",
        max_sequence_length=T5_LENGTH,
        **kwargs,
    )
    return out.images


@pytest.mark.parity
@pytest.mark.parametrize(("height", "width", "steps"), [(32, 32, 4), (48, 32, 3), (32, 64, 2), (64, 64, 6)])
def test_ode_rollout_equals_flux_pipeline(policy: FluxPolicy, height: int, width: int, steps: int) -> None:
    ours = sample(
        policy,
        prompts=PROMPTS,
        height=height,
        width=width,
        num_steps=steps,
        noise_level=0.0,
        generator=torch.Generator().manual_seed(steps),
    )
    ref = _pipeline_images(
        policy, height=height, width=width, steps=steps, generator=torch.Generator().manual_seed(steps)
    )
    assert ours.images.shape == ref.shape == (2, 3, height, width)
    assert ours.images.std() > 1e-3
    torch.testing.assert_close(ours.images, ref, atol=1e-5, rtol=0)
    assert torch.equal(ours.log_probs, torch.zeros(2, steps - 1))
    assert torch.equal(ours.stds, torch.zeros(2, steps - 1))


def _with_scheduler(policy: FluxPolicy, scheduler_config: dict) -> FluxPolicy:
    """The same modules under another scheduler config."""
    return FluxPolicy(
        transformer=policy.transformer,
        vae=policy.vae,
        text_encoder=policy.text_encoder,
        tokenizer=policy.tokenizer,
        text_encoder_2=policy.text_encoder_2,
        tokenizer_2=policy.tokenizer_2,
        scheduler_config=scheduler_config,
        max_sequence_length=T5_LENGTH,
    )


# 4 steps at 32 px (4 tokens): FLUX.1-dev's resolution-dependent shift; FLUX.1-schnell's config has no shift
@pytest.mark.parity
@pytest.mark.parametrize(
    ("schnell", "expected"),
    [(False, [1.0, 0.8258, 0.6124, 0.3450, 0.0]), (True, [1.0, 0.75, 0.5, 0.25, 0.0])],
)
def test_sigmas_and_ode_rollout_follow_the_scheduler_config(
    policy: FluxPolicy, schnell: bool, expected: list[float]
) -> None:
    config = dict(policy.scheduler_config)
    assert config["use_dynamic_shifting"] is True  # the tiny FLUX has FLUX.1-dev's scheduler config
    if schnell:
        config.update(use_dynamic_shifting=False, shift=1.0)  # FLUX.1-schnell's scheduler config
    variant = _with_scheduler(policy, config)
    pipe = variant.pipeline()
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        prompt=PROMPTS,
        height=32,
        width=32,
        num_inference_steps=4,
        guidance_scale=3.5,
        output_type="pt",
        max_sequence_length=T5_LENGTH,
        generator=torch.Generator().manual_seed(0),
    ).images
    sigmas = variant.sigmas(4, 32, 32)
    assert torch.equal(sigmas, pipe.scheduler.sigmas)  # what FluxPipeline.__call__ set on its scheduler
    torch.testing.assert_close(sigmas, torch.tensor(expected), rtol=0, atol=1e-4)
    ours = sample(
        variant,
        prompts=PROMPTS,
        height=32,
        width=32,
        num_steps=4,
        noise_level=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(ours.images, ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        _with_scheduler(policy, {**config, "use_karras_sigmas": True}).sigmas(4, 32, 32)


@pytest.mark.parity
def test_initial_noise_is_used_as_pipeline_latents(policy: FluxPolicy) -> None:
    noise = torch.randn(2, 4, 64, generator=torch.Generator().manual_seed(7))
    ours = sample(policy, prompts=PROMPTS, height=32, width=32, num_steps=3, noise_level=0.0, initial_noise=noise)
    ref = _pipeline_images(policy, height=32, width=32, steps=3, latents=noise)
    torch.testing.assert_close(ours.images, ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="initial_noise"):
        sample(policy, prompts=PROMPTS, height=48, width=32, num_steps=3, noise_level=0.0, initial_noise=noise)


@pytest.mark.parametrize("kind", ["sde", "dance", "cps"])
def test_recorded_log_probs_replay(policy: FluxPolicy, kind: str) -> None:
    traj = sample(
        policy,
        prompts=PROMPTS * 2,
        height=32,
        width=48,
        num_steps=5,
        noise_level=0.5,
        kind=kind,
        generator=torch.Generator().manual_seed(1),
    )
    assert traj.step_indices.tolist() == [0, 1, 2, 3]
    assert traj.latents.shape == traj.next_latents.shape == traj.means.shape == (4, 4, 6, 64)
    assert traj.log_probs.shape == traj.stds.shape == (4, 4)
    assert torch.equal(traj.next_latents[:, :-1], traj.latents[:, 1:])
    assert bool((traj.stds > 0).all()) and bool(torch.isfinite(traj.log_probs).all())
    for k in range(4):
        assert traj.sigma[k] == traj.sigmas[k] and traj.sigma_next[k] == traj.sigmas[k + 1]
        replay = replay_step(policy, traj, index=k)
        assert replay.log_prob.requires_grad
        torch.testing.assert_close(replay.log_prob, traj.log_probs[:, k], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(replay.mean, traj.means[:, k], atol=1e-6, rtol=0)


def test_sde_noise_follows_generator_and_window(policy: FluxPolicy) -> None:
    def run(seed: int) -> torch.Tensor:
        return sample(
            policy,
            prompts=PROMPTS,
            height=32,
            width=32,
            num_steps=4,
            noise_level=0.9,
            sde_steps=sde_mask_window(4, start=1, size=2),
            generator=torch.Generator().manual_seed(seed),
        )

    first, again, other = run(3), run(3), run(4)
    assert first.step_indices.tolist() == [1, 2]
    assert torch.equal(first.images, again.images) and torch.equal(first.log_probs, again.log_probs)
    assert not torch.allclose(first.final_latents, other.final_latents)


def test_step_masks() -> None:
    assert sde_mask_all_but_last(4).tolist() == [True, True, True, False]
    assert sde_mask_window(5, start=3, size=4).tolist() == [False, False, False, True, True]
    mask = sde_mask_random(11, fraction=0.6, seed=0)
    assert int(mask.sum()) == 6 and not bool(mask[-1])
    assert torch.equal(mask, sde_mask_random(11, fraction=0.6, seed=0))
    assert step_mask([0, 2], 3).tolist() == [True, False, True]
    assert step_mask(None, 3).tolist() == [True, True, False]
    with pytest.raises(ValueError, match="step indices"):
        step_mask([3], 3)


def test_prompt_cache_does_not_reencode(policy: FluxPolicy) -> None:
    policy.clear_prompt_cache()
    batches: list[int] = []
    hooks = [
        encoder.register_forward_hook(lambda _m, args, _out: batches.append(args[0].shape[0]))
        for encoder in (policy.text_encoder, policy.text_encoder_2)
    ]
    try:
        embeds, pooled = policy.encode_prompts(PROMPTS)
        assert batches == [2, 2]
        again, again_pooled = policy.encode_prompts([PROMPTS[1], PROMPTS[0], PROMPTS[1]])
        assert batches == [2, 2]
        assert torch.equal(again, embeds[[1, 0, 1]]) and torch.equal(again_pooled, pooled[[1, 0, 1]])
        policy.encode_prompts([PROMPTS[0], "a new prompt", "a new prompt"])
        assert batches == [2, 2, 1, 1]
    finally:
        for hook in hooks:
            hook.remove()
    assert embeds.shape == (2, T5_LENGTH, 32) and pooled.shape == (2, 32)
    fresh = FluxPolicy.from_pretrained(resolve_tiny_flux(seed=0), dtype=torch.float32, max_sequence_length=T5_LENGTH)
    ref_embeds, ref_pooled, _ = fresh.pipeline().encode_prompt(PROMPTS, max_sequence_length=T5_LENGTH)
    torch.testing.assert_close(embeds, ref_embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(pooled, ref_pooled, atol=1e-6, rtol=0)


def test_prompts_longer_than_the_t5_length_warn(policy: FluxPolicy) -> None:
    policy.clear_prompt_cache()
    short = "a" * (T5_LENGTH - 1)  # the character tokenizer adds an end token: exactly T5_LENGTH
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy.encode_prompts([short])
    with pytest.warns(UserWarning, match=r"1 prompt\(s\) longer than max_sequence_length=16 T5 tokens were cut"):
        policy.encode_prompts([short + "b", short])


@pytest.mark.parametrize("channels", [16, 4])
def test_pack_unpack_round_trip(channels: int) -> None:
    latents = torch.randn(3, channels, 6, 4)
    packed = FluxPolicy.pack_latents(latents)
    assert packed.shape == (3, 6, 4 * channels)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 3, channels, 6, 4))
    assert torch.equal(FluxPolicy.unpack_latents(packed, latent_height=6, latent_width=4), latents)


def test_ids_and_sigmas(policy: FluxPolicy) -> None:
    ids = policy.latent_image_ids(48, 32)
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(1, 3, 2, "cpu", torch.float32))
    assert torch.equal(policy.text_ids(5), torch.zeros(5, 3))
    assert policy.sigmas(4, 32, 32).shape == (5,)
    with pytest.raises(ValueError, match="multiples of 16"):
        policy.latent_size(40, 32)


def test_tiny_folder_round_trips(tmp_path: Path, policy: FluxPolicy) -> None:
    folder = build_tiny_flux(tmp_path / "flux", seed=0)
    assert (folder / "model_index.json").is_file()
    loaded = FluxPolicy.from_pretrained(folder, dtype=torch.float32, max_sequence_length=T5_LENGTH)
    kwargs = {"prompts": PROMPTS, "height": 32, "width": 32, "num_steps": 3, "noise_level": 0.7}
    ours = sample(loaded, generator=torch.Generator().manual_seed(0), **kwargs)
    ref = sample(policy, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(ours.images, ref.images) and torch.equal(ours.log_probs, ref.log_probs)
    other = FluxPolicy.from_pretrained(
        build_tiny_flux(tmp_path / "other", seed=1, config=TinyFluxConfig(layers=2)),
        dtype=torch.float32,
        max_sequence_length=T5_LENGTH,
    )
    assert not torch.allclose(sample(other, generator=torch.Generator().manual_seed(0), **kwargs).images, ref.images)
    pipe = FluxPipeline.from_pretrained(folder, local_files_only=True)
    assert torch.equal(pipe.transformer.x_embedder.weight, loaded.transformer.x_embedder.weight)


@pytest.mark.parity
def test_save_pretrained_writes_what_flux_pipeline_writes(tmp_path: Path, policy: FluxPolicy) -> None:
    """FluxPolicy.save_pretrained writes the folder without importing FluxPipeline (whose image processors warn
    about torchvision): the same files, byte for byte, as FluxPipeline.save_pretrained."""
    policy.save_pretrained(tmp_path / "ours")
    policy.pipeline().save_pretrained(tmp_path / "pipeline")
    ours = sorted(p.relative_to(tmp_path / "ours") for p in (tmp_path / "ours").rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(tmp_path / "pipeline") for p in (tmp_path / "pipeline").rglob("*") if p.is_file())
    assert ours == theirs and Path("model_index.json") in ours and len(ours) > 10
    for name in ours:
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "pipeline" / name).read_bytes(), name
    pipe = FluxPipeline.from_pretrained(tmp_path / "ours", local_files_only=True)
    assert torch.equal(pipe.transformer.x_embedder.weight, policy.transformer.x_embedder.weight)


def test_bf16_policy_samples_finite(policy: FluxPolicy) -> None:
    bf16 = FluxPolicy.from_pretrained(resolve_tiny_flux(seed=0), dtype=torch.bfloat16, max_sequence_length=T5_LENGTH)
    traj = sample(
        bf16,
        prompts=PROMPTS,
        height=32,
        width=32,
        num_steps=3,
        noise_level=0.9,
        generator=torch.Generator().manual_seed(0),
    )
    assert traj.latents.dtype == traj.log_probs.dtype == traj.images.dtype == torch.float32
    assert bool(torch.isfinite(traj.log_probs).all())


def test_encodings_cached_under_inference_mode_can_be_trained_on(policy: FluxPolicy) -> None:
    """Lightning validates under inference_mode; a training step reusing those cached encodings must backprop."""
    policy.clear_prompt_cache()
    with torch.inference_mode():
        policy.encode_prompts(PROMPTS)
    embeds, pooled = policy.encode_prompts(PROMPTS)
    assert not torch.is_inference(embeds) and not torch.is_inference(pooled)
    latents = torch.randn(2, 4, 4 * policy.latent_channels, requires_grad=True)
    velocity = policy.velocity(
        latents=latents, sigma=0.5, prompt_embeds=embeds, pooled=pooled, img_ids=policy.latent_image_ids(32, 32)
    )
    velocity.square().mean().backward()
    assert latents.grad is not None


@pytest.mark.parity
@pytest.mark.parametrize(("height", "width"), [(32, 32), (48, 32)])
def test_encode_equals_flux_kontext_image_latents(policy: FluxPolicy, height: int, width: int) -> None:
    """``FluxPolicy.encode`` gives the latents of diffusers' FluxKontextPipeline for a conditioning image (the
    posterior mode, shifted and scaled, packed): the inverse transform of ``decode``, which the ODE rollout's
    equality with FluxPipeline pins."""
    from diffusers import FluxKontextPipeline

    images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height))
    pipe = FluxKontextPipeline(**policy.pipeline().components)
    ref = pipe._encode_vae_image(image=images * 2 - 1, generator=None)
    ref = pipe._pack_latents(ref, 2, ref.shape[1], ref.shape[2], ref.shape[3])
    ours = policy.encode(images)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape and ours.std() > 1e-3
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)
    with pytest.raises(ValueError, match="multiples"):
        policy.encode(torch.rand(1, 3, 30, 32))
