"""Fake model servers for tests, benchmarks and trying the host without a GPU.

Each speaks the documented HTTP contract of a real server (whisper.cpp, speaches, Kokoro-FastAPI,
llama.cpp, Ollama, Piper, xtts-api-server) with knobs for delay, per-unit cost, jitter, failures,
crashes, warm-up and loading. Run one by hand with ``python -m host.fakes KIND --port N``.
"""
from .core import FakeServer, Knobs
from .servers import (FAKES, LlamaCppFake, OllamaFake, OpenAIAudioFake, PiperFake, WhisperCppFake, XttsFake,
                      tokens)

__all__ = ["FAKES", "FakeServer", "Knobs", "LlamaCppFake", "OllamaFake", "OpenAIAudioFake", "PiperFake",
           "WhisperCppFake", "XttsFake", "tokens"]
