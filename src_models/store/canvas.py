"""The canvas store: an OME-Zarr (NGFF 0.5, zarr v3) multiscale RGB image written region by
region, plus the latent array, the class mask and the state of every region.

It knows nothing of torch or napari.  Layout::

    canvas.zarr/
      zarr.json                   group: ome.multiscales + omero (RGB) + diffinfinite settings
      0/ 1/ ...                   image pyramid, (c, y, x) uint8, each level half the previous
      labels/mask/0 1/ ...        class labels (y, x) uint8 at latent resolution, as many levels as
                                  the image (NGFF image-label; level i is level 0 at every 2**i-th px)
      diffinfinite/               group; its attributes hold the regeneration jobs
      diffinfinite/latent         finished latents (C, y, x) float32
      diffinfinite/region_state   (regions down, regions across, 4) uint64: state, CRC-32 of the
                                  region's level-0 pixels, CRC-32 of its latents, seed
      diffinfinite/mask_source    the label image a resized mask was made from (only then)
      diffinfinite/mask_written   (mask chunks down, across) uint8: 1 where the level-0 mask chunk
                                  holds its final labels; elsewhere they come from mask_source
    canvas.zarr.lock              beside the store: held (flock) by the one process that may write

Write order of a region: its pixels, latents and pyramid tiles, each chunk file fsync'd, then its
row of ``region_state`` (with the checksums of what was written), fsync'd.  A run killed at any
moment, even by power loss, resumes from the last finished region, and :mod:`src_models.store.verify`
finds regions whose chunks were damaged or lost later.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from src_models.durable import fsync_dir as _fsync_dir
from src_models.durable import fsync_file as _fsync_file
from src_models.durable import fsync_tree as _fsync_tree
from src_models.errors import DiffInfiniteError
from src_models.store import ngff

CHUNK = 512
FORMAT = "diffinfinite-canvas/1"
LOCK_SUFFIX = ".lock"
LEGACY_LOCK_FILE = ".diffinfinite.lock"  # inside the store, canvases made before region_state
STATE = "diffinfinite/region_state"
LATENT = "diffinfinite/latent"
MASK_SOURCE = "diffinfinite/mask_source"
MASK_WRITTEN = "diffinfinite/mask_written"
STATE_CHUNK = 64  # regions per side of one region_state chunk

# region states (column 0 of region_state)
PENDING, SAMPLED, COPIED, SKIPPED = 0, 1, 2, 3


class CanvasError(DiffInfiniteError, RuntimeError):
    """A canvas that cannot be created, opened or written (message says why)."""


class CanvasLockedError(CanvasError):
    pass


class CanvasDamagedError(CanvasError):
    """The store cannot be read where it should hold data (a chunk or metadata file is damaged)."""


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


def halvings(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    shapes = [(height, width)]
    for _ in range(levels - 1):
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


def nearest_index(positions: np.ndarray, n_out: int, n_in: int) -> np.ndarray:
    """Source index of output positions when ``n_in`` samples are stretched (nearest) to ``n_out``."""
    return np.minimum(((positions + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def _stretch(src: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``src[ys][:, xs]`` for non-decreasing index arrays, by repeating runs (fast when stretching)."""
    uy, cy = np.unique(ys, return_counts=True)
    ux, cx = np.unique(xs, return_counts=True)
    return np.repeat(np.repeat(src[np.ix_(uy, ux)], cy, axis=0), cx, axis=1)


def crc(arr: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(arr).data) & 0xFFFFFFFF


def lock_path(path: str | os.PathLike) -> Path:
    """The writer lock of a canvas: a file beside the store (outside zarr's listings)."""
    path = Path(path)
    return path.with_name(path.name + LOCK_SUFFIX)


class RegionSeq(Sequence):
    """A sequence of regions given by their indices; each Region is made when it is read."""

    def __init__(self, indices: np.ndarray, size: int, nx: int, latent_shape: tuple[int, int]):
        self.indices, self._size, self._nx, self._shape = indices, size, nx, latent_shape

    def __len__(self) -> int:
        return len(self.indices)

    def _make(self, index: int) -> Region:
        size, (lh, lw) = self._size, self._shape
        iy, ix = divmod(index, self._nx)
        return Region(index, iy, ix, iy * size, min(lh, (iy + 1) * size), ix * size, min(lw, (ix + 1) * size))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._make(int(v)) for v in self.indices[i]]
        return self._make(int(self.indices[i]))

    def __iter__(self):
        for v in self.indices.tolist():
            yield self._make(v)

    def __repr__(self) -> str:
        return f"RegionSeq({len(self)} regions)"


