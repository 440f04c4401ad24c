"""The agent: runs the talk state machine against real (or simulated) devices and the link.

Device threads (button, microphone, speaker) post events into the event loop; the machine
decides; :meth:`Agent._do` carries out its actions. Whatever happens, :meth:`Agent.close`
leaves the hardware safe: playback stopped, jaw closed and detached, LED off.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import machine as m
from .core import protocol as p
from .audio.player import Segment
from .core.wav import pcm16_to_audio, to_mono
from .config import SkullConfig
from .jaw.sync import JawFollower
from .link import Link
from .record import TurnRecord, write_turn

log = logging.getLogger("skull.agent")


@dataclass
class Body:
    """The skull's devices. ``panel`` has the button and LED; ``jaw`` moves; ``mic`` has
    start(on_chunk)/stop(); ``camera`` has snapshot() (or is None); ``player`` has a timeline."""
    panel: object
    jaw: object
    mic: object
    player: object
    camera: object = None
    closers: list = field(default_factory=list)


class Agent:
    def __init__(self, config: SkullConfig, body: Body, *, record_dir: str | Path | None = None,
                 on_change: Callable[["Agent"], None] | None = None, reply_timeout_s: float = 90.0):
        self.config, self.body = config, body
        self.machine = m.TalkMachine()
        self.link = Link(config.link, self._on_message, self._on_link, play_rate=int(body.player.rate),
                         jaw_shape=config.shape.to_dict())
        self.follower = JawFollower(body.player, body.jaw, frame_hz=config.jaw.frame_hz,
                                    lead_ms=config.calibration.lead_ms, mode=config.jaw.mode, shape=config.shape)
        self.record_dir = Path(record_dir) if record_dir else None
        self.on_change = on_change
        self.reply_timeout_s = reply_timeout_s
        self.records: dict[int, TurnRecord] = {}
        self.finished: list[TurnRecord] = []  # ended turns, newest last
        self.recorded: list[Path] = []
        self.last_error = ""
        self._streaming: int | None = None  # turn whose mic audio goes to the host
        self._events: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._closed = False
        self.turn_ended = asyncio.Event()

    # --- events from threads ------------------------------------------------------------

    def post(self, *event) -> None:
        """Thread-safe: queue an event for the machine."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    @property
    def state(self) -> m.State:
        return self.machine.state

    async def run(self) -> None:
        """Run until cancelled (or the link fails fatally); always leaves the hardware safe."""
        self._loop = asyncio.get_running_loop()
        self._events = asyncio.Queue()
        panel, player = self.body.panel, self.body.player
        panel.button.when_pressed = lambda: self.post(m.BUTTON_DOWN)
        panel.button.when_released = lambda: self.post(m.BUTTON_UP)
        player.timeline.on_start = self._segment_started
        player.timeline.on_drained = lambda: self.post(m.DRAINED)
        panel.set_led("offline")
        player.start()
        self.follower.start()
        link_task = asyncio.create_task(self.link.run(), name="link")
        try:
            while True:
                get = asyncio.create_task(self._events.get())
                done, _ = await asyncio.wait({get, link_task}, return_when=asyncio.FIRST_COMPLETED)
                if link_task in done:
                    get.cancel()
                    link_task.result()  # raises LinkFatal
                    return
                await self._dispatch(get.result())
        finally:
            if not link_task.done():
                link_task.cancel()
                try:
                    await link_task
                except asyncio.CancelledError:
                    pass  # the cancellation asked for just above
                except Exception:
                    log.exception("the link failed while stopping")
            self.close()

    async def _dispatch(self, event: tuple) -> None:
        for action in self.machine.handle(event):
            try:
                await self._do(action)
            except Exception as exc:  # one failing device must not stop the skull
                self.last_error = f"{action[0]}: {exc}"
                log.exception("action %s failed", action[0])
        if self.on_change:
            self.on_change(self)

    # --- link callbacks -------------------------------------------------------------------

    async def _on_link(self, up: bool) -> None:
        await self._dispatch((m.CONNECTED,) if up else (m.DISCONNECTED,))

    async def _on_message(self, msg: p.Message, payload: bytes | None) -> None:
        rec = self.records.get(getattr(msg, "turn", None))
        if isinstance(msg, p.Ack):
            await self._dispatch((m.ACK_LISTEN if msg.of == "listen" else m.ACK_STOP, msg.turn))
        elif isinstance(msg, p.Heard):
            if rec:
                rec.transcript, rec.caption = msg.transcript, msg.caption
            if self.on_change:
                self.on_change(self)
        elif isinstance(msg, p.Speech):
            if rec and msg.turn == self.machine.turn:
                rec.add_segment(msg, payload)
            await self._dispatch((m.SEGMENT, msg.turn, msg, payload))
        elif isinstance(msg, p.Done):
            if rec:
                rec.reply = msg.reply
                rec.timings_ms.update(msg.timings_ms)
            await self._dispatch((m.DONE, msg.turn))
        elif isinstance(msg, p.Error):
            log.warning("host: %s: %s", msg.code, msg.message)
            self.last_error = msg.message
            if rec:
                rec.errors.append(f"{msg.code}: {msg.message}")

    # --- actions ----------------------------------------------------------------------------

    async def _do(self, action: tuple) -> None:
        name, args = action[0], action[1:]
        b = self.body
        if name == "led":
            b.panel.set_led(args[0])
        elif name == "mic_start":
            turn = args[0]
            self.records[turn] = TurnRecord(turn, self.config.link.name)
            self.follower.record = True
            b.mic.start(lambda chunk, t=turn: self._loop.call_soon_threadsafe(self._mic_chunk, t, chunk))
            self._later(self.config.audio.max_record_s, (m.RECORD_LIMIT, turn))
        elif name == "send_listen":
            self.link.send(p.Listen(args[0]))
        elif name == "snapshot":
            asyncio.create_task(self._snapshot(args[0]))
        elif name == "stream_audio":
            turn = args[0]
            self._streaming = turn
            self.link.send(p.AudioStart(turn, 16000, 2, 1))
            rec = self.records.get(turn)
            if rec and rec.question:  # the pre-roll recorded before the host said yes
                self._send_audio(bytes(rec.question))
        elif name == "mic_stop":
            b.mic.stop()
            rec = self.records.get(args[0])
            if rec:
                rec.released_at = time.monotonic()
        elif name == "send_stop":
            turn = args[0]
            self._streaming = None
            self.link.send(p.Stop(turn, args[1]))
            self._later(self.reply_timeout_s, (m.REPLY_TIMEOUT, turn))
        elif name == "play":
            turn, msg, pcm = args
            samples = to_mono(pcm16_to_audio(pcm, msg.rate, msg.channels))
            b.player.timeline.add(samples, msg.rate, msg.jaw, msg.jaw_fps, tag=(turn, msg.seq))
        elif name == "stop_playback":
            b.player.timeline.clear()
            b.mic.stop()
        elif name == "jaw_close":
            if not self.follower.running:
                b.jaw.move(0.0)
            # with the follower running, an empty timeline closes the jaw on its next frame
        elif name == "turn_end":
            self._turn_end(*args)

    def _later(self, delay: float, event: tuple) -> None:
        # only the current turn's timers matter; older ones fire harmlessly (stale turn)
        self._timers = self._timers[-4:] + [self._loop.call_later(delay, self._events.put_nowait, event)]

    def _mic_chunk(self, turn: int, chunk: bytes) -> None:
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
        except Exception as exc:
            log.warning("no snapshot for turn %d: %s", turn, exc)
            return
        if turn != self.machine.turn:
            return
        rec = self.records.get(turn)
        if rec:
            rec.snapshot = jpeg
        self.link.send(p.Image(turn, "jpeg", len(jpeg)), jpeg)

    def _segment_started(self, seg: Segment) -> None:
        """Called from the audio thread when a segment's first sample goes to the device."""
        turn, seq = seg.tag if isinstance(seg.tag, tuple) else (None, None)
        if seq == 0 and turn is not None:
            self._loop.call_soon_threadsafe(self._first_audio, turn, seg)

    def _first_audio(self, turn: int, seg: Segment) -> None:
        rec = self.records.get(turn)
        if rec is None or rec.released_at is None:
            return
        ms = round(((seg.heard_at or seg.started_at) - rec.released_at) * 1000.0, 1)
        rec.timings_ms["first_audio"] = ms
        self.link.send(p.Played(turn, ms))

    def _turn_end(self, turn: int, outcome: str) -> None:
        rec = self.records.pop(turn, None)
        self.follower.record = False
        if rec is None:
            return
        rec.outcome = outcome
        rec.commands = self._commands_for(rec)
        self.finished.append(rec)
        del self.finished[:-20]
        log.info("turn %d %s: heard=%r reply=%r timings_ms=%s", turn, outcome, rec.transcript, rec.reply,
                 rec.timings_ms)
        if self.record_dir is not None:
            try:
                self.recorded.append(write_turn(self.record_dir, rec))
            except OSError as exc:
                self.last_error = f"could not record turn {turn}: {exc}"
                log.error("%s", self.last_error)
        self.turn_ended.set()

    def _commands_for(self, rec: TurnRecord) -> list:
        """Jaw commands sent during this turn: (seconds since button release, the position in
        reply.wav it was meant for in seconds, opening). reply.wav holds the segments back to
        back; a command meant for silence (after a segment) counts on from the last one."""
        cmds, self.follower.commands = self.follower.commands, []
        offsets, acc = {}, 0.0
        for seq, _, samples, rate, _, _ in sorted(rec.segments, key=lambda s: s[0]):
            offsets[seq] = acc
            acc += len(samples) / rate
        out, last = [], None  # last: (meant, target_t) of the last command inside a segment
        for sent, target_t, opening, where in cmds:
            tag = where[0] if where else None
            if isinstance(tag, tuple) and tag[0] == rec.turn and tag[1] in offsets:
                meant = offsets[tag[1]] + where[1]
                last = (meant, target_t)
            elif last is not None:
                meant = last[0] + (target_t - last[1])
            else:
                continue
            out.append((sent - (rec.released_at or sent), meant, opening))
        return out

    # --- shutdown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Leave the hardware safe: audio stopped, jaw closed and detached, LED off. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for t in self._timers:
            t.cancel()
        b = self.body
        steps = [("mic", lambda: b.mic.stop()), ("playback", lambda: b.player.timeline.clear()),
                 ("jaw loop", self.follower.stop), ("jaw", lambda: b.jaw.close()),
                 ("led", lambda: b.panel.set_led("off")), ("speaker", b.player.close), ("panel", b.panel.close),
                 ("camera", lambda: b.camera and b.camera.close())]
        for what, step in steps + [(f"closer {i}", c) for i, c in enumerate(b.closers)]:
            try:
                step()
            except Exception:
                log.exception("closing %s failed", what)

