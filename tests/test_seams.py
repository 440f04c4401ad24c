"""The seams between the parts: one direction of imports (skull.core <- skull, skull.core <- host,
only the CLI and the demo import both), every device behind its port as a context manager
with an idempotent close, and calibrate moving the jaw through that port alone."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_boards import FirmwareSim
from skull import ports
from skull.config import Calibration, SkullConfig

ROOT = Path(__file__).resolve().parent.parent


def loaded_after(code: str) -> list[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_calibrate_loads_nothing_from_the_host():
    """What `python -X importtime -c "import skull.calibrate"` shows, asserted: and working out
    a lead (which plays the bundled sample through the jaw loop) loads no host code either."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import skull.calibrate"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line]
    assert "skull.calibrate" in imported
    assert not [m for m in imported if m == "host" or m.startswith("host.")]
    mods = loaded_after("import skull.calibrate\nassert skull.calibrate.suggested_lead_ms(42.0) > 0")
    assert not [m for m in mods if m == "host" or m.startswith("host.")]


def test_the_skull_run_path_loads_nothing_from_the_host():
    code = """
import asyncio
from skull.cli import build_parser, cmd_run
from skull.agent import Agent
from skull.runtime import build_body
from skull.config import load_skull_config
from skull.core.data import bundled
cfg = load_skull_config(None)
body = build_body(cfg, sim=True, mic_file=bundled("question.wav"), image=bundled("snapshot.jpg"), audio=False)
agent = Agent(cfg, body)
agent.close()
"""
    mods = loaded_after(code)
    assert "skull.agent" in mods and "skull.link" in mods
    assert not [m for m in mods if m == "host" or m.startswith("host.")]


def test_the_host_loads_only_the_shared_core_of_the_skull():
    mods = loaded_after("import host.server, host.check\nfrom host.build import build_backends\n"
                        "from host.config import HostConfig\nbuild_backends(HostConfig())")
    skull_side = [m for m in mods if m.startswith("skull.") and not m.startswith("skull.core")]
    assert not skull_side, skull_side
    assert "skull.core.protocol" in mods


def test_the_shared_core_imports_neither_side():
    mods = loaded_after("import skull.core.protocol, skull.core.envelope, skull.core.wav, skull.core.validate, "
                        "skull.core.bus, skull.core.data, skull.core.errors")
    assert not [m for m in mods if m.startswith("host") or (m.startswith("skull.") and not m.startswith("skull.core"))]


# --- device ports ----------------------------------------------------------------------------------

CAL = Calibration(closed_us=1200.0, open_us=1700.0)


def _mock_factory():
    from gpiozero.pins.mock import MockFactory, MockPWMPin
    return MockFactory(pin_class=MockPWMPin)


def _devices(tmp_path):
    from skull.audio.player import ClockPlayer
    from skull.audio.recorder import FileMic
    from skull.camera import Camera
    from skull.config import PinsConfig
    from skull.core.data import bundled
    from skull.devices import GpioPanel
    from skull.jaw.gpio import GpioJaw
    from skull.jaw.sim import SimJaw
    factory = _mock_factory()
    return [
        (ports.Jaw, lambda: GpioJaw(18, CAL, pin_factory=factory)),
        (ports.Jaw, lambda: SimJaw(CAL)),
        (ports.Panel, lambda: GpioPanel(PinsConfig(), factory)),
        (ports.Mic, lambda: FileMic(bundled("question.wav"))),
        (ports.Speaker, lambda: ClockPlayer()),
        (ports.Camera, lambda: Camera(bundled("snapshot.jpg"))),
    ]


@pytest.mark.parametrize("index", range(6))
def test_every_device_is_its_port_and_closes_safely_twice(tmp_path, index):
    port, make = _devices(tmp_path)[index]
    with make() as device:
        assert isinstance(device, port), f"{type(device).__name__} does not provide the {port.__name__} port"
        if port is ports.Jaw:
            device.move(0.8)
    device.close()  # a second close does nothing and raises nothing
    if port is ports.Jaw:
        assert device.log[-1].pulse_us is None and device.log[-2].opening == 0.0  # shut, then detached
        assert not device.attached
        device.move(1.0)  # a closed jaw ignores commands
        assert device.log[-1].pulse_us is None


