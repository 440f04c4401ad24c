"""The standard fake workload that benchmarks and soaks run against.

Four fake servers, timed like a modest GPU box:

- speech to text (whisper.cpp): 300 ms + 0.1 s per second of question audio;
- caption model (llama.cpp with a vision projector): 600 ms for the caption;
- language model (llama.cpp, text only): 250 ms to the first token, then 25 ms per token;
  the reply is three sentences, shaped as the skull's prompt asks: a short exclamation, then
  two longer sentences (40 tokens in all);
- voice (Kokoro-FastAPI): 120 ms + 0.15 s per second of speech produced.

The caption starts when the snapshot arrives at button-down, so it runs while the visitor
talks. ``ideal_ms`` is the critical path from button release to the first reply sample with
no overhead at all: speech to text of what is left after the release (the whole question, or
with segmented speech to text only the tail since the visitor's last pause), then (the caption
being long done) the language model up to the token that ends the first sentence, then the
voice for that sentence.

The visitor's question (:func:`question_wav`) is two sentences in espeak-ng's voice with a
natural pause between them, and the button is released a moment after the last word, as
people do.
"""
from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .core import Knobs
from .servers import LlamaCppFake, OpenAIAudioFake, WhisperCppFake, tokens
from .speech import speechlike

STANDARD_REPLY = ("Ooh, spooky! That costume is a real scream, and believe me, I know a thing or two about "
                  "screaming. Come back next year when you have grown some guts to go with it!")
TTS_RATE = 24000
QUESTION = ("Hi skull, I just came from the party down the street.", "What do you think of my costume?")
PAUSE_S = 0.6
"""the pause between the two sentences (people pause 0.3-1 s between sentences)"""
RELEASE_S = 0.3
"""silence after the last word before the button comes up"""


def question_wav(path: str | Path, rate: int = 16000, sentences: tuple[str, ...] = QUESTION) -> Path:
    """The workload's question as a WAV: its two sentences (or ``sentences``), ``PAUSE_S`` apart,
    ``RELEASE_S`` of silence at the end (espeak-ng's en-us voice at 165 words per minute)."""
    from skull.core.wav import read_wav, to_mono_rate, write_wav
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, sentence in enumerate(sentences):
            wav = Path(tmp) / f"s{k}.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "165", "-w", str(wav), sentence], check=True,
                           capture_output=True)
            x = to_mono_rate(read_wav(wav), rate)
            loud = np.flatnonzero(np.abs(x) > 0.01)  # espeak's own silence trimmed, the pauses set here
            parts.append(x[loud[0]:loud[-1] + 1] if len(loud) else x)
    gap, tail = np.zeros(int(PAUSE_S * rate), np.float32), np.zeros(int(RELEASE_S * rate), np.float32)
    lead = np.zeros(int(0.2 * rate), np.float32)
    spoken = [x for part in parts for x in (gap, part)][1:]
    write_wav(path, np.concatenate([lead, *spoken, tail]), rate)
    return Path(path)


