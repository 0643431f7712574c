"""The canvas store: an OME-Zarr (NGFF 0.5, zarr v3) multiscale RGB image written region by
region, plus the latent array, the class mask and per-region done markers.

It knows nothing of torch or napari.  Layout::

    canvas.zarr/
      zarr.json                 group: ome.multiscales + omero (RGB) + diffinfinite settings
      0/ 1/ ...                 image pyramid, (c, y, x) uint8, each level half the previous
      labels/mask/0             class labels (y, x) uint8 at latent resolution (NGFF image-label)
      diffinfinite/latent       finished latents (C, y, x) float32
      diffinfinite/regions/     one ``<index>.done`` file per finished region (atomic)
      .diffinfinite.lock        held (flock) by the one process that may write

A region's done marker is written only after its pixels, latents and pyramid tiles are on disk,
so a run killed at any moment resumes from the last finished region.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

CHUNK = 512
FORMAT = "diffinfinite-canvas/1"
LOCK_FILE = ".diffinfinite.lock"


class CanvasError(RuntimeError):
    """A canvas that cannot be created, opened or written (message says why)."""


class CanvasLockedError(CanvasError):
    pass


@dataclass(frozen=True)
class Region:
    """A rectangle of the canvas in latent pixels: rows [y0, y1), columns [x0, x1)."""

    index: int
    iy: int
    ix: int
    y0: int
    y1: int
    x0: int
    x1: int

    def px(self, factor: int) -> tuple[int, int, int, int]:
        return self.y0 * factor, self.y1 * factor, self.x0 * factor, self.x1 * factor


def pyramid_shapes(height: int, width: int, min_side: int = 256) -> list[tuple[int, int]]:
    shapes = [(height, width)]
    while max(shapes[-1]) > min_side:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def downsample2(img: np.ndarray) -> np.ndarray:
    """Mean of 2x2 blocks over the last two axes; an odd edge averages what it has."""
    h, w = img.shape[-2:]
    ph, pw = h % 2, w % 2
    if ph or pw:
        pad = [(0, 0)] * (img.ndim - 2) + [(0, ph), (0, pw)]
        img = np.pad(img, pad, mode="edge")
    f = img.astype(np.float32)
    out = (f[..., 0::2, 0::2] + f[..., 1::2, 0::2] + f[..., 0::2, 1::2] + f[..., 1::2, 1::2]) / 4
    return np.rint(out).astype(img.dtype)


def _hex_to_rgba(colour: str) -> list[int]:
    c = colour.lstrip("#")
    return [int(c[i : i + 2], 16) for i in (0, 2, 4)] + [255]


class Canvas:
    """An open canvas.  Use :meth:`create` or :meth:`open`; writers hold an exclusive lock."""

    def __init__(self, path: Path, group: zarr.Group, writable: bool, lock_fd: int | None):
        self.path = path
        self.group = group
        self.writable = writable
        self._lock_fd = lock_fd
        attrs = group.attrs.asdict()
        if attrs.get("diffinfinite", {}).get("format") != FORMAT:
            raise CanvasError(f"{path} is not a napari-diffinfinite canvas")
        self.info: dict = attrs["diffinfinite"]

    # ---------------------------------------------------------------- create / open
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        height: int,
        width: int,
        *,
        factor: int,
        latent_channels: int,
        region_size: int,
        classes: list[str],
        colours: list[str],
        pixel_size_um: float = 0.5,
        overwrite: bool = False,
        settings: dict | None = None,
        chunk: int = CHUNK,
    ) -> "Canvas":
        """Create an empty canvas of ``height`` x ``width`` px (nothing is allocated).

        ``region_size`` (px) cuts the canvas into regions, each sampled and stored as a unit.
        """
        path = Path(path)
        if height <= 0 or width <= 0:
            raise CanvasError(f"canvas size must be positive, got {width}x{height}")
        if height % factor or width % factor:
            raise CanvasError(f"canvas size {width}x{height} px is not a multiple of the model's factor {factor}")
        if region_size <= 0 or region_size % factor:
            raise CanvasError(f"region size {region_size} px must be a positive multiple of {factor}")
        if path.exists():
            if not overwrite:
                raise CanvasError(f"{path} already exists (use overwrite, or open it to resume)")
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        try:
            path.mkdir(parents=True)
        except OSError as e:
            raise CanvasError(f"cannot create {path}: {e.strerror}") from None
        # mkdir above is exclusive; lock after zarr's mode "w", which clears the directory
        lock_fd = None
        try:
            group = zarr.open_group(str(path), mode="w", zarr_format=3)
            lock_fd = _acquire_lock(path)
            shapes = pyramid_shapes(height, width)
            for level, (h, w) in enumerate(shapes):
                group.create_array(
                    str(level), shape=(3, h, w), chunks=(3, min(chunk, h), min(chunk, w)),
                    dtype="uint8", fill_value=0, dimension_names=("c", "y", "x"),
                )
            lh, lw = height // factor, width // factor
            lchunk = max(1, min(chunk, lh, lw))
            labels = group.create_group("labels")
            mask_g = labels.create_group("mask")
            mask_g.create_array("0", shape=(lh, lw), chunks=(min(chunk, lh), min(chunk, lw)), dtype="uint8",
                                fill_value=0, dimension_names=("y", "x"))
            state = group.create_group("diffinfinite")
            state.create_array("latent", shape=(latent_channels, lh, lw), chunks=(latent_channels, lchunk, lchunk),
                               dtype="float32", fill_value=0.0)
            (path / "diffinfinite" / "regions").mkdir(parents=True, exist_ok=True)
            unit = {"type": "space", "unit": "micrometer"}
            axes = [{"name": "c", "type": "channel"}, {"name": "y", **unit}, {"name": "x", **unit}]
            datasets = [
                {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1.0, pixel_size_um * 2**i, pixel_size_um * 2**i]}]}
                for i in range(len(shapes))
            ]
            group.attrs["ome"] = {
                "version": "0.5",
                "multiscales": [{"name": "synthetic H&E", "axes": axes, "datasets": datasets}],
                "omero": {
                    "channels": [
                        {"label": n, "color": c, "window": {"start": 0, "end": 255, "min": 0, "max": 255}, "active": True}
                        for n, c in (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))
                    ],
                    "rdefs": {"model": "color"},
                },
            }
            labels.attrs["ome"] = {"version": "0.5", "labels": ["mask"]}
            mask_g.attrs["ome"] = {
                "version": "0.5",
                "multiscales": [{
                    "name": "mask",
                    "axes": axes[1:],
                    "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [pixel_size_um * factor] * 2}]}],
                }],
                "image-label": {
                    "version": "0.5",
                    "colors": [{"label-value": i, "rgba": _hex_to_rgba(c)} for i, c in enumerate(colours)],
                    "properties": [{"label-value": i, "name": n} for i, n in enumerate(classes)],
                    "source": {"image": "../../"},
                },
            }
            group.attrs["diffinfinite"] = {
                "format": FORMAT,
                "height": height,
                "width": width,
                "factor": factor,
                "latent_channels": latent_channels,
                "region_size": region_size,
                "classes": list(classes),
                "colours": list(colours),
                "pixel_size_um": pixel_size_um,
                "settings": settings or {},
            }
        except OSError as e:
            _release_lock(lock_fd)
            raise CanvasError(f"cannot write {path}: {e.strerror or e}") from None
        return cls(path, group, True, lock_fd)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "Canvas":
        """Open an existing canvas, read-only (``"r"``) or for writing (``"r+"``, takes the lock)."""
        path = Path(path)
        if not (path / "zarr.json").exists():
            raise CanvasError(f"{path} is not a canvas (no zarr.json)")
        lock_fd = _acquire_lock(path) if mode == "r+" else None
        try:
            group = zarr.open_group(str(path), mode="r+" if mode == "r+" else "r")
            return cls(path, group, mode == "r+", lock_fd)
        except CanvasError:
            _release_lock(lock_fd)
            raise
        except Exception as e:  # zarr raises several types for a damaged store
            _release_lock(lock_fd)
            raise CanvasError(f"cannot open {path}: {e}") from None

    def close(self) -> None:
        _release_lock(self._lock_fd)
        self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- properties
    height = property(lambda self: int(self.info["height"]))
    width = property(lambda self: int(self.info["width"]))
    factor = property(lambda self: int(self.info["factor"]))
    region_size = property(lambda self: int(self.info["region_size"]))
    classes = property(lambda self: list(self.info["classes"]))
    colours = property(lambda self: list(self.info["colours"]))

    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.height // self.factor, self.width // self.factor

    @property
    def levels(self) -> int:
        return len(self.group.attrs["ome"]["multiscales"][0]["datasets"])

    def image(self, level: int = 0) -> zarr.Array:
        return self.group[str(level)]

    @property
    def mask(self) -> zarr.Array:
        return self.group["labels/mask/0"]

    @property
    def latent(self) -> zarr.Array:
        return self.group["diffinfinite/latent"]

    @property
    def settings(self) -> dict:
        return dict(self.info.get("settings", {}))

    def set_settings(self, settings: dict) -> None:
        """Record the settings of the run that writes this canvas (checked on resume)."""
        self.set_info(settings=dict(settings))

    def set_info(self, **values) -> None:
        """Store values in the canvas's ``diffinfinite`` attributes (settings, signatures, ...)."""
        self._check_writable()
        self.info.update(values)
        self.group.attrs["diffinfinite"] = self.info

    # ---------------------------------------------------------------- regions
    @property
    def region_grid(self) -> tuple[int, int, int]:
        """(region side in latent px, regions down, regions across)."""
        size = self.region_size // self.factor
        lh, lw = self.latent_shape
        return size, math.ceil(lh / size), math.ceil(lw / size)

    def region(self, index: int) -> Region:
        size, ny, nx = self.region_grid
        if not 0 <= index < ny * nx:
            raise CanvasError(f"region {index} does not exist (the canvas has {ny * nx})")
        lh, lw = self.latent_shape
        iy, ix = divmod(index, nx)
        return Region(index, iy, ix, iy * size, min(lh, (iy + 1) * size), ix * size, min(lw, (ix + 1) * size))

    def regions(self) -> list[Region]:
        """The region grid over the latent, row-major; edge regions may be smaller."""
        size, ny, nx = self.region_grid
        return [self.region(i) for i in range(ny * nx)]

    def regions_in(self, y0: int, y1: int, x0: int, x1: int) -> list[Region]:
        """Regions that overlap the latent rectangle [y0, y1) x [x0, x1)."""
        size, ny, nx = self.region_grid
        iys = range(max(0, y0 // size), min(ny, -(-y1 // size)))
        ixs = range(max(0, x0 // size), min(nx, -(-x1 // size)))
        return [self.region(iy * nx + ix) for iy in iys for ix in ixs]

    def _marker(self, index: int) -> Path:
        return self.path / "diffinfinite" / "regions" / f"{index}.done"

    def is_done(self, index: int) -> bool:
        return self._marker(index).exists()

    def done_info(self, index: int) -> dict:
        """What a region's done marker records (seed and settings, or the source it came from)."""
        try:
            return json.loads(self._marker(index).read_text() or "{}")
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def done_indices(self) -> set[int]:
        d = self.path / "diffinfinite" / "regions"
        return {int(p.stem) for p in d.glob("*.done")} if d.exists() else set()

    def done_map(self) -> np.ndarray:
        """A (latent h, latent w) bool map: true where the latent belongs to a finished region."""
        out = np.zeros(self.latent_shape, dtype=bool)
        for i in self.done_indices():
            r = self.region(i)
            out[r.y0 : r.y1, r.x0 : r.x1] = True
        return out

    def mark_done(self, index: int, info: dict | None = None) -> None:
        self._check_writable()
        marker = self._marker(index)
        tmp = marker.with_suffix(".tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(info or {}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, marker)
        except OSError as e:
            raise _io_error(self.path, e) from None

    def clear_done(self, indices=None) -> None:
        """Forget finished regions (all, or ``indices``) so they are sampled again whole."""
        self._check_writable()
        indices = self.done_indices() if indices is None else indices
        jobs = self.jobs()
        for i in indices:
            self._marker(i).unlink(missing_ok=True)
            jobs.pop(int(i), None)
        self._save_jobs(jobs)

    # ---------------------------------------------------------------- partial regeneration
    # A region that is not done is sampled whole, unless it has a *job*: a list of latent
    # rectangles to regenerate; its other pixels keep their content and serve as context.
    def _jobs_file(self) -> Path:
        return self.path / "diffinfinite" / "jobs.json"

    def jobs(self) -> dict[int, list[list[int]]]:
        try:
            return {int(k): v for k, v in json.loads(self._jobs_file().read_text()).items()}
        except FileNotFoundError:
            return {}

    def _save_jobs(self, jobs: dict) -> None:
        path = self._jobs_file()
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({str(k): v for k, v in sorted(jobs.items())}))
            os.replace(tmp, path)
        except OSError as e:
            raise _io_error(self.path, e) from None

    def regenerate(self, y0: int, y1: int, x0: int, x1: int) -> list[int]:
        """Schedule the latent rectangle [y0, y1) x [x0, x1) to be sampled again, with the
        pixels around it as context.  Returns the indices of the regions it touches."""
        self._check_writable()
        lh, lw = self.latent_shape
        y0, y1, x0, x1 = max(0, y0), min(lh, y1), max(0, x0), min(lw, x1)
        if y1 <= y0 or x1 <= x0:
            raise CanvasError("the rectangle to regenerate is empty or outside the canvas")
        jobs = self.jobs()
        done = self.done_indices()
        touched = []
        for r in self.regions_in(y0, y1, x0, x1):
            rect = [max(y0, r.y0), min(y1, r.y1), max(x0, r.x0), min(x1, r.x1)]
            if r.index in done:
                jobs[r.index] = [rect]
            elif r.index in jobs:
                jobs[r.index].append(rect)
            else:
                continue  # not generated yet: it is sampled whole anyway
            touched.append(r.index)
        self._save_jobs(jobs)  # the job first, then the markers: a crash in between loses nothing
        for i in touched:
            self._marker(i).unlink(missing_ok=True)
        return touched

    def set_jobs(self, jobs: dict[int, list[list[int]]]) -> None:
        """Give not-done regions their rectangles to sample (the rest of each is context)."""
        self._check_writable()
        merged = self.jobs()
        merged.update({int(k): [list(map(int, r)) for r in v] for k, v in jobs.items()})
        self._save_jobs(merged)

    def finish_job(self, index: int) -> None:
        jobs = self.jobs()
        if jobs.pop(index, None) is not None:
            self._save_jobs(jobs)

    def target_map(self, region: Region, jobs: dict | None = None) -> np.ndarray:
        """The pixels of a not-done region that sampling writes (region-local bool map)."""
        jobs = self.jobs() if jobs is None else jobs
        h, w = region.y1 - region.y0, region.x1 - region.x0
        if region.index not in jobs:
            return np.ones((h, w), dtype=bool)
        out = np.zeros((h, w), dtype=bool)
        for y0, y1, x0, x1 in jobs[region.index]:
            out[y0 - region.y0 : y1 - region.y0, x0 - region.x0 : x1 - region.x0] = True
        return out

    def known_map(self, y0: int, y1: int, x0: int, x1: int, exclude: int | None = None) -> np.ndarray:
        """Where the latent rectangle holds finished content usable as context.

        A pixel is known when its region is done, or when its region has a job and the pixel
        lies outside the job's rectangles.  Region ``exclude``'s target pixels are unknown.
        """
        out = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        done = self.done_indices()
        jobs = self.jobs()
        for r in self.regions_in(y0, y1, x0, x1):
            sl = (slice(max(r.y0, y0) - y0, min(r.y1, y1) - y0), slice(max(r.x0, x0) - x0, min(r.x1, x1) - x0))
            if r.index in done and r.index != exclude:
                out[sl] = True
            elif r.index in jobs:
                keep = ~self.target_map(r, jobs)
                out[sl] = keep[max(r.y0, y0) - r.y0 : min(r.y1, y1) - r.y0, max(r.x0, x0) - r.x0 : min(r.x1, x1) - r.x0]
        return out

    # ---------------------------------------------------------------- writing
    def write_region(self, region: Region, rgb: np.ndarray, latent: np.ndarray | None = None,
                     where: np.ndarray | None = None) -> None:
        """Write a region's pixels (h, w, 3) uint8 and latents, then refresh the pyramid above it.

        ``where`` (region-local latent bool map) limits the write to those latent pixels (and
        the image pixels under them); the rest keeps its content.
        """
        self.write_block(region.y0, region.y1, region.x0, region.x1, rgb, latent, where)

    def write_block(self, y0: int, y1: int, x0: int, x1: int, rgb: np.ndarray, latent: np.ndarray | None = None,
                    where: np.ndarray | None = None) -> None:
        """Write the latent rectangle [y0, y1) x [x0, x1): its pixels (h·f, w·f, 3) uint8 and,
        optionally, its latents, limited to ``where`` (a latent bool map) when given; then
        refresh the pyramid above it."""
        self._check_writable()
        f = self.factor
        py0, py1, px0, px1 = y0 * f, y1 * f, x0 * f, x1 * f
        if rgb.shape != (py1 - py0, px1 - px0, 3) or rgb.dtype != np.uint8:
            raise CanvasError(f"block {y0}:{y1}, {x0}:{x1}: expected ({py1 - py0}, {px1 - px0}, 3) uint8, "
                              f"got {rgb.shape} {rgb.dtype}")
        try:
            pixels = np.moveaxis(rgb, -1, 0)
            if latent is not None:
                latent = latent.astype(np.float32)
            if where is not None and not where.all():
                big = np.repeat(np.repeat(where, f, axis=0), f, axis=1)
                pixels = np.where(big[None], pixels, self.image(0)[:, py0:py1, px0:px1])
                if latent is not None:
                    latent = np.where(where[None], latent, self.latent[:, y0:y1, x0:x1])
            self.image(0)[:, py0:py1, px0:px1] = pixels
            if latent is not None:
                self.latent[:, y0:y1, x0:x1] = latent
            self.update_pyramid(py0, py1, px0, px1)
        except OSError as e:
            raise _io_error(self.path, e) from None

    def write_pixels(self, y0: int, x0: int, rgb: np.ndarray) -> None:
        """Write any (h, w, 3) uint8 block at level 0 and refresh the pyramid above it."""
        self._check_writable()
        h, w = rgb.shape[:2]
        try:
            self.image(0)[:, y0 : y0 + h, x0 : x0 + w] = np.moveaxis(rgb, -1, 0)
            self.update_pyramid(y0, y0 + h, x0, x0 + w)
        except OSError as e:
            raise _io_error(self.path, e) from None

    def update_pyramid(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """Recompute the coarser levels over a level-0 rectangle (each level from the one below)."""
        for level in range(1, self.levels):
            src, dst = self.image(level - 1), self.image(level)
            y0, x0 = (y0 // 2) * 2, (x0 // 2) * 2  # even-aligned in the finer level
            y1, x1 = min(src.shape[1], y1 + (y1 % 2)), min(src.shape[2], x1 + (x1 % 2))
            block = src[:, y0:y1, x0:x1]
            dst[:, y0 // 2 : (y1 + 1) // 2, x0 // 2 : (x1 + 1) // 2] = downsample2(block)
            y0, y1, x0, x1 = y0 // 2, (y1 + 1) // 2, x0 // 2, (x1 + 1) // 2

    def read_rgb(self, y0: int, y1: int, x0: int, x1: int, level: int = 0) -> np.ndarray:
        return np.moveaxis(self.image(level)[:, y0:y1, x0:x1], 0, -1)

    def write_mask(self, labels: np.ndarray, y0: int = 0, x0: int = 0) -> None:
        self._check_writable()
        if labels.ndim != 2:
            raise CanvasError(f"a mask must be a 2-D label image, got shape {labels.shape}")
        if labels.size and int(labels.max()) >= len(self.classes):
            raise CanvasError(f"mask has label {int(labels.max())}, but the canvas has classes 0..{len(self.classes) - 1}")
        try:
            self.mask[y0 : y0 + labels.shape[0], x0 : x0 + labels.shape[1]] = labels.astype(np.uint8)
        except OSError as e:
            raise _io_error(self.path, e) from None

    def _check_writable(self):
        if not self.writable:
            raise CanvasError(f"{self.path} is open read-only")


def _io_error(path: Path, e: OSError) -> CanvasError:
    if e.errno == errno.ENOSPC:
        return CanvasError(f"disk full while writing {path}; finished regions are kept, free space and resume")
    if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return CanvasError(f"{path} is not writable ({e.strerror}); finished regions are kept")
    return CanvasError(f"cannot write {path}: {e.strerror or e}")


def _acquire_lock(path: Path) -> int:
    lock = path / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise _io_error(path, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise CanvasLockedError(f"{path} is being written by another process (pid {holder}); wait for it or stop it") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _release_lock(fd: int | None) -> None:
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
