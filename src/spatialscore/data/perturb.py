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
fails the check is reported as skipped with the reason, never silently dropped. ``--perturber-option KEY=VALUE``
passes keyword arguments to the class. A perturber with a ``map(function, items)`` method runs the prompts
through it (concurrently). ``--perturber llm`` is the shipped LLM perturber
(:class:`spatialscore.data.llm_perturb.LLMPerturber`, every reply verified).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import itertools
import json
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "KINDS",
    "NON_SPATIAL_IDIOM",
    "PERTURBER_ALIASES",
    "Edit",
    "PerturbationError",
    "PerturbationResult",
    "Perturber",
    "RulePerturber",
    "SkippedPrompt",
    "apply_edits",
    "cli_main",
    "diff_edits",
    "load_perturber",
    "perturb_prompts",
    "read_prompts",
    "subset_for",
]

KINDS = ("swap", "flip", "predicate", "anchor", "attribute_swap", "row_permute")
NUM_CHOICES = ("1", "2-3")


# --------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Edit:
    """Replacement of ``prompt[start:end]`` (equal to ``before``) by ``after``."""

    kind: str
    start: int
    end: int
    before: str
    after: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def subset_for(num_perturbations: int) -> str:
    """Benchmark subset name for a perturbation count: ``"1-pert"`` or ``"2-3-pert"``."""
    return "1-pert" if num_perturbations == 1 else "2-3-pert"


def apply_edits(prompt: str, edits: Iterable[Edit]) -> str:
    """Apply non-overlapping edits to ``prompt``; raise ``ValueError`` if they do not fit it."""
    out: list[str] = []
    cursor = 0
    for edit in sorted(edits, key=lambda e: (e.start, e.end)):
        if not 0 <= edit.start <= edit.end <= len(prompt):
            raise ValueError(f"edit span {edit.start}:{edit.end} outside the prompt (length {len(prompt)})")
        if edit.start < cursor:
            raise ValueError(f"edit at {edit.start}:{edit.end} overlaps the previous edit")
        if prompt[edit.start : edit.end] != edit.before:
            raise ValueError(
                f"edit at {edit.start}:{edit.end} expects {edit.before!r}, prompt has "
                f"{prompt[edit.start : edit.end]!r}"
            )
        out += [prompt[cursor : edit.start], edit.after]
        cursor = edit.end
    out.append(prompt[cursor:])
    return "".join(out)


@dataclass
class PerturbationResult:
    """A prompt, its perturbed variant and the edits that turn one into the other."""

    prompt: str
    perturbed_prompt: str
    edits: list[Edit]
    num_perturbations: int
    subset: str

    @classmethod
    def from_edits(
        cls, prompt: str, edits: Iterable[Edit], *, num_perturbations: int | None = None
    ) -> PerturbationResult:
        """Build a result by applying ``edits``; the count defaults to the number of edits."""
        ordered = sorted(edits, key=lambda e: (e.start, e.end))
        num = len(ordered) if num_perturbations is None else num_perturbations
        return cls(prompt, apply_edits(prompt, ordered), ordered, num, subset_for(num))

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "perturbed_prompt": self.perturbed_prompt,
            "num_perturbations": self.num_perturbations,
            "subset": self.subset,
            "edits": [e.to_dict() for e in self.edits],
        }


@dataclass(frozen=True)
class SkippedPrompt:
    """A prompt that could not be perturbed, with its position in the input and the reason."""

    index: int
    prompt: str
    reason: str


