"""SpatialScoreModule: trains SpatialScore on preference pairs. Orchestration only; the math lives in
:mod:`spatialscore.losses`, the metric in :mod:`spatialscore.metrics`, the model in :mod:`spatialscore.model`."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch

from spatialscore.backbone import load_processor, resolve_backbone_path
from spatialscore.data.datamodule import PairCollator, PairDataset
from spatialscore.encode import RewardInputEncoder
from spatialscore.losses import bradley_terry_loss, expected_bt_loss
from spatialscore.metrics import PairwiseAccuracy
from spatialscore.model import RewardOutput, SpatialScore, SpatialScoreConfig
from spatialscore.optim import OptimizerConfig, configure_adamw
from spatialscore.precision import DTYPES, fp32_master_weights
from spatialscore.strategies import fsdp2_shard
from spatialscore.visualize import log_picture, pair_grid

MODEL_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")


PARAMETER_GROUPS = ("lm", "head", "token", "vision")


def parameter_group(name: str) -> str:
    """Which learning-rate group a trainable SpatialScore parameter belongs to."""
    if name.startswith("head."):
        return "head"
    if name == "reward_embedding":
        return "token"
    if ".visual." in f".{name}":
        return "vision"
    return "lm"


class SpatialScoreModule(L.LightningModule):
    """Pairwise Bradley-Terry training of :class:`SpatialScore`.

    Each batch holds B pairs encoded as 2B sequences (chosen first), scored in one forward pass.

    Args:
        model: the reward model to build and train: backbone, LoRA, prompt template, head (default: the tiny one).
        optimizer: AdamW and its learning-rate schedule (see :class:`~spatialscore.optim.OptimizerConfig`).
        loss: ``bt`` (Bradley-Terry on mu) or ``uncertainty`` (expected BT over the (mu, sigma) Gaussians, HPSv3).
        margin: the chosen score must beat the rejected one by this much before the loss flattens out.
        num_logged_pairs: validation pairs drawn with their scores into the ``val/pairs`` picture each
            validation epoch (0: none).
    """

    def __init__(
        self,
        *,
        model: SpatialScoreConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        loss: Literal["bt", "uncertainty"] = "bt",
        margin: float = 0.0,
        num_logged_pairs: int = 8,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if isinstance(model, dict):  # hyper-parameters read back from a checkpoint
            model = SpatialScoreConfig.from_dict(model)
        if isinstance(optimizer, dict):
            optimizer = OptimizerConfig.from_dict(optimizer)
        self.model_config = model or SpatialScoreConfig()
        self.optimizer_config = optimizer or OptimizerConfig()
        self.loss_kind = loss
        self.margin = margin
        self.num_logged_pairs = num_logged_pairs
        backbone = self.model_config.backbone
        self.encoder = RewardInputEncoder(
            load_processor(
                resolve_backbone_path(backbone), min_pixels=backbone.min_pixels, max_pixels=backbone.max_pixels
            ),
            template=self.model_config.template,
        )
        self.model: SpatialScore | None = None
        self.val_accuracy = PairwiseAccuracy()
        self.test_accuracy = PairwiseAccuracy(bootstrap_samples=1000)

    def setup(self, stage: str) -> None:
        """Give the data module this model's input encoder (collation runs in the loader workers)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_encoder"):
            datamodule.set_encoder(self.encoder)

    def configure_model(self) -> None:
        """Build the model (once), and shard it with FSDP2 under ``ModelParallelStrategy``."""
        if self.model is not None:
            return
        # from_pretrained returns modules in eval mode; Lightning keeps the mode it finds, which would silently
        # disable LoRA dropout and activation checkpointing during training (evaluation loops switch to eval).
        self.model = SpatialScore.build(self.model_config).train()
        if self._device_mesh is not None:
            backbone = self.model.backbone
            dtype = DTYPES[self.model_config.backbone.dtype]
            fp32_master_weights(self.model)
            fsdp2_shard(
                self.model,
                blocks=[*backbone.visual.blocks, *backbone.language_model.layers],
                mesh=self._device_mesh["data_parallel"],
                param_dtype=None if dtype == torch.float32 else dtype,
                fp32_modules=[self.model.head],
            )

    def forward(self, batch: dict[str, Any]) -> RewardOutput:
        """Scores of all 2B sequences of a collated batch."""
        return self.model(**{k: batch[k] for k in MODEL_INPUTS})

    def pair_loss(self, out: RewardOutput, num_pairs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, chosen scores and rejected scores of a batch whose first half is the chosen images."""
        mu_c, mu_r = out.mu[:num_pairs], out.mu[num_pairs:]
        if self.loss_kind == "bt":
            loss = bradley_terry_loss(chosen=mu_c, rejected=mu_r, margin=self.margin)
        else:
            sigma = out.sigma
            loss = expected_bt_loss(
                mu_chosen=mu_c,
                sigma_chosen=sigma[:num_pairs],
                mu_rejected=mu_r,
                sigma_rejected=sigma[num_pairs:],
                margin=self.margin,
            )
        return loss, mu_c, mu_r

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, mu_c, mu_r = self.pair_loss(self(batch), batch["num_pairs"])
        margin = (mu_c - mu_r).detach()
        self.log_dict(
            {
                "train/loss": loss.detach(),
                "train/margin": margin.mean(),
                "train/accuracy": (margin > 0).float().mean() + 0.5 * (margin == 0).float().mean(),
            },
            prog_bar=True,
            batch_size=batch["num_pairs"],
            sync_dist=True,  # the global batch's values: one rank alone may hold only records or only mirrors
        )
        return loss

    def _eval_step(self, batch: dict[str, Any], metric: PairwiseAccuracy, prefix: str) -> None:
        loss, mu_c, mu_r = self.pair_loss(self(batch), batch["num_pairs"])
        metric.update(chosen=mu_c, rejected=mu_r, subsets=batch["subset"], categories=batch["category"])
        self.log(f"{prefix}/loss", loss, batch_size=batch["num_pairs"], sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_accuracy, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_accuracy, "test")

    def _log_accuracy(self, metric: PairwiseAccuracy, prefix: str) -> None:
        values = {f"{prefix}/{k}": v for k, v in metric.compute().items() if not torch.isnan(v)}
        headline = values.pop(f"{prefix}/accuracy")
        self.log_dict(values)
        self.log(f"{prefix}/accuracy", headline, prog_bar=True)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy(self.val_accuracy, "val")
        self._log_pair_grid()

    def on_test_epoch_end(self) -> None:
        self._log_accuracy(self.test_accuracy, "test")

    def _log_pair_grid(self) -> None:
        """A picture (to every logger that takes images) of a few validation pairs with their scores.

        All ranks score, rank 0 logs.
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        manifest = getattr(datamodule, "manifests", {}).get("val")
        if manifest is None or self.num_logged_pairs <= 0 or self.trainer.sanity_checking:
            return
        dataset = PairDataset(manifest.records[: self.num_logged_pairs])
        items = [dataset[i] for i in range(len(dataset))]
        batch = PairCollator(self.encoder)(items)
        with torch.no_grad():
            out = self({k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()})
        if not self.trainer.is_global_zero:
            return
        n = len(items)
        grid = pair_grid(
            chosen=[item["chosen"] for item in items],
            rejected=[item["rejected"] for item in items],
            chosen_scores=out.mu[:n].tolist(),
            rejected_scores=out.mu[n:].tolist(),
            prompts=[item["prompt"] for item in items],
        )
        log_picture(self.loggers, "val/pairs", grid, self.global_step)

    def configure_optimizers(self) -> dict[str, Any]:
        groups: dict[str, list[torch.nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                groups.setdefault(parameter_group(name), []).append(param)
        return configure_adamw(
            groups=groups,
            known_groups=PARAMETER_GROUPS,
            config=self.optimizer_config,
            total_steps=lambda: self.trainer.estimated_stepping_batches,
        )
