"""The family-friendly filter: words a skull that performs for children must not say.

Applied to every sentence before it is spoken (and to the reply text the skull shows). A
matched word is replaced by ``[filter] replacement`` ("boo"); matching ignores case and works
on whole words, and an entry ending in ``*`` also matches its longer forms ("damn*": damned,
damning). ``[filter] words`` adds entries, ``allow`` removes built-in ones.
"""
from __future__ import annotations

import logging
import re

from .config import FilterConfig

log = logging.getLogger("host.filter")

BUILTIN = ("fuck*", "motherfuck*", "shit*", "bullshit*", "bitch*", "bastard*", "asshole*", "arsehole*",
           "dickhead*", "cock", "cocks", "cunt*", "pussy", "whore*", "slut*", "wank*", "twat*", "bollocks",
           "piss*", "crap", "crappy", "damn*", "goddamn*", "porn*", "sex", "sexy", "nude", "nudes", "naked",
           "horny", "boob*", "tits", "titty", "titties", "penis*", "vagina*", "dildo*", "cocaine", "heroin",
           "meth", "weed", "stoned", "drunk", "booze", "suicide", "kill yourself", "retard*")


class FamilyFilter:
    def __init__(self, config: FilterConfig = FilterConfig()):
        self.enabled, self.replacement = config.enabled, config.replacement
        allowed = {w.lower() for w in config.allow}
        entries = [w for w in BUILTIN if w not in allowed] + [w.lower() for w in config.words if w.strip()]
        parts = [re.escape(w.rstrip("*")).replace(r"\ ", r"\s+") + (r"\w*" if w.endswith("*") else "")
                 for w in entries]
        self._pattern = re.compile(r"\b(?:" + "|".join(parts) + r")\b", re.IGNORECASE) if parts else None

    def clean(self, text: str) -> str:
        """``text`` with every listed word replaced; logs what it caught."""
        if not self.enabled or self._pattern is None:
            return text
        hits = self._pattern.findall(text)
        if not hits:
            return text
        log.warning("family filter replaced %d word(s) in the reply: %s", len(hits), ", ".join(sorted(set(hits))))
        return self._pattern.sub(self.replacement, text)
