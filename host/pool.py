"""The embedded engines on every core: a pool of worker processes for the engines that hold the GIL.

One pocketsphinx decoder in the host process serves one question at a time (behind a lock),
and holds the GIL for the whole decode, stalling the host's event loop. Here each worker
process builds the embedded backends of the stages that run in it (those registered with
``engine=True``) once, when the pool starts, and then answers calls one at a time; the host
sends each call to an idle worker. With one worker per core, two skulls on two cores are heard
at the same time. (moonshine and OpenCV release the GIL and use every core themselves: they
stay in the host process, where they measured faster; docs/model-servers.md.)

A worker that dies (or answers nothing within the stage's time budget, and is killed) fails the
call that was in it with a BackendError, like any backend failure: the turn speaks its fallback
line. The worker is replaced in the background, models loaded, while the others go on serving.

The parent talks to each worker over its own pipe. Workers are forked from multiprocessing's
fork server, which imports the backends once (a fork of the threaded host itself is not safe),
and are daemonic: they end with the host even when it is not stopped cleanly, and on their own
when the host's end of the pipe closes.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
import weakref
from dataclasses import dataclass

from skull.core.errors import BackendError, ConfigError

from .cores import allowed

log = logging.getLogger("host.pool")

START_TIMEOUT_S = 120.0
"""seconds a worker may take to load its models before the host gives up on it"""
STOP_TIMEOUT_S = 2.0
"""seconds a worker has to finish after it is asked to stop, before it is terminated"""
RESPAWN_TRIES = 3
"""attempts to replace a dead worker (a second apart) before the pool runs one worker short"""
_PRELOAD = ["numpy", "cv2", "pocketsphinx", "moonshine_voice", "host.build", "host.backends.stt", "host.backends.tts",
            "host.backends.vision"]
"""imported once by the fork server, so each worker starts as a fork with them already loaded"""


def cores() -> int:
    """The cores this process may run on (its CPU affinity; os.cpu_count() where there is none)."""
    mine = allowed()
    return max(1, len(mine) if mine is not None else (os.cpu_count() or 1))


@dataclass(frozen=True)
class _Failure:
    """A BackendError raised in a worker, as it crosses the pipe."""
    stage: str
    message: str
    retryable: bool


@dataclass(frozen=True)
class _Fault:
    """Any other exception raised in a worker: the backend library failed."""
    kind: str
    message: str


class _Worker:
    """One worker process and the host's end of its pipe."""

    def __init__(self, ctx, stages: dict, number: int, cores: set):
        self.number = number
        self._closing = threading.Lock()
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_work, args=(child, stages, number, cores), name=f"skull-engine-{number}",
                                   daemon=True)
        self.process.start()
        child.close()  # only the worker holds its end now: the worker's death is EOF here

    def ready(self, timeout_s: float):
        """The worker's ready message: {stage: backend name} and the log records of its start;
        raises ConfigError when its backends cannot start, or it does not start in time."""
        if not self.conn.poll(timeout_s):
            raise ConfigError(f"an embedded engine worker did not load its models within {timeout_s:g} s; "
                              f"set [embedded] workers = 0 to run the engines in the host process")
        try:
            kind, value, records = self.conn.recv()
        except (EOFError, OSError):
            raise ConfigError(f"an embedded engine worker died while loading its models (exit code "
                              f"{self._exitcode()}); set [embedded] workers = 0 to run the engines in the host "
                              f"process") from None
        _relog(records)
        if kind == "error":
            raise ConfigError(value)
        return value

    def _exitcode(self):
        self.process.join(0.5)
        return self.process.exitcode

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass  # the worker is gone already: the join below returns at once
        self.process.join(STOP_TIMEOUT_S)
        self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(STOP_TIMEOUT_S)
        with self._closing:  # the pool's close and a replacement that failed may both close it: once
            if not self.conn.closed:
                self.conn.close()


