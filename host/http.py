"""HTTP plumbing shared by the model-server backends.

One place knows how the servers fail: connection refused (not started, or still loading a model
before binding its port: asked again with a backoff within the stage's timeout), llama.cpp's 503 ``Loading model`` on every route, error bodies in
five shapes (``{"error":{"message"}}``, ``{"error":"..."}``, FastAPI's ``{"detail":...}``,
``{"message":...}`` and Flask's HTML page), and streams framed as SSE (``data:`` lines, ``:``
pings, ``[DONE]`` or not) or NDJSON. Every failure becomes a BackendError naming the stage,
the server and what to do, marked retryable when asking again could help.
"""
from __future__ import annotations

import base64
import contextlib
import html
import json
import logging
import re
import threading
import time
import weakref
from typing import Iterator

import requests
import requests.adapters
import requests.structures
import requests.utils
import urllib3
import urllib3.exceptions as u3
from urllib.parse import urlencode, urlsplit

from skull.core.errors import BackendError

log = logging.getLogger("host.http")

LOADING_POLL_S = 0.25
REFUSED_FIRST_S = 0.05
"""seconds before connecting again to a server that refused: doubled each time..."""
REFUSED_MAX_S = 0.5
"""...up to this"""
REFUSED_MARGIN_S = 0.3
"""seconds before a request's deadline when retrying stops, so the refusal itself is reported
(not a bare timeout)"""
REFUSED_WAIT_S = 5.0
"""seconds a request keeps asking a server that refuses (one that is starting binds its port in
a few seconds; a dead one must not keep the visitor waiting for the whole stage timeout before
the fallback line)"""
REFUSED_HOLD_S = 30.0
"""seconds a server that refused a whole request is taken for down (one try per request)"""


def error_message(resp: requests.Response) -> str:
    """The human part of an error response, whatever shape the server uses."""
    text = resp.text or ""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str) and err:
            return err
        detail = body.get("detail")
        if isinstance(detail, dict):
            return str(detail.get("message") or detail.get("error") or detail)
        if isinstance(detail, list) and detail:  # FastAPI validation errors
            return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg', d)}" if isinstance(d, dict)
                             else str(d) for d in detail)
        if detail:
            return str(detail)
        if body.get("message"):
            return str(body["message"])
    plain = html.unescape(re.sub(r"<[^>]+>", " ", text))
    return " ".join(plain.split())[:300] or f"HTTP {resp.status_code} with an empty body"


def is_loading(resp: requests.Response) -> bool:
    """llama.cpp answers every route with 503 ``Loading model`` until its model is in memory;
    LocalAI's readiness says ``starting``."""
    return resp.status_code == 503 and bool(re.search(r"loading|starting", resp.text or "", re.I))


def _table(stage: str, backend: str) -> str:
    return f'[{stage}."{backend}"]' if "." in backend else f"[{stage}.{backend}]"


class Refusals:
    """When to ask again a server that refuses connections. A server that is starting binds its
    port in a moment, so a request asks again with a backoff for up to ``REFUSED_WAIT_S``, and
    never past shortly before its deadline. One that refused a whole request that way is taken
    for down for ``REFUSED_HOLD_S``: the next requests try once, so it is used the moment it
    listens, but a turn of several sentences does not wait out the timeout for each of them.
    Shared by the HTTP and the Wyoming clients; thread-safe enough (one float, last writer wins)."""

    def __init__(self):
        self._down_at = float("-inf")
        """monotonic seconds when a request last gave up on a server that kept refusing"""

    def answered(self) -> None:
        """The server took a connection: it is up."""
        self._down_at = float("-inf")

    def pause(self, tries: int, first_refused: float, deadline: float) -> float | None:
        """Seconds to wait before connecting again, ``tries`` retries after the request was first
        refused at ``first_refused`` (monotonic), or None: give up."""
        now = time.monotonic()
        if now - self._down_at < REFUSED_HOLD_S and not tries:
            return None
        deadline = min(deadline, first_refused + REFUSED_WAIT_S + REFUSED_MARGIN_S)
        pause = min(REFUSED_MAX_S, REFUSED_FIRST_S * 2 ** tries, deadline - REFUSED_MARGIN_S - now)
        if pause <= 0:
            self._down_at = now
            return None
        return pause


