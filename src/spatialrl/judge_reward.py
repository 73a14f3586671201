"""A VLM judge as a Spatial-RL reward: :class:`VLMJudgeReward`.

Each generated image goes to a vision-language model behind any OpenAI-compatible chat endpoint
(:class:`spatialscore.judges.PointwiseJudge`: the prompt, the image as a PNG data URL, a structured 1-10
spatial-correctness reply); the reward is that score scaled to [0, 1]. The endpoint is an
:class:`~spatialscore.chat.EndpointConfig` (``endpoint``): requests are seeded, cached, at most ``concurrency`` in
flight and each limited by ``timeout`` with ``retries``; the API key comes only from the environment variable
``api_key_env``. A request that still fails, or a judge that never gives a valid score,
raises :class:`~spatialscore.chat.ChatEndpointError` naming the endpoint and the prompt, which fails the step:
there is no fallback value, zero or NaN. From YAML, alone or inside a ``WeightedReward``::

    reward:
      class_path: spatialrl.rewards.WeightedReward
      init_args:
        rewards:
          - class_path: spatialrl.rewards.StrictReward
          - class_path: spatialrl.judge_reward.VLMJudgeReward
            init_args:
              endpoint: {base_url: "http://127.0.0.1:8000/v1", model: Qwen/Qwen2.5-VL-7B-Instruct, concurrency: 16}
        weights: [1.0, 0.5]

From Python: ``VLMJudgeReward(endpoint=EndpointConfig(base_url=..., model=..., concurrency=16))``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from spatialrl.rewards import Reward
from spatialscore.chat import EndpointConfig
from spatialscore.encode import to_uint8_rgb
from spatialscore.judges import PointwiseJudge

__all__ = ["VLMJudgeReward"]


class VLMJudgeReward(Reward):
    """``(score - 1) / 9`` of a pointwise VLM judge's 1-10 score, in [0, 1]: 1 when every relation holds.

    The settings are checked at construction (nothing is sent until the first call). Images (float (3, H, W) in
    [0, 1]) are rounded to uint8 and sent as PNG. Pickling drops the judge's HTTP client; it is made again on
    the next call.

    Args:
        endpoint: The vision-language model's OpenAI-compatible endpoint: ``base_url`` and ``model``, plus
            ``concurrency`` (requests in flight per training process), ``timeout``, ``retries``, sampling and
            cache settings (see :class:`spatialscore.chat.EndpointConfig`).
        attempts: Replies asked per image before the step fails: one without a valid 1-10 score is answered
            with the problem and asked again.
        name: The reward's component name in the logs.
    """

    def __init__(self, *, endpoint: EndpointConfig, attempts: int = 3, name: str = "vlm_judge") -> None:
        self.endpoint = endpoint
        self.attempts = attempts
        self.name = name
        self._judge: PointwiseJudge | None = PointwiseJudge(endpoint=endpoint, attempts=attempts)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_judge": None}

    @property
    def judge(self) -> PointwiseJudge:
        """The judge (made again after unpickling)."""
        if self._judge is None:
            self._judge = PointwiseJudge(endpoint=self.endpoint, attempts=self.attempts)
        return self._judge

    def __call__(
        self, *, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> Tensor:
        """Float32 (B,) rewards in [0, 1] on the images' device; ``metadata`` is ignored."""
        host = images.detach().to("cpu", torch.float32).unbind(0)
        pictures = [Image.fromarray(to_uint8_rgb(image)) for image in host]
        scores = self.judge(prompts=list(prompts), images=pictures)
        return (torch.tensor(scores, dtype=torch.float32, device=images.device) - 1.0) / 9.0
