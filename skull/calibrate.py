"""`skull calibrate`: find the pulses that put this skull's jaw shut and fully open, how fast the
servo gets there, and the lead that puts the jaw on time; save them as
``calibration/<name>.toml`` beside the config file in use (else in ``~/.config/skull/``), never
in the bundled, read-only default profile.

Interactive (a terminal): jog the servo in small and large steps, mark closed and open, swap
direction, time the travel, hear a spoken sample with the jaw, save (and go on, or quit). A
simulated board shows its jaw as a bar and judges the travel test itself. Non-interactive: give
``--closed-us`` and ``--open-us`` (and optionally ``--lead-ms`` / ``--travel-ms``); nothing
moves, the profile is checked and written.

The jaw is closed and detached on every way out (save, quit, Ctrl-C, end of input, error).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .config import Calibration, calibration_dir, load_calibration, profile_path
from .core.errors import ConfigError, SkullError
from .core.places import is_bundled, user_config_dir
from .jaw import pulse_us
from .jaw.sim import SimJaw

log = logging.getLogger("skull.calibrate")

SAFE_LO, SAFE_HI = 500.0, 2500.0
SMALL, LARGE = 10.0, 50.0


SIM_THROW_DEG = 180.0
"""the simulated servo turns this far over the whole safe range, 500..2500 µs, as a hobby servo does"""


def profiles_folder(args) -> Path:
    """--dir, else calibration/ beside the config file in use, else ~/.config/skull/calibration/."""
    return Path(args.dir).expanduser() if getattr(args, "dir", None) else calibration_dir(getattr(args, "config", None))


def writable_profile(path: Path) -> Path:
    """``path``, unless it lies in the bundled default profiles, which are read-only (they ship
    with skull and are the last fallback of every skull on this machine): a SkullError then."""
    if is_bundled(path):
        raise SkullError(f"{path} is the bundled default profile, which is read-only; save this jaw's profile "
                         f"beside your own skull.toml (cp skull.example.toml {user_config_dir() / 'skull.toml'}, then "
                         f"skull calibrate saves in {user_config_dir() / 'calibration'}/), or give --dir DIR")
    return path


def suggested_lead_ms(travel_ms: float, shape=None) -> float:
    """The lead that puts the jaw on time for a servo of this travel time, found by running the
    real jaw loop on the bundled spoken sample through the servo model."""
    from .core.envelope import JawShape
    from .core.wav import read_wav, to_mono
    from .core.data import bundled
    from .jaw.simulate import best_lead_ms
    audio = read_wav(bundled("question.wav"))
    lead, _ = best_lead_ms(to_mono(audio), audio.rate, travel_ms=travel_ms, shape=shape or JawShape())
    return round(lead, 1)


def write_profile(path: Path, cal: Calibration, note: str = "") -> Path:
    """Check and write a profile atomically (never into the bundled defaults); returns the path."""
    writable_profile(path)
    cal.check(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (f"# Servo calibration profile, written by skull calibrate{(' (' + note + ')') if note else ''}.\n"
            f"# Pulses outside 500..2500 microseconds are refused: a hobby servo driven into its end stops\n"
            f"# buzzes, draws stall current and can strip its gears or brown out the board.\n"
            f"[servo]\n"
            f"closed_us = {cal.closed_us:.1f}   # jaw shut\n"
            f"open_us = {cal.open_us:.1f}     # jaw fully open (below closed_us: a reversed servo)\n"
            f"lead_ms = {cal.lead_ms:.1f}      # the jaw is commanded this early: servo travel plus frame wait\n"
            f"travel_ms = {cal.travel_ms:.1f}   # closed to open\n")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
    load_calibration(path)  # what was written reads back and passes the same checks
    return path


def non_interactive(args, console: Console) -> int:
    base = Calibration()
    travel = args.travel_ms if args.travel_ms is not None else base.travel_ms
    cal = Calibration(closed_us=float(args.closed_us), open_us=float(args.open_us),
                      lead_ms=base.lead_ms, travel_ms=float(travel))
    cal.check("--closed-us/--open-us/--travel-ms")  # pulses and travel first, before the lead search
    path = writable_profile(profile_path(args.name, profiles_folder(args)))
    lead = float(args.lead_ms) if args.lead_ms is not None else suggested_lead_ms(travel)
    cal = dataclasses.replace(cal, lead_ms=lead)
    path = write_profile(path, cal, "non-interactive")
    console.print(f"saved {path}: closed {cal.closed_us:.0f} µs, open {cal.open_us:.0f} µs, lead {cal.lead_ms:.0f} ms, "
                  f"travel {cal.travel_ms:.0f} ms")
    console.print(use_it(args, path), markup=False)
    return 0


def use_it(args, path: Path) -> str:
    """How to run with the profile just saved."""
    if args.name == "default" and not getattr(args, "dir", None):
        return ("skull run and skull doctor use it with this config (unless it names another profile in "
                "[jaw] calibration or has a [calibration] table)")
    return f"use it: skull run --calibration {args.name}  (or skull.toml [jaw] calibration = \"{path}\")"


class RawJaw:
    """A jaw driver opened over the whole safe pulse range, moved by pulse width (jogging)."""

    def __init__(self, jaw):
        self.jaw = jaw
        self.us: float | None = None

    def to_us(self, us: float) -> float:
        us = min(SAFE_HI, max(SAFE_LO, float(us)))
        self.jaw.move((us - SAFE_LO) / (SAFE_HI - SAFE_LO))
        self.us = us
        return us

    def detach(self) -> None:
        self.jaw.detach()

    def release(self, closed_us: float | None, pause=time.sleep) -> None:
        """Shut at ``closed_us`` (the pulse just found, not the wide range's end), then let the
        jaw port close itself there: it narrows its limits to start at that pulse, shuts,
        detaches and releases its hardware."""
        try:
            if closed_us:
                self.to_us(closed_us)
                pause(0.25)
                self.jaw.recalibrate(dataclasses.replace(self.jaw.calibration, closed_us=float(closed_us)))
        finally:
            self.jaw.close()


class ProfileJaw:
    """The raw jaw seen through a (candidate) calibration: move(opening) like any driver."""

    def __init__(self, raw: RawJaw, cal: Calibration):
        self.raw, self.cal = raw, cal
        self.opening, self.attached = 0.0, False

    def move(self, opening: float) -> None:
        self.raw.to_us(pulse_us(self.cal, opening))
        self.opening, self.attached = opening, True

    def detach(self) -> None:
        self.raw.detach()
        self.attached = False


HELP = """commands (then Enter):
  +  -      jog 10 µs         ++  --    jog 50 µs        1500   go to a pulse (500..2500)
  c         closed = here     o         open = here      r      swap closed/open (direction)
  t         travel test: opens and shuts at shorter and shorter times; answer y while it still opens fully
  s         speak a sample with the jaw (lead and travel as set)
  l 50      set the lead in ms (default: worked out from the travel)
  w         save, go on      wq         save and quit    q      quit (twice with unsaved changes)
  ?         this help"""


class Session:
    """The interactive calibration, line by line (testable with piped input)."""

    def __init__(self, raw: RawJaw, console: Console, path: Path, start: Calibration, speaker=None, ask=None,
                 pause=time.sleep, sim: bool = False):
        """``sim``: the jaw is a simulated one (a :class:`~skull.jaw.sim.SimJaw`, nothing to look
        at): shown as a bar, and the travel test judged by its servo model, not asked."""
        self.raw, self.console, self.path = raw, console, path
        self.ask = ask or console.input
        self.pause = pause
        self.closed_us: float | None = start.closed_us
        self.open_us: float | None = start.open_us
        self.travel_ms, self.lead_ms = start.travel_ms, start.lead_ms
        self.lead_set = False
        self.speaker = speaker
        self.saved = False
        self.kept = self.values()  # as at the start or the last save: q warns when they changed
        self.warned = False  # q said once that there are unsaved changes
        self.sim = raw.jaw if sim and isinstance(raw.jaw, SimJaw) else None

    def values(self) -> tuple:
        return self.closed_us, self.open_us, self.travel_ms, self.lead_ms

    def status(self) -> Table:
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold cyan", justify="right")
        t.add_column()
        t.add_row("pulse now", f"{self.raw.us:.0f} µs" if self.raw.us else "-")
        t.add_row("closed", f"{self.closed_us:.0f} µs" if self.closed_us else "not set")
        t.add_row("open", f"{self.open_us:.0f} µs" if self.open_us else "not set")
        direction = "-" if not (self.closed_us and self.open_us) else (
            "normal (open = longer pulse)" if self.open_us > self.closed_us else "reversed (open = shorter pulse)")
        t.add_row("direction", direction)
        t.add_row("travel", f"{self.travel_ms:.0f} ms")
        t.add_row("lead", f"{self.lead_ms:.0f} ms" + ("" if self.lead_set else " (from the travel)"))
        if self.sim is not None and self.raw.us:
            t.add_row("simulated jaw", self.sim_bar(self.raw.us))
        return t

    def sim_bar(self, us: float, width: int = 24) -> str:
        """The simulated jaw at pulse ``us`` as a bar: how far open between closed and open once
        both are set, else where the pulse is in the safe range."""
        if self.closed_us and self.open_us:
            fraction = (us - self.closed_us) / (self.open_us - self.closed_us)
            label = f"{fraction * 100:.0f}% open"
        else:
            fraction = (us - SAFE_LO) / (SAFE_HI - SAFE_LO)
            label = f"{us:.0f} µs of 500..2500"
        full = round(min(1.0, max(0.0, fraction)) * width)
        return f"|{'█' * full}{'·' * (width - full)}| {label}"

    def calibration(self) -> Calibration:
        cal = Calibration(closed_us=self.closed_us, open_us=self.open_us, lead_ms=self.lead_ms,
                          travel_ms=self.travel_ms)
        cal.check("calibration")
        return cal

    def handle(self, line: str) -> bool:
        """One command; False when the session is over."""
        cmd = line.strip()
        here = self.raw.us or 1500.0
        steps = {"+": SMALL, "-": -SMALL, "++": LARGE, "--": -LARGE}
        if cmd in steps:
            self.raw.to_us(here + steps[cmd])
        elif re.fullmatch(r"\d{3,4}(\.\d+)?", cmd):
            want = float(cmd)
            if not SAFE_LO <= want <= SAFE_HI:
                self.console.print(f"[red]{want:.0f} µs is outside the safe 500..2500 µs; not moved[/]")
            else:
                self.raw.to_us(want)
        elif cmd == "c":
            self.closed_us = here
        elif cmd == "o":
            self.open_us = here
        elif cmd == "r":
            self.closed_us, self.open_us = self.open_us, self.closed_us
        elif cmd == "t":
            self.travel_test()
        elif cmd == "s":
            self.speak()
        elif cmd.startswith("l"):
            try:
                lead = float(cmd[1:])
            except ValueError:
                self.console.print("[red]give the lead in ms, e.g. l 50[/]")
                return True
            if not 0 <= lead <= 300:
                self.console.print(f"[red]lead {lead:g} ms is outside 0..300 ms[/]")
            else:
                self.lead_ms, self.lead_set = lead, True
        elif cmd in ("w", "wq"):
            try:
                cal = self.calibration()
            except (ConfigError, TypeError) as exc:
                self.console.print(f"[red]not saved: {exc if isinstance(exc, ConfigError) else 'set closed (c) and open (o) first'}[/]")
                return True
            write_profile(self.path, cal, "interactive")
            self.saved, self.kept, self.warned = True, self.values(), False
            if cmd == "wq":
                self.console.print(f"saved {self.path}")
                return False
            self.console.print(f"saved {self.path}; go on jogging, or q to quit")
            return True
        elif cmd == "q":
            if self.values() != self.kept and not self.warned:
                self.warned = True
                self.console.print("[yellow]unsaved changes: w saves them (wq saves and quits); q again quits "
                                   "without saving[/]")
                return True
            self.console.print("quit" + ("" if self.values() == self.kept else " without saving"))
            return False
        elif cmd in ("?", "h", "help", ""):
            self.console.print(HELP)
        else:
            self.console.print(f"[red]unknown command {cmd!r}[/]; ? shows the commands")
        self.console.print(self.status())
        return True

    def travel_test(self) -> None:
        if not (self.closed_us and self.open_us):
            self.console.print("[red]set closed (c) and open (o) first[/]")
            return
        if self.sim is not None:
            self.console.print("the simulated jaw is timed by its servo model (a hobby servo, 0.10 s per 60 degrees): "
                               "no question to answer")
        for ms in (400, 250, 160, 100, 70, 50, 35):
            self.raw.to_us(self.closed_us)
            self.pause(0.4)
            reached = []
            for _ in range(3):
                opened_at = self.sim.clock() if self.sim is not None else 0.0
                self.raw.to_us(self.open_us)
                self.pause(ms / 1000)
                closed_at = self.sim.clock() if self.sim is not None else 0.0
                self.raw.to_us(self.closed_us)
                self.pause(max(ms / 1000, 0.1))
                if self.sim is not None:
                    reached.append(self.sim_reached(opened_at, closed_at))
            if self.sim is not None:
                least = min(reached)
                ok = least >= 0.97
                self.console.print(f"{ms:>3} ms: {self.sim_bar(self.closed_us + least * (self.open_us - self.closed_us))}"
                                   f" {'all the way' if ok else 'not all the way'}", markup=False)
            else:
                answer = self.ask(f"{ms} ms: did the jaw open all the way each time? [y/n] ").strip().lower()
                ok = answer == "y"
            if not ok:
                break
            self.travel_ms = float(ms)
        self.raw.to_us(self.closed_us)
        if not self.lead_set:
            self.lead_ms = suggested_lead_ms(self.travel_ms)
        self.console.print(f"travel {self.travel_ms:.0f} ms -> lead {self.lead_ms:.0f} ms")

    def sim_reached(self, opened_at: float, closed_at: float) -> float:
        """How far (0..1 of closed -> open) the simulated horn got between the open command at
        ``opened_at`` and the servo frame that takes the close command sent at ``closed_at``."""
        sim = self.sim
        step = 0.001
        times = [opened_at + i * step for i in range(int((closed_at - opened_at + 2 * sim.frame_s) / step) + 1)]
        positions = [SAFE_LO + p * (SAFE_HI - SAFE_LO) for p in sim.physical(times)]
        span = self.open_us - self.closed_us
        return max(0.0, max((p - self.closed_us) / span for p in positions))

    def speak(self) -> None:
        try:
            cal = self.calibration()
        except (ConfigError, TypeError):
            self.console.print("[red]set closed (c) and open (o) first[/]")
            return
        from .core.envelope import jaw_track
        from .audio.player import ClockPlayer, open_player
        from .core.wav import read_wav, to_mono
        from .core.data import bundled
        from .jaw.sync import JawFollower
        audio = read_wav(bundled("question.wav"))
        x = to_mono(audio)
        player = self.speaker() if self.speaker else open_player()
        if isinstance(player, ClockPlayer):
            self.console.print("(no speaker here: the jaw moves to the sample's timing without sound)")
        jaw = ProfileJaw(self.raw, cal)
        follower = JawFollower(player, jaw, lead_ms=cal.lead_ms)
        player.start()
        follower.start()
        try:
            player.timeline.add(x, audio.rate, jaw_track(x, audio.rate), 100)
            deadline = time.monotonic() + len(x) / audio.rate + 3.0
            while (player.timeline.busy or not player.timeline.playing) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
        finally:
            follower.stop()
            player.close()
            self.raw.to_us(cal.closed_us)


def interactive(args, console: Console, config, open_jaw, lines=None, pause=time.sleep, sim: bool = False) -> int:
    """``open_jaw(calibration)``: the configured jaw driver opened over the given range, as a
    :class:`~skull.runtime.OpenedJaw` (its ``jaw`` is used through the jaw port only).
    ``lines``: an iterator of typed lines (tests); default: the terminal. ``sim``: the jaw is
    simulated (see :class:`Session`)."""
    path = profile_path(args.name, profiles_folder(args))
    start = load_calibration(path) if path.exists() else config.calibration
    wide = Calibration(closed_us=SAFE_LO, open_us=SAFE_HI, lead_ms=start.lead_ms, travel_ms=start.travel_ms)
    opened = open_jaw(wide)
    raw = RawJaw(opened.jaw)
    def ask(prompt: str) -> str:
        if lines is None:
            return console.input(prompt)
        console.print(prompt, end="")
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    session = Session(raw, console, path, start, ask=ask, pause=pause, sim=sim)
    console.print(f"[bold]skull calibrate[/]: profile {path}")
    console.print("The servo starts at the closed pulse of the current profile. Jog it until the jaw just shuts "
                  "without straining (c), then until it is fully open (o).")
    console.print(HELP)
    try:
        raw.to_us(start.closed_us)
        console.print(session.status())
        while True:
            try:
                if not session.handle(ask("> ")):
                    break
            except EOFError:
                console.print("end of input: quit" + ("" if session.values() == session.kept else " without saving"))
                break
    except KeyboardInterrupt:
        console.print("interrupted: quit without saving")
    finally:
        try:
            raw.release(session.closed_us or start.closed_us, pause)
        finally:
            opened.close()
    return 0 if session.saved else 1


def cmd_calibrate(args) -> int:
    console = Console(soft_wrap=True)  # a saved path is one line, whatever the width
    if (args.closed_us is None) != (args.open_us is None):
        raise SkullError("give both --closed-us and --open-us for a non-interactive run, or neither to jog the servo")
    if args.closed_us is not None:
        return non_interactive(args, console)
    from .config import load_skull_config
    from .runtime import open_jaw
    writable_profile(profile_path(args.name, profiles_folder(args)))  # before anything moves
    config = load_skull_config(args.config)
    board = getattr(args, "board", None)
    if board:
        config = dataclasses.replace(config, board=dataclasses.replace(config.board, driver=board))
    if config.board.driver == "sim":
        console.print("simulated board: the jaw is a servo model, shown as a bar")
        return interactive(args, console, config, open_sim_jaw, sim=True)
    return interactive(args, console, config, lambda cal: open_jaw(config, cal))


def open_sim_jaw(calibration: Calibration, clock=time.monotonic):
    """The simulated jaw for calibrating: a hobby servo turning SIM_THROW_DEG over 500..2500 µs,
    at its rated 0.10 s per 60 degrees, opened over ``calibration``."""
    from contextlib import ExitStack

    from .runtime import OpenedJaw
    throw = SIM_THROW_DEG * abs(calibration.open_us - calibration.closed_us) / (SAFE_HI - SAFE_LO)
    jaw = SimJaw(calibration, throw_deg=throw, clock=clock)
    stack = ExitStack()
    stack.callback(jaw.close)
    return OpenedJaw(jaw, stack)
