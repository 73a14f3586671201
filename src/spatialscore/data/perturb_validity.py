"""Automatic validity rules for spatially perturbed prompts (from any perturber: rules, an LLM, a person).

:func:`check_perturbation` returns human-readable problems (an empty list means valid). The rules:

1. **Consistent edits**: applying the edits to the prompt gives the perturbed prompt; something changed.
2. **Only relation words or whole object phrases touched**: outside relation phrases ("to the left of",
   "behind", "on top of", ...) and position labels ("the *left* lantern", "the *upper-left* corner"), the
   words are the same multiset (case, "a"/"an" and verb agreement such as "sits"/"sit" aside); no edit
   touches a non-spatial idiom ("under the weight of", "leaving behind", "on its hind legs", ...).
3. **Same objects**: the multiset of noun phrases is unchanged, so whole phrases moved, not parts of them.
4. **Grammatical noun phrases**: verbs, commas, clause words and sentence-opening framing text ("a photo
   of" in a sentence without a verb) keep their order; only noun phrases and relation phrases move or
   change. Relation arguments are things that can be placed (not "the contrast", "the morning sunlight", "a
   routine", a camera "vantage point"); "between" keeps two arguments; the frame, the camera and the viewer
   are only left or right of something ("to the left of the frame", never "above the frame").
5. **Arrangement actually different**: the relation facts differ after mapping converses together ("A left
   of B" equals "B right of A"; "a phone in front of a phone" flipped is a no-op).
6. **No detectable self-contradiction**: no object newly placed on both sides of an axis by a mention the edit
   left stale: left/right ("on the right" after a flip or swap), depth ("in the foreground" yet "on the
   horizon" or only "behind" things), centre/periphery, around/beside ("in front of the carousel ... encircle
   it"), including region summaries ("The background features X"), comparatives in the same sentence ("behind
   the bench, closer to the foreground"), chained and comma-continued relations ("a cup on a tray next to the
   lamp", "..., near the printer") and "this person" for the person of the sentence before; "A near B" with A and
   B on opposite sides of a third object; a chain of relations that puts an object labelled on the right left of
   one labelled on the left; up/down ("the worn desk beneath them" once nothing is on the desk; for things
   standing on the ground, "in the upper part of the image" is far: not "closer to the foreground"); no two
   mentions turned into the same corner or the same contrasting label ("the left lantern ..., the left one"), no
   implausible flip of a fixed landmark ("the floor above the table", "the sky below", "the rug above the table",
   "a leap below the mat"), no two things of a kind standing on the ground here stacked ("a brown horse above
   the grey horse" among horses on a meadow), nothing newly put beyond the ocean, horizon or mountains of its
   sentence ("a bike filling the background while the sea shines in the midground"). Two mentions introduced
   with "a" ("a black goat ... There is also a black goat") are two objects.

The rules are heuristics over word lists and regular expressions (no parser): they reject some valid
rewrites (e.g. a participle clause that moves across a relation) rather than let broken ones through.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from spatialscore.data.perturb.edits import Edit, apply_edits
from spatialscore.data.perturb.lexicon import (
    _AGREE,
    _BEFORE_PRONOUN,
    _COLOURS,
    _FAR_LANDMARKS,
    _FLOOR_LIKE,
    _FRAMING,
    _GROUND_LEVEL,
    _GROUND_SURFACES,
    _HANG_VERBS,
    _ING_NOUNS,
    _MATERIALS,
    _NONFINITE,
    _ORIENT_VERBS,
    _OTHER_VERBS,
    _OVERHEAD_NOUNS,
    _PLACE_VERBS,
    _RIGHT_NON_SPATIAL,
    _SKY,
    _VIEWER,
    NON_SPATIAL_IDIOM,
)
from spatialscore.data.perturb.rules import _in_spans, _is_frame, _placeable

__all__ = ["check_perturbation"]

_SUMMARY_VERBS = r"(?:features|shows|showcases|includes|contains|reveals|displays|is|holds|boasts|presents)"
# Relation phrases, longest first; each maps to a relation key for the arrangement facts.
_REL_PATTERNS: list[tuple[str, str]] = [
    (r"from (?:left|right|top|bottom|front|back) to (?:left|right|top|bottom|front|back)", "row"),
    (r"to the (?:(?:immediate|far|extreme) )?left(?: side| hand side)? of", "left"),
    (r"to the (?:(?:immediate|far|extreme) )?right(?: side| hand side)? of", "right"),
    (r"(?:on|at) the (?:(?:immediate|far|extreme) )?left(?:(?:-hand| hand)? side)? of", "left"),
    (r"(?:on|at) the (?:(?:immediate|far|extreme) )?right(?:(?:-hand| hand)? side)? of", "right"),
    (
        r"(?:at|on|in|to) the (?:(?:far|extreme|very|upper|lower) )?left(?: side| end| half| edge|-hand side)?",
        "on-left",
    ),
    (
        r"(?:at|on|in|to) the (?:(?:far|extreme|very|upper|lower) )?right(?: side| end| half| edge|-hand side)?",
        "on-right",
    ),
    (r"(?:at|on|in) the (?:very )?(?:top|upper part|upper half)(?: of)?", "on-top"),
    (r"(?:at|on|in) the (?:very )?(?:bottom|lower part|lower half)(?: of)?", "on-bottom"),
    (r"(?:at|in|to) the (?:front)(?: of)?", "on-front"),
    (r"(?:at|in|to) the (?:back|rear)(?: of)?", "on-back"),
    (r"(?:in|into|toward|towards|at) the foreground(?: of)?", "on-front"),
    (r"(?:in|into|toward|towards|at) the background(?: of)?", "on-back"),
    (r"(?:in|into|toward|towards) the (?:far |misty |hazy |far-off )?distance", "on-back"),
    (r"in the midground", "on-mid"),
    # "The background features a fence": the region summary of a sentence places what follows the verb
    (r"(?:^|(?<=[.;!?] ))(?:the )?foreground " + _SUMMARY_VERBS, "on-front"),
    (r"(?:^|(?<=[.;!?] ))(?:the )?background " + _SUMMARY_VERBS, "on-back"),
    (r"(?:^|(?<=[.;!?] ))(?:the )?midground " + _SUMMARY_VERBS, "on-mid"),
    # "closer to the camera than the bench": in front of it; ", closer to the foreground": a comparative
    (r"(?:closer|nearer) to the (?:foreground|camera|viewer) than", "front"),
    (r"(?:closer|nearer) to the background than|(?:further|farther) from the (?:camera|viewer) than", "behind"),
    (r"(?:closer|nearer) to the (?:foreground|camera|viewer)", "closer-front"),
    (
        r"(?:closer|nearer) to the background|(?:further|farther) (?:from the (?:camera|viewer)|back)(?! than)",
        "closer-back",
    ),
    (r"(?:in|at) the (?:very )?(?:center|centre|middle)(?: of)?", "center"),
    (r"(?:in|on|at) the periphery(?: of)?", "periphery"),
    (r"on (?:the )?side of", "near"),
    (r"left of", "left"),
    (r"right of", "right"),
    (r"in front of", "front"),
    (_BEFORE_PRONOUN, "front"),
    (r"(?:toward|towards|away from)(?= the " + _VIEWER + r"(?![\w'’-]))", "orient"),
    (r"in front", "on-front"),
    (r"on top of", "above"),
    (r"(?:(?:partly|partially|half) )?(?:hidden|obscured|occluded|blocked) (?:by|behind)", "behind-of"),
    (r"next to|close to|adjacent to|alongside|beside|besides|near(?:by)?", "near"),
    (r"(?:(?:vertically|horizontally) )?aligned with|offset from", "aligned"),
    (r"off-cent(?:er|re)|cent(?:er|r)ed|centrally", "centered"),
    (r"distant|far-off|faraway", "far"),
    (r"surrounded by|encircled by|flanked by|surrounding", "around"),
    (r"behind", "behind"),
    (r"above|atop|over|overhead", "above"),
    (r"below|beneath|underneath|under", "below"),
    (r"between|among|amongst|amid|amidst", "between"),
    (r"on|onto|upon", "on"),
    (r"inside|within|in|into", "in"),
    (r"around|against|across|along|beyond|opposite|outside|at|by|facing", "other"),
]
_REL = re.compile(
    r"(?<![\w'’-])(?:" + "|".join(f"(?P<r{i}>{p})" for i, (p, _) in enumerate(_REL_PATTERNS)) + r")(?![\w'’-])",
    re.I,
)
_FRAME = re.compile(
    r"(?<![\w'’-])(?:(?:a|an|the)\s+)?(?:(?:close-up|closeup|wide|aerial|overhead|realistic|detailed|"
    r"high-resolution|professional|cinematic|black and white|vintage|digital|macro)\s+)*"
    r"(?:photo|photograph|picture|image|painting|drawing|illustration|rendering|render|shot|snapshot|"
    r"sketch|depiction|view|scene|portrait|close-up|closeup|artwork|poster|still)\s+of(?![\w'’-])",
    re.I,
)
_WORD = re.compile(r"[^\W_](?:[\w'’-]*[^\W_])?|[^\w\s]")

# Relation keys as (axis, sign) for converse matching; unary keys place one object.
_DIRECTED = {
    "left": ("h", -1),
    "right": ("h", 1),
    "above": ("v", 1),
    "below": ("v", -1),
    "front": ("d", 1),
    "behind": ("d", -1),
    "behind-of": ("d", -1),  # "hidden by Y": the subject is behind Y
}
# Stale mentions: where a relation key places its subject, per axis ("h" left/right, "d" depth, "v" up/down, "r"
# centre or edge, "a" around or beside); a binary key also places its object on the opposite pole.
_UNARY_POLES = {
    "on-left": ("h", "left"),
    "on-right": ("h", "right"),
    "on-front": ("d", "in front"),
    "on-back": ("d", "behind"),
    "on-mid": ("d", "in the midground"),
    "center": ("r", "at the center"),
    "periphery": ("r", "at the periphery"),
    "on-top": ("v", "at the top"),
    "on-bottom": ("v", "at the bottom"),
}
# in a photograph, the upper part of the ground is the far part: labels that also place a grounded object in depth
_IMAGE_DEPTH = {"on-top": "behind", "on-bottom": "in front"}
_BINARY_POLES = {
    "left": ("h", "left"),
    "right": ("h", "right"),
    "front": ("d", "in front"),
    "behind": ("d", "behind"),
    "behind-of": ("d", "behind"),
    "above": ("v", "above"),
    "on": ("v", "above"),
    "below": ("v", "below"),
}
# comparatives after a relation ("..., closer to the foreground"): against an opposite relation of the same sentence
_COMPARATIVE = {"closer-front": ("d", "in front"), "closer-back": ("d", "behind")}
_OPPOSITE_POLE = {
    "left": "right",
    "right": "left",
    "in front": "behind",
    "behind": "in front",
    "around": "beside",
    "beside": "around",
    "above": "below",
    "below": "above",
}
# absolute poles that contradict being only ever on the other side of things: "the lamp on the right" only
# left of things, a foreground fence only behind things; a background lighthouse in front of a rocky point is fine
_AGAINST_POLES = {"left", "right", "in front"}
_BESIDE_KEYS = {"left", "right", "front", "behind", "behind-of", "near"}  # one side of it, not all around it
_ANTECEDENT_KEYS = {*_BESIDE_KEYS, "around", "above", "below", "between"}  # what "it" may point back to
_AROUND_VERBS = set("surround surrounds encircle encircles ring rings circle circles enclose encloses".split())
_HORIZON_PREPS = {"on", "at", "along", "near"}  # "drifts on the horizon": far away
_PRONOUNS = {"it": False, "them": True}  # plural?
_RELATIVE_PRONOUNS = {"which", "who", "that"}
_FRONTED_FILLERS = set(
    "we you one there is are was were can could see also stands stand sits sit lies lie rises rise looms loom".split()
)
_MARGINAL = set("barely hardly scarcely slightly partly partially somewhat".split())  # not with a point

_CLAUSE_WORDS = set("and or but while as which that where who whose when so then than there yet nor".split())
_PRONOUN_STOP = set("he she they we you i".split())
_FINITE = (
    set(_AGREE)
    | _OTHER_VERBS
    | _PLACE_VERBS
    | _HANG_VERBS
    | _ORIENT_VERBS
    | (_NONFINITE - {"set"})
    | set("has have had could would might must should does did be been being see sees seen".split())
)
_PREP_STOP = set("from for of to with without about during through toward towards via like unlike".split())
_POSITION_WORDS = set(
    "left right leftmost rightmost upper lower top bottom front back rear middle center centre "
    "far near nearest farthest foreground background midground overhead ground-level".split()
)
_CORNER = re.compile(r"(?<![\w'’-])(upper|lower|top|bottom)[- ](left|right)(?![\w'’-])", re.I)
_SINGULAR_DETS = {"a", "an", "one", "each", "every", "another", "this", "that"}
_DETS = {
    "the",
    "a",
    "its",
    "his",
    "her",
    "their",
    "your",
    "our",
    "my",
    "this",
    "that",
    "these",
    "those",
    "each",
}
_QUANTIFIERS = {"all", "some", "few", "many", "several", "both", "other", "another", "one", *_SINGULAR_DETS}
_POS_MODIFIERS = {"far", "very", "extreme", "upper", "lower", "top", "bottom", "front", "back"}

_VERTICAL_UP = {"above", "on", "on-top"}
_VERTICAL_DOWN = {"below", "on-bottom"}


@dataclass(frozen=True)
class _Item:
    """One unit of a prompt: a relation phrase, framing text, a noun phrase, or another word/mark."""

    kind: str  # "rel", "frame", "np", "word"
    norm: str  # the text up to case, "a"/"an" and verb agreement: tells whether the item changed
    shape: str  # ``norm`` with relation phrases and position words masked: what must be preserved
    start: int
    end: int
    key: str = ""  # relation key for "rel"; head noun for "np"


def _norm_word(word: str) -> str:
    low = word.lower().replace("’", "'")
    if low == "an":
        return "a"
    return min(low, _AGREE[low]) if low in _AGREE else low


def _shape_word(norm: str, prev: str, nxt: str) -> str:
    """Mask a position word after a determiner ("the *left* lantern", "its *upper-left* corner"), but not
    "the right answer" or "she left the keys"."""
    if _CORNER.fullmatch(norm) or norm in {"foreground", "background", "midground"}:
        return "<pos>"  # a region word is a position wherever it stands ("the rocky foreground")
    after_det = prev in _DETS or prev in _POS_MODIFIERS or prev.endswith("'s") or prev in _ORIENT_VERBS
    after_det = after_det or prev in {"", ".", "!", "?", ";", ":"}  # "Foreground elements include ..."
    if norm in _POSITION_WORDS and nxt not in _RIGHT_NON_SPATIAL and after_det:
        return "<pos>"
    return norm


def _rel_key(match: re.Match[str]) -> str:
    return _REL_PATTERNS[int(match.lastgroup[1:])][1]


def _is_np_word(word: str) -> bool:
    low = word.lower()
    if not word[0].isalnum():
        return False
    if low in _CLAUSE_WORDS or low in _FINITE or low in _PREP_STOP or low in _PRONOUN_STOP:
        return False
    return not (low.endswith("ing") and len(low) > 4 and low not in _ING_NOUNS)


def _compound_noun(word: str, chunk: Sequence[tuple[str, int, int]]) -> bool:
    """A verb's base form ending a singular noun phrase is a noun ("the music stand"); "the cats stand"
    and "a dog sits" keep their verbs."""
    low = word.lower()
    if low not in _FINITE or low + "s" not in _FINITE or len(chunk) < 2:
        return False
    return chunk[0][0].lower() in {"a", "an", "the", "this", "that"} and not chunk[-1][0].lower().endswith("s")


def _head(words: Sequence[str]) -> str:
    """Head noun of a noun phrase: the word before the first "of"/"with"/participle, else the last word."""
    for i, word in enumerate(words):
        if i and (word in {"of", "with"} or (word.endswith("ing") and word not in _ING_NOUNS)):
            return words[i - 1]
    return words[-1]


def _overhead_adjective(text: str, rel: re.Match[str]) -> bool:
    """ "*Overhead* lights", "an *overhead* fan": a position word of a noun phrase, not a relation."""
    nxt = _WORD.match(text, rel.end() + 1) if text[rel.end() : rel.end() + 1] == " " else None
    return rel.group().lower() == "overhead" and nxt is not None and nxt.group().lower() in _OVERHEAD_NOUNS


def _frames_sentence(text: str, pos: int, raw: Sequence[tuple[str, str, int, int, str]]) -> bool:
    """Framing text ("a photo of") opens a sentence without a finite verb ("a photo of a cat left of a dog");
    in "A painting of a ship hangs above the bed" the painting is an object."""
    if raw and raw[-1][1] not in {".", "!", "?", ";", ":"}:
        return False
    end = re.compile(r"[.!?;]").search(text, pos)
    words = _WORD.findall(text, pos, end.start() if end else len(text))
    return not any(w.lower() in _FINITE for w in words)


@functools.lru_cache(maxsize=512)
def _items(text: str) -> tuple[_Item, ...]:
    """Split ``text`` into relation phrases, framing text, noun-phrase chunks and other words (cached: the
    rule perturber checks many edits of one prompt)."""
    raw: list[tuple[str, str, int, int, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        frame = _FRAME.match(text, pos)
        if frame and _frames_sentence(text, pos, raw):
            raw.append(("frame", "<frame>", frame.start(), frame.end(), ""))
            pos = frame.end()
            continue
        rel = _REL.match(text, pos)
        if rel and not _overhead_adjective(text, rel):
            raw.append(("rel", "<rel>", rel.start(), rel.end(), _rel_key(rel)))
            pos = rel.end()
            continue
        word = _WORD.match(text, pos)
        raw.append(("word", word.group(), word.start(), word.end(), ""))
        pos = word.end()
    items: list[_Item] = []
    chunk: list[tuple[str, int, int]] = []

    def flush() -> None:
        if chunk:
            words = [_norm_word(w) for w, _, _ in chunk]
            before = items[-1].norm if items else ""
            shape = [
                _shape_word(w, words[k - 1] if k else before, words[k + 1] if k + 1 < len(words) else "")
                for k, w in enumerate(words)
            ]
            items.append(_Item("np", " ".join(words), " ".join(shape), chunk[0][1], chunk[-1][2], _head(words)))
            chunk.clear()

    for k, (kind, word, start, end, key) in enumerate(raw):
        nxt = raw[k + 1] if k + 1 < len(raw) else None
        joins_np = kind == "word" and _is_np_word(word)
        # "of"/"with" inside a noun phrase ("a slice of cake"), a participle with an object ("a man
        # holding an umbrella"), a framing-free "of" chain: keep them in the chunk
        if kind == "word" and chunk and nxt is not None and nxt[0] == "word" and _is_np_word(nxt[1]):
            low = word.lower()
            joins_np = joins_np or low in {"of", "with"} or (low.endswith("ing") and low not in _FINITE)
        if kind == "word" and not joins_np and _compound_noun(word, chunk):
            joins_np = True  # "the music stand", "a lamp rest": a base-form verb after a singular noun
        if joins_np:
            chunk.append((word, start, end))
            continue
        flush()
        if kind == "word":
            norm = shape = _norm_word(word)
        else:
            norm, shape = " ".join(w.lower() for w in text[start:end].split()), f"<{kind}>"
        items.append(_Item(kind, norm, shape, start, end, key))
    flush()
    return tuple(items)


def _skeleton(items: Sequence[_Item]) -> list[str]:
    return [("<np>" if it.kind == "np" else it.shape) for it in items]


def _words(items: Sequence[_Item]) -> Counter[str]:
    return Counter(w for it in items if it.kind in {"np", "word"} for w in it.shape.split())


@dataclass(frozen=True)
class _Fact:
    subject: str | None
    key: str
    phrase: str  # the relation phrase, lower-cased
    obj: str | None
    index: int  # of the relation item
    subject_index: int  # of the subject item, -1 if none
    subject_attached: bool  # the subject is itself a preposition's object ("on the floor in front of it")
    # what the relation places when its subject is attached or missing: the subject of the relation it continues
    # ("a cup *on* a tray *next to* the lamp": the cup; "a cat on the mat, *close to* the door": the cat)
    inherited: str | None = None
    continues: int = -1  # index (in the fact list) of the relation it continues, -1 if none


def _subject_index(items: Sequence[_Item], rel_index: int) -> int:
    """The nearest noun phrase before a relation in its clause, or -1. Verbs, adverbs, a "with" attribute, a
    position label ("the fence in the background *is behind* ...") and a relative pronoun ("vehicles on the
    right, *which are* left of ...") may stand between."""
    j = rel_index - 1
    while j >= 0:
        it = items[j]
        if it.kind == "np" and not _is_adverb(it.norm):
            owner = _attribute_owner(items, j)
            if owner < 0:
                return j
            j = owner + 1  # "a woman with captivating eyes stands beside ...": the woman, not her eyes
        elif it.kind == "word" and it.norm in _RELATIVE_PRONOUNS and j > 0 and items[j - 1].norm == ",":
            j -= 1  # ", which": past the comma too
        elif it.kind == "word" and (not it.norm[:1].isalpha() or it.norm in _CLAUSE_WORDS - _RELATIVE_PRONOUNS):
            return -1
        elif it.kind == "rel" and it.key != "centered" and it.key not in _UNARY_POLES:
            return -1
        j -= 1
    return -1


_PARTICIPLE_PREPS = {"from", "for", "through", "toward", "towards", "like"}  # "eating from a bucket"


def _attribute_owner(items: Sequence[_Item], j: int) -> int:
    """The noun phrase that a "with" phrase ending at noun phrase ``j`` belongs to ("*a woman* with
    captivating eyes"), or that a participle's object is ("*the goats* eating from a bucket"), or -1."""
    if j > 1 and items[j - 1].norm in _PARTICIPLE_PREPS:
        m = j - 2
        while m >= 0 and items[m].kind == "word" and (items[m].norm.endswith("ing") or items[m].norm in _NONFINITE):
            m -= 1
        return m if 0 <= m < j - 2 and items[m].kind == "np" else -1
    k = j - 2 if j > 1 and items[j - 1].kind == "word" and items[j - 1].norm[:1].isalpha() else j - 1
    ok = k > 0 and items[k].norm == "with" and items[k - 1].kind == "np"
    return k - 1 if ok else -1


def _is_adverb(norm: str) -> bool:
    """A lone "-ly" word ("quietly", "lazily"): an adverb, which the noun-phrase chunker cannot tell apart."""
    return " " not in norm and norm.endswith("ly") and len(norm) > 4


def _fronted_subject(items: Sequence[_Item], rel_index: int) -> int:
    """The subject after a clause-initial place phrase, or -1: "Below, *the cat* sleeps", "Surrounding the
    carousel, *figures* ..." (past a binary relation's object), "In the background we can see *a fence*"."""
    k = rel_index + 1
    unary = items[rel_index].key in _UNARY_POLES
    if not unary and k < len(items) and items[k].kind == "np":
        k += 1
    if k < len(items) and items[k].norm == ",":
        return _after_fillers(items, k + 1)  # "In the background, we can see a fence"
    return _after_fillers(items, k) if unary else -1


def _after_fillers(items: Sequence[_Item], k: int) -> int:
    """The first noun phrase from ``k`` on past words such as "we can see", "there are", "stands", or -1."""
    while k < len(items) and items[k].kind in {"word", "np"} and items[k].norm in _FRONTED_FILLERS:
        k += 1
    return k if k < len(items) and items[k].kind == "np" else -1


def _facts(items: Sequence[_Item]) -> list[_Fact]:
    """(subject, relation, object) for each relation phrase; "between" gets both objects."""
    out = []
    for k, it in enumerate(items):
        if it.kind != "rel":
            continue
        j = _subject_index(items, k)
        clause_start = k == 0 or items[k - 1].norm in {".", "!", "?", ";", ":", "and"}
        if j < 0 and clause_start:
            j = _fronted_subject(items, k)  # "Below, the cat sleeps": the cat is below
        subject = items[j].norm if j >= 0 else None
        obj = items[k + 1].norm if k + 1 < len(items) and items[k + 1].kind == "np" else None
        if it.key.startswith(("on-", "closer-")) or it.key in {"center", "centered", "periphery", "row"}:
            obj = None  # unary: "the dog on the right", "in the center"
        if it.key == "between" and obj and k + 3 < len(items) and items[k + 2].norm == "and":
            obj = " & ".join(sorted([obj, items[k + 3].norm]))
        attached = 0 < j < k and items[j - 1].kind == "rel"
        out.append(_Fact(subject, it.key, it.norm, obj, k, j, attached))
    return _with_inherited(items, out)


_CONTINUING = _NONFINITE | set("is are was were also just slightly".split())  # ", situated behind ..."


def _with_inherited(items: Sequence[_Item], facts: list[_Fact]) -> list[_Fact]:
    """Fill :attr:`_Fact.inherited`: an attached subject ("a cup on *a tray* next to the lamp") or a missing one
    after a comma ("a cat on the mat, close to the door") stands for the subject of the relation before it."""
    by_rel = {f.index: f for f in facts}
    by_obj = {f.index + 1: f for f in facts if f.index + 1 < len(items) and items[f.index + 1].kind == "np"}
    resolved: dict[int, str | None] = {}
    out = []
    for f in facts:
        prev = None
        if f.subject is not None and f.subject_attached and "with" not in f.subject.split():
            prev = by_obj.get(f.subject_index)  # not "in front of the sofa with a board on top of it": the board
        elif f.subject is None and not _opens_clause(items, f):
            c = f.index - 1
            while c >= 0 and items[c].kind == "word" and items[c].norm in _CONTINUING:
                c -= 1
            if c > 0 and items[c].norm in {",", "and"}:  # "..., closer to the camera", "... and further back"
                prev = by_obj.get(c - 1) or by_rel.get(c - 1)
                if prev is None and items[c - 1].kind == "np" and not _is_adverb(items[c - 1].norm):
                    resolved[f.index] = items[c - 1].norm  # "Two goats, standing in front of the bales"
        own = f.subject if f.subject is not None and not f.subject_attached else None
        if own is not None or prev is not None or f.index not in resolved:
            resolved[f.index] = own if own is not None else (resolved.get(prev.index) if prev else None)
        cont = facts.index(prev) if prev is not None else -1
        out.append(dataclasses.replace(f, inherited=resolved[f.index], continues=cont) if own is None else f)
    return out


def _opens_clause(items: Sequence[_Item], f: _Fact) -> bool:
    """A relation and its object that open an existential clause ("..., on the shelf there are jars"): they place
    what follows, not what precedes the comma."""
    k = f.index + (2 if f.obj else 1)
    return k < len(items) and items[k].norm == "there"


def _canonical(fact: _Fact) -> tuple[str | None, str, str | None]:
    """Map converses together: "A left of B" and "B right of A" give the same tuple."""
    if fact.key in _DIRECTED and fact.obj is not None:
        axis, sign = _DIRECTED[fact.key]
        a, b = (fact.subject, fact.obj) if sign > 0 else (fact.obj, fact.subject)
        return a, axis, b
    if fact.key == "near" and fact.obj is not None and fact.subject is not None:
        a, b = sorted([fact.subject, fact.obj])
        return a, fact.key, b
    return fact.subject, fact.phrase, fact.obj


def _np_head(norm: str | None) -> str:
    return _head(norm.split()) if norm else ""


@dataclass(frozen=True)
class _Placement:
    """One phrase placing an object on an axis: absolutely ("in the foreground") or against another object."""

    axis: str
    noun: str  # head noun of the placed object, for messages
    ident: frozenset[str]  # its content words: "the black cow" and "the brown cow" are different objects
    pole: str  # "left", "in front", "at the center", "around", ...
    other: frozenset[str]  # the reference object's content words, empty for an absolute placement
    start: int  # span of the placing phrase
    end: int
    key: str = ""  # the relation key that made it
    sentence: int = -1  # index of the sentence's first item
    introduced: int = -1  # the item of a subject named with "a"/"another": two such mentions are two objects


def _ident(norm: str) -> frozenset[str]:
    """Content words of a noun phrase (no determiners, quantifiers or position words), singular, and its head
    noun marked ``^head``: "the table" and "a table lamp" are different objects, "a tree" and "trees" the same; a
    hyphenated word also gives its parts ("the worn table" names "a time-worn table")."""
    split = [part for w in norm.split() for part in ([w, *w.split("-")] if "-" in w.strip("-") else [w])]
    words = frozenset(_singular(w) for w in split) - _DETS - _QUANTIFIERS - _POSITION_WORDS
    return words | {"^" + _singular(_np_head(norm))} if words else words


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "'s")):
        return word[:-1]
    return word


