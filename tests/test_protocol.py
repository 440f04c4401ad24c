"""Protocol v1 encode/decode from literal frames, and every malformed-frame case."""
import pytest

from skull.core import protocol as p
from skull.core.errors import ProtocolError


def test_hello_from_literal_frame():
    msg = p.decode_text('{"type": "hello", "protocol": 1, "token": "s3cret", "skull": "mr-bones"}', p.CLIENT_MESSAGES)
    assert msg == p.Hello(protocol=1, skull="mr-bones", token="s3cret")
    with_rate = p.decode_text('{"type":"hello","protocol":1,"skull":"b","play_rate":48000}', p.CLIENT_MESSAGES)
    assert with_rate.play_rate == 48000
    with pytest.raises(ProtocolError, match="play_rate' must be 0 or 8000..192000 Hz, got 7"):
        p.decode_text('{"type":"hello","protocol":1,"skull":"b","play_rate":7}', p.CLIENT_MESSAGES)


def test_encode_is_compact_json_with_type_first():
    assert p.encode(p.Listen(7)) == ['{"type":"listen","turn":7}']
    assert p.encode(p.Ack(7, "stop")) == ['{"type":"ack","turn":7,"of":"stop"}']


def test_image_is_announced_then_sent_as_one_binary_frame():
    frames = p.encode(p.Image(3, "jpeg", 4), b"\xff\xd8\xff\xd9")
    assert frames == ['{"type":"image","turn":3,"format":"jpeg","bytes":4}', b"\xff\xd8\xff\xd9"]
    r = p.FrameReader(p.CLIENT_MESSAGES)
    assert r.read_text(frames[0]) == p.Image(3, "jpeg", 4)
    assert r.read_binary(frames[1]) == (p.Image(3, "jpeg", 4), b"\xff\xd8\xff\xd9")


def test_audio_stream_declares_its_format_and_chunks_follow_until_stop():
    r = p.FrameReader(p.CLIENT_MESSAGES)
    start = r.read_text('{"type":"audio_start","turn":1,"rate":16000,"width":2,"channels":1}')
    assert (start.rate, start.width, start.channels) == (16000, 2, 1)
    assert r.read_binary(b"\x01\x00\x02\x00") == (start, b"\x01\x00\x02\x00")
    assert r.read_binary(b"\x03\x00") == (start, b"\x03\x00")
    r.read_text('{"type":"stop","turn":1}')
    with pytest.raises(ProtocolError) as e:
        r.read_binary(b"\x03\x00")
    assert e.value.code == p.E_UNEXPECTED_BINARY


def test_speech_round_trip_with_jaw_track():
    msg = p.Speech(turn=2, seq=0, text="Boo.", rate=22050, width=2, channels=1, bytes=4, jaw_fps=100, jaw=[0.0, 0.5])
    frames = p.encode(msg, b"\x00\x00\x10\x00")
    assert frames[0] == ('{"type":"speech","turn":2,"seq":0,"text":"Boo.","rate":22050,"width":2,"channels":1,'
                         '"bytes":4,"jaw_fps":100,"jaw":[0.0,0.5]}')
    r = p.FrameReader(p.HOST_MESSAGES)
    assert r.read_text(frames[0]) == msg
    assert r.read_binary(frames[1]) == (msg, b"\x00\x00\x10\x00")


def test_error_and_done_decode():
    e = p.decode_text('{"type":"error","code":"bad_json","message":"x","turn":null}', p.HOST_MESSAGES)
    assert e == p.Error("bad_json", "x", None)
    d = p.decode_text('{"type":"done","turn":1,"segments":2,"reply":"Hi.","timings_ms":{"stt":5}}', p.HOST_MESSAGES)
    assert d.timings_ms == {"stt": 5}


