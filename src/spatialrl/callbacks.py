"""Lightning callbacks of the RL half: export the trained policy as a plain diffusers FLUX folder."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from spatialrl.flux import SETTINGS_FILE, FluxPolicy
from spatialrl.lora import add_lora, has_lora, merged_copy

__all__ = ["ExportPolicy", "export_policy"]


def export_policy(module: L.LightningModule, directory: str | Path, *, is_global_zero: bool = True) -> None:
    """Write ``module``'s policy (a ``source``, ``lora`` and trained ``transformer``) to ``directory``.

    ``directory/`` is a complete FLUX folder in the diffusers layout with the LoRA adapter merged (loadable by
    ``FluxSource(path=...)`` and ``FluxPipeline.from_pretrained``); ``directory/lora.safetensors`` holds the
    adapter alone (peft key names) when there is one, and ``spatialrl.json`` the T5 length it was trained with
    (read back by ``FluxSource``). The weights are gathered as a full state dict first, so this works for sharded
    (FSDP2) models too; every rank must call it.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(module.transformer, options=options)
    if not is_global_zero:
        return
    directory = Path(directory)
    policy = module.source.load(device="cpu")
    if has_lora(module.transformer):
        add_lora(policy.transformer, module.lora)
    policy.transformer.load_state_dict({k: v.to(policy.dtype) for k, v in state.items()})
    merged = FluxPolicy(
        transformer=merged_copy(policy.transformer),
        vae=policy.vae,
        text_encoder=policy.text_encoder,
        tokenizer=policy.tokenizer,
        text_encoder_2=policy.text_encoder_2,
        tokenizer_2=policy.tokenizer_2,
        scheduler_config=policy.scheduler_config,
    )
    merged.pipeline().save_pretrained(directory)
    settings = {"max_sequence_length": policy.max_sequence_length}
    (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    if has_lora(policy.transformer):
        lora = {k: v.contiguous() for k, v in state.items() if "lora_" in k}
        save_file(lora, str(directory / "lora.safetensors"))


class ExportPolicy(L.Callback):
    """At the end of ``fit``, write the trained policy with :func:`export_policy` (loadable without Lightning)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with torch.no_grad():
            export_policy(pl_module, self.directory, is_global_zero=trainer.is_global_zero)
        trainer.strategy.barrier("export_policy")
