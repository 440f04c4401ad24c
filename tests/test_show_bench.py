"""A show night in miniature through bench/show.py: the host process SIGKILLed and restarted,
links cut, failing fake servers, a stuck button and idle periods. Every press is answered by
something the visitor hears (the answer, a fallback or, with no host, a line of the skull's own),
the skull never exits, its jaw shuts within 250 ms of every link loss, the stuck button is
reported once and freed once, and every idle period brings an attract line. The full night
(1,000 turns, memory and open files) is `python bench/show.py`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_show_night_never_stands_mute():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "show.py"), "--turns", "14", "--kill-every", "6",
                        "--cut-rate", "0.15", "--stall-rate", "0", "--idle-every", "5", "--speed", "16",
                        "--scale", "0.15", "--seed", "3", "--report-every", "100"],
                       capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    figures = dict(kv.split("=", 1) for kv in last.split())
    n = {k: float(v) for k, v in figures.items()}
    assert n["mute"] == 0 and n["skull_exits"] == 0, last
    assert n["host_restarts"] >= 2 and n["offline_lines"] >= 2, last  # presses with no host heard a line
    assert n["spoken"] == n["turns"], last
    assert n["answered"] >= n["turns"] / 2, last
    assert n["jaw_closed_after_loss_ms_max"] <= 250, last
    assert n["stuck_reports"] == 1 and n["stuck_freed"] == 1, last
    assert n["idle_periods"] >= 2 and n["attract_lines"] >= n["idle_periods"], last
