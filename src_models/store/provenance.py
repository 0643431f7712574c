"""Provenance: what made an output, so a data set or canvas can be traced and made again.

Every data set folder (``make-dataset``, ``export-tiles``), OME-TIFF export and canvas records a
``provenance`` object::

    {"code_version": "napari-diffinfinite 0.1.0 (git 1a2b3c4d5e6f, modified)",
     "created_utc": "2026-11-30T13:17:47Z",
     "model_card_sha256": "..." | None,          # SHA-256 of the model card's canonical JSON
     "settings": {...}, "seeds": {...},
     "sources": [{"path": "...", "sha256": "...", "bytes": 123, "role": "slide"}, ...]}

numpy-free and torch-free; ``git`` is asked once per process for the commit (when the code runs
from a git checkout).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

PACKAGE = "napari-diffinfinite"
_HASH_BLOCK = 1 << 20


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version, plus the git commit (and whether the tree has changes) when the code
    runs from a checkout."""
    try:
        from importlib.metadata import version

        text = f"{PACKAGE} {version(PACKAGE)}"
    except Exception:  # not installed (a plain checkout on sys.path)
        text = f"{PACKAGE} (not installed)"
    root = Path(__file__).resolve().parents[2]  # src_models/store/provenance.py -> the checkout
    if not (root / ".git").exists():
        return text
    try:
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, env=env)
        if head.returncode != 0:
            return text
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, env=env)
        dirty = ", modified" if status.returncode == 0 and status.stdout.strip() else ""
        return f"{text} (git {head.stdout.strip()[:12]}{dirty})"
    except (OSError, subprocess.SubprocessError):
        return text


def sha256_file(path: str | Path, progress=None) -> str:
    """SHA-256 of a file's bytes; ``progress(done_bytes, total_bytes)`` after each MiB block."""
    path = Path(path)
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(_HASH_BLOCK)
            if not block:
                break
            h.update(block)
            done += len(block)
            if progress is not None:
                progress(done, total)
    return h.hexdigest()


def sha256_tree(path: str | Path) -> str:
    """SHA-256 over the relative names and bytes of every file under a directory (sorted)."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def source_entry(path: str | Path, role: str, progress=None) -> dict:
    """{"path", "role", "bytes", "sha256"} of a source file (a directory: its files, hashed together)."""
    p = Path(path)
    if p.is_dir():
        return {"path": str(p), "role": role, "bytes": sum(q.stat().st_size for q in p.rglob("*") if q.is_file()),
                "sha256": sha256_tree(p)}
    return {"path": str(p), "role": role, "bytes": p.stat().st_size, "sha256": sha256_file(p, progress)}


def card_sha256(card) -> str:
    """SHA-256 of a model card's canonical JSON (sorted keys, no spaces): the same card, the same hash."""
    data = card.to_dict() if hasattr(card, "to_dict") else dict(card)
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def provenance(settings: dict | None = None, seeds: dict | None = None, sources: list[dict] | None = None,
               card=None, card_hash: str | None = None, **extra) -> dict:
    """The provenance object (see the module's docstring); ``extra`` keys are added as they are."""
    out = {
        "code_version": code_version(),
        "created_utc": utc_now(),
        "model_card_sha256": card_sha256(card) if card is not None else card_hash,
        "settings": dict(settings or {}),
        "seeds": dict(seeds or {}),
        "sources": list(sources or []),
    }
    if card is not None:
        out["model"] = card.name
    out.update(extra)
    return out
