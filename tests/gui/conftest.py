"""Fixtures of the GUI tests; run them under ``xvfb-run -a env QT_QPA_PLATFORM=xcb pytest tests/gui``
(``tests/conftest.py`` keeps torch on one thread).  Helpers live in ``gui_helpers``.

napari's settings, the plugin's cache (demo canvases) and configuration (remembered class maps)
go to temporary folders, never to the user's."""
from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("NAPARI_CONFIG", os.path.join(tempfile.mkdtemp(prefix="napari-settings-"), "settings.yaml"))


@pytest.fixture(autouse=True)
def plugin_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_DIFFINFINITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NAPARI_DIFFINFINITE_CONFIG", str(tmp_path / "config"))


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture(scope="session")
def tiny_card():
    from src_models.models.loading import load_model

    return load_model("tiny-test").card
