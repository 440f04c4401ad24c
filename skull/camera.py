"""Camera snapshots through OpenCV: a camera index, a device path, or an image/video file."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import cv2

from .core.errors import DeviceError
from .ports import Device

log = logging.getLogger("skull.camera")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class Camera(Device):
    """``snapshot()`` returns one JPEG. Video files loop; image files return the same picture."""

    def __init__(self, source: str | Path | int, width: int = 640, height: int = 480, quality: int = 85):
        if isinstance(source, Path):
            source = str(source)
        self.source, self.quality = source, quality
        self._still = None
        self._cap = None
        self._lock = threading.Lock()
        if isinstance(source, str) and Path(source).suffix.lower() in _IMAGE_SUFFIXES:
            if not Path(source).is_file():  # before OpenCV, whose own warning would come first
                raise DeviceError(f"camera image {source} does not exist; check the path (--image or [camera] "
                                  f"source)")
            img = cv2.imread(source, cv2.IMREAD_COLOR)
            if img is None:
                raise DeviceError(f"camera image {source} cannot be read; check the path and that it is a picture")
            self._still = img
            return
        if isinstance(source, str) and not source.startswith("/dev/") and not Path(source).exists():
            raise DeviceError(f"camera source {source} does not exist; give a camera index (0), a device "
                              f"(/dev/video0) or an image/video file")
        try:  # OpenCV's own warnings would repeat what the DeviceError below says
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        except AttributeError:
            pass
        if isinstance(source, str) and Path(source).is_file():
            still = cv2.imread(source, cv2.IMREAD_COLOR)  # a picture whatever its name ends with
            if still is not None:
                self._still = still
                return
        cap = cv2.VideoCapture(source)
        if not cap.isOpened() and isinstance(source, str) and Path(source).is_file():
            cap.release()
            raise DeviceError(f"camera file {source} is neither a picture nor a video OpenCV can read; give an "
                              f"image (.jpg, .png...) or a video file (.mp4, .avi...)")
        if not cap.isOpened():
            raise DeviceError(f"camera {source!r} cannot be opened; is it plugged in and not used by another "
                              f"program? Set [camera] source in skull.toml (an index, /dev/videoN or a file)")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self._cap = cap

    def snapshot(self) -> bytes:
        with self._lock:
            if self._still is not None:
                frame = self._still
            else:
                ok, frame = self._cap.read()
                if not ok:  # end of a video file: start again
                    self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, frame = self._cap.read()
                if not ok:
                    raise DeviceError(f"camera {self.source!r} gave no picture")
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise DeviceError("could not encode the snapshot as JPEG")
        return jpeg.tobytes()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
