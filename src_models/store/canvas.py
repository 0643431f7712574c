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

import math
import os
import shutil
from pathlib import Path

import numpy as np
import zarr

from src_models.durable import fsync_dir as _fsync_dir
from src_models.durable import fsync_file as _fsync_file
from src_models.durable import fsync_tree as _fsync_tree
from src_models.store import ngff, safety
from src_models.store.base import (CHUNK, COPIED, FORMAT, LATENT, LAYOUT, LEGACY_LOCK_FILE, LOCK_SUFFIX, MASK_CRC,
                                   MASK_SOURCE, MASK_WRITTEN, PENDING, SAMPLED, SKIPPED, STATE, STATE_CHUNK, STATE_COPY,
                                   CanvasDamagedError,
                                   CanvasError, CanvasLockedError, _check_json, _io_error, _reason, crc)
from src_models.store.locks import _acquire_legacy_lock, _acquire_lock, _release_lock, lock_path
from src_models.store.mask_source import MaskSource, MaskView, _create_mask_arrays, nearest_index
from src_models.store.migrate import LegacyLayout
from src_models.store.pyramid import Pyramid, downsample2, halvings, pyramid_shapes
from src_models.store.regions import Region, RegionSeq, RegionState

__all__ = ["Canvas", "CanvasError", "CanvasLockedError", "CanvasDamagedError", "Region", "RegionSeq", "MaskView",
           "PENDING", "SAMPLED", "COPIED", "SKIPPED", "CHUNK", "FORMAT", "LATENT", "STATE", "MASK_SOURCE",
           "MASK_WRITTEN", "STATE_CHUNK", "LOCK_SUFFIX", "LEGACY_LOCK_FILE", "crc", "lock_path", "pyramid_shapes",
           "halvings", "downsample2", "nearest_index"]


