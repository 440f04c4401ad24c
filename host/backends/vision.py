"""Captions. Embedded default: OpenCV face detection (the Haar cascades ship with opencv),
dominant colours and brightness, as one line such as
"two faces; mostly dark blue and orange; dim light"."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from skull.core.errors import BackendError
from skull.core.validate import need

from .registry import BackendContext, backend

_HUES = [(10, "red"), (22, "orange"), (34, "yellow"), (78, "green"), (96, "teal"), (130, "blue"),
         (150, "purple"), (170, "pink"), (181, "red")]  # OpenCV hue 0..180 upper bounds
_NUMBERS = ["no", "one", "two", "three", "four", "five"]


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
