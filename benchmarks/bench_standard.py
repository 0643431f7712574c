"""Issue 6's standard case: the published-size image UNet (random weights, 5 classes), 2048 x 2048 px
(256 x 256 latent, 64-latent windows), 50 DDIM steps, omega = 3, eta = 1, seed 0, and the 4-class mask
(class 1 everywhere; 2 where x < W/3; 3 where (y - 0.6H)^2 + (x - 0.6W)^2 < (0.2H)^2; 4 where y > 0.85H;
later rules overwrite earlier ones) at full resolution.  Prints one JSON object.

On a CUDA machine (the default when CUDA is there)::

    python benchmarks/bench_standard.py [--variants release,tf32,bf16,fp16,fp16-compile]
                                        [--repeats 3] [--seq-steps 10] [--max-batch auto]

times the grid plan with DDIM for every variant (median of ``--repeats`` after a full warm-up run),
counts its forwards, FLOPs (``FlopCounterMode``, one 64 x 64 forward times the forwards), achieved
TFLOP/s and the fraction of the card's bf16 rate, peak GPU memory, host-device synchronisations per
level (``torch.cuda.set_sync_debug_mode``), the numerical guard (one level against the float32
O(HW^2) reference: TF32 off, softmax attention), then, with the fastest variant, the other plans and
solvers side by side (the ``release`` plan batched with DDIM-50, DPM-Solver++(2M) at 20 steps on both
plans; ``--no-plans-solvers`` skips them), the release's sequential order at ``--seq-steps`` steps
(batch-1 calls, as released) for a speed-up measured side by side, and the
SD-2-config VAE decode of the result (random weights, no download) in float32 and with autocast.
A variant can also be described by flags (--attention, --dtype, --no-channels-last, --compile,
--tf32) and named ``flags`` in --variants.  ``--smoke`` runs this whole path on the CPU with a
shrunken case (a dry run that checks the code, not the speed).

Without CUDA (or with ``--count-only``) it runs nothing big: forward counts of the grid and release
plans and of the release's order on the standard mask (a counting stub as denoiser: counts depend only on the
plan and the mask), FLOPs of one forward of the published network (meta device), the FLOP floor,
the memory a batch row needs, and an audit of host-device synchronisations inside a level (the
published network on the meta device, where nothing can be read back).

``--cpu-default`` times a 512 x 512 px region with the shipped default model on the CPU (issue 6's
CPU target: 30 s), raw and channels_last, falling back to ``tiny-test`` (and saying so) when the
default model is not installed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import src_models.sampling.sampler as sampler_mod  # noqa: E402
from src_models.models.fast import (  # noqa: E402
    COMPILE_MODES,
    FastDenoiser,
    HostTransfers,
    batch_budget,
    bf16_peak,
    bytes_per_row,
    forward_flops,
)
from src_models.sampling.guidance import PER_CLASS, omega_vector  # noqa: E402
from src_models.sampling.plan import grid_plan  # noqa: E402
from src_models.models.release.reference_check import relative_error  # noqa: E402
from src_models.models.release.unet import ImageUNet  # noqa: E402
from src_models.sampling.sampler import LabelCounter, SampleStats, sample_area  # noqa: E402
from src_models.sampling.schedule import cosine_alphas_cumprod, ddim_time_pairs  # noqa: E402

SIZE_PX, FACTOR, WINDOW, STEPS, OMEGA, ETA, SEED, CLASSES = 2048, 8, 64, 50, 3.0, 1.0, 0, 5
DPM_STEPS = 20  # DPM-Solver++(2M)'s provisional default step count (src_models/sampling/solvers.py)
LATENT = SIZE_PX // FACTOR
NET = {}  # ImageUNet arguments: {} is the published configuration (--smoke shrinks it)
RELEASE = {"card": "H100", "seconds": 181.0, "forwards": 6930, "batch": 1,
           "source": "shared/reference/README.md, Large images"}
TARGETS = {"gpu_seconds": 3.0, "gpu_goal_seconds": 1.8, "max_forwards": 3300, "min_fraction_of_bf16_peak": 0.30,
           "cpu_default_512_seconds": 30.0}

# name -> settings; "raw" runs the network itself, otherwise through FastDenoiser

def _preset(attention="linear_exact", dtype=None, channels_last=True, compile=False, tf32=True, raw=False) -> dict:
    return {"raw": raw, "attention": attention, "dtype": dtype, "channels_last": channels_last, "compile": compile,
            "tf32": tf32}


PRESETS = {
    "release": _preset("softmax", channels_last=False, raw=True),  # as released: TF32, O(HW²) attention
    "fp32": _preset(tf32=False),
    "tf32": _preset(),
    "bf16": _preset(dtype="bf16"),
    "fp16": _preset(dtype="fp16"),
    "bf16-softmax": _preset("softmax", dtype="bf16"),
    "bf16-compile": _preset(dtype="bf16", compile="default"),
    "fp16-compile": _preset(dtype="fp16", compile="default"),
}
DTYPES = {None: None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_VARIANTS = "release,tf32,bf16,fp16,fp16-compile"


def standard_mask(h: int | None = None, w: int | None = None, num_classes: int = CLASSES) -> torch.Tensor:
    """The issue's 4-class mask at (h, w) (default: the full-resolution case) as (1, h, w) int64, labels
    clipped to the model's classes."""
    h = SIZE_PX if h is None else h
    w = SIZE_PX if w is None else w
    y, x = np.mgrid[0:h, 0:w]
    m = np.ones((h, w), np.int64)
    m[x < w / 3] = 2
    m[(y - 0.6 * h) ** 2 + (x - 0.6 * w) ** 2 < (0.2 * h) ** 2] = 3
    m[y > 0.85 * h] = 4
    return torch.from_numpy(np.minimum(m, num_classes - 1))[None]


