"""FSDP2 sharding shared by both LightningModules.

Lightning's ``ModelParallelStrategy`` hands ``configure_model`` a device mesh and leaves the wrapping to the
module; it runs on GPUs (NCCL) and on CPUs (gloo) alike. Each transformer block becomes its own FSDP unit (so
only one block's full weights are materialised at a time), then the root wraps the rest.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def fsdp2_shard(
    root: nn.Module,
    *,
    blocks: Iterable[nn.Module],
    mesh,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = torch.float32,
    fp32_modules: Iterable[nn.Module] = (),
) -> nn.Module:
    """Shard ``blocks``, then ``fp32_modules``, then ``root`` with ``fully_shard`` over ``mesh`` (FSDP2), in place.

    ``param_dtype``: compute dtype of all-gathered parameters (e.g. bf16 on GPUs; None keeps the stored dtype);
    ``fp32_modules`` (e.g. a reward head) always compute with their stored dtype; gradients are reduced in
    ``reduce_dtype``. FSDP2 needs one stored dtype for the trainable parameters of each unit: call
    :func:`fp32_master_weights` first when the frozen weights are bf16.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    for module in fp32_modules:
        fully_shard(module, mesh=mesh, mp_policy=MixedPrecisionPolicy(reduce_dtype=reduce_dtype))
    fully_shard(root, mesh=mesh, mp_policy=policy)
    return root