_HEADERS = requests.utils.default_headers()
"""the headers requests sends with every request (User-Agent, Accept, Accept-Encoding, Connection)"""


def _pool_of(adapter: requests.adapters.HTTPAdapter, first: requests.PreparedRequest, verify, proxies):
    """The adapter's connection pool for ``first``'s server (requests before 2.32.2 names it
    get_connection)."""
    if hasattr(adapter, "get_connection_with_tls_context"):
        return adapter.get_connection_with_tls_context(first, verify, proxies=proxies or None)
    return adapter.get_connection(first.url, proxies or None)


def _body(json_, data, files) -> tuple:
    """(body, Content-Type) encoded as requests encodes them: ``files`` multipart with ``data``'s
    fields, else ``data`` (a form, or bytes as they are), else ``json``."""
    if files:
        fields = list((data or {}).items()) + list(files.items())
        return urllib3.encode_multipart_formdata(fields)
    if not data and json_ is not None:
        return json.dumps(json_, allow_nan=False).encode(), "application/json"
    if isinstance(data, dict):
        return (urlencode(list(data.items()), doseq=True), "application/x-www-form-urlencoded") if data else (None, None)
    return data or None, None


def _as_requests(exc: Exception) -> requests.exceptions.RequestException:
    """urllib3's failure as the exception requests raises for it (as its HTTPAdapter maps them)."""
    if isinstance(exc, u3.NewConnectionError):
        return requests.exceptions.ConnectionError(exc)
    if isinstance(exc, u3.ConnectTimeoutError):
        return requests.exceptions.ConnectTimeout(exc)
    if isinstance(exc, u3.ReadTimeoutError):
        return requests.exceptions.ReadTimeout(exc)
    if isinstance(exc, u3.ProxyError):
        return requests.exceptions.ProxyError(exc)
    if isinstance(exc, u3.SSLError):
        return requests.exceptions.SSLError(exc)
    return requests.exceptions.ConnectionError(exc)


KEEP_CONNECTIONS = 1024
"""connections kept alive per server, shared by every worker thread: opened only as needed, and
at least as many as the host's workers can ask at once (4 per turn of ``[server] max_turns``,
at most 1000 turns), so none is ever opened and thrown away"""
PROBE_EVERY_S = 1.0
"""seconds between health checks of a server taken out of its stage"""
PROBE_TIMEOUT_S = 2.0
"""seconds a health check waits for its answer"""