_ANYTHING = frozenset({"*"})
"""The reference object of a vertical relation with an unresolved pronoun ("the worn desk beneath them")."""


def _same(a: frozenset[str], b: frozenset[str]) -> bool:
    """Whether two mentions may name the same object: one's content words contain the other's ("the cow",
    "a brown cow"), so "the black cow" and "the brown cow" are kept apart; :data:`_ANYTHING` matches any."""
    return bool(a and b) and (a <= b or b <= a or _ANYTHING in (a, b))


def _antecedent(items: Sequence[_Item], facts: Sequence[_Fact], k: int, pronoun: str) -> _Fact | None:
    """The spatial relation that "it"/"them" at item ``k`` points back to: the sentence's last one before it
    whose object agrees in number ("Surrounding *the carousel*, figures ... encircle it")."""
    stop = max((j for j in range(k) if items[j].norm in {".", "!", "?"}), default=-1)
    for f in reversed(facts):
        obj = _np_head(f.obj)
        if stop < f.index < k and f.key in _ANTECEDENT_KEYS and obj and obj not in _PRONOUNS:
            if obj.endswith("s") == _PRONOUNS[pronoun]:
                return f
    return None


def _referent(items: Sequence[_Item], facts: Sequence[_Fact], k: int, norm: str | None) -> str:
    """A relation argument, with "it"/"them" resolved to its antecedent's object ("" when there is none)."""
    if _np_head(norm) not in _PRONOUNS:
        return norm or ""
    f = _antecedent(items, facts, k, _np_head(norm))
    return f.obj or "" if f else ""