@dataclass
class Workload:
    stt_s: float = 0.30
    stt_per_audio_s: float = 0.10
    caption_s: float = 0.60
    llm_first_token_s: float = 0.25
    llm_per_token_s: float = 0.025
    tts_s: float = 0.12
    tts_per_audio_s: float = 0.15
    transcript: str = "do you like my costume"
    caption: str = "A grinning witch and a vampire under purple light."
    reply: str = STANDARD_REPLY
    jitter: float = 0.0
    failure_rate: float = 0.0
    crash_rate: float = 0.0
    warmup_s: float = 0.0
    seed: int | None = None
    slots: int = 0
    """requests each server works on at once, the rest queue (0: no limit)"""
    backlog: int = 128
    """connections each server lets wait to be accepted"""

    def scaled(self, factor: float) -> "Workload":
        """The same workload with every delay multiplied by ``factor`` (for long soaks)."""
        return dataclasses.replace(self, **{f: getattr(self, f) * factor for f in (
            "stt_s", "stt_per_audio_s", "caption_s", "llm_first_token_s", "llm_per_token_s", "tts_s",
            "tts_per_audio_s", "warmup_s")})

    def _knobs(self, delay: float, per_unit: float, salt: int) -> Knobs:
        return Knobs(delay_s=delay, per_unit_s=per_unit, jitter=self.jitter, failure_rate=self.failure_rate,
                     crash_rate=self.crash_rate, warmup_s=self.warmup_s,
                     seed=None if self.seed is None else self.seed + salt, slots=self.slots, backlog=self.backlog)

    def start(self, port: int = 0) -> dict:
        """Start the four servers (on ``port``, ``port+1``... when given) and return them by stage."""
        def at(i):
            return {"port": port + i} if port else {}
        servers = {
            "stt": WhisperCppFake(self._knobs(self.stt_s, self.stt_per_audio_s, 1), self.transcript, **at(0)),
            "vision": LlamaCppFake(self._knobs(self.caption_s, 0.0, 2), reply=self.caption,
                                   model="fake-caption-model.gguf", **at(1)),
            "reply": LlamaCppFake(self._knobs(self.llm_first_token_s, self.llm_per_token_s, 3), reply=self.reply,
                                  mmproj=False, model="fake-text-model.gguf", **at(2)),
            "tts": OpenAIAudioFake(self._knobs(self.tts_s, self.tts_per_audio_s, 4), flavor="kokoro", rate=TTS_RATE,
                                   **at(3)),
        }
        for s in servers.values():
            s.start()
        return servers

    @staticmethod
    def host_toml(servers: dict, streaming: bool = True, timeout_s: float = 10.0, retries: int = 1,
                  segmented: bool = True) -> str:
        def stage(name, backend, table, extra="", own=""):
            return (f'[{name}]\nbackend = "{backend}"\ntimeout_s = {timeout_s}\nretries = {retries}\n{own}\n'
                    f'[{name}.{table}]\nurl = "{servers[name].url}"\n{extra}\n')
        return (f"streaming = {'true' if streaming else 'false'}\n\n" +
                stage("stt", "whisper.cpp", '"whisper.cpp"', own=f"segmented = {str(segmented).lower()}\n") +
                stage("vision", "openai-chat", "openai-chat", "max_tokens = 60\n") +
                stage("reply", "openai-chat", "openai-chat") +
                stage("tts", "openai", "openai", 'model = "kokoro"\nvoice = "bm_george"\nformat = "wav"\n'))

    def first_sentence(self) -> tuple[str, int]:
        """The reply's first sentence and how many tokens it takes to finish it."""
        from host.sentences import SentenceSplitter
        splitter = SentenceSplitter()
        for n, tok in enumerate(tokens(self.reply), 1):
            done = splitter.feed(tok)
            if done:
                return done[0], n
        return self.reply, len(tokens(self.reply))

    def ideal_ms(self, question_s: float, record_s: float | None = None) -> float:
        """Release to first reply sample with zero overhead, streaming, when ``question_s`` of
        audio is left to transcribe after the release (0: nothing left, no request at all)."""
        record_s = question_s if record_s is None else record_s
        stt = self.stt_s + self.stt_per_audio_s * question_s if question_s > 0 else 0.0
        caption_left = max(0.0, self.caption_s - record_s)
        sentence, k = self.first_sentence()
        llm = self.llm_first_token_s + self.llm_per_token_s * (k - 1)
        tts = self.tts_s + self.tts_per_audio_s * len(speechlike(sentence, TTS_RATE)) / TTS_RATE
        return 1000.0 * (max(stt, caption_left) + llm + tts)

    def sequential_ideal_ms(self, question_s: float) -> float:
        """The same for the sequential design: whole reply, then the whole of it spoken."""
        stt = self.stt_s + self.stt_per_audio_s * question_s
        llm = self.llm_first_token_s + self.llm_per_token_s * (len(tokens(self.reply)) - 1)
        tts = self.tts_s + self.tts_per_audio_s * len(speechlike(self.reply, TTS_RATE)) / TTS_RATE
        return 1000.0 * (stt + llm + tts)