class PerturbationError(Exception):
    """Raised by a perturber that cannot perturb a prompt; ``available`` counts perturbable phrases."""

    def __init__(self, reason: str, *, available: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.available = available


@runtime_checkable
class Perturber(Protocol):
    """Turns a prompt into a :class:`PerturbationResult` with ``num`` spatial perturbations."""

    def __call__(self, prompt: str, *, num: int, rng: random.Random) -> PerturbationResult: ...


def diff_edits(prompt: str, perturbed: str, *, kind: str = "rewrite") -> list[Edit]:
    """Word-level edits that turn ``prompt`` into ``perturbed`` (for perturbers that rewrite whole text)."""
    a = [m.span() for m in _DIFF_TOKEN.finditer(prompt)]
    b = [m.span() for m in _DIFF_TOKEN.finditer(perturbed)]
    matcher = difflib.SequenceMatcher(
        None, [prompt[s:e] for s, e in a], [perturbed[s:e] for s, e in b], autojunk=False
    )
    edits = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        start = a[i1][0] if i1 < len(a) else len(prompt)
        end = a[i2 - 1][1] if i2 > i1 else start
        after = perturbed[b[j1][0] : b[j2 - 1][1]] if j2 > j1 else ""
        edits.append(Edit(kind, start, end, prompt[start:end], after))
    return edits


_DIFF_TOKEN = re.compile(r"\w+|\s+|[^\w\s]")

# --------------------------------------------------------------------------------------------- lexicon
_NUMBERS = "one two three four five six seven eight nine ten eleven twelve".split()
_PLURAL_DETS = {"these", "those", "both", "several", "many", "few", *_NUMBERS[1:]}
_SINGULAR_DETS = {"a", "an", "one", "each", "every", "another", "this", "that"}
_POSSESSIVES = {"its", "his", "her", "their", "your", "our", "my"}
_DET_POSS = {"the", *_POSSESSIVES}
_SWAP_DETS = {
    "the",
    "a",
    "an",
    "one",
    "another",
    "both",
    "several",
    "some",
    "many",
    *_POSSESSIVES,
    *_NUMBERS[1:],
}
_LOWERABLE = _SWAP_DETS | _SINGULAR_DETS | _PLURAL_DETS
_OBJECT = re.compile(
    r"\s+(?:the|a|an|its|his|her|their|your|our|my|this|that|these|those|each|every|both|another|several|"
    r"some|many|it|them|him|" + "|".join(_NUMBERS) + r"|\d+)\b",
    re.I,
)
_NOT_POSSESSIVE = {"it", "that", "what", "there", "here", "he", "she", "who", "everything", "nothing", "one"}
_MODIFIERS = {"far", "extreme", "immediate", "very"}
_RIGHT_ADVERBIAL = set(  # "right away", "turned right at the corner": "right" as an intensifier
    "away now here there then after before back off on up down into onto in at through behind above below "
    "next beside under over along across past by around".split()
)
_ORIENT_VERBS = set(
    "face faces facing faced point points pointing pointed turn turns turning turned lean leans leaning leaned "
    "looking gaze gazes gazing angled tilted tilting tilts head heads heading oriented glancing "
    "glances curving curves bending bends swept".split()
)
_ADVERBS = set(
    "directly just slightly immediately neatly partly partially somewhat far well close closely also still "
    "exactly roughly squarely right".split()
)
_AGREE = {"is": "are", "was": "were"}
for _base in "sit stand rest lie hang hover lean float stay remain appear".split():
    _AGREE[_base + "s"] = _base
_AGREE.update({v: k for k, v in list(_AGREE.items())})
_OTHER_VERBS = set(
    "has have holds hold contains contain shows show features feature includes include sleeps sleep naps nap "
    "waits wait lurks lurk peeks peek glows glow shines shine towers tower looms loom dangles dangle sways sway "
    "blooms bloom grows grow stretches stretch runs run walks walk plays play reads read rises rise burns burn "
    "flickers flicker drips drip spills spill sprawls sprawl crouches crouch kneels kneel curls curl dozes doze "
    "lounges lounge watches watch looks look faces face points point overlooks overlook flanks flank frames "
    "casts cast covers cover fills fill occupies occupy opens open seems seem juts jut extends extend winds "
    "perches perch sprouts sprout steams steam".split()
)
_ING_NOUNS = set(
    "painting paintings ceiling building buildings railing awning string ring rings king wing wings pudding "
    "wedding clothing bedding icing lighting seating carving carvings drawing drawings sling swing spring "
    "earring earrings stocking stockings dumpling dumplings frosting filling topping toppings".split()
)
_NONFINITE = set(
    "sat stood lay hung placed positioned located set situated perched sitting standing resting lying "
    "hanging leaning hovering floating parked stacked arranged mounted propped tucked nestled lined "
    "displayed been being".split()
)
_PLACE_VERBS = set(
    "sits sit sat sitting rests rest resting lies lie lay lying stands stand stood standing placed perched parked "
    "balanced stacked set positioned laid propped piled arranged displayed tucked nestled sleeps sleeping "
    "curled lounges lounging".split()
)
_HANG_VERBS = set(
    "hangs hang hanging hung hovers hover hovering suspended dangles dangling floats floating looms looming "
    "arches arching".split()
)
_SKIPPABLE = _ADVERBS | _NONFINITE | set(_AGREE)
_BARE_OF_PREV = _ADVERBS | _PLACE_VERBS | _NONFINITE | {"is", "are", "was", "were", "and", "or", "just"}
_NON_SPATIAL_LEFT_OF = {
    "what",
    "what's",
    "nothing",
    "little",
    "much",
    "all",
    "anything",
    "something",
    "everything",
    "remains",
}
_PREPOSITIONS = set(
    "on in at from under over into onto of by near beside behind above below across along against inside "
    "outside atop to toward towards between among beneath underneath around through".split()
)
_CLAUSE_WORDS = set("and or but while as which that where who whose when so then there than".split())
_NP_STOP = (
    (_PREPOSITIONS - {"of"})
    | _CLAUSE_WORDS
    | set(_AGREE)
    | _NONFINITE
    | _PLACE_VERBS
    | _HANG_VERBS
    | _OTHER_VERBS
    | set(
        "left right front top bottom next holds hold shows show features contains contain includes include "
        "it they he she we you i".split()
    )
)
_LANDMARKS = set(
    "wall walls floor ceiling ground sky room street road sidewalk pavement window windows fireplace counter "
    "countertop sink building house scene image frame picture background foreground horizon door doorway "
    "stage field lawn yard garden kitchen corner edge side center centre middle top bottom front back left "
    "right viewer camera river sea ocean lake hills mountains".split()
)
_NON_OBJECT = set(
    # abstract nouns, light and weather, events: nothing a spatial relation can place
    "contrast difference relationship relation distance gap balance interplay harmony transition choice tension "
    "juxtaposition dance blend connection bond dialogue conversation routine performance game match speech "
    "ritual process journey battle argument meeting ceremony celebration show concert session lesson story "
    "moment time day night season weight pressure influence guidance care supervision command spell gaze eye "
    "eyes watch attention light lights sunlight moonlight starlight lamplight candlelight daylight glow rays "
    "ray sunshine sunset sunrise twilight dusk dawn shade shadow shadows haze fog mist rain weather atmosphere "
    "mood ambience air breeze wind storm silence noise sound music lens focus hue hues color colors colour "
    "colours tones palette".split()
)
_SKY = set("sky skies ceiling sun moon stars clouds cloud heavens roof rooftop canopy treetops".split())
_GROUND_LEVEL = set(
    "floor ground road street streets sidewalk pavement lawn grass sand beach shore shores soil earth water "
    "river lake sea ocean bay canal pond".split()
)
_FLOOR_LIKE = set("deck floorboards carpet rug mat terrace platform pavement tiles".split())  # as subjects
_VIEWPOINT = set("vantage viewpoint perspective angle".split())
_OBJECT_LIGHTS = set(
    "traffic street string fairy ceiling pendant tail head brake porch desk reading flood neon night".split()
)
_FRAMING = set(
    "photo photograph picture image painting drawing illustration rendering render shot snapshot sketch "
    "depiction view scene portrait close-up closeup artwork poster still".split()
)
_REMAINDER = set(
    "part parts piece pieces bit bits thing things remains remainder rest much little nothing all what "
    "anything something everything none some one".split()
)
_RIGHT_OF_NON_SPATIAL = set("way passage appeal reply entry abode access first self".split())
_RIGHT_NON_SPATIAL = set(
    "answer answers choice choices amount amounts moment time times way ways place size sizes tool tools "
    "balance mix angle angles note notes tone touch fit thing things word words kind kinds person people idea "
    "ideas decision decisions track mood conditions direction path question questions to combination light "
    "lighting level temperature spirit order price reason reasons shape color colour texture feel vibe call "
    "move stuff mind spot position".split()
)
_SIDE_NOUNS = set(
    "side sides edge edges corner corners end ends wall walls half third border rim margin flank column "
    "columns panel part section wing bank lane window windows door pane arm arms leg legs hand foot shoulder "
    "cheek eye ear one ones of and".split()
)
_ANCHOR_NOUNS = set("edge edges corner corners end ends border rim margin wall walls quadrant".split())
_TOP_NOUNS = set(
    "shelf shelves drawer drawers row rows tier tiers rung step steps level levels floor half edge edges "
    "corner corners rack deck layer part section portion bunk ledge panel of".split()
)
_FRONT_NOUNS = set(
    "edge edges row rows corner corners wall half side part section seat seats rank legs wheel wheels "
    "porch yard garden window windows of".split()
)
_ROW_NOUNS = set(
    "shelf row tier drawer level rack rung step deck layer bunk ledge cabinet compartment window panel seat "
    "lane column cushion hook slot bin basket".split()
)
_ON_BLOCK = set(
    "waterfront shoreline coast coastline hillside riverbank bank banks verge roadside shoulder curb kerb "
    "promenade boardwalk outskirts "
    "floor ground grass wall walls ceiling left right far top bottom side sides other edge surface street "
    "sidewalk pavement road sand beach water lawn field horizon screen page display front back opposite same "
    "way".split()
)
_COLOURS = set(
    "red orange yellow green blue purple violet pink brown black white gray grey silver gold golden beige teal "
    "turquoise navy maroon crimson amber ivory cream olive indigo emerald scarlet cyan magenta lavender bronze "
    "copper brass".split()
)
_MATERIALS = set(
    "wooden wicker glass ceramic metal metallic stone marble plastic leather velvet woollen wool cotton linen "
    "porcelain clay iron steel paper straw concrete rattan bamboo".split()
)
_PREDICATIVE = set(
    "is are was were looks look appears appear painted colored coloured glazed tinted dyed".split()
)
_POLES = {
    "left": ("h", 0),
    "leftmost": ("h", 0),
    "right": ("h", 1),
    "rightmost": ("h", 1),
    "top": ("v", 0),
    "upper": ("v", 0),
    "above": ("v", 0),
    "bottom": ("v", 1),
    "lower": ("v", 1),
    "below": ("v", 1),
    "beneath": ("v", 1),
    "under": ("v", 1),
    "underneath": ("v", 1),
    "front": ("d", 0),
    "foreground": ("d", 0),
    "back": ("d", 1),
    "behind": ("d", 1),
    "rear": ("d", 1),
    "background": ("d", 1),
}
_OPPOSITE = {
    "left": "right",
    "right": "left",
    "upper": "lower",
    "lower": "upper",
    "top": "bottom",
    "bottom": "top",
    "front": "back",
    "back": "front",
    "rear": "front",
    "above": "below",
    "below": "above",
    "foreground": "background",
    "background": "foreground",
}
_PREDICATE_TARGETS = {
    "horizontal": ("in front of", "behind", "above", "below"),
    "depth": ("to the left of", "to the right of", "above", "below"),
    "vertical": ("to the left of", "to the right of", "in front of", "behind"),
    "support": ("next to", "to the left of", "to the right of", "in front of", "behind"),
    "adjacent": ("in front of", "behind", "above", "below"),
}
_NIGHT = r"(?! of (?:the )?(?:night|day|morning|afternoon|evening|nowhere|winter|summer|season)\b)"
_TOKEN = re.compile(r"[^\W_](?:[\w'’-]*[^\W_])?|[^\w\s]")
_SPATIAL_LEFT = re.compile(
    r"\b(?:the|its|his|her|their|your|our|my|\w+['’]s)\s+(?:far\s+)?left\b|\bleft\s+(?:of|side|edge|corner)\b"
    r"|-left\b|\bleft(?:most|-hand)\b",
    re.I,
)
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")
_LIGHT = (
    r"(?:sun|sunlight|sunshine|moonlight|starlight|light|lights|glow|rays|spotlight|spotlights|lamplight|"
    r"candlelight|daylight|sky|skies|stars|moon|sunset|sunrise|gaze|eye|eyes)"
)
_EVENT = (
    r"(?:routine|conversation|performance|dance|game|match|speech|ritual|process|journey|battle|argument|"
    r"meeting|ceremony|celebration|show|concert|session|lesson|class|story|song|sentence|thought|task|"
    r"meal|workout|transformation|storm|chaos|crisis|festival|party|race|fight|war|debate|act|scene)"
)
NON_SPATIAL_IDIOM = re.compile(
    r"(?<![\w'’-])(?:"
    r"(?:under|beneath|below|underneath) (?:the |a |an )?(?:weight|pressure|influence|guidance|care|"
    r"supervision|command|spell|watch|watchful eye|cover|protection|direction|leadership|banner|guise|"
    r"impression|assumption|threat|strain|burden|name|auspices|tutelage|radar)\b"
    r"|(?:under|beneath|below|underneath|in|bathed in) (?:the |a |an )?"
    r"(?!(?:[\w'’-]+ ){0,2}(?:traffic|street|string|fairy|ceiling|pendant|tail|head|brake|porch|desk|"
    r"reading|flood|neon|christmas|night|hanging) (?:light|lights|lamp)\b)(?:[\w'’-]+ ){0,3}?"
    + _LIGHT
    + r"(?![\w'’-])"
    r"|(?:leave|leaves|leaving|left|lag|lags|lagging|lagged|fall|falls|falling|fell|stay|stays|staying|"
    r"stayed|remain|remains|remained|get|gets|got|put|puts) behind\b"
    r"|on (?:its|his|her|their|one's|all) (?:(?:two|four|hind|front|back|bare) )?(?:legs|feet|knees|back|"
    r"side|belly|stomach|toes|tiptoes|haunches|paws|fours|hands)\b"
    r"|in the (?:very )?(?:middle|midst|centre|center|heart) of (?:a |an |the |his |her |their |its )?"
    r"(?:[\w'’-]+ ){0,2}?" + _EVENT + r"\b"
    r"|(?:dips?|dipping|sinks?|sinking|sets?|setting|slips?|slipping|falls?|falling|disappears?|rises?|"
    r"rising|peeks?|peeking) (?:below|beneath|under|above|over|behind) the horizon\b"
    r"|on the verge of\b|above (?:it all|the fray)\b"
    r"|on top of (?:the world|things|everything|it all)\b|behind the scenes\b|over (?:the years|time)\b"
    r"|over the moon\b|head over heels\b|above all\b|under (?:way|construction|control|arrest|fire|review)\b"
    r"|on (?:display|fire|sale|duty|air|hold|time|purpose|foot|horseback|board|guard|edge|the go|the way)\b"
    r")",
    re.I,
)


# --------------------------------------------------------------------------------------------- text helpers
def _sentence_span(text: str, pos: int) -> tuple[int, int]:
    for m in _SENTENCE.finditer(text):
        if m.start() <= pos < m.end():
            return m.span()
    return 0, len(text)


def _prev_tokens(text: str, pos: int, n: int = 3) -> list[str]:
    """The last ``n`` tokens before ``pos``, lower-cased; missing ones are ``""``."""
    toks = [t.lower() for t in _TOKEN.findall(text, max(0, pos - 160), pos)]
    return [""] * max(0, n - len(toks)) + toks[-n:] if n else []


def _next_token(text: str, pos: int) -> str:
    m = _TOKEN.search(text, pos)
    return m.group(0).lower() if m else ""


def _is_det_poss(tok: str) -> bool:
    if tok in _DET_POSS:
        return True
    return tok.endswith(("'s", "’s")) and tok[:-2] not in _NOT_POSSESSIVE


def _match_case(src: str, repl: str) -> str:
    """Give ``repl`` the case pattern of ``src`` (all caps, capitalised, or lower-case determiner)."""
    if not src or not repl:
        return repl
    if len(src) > 1 and src.isupper():
        return repl.upper()
    if src[0].isupper():
        return repl[0].upper() + repl[1:]
    first = repl.split(maxsplit=1)[0]
    if repl[0].isupper() and first.lower() in _LOWERABLE and not (len(first) > 1 and first.isupper()):
        return repl[0].lower() + repl[1:]
    return repl


def _article_for(word: str) -> str:
    w = word.lower()
    if w.startswith(("hour", "honest", "honor", "honour", "heir")):
        return "an"
    if w.startswith(("uni", "use", "usu", "eu", "one", "once")):
        return "a"
    return "an" if w[:1] in "aeiou" else "a"


_ARTICLE_BEFORE = re.compile(r"(?<![\w'’-])(an?)(\s+)$", re.I)


def _compose(text: str, kind: str, subs: Sequence[tuple[int, int, str]]) -> Edit | None:
    """One edit from several sub-replacements: case matched, "a"/"an" fixed; ``None`` if nothing changes."""
    fixed = []
    for start, end, repl in sorted(subs):
        repl = _match_case(text[start:end], repl)
        art = _ARTICLE_BEFORE.search(text, max(0, start - 6), start)
        if art and repl[:1].isalpha():
            want = _article_for(repl)
            if art.group(1).lower() != want:
                repl = _match_case(art.group(1), want) + art.group(2) + repl
                start = art.start()
        fixed.append((start, end, repl))
    first, last = fixed[0][0], fixed[-1][1]
    pieces, cursor = [], first
    for start, end, repl in fixed:
        pieces += [text[cursor:start], repl]
        cursor = end
    after = "".join(pieces)
    before = text[first:last]
    return None if after == before else Edit(kind, first, last, before, after)


@dataclass(frozen=True)
class _Candidate:
    """Alternative edits at one place; ``start``/``end`` bound the text no other edit may touch."""

    kind: str
    start: int
    end: int
    edits: tuple[Edit, ...]


def _candidate(
    text: str,
    kind: str,
    alternatives: Iterable[Sequence[tuple[int, int, str]]],
    *,
    block: tuple[int, int] | None = None,
) -> _Candidate | None:
    edits: list[Edit] = []
    for subs in alternatives:
        edit = _compose(text, kind, subs)
        if edit is not None and edit not in edits:
            edits.append(edit)
    if not edits:
        return None
    start = min([e.start for e in edits] + ([block[0]] if block else []))
    end = max([e.end for e in edits] + ([block[1]] if block else []))
    return _Candidate(kind, start, end, tuple(edits))


def _single(text: str, kind: str, start: int, end: int, repl: str) -> _Candidate | None:
    return _candidate(text, kind, [[(start, end, repl)]])


# --------------------------------------------------------------------------------------------- finders
_LR = re.compile(r"(?<![\w'’-])(left|right)(?![\w-])", re.I)
_LR_DERIVED = re.compile(r"(?<![\w'’-])(left|right)(?=(?:most|-most|-hand|wards?)\b)", re.I)
_COMPOUND = re.compile(
    r"(?<![\w'’-])(upper|lower|top|bottom|front|back|rear|far|middle|center|centre|camera|frame|screen)"
    r"([- ])(left|right)(?![\w-])",
    re.I,
)
_FROM_TO = re.compile(
    r"(?<![\w-])from (left|right|top|bottom|front|back) to (left|right|top|bottom|front|back)\b", re.I
)
_VD_ADJ = re.compile(r"(?<![\w'’-])(upper|lower|top|bottom|front|back|rear)(?![\w-])", re.I)
_GROUND = re.compile(
    r"(?<![\w-])(?:(?:in|into|toward|towards|at|frame|frames|framing) the (foreground|background)\b"
    r"|(?:^|(?<=[.;!?] ))(?:the )?(foreground|background)(?= (?:is|was|shows|features|includes|holds|contains|"
    r"reveals|elements|details|objects)\b))",
    re.I,
)
_DISTANCE = re.compile(r"(?<![\w-])in the (?:far )?distance\b", re.I)
_MIDGROUND = re.compile(r"(?<![\w-])(?:in|occupies|occupy|occupying|fills|fill) the (midground)\b", re.I)
_CENTER = re.compile(r"(?<![\w-])(?:in|at) the (?:very )?(?:center|centre|middle)\b" + _NIGHT, re.I)
_CENTERED = re.compile(
    r"(?<![\w-])(?:centered|centred)(?= (?:on|under|above|below|between|in|within|beneath|over|along)\b)",
    re.I,
)
_REL = re.compile(
    r"""(?<![\w'’-])(?:
      (?P<comp>(?:above|below|behind|in\ front\ of)\ and\ (?:to\ the\ )?(?:left|right)\ of)
    | (?P<hidden>(?:(?:partly|partially|half)\ )?(?:hidden|obscured|occluded)\ (?:by|behind))
    | (?P<h>to\ the\ (?:(?:immediate|far|extreme)\ )?(?:left|right)\ of)
    | (?P<hb>(?:left|right)\ of)
    | (?P<front>in\ front\ of)
    | (?P<frontb>in\ front)
    | (?P<behind>behind)
    | (?P<ab>above|below)
    | (?P<top>on\ top\ of|atop)
    | (?P<under>beneath|underneath|under)
    | (?P<over>over)
    | (?P<side>on\ side\ of)
    | (?P<on>on)
    | (?P<adj>next\ to|beside|near|close\ to|adjacent\ to)
    | (?P<between>between)
    | (?P<aligned>(?:(?:vertically|horizontally)\ )?aligned\ with)
    )(?![\w-])""",
    re.I | re.X,
)
_SLOT = re.compile(
    r"(?<![\w-])(on|at|in|to) the (?:far |extreme )?(left|right|center|centre|middle)(?: (?:side|end|half))?"
    r"(?![\w-])" + _NIGHT,
    re.I,
)
_ROW_WORD = re.compile(
    r"(?<![\w'’-])(top|upper|middle|center|centre|bottom|lower|front|back|left|right) (\w+)\b", re.I
)
_ROW_HEAD = re.compile(
    r"(?<![\w-])from (?:left to right|right to left|top to bottom|bottom to top|front to back|back to front)"
    r"(?:\s*[:,]\s*|\s+(?:are|is|sit|sits|stand|stands|hang|hangs|we see|you see|there are|come|comes)\s+)",
    re.I,
)
_CLAUSE_END = re.compile(r"[.;!?]")
_LIST_SEP = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+")
_ATTRIBUTE = re.compile(
    r"(?<![\w'’-])(" + "|".join(sorted(_COLOURS | _MATERIALS, key=len, reverse=True)) + r")\b", re.I
)
_POLE_WORD = re.compile(r"\b(" + "|".join(_POLES) + r")\b", re.I)


def _bare_of_ok(text: str, start: int) -> bool:
    """Whether "left of"/"right of" at ``start`` is spatial: after a verb ("placed left of") or straight after
    a noun phrase ("a dog left of a cat"), not "what is left of", "the only part left of", "the right of way"."""
    p3, p2, p1 = _prev_tokens(text, start, 3)
    if {p1, p2, p3} & _NON_SPATIAL_LEFT_OF:
        return False
    if p1 in _BARE_OF_PREV or not p1 or not p1[0].isalnum():
        return True
    of = re.compile(r"(?:left|right)\s+of\s+", re.I).match(text, start)
    if of is None or _next_token(text, of.end()) not in _SWAP_DETS:
        return False
    after = _TOKEN.findall(text, of.end(), of.end() + 40)
    if text[start].lower() == "r" and len(after) > 1 and after[1].lower() in _RIGHT_OF_NON_SPATIAL:
        return False
    left = _left_np(text, start)
    return left is not None and not left.has_verbs and _head(left.words).lower() not in _REMAINDER


def _idiom_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in NON_SPATIAL_IDIOM.finditer(text)]


