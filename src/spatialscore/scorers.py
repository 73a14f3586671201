"""The scorers ``spatialscore benchmark`` compares: the interfaces (:class:`Scorer`, :class:`PairwiseScorer`), the
built-in ones, the ``[NAME=]SPEC`` parser and the plug-in loader."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from spatialscore.specs import SpecError, import_plugin, split_name

__all__ = [
    "SCORER_FORMS",
    "ConstantScorer",
    "PairwiseScorer",
    "RandomScorer",
    "Scorer",
    "ScorerSpec",
    "ScorerSpecError",
    "SpatialScoreScorer",
    "build_scorer",
    "parse_scorer_spec",
]

SCORER_FORMS = (
    "spatialscore:PATH (a saved SpatialScore folder)",
    "rule (RuleChecker)",
    "constant (always 0)",
    "random or random:SEED (uniform random scores)",
    "judge:pointwise|pairwise,model=M,base_url=URL[,key=value...] (a VLM judge on an OpenAI-compatible endpoint)",
    "module:Class or module:function (a plug-in scorer)",
    "any of these as NAME=SPEC to set the display name",
)


class Scorer(Protocol):
    """A batched spatial scorer: one float per (prompt, image); higher means more spatially correct."""

    def __call__(self, *, prompts: list[str], images: list[Image.Image]) -> Sequence[float]: ...


@runtime_checkable
class PairwiseScorer(Protocol):
    """A batched pairwise scorer: the preference in [0, 1] for ``first[i]`` over ``second[i]`` given ``prompts[i]``."""

    def compare(
        self, *, prompts: Sequence[str], first: Sequence[Image.Image], second: Sequence[Image.Image]
    ) -> Sequence[float]: ...


class ScorerSpecError(SpecError):
    """A ``--scorer`` spec that cannot be parsed or loaded."""


@dataclass(frozen=True)
class ScorerSpec:
    """A parsed scorer spec: display ``name``, ``kind`` (spatialscore, rule, constant, random, plugin), ``target``."""

    name: str
    kind: str
    target: str = ""


class ConstantScorer:
    """Gives every image the same score: every pair is a tie (accuracy 0.5)."""

    def __init__(self, *, value: float = 0.0) -> None:
        self.value = float(value)

    def __call__(self, *, prompts: list[str], images: list[Image.Image]) -> list[float]:
        return [self.value] * len(prompts)


class RandomScorer:
    """Uniform random scores in [0, 1) from a seeded generator: the chance floor."""

    def __init__(self, *, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, *, prompts: list[str], images: list[Image.Image]) -> list[float]:
        return self.rng.random(len(prompts)).tolist()


class SpatialScoreScorer:
    """A saved SpatialScore as a :class:`Scorer` (its ``mu``)."""

    def __init__(self, path: str | os.PathLike[str], *, batch_size: int = 32, device: str | None = None) -> None:
        from spatialscore.model import SpatialScore

        self.model = SpatialScore.from_pretrained(path, device=device or _default_device())
        self.batch_size = batch_size

    def __call__(self, *, prompts: list[str], images: list[Image.Image]) -> list[float]:
        return self.model.score(prompts=prompts, images=images, batch_size=self.batch_size).mu.tolist()


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _unknown(spec: str, reason: str) -> ScorerSpecError:
    forms = "\n".join(f"  {form}" for form in SCORER_FORMS)
    return ScorerSpecError(f"scorer {spec!r}: {reason}; accepted forms:\n{forms}")


def parse_scorer_spec(spec: str) -> ScorerSpec:
    """Parse ``[NAME=]SPEC`` (see :data:`SCORER_FORMS`) without loading anything."""
    try:
        name, body = split_name(spec)
    except SpecError:
        raise _unknown(spec, "empty name or spec") from None
    head, colon, tail = body.partition(":")
    if not colon:
        if body in ("rule", "constant", "random"):
            return ScorerSpec(name, body)
        raise _unknown(spec, "unknown scorer")
    if not tail:
        raise _unknown(spec, f"nothing after {head + ':'!r}")
    if head == "spatialscore":
        return ScorerSpec(name, "spatialscore", tail)
    if head == "judge":
        from spatialscore.judges import parse_judge_spec

        try:
            mode, options = parse_judge_spec(tail)
        except ValueError as error:
            raise _unknown(spec, str(error)) from None
        return ScorerSpec(f"{mode}:{options['model']}" if name == body else name, "judge", tail)
    if head == "random":
        try:
            int(tail)
        except ValueError:
            raise _unknown(spec, f"random seed must be an integer, got {tail!r}") from None
        return ScorerSpec(name, "random", tail)
    if not all(part.isidentifier() for part in head.split(".") + tail.split(".")):
        raise _unknown(spec, "a plug-in must be module:attribute with Python identifiers")
    return ScorerSpec(name, "plugin", body)


def build_scorer(spec: ScorerSpec, *, batch_size: int = 32, device: str | None = None, seed: int = 0) -> Scorer:
    """Load the scorer of a parsed spec; ``seed`` is the default seed of ``random``."""
    if spec.kind == "rule":
        from spatialscore.data.synthetic import RuleChecker

        return RuleChecker()
    if spec.kind == "constant":
        return ConstantScorer()
    if spec.kind == "random":
        return RandomScorer(seed=int(spec.target) if spec.target else seed)
    if spec.kind == "spatialscore":
        try:
            return SpatialScoreScorer(spec.target, batch_size=batch_size, device=device)
        except FileNotFoundError as error:
            raise ScorerSpecError(f"scorer {spec.name!r}: {error}") from error
    if spec.kind == "judge":
        from spatialscore.judges import build_judge, parse_judge_spec

        try:
            return build_judge(*parse_judge_spec(spec.target))
        except ValueError as error:
            raise ScorerSpecError(f"scorer {spec.name!r}: {error}") from error
    if spec.kind == "plugin":
        return _load_plugin(spec)
    raise ScorerSpecError(f"scorer {spec.name!r}: unknown kind {spec.kind!r}")


def _load_plugin(spec: ScorerSpec) -> Scorer:
    try:
        obj = import_plugin(spec.target, what="scorer")
    except SpecError as error:
        raise ScorerSpecError(str(error)) from error
    if inspect.isclass(obj):
        try:
            obj = obj()
        except TypeError as error:
            raise ScorerSpecError(f"scorer {spec.target!r}: cannot instantiate without arguments: {error}") from error
    if not callable(obj):
        raise ScorerSpecError(f"scorer {spec.target!r}: {type(obj).__name__} object is not callable")
    return obj
