"""The plugin's own folders on the user's machine (no Qt, no torch)."""
from __future__ import annotations

import os
from pathlib import Path


def user_dir(kind: str) -> Path:
    """``$NAPARI_DIFFINFINITE_<KIND>``, else ``$XDG_<KIND>_HOME/napari-diffinfinite``, else
    ``~/.<kind>/napari-diffinfinite`` (``kind``: ``cache`` or ``config``)."""
    env = os.environ.get(f"NAPARI_DIFFINFINITE_{kind.upper()}")
    if env:
        return Path(env)
    base = os.environ.get(f"XDG_{kind.upper()}_HOME") or str(Path.home() / f".{kind}")
    return Path(base) / "napari-diffinfinite"
