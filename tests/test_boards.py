"""The jaw drivers: SKULLJAW firmware (its simulator on a pseudo-terminal, through pyserial),
stock Firmata (a responder on a pseudo-terminal, through the real pyfirmata2), gpiozero's
MockFactory and the simulated jaw; property tests that no driver ever leaves the calibrated
range and that every close leaves the jaw shut and detached; and `skull run` end to end on
each."""
from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
from pathlib import Path

import pytest
import serial
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import skull_config, start_host, wait_for
from firmata_responder import FirmataResponder
from skull.agent import Agent
from skull.audio.player import ClockPlayer
from skull.boards import SkulljawBoard
from skull.config import BoardConfig, Calibration
from skull.core.data import bundled
from skull.core.errors import DeviceError
from skull.jaw.gpio import GpioJaw
from skull.jaw.sim import SimJaw
from skull.machine import State
from skull.runtime import build_body

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "firmware" / "build" / "skulljaw-sim"
CAL = Calibration(closed_us=1100.0, open_us=1800.0, lead_ms=60.0)


class FirmwareSim:
    """firmware/build/skulljaw-sim: the firmware core on a pty; driven on stdin."""

    def __init__(self):
        if not SIM.exists():
            subprocess.run(["make", "-s", "firmware-test"], cwd=ROOT, check=True)
        self.proc = subprocess.Popen([str(SIM)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.path = self.proc.stdout.readline().strip()
        assert self.path.startswith("/dev/"), self.path

    def control(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def servo(self) -> dict:
        return dict(kv.split("=") for kv in self.control("P").split()[1:])

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=5)


@pytest.fixture
def fwsim():
    s = FirmwareSim()
    yield s
    s.close()


@pytest.fixture
def firmata(monkeypatch):
    import pyfirmata2.pyfirmata2 as pf
    monkeypatch.setattr(pf, "BOARD_SETUP_WAIT_TIME", 0.2)  # no Arduino auto-reset to wait for on a pty
    r = FirmataResponder(button_pin=2)
    yield r
    r.close()


# --- the firmware, straight through pyserial --------------------------------------------------

def test_firmware_simulator_contract(fwsim):
    port = serial.Serial(fwsim.path, 115200, timeout=1)

    def say(line):
        port.write((line + "\n").encode())
        return port.readline().decode().strip()
    assert say("?") == "SKULLJAW 1.0.0"
    assert say("L 1100 1800") == "OK"
    assert say("J 1000") == "OK"
    assert say("J 2000").startswith("E ")
    assert say("J 1.5").startswith("E ") and say("Q").startswith("E ")
    servo = fwsim.servo()
    assert servo["us"] == "1800" and int(servo["max"]) <= 1800 and servo["attached"] == "1"
    assert say("W 300") == "OK"
    t0 = time.monotonic()
    assert port.readline().decode().strip() == "X watchdog"
    time.sleep(max(0.0, t0 + 0.320 - time.monotonic()))  # the watchdog time plus one servo frame
    status = say("S")
    assert "pos=0 " in status and "attached=0" in status and "us=1100" in status, status
    port.close()


def test_serial_driver_handshake_jaw_button_and_close(fwsim):
    board = SkulljawBoard(fwsim.path, CAL, watchdog_ms=500)
    assert board.version == "SKULLJAW 1.0.0"
    pressed = []
    board.panel.button.when_pressed = lambda: pressed.append("down")
    board.panel.button.when_released = lambda: pressed.append("up")
    board.jaw.move(1.0)
    board.jaw.move(7.0)  # clamped
    board.jaw.move(float("nan"))  # closes
    board.jaw.move(0.5)
    board.panel.set_led("on")
    time.sleep(0.1)
    servo = fwsim.servo()
    assert servo["us"] == "1450" and servo["max"] == "1800" and servo["led"] == "1"
    fwsim.control("B 1")
    time.sleep(0.1)
    fwsim.control("B 0")
    time.sleep(0.1)
    assert pressed == ["down", "up"]
    time.sleep(0.7)  # longer than the watchdog: the keep-alive keeps the LED and the jaw as they are
    assert fwsim.servo()["attached"] == "1" and fwsim.servo()["led"] == "1"
    board.jaw.close(settle_s=0.05)
    servo = fwsim.servo()
    assert servo["attached"] == "0" and servo["us"] == "1100" and servo["led"] == "0"
    assert board.closed


def test_serial_driver_names_a_wrong_port_and_a_silent_one(tmp_path):
    with pytest.raises(DeviceError, match="cannot open serial port /dev/ttyNOPE.*dialout"):
        SkulljawBoard("/dev/ttyNOPE", CAL)
    import os
    import tty
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        with pytest.raises(DeviceError, match="no answer from .* to '\\?'"):
            SkulljawBoard(os.ttyname(slave), CAL, timeout_s=0.3)
    finally:
        os.close(master)
        os.close(slave)


def test_serial_driver_refuses_limits_the_firmware_refuses(fwsim):
    with pytest.raises(DeviceError, match="the board refused 'L 1100 1120'"):
        SkulljawBoard(fwsim.path, Calibration(closed_us=1100.0, open_us=1120.0))


# --- Firmata ------------------------------------------------------------------------------

def test_firmata_driver_servo_button_led_and_close(firmata):
    from skull.firmata import FirmataBoard
    board = FirmataBoard(firmata.path, CAL, BoardConfig(driver="firmata"))
    events = []
    board.panel.button.when_pressed = lambda: events.append("down")
    board.panel.button.when_released = lambda: events.append("up")
    board.jaw.move(1.0)
    board.jaw.move(0.0)
    board.panel.set_led("on")
    firmata.press(True)
    time.sleep(0.2)
    firmata.press(False)
    time.sleep(0.2)
    assert events == ["down", "up"]
    assert firmata.servo_range[9] == (1100, 1800)
    assert [us for _, us in firmata.pulses] == [1800.0, 1100.0]
    assert firmata.pin_value(13) == 1
    board.jaw.close(settle_s=0.05)
    time.sleep(0.1)
    assert not firmata.attached(9) and firmata.pin_value(13) == 0


def test_firmata_driver_without_firmata_says_so():
    import os
    import tty
    import pyfirmata2.pyfirmata2 as pf
    from skull.firmata import FirmataBoard
    master, slave = os.openpty()
    tty.setraw(slave)
    old, pf.BOARD_SETUP_WAIT_TIME = pf.BOARD_SETUP_WAIT_TIME, 0.1
    try:
        with pytest.raises(DeviceError, match="no Firmata answered.*StandardFirmata"):
            FirmataBoard(os.ttyname(slave), CAL, BoardConfig(driver="firmata"), probe_s=0.3)
    finally:
        pf.BOARD_SETUP_WAIT_TIME = old
        os.close(master)
        os.close(slave)


# --- every driver: never outside the limits, always shut and detached at the end -----------

openings = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-0.5, 1.5),
                     st.integers(-10, 10))