def _in_spans(spans: Sequence[tuple[int, int]], start: int, end: int) -> bool:
    return any(s < end and start < e for s, e in spans)


def _lr_sites(text: str) -> list[_Candidate]:
    """Flip/anchor a spatial "left"/"right"; skips verbs ("she left"), "the right answer", "right away"."""
    out = []
    has_left = bool(_SPATIAL_LEFT.search(text))
    for m in _LR.finditer(text):
        word = m.group(1).lower()
        p2, p1 = _prev_tokens(text, m.start(), 2)
        nxt = _next_token(text, m.end())
        if p1 in _MODIFIERS:
            spatial = _is_det_poss(p2) or p2 in {"to", "on", "at", "toward", "towards"}
        elif p1 in _ORIENT_VERBS:
            spatial = not (word == "right" and nxt in _RIGHT_ADVERBIAL)
        elif _is_det_poss(p1):
            spatial = nxt != "over"
            if word == "right" and nxt.isalpha() and nxt not in _SIDE_NOUNS:
                spatial = nxt not in _RIGHT_NON_SPATIAL and has_left
        elif nxt == "of":
            spatial = _bare_of_ok(text, m.start())
        else:
            spatial = False
        if spatial:
            kind = "anchor" if nxt in _ANCHOR_NOUNS else "flip"
            out.append(_single(text, kind, m.start(1), m.end(1), _OPPOSITE[word]))
    for m in _LR_DERIVED.finditer(text):
        out.append(_single(text, "flip", m.start(1), m.end(1), _OPPOSITE[m.group(1).lower()]))
    return out


