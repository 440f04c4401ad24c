"""A private sound server with one null sink, for measuring what a speaker really plays.

A null sink is a real-time clocked sound device with no hardware behind it; its monitor source
(``skull_null.monitor``) carries exactly what it rendered, when it rendered it. So a machine
without a sound card (a CI runner) can still play through the real path a skull uses
(PortAudio -> ALSA's ``pulse`` plugin -> the server) and record the result
(:class:`skull.audio.monitor.SinkMonitor`).

    with PulseServer() as server:     # pulseaudio -n -F <script> in a temp folder, as a child
        server.export()               # PULSE_SERVER=unix:... for this process and its children
        import sounddevice            # only now: PortAudio reads ALSA's config when it starts

Two servers, one interface (:data:`SERVERS`):

* :class:`PulseServer`: ``pulseaudio`` itself. Needs the Debian packages pulseaudio,
  pulseaudio-utils (pactl, parec) and libasound2-plugins (ALSA's pulse plugin);
  ``scripts/bootstrap.sh`` installs them.
* :class:`PipeWireServer`: PipeWire with its PulseAudio layer, as current desktops and
  Raspberry Pi OS run it: a private D-Bus session bus, ``pipewire``, ``wireplumber`` (it will
  not run without a session bus) and ``pipewire-pulse``. Needs pipewire, pipewire-pulse,
  wireplumber and dbus besides pulseaudio-utils and libasound2-plugins.

Each daemon gets its own HOME, XDG_RUNTIME_DIR and XDG_CONFIG_HOME in a temp folder, so it
never touches the user's sound server, cookie or settings, and ``stop()`` leaves nothing
behind. They run as root too: PulseAudio then only warns that it is not meant to (``--system``
would be its multi-user mode, which needs a ``pulse`` user and refuses module loading).
"""
from __future__ import annotations

import abc
import glob
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("bench.soundserver")

ALSA_PULSE_PLUGIN = "libasound_module_pcm_pulse.so"


@dataclass(frozen=True)
class Availability:
    """Whether a private server can be started here; ``why`` says what is missing (or the version)."""
    ok: bool
    why: str

    def __bool__(self) -> bool:
        return self.ok


class SoundServerError(RuntimeError):
    """The sound server could not be started (the message says why and what to install)."""


def _alsa_pulse_plugin() -> str | None:
    for pattern in ("/usr/lib/*/alsa-lib/", "/usr/lib/alsa-lib/", "/usr/lib64/alsa-lib/"):
        for folder in glob.glob(pattern):
            path = os.path.join(folder, ALSA_PULSE_PLUGIN)
            if os.path.exists(path):
                return path
    return None


def _missing(tools: tuple[tuple[str, str], ...]) -> list[str]:
    """The Debian packages of the ``(program, package)`` pairs not installed, and ALSA's pulse plugin."""
    missing = [pkg for tool, pkg in tools if shutil.which(tool) is None]
    if _alsa_pulse_plugin() is None:
        missing.append("libasound2-plugins")
    return list(dict.fromkeys(missing))


