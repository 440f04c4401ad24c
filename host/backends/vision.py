"""Captions. Embedded default: OpenCV face detection (the Haar cascades ship with opencv),
dominant colours and brightness, as one line such as
"two faces; mostly dark blue and orange; dim light".

Every snapshot passes :func:`reduce_snapshot` before any backend sees it: its width and height
are read from the file's own header (PNG IHDR, JPEG SOFn, WebP VP8/VP8L/VP8X, GIF logical
screen) without decoding a pixel, a picture over ``[server] max_image_mp`` is refused with its
size and the limit, and a picture under it is decoded reduced (JPEG through libjpeg's DCT
scaling, ``cv2.IMREAD_REDUCED_COLOR_*``) and re-encoded as a JPEG of at most ~1 MP, which is all
a caption or a vision model needs. So a 2 MB PNG that claims 30000x30000 costs no memory at all,
and the decode's work and memory are bounded by the limit."""
from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass

import numpy as np

from skull.core.errors import BackendError
from skull.core.validate import need

from .registry import BackendContext, backend

_HUES = [(10, "red"), (22, "orange"), (34, "yellow"), (78, "green"), (96, "teal"), (130, "blue"),
         (150, "purple"), (170, "pink"), (181, "red")]  # OpenCV hue 0..180 upper bounds
_NUMBERS = ["no", "one", "two", "three", "four", "five"]

SNAPSHOT_PIXELS = 1_000_000
"""what a snapshot is reduced to before a backend sees it: ~1 MP (1155x866 at 4:3)"""
SNAPSHOT_QUALITY = 85
"""JPEG quality of the reduced snapshot"""
DECODES_AT_ONCE = 1
"""snapshots decoded at the same time, whatever the number of skulls or of snapshots a skull
sends: the decoding's memory is one picture at the limit (~140 MB at 24 MP, measured), and one
takes 0.2-1.4 s; a JPEG of ~1 MP or less, what a webcam sends, is not decoded at all"""
_DECODING = threading.BoundedSemaphore(DECODES_AT_ONCE)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_size(data: bytes) -> tuple[str, int, int]:
    """``(format, width, height)`` in pixels, read from the header alone (no pixel is decoded).
    Raises ValueError naming what is wrong when the bytes are no PNG, JPEG, WebP or GIF, or their
    header is cut short."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("a PNG without its IHDR header")
        w, h = struct.unpack(">II", data[16:24])
        return "PNG", w, h
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) < 10:
            raise ValueError("a GIF cut short in its header")
        w, h = struct.unpack("<HH", data[6:10])
        return "GIF", w, h
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ("WebP",) + _webp_size(data)
    if data[:2] == b"\xff\xd8":
        return ("JPEG",) + _jpeg_size(data)
    raise ValueError(f"not a PNG, JPEG, WebP or GIF picture (it starts {data[:8].hex(' ') or 'empty'})")


def _webp_size(data: bytes) -> tuple[int, int]:
    kind, body = data[12:16], data[20:30]
    if kind == b"VP8X" and len(body) >= 10:  # extended: the canvas, 24-bit width-1 and height-1
        return 1 + int.from_bytes(body[4:7], "little"), 1 + int.from_bytes(body[7:10], "little")
    if kind == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:  # lossless: 14-bit width-1, height-1
        bits = int.from_bytes(body[1:5], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if kind == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":  # lossy key frame
        w, h = struct.unpack("<HH", body[6:10])
        return w & 0x3FFF, h & 0x3FFF
    raise ValueError(f"a WebP whose first chunk {kind!r} gives no size")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """The frame size from the first SOFn marker, walking the segments by their lengths."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ValueError(f"a JPEG with a broken segment at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header came first
            break
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in _JPEG_SOF:
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            if h == 0:
                raise ValueError("a JPEG whose height is given only after the first scan (DNL)")
            return w, h
        i += 2 + length
    raise ValueError("a JPEG without a frame header (SOFn) before its image data")


