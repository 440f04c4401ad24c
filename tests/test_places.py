"""Where things are found, as a newcomer meets it: a copied skull.example.toml works from any
folder, the doctor names the servo profile in use, calibrate never writes the bundled profile,
and every hint names a flag that exists."""
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from skull.cli import build_parser
from skull.config import Calibration, SkullConfig, load_calibration, load_skull_config
from skull.core.data import bundled
from skull.core.places import bundled_profiles, user_config_dir
from skull.devices import is_raspberry_pi

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "calibration" / "default.toml"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _skull(*args, cwd, env=None, timeout=60, stdin=subprocess.DEVNULL):
    return subprocess.run([sys.executable, "-m", "skull", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env, stdin=stdin)


@pytest.fixture
def show(tmp_path, monkeypatch):
    """skull.example.toml and calibration/ copied to a folder of their own (its profile made
    recognisable), a user config folder of our own, and a third folder to run from."""
    folder = tmp_path / "show"
    folder.mkdir()
    shutil.copy(ROOT / "skull.example.toml", folder / "skull.toml")
    shutil.copytree(ROOT / "calibration", folder / "calibration")
    (folder / "calibration" / "default.toml").write_text("[servo]\nclosed_us = 1250\nopen_us = 1750\n")
    # the host check answers at once: nothing listens on this port
    text = (folder / "skull.toml").read_text().replace('url = "ws://127.0.0.1:8765"', 'url = "ws://127.0.0.1:9"')
    (folder / "skull.toml").write_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SKULL_CONFIG", raising=False)
    return folder, elsewhere


def _line(out: str, what: str) -> str:
    found = [ln for ln in out.splitlines() if re.match(rf"(OK|WARN|FAIL)\s+{re.escape(what)}\s", ln)]
    assert found, out
    return found[0]


# --- a copied example, from another folder --------------------------------------------------------

def test_doctor_sim_with_a_copied_example_names_its_profile(show):
    folder, elsewhere = show
    r = _skull("doctor", "--sim", "--config", str(folder / "skull.toml"), cwd=elsewhere, timeout=120)
    assert r.returncode in (0, 1), r.stderr  # the machine's audio and the host may fail; nothing else
    assert "Traceback" not in r.stderr + r.stdout and "cannot read" not in r.stderr
    calibration = _line(r.stdout, "calibration")
    assert calibration.startswith("OK") and str(folder / "calibration" / "default.toml") in calibration
    assert "closed 1250 us, open 1750 us" in calibration
    assert _line(r.stdout, "GPIO").startswith("OK")  # simulated: no GPIO needed, none complained about
    assert "PinFactoryFallback" not in r.stderr
    if "no audio input device" in r.stdout:  # the hint runs the Python that has sounddevice
        assert f"'{sys.executable} -m sounddevice'" in r.stdout


def test_the_example_alone_falls_back_to_the_bundled_profile_and_says_so(show):
    folder, elsewhere = show
    shutil.rmtree(folder / "calibration")
    cfg = load_skull_config(folder / "skull.toml")
    assert cfg.jaw.calibration == str(BUNDLED) and cfg.calibration == load_calibration(BUNDLED)
    r = _skull("doctor", "--config", str(folder / "skull.toml"), cwd=elsewhere, timeout=120)
    assert "Traceback" not in r.stderr + r.stdout
    line = _line(r.stdout, "calibration")
    assert f"{BUNDLED} (the bundled default, not this jaw's)" in line and "run skull calibrate" in line


def test_run_sim_with_a_copied_example_starts_from_another_folder(show):
    folder, elsewhere = show
    proc = subprocess.Popen([sys.executable, "-m", "skull", "run", "--sim", "--config", str(folder / "skull.toml"),
                             "--no-audio", "--mic-file", str(bundled("question.wav"))], cwd=elsewhere,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        line = proc.stderr.readline()  # printed once the skull's devices are open
        while line and not line.startswith("config:") and time.monotonic() - started < 60:
            line = proc.stderr.readline()
        assert line.strip() == f"config: {folder / 'skull.toml'} (--config)"
        time.sleep(0.5)  # it runs (retrying the absent host), it did not stop
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in err


def test_a_profile_is_found_beside_the_config_then_in_the_user_folder_then_bundled(show):
    folder, _ = show
    user = user_config_dir() / "calibration"
    user.mkdir(parents=True)
    (user / "show.toml").write_text("[servo]\nclosed_us = 1100\nopen_us = 1900\n")
    (user / "default.toml").write_text("[servo]\nclosed_us = 1400\nopen_us = 1800\n")
    config = folder / "skull.toml"
    assert load_skull_config(config).jaw.calibration == str(folder / "calibration" / "default.toml")
    assert load_skull_config(config, calibration="show").jaw.calibration == str(user / "show.toml")
    (folder / "calibration" / "default.toml").unlink()
    assert load_skull_config(config).calibration.closed_us == 1400  # the user's, before the bundled one
    assert load_skull_config(None).jaw.calibration == str(user / "default.toml")  # no config file at all
    (user / "default.toml").unlink()
    assert load_skull_config(None).jaw.calibration == str(BUNDLED)
    assert load_calibration(BUNDLED) == Calibration()  # the built-in values, when even that is gone
    with pytest.raises(Exception, match=r"calibration profile calibration/gone.toml \(--calibration\) is not in any "
                                        r"of .*; make it with skull calibrate --name gone --config "):
        load_skull_config(config, calibration="gone")


def test_doctor_says_where_a_table_or_the_built_in_values_come_from(show):
    from skull.doctor import _calibration
    folder, _ = show
    own = folder / "own.toml"
    own.write_text("[calibration]\nclosed_us = 1400\nopen_us = 1600\n")
    (line,) = _calibration(load_skull_config(own), own)
    assert (line.status, line.detail) == ("OK", f"the [calibration] table of {own}: closed 1400 us, open 1600 us, "
                                                f"lead 35 ms")
    (line,) = _calibration(SkullConfig(), None)
    assert line.status == "WARN" and line.detail.startswith("built-in defaults (no profile file found)")


# --- calibrate writes outside the bundled profile ---------------------------------------------------

def test_calibrate_never_writes_the_bundled_profile(show):
    folder, elsewhere = show
    before = _digest(BUNDLED)
    values = ["--closed-us", "1200", "--open-us", "1800", "--lead-ms", "40"]
    r = _skull("calibrate", *values, cwd=ROOT)  # from the repo, no config: the user's folder
    assert r.returncode == 0, r.stderr
    assert load_calibration(user_config_dir() / "calibration" / "default.toml").closed_us == 1200
    r = _skull("calibrate", *values, "--config", str(folder / "skull.toml"), cwd=elsewhere)
    assert r.returncode == 0 and load_calibration(folder / "calibration" / "default.toml").closed_us == 1200
    for refused in (["--config", str(ROOT / "skull.example.toml")], ["--dir", str(bundled_profiles())],
                    ["--name", str(BUNDLED)]):
        r = _skull("calibrate", *values, *refused, cwd=elsewhere)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert err[-1] == (f"skull calibrate: error: {BUNDLED} is the bundled default profile, which is read-only; "
                           f"save this jaw's profile beside your own skull.toml (cp skull.example.toml "
                           f"{user_config_dir() / 'skull.toml'}, then skull calibrate saves in "
                           f"{user_config_dir() / 'calibration'}/), or give --dir DIR")
    assert _digest(BUNDLED) == before
    assert sorted(p.name for p in bundled_profiles().iterdir()) == ["default.toml"]


class FakeTime:
    """time for the simulated servo: pause() moves the clock on."""

    def __init__(self):
        self.now = 100.0

    def clock(self):
        return self.now

    def pause(self, s):
        self.now += s


def _calibrate(tmp_path, lines, **config):
    from skull.calibrate import interactive, open_sim_jaw

    class Args:
        name, dir = "sim", str(tmp_path)
    t = FakeTime()
    jaws = []

    def open_jaw(cal):
        jaws.append(open_sim_jaw(cal, clock=t.clock))
        return jaws[-1]
    with open(tmp_path / "out.txt", "w") as out:
        rc = interactive(Args, Console(file=out, width=120), SkullConfig(), open_jaw, lines=iter(lines),
                         pause=t.pause, sim=True)
    return rc, jaws[0].jaw, (tmp_path / "out.txt").read_text()


def test_calibrating_the_simulated_jaw_shows_it_and_times_it_without_asking(tmp_path):
    rc, jaw, out = _calibrate(tmp_path, ["1300", "c", "1700", "o", "t", "w", "q"])
    assert rc == 0
    assert "[y/n]" not in out  # nothing to look at, so nothing asked
    # 400 us is 36 degrees of a hobby servo at 0.10 s per 60: 60 ms, plus up to a 20 ms frame
    assert re.search(r"100 ms: \|█{24}\| 100% open all the way", out)
    assert re.search(r" 50 ms: \|█*·+\| \d+% open not all the way", out)
    cal = load_calibration(tmp_path / "sim.toml")
    assert (cal.closed_us, cal.open_us, cal.travel_ms) == (1300, 1700, 70)
    assert "simulated jaw  |████████████████████████| 100% open" in out  # at the open mark
    assert jaw.log[-1][2] is None  # left detached


def test_w_saves_and_goes_on_q_warns_once_about_unsaved_changes(tmp_path):
    rc, _, out = _calibrate(tmp_path, ["1200", "c", "1800", "o", "w", "1250", "c", "q", "q"])
    assert rc == 0
    assert "saved " + str(tmp_path / "sim.toml") + "; go on jogging, or q to quit" in out
    assert "unsaved changes: w saves them (wq saves and quits); q again quits without saving" in out
    assert out.rstrip().endswith("quit without saving")
    assert load_calibration(tmp_path / "sim.toml").closed_us == 1200  # the change after w was not kept
    rc, _, out = _calibrate(tmp_path, ["1260", "c", "wq", "never read"])
    assert rc == 0 and load_calibration(tmp_path / "sim.toml").closed_us == 1260
    assert "unknown command" not in out


# --- hints name real flags --------------------------------------------------------------------------

def _flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))