class SoundServer(abc.ABC):
    """What both servers share: a temp folder, the daemons as children, the client's
    environment, ``pactl``, and a ``stop()`` that undoes all of it (idempotent).

    ``start()`` waits until the server answers with ``sink`` (a null sink at ``rate_hz``) as its
    default output; ``env`` is what a client needs to reach it; ``export()`` puts that into
    ``os.environ`` (call it before sounddevice is imported). A context manager.
    """

    name = ""
    """what --server calls it"""

    def __init__(self, *, sink: str = "skull_null", rate_hz: int = 48000, start_timeout_s: float = 15.0):
        self.sink, self.rate_hz, self.start_timeout_s = sink, rate_hz, start_timeout_s
        self.dir: Path | None = None
        self.socket: Path | None = None
        """the PulseAudio-protocol socket clients connect to"""
        self.version = ""
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self._logs: list[Path] = []
        self._saved_env: dict[str, str | None] | None = None

    @classmethod
    @abc.abstractmethod
    def available(cls) -> Availability:
        """Can a private server run here? ``why`` names the missing packages when not."""

    @abc.abstractmethod
    def _launch(self) -> None:
        """Start the daemons in ``self.dir`` and set ``self.socket``."""

    @property
    def server(self) -> str:
        """The client's server string, ``unix:/path/to/socket``."""
        return f"unix:{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs (libpulse, and so ALSA's pulse plugin, read these)."""
        if self.dir is None:
            raise SoundServerError("the sound server is not started")
        return {"PULSE_SERVER": self.server, "PULSE_CLIENTCONFIG": str(self.dir / "client.conf"),
                "PULSE_SINK": self.sink}

    def start(self) -> "SoundServer":
        ok = self.available()
        if not ok:
            raise SoundServerError(ok.why)
        self.version = ok.why
        self.dir = Path(tempfile.mkdtemp(prefix=f"skull-{self.name}-"))
        try:
            for sub in ("run", "home", "config"):
                (self.dir / sub).mkdir(mode=0o700)
            (self.dir / "client.conf").write_text("autospawn = no\n")  # no client starts a daemon of its own
            self._launch()
            log.info("private %s on %s, default sink %s", self.version, self.server, self.sink)
        except BaseException:
            self.stop()
            raise
        return self

    def _daemon_env(self, **extra: str) -> dict[str, str]:
        d = self.dir
        env = {**os.environ, "HOME": str(d / "home"), "XDG_RUNTIME_DIR": str(d / "run"),
               "XDG_CONFIG_HOME": str(d / "config")}
        for key in ("PULSE_SERVER", "PULSE_CLIENTCONFIG", "PULSE_SINK", "DBUS_SESSION_BUS_ADDRESS", "DISPLAY"):
            env.pop(key, None)
        env.update(extra)
        return env

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        path = self.dir / f"{name}.log"
        self._logs.append(path)
        with open(path, "w") as out:
            proc = subprocess.Popen(cmd, cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._procs.append((name, proc))
        return proc

    def _wait(self, what: str, ready) -> None:
        """Until ``ready()``; raises when a daemon died or the time is up."""
        deadline = time.monotonic() + self.start_timeout_s
        while not ready():
            for name, proc in self._procs:
                if proc.poll() is not None:
                    raise SoundServerError(f"{name} exited with status {proc.returncode} while starting: "
                                           f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise SoundServerError(f"{what} did not happen within {self.start_timeout_s:.0f} s: {self.log_tail()}")
            time.sleep(0.05)

    def pactl(self, *args: str) -> str | None:
        """``pactl`` against this server: its output, or None when it failed."""
        env = {**os.environ, **self.env}
        try:
            out = subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=3, env=env)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    def sink_latency(self) -> tuple[float, float] | None:
        """(latency, configured latency) of the sink in milliseconds, as ``pactl`` reports them."""
        out = self.pactl("list", "sinks")
        if not out:
            return None
        for block in out.split("\n\n"):
            if f"Name: {self.sink}" in block:
                for line in block.splitlines():
                    if line.strip().startswith("Latency:"):
                        nums = [float(w) for w in line.replace(",", " ").split() if w.replace(".", "").isdigit()]
                        if len(nums) >= 2:
                            return nums[0] / 1000.0, nums[1] / 1000.0
        return None

    def log_tail(self, lines: int = 8) -> str:
        text = []
        for path in self._logs:
            try:
                text += [f"{path.stem}: {ln.strip()}" for ln in path.read_text(errors="replace").splitlines()
                         if ln.strip()]
            except OSError:
                pass
        return " | ".join(text[-lines:]) or "(nothing logged)"

    def export(self) -> None:
        """Put :attr:`env` into ``os.environ`` (undone by ``stop()``): sounddevice imported after
        this, and every process started after it, plays to this server."""
        env = self.env
        if self._saved_env is None:
            self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)

    def stop(self) -> None:
        """Stop the daemons (last started first), restore the environment, remove the temp
        folder. Idempotent."""
        procs, self._procs = self._procs, []
        for _, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(2)
        if self._saved_env is not None:
            for k, v in self._saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            self._saved_env = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self._logs = []

    def __enter__(self) -> "SoundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class PulseServer(SoundServer):
    """``pulseaudio -n -F <script>`` as a child process, the null sink loaded by the script."""

    name = "pulseaudio"

    @classmethod
    def available(cls) -> Availability:
        missing = _missing((("pulseaudio", "pulseaudio"), ("pactl", "pulseaudio-utils"), ("parec", "pulseaudio-utils")))
        if missing:
            return Availability(False, f"no PulseAudio here: install the Debian packages {' '.join(missing)} "
                                       f"(scripts/bootstrap.sh does)")
        try:
            out = subprocess.run(["pulseaudio", "--version"], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Availability(False, f"pulseaudio does not run: {exc}")
        return Availability(True, out.stdout.strip() or "pulseaudio")

    def _launch(self) -> None:
        d = self.dir
        self.socket = d / "run" / "native"
        script = d / "default.pa"
        # auth-anonymous: clients need no cookie (the socket is in a private 0700 folder)
        script.write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}\n"
            f"load-module module-null-sink sink_name={self.sink} rate={self.rate_hz} "
            f"sink_properties=device.description=skull-null\n"
            f"set-default-sink {self.sink}\n"
            f"set-default-source {self.sink}.monitor\n")
        self._spawn("pulseaudio", ["pulseaudio", "-n", "-F", str(script), "--exit-idle-time=-1", "--daemonize=no",
                                   "--use-pid-file=no", "--system=no", "--log-target=stderr"], self._daemon_env())
        self._wait("pulseaudio answering", lambda: self.socket.exists() and self.pactl("info") is not None)


