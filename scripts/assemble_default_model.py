"""Put a shipped model together from its three training runs (train_default_model.sh,
train_tumour_model.sh).

    python scripts/assemble_default_model.py --image out/v2_unet_model --codec out/v2enc_model \
        --mask out/mask_model --out src_models/weights/default
    python scripts/assemble_default_model.py --image out/tumour_unet --codec out/tumour_codec \
        --mask out/tumour_layout --layout-classes 2,3,4 --off-class 1 --out src_models/weights/tumour

The image run reuses the codec of the codec run, so its card knows nothing of how that codec was
trained: the codec run's figures are copied in.  The mask run is an unconditional one-hot layout
model (``train --codec identity``); it becomes the card's ``mask_model``, its three channels the
classes ``--layout-classes`` (with ``--off-class``, the class of the all-off code).  The directory is loaded
back once written, so a broken assembly fails here, not in a user's session.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src_models.models.native.mask_model import KIND  # noqa: E402
from src_models.models.base import Model, save_model  # noqa: E402
from src_models.models.loading import load_model  # noqa: E402


def assemble(image: Path, codec: Path, mask: Path, out: Path, *, scale_px: int = 16, layout_steps: int = 20,
             training_data: str | None = None, description: str | None = None, licence: str | None = None,
             log: list | None = None, layout_classes: tuple[int, ...] = (1, 2, 3),
             off_class: int | None = None) -> Model:
    img = load_model(image)
    cod = load_model(codec)
    msk = load_model(mask)
    if img.card.codec != cod.card.codec:
        raise SystemExit(f"{image} does not use the codec of {codec}")
    if msk.card.codec.get("type") != "identity" or msk.card.unet["config"].get("in_channels") != 3:
        raise SystemExit(f"{mask} is not a one-hot layout model (train --codec identity on 3-class layout images)")
    card = img.card
    card.mask_model = {
        **msk.card.unet, "kind": KIND, "classes": [int(c) for c in layout_classes], "scale_px": scale_px,
        "patch_size": msk.card.patch_size, "steps": layout_steps, "solver": "ddim", "eta": 1.0,
    }  # 20 DDIM steps with eta 1: as good as 50 on the layout measures (benchmarks/layout_steps.py, docs/layouts.md)
    if off_class is not None:
        card.mask_model["off_class"] = int(off_class)
    ce, me = cod.card.extra, msk.card.extra
    card.extra.update({
        "codec_command": ce.get("command"),
        "codec_steps": ce.get("codec_steps"),
        "codec_final_loss": ce.get("codec_final_loss"),
        "codec_train_seconds": ce.get("codec_train_seconds"),
        "latent_std": ce.get("latent_std"),
        "mask_command": me.get("command"),
        "mask_steps": me.get("unet_steps"),
        "mask_final_loss": me.get("unet_final_loss"),
        "mask_train_seconds": me.get("unet_train_seconds"),
    })
    if log:
        card.extra["training_log"] = log
    if training_data:
        card.training_data = training_data
    if description:
        card.description = description
    if licence:
        card.licence = licence
    card.validate()
    if out.exists():
        shutil.rmtree(out)
    save_model(Model(card, img.unet, img.codec, None, msk.unet), out)
    return load_model(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, required=True, help="model directory of the image (UNet) run")
    p.add_argument("--codec", type=Path, required=True, help="model directory of the codec run")
    p.add_argument("--mask", type=Path, required=True, help="model directory of the layout (mask) run")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--scale-px", type=int, default=16, help="image px per layout px")
    p.add_argument("--layout-classes", default="1,2,3", help="the classes of the layout image's R, G, B channels")
    p.add_argument("--off-class", type=int, help="the class of a layout pixel with every channel off")
    p.add_argument("--training-data")
    p.add_argument("--description")
    p.add_argument("--licence")
    p.add_argument("--log", type=Path, help="JSON list of training stretches (steps, wall time, machine) for the card")
    a = p.parse_args(argv)
    m = assemble(a.image, a.codec, a.mask, a.out, scale_px=a.scale_px, training_data=a.training_data,
                 description=a.description, licence=a.licence,
                 log=json.loads(a.log.read_text()) if a.log else None,
                 layout_classes=tuple(int(c) for c in a.layout_classes.split(",")), off_class=a.off_class)
    size = sum(f.stat().st_size for f in a.out.iterdir()) / 2**20
    print(f"{a.out}: {m.card.name}, {size:.1f} MiB, mask model {'yes' if m.mask_unet is not None else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
