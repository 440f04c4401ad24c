"""The README's commands work as written. Every command line of every ```sh block of README.md is
either run here as written (in a temporary HOME, with the venv's bin/ first on PATH so `skull`,
`python` and `.venv/bin/skull` resolve, in a fresh copy of the repository), or listed in LISTED
with the reason it cannot run here and the check that stands in for it. Long-running servers
(`skull host`, `skull run`) are started in the background, checked to do what the README says,
and stopped. A README command that is neither run nor listed fails the test, and so does a
listed one that the README no longer has: neither can drift from the other.

Everything slow (three demos, a replay, four servers and two skulls) runs side by side: the
demos spend their time waiting for a simulated speaker, not computing."""
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from pathlib import Path

from conftest import Watched


ROOT = Path(__file__).resolve().parents[1]
QUESTION = ROOT / "skull" / "data" / "question.wav"  # "Do you like my costume?"
SNAPSHOT = ROOT / "skull" / "data" / "snapshot.jpg"


def _venv() -> Path:
    """The repository's .venv, else the one running the tests (a worktree without its own)."""
    own = ROOT / ".venv"
    if (own / "bin" / "skull").exists():
        return own
    import sys
    return Path(sys.executable).parent.parent


# --- the README's commands -----------------------------------------------------------------------

def _strip_comment(line: str) -> str:
    """The line without its shell comment (a # outside quotes, at the start or after a blank)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_commands() -> list[str]:
    """Every command line of every ```sh block, top to bottom, without comments, each once."""
    commands: list[str] = []
    fence = None
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
            continue
        if fence == "sh":
            command = _strip_comment(line).strip()
            if command and command not in commands:
                commands.append(command)
    return commands


# Commands that cannot run here as written: why, and what test_the_readme_commands_work_as_written
# runs or checks instead ("none" where nothing can stand in).
LISTED = {
    "make test": ("it is the test suite this test belongs to", "`make -n test` shows it runs pytest"),
    "skull run --sim": ("no microphone or speaker on a CI machine",
                        "the same with `--no-audio --mic-file my-question.wav`: connects to `skull host`"),
    'skull host --bind 0.0.0.0 --port 8765 --token="$SKULL_TOKEN"': (
        "port 8765 may be taken on a shared machine", "the same on a free port: listens on every address"),
    'skull run --url ws://pc.local:8765 --token="$SKULL_TOKEN"': (
        "on the Pi: needs its GPIO, mic and speaker; pc.local names the PC",
        "the same with 127.0.0.2 for pc.local, the host's port, `--sim --no-audio --mic-file`: connects "
        "and answers a turn, saying each step as the README shows"),
    "sudo apt install -y git make": ("needs root and the network",
                                     "apt-cache policy: each is installed or has a candidate"),
    "git clone <this repository> talking-skull && cd talking-skull": (
        "the network; the placeholder names this repository", "none: the copy this test runs in stands for it"),
    "nano ~/.config/skull/skull.toml": (
        "an interactive editor", "the keys its comment names are set in the copied file: [link] url, token, "
                                 "name; [board] driver = \"sim\" (no servo here)"),
    ".venv/bin/skull calibrate": ("an interactive terminal and a servo",
                                  "the same with the values as flags: saves ~/.config/skull/calibration/default.toml"),
    "sudo mkdir -p /etc/skull && sudo cp host/examples/whisper-llama-kokoro.toml /etc/skull/host.toml": (
        "needs root", "the example loads with the host's config loader"),
    "sudoedit /etc/skull/host.toml": (
        "needs root and an editor", "the same keys (bind, token; and a free port) in ~/.config/skull/host.toml"),
    "sudo .venv/bin/python -m skull service install host": (
        "needs root and a running systemd", "the same with --print: systemd-analyze verify accepts the unit"),
    ".venv/bin/skull service install skull --user": (
        "needs a running systemd user manager",
        "the same with --no-start: the unit is written and systemd-analyze --user verify accepts it"),
    "sudo loginctl enable-linger $USER": ("needs root and a running systemd", "none"),
    "journalctl --user -u skull.service -f": ("needs a running systemd journal, and follows forever", "none"),
    "python bench/latency.py": ("a benchmark, minutes long", "--help"),
    "python bench/soak.py": ("a benchmark, minutes long", "--help"),
    "python bench/show.py": ("a benchmark, half an hour long", "--help"),
    "python bench/memory.py": ("a benchmark, minutes long", "--help"),
}

# Commands run exactly as written (by test_the_readme_commands_work_as_written).
RUN = [
    "make demo",
    ". .venv/bin/activate",
    "skull demo --question my-question.wav --image my-room.jpg --record sessions/",
    "skull host",
    "export SKULL_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(16))')",
    "mkdir -p ~/.config/skull && cp skull.example.toml ~/.config/skull/skull.toml",
    ".venv/bin/skull doctor",
    "python3 -c 'import secrets; print(secrets.token_urlsafe(24))'",
    ".venv/bin/skull host --check",
    ".venv/bin/skull host",
    ".venv/bin/skull status",
    "skull demo --record sessions/demo",
    "skull replay sessions/demo --report --plot sync.png",
    "python bench/jaw_sync.py",
]


def test_every_readme_command_is_run_or_listed():
    commands = readme_commands()
    assert commands, "no ```sh block found in README.md"
    handled = set(RUN) | set(LISTED)
    missing = [c for c in commands if c not in handled]
    assert not missing, ("README commands neither run by tests/test_readme.py nor listed in its LISTED with a "
                         f"reason: {missing}")
    gone = [c for c in handled if c not in commands]
    assert not gone, f"tests/test_readme.py handles commands the README no longer has: {gone}"
    assert not set(RUN) & set(LISTED)