class PipeWireServer(SoundServer):
    """A private D-Bus session bus, ``pipewire``, ``wireplumber`` and ``pipewire-pulse``; the
    null sink is loaded through the PulseAudio layer (``pactl load-module module-null-sink``),
    and the graph is clocked by PipeWire's own timer-driven driver (there is no hardware)."""

    name = "pipewire"

    @classmethod
    def available(cls) -> Availability:
        missing = _missing((("pipewire", "pipewire"), ("pipewire-pulse", "pipewire-pulse"),
                            ("wireplumber", "wireplumber"), ("dbus-daemon", "dbus"), ("pactl", "pulseaudio-utils"),
                            ("parec", "pulseaudio-utils")))
        if missing:
            return Availability(False, f"no PipeWire here: install the Debian packages {' '.join(missing)}")
        try:
            out = subprocess.run(["pipewire", "--version"], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Availability(False, f"pipewire does not run: {exc}")
        version = next((ln.split()[-1] for ln in out.stdout.splitlines() if "libpipewire" in ln), "")
        return Availability(True, f"pipewire {version}".strip())

    def _launch(self) -> None:
        d = self.dir
        run = d / "run"
        bus = run / "bus"
        self._spawn("dbus-daemon", ["dbus-daemon", "--session", f"--address=unix:path={bus}", "--nofork",
                                    "--nopidfile"], self._daemon_env())
        self._wait("the session bus", bus.exists)
        env = self._daemon_env(DBUS_SESSION_BUS_ADDRESS=f"unix:path={bus}")
        self._spawn("pipewire", ["pipewire"], env)
        self._wait("pipewire", (run / "pipewire-0").exists)
        self._spawn("wireplumber", ["wireplumber"], env)
        self.socket = run / "pulse" / "native"
        self._spawn("pipewire-pulse", ["pipewire-pulse"], env)
        self._wait("pipewire-pulse answering", lambda: self.socket.exists() and self.pactl("info") is not None)
        if self.pactl("load-module", "module-null-sink", f"sink_name={self.sink}", f"rate={self.rate_hz}",
                      "sink_properties=device.description=skull-null") is None:
            raise SoundServerError(f"pipewire-pulse would not load a null sink: {self.log_tail()}")
        # the default is the session manager's to keep: wait until wireplumber has taken it
        self._wait("the null sink becoming the default",
                   lambda: self.pactl("set-default-sink", self.sink) is not None
                   and (self.pactl("get-default-sink") or "").strip() == self.sink)


SERVERS: dict[str, type[SoundServer]] = {cls.name: cls for cls in (PulseServer, PipeWireServer)}
"""--server NAME -> the class"""