@pytest.mark.parametrize("frame, code, words", [
    ("not json", p.E_BAD_JSON, "not JSON"),
    ("[1, 2]", p.E_BAD_MESSAGE, "JSON object"),
    ('{"turn": 1}', p.E_MISSING_FIELD, "'type'"),
    ('{"type": "dance"}', p.E_UNKNOWN_TYPE, "'dance'"),
    ('{"type": "listen"}', p.E_MISSING_FIELD, "'turn'"),
    ('{"type": "listen", "turn": "one"}', p.E_BAD_FIELD, "turn = 'one' has the wrong type"),
    ('{"type": "listen", "turn": true}', p.E_BAD_FIELD, "turn = True has the wrong type"),
    ('{"type": "listen", "turn": -1}', p.E_BAD_FIELD, "0 or more"),
    ('{"type": "audio_start", "turn": 1, "rate": 16000, "width": 3, "channels": 1}', p.E_BAD_FIELD, "'width'"),
    ('{"type": "audio_start", "turn": 1, "rate": 100, "width": 2, "channels": 1}', p.E_BAD_FIELD, "'rate'"),
    ('{"type": "audio_start", "turn": 1, "rate": 16000, "width": 2, "channels": 6}', p.E_BAD_FIELD, "'channels'"),
    ('{"type": "image", "turn": 1, "format": "gif", "bytes": 10}', p.E_BAD_FIELD, "'format'"),
    ('{"type": "image", "turn": 1, "format": "jpeg", "bytes": 99999999}', p.E_TOO_LARGE, "'bytes'"),
    ('{"type": "stop", "turn": 1, "reason": "bored"}', p.E_BAD_FIELD, "'reason'"),
])
def test_malformed_text_frames_name_the_problem(frame, code, words):
    with pytest.raises(ProtocolError) as e:
        p.FrameReader(p.CLIENT_MESSAGES).read_text(frame)
    assert e.value.code == code
    assert words in str(e.value)


def test_oversized_text_frame():
    with pytest.raises(ProtocolError) as e:
        p.decode_text('{"type":"listen","turn":1,"pad":"' + "x" * p.MAX_TEXT_BYTES + '"}', p.CLIENT_MESSAGES)
    assert e.value.code == p.E_TOO_LARGE


def test_binary_frame_where_none_is_expected():
    with pytest.raises(ProtocolError) as e:
        p.FrameReader(p.CLIENT_MESSAGES).read_binary(b"\x00\x01")
    assert e.value.code == p.E_UNEXPECTED_BINARY and "audio_start" in str(e.value)


def test_oversized_binary_frame_is_dropped_and_reader_recovers():
    r = p.FrameReader(p.CLIENT_MESSAGES)
    r.read_text('{"type":"image","turn":1,"format":"jpeg","bytes":3}')
    with pytest.raises(ProtocolError) as e:
        r.read_binary(bytes(p.MAX_BINARY_BYTES + 1))
    assert e.value.code == p.E_TOO_LARGE
    r.read_text('{"type":"image","turn":1,"format":"jpeg","bytes":3}')
    assert r.read_binary(b"abc")[1] == b"abc"


def test_payload_of_wrong_size_and_missing_payload():
    r = p.FrameReader(p.CLIENT_MESSAGES)
    r.read_text('{"type":"image","turn":1,"format":"jpeg","bytes":3}')
    with pytest.raises(ProtocolError) as e:
        r.read_binary(b"abcd")
    assert e.value.code == p.E_BAD_FIELD and "announced 3 bytes" in str(e.value)
    r.read_text('{"type":"image","turn":1,"format":"jpeg","bytes":3}')
    with pytest.raises(ProtocolError) as e:
        r.read_text('{"type":"stop","turn":1}')
    assert e.value.code == p.E_BAD_STATE


def test_odd_sized_audio_chunk_is_refused():
    r = p.FrameReader(p.CLIENT_MESSAGES)
    r.read_text('{"type":"audio_start","turn":1,"rate":16000,"width":2,"channels":2}')
    with pytest.raises(ProtocolError) as e:
        r.read_binary(b"\x00\x00\x00")
    assert e.value.code == p.E_BAD_FIELD


def test_encode_refuses_payload_mismatch_and_bad_jaw():
    with pytest.raises(ValueError):
        p.encode(p.Image(1, "jpeg", 5), b"abc")
    with pytest.raises(ProtocolError):
        p.encode(p.Speech(1, 0, "x", 22050, 2, 1, 2, 100, [1.5]), b"\x00\x00")


# --- the operator's controls (hello.controls, welcome.status_hz, status, command, say) -----------