def _compound_sites(text: str) -> list[_Candidate]:
    """Corner compounds: "upper-left" -> "upper-right" or "lower-left"; "far left" -> "far right"."""
    out = []
    for m in _COMPOUND.finditer(text):
        first, sep, second = m.group(1).lower(), m.group(2), m.group(3).lower()
        if first == "far" and sep == " ":
            continue  # "the far left" is handled as a plain left/right site
        p1 = _prev_tokens(text, m.start(), 1)[0]
        if sep == " " and (
            first in {"camera", "frame", "screen"}
            or not (_is_det_poss(p1) or p1 in {"a", "an", "at", "in", "on"})
        ):
            continue
        alternatives = [[(m.start(3), m.end(3), _OPPOSITE[second])]]
        if first in _OPPOSITE:
            alternatives.append([(m.start(1), m.end(1), _OPPOSITE[first])])
        kind = "flip" if first in {"far", "camera", "frame", "screen"} else "anchor"
        out.append(_candidate(text, kind, alternatives))
    for m in _FROM_TO.finditer(text):
        a, b = m.group(1).lower(), m.group(2).lower()
        if _OPPOSITE.get(a) == b:
            out.append(_candidate(text, "flip", [[(m.start(1), m.end(1), b), (m.start(2), m.end(2), a)]]))
    return out


def _vd_sites(text: str) -> list[_Candidate]:
    """Vertical and depth adjectives: "the upper shelf", "the top drawer", "the back edge", "the front row"."""
    out = []
    for m in _VD_ADJ.finditer(text):
        word = m.group(1).lower()
        p1 = _prev_tokens(text, m.start(), 1)[0]
        nxt = _next_token(text, m.end())
        if not (_is_det_poss(p1) or p1 in {"a", "an"}) or nxt in {"left", "right"}:
            continue
        if word in {"upper", "lower"}:
            ok = nxt.isalpha() and nxt not in _NP_STOP and nxt not in _LOWERABLE
        elif word in {"top", "bottom"}:
            ok = nxt in _TOP_NOUNS or nxt in {",", ".", ";"}
        else:
            ok = nxt in _FRONT_NOUNS or nxt in {",", ".", ";"}
        if ok:
            kind = "anchor" if nxt in _ANCHOR_NOUNS else "flip"
            out.append(_single(text, kind, m.start(1), m.end(1), _OPPOSITE[word]))
    for m in _GROUND.finditer(text):
        group = 1 if m.group(1) else 2
        out.append(_single(text, "flip", m.start(group), m.end(group), _OPPOSITE[m.group(group).lower()]))
    for m in _DISTANCE.finditer(text):
        out.append(_single(text, "flip", m.start(), m.end(), "in the foreground"))
    for m in _MIDGROUND.finditer(text):
        alternatives = [[(m.start(1), m.end(1), word)] for word in ("foreground", "background")]
        out.append(_candidate(text, "anchor", alternatives))
    for m in _CENTER.finditer(text):
        if any(
            _slot_position(s.group(2)) != 1 for s in _SLOT.finditer(text, *_sentence_span(text, m.start()))
        ):
            continue  # the middle of a left/centre/right row: moving it would duplicate a slot
        out.append(
            _candidate(
                text,
                "anchor",
                [[(m.start(), m.end(), "on the left side")], [(m.start(), m.end(), "on the right side")]],
            )
        )
    for m in _CENTERED.finditer(text):
        out.append(_single(text, "anchor", m.start(), m.end(), "off-center"))
    return out


