"""The agent: runs the talk state machine against real (or simulated) devices and the link.

Device threads (button, microphone, speaker) post typed events into the event loop; the
machine decides; each action it emits goes to its handler in :data:`Agent.HANDLERS` (one per
action type, checked when this module is imported, so an action without a handler fails at
once, not at a show).

Supervised: a failure in a device, a message handler or the link is logged once with its
context, the machine gets a :class:`~skull.machine.Fault` (the jaw closes on the spot, audio
and mic stop, the LED goes off, the turn ends "failed") and the skull carries on; whatever
escapes the session loop itself restarts it with backoff. Only :class:`~skull.link.LinkFatal`
(the host refused the token, the protocol or the hello) stops the agent. Whatever happens,
:meth:`Agent.close` leaves the hardware safe: playback stopped, jaw closed and detached, LED off.

Views subscribe to :attr:`Agent.events` (see :mod:`skull.events`); the per-turn log line and
the recording of turns are subscribers too.

Triggers (:mod:`skull.triggers`) start and end turns: the button always, and a hands-free one
when ``[listen] trigger`` names it. With a hands-free trigger the mic stays open from the first
time the skull is ready: every chunk feeds the mic meter and a short ring of recent audio (the
turn's pre-roll), and goes to the hands-free trigger unless the skull is deaf to itself (while
it thinks or speaks, and for the reply's echo tail). A turn belongs to the trigger that started
it: only that one ends it, so a pause never ends a turn the button holds; a hands-free trigger
only starts a turn from idle, so only the button interrupts a reply.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import shutil
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import events as ev
from . import machine as m
from .button import ButtonGuard, Press, Release
from .core import protocol as p
from .core.bus import Bus
from .config import SkullConfig
from .idle import IdleLife
from .jaw.sync import JawFollower
from .lines import Line, LineTag, OwnVoice, silent_jaw_line
from .link import Link, LinkFatal
from .ports import Camera, Jaw, Mic, Panel, Speaker
from .record import SentCommand, TurnRecord, write_turn
from .report import StatusReport
from .segment import ReplySegment, SegmentTag
from .core.faults import FaultLog
from .core.jsonlog import JsonLines
from .core.wav import pcm16_to_audio, to_mono
from .supervisor import Supervisor
from .triggers import PREROLL_KEEP_S, Trigger, make_triggers

log = logging.getLogger("skull.agent")

HOST_ERRORS_LOGGED = 5
HOST_ERRORS_WINDOW_S = 10.0
"""at most HOST_ERRORS_LOGGED of the host's error messages are logged per HOST_ERRORS_WINDOW_S"""

REPLY_MAX_S = 180.0
"""the most speech one turn plays (a host caps its replies at 150 s): sentences past it are
dropped, so a host that never stops sending cannot fill the skull's memory"""

VIEW_HZ = 10.0
"""how often jaw and level events are sampled for views (only changes are published)"""

KEEP_FINISHED = 20
"""ended turns kept in ``Agent.finished`` (and folders in ``Agent.recorded``); only the newest
keeps its audio, picture and jaw commands, so the skull's memory does not grow with turns"""


@dataclass
class Body:
    """The skull's devices, each behind its port (:mod:`skull.ports`). ``closers``: what else
    was opened to make them (a serial board), closed after the devices."""
    panel: Panel
    jaw: Jaw
    mic: Mic
    player: Speaker
    camera: Camera | None = None
    closers: list = field(default_factory=list)


def _dbfs(x: np.ndarray) -> float:
    if not len(x):
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return max(-120.0, 20.0 * math.log10(rms)) if rms > 0 else -120.0


@dataclass(frozen=True)
class _Edge:
    """A trigger pressed (``down``) or released; ``onset``: the mic stream position where the
    speech that made a hands-free trigger press began."""
    trigger: Trigger
    down: bool
    onset: int | None = None
    at: float = 0.0
    """time.monotonic() when the contacts moved (the button's debounce counts from it)"""


@dataclass(frozen=True)
class _GuardDue:
    """Time for ``trigger``'s :class:`ButtonGuard` to decide (a bounce window ended, or stuck)."""
    trigger: Trigger


