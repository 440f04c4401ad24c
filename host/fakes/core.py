"""The machinery every fake model server shares: a threaded HTTP/1.1 server on loopback, the
misbehaviour knobs, chunked streaming, and the ways a server can fail.

Knobs (seed 001): ``delay_s`` before the answer (or first token); ``per_unit_s`` per unit of
work (second of input audio for speech to text, token for language models, second of produced
audio or character for voices); ``jitter`` (0.3 = each wait is scaled by a random factor in
0.7..1.3); ``failure_rate`` (answer with the server's own error shape); ``crash_rate`` (drop the
connection mid-response); ``warmup_s`` (added to the first call, as a model load would be);
``loading_s`` (llama.cpp: every route answers 503 ``Loading model`` for this long after start).

Capacity, so a load test queues where a real server would, not in the fake: ``slots`` requests are
worked on at once (llama-server's ``--parallel``; whisper.cpp's server works one at a time) and
the rest wait for a free slot, their delays counted from when they get one; ``backlog``
connections wait to be accepted (the listen queue; Python's default of 5 drops a burst's
connections, which no real server does). ``slots = 0``: every request at once.
"""
from __future__ import annotations

import abc
import contextlib
import http.client
import json
import random
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_BOUNDARY = re.compile(r'(?:^|;)\s*boundary=(?:"([^"]+)"|([^\s;]+))', re.I)
"""a multipart body's boundary in its Content-Type, quoted or not"""
_PARAM = re.compile(r';\s*([\w*-]+)=(?:"((?:[^"\\]|\\.)*)"|([^\s;]*))')
"""a Content-Disposition parameter (name="file"; filename=q.wav): its name, quoted value, bare value"""


@dataclass
class Knobs:
    delay_s: float = 0.0
    per_unit_s: float = 0.0
    jitter: float = 0.0
    failure_rate: float = 0.0
    crash_rate: float = 0.0
    warmup_s: float = 0.0
    loading_s: float = 0.0
    seed: int | None = None
    slots: int = 0
    """requests worked on at once; the rest queue for a slot (0: no limit)"""
    backlog: int = 128
    """connections waiting to be accepted (the listen queue)"""


class Crash(Exception):
    """Raised inside a handler to drop the connection at once."""


class _Headers(http.client.HTTPMessage):
    """A request's headers. The standard library parses them as a whole email message, and for a
    multipart request it then looks for parts in the (absent) body, compiling a pattern for that
    request's new boundary: ~0.4 ms of a fake's CPU for every upload. The fake reads the parts
    itself (Handler.multipart)."""

    def get_content_maintype(self):
        return "text"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    MessageClass = _Headers
    disable_nagle_algorithm = True
    """TCP_NODELAY, as real servers set it (uvicorn, llama.cpp's): an answer goes out as its headers
    and then its body, and with Nagle's algorithm the body waited for the client to acknowledge
    the headers, which a kept-alive client delays by up to 40 ms: sequential requests to a fake
    took 44 ms each for a /health and 51 ms for a transcription whose modelled wait was 3 ms"""
    server: "_Server"

    def log_message(self, fmt, *args):  # quiet: tests and benchmarks read their own output
        pass

    def setup(self):
        super().setup()
        self.server.fake.connected(self.connection, True)

    def finish(self):
        self.server.fake.connected(self.connection, False)
        super().finish()

    def _serve(self):
        fake = self.server.fake
        url = urlsplit(self.path)
        self.route, self.query = url.path, {k: v[-1] for k, v in parse_qs(url.query).items()}
        n = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(n) if n else b""
        self.streaming = False
        fake.record(self)
        with fake.slot():
            self.t0 = time.monotonic()  # waits count from here, so the fake's own work is inside them
            try:
                fake.handle(self)
            except Crash:
                self.drop()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _serve

    # --- answering ----------------------------------------------------------------------

    def send(self, status: int, body: bytes | str, ctype: str = "application/json", headers: dict | None = None):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, status: int, obj, ctype: str = "application/json", headers: dict | None = None):
        self.send(status, json.dumps(obj), ctype, headers)

    def start_stream(self, ctype: str, headers: dict | None = None):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.streaming = True

    def chunk(self, data: bytes | str):
        data = data.encode() if isinstance(data, str) else data
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    def end_stream(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def send_partial(self, status: int, body: bytes, ctype: str):
        """Headers promise the whole body; half of it goes out, then the connection drops."""
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2])
        raise Crash

    def drop(self):
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # --- reading ------------------------------------------------------------------------

    def json_body(self):
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None

    def multipart(self) -> dict:
        """Parts of a multipart/form-data body: name -> (bytes, filename, content type).

        The body is cut at its delimiters (CRLF, ``--``, the boundary) and each part's few header
        lines are read with two patterns. Python's email parser cost 5 ms of CPU for a whole 64 KB
        upload, and ~1 ms even on the part headers alone (it compiled a pattern for every new
        boundary): a crowd's 64 questions at once queued on the fake itself, where a real server
        parses them in C in microseconds."""
        m = _BOUNDARY.search(self.headers.get("Content-Type", ""))
        if not m or not self.headers.get("Content-Type", "").lower().startswith("multipart/form-data"):
            return {}
        boundary = (m.group(1) or m.group(2)).encode("latin-1")
        parts = {}
        for chunk in (b"\r\n" + self.body).split(b"\r\n--" + boundary)[1:]:
            if chunk.startswith(b"--"):  # the closing delimiter
                break
            head, blank, data = chunk.partition(b"\r\n\r\n")
            if not blank:
                continue
            fields = {}
            for line in head.decode("utf-8", "replace").split("\r\n"):
                key, colon, value = line.partition(":")
                if colon:
                    fields[key.strip().lower()] = value.strip()
            params = {k.lower(): quoted or bare for k, quoted, bare in _PARAM.findall(fields.get("content-disposition", ""))}
            name = params.get("name")
            if name:
                kind = fields.get("content-type", "text/plain").split(";")[0].strip().lower() or "text/plain"
                parts[name] = (data, params.get("filename"), kind)
        return parts


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: "FakeServer"

    def handle_error(self, request, client_address):
        import sys
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client hung up (a cancelled turn, a timeout): normal for a server
        super().handle_error(request, client_address)


