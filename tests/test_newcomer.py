"""A newcomer's first hour: every mistake is one line that says what to do (exit 2, never a
traceback), and the command line behaves as well-made CLIs do (--version, -v anywhere, help
with metavars, descriptions and defaults). Each command runs as a user runs it: a subprocess."""
from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from host.backends import ReplyContext
from host.build import build_stage
from host.config import load_host_config
from skull.cli import build_parser
from skull.core.data import bundled
from skull.core.errors import ConfigError, SkullError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def skull(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SKULL_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "skull", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd or ROOT, stdin=subprocess.DEVNULL)


def one_line_error(out: subprocess.CompletedProcess, *words: str) -> str:
    """The run failed as a user's mistake should: exit 2, no traceback, and the last line on
    stderr names the problem (``words``)."""
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    assert out.returncode == 2, (out.returncode, out.stderr)
    last = out.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, last
    return last


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_host_on_a_port_in_use_says_so():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        last = one_line_error(skull("host", "--port", str(port)), f"port {port}", "already in use", "--port")
    assert last.startswith("skull host: error:")


def test_host_on_an_address_this_machine_does_not_have():
    # 192.0.2.1 is TEST-NET-1: documentation only, never an address of a real interface
    one_line_error(skull("host", "--bind", "192.0.2.1", "--token", "T", "--port", "0"),
                   "cannot listen on 192.0.2.1", "--bind")


def test_host_on_a_port_out_of_range():
    one_line_error(skull("host", "--port", "99999"), "port = 99999", "0..65535")


def test_demo_refuses_zero_turns():
    one_line_error(skull("demo", "--turns", "0", "--no-audio"), "--turns", "give 1 or more")


def test_run_demo_refuses_zero_turns_before_starting_anything():
    import asyncio

    from skull.demo import run_demo
    with pytest.raises(SkullError, match="at least 1 turn"):
        asyncio.run(run_demo(bundled("question.wav"), bundled("snapshot.jpg"), audio=False, turns=0))


def test_an_image_that_is_no_picture_is_named_as_such():
    one_line_error(skull("demo", "--image", str(README), "--no-audio"), "README.md",
                   "neither a picture nor a video")
    one_line_error(skull("run", "--sim", "--no-audio", "--mic-file", str(bundled("question.wav")),
                         "--image", str(README)), "README.md", "neither a picture nor a video")


def test_record_into_a_file_is_refused_at_once():
    one_line_error(skull("demo", "--record", str(README), "--no-audio"), "--record", "is a file, not a folder")


def test_a_voice_espeak_ng_does_not_have_is_down_in_the_check(tmp_path):
    """espeak-ng refuses an unknown voice only when it speaks, and ignores an unknown variant
    altogether (its default voice speaks instead): the check names both."""
    for voice, missing, lister in (("vulcan", "no voice 'vulcan'", "espeak-ng --voices"),
                                   ("en-us+zzz", "no variant 'zzz'", "espeak-ng --voices=variant")):
        config = tmp_path / "host.toml"
        config.write_text(f'[tts.espeak-ng]\nvoice = "{voice}"\n')
        out = skull("host", "--config", str(config), "--check", "--port", str(free_port()))
        assert "Traceback" not in out.stderr and out.returncode == 1, out.stderr
        tts = next(line for line in out.stdout.splitlines() if line.startswith("tts "))
        assert "DOWN" in tts and missing in tts and lister in tts, tts
        assert "not ready: tts (espeak-ng)" in out.stdout


def test_a_fallback_voice_that_does_not_exist_stops_the_host(tmp_path):
    config = tmp_path / "host.toml"
    config.write_text('[fallback]\nvoice = "en+zzz"\n')
    one_line_error(skull("host", "--config", str(config), "--port", "0"), "[fallback]", "no variant 'zzz'",
                   "espeak-ng --voices=variant")


