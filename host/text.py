"""Text a voice can take: what a language model wrote, without the characters no voice should
be handed.

A model's reply can hold anything: NUL bytes, terminal escape sequences (``ESC[31m``), bell and
backspace characters, invisible format characters (zero-width joiners, right-to-left overrides)
and lone surrogates. A voice either fails on them (a NUL in a command line, a surrogate that
cannot be encoded) or reads them out ("bracket three one m"). :func:`speakable` removes them;
every sentence goes through it before any voice sees it.
"""
from __future__ import annotations

import re
import unicodedata

_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"            # CSI: colours, cursor moves, screen clears
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window titles, hyperlinks
    r"|\x1b[@-Z\\-_]"                      # the other two-character escapes
    r"|\x9b[0-?]*[ -/]*[@-~]")            # CSI in its one-byte form
_DROPPED = frozenset({"Cc", "Cf", "Cs", "Cn"})
"""control, format, surrogate and unassigned code points"""
_SPACES = re.compile(r"\s+")


def speakable(text: str) -> str:
    """``text`` without escape sequences, control, format and surrogate characters, on one
    line with single spaces ('' when nothing speakable is left). Line breaks and tabs become
    spaces; a character removed from inside a word joins the word (``bo\\x00o`` -> ``boo``)."""
    text = _ESCAPES.sub("", text)
    kept = "".join(" " if ch in "\t\n\r\v\f\x85\u2028\u2029" else ch
                   for ch in text if ch.isspace() or unicodedata.category(ch) not in _DROPPED)
    return _SPACES.sub(" ", kept).strip()


def clip_words(text: str, max_chars: int) -> str:
    """At most ``max_chars`` characters of ``text``, cut at the last whole word that fits."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars + 1].rsplit(None, 1)[0] if " " in text[:max_chars + 1] else text[:max_chars]
    return cut[:max_chars].rstrip()
