"""``skull service install|uninstall host|skull``: systemd units that start the host or the
skull at boot and restart them, pointing at this install (this Python, this package) and one
config file by absolute path.

A unit is ``Type=notify``: the process says ``READY=1`` once it is up and feeds the watchdog
from its event loop (:mod:`skull.core.sdnotify`); ``WatchdogSec`` without a ping and systemd
restarts it, as it does after any exit (``Restart=always``). ``--user`` units live in
``$XDG_CONFIG_HOME/systemd/user/`` and run in the user's session, where the sound server is;
system units in ``/etc/systemd/system/`` (root only). See docs/service.md.
"""
from __future__ import annotations

import os
import shlex
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .core.errors import SkullError
from .core.places import find_config

RESTART_SEC = 2
"""seconds systemd waits before starting a unit again"""
WATCHDOG_SEC = 30
"""seconds without a watchdog ping before systemd restarts the process (it pings every 15 s)"""
START_SEC = 180
"""seconds a start may take before READY=1 (the host loads its embedded models first)"""

UNIT_NAMES = {"host": "skull-host.service", "skull": "skull.service"}
CONFIG_NAMES = {"host": "host.toml", "skull": "skull.toml"}
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")


class ServiceError(SkullError, RuntimeError):
    """A unit could not be installed or removed."""


def user_unit_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    return (Path(base) if os.path.isabs(base) else Path.home() / ".config") / "systemd" / "user"


def package_root() -> Path:
    """The folder holding the ``skull`` package this process runs."""
    return Path(__file__).resolve().parent.parent


def _needs_pythonpath(root: Path) -> bool:
    """True when this package is not where this Python finds packages by itself (a checkout run
    with PYTHONPATH): the unit then names the folder."""
    found = [Path(p).resolve() for p in site.getsitepackages() + [site.getusersitepackages()]]
    if root in found:
        return False
    for p in found:  # an editable install points at the checkout through a .pth file
        for pth in p.glob("*.pth") if p.is_dir() else ():
            try:
                if str(root) in pth.read_text().split():
                    return False
            except OSError:
                continue
    return True


@dataclass(frozen=True)
class Unit:
    what: str
    """host or skull"""
    user: bool
    config: Path | None
    """absolute path of the config file the unit names; None: the process looks it up itself"""

    @property
    def name(self) -> str:
        return UNIT_NAMES[self.what]

    @property
    def path(self) -> Path:
        return (user_unit_dir() if self.user else SYSTEM_UNIT_DIR) / self.name

    def text(self) -> str:
        args = [sys.executable, "-m", "skull", "run" if self.what == "skull" else "host"]
        if self.config is not None:
            args += ["--config", str(self.config)]
        after = ["network-online.target"]
        if self.what == "skull":
            after.append("sound.target")
            if self.user:
                after += ["pipewire-pulse.service", "pulseaudio.service"]
        root = package_root()
        env = ["PYTHONUNBUFFERED=1"]
        if _needs_pythonpath(root):
            env.append(f"PYTHONPATH={root}")
        service = [
            "Type=notify",
            "NotifyAccess=main",
            f"ExecStart={' '.join(_quote(a) for a in args)}",
            f"WorkingDirectory={self.config.parent if self.config is not None else root}",
            *(f"Environment={_quote(e)}" for e in env),
            "Restart=always",
            f"RestartSec={RESTART_SEC}",
            f"WatchdogSec={WATCHDOG_SEC}",
            f"TimeoutStartSec={START_SEC}",
            "TimeoutStopSec=20",
        ]
        if not self.user:
            # the status file goes to /run/skull, where skull status looks for system services
            service += ["Environment=XDG_RUNTIME_DIR=/run", "RuntimeDirectory=skull", "RuntimeDirectoryMode=0755"]
            owner = os.environ.get("SUDO_USER", "")
            if owner and owner != "root":  # run as whoever ran sudo, not as root
                service.append(f"User={owner}")  # with that user's groups (gpio, audio, dialout)
        title = "Talking skull host (speech, vision, replies, voice)" if self.what == "host" else \
            "Talking skull (the prop's agent: button, mic, speaker, jaw)"
        lines = ["# written by skull service install; skull service uninstall removes it",
                 "[Unit]", f"Description={title}", "Documentation=file://" + str(root / "docs" / "service.md"),
                 "Wants=network-online.target", f"After={' '.join(after)}",
                 # Restart=always must not give up after a burst of failures (a host away for minutes)
                 "StartLimitIntervalSec=0", "",
                 "[Service]", *service, "",
                 "[Install]", f"WantedBy={'default.target' if self.user else 'multi-user.target'}", ""]
        return "\n".join(lines)


