"""`skull demo`: a host and a simulated skull talking over a real websocket on loopback. The
host runs in its own process, as deployed: its models never share an interpreter (and its
lock) with the skull's audio thread. A scripted visitor presses the (gpiozero MockFactory) button, speaks the question
into the skull's microphone, releases the button, and waits for the answer. With ``[listen]
trigger = "voice"`` the visitor just speaks: the skull hears the question begin and end.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from host.config import HostConfig, ServerConfig
from host.process import HostProcess

from .agent import Agent, shown
from .audio.recorder import FileMic
from .config import SkullConfig
from .core.errors import SkullError
from .machine import LedPattern, State
from .runtime import build_body

log = logging.getLogger("skull.demo")


def render(agent: Agent, started: float) -> Group:
    """The live view: state, LED, jaw, what was heard, seen and said, timings."""
    b = agent.body
    rec = agent.records.get(agent.machine.turn) or (agent.finished[-1] if agent.finished else None)
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold cyan", justify="right")
    t.add_column()
    state = agent.state
    colour = {State.OFFLINE: "red", State.IDLE: "white", State.LISTENING: "green", State.THINKING: "yellow",
              State.SPEAKING: "magenta"}[state]
    t.add_row("skull", Text(state.value.upper(), style=f"bold {colour}"))
    t.add_row("led", {LedPattern.ON: "[bold green]● on[/]",
                      LedPattern.OFFLINE: "[red]◌ blinking (offline)[/]"}.get(agent.led, "○ off"))
    opening = b.jaw.opening if b.jaw.attached else 0.0
    bar = "█" * int(round(opening * 30))
    pw = b.jaw.pulse_width_us
    t.add_row("jaw", f"[magenta]{bar:<30}[/] {opening:4.2f}  {'%4.0f µs' % pw if pw else 'detached'}")
    t.add_row("speaker", getattr(b.player, "name", "?"))
    if rec is not None:
        # the host's words as text, never as markup or terminal escapes
        t.add_row("heard", Text(shown(rec.transcript) or "…"))
        t.add_row("saw", Text(shown(rec.caption) or "…"))
        t.add_row("reply", Text(shown(rec.reply or " ".join(seg.text for seg in rec.in_order())) or "…"))
        if rec.timings_ms:
            t.add_row("timings", Text("  ".join(f"{k} {v:.0f} ms" for k, v in rec.timings_ms.items())))
    if agent.last_error:
        t.add_row("error", Text(agent.last_error, style="red"))
    t.add_row("time", f"{time.monotonic() - started:5.1f} s")
    return Group(Text("Mr. Bones, the talking skull (demo)", style="bold"), t)


async def run_demo(question: Path, image: Path, *, record: Path | None = None, audio: bool = True,
                   turns: int = 1, console: Console | None = None, skull_config: SkullConfig | None = None,
                   host_config: HostConfig | None = None, timeout_s: float = 120.0) -> Agent:
    """Runs ``turns`` turns and returns the agent (its ``finished`` turn records). Each turn
    may take ``timeout_s`` seconds beyond the question's own length (a limit per turn, so any
    number of turns can run); a turn that takes longer is a SkullError naming it."""
    if turns < 1:
        raise SkullError(f"turns = {turns}: the demo needs at least 1 turn")
    console = console or Console()
    hcfg = host_config or HostConfig(server=ServerConfig(port=0))
    host = HostProcess(hcfg)
    await asyncio.to_thread(host.start)
    scfg = skull_config or SkullConfig()
    scfg = dataclasses.replace(scfg, link=dataclasses.replace(scfg.link, url=host.url,
                                                               token=hcfg.server.token))
    body = build_body(scfg, sim=True, mic_file=question, image=image, audio=audio)
    started = time.monotonic()
    live = Live(render_starting(), console=console, refresh_per_second=12, transient=False,
                redirect_stdout=False, redirect_stderr=False)
    agent = Agent(scfg, body, record_dir=record)
    agent_task = None
    try:
        with live:
            # the view is a subscriber of the skull's bus: it redraws on every change it publishes
            agent.events.subscribe(lambda e: live.update(render(agent, started)))
            agent_task = asyncio.create_task(agent.run(), name="agent")
            await visitor(agent, turns, live, started, timeout_s)
            live.update(render(agent, started))
    finally:
        if agent_task is not None:
            agent_task.cancel()
            await asyncio.gather(agent_task, return_exceptions=True)
        agent.close()
        await asyncio.to_thread(host.stop)
    return agent


def render_starting() -> Text:
    return Text("starting the host and the skull…")


async def press_and_speak(agent: Agent, timeout_s: float = 60.0) -> None:
    """The visitor's part of a turn: press the (simulated) button, let the question file play
    into the microphone, release. Used by the benches and tests as well. When a hands-free
    trigger keeps the mic open, the visitor starts speaking once the skull listens."""
    pin = agent.body.panel.button.pin
    spoken = asyncio.Event()
    loop = asyncio.get_running_loop()
    agent.body.mic.on_finished = lambda: loop.call_soon_threadsafe(spoken.set)
    pin.drive_low()
    if agent.hands_free:
        await asyncio.wait_for(_until(lambda: agent.state is State.LISTENING), timeout_s)
        agent.body.mic.say()
    await asyncio.wait_for(spoken.wait(), timeout_s)
    pin.drive_high()


async def _until(predicate, step_s: float = 0.01) -> None:
    while not predicate():
        await asyncio.sleep(step_s)


async def visitor(agent: Agent, turns: int, live: Live, started: float, timeout_s: float = 120.0) -> None:
    """The scripted visitor: press, speak the question, release, wait for the answer. With the
    voice trigger: speak (the mic file plays when the skull is first ready, then again for each
    turn) and wait for the answer. Each turn has ``timeout_s`` beyond the question's length."""
    mic = agent.body.mic
    pin = agent.body.panel.button.pin
    by_voice = isinstance(mic, FileMic) and any(t.name == "voice" for t in agent.hands_free)
    released = asyncio.Event()
    loop = asyncio.get_running_loop()

    def speak_done():
        loop.call_soon_threadsafe(released.set)

    async def refresh():
        while True:
            live.update(render(agent, started))
            await asyncio.sleep(0.05)

    async def one_turn(turn: int) -> None:
        while agent.state is not State.IDLE:
            await asyncio.sleep(0.05)
        released.clear()
        agent.turn_ended.clear()
        if by_voice:
            if turn:
                mic.say()
            await agent.turn_ended.wait()
            return
        if isinstance(mic, FileMic):
            mic.on_finished = speak_done
        pin.drive_low()  # press
        if agent.hands_free:  # the mic is open already: speak once the skull listens
            await _until(lambda: agent.state is State.LISTENING)
            mic.say()
        # the question ends, or the skull stops listening first (past [audio] max_record_s)
        ended = asyncio.create_task(agent.turn_ended.wait())
        spoke = asyncio.create_task(released.wait())
        try:
            await asyncio.wait({ended, spoke}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            spoke.cancel()
            ended.cancel()
        pin.drive_high()  # release
        await agent.turn_ended.wait()

    limit_s = timeout_s + (mic.seconds if isinstance(mic, FileMic) else 0.0)
    ticker = asyncio.create_task(refresh())
    try:
        for turn in range(turns):
            try:
                await asyncio.wait_for(one_turn(turn), limit_s)
            except TimeoutError:
                pin.drive_high()  # the visitor lets go
                waited = f"still {agent.state.value}" + (f"; {agent.last_error}" if agent.last_error else "")
                raise SkullError(f"turn {turn + 1} of {turns} got no answer within {limit_s:.0f} s (the skull was "
                                 f"{waited}); run with -v to see what the host did, or give more "
                                 f"--turn-timeout") from None
    finally:
        ticker.cancel()


def print_summary(agent: Agent, console: Console) -> int:
    """Plain lines for logs and pipes; the exit status is 0 when every turn was answered."""
    ok = True
    console.print()
    for rec in agent.finished:
        console.print(f"[bold]turn {rec.turn}[/] ({rec.outcome})")
        console.print(f"  heard:   {escape(repr(rec.transcript))}")
        console.print(f"  saw:     {escape(repr(rec.caption))}")
        console.print(f"  replied: {escape(repr(rec.reply))}")
        console.print("  timings: " + escape(", ".join(f"{k}={v:.0f} ms" for k, v in rec.timings_ms.items())))
        ok = ok and rec.outcome == "answered" and bool(rec.segments)
    for path in agent.recorded:
        console.print(f"  recorded in {path}")
    if not agent.finished:
        console.print("[red]no turn finished[/]")
    return 0 if ok and agent.finished else 1