class Canvas(RegionState, Pyramid, MaskSource, LegacyLayout):
    """An open canvas.  Use :meth:`create` or :meth:`open`; writers hold an exclusive lock.

    The class is put together from its parts: :class:`~src_models.store.regions.RegionState`
    (region grid, region state, regeneration jobs), :class:`~src_models.store.pyramid.Pyramid`
    (writing pixels and latents, the image pyramid), :class:`~src_models.store.mask_source.MaskSource`
    (the class mask and its source) and :class:`~src_models.store.migrate.LegacyLayout` (canvases of
    the earlier layout); this module holds opening, creating, closing, array access, attributes and
    the fsync of written chunk files.  :meth:`array` and :meth:`read_array` are the read API for
    code outside the store (:mod:`src_models.store.verify`)."""


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
        self._replaces: Path | None = None  # overwrite: the canvas this one replaces at its first region
        try:
            attrs = group.attrs.asdict()
        except Exception as e:
            raise CanvasDamagedError(f"{path} is damaged: cannot read its zarr.json ({_reason(e)})") from None
        info = attrs.get("diffinfinite")
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise CanvasError(f"{path} is not a napari-diffinfinite canvas")
        _check_info(path, info)
        self.info: dict = info
        self.state_problems: list[str] = []  # what reading the region state found and restored
        self.state_restored: set[int] = set()  # regions whose row was taken from the second record
        self.restored: list[str] = []  # what opening for writing restored (said by the repair)
        self.legacy = self._is_legacy()
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
        info: dict | None = None,
        inputs=(),
        replace_when_sampled: bool = False,
        option: str = "--out",
    ) -> "Canvas":
        """Create an empty canvas of ``height`` x ``width`` px (nothing is allocated).

        ``region_size`` (px) cuts the canvas into regions, each sampled and stored as a unit.
        ``pixel_size_um`` (the model's µm per image pixel) goes into the NGFF scales; when it is
        unknown the axes carry no unit.  The writer lock is taken before anything is deleted or
        made, so ``overwrite`` never touches a canvas another process is writing.

        Nothing but a canvas this tool made is ever replaced (:mod:`src_models.store.safety`): not
        a file, a folder of other things, the current directory or a folder holding one of
        ``inputs`` (the run's input files).  The canvas is built beside ``path`` and renamed into
        place whole, its attributes ``info`` included, so a kill at any moment leaves nothing or a
        canvas that resumes.  ``overwrite`` swaps the new canvas for the old one in one step: at
        once, or (``replace_when_sampled``) when its first region is finished, so a run stopped
        before that leaves the old canvas as it was (:meth:`close` then removes the new one).
        """
        path = Path(path)
        _check_layout(height, width, factor, region_size, pixel_size_um)
        _check_json(settings or {}, "settings")
        _check_json(info or {}, "canvas attributes")
        safety.check_out_path(path, inputs, option=option)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _io_error(path, e) from None
        real = safety.real_path(path)  # a link is followed: the canvas is made (and locked) where it points
        try:
            real.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _io_error(path, e) from None
        lock_fd = _acquire_lock(real)
        build = None
        try:
            replacing = real.exists()
            if replacing:
                if not overwrite:
                    raise CanvasError(f"{path} already exists ({safety.describe(path)}); use overwrite to replace a "
                                      "canvas, or open it to resume")
                safety.check_replaceable(path, inputs, option=option)
                _acquire_legacy_lock(real)
            for old in safety.leftovers(real):  # what a killed run of this tool left beside it
                shutil.rmtree(old, ignore_errors=True)
            build = safety.build_path(real)
            build.mkdir()
            group = zarr.open_group(str(build), mode="w", zarr_format=3)
            _lay_out(group, height, width, factor, latent_channels, region_size, chunk)
            _describe(group, height, width, factor, latent_channels, region_size, classes, colours, pixel_size_um,
                      settings, info)
            _fsync_tree(build)
            if not replacing:  # the canvas appears whole, or not at all
                safety.rename_new(build, real)
                _fsync_dir(real.parent)
                build = None
            elif not replace_when_sampled:
                _swap(build, real)
                build = None
        except BaseException as e:
            if build is not None:
                shutil.rmtree(build, ignore_errors=True)
            _release_lock(lock_fd, real)
            if isinstance(e, OSError):
                raise _io_error(path, e) from None
            raise
        if build is None:
            return cls(path, zarr.open_group(str(path), mode="r+"), True, lock_fd)
        canvas = cls(build, group, True, lock_fd)  # swapped in by its first finished region
        canvas._replaces = path
        return canvas


    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "Canvas":
        """Open an existing canvas, read-only (``"r"``) or for writing (``"r+"``, takes the lock)."""
        path = Path(path)
        if not (path / "zarr.json").exists():
            raise CanvasError(f"{path} is not a canvas (no zarr.json)")
        lock_fd = _acquire_lock(safety.real_path(path)) if mode == "r+" else None
        try:
            try:
                group = zarr.open_group(str(path), mode="r+" if mode == "r+" else "r")
            except Exception as e:  # zarr raises several types for a damaged store
                raise CanvasDamagedError(f"{path} is damaged: cannot read its zarr.json ({_reason(e)})") from None
            canvas = cls(path, group, mode == "r+", lock_fd)
            if canvas.writable and canvas.legacy:
                _acquire_legacy_lock(path)
                canvas._migrate()
            elif canvas.writable and canvas.has_state_copy:
                canvas.state_table()  # a lost or damaged record of the region state is restored from the other
                canvas.restored = list(canvas.state_problems)
                if canvas.restored:
                    canvas.rewrite_state()
            return canvas
        except BaseException:
            _release_lock(lock_fd, safety.real_path(path))
            raise


    def close(self) -> None:
        try:
            if self.writable and (self._dirty or self._stale):
                self.settle()
        finally:
            if self._replaces is not None:  # nothing finished: the old canvas stays, the new one goes
                build, self._replaces, final = self.path, None, self._replaces
                self.path = final
                shutil.rmtree(build, ignore_errors=True)
            _release_lock(self._lock_fd, safety.real_path(self.path))
            self._lock_fd = None


    def _swap_in(self) -> None:
        """Put this canvas (built beside the one it replaces) in place of the old one, in one step."""
        final, build = self._replaces, self.path
        self.flush()
        try:
            _swap(build, safety.real_path(final))
        except OSError as e:
            raise _io_error(final, e) from None
        self._replaces = None
        self.path = final
        self.group = zarr.open_group(str(final), mode="r+")
        self._arrays.clear()
        self._synced_dirs.clear()


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


    def _is_legacy(self) -> bool:
        """A canvas of the marker-file layout (read as it is, migrated when opened for writing).
        A canvas of the current layout that lost its region state is not one: :meth:`check`
        names the loss, or the second record restores it."""
        if int(self.info.get("layout", 1) or 1) >= LAYOUT:
            return False
        has_state, has_written = self._exists(STATE), self._exists(MASK_WRITTEN)
        if has_state and has_written:
            return False
        return (self.path / "diffinfinite" / "regions").is_dir() or not has_written


    @property
    def has_state_copy(self) -> bool:
        return int(self.info.get("layout", 1) or 1) >= LAYOUT


    def check(self) -> None:
        """Open every array the canvas needs: damaged metadata becomes one CanvasDamagedError."""
        try:
            levels = len(self.group.attrs["ome"]["multiscales"][0]["datasets"])
        except Exception:
            raise CanvasDamagedError(f"{self.path} is damaged: its zarr.json has no OME multiscales") from None
        shapes = pyramid_shapes(self.height, self.width)
        if levels != len(shapes):
            raise CanvasDamagedError(f"{self.path} is damaged: its zarr.json lists {levels} pyramid levels, a "
                                     f"{self.width}x{self.height} canvas has {len(shapes)}; restore zarr.json from a backup")
        for level, (h, w) in enumerate(shapes):
            self._expect(str(level), (3, h, w), "uint8")
        lh, lw = self.latent_shape
        self._expect("labels/mask/0", (lh, lw), "uint8")
        channels = int(self.info.get("latent_channels", self._array(LATENT).shape[0]))
        self._expect(LATENT, (channels, lh, lw), "float32")
        if not self.legacy:
            size, ny, nx = self.region_grid
            if self.has_state_copy:
                for name in (STATE, STATE_COPY):  # one of the two may be lost: the other restores it
                    if self._exists(name):
                        self._expect(name, (ny, nx, 4), "uint64")
                if not (self._exists(STATE) or self._exists(STATE_COPY)):
                    raise CanvasDamagedError(
                        f"{self.path} is damaged: {STATE} and its second record are both missing, so the finished "
                        "regions cannot be known; restore them from a backup (nothing was changed)")
                self._expect(MASK_CRC, None, "uint64")
            else:
                self._expect(STATE, (ny, nx, 4), "uint64")
            self._expect(MASK_WRITTEN, None, "uint8")
        self._jobs_attrs()
        if self.has_mask_source:
            self._array(MASK_SOURCE)


    def _expect(self, name: str, shape, dtype: str) -> None:
        """An array must have the shape and type the canvas's metadata implies (a wrong one in its
        zarr.json would make a repair write the wrong thing)."""
        arr = self._array(name)
        if str(arr.dtype) != dtype or (shape is not None and tuple(arr.shape) != tuple(shape)):
            want = f"{dtype} {tuple(shape)}" if shape is not None else dtype
            raise CanvasDamagedError(
                f"{self.path} is damaged: {name}/zarr.json says {arr.dtype} {tuple(arr.shape)}, this canvas stores "
                f"{want}; restore {name}/zarr.json from a backup (nothing was changed; its chunks are untouched)")


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

    # ---------------------------------------------------------------- the public read API
    def array(self, name: str) -> zarr.Array:
        """An array of the store by its path (``"0"``, ``"diffinfinite/latent"``, ``"labels/mask/0"`` ...)."""
        return self._array(name)

    def read_array(self, name: str, sel) -> np.ndarray:
        """``array(name)[sel]``; a chunk that cannot be decoded is a one-line :class:`CanvasDamagedError`."""
        return self._read(name, sel)


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


    def image(self, level: int = 0) -> zarr.Array:
        return self._array(str(level))


    @property
    def latent(self) -> zarr.Array:
        return self._array(LATENT)


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

    # ---------------------------------------------------------------- chunk files

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


    def _check_writable(self):
        if not self.writable:
            raise CanvasError(f"{self.path} is open read-only")