class MaskView:
    """The class mask at level 0 as an array: ``canvas.mask[y0:y1, x0:x1]`` reads the labels,
    wherever they are stored (written chunks, or the resized source of a lazily written mask);
    assignment writes them without the label check of :meth:`Canvas.write_mask`."""

    def __init__(self, canvas: "Canvas"):
        self._c = canvas

    shape = property(lambda self: self._c.latent_shape)
    dtype = np.dtype("uint8")
    ndim = 2
    chunks = property(lambda self: self._c._array("labels/mask/0").chunks)

    @property
    def nchunks_initialized(self) -> int:
        """Chunks holding labels (a lazily written mask counts as wholly present)."""
        if self._c.has_mask_source:
            return int(np.prod([math.ceil(s / c) for s, c in zip(self.shape, self.chunks)]))
        return int(self._c._array("labels/mask/0").nchunks_initialized)

    def _rect(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (2 - len(key))
        out, steps, drop = [], [], []
        for axis, (k, n) in enumerate(zip(key, self.shape)):
            if isinstance(k, (int, np.integer)):
                k = int(k) + n if k < 0 else int(k)
                if not 0 <= k < n:
                    raise IndexError(f"index {k} out of range for axis of size {n}")
                out.append((k, k + 1))
                steps.append(1)
                drop.append(axis)
            elif isinstance(k, slice):
                a, b, s = k.indices(n)
                if s <= 0:
                    raise IndexError("the mask supports positive steps only")
                out.append((a, max(a, b)))
                steps.append(s)
            else:
                raise IndexError(f"unsupported index {k!r}")
        return out, steps, drop

    def __getitem__(self, key):
        ((y0, y1), (x0, x1)), steps, drop = self._rect(key)
        block = self._c.read_mask(y0, y1, x0, x1, steps=tuple(steps))
        for axis in reversed(drop):
            block = block.take(0, axis=axis)
        return block

    def __setitem__(self, key, value):
        ((y0, y1), (x0, x1)), steps, _ = self._rect(key)
        if steps != [1, 1]:
            raise IndexError("the mask is written in whole rectangles")
        labels = np.broadcast_to(np.asarray(value, dtype=np.uint8), (y1 - y0, x1 - x0))
        self._c._write_mask_block(np.array(labels), y0, x0)

    def __array__(self, dtype=None, copy=None):
        out = self[:, :]
        return out.astype(dtype) if dtype is not None else out


class Canvas:
    """An open canvas.  Use :meth:`create` or :meth:`open`; writers hold an exclusive lock."""

    def __init__(self, path: Path, group: zarr.Group, writable: bool, lock_fd: int | None):
        self.path = path
        self.group = group
        self.writable = writable
        self._lock_fd = lock_fd
        self._arrays: dict[str, zarr.Array] = {}
        self._state: np.ndarray | None = None  # the writer's copy of region_state
        self._written: np.ndarray | None = None  # the writer's copy of mask_written
        self._source: np.ndarray | None = None
        self._dirty: set = set()  # chunk files written and not fsync'd yet
        self._synced_dirs: set = set()
        self._stale: set[int] = set()  # finished regions rewritten since their checksums were taken
        try:
            attrs = group.attrs.asdict()
        except Exception as e:
            raise CanvasDamagedError(f"{path} is damaged: cannot read its zarr.json ({_reason(e)})") from None
        info = attrs.get("diffinfinite")
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise CanvasError(f"{path} is not a napari-diffinfinite canvas")
        self.info: dict = info
        self.legacy = not self._exists(STATE) or not self._exists(MASK_WRITTEN)
        if writable:  # a writer meets damaged metadata here, in one line; a reader when it reads
            self.check()

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
        pixel_size_um: float | None = None,
        overwrite: bool = False,
        settings: dict | None = None,
        chunk: int = CHUNK,
    ) -> "Canvas":
        """Create an empty canvas of ``height`` x ``width`` px (nothing is allocated).

        ``region_size`` (px) cuts the canvas into regions, each sampled and stored as a unit.
        ``pixel_size_um`` (the model's µm per image pixel) goes into the NGFF scales; when it is
        unknown the axes carry no unit.  The writer lock is taken before anything is deleted or
        made, so ``overwrite`` never touches a canvas another process is writing.
        """
        path = Path(path)
        if height <= 0 or width <= 0:
            raise CanvasError(f"canvas size must be positive, got {width}x{height}")
        if height % factor or width % factor:
            raise CanvasError(f"canvas size {width}x{height} px is not a multiple of the model's factor {factor}")
        if region_size <= 0 or region_size % factor:
            raise CanvasError(f"region size {region_size} px must be a positive multiple of {factor}")
        if pixel_size_um is not None and not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise CanvasError(f"pixel size must be a positive number of µm, got {pixel_size_um}")
        _check_json(settings or {}, "settings")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _io_error(path, e) from None
        lock_fd = _acquire_lock(path)
        try:
            if path.exists() or path.is_symlink():
                if not overwrite:
                    raise CanvasError(f"{path} already exists (use overwrite, or open it to resume)")
                _acquire_legacy_lock(path)
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            path.mkdir()
            group = zarr.open_group(str(path), mode="w", zarr_format=3)
            shapes = pyramid_shapes(height, width)
            for level, (h, w) in enumerate(shapes):
                group.create_array(
                    str(level), shape=(3, h, w), chunks=(3, min(chunk, h), min(chunk, w)),
                    dtype="uint8", fill_value=0, dimension_names=("c", "y", "x"),
                    config={"write_empty_chunks": True},
                )
            lh, lw = height // factor, width // factor
            lchunk = max(1, min(chunk, lh, lw))
            labels = group.create_group("labels")
            mask_g = labels.create_group("mask")
            state = group.create_group("diffinfinite")
            state.create_array("latent", shape=(latent_channels, lh, lw), chunks=(latent_channels, lchunk, lchunk),
                               dtype="float32", fill_value=0.0, config={"write_empty_chunks": True})
            size = region_size // factor
            ny, nx = math.ceil(lh / size), math.ceil(lw / size)
            state.create_array("region_state", shape=(ny, nx, 4), chunks=(min(STATE_CHUNK, ny), min(STATE_CHUNK, nx), 4),
                               dtype="uint64", fill_value=0, config={"write_empty_chunks": True})
            state.attrs["jobs"] = {}
            _create_mask_arrays(group, (lh, lw), len(shapes), chunk)
            group.attrs["ome"] = ngff.rgb_pyramid("synthetic H&E", len(shapes), pixel_size_um)
            labels.attrs["ome"] = ngff.labels_index(["mask"])
            px = 1.0 if pixel_size_um is None else float(pixel_size_um)
            mask_g.attrs["ome"] = ngff.label_image(
                "mask", ngff.pyramid_datasets(len(shapes), [px * factor] * 2),
                unit=None if pixel_size_um is None else ngff.MICROMETER,
                colors=ngff.class_colours(colours), properties=ngff.class_properties(classes))
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
            _fsync_tree(path)
        except CanvasError:
            _release_lock(lock_fd, path)
            raise
        except OSError as e:
            _release_lock(lock_fd, path)
            raise _io_error(path, e) from None
        return cls(path, group, True, lock_fd)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "Canvas":
        """Open an existing canvas, read-only (``"r"``) or for writing (``"r+"``, takes the lock)."""
        path = Path(path)
        if not (path / "zarr.json").exists():
            raise CanvasError(f"{path} is not a canvas (no zarr.json)")
        lock_fd = _acquire_lock(path) if mode == "r+" else None
        try:
            try:
                group = zarr.open_group(str(path), mode="r+" if mode == "r+" else "r")
            except Exception as e:  # zarr raises several types for a damaged store
                raise CanvasDamagedError(f"{path} is damaged: cannot read its zarr.json ({_reason(e)})") from None
            canvas = cls(path, group, mode == "r+", lock_fd)
            if canvas.writable and canvas.legacy:
                _acquire_legacy_lock(path)
                canvas._migrate()
            return canvas
        except BaseException:
            _release_lock(lock_fd, path)
            raise

    def close(self) -> None:
        try:
            if self.writable and (self._dirty or self._stale):
                self.settle()
        finally:
            _release_lock(self._lock_fd, self.path)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- arrays
    def _array(self, name: str) -> zarr.Array:
        arr = self._arrays.get(name)
        if arr is None:
            try:
                arr = zarr.open_array(store=self.group.store, path=name, mode="r+" if self.writable else "r")
                # image, latents and state: every written chunk is stored, even all zero (verify
                # counts a missing one as damage); the mask: chunks of the fill value are skipped
                arr = arr.with_config({"write_empty_chunks": not name.startswith("labels/")})
            except Exception as e:  # zarr raises several types for missing or damaged metadata
                if not (self.path / name / "zarr.json").exists():
                    raise CanvasDamagedError(f"{self.path} is damaged: the array {name} is missing") from None
                raise CanvasDamagedError(f"{self.path} is damaged: cannot read {name}/zarr.json ({_reason(e)})") from None
            self._arrays[name] = arr
        return arr

    def _exists(self, name: str) -> bool:
        return (self.path / name / "zarr.json").exists()

    def check(self) -> None:
        """Open every array the canvas needs: damaged metadata becomes one CanvasDamagedError."""
        try:
            levels = len(self.group.attrs["ome"]["multiscales"][0]["datasets"])
        except Exception:
            raise CanvasDamagedError(f"{self.path} is damaged: its zarr.json has no OME multiscales") from None
        for level in range(levels):
            self._array(str(level))
        self._array("labels/mask/0")
        self._array(LATENT)
        if not self.legacy:
            self._array(STATE)
            self._array(MASK_WRITTEN)
        self._jobs_attrs()
        if self.has_mask_source:
            self._array(MASK_SOURCE)

    def _read(self, name: str, sel) -> np.ndarray:
        """Read from an array; a chunk that cannot be decoded is a one-line CanvasDamagedError."""
        try:
            return np.asarray(self._array(name)[sel])
        except CanvasError:
            raise
        except OSError as e:
            raise _io_error(self.path, e, reading=True) from None
        except Exception as e:  # codecs raise many types for a damaged chunk
            raise CanvasDamagedError(
                f"{self.path} is damaged: a chunk of {name} cannot be read ({_reason(e)}); "
                "run `diffinfinite verify` on it"
            ) from None

    # ---------------------------------------------------------------- properties
    height = property(lambda self: int(self.info["height"]))
    width = property(lambda self: int(self.info["width"]))
    factor = property(lambda self: int(self.info["factor"]))
    region_size = property(lambda self: int(self.info["region_size"]))
    classes = property(lambda self: list(self.info["classes"]))
    colours = property(lambda self: list(self.info["colours"]))

    @property
    def pixel_size_um(self) -> float | None:
        return self.info.get("pixel_size_um")

    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.height // self.factor, self.width // self.factor

    @property
    def levels(self) -> int:
        return len(self.group.attrs["ome"]["multiscales"][0]["datasets"])

    @property
    def mask_levels(self) -> int:
        g = self.group["labels/mask"]
        return len(g.attrs["ome"]["multiscales"][0]["datasets"])

    def image(self, level: int = 0) -> zarr.Array:
        return self._array(str(level))

    @property
    def mask(self) -> MaskView:
        return MaskView(self)

    @property
    def latent(self) -> zarr.Array:
        return self._array(LATENT)

    def mask_level(self, level: int) -> zarr.Array:
        return self._array(f"labels/mask/{level}")

    @property
    def settings(self) -> dict:
        return dict(self.info.get("settings", {}))

    def set_settings(self, settings: dict) -> None:
        """Record the settings of the run that writes this canvas (checked on resume)."""
        self.set_info(settings=dict(settings))

    def set_info(self, **values) -> None:
        """Store values in the canvas's ``diffinfinite`` attributes (settings, signatures, ...)."""
        self._check_writable()
        _check_json(values, "canvas attributes")
        self.info.update(values)
        try:
            self.group.attrs["diffinfinite"] = self.info
            _fsync_file(self.path / "zarr.json")
        except OSError as e:
            raise _io_error(self.path, e) from None

    def set_pixel_size(self, pixel_size_um: float) -> None:
        """Record the µm per image pixel (an imported slide's) in the NGFF scales and the attributes."""
        self._check_writable()
        if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise CanvasError(f"pixel size must be a positive number of µm, got {pixel_size_um}")
        px, f = float(pixel_size_um), self.factor
        try:
            self.group.attrs["ome"] = ngff.set_pixel_size(self.group.attrs.asdict()["ome"], px)
            mask_g = self.group["labels/mask"]
            mask_g.attrs["ome"] = ngff.set_pixel_size(mask_g.attrs.asdict()["ome"], px, f)
        except OSError as e:
            raise _io_error(self.path, e) from None
        self.set_info(pixel_size_um=px)

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

    def regions(self) -> "RegionSeq":
        """The region grid over the latent, row-major; edge regions may be smaller.  A sequence
        that makes each :class:`Region` when it is asked for (a huge canvas has 10⁵–10⁶)."""
        size, ny, nx = self.region_grid
        return self.region_seq(np.arange(ny * nx))

    def region_seq(self, indices) -> "RegionSeq":
        """The regions of ``indices`` (in that order) as a lazy sequence."""
        size, ny, nx = self.region_grid
        return RegionSeq(np.asarray(indices, dtype=np.int64), size, nx, self.latent_shape)

    def regions_in(self, y0: int, y1: int, x0: int, x1: int) -> list[Region]:
        """Regions that overlap the latent rectangle [y0, y1) x [x0, x1)."""
        size, ny, nx = self.region_grid
        iys = range(max(0, y0 // size), min(ny, -(-y1 // size)))
        ixs = range(max(0, x0 // size), min(nx, -(-x1 // size)))
        return [self.region(iy * nx + ix) for iy in iys for ix in ixs]

    # region state: one row per region in diffinfinite/region_state (legacy canvases opened
    # read-only: one marker file per region, as they were written)
    def state_table(self) -> np.ndarray:
        """(regions down, regions across, 4) uint64: state, CRC of pixels, CRC of latents, seed."""
        if self._state is not None:
            return self._state
        if self.legacy:
            table = self._legacy_table()
        else:
            table = self._read(STATE, slice(None))
        if self.writable:
            self._state = table
        return table

    def _row(self, index: int) -> np.ndarray:
        size, ny, nx = self.region_grid
        if not 0 <= index < ny * nx:
            raise CanvasError(f"region {index} does not exist (the canvas has {ny * nx})")
        iy, ix = divmod(index, nx)
        if self._state is not None or self.legacy:
            return self.state_table()[iy, ix]
        return self._read(STATE, (iy, ix))

    def is_done(self, index: int) -> bool:
        return int(self._row(index)[0]) != PENDING

    def done_info(self, index: int) -> dict:
        """What a finished region records: its seed and the run's settings, or that it was copied."""
        if self.legacy:
            try:
                return json.loads(self._marker(index).read_text() or "{}")
            except (FileNotFoundError, json.JSONDecodeError):
                return {}
        state, _, _, seed = (int(v) for v in self._row(index))
        if state == SAMPLED:
            return {**self.settings, "seed": seed}
        if state == SKIPPED:
            return {**self.settings, "seed": None}
        if state == COPIED:
            return {"source": self.settings.get("source", "copied")}
        return {}

    def done_indices(self) -> set[int]:
        table = self.state_table()
        return {int(i) for i in np.flatnonzero(table[..., 0].ravel() != PENDING)}

    def done_map(self) -> np.ndarray:
        """A (latent h, latent w) bool map: true where the latent belongs to a finished region."""
        size, ny, nx = self.region_grid
        done = self.state_table()[..., 0] != PENDING
        lh, lw = self.latent_shape
        return np.repeat(np.repeat(done, size, axis=0), size, axis=1)[:lh, :lw]

    def region_checksums(self, region: Region) -> tuple[int, int]:
        """CRC-32 of a region's level-0 pixels and of its latents, as stored now."""
        py0, py1, px0, px1 = region.px(self.factor)
        rgb = self._read("0", (slice(None), slice(py0, py1), slice(px0, px1)))
        lat = self._read(LATENT, (slice(None), slice(region.y0, region.y1), slice(region.x0, region.x1)))
        return crc(rgb), crc(lat)

    def mark_done(self, index: int, info: dict | None = None) -> None:
        """Record a region as finished, with the checksums of its stored pixels and latents.

        ``info`` with a ``seed`` marks a sampled region (``seed`` None: nothing was sampled),
        without one a copied region (slide import, outpaint source).  Call it only after the
        region's data is written (:meth:`write_region` makes it durable first).
        """
        self._check_writable()
        info = info or {}
        if "seed" in info:
            state, seed = (SAMPLED, int(info["seed"])) if info["seed"] is not None else (SKIPPED, 0)
        else:
            state, seed = COPIED, 0
        self.flush()
        rows = self._stale_rows(skip=index)
        rows[index] = (state, *self.region_checksums(self.region(index)), seed)
        self._set_rows(rows)

    def _set_rows(self, rows: dict[int, tuple]) -> None:
        table = self.state_table()
        size, ny, nx = self.region_grid
        chunks = set()
        for index, row in rows.items():
            iy, ix = divmod(int(index), nx)
            table[iy, ix] = np.asarray(row, dtype=np.uint64)
            chunks.add((iy // STATE_CHUNK, ix // STATE_CHUNK))
        arr = self._array(STATE)
        cy_, cx_ = arr.chunks[0], arr.chunks[1]
        self.flush()  # the data first, then the state that vouches for it
        try:
            for cy, cx in sorted(chunks):
                ys = slice(cy * cy_, min(ny, (cy + 1) * cy_))
                xs = slice(cx * cx_, min(nx, (cx + 1) * cx_))
                arr[ys, xs, :] = table[ys, xs, :]
                self._sync_chunks(STATE, [(ys.start, ys.stop), (xs.start, xs.stop), (0, 4)])
            self.flush()
        except OSError as e:
            raise _io_error(self.path, e) from None

    def clear_done(self, indices=None) -> None:
        """Forget finished regions (all, or ``indices``) so they are sampled again whole."""
        self._check_writable()
        indices = self.done_indices() if indices is None else {int(i) for i in indices}
        jobs = self.jobs()
        for i in indices:
            jobs.pop(int(i), None)
        self._save_jobs(jobs)
        if indices:
            self._set_rows({i: (PENDING, 0, 0, 0) for i in indices})

    # ---------------------------------------------------------------- partial regeneration
    # A region that is not done is sampled whole, unless it has a *job*: a list of latent
    # rectangles to regenerate; its other pixels keep their content and serve as context.
    def _jobs_attrs(self) -> dict:
        if self.legacy:
            path = self.path / "diffinfinite" / "jobs.json"
            try:
                raw = json.loads(path.read_text())
            except FileNotFoundError:
                return {}
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CanvasDamagedError(f"{self.path} is damaged: {path.name} is not valid JSON ({_reason(e)})") from None
        else:
            try:
                raw = self.group["diffinfinite"].attrs.asdict().get("jobs", {})
            except Exception as e:
                raise CanvasDamagedError(f"{self.path} is damaged: cannot read diffinfinite/zarr.json ({_reason(e)})") from None
        try:
            return {int(k): [[int(v) for v in r] for r in rects] for k, rects in raw.items()}
        except (AttributeError, TypeError, ValueError):
            raise CanvasDamagedError(f"{self.path} is damaged: its regeneration jobs are not readable") from None

    def jobs(self) -> dict[int, list[list[int]]]:
        return self._jobs_attrs()

    def _save_jobs(self, jobs: dict) -> None:
        self._check_writable()
        try:
            g = self.group["diffinfinite"]
            g.attrs["jobs"] = {str(k): v for k, v in sorted(jobs.items())}
            _fsync_file(self.path / "diffinfinite" / "zarr.json")
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
        self._save_jobs(jobs)  # the job first, then the state: a crash in between loses nothing
        if touched:
            self._set_rows({i: (PENDING, 0, 0, 0) for i in touched})
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
        jobs = self.jobs()
        for r in self.regions_in(y0, y1, x0, x1):
            sl = (slice(max(r.y0, y0) - y0, min(r.y1, y1) - y0), slice(max(r.x0, x0) - x0, min(r.x1, x1) - x0))
            if r.index != exclude and self.is_done(r.index):
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
        the image pixels under them); the rest keeps its content.  Every chunk file it wrote is
        fsync'd before any region state is written (:meth:`mark_done`, :meth:`flush`).
        """
        self.write_block(region.y0, region.y1, region.x0, region.x1, rgb, latent, where)

    def write_block(self, y0: int, y1: int, x0: int, x1: int, rgb: np.ndarray, latent: np.ndarray | None = None,
                    where: np.ndarray | None = None) -> None:
        """Write the latent rectangle [y0, y1) x [x0, x1): its pixels (h·f, w·f, 3) uint8 and,
        optionally, its latents, limited to ``where`` (a latent bool map) when given; then
        refresh the pyramid above it, fsync what was written, and update the checksums of
        finished regions it changed."""
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
                pixels = np.where(big[None], pixels, self._read("0", (slice(None), slice(py0, py1), slice(px0, px1))))
                if latent is not None:
                    latent = np.where(where[None], latent, self._read(LATENT, (slice(None), slice(y0, y1), slice(x0, x1))))
            self.image(0)[:, py0:py1, px0:px1] = pixels
            if latent is not None:
                self.latent[:, y0:y1, x0:x1] = latent
            self.update_pyramid(py0, py1, px0, px1)
            self.materialise_mask(y0, y1, x0, x1)
            self._sync_image(py0, py1, px0, px1)
            if latent is not None:
                self._sync_chunks(LATENT, [(0, self.latent.shape[0]), (y0, y1), (x0, x1)])
        except OSError as e:
            raise _io_error(self.path, e) from None
        except CanvasError:
            raise
        except Exception as e:  # a partial chunk write decodes the chunk first: it may be damaged
            raise CanvasDamagedError(f"{self.path} is damaged: a chunk under latent rectangle y {y0}:{y1}, "
                                     f"x {x0}:{x1} cannot be read ({_reason(e)}); run `diffinfinite verify` on it") from None
        self._refresh_checksums(y0, y1, x0, x1)

    def write_pixels(self, y0: int, x0: int, rgb: np.ndarray) -> None:
        """Write any (h, w, 3) uint8 block at level 0 and refresh the pyramid above it."""
        self._check_writable()
        h, w = rgb.shape[:2]
        try:
            self.image(0)[:, y0 : y0 + h, x0 : x0 + w] = np.moveaxis(rgb, -1, 0)
            self.update_pyramid(y0, y0 + h, x0, x0 + w)
            self._sync_image(y0, y0 + h, x0, x0 + w)
        except OSError as e:
            raise _io_error(self.path, e) from None
        f = self.factor
        self._refresh_checksums(y0 // f, -(-(y0 + h) // f), x0 // f, -(-(x0 + w) // f))

    def write_latent(self, y0: int, x0: int, latent: np.ndarray) -> None:
        """Write a (C, h, w) latent block (durably) at latent position (y0, x0)."""
        self._check_writable()
        c, h, w = latent.shape
        try:
            self.latent[:, y0 : y0 + h, x0 : x0 + w] = latent.astype(np.float32)
            self._sync_chunks(LATENT, [(0, c), (y0, y0 + h), (x0, x0 + w)])
        except OSError as e:
            raise _io_error(self.path, e) from None
        self._refresh_checksums(y0, y0 + h, x0, x0 + w)

    def _refresh_checksums(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """Note the finished regions whose data a write changed: their checksums are renewed with
        the next region state written (:meth:`mark_done`, :meth:`close`)."""
        self._stale.update(r.index for r in self.regions_in(y0, y1, x0, x1) if int(self._row(r.index)[0]) != PENDING)

    def _stale_rows(self, skip: int | None = None) -> dict[int, tuple]:
        rows = {}
        for index in sorted(self._stale):
            row = self._row(index)
            if index != skip and int(row[0]) != PENDING:
                rows[index] = (int(row[0]), *self.region_checksums(self.region(index)), int(row[3]))
        self._stale.clear()
        return rows

    def settle(self) -> None:
        """fsync what was written and renew the checksums of finished regions it changed."""
        self._check_writable()
        rows = self._stale_rows()
        if rows:
            self._set_rows(rows)
        else:
            self.flush()

    def update_pyramid(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """Recompute the coarser levels over a level-0 rectangle (each level from the one below)."""
        for level in range(1, self.levels):
            src, dst = self.image(level - 1), self.image(level)
            y0, x0 = (y0 // 2) * 2, (x0 // 2) * 2  # even-aligned in the finer level
            y1, x1 = min(src.shape[1], y1 + (y1 % 2)), min(src.shape[2], x1 + (x1 % 2))
            block = self._read(str(level - 1), (slice(None), slice(y0, y1), slice(x0, x1)))
            dst[:, y0 // 2 : (y1 + 1) // 2, x0 // 2 : (x1 + 1) // 2] = downsample2(block)
            y0, y1, x0, x1 = y0 // 2, (y1 + 1) // 2, x0 // 2, (x1 + 1) // 2

    def pyramid_rects(self, y0: int, y1: int, x0: int, x1: int) -> list[tuple[int, int, int, int]]:
        """The rectangle of each level (0 first) that a level-0 rectangle's pixels feed."""
        rects = [(y0, y1, x0, x1)]
        for level in range(1, self.levels):
            y0, y1, x0, x1 = y0 // 2, (y1 + 1) // 2, x0 // 2, (x1 + 1) // 2
            rects.append((y0, y1, x0, x1))
        return rects

    def _sync_image(self, y0: int, y1: int, x0: int, x1: int) -> None:
        for level, (a, b, c, d) in enumerate(self.pyramid_rects(y0, y1, x0, x1)):
            self._sync_chunks(str(level), [(0, 3), (a, b), (c, d)])

    def read_rgb(self, y0: int, y1: int, x0: int, x1: int, level: int = 0) -> np.ndarray:
        return np.moveaxis(self._read(str(level), (slice(None), slice(y0, y1), slice(x0, x1))), 0, -1)

    def read_latent(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self._read(LATENT, (slice(None), slice(y0, y1), slice(x0, x1)))

    # ---------------------------------------------------------------- chunk files
    def chunk_files(self, name: str, bounds: list[tuple[int, int]]) -> list[Path]:
        """The chunk files of array ``name`` that hold the box ``bounds`` ((start, stop) per axis)."""
        arr = self._array(name)
        ranges = []
        for (a, b), c, n in zip(bounds, arr.chunks, arr.shape):
            a, b = max(0, a), min(n, b)
            if b <= a:
                return []
            ranges.append(range(a // c, (b - 1) // c + 1))
        base = self.path / name / "c"
        grid = np.stack(np.meshgrid(*[np.asarray(r) for r in ranges], indexing="ij"), -1).reshape(-1, len(ranges))
        return [base.joinpath(*map(str, idx)) for idx in grid.tolist()]

    def _sync_chunks(self, name: str, bounds: list[tuple[int, int]], now: bool = False) -> None:
        """Note the chunk files of a written box; :meth:`flush` fsyncs them (``now``: at once)."""
        top = self.path / name
        self._dirty.update((p, top) for p in self.chunk_files(name, bounds))
        if now:
            self.flush()

    def flush(self) -> None:
        """fsync every chunk file written since the last flush, and the directories above them."""
        dirty, self._dirty = self._dirty, set()
        dirs = set()
        try:
            for p, top in sorted(dirty):
                if p.exists():
                    _fsync_file(p)
                    dirs.add(p.parent)  # zarr replaces a chunk by a rename in this directory
                    d = p.parent.parent
                    while d != top.parent and d not in self._synced_dirs:  # new chunk directories
                        dirs.add(d)
                        d = d.parent
            for d in sorted(dirs, key=lambda d: -len(d.parts)):
                _fsync_dir(d)
            self._synced_dirs |= dirs
        except OSError as e:
            self._dirty |= dirty
            raise _io_error(self.path, e) from None

    # ---------------------------------------------------------------- the mask
    @property
    def has_mask_source(self) -> bool:
        return bool(self.info.get("mask_source"))

    def _mask_source(self) -> np.ndarray:
        if self._source is None:
            self._source = self._read(MASK_SOURCE, slice(None))
        return self._source

    def _mask_written(self) -> np.ndarray:
        """(mask chunks down, across) bool: level-0 mask chunks that hold their final labels."""
        if self._written is not None:
            return self._written
        if self.legacy:
            arr = self._array("labels/mask/0")
            shape = tuple(math.ceil(s / c) for s, c in zip(arr.shape, arr.chunks))
            written = np.ones(shape, dtype=bool)
        else:
            written = self._read(MASK_WRITTEN, slice(None)).astype(bool)
        if self.writable:
            self._written = written
        return written

    def _set_written(self, cys: range, cxs: range) -> None:
        written = self._mask_written()
        if written[cys.start : cys.stop, cxs.start : cxs.stop].all():
            return
        written[cys.start : cys.stop, cxs.start : cxs.stop] = True
        arr = self._array(MASK_WRITTEN)
        ch = arr.chunks
        ys = slice((cys.start // ch[0]) * ch[0], min(arr.shape[0], -(-cys.stop // ch[0]) * ch[0]))
        xs = slice((cxs.start // ch[1]) * ch[1], min(arr.shape[1], -(-cxs.stop // ch[1]) * ch[1]))
        arr[ys, xs] = written[ys, xs].astype(np.uint8)

    def _mask_chunk(self) -> tuple[int, int]:
        return tuple(self._array("labels/mask/0").chunks)

    def read_mask(self, y0: int = 0, y1: int | None = None, x0: int = 0, x1: int | None = None,
                  level: int = 0, steps: tuple[int, int] = (1, 1)) -> np.ndarray:
        """The labels of rectangle [y0, y1) x [x0, x1) of mask level ``level`` (every ``steps``-th
        pixel), from written chunks or, where none was written yet, from the mask source."""
        name = f"labels/mask/{level}"
        arr = self.mask_level(level)
        h, w = arr.shape
        y1 = h if y1 is None else min(y1, h)
        x1 = w if x1 is None else min(x1, w)
        sy, sx = steps
        rows = np.arange(y0, max(y0, y1), sy)
        cols = np.arange(x0, max(x0, x1), sx)
        if not len(rows) or not len(cols):
            return np.zeros((len(rows), len(cols)), dtype=np.uint8)
        s = 2**level
        ch, cw = self._mask_chunk()
        rkey, ckey = (rows * s) // ch, (cols * s) // cw  # level-0 chunk of each output pixel
        ucy, rcount = np.unique(rkey, return_counts=True)
        ucx, ccount = np.unique(ckey, return_counts=True)
        wsub = self._mask_written()[np.ix_(ucy, ucx)]
        source = self.has_mask_source
        if wsub.all() or (not source and wsub.any() and sy == 1 and sx == 1):
            return self._read(name, (slice(y0, y1, sy), slice(x0, x1, sx)))
        if source:
            src = self._mask_source()
            lh, lw = self.latent_shape
            out = _stretch(src, nearest_index(rows * s, lh, src.shape[0]), nearest_index(cols * s, lw, src.shape[1]))
        else:
            out = np.zeros((len(rows), len(cols)), dtype=np.uint8)
        if wsub.any():  # read only the written chunks (a huge mask is mostly not written at first)
            rstart = np.concatenate([[0], np.cumsum(rcount)])
            cstart = np.concatenate([[0], np.cumsum(ccount)])
            for i, j in zip(*np.nonzero(wsub)):
                a, b, c, d = rstart[i], rstart[i + 1], cstart[j], cstart[j + 1]
                out[a:b, c:d] = self._read(name, (slice(rows[a], rows[b - 1] + 1, sy), slice(cols[c], cols[d - 1] + 1, sx)))
        return out

    def mask_grid(self, step: int) -> np.ndarray:
        """The level-0 mask at every ``step``-th latent pixel (from the pyramid when it can)."""
        level = int(math.log2(step)) if step > 0 and step & (step - 1) == 0 else -1
        if 0 <= level < self.mask_levels:
            return self.read_mask(level=level)
        return self.read_mask(steps=(step, step))

    def set_mask_source(self, labels: np.ndarray) -> None:
        """Make ``labels`` (any size) the canvas's mask, stretched (nearest) over the latent grid.

        Nothing of the full-size mask is written now: each level-0 chunk is written from the
        source when a region under it is written or when it is edited (:meth:`write_mask`), so a
        canvas of any size gets its mask at once."""
        self._check_writable()
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.size == 0:
            raise CanvasError(f"a mask must be a non-empty 2-D label image, got shape {labels.shape}")
        if int(labels.max()) >= len(self.classes):
            raise CanvasError(f"mask has label {int(labels.max())}, but the canvas has classes 0..{len(self.classes) - 1}")
        try:
            levels = self.mask_levels
            lh, lw = self.latent_shape
            _create_mask_arrays(self.group, (lh, lw), levels, self._mask_chunk()[0], overwrite=True)
            for name in [f"labels/mask/{i}" for i in range(levels)] + [MASK_WRITTEN, MASK_SOURCE]:
                self._arrays.pop(name, None)
            g = self.group["diffinfinite"]
            g.create_array("mask_source", shape=labels.shape, chunks=tuple(min(1024, s) for s in labels.shape),
                           dtype="uint8", fill_value=0, overwrite=True)
            self._array(MASK_SOURCE)[:] = labels.astype(np.uint8)
            _fsync_tree(self.path / MASK_SOURCE)
            self._written = np.zeros(self._array(MASK_WRITTEN).shape, dtype=bool)
            self._source = labels.astype(np.uint8)
            self.set_info(mask_source=[int(labels.shape[0]), int(labels.shape[1])])
        except OSError as e:
            raise _io_error(self.path, e) from None

    def materialise_mask(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """Write the level-0 mask chunks under a latent rectangle that still come from the source."""
        if not self.has_mask_source:
            return
        ch, cw = self._mask_chunk()
        written = self._mask_written()
        cys = range(y0 // ch, -(-y1 // ch))
        cxs = range(x0 // cw, -(-x1 // cw))
        if written[cys.start : cys.stop, cxs.start : cxs.stop].all():
            return
        lh, lw = self.latent_shape
        ey0, ey1 = cys.start * ch, min(lh, cys.stop * ch)
        ex0, ex1 = cxs.start * cw, min(lw, cxs.stop * cw)
        self._write_mask_block(self.read_mask(ey0, ey1, ex0, ex1), ey0, ex0)

    def write_mask(self, labels: np.ndarray, y0: int = 0, x0: int = 0) -> None:
        self._check_writable()
        if labels.ndim != 2:
            raise CanvasError(f"a mask must be a 2-D label image, got shape {labels.shape}")
        if labels.size and int(labels.max()) >= len(self.classes):
            raise CanvasError(f"mask has label {int(labels.max())}, but the canvas has classes 0..{len(self.classes) - 1}")
        self._write_mask_block(labels, y0, x0)

    def _write_mask_block(self, labels: np.ndarray, y0: int, x0: int) -> None:
        self._check_writable()
        lh, lw = self.latent_shape
        labels = np.asarray(labels).astype(np.uint8)[: max(0, lh - y0), : max(0, lw - x0)]
        h, w = labels.shape
        if not h or not w:
            return
        y1, x1 = y0 + h, x0 + w
        ch, cw = self._mask_chunk()
        cys = range(y0 // ch, -(-y1 // ch))
        cxs = range(x0 // cw, -(-x1 // cw))
        try:
            if self.has_mask_source and not self._mask_written()[cys.start : cys.stop, cxs.start : cxs.stop].all():
                # whole chunks, so the parts outside the rectangle keep their (source) labels
                ey0, ey1 = cys.start * ch, min(lh, cys.stop * ch)
                ex0, ex1 = cxs.start * cw, min(lw, cxs.stop * cw)
                block = self.read_mask(ey0, ey1, ex0, ex1)
                block[y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0] = labels
                labels, y0, y1, x0, x1 = block, ey0, ey1, ex0, ex1
            self.mask_level(0)[y0:y1, x0:x1] = labels
            if self.has_mask_source:  # the written flag below must never point at a lost chunk
                self._sync_chunks("labels/mask/0", [(y0, y1), (x0, x1)], now=True)
            for level in range(1, self.mask_levels):  # level i: level i-1 at every other pixel
                y0, y1, x0, x1 = -(-y0 // 2), -(-y1 // 2), -(-x0 // 2), -(-x1 // 2)
                if y1 <= y0 or x1 <= x0:
                    break
                src = self._read(f"labels/mask/{level - 1}", (slice(2 * y0, 2 * y1, 2), slice(2 * x0, 2 * x1, 2)))
                self.mask_level(level)[y0:y1, x0:x1] = src
            self._set_written(cys, cxs)
        except OSError as e:
            raise _io_error(self.path, e) from None

    def _check_writable(self):
        if not self.writable:
            raise CanvasError(f"{self.path} is open read-only")

    # ---------------------------------------------------------------- canvases made before region_state
    def _marker(self, index: int) -> Path:
        return self.path / "diffinfinite" / "regions" / f"{index}.done"

    def _legacy_table(self) -> np.ndarray:
        size, ny, nx = self.region_grid
        table = np.zeros((ny, nx, 4), dtype=np.uint64)
        d = self.path / "diffinfinite" / "regions"
        for p in d.glob("*.done") if d.exists() else []:
            try:
                index = int(p.stem)
                info = json.loads(p.read_text() or "{}")
            except (ValueError, OSError):
                continue
            if not 0 <= index < ny * nx:
                continue
            if "seed" in info:
                state, seed = (SAMPLED, int(info["seed"])) if info["seed"] is not None else (SKIPPED, 0)
            else:
                state, seed = COPIED, 0
            table[index // nx, index % nx] = (state, 0, 0, seed)
        return table

    def _migrate(self) -> None:
        """Bring a canvas made with one marker file per region to the current layout: region
        state with checksums of the data as it is now, jobs in the attributes, a mask pyramid."""
        table = self._legacy_table()
        jobs = self._jobs_attrs()
        regions_dir = self.path / "diffinfinite" / "regions"
        try:
            g = self.group["diffinfinite"]
            size, ny, nx = self.region_grid
            if not self._exists(STATE):
                g.create_array("region_state", shape=(ny, nx, 4), chunks=(min(STATE_CHUNK, ny), min(STATE_CHUNK, nx), 4),
                               dtype="uint64", fill_value=0, config={"write_empty_chunks": True})
            lh, lw = self.latent_shape
            old = self._read("labels/mask/0", slice(None))
            _create_mask_arrays(self.group, (lh, lw), self.levels, self._mask_chunk()[0], overwrite=True,
                                keep_level0=True)
            self._arrays.clear()
            mask_g = self.group["labels/mask"]
            ome = mask_g.attrs.asdict()["ome"]
            base = ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
            ome["multiscales"][0]["datasets"] = ngff.pyramid_datasets(self.levels, base)
            mask_g.attrs["ome"] = ome
            self.legacy = False
            self._state = np.zeros((ny, nx, 4), dtype=np.uint64)
            self._written = np.zeros(self._array(MASK_WRITTEN).shape, dtype=bool)
            self._write_mask_block(old, 0, 0)
            g.attrs["jobs"] = {str(k): v for k, v in sorted(jobs.items())}
            rows = {}
            for index in np.flatnonzero(table[..., 0].ravel()):
                state, _, _, seed = (int(v) for v in table.reshape(-1, 4)[index])
                rows[int(index)] = (state, *self.region_checksums(self.region(int(index))), seed)
            self._set_rows(rows) if rows else None
            _fsync_tree(self.path / "diffinfinite")
            _fsync_tree(self.path / "labels")
            shutil.rmtree(regions_dir, ignore_errors=True)
            (self.path / "diffinfinite" / "jobs.json").unlink(missing_ok=True)
            (self.path / LEGACY_LOCK_FILE).unlink(missing_ok=True)
        except OSError as e:
            raise _io_error(self.path, e) from None


def _create_mask_arrays(group: zarr.Group, shape: tuple[int, int], levels: int, chunk: int,
                        overwrite: bool = False, keep_level0: bool = False) -> None:
    mask_g = group.require_group("labels").require_group("mask")
    for level, (h, w) in enumerate(halvings(*shape, levels)):
        if keep_level0 and level == 0:
            continue
        mask_g.create_array(str(level), shape=(h, w), chunks=(min(chunk, h), min(chunk, w)), dtype="uint8",
                            fill_value=0, dimension_names=("y", "x"), overwrite=overwrite)
    ch = min(chunk, shape[0]), min(chunk, shape[1])
    grid = (math.ceil(shape[0] / ch[0]), math.ceil(shape[1] / ch[1]))
    group.require_group("diffinfinite").create_array(
        "mask_written", shape=grid, chunks=tuple(min(1024, g) for g in grid), dtype="uint8", fill_value=0,
        overwrite=overwrite, config={"write_empty_chunks": True})


def _check_json(values: dict, what: str) -> None:
    try:
        json.dumps(values, allow_nan=False)
    except ValueError:
        raise CanvasError(f"{what} hold a value that is not a finite number: {values}") from None
    except TypeError as e:
        raise CanvasError(f"{what} cannot be stored: {e}") from None


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _io_error(path: Path, e: OSError, reading: bool = False) -> CanvasError:
    if e.errno == errno.ENOSPC:
        return CanvasError(f"disk full while writing {path}; finished regions are kept, free space and resume")
    if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return CanvasError(f"{path} is not writable ({e.strerror}); finished regions are kept")
    return CanvasError(f"cannot {'read' if reading else 'write'} {path}: {e.strerror or e}")


def _acquire_lock(path: Path) -> int:
    """Take the writer lock beside the store (``<name>.lock``), or say who holds it."""
    lock = lock_path(path)
    for _ in range(100):
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
        try:  # the holder before us may have removed the file as it let go: then lock the new one
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)
    raise CanvasLockedError(f"{path}: cannot take the writer lock {lock}")


def _acquire_legacy_lock(path: Path) -> None:
    """Refuse a store that a process of an older version (lock inside the store) is writing."""
    lock = path / LEGACY_LOCK_FILE
    if not lock.exists():
        return
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CanvasLockedError(f"{path} is being written by another process; wait for it or stop it") from None
    finally:
        os.close(fd)


def _release_lock(fd: int | None, path: Path | None = None) -> None:
    if fd is None:
        return
    try:
        if path is not None:
            try:
                if os.stat(lock_path(path)).st_ino == os.fstat(fd).st_ino:
                    os.unlink(lock_path(path))
            except OSError:
                pass
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
