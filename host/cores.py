"""Where the host process's threads run: on one core when its work is waiting on servers
(``[server] core``, host.server.host_core), while the processes it starts that compute (espeak-ng's
speakers, or its program) keep every core it may use."""
from __future__ import annotations

import contextlib
import os
import threading

_every: set[int] | None = None
"""the cores the process could use before its threads were kept to one; None: not kept"""
_lock = threading.Lock()


def allowed() -> set[int] | None:
    """The cores this process may run on, or None where the system has no CPU affinity."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return None


def threads() -> set[int]:
    """This process's threads (Linux; empty elsewhere)."""
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def keep_to_core(core: int) -> None:
    """Every thread of this process runs on ``core`` from now on, and so do the threads and child
    processes they start (the [embedded] worker processes keep the cores the pool was made with).
    Threads started while this runs are caught too: it goes over them until no new one appears."""
    global _every
    with _lock:
        if _every is None:
            _every = set(os.sched_getaffinity(0))
    done: set[int] = set()
    while todo := threads() - done:
        for tid in todo:
            with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
                os.sched_setaffinity(tid, {core})
        done |= todo


@contextlib.contextmanager
def every_core():
    """Child processes started inside run on every core the host may use, even when its threads
    keep to one: the calling thread widens its own affinity while it starts them (a child takes
    its parent thread's), then keeps to its core again."""
    if _every is None:
        yield
        return
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, _every)
    try:
        yield
    finally:
        os.sched_setaffinity(0, mine)
