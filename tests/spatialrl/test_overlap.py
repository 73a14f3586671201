"""overlap_reward: each rollout chunk scored in a background thread while the next samples, with the same results."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from grpo_fit import fit
from toy_rewards import LeftRed

from spatialrl.config import EvalConfig, GRPOConfig, SamplingConfig
from spatialrl.flux import FluxSource
from spatialrl.grpo import group_advantages
from spatialrl.lora import FluxLoraConfig
from spatialrl.module import FluxGRPOModule
from spatialrl.overlap import score_while_sampling
from spatialrl.rewards import Reward, WeightedReward
from spatialscore.data.datamodule import SyntheticData


def make_module(reward: Reward, *, overlap_reward: bool = False) -> FluxGRPOModule:
    """2 prompts x G=6 per step, sampled in rollout chunks of 5, 5 and 2."""
    return FluxGRPOModule(
        policy=FluxSource(),
        reward=reward,
        lora=FluxLoraConfig(rank=4),
        sampling=SamplingConfig(height=32, width=32, num_steps=3, noise_level=0.9, rollout_batch=5),
        grpo=GRPOConfig(group_size=6, k=2, micro_batch=3, kl_beta=0.1, clip_range=0.2),
        eval=EvalConfig(num_steps=3, at_start=False),
        overlap_reward=overlap_reward,
        seed=0,
    )


@pytest.fixture(scope="module")
def prompt_data(tmp_path_factory) -> SyntheticData:
    return SyntheticData(
        directory=str(tmp_path_factory.mktemp("overlap-data")),
        train_pairs=16,
        val_pairs=2,
        test_pairs=0,
        stages=(1,),
        eval_stages=(1,),
    )


class Recording(LeftRed):
    """LeftRed that records each call's rewards and the thread it ran in."""

    def __init__(self) -> None:
        super().__init__(name="recorded")
        self.calls: list[tuple[str, torch.Tensor]] = []

    def __call__(self, *, images, prompts, metadata=None):
        rewards = super().__call__(images=images, prompts=prompts, metadata=metadata)
        self.calls.append((threading.current_thread().name, rewards.clone()))
        return rewards


def test_overlapped_steps_equal_synchronous_steps_bit_for_bit(prompt_data, monkeypatch):
    advantages: list[torch.Tensor] = []

    def recording_advantages(*args, **kwargs):
        out = group_advantages(*args, **kwargs)
        advantages.append(out.clone())
        return out

    monkeypatch.setattr("spatialrl.module.group_advantages", recording_advantages)
    runs = {}
    for overlap in (False, True):
        advantages.clear()
        recorded = Recording()
        module = make_module(
            WeightedReward(rewards=[recorded, LeftRed(name="b")], weights=[1.0, 0.5]), overlap_reward=overlap
        )
        module.configure_model()
        start = {k: v.clone() for k, v in module.transformer.state_dict().items()}
        logged = fit(module, prompt_data, steps=2)
        runs[overlap] = (recorded.calls, list(advantages), logged, module.transformer.state_dict(), start)
    (sync_calls, sync_adv, sync_log, sync_weights, start), (calls, adv, log, weights, _) = runs[False], runs[True]
    assert [len(r) for _, r in sync_calls] == [12, 12] and [len(r) for _, r in calls] == [5, 5, 2] * 2
    assert {name for name, _ in calls} == {"reward_0"}  # scored in the background thread, not the sampling one
    torch.testing.assert_close(torch.cat([r for _, r in calls]), torch.cat([r for _, r in sync_calls]), rtol=0, atol=0)
    assert len(adv) == len(sync_adv) == 2 and all(torch.equal(a, b) for a, b in zip(adv, sync_adv, strict=True))
    assert all(a.abs().sum() > 0 for a in adv)
    keys = [k for k in sync_log if not k.startswith("train/seconds_")]
    assert {"train/policy_loss", "train/kl", "train/grad_norm", "train/reward_b"} <= set(keys)
    assert {k: log[k] for k in keys} == {k: sync_log[k] for k in keys}
    assert all(torch.equal(weights[k], sync_weights[k]) for k in weights)
    assert any(not torch.equal(weights[k], start[k]) for k in weights)  # the steps did update the adapter


def test_each_chunk_is_scored_while_the_next_samples():
    scored = [threading.Event() for _ in range(4)]
    overlapped = []

    def chunks():
        for i in range(4):
            if i:  # the previous chunk's score arrives while this one is being "sampled"
                overlapped.append(scored[i - 1].wait(timeout=10))
            yield i

    def score(i: int) -> int:
        scored[i].set()
        return 10 * i

    assert score_while_sampling(chunks(), score) == ([0, 1, 2, 3], [0, 10, 20, 30])
    assert overlapped == [True, True, True]


def test_a_scoring_error_stops_the_sampling_and_a_sampling_error_stops_the_scoring():
    failed, sampled = threading.Event(), []

    def chunks(n: int):
        for i in range(n):
            if i:
                failed.wait(timeout=10)
                time.sleep(0.5)  # the failed future settles
            sampled.append(i)
            yield i

    def score(i: int) -> int:
        failed.set()
        raise ValueError(f"reward failed on chunk {i}")

    with pytest.raises(ValueError, match="reward failed on chunk 0"):
        score_while_sampling(chunks(5), score)
    assert sampled == [0, 1]  # chunks 2-4 never sampled

    def broken():
        yield 0
        raise RuntimeError("sampler failed")

    seen = []
    with pytest.raises(RuntimeError, match="sampler failed"):
        score_while_sampling(broken(), seen.append)
    assert seen == [0]  # the chunk already submitted finished before the error propagated