class Server:
    """One model server of a stage: its address, one pool of kept-alive connections that every
    worker thread shares, how many requests it is answering now, and whether it is taken out.

    Why a shared pool and blocking calls rather than async HTTP: the backends are plain blocking
    code (the embedded engines are CPU work that needs threads or processes anyway), every
    stage's retry and failure handling is written around them, and a thread waiting on a socket
    costs the host next to nothing (its stack is reserved, not resident). What made a crowd slow
    was not the threads but a fixed pool of 32 and a session per thread, so a burst opened new
    connections all at once; one pool per server, kept alive across turns, and a worker pool
    sized from ``[server] max_turns`` remove both.

    requests sets the pool up once (the environment's proxy for this address, honouring
    no_proxy, its CA bundle, TLS) and each answer is a ``requests.Response``; every request is
    then sent through that pool by urllib3 itself (:meth:`send`). requests' own way per request
    (its session: settings merged again, cookies, hooks, redirects, the request prepared and
    checked) nearly doubled each request's CPU: on loopback, side by side, a question's upload
    1.0-1.2 ms against 0.55-0.7 this way, a sentence's voice 1.1-1.2 against 0.7-0.85, a streamed
    reply of 40 tokens 1.8-1.9 against 1.2-1.3. A crowd of 64 skulls sends 64 of each within a few ms, all on the host's one
    core (bench/scale.py)."""

    def __init__(self, url: str):
        self.url = url
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=KEEP_CONNECTIONS)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # The environment's proxy (honouring no_proxy) and CA bundle for this address, read once.
        # ~/.netrc is not read.
        settings = self.session.merge_environment_settings(url, {}, None, None, None)
        self.session.trust_env = False
        self.session.proxies, self.session.verify = settings["proxies"], settings["verify"]
        first = requests.Request("GET", url).prepare()  # an address it cannot use raises here, at start
        proxies = requests.utils.select_proxy(url, self.session.proxies) and self.session.proxies
        self.pool = _pool_of(adapter, first, self.session.verify, proxies)
        """the connection pool every request to this server goes through (the proxy's, when one applies)"""
        adapter.cert_verify(self.pool, url, self.session.verify, None)  # the CA bundle (certifi's, or the environment's)
        plain = requests.utils.urldefragauth(url)
        proxied = adapter.request_url(first, proxies or {}) == requests.utils.urldefragauth(first.url)
        self._prefix = plain if proxied else urlsplit(url).path
        """what comes before a request's path: the whole address through an HTTP proxy, else the
        address's own path ('' or a prefix such as /whisper)"""
        user, password = requests.utils.get_auth_from_url(url)
        self._auth = ({"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode("latin1")).decode()}
                      if user or password else {})
        """HTTP basic authentication from a ``user:password@`` in the address, as requests sends it"""
        self.refusals = Refusals()
        self.busy = 0
        """requests it is answering now (a streamed reply counts until its stream is closed)"""
        self.asked = 0
        """requests sent to it so far (ties among the least busy go to the least asked)"""
        self.out_since: float | None = None
        """monotonic seconds when it was taken out after a failure, or None: it is in"""
        self.why = ""
        """what took it out"""

    def send(self, method: str, path: str, *, headers: dict, timeout: tuple, stream: bool = False,
             json=None, data=None, files=None, params=None) -> requests.Response:
        """One request as requests sends it (its default headers, its body encodings: ``json``,
        form ``data``, multipart ``files``, ``params``; no redirects followed), its failures
        raised as requests' exceptions, the answer a ``requests.Response``; read whole unless
        ``stream``."""
        target = self._prefix + path + (("&" if "?" in path else "?") + urlencode(params) if params else "")
        try:
            body, kind = _body(json, data, files)
        except (TypeError, ValueError) as exc:  # as requests refuses them (not JSON, a field it cannot send)
            raise requests.exceptions.InvalidJSONError(f"the request's body cannot be sent: {exc}") from None
        sent = requests.structures.CaseInsensitiveDict(_HEADERS)
        sent.update(self._auth)
        if kind:
            sent["Content-Type"] = kind
        sent.update(headers)
        try:
            raw = self.pool.urlopen(method, target, body=body, headers=sent, redirect=False, assert_same_host=False,
                                    preload_content=False, decode_content=False, retries=False,
                                    timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]))
        except (u3.HTTPError, OSError) as exc:
            raise _as_requests(exc) from None
        except ValueError:  # a header value with a line break in it (an api_key pasted with its newline)
            raise requests.exceptions.InvalidHeader("a header cannot be sent: a value has a line break in it; "
                                                    "check api_key in host.toml") from None  # not the key itself
        resp = requests.Response()
        resp.status_code, resp.reason, resp.raw, resp.url = raw.status, raw.reason, raw, self.url + path
        resp.headers = requests.structures.CaseInsensitiveDict(raw.headers)
        resp.encoding = requests.utils.get_encoding_from_headers(resp.headers)
        if not stream:
            resp.content  # read whole: the connection goes back to the pool now
        return resp


class _Lease:
    """One request's hold on a server, given back once (when the answer is read, or its stream closed)."""

    def __init__(self, http: "Http", server: Server):
        self.http, self.server, self.open = http, server, True

    def release(self) -> None:
        with self.http._lock:
            if self.open:
                self.open = False
                self.server.busy -= 1