def reduce_snapshot(image: bytes, max_pixels: int, stage: str = "vision", deadline: float | None = None) -> bytes:
    """The snapshot as a JPEG of at most ~:data:`SNAPSHOT_PIXELS`; a JPEG already that small is
    returned as it came. Raises BackendError (naming ``stage``) when the header gives no size,
    when width x height is over ``max_pixels`` (the size and the limit named: nothing is
    decoded), or when OpenCV cannot decode it. At most :data:`DECODES_AT_ONCE` decode at a time;
    ``deadline`` (``time.monotonic()`` seconds): past it no decoding starts, so a turn whose
    vision stage has timed out leaves no decode behind it."""
    import cv2
    try:
        kind, w, h = image_size(image)
    except ValueError as exc:
        raise BackendError(stage, f"the snapshot ({len(image)} bytes) is {exc}; send a JPEG or PNG") from None
    if w * h > max_pixels:
        raise BackendError(stage, f"the snapshot is a {kind} of {w}x{h} pixels ({w * h / 1e6:.1f} MP), over the "
                                  f"limit of {max_pixels / 1e6:.7g} MP ([server] max_image_mp); refused undecoded. "
                                  f"Send a smaller picture, or raise the limit")
    if w * h == 0:
        raise BackendError(stage, f"the snapshot is a {kind} of {w}x{h} pixels: empty")
    if kind == "JPEG" and w * h <= SNAPSHOT_PIXELS:
        return image
    flags = cv2.IMREAD_COLOR
    if kind == "JPEG":  # libjpeg scales while it decodes: memory and time shrink with the square of this
        for d, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                        (2, cv2.IMREAD_REDUCED_COLOR_2)):
            if (w // d) * (h // d) >= SNAPSHOT_PIXELS:
                flags = flag
                break
    wait_s = None if deadline is None else deadline - time.monotonic()
    if wait_s is not None and wait_s <= 0 or not _DECODING.acquire(timeout=wait_s):
        raise BackendError(stage, f"no time left to decode the {kind} snapshot of {w}x{h} pixels: other "
                                  f"snapshots were being decoded")
    try:
        img = cv2.imdecode(np.frombuffer(image, np.uint8), flags)
    finally:
        _DECODING.release()
    if img is None:
        raise BackendError(stage, f"the snapshot ({len(image)} bytes, a {kind} of {w}x{h} pixels) is not a "
                                  f"picture OpenCV can decode; send a JPEG or PNG")
    ih, iw = img.shape[:2]
    scale = (SNAPSHOT_PIXELS / (iw * ih)) ** 0.5
    if scale < 1:
        img = cv2.resize(img, (max(1, int(iw * scale)), max(1, int(ih * scale))), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_QUALITY])
    if not ok:
        raise BackendError(stage, f"cannot re-encode the {kind} snapshot of {w}x{h} pixels as JPEG")
    return jpeg.tobytes()


def colour_name(bgr) -> str:
    """A plain-English name for a BGR colour, by hue, saturation and value."""
    import cv2
    px = np.uint8([[[int(round(float(c))) for c in bgr]]])
    h, s, v = (int(x) for x in cv2.cvtColor(px, cv2.COLOR_BGR2HSV)[0, 0])
    if v < 40:
        return "black"
    if s < 50:
        return "white" if v > 200 else "grey" if v > 90 else "dark grey"
    name = next(n for bound, n in _HUES if h < bound)
    if name == "orange" and v < 150:
        name = "brown"
    return ("dark " if v < 110 and name != "brown" else "") + name


@dataclass(frozen=True)
class OpenCVSettings:
    """``[vision.opencv]``: the embedded captioner."""
    min_face_px: int = 40
    """the smallest face it reports, in pixels of the snapshot scaled to 480 pixels across"""

    def check(self, where: str) -> None:
        need(10 <= self.min_face_px <= 240, where, "min_face_px", self.min_face_px, "must be 10..240 pixels")


@backend("opencv", "vision", settings=OpenCVSettings, default=True)
class OpenCVCaptioner:
    """Faces, colours and light, with no model download."""

    name = "opencv"

    def __init__(self, settings: OpenCVSettings, ctx: BackendContext):
        import cv2  # here, not at the top: a host that does not caption with OpenCV never loads it (~24 MB)
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._faces = cv2.CascadeClassifier(path)
        if self._faces.empty():
            raise BackendError(ctx.stage, f"cannot load the face cascade {path}; reinstall opencv-python-headless")
        self.min_face_px, self.stage = settings.min_face_px, ctx.stage
        self._lock = threading.Lock()

    def check(self) -> str:
        return "embedded (Haar faces, colours, light)"

    def describe(self, image: bytes) -> dict:
        import cv2
        img = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise BackendError(self.stage, f"the snapshot ({len(image)} bytes) is not a picture OpenCV can decode")
        h, w = img.shape[:2]
        scale = 480.0 / max(h, w)
        small = cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale)))) if scale < 1 else img
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        with self._lock:
            faces = self._faces.detectMultiScale(cv2.equalizeHist(grey), scaleFactor=1.1, minNeighbors=5,
                                                 minSize=(self.min_face_px, self.min_face_px))
        pixels = cv2.resize(small, (64, 48)).reshape(-1, 3).astype(np.float32)
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1.0)
        cv2.setRNGSeed(1)
        _, labels, centres = cv2.kmeans(pixels, 3, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
        counts = np.bincount(labels.ravel(), minlength=3)
        names = []
        for i in np.argsort(-counts):
            name = colour_name(centres[i])
            if name not in names and counts[i] > 0.15 * len(labels):
                names.append(name)
        brightness = float(grey.mean()) / 255.0
        return {"faces": int(len(faces)), "colours": names[:2], "brightness": brightness}

    def caption(self, image: bytes) -> str:
        d = self.describe(image)
        n = d["faces"]
        faces = f"{_NUMBERS[n] if n < len(_NUMBERS) else n} face{'s' if n != 1 else ''}"
        light = "dim light" if d["brightness"] < 0.35 else "bright light" if d["brightness"] > 0.7 else "soft light"
        return f"{faces}; mostly {' and '.join(d['colours'])}; {light}"