def _place(
    axis: str, subj: str, pole: str, other: str, span: tuple[int, int], key: str = "", sentence: int = -1
) -> _Placement:
    return _Placement(axis, _np_head(subj), _ident(subj), pole, _ident(other), *span, key, sentence)


def _two_introduced(p: _Placement, q: _Placement) -> bool:
    """Whether ``p`` and ``q`` place two objects each introduced with "a" ("a black goat stands in the lower part",
    "There is also a black goat near the gate"): the same words, yet two objects."""
    return p.introduced >= 0 and q.introduced >= 0 and p.introduced != q.introduced


_GENERIC_HEADS = set("person man woman child boy girl individual figure object item animal vehicle".split())


def _demonstrative(items: Sequence[_Item], k: int) -> str | None:
    """What "this person" / "this object" at item ``k`` names: the last noun phrase with that head in the sentence
    before ("There is a person riding a black bike. *This person* is on the right."), or ``None``."""
    words = items[k].norm.split()
    if len(words) != 2 or words[0] != "this" or words[1] not in _GENERIC_HEADS:
        return None
    ends = [j for j in range(k) if items[j].norm in {".", "!", "?"}]
    if not ends:
        return None
    start = ends[-2] if len(ends) > 1 else -1
    found = [it.norm for it in items[start + 1 : ends[-1]] if it.kind == "np" and it.key == words[1]]
    return found[-1] if found else None


