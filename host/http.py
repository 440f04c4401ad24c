"""HTTP plumbing shared by the model-server backends.

One place knows how the servers fail: connection refused (not started, or still loading a model
before binding its port: asked again with a backoff within the stage's timeout), llama.cpp's 503 ``Loading model`` on every route, error bodies in
five shapes (``{"error":{"message"}}``, ``{"error":"..."}``, FastAPI's ``{"detail":...}``,
``{"message":...}`` and Flask's HTML page), and streams framed as SSE (``data:`` lines, ``:``
pings, ``[DONE]`` or not) or NDJSON. Every failure becomes a BackendError naming the stage,
the server and what to do, marked retryable when asking again could help.
"""
from __future__ import annotations

import html
import json
import re
import threading
import time
from typing import Iterator

import requests

from skull.core.errors import BackendError

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


class Http:
    """Requests to one server for one stage, with the stage's timeout as a deadline."""

    def __init__(self, stage: str, server: str, url: str, api_key: str = "", timeout_s: float = 20.0,
                 connect_timeout_s: float = 3.0):
        if not url:
            raise BackendError(stage, f"{server} needs a url: set {_table(stage, server)} url in host.toml")
        if not re.match(r"https?://", url):
            raise BackendError(stage, f"{_table(stage, server)} url = {url!r} must start with http:// or https://")
        self.stage, self.server, self.url = stage, server, url.rstrip("/")
        self.table = _table(stage, server)
        """where this server's settings live in host.toml, e.g. [stt."whisper.cpp"]"""
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.wait_loading = True
        """wait while the server starts (refuses connections) or loads its model (a turn does; a
        health check only reports it)"""
        self.refusals = Refusals()
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:  # one keep-alive session per worker thread
            s = self._local.session = requests.Session()
        return s

    def where(self, path: str = "") -> str:
        return f"{self.server} at {self.url}{path}"

    def request(self, method: str, path: str, *, stream: bool = False, deadline: float | None = None,
                ok=(200,), **kwargs) -> requests.Response:
        """Send one request. Waits (until ``deadline``) while the server refuses connections
        (starting) or says it is loading. A status not in ``ok`` raises BackendError with the
        server's own message."""
        deadline = deadline if deadline is not None else time.monotonic() + self.timeout_s
        headers = {**self.headers, **kwargs.pop("headers", {})}
        refused, tries = None, 0  # when the server first refused this request, and how often since
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendError(self.stage, f"{self.where(path)} gave no answer within {self.timeout_s:g} s",
                                   retryable=True)
            try:
                resp = self.session.request(method, self.url + path, headers=headers, stream=stream,
                                            timeout=(min(self.connect_timeout_s, left), left), **kwargs)
            except requests.exceptions.ConnectionError as exc:
                reason = _reason(exc)
                if reason == "connection refused" and self.wait_loading:
                    if refused is None:
                        refused = time.monotonic()
                    pause = self.refusals.pause(tries, refused, deadline)
                    if pause is not None:  # not listening yet: a server that is starting binds its port soon
                        tries += 1
                        time.sleep(pause)
                        continue
                    reason += (f", tried for {time.monotonic() - refused:.1f} s" if tries
                               else ", as throughout the last request")
                raise BackendError(self.stage, self._unreachable(reason), retryable=True) from None
            except requests.exceptions.Timeout:
                raise BackendError(self.stage, f"{self.where(path)} gave no answer within {self.timeout_s:g} s",
                                   retryable=True) from None
            except requests.exceptions.RequestException as exc:
                raise BackendError(self.stage, f"request to {self.where(path)} failed ({_reason(exc)})",
                                   retryable=True) from None
            self.refusals.answered()
            if is_loading(resp) and self.wait_loading and time.monotonic() + LOADING_POLL_S < deadline:
                resp.close()
                time.sleep(LOADING_POLL_S)  # wait for the model to finish loading
                continue
            if resp.status_code not in ok:
                raise self.failure(resp, path)
            return resp

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
        """A response that was cut off in the middle (the server dropped the connection)."""
        return BackendError(self.stage, f"{self.where(path)} dropped the connection mid-answer ({_reason(exc)})",
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
