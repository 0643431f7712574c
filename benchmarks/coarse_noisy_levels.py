"""An experiment for issue 23: fewer denoising levels at the noisy end of the schedule only.

    python benchmarks/coarse_noisy_levels.py --above T --keep K [sweep_sampling options ...]

Runs ``benchmarks/sweep_sampling.py`` with the run's time points thinned where the timestep is at
least T: of those, only every K-th is kept (the first, t = 999, always), while every level below T
stays as the solver's own grid makes it.  The DDIM update takes any pair of timesteps, so the
thinned levels are simply longer steps.  The library is not changed: this script swaps the time
pairs of the runs' set-up for the sweep, which must be given its own ``--out`` (its settings do not
name the thinning).  The network calls the sweep reports count what ran.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def thin(pairs: list[tuple[int, int]], above: int, keep: int) -> list[tuple[int, int]]:
    """``pairs`` with the time points at or above ``above`` reduced to every ``keep``-th."""
    times = [pairs[0][0]] + [t_next for _, t_next in pairs]
    noisy = [t for t in times if t >= above]
    kept = [t for i, t in enumerate(noisy) if i % keep == 0] + [t for t in times if t < above]
    return list(zip(kept[:-1], kept[1:]))


def install(above: int, keep: int) -> None:
    import src_models.synthesis.run as run_module

    plain = run_module.sampling_setup

    def setup(*args, **kwargs):
        s = plain(*args, **kwargs)
        return dataclasses.replace(s, pairs=thin(s.pairs, above, keep))

    run_module.sampling_setup = setup


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    p.add_argument("--above", type=int, required=True, help="thin the time points with t >= this")
    p.add_argument("--keep", type=int, required=True, help="keep every K-th of them")
    a, rest = p.parse_known_args(argv)
    if "--out" not in rest:
        raise SystemExit("pass the sweep an --out of its own")
    if a.keep < 1:
        raise SystemExit("--keep must be at least 1")
    install(a.above, a.keep)
    import sweep_sampling

    return sweep_sampling.main(rest)


if __name__ == "__main__":
    sys.exit(main())