script = st.lists(st.tuples(openings, st.sampled_from([0.0, 0.0, 0.001, 0.01]), st.booleans()), max_size=40)
calibrations = st.tuples(st.integers(500, 2500), st.integers(500, 2500)).filter(lambda c: abs(c[0] - c[1]) >= 50)


def _play(jaw, steps):
    for opening, pause, detach in steps:
        jaw.move(opening)
        if detach:
            jaw.detach()
        if pause:
            time.sleep(pause)


def _in_range(log, cal):
    lo, hi = sorted((cal.closed_us, cal.open_us))
    return all(us is None or lo <= us <= hi for _, _, us in log)


@settings(max_examples=60, deadline=None)
@given(steps=script, cal=calibrations)
def test_property_gpio_jaw(steps, cal):
    from gpiozero.pins.mock import MockFactory, MockPWMPin
    c = Calibration(closed_us=float(cal[0]), open_us=float(cal[1]))
    jaw = GpioJaw(18, c, pin_factory=MockFactory(pin_class=MockPWMPin))
    _play(jaw, steps)
    assert _in_range(jaw.log, c)
    jaw.close(settle_s=0.0)
    assert jaw.log[-1][2] is None and jaw.log[-2][1] == 0.0 and jaw.log[-2][2] == c.closed_us
    assert jaw.pulse_width_us is None


@settings(max_examples=60, deadline=None)
@given(steps=script, cal=calibrations)
def test_property_sim_jaw(steps, cal):
    c = Calibration(closed_us=float(cal[0]), open_us=float(cal[1]))
    jaw = SimJaw(c)
    _play(jaw, steps)
    assert _in_range(jaw.log, c)
    assert all(0.0 <= x <= 1.0 for x in jaw.physical([e[0] for e in jaw.log]))
    jaw.close()
    assert jaw.log[-1][2] is None and jaw.log[-2][2] == c.closed_us and not jaw.attached


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=script, cal=calibrations)
def test_property_serial_jaw(fwsim, steps, cal):
    c = Calibration(closed_us=float(cal[0]), open_us=float(cal[1]))
    board = SkulljawBoard(fwsim.path, c)
    fwsim.control("P")
    _play(board.jaw, steps)
    assert _in_range(board.jaw.log, c)
    board.jaw.close(settle_s=0.02)
    servo = fwsim.servo()
    lo, hi = sorted(cal)
    assert servo["attached"] == "0" and servo["led"] == "0"
    assert int(servo["us"]) == cal[0] or not board.jaw.log  # last pulse: closed
    # the firmware's own record of every pulse it ever produced since these limits were set
    assert not board.jaw.log or lo <= int(servo["us"]) <= hi


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=script, cal=calibrations)
def test_property_firmata_jaw(firmata, steps, cal):
    from skull.firmata import FirmataBoard
    c = Calibration(closed_us=float(cal[0]), open_us=float(cal[1]))
    firmata.pulses.clear()
    board = FirmataBoard(firmata.path, c, BoardConfig(driver="firmata"), probe_s=1.0)
    _play(board.jaw, steps)
    board.jaw.close(settle_s=0.02)
    time.sleep(0.05)
    lo, hi = sorted(cal)
    assert all(lo - 6 <= us <= hi + 6 for _, us in firmata.pulses)  # one degree of Firmata's resolution
    if firmata.pulses:
        assert abs(firmata.pulses[-1][1] - cal[0]) <= 6
    assert not firmata.attached(9)


