"""[server] core: a host whose stages all have servers keeps its own threads to one core (they
take turns at Python's lock, and handing it from core to core costs a crowd), while its
[embedded] worker processes keep every core; a host with engines computing inside it is left
where the system puts it. Real processes, their affinity read from /proc."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ask, sim_body, skull_config, wait_for
from host.build import build_backends, build_stage
from host.config import HostConfig, ServerConfig, StageConfig, load_host_config
from host.fakes import Knobs, LlamaCppFake, OpenAIAudioFake
from host.process import HostProcess
from host.server import heavy_stages, host_core
from host.turn import Backends
from skull.agent import Agent
from skull.core.errors import ConfigError
from skull.machine import State

ALLOWED = sorted(os.sched_getaffinity(0))


def cores_of(pid: int) -> dict[int, str]:
    """Each thread of ``pid``: the cores it may run on (``Cpus_allowed_list``)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:  # it has ended
        return out
    for tid in tids:
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:  # a thread that has just ended
            continue
        out[int(tid)] = next(ln.split(":", 1)[1].strip() for ln in status.splitlines()
                             if ln.startswith("Cpus_allowed_list:"))
    return out


def descendants(pid: int) -> list[int]:
    kids = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for kid in kids.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


def as_list(cores) -> str:
    """The kernel's way of writing a set of cores: 0-1, or 0,2."""
    cores, runs = sorted(cores), []
    for c in cores:
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


RULE = '"auto", "off" or a core\'s number'


@pytest.mark.parametrize("value, words", [('"one"', RULE), ("-1", RULE), ("4096", RULE),
                                          ("true", "a whole number or a string")])
