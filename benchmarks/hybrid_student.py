"""An experiment for issue 23: the guidance-distilled student for some of the noise levels only.

    python benchmarks/hybrid_student.py (--above T | --below T) [sweep_sampling options ...]

Runs ``benchmarks/sweep_sampling.py`` with the model's teacher (two passes at the card's ω) except at
the levels with timestep t ≥ T (``--above``: the noisy levels) or t < T (``--below``: the clean ones),
where the model's distilled student gives the guided ε in one pass (its ω; the card's).  ``--above 0``
is the student everywhere, ``--above 1000`` the teacher everywhere.  The network
calls the sweep reports count what ran.  The library is not changed: this script swaps the sampler's
guidance step for the run (``Guided``) and passes every other option to the sweep, which must be run
with ``--no-distilled`` and its own ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def install(use_student) -> None:
    """Route the levels whose timestep ``use_student(t)`` accepts to the student of the run's model."""
    import src_models.sampling.sampler as sampler
    import src_models.synthesis.regions as regions
    from src_models.sampling.guidance import count_forwards, free_labels, guided_eps
    from src_models.synthesis import run as run_module

    students: dict[int, object] = {}  # id(teacher denoiser) -> student denoiser
    plain_prepare = regions.prepare_run

    def prepare_run(model, canvas, request):
        run = plain_prepare(model, canvas, request)
        if run.request.distilled:
            raise SystemExit("run the hybrid with --no-distilled: the teacher's levels need the card's ω")
        student, _ = run_module._denoiser_for(model, model.device, run.window,
                                              dataclasses.replace(run.request, distilled=True))
        students[id(run.denoiser)] = student
        return run

    regions.prepare_run = prepare_run
    plain_init, plain_call = sampler.Guided.__init__, sampler.Guided.__call__

    def init(self, denoiser, omega, conditioning, max_batch, stats, device, *rest):
        plain_init(self, denoiser, omega, conditioning, max_batch, stats, device, *rest)
        self.student = students.get(id(denoiser))
        zero = torch.zeros_like(torch.as_tensor(omega, dtype=torch.float32).cpu())
        self.student_free = free_labels(zero, conditioning)
        self.student_omega = zero.to(device)

    def call(self, xs, ms, labels, t):
        if self.student is None or not use_student(int(t)):
            return plain_call(self, xs, ms, labels, t)
        ts = torch.full((xs.shape[0],), int(t), dtype=torch.long, device=self.device)
        eps = guided_eps(self.student, xs, ts, ms, self.student_omega, self.conditioning, self.max_batch, labels,
                         free=self.student_free)
        passes = count_forwards(labels, self.conditioning, self.student_free)
        self.stats.forwards += passes
        return eps, passes

    sampler.Guided.__init__, sampler.Guided.__call__ = init, call


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--above", type=int, help="the student runs the levels with t >= this")
    where.add_argument("--below", type=int, help="the student runs the levels with t < this")
    a, rest = p.parse_known_args(argv)
    if "--no-distilled" not in rest or "--out" not in rest:
        raise SystemExit("pass --no-distilled and an --out of its own to the sweep")
    install((lambda t: t >= a.above) if a.above is not None else (lambda t: t < a.below))
    import sweep_sampling

    return sweep_sampling.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
