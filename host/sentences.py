"""Splitting a reply into sentences, so each can be spoken as soon as it is ready."""
from __future__ import annotations

import re

_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "prof", "vs", "etc", "e.g", "i.e", "jr", "sr", "no"}
_END = re.compile(r"([.!?]+|\u2026)([\"')\]]*)\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` in order; an abbreviation ('Mr.') or a decimal does not end one."""
    out, start = [], 0
    for m in _END.finditer(text):
        before = text[start:m.start()].rsplit(None, 1)
        last = before[-1].lower().rstrip(".") if before else ""
        if m.group(1) == "." and last in _ABBREVIATIONS:
            continue
        piece = text[start:m.end()].strip()
        if piece:
            out.append(piece)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out
