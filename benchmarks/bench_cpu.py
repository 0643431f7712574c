"""How fast the shipped default model runs on a CPU (issue 23), all in one process.

    python benchmarks/bench_cpu.py [--quick] [--sections unet,codec,canvas,layout,import]
                                   [--threads N] [--precision float32|bf16] [--out FILE.json]

Figures (one JSON object on stdout, also written to ``--out``):

* ``matmul``: a 1024² float32 matmul's GFLOP/s in this process (and bfloat16's where the CPU has
  native bf16: AVX512_BF16 or AMX), the yardstick the network's rate is given as a fraction of;
* ``unet``: one forward of the default UNet over the default CPU batch (32 rows: 16 windows of 32²
  latents, each a null and a conditional pass, as classifier-free guidance runs them), wrapped as
  the samplers get it (``fast_setup``).  ``gflop`` counts a forward as if every row were computed
  on its own (``forward_flops``); ``fraction_of_matmul`` is that rate over the matmul's.  With
  ``--precision bf16`` the same under bfloat16 autocast (and the canvas, layout and import commands run
  with it; they are always given ``--precision``, float32 unless asked, since their own default is the
  machine's: bf16 on a CPU with native bfloat16);
* ``codec``: decode of a 128² latent (512² px), megapixels per second;
* ``canvas``: ``diffinfinite demo`` end to end (1024² px, the card's default steps; ``--quick``:
  512² px, 5 steps);
* ``layout``: ``diffinfinite make-mask`` with the layout model (4096² px, the card's steps: 20 since stop 7;
  ``--quick``: 1024² px, 5 steps);
* ``import``: ``diffinfinite import-slide`` of the CC0 slide (``--quick``: a 512² px crop of it),
  with the share of its time spent encoding.

Wall seconds are what a user waits; ``cpu_s`` (process CPU time) is less disturbed by other work
on a shared machine.  The JSON names the CPU model, its relevant flags, torch's threads and the
load average before and after: on a shared machine times are upper bounds, so compare two builds
by running them in turn on the same machine (whole commands; see ``docs/cpu_speed.md``).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from json_out import emit  # noqa: E402

SLIDE = ROOT / "data" / "cmu_small_region" / "cmu_small_region.svs"
SLIDE_PNG = ROOT / "data" / "cmu_small_region" / "cmu_small_region.png"
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
         "amx_tile", "amx_bf16", "amx_int8")
SECTIONS = ("unet", "codec", "canvas", "layout", "import")


def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    import torch

    return {"model": model, "flags": sorted(f for f in FLAGS if f in flags), "logical_cpus": os.cpu_count(),
            "native_bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "isa": torch.backends.cpu.get_cpu_capability(), "mkldnn": torch.backends.mkldnn.is_available()}


def timed(fn, repeats: int = 3, warmup: int = 1) -> dict:
    """Median wall and CPU seconds of ``fn()`` over ``repeats`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"wall_s": sorted(wall)[len(wall) // 2], "cpu_s": sorted(cpu)[len(cpu) // 2], "n": repeats}


def matmul_rates(native_bf16: bool, repeats: int) -> dict:
    import torch

    out = {}
    for name, dtype in [("float32", torch.float32)] + ([("bfloat16", torch.bfloat16)] if native_bf16 else []):
        a = torch.randn(1024, 1024).to(dtype)
        t = timed(lambda: a @ a, repeats=max(5, repeats * 3))
        out[name] = {"gflops": 2 * 1024**3 / t["wall_s"] / 1e9, **t}
    return out


def unet_rate(model, precision: str, repeats: int, matmul: dict) -> dict:
    import torch

    from src_models.models.fast import FastDenoiser, fast_setup, forward_flops

    batch, window = 32, int(model.card.patch_size)
    k = model.card.factor
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, 4, window, window), generator=gen)
    t = torch.full((batch,), 500)
    mask = torch.randint(1, model.card.num_classes, (batch, 1, window * k, window * k), generator=gen)
    mask[::2] = 0  # the null passes of guidance
    if precision == "bf16":
        den = FastDenoiser(model.unet, dtype=torch.bfloat16, channels_last=True, autocast_cpu=True)
    else:
        den, _ = fast_setup(model.unet, "cpu", window)
    flops = forward_flops(model.unet, window, k, batch)
    with torch.inference_mode():
        tm = timed(lambda: den(x, t, mask), repeats)
    rate = flops / tm["wall_s"] / 1e9
    ref = matmul.get("bfloat16" if precision == "bf16" else "float32") or matmul["float32"]
    return {"batch": batch, "window": window, "precision": precision, "gflop": flops / 1e9, "gflops": rate,
            "fraction_of_matmul": rate / ref["gflops"], **tm}


def codec_rate(model, repeats: int) -> dict:
    import torch

    from src_models.models.codec import decode_latent

    z = torch.randn((4, 128, 128), generator=torch.Generator().manual_seed(0)) * 0.4
    tm = timed(lambda: decode_latent(model.codec, z), repeats)
    mpx = (128 * model.card.factor) ** 2 / 1e6
    return {"latent": [128, 128], "megapixels": mpx, "mpx_per_s": mpx / tm["wall_s"], **tm}


def cli(argv: list[str]) -> dict:
    """One ``diffinfinite`` command in this process, timed; its printed output kept short."""
    from src_models.cli.main import main

    buf = io.StringIO()
    w, c = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        rc = main(argv)
    return {"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c, "rc": rc,
            "argv": " ".join(argv[:1] + [a for a in argv[1:] if not a.startswith("/")])}


def learned_layout() -> list[str]:
    """``--layout learned`` where ``make-mask`` offers a choice of layouts (the learned model is
    what is timed here), nothing where the layout model is its only kind."""
    from src_models.cli import main as cli_main

    return ["--layout", "learned"] if "learned" in getattr(cli_main, "LAYOUT_CHOICES", ()) else []


def import_slide(tmp: Path, quick: bool, precision: str = "float32") -> dict:
    from src_models.synthesis import editing

    src = SLIDE
    if quick:
        from PIL import Image

        src = tmp / "crop.png"
        Image.open(SLIDE_PNG).convert("RGB").crop((0, 0, 512, 512)).save(src)
    spent = [0.0]
    encode = editing.encode_rgb

    def counted(*a, **kw):
        t0 = time.perf_counter()
        try:
            return encode(*a, **kw)
        finally:
            spent[0] += time.perf_counter() - t0

    editing.encode_rgb = counted
    try:
        out = cli(["import-slide", str(src), "--out", str(tmp / "slide.zarr"), "--overwrite", "--precision", precision])
    finally:
        editing.encode_rgb = encode
    return {**out, "slide": src.name, "encode_s": spent[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few steps: a minute or two")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--precision", choices=("float32", "bf16"), default="float32")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)} (use {','.join(SECTIONS)})")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 3)
    from src_models.models.loading import load_model

    info = cpu_info()
    rec = {"cpu": info, "quick": args.quick, "load_before": os.getloadavg()}
    model = load_model("default", "cpu")
    rec["matmul"] = matmul_rates(info["native_bf16"], repeats)
    if "unet" in sections:
        rec["unet"] = unet_rate(model, "float32", repeats, rec["matmul"])
        if args.precision == "bf16":
            rec["unet_bf16"] = unet_rate(load_model("default", "cpu"), "bf16", repeats, rec["matmul"])
    if "codec" in sections:
        rec["codec"] = codec_rate(model, repeats)
    extra = ["--precision", args.precision]  # named: the commands' own default is the machine's (auto)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "canvas" in sections:
            size, steps = ("512x512", ["--steps", "5"]) if args.quick else ("1024x1024", [])
            rec["canvas"] = {"size": size, **cli(["demo", "--out", str(tmp / "demo"), "--size", size, *steps,
                                                  "--device", "cpu", *extra])}
        if "layout" in sections:
            size, steps = ("1024x1024", ["--steps", "5"]) if args.quick else ("4096x4096", [])
            rec["layout"] = {"size": size, **cli(["make-mask", "--out", str(tmp / "m.png"), "--size", size, *steps,
                                                  "--device", "cpu", *learned_layout(), *extra])}
        if "import" in sections:
            rec["import"] = import_slide(tmp, args.quick, args.precision)
    rec["load_after"] = os.getloadavg()
    emit(rec, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
