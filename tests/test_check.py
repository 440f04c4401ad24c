"""`skull host --check` against running fakes, and the fakes run by hand."""
import re
import subprocess
import sys
from pathlib import Path

import requests

from host.fakes import LlamaCppFake, OpenAIAudioFake, WhisperCppFake

EXAMPLE = Path(__file__).resolve().parent.parent / "host" / "examples" / "whisper-llama-kokoro.toml"


def check(config: Path):
    return subprocess.run([sys.executable, "-m", "skull", "host", "--config", str(config), "--check"],
                          capture_output=True, text=True, timeout=60)


def test_check_lists_every_backend_and_names_the_dead_one(tmp_path):
    stt, llm, tts = WhisperCppFake().start(), LlamaCppFake().start(), OpenAIAudioFake(flavor="kokoro").start()
    try:
        text = EXAMPLE.read_text()
        for default, srv in (("8081", stt), ("8080", llm), ("8880", tts)):
            text = text.replace(f"127.0.0.1:{default}", f"127.0.0.1:{srv.port}")
        config = tmp_path / "host.toml"
        config.write_text(text)
        up = check(config)
        assert up.returncode == 0, up.stdout + up.stderr
        lines = {ln.split()[0]: ln for ln in up.stdout.splitlines()}
        assert re.match(r"stt\s+whisper\.cpp\s+up\s+\d+ ms", lines["stt"])
        assert lines["stt"].endswith(f"  http://127.0.0.1:{stt.port}")  # the address the backend talks to
        assert re.match(r"reply\s+openai-chat\s+up\s+\d+ ms\s+model fake-vision-model\.gguf", lines["reply"])
        assert re.match(r"tts\s+openai\s+up\s+\d+ ms\s+model kokoro, voice bm_george", lines["tts"])
        assert "the reply model looks at the snapshot itself" in lines["vision"]
        assert up.stdout.strip().endswith("all backends up")
        tts.stop()
        down = check(config)
        assert down.returncode == 1
        assert re.search(rf"tts\s+openai\s+DOWN\s+openai at http://127.0.0.1:{tts.port} is not reachable "
                         r"\(connection refused\)", down.stdout), down.stdout
        assert down.stdout.strip().endswith("not ready: tts (openai)")
        assert re.match(r"stt\s+whisper\.cpp\s+up", down.stdout)
    finally:
        for srv in (stt, llm, tts):
            srv.stop()


def test_fake_runs_by_hand():
    proc = subprocess.Popen([sys.executable, "-m", "host.fakes", "llama.cpp", "--set", "reply=Boo hoo!",
                             "--delay", "0.05"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"listening on (http://\S+)", line).group(1)
        assert requests.get(url + "/health", timeout=5).json() == {"status": "ok"}
        r = requests.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                          timeout=5)
        assert r.json()["choices"][0]["message"]["content"] == "Boo hoo!"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_doctor_reports_every_part_and_fails_without_a_host():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "skull", "doctor", "--url", f"ws://127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = r.stdout.splitlines()
    for part in ("microphone", "speaker", "camera", "GPIO", "calibration", "host"):
        assert any(re.match(rf"(OK|WARN|FAIL)\s+{part}\b", ln) for ln in lines), (part, r.stdout)
    host = next(ln for ln in lines if re.match(r"\w+\s+host\b", ln))
    assert host.startswith("FAIL") and f"127.0.0.1:{port} not reachable" in host and "start 'skull host'" in host
    assert re.search(r"\d+ problem\(s\): .*host", lines[-1])
