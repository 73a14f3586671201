"""Spatial-RL rewards: rule checker, SpatialScore checkpoint, weighted sums, validation, config parsing."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from PIL import Image
from torch import Tensor

from spatialrl.rewards import (
    NonFiniteRewardError,
    Reward,
    RuleReward,
    SpatialScoreReward,
    WeightedReward,
    compute_reward,
    reward_components,
)
from spatialscore.data.synthetic import RuleChecker, generate_pair, render_scene
from spatialscore.model import SpatialScore

PROMPTS = [
    "a red circle to the left of a blue square",
    "a green triangle above a yellow circle",
    "a purple diamond in the upper-left corner; an orange square below a purple diamond",
    "from left to right: a red circle, a blue square and a cyan diamond",
    "a magenta square at the top edge",
]


class Fixed(Reward):
    """Returns preset values whatever the images (for testing sums and validation)."""

    def __init__(self, values: Sequence[float], *, name: str = "fixed") -> None:
        self.values = torch.tensor(values, dtype=torch.float64)
        self.name = name

    def __call__(
        self, *, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> Tensor:
        return self.values


def to_tensor(images: Sequence[Image.Image]) -> Tensor:
    """PIL images as a float (B, 3, H, W) batch in [0, 1]."""
    return torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1) for i in images]).float() / 255


def blank(batch: int, size: int = 32) -> Tensor:
    return torch.full((batch, 3, size, size), 0.5)


# ---------------------------------------------------------------------------------------------------------
# RuleReward
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [1, 4])
def test_rule_reward_is_one_for_chosen_and_zero_for_rejected(stage):
    pictures, prompts, expected = [], [], []
    for seed in range(3):
        pair = generate_pair(seed=(11, seed), stage=stage, image_size=64)
        perfect, perturbed = render_scene(pair.perfect), render_scene(pair.perturbed)
        # the pair and its mirror: each prompt's own image is chosen, the other image rejected
        pictures += [perfect, perturbed, perturbed, perfect]
        prompts += [pair.perfect.prompt, pair.perfect.prompt, pair.perturbed.prompt, pair.perturbed.prompt]
        expected += [1.0, 0.0, 1.0, 0.0]
    rewards = compute_reward(RuleReward(), images=to_tensor(pictures), prompts=prompts)
    assert rewards.dtype == torch.float32 and rewards.shape == (12,)
    assert rewards.tolist() == expected


def test_rule_reward_matches_rule_checker_with_fractions():
    pictures, prompts, fractions = [], [], []
    for seed in range(4):
        pair = generate_pair(seed=(5, seed), stage=6, image_size=64)
        changed = sum(a != b for a, b in zip(pair.perfect.relations, pair.perturbed.relations, strict=True))
        pictures += [render_scene(pair.perfect), render_scene(pair.perturbed)]
        prompts += [pair.perfect.prompt, pair.perfect.prompt]
        fractions += [1.0, 1.0 - changed / len(pair.perfect.relations)]
    images = to_tensor(pictures)
    rewards = RuleReward()(images=images, prompts=prompts)
    assert rewards.tolist() == pytest.approx(RuleChecker()(images=pictures, prompts=prompts))
    assert rewards.tolist() == pytest.approx(fractions)
    assert any(0 < f < 1 for f in fractions), "no multi-relation pair drawn: pick other seeds"
    assert RuleReward(tolerance=1.0, min_pixels=10**6)(images=images, prompts=prompts).tolist() == [0.0] * 8


def test_rule_reward_names_an_unparseable_prompt():
    prompts = [PROMPTS[0], "a red blob left of a blue square"]
    with pytest.raises(ValueError, match=re.escape("reward 'rule' cannot check prompt 1 'a red blob left of")):
        RuleReward()(images=blank(2), prompts=prompts)
    with pytest.raises(ValueError, match="prompt 0 '': empty prompt"):
        RuleReward()(images=blank(1), prompts=[""])


# ---------------------------------------------------------------------------------------------------------
# SpatialScoreReward
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(spatialscore_export: Path) -> tuple[SpatialScore, str]:
    """A tiny random SpatialScore and the folder it was saved to."""
    return SpatialScore.from_pretrained(spatialscore_export), str(spatialscore_export)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """Five random uint8 (H, W, 3) images."""
    return np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)


def test_spatialscore_reward_equals_model_score(checkpoint, pixels):
    model, path = checkpoint
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    rewards = compute_reward(SpatialScoreReward(path), images=images, prompts=PROMPTS)
    assert rewards.dtype == torch.float32 and rewards.device == images.device
    pil = model.score(prompts=PROMPTS, images=[Image.fromarray(p) for p in pixels]).mu
    torch.testing.assert_close(rewards, pil, rtol=0, atol=1e-5)
    torch.testing.assert_close(rewards, model.score(prompts=PROMPTS, images=list(pixels)).mu, rtol=0, atol=1e-5)
    # atol 1e-5 is meaningful only if the scores depend on the pixels by much more than that
    inverted = SpatialScoreReward(path)(images=1 - images, prompts=PROMPTS)
    assert (inverted - rewards).abs().max() > 1e-3


def test_spatialscore_reward_batch_size_does_not_matter(checkpoint, pixels):
    _, path = checkpoint
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    one = SpatialScoreReward(path, batch_size=1)(images=images, prompts=PROMPTS)
    four = SpatialScoreReward(path, batch_size=4)(images=images, prompts=PROMPTS)
    torch.testing.assert_close(one, four, rtol=0, atol=1e-5)


def test_spatialscore_reward_uncertainty_penalty(checkpoint, pixels):
    model, path = checkpoint
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    out = model.score(prompts=PROMPTS, images=list(pixels))
    expected = out.mu - 0.5 * torch.nn.functional.softplus(out.log_sigma)
    rewards = SpatialScoreReward(path, uncertainty_penalty=0.5, device="cpu")(images=images, prompts=PROMPTS)
    torch.testing.assert_close(rewards, expected, rtol=0, atol=1e-5)


def test_spatialscore_reward_loads_lazily_and_checks_arguments(tmp_path):
    reward = SpatialScoreReward(str(tmp_path / "missing"))  # nothing is read yet
    with pytest.raises(FileNotFoundError, match="not a SpatialScore folder"):
        reward(images=blank(1), prompts=PROMPTS[:1])
    with pytest.raises(ValueError, match="batch_size"):
        SpatialScoreReward("x", batch_size=0)
    with pytest.raises(ValueError, match="uncertainty_penalty"):
        SpatialScoreReward("x", uncertainty_penalty=-1.0)


# ---------------------------------------------------------------------------------------------------------
# WeightedReward
# ---------------------------------------------------------------------------------------------------------


def test_weighted_reward_sum_and_components():
    a, b = Fixed([1.0, 2.0, 3.0], name="a"), Fixed([10.0, 0.0, -4.0], name="b")
    weighted = WeightedReward(rewards=[a, b], weights=[0.5, 2.0], name="total")
    images = blank(3)
    parts = weighted.components(images=images, prompts=PROMPTS[:3])
    assert list(parts) == ["total", "a", "b"] == list(weighted.component_names())
    assert all(v.dtype == torch.float32 for v in parts.values())
    expected = [0.5 * 1 + 2 * 10, 0.5 * 2 + 2 * 0, 0.5 * 3 + 2 * -4]
    assert parts["total"].tolist() == expected and parts["b"].tolist() == [10.0, 0.0, -4.0]
    assert compute_reward(weighted, images=images, prompts=PROMPTS[:3]).tolist() == expected


def test_weighted_reward_argument_errors():
    a, b = Fixed([1.0], name="a"), Fixed([2.0], name="b")
    with pytest.raises(ValueError, match="2 rewards but 1 weights"):
        WeightedReward(rewards=[a, b], weights=[1.0])
    with pytest.raises(ValueError, match=re.escape("duplicated: ['a']")):
        WeightedReward(rewards=[a, Fixed([3.0], name="a")], weights=[1.0, 1.0])
    with pytest.raises(ValueError, match=re.escape("duplicated: ['b']")):
        WeightedReward(rewards=[a, b], weights=[1.0, 1.0], name="b")
    with pytest.raises(ValueError, match="at least one"):
        WeightedReward(rewards=[], weights=[])
    with pytest.raises(ValueError, match="finite"):
        WeightedReward(rewards=[a], weights=[float("nan")])


def test_weighted_reward_names_the_component_that_returned_nan():
    weighted = WeightedReward(rewards=[Fixed([1.0, 1.0], name="ok"), Fixed([1.0, np.nan], name="bad")], weights=[1, 1])
    with pytest.raises(
        NonFiniteRewardError,
        match=re.escape(
            f"reward 'bad' returned 1 non-finite value(s) in a batch of 2: index 1 (nan) prompt {PROMPTS[1]!r}"
        ),
    ):
        weighted(images=blank(2), prompts=PROMPTS[:2])


# ---------------------------------------------------------------------------------------------------------
# compute_reward
# ---------------------------------------------------------------------------------------------------------


def test_compute_reward_rejects_non_finite_rewards():
    images, prompts = blank(2), PROMPTS[:2]
    with pytest.raises(
        NonFiniteRewardError,
        match=re.escape(
            f"reward 'probe' returned 1 non-finite value(s) in a batch of 2: index 0 (nan) prompt {PROMPTS[0]!r}"
        ),
    ):
        compute_reward(Fixed([np.nan, 0.5], name="probe"), images=images, prompts=prompts)
    with pytest.raises(NonFiniteRewardError, match=r"index 1 \(inf\)"):
        compute_reward(Fixed([0.5, 1e300], name="probe"), images=images, prompts=prompts)  # inf once float32
    assert issubclass(NonFiniteRewardError, ValueError)
    with pytest.raises(NonFiniteRewardError) as caught:
        compute_reward(Fixed([np.nan] * 5, name="probe"), images=blank(5), prompts=PROMPTS)
    assert "index 2" in str(caught.value) and str(caught.value).count("index") == 5
    with pytest.raises(NonFiniteRewardError) as caught:
        compute_reward(Fixed([np.nan] * 7, name="probe"), images=blank(7), prompts=PROMPTS + PROMPTS[:2])
    assert str(caught.value).count("index") == 5 and str(caught.value).endswith(", ...")


def test_compute_reward_validates_inputs_and_output():
    reward = Fixed([0.25, 0.75])
    out = compute_reward(reward, images=blank(2), prompts=PROMPTS[:2], metadata=[{}, {"k": 1}])
    assert out.dtype == torch.float32 and out.tolist() == [0.25, 0.75]
    bad_inputs = [
        (dict(images=blank(2)[0], prompts=PROMPTS[:2]), ValueError, "float"),
        (dict(images=blank(2)[:, :1], prompts=PROMPTS[:2]), ValueError, r"\(B, 3, H, W\)"),
        (dict(images=(blank(2) * 255).to(torch.uint8), prompts=PROMPTS[:2]), ValueError, "torch.uint8"),
        (dict(images=blank(2).numpy(), prompts=PROMPTS[:2]), TypeError, "torch.Tensor"),
        (dict(images=blank(2), prompts=PROMPTS[:3]), ValueError, "2 images but 3 prompts"),
        (dict(images=blank(2), prompts="ab"), TypeError, "sequence of strings"),
        (dict(images=blank(2), prompts=PROMPTS[:2], metadata=[{}]), ValueError, "1 metadata entries"),
    ]
    for kwargs, error, message in bad_inputs:
        with pytest.raises(error, match=message):
            compute_reward(reward, **kwargs)
    with pytest.raises(ValueError, match=re.escape("reward 'fixed' returned shape (3,), expected (2,)")):
        compute_reward(Fixed([1.0, 2.0, 3.0]), images=blank(2), prompts=PROMPTS[:2])

    class NotATensor(Fixed):
        def __call__(self, **kwargs: Any) -> Any:
            return [0.0, 1.0]

    with pytest.raises(TypeError, match="returned list"):
        compute_reward(NotATensor([0.0]), images=blank(2), prompts=PROMPTS[:2])


# ---------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------


class Trainer:
    """Stands in for a LightningModule taking a reward argument."""

    def __init__(self, *, reward: Reward) -> None:
        self.reward = reward


def test_rewards_parse_from_jsonargparse_config(tmp_path):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Trainer, "model")
    config = {
        "model": {
            "reward": {
                "class_path": "spatialrl.rewards.WeightedReward",
                "init_args": {
                    "weights": [1.0, 0.5],
                    "rewards": [
                        {"class_path": "spatialrl.rewards.RuleReward", "init_args": {"tolerance": 40.0}},
                        {
                            "class_path": "spatialrl.rewards.SpatialScoreReward",
                            "init_args": {
                                "path": str(tmp_path / "not-yet-trained"),
                                "uncertainty_penalty": 0.1,
                            },
                        },
                    ],
                },
            }
        }
    }
    reward = parser.instantiate(parser.parse_string(yaml.safe_dump(config))).model.reward
    assert isinstance(reward, WeightedReward) and reward.weights == [1.0, 0.5]
    rule, score = reward.rewards
    assert isinstance(rule, RuleReward) and rule.checker.tolerance == 40.0 and rule.name == "rule"
    assert isinstance(score, SpatialScoreReward) and score.uncertainty_penalty == 0.1 and score.batch_size == 16

    single = ArgumentParser(exit_on_error=False)
    single.add_argument("--reward", type=Reward)
    parsed = single.parse_args(["--reward", '{"class_path": "spatialrl.rewards.RuleReward"}'])
    assert isinstance(single.instantiate(parsed).reward, RuleReward)


def test_reward_components_checks_names_and_values():
    class Misnamed(Reward):
        name = "mine"

        def __call__(self, *, images, prompts, metadata=None):
            return images.new_ones(images.shape[0])

        def component_names(self):
            return ("other", "mine")

        def components(self, *, images, prompts, metadata=None):
            return {"other": self(images=images, prompts=prompts), "mine": self(images=images, prompts=prompts)}

    with pytest.raises(ValueError, match="its own name first"):
        reward_components(Misnamed(), images=blank(2), prompts=PROMPTS[:2])
    parts = reward_components(Fixed([1.0, 2.0], name="a"), images=blank(2), prompts=PROMPTS[:2])
    assert list(parts) == ["a"] and parts["a"].tolist() == [1.0, 2.0]
