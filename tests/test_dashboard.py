"""The operator's dashboard: a host serving it with two simulated skulls, the page opened in
headless Chromium (Debian's chromium and chromedriver, through Selenium), and the token,
/metrics and controls checked from outside as a browser or Prometheus would reach them.

One host and its two skulls serve the whole module; they run on an event loop of their own in a
thread, and the tests drive them through it. Screenshots go to $SKULL_ARTIFACTS (default: a
pytest temporary folder), e.g. ``SKULL_ARTIFACTS=build/artifacts pytest tests/test_dashboard.py``.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import ask, sim_body, skull_config, wait_for
from host import events as ev
from host.config import DashboardConfig, HostConfig, ServerConfig
from host.server import Host
from skull import events as sev
from skull.agent import Agent
from skull.core.errors import ConfigError
from skull.demo import press_and_speak
from skull.machine import State

TOKEN = "night-of-the-skulls"
NAMES = ("mr-bones", "lady-bones")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


class Show:
    """A host with its dashboard and two simulated skulls, on an event loop in a thread."""

    def __init__(self, backends):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="show-loop", daemon=True)
        self.thread.start()
        self.host_events: list = []
        self.said: dict[str, list] = {n: [] for n in NAMES}
        self.run(self._start(backends), 30)

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self, backends):
        cfg = HostConfig(server=ServerConfig(port=0, token=TOKEN, ping_interval_s=1.0, ping_timeout_s=2.0),
                         dashboard=DashboardConfig(listen="127.0.0.1:0"))
        self.host = await Host(cfg, backends).start()
        self.host.events.subscribe(self.host_events.append, ev.Control)
        self.agents, self.tasks = {}, []
        for name in NAMES:
            scfg = skull_config(self.host.port, token=TOKEN, name=name)
            agent = self.agents[name] = Agent(scfg, sim_body(scfg, speed=3.0))
            agent.events.subscribe(lambda e, n=name: self.said[n].append(e.text), sev.LineSaid)
            self.tasks.append(asyncio.create_task(agent.run()))
        await wait_for(lambda: all(a.state is State.IDLE for a in self.agents.values()), 20)
        await wait_for(lambda: all(self.host.dashboard.board.skulls.get(n, None) is not None
                                   and self.host.dashboard.board.skulls[n].state == "idle" for n in NAMES), 10)

    async def _stop(self):
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.host.stop()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:  # what asyncio.run would cancel at the end
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def stop(self):
        self.run(self._stop(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.host.dashboard.port}"

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


@pytest.fixture(scope="module")
def show(backends):
    s = Show(backends)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("SKULL_ARTIFACTS") or tmp_path_factory.mktemp("dashboard"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def metrics(show) -> dict:
    status, body = show.get(f"/metrics?token={TOKEN}")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


# --- without a browser ---------------------------------------------------------------------------

def test_without_the_token_the_page_its_websocket_and_metrics_are_refused(show):
    for path in ("/", "/metrics", "/snapshot/mr-bones", "/?token=wrong-token"):
        status, body = show.get(path)
        assert status == 401, path
        assert b"needs its token" in body
    assert show.get("/metrics", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    status, page = show.get(f"/?token={TOKEN}")
    assert status == 200 and b"<title>Skulls" in page

    async def page_socket(token):
        async with connect(f"ws://127.0.0.1:{show.host.dashboard.port}/ws?token={token}") as ws:
            return json.loads(await ws.recv())
    for token in ("", "wrong"):
        with pytest.raises(InvalidStatus) as refused:
            show.run(page_socket(token))
        assert refused.value.response.status_code == 401
    first = show.run(page_socket(TOKEN))
    assert first["t"] == "all" and {s["name"] for s in first["skulls"]} == set(NAMES)


def test_a_dashboard_beyond_this_machine_needs_a_token(backends):
    cfg = HostConfig(dashboard=DashboardConfig(listen="0.0.0.0:0"))
    with pytest.raises(ConfigError, match="refusing to serve the dashboard on 0.0.0.0 without a token"):
        Host(cfg, backends)


def test_metrics_parse_with_the_exporters_own_parser_and_count_turns(show):
    before = metrics(show)
    show.run(ask(show.agents["mr-bones"]), 60)
    show.run(wait_for(lambda: show.host.dashboard.board.skulls["mr-bones"].last.get("first_audio") is not None
                      and show.host.dashboard.board.skulls["mr-bones"].state == "idle"), 10)
    after = metrics(show)
    turns = ("skull_turns_total", (("skull", "mr-bones"),))
    assert after[turns] == before.get(turns, 0) + 1
    assert after[("skull_first_audio_seconds_count", ())] == before[("skull_first_audio_seconds_count", ())] + 1
    assert after[("skull_skulls_connected", ())] == 2
    assert after[("skull_status_messages_total", ())] > before[("skull_status_messages_total", ())]
    assert after[("skull_dashboard_cpu_seconds_total", ())] > 0


def test_a_control_the_host_cannot_carry_out_is_answered_not_dropped(show):
    async def controls():
        async with connect(f"ws://127.0.0.1:{show.host.dashboard.port}/ws?token={TOKEN}") as ws:
            await ws.recv()
            answers = []
            for req in ({"control": "dance", "skull": "mr-bones"}, {"control": "say", "skull": "nobody", "text": "hi"},
                        {"control": "say", "skull": "mr-bones", "text": "  "}, "not json"):
                await ws.send(req if isinstance(req, str) else json.dumps(req))
                while (answer := json.loads(await ws.recv()))["t"] != "control":
                    pass
                answers.append(answer)
            return answers
    answers = show.run(controls())
    assert [a["ok"] for a in answers] == [False] * 4
    assert "unknown control 'dance'" in answers[0]["message"]
    assert "skull 'nobody' is not connected" in answers[1]["message"]
    assert "nothing to say" in answers[2]["message"]
    assert "a control is" in answers[3]["message"]


async def page_control(show, **req) -> dict:
    """One control sent as the page sends it; the host's answer."""
    async with connect(f"ws://127.0.0.1:{show.host.dashboard.port}/ws?token={TOKEN}") as ws:
        await ws.recv()
        await ws.send(json.dumps(req))
        while (answer := json.loads(await ws.recv()))["t"] != "control":
            pass
        return answer


