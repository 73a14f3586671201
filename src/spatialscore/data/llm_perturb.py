"""An LLM perturber: any OpenAI-compatible chat model makes the spatial edits, the verifier checks every reply.

:class:`LLMPerturber` is a :class:`~spatialscore.data.perturb.Perturber` (``spatialscore perturb --perturber
llm``). For each prompt it asks the model for the requested number of edits of the paper's kinds (``swap``,
``flip``, ``predicate``, ``anchor``, ``attribute_swap``, ``row_permute``) as a JSON object::

    {"perturbed_prompt": "...", "edits": [{"kind": "flip", "before": "left", "after": "right", "occurrence": 1}]}

and turns the edits into character spans of the prompt (``before`` located in the prompt; ``occurrence`` picks
among repeats). Nothing reaches the output unverified: a reply is accepted only when it is valid JSON of that
form, the spans reproduce ``perturbed_prompt`` exactly, the number of edits is the number requested, and
:func:`~spatialscore.data.verify_perturbations.verify_perturbation` (the automatic validity rules of
:mod:`spatialscore.data.perturb_validity`) finds no problem. A rejected reply is answered with its problems and
asked again (``attempts`` replies in all); after that the prompt is skipped with the last problems as the
reason. The model may also decline with ``{"skip": "...", "available": N}`` when fewer relations can be edited
(a 2-3 request then falls back to ``N`` edits when ``N >= 2``).

The endpoint is an :class:`~spatialscore.chat.EndpointConfig`: ``LLMPerturber(endpoint=EndpointConfig(
base_url=..., model=...))``, or flat ``--perturber_option KEY=VALUE`` options on the command line
(:meth:`LLMPerturber.from_options`). Requests go through the :class:`~spatialscore.chat.ChatEndpoint` made from
it: the API key from the environment variable ``api_key_env`` only, at most ``concurrency`` in flight (prompts
are perturbed concurrently), a timeout and retries per request, seeded (each prompt's seed drawn from its
``--seed``-derived generator) and cached on disk, so a rerun of the same command resumes where the last one
stopped and costs nothing for finished prompts. An endpoint that still fails after its retries stops the run
with an error naming it and the prompt.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, TypeVar

from spatialscore.chat import (
    ChatEndpoint,
    EndpointConfig,
    Message,
    RepliesRejectedError,
    ReplyRejected,
    check_int,
    endpoint_options,
    parse_json_object,
)
from spatialscore.data.perturb import KINDS, Edit, PerturbationError, PerturbationResult, apply_edits
from spatialscore.data.verify_perturbations import verify_perturbation

__all__ = ["SYSTEM_PROMPT", "LLMPerturber", "edits_from_reply"]

T = TypeVar("T")
R = TypeVar("R")

SYSTEM_PROMPT = """\
You make minimal spatial perturbations of text-to-image prompts for a spatial reward-model data set: the \
perturbed prompt describes the same scene with the same objects, but a different spatial arrangement.

Edit kinds:
- swap: two objects trade places around a relation ("a cup to the left of a vase" -> "a vase to the left of \
a cup"); the edit spans both objects and the relation between them.
- flip: a direction word is reversed (left/right, above/below, in front of/behind, upper/lower, top/bottom).
- predicate: the relation moves to another axis ("in front of" -> "to the left of").
- anchor: an edge, corner or centre anchor moves ("back edge" -> "front edge", "upper-left" -> "upper-right").
- attribute_swap: two attributes bound to opposite positions trade places ("the left lantern is bronze, the \
right one is blue" -> "the left lantern is blue, the right one is bronze").
- row_permute: the objects of an ordered row are permuted ("from left to right: a mug, a bowl, a jar" -> \
"from left to right: a jar, a mug, a bowl").

Rules:
- Change only spatial relation words, or move whole object phrases (article, adjectives and noun together).
- Keep every other character exactly as it is: the same objects, attributes, verbs, punctuation and spacing.
- The result must describe a different, plausible arrangement and must not contradict itself (update a later \
mention such as "on the right" that the edit makes stale only with a second edit, never leave it wrong).
- Never edit idioms or non-spatial uses ("under the weight of", "left behind", "the right answer").
- Make exactly the number of edits requested, of the kinds allowed. Each edit replaces one contiguous span of \
the original prompt; edits do not overlap.

