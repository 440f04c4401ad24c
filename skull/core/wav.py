"""Reading and writing WAV audio, and converting it to the formats the skull speaks.

The reader is forgiving where real producers are sloppy: ``espeak-ng --stdout`` and many
streaming TTS servers write placeholder sizes (0x7FFFF000, 0xFFFFFFFF) in the RIFF and data
headers because they do not know the length in advance; the data then runs to the end.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import AudioFormatError

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


@dataclass
class Audio:
    """Float samples in -1..1, shape (frames, channels)."""
    samples: np.ndarray
    rate: int
    """Hertz"""

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate

    @property
    def channels(self) -> int:
        return self.samples.shape[1]


def read_wav(source: str | Path | bytes, name: str | None = None) -> Audio:
    """Parse a WAV file (path or bytes): PCM 8/16/24/32-bit or float32/64, any rate and channels."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), name or "WAV data"
    else:
        label = name or str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise AudioFormatError(f"cannot read audio file {label}: {exc.strerror}") from None
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioFormatError(f"{label} is not a WAV file (no RIFF/WAVE header); convert it with "
                               f"e.g. 'sox in.mp3 out.wav'")
    pos, fmt, pcm = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8: pos + 8 + size]  # a placeholder size simply runs to the end
        if cid == b"data" and size == 0:
            body = data[pos + 8:]  # a stream's header written before the length was known
        if cid == b"fmt ":
            if len(body) < 16:
                raise AudioFormatError(f"{label} has a truncated 'fmt ' chunk")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
            if tag == _EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack_from("<H", body, 24)[0]
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            pcm = body
            break
        pos += 8 + size + (size & 1)
    if fmt is None or pcm is None:
        raise AudioFormatError(f"{label} has no {'fmt ' if fmt is None else 'data'} chunk")
    tag, channels, rate, bits = fmt
    if channels < 1 or rate < 1:
        raise AudioFormatError(f"{label} declares {channels} channels at {rate} Hz")
    width = bits // 8
    usable = len(pcm) - len(pcm) % (width * channels)
    pcm = pcm[:usable]
    if tag == _PCM and bits == 16:
        x = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
    elif tag == _PCM and bits == 8:
        x = (np.frombuffer(pcm, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == _PCM and bits == 24:
        b = np.frombuffer(pcm, np.uint8).reshape(-1, 3)
        ints = (b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8) | (b[:, 2].astype(np.int32) << 16))
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        x = ints.astype(np.float32) / float(1 << 23)
    elif tag == _PCM and bits == 32:
        x = np.frombuffer(pcm, "<i4").astype(np.float32) / 2147483648.0
    elif tag == _FLOAT and bits in (32, 64):
        x = np.frombuffer(pcm, "<f4" if bits == 32 else "<f8").astype(np.float32)
    else:
        raise AudioFormatError(f"{label} uses WAV format {tag} with {bits}-bit samples; "
                               f"use PCM 8/16/24/32-bit or float")
    return Audio(np.clip(x, -1.0, 1.0).reshape(-1, channels), rate)


def pcm16_to_audio(pcm: bytes, rate: int, channels: int = 1) -> Audio:
    usable = len(pcm) - len(pcm) % (2 * channels)
    x = np.frombuffer(pcm[:usable], "<i2").astype(np.float32) / 32768.0
    return Audio(x.reshape(-1, channels), rate)


def to_pcm16(samples: np.ndarray) -> bytes:
    """Float -1..1 samples -> signed 16-bit little-endian bytes."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def to_mono(audio: Audio) -> np.ndarray:
    """Mean of the channels, 1-D float32."""
    return audio.samples.mean(axis=1).astype(np.float32)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample 1-D or (frames, channels) float audio with soxr's high-quality filter."""
    if rate_in == rate_out or len(x) == 0:
        return x.astype(np.float32)
    import soxr
    return soxr.resample(x, rate_in, rate_out).astype(np.float32)


def to_mono_rate(audio: Audio, rate: int) -> np.ndarray:
    """Any WAV content -> 1-D float32 mono at ``rate`` Hz."""
    return resample(to_mono(audio), audio.rate, rate)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """Float samples (1-D mono or (frames, channels)) -> a 16-bit PCM WAV file's bytes."""
    x = samples if samples.ndim == 2 else samples.reshape(-1, 1)
    channels = x.shape[1]
    pcm = to_pcm16(x)
    out = io.BytesIO()
    out.write(b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE")
    out.write(b"fmt " + struct.pack("<IHHIIHH", 16, _PCM, channels, rate, rate * 2 * channels, 2 * channels, 16))
    out.write(b"data" + struct.pack("<I", len(pcm)) + pcm)
    return out.getvalue()


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> None:
    Path(path).write_bytes(wav_bytes(samples, rate))
