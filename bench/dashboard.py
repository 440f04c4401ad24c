"""What the operator's dashboard costs the host: host CPU per turn with the page open in a browser
and without, in one run.

Runs the real host (``skull host --dashboard``, its own process) against the standard fake
workload (``host/fakes/workload.py``, in this process's threads) and four simulated skulls in
this process, each asking question after question and listening to the whole answer (mic and
speaker ``--speed`` times faster than real time). Headless Chromium (Debian's chromium and
chromedriver, through Selenium) holds the dashboard: in "open" phases it shows the page (live
skulls at 10 Hz, meters, waterfalls, the night's chart), in "closed" phases about:blank. The
phases alternate (``--rounds`` of each, ``--phase-s`` seconds each), so a machine that gets busier
or quieter during the run weighs on both alike. Each phase runs from the end of one turn to the end
of the ``--phase-turns``-th turn after it (any skull's), and the host's CPU time over it (user +
system, from /proc/PID/stat) is divided by those turns.

On a shared machine the host's CPU per phase varies by more than the dashboard costs, so the
bench also counts from the inside: the dashboard's own CPU time (``skull_dashboard_cpu_seconds``
in /metrics: its bookkeeping of every event, its pushes to the page, its HTTP answers) and the
skulls' status messages (``skull_status_messages``, sent only to a host that serves the
dashboard) times what reading one costs (measured here). Last line:

    closed_cpu_ms_per_turn=… open_cpu_ms_per_turn=… ratio=… extra_pct=… inside_pct=… turns_closed=… turns_open=…

Exit status 1 when extra_pct or inside_pct is 5 or more. Usage: python bench/dashboard.py [--rounds 4 --phase-turns 16]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import HostProcess, skull, unwind_on_sigterm  # noqa: E402

from host.fakes.workload import Workload, question_wav  # noqa: E402
from skull.machine import State  # noqa: E402

SKULLS = 4
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def cpu_ms(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far, milliseconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def dashboard_figures(page_url: str) -> tuple[float, float]:
    """(CPU ms the dashboard's own code took, status messages received) so far, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(page_url.rstrip("/") + "/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return values["skull_dashboard_cpu_seconds_total"] * 1000.0, values["skull_status_messages_total"]


def status_decode_ms(n: int = 20000) -> float:
    """CPU ms the host spends reading one ``status`` frame (decode and validate), measured here."""
    from skull.core import protocol as p
    reader = p.FrameReader(p.CLIENT_MESSAGES)
    frame = p.encode(p.Status("speaking", 12, "off", 0.42, -31.0, -120.0, -18.0, False))[0]
    t0 = time.process_time()
    for _ in range(n):
        reader.read_text(frame)
    return (time.process_time() - t0) * 1000.0 / n


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


async def talk(agent, done: list, stop: asyncio.Event) -> None:
    """One skull's visitors: press, speak, release, hear the whole answer, again."""
    while not stop.is_set():
        while agent.state is not State.IDLE:
            await asyncio.sleep(0.01)
        agent.turn_ended.clear()
        pin, spoken = agent.body.panel.button.pin, asyncio.Event()
        loop = asyncio.get_running_loop()
        agent.body.mic.on_finished = lambda: loop.call_soon_threadsafe(spoken.set)
        pin.drive_low()
        await asyncio.wait_for(spoken.wait(), 30)
        pin.drive_high()
        await asyncio.wait_for(agent.turn_ended.wait(), 60)
        if agent.finished and agent.finished[-1].outcome == "answered":
            done.append(time.monotonic())


async def measure(args, host: HostProcess, page_url: str, question: Path) -> dict:
    agents = [skull(host.port, f"bench-dash-{i}", mic_speed=args.speed, play_speed=args.speed, question=question)
              for i in range(SKULLS)]
    runs = [asyncio.create_task(a.run()) for a in agents]
    driver = await asyncio.to_thread(browser)
    stop, done = asyncio.Event(), []
    talkers = []
    results = {"open": [0.0, 0, 0.0, 0.0], "closed": [0.0, 0, 0.0, 0.0]}
    """phase -> [host CPU ms, turns, the dashboard's own CPU ms, status messages]"""
    try:
        while not all(a.state is State.IDLE for a in agents):
            await asyncio.sleep(0.05)
        talkers = [asyncio.create_task(talk(a, done, stop)) for a in agents]
        await asyncio.sleep(10.0)  # warm up: every skull mid-conversation
        for _ in range(args.rounds):
            for phase in ("closed", "open"):
                await asyncio.to_thread(driver.get, page_url if phase == "open" else "about:blank")
                await asyncio.sleep(1.0)  # the page connected (or gone) before the phase counts
                n0 = len(done)
                while len(done) == n0:  # the phase runs from one finished turn to its phase_turns-th after
                    await asyncio.sleep(0.005)
                t0, c0, n0 = time.monotonic(), cpu_ms(host.proc.pid), len(done)
                d0, s0 = await asyncio.to_thread(dashboard_figures, page_url)
                while len(done) < n0 + args.phase_turns:
                    await asyncio.sleep(0.005)
                c1, n1 = cpu_ms(host.proc.pid), len(done)
                d1, s1 = await asyncio.to_thread(dashboard_figures, page_url)
                results[phase][0] += c1 - c0
                results[phase][1] += n1 - n0
                results[phase][2] += d1 - d0
                results[phase][3] += s1 - s0
                took_s = time.monotonic() - t0
                print(f"{phase:<6} {took_s:4.1f} s: {n1 - n0:3d} turns, host CPU {c1 - c0:7.0f} ms = "
                      f"{(c1 - c0) / max(1, n1 - n0):5.1f} ms a turn, {(c1 - c0) / took_s / 10:4.1f} % of a core; "
                      f"the dashboard's own code {(d1 - d0) / max(1, n1 - n0):4.2f} ms a turn, "
                      f"{(s1 - s0) / max(1, n1 - n0):4.1f} status messages a turn", flush=True)
    finally:
        stop.set()
        for t in talkers + runs:
            t.cancel()
        await asyncio.gather(*talkers, *runs, return_exceptions=True)
        await asyncio.to_thread(driver.quit)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="closed/open pairs of phases (default 4)")
    ap.add_argument("--phase-turns", type=int, default=16, help="turns of each phase (default 16)")
    ap.add_argument("--speed", type=float, default=3.0, help="mic and speaker speed (default 3x real time)")
    args = ap.parse_args()
    unwind_on_sigterm()
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        print(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); scripts/bootstrap.sh "
              f"installs them", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("skull").setLevel(logging.CRITICAL)
    servers = Workload().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            question = question_wav(Path(tmp) / "question.wav")
            config = Workload.host_toml(servers) + '\n[dashboard]\nlisten = "127.0.0.1:0"\n'
            host = HostProcess(config, Path(tmp), "dashboard")
            try:
                line = host.proc.stdout.readline()
                m = re.search(r"dashboard at (http://\S+)", line)
                if not m:
                    raise RuntimeError(f"the host named no dashboard: {line!r}; see {host.log_path}")
                results = asyncio.run(measure(args, host, m.group(1), question))
            finally:
                host.stop()
    finally:
        for s in servers.values():
            s.stop()
    closed = results["closed"][0] / max(1, results["closed"][1])
    opened = results["open"][0] / max(1, results["open"][1])
    ratio = opened / closed if closed else float("nan")
    # what the dashboard adds, counted from the inside: its own code (with the page open) and the
    # skulls' status messages read, which come only because it is served
    own = results["open"][2] / max(1, results["open"][1])
    statuses = results["open"][3] / max(1, results["open"][1])
    decode = status_decode_ms()
    inside_pct = (own + statuses * decode) / closed * 100 if closed else float("nan")
    print(f"counted inside the host, page open: the dashboard's code {own:.2f} ms a turn + {statuses:.1f} status "
          f"messages a turn x {decode * 1000:.0f} us to read each = {inside_pct:.2f} % of the host's CPU per turn")
    print(f"closed_cpu_ms_per_turn={closed:.1f} open_cpu_ms_per_turn={opened:.1f} ratio={ratio:.3f} "
          f"extra_pct={(ratio - 1) * 100:.1f} inside_pct={inside_pct:.2f} turns_closed={results['closed'][1]} "
          f"turns_open={results['open'][1]}")
    return 0 if ratio < 1.05 and inside_pct < 5 else 1


if __name__ == "__main__":
    sys.exit(main())
