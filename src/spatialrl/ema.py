"""Exponential moving average of trainable weights (e.g. the LoRA adapter), swappable in for evaluation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

__all__ = ["ParameterEMA", "ema_context", "load_ema", "save_ema"]


class ParameterEMA:
    """``ema = decay * ema + (1 - decay) * param`` after every optimiser step, in float32.

    Works on sharded (FSDP2 DTensor) parameters shard by shard. Its state goes into Lightning checkpoints.
    """

    def __init__(self, params: Sequence[nn.Parameter], *, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in params]
        self.updates = 0

    @torch.no_grad()
    def update(self, params: Sequence[nn.Parameter]) -> None:
        """Move the average towards the current ``params`` (same order as at construction)."""
        self._check(params)
        for shadow, param in zip(self.shadow, params, strict=True):
            shadow.lerp_(param.detach().float(), 1 - self.decay)
        self.updates += 1

    @contextmanager
    def swapped(self, params: Sequence[nn.Parameter]) -> Iterator[None]:
        """Temporarily load the averaged weights into ``params`` (e.g. for validation), then restore them."""
        self._check(params)
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for shadow, param in zip(self.shadow, params, strict=True):
                param.copy_(shadow.to(param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for old, param in zip(saved, params, strict=True):
                    param.copy_(old)

    def state_dict(self) -> dict[str, object]:
        """Full (unsharded) tensors, so a checkpoint written by one rank restores on any; all ranks must call it."""
        full = [s.full_tensor() if isinstance(s, DTensor) else s for s in self.shadow]
        return {"decay": self.decay, "updates": self.updates, "shadow": [s.detach().cpu().clone() for s in full]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict`'s tensors, re-sharded like the current (possibly FSDP2) parameters."""
        shadow: list[Tensor] = state["shadow"]  # type: ignore[assignment]
        if len(shadow) != len(self.shadow) or any(
            tuple(a.shape) != tuple(b.shape) for a, b in zip(shadow, self.shadow, strict=True)
        ):
            raise ValueError("EMA state does not match the trainable parameters")
        restored = []
        for saved, current in zip(shadow, self.shadow, strict=True):
            if isinstance(current, DTensor):
                full = saved.to(device=current.device, dtype=torch.float32)
                restored.append(distribute_tensor(full, current.device_mesh, current.placements))
            else:
                restored.append(saved.to(device=current.device, dtype=torch.float32))
        self.shadow = restored
        self.updates = int(state["updates"])  # type: ignore[arg-type]

    def _check(self, params: Sequence[nn.Parameter]) -> None:
        if len(params) != len(self.shadow):
            raise ValueError(f"EMA tracks {len(self.shadow)} tensors, got {len(params)}")


def ema_context(ema: ParameterEMA | None, params: Sequence[nn.Parameter]) -> AbstractContextManager:
    """The averaged weights swapped into ``params`` while inside, or nothing when there is no EMA."""
    return ema.swapped(params) if ema is not None else nullcontext()


def save_ema(ema: ParameterEMA | None, checkpoint: dict[str, object]) -> None:
    """Put the EMA state under ``checkpoint["ema"]`` (a Lightning ``on_save_checkpoint`` step)."""
    if ema is not None:
        checkpoint["ema"] = ema.state_dict()


def load_ema(ema: ParameterEMA | None, checkpoint: dict[str, object]) -> None:
    """Restore ``checkpoint["ema"]`` into ``ema``; a checkpoint with EMA weights for a run without one is refused."""
    if "ema" not in checkpoint:
        return
    if ema is None:
        raise ValueError("the checkpoint has EMA weights but ema_decay is not set")
    ema.load_state_dict(checkpoint["ema"])  # type: ignore[arg-type]