def _placeable(words: Sequence[str]) -> bool:
    """Whether a noun phrase names something a spatial relation can place: not an abstract noun, light or
    weather ("the contrast", "the morning sunlight"); "a traffic light" and "the string lights" are objects."""
    lows = [w.lower() for w in words]
    head = _head(lows) if len(lows) > 1 else lows[0]
    if set(lows) & _VIEWPOINT:
        return False  # "a vantage point atop a hill": where the camera is, not an object in the image
    if head not in _NON_OBJECT:
        return True
    k = lows.index(head)
    return head in {"light", "lights"} and k > 0 and lows[k - 1] in _OBJECT_LIGHTS


def _np_key(words: Sequence[str]) -> str:
    return " ".join("a" if w.lower() == "an" else w.lower() for w in words)


def _relation_sites(text: str) -> list[_Candidate]:
    """Relation prepositions with an object: flips, predicate changes and object swaps.

    Skipped: relations inside non-spatial idioms ("under the weight of", "leaving behind"), relations whose
    arguments are not placeable objects ("the contrast between ...", "under the morning sunlight"), vertical
    relations of fixed landmarks ("the floor beneath the table", "the sky above the city") and flips between
    two identical objects ("a phone in front of a phone").
    """
    out = []
    idioms = _idiom_spans(text)
    for m in _REL.finditer(text):
        group = m.lastgroup
        start, end = m.start(), m.end()
        if _in_spans(idioms, start, end):
            continue
        p2, p1 = _prev_tokens(text, start, 2)
        has_object = bool(_OBJECT.match(text, end))
        if group == "frontb":
            nxt = _next_token(text, end)
            if not nxt[:1].isalpha() or nxt in _CLAUSE_WORDS | {"with"}:
                out.append(_single(text, "flip", start, end, "behind"))
            continue
        if not has_object:
            if group in {"ab", "under"} and text.startswith(",", end) and p1 in {"", ".", ";", ":", "!", "?"}:
                out.append(_adverbial(text, m))
            continue
        left = _left_np(text, start)
        right = _right_np(text, end, between=False)
        if (left and not _placeable(left.words)) or (right and not _placeable(right[2])):
            continue
        if left is None and _abstract_of_before(text, start):
            continue  # "dozes in the shade of an old tree near the fence": the shade is not placed
        subj_head = _head(left.words).lower() if left else p1  # "on the wooden deck beneath them"
        obj_head = _head(right[2]).lower() if right else ""
        floor_subject = subj_head in _FLOOR_LIKE and obj_head not in _FLOOR_LIKE  # "the deck beneath them"
        if {subj_head, obj_head} & {"horizon", "skyline"}:
            continue  # "the horizon behind the barn" cannot come in front of it
        landmark = {subj_head, obj_head} & (_SKY | _GROUND_LEVEL) if group in _VERTICAL_GROUPS else set()
        if landmark or (floor_subject and group in _VERTICAL_GROUPS):
            # "the floor beneath the table", "the sky above the town": not movable; "a van parked on the
            # shore" may still move beside it (a predicate change), never under it
            if not (group == "on" and obj_head in _GROUND_LEVEL and subj_head not in _GROUND_LEVEL):
                continue
        same = bool(left and right) and _np_key(left.words) == _np_key(right[2])
        flip = axis = None
        if group == "comp":
            out += _compound_relation(text, m, same=same)
            continue
        if group == "h":
            axis = "horizontal"
        elif group == "hb":
            if not _bare_of_ok(text, start):
                continue
            axis = "horizontal"
        elif group in {"front", "behind", "hidden"}:
            flip, axis = ("in front of" if group != "front" else "behind"), "depth"
        elif group == "ab":
            flip, axis = _OPPOSITE[m.group(group).lower()], "vertical"
        elif group == "top":
            flip, axis = "beneath", "vertical"
        elif group == "under":
            if p1 == "from":
                continue
            flip, axis = "on top of", "vertical"
        elif group == "over":
            if not (p1 in _HANG_VERBS or ((p1 in _ADVERBS or p1.endswith("ly")) and p2 in _HANG_VERBS)):
                continue
            flip, axis = "below", "vertical"
        elif group == "on":
            noun = _next_token(text, _OBJECT.match(text, end).end())
            placed = p1 in _PLACE_VERBS or (p1 in _ADVERBS and p2 in _PLACE_VERBS)
            if not placed or {noun, obj_head} & _ON_BLOCK:
                continue  # "sits on the floor", "positioned on the busy waterfront": a place, not a support
            flip, axis = "under", "support"
        elif group in {"adj", "side"}:
            axis = "adjacent"
        elif group == "between":
            if _between_object(text, end):
                targets = ("in front of", "behind")
                out.append(_candidate(text, "predicate", [[(start, end, t)] for t in targets]))
        elif group == "aligned":
            phrase = m.group(group).lower()
            if phrase.startswith(("vertically", "horizontally")):
                word_end = start + phrase.index(" ")
                swapped = "horizontally" if phrase.startswith("vertically") else "vertically"
                out.append(_single(text, "predicate", start, word_end, swapped))
            else:
                out.append(_single(text, "predicate", start, end, "offset from"))
            continue
        if flip and not same and not landmark:
            out.append(_single(text, "flip", start, end, flip))
        if axis and p1 != "right":
            out.append(_candidate(text, "predicate", [[(start, end, t)] for t in _PREDICATE_TARGETS[axis]]))
        if group in {"h", "hb", "front", "behind", "hidden", "ab", "top", "under", "between"}:
            out.append(_swap(text, start, end, between=group == "between"))
    return out


_VERTICAL_GROUPS = {"comp", "ab", "top", "under", "over", "on", "between"}
_VERTICAL_WORDS = {"above": "below", "below": "above", "behind": "in front of", "in front of": "behind"}


def _abstract_of_before(text: str, pos: int) -> bool:
    """Whether the words just before ``pos`` (in its clause) hold an abstract "X of" ("the shade of a tree")."""
    toks = [t.lower() for t in _TOKEN.findall(text, max(0, pos - 80), pos)]
    cut = max((i for i, t in enumerate(toks) if not t[0].isalnum() or t in _CLAUSE_WORDS), default=-1)
    clause = toks[cut + 1 :]
    return any(a in _NON_OBJECT and b == "of" for a, b in itertools.pairwise(clause))


def _compound_relation(text: str, m: re.Match[str], *, same: bool) -> list[_Candidate | None]:
    """Compounds such as "below and to the right of": flip either part, or swap the two objects."""
    phrase = m.group()
    first = next(w for w in _VERTICAL_WORDS if phrase.lower().startswith(w))
    side = re.search(r"(left|right) of$", phrase, re.I)
    flips = [
        [(m.start(), m.start() + len(first), _VERTICAL_WORDS[first])],
        [(m.start() + side.start(1), m.start() + side.end(1), _OPPOSITE[side.group(1).lower()])],
    ]
    out = [] if same else [_candidate(text, "flip", flips)]
    return [*out, _swap(text, m.start(), m.end(), between=False)]


def _adverbial(text: str, m: re.Match[str]) -> _Candidate | None:
    """A clause-initial "Below, ..." / "Above, ..." flipped, unless its clause is about the sky or ground."""
    subject = [t.lower() for t in _TOKEN.findall(text, m.end() + 1, m.end() + 60)[:5]]
    if set(subject) & (_SKY | _GROUND_LEVEL | _NON_OBJECT | {"city", "valley", "town"}):
        return None
    word = m.group().lower()
    return _single(text, "flip", m.start(), m.end(), "above" if word != "above" else "below")


