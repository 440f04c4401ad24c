"""The backend registry: which backends serve each stage, and with what settings.

A backend declares itself where it is defined::

    @backend("piper", "tts", settings=PiperSettings)
    class PiperTTS:
        def __init__(self, settings: PiperSettings, ctx: BackendContext): ...

The registry imports every module of the ``host.backends`` package by itself, so adding a
backend is one new module in this package: host.toml can then name it in a stage
(``[tts] backend = "mine"``) and set it in its own table (``[tts.mine]``), with no other edit.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass, fields
from typing import ClassVar

from skull.core.errors import ConfigError
from skull.core.validate import need

from ..http import Http

STAGES = ("stt", "vision", "reply", "tts")
"""the stages of a turn, each served by one backend chosen in host.toml"""


@dataclass(frozen=True)
class BackendContext:
    """What a backend learns from its stage rather than from its own settings."""
    stage: str
    """the stage it serves: 'stt', 'vision', 'reply' or 'tts' (named in its errors)"""
    timeout_s: float = 20.0
    """the stage's whole time budget in seconds, a retry included"""
    sees_images: bool = False
    """the snapshot goes to this backend: always for vision; for reply when [vision] backend = 'reply'"""


@dataclass(frozen=True)
class NoSettings:
    """A backend with nothing to set."""


@dataclass(frozen=True)
class HttpSettings:
    """What every backend on a model server has: the server's address and how to reach it."""
    url: str | tuple = ""
    """the model server, e.g. http://127.0.0.1:8080; or a list of servers that serve the stage
    alike (each turn goes to the least busy one that is up)"""
    urls: tuple = ()
    """the same as a list of several servers: url or urls, not both"""
    api_key: str = ""
    """sent as 'Authorization: Bearer <key>' when set"""
    connect_timeout_s: float = 3.0
    """seconds to wait for the server to accept the connection"""
    example_url: ClassVar[str] = "http://127.0.0.1:8080"
    """the address the server's own documentation starts it on, shown when url is missing"""

    @property
    def addresses(self) -> tuple:
        """Every server of the stage, in the order written."""
        return tuple(self.urls) or ((self.url,) if isinstance(self.url, str) else tuple(self.url))

    def check(self, where: str) -> None:
        for key in ("url", "urls"):  # a TOML list arrives as a list: kept as a tuple (frozen, hashable)
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        if self.urls and self.url:
            need(False, where, "urls", list(self.urls), "set url or urls, not both (url may itself be a list)")
        several = not isinstance(self.url, str) or bool(self.urls)
        key = "urls" if self.urls else "url"
        if several:
            need(len(self.addresses) >= 1, where, key, list(self.addresses),
                 f"a list of at least one server address, e.g. [\"{self.example_url}\"]")
        for address in self.addresses:
            if several:
                need(isinstance(address, str), where, key, list(self.addresses),
                     f"every entry must be an address in quotes, e.g. \"{self.example_url}\"")
            need(bool(re.match(r"https?://.", address)), where, key, address if not several else list(self.addresses),
                 f"this backend needs the server's address, e.g. {self.example_url}" if not several else
                 f"every entry must start with http:// or https://, e.g. \"{self.example_url}\"")
        if several:
            seen = [a.rstrip("/") for a in self.addresses]
            twice = next((a for a in seen if seen.count(a) > 1), None)
            need(twice is None, where, key, list(self.addresses), f"{twice} is listed twice; list each server once")
        need(0.1 <= self.connect_timeout_s <= 60, where, "connect_timeout_s", self.connect_timeout_s,
             "must be 0.1..60 s")

    def http(self, server: str, ctx: BackendContext, health_path: str = "/health") -> Http:
        """Requests to this stage's server(s) as backend ``server`` of ``ctx.stage``, within the
        stage's timeout; ``health_path``: what tells a server taken out that it is back."""
        return Http(ctx.stage, server, self.addresses, self.api_key, ctx.timeout_s, self.connect_timeout_s,
                    health_path)