# --- skull run end to end with each driver ----------------------------------------------------

def _run_turn(host_config, backends, cfg, press, release, led_on, servo_moved, sim=False):
    """Button down, the question plays as the mic, button up, the answer plays. Each callable
    gets the skull's body."""
    async def go():
        host = await start_host(host_config, backends)
        c = dataclasses.replace(cfg, link=skull_config(host.port).link)
        body = build_body(c, sim=sim, mic_file=bundled("question.wav"), image=bundled("snapshot.jpg"),
                          audio=False, mic_speed=3.0)
        body.player = ClockPlayer(speed=3.0)
        agent = Agent(c, body)
        task = asyncio.create_task(agent.run())
        lit = []
        try:
            await wait_for(lambda: agent.state is State.IDLE, 15)
            spoken = asyncio.Event()
            loop = asyncio.get_running_loop()
            body.mic.on_finished = lambda: loop.call_soon_threadsafe(spoken.set)
            agent.turn_ended.clear()
            await asyncio.to_thread(press, body)
            await asyncio.wait_for(spoken.wait(), 20)
            lit.append(await asyncio.to_thread(led_on, body))
            await asyncio.to_thread(release, body)
            await asyncio.wait_for(agent.turn_ended.wait(), 60)
            moved = await asyncio.to_thread(servo_moved, body)
            rec = agent.finished[-1]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()
        return rec, lit, moved, body
    rec, lit, moved, body = asyncio.run(go())
    assert rec.outcome == "answered" and "costume" in rec.transcript and rec.segments
    assert lit == [True]  # the LED was on while listening
    assert moved  # the jaw opened with the answer
    return body


def test_run_with_skulljaw_firmware(fwsim, host_config, backends):
    cfg = dataclasses.replace(skull_config(0), board=BoardConfig(driver="serial", port=fwsim.path), calibration=CAL)
    _run_turn(host_config, backends, cfg, lambda b: fwsim.control("B 1"), lambda b: fwsim.control("B 0"),
              lambda b: fwsim.servo()["led"] == "1", lambda b: int(fwsim.servo()["max"]) > 1200)
    servo = fwsim.servo()
    assert servo["attached"] == "0" and servo["led"] == "0" and servo["us"] == "1100"


def test_run_with_firmata(firmata, host_config, backends):
    cfg = dataclasses.replace(skull_config(0), board=BoardConfig(driver="firmata", port=firmata.path),
                              calibration=CAL)
    _run_turn(host_config, backends, cfg, lambda b: firmata.press(True), lambda b: firmata.press(False),
              lambda b: firmata.pin_value(13) == 1, lambda b: max(us for _, us in firmata.pulses) > 1200)
    assert not firmata.attached(9) and firmata.pin_value(13) == 0


@pytest.mark.parametrize("driver", ["gpio", "sim"])
def test_run_with_mock_factory(driver, host_config, backends):
    """gpio: the Pi driver on gpiozero's MockFactory (what `skull run --sim` uses); sim: MockFactory
    button and LED with the simulated jaw."""
    cfg = dataclasses.replace(skull_config(0), board=BoardConfig(driver=driver), calibration=CAL)
    body = _run_turn(host_config, backends, cfg, lambda b: b.panel.button.pin.drive_low(),
                     lambda b: b.panel.button.pin.drive_high(), lambda b: b.panel.led.is_lit,
                     lambda b: any(us is not None and us > 1200 for _, _, us in b.jaw.log), sim=True)
    log = body.jaw.log
    assert log[-1][2] is None and log[-2][2] == 1100.0  # closed, then detached
    assert all(us is None or 1100 <= us <= 1800 for _, _, us in log)
