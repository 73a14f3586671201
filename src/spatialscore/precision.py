"""Dtypes of both halves: the config names of the supported dtypes, and fp32 master weights for bf16 training."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DTYPES", "fp32_master_weights"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""A config's ``dtype`` name -> the torch dtype (what every ``dtype:`` setting of both halves accepts)."""


def fp32_master_weights(module: nn.Module, *, lora_only: bool = False) -> None:
    """Store the trainable floating-point parameters of ``module`` in fp32, in place (only LoRA's: ``lora_only``).

    Adam steps of a small learning rate vanish in bf16 weights (lr 2e-6 against a weight of 1e-3 is below bf16's
    relative resolution of 2^-8), so training keeps fp32 master weights and computes in the frozen weights' dtype:
    peft's LoRA layers cast their input to the adapter's dtype and the result back; FSDP2's ``param_dtype`` casts
    the parameters of a unit when it gathers them.
    """
    for name, param in module.named_parameters():
        if param.requires_grad and param.is_floating_point() and (not lora_only or "lora_" in name):
            param.data = param.data.float()
