"""Run fake model servers by hand.

    python -m host.fakes llama.cpp --port 8080 --delay 0.25 --per-unit 0.025 --set reply="Boo! Hello."
    python -m host.fakes workload --port 9100     # the standard workload: four servers, prints a host.toml

Kinds: whisper.cpp, speaches, kokoro, llama.cpp, ollama, piper, xtts. ``--set key=value`` passes
a server option (transcript, reply, mmproj=false, legacy_errors=true, api=text, rate=16000...).
Stop with Ctrl-C.
"""
from __future__ import annotations

import argparse
import sys
import threading

from .core import Knobs
from .servers import FAKES
from .workload import Workload


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host.fakes", description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=sorted(FAKES) + ["workload"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port (workload: the first of four)")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before the answer or first token")
    ap.add_argument("--per-unit", type=float, default=0.0,
                    help="seconds per unit: audio second (stt, voices), token (language models)")
    ap.add_argument("--jitter", type=float, default=0.0, help="0.3 = every wait scaled by 0.7..1.3")
    ap.add_argument("--failure-rate", type=float, default=0.0)
    ap.add_argument("--crash-rate", type=float, default=0.0, help="share of calls whose connection drops mid-answer")
    ap.add_argument("--warmup", type=float, default=0.0, help="extra seconds on the first call")
    ap.add_argument("--loading", type=float, default=0.0, help="llama.cpp: 503 'Loading model' for this long")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--slots", type=int, default=0,
                    help="requests worked on at once, the rest queue (llama-server --parallel); 0: no limit")
    ap.add_argument("--backlog", type=int, default=128, help="connections waiting to be accepted (listen queue)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a server option")
    args = ap.parse_args(argv)
    if args.slots < 0 or args.backlog < 1:
        ap.error(f"--slots must be 0 or more (0: no limit) and --backlog 1 or more, got {args.slots} and {args.backlog}")
    for item in args.set:
        if "=" not in item:
            ap.error(f"--set {item!r}: write KEY=VALUE")
    options = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.kind == "workload":
        work = Workload(jitter=args.jitter, failure_rate=args.failure_rate, crash_rate=args.crash_rate,
                        warmup_s=args.warmup, seed=args.seed, slots=args.slots, backlog=args.backlog)
        servers = work.start(args.port)
        print("# the standard fake workload is up; save this as host.toml:", flush=True)
        print(Workload.host_toml(servers), flush=True)
    else:
        knobs = Knobs(args.delay, args.per_unit, args.jitter, args.failure_rate, args.crash_rate, args.warmup,
                      args.loading, args.seed, args.slots, args.backlog)
        try:
            srv = FAKES[args.kind](knobs, host=args.host, port=args.port, **options).start()
        except TypeError as exc:
            print(f"error: {args.kind} does not take that option ({exc})", file=sys.stderr)
            return 2
        servers = {args.kind: srv}
        print(f"fake {args.kind} listening on {srv.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        for s in servers.values():
            s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
