"""FluxGRPOModule on a tiny FLUX: what one GRPO step changes, Top-k pass counts, micro-batching, errors."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from grpo_fit import fit
from toy_rewards import LeftRed

from spatialrl.config import EvalConfig, GRPOConfig, SamplingConfig
from spatialrl.flux import FluxSource
from spatialrl.grpo import ppo_clip_loss
from spatialrl.lora import FluxLoraConfig
from spatialrl.module import FluxGRPOModule, OptimizerConfig
from spatialrl.rewards import NonFiniteRewardError, Reward, StrictReward, WeightedReward
from spatialrl.rollout import sample_seed
from spatialscore.data.datamodule import PreferenceDataModule, SyntheticData


@pytest.fixture(scope="module")
def prompt_data(tmp_path_factory) -> SyntheticData:
    directory = tmp_path_factory.mktemp("rl-data")
    return SyntheticData(
        directory=str(directory), train_pairs=16, val_pairs=2, test_pairs=0, stages=(1,), eval_stages=(1,)
    )


def make_module(reward: Reward | None = None, **grpo) -> FluxGRPOModule:
    settings = {"group_size": 6, "k": 2, "micro_batch": 3, "kl_beta": 0.1, "clip_range": 0.2, **grpo}
    return FluxGRPOModule(
        policy=FluxSource(),
        reward=reward or LeftRed(),
        lora=FluxLoraConfig(rank=4),
        sampling=SamplingConfig(height=32, width=32, num_steps=3, noise_level=0.9, rollout_batch=5),
        grpo=GRPOConfig(**settings),
        optimizer=OptimizerConfig(lr=1e-2),
        eval=EvalConfig(num_steps=3, at_start=False),
        seed=0,
    )


def weights(module: FluxGRPOModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.transformer.state_dict().items()}


def test_one_step_is_on_policy_and_moves_only_the_adapter(prompt_data):
    module = make_module()
    module.configure_model()
    # The first PPO epoch replays the rollout with unchanged weights: ratio 1 (rollout batch 5, micro-batch 3).
    traj = module._rollout(["a red circle to the left of a blue square"] * 5, positions=[0] * 5, columns=list(range(5)))
    rows, mask = torch.arange(3), torch.ones(3, dtype=torch.bool)
    for j in range(traj.log_probs.shape[1]):
        stats = module._step_loss(traj.select(rows), j, torch.ones(3), mask)[1]
        assert float(stats["approx_kl"]) < 1e-9 and float(stats["clip_fraction"]) == 0
    before = weights(module)
    logged = fit(module, prompt_data)
    after = weights(module)
    # So with ppo_epochs 1 approx_kl and clip_fraction could only ever log 0: they are not logged.
    assert "train/approx_kl" not in logged and "train/clip_fraction" not in logged
    assert {"train/policy_loss", "train/kl", "train/grad_norm"} <= set(logged)
    # The adapter starts at B = 0, so the policy equals the reference: KL exactly 0 on the first step.
    assert logged["train/kl"] == 0
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert logged["train/grad_norm"] > 0


def test_ppo_stats_are_means_over_the_epochs_after_the_first(prompt_data, monkeypatch):
    calls = []

    def recording(**kwargs):
        loss, stats = ppo_clip_loss(**kwargs)
        calls.append({k: float(v) for k, v in stats.items()})
        return loss, stats

    monkeypatch.setattr("spatialrl.module.ppo_clip_loss", recording)
    logged = fit(make_module(ppo_epochs=2), prompt_data)
    # 2 prompts x 2k = 4 kept of 6 -> 8 samples in micro-batches of 3 (3 real each time), 2 trained steps.
    per_epoch = math.ceil(8 / 3) * 2
    assert len(calls) == 2 * per_epoch
    assert all(c["approx_kl"] < 1e-9 for c in calls[:per_epoch])  # epoch 1: on-policy
    later = calls[per_epoch:]
    assert logged["train/approx_kl"] > 0
    for key in ("approx_kl", "clip_fraction"):
        assert logged[f"train/{key}"] == pytest.approx(sum(c[key] for c in later) / len(later), rel=1e-6, abs=1e-12)


def test_topk_trains_on_2k_of_g_samples(prompt_data):
    # 2 prompts x G=6, 3 trained steps (of 3 with the last ODE: sde steps 0, 1 -> K=2), micro-batch 3.
    topk = fit(make_module(k=1), prompt_data)
    full = fit(make_module(filter="none"), prompt_data)
    steps = 2
    assert topk["train/passes"] == math.ceil(2 * 2 / 3) * steps
    assert full["train/passes"] == math.ceil(2 * 6 / 3) * steps
    assert topk["train/kept_fraction"] == pytest.approx(2 / 6)


def test_update_does_not_depend_on_micro_batch(prompt_data):
    results = []
    for micro in (1, 4):
        module = make_module(micro_batch=micro)
        fit(module, prompt_data, steps=2)
        results.append(weights(module))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=5e-5)


def test_shared_initial_noise_and_seeds():
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2) != sample_seed(0, 2, 1)
    starts = {}
    for shared in (True, False):
        module = make_module()
        module.sampling.shared_initial_noise = shared
        module.configure_model()
        traj = module._rollout(
            ["a red circle to the left of a blue square"] * 3, positions=[0, 0, 0], columns=[0, 1, 2]
        )
        starts[shared] = traj.latents[:, 0]  # the latents entering step 0 (a trained step): the initial noise
        assert not torch.equal(traj.next_latents[0, 0], traj.next_latents[1, 0])  # SDE noise differs per sample
    assert torch.equal(starts[True][0], starts[True][1]) and torch.equal(starts[True][0], starts[True][2])
    assert not torch.equal(starts[False][0], starts[False][1])


class NaNOnSecond(Reward):
    name = "nan_second"

    def __call__(self, *, images, prompts, metadata=None):
        out = images.new_zeros(images.shape[0])
        out[1] = float("nan")
        return out


def test_non_finite_reward_is_an_error_naming_reward_and_prompt(prompt_data):
    with pytest.raises(NonFiniteRewardError, match="nan_second.*to the"):
        fit(make_module(NaNOnSecond()), prompt_data)


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"group_size": 6, "k": 4}, "2k > group_size"), ({"group_size": 1}, "group_size"), ({}, "LoRA")],
)
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        FluxGRPOModule(
            reward=LeftRed(), grpo=GRPOConfig(**settings), lora=FluxLoraConfig(rank=0 if not settings else 4)
        )


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ({"optimizer": {"lr": -1e-3}}, r"optimizer.lr must be finite and >= 0, got -0.001"),
        ({"optimizer": {"lr": math.nan}}, r"optimizer.lr must be finite"),
        ({"optimizer": {"lr": math.inf}}, r"optimizer.lr must be finite"),
        ({"grpo": {"kl_beta": -0.01}}, r"grpo.kl_beta must be finite and >= 0, got -0.01"),
        ({"lora": {"rank": 4, "dropout": 0.1}}, r"lora.dropout must be 0 for GRPO, got 0.1"),
        ({"grpo": {"kl_beta": math.nan}}, r"grpo.kl_beta must be finite"),
        ({"grpo": {"k": 0}}, r"grpo.k must be >= 1 with filter 'topk'.*filter: none"),
        ({"grpo": {"k": -1, "filter": "maxvar"}}, r"grpo.k must be >= 1 with filter 'maxvar'"),
        ({"grpo": {"group_size": 6, "k": 4, "filter": "maxvar"}}, "2k > group_size"),
        ({"grpo": {"micro_batch": 0}}, r"grpo.micro_batch must be an integer >= 1, got 0"),
        ({"grpo": {"micro_batch": -2}}, r"grpo.micro_batch must be an integer >= 1, got -2"),
        ({"grpo": {"ppo_epochs": 0}}, r"grpo.ppo_epochs must be an integer >= 1, got 0"),
        ({"grpo": {"clip_range": 0.0}}, r"grpo.clip_range must be finite and > 0"),
        ({"sampling": {"rollout_batch": 0}}, r"sampling.rollout_batch must be an integer >= 1, got 0"),
        ({"sampling": {"num_steps": 0}}, r"sampling.num_steps must be an integer >= 1, got 0"),
        ({"sampling": {"num_steps": 1}}, r"sampling.num_steps must be >= 2 for GRPO, got 1.*trains nothing"),
        ({"sampling": {"num_steps": 1, "sde_fraction": 1.0}}, r"sampling.sde_fraction=1.0 .*no trained step"),
        ({"sampling": {"num_steps": 6, "sde_fraction": 0.05}}, r"sampling.sde_fraction=0.05 .*no trained step"),
        ({"sampling": {"num_steps": 3, "sde_steps": []}}, r"sampling.sde_steps=\[\] trains no step"),
        ({"sampling": {"num_steps": 3, "sde_steps": [3]}}, r"sampling.sde_steps must be step indices in \[0, 3\)"),
        ({"sampling": {"num_steps": 3, "sde_steps": [2], "kind": "cps", "noise_level": 0.8}}, "trains no step"),
    ],
)
def test_settings_that_train_nothing_or_fail_later_are_refused_by_name(specs, message):
    kinds = {"grpo": GRPOConfig, "sampling": SamplingConfig, "optimizer": OptimizerConfig, "lora": FluxLoraConfig}
    with pytest.raises(ValueError, match=message):
        kwargs = {"lora": FluxLoraConfig(rank=4)} | {name: kinds[name](**values) for name, values in specs.items()}
        FluxGRPOModule(reward=LeftRed(), **kwargs)


@pytest.mark.parametrize(
    "sampling",
    [
        {"num_steps": 2},  # one stochastic step, then the last (ODE) one
        {"num_steps": 1, "sde_steps": [0]},  # the only step listed explicitly: stochastic and trained
        {"num_steps": 6, "sde_fraction": 0.2},
        {"num_steps": 3, "sde_steps": [1, 2], "kind": "cps", "noise_level": 0.8},
    ],
)
def test_settings_that_train_a_step_are_accepted(sampling):
    FluxGRPOModule(
        reward=LeftRed(),
        lora=FluxLoraConfig(rank=4),
        sampling=SamplingConfig(**sampling),
        grpo=GRPOConfig(kl_beta=0.0, filter="none", k=0),
        optimizer=OptimizerConfig(lr=0.0),
    )


def test_single_step_sampling_trained_nothing(prompt_data):
    """What the refusal of num_steps 1 prevents: no trained step, so the update was a silent no-op."""
    module = make_module()
    module.sampling.num_steps = 1  # bypasses the check made at construction
    module.configure_model()
    before = weights(module)
    logged = fit(module, prompt_data)
    assert logged["train/passes"] == 0 and logged["train/grad_norm"] == 0
    after = weights(module)
    assert all(torch.equal(before[k], after[k]) for k in before)


class GradReward(Reward):
    """A differentiable reward: its values carry a graph (requires_grad=True), as a reward model's can."""

    name = "grad_reward"

    def __init__(self) -> None:
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def __call__(self, *, images, prompts, metadata=None):
        return LeftRed()(images=images, prompts=prompts) * self.scale