def _listed_after(items: Sequence[_Item], j: int) -> list[str]:
    """The noun phrases listed after noun phrase ``j`` ("a fence, *wooden sticks* and *a tree*"); none unless the
    list ends in "and" ("In the front row, a van is parked": no list)."""
    out, last_and = [], False
    while j + 2 < len(items) and items[j + 1].norm in {",", "and"}:
        nxt = j + 2 if items[j + 2].norm != "and" else j + 3
        if nxt >= len(items) or items[nxt].kind != "np":
            break
        last_and, j = items[j + 1].norm == "and" or items[j + 2].norm == "and", nxt
        out.append(items[j].norm)
    return out if last_and else []


def _sentence_of(items: Sequence[_Item], k: int) -> int:
    return max((j for j in range(k) if items[j].norm in {".", "!", "?"}), default=-1) + 1


def _placed_subject(items: Sequence[_Item], facts: Sequence[_Fact], f: _Fact) -> str:
    """The noun phrase a relation places: its own subject, the one it inherits, "this person"'s antecedent, with
    "it"/"them" resolved ("" when there is none)."""
    subject = f.inherited if f.subject is None or f.subject_attached else f.subject
    if subject is not None and f.subject_index >= 0 and subject == f.subject:
        subject = _demonstrative(items, f.subject_index) or subject
    return _referent(items, facts, f.index, subject)


