"""The rule engine: relation finders, noun-phrase cuts and swaps, and RulePerturber."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from spatialscore.data.perturb.edits import KINDS, Edit, PerturbationError, PerturbationResult, apply_edits
from spatialscore.data.perturb.lexicon import (
    _ADVERBS,
    _AGREE,
    _ANCHOR_NOUNS,
    _BARE_OF_PREV,
    _BEFORE_PRONOUN,
    _CLAUSE_WORDS,
    _COLOURS,
    _DET_POSS,
    _FLOOR_LIKE,
    _FRAME_NOUNS,
    _FRAMING,
    _FRONT_NOUNS,
    _GROUND_LEVEL,
    _HANG_VERBS,
    _ING_NOUNS,
    _LANDMARKS,
    _LOWERABLE,
    _MATERIALS,
    _MODIFIERS,
    _NIGHT,
    _NON_OBJECT,
    _NON_SPATIAL_LEFT_OF,
    _NOT_POSSESSIVE,
    _NP_STOP,
    _OBJECT,
    _OBJECT_LIGHTS,
    _ON_BLOCK,
    _OPPOSITE,
    _ORIENT_VERBS,
    _OVERHEAD_NOUNS,
    _PLACE_VERBS,
    _PLURAL_DETS,
    _POLES,
    _PREDICATE_TARGETS,
    _PREDICATIVE,
    _PREPOSITIONS,
    _REGION_ADJ_STOP,
    _REMAINDER,
    _RIGHT_ADVERBIAL,
    _RIGHT_NON_SPATIAL,
    _RIGHT_OF_NON_SPATIAL,
    _ROW_NOUNS,
    _SENTENCE,
    _SIDE_NOUNS,
    _SINGULAR_DETS,
    _SKIPPABLE,
    _SKY,
    _SLOT_FOLLOWERS,
    _SPATIAL_LEFT,
    _SWAP_DETS,
    _TOKEN,
    _TOP_NOUNS,
    _VERTICAL_CUES,
    _VIEWER,
    _VIEWPOINT,
    NON_SPATIAL_IDIOM,
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
_GROUND_VERBS = (
    r"is|was|shows|showcases|features|includes|holds|contains|reveals|displays|presents|boasts|elements|details|"
    r"objects"
)
_GROUND = re.compile(
    r"(?<![\w-])(?:(?:in|into|toward|towards|at|frame|frames|framing|fill|fills|filling|dominate|dominates|"
    r"dominating|across|from|command|commands|commanding) the (foreground|background)\b"
    r"|(?:^|(?<=[.;!?] )|(?<=, ))(?:the )?(foreground|background)(?= (?:" + _GROUND_VERBS + r")\b))",
    re.I,
)
_DISTANCE = re.compile(r"(?<![\w-])(?:in|into|toward|towards) (the (?:(?:far|misty|hazy|far-off) )?distance)\b", re.I)
_MIDGROUND = re.compile(
    r"(?<![\w-])(?:(?:in|occupies|occupy|occupying|fills|fill) the (midground)\b"
    r"|(?:^|(?<=[.;!?] )|(?<=, ))(?:the )?(midground)(?= (?:" + _GROUND_VERBS + r")\b))",
    re.I,
)
# "the rocky foreground", "the turbulent midground waters": a region named with what fills it
_REGION_ADJ = re.compile(
    r"(?<![\w'’-])(?:the|a|an|its|their) (?!(?:" + "|".join(sorted(_REGION_ADJ_STOP)) + r") )[a-z][\w-]* "
    r"(foreground|background|midground)\b(?! of\b)",
    re.I,
)
_CENTER = re.compile(r"(?<![\w-])(?:in|at) the (?:very )?(?:center|centre|middle)\b" + _NIGHT, re.I)
_PERIPHERY = re.compile(r"(?<![\w-])(?:in|on|at) the periphery\b", re.I)
_CENTERED = re.compile(
    r"(?<![\w-])(?:centered|centred)(?= (?:on|under|above|below|between|in|within|beneath|over|along)\b)",
    re.I,
)
_REL = re.compile(
    rf"""(?<![\w'’-])(?:
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
    | (?P<overhead>overhead)
    | (?P<side>on\ side\ of)
    | (?P<on>on|upon)
    | (?P<adj>next\ to|beside|near|close\ to|adjacent\ to)
    | (?P<amid>amid|amidst|among|amongst|surrounded\ by|encircled\ by|flanked\ by|surrounding)
    | (?P<around>around)
    | (?P<before>{_BEFORE_PRONOUN})
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
_ROW_WORD = re.compile(r"(?<![\w'’-])(top|upper|middle|center|centre|bottom|lower|front|back|left|right) (\w+)\b", re.I)
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
                spatial = nxt not in _RIGHT_NON_SPATIAL and (has_left or _slot_then_verb(p2, nxt))
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


def _slot_then_verb(prep: str, nxt: str) -> bool:
    """ "to its right are two cups", "on the right stands a lamp": a place phrase that a verb follows."""
    return prep in {"to", "on", "at"} and nxt in _SLOT_FOLLOWERS


def _compound_sites(text: str) -> list[_Candidate]:
    """Corner compounds: "upper-left" -> "upper-right" or "lower-left"; "far left" -> "far right"."""
    out = []
    for m in _COMPOUND.finditer(text):
        first, sep, second = m.group(1).lower(), m.group(2), m.group(3).lower()
        if first == "far" and sep == " ":
            continue  # "the far left" is handled as a plain left/right site
        p1 = _prev_tokens(text, m.start(), 1)[0]
        if sep == " " and (
            first in {"camera", "frame", "screen"} or not (_is_det_poss(p1) or p1 in {"a", "an", "at", "in", "on"})
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
        if _reverses_progression(text, m, m.group(group)):
            continue
        out.append(_single(text, "flip", m.start(group), m.end(group), _OPPOSITE[m.group(group).lower()]))
    for m in _DISTANCE.finditer(text):
        out.append(_single(text, "flip", m.start(), m.end(), text[m.start() : m.start(1)] + "the foreground"))
    for m in _REGION_ADJ.finditer(text):
        word = m.group(1).lower()
        if _reverses_progression(text, m, word):
            continue
        targets = ("foreground", "background") if word == "midground" else (_OPPOSITE[word],)
        kind = "anchor" if word == "midground" else "flip"
        out.append(_candidate(text, kind, [[(m.start(1), m.end(1), t)] for t in targets]))
    for m in _MIDGROUND.finditer(text):
        group = 1 if m.group(1) else 2
        alternatives = [[(m.start(group), m.end(group), word)] for word in ("foreground", "background")]
        out.append(_candidate(text, "anchor", alternatives))
    for m in _CENTER.finditer(text):
        if any(_slot_position(s.group(2)) != 1 for s in _SLOT.finditer(text, *_sentence_span(text, m.start()))):
            continue  # the middle of a left/centre/right row: moving it would duplicate a slot
        out.append(
            _candidate(
                text,
                "anchor",
                [[(m.start(), m.end(), "on the left side")], [(m.start(), m.end(), "on the right side")]],
            )
        )
    for m in _PERIPHERY.finditer(text):
        out.append(_single(text, "anchor", m.start(), m.end(), "at the center"))
    for m in _CENTERED.finditer(text):
        out.append(_single(text, "anchor", m.start(), m.end(), "off-center"))
    return out


_DISTANT = re.compile(r"(?<![\w'’-])(distant)(?= ([^\W\d_][\w'’-]*))", re.I)
# what only ever lies far off, or "distant" in another sense ("a distant look", "a distant cousin")
_FAR_ONLY = set(
    "horizon horizons skyline sky skies sun moon stars star galaxy galaxies planet planets backdrop background "
    "landscape memory memories past future echo echoes sound sounds thunder rumble hum cousin cousins relative "
    "relatives look gaze expression stare glance smile dream dreams land lands shore shores call calls cry cries "
    "song songs voice voices chatter laughter noise noises horn horns bell bells siren sirens roar murmur".split()
)
_NEARBY = re.compile(r"(?<![\w'’-])(nearby)(?= ([^\W\d_][\w'’-]*))", re.I)
_FACING = re.compile(
    r"(?<![\w'’-])(?:turned|turning|facing|looking|gazing|glancing|angled|tilted|oriented|leaning)"
    r"(?: (?:slightly|directly|partly|partially|straight|just))? (toward|towards) the " + _VIEWER + r"\b",
    re.I,
)
_OVERHEAD = re.compile(r"(?<![\w'’-])(overhead) ([^\W\d_][\w'’-]*)", re.I)
_CENTRALLY = re.compile(r"(?<![\w'’-])(?:framed|positioned|placed|set|located|situated) (centrally)\b", re.I)


def _prose_sites(text: str) -> list[_Candidate]:
    """Distance, facing and framing words of descriptive prose: "a nearby streetlamp" -> "a distant
    streetlamp", "turned towards the viewer" -> "turned away from the viewer", "framed centrally" ->
    "framed off-center", "the overhead lamp" -> "the ground-level lamp"."""
    out = []
    for m in _NEARBY.finditer(text):
        if _from_viewpoint(text, m.start()):
            continue  # "a vantage point atop a nearby hill": where the camera is
        if m.group(2).lower() not in _NP_STOP and _placeable(["", m.group(2)]):
            out.append(_single(text, "flip", m.start(1), m.end(1), "distant"))
    for m in _DISTANT.finditer(text):
        words = []  # the noun phrase after it, to its head: "distant car horns" are a sound
        for tok in _TOKEN.findall(text, m.end(), m.end() + 60)[:4]:
            if not tok[0].isalpha() or tok.lower() in _NP_STOP:
                break
            words.append(tok.lower())
        if words and not set(words) & _FAR_ONLY and _placeable(["", *words]) and not _from_viewpoint(text, m.start()):
            if _prev_tokens(text, m.start(), 1)[0] in _SWAP_DETS | {"", ",", "."}:
                out.append(_single(text, "flip", m.start(1), m.end(1), "nearby"))
    for m in _FACING.finditer(text):
        out.append(_single(text, "flip", m.start(1), m.end(1), "away from"))
    for m in _CENTRALLY.finditer(text):
        out.append(_single(text, "anchor", m.start(1), m.end(1), "off-center"))
    for m in _OVERHEAD.finditer(text):
        if _overhead_adjective(text, m):
            out.append(_single(text, "flip", m.start(1), m.end(1), "ground-level"))
    return out


def _from_viewpoint(text: str, pos: int) -> bool:
    """Whether the words just before ``pos`` name the camera's position ("from a vantage point atop a ...")."""
    return bool(set(_prev_tokens(text, pos, 4)) & _VIEWPOINT)


_PROGRESSION_END = re.compile(
    r"(?<![\w-])(?:to|into|toward|towards) the (?:[\w'’-]+ ){0,2}?(?:horizon|distance|skyline|background)\b", re.I
)


def _reverses_progression(text: str, m: re.Match[str], word: str) -> bool:
    """ "stretches *from* the rocky foreground ... *to* the distant horizon": turning its start into the background
    would put it behind where the progression ends."""
    if word.lower() != "foreground" or "from" not in _prev_tokens(text, m.start(), 4):
        return False
    return bool(_PROGRESSION_END.search(text, m.end(), _sentence_span(text, m.start())[1]))


def _overhead_adjective(text: str, m: re.Match[str]) -> bool:
    """ "Overhead lights", "the overhead fan": flippable when it opens a noun phrase and nothing else in its
    clause says up or down ("Overhead lights beam *down*", "beneath a network of overhead tarps")."""
    p1 = _prev_tokens(text, m.start(), 1)[0]
    if m.group(2).lower() not in _OVERHEAD_NOUNS or not (_is_det_poss(p1) or p1 in {"", ".", "!", "?", ";", "a", "an"}):
        return False
    s0, s1 = _sentence_span(text, m.start())
    clause = [t.lower() for t in _TOKEN.findall(text, s0, s1)]
    return not (set(clause) - {m.group(1).lower()}) & (_VERTICAL_CUES | _HANG_VERBS)


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


def _is_frame(words: Sequence[str]) -> bool:
    """Whether a noun phrase is the picture or its viewer ("the frame", "the camera"), not an object ("the
    white picture frame", "a vintage camera")."""
    lows = [w.lower() for w in words[:3]]
    bare = len(lows) == 2 or (len(lows) == 3 and lows[2] == "with")
    return bare and lows[0] in {"the", "this"} and lows[1] in _FRAME_NOUNS


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
        if m.group().lower() == "surrounding" and (not has_object or _is_det_poss(p1) or p1 in {"a", "an"}):
            continue  # "the surrounding hills": an adjective, not a relation
        if group == "frontb":
            nxt = _next_token(text, end)
            if not nxt[:1].isalpha() or nxt in _CLAUSE_WORDS | {"with"}:
                out.append(_single(text, "flip", start, end, "behind"))
            continue
        if not has_object:
            if group in _ADVERBIAL_GROUPS and text.startswith(",", end) and p1 in {"", ".", ";", ":", "!", "?"}:
                out.append(_adverbial(text, m))
            bare = _bare_plural(text, end) if group == "amid" else None
            if bare and _placeable(["", *bare]) and _subject_placeable(text, start):
                out.append(_candidate(text, "predicate", [[(start, end, t)] for t in _amid_targets(m.group())]))
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
        if right and _is_frame(right[2]):
            continue  # "to the left of the frame": only its left/right word flips, "in front of the camera" stays
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
        elif group in {"front", "behind", "hidden", "before"}:
            flip, axis = ("behind" if group in {"front", "before"} else "in front of"), "depth"
        elif group == "amid":
            out.append(_candidate(text, "predicate", [[(start, end, t)] for t in _amid_targets(m.group())]))
            continue
        elif group == "around":
            if p1 in _GATHER_VERBS or ((p1 in _ADVERBS or p1.endswith("ly")) and p2 in _GATHER_VERBS):
                out.append(_candidate(text, "predicate", [[(start, end, t)] for t in _amid_targets(m.group())]))
            continue
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


# verbs after which "around X" places people or things in a ring about X, not a motion or an approximation
_GATHER_VERBS = set(
    "gather gathers gathered gathering huddle huddles huddled huddling cluster clusters clustered clustering "
    "crowd crowds crowded crowding sit sits sat seated sitting stand stands stood standing arranged placed "
    "grouped assembled congregate congregates congregated".split()
)
_VERTICAL_GROUPS = {"comp", "ab", "top", "under", "over", "on", "between"}
_VERTICAL_WORDS = {"above": "below", "below": "above", "behind": "in front of", "in front of": "behind"}


def _amid_targets(phrase: str) -> tuple[str, ...]:
    """Where "amid"/"among"/"surrounding" may move: beside, in front, behind ("flanked by" is beside)."""
    return ("in front of", "behind") if phrase.lower().startswith("flanked") else ("next to", "in front of", "behind")


def _subject_placeable(text: str, pos: int) -> bool:
    """Whether what a relation at ``pos`` places is a thing: its noun phrase, where one is found, is
    placeable, and no abstract "X of" ("a sense of calm amid ...") stands before it."""
    left = _left_np(text, pos)
    return _placeable(left.words) if left else not _abstract_of_before(text, pos)


def _bare_plural(text: str, pos: int) -> list[str] | None:
    """The words of a noun phrase without a determiner that ends in a plural ("towering bookshelves") right
    after ``pos``, or ``None``; also ``None`` when "of" follows ("areas of shadow": the head is further on)."""
    toks = [t.lower() for t in _TOKEN.findall(text, pos, min(len(text), pos + 60))[:5]]
    for k, low in enumerate(toks[:4]):
        if not low[0].isalpha() or low in _NP_STOP or low in _LOWERABLE:
            return None
        if low.endswith("s") and not low.endswith(("ss", "us", "is", "'s", "’s")):
            return None if toks[k + 1 : k + 2] == ["of"] else toks[: k + 1]
    return None


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


_ADVERBIAL_GROUPS = {"ab", "under", "overhead"}


def _adverbial(text: str, m: re.Match[str]) -> _Candidate | None:
    """A clause-initial "Below, ..." / "Above, ..." / "Overhead, ..." flipped, unless its clause is about the
    sky or ground."""
    subject = [t.lower() for t in _TOKEN.findall(text, m.end() + 1, m.end() + 60)[:5]]
    if set(subject) & (_SKY | _GROUND_LEVEL | _NON_OBJECT | {"city", "valley", "town"}):
        return None
    word = m.group().lower()
    return _single(text, "flip", m.start(), m.end(), "below" if word in {"above", "overhead"} else "above")


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
            out.append(_candidate(text, "swap", [[(ea.start, ea.end, eb.before), (eb.start, eb.end, ea.before)]]))
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
            if between and not (low == "and" and k + 1 < len(toks) and toks[k + 1].group().lower() in _SWAP_DETS):
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
            rotations = [[(s, e, text[slice(*spans[(k + r) % 3])]) for k, (s, e) in enumerate(spans)] for r in (1, 2)]
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
    r"|(?<![\w'’-])the\s+(?P<side2>left|right)\s+(?!of\b)(?P<noun2>[^\W\d_][\w'’-]*)",
    re.I,
)


_MAX_LABEL_REPAIRS = 2


def _with_labels(prompt: str, edit: Edit) -> Edit | None:
    """``edit`` plus flips of the other mentions that place its objects left or right ("The hare on the right
    ..." after "a fox to the left of a hare" became "... to the right of ..."), or ``None`` if there are none."""
    if edit.kind == "predicate":
        return None  # "left of" -> "behind" moves the object off the axis: flipping other sides repairs nothing
    nouns = {w.lower() for w in _TOKEN.findall(prompt, *_sentence_span(prompt, edit.start))}
    subs = [(edit.start, edit.end, edit.after)]
    for m in _SIDE_LABEL.finditer(prompt):
        side = "side1" if m.group("side1") else "side2"
        noun = m.group("noun1") or m.group("noun2")
        if noun.lower() in nouns and not (edit.start < m.end() and m.start() < edit.end):
            subs.append((m.start(side), m.end(side), _OPPOSITE[m.group(side).lower()]))
    if not 1 < len(subs) <= 1 + _MAX_LABEL_REPAIRS:
        return None  # none, or an object named so often that flipping its labels would rewrite the scene
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
        words += [c for c in _prose_sites(prompt) if c]
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