def test_reward_with_a_graph_is_detached(prompt_data):
    reward = GradReward()
    assert reward(images=torch.rand(2, 3, 8, 8), prompts=["a", "b"]).requires_grad
    # 3 micro-batches x 2 trained steps x 2 PPO epochs: 12 backward passes through the same rewards.
    module = make_module(reward, ppo_epochs=2)
    logged = fit(module, prompt_data)
    assert math.isfinite(logged["train/reward"]) and logged["train/grad_norm"] > 0
    assert reward.scale.grad is None  # nothing was back-propagated into the reward


def test_bad_kl_convention():
    with pytest.raises(ValueError, match="kl_convention"):
        FluxGRPOModule(reward=LeftRed(), grpo=GRPOConfig(kl_convention="flowgrpo"), lora=FluxLoraConfig(rank=4))


@pytest.mark.parametrize(
    ("kind", "noise_level", "message"),
    [
        ("sde", math.nan, "sampling.noise_level must be finite.*'sde'.*0.7"),
        ("dance", math.inf, "sampling.noise_level must be finite.*'dance'.*eta.*0.3"),
        ("cps", 1.5, r"sampling.noise_level must be in \[0, 1\] for kind 'cps'"),
        ("sde", -0.5, "sampling.noise_level must be >= 0 for kind 'sde'"),
        ("cps", 0.0, "must be > 0: GRPO trains stochastic steps"),
    ],
)
def test_bad_noise_levels_name_the_kind(kind, noise_level, message):
    with pytest.raises(ValueError, match=message):
        FluxGRPOModule(
            reward=LeftRed(), lora=FluxLoraConfig(rank=4), sampling=SamplingConfig(kind=kind, noise_level=noise_level)
        )


