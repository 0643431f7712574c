"""Known damage to real tissue, for checking that a measure detects what it should.

A quality measure is only worth something if it also fails: real tissue against a copy of itself
with a known defect must read as different.  These are the three defects the power study of the
classifier two-sample test is run on (``benchmarks/c2st_power.py``, ``docs/evaluation.md``), each a
pure function of an RGB uint8 image:

* :func:`blur`: Gaussian blur of σ px per channel (σ = 1: a slightly soft scan);
* :func:`jpeg`: a JPEG re-encode at a given quality (30: visible 8 px blocks and colour bleeding);
* :func:`haematoxylin_shift`: the haematoxylin density scaled by ``1 + amount`` in
  Ruifrok–Johnston colour deconvolution (0.1: a stain 10 % darker in its blue-purple component),
  eosin and the residual channel untouched.
"""
from __future__ import annotations

import io

import numpy as np


def blur(rgb: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(rgb.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def jpeg(rgb: np.ndarray, quality: int = 30) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).copy()


def haematoxylin_shift(rgb: np.ndarray, amount: float = 0.1) -> np.ndarray:
    # optical density with a +1 offset (so black pixels stay finite), split into the H, E and
    # residual stain vectors, H scaled, and back: with amount 0 the image comes back unchanged
    from skimage.color import hed_from_rgb, rgb_from_hed

    od = -np.log((rgb.astype(np.float64) + 1.0) / 256.0)
    hed = od @ hed_from_rgb
    hed[..., 0] *= 1.0 + amount
    out = 256.0 * np.exp(-(hed @ rgb_from_hed)) - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


#: the defects of the power study, by the name the docs and the benchmark use
DEFECTS = {
    "blur_sigma1": lambda rgb: blur(rgb, 1.0),
    "jpeg_q30": lambda rgb: jpeg(rgb, 30),
    "haematoxylin_plus10": lambda rgb: haematoxylin_shift(rgb, 0.1),
}