def _accepts(command: str, flag: str) -> bool:
    sub = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == command)[1]
    return flag in sub._option_string_actions


@pytest.mark.skipif(is_raspberry_pi(), reason="a Raspberry Pi has GPIO")
@pytest.mark.parametrize("command", ["run", "calibrate", "doctor"])
def test_no_gpio_is_one_line_naming_a_flag_the_command_has(show, command):
    folder, elsewhere = show
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="")
    env.pop("GPIOZERO_PIN_FACTORY")
    r = _skull(command, "--config", str(folder / "skull.toml"), cwd=elsewhere, env=env, timeout=120)
    assert "Traceback" not in r.stderr and "PinFactoryFallback" not in r.stderr and "warnings.warn" not in r.stderr
    if command == "doctor":
        hint = _line(r.stdout, "GPIO")
        assert hint.startswith("FAIL") and r.returncode == 1
    else:
        assert r.returncode == 2
        hint = r.stderr.strip().splitlines()[-1]
        assert hint.startswith(f"skull {command}: error: no GPIO here: this machine is not a Raspberry Pi")
    assert "--sim" in _flags(hint)
    for flag in _flags(hint):
        assert _accepts(command, flag), f"skull {command} has no {flag}, which its hint names"


def test_calibrate_takes_the_board_by_skull_toml_s_name_and_the_old_flag_still_works(show):
    folder, elsewhere = show
    assert _accepts("calibrate", "--board") and "--jaw" not in build_parser().format_help()
    r = _skull("calibrate", "--jaw", "sim", "--name", "old", cwd=elsewhere, stdin=subprocess.DEVNULL)
    assert "skull calibrate: --jaw is now --board (skull.toml's [board] driver): use --board sim" in r.stderr
    assert "simulated board" in r.stdout and "Traceback" not in r.stderr
    r = _skull("calibrate", "--sim", "--board", "gpio", cwd=elsewhere)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == "skull calibrate: error: --sim and --board gpio disagree: give one of them"


