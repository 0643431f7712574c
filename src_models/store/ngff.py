"""OME-NGFF 0.5 metadata (``ome`` attributes of zarr v3 groups), written in one place for the
canvas store and the napari writer: multiscale images with their axes and scales, the RGB
rendering hints (``omero``), the ``labels`` index and ``image-label`` groups with class colours
and names.  Plain dicts: no zarr, no torch."""
from __future__ import annotations

from src_models.io.colours import hex_rgba

VERSION = "0.5"
MICROMETER = "micrometer"
# RGB rendering of a uint8 (c, y, x) image: channel colours and windows, as viewers expect them
OMERO_RGB = {
    "channels": [
        {"label": n, "color": c, "window": {"start": 0, "end": 255, "min": 0, "max": 255}, "active": True}
        for n, c in (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))
    ],
    "rdefs": {"model": "color"},
}


def space_axes(unit: str | None = None) -> list[dict]:
    """The y and x axes (with ``unit`` when the pixel size is known)."""
    extra = {"unit": unit} if unit else {}
    return [{"name": "y", "type": "space", **extra}, {"name": "x", "type": "space", **extra}]


def image_axes(channel: bool, unit: str | None = None) -> list[dict]:
    return ([{"name": "c", "type": "channel"}] if channel else []) + space_axes(unit)


def transforms(scale, translate=None) -> list[dict]:
    """A scale, then a translation when there is one."""
    out = [{"type": "scale", "scale": [float(v) for v in scale]}]
    if translate is not None and any(float(v) != 0 for v in translate):
        out.append({"type": "translation", "translation": [float(v) for v in translate]})
    return out


def pyramid_datasets(levels: int, scale0, channel: bool = False) -> list[dict]:
    """Datasets ``0 .. levels-1``, each level half the previous: level i scaled by ``scale0 · 2^i``
    on y and x (a channel axis keeps scale 1)."""
    return [{"path": str(i), "coordinateTransformations": transforms(
        ([1.0] if channel else []) + [float(v) * 2**i for v in scale0])} for i in range(levels)]


def multiscales(name: str, axes: list[dict], datasets: list[dict], **extra) -> dict:
    """The ``ome`` attributes of a multiscale image group."""
    return {"version": VERSION, "multiscales": [{"name": name, "axes": axes, "datasets": datasets}], **extra}


def rgb_pyramid(name: str, levels: int, pixel_size_um: float | None) -> dict:
    """A (c, y, x) uint8 RGB pyramid at ``pixel_size_um`` µm per level-0 px (no unit when unknown)."""
    px = 1.0 if pixel_size_um is None else float(pixel_size_um)
    unit = None if pixel_size_um is None else MICROMETER
    return multiscales(name, image_axes(True, unit), pyramid_datasets(levels, [px, px], channel=True),
                       omero=OMERO_RGB)


def labels_index(names: list[str]) -> dict:
    """The ``ome`` attributes of an image's ``labels`` group."""
    return {"version": VERSION, "labels": list(names)}


def class_colours(colours: list[str]) -> list[dict]:
    """``image-label`` colours from the card's ``#rrggbb`` class colours."""
    return [{"label-value": i, "rgba": hex_rgba(c)} for i, c in enumerate(colours)]


def class_properties(classes: list[str]) -> list[dict]:
    return [{"label-value": i, "name": n} for i, n in enumerate(classes)]


def label_image(name: str, datasets: list[dict], unit: str | None = None, colors: list[dict] | None = None,
                properties: list[dict] | None = None) -> dict:
    """The ``ome`` attributes of a labels group (``image-label``, its source two levels up)."""
    image_label = {"version": VERSION}
    if colors:
        image_label["colors"] = colors
    if properties:
        image_label["properties"] = properties
    image_label["source"] = {"image": "../../"}
    return multiscales(name, space_axes(unit), datasets, **{"image-label": image_label})


def set_pixel_size(ome: dict, pixel_size_um: float, factor: int = 1) -> dict:
    """``ome`` attributes of an image (``factor`` 1) or of its labels at ``factor`` image px per
    label px, rescaled to ``pixel_size_um`` µm per image px (levels keep halving)."""
    ms = ome["multiscales"][0]
    channel = any(a.get("type") == "channel" for a in ms["axes"])
    for a in ms["axes"]:
        if a.get("type") == "space":
            a["unit"] = MICROMETER
    px = float(pixel_size_um) * factor
    ms["datasets"] = pyramid_datasets(len(ms["datasets"]), [px, px], channel=channel)
    return ome
