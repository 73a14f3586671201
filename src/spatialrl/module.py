"""FluxGRPOModule: GRPO with Top-k group filtering on the FLUX transformer. Orchestration only.

Per training batch of P prompts: sample G images per prompt with the SDE sampler (:mod:`spatialrl.rollout`),
score them (:mod:`spatialrl.rewards`), keep the top-k and bottom-k of every group and normalise advantages over
them (:mod:`spatialrl.grpo`), then run the PPO epochs over the kept samples and trained steps, accumulating
gradients over micro-batches, with one clipped optimiser step per PPO epoch.

Randomness is a function of ``(seed, global step, position of the prompt in the global batch, sample index)``,
never of the rank or the micro-batch, so 1 process and W processes sample the same images and take the same
steps, and a resumed run continues exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor
from torchmetrics import MeanMetric

from spatialrl.ema import ParameterEMA
from spatialrl.flux import FluxPolicy, FluxSource
from spatialrl.grpo import (
    FilterMethod,
    KLConvention,
    StdMode,
    group_advantages,
    kl_step_size,
    kl_to_reference,
    ppo_clip_loss,
    select_groups,
)
from spatialrl.lora import LoraSpec, adapter_disabled, add_lora
from spatialrl.overlap import score_while_sampling
from spatialrl.rewards import Reward, reward_components
from spatialrl.rollout import (
    Trajectory,
    ode_images,
    replay_step,
    sample,
    sample_seed,
    sde_mask_random,
    seeded_noise,
)
from spatialrl.sde import NOISE_LEVELS, SDEKind, check_noise_level
from spatialscore.backbone import DTYPES
from spatialscore.optim import OptimizerConfig, configure_adamw
from spatialscore.strategies import fp32_master_weights, fsdp2_shard
from spatialscore.visualize import image_grid, log_picture

__all__ = ["EvalSpec", "FluxGRPOModule", "GRPOSpec", "OptimizerConfig", "SamplingSpec"]


@dataclass
class SamplingSpec:
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
class GRPOSpec:
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
class EvalSpec:
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


class FluxGRPOModule(L.LightningModule):
    """GRPO with Top-k group filtering for a :class:`~spatialrl.flux.FluxPolicy` (manual optimisation).

    Batches come from ``PreferenceDataModule(view="prompts")``.

    Args:
        policy: the FLUX model to train (a diffusers folder, or a tiny random one); default: the tiny one.
        reward: the training reward, any :class:`~spatialrl.rewards.Reward`.
        lora: the LoRA adapter on the transformer (``rank: 0``: train the full transformer).
        sampling: training rollouts: image size, steps, the SDE and which steps it trains.
        grpo: the GRPO objective: group size, filtering, advantages, PPO clipping, KL, micro-batches.
        optimizer: AdamW and its learning-rate schedule (default here: lr 3e-4, weight decay 1e-4).
        ema_decay: keep an exponential moving average of the trained weights with this decay (in [0, 1));
            null: none.
        eval: validation sampling and what it logs.
        eval_metrics: extra rewards only computed and logged at validation (e.g. the strict judge), each under
            its own ``name``.
        activation_checkpointing: recompute the transformer's activations in the backward pass (less memory,
            slower steps).
        overlap_reward: score each rollout chunk (``sampling.rollout_batch`` samples) in a background thread
            while the next chunk samples (:mod:`spatialrl.overlap`), so a reward that waits on a server or
            another device hides behind the rollout. The rewards are those of scoring the whole rollout
            afterwards, bit for bit, for any reward whose value for an image does not depend on the other images
            of the call (the rule rewards, the strict judge); a neural reward scored in batches (in-process or
            served) may differ in the last bits, as its batches differ.
        seed: drives the LoRA initialisation and all sampling noise; null: the ``seed_everything`` seed.
    """

    def __init__(
        self,
        *,
        policy: FluxSource | None = None,
        reward: Reward,
        lora: LoraSpec | None = None,
        sampling: SamplingSpec | None = None,
        grpo: GRPOSpec | None = None,
        optimizer: OptimizerConfig | None = None,
        ema_decay: float | None = None,
        eval: EvalSpec | None = None,
        eval_metrics: Sequence[Reward] = (),
        activation_checkpointing: bool = False,
        overlap_reward: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["reward", "eval_metrics"])
        self.automatic_optimization = False
        self.source = policy or FluxSource()
        self.reward = reward
        self.lora = lora or LoraSpec()
        self.sampling = sampling or SamplingSpec()
        self.grpo = grpo or GRPOSpec()
        self.optimizer_config = optimizer or OptimizerConfig(lr=3e-4, weight_decay=1e-4)
        self.ema_decay = ema_decay
        self.eval_spec = eval or EvalSpec()
        self.eval_metrics = list(eval_metrics)
        self.activation_checkpointing = activation_checkpointing
        self.overlap_reward = overlap_reward
        self.seed = torch.initial_seed() if seed is None else seed  # None: follow seed_everything
        self.policy: FluxPolicy | None = None
        self.ema: ParameterEMA | None = None
        names = [
            "reward",
            *reward.component_names()[1:],
            *(n for m in self.eval_metrics for n in m.component_names()),
        ]
        if len(set(names)) != len(names):
            raise ValueError(
                f"eval_metrics names (and the training reward's diagnostics) must be unique and not 'reward': {names}"
            )
        self.val_means = torch.nn.ModuleDict({name: MeanMetric() for name in names})
        self._grid: list[tuple[str, list[tuple[Tensor, str]]]] = []  # (prompt, [(image, caption)])
        self.start_metrics: dict[str, float] = {}  # the initial policy's validation values (eval.at_start)
        self._check_settings()

    def _check_settings(self) -> None:
        """Refuse, naming the setting, what would fail later or silently train nothing."""
        g, s = self.grpo, self.sampling
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
        self._check_trained_steps()
        if self.lora.dropout != 0:
            raise ValueError(
                f"lora.dropout must be 0 for GRPO, got {self.lora.dropout}: a rollout and its replay must be the same "
                "function, or the PPO ratio measures dropout noise"
            )
        if g.kl_beta > 0 and self.lora.rank == 0:
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

    def _check_trained_steps(self) -> None:
        """At least one of the ``num_steps`` sampling steps must be stochastic, or GRPO has nothing to train."""
        s = self.sampling
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

    # ------------------------------------------------------------------------------------------------------
    # model
    # ------------------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Load the policy (once), add LoRA, and shard the transformer with FSDP2 under ModelParallelStrategy."""
        if self.policy is not None:
            return
        policy = self.source.load(device=self.device)
        transformer = policy.transformer
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # the adapter's initial A does not depend on what ran before
            add_lora(transformer, self.lora)
        if self.activation_checkpointing:
            transformer.enable_gradient_checkpointing()
        # registered: Lightning moves, shards and checkpoints it. Train mode changes nothing here (no dropout: FLUX
        # has none and lora.dropout > 0 is refused), so rollouts and their replays are one function either way;
        # it only keeps Lightning from warning that modules are in eval mode at the start of training.
        self.transformer = transformer.train()
        if self._device_mesh is not None:
            dtype = DTYPES[self.source.dtype]
            fp32_master_weights(transformer)
            fsdp2_shard(
                transformer,
                blocks=[*transformer.transformer_blocks, *transformer.single_transformer_blocks],
                mesh=self._device_mesh["data_parallel"],
                param_dtype=None if dtype == torch.float32 else dtype,
            )
        self.policy = policy
        if self.ema_decay is not None:
            self.ema = ParameterEMA(self._trainable(), decay=self.ema_decay)

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_adamw(
            groups={"transformer": self._trainable()},
            known_groups=("transformer",),
            config=self.optimizer_config,
            total_steps=lambda: self.trainer.estimated_stepping_batches,
        )

    # ------------------------------------------------------------------------------------------------------
    # rollouts
    # ------------------------------------------------------------------------------------------------------

    def _trained_steps(self) -> list[int] | None:
        s = self.sampling
        if s.sde_fraction is None:
            return s.sde_steps
        seed = sample_seed(self.seed, self.global_step, 1)
        return sde_mask_random(s.num_steps, fraction=s.sde_fraction, seed=seed).nonzero().reshape(-1).tolist()

    def _rollout(self, prompts: list[str], *, positions: list[int], columns: list[int]) -> Trajectory:
        """Sample ``prompts[i]`` as sample ``columns[i]`` of the group at global ``positions[i]``."""
        chunks = self._rollout_chunks(prompts, positions=positions, columns=columns)
        return Trajectory.concat([part for _, part in chunks])

    @torch.no_grad()
    def _rollout_chunks(
        self, prompts: list[str], *, positions: list[int], columns: list[int]
    ) -> Iterator[tuple[slice, Trajectory]]:
        """:meth:`_rollout` one chunk of ``sampling.rollout_batch`` samples at a time, sampled when asked for: the
        rows of ``prompts`` each covers and its trajectory."""
        s, step = self.sampling, self.global_step
        seeds = [sample_seed(self.seed, step, p, c, 2) for p, c in zip(positions, columns, strict=True)]
        init_seeds = [
            sample_seed(self.seed, step, p, 0 if s.shared_initial_noise else c, 3)
            for p, c in zip(positions, columns, strict=True)
        ]
        initial = seeded_noise(self.policy, seeds=init_seeds, height=s.height, width=s.width)
        step_noise = seeded_noise(self.policy, seeds=seeds, height=s.height, width=s.width, steps=s.num_steps)
        sde_steps = self._trained_steps()
        for start in range(0, len(prompts), s.rollout_batch):
            chunk = slice(start, start + s.rollout_batch)
            yield (
                chunk,
                sample(
                    self.policy,
                    prompts=prompts[chunk],
                    height=s.height,
                    width=s.width,
                    num_steps=s.num_steps,
                    noise_level=s.noise_level,
                    kind=s.kind,
                    sde_steps=sde_steps,
                    initial_noise=initial[chunk],
                    step_noise=step_noise[chunk],
                    guidance=s.guidance,
                ),
            )

    def _global_prompts(self, batch: dict[str, Any]) -> tuple[list[str], list[dict], list[int]]:
        """This rank's prompts and their positions in the global batch (rank r's i-th prompt is i*W + r, the
        order of the sampler, so W processes see the positions one process with W times the batch sees)."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        prompts, metadata = list(batch["prompts"]), list(batch["metadata"])
        if not self.grpo.groups_across_ranks or world == 1:
            return prompts, metadata, [i * world + rank for i in range(len(prompts))]
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, (prompts, metadata))
        all_prompts, all_meta, positions = [], [], []
        for i in range(len(prompts)):
            for r in range(world):
                all_prompts.append(gathered[r][0][i])
                all_meta.append(gathered[r][1][i])
                positions.append(i * world + r)
        return all_prompts, all_meta, positions

    def _columns(self) -> list[int]:
        """The group members this rank samples."""
        g, world, rank = self.grpo.group_size, self.trainer.world_size, self.trainer.global_rank
        if not self.grpo.groups_across_ranks or world == 1:
            return list(range(g))
        if g % world:
            raise ValueError(f"groups_across_ranks needs group_size ({g}) divisible by the world size ({world})")
        per = g // world
        return list(range(rank * per, (rank + 1) * per))

    def _gather_rewards(self, local: Tensor) -> Tensor:
        """(P_local, G_local) -> the global (P_global, G) matrix, rows in global-position order."""
        world = self.trainer.world_size
        if world == 1:
            return local
        gathered = self.all_gather(local)  # (W, P_local, G_local)
        if self.grpo.groups_across_ranks:
            return torch.cat(list(gathered), dim=1)
        return gathered.transpose(0, 1).reshape(-1, local.shape[1])

    def _local_rows(self, global_matrix: Tensor) -> Tensor:
        """Inverse of :meth:`_gather_rewards`: this rank's (P_local, G_local) block of a global matrix."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if world == 1:
            return global_matrix
        if self.grpo.groups_across_ranks:
            per = global_matrix.shape[1] // world
            return global_matrix[:, rank * per : (rank + 1) * per]
        return global_matrix[rank::world]

    # ------------------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------------------

    def _rewards(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> tuple[Tensor, dict[str, Tensor]]:
        """The checked reward of each image, and its diagnostics (:meth:`Reward.components`, computed once).

        Detached: rewards are constants of the GRPO objective (only the policy's log-probs carry gradients), and a
        reward that returns a tensor with a graph (a differentiable reward model) would otherwise be
        back-propagated into by every micro-batch, failing on the second ("backward through the graph a second
        time").
        """
        parts = reward_components(self.reward, images=images, prompts=prompts, metadata=metadata)
        parts = {name: value.detach() for name, value in parts.items()}
        return parts.pop(self.reward.name), parts

    def _sample_and_score(
        self, prompts: list[str], metadata: list[dict], *, positions: list[int], columns: list[int], clock: list[float]
    ) -> tuple[Trajectory, Tensor, dict[str, Tensor]]:
        """Roll out ``prompts`` and reward the images: after the rollout, or with ``overlap_reward`` each chunk while
        the next samples. Appends to ``clock`` when the sampling ended and when the last score came."""
        chunks = self._rollout_chunks(prompts, positions=positions, columns=columns)
        if not self.overlap_reward:
            traj = Trajectory.concat([part for _, part in chunks])
            clock.append(time.perf_counter())
            rewards, parts = self._rewards(traj.images, prompts, metadata)
            clock.append(time.perf_counter())
            return traj, rewards, parts

        def timed() -> Iterator[tuple[slice, Trajectory]]:
            yield from chunks
            clock.append(time.perf_counter())

        def score(item: tuple[slice, Trajectory]) -> tuple[Tensor, dict[str, Tensor]]:
            rows, part = item
            return self._rewards(part.images, prompts[rows], metadata[rows])

        sampled, scores = score_while_sampling(timed(), score)
        clock.append(time.perf_counter())
        parts = {name: torch.cat([p[name] for _, p in scores]) for name in scores[0][1]}
        return Trajectory.concat([part for _, part in sampled]), torch.cat([r for r, _ in scores]), parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        g = self.grpo
        prompts, metadata, positions = self._global_prompts(batch)
        columns = self._columns()
        n_cols = len(columns)
        flat_prompts = [p for p in prompts for _ in columns]
        flat_meta = [m for m in metadata for _ in columns]
        clock = [time.perf_counter()]
        traj, rewards_local, parts = self._sample_and_score(
            flat_prompts,
            flat_meta,
            positions=[pos for pos in positions for _ in columns],
            columns=[c for _ in positions for c in columns],
            clock=clock,
        )
        rewards_local = rewards_local.reshape(-1, n_cols)
        rewards = self._gather_rewards(rewards_local)
        keep = select_groups(rewards, g.k, method=g.filter)
        advantages = group_advantages(rewards, mask=keep, std_mode=g.std_mode, clip=g.advantage_clip)
        kept_total = int(keep.sum())
        local_keep = self._local_rows(keep).reshape(-1)
        local_adv = self._local_rows(advantages).reshape(-1)
        stats = self._train_on(traj, keep=local_keep, advantages=local_adv, kept_total=kept_total)
        clock.append(time.perf_counter())
        stats.update(
            {
                f"seconds_{name}": b - a
                for name, a, b in zip(("rollout", "reward", "update"), clock[:-1], clock[1:], strict=True)
            }
        )
        self._log_train(rewards=rewards, keep=keep, advantages=advantages, stats=stats, parts=parts)

    def _train_on(self, traj: Trajectory, *, keep: Tensor, advantages: Tensor, kept_total: int) -> dict[str, float]:
        """PPO epochs over the kept samples and trained steps; one optimiser step per epoch.

        Each rank runs the same number of micro-batches (padded with zero-weight samples), and every loss term
        is divided by the global count of kept (sample, step) terms, times W to undo the gradient averaging of
        data parallelism: the update is the mean over all kept terms for any number of processes.
        """
        g = self.grpo
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        kept = keep.nonzero().reshape(-1)
        steps = traj.log_probs.shape[1]
        world = self.trainer.world_size
        counts = self.all_gather(torch.tensor(len(kept), device=self.device)).reshape(-1)
        n_max = int(counts.max())
        norm = world / max(kept_total * steps, 1)
        totals: dict[str, float] = {
            "clip_fraction": 0.0,
            "approx_kl": 0.0,
            "kl": 0.0,
            "policy_loss": 0.0,
            "grad_norm": 0.0,
            "passes": 0.0,
        }
        terms = 0
        later_terms = 0  # terms of the PPO epochs after the first (on-policy, ratio 1) one
        for epoch in range(g.ppo_epochs):
            gen = torch.Generator().manual_seed(sample_seed(self.seed, self.global_step, epoch, 4))
            order = kept[torch.randperm(len(kept), generator=gen)] if len(kept) else kept
            padded = torch.cat([order, order.new_zeros(n_max - len(order))])
            real = torch.arange(n_max) < len(order)
            for start in range(0, n_max, g.micro_batch):
                rows, mask = padded[start : start + g.micro_batch], real[start : start + g.micro_batch]
                part = traj.select(rows)
                adv = advantages[rows.to(advantages.device)] * mask.to(advantages.device)
                for j in range(steps):
                    loss, step_stats, kl = self._step_loss(part, j, adv, mask.to(self.device))
                    self.manual_backward((loss * int(mask.sum()) + g.kl_beta * kl) * norm)
                    totals["passes"] += 1.0
                    if int(mask.sum()):
                        terms += 1
                        if epoch > 0:
                            later_terms += 1
                            for key in ("clip_fraction", "approx_kl"):
                                totals[key] += float(step_stats[key])
                        totals["policy_loss"] += float(loss.detach())
                        totals["kl"] += float(kl.detach()) / max(int(mask.sum()), 1)
            totals["grad_norm"] += self._clip_and_step(optimizer)
            scheduler.step()
        for key in ("kl", "policy_loss"):
            totals[key] /= max(terms, 1)
        for key in ("clip_fraction", "approx_kl"):
            if g.ppo_epochs == 1:
                del totals[key]  # the one pass is on-policy: always 0
            else:
                totals[key] /= max(later_terms, 1)
        totals["grad_norm"] /= g.ppo_epochs
        return totals

    def _step_loss(self, part: Trajectory, j: int, adv: Tensor, mask: Tensor) -> tuple[Tensor, dict, Tensor]:
        """Masked PPO loss (mean over real samples) and the summed KL of trained step ``j`` of a micro-batch."""
        out = replay_step(self.policy, part, index=j)
        loss, stats = ppo_clip_loss(
            log_prob=out.log_prob,
            old_log_prob=part.log_probs[:, j].to(out.log_prob.device),
            advantages=adv.to(out.log_prob.device),
            clip_range=self.grpo.clip_range,
            mask=mask,
        )
        if self.grpo.kl_beta == 0:
            return loss, stats, out.log_prob.new_zeros(())
        with torch.no_grad(), adapter_disabled(self.transformer):
            ref = replay_step(self.policy, part, index=j)
        step_size = kl_step_size(
            self.grpo.kl_convention,
            kind=part.kind,
            sigma=float(part.sigma[j]),
            sigma_next=float(part.sigma_next[j]),
        )
        kl = kl_to_reference(mean=out.mean, ref_mean=ref.mean, std=out.std, step_size=step_size)
        return loss, stats, (kl * mask.to(kl.dtype)).sum()

    def _clip_and_step(self, optimizer: Any) -> float:
        params = self._trainable()
        max_norm = self.grpo.max_grad_norm if self.grpo.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(params)
        return float(norm)

    def _log_train(
        self,
        *,
        rewards: Tensor,
        keep: Tensor,
        advantages: Tensor,
        stats: dict[str, float],
        parts: dict[str, Tensor],
    ) -> None:
        kept = rewards[keep]
        values = {
            "train/reward_mean": rewards.mean(),
            "train/reward_std": rewards.std(unbiased=False),
            "train/reward_kept_mean": kept.mean(),
            "train/reward_kept_std": kept.std(unbiased=False),
            "train/group_std_mean": rewards.std(dim=1, unbiased=False).mean(),
            "train/advantage_abs_mean": advantages[keep].abs().mean(),
            "train/advantage_max": advantages.max(),
            "train/advantage_min": advantages.min(),
            "train/kept_fraction": keep.float().mean(),
        }
        self.log_dict({k: v.float() for k, v in values.items()}, prog_bar=False)
        self.log("train/reward", rewards.mean().float(), prog_bar=True)
        self.log_dict({f"train/{k}": float(v) for k, v in stats.items()}, sync_dist=True)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0])
        if parts:
            self.log_dict({f"train/reward_{k}": v.mean() for k, v in parts.items()}, sync_dist=True)

    # ------------------------------------------------------------------------------------------------------
    # evaluation
    # ------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, prompts: list[str], metadata: list[dict]) -> dict[str, Tensor]:
        """ODE samples of each prompt (``eval.samples_per_prompt``) and every reward of them: ``{name: (B*n,)}``
        plus ``"images"``. The initial noise depends only on the prompt text and sample index."""
        e, s = self.eval_spec, self.sampling
        n = e.samples_per_prompt
        flat = [p for p in prompts for _ in range(n)]
        meta = [m for m in metadata for _ in range(n)]
        images = ode_images(
            self.policy,
            prompts=prompts,
            samples_per_prompt=n,
            seed=e.seed,
            num_steps=e.num_steps,
            height=s.height,
            width=s.width,
            guidance=s.guidance,
            batch_size=s.rollout_batch,
        )
        out = {"images": torch.cat(list(images))}
        out["reward"], parts = self._rewards(out["images"], flat, meta)
        out.update(parts)
        for metric in self.eval_metrics:
            out.update(reward_components(metric, images=out["images"], prompts=flat, metadata=meta))
        return out

    def _ema_weights(self) -> AbstractContextManager:
        use = self.ema is not None and self.eval_spec.use_ema
        return self.ema.swapped(self._trainable()) if use else nullcontext()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        with self._ema_weights():
            out = self.evaluate(list(batch["prompts"]), list(batch["metadata"]))
        for name, metric in self.val_means.items():
            metric.update(out[name])
        n = self.eval_spec.samples_per_prompt
        room = self.eval_spec.grid_prompts - len(self._grid)
        for p, prompt in enumerate(list(batch["prompts"])[: max(room, 0)]):
            rows = range(p * n, (p + 1) * n)
            self._grid.append((prompt, [(out["images"][i].cpu(), f"{float(out['reward'][i]):.2f}") for i in rows]))

    def _pop_val_means(self) -> dict[str, Tensor]:
        """Each validation mean (synced over processes by torchmetrics), then reset for the next evaluation."""
        values = {f"val/{name}": metric.compute() for name, metric in self.val_means.items()}
        for metric in self.val_means.values():
            metric.reset()
        return values

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self._pop_val_means())
        self._log_grid("val/samples", self.global_step)

    def _log_grid(self, tag: str, step: int) -> None:
        """The first ``eval.grid_prompts`` validation prompts' samples, a row each under its prompt, captioned with
        their rewards, to every logger that takes images."""
        grid, self._grid = self._grid, []
        if not grid or not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return
        cells = [cell for _, row in grid for cell in row]
        picture = image_grid(
            images=[img for img, _ in cells],
            captions=[c for _, c in cells],
            columns=self.eval_spec.samples_per_prompt,
            row_titles=[f"{prompt}  ({self.reward.name} under each sample)" for prompt, _ in grid],
        )
        log_picture(self.loggers, tag, picture, step)

    def on_train_start(self) -> None:
        """Evaluate the initial policy (logged at step 0) so every run records where it started."""
        if not self.eval_spec.at_start or self.global_step > 0:
            return
        loaders = self.trainer.val_dataloaders
        loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
        for loader in loaders:
            if loader is None:
                continue
            for batch in loader:
                self.validation_step(batch, 0)
        values = {k: float(v) for k, v in self._pop_val_means().items()}
        self.start_metrics = values
        for logger in self.loggers:
            logger.log_metrics(values, step=0)
        self._log_grid("val/samples", 0)

    # ------------------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable weights (not the frozen base) unless FSDP2 writes a sharded checkpoint; add EMA."""
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()
        if not isinstance(self.trainer.strategy, ModelParallelStrategy) and "state_dict" in checkpoint:
            trainable = {f"transformer.{n}" for n, p in self.transformer.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put the frozen base weights (left out when saving) back, so loading stays strict; restore EMA."""
        state = checkpoint.get("state_dict")
        if state is not None and not isinstance(self.trainer.strategy, ModelParallelStrategy):
            checkpoint["state_dict"] = {**self.state_dict(), **state}
        if "ema" in checkpoint:
            if self.ema is None:
                raise ValueError("the checkpoint has EMA weights but ema_decay is not set")
            self.ema.load_state_dict(checkpoint["ema"])