class EnginePool:
    """``workers`` processes, each holding the backends of ``stages`` (stage -> (StageConfig,
    sees_images)).

    ``start()`` loads the models in every worker at once and returns {stage: backend name}
    (the fallback's name where a backend could not load and named one); ``call()`` runs one
    backend method in an idle worker; ``close()`` stops them all (idempotent). Thread-safe:
    the host calls it from its thread pool."""

    def __init__(self, stages: dict, workers: int):
        self.stages, self.size = dict(stages), workers
        self.cores = allowed()
        """the cores the workers run on: the host's when the pool was made (a host whose threads
        keep to one core afterwards, [server] core, leaves every core to its workers)"""
        self.names: dict[str, str] = {}
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(_PRELOAD)
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        """the idle workers, the last to finish first: its model is the warmest in the caches"""
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._numbers = 0
        self.replaced = 0
        """workers replaced after dying or hanging, since the start"""
        self._finalizer = weakref.finalize(self, _stop_all, self._all)

    def start(self) -> dict[str, str]:
        t0 = time.monotonic()
        starting = [self._spawn() for _ in range(self.size)]
        try:
            for i, worker in enumerate(starting):
                names = worker.ready(START_TIMEOUT_S)
                if i == 0:
                    self.names = names
                self._idle.put(worker)
        except BaseException:
            self.close()
            raise
        log.info("%d embedded engine worker%s ready in %.1f s (%s)", self.size, "" if self.size == 1 else "s",
                 time.monotonic() - t0, ", ".join(f"{s}={n}" for s, n in self.names.items()))
        return self.names

    def _spawn(self) -> _Worker:
        with self._lock:  # never after close(): it stops the workers it finds in _all
            if self._closed:
                raise ConfigError("the engine pool is closed")
            self._numbers += 1
            worker = _Worker(self._ctx, self.stages, self._numbers, self.cores)
            self._all.append(worker)
        return worker

    def call(self, stage: str, method: str, args: tuple, timeout_s: float):
        """``method(*args)`` of ``stage``'s backend in an idle worker, within ``timeout_s``
        (waiting for a free worker included). A worker that dies or overruns is replaced and
        the call fails with a BackendError naming the stage."""
        deadline = time.monotonic() + timeout_s
        if self._closed:
            raise BackendError(stage, "the host is shutting down")
        try:
            worker = self._idle.get(timeout=timeout_s)
        except queue.Empty:
            raise BackendError(stage, f"no embedded engine worker was free within {timeout_s:g} s (all "
                                      f"{self.size} busy); raise [embedded] workers if the machine has cores to "
                                      f"spare", retryable=True) from None
        try:
            worker.conn.send((stage, method, args))
            if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
                self._lost(worker, "overran")
                raise BackendError(stage, f"the embedded {self.names.get(stage, stage)} gave no answer within "
                                          f"{timeout_s:g} s; its worker process was restarted")
            kind, value, records = worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            code = worker._exitcode()
            self._lost(worker, f"died (exit code {code})")
            raise BackendError(stage, f"the embedded {self.names.get(stage, stage)} worker process died (exit "
                                      f"code {code}); it is being restarted") from None
        self._idle.put(worker)
        _relog(records)
        if kind == "ok":
            return value
        if isinstance(value, _Failure):
            raise BackendError(value.stage, value.message.split(": ", 1)[-1], value.retryable)
        raise BackendError(stage, f"{value.kind}: {value.message}")

    def _lost(self, worker: _Worker, why: str) -> None:
        """Kill ``worker`` and start its replacement in the background."""
        log.error("embedded engine worker %d (pid %s) %s; replacing it", worker.number, worker.process.pid, why)
        self._discard(worker)
        threading.Thread(target=self._replace, name="engine-respawn", daemon=True).start()

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)

    def _replace(self) -> None:
        for attempt in range(RESPAWN_TRIES):
            if self._closed:
                return
            worker = None
            try:
                worker = self._spawn()
                worker.ready(START_TIMEOUT_S)
            except (ConfigError, OSError) as exc:
                if worker is not None:
                    self._discard(worker)
                if self._closed:
                    return
                log.error("replacing an embedded engine worker failed (%s)%s", exc,
                          "; trying again" if attempt + 1 < RESPAWN_TRIES else "; the pool runs one worker short")
                time.sleep(1.0)
                continue
            if self._closed:
                self._discard(worker)
                return
            self.replaced += 1
            self._idle.put(worker)
            return

    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and the log)."""
        with self._lock:
            return [w.process.pid for w in self._all]

    def close(self) -> None:
        """Stop every worker (a busy one is terminated after ``STOP_TIMEOUT_S``); idempotent."""
        with self._lock:
            self._closed = True
        self._finalizer()


def _stop_all(workers: list) -> None:
    for worker in list(workers):
        try:
            worker.conn.send(None)
        except (OSError, ValueError):
            pass  # gone already: joined and reaped below like the others
    for worker in list(workers):
        worker.stop()
    workers.clear()


class PooledBackend:
    """A stage's backend that lives in the pool's workers: the same methods, called there.
    ``name`` is the backend the workers built (moonshine, or pocketsphinx where it fell back)."""

    computes_here = False
    """the workers compute; this only waits (host.server.heavy_stages)"""

    def __init__(self, pool: EnginePool, stage: str, timeout_s: float):
        self.pool, self.stage, self.timeout_s = pool, stage, timeout_s
        self.name = pool.names[stage]

    def _call(self, method: str, *args):
        return self.pool.call(self.stage, method, args, self.timeout_s)

    def transcribe(self, samples, rate: int) -> str:
        return self._call("transcribe", samples, rate)

    def caption(self, image: bytes) -> str:
        return self._call("caption", image)

    def describe(self, image: bytes) -> dict:
        return self._call("describe", image)

    def synthesize(self, text: str):
        return self._call("synthesize", text)

    def check(self) -> str:
        detail = self._call("check")
        return f"{detail}, in {self.pool.size} worker process{'es' if self.pool.size != 1 else ''}"


# --- in the worker process -----------------------------------------------------------------------

class _Records(logging.Handler):
    """Log records of the worker, sent to the host with the next answer and logged there."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, record.getMessage()))

    def take(self) -> list:
        out, self.records = self.records, []
        return out


