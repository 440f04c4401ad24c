"""The operator's controls over a connected skull, as the dashboard offers them.

``interrupt``, ``mute``, ``unmute`` and ``attract`` go to the skull as a ``command``; ``say``
synthesises the operator's line in the host's voice (the ``[tts]`` backend, after the family
filter, with the skull's own jaw shape and speaker rate: the path a reply's sentence takes) and
sends it as ``say``; ``reset`` forgets the skull's conversation on the host. ``interrupt`` and
``mute`` also abandon the turn the host is answering for it. Every control is logged (logger
``host.controls``) and published as :class:`host.events.Control`.
"""
from __future__ import annotations

import asyncio
import logging

from skull.core import protocol as p
from skull.core.errors import BackendError, ControlError

from . import events as ev
from .text import clip_words, speakable
from .turn import speech_segment

log = logging.getLogger("host.controls")

ACTIONS = ("interrupt", "mute", "unmute", "say", "attract", "reset")
SAY_MAX_CHARS = 300
"""the longest line the operator can type for a skull to say"""


async def control(host, skull: str, action: str, text: str = "", by: str = "") -> str:
    """Carry out ``action`` on ``skull``; what was done, as one line. Raises ControlError when
    it cannot be done (the message says why), BackendError when the voice failed for ``say``."""
    if action not in ACTIONS:
        raise ControlError(f"unknown control {action[:40]!r}; one of {', '.join(ACTIONS)}")
    session = host.sessions.get(skull)
    if action == "reset":
        conv = host.conversations.get(skull)
        if conv is None:
            raise ControlError(f"the host keeps no conversation for skull {skull[:64]!r}")
        conv.history.clear()
        done = f"forgot {skull}'s conversation"
    else:
        if session is None:
            raise ControlError(f"skull {skull[:64]!r} is not connected")
        if not session.controls:
            raise ControlError(f"skull {skull} takes no controls: its software is older than this host's; update it")
        if action == "say":
            done = await _say(host, session, text)
        else:
            if action in ("interrupt", "mute"):
                session._cancel_turn()  # the host stops answering: no more speech for the turn
            await session.send(p.Command(action))
            done = {"interrupt": "interrupted", "mute": "muted", "unmute": "unmuted",
                    "attract": "asked for an attract line of"}[action] + f" {skull}"
    log.info("operator%s: %s", f" at {by}" if by else "", done)
    host.events.emit(ev.Control(skull, session.last_turn if session else 0, action, text if action == "say" else "",
                                by))
    return done


async def _say(host, session, text: str) -> str:
    words = clip_words(speakable(host.filter.clean(text.strip())), SAY_MAX_CHARS)
    if not words:
        raise ControlError("nothing to say: type the line the skull should say")
    timeout_s = host.config.tts.timeout_s
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):  # not wait_for: see host/turn.py _blocking
            speech = await loop.run_in_executor(host.executor, host.backends.tts.synthesize, words)
    except asyncio.TimeoutError:
        raise BackendError("tts", f"the voice gave no answer within {timeout_s:g} s ([tts] timeout_s)") from None
    samples, rate = speech.samples, speech.rate
    room = int(p.MAX_LINE_BYTES // 2 * rate / (session.play_rate or rate) * 0.98)
    segment, pcm = speech_segment(0, 0, words, samples[:room], rate, session.shape, session.play_rate)
    await session.send(p.Say(words, segment.rate, segment.width, segment.channels, segment.bytes, segment.jaw_fps,
                             segment.jaw), pcm)
    return f"had {session.conversation.skull} say {words!r}"
