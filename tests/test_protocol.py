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
