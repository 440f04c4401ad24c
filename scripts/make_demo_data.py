"""Regenerates the demo's bundled question and snapshot (skull/data/).

question.wav: espeak-ng voice en-us+f2 saying "Do you like my costume?" (moonshine and pocketsphinx hear it
word for word), 16 kHz mono. snapshot.jpg: a drawn party scene with two faces that OpenCV's
face cascade finds, on purple and orange.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from skull.core.wav import read_wav, to_mono_rate, write_wav  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "skull" / "data"


def face(img, cx, cy, s, skin):
    cv2.ellipse(img, (cx, cy), (int(s * 0.8), s), 0, 0, 360, skin, -1)
    cv2.ellipse(img, (cx, cy - int(s * 0.9)), (int(s * 0.85), int(s * 0.35)), 0, 180, 360, (30, 40, 60), -1)
    for ex in (-1, 1):
        eye = (cx + ex * int(s * 0.33), cy - int(s * 0.22))
        cv2.ellipse(img, eye, (int(s * 0.2), int(s * 0.09)), 0, 0, 360, (235, 235, 235), -1)
        cv2.circle(img, eye, int(s * 0.08), (40, 30, 20), -1)
        cv2.line(img, (cx + ex * int(s * 0.15), cy - int(s * 0.42)), (cx + ex * int(s * 0.5), cy - int(s * 0.45)),
                 (30, 40, 60), int(s * 0.07))
    cv2.line(img, (cx, cy - int(s * 0.15)), (cx - int(s * 0.07), cy + int(s * 0.2)), (110, 140, 190), int(s * 0.06))
    cv2.ellipse(img, (cx, cy + int(s * 0.45)), (int(s * 0.3), int(s * 0.1)), 0, 0, 180, (60, 60, 160), int(s * 0.06))


def snapshot() -> None:
    img = np.zeros((480, 640, 3), np.uint8)
    img[:] = (90, 40, 60)
    cv2.rectangle(img, (0, 330), (640, 480), (20, 90, 200), -1)
    for i in range(30):
        cv2.circle(img, (np.random.RandomState(i).randint(0, 640), np.random.RandomState(i + 99).randint(0, 300)),
                   6, (0, 200, 255), -1)
    face(img, 220, 210, 95, (150, 180, 220))
    face(img, 450, 200, 85, (120, 150, 200))
    img = cv2.GaussianBlur(img, (7, 7), 0)
    img = np.clip(img + np.random.RandomState(0).normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(DATA / "snapshot.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 85])


def question() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "q.wav"
        subprocess.run(["espeak-ng", "-v", "en-us+f2", "-s", "140", "-w", str(raw), "Do you like my costume?"],
                       check=True)
        x = to_mono_rate(read_wav(raw), 16000)
    pad = lambda s: np.zeros(int(16000 * s), np.float32)  # noqa: E731
    write_wav(DATA / "question.wav", np.concatenate([pad(0.3), x, pad(0.4)]), 16000)


if __name__ == "__main__":
    question()
    snapshot()
    print("wrote", DATA / "question.wav", "and", DATA / "snapshot.jpg")
