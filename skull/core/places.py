"""Where the skull and the host find their config file and keep their status files.

Config lookup, first found wins (:func:`find_config`):

1. ``--config PATH`` (a named file that does not exist is an error naming it);
2. ``$SKULL_CONFIG`` for skull.toml, ``$SKULL_HOST_CONFIG`` for host.toml (likewise);
3. the user's config folder: ``$XDG_CONFIG_HOME/skull/`` (default ``~/.config/skull/``);
4. the system's: ``/etc/skull/``;
5. none: the built-in defaults.

The current folder is not searched: a skull.toml lying where a command happens to run must not
change a show's skull. Both sides use this one function (the host imports ``skull.core`` only).

A servo profile named in a config file (``[jaw] calibration = "calibration/default.toml"``) or
by name (``--calibration show``) is searched for by :func:`profile_candidates`, first found wins:
the config file's folder, the user's config folder, then the bundled default profile shipped
with skull (:func:`bundled_profiles`, read-only: ``skull calibrate`` never writes there).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

ENV_OF = {"skull.toml": "SKULL_CONFIG", "host.toml": "SKULL_HOST_CONFIG"}
"""the environment variable naming each config file"""

SYSTEM_DIR = Path("/etc/skull")


def user_config_dir() -> Path:
    """``$XDG_CONFIG_HOME/skull``, else ``~/.config/skull``."""
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    return (Path(base) if os.path.isabs(base) else Path.home() / ".config") / "skull"


def bundled_root() -> Path:
    """The folder the bundled ``calibration/`` lives in: the source tree skull is installed from
    (``pip install -e``), which ships ``calibration/default.toml`` beside ``skull.example.toml``."""
    return Path(__file__).resolve().parents[2]


def bundled_profiles() -> Path:
    """The bundled profiles folder (``calibration/`` of the source tree): read-only defaults."""
    return bundled_root() / "calibration"


def profile_candidates(relative: str | os.PathLike, config_path: str | os.PathLike | None) -> list[tuple[Path, str]]:
    """Where a relative profile path (``calibration/show.toml``) is looked for, in order, each
    with a word saying which place it is: beside the config file (when one is in use), in the
    user's config folder, in the bundled defaults."""
    places = []
    if config_path is not None:
        places.append((Path(config_path).absolute().parent, "beside the config file"))
    places.append((user_config_dir(), "user config"))
    places.append((bundled_root(), "bundled default, read-only"))
    out, seen = [], set()
    for folder, why in places:
        path = folder / relative
        if path not in seen:
            seen.add(path)
            out.append((path, why))
    return out


def is_bundled(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies in the bundled, read-only profiles folder."""
    try:
        return Path(path).resolve().is_relative_to(bundled_profiles().resolve())
    except OSError:
        return False


@dataclass(frozen=True)
class ConfigChoice:
    """The config file a command uses, and why."""
    path: Path | None
    """absolute path of the file; None for the built-in defaults"""
    why: str
    """``--config``, ``$SKULL_CONFIG``, ``user config``, ``system config``, or the places
    searched when there was no file"""

    def line(self) -> str:
        """What the process prints at start: ``config: /etc/skull/skull.toml (system config)``."""
        if self.path is None:
            return f"config: built-in defaults ({self.why})"
        return f"config: {self.path} ({self.why})"


def find_config(filename: str, explicit: str | os.PathLike | None = None, *,
                system_dir: Path | None = None) -> ConfigChoice:
    """The config file ``filename`` (``skull.toml`` or ``host.toml``) by the lookup order of the
    module docstring. ``system_dir``: instead of /etc/skull (for tests)."""
    env = ENV_OF[filename]
    system_dir = SYSTEM_DIR if system_dir is None else Path(system_dir)
    if explicit is not None and str(explicit) != "":
        return ConfigChoice(_named(Path(explicit), "--config", filename), "--config")
    named = os.environ.get(env, "")
    if named:
        return ConfigChoice(_named(Path(named), f"${env}", filename), f"${env}")
    user = user_config_dir() / filename
    if user.is_file():
        return ConfigChoice(user.absolute(), "user config")
    system = system_dir / filename
    if system.is_file():
        return ConfigChoice(system.absolute(), "system config")
    return ConfigChoice(None, f"no {filename} in {user.parent}/ or {system_dir}/; ${env} is not set")


def _named(path: Path, by: str, filename: str) -> Path:
    path = path.expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {path} (from {by}) {what}; give the path of a {filename}, or leave "
                          f"{by} out to use {user_config_dir() / filename}, {SYSTEM_DIR / filename} or the "
                          f"built-in defaults")
    return path.absolute()


def runtime_dir() -> Path:
    """Where a running skull or host writes its status file: ``$XDG_RUNTIME_DIR/skull``,
    else ``~/.cache/skull``."""
    base = os.environ.get("XDG_RUNTIME_DIR") or ""
    return Path(base) / "skull" if os.path.isabs(base) else Path.home() / ".cache" / "skull"


SYSTEM_RUNTIME_DIR = Path("/run/skull")
"""the status folder of a system service (its unit sets RuntimeDirectory=skull)"""


def status_dirs() -> list[Path]:
    """Where ``skull status`` and ``skull host --check`` look: this user's folder, then the
    system services' one."""
    dirs = [runtime_dir()]
    if SYSTEM_RUNTIME_DIR not in dirs:
        dirs.append(SYSTEM_RUNTIME_DIR)
    return dirs
