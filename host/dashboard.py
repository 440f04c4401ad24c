"""The operator's dashboard: one web page with every skull live, the night's figures, the last
turns and the controls, and the same figures at ``/metrics`` for monitoring systems.

Served by the host's own websockets library (no web framework): ``process_request`` answers the
plain HTTP requests (the page, snapshots, audio, ``/metrics``), and ``/ws`` is the page's
websocket, which gets the skulls' views pushed at most :data:`PUSH_HZ` times a second and
carries the operator's controls back. Everything is fed by the host's event bus
(:mod:`host.events`): the dashboard edits nothing, and a host without it runs exactly the same.

Every request needs the dashboard's token (``[dashboard] token``, else the ``[server]`` token):
``?token=`` in the URL (the page passes it on) or ``Authorization: Bearer``. A dashboard on an
address beyond this machine without a token is refused at start. See docs/dashboard.md.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import hmac
import http
import json
import logging
import time
import urllib.parse
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import prometheus_client as prom
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from skull.core.errors import BackendError, ConfigError, ControlError
from skull.core.wav import pcm16_to_audio, resample, to_mono, wav_bytes

from . import events as ev
from .config import DashboardConfig, is_loopback, parse_listen
from .controls import ACTIONS, control

log = logging.getLogger("host.dashboard")

PUSH_HZ = 10.0
"""how often the pages get what changed (the skulls' status arrives at up to 10 Hz each)"""
BUCKET_S = 300
"""the night's chart: first_audio p50/p95 and turns per 5-minute bucket"""
BUCKETS = 144
"""buckets kept (12 hours); the oldest is forgotten"""
PER_BUCKET = 2000
"""first_audio figures kept per bucket for its percentiles (the newest)"""
MAX_PAGE_MSG = 16 * 1024
"""the largest message a page may send (a control)"""
FIRST_AUDIO_BUCKETS_S = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0)


class Metrics:
    """The figures for ``/metrics``, in a registry of this dashboard's own (not the process-wide
    default one, so two hosts in one process never mix their counts)."""

    def __init__(self):
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.turns = prom.Counter("skull_turns", "turns answered (done sent)", ["skull"], registry=r)
        self.first_audio = prom.Histogram("skull_first_audio_seconds", "button release to the first reply sample "
                                          "at the skull's speaker", buckets=FIRST_AUDIO_BUCKETS_S, registry=r)
        self.errors = prom.Counter("skull_errors", "stage failures", ["stage"], registry=r)
        self.fallbacks = prom.Counter("skull_fallbacks", "fallback lines spoken", ["stage"], registry=r)
        self.connected = prom.Gauge("skull_skulls_connected", "skulls connected now", registry=r)
        self.controls = prom.Counter("skull_controls", "operator controls used", ["action"], registry=r)
        self.statuses = prom.Counter("skull_status_messages", "status messages the skulls sent", registry=r)
        self.cpu = prom.Counter("skull_dashboard_cpu_seconds", "CPU time the dashboard itself took on the host's "
                                "event loop (its bookkeeping, pushes and HTTP answers)", registry=r)

    def text(self) -> bytes:
        return prom.generate_latest(self.registry)


@dataclass
class TurnView:
    """One turn as the dashboard lists it."""
    id: int
    """the dashboard's own number for the turn (audio URLs use it)"""
    skull: str
    turn: int
    started: float
    """wall-clock seconds"""
    transcript: str = ""
    caption: str = ""
    sentences: list = field(default_factory=list)
    reply: str = ""
    outcome: str = ""
    """'' while it runs; answered, no reply"""
    timings: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    fallbacks: list = field(default_factory=list)
    question: tuple | None = None
    """(rate, channels, pcm)"""
    reply_audio: list = field(default_factory=list)
    """[(rate, pcm)] per segment"""

    def view(self) -> dict:
        return {"id": self.id, "skull": self.skull, "turn": self.turn, "started": self.started,
                "transcript": self.transcript, "caption": self.caption,
                "reply": self.reply or " ".join(self.sentences), "outcome": self.outcome,
                "timings": dict(self.timings), "errors": self.errors, "fallbacks": self.fallbacks,
                "question_audio": self.question is not None, "reply_audio": bool(self.reply_audio)}


