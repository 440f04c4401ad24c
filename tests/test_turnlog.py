"""JSON-lines turn logs on both sides: one object per finished turn, rotated by size into the
number of backups asked for; a path that cannot be written is one clear error at start; a
write that fails later is logged once and never ends a turn."""
import asyncio
import dataclasses
import json
import logging

import pytest

from conftest import one_turn
from host import events as hev
from host.build import build_backends
from skull.cli import main as skull_main
from skull.config import LogConfig
from skull.core.jsonlog import JsonLines
from test_faults import Skull, fake_servers_host, short_question


@pytest.fixture(scope="module")
def workload_host(tmp_path_factory):
    with fake_servers_host(tmp_path_factory.mktemp("host")) as cfg:
        yield cfg


def lines_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_skull_turn_log_rotates_into_its_backups(tmp_path):
    path = tmp_path / "turns.jsonl"
    log = JsonLines(path, max_mb=0.01, backups=2)  # 10 KiB a file (megabytes of 1024 * 1024 bytes)
    for turn in range(1, 301):
        assert log.write({"skull": "mr-bones", "turn": turn, "reply": "Boo! " * 20})
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["turns.jsonl", "turns.jsonl.1", "turns.jsonl.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 0.01 * 1024 * 1024
    newest = lines_of(path)
    assert newest[-1]["turn"] == 300 and lines_of(tmp_path / "turns.jsonl.1")[-1]["turn"] == newest[0]["turn"] - 1


def test_the_host_turn_log_writes_one_object_per_turn_and_rotates(tmp_path):
    path = tmp_path / "host-turns.jsonl"
    jsonl = JsonLines(path, max_mb=0.01, backups=3)
    turn_log = hev.TurnLog(logging.getLogger("test.turns"), jsonl=jsonl)
    for turn in range(1, 201):  # published outside an event loop: each line is written at done
        turn_log(hev.TurnStarted("galactus", turn))
        turn_log(hev.Transcript("galactus", turn, "do you like my costume"))
        turn_log(hev.Done("galactus", turn, "Boo! A fine costume.", 2, {"stt": 300.0, "total": 900.0}))
    turn_log.close()
    jsonl.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host-turns.jsonl"] + [f"host-turns.jsonl.{i}"
                                                                                   for i in (1, 2, 3)]
    last = lines_of(path)[-1]
    assert set(last) == {"time", "skull", "turn", "transcript", "caption", "reply", "outcome", "timings_ms"}
    assert (last["skull"], last["turn"], last["transcript"], last["outcome"]) == (
        "galactus", 200, "do you like my costume", "answered")
    assert last["timings_ms"] == {"stt": 300.0, "total": 900.0}


def test_a_real_turn_is_logged_on_both_sides(workload_host, tmp_path):
    host_cfg = dataclasses.replace(workload_host, server=dataclasses.replace(
        workload_host.server, turn_log=str(tmp_path / "host.jsonl")))

    _, rec = one_turn(host_cfg, build_backends(host_cfg), question=short_question(), speed=8.0,
                      turn_log=JsonLines(tmp_path / "skull.jsonl"))
    (skull_line,) = lines_of(tmp_path / "skull.jsonl")
    (host_line,) = lines_of(tmp_path / "host.jsonl")
    assert skull_line["skull"] == "mr-bones" and skull_line["turn"] == 1 and skull_line["outcome"] == "answered"
    assert skull_line["transcript"] == rec.transcript == host_line["transcript"] == "do you like my costume"
    assert skull_line["reply"] == host_line["reply"] and skull_line["reply"]
    assert "first_audio" in skull_line["timings_ms"] and "total" in host_line["timings_ms"]
    assert skull_line["time"].endswith("Z") and host_line["skull"] == "mr-bones"


def test_a_turn_log_that_cannot_be_written_is_logged_once_and_the_turns_go_on(workload_host, caplog):
    async def run():
        async with Skull(workload_host, turn_log=JsonLines("/dev/full")) as s:  # every write fails: disk full
            return [await s.ask(), await s.ask()]

    with caplog.at_level(logging.ERROR, logger="skull.jsonlog"):
        recs = asyncio.run(run())
    assert [r.outcome for r in recs] == ["answered", "answered"]
    errors = [r for r in caplog.records if "could not write" in r.getMessage()]
    assert len(errors) == 1 and "/dev/full" in errors[0].getMessage()


@pytest.mark.parametrize("side", ["skull", "host"])
def test_a_bad_turn_log_path_is_one_clear_error(tmp_path, capsys, side):
    bad = tmp_path / "no-such-folder" / "turns.jsonl"
    if side == "skull":
        config = tmp_path / "skull.toml"
        config.write_text('[board]\ndriver = "sim"\n')
        code = skull_main(["run", "--sim", "--config", str(config), "--turn-log", str(bad), "--no-audio"])
    else:
        config = tmp_path / "host.toml"
        config.write_text(f'[server]\nport = 0\nturn_log = "{bad}"\n')
        code = skull_main(["host", "--config", str(config)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len([ln for ln in err if "error" in ln]) == 1, err
    message = [ln for ln in err if "error" in ln][0]
    assert str(bad) in message and "No such file or directory" in message and "Traceback" not in "\n".join(err)
    assert ("--turn-log" if side == "skull" else "[server] turn_log") in message


def test_turn_log_settings_are_checked():
    from skull.core.validate import build
    from skull.core.errors import ConfigError
    with pytest.raises(ConfigError, match="max_mb = 0.0"):
        build(LogConfig, {"max_mb": 0}, "skull.toml", "log")
    from host.config import ServerConfig
    with pytest.raises(ConfigError, match="turn_log_backups = 0"):
        build(ServerConfig, {"turn_log_backups": 0}, "host.toml", "server")