def _between_object(text: str, pos: int) -> bool:
    """Whether "between" has two noun phrases ("the sofa and the lamp") or one plural one ("two chairs")."""
    if _right_np(text, pos, between=True) is not None:
        return True
    right = _right_np(text, pos, between=False)
    return right is not None and _is_plural(right[2])


def _label(text: str, site: _Candidate) -> tuple[str, str, str, int] | None:
    """(word, determiner, next token, sentence start) for a position label like "the left lantern"."""
    edit = site.edits[0]
    word = edit.before.lower()
    if site.kind not in {"flip", "anchor"} or len(site.edits) != 1 or word not in _OPPOSITE:
        return None
    nxt = _next_token(text, edit.end)
    p2, p1 = _prev_tokens(text, edit.start, 2)
    det = p2 if p1 in _MODIFIERS else p1
    if nxt == "of" or not (_is_det_poss(det) or det in {"a", "an"}):
        return None
    return word, det, nxt, _sentence_span(text, edit.start)[0]


def _contrasting_labels(text: str, sites: list[_Candidate]) -> list[_Candidate]:
    """Replace flips of contrasting labels by a swap of both labels.

    Flipping one of "the left lantern ..., the right one ..." (or "the top shelf ... the bottom shelf") would
    name the same position twice; swapping both labels moves the two objects instead.
    """
    labels = [(site, _label(text, site)) for site in sites]
    labels = [(site, lab) for site, lab in labels if lab]
    clashing: set[_Candidate] = set()
    out = []
    for (a, la), (b, lb) in itertools.combinations(labels, 2):
        if _OPPOSITE[la[0]] != lb[0] or _OPPOSITE[lb[0]] != la[0]:
            continue
        same_clause = la[3] == lb[3] and la[1] == lb[1]
        same_noun = la[2] == lb[2] and la[2][:1].isalpha()
        if same_clause or same_noun:
            clashing |= {a, b}
            ea, eb = a.edits[0], b.edits[0]
            out.append(
                _candidate(text, "swap", [[(ea.start, ea.end, eb.before), (eb.start, eb.end, ea.before)]])
            )
    return [c for c in out if c] + [site for site in sites if site not in clashing]


def _is_plural(words: Sequence[str]) -> bool:
    det = words[0].lower()
    if det in _PLURAL_DETS or (det.isdigit() and det != "1"):
        return True
    if det in _SINGULAR_DETS:
        return False
    head = _head(words)
    return head.endswith("s") and not head.endswith(("ss", "us", "is"))


def _head(words: Sequence[str]) -> str:
    """Head noun of a noun phrase: the last word before "of"/"with", else the last word."""
    rest = [w.lower() for w in words[1:]]
    for i, w in enumerate(rest):
        if w in {"of", "with"} and i:
            return rest[i - 1]
    return rest[-1]


def _np_words_ok(words: Sequence[str]) -> bool:
    """Reject noun phrases that probably end in a verb ("a cat naps", "a dog sleeping")."""
    det = words[0].lower()
    if _head(words).endswith("ing") and _head(words) not in _ING_NOUNS:
        return False
    for word in words[1:]:
        low = word.lower()
        if low in {"of", "with"}:
            break
        if det in _SINGULAR_DETS and low.endswith("s") and not low.endswith(("ss", "us", "is", "'s", "’s")):
            return False
    return True


@dataclass(frozen=True)
class _LeftNP:
    start: int
    end: int
    words: list[str]
    has_verbs: bool  # adverbs or verbs stand between the noun phrase and the relation
    finite: re.Match[str] | None  # the finite verb that agrees with the noun phrase
    existential: bool  # "there is a cup to the left of ..."


def _left_np(text: str, pos: int) -> _LeftNP | None:
    """The noun phrase (and the verb group) before a relation starting at ``pos``."""
    toks = list(_TOKEN.finditer(text, max(0, pos - 240), pos))
    i = len(toks) - 1
    verbs: list[re.Match[str]] = []
    while i >= 0 and len(verbs) < 4 and toks[i].group().lower() in _SKIPPABLE:
        verbs.append(toks[i])
        i -= 1
    j, words, framing = i, [], False
    while j >= 0 and len(words) <= 7:
        low = toks[j].group().lower()
        after_of = j > 0 and toks[j - 1].group().lower() == "of"
        framing = after_of and not verbs and j > 1 and toks[j - 2].group().lower() in _FRAMING
        if low in _SWAP_DETS and words and (not after_of or framing):
            break  # "a photo of | a fork above ...": the framing text is not part of the object
        if not low[0].isalnum() or low in _NP_STOP:
            return None
        words.append(toks[j].group())
        j -= 1
    else:
        return None
    before = [t.lower() for t in _TOKEN.findall(text, max(0, toks[j].start() - 40), toks[j].start())]
    if before and before[-1] in _PREPOSITIONS and not framing:
        return None
    existential = len(before) >= 2 and before[-2] == "there" and before[-1] in {"is", "are", "was", "were"}
    finite = [v for v in verbs if v.group().lower() in _AGREE]
    return _LeftNP(
        start=toks[j].start(),
        end=toks[i].end(),
        words=[toks[j].group(), *reversed(words)],
        has_verbs=bool(verbs),
        finite=finite[-1] if finite else None,
        existential=existential or before[-1:] == ["there's"],
    )


def _right_np(text: str, pos: int, *, between: bool) -> tuple[int, int, list[str]] | None:
    """The noun phrase after a relation ending at ``pos`` (for "between", the one before "and")."""
    toks = list(_TOKEN.finditer(text, pos, min(len(text), pos + 240)))
    if not toks or toks[0].group().lower() not in _SWAP_DETS:
        return None
    words = [toks[0]]
    for k, tok in enumerate(toks[1:], start=1):
        low = tok.group().lower()
        if not low[0].isalnum() or low in _CLAUSE_WORDS:
            if between and not (
                low == "and" and k + 1 < len(toks) and toks[k + 1].group().lower() in _SWAP_DETS
            ):
                return None
            break
        if low in _NP_STOP or len(words) > 6:
            return None
        words.append(tok)
    else:
        if between:
            return None
    if len(words) < 2:
        return None
    return words[0].start(), words[-1].end(), [w.group() for w in words]


def _swap(text: str, start: int, end: int, *, between: bool) -> _Candidate | None:
    """Swap the noun phrases on both sides of a relation, fixing verb agreement when numbers differ."""
    right = _right_np(text, end, between=between)
    left = _left_np(text, start)
    if right is None or left is None:
        return None
    rs, re_, rwords = right
    for words in (left.words, rwords):
        if _head(words) in _LANDMARKS or not _np_words_ok(words):
            return None
    subs = [(left.start, left.end, text[rs:re_]), (rs, re_, text[left.start : left.end])]
    if _is_plural(left.words) != _is_plural(rwords):
        if left.existential:
            return None
        if left.finite is not None:
            verb = left.finite
            subs.append((verb.start(), verb.end(), _AGREE[verb.group().lower()]))
    return _candidate(text, "swap", [subs])


def _attribute_sites(text: str, sites: Sequence[_Candidate]) -> list[_Candidate]:
    """Swap two colours (or two materials) bound to opposite positions in one sentence."""
    out = []
    for sent in _SENTENCE.finditer(text):
        s0, s1 = sent.span()
        poles: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for site in sites:
            if site.kind in {"flip", "anchor"} and s0 <= site.start and site.end <= s1:
                for w in _POLE_WORD.finditer(site.edits[0].before):
                    poles.setdefault(_POLES[w.group(1).lower()], []).append((site.start, site.end))
        axes = {axis for axis, side in poles if (axis, 1 - side) in poles}
        if not axes:
            continue
        markers = sorted(span for (axis, _), spans in poles.items() if axis in axes for span in spans)
        attrs = list(_ATTRIBUTE.finditer(text, s0, s1))
        for lexicon in (_COLOURS, _MATERIALS):
            found = [a for a in attrs if a.group(1).lower() in lexicon]
            if len(found) != 2 or found[0].group(1).lower() == found[1].group(1).lower():
                continue
            a, b = found
            if not all(_bound_attribute(text, x) for x in found):
                continue
            if not any(a.end() <= s < b.start() for s, _ in markers):
                continue
            subs = [(a.start(1), a.end(1), b.group(1).lower()), (b.start(1), b.end(1), a.group(1).lower())]
            block = (min(markers[0][0], a.start()), max(max(e for _, e in markers), b.end()))
            out.append(_candidate(text, "attribute_swap", [subs], block=block))
    return out