def test_the_serial_boards_jaw_and_panel_are_ports(tmp_path):
    from skull.boards import SkulljawBoard
    from skull.machine import LedPattern
    sim = FirmwareSim()
    try:
        with SkulljawBoard(sim.path, CAL, watchdog_ms=500) as board:
            assert isinstance(board.jaw, ports.Jaw) and isinstance(board.panel, ports.Panel)
            board.jaw.move(1.0)
            board.panel.set_led(LedPattern.ON)
            assert sim.servo()["us"] == "1700"
        board.close()
        board.jaw.close()
        assert board.closed and board.jaw.closed
        status = sim.servo()
        assert status["attached"] == "0"
    finally:
        sim.close()


def test_a_jaw_can_only_be_narrowed_inside_the_range_it_was_opened_with():
    from skull.core.errors import DeviceError
    from skull.jaw.sim import SimJaw
    jaw = SimJaw(Calibration(closed_us=500.0, open_us=2500.0))
    jaw.recalibrate(Calibration(closed_us=1250.0, open_us=1750.0))
    jaw.move(1.0)
    assert jaw.log[-1].pulse_us == 1750.0
    with pytest.raises(DeviceError, match="outside the range this jaw was opened with"):
        jaw.recalibrate(Calibration(closed_us=400.0, open_us=1750.0))


class PortOnly:
    """A jaw seen through the Jaw port and nothing else: any other attribute is an error."""
    ALLOWED = {"calibration", "opening", "attached", "move", "detach", "pulse_width_us", "recalibrate", "close"}

    def __init__(self, jaw):
        object.__setattr__(self, "_jaw", jaw)

    def __getattr__(self, name):
        if name not in self.ALLOWED:
            raise AssertionError(f"calibrate reached past the jaw port: .{name}")
        return getattr(object.__getattribute__(self, "_jaw"), name)

    def __setattr__(self, name, value):
        raise AssertionError(f"calibrate set .{name} on the jaw")


def test_calibrate_moves_the_jaw_through_its_port_only(tmp_path):
    from contextlib import ExitStack

    from rich.console import Console

    from skull.calibrate import interactive
    from skull.jaw.gpio import GpioJaw
    from skull.runtime import OpenedJaw
    factory = _mock_factory()
    made = []

    def open_jaw(cal):
        jaw = GpioJaw(18, cal, pin_factory=factory)
        made.append(jaw)
        stack = ExitStack()
        stack.callback(jaw.close)
        return OpenedJaw(PortOnly(jaw), stack)

    class Args:
        name, dir = "port", str(tmp_path)
    with open(tmp_path / "out.txt", "w") as out:
        rc = interactive(Args, Console(file=out, width=120), SkullConfig(), open_jaw,
                         lines=iter(["1250", "c", "1750", "o", "w"]), pause=lambda s: None)
    assert rc == 0
    jaw = made[0]
    assert jaw.log[-2].pulse_us == pytest.approx(1250.0) and jaw.log[-1].pulse_us is None  # shut where found
    assert jaw._servo.closed  # the pin was released by the port's own close


# --- triggers ------------------------------------------------------------------------------------

class SpeakWhenAsked:
    """A trigger that is not the button (what a voice-activity or wake-word trigger will be):
    the visitor's talk starts when the test says so and ends when the mic file is spoken."""
    name = "test trigger"

    def start(self, press, release):
        self.press, self.release = press, release

    def close(self):
        self.press = self.release = None


def test_a_turn_can_be_started_by_a_trigger_other_than_the_button(host_config, backends):
    import asyncio

    from conftest import sim_body, skull_config, start_host, wait_for
    from skull.agent import Agent
    from skull.machine import State
    from skull.triggers import Trigger

    async def go():
        host = await start_host(host_config, backends)
        cfg = skull_config(host.port)
        body = sim_body(cfg)
        trigger = SpeakWhenAsked()
        assert isinstance(trigger, Trigger)
        agent = Agent(cfg, body, triggers=[trigger])
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE)
            assert body.panel.button.when_pressed is None  # the button is not wired: this trigger is
            body.mic.on_finished = lambda: trigger.release()
            trigger.press()
            await asyncio.wait_for(agent.turn_ended.wait(), 60)
            return agent.finished[-1]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()
    rec = asyncio.run(go())
    assert rec.outcome == "answered" and "costume" in rec.transcript