def _fact_placements(
    items: Sequence[_Item], facts: Sequence[_Fact], f: _Fact, grounded: Sequence[frozenset[str]]
) -> list[_Placement]:
    """What one relation says about where its subject (and object) are; a subject "X of Y" places Y as well
    ("the textures of the worn desk beneath them")."""
    subj = _placed_subject(items, facts, f)
    if not subj:
        return []
    subjects = [subj, subj.rsplit(" of ", 1)[1]] if " of " in subj else [subj]
    return [p for s in subjects for p in _subject_placements(items, facts, f, s, grounded)]


def _subject_placements(
    items: Sequence[_Item], facts: Sequence[_Fact], f: _Fact, subj: str, grounded: Sequence[frozenset[str]]
) -> list[_Placement]:
    """:func:`_fact_placements` for one placed noun phrase ``subj``."""
    rel = items[f.index]
    span = (rel.start, items[f.index + 1].end if f.obj else rel.end)
    obj = _referent(items, facts, f.index, f.obj)
    out = []
    if f.key in _UNARY_POLES and not f.obj:
        axis, pole = _UNARY_POLES[f.key]
        out.append(_place(axis, subj, pole, "", span))
        if f.key in _IMAGE_DEPTH and any(_same(_ident(subj), g) for g in grounded):
            out.append(_place("d", subj, _IMAGE_DEPTH[f.key], "", span, f.key))  # "lying on the grass, at the top"
        if f.subject_index > f.index and subj == f.subject:  # "In the background we can see a fence, a tree"
            out += [_place(axis, norm, pole, "", span) for norm in _listed_after(items, f.subject_index)]
    elif f.key in _COMPARATIVE:
        axis, pole = _COMPARATIVE[f.key]
        out.append(_place(axis, subj, pole, "", span, f.key, _sentence_of(items, f.index)))
    elif f.key == "centered":
        out.append(_place("r", subj, "at the periphery" if f.phrase.startswith("off") else "at the center", "", span))
    elif f.phrase in _HORIZON_PREPS and _np_head(obj) in {"horizon", "skyline"}:
        out.append(_place("d", subj, "behind", "", span))  # "drifts on the horizon": far away
    own = f.subject is not None and not f.subject_attached  # not "onto the ground below it": the ground is
    if own and not obj and _np_head(f.obj) in _PRONOUNS and _BINARY_POLES.get(f.key, ("",))[0] == "v":
        axis, pole = _BINARY_POLES[f.key]  # "the worn desk beneath them": beneath whatever "them" is
        out.append(dataclasses.replace(_place(axis, subj, pole, "", span, f.key), other=_ANYTHING))
    if not obj or _same(_ident(obj), _ident(subj)):
        return _introduced(items, facts, f, subj, out)  # "the black cow is closer than the other cows"
    sentence = _sentence_of(items, f.index)
    if f.key in _BINARY_POLES:
        axis, pole = _BINARY_POLES[f.key]
        out += [
            _place(axis, subj, pole, obj, span, f.key, sentence),
            _place(axis, obj, _OPPOSITE_POLE[pole], subj, span, f.key, sentence),
        ]
    if f.key in _BESIDE_KEYS or f.key == "around" or f.phrase == "around":
        pole = "beside" if f.key in _BESIDE_KEYS else "around"
        out += [_place("a", subj, pole, obj, span, f.key), _place("a", obj, pole, subj, span, f.key)]
    return _introduced(items, facts, f, subj, out)


def _introduced(
    items: Sequence[_Item], facts: Sequence[_Fact], f: _Fact, subj: str, places: list[_Placement]
) -> list[_Placement]:
    """Mark the placements of ``subj`` with its mention's item when "a"/"an"/"another" introduces it."""
    g = f
    while (g.subject is None or g.subject_attached) and g.continues >= 0:
        g = facts[g.continues]  # "a cup on a tray next to the lamp": the cup's mention
    if g.subject is None or g.subject_attached or g.subject_index < 0:
        return places
    words = [w for w in items[g.subject_index].norm.split() if w != "also"]
    ident = _ident(subj)
    if not words or words[0] not in {"a", "another"} or ident != _ident(items[g.subject_index].norm):
        return places
    return [dataclasses.replace(p, introduced=g.subject_index) if p.ident == ident else p for p in places]


