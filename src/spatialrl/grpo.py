"""GRPO math: group filtering, group-relative advantages, PPO clip loss, KL to the reference policy.

A *group* is the G images sampled for one prompt. Spatial-RL keeps only the k best and k worst of each
group (2k of G) and normalises advantages over the kept samples: for an easy prompt a high group mean would
otherwise give good images negative advantages, and the reverse for a hard prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from spatialrl.sde import SDEKind

__all__ = [
    "FilterMethod",
    "KLConvention",
    "StdMode",
    "group_advantages",
    "micro_batches",
    "objective_scale",
    "step_objective",
    "kl_step_size",
    "kl_to_reference",
    "maxvar_filter",
    "ppo_clip_loss",
    "select_groups",
    "topk_filter",
]

FilterMethod = Literal["topk", "maxvar", "none"]
StdMode = Literal["group", "global", "none"]
KLConvention = Literal["exact", "flow_grpo"]  # see kl_to_reference


def _check_rewards(rewards: Tensor, ndim: int) -> None:
    if rewards.ndim != ndim:
        raise ValueError(f"rewards must have {ndim} dim(s), got shape {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        raise TypeError(f"rewards must be floating point, got {rewards.dtype}")
    if bool(torch.isnan(rewards).any()):
        raise ValueError("rewards contain NaN")


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _sorted_ranks(rewards: Tensor) -> tuple[Tensor, Tensor]:
    """Rows sorted ascending by ``(reward, index)``: ``(sorted values, rank of each original position)``."""
    values, order = torch.sort(rewards, dim=-1, stable=True)
    positions = torch.arange(rewards.shape[-1], device=rewards.device).expand_as(order)
    return values, torch.empty_like(order).scatter_(-1, order, positions)


def _topk_mask(rewards: Tensor, k: int) -> Tensor:
    """``(P, G)`` mask of the k lowest and k highest of each row."""
    size = rewards.shape[-1]
    if 2 * k >= size:
        return torch.ones_like(rewards, dtype=torch.bool)
    _, rank = _sorted_ranks(rewards)
    return (rank < k) | (rank >= size - k)


def _maxvar_mask(rewards: Tensor, k: int) -> Tensor:
    """``(P, G)`` mask of the maximal-variance k-subset of each row.

    An optimal subset is always the j lowest plus the k - j highest (the sum of squared pairwise differences
    is convex in each member, so a member with unchosen values on both sides can move outwards without
    lowering it), so one scan over j = 0..k with prefix sums of the sorted, centred values finds it (in
    float64). Exact ties in variance go to the smallest j.
    """
    size = rewards.shape[-1]
    if k >= size:
        return torch.ones_like(rewards, dtype=torch.bool)
    values, rank = _sorted_ranks(rewards)
    centred = values.double() - values.double().mean(dim=-1, keepdim=True)
    zero = centred.new_zeros(centred.shape[0], 1)
    sum1 = torch.cat([zero, centred.cumsum(-1)], dim=-1)
    sum2 = torch.cat([zero, (centred**2).cumsum(-1)], dim=-1)
    low = torch.arange(k + 1, device=rewards.device)
    high_start = size - (k - low)
    subset_sum1 = sum1[:, low] + sum1[:, size : size + 1] - sum1[:, high_start]
    subset_sum2 = sum2[:, low] + sum2[:, size : size + 1] - sum2[:, high_start]
    variance = subset_sum2 / k - (subset_sum1 / k) ** 2
    best_low = variance.argmax(dim=-1, keepdim=True)
    return (rank < best_low) | (rank >= size - (k - best_low))


def topk_filter(rewards: Tensor, k: int) -> Tensor:
    """Indices (ascending) of the k lowest and k highest of a group's ``(G,)`` rewards: 2k kept.

    Order is a stable sort by ``(reward, index)``, so among tied rewards the lower index counts as lower.
    All G indices are kept when ``2k >= G``.
    """
    _check_rewards(rewards, 1)
    _check_k(k)
    return _topk_mask(rewards[None], k)[0].nonzero().squeeze(-1)


def maxvar_filter(rewards: Tensor, k: int) -> Tensor:
    """Indices (ascending) of the k-element subset of the ``(G,)`` rewards with maximal variance.

    Always some j lowest plus k - j highest (ordered by ``(reward, index)``); found in O(G log G) by a
    prefix-sum scan over j. All indices are kept when ``k >= G``. Note that k is the subset size here, while
    :func:`topk_filter` keeps 2k.
    """
    _check_rewards(rewards, 1)
    _check_k(k)
    return _maxvar_mask(rewards[None], k)[0].nonzero().squeeze(-1)


def select_groups(rewards: Tensor, k: int, *, method: FilterMethod = "topk") -> Tensor:
    """Boolean ``(P, G)`` mask of the samples to train on, per prompt row of ``(P, G)`` rewards.

    ``"topk"`` keeps the k lowest and k highest, ``"maxvar"`` the 2k-subset of maximal variance (the same
    number of samples), ``"none"`` everything (k is then ignored).
    """
    _check_rewards(rewards, 2)
    if method == "none":
        return torch.ones_like(rewards, dtype=torch.bool)
    _check_k(k)
    if method == "topk":
        return _topk_mask(rewards, k)
    if method == "maxvar":
        return _maxvar_mask(rewards, 2 * k)
    raise ValueError(f"method must be 'topk', 'maxvar' or 'none', got {method!r}")


def group_advantages(
    rewards: Tensor,
    *,
    group_ids: Tensor | None = None,
    mask: Tensor | None = None,
    std_mode: StdMode = "group",
    eps: float = 1e-4,
    clip: float | None = 5.0,
) -> Tensor:
    """Group-relative advantages ``A = (r - mean_group) / (std + eps)``, clipped to ``[-clip, clip]``.

    ``rewards`` is ``(P, G)`` (one group per row) or flat ``(N,)`` with ``group_ids`` ``(N,)`` (any
    integers). Only samples with ``mask`` True (default: all) enter the statistics; the others get advantage
    0. Means are per group. ``std_mode``: ``"group"``, the population std (``unbiased=False``) of the group's
    kept rewards; ``"global"``, the population std of all kept rewards of the batch (pass the gathered batch;
    Flow-GRPO's FLUX setting); ``"none"``, no division (``A = r - mean_group``). A group whose kept rewards
    are all equal gets exactly 0. Computed in float64 (float32 squares overflow from rewards of about 1e19 on,
    which turned every advantage into 0), so any finite float32 rewards are fine and the advantages do not
    depend on the rewards' scale beyond ``eps``; returned in ``rewards``' dtype promoted to at least float32, in
    its shape.
    """
    if std_mode not in ("group", "global", "none"):
        raise ValueError(f"std_mode must be 'group', 'global' or 'none', got {std_mode!r}")
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be positive or None, got {clip}")
    if rewards.ndim == 2:
        if group_ids is not None:
            raise ValueError("group_ids is only for flat (N,) rewards; (P, G) rewards are grouped by row")
        n_groups = rewards.shape[0]
        ids = torch.arange(n_groups, device=rewards.device).repeat_interleave(rewards.shape[1])
    elif rewards.ndim == 1:
        if group_ids is None or group_ids.shape != rewards.shape:
            raise ValueError("flat (N,) rewards need group_ids of shape (N,)")
        unique_ids, ids = torch.unique(group_ids, return_inverse=True)
        n_groups = unique_ids.numel()
    else:
        raise ValueError(f"rewards must be (P, G) or (N,), got shape {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        raise TypeError(f"rewards must be floating point, got {rewards.dtype}")
    if mask is not None and mask.shape != rewards.shape:
        raise ValueError(f"mask {tuple(mask.shape)} and rewards {tuple(rewards.shape)} differ in shape")

    dtype = torch.promote_types(rewards.dtype, torch.float32)
    r = rewards.reshape(-1).to(torch.float64)
    keep = torch.ones_like(r, dtype=torch.bool) if mask is None else mask.reshape(-1).bool()
    if bool(torch.isnan(r[keep]).any()):
        raise ValueError("kept rewards contain NaN")
    if bool(torch.isinf(r[keep]).any()):
        raise ValueError("kept rewards contain inf")
    kept_r = torch.where(keep, r, torch.zeros_like(r))

    count = r.new_zeros(n_groups).index_add_(0, ids, keep.to(r.dtype))
    mean = r.new_zeros(n_groups).index_add_(0, ids, kept_r) / count.clamp_min(1)
    centred = torch.where(keep, r - mean[ids], torch.zeros_like(r))
    if std_mode == "group":
        var = r.new_zeros(n_groups).index_add_(0, ids, centred**2) / count.clamp_min(1)
        advantages = centred / (var.sqrt()[ids] + eps)
    elif std_mode == "global":
        n_kept = keep.sum().clamp_min(1)
        global_mean = kept_r.sum() / n_kept
        global_var = (torch.where(keep, r - global_mean, torch.zeros_like(r)) ** 2).sum() / n_kept
        advantages = centred / (global_var.sqrt() + eps)
    else:
        advantages = centred

    high = r.new_full((n_groups,), -torch.inf).scatter_reduce(
        0, ids, torch.where(keep, r, torch.full_like(r, -torch.inf)), "amax"
    )
    low = r.new_full((n_groups,), torch.inf).scatter_reduce(
        0, ids, torch.where(keep, r, torch.full_like(r, torch.inf)), "amin"
    )
    degenerate = (high == low)[ids] | ~keep
    advantages = torch.where(degenerate, torch.zeros_like(advantages), advantages)
    if clip is not None:
        advantages = advantages.clamp(-clip, clip)
    return advantages.to(dtype).reshape(rewards.shape)


def ppo_clip_loss(
    *,
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    clip_range: float,
    mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate ``mean(max(-A rho, -A clip(rho, 1 - eps, 1 + eps)))``.

    ``rho = exp(log_prob - old_log_prob)``, ``eps = clip_range``; ``advantages`` must broadcast to
    ``log_prob``'s shape. ``mask`` (boolean, ``log_prob``'s shape) restricts the mean and the stats to the
    True entries (padding entries keep the graph but contribute exactly 0; an all-False mask gives a zero loss).
    Returns the scalar loss and detached stats: ``clip_fraction`` (share with ``|rho - 1| > eps``),
    ``approx_kl`` (the k3 estimator ``mean((rho - 1) - log rho)`` of KL(old || new), >= 0) and ``ratio_mean``.
    """
    if clip_range <= 0:
        raise ValueError(f"clip_range must be positive, got {clip_range}")
    if log_prob.shape != old_log_prob.shape:
        raise ValueError(f"log_prob {tuple(log_prob.shape)} and old_log_prob {tuple(old_log_prob.shape)} differ")
    if torch.broadcast_shapes(advantages.shape, log_prob.shape) != log_prob.shape:
        raise ValueError(f"advantages {tuple(advantages.shape)} do not broadcast to {tuple(log_prob.shape)}")
    if mask is not None and mask.shape != log_prob.shape:
        raise ValueError(f"mask {tuple(mask.shape)} and log_prob {tuple(log_prob.shape)} differ in shape")
    weight = torch.ones_like(log_prob) if mask is None else mask.to(log_prob.dtype)
    count = weight.sum().clamp_min(1)
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = (torch.maximum(unclipped, clipped) * weight).sum() / count
    with torch.no_grad():
        stats = {
            "clip_fraction": (((ratio - 1).abs() > clip_range).to(weight.dtype) * weight).sum() / count,
            "approx_kl": ((ratio - 1 - log_ratio) * weight).sum() / count,
            "ratio_mean": (ratio * weight).sum() / count,
        }
    return loss, stats


def kl_to_reference(
    *, mean: Tensor, ref_mean: Tensor, std: float | Tensor, step_size: float | Tensor | None = None
) -> Tensor:
    """Per-sample KL between the policy's and the reference's Gaussian transitions: ``(B,)``.

    ``mean((mean - ref_mean)^2 / (2 std^2))`` over the non-batch elements, where ``std = g sqrt(h)`` is the
    transition std shared by both (``SDEStepOutput.std``: a float, a ``(B,)`` tensor or one broadcastable to
    ``mean``). This is the exact KL(N(mean, std^2) || N(ref_mean, std^2)) per element, averaged like the
    log-probs: the "divide by 2 g^2 h" normalisation of the paper (``kl_convention: exact``).

    With ``step_size`` h (``sigma - sigma_next``, a float or ``(B,)``), the result is that KL times h, i.e.
    divided by ``2 g^2 = 2 std^2 / h`` instead: Flow-GRPO's code for its "sde" step (``kl_convention:
    flow_grpo``; smaller at late steps, as if beta scaled with h). Flow-GRPO's CPS step divides by its std, the
    exact KL: pass None there. Gradients flow through ``mean`` (and ``ref_mean`` if it requires grad). ``std``
    (and ``step_size``) must be > 0: deterministic steps have no KL and are not trained.
    """
    if mean.shape != ref_mean.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and ref_mean {tuple(ref_mean.shape)} differ in shape")
    if mean.ndim < 2:
        raise ValueError(f"mean must have shape (B, ...) with at least 2 dims, got {tuple(mean.shape)}")
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    if std.ndim == 1:
        std = std.reshape(-1, *([1] * (mean.ndim - 1)))
    elif std.ndim not in (0, mean.ndim):
        raise ValueError(f"std must be a float, (B,) or broadcastable to mean, got shape {tuple(std.shape)}")
    diff = mean.float() - ref_mean.float()
    kl = (diff**2 / (2 * std**2)).mean(dim=tuple(range(1, mean.ndim)))
    if step_size is None:
        return kl
    h = torch.as_tensor(step_size, dtype=torch.float32, device=mean.device)
    if h.ndim > 1 or (h.ndim == 1 and h.shape[0] != mean.shape[0]):
        raise ValueError(f"step_size must be a float or (B,), got shape {tuple(h.shape)}")
    if not bool((h > 0).all()):
        raise ValueError(f"step_size must be > 0 (sigma - sigma_next), got {step_size}")
    return kl * h


def kl_step_size(
    convention: KLConvention, *, kind: SDEKind, sigma: float | Tensor, sigma_next: float | Tensor
) -> float | Tensor | None:
    """The ``step_size`` argument of :func:`kl_to_reference` under ``convention`` for one ``kind`` of step.

    ``"exact"``: None (the exact KL). ``"flow_grpo"``: Flow-GRPO's divisor ``2 g^2``, so ``h = sigma -
    sigma_next`` for the "sde" and "dance" steps (``std = g sqrt(h)``) and None for "cps", whose Flow-GRPO KL
    divides by the transition std itself.
    """
    if convention not in ("exact", "flow_grpo"):
        raise ValueError(f"kl convention must be 'exact' or 'flow_grpo', got {convention!r}")
    if convention == "exact" or kind == "cps":
        return None
    return sigma - sigma_next


def objective_scale(*, kept_terms: int, world: int = 1) -> float:
    """The factor every summed (sample, step) term of one rank's objective is multiplied by, so that the update is
    the *mean* over the ``kept_terms`` terms of the whole global batch: ``world / kept_terms``. The ``world``
    undoes data parallelism's averaging of gradients over ranks; a rank without kept samples contributes 0."""
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    return world / max(kept_terms, 1)


def step_objective(
    *, policy_loss: Tensor, real: Tensor, kl: Tensor | None = None, kl_beta: float = 0.0, scale: float = 1.0
) -> Tensor:
    """The scalar back-propagated for one trained step of one micro-batch: ``(policy_loss * n + kl_beta *
    sum(kl over real samples)) * scale``.

    ``policy_loss`` is :func:`ppo_clip_loss`'s mean over the ``n = real.sum()`` real samples (``real``: ``(B,)``
    boolean, False for the padding rows that keep ranks in step), so times n it is their sum; ``kl`` is
    :func:`kl_to_reference`'s per-sample ``(B,)`` KL (None or ``kl_beta`` 0: no KL term), masked to the real
    samples. With ``scale = objective_scale(...)`` the terms of all micro-batches, steps and ranks add up to the
    mean PPO loss plus ``kl_beta`` times the mean KL over the kept terms."""
    if real.ndim != 1:
        raise ValueError(f"real must be (B,), got {tuple(real.shape)}")
    total = policy_loss * real.sum().to(policy_loss.dtype)
    if kl is not None and kl_beta != 0:
        if kl.shape != real.shape:
            raise ValueError(f"kl {tuple(kl.shape)} and real {tuple(real.shape)} differ in shape")
        total = total + kl_beta * (kl * real.to(kl.dtype)).sum()
    return total * scale


def micro_batches(order: Tensor, *, length: int, size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``order`` (sample indices) padded to ``length`` and cut into micro-batches of ``size``: ``(rows, real)``
    each, padding rows pointing at sample 0 with ``real`` False.

    Every rank runs ``length`` (the largest count of kept samples over the ranks) rows, so all ranks take the same
    number of forward/backward passes (FSDP's collectives need it); the padding rows weigh 0 in
    :func:`step_objective`.
    """
    if len(order) > length or size < 1:
        raise ValueError(f"need len(order) <= length and size >= 1, got {len(order)}, {length}, {size}")
    padded = torch.cat([order, order.new_zeros(length - len(order))])
    real = torch.arange(length) < len(order)
    for start in range(0, length, size):
        yield padded[start : start + size], real[start : start + size]
