"""The word lists the rule engine and the validity rules read: relation words, opposites, idioms, framing text."""

from __future__ import annotations

import re

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
_SLOT_FOLLOWERS = set(_AGREE) | _PLACE_VERBS | _HANG_VERBS | {"and", "while", "where", "rises", "rise"}
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
    "eyes watch attention scrutiny glare stare judgment judgement light lights sunlight moonlight starlight "
    "lamplight candlelight daylight glow rays "
    "ray sunshine sunset sunrise twilight dusk dawn shade shadow shadows haze fog mist rain weather atmosphere "
    "mood ambience air breeze wind storm silence noise sound music lens focus hue hues color colors colour "
    "colours tones palette".split()
)
_NON_OBJECT |= set(
    # surroundings and moods that "amid", "among" or "surrounded by" can take: not things to put beside
    "chaos bustle hustle commotion laughter chatter sounds noises aura splendor splendour beauty serenity "
    "mists texture textures tranquility tranquillity stillness solitude isolation darkness gloom warmth sense "
    "feeling landscape landscapes scenery setting surroundings environment nature wilderness".split()
)
# "open before him": "before" with a pronoun object and a clause boundary after it is spatial, not temporal
_BEFORE_PRONOUN = r"before(?=\s(?:him|her|them|us|me)(?:\s*[,.;:!?]|\s*$|\s+(?:and|while|as|where|with|in|on)\b))"
_VIEWER = r"(?:viewer|camera|lens|onlooker|audience)"
_SKY = set("sky skies ceiling sun moon stars clouds cloud heavens roof rooftop canopy treetops".split())
_GROUND_LEVEL = set(
    "floor ground road street streets sidewalk pavement lawn grass sand beach shore shores soil earth water "
    "river lake sea ocean bay canal pond surf shallows".split()
)
_FLOOR_LIKE = set("deck floorboards carpet rug mat terrace platform pavement tiles".split())  # as subjects
# land that things stand on: a kind this prompt puts there ("horses standing on the meadow") is not stacked
_GROUND_SURFACES = set(
    "ground floor grass lawn field meadow pasture paddock road street sidewalk pavement sand beach dirt soil earth "
    "snow".split()
)
# what nothing on land lies beyond in a photograph ("the ocean in the midground": a car is not behind it)
_FAR_LANDMARKS = set("ocean sea horizon skyline mountain".split())
# adjectives of a region that say how it looks in the photograph, not what is in it ("the blurred background")
_REGION_ADJ_STOP = set(
    "blurred blurry soft-focus out-of-focus defocused bokeh soft immediate far near distant left right upper lower "
    "entire whole same other".split()
)
_VIEWPOINT = set("vantage viewpoint perspective angle".split())
# the picture itself and whoever looks at it: "to the left of the frame" may flip, never become "above the frame"
# what "overhead" may place as an adjective ("overhead lights" -> "ground-level lights")
_OVERHEAD_NOUNS = set(
    "light lights lamp lamps lantern lanterns fan fans bulb bulbs fixture fixtures spotlight spotlights tarp tarps "
    "awning awnings beam beams cable cables wires pipes bins compartment compartments shelf shelves sign signs "
    "screen screens speakers".split()
)
# a word of the clause that already says up or down ("overhead lights beam *down*"): flipping would leave it stale
_VERTICAL_CUES = set("down downward downwards up upward upwards above below beneath under underneath overhead".split())
_FRAME_NOUNS = set("frame image composition shot photo photograph viewer camera lens".split())
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
    "foreground background midground "
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
_PREDICATIVE = set("is are was were looks look appears appear painted colored coloured glazed tinted dyed".split())
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
    r"(?:under|beneath|below|underneath) (?:the |a |an |his |her |their |its )?(?:[\w'’-]+ ){0,2}?(?:weight|pressure|"
    r"influence|guidance|care|supervision|command|spell|watch|watchful eye|cover|protection|direction|leadership|"
    r"banner|guise|impression|assumption|threat|strain|burden|name|auspices|tutelage|radar|scrutiny|glare|stare|"
    r"judgment|judgement)\b"
    r"|(?:in front of|before) (?:the |a |an |his |her |their |its )?(?:[\w'’-]+ ){0,2}?(?:scrutiny|glare|stare|"
    r"judgment|judgement|watchful eyes?)\b"
    r"|(?:under|beneath|below|underneath|in|bathed in) (?:the |a |an )?"
    r"(?!(?:[\w'’-]+ ){0,2}(?:traffic|street|string|fairy|ceiling|pendant|tail|head|brake|porch|desk|"
    r"reading|flood|neon|christmas|night|hanging) (?:light|lights|lamp)\b)(?:[\w'’-]+ ){0,3}?" + _LIGHT + r"(?![\w'’-])"
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