def _bound_attribute(text: str, m: re.Match[str]) -> bool:
    """An attribute used before a noun ("a blue lantern") or predicatively ("is blue")."""
    nxt = _next_token(text, m.end())
    if nxt.isalpha() and nxt not in _NP_STOP:
        return True
    return _prev_tokens(text, m.start(), 1)[0] in _PREDICATIVE


def _permutations(n: int) -> list[tuple[int, ...]]:
    """Non-identity orderings of ``n`` items (all of them up to 4 items, a useful subset beyond)."""
    identity = tuple(range(n))
    if n <= 4:
        return [p for p in itertools.permutations(identity) if p != identity]
    perms = {identity[k:] + identity[:k] for k in range(1, n)} | {identity[::-1]}
    for k in range(n - 1):
        p = list(identity)
        p[k], p[k + 1] = p[k + 1], p[k]
        perms.add(tuple(p))
    return sorted(perms)


def _permute(text: str, spans: Sequence[tuple[int, int]], *, block: tuple[int, int]) -> _Candidate | None:
    alternatives = [
        [(s, e, text[spans[p][0] : spans[p][1]]) for (s, e), p in zip(spans, perm, strict=True)]
        for perm in _permutations(len(spans))
    ]
    return _candidate(text, "row_permute", alternatives, block=block)


def _row_sites(text: str) -> list[_Candidate]:
    """Ordered rows: "from left to right: A, B, C", slot phrases left/centre/right, "top/middle/bottom shelf"."""
    out = []
    for m in _ROW_HEAD.finditer(text):
        stop = _CLAUSE_END.search(text, m.end())
        region_end = stop.start() if stop else len(text)
        spans, cursor = [], m.end()
        for sep in [*_LIST_SEP.finditer(text, m.end(), region_end), None]:
            end = sep.start() if sep else region_end
            if not _list_item_ok(text[cursor:end]):
                break  # the list ends here (e.g. ", each on its own plate")
            spans.append((cursor, end))
            if sep is None:
                break
            cursor = sep.end()
        if 3 <= len(spans) <= 8:
            out.append(_permute(text, spans, block=(m.start(), spans[-1][1])))
    for sent in _SENTENCE.finditer(text):
        slots = [
            s
            for s in _SLOT.finditer(text, *sent.span())
            if not (s.group(1).lower() == "to" and text.startswith(" of", s.end()))
        ]
        positions = [_slot_position(s.group(2)) for s in slots]
        if len(slots) == 3 and sorted(positions) == [0, 1, 2]:
            spans = [s.span() for s in slots]
            rotations = [
                [(s, e, text[slice(*spans[(k + r) % 3])]) for k, (s, e) in enumerate(spans)] for r in (1, 2)
            ]
            out.append(_candidate(text, "row_permute", rotations))
    groups: dict[str, list[re.Match[str]]] = {}
    for m in _ROW_WORD.finditer(text):
        noun = m.group(2).lower()
        if noun in _ROW_NOUNS and _is_det_poss(_prev_tokens(text, m.start(), 1)[0]):
            groups.setdefault(noun, []).append(m)
    for members in groups.values():
        pos = [_row_position(m.group(1)) for m in members]
        axes = {a for a, _ in pos if a != "*"}
        if len(members) == 3 and len(axes) == 1 and sorted(p for _, p in pos) == [0, 1, 2]:
            spans = [m.span(1) for m in members]
            out.append(_permute(text, spans, block=(spans[0][0], spans[-1][1])))
    return out


def _slot_position(word: str) -> int:
    return {"left": 0, "right": 2}.get(word.lower(), 1)


def _row_position(word: str) -> tuple[str, int]:
    word = word.lower()
    if word in {"middle", "center", "centre"}:
        return "*", 1
    axis, side = _POLES[word]
    return axis, 2 * side


def _list_item_ok(item: str) -> bool:
    words = _TOKEN.findall(item)
    return (
        1 < len(words) <= 7
        and words[0].lower() in _SWAP_DETS
        and all(w[0].isalnum() and w.lower() not in _NP_STOP for w in words[1:])
    )


# --------------------------------------------------------------------------------------------- perturber
def _overlaps(a: _Candidate, b: _Candidate) -> bool:
    return a.start < b.end and b.start < a.end


def _max_disjoint(cands: Sequence[_Candidate]) -> int:
    """Largest number of candidates with pairwise disjoint blocks (greedy by end is optimal)."""
    count, last_end = 0, -1
    for c in sorted(cands, key=lambda c: (c.end, c.start)):
        if c.start >= last_end:
            count, last_end = count + 1, c.end
    return count


def _combined_problems(result: PerturbationResult) -> list[str]:
    from spatialscore.data.perturb_validity import check_perturbation  # imports this module

    return check_perturbation(result.prompt, result.perturbed_prompt, result.edits)


_SIDE_LABEL = re.compile(
    r"(?<![\w'’-])(?:the|a|an|its|their)\s+(?P<noun1>[^\W\d_][\w'’-]*)\s+(?:\w+\s+){0,2}?(?:on|at|to)\s+the\s+"
    r"(?:far\s+)?(?P<side1>left|right)\b(?!\s+of\b)"
    r"|(?<![\w'’-])the\s+(?P<side2>left|right)\s+(?P<noun2>[^\W\d_][\w'’-]*)",
    re.I,
)


def _with_labels(prompt: str, edit: Edit) -> Edit | None:
    """``edit`` plus flips of the other mentions that place its objects left or right ("The hare on the right
    ..." after "a fox to the left of a hare" became "... to the right of ..."), or ``None`` if there are none."""
    nouns = {w.lower() for w in _TOKEN.findall(prompt, *_sentence_span(prompt, edit.start))}
    subs = [(edit.start, edit.end, edit.after)]
    for m in _SIDE_LABEL.finditer(prompt):
        side = "side1" if m.group("side1") else "side2"
        noun = m.group("noun1") or m.group("noun2")
        if noun.lower() in nouns and not (edit.start < m.end() and m.start() < edit.end):
            subs.append((m.start(side), m.end(side), _OPPOSITE[m.group(side).lower()]))
    if len(subs) == 1:
        return None
    return _compose(prompt, edit.kind, subs)


def _verified(prompt: str, cand: _Candidate) -> _Candidate | None:
    """``cand`` with only the edits that pass the validity rules (an edit that leaves a later left/right
    mention stale is extended to flip it too), or ``None`` if none does."""
    from spatialscore.data.perturb_validity import check_perturbation  # imports this module

    def ok(edit: Edit | None) -> bool:
        return edit is not None and not check_perturbation(prompt, apply_edits(prompt, [edit]), [edit])

    edits: list[Edit] = []
    for edit in cand.edits:
        fixed = edit if ok(edit) else _with_labels(prompt, edit)
        if ok(fixed) and fixed not in edits:
            edits.append(fixed)
    if not edits:
        return None
    start, end = min(cand.start, *(e.start for e in edits)), max(cand.end, *(e.end for e in edits))
    return _Candidate(cand.kind, start, end, tuple(edits))


