"""VLM judges: a vision-language model behind any OpenAI-compatible chat endpoint as a spatial scorer.

The paper's Table 1 compares SpatialScore with VLM judges (Qwen2.5-VL 7B/32B/72B, GPT-5, Gemini 2.5 Pro). Two
protocols, each with a structured JSON reply, images sent as base64 PNG data URLs:

- :class:`PointwiseJudge`: the image and the prompt; reply ``{"score": 1-10, "reason": ...}``, the spatial
  correctness of the image. A :class:`~spatialscore.benchmark.Scorer` and (through
  :class:`spatialrl.judge_reward.VLMJudgeReward`) an RL reward.
- :class:`PairwiseJudge`: the prompt and two images; reply ``{"better": 1 or 2, "reason": ...}``. Each pair is
  asked in **both orders** and the two votes are averaged, so a judge that always names the first (or second)
  image gives a tie (0.5) instead of a biased answer. Used by ``spatialscore benchmark`` through
  :meth:`PairwiseJudge.compare`.

A judge takes ``endpoint``, an :class:`~spatialscore.chat.EndpointConfig` (URL, model, concurrency, timeout,
retries, sampling, cache), and ``attempts``. Requests go through the :class:`~spatialscore.chat.ChatEndpoint` made
from it: seeded, cached on disk, at most ``concurrency`` in flight, each with a timeout and retries, the API key
from the environment variable ``api_key_env`` only. A reply
that does not parse is answered with the problem and asked again (``attempts`` replies in all); a request or a
reply that still fails raises :class:`~spatialscore.chat.ChatEndpointError` naming the endpoint and the prompt,
never a made-up score. From Python::

    endpoint = EndpointConfig(base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-VL-7B-Instruct")
    PointwiseJudge(endpoint=endpoint, attempts=3)(prompts=[...], images=[...])

On the command line (``spatialscore benchmark --scorer``) the same settings are flat ``key=value`` options::

    judge7b=judge:pointwise,model=Qwen/Qwen2.5-VL-7B-Instruct,base_url=http://127.0.0.1:8000/v1
    judge:pairwise,model=gpt-5,base_url=https://api.openai.com/v1,concurrency=16,temperature=null,attempts=2
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from PIL import Image

from spatialscore.chat import (
    ChatEndpoint,
    EndpointConfig,
    Message,
    ReplyRejected,
    check_int,
    endpoint_options,
    image_part,
    parse_json_object,
    parse_options,
)

__all__ = [
    "JUDGE_MODES",
    "PairwiseJudge",
    "PointwiseJudge",
    "build_judge",
    "parse_choice",
    "parse_judge_spec",
    "parse_score",
]

JUDGE_MODES = ("pointwise", "pairwise")
J = TypeVar("J", bound="_Judge")

POINTWISE_SYSTEM = (
    "You judge whether an image shows the spatial arrangement a text-to-image prompt describes. Look only at "
    "spatial correctness: which objects are where relative to each other (left/right, above/below, in front of/"
    "behind, inside/on, corners and edges, the order of rows), and whether each named object appears. Ignore "
    "style, quality and aesthetics. Reply with one JSON object and nothing else: "
    '{"score": <integer 1-10, 10 = every spatial relation of the prompt holds>, "reason": "<one short sentence>"}'
)
PAIRWISE_SYSTEM = (
    "You compare two images generated for the same text-to-image prompt and decide which one shows the spatial "
    "arrangement the prompt describes more faithfully: which objects are where relative to each other (left/"
    "right, above/below, in front of/behind, inside/on, corners and edges, the order of rows), and whether each "
    "named object appears. Ignore style, quality and aesthetics. You must pick one. Reply with one JSON object "
    'and nothing else: {"better": <1 for the first image, 2 for the second>, "reason": "<one short sentence>"}'
)


class _Judge:
    """What both judges share: the chat endpoint and the replies asked per request.

    Args:
        endpoint: The vision-language model's OpenAI-compatible endpoint (its URL, model name, concurrency,
            timeout, retries, sampling and cache settings; see :class:`~spatialscore.chat.EndpointConfig`).
        attempts: Replies asked per request: one that does not parse, or a score out of range, is answered
            with the problem and asked again, this many replies in all before the request fails.
    """

    OPTIONS = ("attempts",)  # its own flat options besides the endpoint's (see from_options)

    def __init__(self, *, endpoint: EndpointConfig, attempts: int = 3) -> None:
        check_int("attempts", attempts, low=1)
        self.endpoint = endpoint
        self.attempts = attempts
        self.chat = ChatEndpoint(endpoint)

    @classmethod
    def from_options(cls: type[J], options: Mapping[str, Any], *, what: str | None = None) -> J:
        """The judge of flat ``key=value`` options (``base_url=URL,model=M,attempts=2,...``): the
        :class:`~spatialscore.chat.EndpointConfig` fields and ``attempts``; an unknown key is a ValueError
        naming it."""
        config, own = endpoint_options(options, what=what or cls.__name__, own=cls.OPTIONS)
        return cls(endpoint=config, **own)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.endpoint.base_url!r}, model={self.endpoint.model!r})"


def _integer_field(reply: str, key: str, low: int, high: int) -> int:
    """``reply``'s JSON field ``key`` as an integer in [low, high] (``7`` or ``7.0``); :class:`ReplyRejected`."""
    value: Any = parse_json_object(reply).get(key)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ReplyRejected([f'the reply needs "{key}": an integer from {low} to {high}, got {value!r}'])
    if value != int(value) or not low <= value <= high:
        raise ReplyRejected([f'"{key}" must be an integer from {low} to {high}, got {value!r}'])
    return int(value)


