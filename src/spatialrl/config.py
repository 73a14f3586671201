"""The settings of a GRPO run: training rollouts, the objective, validation; and the checks that refuse a
combination that would fail later or silently train nothing.

Plain dataclasses, so ``spatialrl evaluate``, the benchmarks and a YAML config share them without importing the
LightningModule that trains with them (:class:`spatialrl.module.FluxGRPOModule`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spatialrl.grpo import FilterMethod, KLConvention, StdMode
from spatialrl.lora import FluxLoraConfig
from spatialrl.sde import NOISE_LEVELS, SDEKind, check_noise_level

__all__ = ["EvalConfig", "EvalSpec", "GRPOConfig", "GRPOSpec", "SamplingConfig", "SamplingSpec", "check_settings"]


@dataclass
class SamplingConfig:
    """Training rollouts. Settings without a trained step are refused (``num_steps: 1`` with ``sde_steps`` unset:
    its one step is the last, an ODE step).

    Args:
        height: image height in pixels, of training rollouts and validation samples.
        width: image width in pixels, of training rollouts and validation samples.
        num_steps: sampling steps of a training rollout.
        noise_level: the SDE's noise (finite, > 0); it means something else per ``kind`` (:mod:`spatialrl.sde`):
            ``sde``, Flow-GRPO's a in ``g = a sqrt(s / (1 - s))`` (0.7 on SD3.5, 0.9 on FLUX); ``dance``,
            DanceGRPO's constant eta (0.3; the default 0.9 would be three times DanceGRPO's noise); ``cps``, a in
            (0, 1] with ``sin(a pi / 2)`` the fraction of ``sigma_next`` that is fresh noise (0.8 in Flow-GRPO's
            CPS recipes, with a PPO clip range ~1e-5; 0.9 re-noises almost fully).
        kind: the stochastic sampler: ``sde`` (Flow-GRPO), ``dance`` (DanceGRPO) or ``cps``
            (coefficient-preserving).
        sde_steps: which of the ``num_steps`` steps (indices from 0) are stochastic and trained; null: all but
            the last (Flow-GRPO).
        sde_fraction: instead of ``sde_steps``, a random fraction of the steps before the last, drawn anew each
            training step (DanceGRPO); in (0, 1].
        guidance: FLUX's guidance scale, for training rollouts and validation samples.
        shared_initial_noise: the G samples of a group start from the same noise and differ only by the SDE noise.
        rollout_batch: samples per sampling forward pass (memory, not math).
    """

    height: int = 512
    width: int = 512
    num_steps: int = 6
    noise_level: float = 0.9
    kind: SDEKind = "sde"
    sde_steps: list[int] | None = None
    sde_fraction: float | None = None
    guidance: float = 3.5
    shared_initial_noise: bool = False
    rollout_batch: int = 8


@dataclass
class GRPOConfig:
    """The GRPO objective.

    Args:
        group_size: G, the images sampled per prompt (>= 2).
        k: top-k and bottom-k kept per group (ignored with ``filter: none``).
        filter: which samples of a group train: ``topk`` (the k best and k worst), ``maxvar`` (the 2k-subset
            of maximal reward variance) or ``none`` (all G).
        std_mode: advantage normalisation: ``group`` (each group's std), ``global`` (the std over the gathered
            batch) or ``none`` (no division).
        advantage_clip: advantages are clipped to ``[-advantage_clip, advantage_clip]``; null: no clipping.
        clip_range: PPO's eps: the probability ratio is clipped to ``[1 - eps, 1 + eps]`` (finite, > 0).
        kl_beta: weight of the KL to the reference (the transformer with the LoRA adapter disabled), per
            element, normalised as ``kl_convention`` says; > 0 needs a LoRA adapter.
        kl_convention: ``exact`` divides by ``2 std^2`` of the transition (``std = g sqrt(h)``): the exact
            Gaussian KL and the paper's ``2 g^2 h``, for which the paper's beta 0.01 is meant. ``flow_grpo``
            divides by ``2 g^2`` as Flow-GRPO's code: the exact KL times the step size h (0.10-0.21 at 512 px and
            6 steps, so the same beta acts 5-10x weaker than under ``exact``); Flow-GRPO's published betas carry
            over (0.04 GenEval/OCR and 0.01 PickScore on SD3.5; its FLUX recipes use 0). Both agree for
            ``sampling.kind: cps``.
        ppo_epochs: passes over the kept samples per batch, one optimiser step each. The first pass replays the
            rollout with the weights that sampled it, so its PPO ratio is exactly 1: ``train/approx_kl`` and
            ``train/clip_fraction`` are averaged over the later passes only, and not logged at all with
            ``ppo_epochs: 1`` (they could not move).
        micro_batch: samples per training forward/backward (gradients accumulate over micro-batches).
        max_grad_norm: gradient-norm clipping before each optimiser step; null: no clipping (the norm is
            still logged).
        groups_across_ranks: every rank samples G/W of every prompt of the global batch (rewards all-gathered)
            instead of whole groups of its own prompts (needs ``group_size`` divisible by the world size).
    """

    group_size: int = 24
    k: int = 6
    filter: FilterMethod = "topk"
    std_mode: StdMode = "global"
    advantage_clip: float | None = 5.0
    clip_range: float = 1e-4
    kl_beta: float = 0.01
    kl_convention: KLConvention = "exact"
    ppo_epochs: int = 1
    micro_batch: int = 4
    max_grad_norm: float | None = 1.0
    groups_across_ranks: bool = False


@dataclass
class EvalConfig:
    """Validation: ODE samples of every validation prompt at ``sampling``'s size and guidance; the reward and every
    ``eval_metrics`` reward are averaged.

    Args:
        num_steps: Euler steps of each validation sample.
        samples_per_prompt: ODE samples of each validation prompt.
        seed: the initial noise is seeded by ``(seed, prompt text, sample index)``, the same at every validation.
        grid_prompts: a grid of the first this many prompts' samples (with their text) goes to every logger
            that takes images.
        at_start: also evaluate the initial policy before the first training step (logged at step 0).
        use_ema: evaluate with the EMA weights when the module keeps them (``ema_decay`` set).
    """

    num_steps: int = 28
    samples_per_prompt: int = 2
    seed: int = 1234
    grid_prompts: int = 4
    at_start: bool = True
    use_ema: bool = True


# The 0.1 names, still importable (scripts and checkpoints written with them).
SamplingSpec, GRPOSpec, EvalSpec = SamplingConfig, GRPOConfig, EvalConfig


def check_settings(*, sampling: SamplingConfig, grpo: GRPOConfig, lora: FluxLoraConfig) -> None:
    """Refuse, naming the setting, what would fail later or silently train nothing (``FluxGRPOModule`` calls it
    on construction)."""
    g, s = grpo, sampling
    for name, value in (
        ("grpo.micro_batch", g.micro_batch),
        ("grpo.ppo_epochs", g.ppo_epochs),
        ("sampling.rollout_batch", s.rollout_batch),
        ("sampling.num_steps", s.num_steps),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if g.group_size < 2:
        raise ValueError(f"grpo.group_size must be >= 2, got {g.group_size}")
    if g.filter != "none" and g.k < 1:
        raise ValueError(
            f"grpo.k must be >= 1 with filter {g.filter!r} (it keeps the k best and k worst of each group), "
            f"got {g.k}; filter: none keeps whole groups"
        )
    if g.filter != "none" and 2 * g.k > g.group_size:
        raise ValueError(f"grpo.k={g.k} keeps 2k > group_size={g.group_size}: lower k or use filter: none")
    if not math.isfinite(g.kl_beta) or g.kl_beta < 0:
        raise ValueError(f"grpo.kl_beta must be finite and >= 0, got {g.kl_beta}")
    if not math.isfinite(g.clip_range) or g.clip_range <= 0:
        raise ValueError(f"grpo.clip_range must be finite and > 0, got {g.clip_range}")
    _check_trained_steps(s)
    if lora.dropout != 0:
        raise ValueError(
            f"lora.dropout must be 0 for GRPO, got {lora.dropout}: a rollout and its replay must be the same "
            "function, or the PPO ratio measures dropout noise"
        )
    if g.kl_beta > 0 and lora.rank == 0:
        raise ValueError("grpo.kl_beta > 0 needs a LoRA adapter (the reference is the adapter disabled)")
    if s.sde_fraction is not None and not 0 < s.sde_fraction <= 1:
        raise ValueError(f"sampling.sde_fraction must be in (0, 1], got {s.sde_fraction}")
    if g.kl_convention not in ("exact", "flow_grpo"):
        raise ValueError(f"grpo.kl_convention must be 'exact' or 'flow_grpo', got {g.kl_convention!r}")
    check_noise_level(s.noise_level, s.kind, name="sampling.noise_level")
    if s.noise_level == 0:
        raise ValueError(
            f"sampling.noise_level must be > 0: GRPO trains stochastic steps ({s.kind}: {NOISE_LEVELS[s.kind]})"
        )


def _check_trained_steps(s: SamplingConfig) -> None:
    """At least one of the ``num_steps`` sampling steps must be stochastic, or GRPO has nothing to train."""
    n = s.num_steps
    if s.sde_fraction is not None:
        if round(s.sde_fraction * (n - 1)) == 0:
            raise ValueError(
                f"sampling.sde_fraction={s.sde_fraction} of the {n - 1} step(s) before the last of "
                f"sampling.num_steps={n} rounds to no trained step: raise sde_fraction or num_steps"
            )
        return
    if s.sde_steps is None:
        if n < 2:
            raise ValueError(
                f"sampling.num_steps must be >= 2 for GRPO, got {n}: with sde_steps unset every step but the "
                "last (deterministic) one is stochastic and trained, so a single step trains nothing"
            )
        return
    steps = list(s.sde_steps)
    bad = [i for i in steps if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ValueError(f"sampling.sde_steps must be step indices in [0, {n}) (num_steps={n}), got {bad}")
    # The CPS step into sigma = 0 is deterministic (std 0): listing the last step trains nothing there.
    trained = [i for i in steps if not (s.kind == "cps" and i == n - 1)]
    if not trained:
        raise ValueError(
            f"sampling.sde_steps={steps} trains no step (kind {s.kind!r}, num_steps={n}): list at least one "
            "stochastic step, or leave it unset (every step but the last)"
        )