@dataclass(frozen=True)
class Entry:
    """One backend as host.toml knows it."""
    name: str
    """what ``backend = ...`` says"""
    stages: tuple
    """the stages it can serve"""
    settings: type
    """its frozen settings dataclass: the keys of its table ``[stage.name]``"""
    cls: type | None
    """built as ``cls(settings, ctx)``; None: a choice that builds nothing (vision 'reply', 'none')"""
    default: bool = False
    """the embedded default of its stages: needs no server and no download"""
    fallback: str | None = None
    """the backend of the same stage to build instead when this one cannot load on this machine"""
    engine: bool = False
    """an embedded engine that holds the GIL while it computes (pocketsphinx): built in each of the
    host's worker processes and called there ([embedded] workers, host.pool), so several skulls
    are answered on several cores; engines that release the GIL and thread themselves
    (moonshine's onnxruntime, OpenCV) stay in the host process"""

    def keys(self) -> list[str]:
        return [f.name for f in fields(self.settings) if f.init]

    def table(self, stage: str) -> str:
        """Its table's name as written in host.toml: ``tts.piper``, ``stt."whisper.cpp"``."""
        return f"{stage}.{self.name}" if re.fullmatch(r"[A-Za-z0-9_-]+", self.name) else f'{stage}."{self.name}"'

    def build(self, settings, ctx: BackendContext):
        return None if self.cls is None else self.cls(settings, ctx)


_ENTRIES: dict[str, dict[str, Entry]] = {stage: {} for stage in STAGES}
_PSEUDO = {"vision": ("reply", "none")}
"""choices that build nothing: 'reply' (the reply model looks at the snapshot itself), 'none'"""
_scanned: tuple = ()


def _add(entry: Entry) -> None:
    for stage in entry.stages:
        if stage not in STAGES:
            raise ValueError(f"backend {entry.name!r} names stage {stage!r}; the stages are {', '.join(STAGES)}")
        old = _ENTRIES[stage].get(entry.name)
        if old is not None and _where(old.cls) != _where(entry.cls):
            raise ValueError(f"two {stage} backends are called {entry.name!r}: {_where(old.cls)} and "
                             f"{_where(entry.cls)}; rename one")
        taken = next((e for e in _ENTRIES[stage].values() if e.default and e.name != entry.name), None)
        if entry.default and taken is not None:
            raise ValueError(f"{stage} has two embedded defaults: {taken.name} and {entry.name}; keep one")
        _ENTRIES[stage][entry.name] = entry


def _where(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}" if cls is not None else "the registry"


def backend(name: str, *stages: str, settings: type = NoSettings, default: bool = False,
            fallback: str | None = None, engine: bool = False):
    """Class decorator: register the class as backend ``name`` of ``stages``, configured by
    ``settings`` (a frozen dataclass with ``check(where)``) and built as ``cls(settings, ctx)``.
    ``fallback``: an embedded backend (no settings) built instead, with the reason logged, when
    this one raises BackendError because it cannot load on this machine. ``engine``: an embedded
    engine that holds the GIL, run in the host's worker processes (its settings must pickle)."""
    def register(cls):
        _add(Entry(name, tuple(stages), settings, cls, default, fallback, engine))
        return cls
    return register


for _stage, _names in _PSEUDO.items():
    for _name in _names:
        _add(Entry(_name, (_stage,), NoSettings, None))


def _discover() -> None:
    """Import every module of the host.backends package (each registers its backends)."""
    global _scanned
    package = importlib.import_module(__package__)
    path = tuple(package.__path__)
    if path == _scanned:
        return
    for info in pkgutil.iter_modules(path):
        if info.name != "registry" and not info.name.startswith("_"):
            try:
                importlib.import_module(f"{__package__}.{info.name}")
            except ImportError as exc:
                raise ImportError(f"backend module {__package__}.{info.name} cannot be imported ({exc}); a backend "
                                  f"imports optional engines inside its constructor, not at the top") from exc
    _scanned = path


def names(stage: str) -> tuple:
    """The backends ``stage`` can use: the embedded default first, choices that build nothing last."""
    _discover()
    entries = list(_ENTRIES[stage].values())
    pseudo = _PSEUDO.get(stage, ())
    return tuple(e.name for e in sorted(entries, key=lambda e: (not e.default, e.name in pseudo)))


def lookup(stage: str, name: str) -> Entry:
    """The entry of backend ``name`` for ``stage``; ConfigError listing the choices if there is none."""
    _discover()
    entry = _ENTRIES.get(stage, {}).get(name)
    if entry is None:
        raise ConfigError(f"no {stage} backend is called {name!r}; choose one of {', '.join(names(stage))}")
    return entry
