"""Replies. Embedded default: an offline joke engine.

It is not a language model: it fills pun templates from word lists with a word from the
question and facts from the caption, and avoids repeating what it said earlier in the
conversation. Real language models replace it through host.toml.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from skull.core.errors import BackendError
from skull.core.validate import need

from . import ReplyContext
from .registry import BackendContext, backend

_STOPWORDS = set("""
a an the and or but if then so to of in on at by for with from up down out over under about into
is are was were be been being am do does did doing have has had having can could will would shall
should may might must i me my mine you your yours he him his she her hers it its we us our they them
their this that these those what which who whom whose when where why how there here not no yes
just very really please tell say said like know think want let get got go going some any all one
hello hi hey okay ok oh well skull mister mr bones
""".split())

_ABOUT_WORD = [
    "{Word}? That tickles my funny bone, and I only have the one left.",
    "Ah, {word}. I would give it some thought, but my brain left years ago.",
    "{Word}! I have a skeleton of an idea about that, but no body to carry it out.",
    "You want to talk about {word}? I'm dying to. Well, I was. Long story.",
    "{Word} chills me right down to the marrow, and I have no marrow left.",
    "Talking about {word} is my favourite pastime. Past time. Get it? I'm very old.",
    "I was buried in {word} research once. Then they just buried me.",
]
_NOTHING_HEARD = [
    "Speak up, mortal! My ears rotted off in the eighteen hundreds.",
    "{Name} heard nothing. Come closer, I don't bite. Not any more.",
    "I heard nothing but the rattle of my own bones.",
    "Was that a question or just the wind whistling through my eye sockets?",
]
_ABOUT_FACES = {
    0: ["I see nobody there. Are you a ghost too? Welcome to my {home}.",
        "Nobody in sight. Even my audience has decomposed."],
    1: ["And what a face you have! I'd give you a smile, but mine is permanent.",
        "I see one face out there. Lovely skin. I used to have some of that."],
    2: ["Two of you! Double the flesh, double the jealousy.",
        "I see two faces. One of you is laughing, the other one should be."],
    3: ["Look at this crowd! It's a skeleton crew, minus the skeletons."],
}
_ABOUT_COLOUR = [
    "And all that {colour}! Very bold. I only come in bone white.",
    "So much {colour} around here. It goes nicely with my lack of complexion.",
    "Is that {colour} I see? It's the most colour these sockets have seen in a century.",
]
_ABOUT_LIGHT = {
    "dim": ["It's nice and dark in here. Just how I like my {home}.",
            "Dim lighting, good choice. I look better in the shadows."],
    "bright": ["Ooh, bright light. Don't walk towards it, I did and look at me now.",
               "So bright in here! Good thing I have no eyelids to squint with."],
    "soft": ["The lighting is soft, just like my cartilage used to be."],
}
_WHO = [
    "I am {Name}, at your service, or what is left of it.",
    "The name is {Name}. I rattle around this {home} most nights.",
]
_ASKS_WHO = re.compile(r"\b(your name|who are you|who is this|what are you)\b", re.IGNORECASE)
_CALLBACK = [
    "Still better than your question about {old}.",
    "You're much better company than when you asked about {old}.",
]


def topic_word(transcript: str, also_skip: set[str] = frozenset()) -> str | None:
    """The word of a question most worth joking about: the longest one that is not filler (nor
    one of ``also_skip``, the skull's own name)."""
    words = [w for w in re.findall(r"[a-zA-Z']+", transcript.lower())
             if w not in _STOPWORDS and w not in also_skip and len(w) > 2]
    return max(words, key=len) if words else None


def _parse_caption(caption: str) -> tuple[int | None, list[str], str | None]:
    numbers = {"no": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
    m = re.search(r"\b(\w+) faces?\b", caption)
    faces = None
    if m:
        faces = numbers.get(m.group(1), int(m.group(1)) if m.group(1).isdigit() else None)
    cm = re.search(r"mostly ([a-z ]+?)(?: and ([a-z ]+?))?(?:;|$)", caption)
    colours = [c for c in (cm.groups() if cm else ()) if c]
    lm = re.search(r"\b(dim|bright|soft) light\b", caption)
    return faces, colours, lm.group(1) if lm else None


@dataclass(frozen=True)
class JokeSettings:
    """``[reply.jokes]``: the offline joke engine, and its persona (what the LLM backends set
    with ``prompt``)."""
    seed: int = -1
    """random seed, for the same jokes in the same order every run; -1 = different every run"""
    name: str = "Mr. Bones"
    """the skull's name: it introduces itself by it when asked who it is, and uses it in jokes"""
    home: str = "crypt"
    """where the skull lives, as the jokes say it ("just how I like my crypt"): a word or two"""
    max_jokes: int = 4
    """at most this many jokes per reply, 1..4 (fewer: shorter replies, quicker turns): the one
    about the question, then the faces, colours or light of the snapshot, then a callback to an
    earlier question"""

    def check(self, where: str) -> None:
        need(self.seed >= -1, where, "seed", self.seed, "must be -1 (vary) or a whole number from 0")
        for key, value in (("name", self.name), ("home", self.home)):
            need(isinstance(value, str) and 0 < len(value.strip()) <= 40 and "{" not in value and "}" not in value,
                 where, key, value, "must be 1..40 characters of plain text (no braces)")
        need(isinstance(self.max_jokes, int) and 1 <= self.max_jokes <= 4, where, "max_jokes", self.max_jokes,
             "must be a whole number 1..4")


@backend("jokes", "reply", settings=JokeSettings, default=True)
class JokeEngine:
    """Offline joke engine (templates and word lists, not a language model)."""

    name = "offline jokes"
    sees_images = False
    computes_here = False
    """a reply in microseconds: the host may keep to one core (host.server.heavy_stages)"""

    def __init__(self, settings: JokeSettings, ctx: BackendContext):
        if ctx.sees_images:
            raise BackendError(ctx.stage, "the joke engine cannot look at pictures, so [vision] backend = 'reply' "
                                          "needs a reply model that looks at pictures: set [vision] backend to "
                                          "'opencv' or a caption model")
        self._rng = random.Random(settings.seed if settings.seed >= 0 else None)
        name, home = settings.name.strip(), settings.home.strip()
        self._persona = {"Name": name, "home": home}
        self._max_jokes = settings.max_jokes
        self._own_words = {w.lower() for w in re.findall(r"[a-zA-Z']+", name)}
        """the skull's own name is never the topic of a joke"""

    def check(self) -> str:
        return "embedded (templates and word lists, not a language model)"

    def stream(self, context: ReplyContext, cancel=None):
        """The joke is made at once; it arrives as one piece."""
        yield self.reply(context)

    def _pick(self, options: list[str], used: str) -> str:
        """One of ``options`` not said lately, with the persona's words filled in (other
        placeholders are left for the caller)."""
        options = [o.replace("{Name}", self._persona["Name"]).replace("{home}", self._persona["home"])
                   for o in options]
        fresh = [o for o in options if o.split("{")[0] not in used] or options
        return self._rng.choice(fresh)

    def reply(self, context: ReplyContext) -> str:
        used = " ".join(r for _, r in context.history)
        word = topic_word(context.transcript, self._own_words)
        if _ASKS_WHO.search(context.transcript):
            first = self._pick(_WHO, used)
        elif word:
            first = self._pick(_ABOUT_WORD, used).format(word=word, Word=word.capitalize())
        else:
            first = self._pick(_NOTHING_HEARD, used)
        faces, colours, light = _parse_caption(context.caption)
        parts = [first]
        if faces is not None:
            parts.append(self._pick(_ABOUT_FACES[min(faces, 3)], used))
        if colours and self._rng.random() < 0.6:
            parts.append(self._pick(_ABOUT_COLOUR, used).format(colour=colours[0]))
        elif light:
            parts.append(self._pick(_ABOUT_LIGHT[light], used))
        old = next((topic_word(q, self._own_words) for q, _ in reversed(context.history)
                    if topic_word(q, self._own_words) not in (None, word)), None)
        if old and self._rng.random() < 0.5:
            parts.append(self._rng.choice(_CALLBACK).format(old=old))
        return " ".join(parts[:self._max_jokes])
