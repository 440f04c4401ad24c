"""A show night in fast motion: a simulated skull, a host that is killed now and then, a network
that drops and stalls, model servers that fail, and nobody touching anything.

    python bench/show.py                 # 1,000 turns, under half an hour here
    python bench/show.py --turns 60 --kill-every 20

The host runs as its own process (``skull host``) against the standard fake workload (in a
process of its own) with its delays scaled down and failures switched on (each server fails 10 %
of its calls, drops the connection mid-answer on 2 %, scales every wait by 0.7..1.3 and pays a
warm-up on its first call). Between the skull and the host sits :class:`FlakyProxy`, a TCP proxy
that now and then cuts every connection at once (as a switch or Wi-Fi does) and now and then
forwards nothing for ``--stall-s`` seconds (a link that hangs without closing). Every
``--kill-every`` turns (±20 %) the host process gets SIGKILL mid-answer and a new one starts
after a visitor or two pressed with no host. The skull (this process; its agent is what a
``skull run`` runs) has a simulated body: MockFactory button, LED and servo, the workload's
short question ("What do you think of my costume?") as its microphone played ``--speed`` times
faster than real time, and a speaker as
fast. It says attract lines after 6 s with nobody ([idle]), its LED breathes and its jaw moves a
little while idle, and its button counts as stuck after 5 s.

Visitors press, speak, release and listen to the whole answer. A turn counts as *spoken* when the
skull played something: the answer, a fallback line or, with no host, a line of its own (also
when the link is lost as the button goes down or before a word of the answer came). Halfway
through, the button is held down for 6 s (stuck: reported once, freed once); every
``--idle-every`` turns nobody comes for a while, and an attract line must come. After every link
loss (a cut, a stall the skull noticed, a host killed) the bench measures how long the jaw took
to close, from the loss (the cut or the kill; for a stall, the moment the skull noticed it).

Last line:

    turns=… spoken=… answered=… fallbacks=… offline_lines=… mute=… skull_exits=… host_restarts=…
    link_cuts=… stalls=… jaw_closed_after_loss_ms_max=… rss_growth_pct=… host_rss_growth_pct=… fds_growth=…
    host_fds_growth=… attract_lines=… idle_periods=… stuck_reports=… stuck_freed=…

``rss_growth_pct``: this process (the skull) from turn 100 (or a tenth of the run when shorter)
to the end; ``host_rss_growth_pct``: the host's RSS at the end of its fullest life against the end of its
first (each life serves about the same number of turns; a last life of under half a life's turns
is left out); ``fds_growth``: the skull's
open files, same two points; ``host_fds_growth``: the host's, like its RSS. Exit status 1 unless
mute=0, skull_exits=0, every jaw closed within 250 ms of a loss, both RSS growths < 5 %, both
fds growths <= 2, every idle period brought an attract line and the stuck button was reported
and freed once. ``SHOW_DEBUG=1`` prints every step; ``SHOW_TRACEMALLOC=1`` what grew in the
skull's Python memory between the two samples.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import logging
import multiprocessing
import os
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import HostProcess, skull, unwind_on_sigterm  # noqa: E402
from memory import serve_workload  # noqa: E402

from host.config import FallbackConfig  # noqa: E402
from host.fakes.workload import QUESTION, question_wav  # noqa: E402
from skull import events as ev  # noqa: E402
from skull.machine import State  # noqa: E402

JAW_CLOSED_MAX_MS = 250.0
STUCK_S = 5.0
"""[button] stuck_s of the show's skull (the shortest the config allows)"""
ATTRACT_EVERY_MIN = 0.1
"""[idle] attract_every_min of the show's skull (the shortest the config allows: 6 s)"""


def show_config(cfg):
    """The show's skull: attract lines after 6 s with nobody, idle jaw and breathing LED, and a
    button reported stuck after 5 s."""
    return dataclasses.replace(
        cfg, idle=dataclasses.replace(cfg.idle, attract_every_min=ATTRACT_EVERY_MIN, idle_jaw=True, led_breathe=True),
        button=dataclasses.replace(cfg.button, stuck_s=STUCK_S))
T0 = time.monotonic()


