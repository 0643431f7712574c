"""Fixtures of the GUI tests; run them under ``xvfb-run -a env QT_QPA_PLATFORM=xcb pytest tests/gui``
(``tests/conftest.py`` keeps torch on one thread).  Helpers live in ``gui_helpers``."""
from __future__ import annotations

import pytest


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture(scope="session")
def tiny_card():
    from src_models.models import load_model

    return load_model("tiny-test").card
