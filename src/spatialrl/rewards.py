"""Rewards for Spatial-RL: one interface, ``reward(images=..., prompts=..., metadata=...) -> Tensor[B]``.

``images`` is a float (B, 3, H, W) tensor in [0, 1] (the decoded generator output), ``prompts`` the B prompts and
``metadata`` an optional per-image dict (ignored by the rewards here; it exists for rewards that need ground
truth). The rewards: :class:`StrictReward` (the strict judge: exactly the named objects, each once, relations
holding; the held-out measure and the embedded default's training reward), :class:`RuleReward` (the lenient
centroid checker, gameable by duplicated objects), :class:`PresenceReward` (every named colour drawn),
:class:`SpatialScoreReward` (a trained SpatialScore checkpoint), :class:`RemoteReward` (a SpatialScore behind
``spatialscore serve``) and :class:`WeightedReward` (a weighted sum); :class:`~spatialrl.judge_reward.VLMJudgeReward`
(a VLM judge on an OpenAI-compatible endpoint) lives beside them.
A reward may report diagnostics beside its value (:meth:`Reward.components`; the strict judge's shares of images
with extra and missing objects, a weighted sum's terms), which training and validation log. Training calls
rewards through :func:`compute_reward` / :func:`reward_components`, which validate inputs and output so that a
NaN reward fails loudly, naming the reward and prompt, instead of
silently poisoning the advantages.

``Reward`` is an abstract base class rather than a ``typing.Protocol``: jsonargparse (and so LightningCLI) reads a
Protocol that has ``__call__`` as a callable type and rejects ``class_path`` entries for it, while subclasses of a
base class parse as ordinary ``class_path``/``init_args`` entries, also inside ``WeightedReward``'s list.
"""

from __future__ import annotations

import abc
import base64
import io
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from spatialscore.data.strict import Judgement, StrictChecker
from spatialscore.data.synthetic import RuleChecker, detect_objects, image_list, parse_prompt
from spatialscore.encode import to_uint8_rgb
from spatialscore.model import SpatialScore

__all__ = [
    "NonFiniteRewardError",
    "Reward",
    "PresenceReward",
    "RemoteReward",
    "RemoteRewardError",
    "RuleReward",
    "SpatialScoreReward",
    "StrictReward",
    "WeightedReward",
    "compute_reward",
    "reward_components",
]

_MAX_REPORTED = 5  # bad samples listed in an error message


class NonFiniteRewardError(ValueError):
    """A reward returned NaN or inf for some samples."""