def _swap(build: Path, real: Path) -> None:
    """Exchange the canvas built at ``build`` with the old one at ``real``, then delete the old one
    (now at ``build``'s name; a kill before that leaves it to the next run's clean-up)."""
    safety.exchange(build, real)
    _fsync_dir(real.parent)
    shutil.rmtree(build, ignore_errors=True)


def _check_info(path: Path, info: dict) -> None:
    """The canvas's own metadata, field by field: a damaged value is named in one line (a reader, a
    resume or a repair never goes on from numbers it cannot trust)."""
    def bad(field: str, value, want: str) -> CanvasDamagedError:
        text = repr(value)
        text = text if len(text) <= 60 else text[:57] + "..."
        return CanvasDamagedError(f"{path} is damaged: its metadata (zarr.json, diffinfinite.{field}) is {text}, "
                                  f"expected {want}; restore zarr.json from a backup (nothing was changed)")

    def whole(field: str, low: int = 1) -> int:
        v = info.get(field)
        if isinstance(v, bool) or not isinstance(v, int) or v < low or v > 2**40:
            raise bad(field, v, f"a whole number of at least {low}")
        return v

    h, w, f = whole("height"), whole("width"), whole("factor")
    whole("latent_channels")
    r = info.get("region_size")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0 or r % f:
        raise bad("region_size", r, f"a positive multiple of the latent factor {f}")
    if h % f or w % f:
        raise bad("height" if h % f else "width", h if h % f else w, f"a multiple of the latent factor {f}")
    classes, colours = info.get("classes"), info.get("colours")
    if not isinstance(classes, list) or not classes or len(classes) > 255 or not all(isinstance(c, str) for c in classes):
        raise bad("classes", classes, "a list of 1 to 255 class names")
    if not isinstance(colours, list) or len(colours) != len(classes) or not all(isinstance(c, str) for c in colours):
        raise bad("colours", colours, f"a list of {len(classes)} colours")
    px = info.get("pixel_size_um")
    if px is not None and (isinstance(px, bool) or not isinstance(px, (int, float)) or not math.isfinite(px) or px <= 0):
        raise bad("pixel_size_um", px, "a positive number of µm or null")
    if not isinstance(info.get("settings", {}), dict):
        raise bad("settings", info.get("settings"), "an object of run settings")
    source = info.get("mask_source")
    if source and (not isinstance(source, list) or len(source) != 2
                   or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in source)):
        raise bad("mask_source", source, "the [height, width] of the mask source")


