import inspect

import numpy as np
import pytest
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift as diffusers_calculate_shift
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

from spatialrl.schedule import SCHEDULER_DEFAULTS, calculate_shift, flux_sigmas, scheduler_sigmas

FLUX_DEV_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
FLUX_SCHNELL_SCHEDULER = {**FLUX_DEV_SCHEDULER, "use_dynamic_shifting": False}  # shift 1.0: no shift at all
SCHEDULER_CONFIGS = {
    "dev": FLUX_DEV_SCHEDULER,
    "schnell": FLUX_SCHNELL_SCHEDULER,
    "static_shift_3": {**FLUX_SCHNELL_SCHEDULER, "shift": 3.0},  # SD3's static shift
    "linear_time_shift": {**FLUX_DEV_SCHEDULER, "time_shift_type": "linear"},
    "dev_shift_terminal": {**FLUX_DEV_SCHEDULER, "shift_terminal": 0.1},
    "static_shift_terminal": {**FLUX_SCHNELL_SCHEDULER, "shift": 3.0, "shift_terminal": 0.05},
    "defaults": {},  # every key missing: the scheduler's own defaults (no dynamic shift, shift 1)
}


def test_calculate_shift_is_linear_in_tokens():
    assert calculate_shift(256) == pytest.approx(0.5)
    assert calculate_shift(4096) == pytest.approx(1.15)
    assert calculate_shift(1024) == pytest.approx(0.5 + 768 * 0.65 / 3840)
    assert calculate_shift(100, base_seq_len=100, max_seq_len=200, base_shift=1.0, max_shift=2.0) == 1.0
    with pytest.raises(ValueError):
        calculate_shift(10, base_seq_len=5, max_seq_len=5)


@pytest.mark.parity
@pytest.mark.parametrize("num_steps", [1, 2, 6, 10, 28, 50])
@pytest.mark.parametrize("image_seq_len", [64, 256, 1024, 4096, 8192])
def test_matches_diffusers_flux_scheduler(num_steps, image_seq_len):
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / num_steps, num_steps), mu=calculate_shift(image_seq_len))
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


def _pipeline_sigmas(config: dict, *, num_steps: int, image_seq_len: int) -> torch.Tensor:
    """The sigmas FluxPipeline.__call__ sets on a scheduler of ``config`` (its mu and sigmas arguments)."""
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    mu = diffusers_calculate_shift(
        image_seq_len,
        scheduler.config.get("base_image_seq_len", 256),
        scheduler.config.get("max_image_seq_len", 4096),
        scheduler.config.get("base_shift", 0.5),
        scheduler.config.get("max_shift", 1.15),
    )
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
    return scheduler.sigmas


@pytest.mark.parity
@pytest.mark.parametrize("name", sorted(SCHEDULER_CONFIGS))
@pytest.mark.parametrize("num_steps", [1, 2, 4, 6, 28])
@pytest.mark.parametrize("image_seq_len", [4, 256, 1024, 4096])
def test_scheduler_sigmas_match_the_pipeline_for_each_config(name, num_steps, image_seq_len):
    config = SCHEDULER_CONFIGS[name]
    if config.get("shift_terminal") and num_steps == 1:  # diffusers divides 0 by 0 (NaN sigmas): refused here
        with pytest.raises(ValueError, match="num_steps >= 2"):
            scheduler_sigmas(config, num_steps=num_steps, image_seq_len=image_seq_len)
        with np.errstate(invalid="ignore"):
            assert torch.isnan(_pipeline_sigmas(config, num_steps=num_steps, image_seq_len=image_seq_len)[0])
        return
    saved = dict(FlowMatchEulerDiscreteScheduler(**config).config)  # as loaded back: defaults and _ metadata keys
    for cfg in (config, saved):
        ours = scheduler_sigmas(cfg, num_steps=num_steps, image_seq_len=image_seq_len)
        assert ours.dtype == torch.float32 and ours.shape == (num_steps + 1,)
        assert torch.equal(ours, _pipeline_sigmas(config, num_steps=num_steps, image_seq_len=image_seq_len))
    assert ours[0] == 1.0 and ours[-1] == 0.0 and bool((ours[1:] < ours[:-1]).all())


