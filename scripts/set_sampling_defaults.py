"""Write a model's sampling defaults, chosen from a sweep, into its card, with the sweep's table.

    python scripts/set_sampling_defaults.py src_models/weights/default \
        --sweep benchmarks/results/sweep-default.json --solver dpmpp-2m --steps 20 --omega 1 \
        --why "lowest FD and KID of the sweep; ..."

The card gets ``default_solver``, ``default_steps``, ``default_eta`` (None: the solver's own),
``default_omega`` and ``default_omega_per_class`` (``--omega-class K=V``, repeatable; none: cleared),
``default_guidance_below`` (``--guidance-below T``: guidance only at timesteps below T; none: every level),
and under ``extra.sampling_sweep`` the summary of the sweep (mean and 95 % t interval over seeds per
setting, as ``benchmarks/sweep_report.py`` computes it), the sweep's protocol and the reason given.
The setting chosen must be one the sweep measured.  The card is checked and the model loaded back
before the file is replaced (atomically); nothing else in the folder is touched.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> int:
    from sweep_report import solver_name, summarise

    from src_models.cli.common import parse_omega_class
    from src_models.models.card import CARD_FILE, ModelCard
    from src_models.models.loading import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--sweep", type=Path, required=True)
    p.add_argument("--solver", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--omega", type=float, required=True)
    p.add_argument("--omega-class", type=parse_omega_class, action="append", default=[], metavar="K=V",
                   help="ω of class K (repeatable)")
    p.add_argument("--guidance-below", type=int, default=None, metavar="T",
                   help="guide only the levels with timestep below T (default: every level)")
    p.add_argument("--why", required=True, help="one sentence: which figures chose it")
    a = p.parse_args(argv)

    data = json.loads(a.sweep.read_text())
    names, table = summarise(data)
    per_class = {str(k): v for k, v in a.omega_class}
    chosen = {"solver": a.solver, "steps": a.steps, **({"eta": a.eta} if a.eta is not None else {}),
              **({"omega_per_class": per_class} if per_class else {}),
              **({"guidance_below": a.guidance_below} if a.guidance_below is not None else {})}
    key = (solver_name(chosen), float(a.omega))
    if key not in table:
        raise SystemExit(f"the sweep has no row for {key[0]} at omega {a.omega:g}: measure it first")
    card_path = a.model_dir / CARD_FILE
    raw = json.loads(card_path.read_text())
    raw.update(default_solver=a.solver, default_steps=a.steps, default_eta=a.eta, default_omega=a.omega,
               default_omega_per_class=per_class, default_guidance_below=a.guidance_below)
    rows = []
    for (solver, omega), figures in sorted(table.items()):
        rows.append({"solver": solver, "omega": omega,
                     **{n: {"mean": None if m is None else round(m, 4), "ci95_half": None if h is None else round(h, 4),
                            "n": k} for n, (m, h, k) in figures.items()}})
    raw.setdefault("extra", {})["sampling_sweep"] = {
        "chosen": {**chosen, "omega": a.omega},
        "why": a.why,
        "protocol": {k: data.get(k) for k in ("heldout", "crop", "tile", "stride", "real_rim_od", "rim_um", "machine")},
        "relative_figures": "nuclei, area and rim are synthetic over real (1.0 = a match)",
        "rows": rows,
    }
    ModelCard.from_dict(raw)  # the card's own checks, before anything is written
    tmp = card_path.with_name(f".{card_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(card_path)
    model = load_model(str(a.model_dir), "cpu")  # loads back, or the error names the problem
    c = model.card
    print(json.dumps({"card": str(card_path), "default_solver": c.default_solver, "default_steps": c.default_steps,
                      "default_eta": c.default_eta, "default_omega": c.default_omega,
                      "default_omega_per_class": c.default_omega_per_class,
                      "default_guidance_below": c.default_guidance_below}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
