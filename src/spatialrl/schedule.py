"""FLUX.1 sigma schedule: ``linspace(1, 1/N, N)``, shifted as the pipeline's scheduler config says.

Stateless replacement for ``FlowMatchEulerDiscreteScheduler.set_timesteps`` (a stateful scheduler that is
re-``set_timesteps`` between rollout and training silently corrupts the sigmas). The transformer receives
``timestep = sigma``; ``sigma = 1`` is pure noise, ``sigma = 0`` is data. FLUX.1-dev shifts by the image size
(``use_dynamic_shifting``), FLUX.1-schnell not at all (static ``shift = 1``); :func:`scheduler_sigmas` reads
which from the scheduler config and refuses settings it does not reproduce.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["SCHEDULER_DEFAULTS", "TimeShiftType", "calculate_shift", "flux_sigmas", "scheduler_sigmas"]

TimeShiftType = Literal["exponential", "linear"]

# FlowMatchEulerDiscreteScheduler's constructor defaults: a key missing from a scheduler config means this value
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "invert_sigmas": False,
    "shift_terminal": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "time_shift_type": "exponential",
    "stochastic_sampling": False,
}

# flags the stateless sampler does not reproduce, with the reason; any truthy value is refused
_UNSUPPORTED = {
    "use_karras_sigmas": "Karras re-spacing of the sigmas is not implemented",
    "use_exponential_sigmas": "exponential re-spacing of the sigmas is not implemented",
    "use_beta_sigmas": "beta re-spacing of the sigmas is not implemented",
    "invert_sigmas": "inverted (Mochi) sigmas run from data to noise",
    "stochastic_sampling": "FluxPipeline's stochastic Euler step differs from the sampler's ODE step",
    "use_flow_sigmas": "FluxPipeline then ignores linspace(1, 1/N, N) and spaces the training timesteps",
}


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
    dynamic_shift: bool = True,
    time_shift_type: TimeShiftType = "exponential",
    shift: float = 1.0,
    shift_terminal: float | None = None,
) -> Tensor:
    """The ``num_steps + 1`` sigmas ``1 = s_0 > ... > s_N = 0`` of FLUX.1 sampling (float32, on CPU).

    ``s = linspace(1, 1/N, N)`` is shifted, then the terminal 0 is appended. With ``dynamic_shift``
    (FLUX.1-dev) the shift depends on the resolution through ``mu = calculate_shift(image_seq_len, ...)``:
    ``s <- e^mu s / (e^mu s + 1 - s)`` (``time_shift_type="exponential"``) or ``mu s / (mu s + 1 - s)``
    (``"linear"``); otherwise the static ``s <- shift s / (1 + (shift - 1) s)`` (FLUX.1-schnell: ``shift = 1``,
    no shift). ``shift_terminal`` (None or 0: off) then stretches ``1 - s`` so that the last sigma before 0 is
    ``shift_terminal``. The float32 arithmetic follows diffusers' ``FlowMatchEulerDiscreteScheduler``, so the
    result is bitwise equal to its ``sigmas`` after ``set_timesteps(sigmas=linspace(1, 1/N, N), mu=mu)``, as
    ``FluxPipeline`` calls it.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    base = np.linspace(1.0, 1.0 / num_steps, num_steps).astype(np.float32)
    if dynamic_shift:
        mu = calculate_shift(
            image_seq_len,
            base_seq_len=base_seq_len,
            max_seq_len=max_seq_len,
            base_shift=base_shift,
            max_shift=max_shift,
        )
        if time_shift_type == "exponential":
            scale = math.exp(mu)
            shifted = scale / (scale + (1.0 / base - 1.0))
        elif time_shift_type == "linear":
            if mu <= 0:
                raise ValueError(f"the linear time shift needs mu > 0, got mu={mu} at {image_seq_len} tokens")
            shifted = mu / (mu + (1.0 / base - 1.0))
        else:
            raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got {time_shift_type!r}")
    else:
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        shifted = shift * base / (1 + (shift - 1) * base)
    if shift_terminal:
        if not 0 < shift_terminal < 1:
            raise ValueError(f"shift_terminal must be in (0, 1), got {shift_terminal}")
        if num_steps < 2:
            raise ValueError("shift_terminal needs num_steps >= 2 (the first sigma stays 1)")
        one_minus = 1 - shifted
        shifted = 1 - one_minus / (one_minus[-1] / (1 - shift_terminal))
    return torch.cat([torch.from_numpy(shifted.astype(np.float32)), torch.zeros(1)])


def scheduler_sigmas(config: Mapping[str, Any], *, num_steps: int, image_seq_len: int) -> Tensor:
    """:func:`flux_sigmas` as ``FluxPipeline`` with a ``FlowMatchEulerDiscreteScheduler`` of ``config`` samples.

    ``config`` is the scheduler's config dict (``scheduler/scheduler_config.json``); missing keys take
    :data:`SCHEDULER_DEFAULTS`, keys starting with ``_`` are metadata. ``use_dynamic_shifting``,
    ``time_shift_type``, ``shift``, ``shift_terminal`` and the ``mu`` line (``base_shift``, ``max_shift``,
    ``base_image_seq_len``, ``max_image_seq_len``) are followed. Anything under which the pipeline would sample
    on another schedule than this one is a ``ValueError`` naming the key, never a silent difference: the
    re-spacing flags (Karras, exponential, beta), ``invert_sigmas``, ``stochastic_sampling``,
    ``use_flow_sigmas``, ``num_train_timesteps != 1000`` (the pipeline passes ``sigma * N / 1000`` as the
    timestep; the sampler passes ``sigma``) and keys unknown to the scheduler.
    """
    settings = {key: value for key, value in config.items() if not key.startswith("_")}
    for key, why in _UNSUPPORTED.items():
        if settings.get(key):
            raise ValueError(f"scheduler config {key}={settings[key]!r} is not supported: {why}")
    unknown = sorted(set(settings) - set(SCHEDULER_DEFAULTS) - set(_UNSUPPORTED))
    if unknown:
        raise ValueError(
            f"scheduler config keys {unknown} are unknown to FlowMatchEulerDiscreteScheduler and may change "
            "FluxPipeline's schedule; remove them if they do not"
        )
    cfg = {**SCHEDULER_DEFAULTS, **settings}
    if cfg["num_train_timesteps"] != 1000:
        raise ValueError(
            f"scheduler config num_train_timesteps={cfg['num_train_timesteps']} is not supported: FluxPipeline "
            "feeds the transformer sigma * num_train_timesteps / 1000, the sampler feeds sigma"
        )
    return flux_sigmas(
        num_steps=num_steps,
        image_seq_len=image_seq_len,
        base_seq_len=cfg["base_image_seq_len"],
        max_seq_len=cfg["max_image_seq_len"],
        base_shift=cfg["base_shift"],
        max_shift=cfg["max_shift"],
        dynamic_shift=bool(cfg["use_dynamic_shifting"]),
        time_shift_type=cfg["time_shift_type"],
        shift=cfg["shift"],
        shift_terminal=cfg["shift_terminal"],
    )