Reply with one JSON object and nothing else:
{"perturbed_prompt": "<the whole new prompt>", "edits": [{"kind": "<kind>", "before": "<exact text of the \
original prompt>", "after": "<its replacement>", "occurrence": <1 if that is the first place the text occurs \
in the prompt, 2 for the second, ...>}]}
If fewer spatial relations than requested can be edited this way, reply instead:
{"skip": "<why>", "available": <how many edits are possible>}"""


def _occurrences(text: str, part: str) -> list[int]:
    found, start = [], text.find(part)
    while start != -1:
        found.append(start)
        start = text.find(part, start + 1)
    return found


def edits_from_reply(prompt: str, reply: dict[str, Any]) -> tuple[str, list[Edit]]:
    """``(perturbed_prompt, edits)`` of a parsed reply, each edit's span located in ``prompt``.

    Raises :class:`~spatialscore.chat.ReplyRejected` listing every problem of form (missing fields, a
    ``before`` that does not occur, or occurs several times without an ``occurrence``).
    """
    perturbed, raw = reply.get("perturbed_prompt"), reply.get("edits")
    problems = []
    if not isinstance(perturbed, str):
        problems.append('"perturbed_prompt" must be a string')
    if not isinstance(raw, list) or not raw:
        problems.append('"edits" must be a non-empty list')
        raise ReplyRejected(problems)
    edits = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            problems.append(f"edits[{i}] must be an object")
            continue
        kind, before, after, occurrence = (item.get(k) for k in ("kind", "before", "after", "occurrence"))
        if not isinstance(kind, str) or not isinstance(before, str) or not before or not isinstance(after, str):
            problems.append(f'edits[{i}] needs string fields "kind", "before" (non-empty) and "after"')
            continue
        places = _occurrences(prompt, before)
        if occurrence is not None and (isinstance(occurrence, bool) or not isinstance(occurrence, int)):
            problems.append(f'edits[{i}]: "occurrence" must be an integer, got {occurrence!r}')
        elif not places:
            problems.append(f"edits[{i}]: {before!r} does not occur in the prompt (copy it exactly)")
        elif occurrence is None and len(places) > 1:
            problems.append(f'edits[{i}]: {before!r} occurs {len(places)} times in the prompt; give "occurrence"')
        elif occurrence is not None and not 1 <= occurrence <= len(places):
            problems.append(f"edits[{i}]: occurrence {occurrence} of {before!r}, but it occurs {len(places)} times")
        else:
            start = places[(occurrence or 1) - 1]
            edits.append(Edit(kind, start, start + len(before), before, after))
    if problems:
        raise ReplyRejected(problems)
    return perturbed, edits


def _difference(a: str, b: str) -> str:
    """Where two strings first differ, with a little context."""
    k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"at character {k}: {a[max(0, k - 20) : k + 20]!r} vs {b[max(0, k - 20) : k + 20]!r}"


class LLMPerturber:
    """A :class:`~spatialscore.data.perturb.Perturber` backed by a chat model, every reply verified.

    Args:
        endpoint: The chat model's OpenAI-compatible endpoint, e.g. ``http://127.0.0.1:8000/v1`` of ``vllm
            serve`` (see :class:`~spatialscore.chat.EndpointConfig`); its ``seed`` is unused: each prompt's
            request carries a seed drawn from the prompt's ``--seed``-derived generator.
        kinds: The edit kinds allowed (a non-empty subset of the paper's kinds).
        attempts: Replies per prompt: a rejected one is answered with its problems and asked again, this many
            replies in all before the prompt is skipped.
    """

    OPTIONS = ("kinds", "attempts")  # its own flat options besides the endpoint's (see from_options)

    def __init__(self, *, endpoint: EndpointConfig, kinds: Iterable[str] = KINDS, attempts: int = 3) -> None:
        self.kinds = tuple(kinds)
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(self.kinds)}")
        check_int("attempts", attempts, low=1)
        self.attempts = attempts
        self.endpoint = endpoint
        self.chat = ChatEndpoint(endpoint)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, what: str = "--perturber_option") -> LLMPerturber:
        """The perturber of flat ``key=value`` options (``spatialscore perturb --perturber llm
        --perturber_option base_url=URL --perturber_option model=M ...``): the
        :class:`~spatialscore.chat.EndpointConfig` fields, ``kinds`` and ``attempts``; an unknown key is a
        ValueError naming it."""
        config, own = endpoint_options(options, what=what, own=cls.OPTIONS)
        return cls(endpoint=config, **own)

    def __repr__(self) -> str:
        return f"LLMPerturber(base_url={self.endpoint.base_url!r}, model={self.endpoint.model!r})"

    def messages(self, prompt: str, num: int) -> list[Message]:
        """The request for ``num`` edits of ``prompt``."""
        task = {"prompt": prompt, "edits_requested": num, "kinds_allowed": list(self.kinds)}
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": json.dumps(task, ensure_ascii=False)},
        ]

    def check_reply(self, prompt: str, num: int, reply: str) -> PerturbationResult:
        """The verified result of one reply; :class:`~spatialscore.chat.ReplyRejected` with its problems, or
        :class:`~spatialscore.data.perturb.PerturbationError` when the model declines."""
        obj = parse_json_object(reply)
        if "skip" in obj:
            available = obj.get("available")
            if isinstance(available, bool) or not isinstance(available, int) or not 0 <= available < num:
                raise ReplyRejected([f'"available" must be an integer from 0 to {num - 1} when skipping'])
            raise PerturbationError(f"the model declined: {obj['skip']}", available=available)
        perturbed, edits = edits_from_reply(prompt, obj)
        try:
            rebuilt = apply_edits(prompt, edits)
        except ValueError as error:
            raise ReplyRejected([f"the edits do not fit together: {error}"]) from None
        if rebuilt != perturbed:
            raise ReplyRejected(
                [f"applying the edits does not give perturbed_prompt ({_difference(rebuilt, perturbed)})"]
            )
        problems = verify_perturbation(prompt, perturbed, edits, num=(num,), kinds=self.kinds)
        if problems:
            raise ReplyRejected(problems)
        return PerturbationResult.from_edits(prompt, edits, num_perturbations=num)

    def __call__(self, prompt: str, *, num: int, rng: random.Random) -> PerturbationResult:
        """``num`` verified edits of ``prompt``; :class:`~spatialscore.data.perturb.PerturbationError` to skip."""
        try:
            return self.chat.ask(
                self.messages(prompt, num),
                check=lambda reply: self.check_reply(prompt, num, reply),
                label=prompt,
                attempts=self.attempts,
                seed=rng.randrange(2**31),
            )
        except RepliesRejectedError as error:
            raise PerturbationError(
                f"{self.attempts} LLM replies rejected; last: {'; '.join(error.problems)}"
            ) from None

    def map(self, function: Callable[[T], R], items: Collection[T]) -> list[R]:
        """Run ``function`` over ``items`` on the endpoint's ``concurrency`` threads, in order (used by
        :func:`~spatialscore.data.perturb.perturb_prompts` to perturb prompts concurrently)."""
        return self.chat.map(function, items)