def test_mute_keeps_a_skull_from_taking_turns_until_unmuted_and_reset_forgets_its_conversation(show):
    board, lady = show.host.dashboard.board, show.agents["lady-bones"]
    assert show.run(page_control(show, control="mute", skull="lady-bones"))["ok"]
    show.run(wait_for(lambda: lady.muted and board.skulls["lady-bones"].muted, 5))
    turn = lady.machine.turn

    async def press():
        pin = lady.body.panel.button.pin
        pin.drive_low()
        await asyncio.sleep(0.4)
        pin.drive_high()
        await asyncio.sleep(0.2)
    show.run(press())
    assert (lady.state, lady.machine.turn) == (State.IDLE, turn)  # no turn while muted
    assert show.run(page_control(show, control="unmute", skull="lady-bones"))["ok"]
    show.run(wait_for(lambda: not lady.muted and not board.skulls["lady-bones"].muted, 5))

    show.host.conversations["lady-bones"].history.append(("hello", "boo"))
    answer = show.run(page_control(show, control="reset", skull="lady-bones"))
    assert answer == {"t": "control", "ok": True, "message": "forgot lady-bones's conversation"}
    assert not show.host.conversations["lady-bones"].history


def test_a_skull_that_offers_no_controls_is_asked_for_no_status_and_gets_no_commands(show):
    from skull.core import protocol as p

    async def old_skull():
        async with connect(f"ws://127.0.0.1:{show.host.port}") as ws:
            await ws.send(p.encode(p.Hello(1, "old-bones", TOKEN))[0])
            welcome = p.decode_text(await ws.recv(), p.HOST_MESSAGES)
            answer = await page_control(show, control="interrupt", skull="old-bones")
            return welcome, answer
    welcome, answer = show.run(old_skull())
    assert welcome.status_hz == 0.0
    assert answer["ok"] is False and "skull old-bones takes no controls" in answer["message"]


