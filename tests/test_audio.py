"""WAV reading (including the placeholder sizes streaming producers write) and the jaw mapping."""
import struct
import subprocess

import numpy as np
import pytest

from skull.core.envelope import JawShape, frame_levels_dbfs, jaw_track
from skull.core.wav import read_wav, to_mono_rate, wav_bytes
from skull.core.errors import AudioFormatError


def test_wav_round_trip_stereo():
    x = np.stack([np.linspace(-0.5, 0.5, 1000), np.zeros(1000)], axis=1).astype(np.float32)
    a = read_wav(wav_bytes(x, 22050))
    assert a.rate == 22050 and a.channels == 2 and len(a.samples) == 1000
    assert np.allclose(a.samples, x, atol=1e-4)


def test_placeholder_sizes_run_to_the_end():
    pcm = (np.sin(np.arange(800) / 5) * 10000).astype("<i2").tobytes()
    hdr = (b"RIFF" + struct.pack("<I", 0x7FFFF024) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
           + b"data" + struct.pack("<I", 0xFFFFFFFF))
    a = read_wav(hdr + pcm)
    assert len(a.samples) == 800 and a.rate == 16000


def test_espeak_stdout_is_readable():
    out = subprocess.run(["espeak-ng", "--stdout", "boo"], capture_output=True, check=True).stdout
    assert struct.unpack_from("<I", out, 40)[0] > len(out)  # espeak-ng really writes a placeholder
    a = read_wav(out)
    assert 0.2 < a.seconds < 2


def test_any_rate_becomes_16k_mono():
    x = np.stack([np.sin(np.arange(44100) * 2 * np.pi * 440 / 44100)] * 2, axis=1).astype(np.float32)
    y = to_mono_rate(read_wav(wav_bytes(x, 44100)), 16000)
    assert abs(len(y) - 16000) <= 2


@pytest.mark.parametrize("data, words", [(b"hello", "not a WAV"), (b"RIFF\0\0\0\0WAVEjunk", "no fmt")])
def test_bad_wav_says_what_is_wrong(data, words):
    with pytest.raises(AudioFormatError, match=words):
        read_wav(data)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(AudioFormatError, match="nope.wav"):
        read_wav(tmp_path / "nope.wav")


def _bursts(rate=16000):
    """Three 200 ms tone bursts in 200 ms gaps: the jaw must open three times."""
    t = np.arange(int(rate * 1.2)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 700 * t)
    gate = ((t // 0.2) % 2 == 0).astype(np.float32)
    return (tone * gate).astype(np.float32), gate


def test_jaw_opens_on_sound_and_closes_in_silence():
    x, gate = _bursts()
    track = jaw_track(x, 16000)
    assert len(track) == 120
    opened = track > 0.5
    rises = np.count_nonzero(~opened[:-1] & opened[1:]) + int(opened[0])
    assert rises == 3
    assert track[35] == 0.0 and track[10] > 0.8  # in a gap / in a burst


def test_jaw_track_clamped_and_max_open_limits_it():
    x, _ = _bursts()
    assert jaw_track(x * 100, 16000).max() <= 1.0
    assert jaw_track(x, 16000, JawShape(max_open=0.6)).max() <= 0.6


def test_noise_gate_keeps_jaw_shut_on_hiss():
    hiss = (np.random.RandomState(0).normal(0, 0.001, 16000)).astype(np.float32)
    assert jaw_track(hiss, 16000).max() == 0.0


def test_speech_band_ignores_rumble():
    t = np.arange(16000) / 16000
    rumble = (0.5 * np.sin(2 * np.pi * 60 * t)).astype(np.float32)
    voice = (0.5 * np.sin(2 * np.pi * 700 * t)).astype(np.float32)
    assert frame_levels_dbfs(rumble, 16000).mean() < frame_levels_dbfs(voice, 16000).mean() - 30


def test_release_tail_snaps_to_fully_closed():
    t = np.arange(16000) / 16000
    x = (0.5 * np.sin(2 * np.pi * 700 * t) * (t < 0.3)).astype(np.float32)  # 0.3 s of sound, 0.7 s silence
    track = jaw_track(x, 16000)
    assert np.all((track == 0.0) | (track >= JawShape().snap_closed))
    assert track[25] > 0.8
    closed = np.flatnonzero(track[30:] == 0.0)
    assert len(closed) and closed[0] < 35  # shut within 350 ms of the sound ending (release 60 ms)
    assert np.all(track[30 + closed[0]:] == 0.0)  # and stays exactly shut


def test_image_camera_gives_the_same_picture_every_time():
    from skull.camera import Camera
    from skull.core.data import bundled
    cam = Camera(bundled("snapshot.jpg"))  # a Path, as the demo passes it
    shots = [cam.snapshot() for _ in range(3)]
    assert shots[0][:2] == b"\xff\xd8" and shots[0] == shots[1] == shots[2]


def test_a_missing_camera_image_is_one_line_of_ours(tmp_path, capfd):
    from skull.camera import Camera
    from skull.core.errors import DeviceError
    with pytest.raises(DeviceError) as err:
        Camera(tmp_path / "my-room.jpg")
    assert str(err.value) == (f"camera image {tmp_path / 'my-room.jpg'} does not exist; check the path (--image or "
                              f"[camera] source)")
    out = capfd.readouterr()
    assert out.out + out.err == ""  # no OpenCV warning before it