@dataclass
class SkullView:
    """One skull as the page shows it."""
    name: str
    connected: bool = False
    controls: bool = False
    peer: str = ""
    state: str = "offline"
    led: str = "off"
    jaw: float = 0.0
    mic_dbfs: float = -120.0
    mic_vad_dbfs: float = -120.0
    speaker_dbfs: float = -120.0
    muted: bool = False
    turn: int = 0
    heard: str = ""
    """the transcript so far (interim stretches while the visitor talks)"""
    caption: str = ""
    reply: str = ""
    snapshot: int = 0
    """bumped with each new snapshot (the page reloads the picture)"""
    last: dict = field(default_factory=dict)
    """the last finished turn's timings, for the waterfall"""
    states: list = field(default_factory=list)
    """the states of the current turn, in order"""

    def view(self) -> dict:
        out = dict(self.__dict__)
        out["last"], out["states"] = dict(self.last), list(self.states)
        return out


class Board:
    """What the page shows, kept from the host's events (a bus subscriber). Pure bookkeeping:
    ``dirty`` names what changed since :meth:`take` last collected it."""

    def __init__(self, keep_turns: int, metrics: Metrics | None = None, clock=time.time):
        self.keep_turns, self.metrics, self.clock = keep_turns, metrics, clock
        self.skulls: dict[str, SkullView] = {}
        self.turns: collections.OrderedDict[int, TurnView] = collections.OrderedDict()
        self._current: dict[str, TurnView] = {}
        """skull -> its latest turn"""
        self._next_id = 1
        self.snapshots: dict[str, tuple[str, bytes]] = {}
        """skull -> (format, image) of its latest snapshot"""
        self.buckets: collections.OrderedDict[int, dict] = collections.OrderedDict()
        """bucket start (s) -> {"turns": n, "first_audio": [ms...]}"""
        self.errors: collections.Counter = collections.Counter()
        self.fallbacks: collections.Counter = collections.Counter()
        self.dirty_skulls: set[str] = set()
        self.dirty_turns: set[int] = set()
        self.dirty_night = False

    def skull(self, name: str) -> SkullView:
        view = self.skulls.get(name)
        if view is None:
            view = self.skulls[name] = SkullView(name)
        self.dirty_skulls.add(name)
        return view

    def _turn_of(self, e: ev.TurnEvent) -> TurnView | None:
        t = self._current.get(e.skull)
        return t if t is not None and t.turn == e.turn else None

    def _bucket(self) -> dict:
        start = int(self.clock() // BUCKET_S * BUCKET_S)
        b = self.buckets.get(start)
        if b is None:
            b = self.buckets[start] = {"turns": 0, "first_audio": collections.deque(maxlen=PER_BUCKET)}
            while len(self.buckets) > BUCKETS:
                self.buckets.popitem(last=False)
        self.dirty_night = True
        return b

    def __call__(self, e: ev.TurnEvent) -> None:
        m = self.metrics
        if isinstance(e, ev.SkullStatus):
            if m:
                m.statuses.inc()
            v = self.skull(e.skull)
            if v.state != e.state:
                v.states = (v.states + [e.state])[-12:] if e.state != "listening" else ["listening"]
            v.state, v.led, v.jaw, v.muted, v.turn = e.state, e.led, e.jaw, e.muted, e.turn
            v.mic_dbfs, v.mic_vad_dbfs, v.speaker_dbfs = e.mic_dbfs, e.mic_vad_dbfs, e.speaker_dbfs
            return
        if isinstance(e, ev.SkullConnected):
            v = self.skull(e.skull)
            v.connected, v.controls, v.peer = True, e.controls, e.peer
            v.state = "idle" if v.state == "offline" else v.state
            if m:
                m.connected.set(sum(1 for s in self.skulls.values() if s.connected))
            return
        if isinstance(e, ev.SkullLeft):
            v = self.skull(e.skull)
            v.connected, v.state, v.jaw, v.led = False, "offline", 0.0, "offline"
            v.mic_dbfs = v.mic_vad_dbfs = v.speaker_dbfs = -120.0
            if m:
                m.connected.set(sum(1 for s in self.skulls.values() if s.connected))
            return
        if isinstance(e, ev.Control):
            if m:
                m.controls.labels(e.action).inc()
            return
        if isinstance(e, ev.TurnStarted):
            t = TurnView(self._next_id, e.skull, e.turn, self.clock())
            self._next_id += 1
            self._current[e.skull] = self.turns[t.id] = t
            while len(self.turns) > self.keep_turns:
                self.turns.popitem(last=False)
            self.dirty_turns.add(t.id)
            v = self.skull(e.skull)
            v.turn, v.heard, v.caption, v.reply = e.turn, "", "", ""
            return
        if isinstance(e, ev.Snapshot):
            self.snapshots[e.skull] = (e.format, e.image)
            self.skull(e.skull).snapshot += 1
            return
        t = self._turn_of(e)
        if t is None:
            return
        v = self.skull(e.skull)
        self.dirty_turns.add(t.id)
        if isinstance(e, ev.Interim):
            v.heard = f"{v.heard} {e.text}".strip()
        elif isinstance(e, ev.Transcript):
            t.transcript = v.heard = e.text
        elif isinstance(e, ev.Caption):
            t.caption = v.caption = e.text
        elif isinstance(e, ev.Sentence):
            t.sentences.append(e.text)
            v.reply = " ".join(t.sentences)
            self._mark(v, t, "llm_first_sentence", e.at_ms)
        elif isinstance(e, ev.StageFinished) and e.stage == "stt":
            self._mark(v, t, "stt", e.ms)
        elif isinstance(e, ev.FirstPiece):
            self._mark(v, t, "llm_first_token", e.at_ms)
        elif isinstance(e, ev.SegmentSent):
            self._mark(v, t, "tts_first_segment", e.at_ms)
        elif isinstance(e, ev.QuestionAudio):
            t.question = (e.rate, e.channels, e.pcm)
        elif isinstance(e, ev.ReplyAudio):
            t.reply_audio.append((e.rate, e.pcm))
        elif isinstance(e, ev.TurnError):
            t.errors.append(f"{e.stage}: {e.message}")
            self.errors[e.stage] += 1
            self.dirty_night = True
            if m:
                m.errors.labels(e.stage).inc()
        elif isinstance(e, ev.Fallback):
            t.fallbacks.append(e.stage)
            self.fallbacks[e.stage] += 1
            self.dirty_night = True
            if m:
                m.fallbacks.labels(e.stage).inc()
        elif isinstance(e, ev.Done):
            t.reply, t.outcome = e.reply, "answered" if e.segments else "no reply"
            t.timings.update(e.timings_ms)
            v.reply = e.reply or v.reply
            v.last = t.timings
            self._bucket()["turns"] += 1
            if m:
                m.turns.labels(e.skull).inc()
        elif isinstance(e, ev.Played):
            self._mark(v, t, "first_audio", e.first_audio_ms)
            self._bucket()["first_audio"].append(e.first_audio_ms)
            if m:
                m.first_audio.observe(e.first_audio_ms / 1000.0)

    @staticmethod
    def _mark(v: SkullView, t: TurnView, key: str, ms: float) -> None:
        """A point of the turn's waterfall as it happens (``done.timings_ms`` completes them);
        the skull's card shows this turn's waterfall from its first point on."""
        t.timings.setdefault(key, ms)
        v.last = t.timings

    def night(self) -> dict:
        """Turns in the last hour, per-bucket turns and first_audio p50/p95, errors and fallbacks by stage."""
        now = self.clock()
        series = []
        for start, b in self.buckets.items():
            fa = np.asarray(b["first_audio"], dtype=float)
            p50, p95 = (np.percentile(fa, [50, 95]).round(1).tolist() if len(fa) else (None, None))
            series.append({"t": start, "turns": b["turns"], "p50": p50, "p95": p95})
        last_hour = sum(b["turns"] for start, b in self.buckets.items() if start + BUCKET_S > now - 3600)
        return {"turns_last_hour": last_hour, "bucket_s": BUCKET_S, "series": series,
                "errors": dict(self.errors), "fallbacks": dict(self.fallbacks)}

    def everything(self) -> dict:
        return {"t": "all", "skulls": [v.view() for v in self.skulls.values()],
                "turns": [t.view() for t in self.turns.values()], "night": self.night()}

    def take(self) -> dict | None:
        """What changed since the last call, as one message for the pages; None when nothing did."""
        if not (self.dirty_skulls or self.dirty_turns or self.dirty_night):
            return None
        msg = {"t": "update",
               "skulls": [self.skulls[n].view() for n in sorted(self.dirty_skulls) if n in self.skulls],
               "turns": [self.turns[i].view() for i in sorted(self.dirty_turns) if i in self.turns]}
        if self.dirty_night:
            msg["night"] = self.night()
        self.dirty_skulls, self.dirty_turns, self.dirty_night = set(), set(), False
        return msg

    def audio(self, turn_id: int, which: str) -> bytes | None:
        """A listed turn's question or reply as a WAV file, or None."""
        t = self.turns.get(turn_id)
        if t is None:
            return None
        if which == "question" and t.question is not None:
            rate, channels, pcm = t.question
            return wav_bytes(to_mono(pcm16_to_audio(pcm, rate, channels)), rate)
        if which == "reply" and t.reply_audio:
            rate = t.reply_audio[0][0]
            parts = [to_mono(pcm16_to_audio(pcm, r, 1)) for r, pcm in t.reply_audio]
            parts = [x if r == rate else resample(x, r, rate) for (r, _), x in zip(t.reply_audio, parts)]
            return wav_bytes(np.concatenate(parts), rate)
        return None


class Dashboard:
    """The dashboard of ``host``, served at ``[dashboard] listen``: ``await start()``, ``await stop()``."""

    def __init__(self, host, config: DashboardConfig):
        self.host, self.config = host, config
        self.bind, self._port = parse_listen(config.listen or "0")
        self.token = config.token or host.config.server.token
        if not self.token and not is_loopback(self.bind):
            raise ConfigError(f"refusing to serve the dashboard on {self.bind} without a token: anyone on the network "
                              f"could drive the skulls. Set [dashboard] token (or the host's --token), or serve it "
                              f"on 127.0.0.1")
        self.metrics = Metrics()
        self.board = Board(config.keep_turns, self.metrics)
        self.pages: set[ServerConnection] = set()
        self.server = None
        self._unsubscribe = None
        self._pusher: asyncio.Task | None = None
        self._page = resources.files("host").joinpath("web/dashboard.html").read_bytes()

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        where = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{where}:{self.port}/"

    async def start(self) -> "Dashboard":
        self._unsubscribe = self.host.events.subscribe(self._on_event)
        for name, session in self.host.sessions.items():  # skulls already there
            self.board(ev.SkullConnected(name, session.last_turn, "?", session.controls))
        try:
            self.server = await serve(self._page_socket, self.bind, self._port, process_request=self._http,
                                      max_size=MAX_PAGE_MSG, compression=None, ping_interval=20,
                                      logger=logging.getLogger("host.dashboard.websockets"))
        except OSError as exc:
            await self.stop()
            raise ConfigError(f"cannot serve the dashboard on {self.bind}:{self._port}: {exc.strerror or exc}; give "
                              f"--dashboard (or [dashboard] listen) a free port on an address of this "
                              f"machine") from None
        self._pusher = asyncio.create_task(self._push_forever(), name="dashboard-push")
        log.info("dashboard at %s", self.url)
        return self

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._pusher is not None:
            self._pusher.cancel()
            self._pusher = None
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def _on_event(self, e: ev.TurnEvent) -> None:
        t0 = time.thread_time()
        try:
            self.board(e)
        finally:
            self.metrics.cpu.inc(time.thread_time() - t0)

    # --- HTTP --------------------------------------------------------------------------------

    def _allowed(self, request: Request, query: dict) -> bool:
        if not self.token:
            return True
        given = query.get("token", [""])[0]
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = given or auth[7:]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        t0 = time.thread_time()
        try:
            return self._answer(connection, request)
        finally:
            self.metrics.cpu.inc(time.thread_time() - t0)

    def _answer(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urllib.parse.urlsplit(request.path)
        query = urllib.parse.parse_qs(url.query)
        if not self._allowed(request, query):
            log.warning("refused a dashboard request for %s from %s: %s token", url.path,
                        _peer(connection), "wrong" if query.get("token") or "Authorization" in request.headers
                        else "no")
            return _respond(connection, 401, b"the dashboard needs its token: open it as /?token=SECRET "
                                             b"([dashboard] token, or the host's [server] token)\n", "text/plain")
        path = url.path
        if path == "/ws":
            return None  # the page's websocket: the handshake goes on
        if path in ("/", "/index.html"):
            return _respond(connection, 200, self._page, "text/html; charset=utf-8")
        if path == "/metrics":
            return _respond(connection, 200, self.metrics.text(), prom.CONTENT_TYPE_LATEST)
        if path.startswith("/snapshot/"):
            shot = self.board.snapshots.get(urllib.parse.unquote(path[len("/snapshot/"):]))
            if shot is not None:
                return _respond(connection, 200, shot[1], f"image/{shot[0]}")
        if path.startswith("/audio/"):  # /audio/<id>/question.wav or reply.wav
            parts = path.split("/")
            if len(parts) == 4 and parts[2].isdigit() and parts[3] in ("question.wav", "reply.wav"):
                data = self.board.audio(int(parts[2]), parts[3][:-4])
                if data is not None:
                    return _respond(connection, 200, data, "audio/wav")
        return _respond(connection, 404, b"not found\n", "text/plain")

    # --- the page's websocket ------------------------------------------------------------------

    async def _page_socket(self, ws: ServerConnection) -> None:
        self.pages.add(ws)
        try:
            await ws.send(json.dumps(self.board.everything(), separators=(",", ":")))
            async for frame in ws:
                await self._on_page(ws, frame)
        except ConnectionClosed:
            pass  # the operator closed the page: nothing more to push
        finally:
            self.pages.discard(ws)

    async def _on_page(self, ws: ServerConnection, frame) -> None:
        """One control from a page: ``{"control": ACTION, "skull": NAME, "text": ...}``; the
        answer is ``{"t": "control", "ok": bool, "message": ...}``."""
        try:
            try:
                req = json.loads(frame) if isinstance(frame, str) else None
            except ValueError:
                req = None
            if not isinstance(req, dict) or not isinstance(req.get("control"), str) \
                    or not isinstance(req.get("skull"), str) or not isinstance(req.get("text", ""), str):
                raise ControlError(f'a control is {{"control": one of {", ".join(ACTIONS)}, "skull": NAME, '
                                   f'"text": LINE}}')
            done = await control(self.host, req["skull"], req["control"], req.get("text", ""), _peer(ws))
            answer = {"t": "control", "ok": True, "message": done}
        except (ValueError, ControlError, BackendError) as exc:
            log.warning("operator at %s: a control was not carried out: %s", _peer(ws), exc)
            answer = {"t": "control", "ok": False, "message": str(exc)}
        except ConnectionClosed:
            answer = {"t": "control", "ok": False, "message": "the skull's connection closed"}
        await ws.send(json.dumps(answer))

    async def _push_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0 / PUSH_HZ)
            if not self.pages:
                continue
            try:
                t0 = time.thread_time()
                msg = self.board.take()
                text = None if msg is None else json.dumps(msg, separators=(",", ":"))
                self.metrics.cpu.inc(time.thread_time() - t0)
                if text is None:
                    continue
                for ws in list(self.pages):
                    t0 = time.thread_time()
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(text)  # a frame written to the socket's buffer: it does not wait for the page
                    self.metrics.cpu.inc(time.thread_time() - t0)
            except Exception as exc:  # a view must never cost the host anything
                self.host.faults("the dashboard's push", exc)


def _respond(connection: ServerConnection, status: int, body: bytes, content_type: str) -> Response:
    """A plain HTTP answer (the connection closes after it)."""
    headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                       ("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")])
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def _peer(ws: ServerConnection) -> str:
    remote = ws.remote_address
    if not remote:
        return "?"
    return f"[{remote[0]}]:{remote[1]}" if ":" in str(remote[0]) else f"{remote[0]}:{remote[1]}"