# --- in a real browser ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); "
                    f"scripts/bootstrap.sh installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1000",
                "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def card(driver, name: str, what: str) -> str:
    """The text (or, for ``@attr``, the attribute) of ``what`` in the card of skull ``name``."""
    sel, _, attr = what.partition("@")
    el = driver.find_element("css selector", f'.skull[data-skull="{name}"] {sel}'.strip())
    return el.get_attribute(attr) if attr else el.text


def until(predicate, timeout: float = 10.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen on the page within {timeout:g} s: {inspect.getsource(predicate).strip()}")
        time.sleep(step)


def test_the_page_shows_both_skulls_their_turns_and_the_controls_work(show, browser, artifacts):
    d = browser
    d.get(f"{show.url}/?token={TOKEN}")
    until(lambda: all(d.find_elements("css selector", f'.skull[data-skull="{n}"]') for n in NAMES)
          and d.find_element("id", "link").text == "live")
    for name in NAMES:
        assert card(d, name, "@data-state") == "idle"

    # a turn on each skull, at once; the page is photographed while one of them speaks
    async def both():
        return await asyncio.gather(*(ask(show.agents[n]) for n in NAMES))
    turns = asyncio.run_coroutine_threadsafe(both(), show.loop)
    until(lambda: "speaking" in {card(d, n, "@data-state") for n in NAMES}, 30)
    d.save_screenshot(str(artifacts / "dashboard-turn.png"))
    records = dict(zip(NAMES, turns.result(60)))
    for name in NAMES:
        until(lambda: card(d, name, "@data-state") == "idle" and card(d, name, ".seen").endswith("idle"))
        assert card(d, name, ".seen") == "listening → thinking → speaking → idle"
        assert records[name].outcome == "answered"
        assert card(d, name, ".heard") == records[name].transcript and "costume" in records[name].transcript
        assert card(d, name, ".reply") == records[name].reply
        # read in one script: the page redraws the waterfall at each update
        until(lambda: set(d.execute_script(
            "return [...document.querySelectorAll(`.skull[data-skull='${arguments[0]}'] svg.waterfall rect`)]"
            ".map(r => r.dataset.mark)", name))
            >= {"stt", "llm_first_token", "llm_first_sentence", "tts_first_segment", "first_audio"})
        assert card(d, name, "img.snapshot@naturalWidth") not in (None, "0")
    assert len(d.find_elements("css selector", "#turns tr.turn")) >= 2
    d.execute_script("document.querySelector('#turns tr.turn').click()")  # the newest (the table is redrawn often)
    until(lambda: d.find_elements("css selector", "#detail audio.question") and
          d.find_elements("css selector", "#detail audio.reply"))
    d.save_screenshot(str(artifacts / "dashboard-after.png"))

    # say: the typed line comes out of mr-bones, and his jaw moves with it
    line = "Welcome, mortals, to the night of the skulls."
    box = d.find_element("css selector", '.skull[data-skull="mr-bones"] input.say-text')
    box.send_keys(line)
    d.find_element("css selector", '.skull[data-skull="mr-bones"] button[data-control=say]').click()
    until(lambda: float(card(d, "mr-bones", ".jaw-bar@data-jaw") or 0) > 0.05, 15, 0.03)
    until(lambda: line in show.said["mr-bones"])
    assert until(lambda: d.find_element("id", "toast").text).startswith("had mr-bones say")

    # interrupt: lady-bones stops in the middle of her reply
    lady = show.agents["lady-bones"]
    lady.turn_ended.clear()
    asyncio.run_coroutine_threadsafe(press_and_speak(lady), show.loop)
    until(lambda: card(d, "lady-bones", "@data-state") == "speaking", 30, 0.02)
    d.find_element("css selector", '.skull[data-skull="lady-bones"] button[data-control=interrupt]').click()
    show.run(asyncio.wait_for(lady.turn_ended.wait(), 5))
    assert lady.finished[-1].outcome == "interrupted"
    until(lambda: card(d, "lady-bones", ".seen") == "listening → thinking → speaking → idle", 5)
    assert [(e.skull, e.action) for e in show.host_events][-2:] == [("mr-bones", "say"), ("lady-bones", "interrupt")]


# --- the board alone: events in, what the page shows out ----------------------------------------

def test_the_board_follows_a_turn_from_its_events_and_forgets_the_oldest():
    from host.dashboard import Board, Metrics
    now = [1_000_000.0]
    board = Board(keep_turns=2, metrics=Metrics(), clock=lambda: now[0])
    board(ev.SkullConnected("b", 0, "127.0.0.1:5", True))
    for turn in (1, 2, 3):
        for e in (ev.TurnStarted("b", turn), ev.SkullStatus("b", turn, "listening", "on", 0.0, -30, -35, -120, False),
                  ev.Stopped("b", turn, 1.5), ev.StageFinished("b", turn, "stt", 300.0),
                  ev.Transcript("b", turn, f"question {turn}"), ev.FirstPiece("b", turn, 320.0),
                  ev.Sentence("b", turn, "Boo.", 0, 330.0), ev.SegmentSent("b", turn, 0, "Boo.", 0.5, 500.0),
                  ev.Played("b", turn, 600.0 + turn * 100),
                  ev.Done("b", turn, "Boo.", 1, {"stt": 300.0, "total": 700.0})):
            board(e)
    first = board.everything()
    assert [t["turn"] for t in first["turns"]] == [2, 3]  # keep_turns
    (b,) = first["skulls"]
    assert (b["connected"], b["state"], b["heard"], b["reply"], b["turn"]) == (True, "listening", "question 3", "Boo.", 3)
    assert b["last"] == {"stt": 300.0, "llm_first_token": 320.0, "llm_first_sentence": 330.0,
                         "tts_first_segment": 500.0, "first_audio": 900.0, "total": 700.0}
    night = first["night"]
    assert night["turns_last_hour"] == 3 and night["series"][0]["p50"] == 800.0
    assert board.take() is not None and board.take() is None  # only what changed goes out, once
    board(ev.SkullLeft("b", 3))
    assert board.take()["skulls"][0]["state"] == "offline"
    text = board.metrics.text().decode()
    assert 'skull_turns_total{skull="b"} 3.0' in text and "skull_skulls_connected 0.0" in text


def test_every_host_event_is_a_turn_event_or_a_skull_event():
    kinds = {c for c in vars(ev).values() if isinstance(c, type) and issubclass(c, ev.TurnEvent) and c is not ev.TurnEvent}
    assert kinds == set(ev.TURN_EVENTS) | set(ev.SKULL_EVENTS)


def test_the_skull_reports_each_state_at_once_and_its_jaw_at_most_status_hz():
    from types import SimpleNamespace

    from skull.core import protocol as p
    from skull.machine import LedPattern
    from skull.report import StatusReport

    async def go(status_hz):
        sent = []
        link = SimpleNamespace(connected=True, welcome=p.Welcome(1, "h", "s", 30.0, status_hz), send=sent.append)
        report = StatusReport(link)
        report(sev.StateChanged(State.SPEAKING, 4))
        for opening in (0.1, 0.2, 0.3, 0.4, 0.5):  # the view sampler's jaw, faster than the host asked
            report(sev.JawMoved(opening, 1500.0))
        await asyncio.sleep(0.15)  # the last of them goes out once the host's interval is over
        report(sev.JawMoved(0.6, 1500.0))  # held back: too soon after the last
        report(sev.LedChanged(LedPattern.ON))  # a change of LED goes out at once, with the latest jaw
        await asyncio.sleep(0.15)
        return sent
    sent = asyncio.run(go(10.0))
    assert [(m.state, m.turn, m.jaw, m.led) for m in sent] == [("speaking", 4, 0.0, "off"), ("speaking", 4, 0.5, "off"),
                                                               ("speaking", 4, 0.6, "on")]
    assert asyncio.run(go(0.0)) == []  # a host that did not ask gets nothing
