"""A private PulseAudio server with one null sink, for measuring what a speaker really plays.

A null sink is a real-time clocked sound device with no hardware behind it; its monitor source
(``skull_null.monitor``) carries exactly what it rendered, when it rendered it. So a machine
without a sound card (a CI runner) can still play through the real PulseAudio path a skull
uses (PortAudio -> ALSA's ``pulse`` plugin -> PulseAudio) and record the result
(:class:`skull.audio.monitor.SinkMonitor`).

    with PulseServer() as server:     # pulseaudio -n -F <script> in a temp folder, as a child
        server.export()               # PULSE_SERVER=unix:... for this process and its children
        import sounddevice            # only now: PortAudio reads ALSA's config when it starts
        ...

The daemon gets its own HOME, XDG_RUNTIME_DIR and XDG_CONFIG_HOME in a temp folder, so it
never touches the user's sound server, cookie or settings, and ``stop()`` leaves nothing
behind. It runs as root too: PulseAudio then only warns that it is not meant to (``--system``
would be the multi-user mode, which needs a ``pulse`` user and refuses module loading).

Needs the Debian packages pulseaudio, pulseaudio-utils (pactl, parec) and libasound2-plugins
(ALSA's pulse plugin); ``scripts/bootstrap.sh`` installs them.
"""
from __future__ import annotations

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


class PulseServer:
    """``pulseaudio`` as a child process with ``sink`` (a null sink at ``rate_hz``) as the default.

    ``start()`` waits until ``pactl`` gets an answer; ``env`` is what a client needs to reach
    it; ``export()`` puts that into ``os.environ`` (call it before sounddevice is imported);
    ``stop()`` kills the daemon, puts the environment back and removes the temp folder. It is
    idempotent, and the server is a context manager.
    """

    name = "pulseaudio"

    def __init__(self, *, sink: str = "skull_null", rate_hz: int = 48000, start_timeout_s: float = 10.0):
        self.sink, self.rate_hz, self.start_timeout_s = sink, rate_hz, start_timeout_s
        self.dir: Path | None = None
        self.socket: Path | None = None
        self.version = ""
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._saved_env: dict[str, str | None] | None = None

    @staticmethod
    def available() -> Availability:
        """Can a private server run here? ``why`` names the missing package when not."""
        missing = [pkg for tool, pkg in (("pulseaudio", "pulseaudio"), ("pactl", "pulseaudio-utils"),
                                         ("parec", "pulseaudio-utils")) if shutil.which(tool) is None]
        if _alsa_pulse_plugin() is None:
            missing.append("libasound2-plugins")
        if missing:
            pkgs = " ".join(dict.fromkeys(missing))
            return Availability(False, f"no PulseAudio here: install the Debian packages {pkgs} "
                                       f"(scripts/bootstrap.sh does)")
        try:
            out = subprocess.run(["pulseaudio", "--version"], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Availability(False, f"pulseaudio does not run: {exc}")
        return Availability(True, out.stdout.strip() or "pulseaudio")

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

    def start(self) -> "PulseServer":
        ok = self.available()
        if not ok:
            raise SoundServerError(ok.why)
        self.version = ok.why
        self.dir = Path(tempfile.mkdtemp(prefix="skull-pulse-"))
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        d = self.dir
        for sub in ("run", "home", "config"):
            (d / sub).mkdir(mode=0o700)
        self.socket = d / "run" / "native"
        script = d / "default.pa"
        # auth-anonymous: clients need no cookie (the socket is in a private 0700 folder)
        script.write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}\n"
            f"load-module module-null-sink sink_name={self.sink} rate={self.rate_hz} "
            f"sink_properties=device.description=skull-null\n"
            f"set-default-sink {self.sink}\n"
            f"set-default-source {self.sink}.monitor\n")
        # never let a client start a daemon of its own behind our back
        (d / "client.conf").write_text(f"autospawn = no\ndefault-server = {self.server}\n")
        env = {**os.environ, "HOME": str(d / "home"), "XDG_RUNTIME_DIR": str(d / "run"),
               "XDG_CONFIG_HOME": str(d / "config")}
        for key in ("PULSE_SERVER", "PULSE_CLIENTCONFIG", "PULSE_SINK", "DBUS_SESSION_BUS_ADDRESS"):
            env.pop(key, None)
        self._log = open(d / "pulseaudio.log", "w+")
        cmd = ["pulseaudio", "-n", "-F", str(script), "--exit-idle-time=-1", "--daemonize=no",
               "--use-pid-file=no", "--system=no", "--log-target=stderr"]
        self._proc = subprocess.Popen(cmd, cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SoundServerError(f"pulseaudio exited with status {self._proc.returncode} while starting: "
                                       f"{self.log_tail()}")
            if self.socket.exists() and self._pactl("info") is not None:
                log.info("private %s on %s, default sink %s", self.version, self.server, self.sink)
                return
            time.sleep(0.05)
        raise SoundServerError(f"pulseaudio did not answer within {self.start_timeout_s:.0f} s: {self.log_tail()}")

    def _pactl(self, *args: str) -> str | None:
        env = {**os.environ, **self.env}
        try:
            out = subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=3, env=env)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    def sink_latency(self) -> tuple[float, float] | None:
        """(latency, configured latency) of the sink in milliseconds, as ``pactl`` reports them."""
        out = self._pactl("list", "sinks")
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
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        text = [ln.strip() for ln in self._log.read().splitlines() if ln.strip()]
        return " | ".join(text[-lines:]) or "(nothing logged)"

    def export(self) -> None:
        """Put :attr:`env` into ``os.environ`` (undone by ``stop()``): sounddevice imported after
        this, and every process started after it, plays to this server."""
        env = self.env
        if self._saved_env is None:
            self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)

    def stop(self) -> None:
        """Kill the daemon, restore the environment, remove the temp folder. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
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
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> "PulseServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