def test_dev_config_keeps_the_dynamic_shift_and_schnell_has_none():
    for num_steps, tokens in [(4, 4), (6, 1024), (28, 4096)]:
        dev = scheduler_sigmas(FLUX_DEV_SCHEDULER, num_steps=num_steps, image_seq_len=tokens)
        assert torch.equal(dev, flux_sigmas(num_steps=num_steps, image_seq_len=tokens))  # unchanged behaviour
    # 4 steps on the tiny FLUX at 32 px (4 tokens): FLUX.1-dev's shift vs FLUX.1-schnell's none, at any size
    dev = scheduler_sigmas(FLUX_DEV_SCHEDULER, num_steps=4, image_seq_len=4)
    torch.testing.assert_close(dev, torch.tensor([1.0, 0.8258, 0.6124, 0.3450, 0.0]), rtol=0, atol=1e-4)
    for tokens in (4, 1024, 4096):
        schnell = scheduler_sigmas(FLUX_SCHNELL_SCHEDULER, num_steps=4, image_seq_len=tokens)
        assert schnell.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_static_and_terminal_shift_by_hand():
    sigmas = flux_sigmas(num_steps=2, image_seq_len=1024, dynamic_shift=False, shift=3.0)
    torch.testing.assert_close(sigmas, torch.tensor([1.0, 1.5 / 2.0, 0.0]))  # 3 * 0.5 / (1 + 2 * 0.5)
    stretched = flux_sigmas(num_steps=4, image_seq_len=1024, dynamic_shift=False, shift_terminal=0.1)
    # 1 - s = [0, .25, .5, .75] is scaled by 0.9 / 0.75 so that the last sigma is 0.1
    torch.testing.assert_close(stretched, torch.tensor([1.0, 0.7, 0.4, 0.1, 0.0]))
    linear = flux_sigmas(num_steps=2, image_seq_len=256, time_shift_type="linear")  # mu = 0.5 at 256 tokens
    torch.testing.assert_close(linear, torch.tensor([1.0, 0.5 * 0.5 / (0.5 * 0.5 + 0.5), 0.0]))


@pytest.mark.parity
def test_scheduler_defaults_are_diffusers_defaults():
    parameters = inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters
    assert SCHEDULER_DEFAULTS == {name: p.default for name, p in parameters.items() if name != "self"}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("use_karras_sigmas", True),
        ("use_exponential_sigmas", True),
        ("use_beta_sigmas", True),
        ("invert_sigmas", True),
        ("stochastic_sampling", True),
        ("use_flow_sigmas", True),
        ("num_train_timesteps", 500),
        ("sigma_min", 0.002),
        ("shift_terminal", 1.5),
        ("time_shift_type", "cubic"),
    ],
)
def test_unsupported_scheduler_configs_are_refused_by_name(key, value):
    with pytest.raises(ValueError, match=key):
        scheduler_sigmas({**FLUX_DEV_SCHEDULER, key: value}, num_steps=4, image_seq_len=1024)


def test_invalid_shifts_are_refused():
    with pytest.raises(ValueError, match="shift must be > 0"):
        scheduler_sigmas({**FLUX_SCHNELL_SCHEDULER, "shift": 0.0}, num_steps=4, image_seq_len=1024)
    with pytest.raises(ValueError, match="num_steps >= 2"):
        flux_sigmas(num_steps=1, image_seq_len=1024, shift_terminal=0.1)
    with pytest.raises(ValueError, match="mu > 0"):
        flux_sigmas(num_steps=4, image_seq_len=1024, time_shift_type="linear", base_shift=-2.0, max_shift=-1.0)
    # flags set to their off value are fine
    off = {**FLUX_DEV_SCHEDULER, "use_karras_sigmas": False, "invert_sigmas": False, "shift_terminal": None}
    assert torch.equal(
        scheduler_sigmas(off, num_steps=4, image_seq_len=1024), flux_sigmas(num_steps=4, image_seq_len=1024)
    )