def _placements(text: str, items: Sequence[_Item], facts: Sequence[_Fact]) -> list[_Placement]:
    """Every phrase of ``text`` that places an object on an axis: relations, position labels ("the right
    lantern") and "surround"/"encircle" with a pronoun ("figures ... encircle it")."""
    grounded = _grounded(items, facts)[0]
    out = [p for f in facts for p in _fact_placements(items, facts, f, grounded)]
    for k, it in enumerate(items):
        if it.kind != "np":
            continue
        f = _antecedent(items, facts, k, it.key) if it.key in _PRONOUNS else None
        if f and f.subject and f.obj and it.norm.split()[0] in _AROUND_VERBS:
            span = (it.start, it.end)
            out += [_place("a", f.subject, "around", f.obj, span), _place("a", f.obj, "around", f.subject, span)]
        raw = {w.lower() for w in _WORD.findall(text[it.start : it.end])}
        if raw & {"left", "right", "leftmost", "rightmost"} and not raw & {"upper", "lower", "top", "bottom"}:
            if "<pos>" in it.shape.split() and it.key not in {"left", "right", "side", "one"}:
                pole = "left" if raw & {"left", "leftmost"} else "right"
                out.append(_place("h", it.norm, pole, "", (it.start, it.end)))
    return out


def _grounded(items: Sequence[_Item], facts: Sequence[_Fact]) -> tuple[list[frozenset[str]], set[str]]:
    """Objects this prompt stands on land ("a dog lies on the road", "goats resting in the paddock"): their
    content words, and their head nouns (the kinds of thing that stand on the ground here)."""
    idents, heads = [], set()
    for f in facts:
        if f.key in {"on", "in"} and _singular(_np_head(f.obj)) in _GROUND_SURFACES:
            subj = _placed_subject(items, facts, f)
            if subj and _ident(subj):
                idents.append(_ident(subj))
                heads.add(_singular(_np_head(subj)))
    return idents, heads


def _conflicts(
    places: Sequence[_Placement],
) -> dict[tuple[str, str, frozenset[str]], tuple[_Placement, _Placement]]:
    """Objects placed inconsistently, each with two placements that disagree: two absolute labels ("in the
    foreground" and "on the horizon"), a left/right/foreground label against every relation of the object
    ("in the foreground" yet only ever "behind" something), or two relations to the same object ("left of B" and
    "right of B"; "encircle it" and "in front of it"). Keyed by the kind of clash, the axis and the object's content
    words (a clash the prompt already had does not hide a new one of another kind)."""
    out = {}
    absolute = [p for p in places if not p.other]
    relative = [p for p in places if p.other]
    for p in absolute:
        related = [q for q in relative if q.axis == p.axis and _same(p.ident, q.ident)]
        clash = [q for q in absolute if q.axis == p.axis and q.pole != p.pole and _same(p.ident, q.ident)]
        for q in (q for q in clash if not _two_introduced(p, q)):
            out.setdefault(("labels", p.axis, p.ident | q.ident), (p, q))
        if (
            p.pole in _AGAINST_POLES
            and p.key not in _IMAGE_DEPTH
            and related
            and all(_OPPOSITE_POLE.get(q.pole) == p.pole for q in related)
        ):
            out.setdefault(("against", p.axis, p.ident), (p, related[0]))
    for p, q in itertools.combinations(relative, 2):
        if (p.start, p.end) == (q.start, q.end):
            continue  # one relation's two ends
        if p.axis == q.axis and _OPPOSITE_POLE.get(p.pole) == q.pole and _same(p.ident, q.ident):
            if _same(p.other, q.other) and not _two_introduced(p, q):
                out.setdefault(("relations", p.axis, p.ident | q.ident), (p, q))
    for p in absolute:
        if p.key in _COMPARATIVE:  # "behind the bench, closer to the foreground"
            for q in relative:
                if q.sentence == p.sentence and q.axis == p.axis and q.pole == _OPPOSITE_POLE[p.pole]:
                    if _same(p.ident, q.ident):
                        out.setdefault(("comparative", p.axis, p.ident | q.ident), (p, q))
    return out


def _near_conflicts(places: Sequence[_Placement]) -> dict[tuple[str, frozenset[str]], tuple[_Placement, ...]]:
    """ "A near B" while A and B are on opposite sides of a third object C ("the lamp to the right of the desk,
    near the printer" and "the printer to the left of the desk"): keyed by the pair's content words."""
    out = {}
    sided = [p for p in places if p.other and p.axis in {"h", "d"}]
    for near in places:
        if near.key != "near" or near.axis != "a" or not near.other:
            continue
        for p in sided:
            if not _same(p.ident, near.ident) or _same(p.other, near.other):
                continue
            for q in sided:
                if q.axis == p.axis and q.pole == _OPPOSITE_POLE[p.pole] and _same(q.ident, near.other):
                    if _same(q.other, p.other) and not _same(q.ident, p.ident):
                        out.setdefault(("n", near.ident | near.other), (p, q, near))
    return out


_LOW = {"h": "left", "d": "in front"}


def _chain_conflicts(items: Sequence[_Item], facts: Sequence[_Fact]) -> dict[tuple[str, int], tuple[_Fact, _Fact]]:
    """A comparative that continues an opposite relation of its own chain ("situated *behind* the goats, *closer
    to the foreground*"), however the two objects are named: keyed by the comparative's place in the sentence."""
    out = {}
    for f in facts:
        if f.key not in _COMPARATIVE:
            continue
        axis, pole = _COMPARATIVE[f.key]
        sentence, k = _sentence_of(items, f.index), f.continues
        while k >= 0 and _sentence_of(items, facts[k].index) == sentence:
            g = facts[k]
            if g.key in _BINARY_POLES and _BINARY_POLES[g.key] == (axis, _OPPOSITE_POLE[pole]):
                out[(f.key, sum(1 for x in facts[: facts.index(f)] if x.key == f.key))] = (g, f)
                break
            k = g.continues
    return out


def _order_conflicts(places: Sequence[_Placement]) -> dict[tuple[str, frozenset[str]], tuple[_Placement, ...]]:
    """An object labelled on the left that a chain of relations puts to the right of one labelled on the right
    ("the red car ... on the left", "the red car right of the van", "the van right of the bus", "the bus on the
    right"), and the same for depth: keyed by both labelled objects' content words."""
    out = {}
    for axis, low in _LOW.items():
        high = _OPPOSITE_POLE[low]
        edges = [p for p in places if p.axis == axis and p.other and p.pole == low]  # p.ident is left of p.other
        labels = [p for p in places if p.axis == axis and not p.other and p.key not in _COMPARATIVE]
        for start in (p for p in labels if p.pole == high):
            frontier = [e for e in edges if _same(e.ident, start.ident)]
            seen: set[frozenset[str]] = set()
            path: dict[frozenset[str], _Placement] = {}
            while frontier:
                e = frontier.pop()
                if e.other in seen:
                    continue
                seen.add(e.other)
                path.setdefault(e.other, e)
                frontier += [x for x in edges if _same(x.ident, e.other) and x.other not in seen]
            for end in (p for p in labels if p.pole == low):
                if _same(end.ident, start.ident):
                    continue
                hit = next((e for other, e in path.items() if _same(other, end.ident)), None)
                if hit is not None:
                    out.setdefault((axis + "<", start.ident | end.ident), (hit, start, end))
    return out


