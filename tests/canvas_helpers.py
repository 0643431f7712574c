"""Helpers shared by the command-line tests: the arguments of a tiny-test run, the one line a
refusal prints, and a canvas another process writes."""
from __future__ import annotations

from src_models.store.canvas import Canvas, CanvasError


def finished_regions(path) -> int:
    """Finished regions of a canvas another process may be writing (0 while it is being made)."""
    try:
        with Canvas.open(path) as c:
            return len(c.done_indices())
    except CanvasError:
        return 0


def generate_args(out, mask, *extra) -> list[str]:
    """``diffinfinite generate`` on the tiny test model (CPU) from ``mask`` to ``out``."""
    return ["generate", "--mask", str(mask), "--out", str(out), "--model", "tiny-test", "--device", "cpu", *extra]


def one_line(capsys, *words) -> str:
    """The one line on stderr (no traceback), which holds every one of ``words``."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]
