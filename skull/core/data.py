"""Sample data shipped inside the package (a spoken question and a snapshot)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def bundled(name: str) -> Path:
    """The path of a file in ``skull/data`` (question.wav, snapshot.jpg)."""
    return Path(str(resources.files("skull") / "data" / name))