class Reward(abc.ABC):
    """A batched reward. ``name`` labels it in logs and error messages (unique within a :class:`WeightedReward`)."""

    name: str

    @abc.abstractmethod
    def __call__(
        self, *, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> Tensor:
        """Rewards of shape (B,) for ``images[i]`` (float (B, 3, H, W) in [0, 1]) against ``prompts[i]``."""

    def component_names(self) -> tuple[str, ...]:
        """The keys :meth:`components` returns: this reward's own name, then any diagnostics logged beside it."""
        return (self.name,)

    def components(
        self, *, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, Tensor]:
        """The reward under :attr:`name` and each diagnostic of :meth:`component_names`, (B,) each, in one pass."""
        return {self.name: self(images=images, prompts=prompts, metadata=metadata)}


def _check_inputs(images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None) -> None:
    """Raise if the batch does not follow the reward interface."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point() or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a float (B, 3, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a sequence of strings")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")
    if metadata is not None and len(metadata) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(metadata)} metadata entries")


def _check_output(name: str, rewards: Any, prompts: Sequence[str], device: torch.device) -> Tensor:
    """``rewards`` as float32 on ``device``; raise unless it is a finite (B,) tensor."""
    if not isinstance(rewards, Tensor):
        raise TypeError(f"reward {name!r} returned {type(rewards).__name__}, expected a torch.Tensor")
    if tuple(rewards.shape) != (len(prompts),):
        raise ValueError(f"reward {name!r} returned shape {tuple(rewards.shape)}, expected ({len(prompts)},)")
    rewards = rewards.to(device=device, dtype=torch.float32)
    bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
    if bad:
        shown = bad[:_MAX_REPORTED]
        values = rewards[shown].tolist()
        listed = ", ".join(f"index {i} ({v}) prompt {prompts[i]!r}" for i, v in zip(shown, values, strict=True))
        if len(bad) > len(shown):
            listed += ", ..."
        raise NonFiniteRewardError(
            f"reward {name!r} returned {len(bad)} non-finite value(s) in a batch of {len(prompts)}: {listed}"
        )
    return rewards


def compute_reward(
    reward: Reward,
    *,
    images: Tensor,
    prompts: Sequence[str],
    metadata: Sequence[Mapping[str, Any]] | None = None,
) -> Tensor:
    """Call ``reward`` on a validated batch; return its finite (B,) float32 rewards on the images' device.

    Raises TypeError/ValueError for a malformed batch or output and :class:`NonFiniteRewardError` (naming the
    reward and the index and prompt of the first bad samples) for NaN or inf rewards.
    """
    _check_inputs(images, prompts, metadata)
    rewards = reward(images=images, prompts=prompts, metadata=metadata)
    return _check_output(reward.name, rewards, prompts, images.device)


def reward_components(
    reward: Reward,
    *,
    images: Tensor,
    prompts: Sequence[str],
    metadata: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Tensor]:
    """:meth:`Reward.components` on a validated batch, each value checked as :func:`compute_reward` checks one
    (finite float32 (B,) on the images' device), and the keys checked against :meth:`Reward.component_names`."""
    _check_inputs(images, prompts, metadata)
    parts = reward.components(images=images, prompts=prompts, metadata=metadata)
    if list(parts) != list(reward.component_names()) or next(iter(parts), None) != reward.name:
        raise ValueError(
            f"reward {reward.name!r} returned components {list(parts)}, expected {list(reward.component_names())} "
            "(its own name first)"
        )
    return {name: _check_output(name, value, prompts, images.device) for name, value in parts.items()}


class RuleReward(Reward):
    """The lenient procedural rule checker: the fraction of the prompt's relations that hold in the image.

    Lenient: each colour is judged by the centroid of all its pixels, so duplicated objects and stray blobs are
    invisible to it, and a policy trained on it learned to scatter them (README). Train and measure with
    :class:`StrictReward`; keep this one as a diagnostic.

    Binary for a one-relation prompt. Objects are found by colour, so this only judges images of the synthetic
    scene grammar (see :mod:`spatialscore.data.synthetic`); a prompt outside that grammar is a ValueError.

    Args:
        tolerance: a pixel belongs to the nearest palette colour within this RGB distance (0-255 scale).
        min_pixels: fewer pixels of a colour count as absent; null: 0.2% of the image (at least 4).
        name: the reward's label in logs and error messages.
    """

    def __init__(self, *, tolerance: float = 60.0, min_pixels: int | None = None, name: str = "rule") -> None:
        self.checker = RuleChecker(tolerance=tolerance, min_pixels=min_pixels)
        self.name = name

    def __call__(
        self, *, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> Tensor:
        """Float32 (B,) scores in [0, 1] on the images' device; ``metadata`` is ignored."""
        _parse_all(self.name, prompts)
        scores = self.checker(images=images, prompts=prompts)
        return torch.tensor(scores, dtype=torch.float32, device=images.device)


def _parse_all(name: str, prompts: Sequence[str]) -> None:
    """Raise a ValueError naming the reward, index and prompt for the first prompt outside the grammar."""
    for index, prompt in enumerate(prompts):
        try:
            parse_prompt(prompt)
        except ValueError as error:
            raise ValueError(f"reward {name!r} cannot check prompt {index} {prompt!r}: {error}") from error


class PresenceReward(RuleReward):
    """1 when every object the prompt names is found in the image (by colour), else 0: no layout judged.

    Logged beside :class:`RuleReward` it separates "draws the objects" from "places them right": the rule
    reward is at most the presence rate, and ``rule / presence`` is the relation accuracy among complete images.

    Args:
        tolerance: a pixel belongs to the nearest palette colour within this RGB distance (0-255 scale).
        min_pixels: fewer pixels of a colour count as absent; null: 0.2% of the image (at least 4).
        name: the reward's label in logs and error messages.
    """

    def __init__(self, *, tolerance: float = 60.0, min_pixels: int | None = None, name: str = "presence") -> None:
        super().__init__(tolerance=tolerance, min_pixels=min_pixels, name=name)

    def __call__(
        self, *, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> Tensor:
        """Float32 (B,) in {0, 1} on the images' device; ``metadata`` is ignored."""
        _parse_all(self.name, prompts)
        present = []
        for image, prompt in zip(images, prompts, strict=True):
            colours = list(dict.fromkeys(c for r in parse_prompt(prompt) for c, _ in r.objects))
            found = detect_objects(image, colours, tolerance=self.checker.tolerance, min_pixels=self.checker.min_pixels)
            present.append(float(len(found) == len(colours)))
        return torch.tensor(present, dtype=torch.float32, device=images.device)


class StrictReward(Reward):
    """The strict judge (:mod:`spatialscore.data.strict`) as a reward: 1 when the image shows exactly the named
    objects, each once, nothing else, shapes right where they can be told, every relation holding; else 0.

    It cannot be raised by duplicating objects or scattering blobs, which raise the lenient :class:`RuleReward`
    (README, "What the embedded defaults learn"). :meth:`components` adds, from the same judgement,
    ``{name}_correct`` (1 for a correct image: the strict accuracy, whatever ``clean_credit`` is),
    ``{name}_extra`` (1 when anything beyond one object of each named colour is drawn), ``{name}_missing``
    (1 when a named object is absent) and ``{name}_lenient`` (:class:`RuleReward`'s centroid score, a
    diagnostic only), so validation logs the shares of images with extra and missing objects. Prompts must be
    of the procedural grammar (:func:`~spatialscore.data.synthetic.parse_prompt`).

    Args:
        tolerance: a pixel belongs to the nearest palette colour within this RGB distance (0-255 scale).
        min_pixels: smaller components are specks and dropped; null: 0.2% of the image (at least 4).
        shape_min_side: an object's shape is judged only when its bounding box is at least this many pixels on
            both sides (smaller shapes cannot be told apart).
        clean_credit: in [0, 1): the reward of a *clean* image whose layout is wrong: exactly the named
            objects, each once, nothing else, right shapes, but a relation fails. It still gives nothing for
            duplicates, extras or missing objects, and a correct image always earns more than a clean one.
        name: the reward's label in logs and error messages, and the prefix of its components.
    """

    def __init__(
        self,
        *,
        tolerance: float = 60.0,
        min_pixels: int | None = None,
        shape_min_side: int = 16,
        clean_credit: float = 0.0,
        name: str = "strict",
    ) -> None:
        if not 0 <= clean_credit < 1:
            raise ValueError(f"clean_credit must be in [0, 1), got {clean_credit}")
        self.clean_credit = clean_credit
        self.checker = StrictChecker(tolerance=tolerance, min_pixels=min_pixels, shape_min_side=shape_min_side)
        self.lenient = RuleChecker(tolerance=tolerance, min_pixels=min_pixels)
        self.name = name

    def component_names(self) -> tuple[str, ...]:
        """``name`` (the reward), ``name_correct``, ``name_extra``, ``name_missing``, ``name_lenient``."""
        return tuple(f"{self.name}{suffix}" for suffix in ("", "_correct", "_extra", "_missing", "_lenient"))

    def components(
        self, *, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, Tensor]:
        """The strict verdicts and the shares behind them, float32 (B,) each on the images' device."""
        _parse_all(self.name, prompts)
        host = image_list(images, prompts)  # one host copy for both checkers
        judgements = self.checker(images=host, prompts=prompts)
        rows = [(self._value(j), j.correct, j.has_extra, j.has_missing) for j in judgements]
        values = torch.tensor(rows, dtype=torch.float32, device=images.device).reshape(-1, 4).T
        lenient = torch.tensor(self.lenient(images=host, prompts=prompts), dtype=torch.float32)
        return dict(zip(self.component_names(), [*values, lenient.to(images.device)], strict=True))

    def __call__(
        self, *, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> Tensor:
        """Float32 (B,) in {0, clean_credit, 1} on the images' device; ``metadata`` is ignored."""
        _parse_all(self.name, prompts)
        values = [self._value(j) for j in self.checker(images=images, prompts=prompts)]
        return torch.tensor(values, dtype=torch.float32, device=images.device)

    def _value(self, judgement: Judgement) -> float:
        if judgement.correct:
            return 1.0
        return self.clean_credit if judgement.clean else 0.0


class SpatialScoreReward(Reward):
    """A trained SpatialScore checkpoint (a :meth:`SpatialScore.save_pretrained` folder) as a reward.

    reward = mu - uncertainty_penalty * sigma. A positive penalty makes the reward conservative, as in HPSv3:
    images the model is unsure about gain less, and those are where a policy most easily exploits a reward model.

    The model is loaded on the first call, so a config can name a checkpoint without loading it at parse time,
    onto ``device`` or else the device of that first call's images; it stays there, and rewards are returned on
    the images' device. It is a plain attribute, not a registered submodule, so a LightningModule holding this
    reward neither trains, checkpoints nor moves it.

    Args:
        path: the SpatialScore folder (written by ``save_pretrained``, e.g. by ``ExportSpatialScore``).
        batch_size: images scored per forward pass (>= 1).
        device: device to load the model onto (``cuda:1``, ``cpu``, ...); null: the device of the first
            call's images.
        uncertainty_penalty: the reward is ``mu - uncertainty_penalty * sigma`` (finite, >= 0).
        name: the reward's label in logs and error messages.
    """

    def __init__(
        self,
        path: str,
        *,
        batch_size: int = 16,
        device: str | None = None,
        uncertainty_penalty: float = 0.0,
        name: str = "spatialscore",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not (math.isfinite(uncertainty_penalty) and uncertainty_penalty >= 0):
            raise ValueError(f"uncertainty_penalty must be finite and >= 0, got {uncertainty_penalty}")
        self.path = path
        self.batch_size = batch_size
        self.device = device
        self.uncertainty_penalty = uncertainty_penalty
        self.name = name
        self._model: SpatialScore | None = None

    def __call__(
        self, *, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> Tensor:
        """Float32 (B,) rewards on the images' device; ``metadata`` is ignored."""
        if self._model is None:
            self._model = SpatialScore.from_pretrained(self.path, device=self.device or images.device)
        # score() takes float (3, H, W) tensors in [0, 1] and rounds them to uint8 as the processor expects;
        # one host copy for the batch instead of one per image.
        host = images.detach().to("cpu", torch.float32).unbind(0)
        out = self._model.score(prompts=list(prompts), images=list(host), batch_size=self.batch_size)
        rewards = out.mu
        if self.uncertainty_penalty:
            rewards = rewards - self.uncertainty_penalty * out.sigma
        return rewards.to(device=images.device, dtype=torch.float32)


class WeightedReward(Reward):
    """``sum_i weights[i] * rewards[i]``; :meth:`components` also returns each term for logging.

    Every component goes through :func:`compute_reward`, so a NaN is reported under the component's name.

    Args:
        rewards: the component rewards (at least one; their names and components' names unique).
        weights: one finite weight per component reward.
        name: the total's label in logs and error messages.
    """

    def __init__(self, *, rewards: Sequence[Reward], weights: Sequence[float], name: str = "weighted") -> None:
        if not rewards:
            raise ValueError("WeightedReward needs at least one reward")
        if len(rewards) != len(weights):
            raise ValueError(f"got {len(rewards)} rewards but {len(weights)} weights")
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(f"weights must be finite, got {list(weights)}")
        names = [n for r in rewards for n in r.component_names()] + [name]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                "reward and component names must be unique (including the total's name "
                f"{name!r}); duplicated: {duplicates}"
            )
        self.rewards = list(rewards)
        self.weights = [float(w) for w in weights]
        self.name = name

    def component_names(self) -> tuple[str, ...]:
        """The weighted total first, then every component's own :meth:`~Reward.component_names`."""
        return (self.name, *(n for r in self.rewards for n in r.component_names()))

    def components(
        self, *, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, Tensor]:
        """The weighted total under ``self.name``, then each component's (B,) float32 values by name."""
        parts = {}
        for reward in self.rewards:
            parts.update(reward_components(reward, images=images, prompts=prompts, metadata=metadata))
        terms = [w * parts[r.name] for r, w in zip(self.rewards, self.weights, strict=True)]
        return {self.name: torch.stack(terms).sum(0), **parts}

    def __call__(
        self, *, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> Tensor:
        """The weighted total, float32 (B,) on the images' device."""
        return self.components(images=images, prompts=prompts, metadata=metadata)[self.name]


class RemoteRewardError(RuntimeError):
    """A reward server could not score a request: unreachable, timing out or failing after the retries, refusing
    the request, or answering something that is not one finite score per image."""


class RemoteReward(Reward):
    """A SpatialScore served by ``spatialscore serve`` (:mod:`spatialscore.serve`) as a reward.

    reward = mu - uncertainty_penalty * sigma, as :class:`SpatialScoreReward`. Images are rounded to uint8 as
    in-process scoring rounds them and sent losslessly (PNG), ``batch_size`` per request, at most ``concurrency``
    requests in flight (the server coalesces concurrent requests into its batches). A request that cannot
    connect, takes over ``timeout`` seconds, or is answered 429 or 5xx is retried up to ``retries`` times after
    ``backoff * 2**attempt`` seconds; after that, or at once for any other refusal (4xx) or a malformed answer,
    :class:`RemoteRewardError` names the URL, the prompt of the request's first image and the last error. A
    failure is never a zero or NaN reward.

    Args:
        url: the server's base URL (``http://host:8000``); requests go to ``{url}/predict``.
        batch_size: images per request (>= 1).
        concurrency: at most this many requests in flight (>= 1).
        timeout: seconds to wait for an answer before retrying (finite, > 0).
        retries: retries of a request that cannot connect, times out, or is answered 429 or 5xx (>= 0).
        backoff: seconds before the first retry, doubled at each further one (finite, >= 0).
        uncertainty_penalty: the reward is ``mu - uncertainty_penalty * sigma`` (finite, >= 0).
        token_env: environment variable holding the bearer token, if any, read at each call (never from the
            config).
        name: the reward's label in logs, error messages and the sampling threads' names.
    """

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 8,
        concurrency: int = 4,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        uncertainty_penalty: float = 0.0,
        token_env: str = "SPATIALSCORE_SERVE_TOKEN",
        name: str = "remote",
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        for label, value in (("batch_size", batch_size), ("concurrency", concurrency)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be an integer >= 1, got {value!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be finite and > 0, got {timeout}")
        if not (math.isfinite(backoff) and backoff >= 0):
            raise ValueError(f"backoff must be finite and >= 0, got {backoff}")
        if not (math.isfinite(uncertainty_penalty) and uncertainty_penalty >= 0):
            raise ValueError(f"uncertainty_penalty must be finite and >= 0, got {uncertainty_penalty}")
        self.url = url.rstrip("/")
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.uncertainty_penalty = uncertainty_penalty
        self.token_env = token_env
        self.name = name

    def __call__(
        self, *, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> Tensor:
        """Float32 (B,) rewards on the images' device; ``metadata`` is ignored. Raises :class:`RemoteRewardError`."""
        import requests

        prompts = list(prompts)
        host = images.detach().to("cpu", torch.float32).unbind(0)
        starts = range(0, len(prompts), self.batch_size)
        chunks = [range(s, min(s + self.batch_size, len(prompts))) for s in starts]
        token = os.environ.get(self.token_env)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        local, sessions = threading.local(), []

        def score(rows: range) -> tuple[list[float], list[float]]:
            if not hasattr(local, "session"):
                local.session = requests.Session()
                sessions.append(local.session)
            body = {"prompts": [prompts[i] for i in rows], "images": [_png_base64(host[i]) for i in rows]}
            return self._post(local.session, body, headers)

        mu, sigma = torch.empty(len(prompts)), torch.empty(len(prompts))
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, max(len(chunks), 1)), thread_name_prefix=self.name)
        try:
            futures = {pool.submit(score, rows): rows for rows in chunks}
            for future in as_completed(futures):
                rows = futures[future]
                mu[rows.start : rows.stop], sigma[rows.start : rows.stop] = map(torch.tensor, future.result())
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # after an error: no more requests for this call
            for session in sessions:
                session.close()
        rewards = mu - self.uncertainty_penalty * sigma if self.uncertainty_penalty else mu
        return rewards.to(device=images.device, dtype=torch.float32)

    def _post(self, session: Any, body: dict[str, list[str]], headers: dict[str, str]) -> tuple[list, list]:
        """``(mu, sigma)`` of one request, retried as the class docstring says."""
        import requests

        endpoint = f"{self.url}/predict"
        count = len(body["prompts"])
        where = f"POST {endpoint} (prompt {body['prompts'][0]!r}" + (f" and {count - 1} more)" if count > 1 else ")")
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = session.post(endpoint, json=body, headers=headers, timeout=self.timeout)
            except requests.Timeout:
                problem = f"no answer within {self.timeout} s"
                continue
            except requests.ConnectionError as error:
                problem = f"cannot connect ({type(error).__name__}: {error})"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                continue
            if response.status_code != 200:
                raise RemoteRewardError(
                    f"reward {self.name!r}: {where} refused with HTTP {response.status_code}: {response.text[:500]}"
                )
            return self._parse(response, count, where)
        raise RemoteRewardError(f"reward {self.name!r}: {where} failed after {self.retries + 1} attempts: {problem}")

    def _parse(self, response: Any, count: int, where: str) -> tuple[list, list]:
        """The answer's ``mu`` and ``sigma``, checked: ``count`` finite numbers each."""
        try:
            answer = response.json()
            mu, sigma = answer["mu"], answer["sigma"]
            ok = all(len(v) == count and all(_is_number(x) and math.isfinite(x) for x in v) for v in (mu, sigma))
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise RemoteRewardError(
                f"reward {self.name!r}: {where} answered something other than {count} finite mu and sigma values: "
                f"{response.text[:300]}"
            )
        return mu, sigma


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _png_base64(image: Tensor) -> str:
    """A float (3, H, W) image in [0, 1] as base64 PNG of its uint8 rounding (as in-process scoring rounds it)."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8_rgb(image)).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
