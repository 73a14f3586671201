"""Minimal spatial perturbations of long scene prompts (the "perturbed prompt" of a preference pair).

A perturbation changes only spatial relations and leaves every other byte of the prompt as it was. Each
change is recorded as an :class:`Edit` (kind, character span in the original, text before and after).
Kinds, after the examples in the SpatialReward paper:

``swap``
    two objects trade places around a relation ("a cup to the left of a vase" -> "a vase to the left of a cup").
``flip``
    a direction word is reversed (left/right, above/below, in front of/behind, upper/lower, top/bottom, ...).
``predicate``
    the relation moves to another axis ("in front of" -> "to the left of").
``anchor``
    an edge, corner or centre anchor moves ("back edge" -> "front edge", "upper-left" -> "upper-right").
``attribute_swap``
    two attributes bound to opposite positions trade places ("the left lantern is bronze, the right one is
    blue" -> colours reversed).
``row_permute``
    the identities in an ordered row are permuted ("from left to right: a mug, a bowl, a jar").

:class:`RulePerturber` finds these with word-boundary regular expressions and conservative context checks
(it skips a phrase rather than risk ungrammatical text), and keeps only edits that pass the automatic
validity rules of :mod:`spatialscore.data.perturb_validity`. :func:`perturb_prompts` runs any perturber over many
prompts deterministically; :func:`cli_main` is the ``spatialscore perturb`` command.

Plugging in another perturber (e.g. an LLM rewriter)
----------------------------------------------------
Any callable with the :class:`Perturber` signature works::

    class MyLLMRewriter:
        def __call__(self, prompt, *, num, rng):
            rewritten = ask_my_llm(prompt, num)   # "change only spatial relations, num times"
            edits = diff_edits(prompt, rewritten, kind="llm")
            return PerturbationResult.from_edits(prompt, edits, num_perturbations=num)

Use it as ``perturb_prompts(prompts, num="1", seed=0, perturber=MyLLMRewriter())`` or from the command line
with ``--perturber mypackage.rewriters:MyLLMRewriter`` (imported with :mod:`importlib`, instantiated without
arguments; the current directory is importable). Raise :class:`PerturbationError` with a ``reason`` to skip a
prompt. Every result is checked (its edits must turn ``prompt`` into ``perturbed_prompt``); a result that
fails the check is reported as skipped with the reason, never silently dropped. ``--perturber_option KEY=VALUE``
passes keyword arguments to the class. A perturber with a ``map(function, items)`` method runs the prompts
through it (concurrently). ``--perturber llm`` is the shipped LLM perturber
(:class:`spatialscore.data.llm_perturb.LLMPerturber`, every reply verified).

The package: ``edits``, ``lexicon``, ``rules``, ``batch``, ``cli``; every public name is importable from here."""

from __future__ import annotations

from spatialscore.data.perturb.batch import perturb_prompts
from spatialscore.data.perturb.cli import PERTURBER_ALIASES, cli_main, load_perturber, perturb_command, read_prompts
from spatialscore.data.perturb.edits import (
    KINDS,
    NUM_CHOICES,
    Edit,
    Num,
    PerturbationError,
    PerturbationResult,
    Perturber,
    SkippedPrompt,
    apply_edits,
    diff_edits,
    subset_for,
)
from spatialscore.data.perturb.lexicon import NON_SPATIAL_IDIOM
from spatialscore.data.perturb.rules import RulePerturber

__all__ = [
    "NUM_CHOICES",
    "Edit",
    "KINDS",
    "NON_SPATIAL_IDIOM",
    "Num",
    "PERTURBER_ALIASES",
    "PerturbationError",
    "PerturbationResult",
    "Perturber",
    "RulePerturber",
    "SkippedPrompt",
    "apply_edits",
    "cli_main",
    "diff_edits",
    "load_perturber",
    "perturb_command",
    "perturb_prompts",
    "read_prompts",
    "subset_for",
]