class FakeServer(abc.ABC):
    """Base of the fakes: subclasses implement ``handle(h)`` with the real server's contract."""

    kind = "fake"

    def __init__(self, knobs: Knobs | None = None, host: str = "127.0.0.1", port: int = 0):
        self.knobs = knobs or Knobs()
        self.rng = random.Random(self.knobs.seed)
        self.host, self.port = host, port
        self.requests: deque = deque(maxlen=100)
        """the last requests: (method, path, headers dict, body bytes)"""
        self.calls = 0
        self.counts = {"ok": 0, "fail": 0, "crash": 0}
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.started_at = 0.0
        if self.knobs.slots < 0 or self.knobs.backlog < 1:
            raise ValueError(f"a fake server needs slots >= 0 (0: no limit) and backlog >= 1, got slots="
                             f"{self.knobs.slots} backlog={self.knobs.backlog}")
        self._slots = threading.BoundedSemaphore(self.knobs.slots) if self.knobs.slots else None
        self.busy = 0
        """requests being worked on now"""
        self.busiest = 0
        """the most requests worked on at once since start"""
        self._conns: set = set()
        """open client connections (kept alive between requests)"""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @contextlib.contextmanager
    def slot(self):
        """Hold one of ``slots`` while a request is worked on (waiting for one when all are busy)."""
        if self._slots is not None:
            self._slots.acquire()
        with self._lock:
            self.busy += 1
            self.busiest = max(self.busiest, self.busy)
        try:
            yield
        finally:
            with self._lock:
                self.busy -= 1
            if self._slots is not None:
                self._slots.release()

    def start(self) -> "FakeServer":
        server = type("_Listening", (_Server,), {"request_queue_size": self.knobs.backlog})
        self._httpd = server((self.host, self.port), Handler)
        self._httpd.fake = self
        self.port = self._httpd.server_address[1]
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def kill(self) -> None:
        """End as a killed process does: stop listening and cut every open connection, answers
        under way included (``stop`` lets kept-alive connections go on being served)."""
        self.stop()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed by its client already

    def connected(self, conn, is_open: bool) -> None:
        with self._lock:
            (self._conns.add if is_open else self._conns.discard)(conn)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def record(self, h: Handler) -> None:
        with self._lock:
            self.requests.append((h.command, h.path, dict(h.headers), h.body))

    @abc.abstractmethod
    def handle(self, h: Handler) -> None:
        """Answer one request as the real server would."""

    # --- knobs --------------------------------------------------------------------------

    @property
    def loading(self) -> bool:
        return time.monotonic() - self.started_at < self.knobs.loading_s

    def roll(self) -> str:
        """What this call does: 'ok', 'fail' or 'crash' (counted)."""
        with self._lock:
            self.calls += 1
            x = self.rng.random()
            k = self.knobs
            outcome = "crash" if x < k.crash_rate else "fail" if x < k.crash_rate + k.failure_rate else "ok"
            self.counts[outcome] += 1
            return outcome

    def scaled(self, seconds: float) -> float:
        j = self.knobs.jitter
        with self._lock:
            return max(0.0, seconds * (1.0 + self.rng.uniform(-j, j))) if j else seconds

    def first_wait(self) -> float:
        """The delay before the answer starts, warm-up included on the very first call."""
        with self._lock:
            warm = self.knobs.warmup_s if not getattr(self, "_warm", False) else 0.0
            self._warm = True
        return self.scaled(self.knobs.delay_s) + warm

    def work(self, units: float, since: float) -> None:
        """Wait until the delay plus ``units`` of work have passed ``since`` the request came in
        (one whole answer)."""
        self.wait_until(since + self.first_wait() + self.scaled(self.knobs.per_unit_s * units))

    def stream_tokens(self, toks: list, due: float, outcome: str, send_token, send_error) -> bool:
        """Send ``toks`` one ``per_unit_s`` apart after ``due`` (however long writing takes). A
        failing call is cut at a random token: the connection drops ('crash') or the server's
        own error goes out ('fail'). True when every token was sent."""
        cut = self.rng.randrange(len(toks)) if outcome != "ok" and toks else -1
        for i, tok in enumerate(toks):
            if i:
                due += self.scaled(self.knobs.per_unit_s)
                self.wait_until(due)
            if i == cut:
                if outcome == "crash":
                    raise Crash
                send_error()
                return False
            send_token(tok)
        return True

    @staticmethod
    def wait_until(t: float) -> None:
        time.sleep(max(0.0, t - time.monotonic()))