class CountingStub(torch.nn.Module):
    """A denoiser that only counts: ε = 0, per-class conditioning like the published network."""

    conditioning = PER_CLASS
    num_classes = CLASSES

    def __init__(self):
        super().__init__()
        self.rows = 0
        self.calls = 0

    def forward(self, x, t, mask):
        self.rows += x.shape[0]
        self.calls += 1
        return torch.zeros_like(x)


def machine() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__}
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15min"] = [round(v, 2) for v in os.getloadavg()]  # other jobs on the machine
    if torch.cuda.is_available():
        info["card"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sample(denoiser, device, steps, plan="grid", max_batch=32, mask=None, stats=None, pairs=None,
           rng_seed=SEED, solver="ddim"):
    """One run of the standard case; returns (latent, stats, seconds)."""
    g = torch.Generator().manual_seed(SEED)
    noise = torch.randn((4, LATENT, LATENT), generator=g).to(device)
    mask = standard_mask() if mask is None else mask
    stats = stats if stats is not None else SampleStats()
    pairs = pairs if pairs is not None else ddim_time_pairs(steps)
    _sync(device)
    t0 = time.perf_counter()
    z = sample_area(denoiser, noise, mask, cosine_alphas_cumprod(), pairs, omega_vector(CLASSES, OMEGA).to(device),
                    window=WINDOW, plan=plan, solver=solver, eta=ETA if solver == "ddim" else None, generator=g,
                    rng=np.random.default_rng(rng_seed),
                    max_batch=max_batch, stats=stats)
    _sync(device)
    return z, stats, time.perf_counter() - t0


# ----------------------------------------------------------------------------- counting (any machine)


def count(plan: str, steps: int, mask: torch.Tensor) -> dict:
    stub = CountingStub()
    t0 = time.perf_counter()
    _, stats, _ = sample(stub, torch.device("cpu"), steps, plan, max_batch=10**6 if plan != "sequential" else 1,
                         mask=mask)
    return {"forwards": stats.forwards, "windows": sum(stats.windows_per_level), "levels": len(stats.windows_per_level),
            "network_calls": stub.calls, "seconds_to_count": round(time.perf_counter() - t0, 1)}


def window_label_count(mask: torch.Tensor, steps: int) -> int:
    """Forwards the grid plan needed before passes were limited to each cell's labels (one pass per
    label in the whole window): same grids (same seed), labels counted over the windows."""
    rng = np.random.default_rng(SEED)
    counter = LabelCounter(mask[0].numpy(), FACTOR)
    total = 0
    for _ in range(steps):
        wy, wx = grid_plan(LATENT, LATENT, WINDOW, rng).starts()
        total += len(wy) + sum(len(lab) for lab in counter(wy, wx, WINDOW))
    return total


def published_unet(device="meta", seed=0, attention="linear_exact") -> ImageUNet:
    if str(device) == "meta":
        with torch.device("meta"):
            return ImageUNet(attention=attention, **NET)
    torch.manual_seed(seed)
    return ImageUNet(attention=attention, **NET).to(device).eval()


def flops_table() -> dict:
    net = published_unet("meta")
    out = {"parameters": sum(p.numel() for p in net.parameters())}
    for mode in ("linear_exact", "softmax"):
        net.attention = mode
        out[mode] = forward_flops(net, WINDOW, FACTOR)
    return out


def sync_audit_meta(levels: int = 2) -> dict:
    """Blocking host-to-device copies per level of the grid plan with DDIM and of the release plan with
    DPM-Solver++(2M), with the published network on the meta device (where nothing can be read back)."""
    net = published_unet("meta")
    out = {"device": "meta", "levels": levels, "device_reads": 0,
           "note": "the meta device has no data: any .item()/.cpu()/bool()/unique would have raised"}
    for plan, solver in (("grid", "ddim"), ("release", "dpmpp-2m")):
        g = torch.Generator().manual_seed(SEED)
        noise = torch.randn((4, LATENT, LATENT), generator=g).to("meta")
        marks = []
        with HostTransfers() as h:
            sample_area(net, noise, standard_mask(), cosine_alphas_cumprod(), ddim_time_pairs(STEPS)[:levels],
                        omega_vector(CLASSES, OMEGA), window=WINDOW, plan=plan, solver=solver, generator=g,
                        rng=np.random.default_rng(SEED), max_batch=10**6, callback=lambda info: marks.append(h.blocking))
        out[f"{plan}_{solver}"] = {
            "blocking_copies_before_first_level_incl_setup": marks[0],
            "blocking_copies_per_later_level": [b - a for a, b in zip(marks[:-1], marks[1:])],
            "mixed_device_ops": h.mixed, "non_blocking_copies": h.non_blocking}
    return out


def count_only(args) -> dict:
    mask = standard_mask()
    flops = flops_table()
    par = count("grid", STEPS, mask)
    rel = count("release", STEPS, mask)
    seq = count("sequential", STEPS, mask)
    seq_short = count("sequential", args.seq_steps, mask)
    peak = bf16_peak("H100")
    res = {
        "mode": "count-only",
        "case": case(),
        "machine": machine(),
        "flops_per_forward": flops,
        "counts": {
            f"grid_{STEPS}": par,
            f"grid_{STEPS}_if_passes_per_window_label": window_label_count(mask, STEPS),
            f"release_{STEPS}_batched": rel,
            f"grid_dpmpp-2m_{DPM_STEPS}": count("grid", DPM_STEPS, mask),
            f"release_dpmpp-2m_{DPM_STEPS}": count("release", DPM_STEPS, mask),
            f"sequential_{STEPS}": seq,
            # the release's 6,930 fits a (conditional, null) pair per label present, batch 1, not a shared null pass
            f"sequential_{STEPS}_if_one_null_pass_per_label": 2 * (seq["forwards"] - seq["windows"]),
            f"sequential_{args.seq_steps}": seq_short,
            "release_reported": RELEASE,
        },
        "targets": TARGETS,
    }
    floors = {}
    for mode in ("linear_exact", "softmax"):
        for name, n in ((f"grid_{STEPS}", par["forwards"]), (f"release_{STEPS}", rel["forwards"])):
            total = flops[mode] * n
            floors[f"{mode}_{name}"] = {"flops": total, "seconds_at_790_tflops": round(total / peak, 4),
                                        "seconds_at_30pct": round(total / (0.3 * peak), 3)}
    res["floor_h100"] = floors
    res["memory_per_batch_row_bytes_float32_trace"] = bytes_per_row(published_unet("meta"), WINDOW, FACTOR)
    res["max_batch_if_77GiB_free"] = batch_budget(published_unet("meta"), WINDOW, "cuda", bytes_free=77 * 2**30,
                                                  mask_factor=FACTOR)
    res["sync_audit"] = sync_audit_meta(3)
    return res


def case() -> dict:
    return {"size_px": SIZE_PX, "latent": LATENT, "window": WINDOW, "steps": STEPS, "omega": OMEGA, "eta": ETA,
            "seed": SEED, "classes": CLASSES, "mask": "issue 6 standard 4-class mask at full resolution",
            "network": ("ImageUNet(dim=256, dim_mults=(1,2,4), channels=4, resnet_block_groups=2, block_per_layer=2)"
                        if not NET else f"shrunken ImageUNet(**{NET})") + ", random weights (torch.manual_seed(0))"}


# ----------------------------------------------------------------------------- the GPU run


def preset_from_flags(args) -> dict:
    return {"attention": args.attention, "dtype": args.dtype, "channels_last": not args.no_channels_last,
            "compile": args.compile or False, "tf32": args.tf32, "raw": False}


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = bool(on)
    torch.backends.cudnn.allow_tf32 = bool(on)


def build(preset: dict, state: dict, device) -> torch.nn.Module:
    net = ImageUNet(attention=preset["attention"], **NET)
    net.load_state_dict(state)
    net = net.to(device).eval()
    if preset.get("raw"):
        return net
    return FastDenoiser(net, dtype=DTYPES[preset["dtype"]], channels_last=preset["channels_last"],
                        compile=preset["compile"], window=WINDOW)


def one_level(den, device, level, mask, max_batch):
    """The area after level ``level`` from fixed noise, and the guided ε of its windows."""
    eps = []
    real = sampler_mod.guided_eps

    def spy(*a, **kw):
        eps.append(real(*a, **kw).float())
        return eps[-1]

    sampler_mod.guided_eps = spy
    try:
        z, _, _ = sample(den, device, STEPS, max_batch=max_batch, mask=mask,
                         pairs=ddim_time_pairs(STEPS)[level : level + 1], rng_seed=level)
    finally:
        sampler_mod.guided_eps = real
    return z.float(), torch.cat(eps)


def guard(den, reference: dict, device, mask, max_batch, bound: float) -> dict:
    out = {"bound": bound, "levels": {}}
    ok = True
    for level, (z_ref, eps_ref) in reference.items():
        z, eps = one_level(den, device, level, mask, max_batch)
        e_eps, e_x = relative_error(eps, eps_ref), relative_error(z, z_ref)
        # level 0's area is not judged: √ᾱ_999 = 4.9e-5 multiplies ε's rounding by up to 632 there
        ok &= e_eps < bound and (level == 0 or e_x < bound)
        out["levels"][str(level)] = {"eps_rel_err": e_eps, "x_rel_err": e_x}
    out["pass"] = bool(ok)
    return out


def count_syncs(den, device, mask, max_batch, levels=3) -> list[int]:
    """Synchronising CUDA calls per level (torch.cuda.set_sync_debug_mode('warn')); the first entry
    includes the set-up before the first level."""
    if device.type != "cuda":
        return "n/a (not CUDA)"
    marks = []

    def syncs(caught, n0):
        return len([w for w in caught[n0:] if "synchroniz" in str(w.message)])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            g = torch.Generator().manual_seed(SEED)
            noise = torch.randn((4, LATENT, LATENT), generator=g).to(device)
            n0 = len(caught)
            sample_area(den, noise, mask, cosine_alphas_cumprod(), ddim_time_pairs(STEPS)[:levels],
                        omega_vector(CLASSES, OMEGA).to(device), window=WINDOW, generator=g,
                        rng=np.random.default_rng(SEED), max_batch=max_batch,
                        callback=lambda info: marks.append(syncs(caught, n0)))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [b - a for a, b in zip([0] + marks[:-1], marks)]


def gpu_run(args, device=None) -> dict:
    device = torch.device("cuda") if device is None else device
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    card = torch.cuda.get_device_name(device) if cuda else f"{device.type} (smoke run)"
    peak = bf16_peak(card)
    flops = flops_table()
    mask = standard_mask()
    torch.manual_seed(SEED)
    state = ImageUNet(**NET).state_dict()  # the random weights every variant loads
    res = {"mode": "gpu" if cuda else "smoke (CPU, shrunken case: checks the code path, times nothing of use)",
           "case": case(), "machine": machine(), "card": card, "torch": torch.__version__,
           "bf16_peak_tflops": peak / 1e12 if peak else "unknown", "flops_per_forward": flops,
           "cudnn_benchmark": bool(args.cudnn_benchmark), "targets": TARGETS, "variants": []}
    names = [v for v in args.variants.split(",") if v]
    presets = [(n, PRESETS[n]) if n != "flags" else (n, preset_from_flags(args)) for n in names]

    # the float32 O(HW²) reference for the guard: softmax attention, TF32 off
    set_tf32(False)
    ref_net = build(PRESETS["release"], state, device)
    guard_levels = (0, 1, STEPS // 2)
    ref_batch = batch_budget(ref_net, WINDOW, device, mask_factor=FACTOR)
    with torch.inference_mode():
        reference = {lv: one_level(ref_net, device, lv, mask, ref_batch) for lv in guard_levels}
    del ref_net
    _empty_cache()

    best = None
    for name, preset in presets:
        set_tf32(preset["tf32"])
        entry = {"name": name, "settings": dict(preset)}
        try:
            den = build(preset, state, device)
            if args.max_batch == "auto":
                max_batch = batch_budget(den, WINDOW, device, mask_factor=FACTOR)
            else:
                max_batch = int(args.max_batch)
            entry["max_batch"] = max_batch
            t0 = time.perf_counter()
            sample(den, device, STEPS, max_batch=max_batch, mask=mask)  # warm-up: every batch size of the run
            entry["warmup_s"] = round(time.perf_counter() - t0, 2)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            times, stats, z = [], None, None
            for _ in range(args.repeats):
                z, stats, sec = sample(den, device, STEPS, max_batch=max_batch, mask=mask)
                times.append(sec)
            med = statistics.median(times)
            fl = flops[preset["attention"]] * stats.forwards
            entry.update({
                "seconds_median": round(med, 4), "seconds_all": [round(t, 4) for t in times],
                "forwards": stats.forwards, "forwards_per_level_max": max(stats.forwards_per_level),
                "finite": bool(torch.isfinite(z).all()),
                "flops": fl, "achieved_tflops": round(fl / med / 1e12, 1),
                "fraction_of_bf16_peak": round(fl / med / peak, 3) if peak else "unknown",
                "peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
                "estimated_bytes_per_row": bytes_per_row(den, WINDOW, FACTOR),
                "syncs_per_level": count_syncs(den, device, mask, max_batch),
            })
            low = preset["dtype"] in ("bf16", "fp16") or preset["tf32"]
            with torch.inference_mode():
                entry["guard"] = guard(den, reference, device, mask, max_batch, 1e-2 if low else 1e-5)
            if best is None or med < best[1]:
                best = (name, med, stats.forwards)
            del den
        except Exception as e:  # report and go on with the next variant
            entry["error"] = f"{type(e).__name__}: {e}"
        if preset.get("compile"):
            torch._dynamo.reset()  # drop the compiled graphs (and the weights they hold) before the next variant
        _empty_cache()
        res["variants"].append(entry)

    if best is not None and not args.no_plans_solvers:
        res["plans_solvers"] = plans_and_solvers(args, dict(presets)[best[0]], best[0], state, device, mask)
    if args.seq_steps > 0:
        set_tf32(True)
        net = build(PRESETS["release"], state, device)
        sample(net, device, 1, plan="sequential", max_batch=1, mask=mask)  # warm-up (one level)
        _, seq_stats, seq_s = sample(net, device, args.seq_steps, plan="sequential", max_batch=1, mask=mask)
        del net
        _empty_cache()
        seq50 = count("sequential", STEPS, mask)["forwards"]
        per_forward = seq_s / seq_stats.forwards
        release_order = {"preset": "release", "steps": args.seq_steps, "batch": 1, "seconds": round(seq_s, 2),
                         "forwards": seq_stats.forwards, "seconds_per_forward": round(per_forward, 5),
                         f"forwards_at_{STEPS}_steps": seq50,
                         f"seconds_at_{STEPS}_steps_extrapolated": round(per_forward * seq50, 1)}
        res["release_order"] = release_order
        if best is not None:
            res["speedup"] = {"best_variant": best[0], "seconds": round(best[1], 4),
                              "vs_release_order_same_run_extrapolated": round(per_forward * seq50 / best[1], 1),
                              "vs_release_reported_181s_h100": round(RELEASE["seconds"] / best[1], 1)}
    if not args.skip_vae:
        res["vae_decode"] = vae_decode(device, args.repeats, None if cuda else SMOKE_VAE)
    set_tf32(False)
    return res


def plans_and_solvers(args, preset: dict, name: str, state: dict, device, mask) -> dict:
    """The fastest variant on every batched plan with DDIM-50 and DPM-Solver++(2M), timed as the
    variants are (median of --repeats after a warm-up run)."""
    set_tf32(preset["tf32"])
    den = build(preset, state, device)
    max_batch = batch_budget(den, WINDOW, device, mask_factor=FACTOR) if args.max_batch == "auto" else int(args.max_batch)
    out = {"variant": name, "max_batch": max_batch, "runs": []}
    for plan, solver, steps in (("grid", "ddim", STEPS), ("release", "ddim", STEPS), ("grid", "dpmpp-2m", DPM_STEPS),
                                ("release", "dpmpp-2m", DPM_STEPS)):
        try:
            sample(den, device, steps, plan, max_batch, mask, solver=solver)  # warm-up
            times, stats, z = [], None, None
            for _ in range(args.repeats):
                z, stats, sec = sample(den, device, steps, plan, max_batch, mask, solver=solver)
                times.append(sec)
            out["runs"].append({"plan": plan, "solver": solver, "steps": steps,
                                "seconds_median": round(statistics.median(times), 4), "forwards": stats.forwards,
                                "windows": sum(stats.windows_per_level), "finite": bool(torch.isfinite(z).all())})
        except Exception as e:  # report and go on
            out["runs"].append({"plan": plan, "solver": solver, "steps": steps, "error": f"{type(e).__name__}: {e}"})
    del den
    if preset.get("compile"):
        torch._dynamo.reset()
    _empty_cache()
    return out


def vae_decode(device, repeats, config=None) -> dict:
    try:
        from src_models.models.release.sd_vae import SD2Codec

        torch.manual_seed(SEED)
        codec = SD2Codec.from_config(config).to(device).eval()
    except Exception as e:  # diffusers missing on the machine
        return {"error": f"{type(e).__name__}: {e}"}
    z = torch.randn((1, 4, LATENT, LATENT), generator=torch.Generator().manual_seed(SEED)).to(device) * 0.2
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    from src_models.models.release.sd_vae import SD2_VAE_CONFIG
    from src_models.models.tiling import axis_starts

    with torch.device("meta"):
        meta_vae = AutoencoderKL(**(config or SD2_VAE_CONFIG))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        meta_vae.decode(torch.zeros((1, 4, codec.tile, codec.tile), device="meta"))
    tiles = len(axis_starts(LATENT, codec.tile)) ** 2
    flops = counter.get_total_flops() * tiles
    peak = bf16_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    out = {"latent": LATENT, "tiles": tiles, "tile_latent": codec.tile, "tile_batch": codec.batch, "flops": flops,
           "floor_seconds_at_bf16_peak": round(flops / peak, 4) if peak else "unknown"}
    for name, dtype in (("tf32", None), ("bf16_autocast", torch.bfloat16), ("fp16_autocast", torch.float16)):
        set_tf32(True)
        on = dtype is not None and device.type == "cuda"
        ctx = (lambda: torch.autocast("cuda", dtype=dtype)) if on else nullcontext
        times = []
        with torch.inference_mode():
            for i in range(repeats + 1):
                _sync(device)
                t0 = time.perf_counter()
                with ctx():
                    img = codec.decode(z)
                _sync(device)
                if i:
                    times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        out[name] = {"seconds_median": round(med, 3), "achieved_tflops": round(flops / med / 1e12, 1),
                     "finite": bool(torch.isfinite(img).all())}
    return out


# ----------------------------------------------------------------------------- the CPU default model


def cpu_default(args) -> dict:
    from src_models.models.card import ModelError
    from src_models.models.loading import load_model
    from src_models.sampling.sampler import effective_window
    from src_models.models.codec import decode_latent

    device = torch.device("cpu")
    note = None
    try:
        model = load_model(args.model, device)
        name = args.model
    except ModelError as e:
        model = load_model("tiny-test", device)
        name = "tiny-test"
        note = f"{args.model!r} could not be loaded ({e}); ran tiny-test instead"
    card = model.card
    f = card.factor
    side = args.region_px // f
    mask = standard_mask(side, side, card.num_classes)  # at the latent size, as synthesis hands it over
    window = effective_window(card.patch_size, side, side, int(getattr(model.unet, "size_multiple", 8)))
    channels = int(card.codec.get("channels", getattr(model.codec, "channels", 4)))
    steps = args.cpu_steps
    res = {"mode": "cpu-default", "model": name, "note": note, "machine": machine(), "region_px": args.region_px,
           "latent": side, "window": window, "steps": steps, "omega": OMEGA, "eta": ETA, "seed": SEED,
           "conditioning": card.conditioning, "target_seconds": TARGETS["cpu_default_512_seconds"], "variants": []}
    import copy

    for vname in args.cpu_variants.split(","):
        unet = model.unet if vname == "raw" else FastDenoiser(copy.deepcopy(model.unet), dtype=None, channels_last=True)
        times, z, stats = [], None, None
        for i in range(args.repeats + 1):
            g = torch.Generator().manual_seed(SEED)
            noise = torch.randn((channels, side, side), generator=g)
            stats = SampleStats()
            t0 = time.perf_counter()
            with torch.inference_mode():
                z = sample_area(unet, noise, mask, cosine_alphas_cumprod(), ddim_time_pairs(steps),
                                omega_vector(card.num_classes, OMEGA), window=window, eta=ETA, generator=g,
                                rng=np.random.default_rng(SEED), max_batch=32, stats=stats)
            if i:
                times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        decode_latent(model.codec, z)
        dec = time.perf_counter() - t0
        med = statistics.median(times)
        res["variants"].append({"name": vname, "sampling_s_median": round(med, 2),
                                "sampling_s_all": [round(t, 2) for t in times], "decode_s": round(dec, 2),
                                "region_s": round(med + dec, 2), "forwards": stats.forwards,
                                "within_target": med + dec <= TARGETS["cpu_default_512_seconds"]})
    if hasattr(os, "getloadavg"):
        res["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return res


SMOKE_VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 2,
             "up_block_types": ["UpDecoderBlock2D"] * 2, "block_out_channels": [8, 8], "layers_per_block": 1,
             "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 4, "sample_size": 64}


def smoke(args) -> dict:
    """The GPU run's code path on the CPU with a shrunken case (a small network, 512 px, 32-latent
    windows, 3 steps)."""
    global SIZE_PX, LATENT, STEPS, NET, WINDOW, DPM_STEPS
    SIZE_PX, STEPS, WINDOW, DPM_STEPS = 512, 3, 32, 3
    LATENT = SIZE_PX // FACTOR
    NET = {"dim": 16, "dim_mults": (1, 2), "block_per_layer": 1}
    args.repeats, args.seq_steps = 1, min(args.seq_steps, 2)
    if args.variants == DEFAULT_VARIANTS:
        args.variants = "release,fp32,bf16,flags"
    return gpu_run(args, torch.device("cpu"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count-only", action="store_true", help="counts, FLOPs, floor and sync audit; no network runs")
    p.add_argument("--cpu-default", action="store_true", help="time a region with the default model on the CPU")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"comma list of presets ({', '.join(PRESETS)}) or 'flags' for the variant the next flags "
                        f"describe (default {DEFAULT_VARIANTS})")
    p.add_argument("--attention", default="linear_exact", choices=["linear_exact", "softmax"])
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--compile", default=None, choices=list(COMPILE_MODES))
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convs (the release's setting)")
    p.add_argument("--cudnn-benchmark", type=int, default=1)
    p.add_argument("--max-batch", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seq-steps", type=int, default=10, help="steps of the release-order run (0: skip)")
    p.add_argument("--skip-vae", action="store_true")
    p.add_argument("--no-plans-solvers", action="store_true", help="skip the release plan and DPM-Solver++ runs")
    p.add_argument("--model", default="default", help="--cpu-default: the model to time")
    p.add_argument("--region-px", type=int, default=512)
    p.add_argument("--cpu-steps", type=int, default=STEPS)
    p.add_argument("--cpu-variants", default="raw,channels_last")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--smoke", action="store_true", help="the GPU run's code path on the CPU, shrunken (a dry run)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.smoke:
        out = smoke(a)
    elif a.cpu_default:
        out = cpu_default(a)
    elif a.count_only or not torch.cuda.is_available():
        out = count_only(a)
        if not torch.cuda.is_available():
            out["gpu"] = "not measured: no CUDA device on this machine"
    else:
        out = gpu_run(a)
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