def _quote(arg: str) -> str:
    """systemd's quoting: double quotes around anything with a space or a quote."""
    if arg and not any(c in arg for c in ' \t"\'\\'):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemctl(user: bool, *args: str) -> list[str]:
    return ["systemctl", *(["--user"] if user else []), *args]


def _run_all(commands: list[list[str]], out) -> bool:
    """Run each command; on the first that cannot run, say why and print the rest to run by hand."""
    for i, cmd in enumerate(commands):
        shown = " ".join(shlex.quote(c) for c in cmd)
        if shutil.which(cmd[0]) is None:
            why = f"{cmd[0]} is not installed here"
        else:
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0:
                print(f"ran: {shown}", file=out)
                continue
            why = f"{shown} failed: {(done.stderr or done.stdout).strip() or f'exit status {done.returncode}'}"
        print(f"{why}\nsystemd cannot be told from here (no systemd, or no user bus in this session); run "
              f"these where it can:", file=out)
        for rest in commands[i:]:
            print("  " + " ".join(shlex.quote(c) for c in rest), file=out)
        return False
    return True


def _check_writable(unit: Unit) -> None:
    if not unit.user and os.geteuid() != 0:
        raise ServiceError(f"installing a system unit writes {unit.path}, which needs root: run it with sudo "
                           f"(sudo {sys.executable} -m skull service ...), or add --user for a unit of your "
                           f"own user (docs/service.md)")


def linger_advice(user: bool) -> str:
    if not user:
        return ""
    name = os.environ.get("USER") or os.environ.get("LOGNAME") or "$USER"
    return (f"to start it at boot without anyone logging in (a Pi in a prop), let your user's services run "
            f"without a login, once:\n  sudo loginctl enable-linger {name}")


def install(what: str, *, user: bool, config: str | None, start: bool, show: bool, out=sys.stdout) -> int:
    """``skull service install``: 0 when the unit is written (and started unless ``start`` is
    False), 1 when systemd could not be told (the commands to run are printed)."""
    choice = find_config(CONFIG_NAMES[what], config)
    unit = Unit(what, user, choice.path)
    if show:
        print(unit.text(), end="", file=out)
        return 0
    _check_writable(unit)
    print(choice.line(), file=out)
    try:
        unit.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = unit.path.with_name(f".{unit.name}.tmp")
        tmp.write_text(unit.text())
        os.replace(tmp, unit.path)
    except OSError as exc:
        raise ServiceError(f"cannot write {unit.path}: {exc.strerror}") from None
    print(f"wrote {unit.path}", file=out)
    commands = [_systemctl(user, "daemon-reload")]
    commands.append(_systemctl(user, "enable", "--now", unit.name) if start else _systemctl(user, "enable",
                                                                                              unit.name))
    if not start:
        print("not started (--no-start); to start it:\n  " + " ".join(_systemctl(user, "daemon-reload")) + "\n  "
              + " ".join(_systemctl(user, "enable", "--now", unit.name)), file=out)
        ok = True
    else:
        ok = _run_all(commands, out)
    journal = "journalctl" + (" --user" if user else "") + f" -u {unit.name} -f"
    print(f"logs: {journal}\nstatus: skull status" + (" (and skull host --check)" if what == "host" else ""),
          file=out)
    advice = linger_advice(user)
    if advice:
        print(advice, file=out)
    return 0 if ok else 1


def uninstall(what: str, *, user: bool, out=sys.stdout) -> int:
    """``skull service uninstall``: stop, disable, remove, reload. 0 when done, 1 when systemd
    could not be told (the file is still removed; the commands to run are printed)."""
    unit = Unit(what, user, None)
    if not unit.path.exists():
        raise ServiceError(f"no {unit.name} is installed: {unit.path} does not exist"
                           + (" (a system unit? leave out --user)" if user else " (a user unit? add --user)"))
    if not user and os.geteuid() != 0:
        raise ServiceError(f"removing {unit.path} needs root: run it with sudo, or add --user for your own unit")
    ok = _run_all([_systemctl(user, "disable", "--now", unit.name)], out)
    try:
        unit.path.unlink()
    except OSError as exc:
        raise ServiceError(f"cannot remove {unit.path}: {exc.strerror}") from None
    print(f"removed {unit.path}", file=out)
    reload = _systemctl(user, "daemon-reload")
    if ok:
        ok = _run_all([reload], out)
    else:
        print("  " + " ".join(reload), file=out)
    return 0 if ok else 1
