"""The skull's button and LED through gpiozero, and the pin factory choice.

``--sim`` uses gpiozero's own MockFactory: the library's simulator, where pressing the button
is ``factory.pin(17).drive_low()``.
"""
from __future__ import annotations

import collections
import logging
import os

from gpiozero import LED, PWMLED, Button
from gpiozero.pins.mock import MockPWMPin

from .config import PinsConfig
from .core.errors import DeviceError
from .machine import LedPattern
from .ports import Device

log = logging.getLogger("skull.devices")

BREATHE_BLINK_S = (1.0, 2.0)
"""on and off seconds of the breathing pattern where the LED cannot dim"""


def pin_factory(sim: bool, name: str = ""):
    """MockFactory (with PWM pins for the servo) when simulated or asked for (mock); otherwise ``name`` ([board]
    pin_factory: lgpio, pigpio, rpigpio, native) or gpiozero's default, which honours
    GPIOZERO_PIN_FACTORY (lgpio on a Pi 5, pigpio where its daemon runs). Where none works, one
    DeviceError that says what to do (not gpiozero's warning per factory it tried)."""
    if sim or (name or os.environ.get("GPIOZERO_PIN_FACTORY", "")).lower() == "mock":
        from gpiozero.pins.mock import MockFactory
        return MockFactory(pin_class=CappedMockPWMPin)
    if name:
        os.environ["GPIOZERO_PIN_FACTORY"] = name
    return default_pin_factory()


def default_pin_factory():
    """gpiozero's default pin factory, its fallback warnings (one per factory that would not
    load) logged at debug level, or a DeviceError that says what to do."""
    import warnings
    from gpiozero import Device
    with warnings.catch_warnings(record=True) as fallbacks:
        warnings.simplefilter("always")
        try:
            factory = Device._default_pin_factory()
        except Exception as exc:
            tried = "; ".join(str(w.message) for w in fallbacks) or str(exc)
            raise DeviceError(no_gpio_advice(tried)) from exc
    for w in fallbacks:
        log.debug("gpiozero: %s", w.message)
    return factory


def is_raspberry_pi() -> bool:
    """Whether this machine says it is a Raspberry Pi (its device tree's model)."""
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            with open(path, "rb") as f:
                return b"Raspberry Pi" in f.read()
        except OSError:
            continue
    return False


def no_gpio_advice(tried: str = "") -> str:
    """One line: why no GPIO works here and what to do, on a Pi and elsewhere."""
    forced = os.environ.get("GPIOZERO_PIN_FACTORY", "")
    if is_raspberry_pi():
        return (f"no GPIO library works on this Raspberry Pi ({tried or 'none loaded'}); install python3-lgpio "
                f"(sudo apt install python3-lgpio; a venv needs --system-site-packages or pip install lgpio)"
                + (f", or unset GPIOZERO_PIN_FACTORY={forced}" if forced else "")
                + ", or run pigpiod and set [board] pin_factory = \"pigpio\"")
    return ("no GPIO here: this machine is not a Raspberry Pi, and the board is \"gpio\" (a Pi's pins); "
            "add --sim to simulate the button, LED and jaw, or set [board] driver = \"sim\", or \"serial\" / "
            "\"firmata\" for an Arduino on USB")


PIN_STATES_MAX = 6000
"""the state changes a simulated pin remembers (gpiozero's MockPin keeps every one: a servo pin
changes 50 times a second while the jaw moves, so a night of turns would fill the memory)"""


class CappedMockPWMPin(MockPWMPin):
    """gpiozero's MockPWMPin whose ``states`` history keeps the newest PIN_STATES_MAX changes
    (a deque: ``assert_states`` and ``assert_states_and_times`` read it as before)."""

    def clear_states(self):
        super().clear_states()
        self.states = collections.deque(self.states, maxlen=PIN_STATES_MAX)


class GpioPanel(Device):
    """The push button and the LED on a Pi's pins. LED patterns: off, on (listening), offline
    (slow blink), breathe (idle life: a PWM pulse where the pin factory can dim the pin, else a
    slow blink). ``breathe``: open the LED as a PWMLED so it can pulse (lgpio, pigpio and
    rpigpio can; a factory that cannot falls back to a plain LED)."""

    def __init__(self, pins: PinsConfig, factory, bounce_s: float | None = None, breathe: bool = False):
        """``bounce_s``: gpiozero's own debounce, off by default: the agent debounces every
        board's button the same way ([button] debounce_ms, :mod:`skull.button`), and two
        debounces in a row would swallow quick presses."""
        try:
            self.button = Button(pins.button, pull_up=True, bounce_time=bounce_s, pin_factory=factory)
        except Exception as exc:
            raise DeviceError(f"cannot use GPIO{pins.button} for the button: {exc}") from exc
        self.dims = False
        """the LED is a PWMLED: it can breathe"""
        try:
            if breathe:
                try:
                    self.led, self.dims = PWMLED(pins.led, pin_factory=factory), True
                except Exception:  # this pin factory cannot dim (PWM): breathing is a slow blink
                    self.led = LED(pins.led, pin_factory=factory)
            else:
                self.led = LED(pins.led, pin_factory=factory)
        except Exception as exc:
            self.button.close()
            raise DeviceError(f"cannot use GPIO{pins.led} for the LED: {exc}") from exc
        self.pattern = LedPattern.OFF

    def set_led(self, pattern: LedPattern) -> None:
        pattern = LedPattern(pattern)
        if self.led.closed or pattern is self.pattern:
            return
        self.pattern = pattern
        if pattern is LedPattern.ON:
            self.led.on()
        elif pattern is LedPattern.OFFLINE:
            self.led.blink(on_time=0.1, off_time=0.9)
        elif pattern is LedPattern.BREATHE:
            if self.dims:
                self.led.pulse(fade_in_time=1.5, fade_out_time=1.5)
            else:
                self.led.blink(on_time=BREATHE_BLINK_S[0], off_time=BREATHE_BLINK_S[1])
        else:
            self.led.off()

    def close(self) -> None:
        """LED off, pins released. Safe to call twice."""
        if not self.led.closed:
            self.led.off()
            self.led.close()
        self.pattern = LedPattern.OFF
        self.button.close()
