import itertools
import math

import numpy as np
import pytest
import torch

from spatialrl.grpo import (
    group_advantages,
    kl_step_size,
    kl_to_reference,
    maxvar_filter,
    micro_batches,
    objective_scale,
    ppo_clip_loss,
    select_groups,
    step_objective,
    topk_filter,
)
from spatialrl.sde import sde_step


def test_topk_filter_keeps_lowest_and_highest():
    rewards = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2])
    assert topk_filter(rewards, 2).tolist() == [1, 2, 4, 5]
    assert topk_filter(rewards, 1).tolist() == [1, 2]
    assert topk_filter(rewards, 3).tolist() == [0, 1, 2, 3, 4, 5]
    assert topk_filter(rewards, 10).tolist() == [0, 1, 2, 3, 4, 5]
    assert topk_filter(rewards, 2).dtype == torch.long


def test_topk_filter_breaks_ties_by_index():
    assert topk_filter(torch.ones(5), 1).tolist() == [0, 4]
    assert topk_filter(torch.tensor([2.0, 1.0, 1.0, 1.0, 2.0, 2.0]), 2).tolist() == [1, 2, 4, 5]


def test_filters_reject_bad_input():
    for fn in (topk_filter, maxvar_filter):
        with pytest.raises(ValueError):
            fn(torch.ones(4), 0)
        with pytest.raises(ValueError):
            fn(torch.ones(2, 4), 1)
        with pytest.raises(ValueError):
            fn(torch.tensor([1.0, float("nan")]), 1)


def brute_force_max_variance(values, k):
    return max(np.var([values[i] for i in subset]) for subset in itertools.combinations(range(len(values)), k))


def test_maxvar_filter_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    for trial in range(40):
        size = 2 + trial % 7
        rewards = torch.randn(size, generator=gen, dtype=torch.float64)
        if trial % 3 == 0:
            rewards = rewards.round()  # ties
        for k in range(1, size + 1):
            kept = maxvar_filter(rewards, k)
            assert kept.tolist() == sorted(set(kept.tolist())) and len(kept) == k
            got = np.var(rewards[kept].numpy())
            assert got == pytest.approx(brute_force_max_variance(rewards.tolist(), k), rel=1e-9, abs=1e-12)


def test_maxvar_filter_hand_examples():
    # {0, 10} is both "bottom 1 + top 1" and "top 2" (index 2 ranks above 0 and 1);
    # exact ties in variance take the fewest from the bottom
    assert maxvar_filter(torch.tensor([0.0, 0.0, 0.0, 10.0]), 2).tolist() == [2, 3]
    assert maxvar_filter(torch.tensor([0.0, 4.0, 5.0, 10.0]), 2).tolist() == [0, 3]
    # one outlier: the best 3-subset is the outlier with the two values farthest from it
    assert maxvar_filter(torch.tensor([5.0, 0.0, 1.0, 100.0, 2.0]), 3).tolist() == [1, 2, 3]
    assert maxvar_filter(torch.tensor([3.0, 1.0]), 5).tolist() == [0, 1]


def test_select_groups():
    rewards = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.7, 0.2], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    topk = select_groups(rewards, 2)
    assert topk.dtype == torch.bool and topk.shape == (2, 6)
    assert topk[0].nonzero().squeeze(-1).tolist() == [1, 2, 4, 5]
    assert topk[1].nonzero().squeeze(-1).tolist() == [0, 1, 4, 5]
    maxvar = select_groups(rewards, 2, method="maxvar")
    for row in range(2):
        assert maxvar[row].nonzero().squeeze(-1).tolist() == maxvar_filter(rewards[row], 4).tolist()
    assert bool(select_groups(rewards, 2, method="none").all())
    with pytest.raises(ValueError):
        select_groups(rewards, 2, method="random")
    with pytest.raises(ValueError):
        select_groups(rewards, 0)


