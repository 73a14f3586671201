"""FluxGRPOModule: GRPO with Top-k group filtering on the FLUX transformer. Orchestration only.

Per training batch of P prompts: sample G images per prompt with the SDE sampler (:mod:`spatialrl.rollout`),
score them (:mod:`spatialrl.rewards`), join the ranks' rewards (:mod:`spatialrl.groups`), keep the top-k and
bottom-k of every group and normalise advantages over them (:mod:`spatialrl.grpo`), then run the PPO epochs over
the kept samples and trained steps, accumulating gradients over micro-batches weighted as ``grpo.step_objective``
says, with one clipped optimiser step per PPO epoch. Its settings: :mod:`spatialrl.config`.

Randomness is a function of ``(seed, global step, position of the prompt in the global batch, sample index)``,
never of the rank or the micro-batch, so 1 process and W processes sample the same images and take the same
steps, and a resumed run continues exactly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor
from torchmetrics import MeanMetric

from spatialrl.config import EvalConfig, EvalSpec, GRPOConfig, GRPOSpec, SamplingConfig, SamplingSpec, check_settings
from spatialrl.ema import ParameterEMA, ema_context, load_ema, save_ema
from spatialrl.flux import FluxPolicy, FluxSource
from spatialrl.groups import GroupLayout
from spatialrl.grpo import (
    group_advantages,
    kl_step_size,
    kl_to_reference,
    micro_batches,
    objective_scale,
    ppo_clip_loss,
    select_groups,
    step_objective,
)
from spatialrl.lora import FluxLoraConfig, adapter_disabled, add_lora
from spatialrl.overlap import score_while_sampling
from spatialrl.rewards import Reward, reward_components
from spatialrl.rollout import (
    SeedStream,
    Trajectory,
    ode_images,
    replay_step,
    sample,
    sample_seed,
    sde_mask_random,
    seeded_noise,
)
from spatialscore.optim import OptimizerConfig, configure_adamw
from spatialscore.precision import DTYPES, fp32_master_weights
from spatialscore.strategies import fsdp2_shard
from spatialscore.visualize import image_grid, log_picture

__all__ = [
    "EvalConfig",
    "EvalSpec",
    "FluxGRPOModule",
    "GRPOConfig",
    "GRPOSpec",
    "OptimizerConfig",
    "SamplingConfig",
    "SamplingSpec",
]


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
            validation uses it (``eval.use_ema``). null: none.
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
        lora: FluxLoraConfig | None = None,
        sampling: SamplingConfig | None = None,
        grpo: GRPOConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        ema_decay: float | None = None,
        eval: EvalConfig | None = None,
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
        self.lora = lora or FluxLoraConfig()
        self.sampling = sampling or SamplingConfig()
        self.grpo = grpo or GRPOConfig()
        self.optimizer_config = optimizer or OptimizerConfig(lr=3e-4, weight_decay=1e-4)
        self.ema_decay = ema_decay
        self.eval_spec = eval or EvalConfig()
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
        check_settings(sampling=self.sampling, grpo=self.grpo, lora=self.lora)

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
        seed = sample_seed(self.seed, self.global_step, SeedStream.SDE_STEPS)
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
        seeds = [
            sample_seed(self.seed, step, p, c, SeedStream.STEP_NOISE) for p, c in zip(positions, columns, strict=True)
        ]
        init_seeds = [
            sample_seed(self.seed, step, p, 0 if s.shared_initial_noise else c, SeedStream.INITIAL_NOISE)
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

    @property
    def layout(self) -> GroupLayout:
        """Which samples of the global batch this process draws (:mod:`spatialrl.groups`)."""
        return GroupLayout(
            group_size=self.grpo.group_size,
            world=self.trainer.world_size,
            rank=self.trainer.global_rank,
            across_ranks=self.grpo.groups_across_ranks,
        )

    def _global_prompts(self, batch: dict[str, Any], layout: GroupLayout) -> tuple[list[str], list[dict], list[int]]:
        """The prompts this rank samples and their global positions: its own, or with groups across ranks every
        rank's (gathered)."""
        prompts, metadata = list(batch["prompts"]), list(batch["metadata"])
        if not layout.split:
            return prompts, metadata, layout.own_positions(len(prompts))
        gathered: list[Any] = [None] * layout.world
        torch.distributed.all_gather_object(gathered, (prompts, metadata))
        joined = layout.join([list(zip(*part, strict=True)) for part in gathered])
        return [p for p, _ in joined], [m for _, m in joined], list(range(len(joined)))

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
        g, layout = self.grpo, self.layout
        prompts, metadata, positions = self._global_prompts(batch, layout)
        columns = layout.columns()
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
        rewards = layout.to_global(self.all_gather(rewards_local) if layout.world > 1 else rewards_local[None])
        keep = select_groups(rewards, g.k, method=g.filter)
        advantages = group_advantages(rewards, mask=keep, std_mode=g.std_mode, clip=g.advantage_clip)
        kept_total = int(keep.sum())
        local_keep = layout.to_local(keep).reshape(-1)
        local_adv = layout.to_local(advantages).reshape(-1)
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

        Each rank runs the same number of micro-batches (:func:`~spatialrl.grpo.micro_batches`) and every term is
        weighted by :func:`~spatialrl.grpo.step_objective`: the update is the mean over all kept terms of the
        global batch for any number of processes.
        """
        g = self.grpo
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        kept = keep.nonzero().reshape(-1)
        steps = traj.log_probs.shape[1]
        world = self.trainer.world_size
        counts = self.all_gather(torch.tensor(len(kept), device=self.device)).reshape(-1)
        n_max = int(counts.max())
        scale = objective_scale(kept_terms=kept_total * steps, world=world)
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
            gen = torch.Generator().manual_seed(sample_seed(self.seed, self.global_step, epoch, SeedStream.PPO_ORDER))
            order = kept[torch.randperm(len(kept), generator=gen)] if len(kept) else kept
            for rows, real in micro_batches(order, length=n_max, size=g.micro_batch):
                part = traj.select(rows)
                adv = advantages[rows.to(advantages.device)] * real.to(advantages.device)
                real = real.to(self.device)
                n_real = int(real.sum())
                for j in range(steps):
                    loss, step_stats, kl = self._step_loss(part, j, adv, real)
                    self.manual_backward(
                        step_objective(policy_loss=loss, real=real, kl=kl, kl_beta=g.kl_beta, scale=scale)
                    )
                    totals["passes"] += 1.0
                    if n_real:
                        terms += 1
                        if epoch > 0:
                            later_terms += 1
                            for key in ("clip_fraction", "approx_kl"):
                                totals[key] += float(step_stats[key])
                        totals["policy_loss"] += float(loss.detach())
                        if kl is not None:
                            totals["kl"] += float((kl.detach() * real).sum()) / n_real
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

    def _step_loss(self, part: Trajectory, j: int, adv: Tensor, mask: Tensor) -> tuple[Tensor, dict, Tensor | None]:
        """Masked PPO loss (mean over real samples) and the per-sample KL (None without a KL term) of trained step
        ``j`` of a micro-batch."""
        out = replay_step(self.policy, part, index=j)
        loss, stats = ppo_clip_loss(
            log_prob=out.log_prob,
            old_log_prob=part.log_probs[:, j].to(out.log_prob.device),
            advantages=adv.to(out.log_prob.device),
            clip_range=self.grpo.clip_range,
            mask=mask,
        )
        if self.grpo.kl_beta == 0:
            return loss, stats, None
        with torch.no_grad(), adapter_disabled(self.transformer):
            ref = replay_step(self.policy, part, index=j)
        step_size = kl_step_size(
            self.grpo.kl_convention,
            kind=part.kind,
            sigma=float(part.sigma[j]),
            sigma_next=float(part.sigma_next[j]),
        )
        return loss, stats, kl_to_reference(mean=out.mean, ref_mean=ref.mean, std=out.std, step_size=step_size)

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

    def _evaluated_weights(self) -> AbstractContextManager:
        """The weights validation samples with, swapped in while inside: the EMA when the module keeps one
        and ``eval.use_ema``, else the trained weights."""
        return ema_context(self.ema if self.eval_spec.use_ema else None, self._trainable())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        with self._evaluated_weights():
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
        save_ema(self.ema, checkpoint)
        if not isinstance(self.trainer.strategy, ModelParallelStrategy) and "state_dict" in checkpoint:
            trainable = {f"transformer.{n}" for n, p in self.transformer.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put the frozen base weights (left out when saving) back, so loading stays strict; restore EMA."""
        state = checkpoint.get("state_dict")
        if state is not None and not isinstance(self.trainer.strategy, ModelParallelStrategy):
            checkpoint["state_dict"] = {**self.state_dict(), **state}
        load_ema(self.ema, checkpoint)