def _check_layout(height: int, width: int, factor: int, region_size: int, pixel_size_um: float | None) -> None:
    if height <= 0 or width <= 0:
        raise CanvasError(f"canvas size must be positive, got {width}x{height}")
    if height % factor or width % factor:
        raise CanvasError(f"canvas size {width}x{height} px is not a multiple of the model's factor {factor}")
    if region_size <= 0 or region_size % factor:
        raise CanvasError(f"region size {region_size} px must be a positive multiple of {factor}")
    if pixel_size_um is not None and not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise CanvasError(f"pixel size must be a positive number of µm, got {pixel_size_um}")


def _lay_out(group: zarr.Group, height: int, width: int, factor: int, latent_channels: int, region_size: int,
             chunk: int) -> None:
    """The empty arrays of a new canvas: image pyramid, latents, region state, mask pyramid."""
    for level, (h, w) in enumerate(pyramid_shapes(height, width)):
        group.create_array(
            str(level), shape=(3, h, w), chunks=(3, min(chunk, h), min(chunk, w)),
            dtype="uint8", fill_value=0, dimension_names=("c", "y", "x"),
            config={"write_empty_chunks": True},
        )
    lh, lw = height // factor, width // factor
    lchunk = max(1, min(chunk, lh, lw))
    group.create_group("labels").create_group("mask")
    state = group.create_group("diffinfinite")
    state.create_array("latent", shape=(latent_channels, lh, lw), chunks=(latent_channels, lchunk, lchunk),
                       dtype="float32", fill_value=0.0, config={"write_empty_chunks": True})
    size = region_size // factor
    ny, nx = math.ceil(lh / size), math.ceil(lw / size)
    for name in ("region_state", "region_state_copy"):  # the copy: a second record, written after the first
        state.create_array(name, shape=(ny, nx, 4), chunks=(min(STATE_CHUNK, ny), min(STATE_CHUNK, nx), 4),
                           dtype="uint64", fill_value=0, config={"write_empty_chunks": True})
    state.attrs["jobs"] = {}
    _create_mask_arrays(group, (lh, lw), len(pyramid_shapes(height, width)), chunk)


def _describe(group: zarr.Group, height: int, width: int, factor: int, latent_channels: int, region_size: int,
              classes: list[str], colours: list[str], pixel_size_um: float | None, settings: dict | None,
              info: dict | None = None) -> None:
    """The attributes of a new canvas: NGFF metadata of the image and its mask, and the store's own."""
    levels = len(pyramid_shapes(height, width))
    group.attrs["ome"] = ngff.rgb_pyramid("synthetic H&E", levels, pixel_size_um)
    group["labels"].attrs["ome"] = ngff.labels_index(["mask"])
    px = 1.0 if pixel_size_um is None else float(pixel_size_um)
    group["labels/mask"].attrs["ome"] = ngff.label_image(
        "mask", ngff.pyramid_datasets(levels, [px * factor] * 2),
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
        "layout": LAYOUT,
        **(info or {}),
    }