def test_controls_are_offered_in_hello_and_asked_for_in_welcome_and_absent_means_none():
    hello = p.decode_text('{"type":"hello","protocol":1,"skull":"b","controls":true}', p.CLIENT_MESSAGES)
    assert hello.controls is True
    assert p.decode_text('{"type":"hello","protocol":1,"skull":"b"}', p.CLIENT_MESSAGES).controls is False
    welcome = '{"type":"welcome","protocol":1,"host":"skull-host","session":"s1","max_record_s":30.0,"status_hz":10.0}'
    assert p.encode(p.Welcome(1, "skull-host", "s1", 30.0, 10.0)) == [welcome]
    assert p.decode_text(welcome, p.HOST_MESSAGES).status_hz == 10.0
    old = p.decode_text('{"type":"welcome","protocol":1,"host":"h","session":"s","max_record_s":30}', p.HOST_MESSAGES)
    assert old.status_hz == 0.0
    with pytest.raises(ProtocolError, match="'status_hz' must be 0..50, got 99"):
        p.decode_text(welcome.replace("10.0", "99"), p.HOST_MESSAGES)


def test_status_from_literal_frame_and_its_ranges():
    frame = ('{"type":"status","state":"speaking","turn":3,"led":"off","jaw":0.42,"mic_dbfs":-120.0,'
             '"mic_vad_dbfs":-120.0,"speaker_dbfs":-18.0,"muted":false}')
    msg = p.Status("speaking", 3, "off", 0.42, -120.0, -120.0, -18.0, False)
    assert p.encode(msg) == [frame]
    assert p.decode_text(frame, p.CLIENT_MESSAGES) == msg
    assert p.decode_text('{"type":"status","state":"idle","turn":0}', p.CLIENT_MESSAGES) == p.Status("idle", 0)
    for bad, words in (('"state":"dancing"', "'state' must be one of offline, idle"),
                       ('"jaw":1.5', "'jaw' must be 0..1, got 1.5"),
                       ('"speaker_dbfs":3', "'speaker_dbfs' must be -120..0 dBFS, got 3"),
                       ('"led":"disco"', "'led' must be one of off, on")):
        fields = dict(state='"idle"', turn="0")
        key, value = bad.split(":", 1)
        fields[key.strip('"')] = value
        with pytest.raises(ProtocolError, match=words) as e:
            p.decode_text('{"type":"status",' + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}",
                          p.CLIENT_MESSAGES)
        assert e.value.code == p.E_BAD_FIELD


def test_command_and_say_from_literal_frames():
    assert p.encode(p.Command("interrupt")) == ['{"type":"command","action":"interrupt"}']
    with pytest.raises(ProtocolError, match="'action' must be one of interrupt, mute, unmute, attract, got 'explode'"):
        p.decode_text('{"type":"command","action":"explode"}', p.HOST_MESSAGES)
    frames = p.encode(p.Say("Boo.", 16000, 2, 1, 4, 100, [0.0, 0.5]), b"\x01\x00\x02\x00")
    assert frames == ['{"type":"say","text":"Boo.","rate":16000,"width":2,"channels":1,"bytes":4,"jaw_fps":100,'
                      '"jaw":[0.0,0.5]}', b"\x01\x00\x02\x00"]
    r = p.FrameReader(p.HOST_MESSAGES)
    msg = r.read_text(frames[0])
    assert r.read_binary(frames[1]) == (msg, b"\x01\x00\x02\x00")
    with pytest.raises(ProtocolError, match="'jaw' has 300 frames for 0.00 s of sound"):
        p.decode_text(frames[0].replace("[0.0,0.5]", ",".join(["0"] * 300).join("[]")), p.HOST_MESSAGES)


def test_a_skull_that_does_not_know_the_new_messages_gets_an_error_it_survives():
    """An older peer's reader: the new types are unknown, answered with ``unknown_type``, and the
    reader goes on with the next frame (the link logs and ignores it; docs/protocol.md)."""
    old_host_messages = {k: v for k, v in p.HOST_MESSAGES.items() if k not in ("command", "say")}
    r = p.FrameReader(old_host_messages)
    with pytest.raises(ProtocolError) as e:
        r.read_text('{"type":"command","action":"mute"}')
    assert e.value.code == p.E_UNKNOWN_TYPE
    assert r.read_text('{"type":"ack","turn":1,"of":"listen"}') == p.Ack(1, "listen")
