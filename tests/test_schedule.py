import numpy as np
import pytest
import torch
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

from spatialrl.schedule import calculate_shift, flux_sigmas

FLUX_DEV_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


def test_calculate_shift_is_linear_in_tokens():
    assert calculate_shift(256) == pytest.approx(0.5)
    assert calculate_shift(4096) == pytest.approx(1.15)
    assert calculate_shift(1024) == pytest.approx(0.5 + 768 * 0.65 / 3840)
    assert calculate_shift(100, base_seq_len=100, max_seq_len=200, base_shift=1.0, max_shift=2.0) == 1.0
    with pytest.raises(ValueError):
        calculate_shift(10, base_seq_len=5, max_seq_len=5)


@pytest.mark.parametrize("num_steps", [1, 2, 6, 10, 28, 50])
@pytest.mark.parametrize("image_seq_len", [64, 256, 1024, 4096, 8192])
def test_matches_diffusers_flux_scheduler(num_steps, image_seq_len):
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER)
    scheduler.set_timesteps(
        sigmas=np.linspace(1.0, 1.0 / num_steps, num_steps), mu=calculate_shift(image_seq_len)
    )
    ours = flux_sigmas(num_steps=num_steps, image_seq_len=image_seq_len)
    assert ours.dtype == torch.float32
    assert ours.shape == (num_steps + 1,)
    assert torch.equal(ours, scheduler.sigmas)


def test_flux_512px_six_steps_matches_the_notes():
    sigmas = flux_sigmas(num_steps=6, image_seq_len=(512 // 16) ** 2)
    expected = torch.tensor([1.0, 0.904, 0.790, 0.653, 0.484, 0.273, 0.0])
    torch.testing.assert_close(sigmas, expected, rtol=0, atol=1e-3)  # the notes round 0.65249 to .653
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_flux_sigmas_rejects_zero_steps():
    with pytest.raises(ValueError):
        flux_sigmas(num_steps=0, image_seq_len=1024)
