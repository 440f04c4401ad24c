"""``skull host --check``: is every configured backend there, which model, how fast.

Each backend makes one cheap round trip (health route, model list, or a one-word synthesis
where the server has nothing cheaper); all run at once. A server that is still loading its
model is reported as loading, and one that refuses connections as not reachable yet (with its
address); neither is waited for. A stage with several servers gets one line for each.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from skull.core.errors import BackendError

from .config import HostConfig
from .turn import Backends


@dataclass
class CheckLine:
    stage: str
    backend: str
    status: str
    """'up', 'down', 'loading' or '-' (nothing to check)"""
    detail: str
    ms: float | None = None
    url: str = ""


def check_backends(config: HostConfig, backends: Backends) -> list[CheckLine]:
    jobs = [("stt", config.stt, backends.stt), ("vision", config.vision, backends.vision),
            ("reply", config.reply, backends.reply), ("tts", config.tts, backends.tts),
            ("fallback", None, backends.fallback_voice)]

    def each(job) -> list[CheckLine]:
        stage, cfg, backend = job
        servers = getattr(getattr(backend, "http", None), "servers", ())
        if len(servers) < 2:
            return [one(stage, cfg, backend)]
        lines = []
        for server in servers:  # a stage with several servers: one line each, asked one after the other
            with backend.http.pinned(server):
                lines.append(one(stage, cfg, backend, server.url))
        return lines

    with ThreadPoolExecutor(len(jobs)) as pool:
        return [line for lines in pool.map(each, jobs) for line in lines]


def one(stage: str, cfg, backend, url: str = "") -> CheckLine:
    """One backend's round trip (to ``url`` when its stage has several servers)."""
    name = cfg.backend if cfg is not None else "espeak-ng"
    if backend is None:
        what = "the reply model looks at the snapshot itself" if name == "reply" else "no caption"
        return CheckLine(stage, name, "-", what)
    http = getattr(backend, "http", None)  # a backend on a model server talks to it through its Http
    url = url or (http.url if http is not None else getattr(backend, "url", ""))
    client = http if http is not None else backend if hasattr(backend, "wait_loading") else None
    if client is not None:  # a check reports a server that is starting as it is, without waiting
        client.wait_loading = False
    t0 = time.monotonic()
    try:
        detail = backend.check()
    except BackendError as exc:
        status = "loading" if "still loading" in str(exc) else "down"
        return CheckLine(stage, name, status, _not_yet(str(exc).split(": ", 1)[-1]), url=url)
    finally:
        if client is not None:
            client.wait_loading = True
    return CheckLine(stage, name, "up", detail, round((time.monotonic() - t0) * 1000, 1), url)


def _not_yet(detail: str) -> str:
    """A server that refuses connections may only be starting: a check says it is not reachable
    *yet* (the HTTP backends say so themselves; this covers the others, Wyoming's included)."""
    refused = "is not reachable (connection refused)"
    if refused in detail and f"{refused} yet" not in detail:
        return detail.replace(refused, f"{refused} yet", 1)
    return detail


def render(lines: list[CheckLine]) -> str:
    out = []
    for ln in lines:
        ms = f"{ln.ms:6.0f} ms" if ln.ms is not None else " " * 9
        status = ln.status.upper() if ln.status in ("down", "loading") else ln.status
        where = f"  {ln.url}" if ln.url and ln.status == "up" else ""
        out.append(f"{ln.stage:<8} {ln.backend:<12} {status:<7} {ms}  {ln.detail}{where}")
    return "\n".join(out)


def all_up(lines: list[CheckLine]) -> bool:
    return all(ln.status in ("up", "-") for ln in lines)