def _relog(records: list) -> None:
    for name, level, message in records:
        logging.getLogger(name).log(level, "%s", message)


def _work(conn, stages: dict, number: int, cores: set | None = None) -> None:
    """A worker's life: build the backends, say which, then answer calls until told to stop
    (None) or until the host's end of the pipe closes."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the host's to handle; it stops the workers
    try:  # one thread per worker: the workers are the parallelism, and more would fight over the cores
        import cv2
        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - a dependency
        pass
    # onnxruntime (inside moonshine-voice, piper) sizes its thread pool to the cores it may run on
    # when a model loads, and its threads spin while they wait: two workers with a pool each on two
    # cores slow each other down several times over. Loading on one core gives a pool of one; the
    # worker may then run on any core again.
    cores = cores or allowed()
    if cores and len(cores) > 1:
        os.sched_setaffinity(0, {sorted(cores)[number % len(cores)]})
    from .build import build_stage
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    root.setLevel(logging.INFO)
    backends = {}
    try:
        for stage, (cfg, sees_images) in stages.items():
            backends[stage] = build_stage(cfg, sees_images)
    except ConfigError as exc:
        conn.send(("error", str(exc), records.take()))
        return
    except Exception as exc:  # an engine failing to load in any other way
        conn.send(("error", f"{type(exc).__name__}: {exc}", records.take()))
        return
    finally:
        if cores:
            os.sched_setaffinity(0, cores)
    conn.send(("ready", {stage: b.name for stage, b in backends.items()}, records.take()))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if request is None:
            return
        stage, method, args = request
        try:
            reply = ("ok", getattr(backends[stage], method)(*args))
        except BackendError as exc:
            reply = ("error", _Failure(exc.stage, str(exc), exc.retryable))
        except Exception as exc:  # the engine failed: the host reports it as the stage's failure
            reply = ("error", _Fault(type(exc).__name__, str(exc)[:500]))
        try:
            conn.send((*reply, records.take()))
        except (OSError, ValueError):
            return
