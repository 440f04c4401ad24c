"""The one validator: TOML config tables, the jaw shape a skull sends in ``hello``, and the
fields of every wire message are all checked here, the same way.

:func:`build` makes a frozen dataclass from a mapping: unknown keys, missing required keys,
wrong types and non-finite numbers are refused; then the dataclass's own ``check(where)`` (or
``validate()`` for wire messages) applies its range rules through :func:`need`. Every refusal is
a :class:`~skull.core.errors.ConfigError` whose message names the source, the table, the key,
the value and the rule, e.g. ``skull.toml [calibration]: open_us = 3000.0 is out of range: ...``;
``rule_kind`` says which rule it broke (``unknown``, ``missing``, ``type`` or ``range``) so the
protocol can turn it into its own error code.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
import types
import typing
from pathlib import Path

from .errors import ConfigError


class ValidationError(ConfigError):
    """A value broke a rule; ``key`` names it and ``rule_kind`` says which kind of rule."""

    def __init__(self, message: str, key: str = "", rule_kind: str = "range"):
        super().__init__(message)
        self.key, self.rule_kind = key, rule_kind


def where_of(source: str, table: str = "") -> str:
    """``skull.toml [calibration]``: the source and, when there is one, the table."""
    return f"{source} [{table}]" if table else source


def need(ok: bool, where: str, key: str, value, rule: str) -> None:
    """Refuse ``value`` of ``key`` unless ``ok``; ``rule`` says what a good value is."""
    if not ok:
        raise ValidationError(f"{where}: {key} = {value!r} is out of range: {rule}", key, "range")


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if h is type(None) else _type_name(h) for h in typing.get_args(hint))
    if hint is float:
        return "a number"
    if hint is int:
        return "a whole number"
    if hint is str:
        return "a string"
    if hint is bool:
        return "true or false"
    if hint is tuple or origin is tuple or hint is list or origin is list:
        return "a list"
    if hint is dict or origin is dict:
        return "a table"
    return getattr(hint, "__name__", str(hint))


def _type_ok(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if hint is typing.Any:
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is tuple or origin is tuple or hint is list or origin is list:
        return isinstance(value, (list, tuple))
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if hint is str:
        return isinstance(value, str) and _encodable(value)
    return isinstance(value, hint)


def _encodable(s: str) -> bool:
    """False for text holding lone surrogates (JSON's "\\ud800"), which nothing can print or send."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


@functools.lru_cache(maxsize=None)
def _fields_of(cls) -> tuple[list, dict]:
    """The init fields of a dataclass and their resolved type hints, worked out once per class
    (resolving string annotations costs ~100 us; a message decode must not pay it every time)."""
    return [f for f in dataclasses.fields(cls) if f.init], typing.get_type_hints(cls)


def build(cls, data, source: str, table: str = "", *, unknown: str = "refuse"):
    """A frozen dataclass ``cls`` from the mapping ``data`` read from ``source`` (a file, or a
    message) at ``table``. Nested dataclass fields are built from nested tables. ``unknown``:
    ``"refuse"`` (config: a misspelt key must not pass silently) or ``"ignore"`` (wire messages:
    a newer peer may send fields this version does not know)."""
    where = where_of(source, table)
    if not isinstance(data, dict):
        raise ValidationError(f"{where} must be a table, got {data!r}"[:300], table, "type")
    fields, hints = _fields_of(cls)
    names = [f.name for f in fields]
    if unknown == "refuse":
        extra = sorted(set(data) - set(names), key=str)
        if extra:
            raise ValidationError(f"{where}: unknown key {extra[0]!r}; known keys: {', '.join(names) or 'none'}",
                                  str(extra[0]), "unknown")
    kwargs = {}
    for f in fields:
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValidationError(f"{where}: {f.name!r} is missing; it must be {_type_name(hints[f.name])}",
                                      f.name, "missing")
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = build(hint, value, source, f"{table}.{f.name}" if table else f.name, unknown=unknown)
            continue
        if isinstance(value, str) and not _encodable(value):
            raise ValidationError(f"{where}: {f.name} is not valid text: it holds a lone UTF-16 surrogate "
                                  f"(\\ud800..\\udfff without its pair)", f.name, "type")
        if not _type_ok(value, hint):
            shown = repr(value)
            raise ValidationError(f"{where}: {f.name} = {shown[:60]}{'...' if len(shown) > 60 else ''} has the wrong "
                                  f"type: it must be {_type_name(hint)}", f.name, "type")
        if isinstance(value, list) and (hint is tuple or typing.get_origin(hint) is tuple):
            value = _tuples(value)
        elif hint is float or (isinstance(value, int) and not isinstance(value, bool)
                               and float in typing.get_args(hint)):
            value = float(value)
        kwargs[f.name] = value
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(where)
    return obj


def read_toml(path: str | Path | None) -> tuple[dict, str]:
    """The tables of a TOML file and its name for messages; no file: no tables, "built-in defaults"."""
    if path is None:
        return {}, "built-in defaults"
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text; save it as UTF-8") from None
    try:
        return tomllib.loads(text), str(p)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