def test_select_groups_matches_per_row_topk():
    rewards = torch.randn(5, 24, generator=torch.Generator().manual_seed(1))
    mask = select_groups(rewards, 6)
    assert mask.sum(dim=1).tolist() == [12] * 5
    for row in range(5):
        assert mask[row].nonzero().squeeze(-1).tolist() == topk_filter(rewards[row], 6).tolist()


def test_group_advantages_group_std():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.1, 0.1, 0.1, 0.1]])
    adv = group_advantages(rewards)
    std = math.sqrt(1.25)  # population std of 1, 2, 3, 4
    expected = [(r - 2.5) / (std + 1e-4) for r in (1.0, 2.0, 3.0, 4.0)]
    torch.testing.assert_close(adv[0], torch.tensor(expected))
    assert torch.equal(adv[1], torch.zeros(4))


def test_group_advantages_constant_groups_are_exactly_zero():
    for value in (0.1, 1 / 3, 7.7, -2.9):
        rewards = torch.full((3, 24), value)
        for mode in ("group", "global", "none"):
            assert torch.equal(group_advantages(rewards, std_mode=mode), torch.zeros(3, 24))


def test_group_advantages_mask():
    rewards = torch.tensor([[1.0, 100.0, 3.0, -50.0], [2.0, 2.0, 5.0, 9.0]])
    mask = torch.tensor([[True, False, True, False], [True, True, False, False]])
    adv = group_advantages(rewards, mask=mask)
    expected = torch.tensor([[-1 / (1 + 1e-4), 0.0, 1 / (1 + 1e-4), 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected)
    assert torch.equal(adv[1], torch.zeros(4))


def test_group_advantages_global_and_none():
    rewards = torch.tensor([[1.0, 3.0], [10.0, 14.0]])
    global_std = float(np.std([1.0, 3.0, 10.0, 14.0]))
    adv = group_advantages(rewards, std_mode="global")
    torch.testing.assert_close(adv, torch.tensor([[-1.0, 1.0], [-2.0, 2.0]]) / (global_std + 1e-4))
    torch.testing.assert_close(group_advantages(rewards, std_mode="none"), torch.tensor([[-1.0, 1.0], [-2.0, 2.0]]))
    mask = torch.tensor([[True, True], [True, False]])
    kept_std = float(np.std([1.0, 3.0, 10.0]))
    torch.testing.assert_close(
        group_advantages(rewards, std_mode="global", mask=mask),
        torch.tensor([[-1.0 / (kept_std + 1e-4), 1.0 / (kept_std + 1e-4)], [0.0, 0.0]]),
    )


def test_group_advantages_clip():
    rewards = torch.zeros(1, 40)
    rewards[0, 7] = 1.0
    raw = (1 - 1 / 40) / (math.sqrt(1 / 40 * 39 / 40) + 1e-4)
    assert raw > 5
    adv = group_advantages(rewards)
    assert adv[0, 7].item() == pytest.approx(5.0)
    assert group_advantages(rewards, clip=None)[0, 7].item() == pytest.approx(raw, rel=1e-5)
    with pytest.raises(ValueError):
        group_advantages(rewards, clip=0.0)


def test_group_advantages_flat_with_group_ids_equals_rows():
    rewards = torch.randn(3, 6, generator=torch.Generator().manual_seed(2))
    mask = select_groups(rewards, 2)
    perm = torch.randperm(18, generator=torch.Generator().manual_seed(3))
    ids = torch.tensor([10, 20, 30]).repeat_interleave(6)
    flat = group_advantages(rewards.reshape(-1)[perm], group_ids=ids[perm], mask=mask.reshape(-1)[perm])
    rows = group_advantages(rewards, mask=mask)
    torch.testing.assert_close(flat, rows.reshape(-1)[perm])
    with pytest.raises(ValueError):
        group_advantages(rewards.reshape(-1))
    with pytest.raises(ValueError):
        group_advantages(rewards, group_ids=ids)
    nan_rewards = torch.tensor([[1.0, float("nan"), 2.0]])
    with pytest.raises(ValueError):
        group_advantages(nan_rewards)
    masked = group_advantages(nan_rewards, mask=torch.tensor([[True, False, True]]))
    assert bool(torch.isfinite(masked).all()) and masked[0, 1].item() == 0.0


@pytest.mark.parametrize("std_mode", ["group", "global"])
def test_group_advantages_of_huge_rewards_equal_those_of_small_ones(std_mode):
    # float32 squares of 1e20 overflow (inf variance) and zeroed every advantage; the scale must not matter.
    small = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 1.0, 3.0, 2.0]])
    huge = small * 1e20
    expected = group_advantages(small, std_mode=std_mode, eps=0.0)
    for rewards in (huge, huge.to(torch.bfloat16), -huge, torch.tensor([[3e38, -3e38, 1e38, 0.0]])):
        adv = group_advantages(rewards, std_mode=std_mode)
        assert adv.dtype == torch.float32 and bool(torch.isfinite(adv).all())
        assert bool((adv != 0).any())
    torch.testing.assert_close(group_advantages(huge, std_mode=std_mode), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(group_advantages(-huge, std_mode=std_mode), -expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="inf"):
        group_advantages(torch.tensor([[1.0, float("inf")]]))


def test_ppo_clip_loss_hand_computed():
    ratio = torch.tensor([1.0, 1.5, 0.5, 1.1])
    old = torch.tensor([-0.3, 0.2, 1.0, -2.0])
    advantages = torch.tensor([1.0, 1.0, -1.0, 2.0])
    loss, stats = ppo_clip_loss(log_prob=old + ratio.log(), old_log_prob=old, advantages=advantages, clip_range=0.2)
    # elementwise max(-A rho, -A clip(rho, 0.8, 1.2)): -1, max(-1.5, -1.2), max(0.5, 0.8), -2.2
    assert loss.item() == pytest.approx((-1.0 - 1.2 + 0.8 - 2.2) / 4, rel=1e-6)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    expected_kl = float(np.mean([(r - 1) - math.log(r) for r in (1.0, 1.5, 0.5, 1.1)]))
    assert stats["approx_kl"].item() == pytest.approx(expected_kl, rel=1e-5)
    assert stats["ratio_mean"].item() == pytest.approx(1.025, rel=1e-6)


def test_ppo_clip_loss_on_policy_gradient_is_policy_gradient():
    log_prob = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    advantages = torch.tensor([0.7, -1.3, 2.0])
    loss, stats = ppo_clip_loss(
        log_prob=log_prob, old_log_prob=log_prob.detach(), advantages=advantages, clip_range=1e-4
    )
    loss.backward()
    torch.testing.assert_close(log_prob.grad, -advantages / 3)
    assert stats["ratio_mean"].item() == 1.0 and stats["clip_fraction"].item() == 0.0
    assert not stats["approx_kl"].requires_grad


def test_ppo_clip_loss_rejects_bad_shapes():
    with pytest.raises(ValueError):
        ppo_clip_loss(log_prob=torch.zeros(3), old_log_prob=torch.zeros(4), advantages=torch.zeros(3), clip_range=0.1)
    with pytest.raises(ValueError):
        ppo_clip_loss(
            log_prob=torch.zeros(3), old_log_prob=torch.zeros(3), advantages=torch.zeros(3, 1), clip_range=0.1
        )
    with pytest.raises(ValueError):
        ppo_clip_loss(log_prob=torch.zeros(3), old_log_prob=torch.zeros(3), advantages=torch.zeros(3), clip_range=0.0)


def test_kl_to_reference_hand_computed_and_differentiable():
    mean = torch.tensor([[[1.0, 2.0]], [[0.0, 0.0]]], requires_grad=True)
    ref_mean = torch.tensor([[[0.0, 0.0]], [[3.0, -1.0]]])
    std = torch.tensor([0.5, 2.0])
    kl = kl_to_reference(mean=mean, ref_mean=ref_mean, std=std)
    expected = torch.tensor([(1 + 4) / 2 / (2 * 0.25), (9 + 1) / 2 / (2 * 4.0)])
    torch.testing.assert_close(kl, expected)
    assert kl.requires_grad
    kl.sum().backward()
    # d/d mean of mean_elements((m - r)^2 / (2 s^2)) = (m - r) / (n s^2)
    torch.testing.assert_close(mean.grad, (mean - ref_mean).detach() / (2 * std.view(-1, 1, 1) ** 2))
    torch.testing.assert_close(kl_to_reference(mean=mean, ref_mean=ref_mean, std=0.5)[0], expected[0])


def test_kl_to_reference_is_gaussian_kl():
    mean = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(5))
    ref_mean = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(6))
    std = torch.tensor([0.3, 0.9])
    p = torch.distributions.Normal(mean, std.view(-1, 1, 1))
    q = torch.distributions.Normal(ref_mean, std.view(-1, 1, 1))
    torch.testing.assert_close(
        kl_to_reference(mean=mean, ref_mean=ref_mean, std=std),
        torch.distributions.kl_divergence(p, q).mean(dim=(1, 2)),
    )
    with pytest.raises(ValueError):
        kl_to_reference(mean=mean, ref_mean=ref_mean[:1], std=std)