def test_version_comes_from_the_package():
    out = skull("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"skull {version('talking-skull')}"


def _host_stderr(*flags: str) -> str:
    """What ``skull host --port 0 FLAGS`` says on stderr by the time it listens and is stopped."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "skull", "host", "--port", "0", *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert "listening" in proc.stdout.readline()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    return err


def test_verbose_after_the_subcommand_shows_the_info_lines():
    info = "INFO host.server: host listening on ws://127.0.0.1:"
    assert info in _host_stderr("-v")
    assert info not in _host_stderr()


@pytest.mark.parametrize("argv, usage", [(("status", "--bogus"), "usage: skull status"),
                                         (("--bogus", "status"), "usage: skull status"),
                                         (("service", "install", "skull", "--bogus"), "usage: skull service install")])
def test_an_unknown_option_is_named_with_its_subcommands_usage(capsys, argv, usage):
    from skull.cli import main
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and usage in err, err
    assert f"skull {' '.join(usage.split()[2:])}: error: unrecognized arguments: --bogus" in err, err


def test_loudness_counts_before_and_after_the_subcommand():
    parser = build_parser()
    args = parser.parse_args(["-v", "run", "--sim", "-v"])
    assert (args.verbose, args.sub_verbose) == (1, 1)  # main() adds them: -vv
    assert parser.parse_args(["status", "-q"]).sub_quiet == 1


def test_every_help_has_a_description_and_proper_placeholders():
    """No ``--record RECORD``: every option that takes a value shows what kind (DIR, FILE, N...)
    or its choices; every subcommand says what it is for."""
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    pending = list(subs.choices.items())
    while pending:
        name, sub = pending.pop()
        assert sub.description, f"skull {name} -h has no description"
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending += [(f"{name} {n}", p) for n, p in action.choices.items()]
                continue
            if action.nargs == 0 or action.choices is not None or isinstance(action, argparse._HelpAction):
                continue
            assert action.metavar is not None, f"skull {name} {action.option_strings or action.dest}"
    assert "(default: 120.0)" in subs.choices["demo"].format_help()  # defaults shown where there are any


def test_sessions_folder_is_ignored_by_git():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "check-ignore", "-q", "sessions/demo/turn-001/reply.wav"], cwd=ROOT)
    assert out.returncode == 0


def _jokes(tmp_path, table: str):
    config = tmp_path / "host.toml"
    config.write_text(f"[reply.jokes]\n{table}\n")
    return build_stage(load_host_config(config).reply)


def test_the_offline_jokes_have_a_persona(tmp_path):
    engine = _jokes(tmp_path, 'name = "Count Rattle"\nhome = "tomb"\nmax_jokes = 1\nseed = 1')
    assert "Count Rattle" in engine.reply(ReplyContext("Who are you?", "no faces; dim light"))
    # "rattle" is the longest word of the question, but the skull's own name is never the topic
    reply = engine.reply(ReplyContext("Do you like my hat, Count Rattle?", "two faces; mostly red; dim light"))
    assert re.search(r"\bhat\b", reply, re.IGNORECASE) and "rattle" not in reply.lower(), reply
    assert not re.search(r"\b(faces?|red|dim)\b", reply), reply  # one joke only: nothing about the snapshot
    dim = _jokes(tmp_path, 'home = "tomb"\nseed = 2')
    said = {dim.reply(ReplyContext("", "no faces; dim light")) for _ in range(30)}
    assert any("my tomb" in s for s in said) and not any("crypt" in s for s in said)


@pytest.mark.parametrize("table, key", [("max_jokes = 0", "max_jokes"), ('name = ""', "name"),
                                        ('home = "{word}"', "home")])
def test_a_bad_persona_is_refused_with_its_key(tmp_path, table, key):
    config = tmp_path / "host.toml"
    config.write_text(f"[reply.jokes]\n{table}\n")
    with pytest.raises(ConfigError, match=rf"\[reply.jokes\]: {key} = "):
        load_host_config(config)


def test_demo_answers_six_turns_and_prints_its_summary(tmp_path):
    """The whole limit used to cover the whole run (a TimeoutError after a few turns), so only a
    run longer than --turn-timeout shows each turn getting its own. A short question (spoken by
    the real espeak-ng), one joke per reply and a quick voice, from the host.toml given with
    --host-config, keep each turn to about 3 s; 6 turns take longer than --turn-timeout 10."""
    question = tmp_path / "who.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(question), "Who are you?"], check=True)
    config = tmp_path / "host.toml"
    config.write_text('[reply.jokes]\nname = "Count Rattle"\nmax_jokes = 1\n\n[tts.espeak-ng]\nspeed = 2.0\n')
    started = time.monotonic()
    out = skull("demo", "--turns", "6", "--no-audio", "--question", str(question), "--host-config", str(config),
                "--turn-timeout", "10", timeout=400, cwd=tmp_path)
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.count("(answered)") == 6
    assert "turn 6 (answered)" in out.stdout and "replied:" in out.stdout
    assert time.monotonic() - started > 10  # the run outlasted one turn's limit


def test_an_unexpected_failure_is_one_line_unless_asked_for_more(monkeypatch, capsys):
    """A bug still never shows a newcomer a traceback: one line that says how to see more."""
    from skull import cli

    def broken(args):
        raise TypeError("unsupported operand")
    monkeypatch.setattr(cli, "cmd_status", broken)
    assert cli.main(["status"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip() == (
        "skull status: error: unexpected TypeError: unsupported operand (a bug; 'skull -v status ...' shows where: "
        "please report it with that output)")