def debug(what: str) -> None:
    if os.environ.get("SHOW_DEBUG"):
        print(f"# {time.monotonic() - T0:7.1f} s  {what}", flush=True)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class FlakyProxy:
    """A TCP proxy on loopback in front of ``upstream_port`` (changeable while it runs: a
    restarted host listens elsewhere). :meth:`cut` aborts every connection at once;
    :meth:`stall` forwards nothing, either way, for a while, leaving the connections open."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.cuts = self.stalls = 0

    async def start(self) -> "FlakyProxy":
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        self.cuts += 1
        for a, b in list(self._pairs):
            a.transport.abort()
            b.transport.abort()
        self._pairs.clear()

    async def stall(self, seconds: float) -> None:
        self.stalls += 1
        self._flowing.clear()
        try:
            await asyncio.sleep(seconds)
        finally:
            self._flowing.set()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:  # no host right now: the skull sees its connection refused-like close
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


class JawWatch:
    """How long the jaw took to close after a link loss: polls the servo every 2 ms."""

    def __init__(self, agent):
        self.agent = agent
        self.closed_after_ms: list[float] = []

    async def after_loss(self, lost_at: float, give_up_s: float = 5.0) -> float:
        jaw = self.agent.body.jaw
        while time.monotonic() - lost_at < give_up_s:
            if not jaw.attached or jaw.opening <= 0.0:
                ms = max(0.0, (time.monotonic() - lost_at) * 1000.0)
                self.closed_after_ms.append(ms)
                return ms
            await asyncio.sleep(0.002)
        self.closed_after_ms.append(give_up_s * 1000.0)
        return give_up_s * 1000.0


class Night:
    """The show: turns, and the trouble scheduled between and inside them."""

    def __init__(self, args, host: HostProcess, proxy: FlakyProxy, workdir: Path, config_text: str):
        self.args, self.host, self.proxy = args, host, proxy
        self.workdir, self.config_text = workdir, config_text
        self.rng = random.Random(args.seed)
        self.stats = collections.Counter()
        self.fallbacks = set(vars(FallbackConfig()).values())
        self.host_rss_at_life_end: list[int] = []
        self.host_life_turns: list[int] = []
        self.host_fds_at_life_end: list[int] = []
        self.mutes: list[str] = []
        self.press_line = False
        """the last press found the link lost (or lost it before a word) and heard a line of the skull's own"""
        self.unheard: list[str] = []
        """presses that started no recording, with the skull's state before and after"""
        """what became of each turn nobody heard anything in"""
        self.lives = 0
        self.played_s = 0.0
        self.host_start_s: list[float] = []
        self.waits_s: list[float] = []
        """before each turn, how long the skull took to be idle (reconnecting after trouble)"""

    def next_kill(self, now: int) -> int:
        k = self.args.kill_every
        return now + max(2, round(k * self.rng.uniform(0.8, 1.2)))

    def host_life_ends(self) -> None:
        self.host_rss_at_life_end.append(self.host.rss_kib())
        self.host_life_turns.append(self.stats["turns"] - sum(self.host_life_turns))
        self.host_fds_at_life_end.append(_fds(self.host.proc.pid))

    async def kill_host(self, watch: JawWatch) -> None:
        """SIGKILL the host (mid-answer), and measure how long the jaw takes to close."""
        self.host_life_ends()
        lost_at = time.monotonic()
        self.host.proc.kill()
        await asyncio.to_thread(self.host.proc.wait)  # reaped off the loop: the skull goes on meanwhile
        self.host.log.close()
        self.stats["host_restarts"] += 1
        await watch.after_loss(lost_at)

    async def restart_host(self, agent) -> None:
        """While there is no host a visitor or two press; then a new host starts."""
        for _ in range(self.rng.randint(1, 2)):
            await self.offline_press(agent)
        self.lives += 1
        t0 = time.monotonic()
        self.host = await asyncio.to_thread(HostProcess, self.config_text, self.workdir, f"host-{self.lives}")
        self.host_start_s.append(time.monotonic() - t0)
        self.proxy.upstream_port = self.host.port

    async def offline_press(self, agent) -> None:
        """A press with no host: the skull must say something (a line of its own)."""
        self.stats["turns"] += 1
        self.stats["offline_presses"] += 1
        debug("offline press")
        heard = await self.press(agent, offline=True)
        debug(f"offline press: {'a line' if heard else 'mute'}")
        if heard:
            self.stats["spoken"] += 1
            self.stats["offline_lines"] += 1
            self.stats["offline_press_lines"] += 1
        else:
            self.stats["mute"] += 1

    async def press(self, agent, offline: bool = False):
        """Press, speak the question, release; wait for the answer to finish (or, offline, for
        the skull's own line). Returns what was played: the turn record, True for a line of its
        own, or None when the skull stayed mute."""
        pin = agent.body.panel.button.pin
        loop = asyncio.get_running_loop()
        if offline:
            # no host: no question is recorded; the skull should say a line of its own at the press
            played_before = self.played_s
            pin.drive_low()
            deadline = loop.time() + 3.0
            while self.played_s == played_before and loop.time() < deadline:
                await asyncio.sleep(0.01)
            pin.drive_high()
            line_s = self.played_s - played_before
            await asyncio.sleep(line_s / self.args.speed + 0.3)  # let it finish
            return line_s > 0
        spoken = asyncio.Event()
        agent.body.mic.on_finished = lambda: loop.call_soon_threadsafe(spoken.set)
        last_before = agent.finished[-1] if agent.finished else None  # agent.finished keeps a few only
        before = self.skull_state(agent)
        lines_before = self.stats["said_offline"]
        self.press_line = False
        pin.drive_low()
        # the question is spoken; unless the link was lost just as the button went down (a cut a
        # moment ago, not yet noticed when the visitor pressed): then the skull says a line of its own
        deadline = loop.time() + 20
        while not spoken.is_set() and self.stats["said_offline"] == lines_before and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if not spoken.is_set() and self.stats["said_offline"] == lines_before:
            # the press started no recording and no line: say in what state it found the skull
            self.unheard.append(f"at the press {before}; 20 s later {self.skull_state(agent)}")
            print(f"# a press that started no recording: {self.unheard[-1]}", flush=True)
        pin.drive_high()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            if self.stats["said_offline"] > lines_before:  # the link went before a word of the answer
                self.press_line = True
                while agent.machine.saying and loop.time() < deadline:
                    await asyncio.sleep(0.01)
                return agent.finished[-1] if agent.finished and agent.finished[-1] is not last_before else None
            if agent.finished and agent.finished[-1] is not last_before and agent.state is not State.THINKING:
                return agent.finished[-1]
            if agent.state is State.OFFLINE:
                await asyncio.sleep(0.05)  # the skull's own line, if it says one, is queued with the loss
                if self.stats["said_offline"] == lines_before:
                    return None
            await asyncio.sleep(0.01)
        return None

    @staticmethod
    def skull_state(agent) -> str:
        guards = "; ".join(f"button down={g.down} stuck={g.stuck}" for g in agent.guards.values())
        return (f"{agent.state.name} turn {agent.machine.turn} saying={agent.machine.saying} "
                f"connected={agent.link.connected} {guards}")

    def count_playing(self, agent) -> None:
        """Count the seconds of sound the skull queues for its speaker, whatever queues it."""
        timeline = agent.body.player.timeline
        add = timeline.add

        def counting(samples, rate, *more, **named):
            self.played_s += len(samples) / rate
            return add(samples, rate, *more, **named)
        timeline.add = counting

    def count_events(self, agent) -> None:
        """Lines the skull said of its own (by kind), and the stuck button's reports."""
        def said(e):
            self.stats[f"said_{e.kind}"] += 1
        agent.events.subscribe(said, ev.LineSaid)
        agent.events.subscribe(lambda e: self.stats.update(["stuck_reports"]), ev.ButtonStuck)
        agent.events.subscribe(lambda e: self.stats.update(["stuck_freed"]), ev.ButtonFreed)

    async def idle_period(self, agent) -> None:
        """Nobody comes for a while: the skull should say an attract line of its own."""
        before = self.stats["said_attract"]
        self.stats["idle_periods"] += 1
        debug("idle period")
        quiet_s = ATTRACT_EVERY_MIN * 60.0
        deadline = time.monotonic() + quiet_s + 3.0
        give_up = time.monotonic() + 60.0
        while self.stats["said_attract"] == before and time.monotonic() < min(deadline, give_up):
            if agent.state is not State.IDLE:  # a link stalled a moment ago drops now: the clock starts again
                deadline = time.monotonic() + quiet_s + 3.0
            await asyncio.sleep(0.05)
        if self.stats["said_attract"] > before:
            self.stats["idle_with_attract"] += 1
        while agent.machine.saying:  # let the line finish
            await asyncio.sleep(0.02)

    async def stuck_press(self, agent):
        """A bag leans on the button: it is down for longer than [button] stuck_s. The turn it
        started is answered, the skull reports the button once and ignores it until it comes up."""
        pin = agent.body.panel.button.pin
        last_before = agent.finished[-1] if agent.finished else None
        debug("stuck button")
        pin.drive_low()
        await asyncio.sleep(STUCK_S + 1.0)
        pin.drive_high()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if agent.finished and agent.finished[-1] is not last_before and agent.state is State.IDLE:
                return agent.finished[-1]
            await asyncio.sleep(0.01)
        return None

    async def run(self, agent) -> None:
        self.count_playing(agent)
        self.count_events(agent)
        watch = JawWatch(agent)
        self.watch = watch
        kill_at = self.next_kill(0)
        stuck_at = max(2, self.args.turns // 2)
        turn = 0
        self.samples = {}
        while turn < self.args.turns:
            waited = time.monotonic()
            while agent.state is not State.IDLE:
                await asyncio.sleep(0.02)
            self.waits_s.append(time.monotonic() - waited)
            turn += 1
            if turn % self.args.idle_every == 0 and agent.link.connected:
                await self.idle_period(agent)
            if turn == stuck_at:
                self.stats["turns"] += 1
                rec = await self.stuck_press(agent)
                debug(f"stuck button: {rec.outcome if rec else 'nothing'}")
                self.tally(rec, None)
                continue
            self.stats["turns"] += 1
            trouble = None
            if turn >= kill_at:
                trouble, kill_at = "kill", self.next_kill(turn)
            elif self.rng.random() < self.args.cut_rate:
                trouble = "cut"
            elif self.rng.random() < self.args.stall_rate:
                trouble = "stall"
            mid = asyncio.create_task(self.trouble_mid_answer(agent, trouble, watch)) if trouble else None
            debug(f"turn {turn} ({trouble or 'calm'}): press")
            rec = await self.press(agent)
            debug(f"turn {turn}: {rec.outcome if rec else 'nothing'}{' and a line of its own' if self.press_line else ''}")
            if mid is not None:
                await mid
            if trouble == "kill":
                await self.restart_host(agent)
            self.tally(rec, trouble, self.press_line)
            if turn == max(1, min(100, self.args.turns // 10)):
                self.samples["start"] = (_rss_kib(os.getpid()), _fds(os.getpid()))
                if tracemalloc.is_tracing():
                    self.traced = tracemalloc.take_snapshot()
            if turn % self.args.report_every == 0:
                print(f"  {turn:5d} turns  spoken {self.stats['spoken']}  mute {self.stats['mute']}  "
                      f"host restarts {self.stats['host_restarts']}  jaw closed within "
                      f"{max(watch.closed_after_ms, default=0):.0f} ms  skull RSS {_rss_kib(os.getpid())} KiB",
                      flush=True)
        self.samples["end"] = (_rss_kib(os.getpid()), _fds(os.getpid()))
        if tracemalloc.is_tracing() and getattr(self, "traced", None) is not None:
            grew = tracemalloc.take_snapshot().compare_to(self.traced, "lineno")
            print("# SHOW_TRACEMALLOC: what grew since the first sample", flush=True)
            for stat in grew[:15]:
                print(f"#   {stat}", flush=True)
        self.host_life_ends()

    def tally(self, rec, trouble: str | None, line: bool = False) -> None:
        """One turn counted: ``rec`` its record (None: no turn ended), ``line`` True when the
        link went before a word of the answer and the skull said a line of its own instead."""
        spoken = [seg.text for seg in rec.in_order()] if rec else []
        if rec is not None and spoken:
            self.stats["spoken"] += 1
            if any(text in self.fallbacks for text in spoken):
                self.stats["fallbacks"] += 1
            elif rec.outcome == "answered":
                self.stats["answered"] += 1
        elif line:
            self.stats["spoken"] += 1
            self.stats["offline_lines"] += 1
            self.stats["lost_before_a_word"] += 1
        else:
            self.stats["mute"] += 1
            if trouble is not None:
                self.stats["cut_before_a_word"] += 1  # the link went before the answer's first word
            self.mutes.append(f"{self.stats['turns']} ({trouble or 'calm'}: "
                              f"{rec.outcome if rec else 'no turn ended'}, {len(spoken)} sentences)")

    async def trouble_mid_answer(self, agent, trouble: str, watch: JawWatch) -> None:
        """Wait for the answer's first sound, then let the trouble happen a moment into it."""
        deadline = time.monotonic() + 20
        while agent.state is not State.SPEAKING and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await asyncio.sleep(self.rng.uniform(0.0, 0.3))
        if trouble == "kill":
            await self.kill_host(watch)
        elif trouble == "cut":
            lost_at = time.monotonic()
            self.proxy.cut()
            await watch.after_loss(lost_at)
        else:
            stall = asyncio.create_task(self.proxy.stall(self.args.stall_s))
            while agent.state is not State.OFFLINE and not stall.done():
                await asyncio.sleep(0.005)
            if agent.state is State.OFFLINE:
                await watch.after_loss(time.monotonic())
            await stall


async def night(args, host, workdir, config_text) -> tuple[Night, bool]:
    proxy = await FlakyProxy(host.port).start()
    agent = skull(proxy.port, "showskull", mic_speed=args.speed, play_speed=args.speed,
                  question=workdir / "question.wav", tweak=show_config)
    show = Night(args, host, proxy, workdir, config_text)
    task = asyncio.create_task(agent.run())
    if os.environ.get("SHOW_DEBUG"):
        async def tell():
            while True:
                await asyncio.sleep(5)
                debug(f"state {agent.state.name} turn {agent.machine.turn} connected {agent.link.connected} "
                      f"proxy->{proxy.upstream_port} host {show.host.port} alive {show.host.alive()}")
                if agent.state is State.IDLE:
                    for t in asyncio.all_tasks():
                        code = getattr(t.get_coro(), "cr_code", None)
                        if code is not None and code.co_filename == __file__ and code.co_name != "tell":
                            t.print_stack(limit=8)
        asyncio.create_task(tell())
    try:
        while agent.state is not State.IDLE:
            await asyncio.sleep(0.02)
        await show.run(agent)
        exited = task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await proxy.stop()
    show.stats["link_cuts"], show.stats["stalls"] = proxy.cuts, proxy.stalls
    return show, exited


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=1000)
    ap.add_argument("--kill-every", type=int, default=100, help="SIGKILL the host about every N turns (default 100)")
    ap.add_argument("--cut-rate", type=float, default=0.02, help="share of turns whose link is cut mid-answer")
    ap.add_argument("--stall-rate", type=float, default=0.01, help="share of turns whose link stalls mid-answer")
    ap.add_argument("--stall-s", type=float, default=10.0, help="how long a stalled link forwards nothing")
    ap.add_argument("--speed", type=float, default=32.0, help="the question and the answer play this much faster")
    ap.add_argument("--scale", type=float, default=0.15, help="multiply every fake server delay by this")
    ap.add_argument("--idle-every", type=int, default=100,
                    help="every N turns nobody comes for a while (an attract line is due)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--report-every", type=int, default=50)
    args = ap.parse_args()
    unwind_on_sigterm()
    if os.environ.get("SHOW_TRACEMALLOC"):
        tracemalloc.start(8)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("skull").setLevel(logging.CRITICAL if not os.environ.get("SHOW_DEBUG") else logging.INFO)
    misbehaving = dict(jitter=0.3, failure_rate=0.1, crash_rate=0.02, warmup_s=2.0, seed=args.seed)
    # the fake servers in a process of their own, as model servers are: they keep their last
    # requests, audio included, which is no part of the skull's memory
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    fakes = ctx.Process(target=serve_workload, args=(args.scale, child), kwargs=misbehaving, name="fake-servers",
                        daemon=True)
    fakes.start()
    t0 = time.monotonic()
    try:
        config_text = parent.recv()
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            # a visitor's short question (the workload's second sentence, 2 s): a night is mostly
            # short questions, and the host's voice activity detection costs CPU per second heard
            question_wav(workdir / "question.wav", sentences=QUESTION[1:])
            host = HostProcess(config_text, workdir, "host-0")
            try:
                print(f"show: {args.turns} turns, host killed about every {args.kill_every}, link cut on "
                      f"{args.cut_rate:.0%} and stalled {args.stall_s:g} s on {args.stall_rate:.0%} of turns, fake "
                      f"servers failing {misbehaving['failure_rate']:.0%} / crashing {misbehaving['crash_rate']:.0%}",
                      flush=True)
                show, exited = asyncio.run(night(args, host, workdir, config_text))
            finally:
                show_host = locals().get("show")
                (show_host.host if show_host else host).stop()
    finally:
        parent.send("stop")
        fakes.join(10)
    s = show.stats
    (rss0, fds0), (rss1, fds1) = show.samples.get("start", show.samples["end"]), show.samples["end"]
    lives = show.host_rss_at_life_end
    # the host's memory: the fullest life against the first; a last life cut short by the end of
    # the night (under half the turns of a life) has not had the time to fill what the others did
    whole = [rss for rss, n in zip(lives, show.host_life_turns) if n >= args.kill_every / 2] or lives
    host_growth = 100.0 * (max(whole) - whole[0]) / whole[0] if len(whole) > 1 and whole[0] else 0.0
    jaw_max = max(show.watch.closed_after_ms, default=0.0)
    figures = dict(turns=s["turns"], spoken=s["spoken"], answered=s["answered"], fallbacks=s["fallbacks"],
                   offline_lines=s["offline_lines"], mute=s["mute"], skull_exits=int(exited),
                   host_restarts=s["host_restarts"], link_cuts=s["link_cuts"], stalls=s["stalls"],
                   jaw_closed_after_loss_ms_max=round(jaw_max), rss_growth_pct=round(100.0 * (rss1 - rss0) / rss0, 1),
                   host_rss_growth_pct=round(host_growth, 1), fds_growth=fds1 - fds0,
                   host_fds_growth=show.host_fds_at_life_end[-1] - show.host_fds_at_life_end[0],
                   attract_lines=s["said_attract"], idle_periods=s["idle_periods"],
                   stuck_reports=s["stuck_reports"], stuck_freed=s["stuck_freed"])
    print(f"# {time.monotonic() - t0:.0f} s; host RSS at the end of each life (KiB): {lives} "
          f"after {show.host_life_turns} turns; "
          f"mute presses with no host: {s['offline_presses'] - s['offline_press_lines']} of {s['offline_presses']}, "
          f"links lost before a word: {s['lost_before_a_word']} answered by a line of its own, "
          f"{s['cut_before_a_word']} mute; host starts took "
          f"{', '.join(f'{x:.1f}' for x in show.host_start_s) or '-'} s; longest wait for an idle skull "
          f"{max(show.waits_s, default=0):.1f} s; lines of its own said: "
          f"{ {k[5:]: v for k, v in s.items() if k.startswith('said_')} }; host open files at the end of each life: "
          f"{show.host_fds_at_life_end}; mute turns: {', '.join(show.mutes) or 'none'}", flush=True)
    for what in show.unheard:
        print(f"# a press that started no recording: {what}", flush=True)
    print(" ".join(f"{k}={v}" for k, v in figures.items()))
    ok = (figures["mute"] == 0 and not exited and jaw_max <= JAW_CLOSED_MAX_MS and figures["rss_growth_pct"] < 5
          and host_growth < 5 and figures["fds_growth"] <= 2 and figures["host_fds_growth"] <= 2
          and s["idle_with_attract"] == s["idle_periods"] and figures["stuck_reports"] == figures["stuck_freed"] == 1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