def parse_score(reply: str) -> int:
    """The 1-10 ``score`` of a pointwise reply; :class:`~spatialscore.chat.ReplyRejected` if there is none."""
    return _integer_field(reply, "score", 1, 10)


def parse_choice(reply: str) -> int:
    """The ``better`` image (1 or 2) of a pairwise reply; :class:`~spatialscore.chat.ReplyRejected` otherwise."""
    return _integer_field(reply, "better", 1, 2)


class PointwiseJudge(_Judge):
    """A 1-10 spatial-correctness score per (prompt, image): a :class:`~spatialscore.benchmark.Scorer`."""

    def messages(self, prompt: str, image: Image.Image) -> list[Message]:
        """The request for one image."""
        text = f"Prompt: {prompt}\nHow well does this image show the prompt's spatial arrangement?"
        return [
            {"role": "system", "content": POINTWISE_SYSTEM},
            {"role": "user", "content": [{"type": "text", "text": text}, image_part(image)]},
        ]

    def score(self, prompt: str, image: Image.Image) -> int:
        """The judge's score of one image, 1 to 10."""
        return self.chat.ask(self.messages(prompt, image), check=parse_score, label=prompt, attempts=self.attempts)

    def __call__(self, *, prompts: list[str], images: list[Image.Image]) -> list[float]:
        """Scores in [1, 10], one per (prompt, image), asked concurrently."""
        if len(prompts) != len(images):
            raise ValueError(f"got {len(prompts)} prompts but {len(images)} images")
        asks = list(zip(prompts, images, strict=True))
        return [float(s) for s in self.chat.map(lambda ask: self.score(*ask), asks)]


class PairwiseJudge(_Judge):
    """Which of two images shows the prompt better, asked in both orders to cancel position bias."""

    def messages(self, prompt: str, first: Image.Image, second: Image.Image) -> list[Message]:
        """The request for one ordered pair (``first`` is shown as image 1)."""
        return [
            {"role": "system", "content": PAIRWISE_SYSTEM},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"Prompt: {prompt}\nImage 1:"},
                    image_part(first),
                    {"type": "text", "text": "Image 2:"},
                    image_part(second),
                    {"type": "text", "text": "Which image shows the prompt's spatial arrangement better?"},
                ],
            },
        ]

    def choice(self, prompt: str, first: Image.Image, second: Image.Image) -> int:
        """The judge's answer for one order: 1 (``first``) or 2 (``second``)."""
        return self.chat.ask(
            self.messages(prompt, first, second), check=parse_choice, label=prompt, attempts=self.attempts
        )

    def compare(
        self, *, prompts: Sequence[str], first: Sequence[Image.Image], second: Sequence[Image.Image]
    ) -> list[float]:
        """Preference for ``first[i]`` over ``second[i]`` in {0, 0.5, 1}: the mean of its votes in both orders.

        1: chosen in both orders, 0: in neither, 0.5: one each (what a judge that always picks the same
        position gives). All 2N requests run concurrently.
        """
        if not len(prompts) == len(first) == len(second):
            raise ValueError(f"got {len(prompts)} prompts, {len(first)} first and {len(second)} second images")
        asks = [(p, a, b) for p, a, b in zip(prompts, first, second, strict=True)]
        asks += [(p, b, a) for p, a, b in zip(prompts, first, second, strict=True)]
        votes = self.chat.map(lambda ask: self.choice(*ask), asks)
        n = len(prompts)
        return [((votes[i] == 1) + (votes[n + i] == 2)) / 2 for i in range(n)]


def parse_judge_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``MODE,key=value,...`` (a benchmark scorer spec after ``judge:``) as ``(mode, options)``.

    The options are checked here (:func:`~spatialscore.chat.endpoint_options`: the
    :class:`~spatialscore.chat.EndpointConfig` fields, ``base_url`` and ``model`` required, and ``attempts``;
    an unknown key or a bad value is a ValueError naming it), without connecting to anything.
    """
    mode, _, rest = text.partition(",")
    mode = mode.strip()
    if mode not in JUDGE_MODES:
        raise ValueError(f"judge mode must be one of {JUDGE_MODES}, got {mode!r}")
    options = parse_options([item for item in rest.split(",") if item.strip()], what=f"judge:{mode}")
    _, own = endpoint_options(options, what=f"judge:{mode}", own=_Judge.OPTIONS)
    try:
        check_int("attempts", own.get("attempts", 3), low=1)
    except ValueError as error:
        raise ValueError(f"judge:{mode}: {error}") from None
    return mode, options


def build_judge(mode: str, options: Mapping[str, Any]) -> PointwiseJudge | PairwiseJudge:
    """The judge of ``mode`` with flat ``options`` (see :meth:`PointwiseJudge.from_options`)."""
    judge = PointwiseJudge if mode == "pointwise" else PairwiseJudge
    return judge.from_options(options, what=f"judge:{mode}")