@pytest.mark.parametrize("kind", ["sde", "cps"])
def test_flow_grpo_kl_convention_is_the_exact_kl_times_the_step_size(kind):
    module = make_module()
    module.sampling.kind = kind
    module.configure_model()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference (B = 0 at initialisation)
        for name, param in module.transformer.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    traj = module._rollout(["a red circle to the left of a blue square"] * 2, positions=[0, 0], columns=[0, 1])
    mask, adv = torch.ones(2, dtype=torch.bool), torch.zeros(2)
    kls = {}
    for convention in ("exact", "flow_grpo"):
        module.grpo.kl_convention = convention
        kls[convention] = torch.stack([module._step_loss(traj, j, adv, mask)[2].detach().sum() for j in range(2)])
    h = traj.sigma - traj.sigma_next  # steps 0 and 1 of 3 at 32 px
    torch.testing.assert_close(h, torch.tensor([0.2404, 0.3183]), rtol=0, atol=1e-4)
    assert bool((kls["exact"] > 0).all())
    torch.testing.assert_close(kls["flow_grpo"], kls["exact"] * (h if kind == "sde" else 1.0), rtol=1e-5, atol=0)


def test_activation_checkpointing_gives_the_same_update(prompt_data):
    results = []
    for checkpointing in (False, True):
        module = make_module()
        module.activation_checkpointing = checkpointing
        fit(module, prompt_data)
        assert module.transformer.is_gradient_checkpointing == checkpointing
        results.append(weights(module))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-5, atol=1e-7)