def test_core_must_be_auto_off_or_a_core_number(tmp_path, value, words):
    path = tmp_path / "host.toml"
    path.write_text(f"[server]\ncore = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_host_config(path)
    assert "host.toml [server]: core = " in str(err.value) and words in str(err.value)


def test_only_a_host_whose_engines_compute_elsewhere_keeps_to_one_core():
    servers = HostConfig(stt=StageConfig.of("stt", "whisper.cpp", url="http://127.0.0.1:9"),
                         vision=StageConfig.of("vision", "none"),
                         reply=StageConfig.of("reply", "openai-chat", url="http://127.0.0.1:9"),
                         tts=StageConfig.of("tts", "openai", url="http://127.0.0.1:9", voice="bm_george"))
    remote = build_backends(servers)
    assert heavy_stages(remote) == []
    expected = ALLOWED[-1] if len(ALLOWED) > 1 else None
    assert host_core(servers, remote) == expected
    off = dataclasses.replace(servers, server=ServerConfig(core="off"))
    assert host_core(off, remote) is None
    assert host_core(dataclasses.replace(servers, server=ServerConfig(core=ALLOWED[0])), remote) == ALLOWED[0]
    with pytest.raises(ConfigError) as err:
        host_core(dataclasses.replace(servers, server=ServerConfig(core=4095)), remote)
    assert f"core = 4095 is not a core this host may use (it may use {', '.join(map(str, ALLOWED))})" in str(err.value)

    # the embedded default: the caption (OpenCV) computes in the process
    local = Backends(stt=remote.stt, vision=build_stage(HostConfig().vision, True), reply=remote.reply, tts=remote.tts)
    assert heavy_stages(local) == ["vision"]
    assert host_core(HostConfig(), local) is None

    # espeak-ng speaks in its speaker processes; only where they cannot run, the program it starts
    # per sentence counts as the host's own work
    voice = build_stage(HostConfig().tts)
    spoken = dataclasses.replace(remote, tts=voice)
    assert voice.speakers is not None and heavy_stages(spoken) == []
    voice.speakers, voice.computes_here = None, True
    assert heavy_stages(spoken) == ["tts"]


@pytest.mark.skipif(len(ALLOWED) < 2, reason="one core: nothing to keep to")
def test_a_host_of_servers_keeps_its_threads_to_one_core_and_its_workers_keep_every_core(tmp_path):
    """pocketsphinx in a worker process, the reply and the voice from servers: every thread of
    the host process runs on the last core, the worker processes on all of them, and a turn is
    answered as before."""
    llm = LlamaCppFake(Knobs(delay_s=0.02, per_unit_s=0.005), reply="Boo! A fine question, mortal.",
                       mmproj=False).start()
    voice = OpenAIAudioFake(Knobs(delay_s=0.02), flavor="kokoro").start()
    toml = tmp_path / "host.toml"
    toml.write_text(f'[server]\nport = 0\n\n[embedded]\nworkers = 1\n\n[stt]\nbackend = "pocketsphinx"\n\n'
                    f'[vision]\nbackend = "none"\n\n[reply]\nbackend = "openai-chat"\n[reply.openai-chat]\n'
                    f'url = "{llm.url}"\n\n[tts]\nbackend = "openai"\n[tts.openai]\nurl = "{voice.url}"\n'
                    f'voice = "bm_george"\n')
    config = load_host_config(toml)
    try:
        with HostProcess(config) as hp:
            host_pid = hp._proc.pid
            workers = descendants(host_pid)

            async def go():
                cfg = skull_config(hp.port)
                agent = Agent(cfg, sim_body(cfg, speed=6.0))
                task = asyncio.create_task(agent.run())
                try:
                    await wait_for(lambda: agent.state is State.IDLE, timeout=30)
                    return await ask(agent)
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            rec = asyncio.run(go())
            threads = cores_of(host_pid)  # after a turn: the threads it started keep to the core too
            worker_cores = {pid: set(cores_of(pid).values()) for pid in workers}
    finally:
        llm.stop()
        voice.stop()
    assert rec.outcome == "answered"
    assert len(threads) > 2 and set(threads.values()) == {str(ALLOWED[-1])}, threads
    assert workers and all(c == {as_list(ALLOWED)} for c in worker_cores.values()), worker_cores


def test_skull_host_names_a_core_it_may_not_use(tmp_path):
    (tmp_path / "host.toml").write_text(
        '[server]\nport = 0\ncore = 4095\n\n[stt]\nbackend = "whisper.cpp"\n[stt."whisper.cpp"]\n'
        'url = "http://127.0.0.1:9"\n\n[vision]\nbackend = "none"\n\n[reply]\nbackend = "openai-chat"\n'
        '[reply.openai-chat]\nurl = "http://127.0.0.1:9"\n\n[tts]\nbackend = "openai"\n[tts.openai]\n'
        'url = "http://127.0.0.1:9"\nvoice = "bm_george"\n')
    out = subprocess.run([sys.executable, "-m", "skull", "host", "--config", "host.toml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode != 0
    assert "core = 4095 is not a core this host may use" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr + out.stdout


@pytest.mark.skipif(len(ALLOWED) < 2, reason="one core: nothing to keep to")
def test_programs_the_host_starts_to_compute_keep_every_core():
    """espeak-ng (the fallback voice, the "one moment" line) is started by a thread kept to one
    core; it gets every core, and the thread keeps to its one core after. In a process of its
    own: keeping to a core takes every thread of the process."""
    script = (
        "import os, subprocess, sys, threading\n"
        "from host.cores import every_core, keep_to_core\n"
        f"keep_to_core({ALLOWED[-1]})\n"
        "ask = [sys.executable, '-c', 'import os; print(sorted(os.sched_getaffinity(0)))']\n"
        "def go():\n"
        "    with every_core():\n"
        "        wide = subprocess.Popen(ask, stdout=subprocess.PIPE, text=True)\n"
        "    print(wide.communicate()[0].strip(), sorted(os.sched_getaffinity(0)))\n"
        "    print(subprocess.run(ask, capture_output=True, text=True).stdout.strip())\n"
        "t = threading.Thread(target=go)\n"
        "t.start(); t.join()\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{ALLOWED} {[ALLOWED[-1]]}", f"{[ALLOWED[-1]]}"]


def test_moonshines_own_threads_give_way_to_the_voice():
    """moonshine's onnxruntime threads spin for a while after every transcription; they run at a
    lower priority than the host's, so the reply's voice started at the release goes first. They
    still hear as before."""
    from host.backends.stt import SPIN_NICE, MoonshineSTT
    from host.cores import threads
    from skull.core.data import bundled
    from skull.core.wav import read_wav, to_mono

    before = threads()
    stt = build_stage(StageConfig.of("stt", "moonshine"))
    if not isinstance(stt, MoonshineSTT):
        pytest.skip("moonshine cannot load on this machine (pocketsphinx hears instead)")
    started = threads() - before
    assert started, "moonshine started no threads of its own"
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert {os.getpriority(os.PRIO_PROCESS, t) for t in started} == {min(19, mine + SPIN_NICE)}
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine  # the calling thread (the host's) keeps its own
    audio = read_wav(bundled("question.wav").read_bytes())
    assert "costume" in stt.transcribe(to_mono(audio), audio.rate).lower()
