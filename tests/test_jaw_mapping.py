"""The one loudness -> jaw mapping: what each [shape] knob does to the jaw, and that host and
skull use the same code."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from skull.core.envelope import (LEVEL_BLOCK, JawMapper, JawShape, LiveEnvelope, frame_levels_dbfs, jaw_track,
                                 levels_of_windows, window_samples)
from skull.config import load_skull_config
from skull.core.errors import ConfigError

RATE = 16000
ROOT = Path(__file__).resolve().parent.parent


def tone(freq=700.0, seconds=1.0, amp=0.3, rate=RATE):
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def burst(on_s=0.3, off_s=0.5, amp=0.3, freq=700.0):
    """Silence 0.2 s, a tone for ``on_s``, silence ``off_s``."""
    return np.concatenate([np.zeros(int(0.2 * RATE), np.float32), tone(freq, on_s, amp),
                           np.zeros(int(off_s * RATE), np.float32)])


def syllables(amps=(0.3, 0.08, 0.3, 0.03), on_s=0.15, gap_s=0.1):
    """Tone syllables at different loudness with gaps between."""
    parts = []
    for a in amps:
        parts += [tone(700, on_s, a), np.zeros(int(gap_s * RATE), np.float32)]
    return np.concatenate(parts)


def frames_to(track, level, start=0):
    """Frames from ``start`` until the track first reaches ``level``."""
    hit = np.flatnonzero(track[start:] >= level)
    return int(hit[0]) if len(hit) else len(track)


def frames_until_shut(track, start):
    shut = np.flatnonzero(track[start:] == 0.0)
    return int(shut[0]) if len(shut) else len(track)


# --- each knob ---------------------------------------------------------------------------------

def test_gate_keeps_quiet_sound_from_opening_the_jaw():
    quiet = tone(amp=0.0015)  # about -60 dBFS
    assert jaw_track(quiet, RATE, JawShape(gate_dbfs=-50)).max() == 0.0
    assert jaw_track(quiet, RATE, JawShape(gate_dbfs=-70)).max() > 0.5


def test_automatic_gain_opens_quiet_and_loud_voices_alike():
    x = syllables(amps=(0.3, 0.1, 0.25))
    loud, quiet = jaw_track(x, RATE), jaw_track(x * 0.1, RATE)  # 20 dB apart
    assert np.max(np.abs(loud - quiet)) < 0.05
    fixed = JawShape(ref_dbfs=-10.0)
    assert jaw_track(x * 0.1, RATE, fixed).max() < 0.5 * jaw_track(x, RATE, fixed).max()


def test_ref_percentile_lower_opens_wider():
    x = syllables(amps=(0.3, 0.2, 0.12, 0.08, 0.05))
    assert jaw_track(x, RATE, JawShape(ref_percentile=60)).mean() > jaw_track(x, RATE, JawShape(ref_percentile=99)).mean()


def test_range_db_narrow_range_shuts_on_soft_syllables():
    x = syllables(amps=(0.3, 0.03))  # the second syllable is 20 dB softer
    soft = slice(27, 38)
    assert jaw_track(x, RATE, JawShape(range_db=40))[soft].max() > 0.2
    assert jaw_track(x, RATE, JawShape(range_db=15))[soft].max() == 0.0


def test_curve_below_one_opens_wider_on_soft_syllables():
    x = syllables(amps=(0.3, 0.08))
    soft = slice(27, 38)
    assert jaw_track(x, RATE, JawShape(curve=0.5))[soft].max() > jaw_track(x, RATE, JawShape(curve=2.0))[soft].max() + 0.2


def test_attack_sets_how_fast_the_jaw_opens():
    x = burst()
    fast, slow = jaw_track(x, RATE, JawShape(attack_ms=5)), jaw_track(x, RATE, JawShape(attack_ms=100))
    assert frames_to(fast, 0.8) + 10 < frames_to(slow, 0.8)  # 100 ms+ later


def test_release_sets_how_fast_the_jaw_closes():
    x = burst()
    end = 50  # the tone stops at 0.5 s
    fast = jaw_track(x, RATE, JawShape(release_ms=10, hold_ms=0))
    slow = jaw_track(x, RATE, JawShape(release_ms=200, hold_ms=0))
    assert frames_until_shut(fast, end) < 8
    assert frames_until_shut(slow, end) > 40


def test_hold_keeps_the_jaw_open_before_closing():
    x = burst()
    end = 51  # past the window centred on the tone's end
    held = jaw_track(x, RATE, JawShape(hold_ms=100, release_ms=10))
    not_held = jaw_track(x, RATE, JawShape(hold_ms=0, release_ms=10))
    assert held[end + 7] > 0.9  # still open 70 ms after the sound stopped
    assert not_held[end + 7] == 0.0


def test_deadband_drops_small_changes():
    x = syllables(amps=(0.3, 0.25, 0.2, 0.28, 0.22))
    fine, coarse = jaw_track(x, RATE, JawShape(deadband=0)), jaw_track(x, RATE, JawShape(deadband=0.15))
    changes = np.abs(np.diff(coarse))
    assert np.count_nonzero(changes) < np.count_nonzero(np.diff(fine)) / 2
    small = changes[(changes > 0) & (changes < 0.15)]
    # a change under the deadband only ever happens on the way to shut or to fully open
    for i in np.flatnonzero((np.abs(np.diff(coarse)) > 0) & (np.abs(np.diff(coarse)) < 0.15)):
        assert coarse[i + 1] in (0.0, 1.0)
    assert len(small) <= 2 * np.count_nonzero(coarse[1:][np.abs(np.diff(coarse)) > 0] == 0.0) + 2


def test_max_open_clamps_the_travel_used():
    x = syllables()
    assert jaw_track(x * 3, RATE).max() <= 1.0
    assert 0.55 < jaw_track(x, RATE, JawShape(max_open=0.6)).max() <= 0.6


def test_snap_closed_sends_the_release_tail_as_fully_shut():
    track = jaw_track(burst(), RATE, JawShape(snap_closed=0.2))
    assert np.all((track == 0.0) | (track >= 0.2))


def test_band_weights_listen_only_to_the_chosen_bands():
    fixed = dict(ref_dbfs=-12.0, steady_ms=0)  # the same gain throughout: only the bands differ
    high = np.pad(tone(2600, 0.5, 0.3), RATE // 10)  # inside the flat 300-3000 band
    assert jaw_track(high, RATE, JawShape(**fixed)).max() > 0.5
    three = JawShape(band_weights=((300, 600, 1.0), (800, 1300, 1.0), (1900, 3000, 0.0)), **fixed)
    assert jaw_track(high, RATE, three).max() == 0.0
    assert jaw_track(np.pad(tone(1000, 0.5, 0.3), RATE // 10), RATE, three).max() > 0.5


def test_band_hz_leaves_out_rumble():
    rumble = tone(60, 1.0, 0.5)
    assert frame_levels_dbfs(rumble, RATE).mean() < frame_levels_dbfs(tone(700, 1.0, 0.5), RATE).mean() - 30
    assert frame_levels_dbfs(rumble, RATE, JawShape(band_hz=(40, 3000))).mean() > -15


def test_a_long_sentence_is_measured_frame_by_frame_the_same_as_in_blocks():
    # a sentence's frames are measured LEVEL_BLOCK at a time: a frame's level must not depend on
    # the block it falls in, nor the last short block go missing
    t = np.arange(int(2.37 * RATE)) / RATE
    x = (0.3 * np.sin(2 * np.pi * (300 + 600 * t) * t) * (0.55 + 0.45 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    levels = frame_levels_dbfs(x, RATE)
    fps = JawShape().fps
    assert len(levels) == int(np.ceil(len(x) * fps / RATE)) > 3 * LEVEL_BLOCK
    win = window_samples(RATE, JawShape())
    padded = np.concatenate([np.zeros(win // 2, np.float32), x, np.zeros(win, np.float32)])
    for k in (0, LEVEL_BLOCK - 1, LEVEL_BLOCK, 2 * LEVEL_BLOCK + 5, len(levels) - 1):
        start = int(k * RATE / fps)
        alone = levels_of_windows(padded[start:start + win][None, :], RATE, JawShape())
        assert alone[0] == pytest.approx(levels[k], abs=1e-9), k
    assert np.ptp(levels[5:-5]) > 3  # the modulation is measured, not one level throughout


def test_a_band_above_the_audio_s_highest_frequency_reads_silence():
    above = JawShape(band_hz=(9000, 12000))  # 8 kHz audio holds nothing above 4 kHz
    assert np.all(frame_levels_dbfs(tone(700, 0.5, 0.5, rate=8000), 8000, above) <= -119)
    assert jaw_track(tone(700, 0.5, 0.5, rate=8000), 8000, above).max() == 0.0


def test_steady_bed_stops_opening_the_jaw():
    chord = sum(tone(f, 3.0, 0.2) for f in (220, 277, 330))
    late = slice(150, 300)  # after the first 1.5 s
    assert jaw_track(chord, RATE, JawShape(steady_ms=0))[late].mean() > 0.8
    assert jaw_track(chord, RATE, JawShape(steady_ms=1000))[late].max() == 0.0
    # speech-like syllables with gaps keep opening it
    assert jaw_track(np.tile(syllables(), 3), RATE)[100:].max() > 0.9


# --- validation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("line, key", [("curve = 0", "curve"), ("attack_ms = -1", "attack_ms"),
                                       ("max_open = 1.5", "max_open"), ("band_weights = [[300, 200, 1]]", "band_weights"),
                                       ("steady_ms = 50", "steady_ms"), ("snap_closed = 0.9\nmax_open = 0.5", "snap_closed")])
def test_bad_shape_in_skull_toml_names_the_key(tmp_path, line, key):
    path = tmp_path / "skull.toml"
    path.write_text(f"[shape]\n{line}\n")
    with pytest.raises(ConfigError, match=rf"\[shape\]: {key} = "):
        load_skull_config(path)


def test_shape_travels_as_its_changed_keys_only():
    shape = JawShape(max_open=0.5, band_weights=((300, 600, 1.0),))
    assert shape.to_dict() == {"max_open": 0.5, "band_weights": [[300, 600, 1.0]]}
    assert JawShape.from_dict(shape.to_dict()) == shape
    with pytest.raises(ConfigError, match="unknown key 'gain'"):
        JawShape.from_dict({"gain": 3})


# --- one mapping -----------------------------------------------------------------------------------

def test_host_and_skull_import_the_same_mapping():
    import host.turn
    import skull.jaw.sync
    assert host.turn.jaw_track is jaw_track
    assert skull.jaw.sync.LiveEnvelope is LiveEnvelope
    # no second copy: the follower's coefficients exist in one file only
    copies = [p for p in list((ROOT / "skull").rglob("*.py")) + list((ROOT / "host").rglob("*.py"))
              if re.search(r"attack_ms\s*/\s*1000|class JawMapper|def jaw_track", p.read_text())]
    assert [p.relative_to(ROOT).as_posix() for p in copies] == ["skull/core/envelope.py"]


def test_live_level_follows_the_same_curve_as_the_precomputed_track():
    x = np.tile(syllables(), 2)
    shape = JawShape(ref_dbfs=-15.0)  # the same gain in both (live mode cannot see the whole clip)
    track = jaw_track(x, RATE, shape)
    live = LiveEnvelope(RATE, shape)
    block = RATE // 50
    got = np.array([live.push(x[i:i + block]) for i in range(0, len(x), block)])
    # live frames end where precomputed ones are centred: one 10 ms frame later
    expected = track[1::2][:len(got)]
    assert np.corrcoef(got[:len(expected)], expected)[0, 1] > 0.95
    assert np.mean(np.abs(got[:len(expected)] - expected)) < 0.08


def test_mapper_state_carries_across_blocks():
    levels = frame_levels_dbfs(burst(), RATE)
    whole = JawMapper(JawShape(), -10.0).map(levels)
    m = JawMapper(JawShape(), -10.0)
    pieces = np.concatenate([m.map(levels[i:i + 7]) for i in range(0, len(levels), 7)])
    assert np.array_equal(whole, pieces)