class RulePerturber:
    """Rule-based spatial perturber (regular expressions, no NLP dependencies).

    ``kinds`` restricts the perturbation kinds it may use (default: all of :data:`KINDS`). With ``verify``
    (the default) every candidate edit, and every combination of 2-3 edits, must also pass
    :func:`spatialscore.data.perturb_validity.check_perturbation`; ``verify=False`` gives the rules alone.
    """

    def __init__(self, *, kinds: Iterable[str] = KINDS, max_tries: int = 20, verify: bool = True) -> None:
        self.kinds = tuple(kinds)
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown perturbation kinds {sorted(unknown)}; choose from {KINDS}")
        self.max_tries = max_tries
        self.verify = verify

    def _candidates(self, prompt: str) -> list[_Candidate]:
        words = [c for c in _lr_sites(prompt) + _compound_sites(prompt) + _vd_sites(prompt) if c]
        sites = _contrasting_labels(prompt, words)
        sites += [c for c in _relation_sites(prompt) + _row_sites(prompt) if c]
        sites += [c for c in _attribute_sites(prompt, words) if c]
        unique = {(c.kind, c.edits): c for c in sites if c.kind in self.kinds}
        cands = sorted(
            unique.values(),
            key=lambda c: (c.start, c.end, c.kind, [(e.start, e.end, e.after) for e in c.edits]),
        )
        if self.verify:
            cands = [v for v in (_verified(prompt, c) for c in cands) if v is not None]
        return cands

    def candidates(self, prompt: str) -> list[Edit]:
        """Every single edit this perturber could make to ``prompt`` (for inspection and tests)."""
        return [e for c in self._candidates(prompt) for e in c.edits]

    def __call__(self, prompt: str, *, num: int, rng: random.Random) -> PerturbationResult:
        if num not in (1, 2, 3):
            raise ValueError(f"num must be 1, 2 or 3, got {num}")
        cands = self._candidates(prompt)
        if not cands:
            raise PerturbationError("no spatial relation phrase found", available=0)
        available = _max_disjoint(cands)
        if available < num:
            plural = "" if available == 1 else "s"
            raise PerturbationError(
                f"only {available} perturbable phrase{plural}, {num} requested", available=available
            )
        for _ in range(self.max_tries):
            edits = [rng.choice(c.edits) for c in self._choose(cands, num, rng)]
            result = PerturbationResult.from_edits(prompt, edits, num_perturbations=num)
            if num == 1 or not self.verify or not _combined_problems(result):
                return result
        raise PerturbationError(f"no consistent set of {num} perturbations found", available=num - 1)

    def _choose(self, cands: list[_Candidate], num: int, rng: random.Random) -> list[_Candidate]:
        """Pick ``num`` non-overlapping candidates: a random kind first, then a site of that kind."""
        for _ in range(self.max_tries):
            chosen: list[_Candidate] = []
            pool = cands
            while len(chosen) < num:
                pool = [c for c in pool if not any(_overlaps(c, x) for x in chosen)]
                if not pool:
                    break
                kind = rng.choice(sorted({c.kind for c in pool}))
                chosen.append(rng.choice([c for c in pool if c.kind == kind]))
            if len(chosen) == num:
                return chosen
        disjoint, last_end = [], -1
        for c in sorted(cands, key=lambda c: (c.end, c.start)):
            if c.start >= last_end:
                disjoint.append(c)
                last_end = c.end
        return rng.sample(disjoint, num)


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


# --------------------------------------------------------------------------------------------- CLI
PERTURBER_ALIASES = {"llm": "spatialscore.data.llm_perturb:LLMPerturber"}


def load_perturber(spec: str, options: dict[str, Any] | None = None) -> Perturber:
    """Import ``"module:Class"`` (or an alias of :data:`PERTURBER_ALIASES`) and return an instance made with
    keyword ``options`` (or the object itself if it is not a class and there are no options). A class with a
    ``from_options(options)`` classmethod reads the flat options itself (the LLM perturber builds its
    :class:`~spatialscore.chat.EndpointConfig` from them)."""
    spec = PERTURBER_ALIASES.get(spec, spec)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--perturber must look like 'module:Class', got {spec!r}")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load perturber {spec!r}: {exc}") from exc
    if options and not isinstance(obj, type):
        raise ValueError(f"perturber {spec!r} is not a class and takes no options")
    try:
        if isinstance(obj, type) and callable(getattr(obj, "from_options", None)):
            perturber = obj.from_options(options or {})
        else:
            perturber = obj(**(options or {})) if isinstance(obj, type) else obj
    except TypeError as exc:
        raise ValueError(f"cannot create perturber {spec!r}: {exc}") from exc
    if not callable(perturber):
        raise ValueError(f"perturber {spec!r} is not callable")
    return perturber


def read_prompts(path: str | Path) -> list[tuple[Any, str]]:
    """Read ``(id, prompt)`` pairs: JSONL (``.jsonl``, a ``prompt`` field, optional ``id``) or plain text.

    Blank lines are ignored; the id defaults to the 1-based line number. Errors name the file and line.
    """
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if path.suffix.lower() != ".jsonl":
                records.append((lineno, line.strip()))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise ValueError(f"{path}:{lineno}: expected an object with a string field 'prompt'")
            records.append((obj.get("id", lineno), obj["prompt"]))
    return records


def _skipped_path(out: Path) -> Path:
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + ".skipped.jsonl")


def cli_main(argv: list[str] | None = None) -> int:
    """``spatialscore perturb``: write perturbed prompts as JSONL; skipped ones to ``OUT.skipped.jsonl``."""
    parser = argparse.ArgumentParser(
        prog="spatialscore perturb",
        description="Make minimally perturbed variants of scene prompts that change only spatial relations.",
    )
    parser.add_argument(
        "--prompts",
        required=True,
        type=Path,
        help="text file (one prompt per line) or .jsonl with a 'prompt' field",
    )
    parser.add_argument("--out", required=True, type=Path, help="output JSONL")
    parser.add_argument("--num", choices=NUM_CHOICES, default="1", help="perturbations per prompt")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; prompt i draws from (seed, i), so the output is reproducible"
    )
    parser.add_argument(
        "--perturber",
        default=None,
        metavar="MODULE:CLASS",
        help="custom perturber class, or 'llm' (the LLM perturber; default: the built-in rule perturber)",
    )
    parser.add_argument(
        "--perturber-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the perturber (repeatable; JSON values parsed): a keyword argument of its class; for "
        "'llm' an endpoint setting (base_url=URL, model=M, concurrency=N, timeout=S, ...), kinds or attempts",
    )
    args = parser.parse_args(argv)
    fatal: tuple[type[Exception], ...] = ()  # perturber errors that stop the run (an endpoint that is down)
    try:
        records = read_prompts(args.prompts)
        if args.perturber:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            from spatialscore.chat import ChatEndpointError, parse_options

            fatal = (ChatEndpointError,)
            perturber = load_perturber(
                args.perturber, parse_options(args.perturber_option, what="--perturber-option")
            )
        elif args.perturber_option:
            raise ValueError("--perturber-option needs --perturber")
        else:
            perturber = RulePerturber()
    except (OSError, ValueError) as exc:
        print(f"spatialscore perturb: error: {exc}", file=sys.stderr)
        return 2
    try:
        done = _run([p for _, p in records], num=args.num, seed=args.seed, perturber=perturber)
    except fatal as exc:
        print(
            f"spatialscore perturb: error: {exc} (replies received are cached; rerun to resume)",
            file=sys.stderr,
        )
        return 1
    skipped_path = _skipped_path(args.out)
    reasons: Counter[str] = Counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as out, skipped_path.open("w", encoding="utf-8") as skip:
        for (rec_id, _), item in zip(records, done, strict=True):
            if isinstance(item, SkippedPrompt):
                reasons[item.reason] += 1
                row = {"id": rec_id, "prompt": item.prompt, "reason": item.reason}
                skip.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                out.write(json.dumps({"id": rec_id, **item.to_dict()}, ensure_ascii=False) + "\n")
    n_skipped = sum(reasons.values())
    print(
        f"spatialscore perturb: {len(records) - n_skipped} of {len(records)} prompts perturbed -> {args.out}; "
        f"{n_skipped} skipped -> {skipped_path}",
        file=sys.stderr,
    )
    for reason, count in reasons.most_common():
        print(f"  {count} x {reason}", file=sys.stderr)
    return 0
