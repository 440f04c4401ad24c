"""Splitting a reply into sentences while it is still being written, so each can be spoken as
soon as it is complete.

``SentenceSplitter.feed`` takes pieces as a language model streams them and returns the
sentences they complete. A sentence goes out the moment its end is certain, and as early as
it can: ``!`` and ``?`` and a plain full stop end a sentence as soon as they arrive; a full stop
after a digit waits one character (``$29.`` ends a sentence, ``$29.99`` does not); an ellipsis
waits for the next word (``Well... maybe`` goes on, ``Well... Maybe`` is two sentences); an
abbreviation (``Mr.``, ``e.g.``, ``U.S.``) or an initial (``J.``) never ends one. Closing quotes
and brackets stay with their sentence, also when they arrive after it was sent.
"""
from __future__ import annotations

import re

ABBREVIATIONS = frozenset("""mr mrs ms dr st prof vs etc jr sr no mt ft approx dept est inc ltd co
gen col lt sgt capt rev hon fig vol jan feb mar apr jun jul aug sep sept oct nov dec""".split())
_TERMINATOR = re.compile(r"(\.{2,}|\u2026|[.!?]+)([\"'\u201d\u2019)\]]*)")
_CLOSERS = "\"'\u201d\u2019)]"
_ORPHAN = re.compile(r"^[\"'\u201d\u2019)\]!?.\u2026]+")


class SentenceSplitter:
    def __init__(self):
        self.buf = ""
        self._after_eager = False  # the last sentence went out before what follows it was seen

    def feed(self, piece: str) -> list[str]:
        """Add streamed text; return the sentences it completed, in order."""
        if self._after_eager and piece:
            # a closing quote or a second "!" of the sentence already sent: it belongs to that one
            piece = _ORPHAN.sub("", piece) if not self.buf else piece
            self._after_eager = not piece
        self.buf = (self.buf + piece).lstrip()  # a sentence never starts with a space
        return self._split(final=False)

    def flush(self) -> list[str]:
        """The end of the reply: whatever is left is the last sentence."""
        out = self._split(final=True)
        tail = self.buf.strip()
        self.buf = ""
        if tail and not _ORPHAN.fullmatch(tail):
            out.append(tail)
        return out

    def _split(self, final: bool) -> list[str]:
        out = []
        pos = 0
        while True:
            m = _TERMINATOR.search(self.buf, pos)
            if m is None:
                break
            verdict = self._ends(m, final)
            if verdict is None:  # cannot tell yet: wait for more text
                break
            if verdict:
                sentence = self.buf[:m.end()].strip()
                self.buf = self.buf[m.end():].lstrip()
                if sentence and not _ORPHAN.fullmatch(sentence):
                    out.append(sentence)
                self._after_eager = not self.buf
                pos = 0
            else:
                pos = m.end()
        newline = self.buf.find("\n")
        if newline > 0 and self.buf[:newline].strip():  # a line break ends a sentence too
            out.append(self.buf[:newline].strip())
            self.buf = self.buf[newline + 1:].lstrip()
            out.extend(self._split(final))
        return out

    def _ends(self, m: re.Match, final: bool) -> bool | None:
        """True: a sentence ends at ``m``; False: it does not; None: not known yet."""
        buf, mark = self.buf, m.group(1)
        rest = buf[m.end():]
        at_end = not rest
        if not at_end and not rest[0].isspace():
            return False  # "3.5", "e.g.x", "Boo!Ha": no space, no sentence end
        nxt = rest.lstrip()[:1]
        if mark in ("!", "?") or (len(mark) > 1 and "." not in mark):
            return True
        word = buf[:m.start()].rsplit(None, 1)[-1] if buf[:m.start()].strip() else ""
        if mark.startswith("..") or mark == "\u2026":
            if not nxt:
                return True if final else None
            return nxt.isupper() or nxt.isdigit() or nxt in "\"'\u201c\u2018("
        # a single full stop (possibly after ! or ?)
        bare = word.lower().lstrip("\"'(\u201c\u2018")
        if bare in ABBREVIATIONS or "." in bare or (len(bare) == 1 and bare.isalpha()):
            return False
        if at_end and word[-1:].isdigit():
            return True if final else None  # "$29." or "$29.99"?
        return True


def split_sentences(text: str) -> list[str]:
    """Sentences of a whole text, by the same rules as streaming."""
    s = SentenceSplitter()
    return s.feed(text) + s.flush()