def _stale_mentions(
    prompt: str,
    perturbed: str,
    facts: tuple[Sequence[_Fact], Sequence[_Fact]],
    items: tuple[Sequence[_Item], Sequence[_Item]],
    edited: Sequence[tuple[int, int]],
) -> list[str]:
    """Objects the perturbation newly places in two contradicting ways, naming the mention it left stale."""
    places_b, places_a = _placements(prompt, items[0], facts[0]), _placements(perturbed, items[1], facts[1])
    old = _conflicts(places_b)
    problems: list[str] = []
    reported: set[tuple[int, int]] = set()
    for q in (q for q in places_a if q.other == _ANYTHING):
        if _backed(places_b, q) and not _backed(places_a, q):  # nothing on the desk "beneath them" any more
            reported.add((q.start, q.end))
            problems.append(
                f"'{q.noun}' is no longer {q.pole} anything (the mention {perturbed[q.start : q.end]!r} not updated?)"
            )
    before_chain = _chain_conflicts(items[0], facts[0])
    for key, (g, f) in _chain_conflicts(items[1], facts[1]).items():
        if key not in before_chain:
            rel_g, rel_f = items[1][g.index], items[1][f.index]
            stale = rel_f if _in_spans(edited, rel_g.start, rel_g.end) else rel_g
            reported.add((stale.start, stale.end))
            problems.append(
                f"{perturbed[rel_g.start : rel_g.end]!r} and {perturbed[rel_f.start : rel_f.end]!r} now disagree"
                f" (the mention {perturbed[stale.start : stale.end]!r} not updated?)"
            )
    for finder, what in ((_near_conflicts, "near"), (_order_conflicts, "order")):
        before = finder(places_b)
        for key, involved in finder(places_a).items():
            if key in before:
                continue
            stale = next((p for p in involved if not _in_spans(edited, p.start, p.end)), involved[-1])
            if (stale.start, stale.end) in reported:
                continue
            reported.add((stale.start, stale.end))
            mention = perturbed[stale.start : stale.end]
            if what == "near":
                p, q, _ = involved
                problems.append(
                    f"'{p.noun}' is now {p.pole} of '{_np_noun(p.other)}' while '{q.noun}', which it is near, is"
                    f" {q.pole} of it (the mention {mention!r} not updated?)"
                )
            else:
                _, start, end = involved
                problems.append(
                    f"through the relations, '{start.noun}' (placed {start.pole}) is now {_LOW[start.axis]} of"
                    f" '{end.noun}' (placed {end.pole}) (the mention {mention!r} not updated?)"
                )
    for key, (p, q) in sorted(
        _conflicts(_placements(perturbed, items[1], facts[1])).items(), key=lambda kv: kv[1][0].start
    ):
        if key in old:
            continue
        moved, stale = (q, p) if _in_spans(edited, q.start, q.end) and not _in_spans(edited, p.start, p.end) else (p, q)
        if (stale.start, stale.end) in reported:
            continue
        reported.add((stale.start, stale.end))
        problems.append(
            f"'{moved.noun}' is now placed both {moved.pole} and {stale.pole}"
            f" (the mention {perturbed[stale.start : stale.end]!r} not updated?)"
        )
    return problems


def _backed(places: Sequence[_Placement], q: _Placement) -> bool:
    """Whether a relation to a named object places ``q``'s object as ``q`` (with its unresolved pronoun) does."""
    return any(
        p.axis == q.axis and p.pole == q.pole and p.other != _ANYTHING and _same(p.ident, q.ident) for p in places
    )


def _np_noun(ident: frozenset[str]) -> str:
    return " ".join(sorted(w for w in ident if not w.startswith("^")))


def _labels(text: str) -> list[Counter[str]]:
    """Per sentence: corner labels ("top-left") and contrasting labels ("the left jar", "the right one")."""
    out = []
    for sentence in re.finditer(r"[^.!?;]+", text):
        labels: Counter[str] = Counter()
        for m in _CORNER.finditer(sentence.group()):
            labels[f"{m.group(1).lower().replace('upper', 'top').replace('lower', 'bottom')}-{m.group(2).lower()}"] += 1
        for m in re.finditer(r"(?<![\w'’-])(?:the|its|their|a|an) (left|right)(?= (\w+))", sentence.group(), re.I):
            if m.group(2).lower() not in _RIGHT_NON_SPATIAL:
                labels[m.group(1).lower()] += 1
        out.append(labels)
    return out


def _problems_in_relations(
    before: list[_Item], after: list[_Item], prompt: str, perturbed: str, edited: Sequence[tuple[int, int]]
) -> list[str]:
    problems: list[str] = []
    facts_b, facts_a = _facts(before), _facts(after)
    changed = {k for k, (x, y) in enumerate(zip(before, after, strict=True)) if x.norm != y.norm or x.key != y.key}
    if not changed:
        return ["the perturbed prompt describes the same arrangement (only case or articles changed)"]
    touched = [
        (fb, fa)
        for fb, fa in zip(facts_b, facts_a, strict=True)
        if {fa.index, fa.index + 1, fa.subject_index} & changed
    ]
    # 5. arrangement actually different
    covered = {k for _, fa in touched for k in (fa.index, fa.index + 1, fa.subject_index)}
    if touched and changed <= covered:
        if Counter(_canonical(f) for f in facts_b) == Counter(_canonical(f) for f in facts_a):
            problems.append("the arrangement does not change (the new relation says the same as the old one)")
    kinds_b, kinds_a = _grounded(before, facts_b)[1], _grounded(after, facts_a)[1]
    for fb, fa in touched:
        text = perturbed[after[fa.index].start : after[fa.index].end]
        # 4. relation arguments must be placeable things
        for role, norm in [("subject", fa.subject), *(("object", o) for o in (fa.obj or "").split(" & "))]:
            if norm and not _placeable(norm.split()):
                problems.append(f"relation {text!r} has {role} {norm!r}, which is not a placeable object")
        if fa.key == "between" and fa.obj is not None and " & " not in fa.obj:
            words = fa.obj.split()
            if not (words[0] in {"two", "three", "both", "the", "these", "those"} and words[-1].endswith("s")):
                problems.append(f"'between' in {text!r} has only one argument {fa.obj!r}")
        if fa.key != fb.key and fa.key not in {"left", "right"} and _is_frame((fa.obj or "").split()):
            problems.append(f"relation {text!r} places something relative to {fa.obj!r}, the picture or its viewer")
        if fa.key != fb.key and fa.key in {"center", "centered"} and not fa.phrase.startswith("off"):
            word = _WORD.findall(perturbed, max(0, after[fa.index].start - 20), after[fa.index].start)[-1:]
            if word and word[0].lower() in _MARGINAL:
                problems.append(f"{word[0]!r} cannot grade {text!r} (a point is not barely or partly reached)")
        # 6. implausible placements of fixed landmarks (only where the edit made them)
        implausible = _implausible(fa)
        if implausible and implausible != _implausible(fb):
            problems.append(implausible)
        stacked = _stacked(after, facts_a, fa, kinds_a)
        if stacked and stacked != _stacked(before, facts_b, fb, kinds_b):
            problems.append(stacked)
    # 6. self-contradictions new in the perturbed prompt
    problems += _stale_mentions(prompt, perturbed, (facts_b, facts_a), (before, after), edited)
    problems += _beyond_landmarks((before, after), (facts_b, facts_a), perturbed)
    for labels_b, labels_a in zip(_labels(prompt), _labels(perturbed), strict=False):
        for label, count in sorted(labels_a.items()):
            if count > max(1, labels_b[label]) and len(labels_a) < len(labels_b):
                problems.append(f"two mentions now name the same position {label!r}")
    return problems