class Http:
    """Requests to the server(s) of one stage, with the stage's timeout as a deadline.

    ``url`` is one address or several: with several, each request goes to the least busy server
    that is in; a server that cannot be reached, drops an answer, times out or says it is
    unavailable is taken out at once (the request goes on to the next one) and comes back in when
    its health check (``GET /health``, any answer but a 5xx) passes. With one server nothing is
    ever taken out: it is asked as it is."""

    def __init__(self, stage: str, server: str, url, api_key: str = "", timeout_s: float = 20.0,
                 connect_timeout_s: float = 3.0, health_path: str = "/health"):
        urls = [url] if isinstance(url, str) else list(url)
        if not urls or not all(urls):
            raise BackendError(stage, f"{server} needs a url: set {_table(stage, server)} url in host.toml")
        for u in urls:
            if not isinstance(u, str) or not re.match(r"https?://", u):
                raise BackendError(stage, f"{_table(stage, server)} url = {u!r} must start with http:// or https://")
        self.stage, self.server = stage, server
        try:
            self.servers = [Server(u.rstrip("/")) for u in urls]
        except requests.exceptions.RequestException as exc:  # e.g. http://gpu:80a, a space in the name
            raise BackendError(stage, f"{_table(stage, server)} url: {exc}; write it as http://host:port") from None
        self.url = self.servers[0].url
        """the (first) server's address"""
        self.table = _table(stage, server)
        """where this server's settings live in host.toml, e.g. [stt."whisper.cpp"]"""
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.health_path = health_path
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.wait_loading = True
        """wait while the server starts (refuses connections) or loads its model (a turn does; a
        health check only reports it)"""
        self._lock = threading.RLock()  # an abandoned stream gives its server back from the garbage collector
        self._local = threading.local()
        self._prober: threading.Thread | None = None

    @property
    def urls(self) -> tuple:
        return tuple(s.url for s in self.servers)

    @property
    def refusals(self) -> Refusals:
        return self.servers[0].refusals

    def _current(self) -> Server:
        """The server this thread asked last (the one a streamed answer comes from)."""
        return getattr(self._local, "server", None) or self.servers[0]

    def where(self, path: str = "", url: str | None = None) -> str:
        return f"{self.server} at {url or self._current().url}{path}"

    # --- spreading and taking out -------------------------------------------------------------

    @contextlib.contextmanager
    def pinned(self, server: Server):
        """This thread's requests go to ``server`` alone, in or out (``skull host --check`` asks
        each server of a stage in turn)."""
        self._local.pinned = server
        try:
            yield server
        finally:
            self._local.pinned = None

    def _pick(self, tried: list) -> Server | None:
        """The least busy server that is in and not tried yet by this request; when every one is
        out, the untried one out longest (a turn must ask someone). None: all were tried."""
        pinned = getattr(self._local, "pinned", None)
        with self._lock:
            fresh = [s for s in self.servers if s not in tried and pinned in (None, s)]
            if not fresh:
                return None
            ins = [s for s in fresh if s.out_since is None]
            chosen = (min(ins, key=lambda s: (s.busy, s.asked)) if ins
                      else min(fresh, key=lambda s: s.out_since))
            chosen.busy += 1
            chosen.asked += 1
        self._local.server = chosen
        return chosen

    def _spare(self, tried: list) -> bool:
        """Another server that is in and not yet tried by this request exists (and may be asked)."""
        if getattr(self._local, "pinned", None) is not None:
            return False
        with self._lock:
            return any(s.out_since is None and s not in tried for s in self.servers)

    def take_out(self, server: Server, why: str) -> None:
        """Stop sending turns to ``server`` until its health check passes (never the only one)."""
        if len(self.servers) < 2:
            return
        with self._lock:
            if server.out_since is not None:
                return
            server.out_since, server.why = time.monotonic(), why
            left = sum(s.out_since is None for s in self.servers)
            if self._prober is None or not self._prober.is_alive():
                self._prober = threading.Thread(target=self._probe_out, name=f"health-{self.stage}", daemon=True)
                self._prober.start()
        log.warning("%s: %s is taken out (%s); %d of %d %s servers left, it comes back when its health check "
                    "passes", self.stage, self.where(url=server.url), why, left, len(self.servers), self.server)

    def _back_in(self, server: Server, how: str) -> None:
        with self._lock:
            if server.out_since is None:
                return
            server.out_since, server.why = None, ""
        log.warning("%s: %s is back in (%s)", self.stage, self.where(url=server.url), how)

    def _probe_out(self) -> None:
        """Health-check the servers that are out, every ``PROBE_EVERY_S``, until all are back."""
        while True:
            time.sleep(PROBE_EVERY_S)
            with self._lock:
                out = [s for s in self.servers if s.out_since is not None]
                if not out:
                    self._prober = None
                    return
            for server in out:
                if self.healthy(server):
                    self._back_in(server, f"its health check {self.health_path} passed")

    def healthy(self, server: Server) -> bool:
        """One health check: the server answers ``health_path`` with anything but a 5xx."""
        try:
            resp = server.send("GET", self.health_path, headers=self.headers,
                               timeout=(min(self.connect_timeout_s, PROBE_TIMEOUT_S), PROBE_TIMEOUT_S))
        except requests.exceptions.RequestException:
            return False
        resp.close()
        return resp.status_code < 500

    # --- requests -----------------------------------------------------------------------------

    def request(self, method: str, path: str, *, stream: bool = False, deadline: float | None = None,
                ok=(200,), **kwargs) -> requests.Response:
        """Send one request. Waits (until ``deadline``) while the server refuses connections
        (starting) or says it is loading; with several servers, goes on to the next one instead.
        A status not in ``ok`` raises BackendError with the server's own message."""
        deadline = deadline if deadline is not None else time.monotonic() + self.timeout_s
        headers = {**self.headers, **kwargs.pop("headers", {})}
        tried: list[Server] = []
        server = self._pick(tried)
        lease = _Lease(self, server)
        refused, tries = None, 0  # when the server first refused this request, and how often since
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BackendError(self.stage, f"{self.where(path)} gave no answer within {self.timeout_s:g} s",
                                       retryable=True)
                try:
                    resp = server.send(method, path, headers=headers, stream=stream,
                                       timeout=(min(self.connect_timeout_s, left), left), **kwargs)
                except requests.exceptions.ConnectionError as exc:
                    reason = _reason(exc)
                    if self._spare(tried + [server]):  # several servers: this one is out, ask the next now
                        server, lease, refused, tries = self._next(server, lease, tried, reason)
                        continue
                    if reason == "connection refused" and self.wait_loading:
                        if refused is None:
                            refused = time.monotonic()
                        pause = server.refusals.pause(tries, refused, deadline)
                        if pause is not None:  # not listening yet: a server that is starting binds its port soon
                            tries += 1
                            time.sleep(pause)
                            continue
                        reason += (f", tried for {time.monotonic() - refused:.1f} s" if tries
                                   else ", as throughout the last request")
                    self.take_out(server, reason)
                    raise BackendError(self.stage, self._unreachable(reason), retryable=True) from None
                except requests.exceptions.Timeout:
                    self.take_out(server, f"no answer within {self.timeout_s:g} s")
                    raise BackendError(self.stage, f"{self.where(path)} gave no answer within {self.timeout_s:g} s",
                                       retryable=True) from None
                except requests.exceptions.RequestException as exc:
                    raise BackendError(self.stage, f"request to {self.where(path)} failed ({_reason(exc)})",
                                       retryable=True) from None
                server.refusals.answered()
                if is_loading(resp) and self._spare(tried + [server]):
                    resp.close()
                    server, lease, refused, tries = self._next(server, lease, tried, "still loading its model")
                    continue
                if is_loading(resp) and self.wait_loading and time.monotonic() + LOADING_POLL_S < deadline:
                    resp.close()
                    time.sleep(LOADING_POLL_S)  # wait for the model to finish loading
                    continue
                if resp.status_code not in ok:
                    raise self.failure(resp, path)
                if server.out_since is not None:
                    self._back_in(server, "it answered a request")
                if stream:  # the server is busy until the stream is read or closed
                    answer = weakref.ref(resp)  # not resp itself: a cycle would keep every body until a GC

                    def closed(lease=lease):
                        lease.release()
                        if answer() is not None:
                            requests.Response.close(answer())
                    resp.close = closed
                    weakref.finalize(resp, lease.release)
                    lease = None
                return resp
        finally:
            if lease is not None:
                lease.release()

    def _next(self, server: Server, lease: _Lease, tried: list, why: str):
        """Take ``server`` out and hold the next one: (server, lease, refused, tries) to go on with."""
        self.take_out(server, why)
        lease.release()
        tried.append(server)
        nxt = self._pick(tried)
        return nxt, _Lease(self, nxt), None, 0

    def _unreachable(self, reason: str) -> str:
        if reason == "connection refused" and not self.wait_loading:  # a health check: as it is now
            return (f"{self.where()} is not reachable (connection refused) yet: start it, or wait while it "
                    f"starts; else fix {self.table} url in host.toml")
        return f"{self.where()} is not reachable ({reason}); start it, or fix {self.table} url in host.toml"

    def failure(self, resp: requests.Response, path: str) -> BackendError:
        msg = error_message(resp)
        status = resp.status_code
        resp.close()
        if is_loading(resp):
            return BackendError(self.stage, f"{self.where()} is still loading its model ({msg})", retryable=True)
        if 300 <= status < 400:  # requests are not sent on: a POST turned into a GET would fail anyway
            where_to = resp.headers.get("Location") or "elsewhere"
            return BackendError(self.stage, f"{self.where(path)} sends the request on to {where_to} (HTTP {status}); "
                                            f"set {self.table} url to the address it points to")
        if status in (401, 403):
            return BackendError(self.stage, f"{self.where(path)} refused the key (HTTP {status}: {msg}); set "
                                            f"{self.table} api_key")
        if status == 404 and "model" in msg.lower():
            return BackendError(self.stage, f"{self.where(path)}: {msg} (HTTP 404); check {self.table} model")
        if status == 404:
            return BackendError(self.stage, f"{self.where(path)} has no such endpoint (HTTP 404: {msg}); is "
                                            f"[{self.stage}] backend the right kind of server?")
        return BackendError(self.stage, f"{self.where(path)} answered HTTP {status}: {msg}",
                            retryable=status >= 500 and status != 501)

    def json(self, method: str, path: str, **kwargs):
        resp = self.request(method, path, **kwargs)
        try:
            return resp.json()
        except ValueError:
            raise BackendError(self.stage, f"{self.where(path)} sent something that is not JSON: "
                                           f"{resp.text[:120]!r}", retryable=True) from None

    def broken(self, path: str, exc: Exception) -> BackendError:
        """A response that was cut off in the middle (the server dropped the connection): with
        several servers, that one is taken out."""
        reason = _reason(exc)
        self.take_out(self._current(), f"dropped an answer ({reason})")
        return BackendError(self.stage, f"{self.where(path)} dropped the connection mid-answer ({reason})",
                            retryable=True)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for pattern, short in ((r"Connection refused", "connection refused"),
                           (r"Name or service not known|nodename nor servname|getaddrinfo", "unknown host name"),
                           (r"RemoteDisconnected|closed connection without response", "closed without answering"),
                           (r"Connection reset", "connection reset"),
                           (r"IncompleteRead|InvalidChunkLength|ended prematurely", "answer cut short")):
        if re.search(pattern, text):
            return short
    return text[:160]