def test_comments_and_quotes_are_told_apart():
    assert _strip_comment("make demo    # a simulated skull") == "make demo"
    assert _strip_comment("echo '# not a comment' \"a#b\"  # one") == "echo '# not a comment' \"a#b\""
    assert _strip_comment("# on the PC") == ""


# --- running them ----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Shell(Watched):
    """One README line in bash, in the background; its output lines collected as they come."""
    WAIT_S = 90.0

    def __init__(self, command: str, env: dict, cwd: Path, stdin: bool = False):
        self.command = command
        self.p = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, text=True, start_new_session=True,
                                  stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._watch(f"`{command}`", self.p.stdout)

    def finish(self, timeout: float = 120.0) -> "Shell":
        """Wait for it to end by itself."""
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"`{self.command}` still running after {timeout:.0f} s:\n{self.text}")
        time.sleep(0.1)
        return self

    def press(self, hold_s: float) -> None:
        """Enter presses the simulated button, Enter again releases it."""
        for pause in (hold_s, 0):
            self.p.stdin.write("\n")
            self.p.stdin.flush()
            time.sleep(pause)

    def stop(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        time.sleep(0.1)

    def ok(self) -> str:
        assert self.p.returncode == 0, f"`{self.command}` exited {self.p.returncode}:\n{self.text}"
        assert "Traceback" not in self.text, self.text
        return self.text


def _copy_of_the_repo(dest: Path, venv: Path) -> Path:
    """A fresh copy of the checkout (its files, not its state) with .venv pointing at the venv."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis", "sessions",
        "recordings"))
    (dest / ".venv").symlink_to(venv)
    return dest


def _newcomer_env(tmp: Path, name: str, work: Path, venv: Path) -> dict:
    """A user with an empty home: ~/.config is their config folder, their own runtime folder."""
    home, run = tmp / f"home-{name}", tmp / f"run-{name}"
    home.mkdir()
    run.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items()  # nothing of this session's: its config, venv, make
           if not k.startswith(("XDG_", "SKULL_", "VIRTUAL_ENV", "PYTEST_"))
           and k not in ("VENV", "EXTRAS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(run), PYTHONPATH=str(work),
               PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return env


def _set(text: str, key: str, value: str) -> str:
    """Set the first `key = ...` line of a TOML text, as an editor would."""
    new, n = re.subn(rf"^{key} = [^#\n]*?([ \t]*#|$)", lambda m: f"{key} = {value}{m.group(1)}", text, count=1,
                     flags=re.M)
    assert n == 1, f"no {key} = line in skull.example.toml"
    return new


def _make_demo(venv: Path, env: dict) -> Shell:
    """`make demo` in the repository itself (it writes nothing there once bootstrapped), on the venv
    found above. Only when that venv was bootstrapped from this pyproject.toml: otherwise bootstrap
    would reinstall the package into it from here, and the demo runs without the bootstrap step."""
    fresh = [s for s in venv.glob(".installed-*") if s.stat().st_mtime >= (ROOT / "pyproject.toml").stat().st_mtime]
    env = dict(env, VENV=str(venv))
    if any({"test", "ears", "wake"} <= set(s.name.removeprefix(".installed-").split("-")) for s in fresh):
        return Shell("make demo", env, ROOT)
    return Shell("make -o bootstrap demo", env, ROOT)


def test_the_readme_commands_work_as_written(tmp_path):
    venv = _venv()
    work = _copy_of_the_repo(tmp_path / "talking-skull", venv)
    shutil.copy(QUESTION, work / "my-question.wav")  # the newcomer's own question and room
    shutil.copy(SNAPSHOT, work / "my-room.jpg")
    alone = _newcomer_env(tmp_path, "alone", work, venv)  # "Using it": host and skull on one machine
    pc, pi = _newcomer_env(tmp_path, "pc", work, venv), _newcomer_env(tmp_path, "pi", work, venv)
    started: list[Shell] = []

    def start(command: str, env: dict, cwd: Path = work, stdin: bool = False) -> Shell:
        started.append(Shell(command, env, cwd, stdin))
        return started[-1]

    try:
        # ## The two commands, and ## Using it: the demos first, in the background
        make_demo = _make_demo(venv, alone)
        started.append(make_demo)
        demo = start("skull demo --question my-question.wav --image my-room.jpg --record sessions/", alone)
        jaw_demo = start("skull demo --record sessions/demo", pc)
        r = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert "pytest" in r.stdout, r.stdout + r.stderr

        plain = dict(alone, PATH=os.pathsep.join(d for d in alone["PATH"].split(os.pathsep)
                                                 if Path(d).resolve() != (venv / "bin").resolve()))
        r = subprocess.run(["bash", "-c", "command -v skull"], env=plain, capture_output=True, text=True)
        assert r.returncode != 0, f"skull is on PATH before activating: {r.stdout}"  # so the check below can fail
        activated = start(". .venv/bin/activate && command -v skull python", plain).finish(30).ok()
        assert activated.splitlines() == [f"{venv}/bin/skull", f"{venv}/bin/python"], activated

        port = _free_port()  # skull host's 8765 may be taken here: the user's config moves both sides
        config = Path(alone["HOME"]) / ".config" / "skull"
        config.mkdir(parents=True)
        (config / "host.toml").write_text(f"[server]\nport = {port}\n")
        (config / "skull.toml").write_text(f'[link]\nurl = "ws://127.0.0.1:{port}"\n')
        host = start("skull host", alone)
        host.wait_for(rf"listening on ws://127\.0\.0\.1:{port}")
        skull = start("skull run --sim --no-audio --mic-file my-question.wav", alone, stdin=True)
        skull.wait_for(rf"connected to ws://127\.0\.0\.1:{port} as mr-bones")
        host.wait_for(r"skull mr-bones connected from 127\.0\.0\.1:\d+")

        # the PC + Pi pair: a token exported on the PC, the host on every address, the skull pointed at it
        export = next(c for c in RUN if c.startswith("export SKULL_TOKEN="))
        r = subprocess.run(["bash", "-c", f'{export} && echo "$SKULL_TOKEN"'], env=pc, capture_output=True,
                           text=True, timeout=30)
        token = r.stdout.strip()
        assert r.returncode == 0 and re.fullmatch(r"[A-Za-z0-9_-]{22}", token), r.stdout + r.stderr
        # one token in 64 starts with "-", which `--token "$SKULL_TOKEN"` handed to the parser as an
        # option (seen in CI): the README's form must take it
        token = "-" + token[1:]
        pc["SKULL_TOKEN"] = pi["SKULL_TOKEN"] = token
        pc_port = _free_port()
        pc_host = start(f'skull host --bind 0.0.0.0 --port {pc_port} --token="$SKULL_TOKEN"', pc)
        pc_host.wait_for(rf"listening on ws://0\.0\.0\.0:{pc_port}")
        pi_skull = start(f'skull run --url ws://127.0.0.2:{pc_port} --token="$SKULL_TOKEN" --sim --no-audio '
                         f'--mic-file my-question.wav', pi, stdin=True)
        pi_skull.wait_for(rf"connected to ws://127\.0\.0\.2:{pc_port} as mr-bones")
        pc_host.wait_for(r"skull mr-bones connected from 127\.0\.0\.1:\d+")
        pi_skull.press(3.0)

        # ## Running a show, 1. the Pi (its own home), while that turn is answered
        show = _newcomer_env(tmp_path, "show", work, venv)
        for package in ("git", "make"):  # sudo apt install finds them: installed, or a candidate to install
            r = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, timeout=30)
            assert re.search(r"(Installed|Candidate): (?!\(none\))\S", r.stdout), f"apt-cache policy {package}:\n" \
                                                                               f"{r.stdout}{r.stderr}"
        start("mkdir -p ~/.config/skull && cp skull.example.toml ~/.config/skull/skull.toml", show).finish(30).ok()
        user = Path(show["HOME"]) / ".config" / "skull"
        show_port = _free_port()
        r = subprocess.run(["bash", "-c", "python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"],
                           env=show, capture_output=True, text=True, timeout=30)
        show_token = r.stdout.strip()
        assert r.returncode == 0 and re.fullmatch(r"[A-Za-z0-9_-]{32}", show_token), r.stdout + r.stderr
        text = (user / "skull.toml").read_text()  # what nano is for: the keys its comment names
        for key, value in (("url", f'"ws://127.0.0.1:{show_port}"'), ("token", f'"{show_token}"'),
                           ("name", '"yorick"'), ("driver", '"sim"')):
            text = _set(text, key, value)
        (user / "skull.toml").write_text(text)
        r = start(".venv/bin/skull calibrate --closed-us 1200 --open-us 1700 --lead-ms 60", show).finish(60).ok()
        profile = user / "calibration" / "default.toml"
        assert f"saved {profile}" in r and tomllib.loads(profile.read_text())

        # 2. the host: the example as the system config would be (it loads), the token and bind as sudoedit
        from host.config import load_host_config
        load_host_config(work / "host" / "examples" / "whisper-llama-kokoro.toml")
        (user / "host.toml").write_text(f'[server]\nbind = "0.0.0.0"\ntoken = "{show_token}"\nport = {show_port}\n')
        show_host = start(".venv/bin/skull host", show)
        show_host.wait_for(rf"listening on ws://0\.0\.0\.0:{show_port}")
        for attempt in range(3):  # its host check gives up after 3 s: a loaded CI machine may need another go
            doctor = start(".venv/bin/skull doctor", show).finish(60)
            if re.search(r"OK +host", doctor.text):
                break
        assert "Traceback" not in doctor.text
        assert re.search(rf"OK +calibration +{re.escape(str(profile))}: closed 1200 us, open 1700 us, lead 60 ms",
                         doctor.text), doctor.text
        assert re.search(r"OK +host", doctor.text), doctor.text
        problems = re.search(r"\d+ problem\(s\): (.*)", doctor.text)
        # this machine has no sound devices: those, and nothing else, may be missing
        assert problems is None or set(problems.group(1).split(", ")) <= {"microphone", "speaker"}, doctor.text
        assert doctor.p.returncode == (0 if problems is None else 1), doctor.text

        # 3. start at boot: the units, as systemd would read them
        r = start(".venv/bin/python -m skull service install host --print", show).finish(30).ok()
        units = tmp_path / "units"
        units.mkdir()
        (units / "skull-host.service").write_text(r[r.index("[Unit]"):])
        start(".venv/bin/skull service install skull --user --no-start", show).finish(30).ok()
        user_unit = Path(show["HOME"]) / ".config" / "systemd" / "user" / "skull.service"
        assert f"run --config {user / 'skull.toml'}" in user_unit.read_text()
        if shutil.which("systemd-analyze"):
            for unit, scope in ((units / "skull-host.service", []), (user_unit, ["--user"])):
                r = subprocess.run(["systemd-analyze", *scope, "verify", str(unit)], capture_output=True, text=True,
                                   timeout=60, env=show)
                assert r.returncode == 0, r.stderr
                assert not [ln for ln in r.stderr.splitlines() if unit.name in ln], r.stderr

        # 4. during the show: the Pi's skull (what the unit runs) is up; both checks say well
        show_skull = start(".venv/bin/skull run --no-audio --mic-file my-question.wav", show, stdin=True)
        show_skull.wait_for(rf"connected to ws://127\.0\.0\.1:{show_port} as yorick")
        assert f"calibration: {profile}: closed 1200 us, open 1700 us, lead 60 ms" in show_skull.text, show_skull.text
        deadline = time.monotonic() + 30
        while True:
            status = start(".venv/bin/skull status", show).finish(30)
            if status.p.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        status.ok()
        check = start(".venv/bin/skull host --check", show).finish(60).ok()
        assert "all backends up" in check and "yorick" in check, check

        # the PC + Pi turn, said step by step as the README's text block shows
        said = pi_skull.wait_for(r'turn 1: said: "(.+)" \(first audio (\d+) ms after the release\)')
        for step in ("turn 1: listening", "turn 1: thinking", 'turn 1: heard: "Do you like my costume?"',
                     "turn 1: speaking"):
            assert step in pi_skull.text, pi_skull.text
        pc_host.wait_for(rf"mr-bones: turn 1 .*first_audio={said.group(2)} heard='Do you like my costume\?'")

        # ## Jaw sync and ## Benchmarks
        start("python bench/jaw_sync.py", alone).finish(60).ok()
        assert re.search(r"ours_lag_ms=\S+ ours_r=\S+", started[-1].text), started[-1].text
        for bench in ("latency", "soak", "show", "memory"):
            start(f"python bench/{bench}.py --help", alone).finish(60).ok()
        jaw_demo.finish(120).ok()
        assert (work / "sessions" / "demo" / "turn-001" / "jaw.csv").exists()
        replay = start("skull replay sessions/demo --report --plot sync.png", pc).finish(120).ok()
        assert re.search(r"effective lag +[-+]\d+ ms", replay) and (work / "sync.png").stat().st_size > 0, replay

        demo.finish(120).ok()
        turn = work / "sessions" / "turn-001"
        assert {"question.wav", "snapshot.jpg", "reply.wav", "jaw.csv", "commands.csv", "turn.json"} <= \
            {p.name for p in turn.iterdir()}, sorted(turn.iterdir())
        assert "Do you like my costume?" in demo.text
        made = make_demo.finish(120).ok()
        assert "heard" in made and "Do you like my costume?" in made, made
    finally:
        for shell in reversed(started):
            shell.stop()
    for shell in started:
        assert "Traceback" not in shell.text, f"`{shell.command}`:\n{shell.text}"


def test_skull_run_names_the_profile_in_use(tmp_path):
    """The README: `skull run` names the servo profile in use after its config line."""
    venv = _venv()
    env = _newcomer_env(tmp_path, "run", ROOT, venv)
    config = tmp_path / "skull.toml"
    unreachable = f'[link]\nurl = "ws://127.0.0.1:{_free_port()}"\n'
    from skull.config import load_calibration
    bundled = ROOT / "calibration" / "default.toml"
    b = load_calibration(bundled)
    for text, line in (
            (unreachable, f"calibration: {bundled} (the bundled default; skull calibrate makes this jaw's own): "
                          f"closed {b.closed_us:.0f} us, open {b.open_us:.0f} us, lead {b.lead_ms:.0f} ms"),
            (unreachable + "[calibration]\nclosed_us = 1250\nopen_us = 1750\nlead_ms = 50\n",
             f"calibration: the [calibration] table of {config}: closed 1250 us, open 1750 us, lead 50 ms")):
        config.write_text(text)
        skull = Shell(f"exec skull run --sim --no-audio --mic-file {QUESTION} --config {config}", env, tmp_path)
        try:
            skull.wait_for(r"connecting to ws://", timeout=60)
        finally:
            skull.stop()
        lines = skull.text.splitlines()
        assert line in lines and lines.index(line) == lines.index(f"config: {config} (--config)") + 1, skull.text


def test_the_bootstrap_refuses_a_python_older_than_3_11_and_says_which_to_install(tmp_path):
    """A machine whose python3 is 3.10 (Ubuntu 22.04) is told so before anything is installed or
    made: the project reads its configuration with tomllib, which 3.10 does not have."""
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/bash\n"
                   "if [ \"$1\" = -c ]; then case \"$2\" in *version_info*) exit 1;; *python_version*) echo 3.10.12;"
                   " exit 0;; esac; fi\n"
                   f"exec {_venv() / 'bin' / 'python'} \"$@\"\n")
    old.chmod(0o755)
    venv = tmp_path / "venv"
    run = subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap.sh")], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": str(old), "VENV": str(venv)}, timeout=120)
    assert run.returncode == 1
    assert "needs Python 3.11 or newer" in run.stderr and "3.10.12" in run.stderr and "PYTHON=python3.11" in run.stderr
    assert not venv.exists()
    # a venv made earlier with that Python is named, with what to do, not reused
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(old)
    again = subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap.sh")], capture_output=True, text=True,
                           env={**os.environ, "PYTHON": str(_venv() / "bin" / "python"), "VENV": str(venv)},
                           timeout=120)
    assert again.returncode == 1 and "made with Python 3.10.12" in again.stderr and f"rm -rf {venv}" in again.stderr
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["requires-python"] == ">=3.11"