def test_the_doctor_says_what_a_serial_port_is():
    from serial.tools.list_ports_linux import SysFS

    from skull.doctor import _port_kind
    uart = SysFS("/dev/ttyS0")
    assert _port_kind(uart, "/dev/ttyS0") == "built-in UART of this computer"
    usb = SysFS("/dev/ttyACM0")
    usb.vid, usb.pid, usb.description = 0x2341, 0x0043, "Arduino Uno"
    assert _port_kind(usb, "/dev/ttyACM0") == "USB serial device (Arduino Uno)"


def test_for_a_serial_board_a_port_where_no_board_answers_is_not_ok():
    import dataclasses

    from skull.doctor import _serial
    cfg = SkullConfig()
    serial_board = dataclasses.replace(cfg, board=dataclasses.replace(cfg.board, driver="serial"))
    findings = _serial(serial_board)  # this machine's real ports (usually none answers as a board)
    assert not [f for f in findings if f.status == "OK" and "no SKULLJAW or Firmata board answers" in f.detail]
    if not any(f.status == "OK" for f in findings):
        assert findings[-1].status == "FAIL"  # "serial ports: none found", or "board: no port answers"
    for f in _serial(cfg):  # a gpio skull does not need them: each says what it is, and that it is not needed
        assert f.status == "OK"
        assert "not needed: [board] driver = 'gpio'" in f.detail or "use [board] driver" in f.detail