def iter_sse(http: Http, resp: requests.Response, path: str, cancel: threading.Event | None = None) -> Iterator[dict]:
    """JSON objects of an SSE stream. Skips ``:`` pings and blank lines, stops at ``[DONE]`` or at
    the end of the body (some servers send no ``[DONE]``). An ``error`` event raises."""
    try:
        for line in resp.iter_lines(decode_unicode=True):
            if cancel is not None and cancel.is_set():
                return
            if not line or not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                return
            try:
                obj = json.loads(payload)
            except ValueError:
                raise BackendError(http.stage, f"{http.where(path)} sent a stream event that is not JSON: "
                                               f"{payload[:120]!r}", retryable=True) from None
            if isinstance(obj, dict) and obj.get("error"):
                err = obj["error"]
                msg = err.get("message", err) if isinstance(err, dict) else err
                raise BackendError(http.stage, f"{http.where(path)} failed mid-stream: {msg}", retryable=True)
            yield obj
    except requests.exceptions.RequestException as exc:
        raise http.broken(path, exc) from None
    finally:
        resp.close()


def iter_ndjson(http: Http, resp: requests.Response, path: str, cancel: threading.Event | None = None) -> Iterator[dict]:
    """JSON objects of an NDJSON stream (Ollama). An ``{"error": ...}`` line raises."""
    try:
        for line in resp.iter_lines(decode_unicode=True):
            if cancel is not None and cancel.is_set():
                return
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise BackendError(http.stage, f"{http.where(path)} sent a line that is not JSON: {line[:120]!r}",
                                   retryable=True) from None
            if isinstance(obj, dict) and obj.get("error"):
                raise BackendError(http.stage, f"{http.where(path)} failed mid-stream: {obj['error']}", retryable=True)
            yield obj
    except requests.exceptions.RequestException as exc:
        raise http.broken(path, exc) from None
    finally:
        resp.close()


def content_bytes(http: Http, resp: requests.Response, path: str) -> bytes:
    """The whole body, or a retryable error when the connection drops before its end."""
    try:
        return resp.content
    except requests.exceptions.RequestException as exc:
        raise http.broken(path, exc) from None
    finally:
        resp.close()