class Agent:
    def __init__(self, config: SkullConfig, body: Body, *, record_dir: str | Path | None = None,
                 reply_timeout_s: float = 90.0, triggers: list[Trigger] | None = None,
                 turn_log: JsonLines | None = None, disk_usage=shutil.disk_usage, idle: IdleLife | None = None):
        """``triggers``: what starts and ends a turn (default: the panel's push button and the
        hands-free trigger ``[listen] trigger`` names). ``turn_log``: where each finished turn
        goes as one JSON line (closed with the agent). ``disk_usage``: ``shutil.disk_usage`` or
        a stand-in (tests), asked before each turn is recorded ([record] min_free_mb). ``idle``:
        the idle life (default: from ``[idle]`` on the wall clock; tests give one with a fake clock)."""
        self.config, self.body = config, body
        self.triggers = triggers if triggers is not None else make_triggers(config.listen, body.panel.button,
                                                                            int(body.mic.rate))
        self.hands_free = [t for t in self.triggers if getattr(t, "hands_free", False)]
        """the triggers that listen to the mic; when there is one the mic stays open"""
        self.machine = m.TalkMachine()
        self.events: Bus[ev.SkullEvent] = Bus("skull")
        self.faults = FaultLog(log, "; the skull goes on")
        self.link = Link(config.link, self._on_message, self._on_link, play_rate=int(body.player.rate),
                         jaw_shape=config.shape.to_dict(), on_fault=self._fault)
        self.follower = JawFollower(body.player, body.jaw, frame_hz=config.jaw.frame_hz,
                                    lead_ms=config.calibration.lead_ms, mode=config.jaw.mode, shape=config.shape)
        # the skull's own voice: the host's lines on disk, loaded now so a reboot with no host still speaks
        self.voice = OwnVoice(config.offline, config.link.name, self._lines_kept, faults=self._voice_fault)
        self.link.lines = self.voice.set_id
        self.idle = idle or IdleLife(config.idle)
        self.supervisor = Supervisor("the skull's session", fatal=(LinkFatal,), faults=self.faults,
                                     min_s=config.link.reconnect_min_s, max_s=config.link.reconnect_max_s)
        self.record_dir = Path(record_dir) if record_dir else None
        self.reply_timeout_s = reply_timeout_s
        self.records: dict[int, TurnRecord] = {}
        self.finished: list[TurnRecord] = []  # ended turns, newest last
        self.recorded: list[Path] = []  # the newest KEEP_FINISHED folders written
        self.turn_log = turn_log
        self.disk_usage = disk_usage
        self.recording_paused = False
        """the record folder's disk is below [record] min_free_mb: turns are not recorded"""
        self.guards: dict[Trigger, ButtonGuard] = {}
        """the button's faults (chatter, stuck) for each trigger that is a button"""
        self._guard_due: dict[Trigger, asyncio.TimerHandle] = {}
        self.last_error = ""
        self._host_errors = (0.0, 0, 0)  # (window start, logged in it, not logged since the last line)
        self._reply_s = (0, 0.0)  # (turn, seconds of its speech taken so far)
        self.led = m.LedPattern.OFF
        self._streaming: int | None = None  # turn whose mic audio goes to the host
        self._mic_dbfs = -120.0
        # hands-free: the always-open mic (positions count samples of its stream)
        self._owner: Trigger | None = None  # the trigger that started the current turn
        self._onset: int | None = None  # where the speech that started it began
        self._recording: int | None = None  # the turn the open mic's audio goes to
        self._ring: collections.deque = collections.deque()  # (position, chunk): the pre-roll
        self._mic_pos = 0  # the position of the next sample (written by the mic's thread)
        self._mic_running = False
        self._mic_retry: asyncio.TimerHandle | None = None
        self._mic_retry_s = 1.0
        self._ears_open = False  # idle or listening: the hands-free triggers get the mic
        self._deaf_until = 0  # ... from this position on (the echo tail of the reply)
        self._events: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._closed = False
        self._recovering = False
        self.turn_ended = asyncio.Event()
        self.monitor = None
        """records what the speaker really played, for heard.wav, when recording on a sound server"""
        self._heard_due: collections.deque = collections.deque()  # (when, turn folder, release time)
        self.muted = False
        """the operator muted the skull (the host's ``command``): presses and attract lines do nothing"""
        self._puppet: Line | None = None  # the operator's typed line, until it is said
        self.status = StatusReport(self.link, lambda: self.muted)
        """the skull's status for the operator's dashboard (to a host that asks for it)"""
        self.events.subscribe(self.status, ev.StateChanged, ev.LedChanged, ev.JawMoved, ev.Levels)
        self.events.subscribe(self._log_turn, ev.TurnEnded)
        if self.record_dir is not None:
            self.events.subscribe(self._record_turn, ev.TurnEnded)
        if self.turn_log is not None:
            self.events.subscribe(self._log_turn_json, ev.TurnEnded)

    # --- events from threads ------------------------------------------------------------

    def post(self, event: m.Event) -> None:
        """Thread-safe: queue an event for the machine."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    @property
    def state(self) -> m.State:
        return self.machine.state

    async def run(self) -> None:
        """Run until cancelled or a fatal link error (LinkFatal, re-raised); any other failure
        is survived. Always leaves the hardware safe."""
        self._loop = asyncio.get_running_loop()
        self._events = asyncio.Queue()
        player, mic = self.body.player, self.body.mic
        player.timeline.on_start = self._segment_started
        player.timeline.on_drained = lambda: self.post(m.Drained())
        mic.on_error = lambda exc: self._loop.call_soon_threadsafe(self._mic_failed, exc)
        try:
            for trigger in self.triggers:
                if getattr(trigger, "hands_free", False):
                    trigger.on_error = lambda exc, t=trigger: self._loop.call_soon_threadsafe(
                        self._fault, f"the {t.name} trigger", exc)
                else:
                    self._guard(trigger)
                trigger.start(*self._edges(trigger))
            self._set_led(m.LedPattern.OFFLINE)
            player.start()
            if self.record_dir is not None:
                self._open_monitor()
            self.follower.start()
            if self.voice.lines is not None:
                self.events.emit(ev.LinesCached(self.voice.set_id, self.voice.lines.kinds, "disk"))
            if self.hands_free:  # hands-free presses reach the skull's own voice even with no host
                self._ears_open = True
                self._open_mic()
            views = asyncio.create_task(self._views(), name="skull-views")
            idle = asyncio.create_task(self._idle_life(), name="skull-idle")
            try:
                await self.supervisor.run(self._session, self._recover)
            finally:
                views.cancel()
                idle.cancel()
        finally:
            self.close()

    async def _session(self) -> None:
        """The link and the machine's event loop, until one of them fails."""
        link_task = asyncio.create_task(self.link.run(), name="link")
        try:
            while True:
                get = asyncio.create_task(self._events.get())
                done, _ = await asyncio.wait({get, link_task}, return_when=asyncio.FIRST_COMPLETED)
                if link_task in done:
                    get.cancel()
                    link_task.result()  # raises LinkFatal (or whatever ended it)
                    return
                item = get.result()
                if isinstance(item, _Edge):
                    self._edge(item)
                elif isinstance(item, _GuardDue):
                    self._guarded(item.trigger, self.guards[item.trigger].poll(time.monotonic()))
                else:
                    self._step(item)
        finally:
            if not link_task.done():
                link_task.cancel()
                try:
                    await link_task
                except asyncio.CancelledError:
                    pass  # the cancellation asked for just above
                except Exception as exc:
                    self.faults("the link, while stopping", exc)

    def _recover(self, exc: BaseException) -> None:
        """The session failed: safe at once; the machine is offline until the link is back."""
        self._fault("the skull's session", exc, logged=True)
        if self.machine.state is not m.State.OFFLINE:
            self._step(m.Disconnected())

    def _make_safe(self) -> None:
        """The hardware safe without the machine (when the machine itself is what failed): jaw
        shut, audio and mic stopped, LED off. Each step is tried whatever the others do."""
        b = self.body
        for what, step in (("jaw", self.follower.close_now), ("playback", b.player.timeline.clear),
                           ("mic", self._stop_recording), ("led", lambda: self._set_led(m.LedPattern.OFF))):
            try:
                step()
            except Exception as exc:
                self.faults(f"making the {what} safe", exc)

    def _step(self, event: m.Event) -> None:
        """One event through the machine, its actions carried out, the change published."""
        before = (self.machine.state, self.machine.turn)
        was_saying = self.machine.saying
        self._run_actions(self.machine.handle(event))
        if self.hands_free and was_saying != self.machine.saying:
            if self.machine.saying:  # deaf to its own line, as to its replies
                self._deaf_until = 2 ** 62
            else:
                self._deaf_for_echo()
        if isinstance(event, (m.ButtonDown, m.Connected)):
            self.idle.visitor()  # a visitor, or a fresh start: the attract clock starts again
        if isinstance(event, m.Drained) and self.machine.waiting_for_done:
            # all of the reply so far has played: more speech or done must come in time
            self._later(self.config.link.done_timeout_s, m.ReplyTimeout(self.machine.turn, self.machine.segments))
        if (self.machine.state, self.machine.turn) != before:
            self._listen_in(before[0], self.machine.state)
            self.events.emit(ev.StateChanged(self.machine.state, self.machine.turn))

    # --- triggers ---------------------------------------------------------------------------

    def _edges(self, trigger: Trigger):
        """The ``press`` and ``release`` given to ``trigger``: thread-safe, queued for the machine."""
        def press(onset: int | None = None) -> None:
            self.post(_Edge(trigger, True, onset, time.monotonic()))

        def release() -> None:
            self.post(_Edge(trigger, False, None, time.monotonic()))
        return press, release

    def _edge(self, e: _Edge) -> None:
        """A trigger's raw edge: a button's goes through its guard first (:mod:`skull.button`)."""
        guard = self.guards.get(e.trigger)
        if guard is None:
            self._counted(e)
        else:
            self._guarded(e.trigger, guard.edge(e.down, e.at))

    def _guard(self, trigger: Trigger) -> None:
        """Put a :class:`ButtonGuard` ([button] debounce_ms, stuck_s) between a button and the machine."""
        b = self.config.button
        guard = self.guards[trigger] = ButtonGuard(b.debounce_ms / 1000.0, b.stuck_s, now=time.monotonic(),
                                                   down_at_start=_pressed(trigger))
        if guard.down:
            log.warning("the %s is down as the skull starts: it starts no turn until it is released", trigger.name)
        self._guard_later(trigger)

    def _guarded(self, trigger: Trigger, outcome: list) -> None:
        """What a button's guard decided: presses and releases for the machine, stuck and freed
        reported; then the guard's next decision scheduled."""
        for o in outcome:
            if isinstance(o, (Press, Release)):
                self._counted(_Edge(trigger, isinstance(o, Press)))
            elif isinstance(o, ev.ButtonStuck):
                log.warning("the %s has been held down for %.0f s: it looks stuck, and is ignored until it comes up "
                            "(free it, or check its wiring; [button] stuck_s sets how long counts as stuck)",
                            trigger.name, o.held_s)
                self.events.emit(o)
            elif isinstance(o, ev.ButtonFreed):
                log.info("the %s came up after %.0f s down: it starts turns again", trigger.name, o.held_s)
                self.events.emit(o)
        self._guard_later(trigger)

    def _guard_later(self, trigger: Trigger) -> None:
        old = self._guard_due.pop(trigger, None)
        if old is not None:
            old.cancel()
        due = self.guards[trigger].due()
        if due is not None and not self._closed:
            self._guard_due[trigger] = self._loop.call_later(max(0.0, due - time.monotonic()),
                                                             self._events.put_nowait, _GuardDue(trigger))

    def _counted(self, e: _Edge) -> None:
        """A trigger pressed or released. A hands-free press starts a turn from idle only, and
        only with speech that began after the skull stopped being deaf to itself; the button
        starts one from idle, interrupts a reply, and takes over a hands-free turn it is pressed
        in. Only the trigger that owns the turn ends it."""
        s, hands_free = self.machine.state, getattr(e.trigger, "hands_free", False)
        if e.down and self.muted:
            log.info("the %s was pressed while the operator has the skull muted: no turn", e.trigger.name)
            return
        if e.down:
            if hands_free and s is m.State.OFFLINE and (e.onset is None or e.onset >= self._deaf_until):
                self._step(m.ButtonDown())  # no host: a line of the skull's own (never while one plays)
                return
            if hands_free and (s is not m.State.IDLE or (e.onset is not None and e.onset < self._deaf_until)):
                return
            if s is m.State.LISTENING:
                if not hands_free:
                    self._owner = e.trigger
                return
            if s is not m.State.OFFLINE:
                self._owner, self._onset = e.trigger, e.onset
            self._step(m.ButtonDown())
        elif e.trigger is self._owner and s is m.State.LISTENING:
            self._step(m.ButtonUp())

    def _listen_in(self, before: m.State, after: m.State) -> None:
        """The hands-free triggers hear the mic while idle, listening or offline; after the
        skull has spoken, only from ``echo_tail_s`` after its last sample was heard."""
        ears = after in (m.State.IDLE, m.State.LISTENING, m.State.OFFLINE)
        if ears and before in (m.State.THINKING, m.State.SPEAKING):
            self._deaf_for_echo()
        self._ears_open = ears
        if self.hands_free and after is m.State.IDLE and self._mic_retry is None:
            self._open_mic()

    def _deaf_for_echo(self) -> None:
        """The skull stops speaking: the mic starts a turn again only after the echo tail."""
        # the last sample handed to the speaker is heard latency_s later, the mic's latest chunk
        # may have ended up to a chunk ago, and the room echoes (docs/listening.md)
        tail_s = (getattr(self.body.player, "latency_s", 0.0) + self.config.audio.chunk_ms / 1000.0
                  + self.config.listen.echo_tail_s)
        self._deaf_until = self._mic_pos + int(tail_s * self.body.mic.rate)

    def _open_mic(self) -> None:
        """Hands-free: open the mic for good (when the skull is first ready, and again after it
        failed, with backoff)."""
        if self._mic_running or self._closed:
            return
        # a gap in the positions: the triggers start afresh and no pre-roll joins old sound to new
        self._mic_pos += int(self.body.mic.rate)
        try:
            self.body.mic.start(self._on_mic)
        except Exception as exc:
            self.last_error = self.faults("opening the microphone", exc)
            self._retry_mic_later()
            return
        self._mic_running, self._mic_retry_s = True, 1.0

    def _retry_mic_later(self) -> None:
        if self._mic_retry is None and not self._closed:
            delay, self._mic_retry_s = self._mic_retry_s, min(30.0, self._mic_retry_s * 2)
            self._mic_retry = self._loop.call_later(delay, self._retry_mic)

    def _retry_mic(self) -> None:
        self._mic_retry = None
        self._open_mic()

    def _mic_failed(self, exc: BaseException) -> None:
        if self.hands_free:
            self._mic_running = False
            self._retry_mic_later()
        self._fault("the microphone", exc)

    def _on_mic(self, chunk: bytes) -> None:
        """Hands-free, on the mic's thread: every chunk to the event loop (meter, pre-roll, the
        turn) and, unless the skull is deaf to itself, to the hands-free triggers."""
        pos = self._mic_pos
        self._mic_pos = pos + len(chunk) // 2
        self._loop.call_soon_threadsafe(self._heard, pos, chunk)
        if self._ears_open and pos >= self._deaf_until:
            for t in self.hands_free:
                t.hear(chunk, pos)

    def _heard(self, pos: int, chunk: bytes) -> None:
        self._mic_dbfs = _dbfs(np.frombuffer(chunk, "<i2").astype(np.float32) / 32768.0)
        ring = self._ring
        ring.append((pos, chunk))
        keep = int(PREROLL_KEEP_S * self.body.mic.rate)
        while ring and ring[0][0] < pos - keep:
            ring.popleft()
        if self._recording is not None:
            self._record_chunk(self._recording, chunk)

    def _since(self, onset: int) -> bytes:
        """The kept mic stream from position ``onset`` on (as far back as the ring reaches)."""
        out = bytearray()
        for pos, chunk in self._ring:
            if pos + len(chunk) // 2 > onset:
                out += chunk[max(0, onset - pos) * 2:]
        return bytes(out)

    def _stop_recording(self) -> None:
        """The turn's audio stops: the mic closes, or with a hands-free trigger stays open for it."""
        if self.hands_free:
            self._recording = None
        else:
            self.body.mic.stop()

    def _run_actions(self, actions: list[m.Action]) -> None:
        failed: tuple[str, BaseException] | None = None
        for action in actions:
            try:
                self.HANDLERS[type(action)](self, action)
            except Exception as exc:  # one failing device must not stop the skull
                device = self._device_of(action)
                self.last_error = self.faults(f"{type(action).__name__} ({device})", exc)
                failed = failed or (f"the {device}", exc)
        if failed is not None and not self._recovering:
            self._fault(*failed, logged=True)

    @staticmethod
    def _device_of(action: m.Action) -> str:
        return {m.MicStart: "microphone", m.MicStop: "microphone", m.Led: "LED", m.JawClose: "jaw",
                m.Play: "speaker", m.PlayLine: "speaker", m.StopPlayback: "speaker",
                m.Snapshot: "camera"}.get(type(action), "link")

    def _fault(self, what: str, exc: BaseException, logged: bool = False) -> None:
        """Something failed: log it once, then make the hardware safe and end the turn, at once
        (not behind queued events), so the jaw closes within a servo frame."""
        if not logged:
            self.last_error = self.faults(what, exc)
        self.events.emit(ev.Faulted(what, f"{type(exc).__name__}: {exc}"))
        if self._recovering:
            return
        self._recovering = True
        try:
            self._step(m.Fault(what))
        except Exception as again:  # the machine itself failed: safe without it
            self.faults("handling a fault", again)
            self._make_safe()
        finally:
            self._recovering = False

    # --- link callbacks -------------------------------------------------------------------

    async def _on_link(self, up: bool) -> None:
        if not up:
            self.voice.collector.reset()  # a set cut short by the loss is never kept
        self._step(m.Connected() if up else m.Disconnected())
        if up:
            self.status.send()  # the host sees at once what the skull is doing (and whether it is muted)
        if self.idle.host_changed(up) and not self.muted:
            self._step(m.IdleLine("greeting"))

    async def _on_message(self, msg: p.Message, payload: bytes | None) -> None:
        rec = self.records.get(getattr(msg, "turn", None))
        if isinstance(msg, p.Ack):
            self._step(m.AckListen(msg.turn) if msg.of == "listen" else m.AckStop(msg.turn))
        elif isinstance(msg, p.Heard):
            if rec:
                rec.transcript, rec.caption = msg.transcript, msg.caption
            self.events.emit(ev.Heard(msg.turn, msg.transcript, msg.caption))
        elif isinstance(msg, p.Speech):
            if msg.turn != self.machine.turn:
                return  # an old turn's late sentence
            turn, taken = self._reply_s if self._reply_s[0] == msg.turn else (msg.turn, 0.0)
            seconds = len(payload or b"") / max(1, msg.width * msg.channels * msg.rate)
            if taken + seconds > REPLY_MAX_S:
                if taken <= REPLY_MAX_S:
                    log.warning("turn %d: the host sent more than %g s of speech; the rest of the reply is dropped",
                                msg.turn, REPLY_MAX_S)
                self._reply_s = (turn, REPLY_MAX_S + 1.0)
                return
            self._reply_s = (turn, taken + seconds)
            segment = ReplySegment.from_speech(msg, payload)  # decoded once: played and recorded
            if rec and msg.turn == self.machine.turn:
                rec.segments.append(segment)
            self._step(m.SegmentArrived(msg.turn, segment))
        elif isinstance(msg, p.Line):
            self.voice.received(msg, payload or b"")
        elif isinstance(msg, p.Command):
            self._command(msg.action)
        elif isinstance(msg, p.Say):
            samples = to_mono(pcm16_to_audio(payload or b"", msg.rate, msg.channels))
            self._puppet = Line("puppet", msg.text, samples, msg.rate, np.asarray(msg.jaw, np.float32), msg.jaw_fps)
            log.info("the operator has the skull say: %r", _cut(shown(msg.text), 80))
            self._step(m.SayNow("puppet"))
        elif isinstance(msg, p.Done):
            if rec:
                rec.reply = msg.reply
                rec.timings_ms.update(_timings(msg.timings_ms))
            self._step(m.HostDone(msg.turn))
        elif isinstance(msg, p.Error):
            # the host's words go to a console and a log: no escape sequence or line break of
            # theirs may recolour the terminal or forge a log line
            said = f"{shown(msg.code, 40)}: {shown(msg.message)}"
            self._log_host_error(said)
            self.last_error = said
            if rec:
                rec.errors.append(said)

    def _command(self, action: str) -> None:
        """The operator's command from the host's dashboard (``command``)."""
        log.info("the operator: %s", action)
        if action in ("interrupt", "mute"):
            self._step(m.Interrupt())
        if action in ("mute", "unmute") and self.muted != (action == "mute"):
            self.muted = action == "mute"
            self.events.emit(ev.Muted(self.muted))
            self.status.send()
        elif action == "attract" and not self.muted:
            self._step(m.IdleLine("attract"))

    def _log_host_error(self, said: str) -> None:
        """A host's error, logged; a host that floods them gets HOST_ERRORS_LOGGED lines per
        HOST_ERRORS_WINDOW_S, and the next line logged says how many were left out."""
        now = time.monotonic()
        start, logged, left_out = self._host_errors
        if now - start >= HOST_ERRORS_WINDOW_S:
            start, logged = now, 0
        if logged >= HOST_ERRORS_LOGGED:
            self._host_errors = (start, logged, left_out + 1)
            return
        more = f" ({left_out} more errors from the host were not logged)" if left_out else ""
        log.warning("host: %s%s", said, more)
        self._host_errors = (start, logged + 1, 0)

    # --- actions: one handler per action type -------------------------------------------------

    def _set_led(self, pattern: m.LedPattern) -> None:
        if pattern is m.LedPattern.OFF and self.config.idle.led_breathe and self.machine.state is m.State.IDLE:
            pattern = m.LedPattern.BREATHE  # idle life: the LED breathes while the skull waits
        self.body.panel.set_led(pattern)
        if pattern is not self.led:
            self.led = pattern
            self.events.emit(ev.LedChanged(pattern))

    def _do_led(self, a: m.Led) -> None:
        self._set_led(a.pattern)

    def _record_limit_s(self) -> float:
        """[audio] max_record_s, or the host's shorter limit from its welcome (the host ends a
        recording there itself), but never under a second whatever a host says."""
        own = self.config.audio.max_record_s
        welcome = self.link.welcome
        host = welcome.max_record_s if welcome is not None else own
        if isinstance(host, (int, float)) and not isinstance(host, bool) and math.isfinite(host):
            return min(own, max(1.0, float(host)))
        return own

    def _do_mic_start(self, a: m.MicStart) -> None:
        mic = self.body.mic
        self.records[a.turn] = TurnRecord(a.turn, self.config.link.name, question_rate=mic.rate)
        self.follower.record = True
        self._later(self._record_limit_s(), m.RecordLimit(a.turn))
        if not self.hands_free:
            mic.start(lambda chunk, t=a.turn: self._loop.call_soon_threadsafe(self._mic_chunk, t, chunk))
            return
        # the mic is open already: the question starts where the speech that started it began
        # (the button's: at the press)
        if self._onset is not None:
            self.records[a.turn].question.extend(self._since(self._onset))
        self._onset, self._recording = None, a.turn
        self._open_mic()

    def _do_send_listen(self, a: m.SendListen) -> None:
        self.link.send(p.Listen(a.turn))

    def _do_snapshot(self, a: m.Snapshot) -> None:
        asyncio.create_task(self._snapshot(a.turn), name=f"snapshot-{a.turn}")

    def _do_stream_audio(self, a: m.StreamAudio) -> None:
        self._streaming = a.turn
        self.link.send(p.AudioStart(a.turn, int(self.body.mic.rate), 2, 1))
        rec = self.records.get(a.turn)
        if rec and rec.question:  # the pre-roll recorded before the host said yes
            self._send_audio(bytes(rec.question))

    def _do_mic_stop(self, a: m.MicStop) -> None:
        rec = self.records.get(a.turn)
        if rec:
            rec.released_at = time.monotonic()
        if not self.hands_free:
            self._mic_dbfs = -120.0
        self._stop_recording()

    def _do_send_stop(self, a: m.SendStop) -> None:
        self._streaming = None
        self.link.send(p.Stop(a.turn, a.reason))
        self._later(self.reply_timeout_s, m.ReplyTimeout(a.turn))

    def _do_play(self, a: m.Play) -> None:
        s = a.segment
        self.body.player.timeline.add(s.samples, s.rate, s.jaw, s.jaw_fps, tag=s.tag)

    def _do_play_line(self, a: m.PlayLine) -> None:
        if a.kind == "jaw":  # idle life: a small silent movement on the same jaw path
            line = silent_jaw_line(self.idle.rng)
            self.body.player.timeline.add(line.samples, line.rate, line.jaw * self.config.shape.max_open,
                                          line.jaw_fps, tag=LineTag("jaw", -1))
            return
        if a.kind == "puppet":  # the operator's line, sent by the host with say
            line, self._puppet = self._puppet, None
            if line is not None:
                self._say(line, "host")
            else:
                self.post(m.Drained())
            return
        line = self.voice.pick(a.kind)
        if line is not None:
            self._say(line, "cache")
        elif a.kind == "offline":  # no cached line: espeak-ng on the skull, the last resort
            asyncio.create_task(self._apologise(), name="espeak-apology")
        else:  # nothing to say of that kind: the skull stays as it was
            self.post(m.Drained())

    def _say(self, line, source: str) -> None:
        self.body.player.timeline.add(line.samples, line.rate, line.jaw, line.jaw_fps,
                                      tag=LineTag(line.kind, line.index))
        log.info("said a%s %s line (%s): %r", "n" if line.kind[0] in "aeiou" else "", line.kind, source,
                 _cut(line.text, 80))
        self.events.emit(ev.LineSaid(line.kind, line.text, source))

    async def _apologise(self) -> None:
        try:
            line = await self.voice.apology()
        except Exception as exc:  # the last resort failed too: the skull stays mute, and says why once
            self.last_error = self.faults("speaking the offline apology with espeak-ng", exc)
            self.post(m.Drained())
            return
        if self.machine.saying and self.machine.state in (m.State.OFFLINE, m.State.IDLE):
            self._say(line, "espeak")
        else:
            self.post(m.Drained())

    def _lines_kept(self, kept) -> None:
        self.link.lines = kept.id
        self.events.emit(ev.LinesCached(kept.id, kept.kinds, "host"))

    def _voice_fault(self, what: str, exc: BaseException) -> None:
        if isinstance(exc, OSError):  # the disk refused the line set: one plain line, as for a recording
            self.last_error = (f"{what} failed ({exc}); the lines kept before stay in use: check that the disk "
                               f"has room and the folder is writable, or set [offline] cache_dir in skull.toml")
            log.error("%s", self.last_error)
            return
        self.last_error = self.faults(what, exc)

    async def _idle_life(self) -> None:
        """Attract lines and the idle jaw, asked of :class:`~skull.idle.IdleLife` once a second."""
        while True:
            await asyncio.sleep(self.idle.period_s)
            try:
                kind = self.idle.due(self.machine.state, self.machine.saying)
                if kind is not None and not self.muted:
                    self._step(m.IdleLine(kind))
            except Exception as exc:  # idle life must never cost the skull anything
                self.faults("idle life", exc)

    def _do_stop_playback(self, a: m.StopPlayback) -> None:
        self.body.player.timeline.clear()
        self._stop_recording()

    def _do_jaw_close(self, a: m.JawClose) -> None:
        # now, not at the jaw loop's next frame; the loop then finds nothing to play and stays shut
        self.follower.close_now()

    def _do_turn_end(self, a: m.TurnEnd) -> None:
        self._streaming = None
        rec = self.records.pop(a.turn, None)
        self.follower.record = False
        if rec is None:
            return
        rec.outcome = a.reason
        if a.reason == "no done":
            log.warning("turn %d: the host sent no more speech and no done within %g s after the last of the reply "
                        "played; the turn ends and the jaw is shut. If the host's sentences come slower than that, "
                        "raise [link] done_timeout_s", a.turn, self.config.link.done_timeout_s)
        rec.commands = self._commands_for(rec)
        if self.finished:
            self.finished[-1].drop_audio()  # recorded already, if it was to be: only its words are kept
        self.finished.append(rec)
        del self.finished[:-KEEP_FINISHED]
        self.events.emit(ev.TurnEnded(rec))
        self.turn_ended.set()

    HANDLERS = {m.Led: _do_led, m.MicStart: _do_mic_start, m.SendListen: _do_send_listen, m.Snapshot: _do_snapshot,
                m.StreamAudio: _do_stream_audio, m.MicStop: _do_mic_stop, m.SendStop: _do_send_stop, m.Play: _do_play,
                m.PlayLine: _do_play_line,
                m.StopPlayback: _do_stop_playback, m.JawClose: _do_jaw_close, m.TurnEnd: _do_turn_end}
    """action type -> handler; every type in machine.ACTIONS has one (checked below)"""

    # --- helpers ---------------------------------------------------------------------------

    def _later(self, delay: float, event: m.Event) -> None:
        # only the current turn's timers matter; older ones fire harmlessly (stale turn)
        self._timers = self._timers[-4:] + [self._loop.call_later(delay, self._events.put_nowait, event)]

    def _mic_chunk(self, turn: int, chunk: bytes) -> None:
        """The button's mic, opened for ``turn``."""
        if turn != self.machine.turn or self.machine.state is not m.State.LISTENING:
            return
        self._mic_dbfs = _dbfs(np.frombuffer(chunk, "<i2").astype(np.float32) / 32768.0)
        self._record_chunk(turn, chunk)

    def _record_chunk(self, turn: int, chunk: bytes) -> None:
        if turn != self.machine.turn or self.machine.state is not m.State.LISTENING:
            return
        rec = self.records.get(turn)
        if rec is not None:
            rec.question.extend(chunk)
        if self._streaming == turn:
            self._send_audio(chunk)

    def _send_audio(self, data: bytes, limit: int = 64000) -> None:
        for i in range(0, len(data), limit):
            self.link.send_audio(data[i:i + limit])

    async def _snapshot(self, turn: int) -> None:
        cam = self.body.camera
        if cam is None:
            return
        try:
            jpeg = await asyncio.to_thread(cam.snapshot)
        except Exception as exc:  # a turn without a picture is still a turn
            self.faults("the camera", exc)
            return
        if turn != self.machine.turn:
            return
        rec = self.records.get(turn)
        if rec:
            rec.snapshot = jpeg
        self.link.send(p.Image(turn, "jpeg", len(jpeg)), jpeg)

    def _segment_started(self, seg) -> None:
        """Called from the audio thread when a segment's first sample goes to the device."""
        if isinstance(seg.tag, SegmentTag) and seg.tag.seq == 0:
            self._loop.call_soon_threadsafe(self._first_audio, seg.tag.turn, seg)

    def _first_audio(self, turn: int, seg) -> None:
        rec = self.records.get(turn)
        if rec is None or rec.released_at is None:
            return
        ms = round(((seg.heard_at or seg.started_at) - rec.released_at) * 1000.0, 1)
        rec.timings_ms["first_audio"] = ms
        self.link.send(p.Played(turn, ms))

    async def _views(self) -> None:
        """Jaw and level events for views, sampled at VIEW_HZ, published when they change."""
        jaw, player = self.body.jaw, self.body.player
        last_jaw, last_levels, underruns = None, None, 0
        while True:
            await asyncio.sleep(1.0 / VIEW_HZ)
            try:
                # the audio thread only counts; the warning is written here, off that thread
                if getattr(player, "underruns", 0) > underruns:
                    underruns = player.underruns
                    log.warning("speaker underrun (%d so far): the sound stopped for a moment because this process "
                                "did not refill the speaker's buffer in time; if it recurs, raise [audio] "
                                "output_latency_ms (now %.0f ms) or give the skull a less busy machine", underruns,
                                getattr(player, "latency_s", 0.0) * 1000)
                opening = round(jaw.opening if jaw.attached else 0.0, 2)
                pw = jaw.pulse_width_us
                if (opening, pw) != last_jaw:
                    last_jaw = (opening, pw)
                    self.events.emit(ev.JawMoved(opening, pw))
                now = player.audible_frame(player.now())
                hearing = self._ears_open and self._mic_pos >= self._deaf_until
                speech = max((t.speech_dbfs for t in self.hands_free), default=-120.0) if hearing else -120.0
                levels = (round(self._mic_dbfs), round(_dbfs(player.timeline.samples(now - player.rate // 20, now))),
                          round(speech))
                if levels != last_levels:
                    last_levels = levels
                    self.events.emit(ev.Levels(*map(float, levels)))
            except Exception as exc:  # a view must never cost the skull anything
                self.faults("the view sampler", exc)

    # --- subscribers -----------------------------------------------------------------------

    @staticmethod
    def _log_turn(e: ev.TurnEnded) -> None:
        r = e.record
        log.info("turn %d %s: heard=%r reply=%r timings_ms=%s", r.turn, r.outcome, _cut(r.transcript), _cut(r.reply),
                 r.timings_ms)

    def _log_turn_json(self, e: ev.TurnEnded) -> None:
        r = e.record
        self.turn_log.write({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "skull": r.skull,
                             "turn": r.turn, "transcript": r.transcript, "reply": r.reply, "outcome": r.outcome,
                             "timings_ms": r.timings_ms})

    def _room_to_record(self) -> bool:
        """The disk guard: False (and one warning, RecordingPaused) when the record folder's disk
        has less than [record] min_free_mb free; True again (RecordingResumed) once it has."""
        need_mb = self.config.record.min_free_mb
        if need_mb <= 0:
            return True
        folder = self.record_dir
        probe = next((d for d in (folder, *folder.parents) if d.exists()), folder)  # before it is made
        try:
            free_mb = self.disk_usage(probe).free / 1e6
        except OSError as exc:
            self.faults(f"reading the free space of {probe}", exc)
            return not self.recording_paused
        if free_mb < need_mb and not self.recording_paused:
            self.recording_paused = True
            log.warning("recording paused: %s has %.0f MB free, under [record] min_free_mb = %.0f; turns are still "
                        "answered, nothing recorded is deleted; free some space (or move the folder) and recording "
                        "resumes by itself", folder, free_mb, need_mb)
            self.events.emit(ev.RecordingPaused(str(folder), round(free_mb, 1), need_mb))
        elif free_mb >= need_mb and self.recording_paused:
            self.recording_paused = False
            log.info("recording resumed: %s has %.0f MB free again", folder, free_mb)
            self.events.emit(ev.RecordingResumed(str(folder), round(free_mb, 1)))
        return not self.recording_paused

    def _record_turn(self, e: ev.TurnEnded) -> None:
        if not self._room_to_record():
            return
        try:
            folder = write_turn(self.record_dir, e.record)
        except OSError as exc:
            self.last_error = f"could not record turn {e.record.turn}: {exc}"
            log.error("%s", self.last_error)
            return
        self.recorded.append(folder)
        del self.recorded[:-KEEP_FINISHED]
        if self.monitor is not None and e.record.released_at is not None and self._loop is not None:
            # the last samples come out of the speaker one buffer after they were handed over
            due = time.monotonic() + getattr(self.body.player, "latency_s", 0.0) + 0.3
            self._heard_due.append((due, folder, e.record.released_at))
            self._timers.append(self._loop.call_at(self._loop.time() + due - time.monotonic(), self._write_heard))

    def _open_monitor(self) -> None:
        """Record the sound server's monitor of the speaker, when there is one (heard.wav)."""
        if not hasattr(self.body.player, "clock"):  # the simulated speaker: nothing is heard
            return
        from .audio.monitor import SinkMonitor
        from .core.errors import DeviceError
        try:
            self.monitor = SinkMonitor(keep_s=max(60.0, self.config.audio.max_record_s + 100.0)).start()
            log.info("recording what the speaker plays from %s (heard.wav in each turn)", self.monitor.source)
        except DeviceError as exc:
            log.info("heard.wav is not recorded: %s", exc)

    def _write_heard(self, wait: bool = False) -> None:
        """Write heard.wav for the recorded turns whose sound has all come out (all of them,
        waiting for it, when ``wait``: the skull is closing)."""
        while self._heard_due and (wait or self._heard_due[0][0] <= time.monotonic()):
            due, folder, released_at = self._heard_due.popleft()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                from .audio.heardfile import write_heard
                from .audio.monitor import Heard
                heard = self.monitor.snapshot()
                start = max(released_at, heard.t0)  # from the release on
                write_heard(folder, Heard(heard.between(start, heard.end), heard.rate, start, heard.source),
                            released_at)
            except Exception as exc:  # a recording must never cost the skull anything
                self.faults("recording what was heard", exc)

    def _commands_for(self, rec: TurnRecord) -> list[SentCommand]:
        """The jaw commands sent during this turn, placed on reply.wav's clock. reply.wav holds
        the segments back to back; a command meant for silence (after a segment) counts on from
        the last one."""
        cmds, self.follower.commands = self.follower.commands, []
        offsets, acc = {}, 0.0
        for seg in rec.in_order():
            offsets[seg.seq] = acc
            acc += seg.seconds
        out, last = [], None  # last: (meant, target_t) of the last command inside a segment
        for c in cmds:
            tag = c.place.tag if c.place else None
            if isinstance(tag, SegmentTag) and tag.turn == rec.turn and tag.seq in offsets:
                meant = offsets[tag.seq] + c.place.seconds
                last = (meant, c.target_t)
            elif last is not None:
                meant = last[0] + (c.target_t - last[1])
            else:
                continue
            out.append(SentCommand(c.sent_at - (rec.released_at or c.sent_at), meant, c.opening))
        return out

    # --- shutdown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Leave the hardware safe: audio stopped, jaw closed and detached, LED off. Idempotent;
        every step runs even when one before it failed."""
        if self._closed:
            return
        self._closed = True
        for t in self._timers:
            t.cancel()
        if self._mic_retry is not None:
            self._mic_retry.cancel()
        for t in self._guard_due.values():
            t.cancel()
        b = self.body
        steps = [(f"trigger {t.name}", t.close) for t in self.triggers]
        steps += [("mic", b.mic.stop), ("playback", b.player.timeline.clear), ("jaw loop", self.follower.stop),
                  ("jaw", b.jaw.close), ("led", lambda: b.panel.set_led(m.LedPattern.OFF)), ("speaker", b.player.close),
                  ("panel", b.panel.close), ("mic", b.mic.close), ("camera", lambda: b.camera and b.camera.close()),
                  ("heard.wav", lambda: self.monitor and self._write_heard(wait=True)),
                  ("monitor", lambda: self.monitor and self.monitor.running and self.monitor.stop()),
                  ("turn log", lambda: self.turn_log and self.turn_log.close())]
        for what, step in steps + [(f"closer {i}", c) for i, c in enumerate(b.closers)]:
            _logged(what, step)  # a failing step is logged; the rest still run


SHOWN_MAX_CHARS = 300
"""a peer's text is cut to this many characters on a console or in a log line"""


def shown(text: str, limit: int = SHOWN_MAX_CHARS) -> str:
    """A peer's ``text`` made safe for a terminal and a log line: every control character (ANSI
    escape sequences, CR, LF, tab, bidirectional overrides, line separators) is written as its
    Python escape (``\\x1b``, ``\\r``, ``\\n``, ``\\u202e``) and the text is cut to ``limit``
    characters, saying how many more there were."""
    out = "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in _UNSHOWN else ch
                  for ch in text[:limit])
    return out if len(text) <= limit else f"{out}... ({len(text) - limit} more characters)"


_UNSHOWN = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
"""Unicode categories written as escapes: controls, format characters (bidirectional overrides),
surrogates, private use, unassigned, line and paragraph separators"""


def _cut(text: str, limit: int = SHOWN_MAX_CHARS) -> str:
    """``text`` cut to ``limit`` characters for a log line (which shows it with repr: escaped)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def _timings(timings: dict) -> dict:
    """The host's ``timings_ms`` as far as they are timings: names (shown safely) to finite
    milliseconds; anything else is not kept."""
    kept = {}
    for name, ms in list(timings.items())[:50]:
        if isinstance(ms, (int, float)) and not isinstance(ms, bool) and abs(ms) < 1e12:  # also drops NaN
            kept[shown(str(name), 40)] = ms
    return kept


def _pressed(trigger: Trigger) -> bool:
    """Whether ``trigger``'s button is down now (False when it cannot say)."""
    try:
        return bool(trigger.button.is_pressed)
    except Exception:  # a trigger without a readable button: assume released
        return False


def _logged(what: str, step) -> None:
    try:
        step()
    except Exception:
        log.exception("closing %s failed", what)


def _check_handlers() -> None:
    missing = [a.__name__ for a in m.ACTIONS if a not in Agent.HANDLERS]
    extra = [a.__name__ for a in Agent.HANDLERS if a not in m.ACTIONS]
    if missing or extra:
        raise TypeError(f"Agent.HANDLERS does not match machine.ACTIONS: no handler for {missing}, "
                        f"handlers for unknown actions {extra}")


_check_handlers()
