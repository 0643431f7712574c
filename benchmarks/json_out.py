"""How a benchmark hands back its result: the JSON on stdout, and the same text in ``out`` when one is given
(its folder made first)."""
from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, out: Path | None, indent: int = 1) -> None:
    text = json.dumps(result, indent=indent)
    print(text)
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