def _stacked(items: Sequence[_Item], facts: Sequence[_Fact], f: _Fact, kinds: set[str]) -> str | None:
    """Two things of a kind this prompt stands on the ground, one placed above the other ("a grey horse stands on
    the meadow" ... "a brown horse above the grey horse")."""
    if f.key not in {"above", "below", "on"} or not f.obj:
        return None
    subj = _placed_subject(items, facts, f)
    head = _singular(_np_head(subj)) if subj else ""
    if head in kinds and head == _singular(_np_head(f.obj)):
        return f"implausible: two of the {head}s, which stand on the ground here, placed one above the other"
    return None


_REGION_ORDER = {"on-front": 0, "on-mid": 1, "on-back": 2, "foreground": 0, "midground": 1, "background": 2}
_CLAUSE_BOUNDS = {",", ";", ":", ".", "!", "?", "while", "whereas", "but"}


def _region_marks(items: Sequence[_Item], facts: Sequence[_Fact]) -> dict[int, tuple[int, set[str]]]:
    """Depth regions named in ``items``, by item index: the region's order (foreground 0, midground 1, background
    2) and the singular words of what it places (the relation's subject, else its clause up to the region: "its
    wheels and frame fill *the foreground*")."""
    by_rel = {f.index: f for f in facts}
    out = {}
    for k, it in enumerate(items):
        regions = [_REGION_ORDER[w] for w in it.norm.split() if w in _REGION_ORDER] if it.kind == "np" else []
        if it.kind == "rel" and it.key in _REGION_ORDER:
            regions = [_REGION_ORDER[it.key]]
        if len(regions) != 1:
            continue
        f = by_rel.get(k)
        owner = _placed_subject(items, facts, f) if f is not None else ""
        if not owner:
            j = k - 1
            while j >= 0 and items[j].norm not in _CLAUSE_BOUNDS:
                j -= 1
            owner = " ".join(x.norm for x in items[j + 1 : k] if x.kind == "np")
        if owner:
            out[k] = (regions[0], {_singular(w) for w in owner.split()})
    return out


def _beyond_landmarks(
    items: tuple[Sequence[_Item], Sequence[_Item]], facts: tuple[Sequence[_Fact], Sequence[_Fact]], perturbed: str
) -> list[str]:
    """A sentence that now puts something deeper than the ocean, the horizon or the mountains it names ("the bike
    filling the *background* while the sea shines in the midground"); sky and landscape may lie beyond."""
    marks_b, marks_a = _region_marks(items[0], facts[0]), _region_marks(items[1], facts[1])
    after = items[1]
    problems = []
    for thing, land in itertools.permutations(marks_a, 2):
        (depth, words), (land_depth, land_words) = marks_a[thing], marks_a[land]
        if _sentence_of(after, thing) != _sentence_of(after, land) or not land_words & _FAR_LANDMARKS:
            continue
        if words & (_FAR_LANDMARKS | _SKY) or depth <= land_depth:
            continue
        if thing in marks_b and land in marks_b and marks_b[thing][0] > marks_b[land][0]:
            continue  # already beyond it
        region = perturbed[after[thing].start : after[thing].end]
        problems.append(f"{region!r} now puts something beyond the {min(land_words & _FAR_LANDMARKS)} of its sentence")
    return problems


def _implausible(fact: _Fact) -> str | None:
    subj = "" if fact.subject_attached else _np_head(fact.subject)
    floor = subj in _FLOOR_LIKE and _np_head(fact.obj) not in _FLOOR_LIKE  # a rug above a carpet is fine
    obj = _np_head(fact.obj)
    up, down = fact.key in _VERTICAL_UP, fact.key in _VERTICAL_DOWN
    if up and floor:
        return f"implausible: {fact.subject!r} (a floor covering) placed above something"
    if up and subj in _GROUND_LEVEL:
        return f"implausible: {fact.subject!r} placed above or on something"
    if down and subj in _SKY:
        return f"implausible: {fact.subject!r} placed below something"
    if fact.key == "above" and obj in _SKY:
        return f"implausible: something placed above {fact.obj!r}"
    if fact.key == "below" and obj in _GROUND_LEVEL:
        return f"implausible: something placed below {fact.obj!r}"
    if fact.key == "below" and obj in _FLOOR_LIKE and subj not in _FLOOR_LIKE:
        return f"implausible: something placed below {fact.obj!r} (a floor covering)"
    return None


def check_perturbation(prompt: str, perturbed: str, edits: Sequence[Edit]) -> list[str]:
    """Problems with a perturbation of ``prompt`` into ``perturbed`` by ``edits``; empty when valid.

    ``edits`` are the :class:`~spatialscore.data.perturb.Edit` records of the perturbation (any kind,
    e.g. from :func:`~spatialscore.data.perturb.diff_edits`). Pure: reads only its arguments. See the
    module docstring for the rules.
    """
    if not edits:
        return ["no edits recorded"]
    try:
        rebuilt = apply_edits(prompt, edits)
    except ValueError as exc:
        return [f"edits do not fit the prompt: {exc}"]
    if rebuilt != perturbed:
        return ["applying the edits does not give the perturbed prompt"]
    if perturbed == prompt:
        return ["the perturbed prompt equals the original"]
    problems = [f"edit {e.before!r} -> {e.after!r} changes nothing" for e in edits if e.before == e.after]
    idioms_after = Counter(m.group().lower() for m in NON_SPATIAL_IDIOM.finditer(perturbed))
    for phrase, count in sorted(Counter(m.group().lower() for m in NON_SPATIAL_IDIOM.finditer(prompt)).items()):
        if idioms_after[phrase] < count:
            problems.append(f"an edit changes the non-spatial phrase {phrase!r}")
    before, after = _items(prompt), _items(perturbed)
    words_b, words_a = _words(before), _words(after)
    if words_b != words_a:
        removed = sorted((words_b - words_a).elements())
        added = sorted((words_a - words_b).elements())
        if "of" in removed + added and set(removed + added) & _FRAMING:
            problems.append(f"framing text moved into an object phrase (removed {removed}, added {added})")
        else:
            problems.append(f"words other than relation words changed: removed {removed}, added {added}")
        return problems
    if _skeleton(before) != _skeleton(after):
        moved = _first_difference(_skeleton(before), _skeleton(after))
        problems.append(f"a verb, comma, clause word or framing text moved or a noun phrase was cut ({moved})")
        return problems
    np_b = Counter(it.shape for it in before if it.kind == "np")
    np_a = Counter(it.shape for it in after if it.kind == "np")
    if np_b != np_a and _unattributed(np_b) != _unattributed(np_a):
        gone = sorted((np_b - np_a).elements())
        new = sorted((np_a - np_b).elements())
        problems.append(f"noun phrases differ (cut or merged): {gone} became {new}")
        return problems
    return problems + _problems_in_relations(before, after, prompt, perturbed, _perturbed_spans(edits))


def _perturbed_spans(edits: Sequence[Edit]) -> list[tuple[int, int]]:
    """Where the edits' new text lies in the perturbed prompt."""
    out, shift = [], 0
    for edit in sorted(edits, key=lambda e: (e.start, e.end)):
        out.append((edit.start + shift, edit.start + shift + len(edit.after)))
        shift += len(edit.after) - len(edit.before)
    return out


def _unattributed(phrases: Counter[str]) -> Counter[str]:
    """Noun phrases with colour and material words masked: an attribute swap keeps this multiset."""
    return Counter(
        " ".join("<attr>" if w in _COLOURS or w in _MATERIALS else w for w in phrase.split())
        for phrase in phrases.elements()
    )


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    for k, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"{' '.join(a[max(0, k - 2) : k + 3])!r} became {' '.join(b[max(0, k - 2) : k + 3])!r}"
    return f"{len(a)} items became {len(b)}"