def test_weighted_reward_components_are_logged(prompt_data):
    reward = WeightedReward(rewards=[LeftRed(name="a"), LeftRed(name="b")], weights=[1.0, 0.5])
    logged = fit(make_module(reward), prompt_data)
    assert logged["train/reward_a"] == pytest.approx(logged["train/reward_b"])
    assert logged["train/reward_mean"] == pytest.approx(1.5 * logged["train/reward_a"], rel=1e-5, abs=1e-7)
    assert "train/reward_weighted" not in logged  # the total is train/reward_mean, not logged twice


def test_strict_reward_diagnostics_and_prompt_grid_reach_every_logger(prompt_data, tmp_path):
    from lightning.pytorch.loggers import CSVLogger
    from PIL import Image

    module = make_module(StrictReward(clean_credit=0.5), group_size=4, k=1)
    module.eval_spec = EvalConfig(num_steps=2, samples_per_prompt=2, grid_prompts=1, at_start=True)
    dm = PreferenceDataModule(synthetic=prompt_data, batch_size=2, view="prompts")
    logger = CSVLogger(tmp_path, name="csv")
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=1,
        check_val_every_n_epoch=None,
    )
    trainer.fit(module, dm)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for name in ("strict_correct", "strict_extra", "strict_missing", "strict_lenient"):
        assert 0 <= logged[f"val/{name}"] <= 1 and f"train/reward_{name}" in logged
    assert logged["val/strict_correct"] <= logged["val/reward"] <= logged["val/strict_correct"] + 0.5
    images = sorted((tmp_path / "csv" / "version_0" / "images").glob("val_samples-step-*.png"))
    assert [p.name for p in images] == ["val_samples-step-0.png", "val_samples-step-1.png"]
    with Image.open(images[0]) as grid:  # one prompt row: a title line above two captioned samples
        assert grid.size == (2 * (96 + 4) + 4, 96 + 2 * 14 + 4 + 4)


def test_exported_spatialscore_rewards_a_real_grpo_step(prompt_data, tmp_path, tiny_cache):
    """The paper loop's joint: a saved SpatialScore as the only reward of a GRPO step, each rollout image scored
    as SpatialScore.score scores it, and the adapter moved by those rewards."""
    from spatialrl.rewards import SpatialScoreReward
    from spatialscore.model import SpatialScore, SpatialScoreConfig

    torch.manual_seed(0)
    SpatialScore.build(SpatialScoreConfig()).save_pretrained(tmp_path / "rm")

    class Recording(SpatialScoreReward):
        def __call__(self, *, images, prompts, metadata=None):
            rewards = super().__call__(images=images, prompts=prompts, metadata=metadata)
            self.seen.append((images.clone(), list(prompts), rewards))
            return rewards

    reward = Recording(str(tmp_path / "rm"), batch_size=4)
    reward.seen = []
    module = make_module(reward)
    module.configure_model()
    before = weights(module)
    logged = fit(module, prompt_data)
    assert reward.seen and math.isfinite(logged["train/reward"])
    model = SpatialScore.from_pretrained(tmp_path / "rm", device="cpu")
    for images, prompts, rewards in reward.seen:
        expected = model.score(prompts=prompts, images=list(images), batch_size=len(prompts)).mu
        torch.testing.assert_close(rewards, expected, rtol=0, atol=1e-5)
        assert rewards.std() > 0  # different rollouts, different scores: the group advantages are not all zero
    after = weights(module)
    assert any(not torch.equal(before[k], after[k]) for k in before)
