"""Perturbing many prompts: checking results, the perturbers plug-in map and perturb_prompts."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from spatialscore.data.perturb.edits import (
    NUM_CHOICES,
    PerturbationError,
    PerturbationResult,
    Perturber,
    SkippedPrompt,
    apply_edits,
    subset_for,
)
from spatialscore.data.perturb.rules import RulePerturber


# --------------------------------------------------------------------------------------------- batch
def _check(prompt: str, result: object, allowed: Sequence[int]) -> str | None:
    """Why a perturber's result is unusable, or ``None`` if it is consistent."""
    if not isinstance(result, PerturbationResult):
        return f"expected a PerturbationResult, got {type(result).__name__}"
    if result.prompt != prompt:
        return "result.prompt differs from the input prompt"
    if not result.edits:
        return "no edits recorded"
    try:
        rebuilt = apply_edits(prompt, result.edits)
    except ValueError as exc:
        return str(exc)
    if rebuilt != result.perturbed_prompt:
        return "applying the edits does not give perturbed_prompt"
    if rebuilt == prompt:
        return "perturbed prompt equals the original"
    if result.num_perturbations not in allowed:
        return f"num_perturbations={result.num_perturbations}, expected one of {list(allowed)}"
    if result.subset != subset_for(result.num_perturbations):
        return f"subset {result.subset!r} does not match num_perturbations={result.num_perturbations}"
    return None


def _perturb_one(prompt: str, *, num: str, rng: random.Random, perturber: Perturber) -> PerturbationResult:
    if not prompt.strip():
        raise PerturbationError("empty prompt")
    allowed = (1,) if num == "1" else (2, 3)
    k = 1 if num == "1" else rng.choice(allowed)
    try:
        result = perturber(prompt, num=k, rng=rng)
    except PerturbationError as exc:
        if num == "1" or exc.available is None or exc.available >= k:
            raise
        if exc.available < 2:
            if exc.available == 0:
                raise
            raise PerturbationError("only 1 perturbable phrase, 2-3 requested", available=1) from None
        result = perturber(prompt, num=exc.available, rng=rng)
    problem = _check(prompt, result, allowed)
    if problem:
        raise PerturbationError(f"invalid perturber output: {problem}")
    return result


def _run(
    prompts: Iterable[str], *, num: str, seed: int, perturber: Perturber | None
) -> list[PerturbationResult | SkippedPrompt]:
    if num not in NUM_CHOICES:
        raise ValueError(f"num must be one of {NUM_CHOICES}, got {num!r}")
    perturber = RulePerturber() if perturber is None else perturber

    def one(item: tuple[int, str]) -> PerturbationResult | SkippedPrompt:
        index, prompt = item
        try:
            return _perturb_one(prompt, num=num, rng=random.Random(f"{seed}:{index}"), perturber=perturber)
        except PerturbationError as exc:
            return SkippedPrompt(index, prompt, exc.reason)

    # a perturber with a map(function, items) method (the LLM perturber) runs the prompts concurrently
    run_all = getattr(perturber, "map", None) or (lambda function, items: [function(i) for i in items])
    return run_all(one, list(enumerate(prompts)))


def perturb_prompts(
    prompts: Iterable[str], *, num: str, seed: int, perturber: Perturber | None = None
) -> tuple[list[PerturbationResult], list[SkippedPrompt]]:
    """Perturb each prompt with 1 (``num="1"``) or 2-3 (``num="2-3"``) edits.

    Deterministic for a seed: prompt ``i`` gets its own ``random.Random`` seeded from ``(seed, i)``, so its
    result does not depend on the other prompts. Prompts that cannot be perturbed (or whose perturber output
    is inconsistent) come back as :class:`SkippedPrompt` with a reason. ``perturber`` defaults to
    :class:`RulePerturber`.
    """
    done = _run(prompts, num=num, seed=seed, perturber=perturber)
    return (
        [r for r in done if isinstance(r, PerturbationResult)],
        [r for r in done if isinstance(r, SkippedPrompt)],
    )
