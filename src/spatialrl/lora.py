"""LoRA on the FLUX transformer: small functional helpers over diffusers' PEFT integration.

The adapter is added with ``transformer.add_adapter`` (the diffusers/peft path FLUX LoRA users already know),
so the GRPO reference policy is the same module with its adapter switched off: no second copy of the weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from spatialscore.imports import without_bitsandbytes
from spatialscore.precision import fp32_master_weights

with without_bitsandbytes():  # diffusers and peft import it when installed; FLUX is never quantized here
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders import FluxLoraLoaderMixin
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

__all__ = [
    "FLUX_LORA_TARGETS",
    "LORA_WEIGHTS_NAME",
    "FluxLoraConfig",
    "LoraSpec",
    "add_lora",
    "adapter_disabled",
    "has_lora",
    "lora_state_dict",
    "load_lora_state_dict",
    "merged_copy",
    "save_lora",
]

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # what diffusers writes, and looks for, in a LoRA folder

# Attention and feed-forward projections of the double-stream and single-stream blocks (Flow-GRPO's set plus
# the single blocks' MLP/output projections, which hold half of FLUX's parameters).
FLUX_LORA_TARGETS: tuple[str, ...] = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "proj_mlp",
    "proj_out",
)


@dataclass
class FluxLoraConfig:
    """LoRA settings as a config block (a fresh adapter, B = 0, fp32 weights; only its weights train).

    Args:
        rank: LoRA rank; 0 trains the whole transformer instead (no adapter).
        alpha: LoRA scaling numerator: the update is scaled by ``alpha / rank``; null: ``rank`` (scale 1).
        dropout: dropout on the LoRA branch's input during training.
        targets: the transformer's modules that get an adapter, as module-name suffixes (each must match).
    """

    rank: int = 32
    alpha: float | None = None
    dropout: float = 0.0
    targets: Sequence[str] = field(default_factory=lambda: list(FLUX_LORA_TARGETS))


LoraSpec = FluxLoraConfig  # the 0.1 name, still importable


def add_lora(transformer: FluxTransformer2DModel, spec: FluxLoraConfig) -> None:
    """Add a fresh LoRA adapter (B = 0, so the model is unchanged; fp32 weights) and make only its weights trainable.

    With ``spec.rank == 0`` every transformer weight is made trainable and no adapter is added.
    """
    if spec.rank < 0:
        raise ValueError(f"LoRA rank must be >= 0, got {spec.rank}")
    if spec.rank == 0:
        transformer.requires_grad_(True)
        return
    targets = [t for t in spec.targets]
    names = [name for name, _ in transformer.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(f"LoRA targets not found in the transformer: {missing}")
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha if spec.alpha is not None else spec.rank,
        lora_dropout=spec.dropout,
        target_modules=targets,
        init_lora_weights=True,
    )
    with without_bitsandbytes():  # peft's LoRA dispatch imports bitsandbytes' layers when it can
        transformer.add_adapter(config)
    for name, param in transformer.named_parameters():
        param.requires_grad_("lora_" in name)
    fp32_master_weights(transformer, lora_only=True)


def has_lora(transformer: FluxTransformer2DModel) -> bool:
    """Whether a LoRA adapter was added with :func:`add_lora`."""
    return bool(getattr(transformer, "_hf_peft_config_loaded", False))


@contextmanager
def adapter_disabled(transformer: FluxTransformer2DModel) -> Iterator[None]:
    """Run the base transformer (the GRPO reference) by switching the adapter off, then back on."""
    if not has_lora(transformer):
        raise ValueError("the transformer has no LoRA adapter: a reference policy needs LoRA (or a frozen copy)")
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()


def lora_state_dict(transformer: FluxTransformer2DModel) -> dict[str, Tensor]:
    """The adapter's weights (peft key names, without the adapter name)."""
    return get_peft_model_state_dict(transformer)


def load_lora_state_dict(transformer: FluxTransformer2DModel, state: dict[str, Tensor]) -> None:
    """Load adapter weights saved by :func:`lora_state_dict`; every key must match."""
    result = set_peft_model_state_dict(transformer, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"unexpected LoRA keys: {unexpected[:5]}")


def save_lora(transformer: FluxTransformer2DModel, directory: str | Path) -> Path:
    """Write the adapter with diffusers' own FLUX LoRA saving (``FluxPipeline.save_lora_weights``) to
    ``directory/pytorch_lora_weights.safetensors`` and return that path.

    Keys are diffusers' (``transformer.<module>.lora_A.weight``) and the adapter's peft ``LoraConfig`` (rank,
    ``lora_alpha``, targets) is stored in the file's metadata, so a stock ``FluxPipeline.load_lora_weights(directory)``
    rebuilds the adapter at its trained strength (alpha / rank) and ``fuse_lora`` gives :func:`merged_copy`.
    """
    if not has_lora(transformer):
        raise ValueError("the transformer has no LoRA adapter to save")
    FluxLoraLoaderMixin.save_lora_weights(
        str(directory),
        transformer_lora_layers=lora_state_dict(transformer),
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
    )
    return Path(directory) / LORA_WEIGHTS_NAME


def merged_copy(transformer: FluxTransformer2DModel) -> FluxTransformer2DModel:
    """A copy of the transformer with the adapter folded into the base weights (a plain diffusers model)."""
    out = copy.deepcopy(transformer)
    if has_lora(out):
        out.fuse_lora()
        out.unload_lora()
    return out