def test_kl_step_size_scales_the_exact_kl_by_h():
    mean = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1))
    ref_mean = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(2))
    std = torch.tensor([0.2, 0.5, 0.05])
    exact = kl_to_reference(mean=mean, ref_mean=ref_mean, std=std)
    torch.testing.assert_close(kl_to_reference(mean=mean, ref_mean=ref_mean, std=std, step_size=0.137), exact * 0.137)
    h = torch.tensor([0.096, 0.169, 0.211])
    torch.testing.assert_close(kl_to_reference(mean=mean, ref_mean=ref_mean, std=std, step_size=h), exact * h)
    for bad in (0.0, -0.1, torch.ones(2)):
        with pytest.raises(ValueError, match="step_size"):
            kl_to_reference(mean=mean, ref_mean=ref_mean, std=std, step_size=bad)


@pytest.mark.parity
@pytest.mark.parametrize(("sigma", "sigma_next"), [(1.0, 0.904), (0.653, 0.484), (0.484, 0.273)])
def test_flow_grpo_convention_is_flow_grpos_kl_of_the_sde_step(sigma, sigma_next):
    # Flow-GRPO: kl = ((mean - ref_mean)^2).mean(dims) / (2 std_dev_t^2), std_dev_t = a sqrt(s / (1 - s)) its g
    # (s -> sigma_max = the second sigma at s = 1), and the sampled transition std is std_dev_t sqrt(h)
    a, sigma_max = 0.9, 0.904
    x, v, v_ref = (torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    kwargs = dict(sample=x, sigma=sigma, sigma_next=sigma_next, noise_level=a, kind="sde")
    out, ref = sde_step(velocity=v, **kwargs), sde_step(velocity=v_ref, **kwargs)
    g = a * math.sqrt(sigma / (1 - (sigma_max if sigma == 1 else sigma)))
    flow_grpo = ((out.mean - ref.mean) ** 2).mean(dim=(1, 2)) / (2 * g**2)
    step = kl_step_size("flow_grpo", kind="sde", sigma=sigma, sigma_next=sigma_next)
    assert step == pytest.approx(sigma - sigma_next)
    ours = kl_to_reference(mean=out.mean, ref_mean=ref.mean, std=out.std, step_size=step)
    torch.testing.assert_close(ours, flow_grpo, rtol=1e-5, atol=0)
    exact = kl_to_reference(mean=out.mean, ref_mean=ref.mean, std=out.std)
    assert bool((exact > 0).all())
    torch.testing.assert_close(ours / exact, torch.full((2,), sigma - sigma_next), rtol=1e-5, atol=0)


def test_kl_step_size_per_convention_and_kind():
    assert kl_step_size("exact", kind="sde", sigma=0.79, sigma_next=0.65) is None
    assert kl_step_size("flow_grpo", kind="dance", sigma=0.79, sigma_next=0.65) == pytest.approx(0.14)
    assert kl_step_size("flow_grpo", kind="cps", sigma=0.79, sigma_next=0.65) is None  # Flow-GRPO divides by std
    with pytest.raises(ValueError, match="flow_grpo"):
        kl_step_size("flowgrpo", kind="sde", sigma=0.79, sigma_next=0.65)


@pytest.mark.parametrize(("kept", "micro_batch", "kl_beta"), [([5], 2, 0.0), ([5, 2, 0], 2, 0.3), ([3, 4], 4, 0.05)])
def test_step_objectives_over_micro_batches_steps_and_ranks_are_the_mean_over_kept_terms(kept, micro_batch, kl_beta):
    """Each rank pads to the most kept samples of any rank and weights every (micro-batch, step) term by
    ``step_objective``; averaged over ranks (data parallelism's gradient mean) that is the mean PPO loss plus
    beta times the mean KL over all kept (sample, step) terms of the global batch: padding weighs nothing, and a
    rank without kept samples adds 0."""
    steps, world = 3, len(kept)
    gen = torch.Generator().manual_seed(sum(kept) + micro_batch)
    losses = [torch.randn(n, steps, generator=gen) for n in kept]  # per-sample, per-step policy loss
    kls = [torch.rand(n, steps, generator=gen) for n in kept]
    scale = objective_scale(kept_terms=sum(kept) * steps, world=world)
    length = max(kept)
    per_rank = []
    for loss, kl, n in zip(losses, kls, kept, strict=True):
        total, rows_seen = torch.zeros(()), []
        # padding rows point at sample 0, which a rank without samples does not have: give it one to index
        loss, kl = (loss, kl) if n else (torch.full((1, steps), 7.0), torch.full((1, steps), 7.0))
        for rows, real in micro_batches(torch.arange(n), length=length, size=micro_batch):
            rows_seen += rows[real].tolist()
            for j in range(steps):
                weight = real.float()
                mean_loss = (loss[rows, j] * weight).sum() / weight.sum().clamp_min(1)  # ppo_clip_loss's masked mean
                total = total + step_objective(
                    policy_loss=mean_loss, real=real, kl=kl[rows, j], kl_beta=kl_beta, scale=scale
                )
        assert rows_seen == list(range(n))
        per_rank.append(total)
    expected = (
        torch.cat([x.reshape(-1) for x in losses]).mean() + kl_beta * torch.cat([x.reshape(-1) for x in kls]).mean()
    )
    torch.testing.assert_close(torch.stack(per_rank).mean(), expected, rtol=1e-6, atol=1e-6)


def test_micro_batches_pad_every_rank_to_the_same_passes():
    chunks = list(micro_batches(torch.tensor([4, 1, 3]), length=5, size=2))
    assert [r.tolist() for r, _ in chunks] == [[4, 1], [3, 0], [0]]
    assert [m.tolist() for _, m in chunks] == [[True, True], [True, False], [False]]
    assert list(micro_batches(torch.tensor([], dtype=torch.long), length=0, size=2)) == []
    with pytest.raises(ValueError, match="len"):
        list(micro_batches(torch.arange(3), length=2, size=2))


def test_step_objective_without_kl_and_bad_shapes():
    real = torch.tensor([True, False, True])
    out = step_objective(policy_loss=torch.tensor(0.5), real=real, kl=torch.ones(3), kl_beta=0.0, scale=0.25)
    assert float(out) == 0.5 * 2 * 0.25
    assert float(
        step_objective(policy_loss=torch.tensor(0.5), real=real, kl=torch.ones(3), kl_beta=0.1)
    ) == pytest.approx(1.2)
    with pytest.raises(ValueError, match="differ in shape"):
        step_objective(policy_loss=torch.tensor(0.5), real=real, kl=torch.ones(2), kl_beta=0.1)
    assert objective_scale(kept_terms=0, world=2) == 2.0
