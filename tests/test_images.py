"""Snapshots that cannot hurt the host: the size is read from the picture's header before any
decoding, a picture over ``[server] max_image_mp`` is refused with its size (nothing decoded),
an allowed one is decoded reduced and passed on as a ~1 MP JPEG, and every vision failure
reaches the skull as ``stage_failed`` while the turn is still answered. The last test is the
issue's acceptance: three 30000x30000 PNG uploads at once against a host in its own process."""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import re
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from conftest import start_host
from host.backends import vision
from host.backends.vision import SNAPSHOT_PIXELS, image_size, reduce_snapshot
from host.build import build_backends
from host.config import HostConfig, ServerConfig, StageConfig
from host.fakes.core import Knobs
from host.fakes.servers import LlamaCppFake
from host.process import HostProcess
from skull.core import protocol as p
from skull.core.errors import BackendError
from test_host_events import QUESTION, SNAPSHOT, Answer, Client, answered


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid 1-bit greyscale PNG of ``width`` x ``height`` black pixels: ~100 KB on the wire,
    width x height x 3 bytes (2.7 GB at 30000x30000) once decoded to colour."""
    row = b"\x00" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(height)) + z.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def picture(width: int, height: int, ext: str, *params) -> bytes:
    """A picture with a face-free pattern: left half orange, right half blue, a grey stripe."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2] = (0, 128, 255)
    img[:, width // 2:] = (200, 60, 20)
    img[height // 3: height // 3 + max(1, height // 20)] = (128, 128, 128)
    ok, data = cv2.imencode(ext, img, list(params))
    assert ok
    return data.tobytes()


def decoded_size(jpeg: bytes) -> tuple[int, int]:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return img.shape[1], img.shape[0]


# --- the header, read without decoding --------------------------------------------------------

def test_the_size_comes_from_each_formats_header():
    assert image_size(picture(640, 480, ".png")) == ("PNG", 640, 480)
    assert image_size(picture(641, 479, ".jpg")) == ("JPEG", 641, 479)
    assert image_size(picture(641, 479, ".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1)) == ("JPEG", 641, 479)
    assert image_size(picture(300, 200, ".webp", cv2.IMWRITE_WEBP_QUALITY, 80)) == ("WebP", 300, 200)
    assert image_size(picture(301, 201, ".webp", cv2.IMWRITE_WEBP_QUALITY, 101)) == ("WebP", 301, 201)  # lossless
    vp8x = b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00" + b"\x00" * 4 + (29999).to_bytes(3, "little") \
        + (19999).to_bytes(3, "little")
    assert image_size(vp8x) == ("WebP", 30000, 20000)
    assert image_size(b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00" * 3) == ("GIF", 65535, 65535)
    assert image_size(png_bomb()) == ("PNG", 30000, 30000)
    # a JPEG whose frame header follows a large EXIF block and fill bytes
    jpeg = picture(800, 600, ".jpg")
    exif = b"\xff\xe1" + struct.pack(">H", 2 + 60000) + b"E" * 60000
    assert image_size(jpeg[:2] + exif + b"\xff\xff" + jpeg[2:]) == ("JPEG", 800, 600)


@pytest.mark.parametrize("data, says", [
    (b"", "not a PNG, JPEG, WebP or GIF picture"),
    (b"BM\x00\x00garbage", "not a PNG, JPEG, WebP or GIF picture (it starts 42 4d"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "a PNG without its IHDR header"),
    (b"\xff\xd8\xff\xda\x00\x02", "a JPEG without a frame header"),
    (b"\xff\xd8\x00\x00\x00\x00", "a JPEG with a broken segment at byte 2"),
    (b"RIFF\x00\x00\x00\x00WEBPJUNK", "a WebP whose first chunk b'JUNK' gives no size"),
])
def test_a_header_that_gives_no_size_is_named(data, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        image_size(data)


# --- reducing --------------------------------------------------------------------------------

def test_a_bomb_is_refused_undecoded_naming_its_size_and_the_limit():
    bomb = png_bomb()
    t0 = time.monotonic()
    with pytest.raises(BackendError) as e:
        reduce_snapshot(bomb, 24_000_000)
    took = time.monotonic() - t0
    assert str(e.value).startswith("vision: the snapshot is a PNG of 30000x30000 pixels (900.0 MP), over the "
                                   "limit of 24 MP ([server] max_image_mp)")
    assert took < 0.05  # decoding it takes seconds and 2.7 GB


def test_a_picture_at_the_limit_passes_and_one_pixel_more_does_not():
    at = picture(2000, 1500, ".png")
    assert decoded_size(reduce_snapshot(at, 3_000_000))[0] <= 1155
    with pytest.raises(BackendError, match="2000x1500 pixels \\(3.0 MP\\), over the limit of 2.999999 MP"):
        reduce_snapshot(at, 2_999_999)


@pytest.mark.parametrize("ext, params", [(".jpg", ()), (".png", ()), (".webp", (cv2.IMWRITE_WEBP_QUALITY, 90))])
def test_a_big_allowed_picture_is_passed_on_as_a_1_mp_jpeg_with_its_colours(ext, params):
    big = picture(4000, 3000, ext, *params)
    small = reduce_snapshot(big, 24_000_000)
    assert small[:2] == b"\xff\xd8"
    w, h = decoded_size(small)
    assert abs(w / h - 4 / 3) < 0.01 and 0.9 * SNAPSHOT_PIXELS <= w * h <= SNAPSHOT_PIXELS
    img = cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(img[h // 5, w // 4].astype(int) - (0, 128, 255)).max() < 12   # orange stays orange
    assert np.abs(img[h // 5, 3 * w // 4].astype(int) - (200, 60, 20)).max() < 12


def test_a_small_jpeg_goes_on_as_it_came():
    assert reduce_snapshot(SNAPSHOT, 24_000_000) is SNAPSHOT


def test_a_picture_opencv_cannot_decode_is_named():
    cut = picture(800, 600, ".png")[:200]  # the header is whole, the pixels are not
    with pytest.raises(BackendError, match="a PNG of 800x600 pixels\\) is not a picture OpenCV can decode"):
        reduce_snapshot(cut, 24_000_000)
    with pytest.raises(BackendError, match="the snapshot \\(7 bytes\\) is not a PNG, JPEG, WebP or GIF"):
        reduce_snapshot(b"garbage", 24_000_000)


def test_decoding_at_the_default_limit_is_bounded():
    """The worst picture a host decodes (24 MP) decodes and reduces well inside the vision
    stage's default 10 s: the limit bounds the work a thread can be left doing after a timeout."""
    limit = int(ServerConfig().max_image_mp * 1e6)
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (4000, 6000, 3), np.uint8)  # noise: the slowest to inflate and decode
    for ext in (".png", ".jpg"):
        ok, data = cv2.imencode(ext, noise, [cv2.IMWRITE_PNG_COMPRESSION, 1] if ext == ".png" else [])
        t0 = time.monotonic()
        reduce_snapshot(data.tobytes(), limit)
        assert time.monotonic() - t0 < 3.0, ext


def _mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def test_many_pictures_at_the_limit_at_once_are_decoded_one_at_a_time():
    """Eight 24 MP PNGs reduced at once (a skull flooding snapshots, or eight skulls) cost the
    memory of about one: each decode alone takes ~140 MB, eight side by side over 1 GB."""
    png = png_bomb(6000, 4000)
    reduce_snapshot(png, 24_000_000)  # OpenCV's own buffers, once
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM starts again from the current RSS
    before = _mb("VmRSS")
    with ThreadPoolExecutor(8) as pool:
        small = list(pool.map(lambda _: reduce_snapshot(png, 24_000_000), range(8)))
    assert all(decoded_size(s) == (1224, 816) for s in small)
    assert _mb("VmHWM") - before < 250


def test_no_decode_starts_past_the_stage_deadline():
    png = picture(3000, 2000, ".png")
    with pytest.raises(BackendError, match="no time left to decode the PNG snapshot of 3000x2000 pixels"):
        reduce_snapshot(png, 24_000_000, deadline=time.monotonic() - 0.01)
    vision._DECODING.acquire()  # another snapshot is being decoded
    try:
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="other snapshots were being decoded"):
            reduce_snapshot(png, 24_000_000, deadline=time.monotonic() + 0.3)
        assert 0.25 < time.monotonic() - t0 < 1.0
    finally:
        vision._DECODING.release()
    assert decoded_size(reduce_snapshot(png, 24_000_000, deadline=time.monotonic() + 5))[0] == 1224


def test_the_limit_is_checked_in_host_toml(tmp_path):
    from host.config import load_host_config
    from skull.core.validate import ValidationError
    path = tmp_path / "host.toml"
    path.write_text("[server]\nmax_image_mp = 8\n")
    assert load_host_config(path).server.max_image_mp == 8
    path.write_text("[server]\nmax_image_mp = 0\n")
    with pytest.raises(ValidationError, match=r"\[server\]: max_image_mp = 0.0 is out of range: must be 0.1..250 megapixels"):
        load_host_config(path)


# --- a real host: every vision failure is a stage_failed, and the skull still hears an answer ----

async def ask_with(client: Client, turn: int, image: bytes, fmt: str = "png") -> Answer:
    """One push-to-talk turn with the bundled question and ``image`` as the snapshot."""
    answer = Answer()
    await client.send(p.Listen(turn))
    await client.send(p.Image(turn, fmt, len(image)), image)
    await client.send(p.AudioStart(turn, 16000, 2, 1))
    for i in range(0, len(QUESTION), 3200):
        await client.ws.send(QUESTION[i:i + 3200])
    await client.send(p.Stop(turn))
    while answer.done is None:
        msg, payload = await client.recv(60.0)
        if isinstance(msg, p.Heard):
            answer.heard = msg
        elif isinstance(msg, p.Speech):
            answer.speech.append((msg, payload))
        elif isinstance(msg, p.Error):
            answer.errors.append(msg)
        elif isinstance(msg, p.Done):
            answer.done = msg
    return answer


def run_turns(config, backends, images: list[tuple[bytes, str]]) -> list[Answer]:
    async def go():
        host = await start_host(config, backends)
        try:
            client = await Client.connect(host.port)
            answers = [await ask_with(client, i + 1, img, fmt) for i, (img, fmt) in enumerate(images)]
            await client.ws.close()
            return answers
        finally:
            await host.stop()
    return asyncio.run(go())


def test_a_refused_or_undecodable_snapshot_is_a_stage_failed_and_the_turn_is_answered(host_config, backends,
                                                                                      caplog):
    with caplog.at_level(logging.ERROR, logger="host.turn"):
        bomb, garbage, good = run_turns(host_config, backends, [(png_bomb(), "png"), (b"not a picture", "jpeg"),
                                                                (SNAPSHOT, "jpeg")])
    for answer in (bomb, garbage):
        assert answered(answer) and answer.heard.caption == ""
        assert [e.code for e in answer.errors] == [p.E_STAGE_FAILED]
    assert "PNG of 30000x30000 pixels (900.0 MP), over the limit of 24 MP" in bomb.errors[0].message
    assert "is not a PNG, JPEG, WebP or GIF picture" in garbage.errors[0].message
    assert answered(good) and not good.errors and "face" in good.heard.caption
    assert "s: turn 1: vision: the snapshot is a PNG of 30000x30000 pixels" in caplog.text


def test_a_vision_model_that_times_out_is_a_stage_failed_and_gets_a_small_jpeg(host_config):
    with LlamaCppFake(Knobs(delay_s=1.5), reply="A pumpkin in orange light.") as slow:
        vision = StageConfig.of("vision", "openai-chat", timeout_s=0.5, retries=0, url=slow.url)
        config = dataclasses.replace(host_config, vision=vision)
        t0 = time.monotonic()
        (answer,) = run_turns(config, build_backends(config), [(picture(4000, 3000, ".png"), "png")])
        took = time.monotonic() - t0
        body = json.loads(slow.requests[-1][3])
    assert answered(answer) and answer.heard.caption == ""
    assert [(e.code, e.message) for e in answer.errors] == [(p.E_STAGE_FAILED, "vision: no answer within 0.5 s")]
    url = body["messages"][-1]["content"][1]["image_url"]["url"]
    sent = base64.b64decode(url.split(",", 1)[1])
    assert url.startswith("data:image/jpeg;base64,") and decoded_size(sent)[0] * decoded_size(sent)[1] <= SNAPSHOT_PIXELS
    assert took < 30


def test_a_reply_model_that_looks_itself_gets_the_reduced_picture_and_never_a_refused_one(host_config):
    with LlamaCppFake(reply="Nice hat!") as llm:
        config = dataclasses.replace(host_config, vision=StageConfig.of("vision", "reply"),
                                     reply=StageConfig.of("reply", "openai-chat", url=llm.url))
        big, bomb = run_turns(config, build_backends(config), [(picture(4000, 3000, ".png"), "png"),
                                                               (png_bomb(), "png")])
        bodies = [json.loads(r[3]) for r in llm.requests if r[1] == "/v1/chat/completions"]
    assert answered(big) and not big.errors and big.spoken == ["Nice hat!"]
    url = bodies[0]["messages"][-1]["content"][1]["image_url"]["url"]
    assert decoded_size(base64.b64decode(url.split(",", 1)[1])) == (1154, 866)
    assert answered(bomb) and [e.code for e in bomb.errors] == [p.E_STAGE_FAILED]
    assert "image_url" not in json.dumps(bodies[1])  # replied from the words alone


# --- acceptance: three bombs at once, against a host in its own process -------------------------

def _kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def test_three_concurrent_30000_square_pngs_leave_host_memory_flat(capfd):
    """Peak RSS of the host process (VmHWM, reset after a warm-up turn) grows < 300 MB while
    three skulls upload a 30000x30000 PNG at once; each is answered, the log names the size."""
    bomb = png_bomb()
    config = HostConfig(server=ServerConfig(port=0))
    with HostProcess(config) as hp:
        pid = hp._proc.pid

        async def go():
            first = await Client.connect(hp.port, "warm")
            assert answered(await ask_with(first, 1, SNAPSHOT, "jpeg"))  # models and OpenCV loaded
            before = _kb(pid, "VmRSS")
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            clients = [await Client.connect(hp.port, f"skull-{i}") for i in range(3)]
            answers = await asyncio.gather(*(ask_with(c, 1, bomb) for c in clients))
            for c in clients + [first]:
                await c.ws.close()
            return before, _kb(pid, "VmHWM"), answers
        before, peak, answers = asyncio.run(go())
    growth_mb = (peak - before) / 1024
    with capfd.disabled():
        print(f"\nhost rss before={before / 1024:.0f} MB peak={peak / 1024:.0f} MB growth={growth_mb:.0f} MB")
    assert growth_mb < 300
    for answer in answers:
        assert answered(answer) and [e.code for e in answer.errors] == [p.E_STAGE_FAILED]
        assert "30000x30000" in answer.errors[0].message
    log = capfd.readouterr().err
    assert log.count("vision: the snapshot is a PNG of 30000x30000 pixels (900.0 MP), over the limit of 24 MP") == 3
