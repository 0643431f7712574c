"""Canvases of the earlier layout (one ``regions/<i>.done`` marker file per finished region,
``jobs.json``, a lock file inside the store, a one-level mask): read as they are, moved to the
current layout when opened for writing.

:class:`LegacyLayout` is a part of :class:`~src_models.store.canvas.Canvas` (mixed in)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from src_models.durable import fsync_tree
from src_models.store import ngff
from src_models.store.base import (COPIED, LEGACY_LOCK_FILE, MASK_WRITTEN, SAMPLED, SKIPPED, STATE, STATE_CHUNK,
                                   _io_error)
from src_models.store.mask_source import _create_mask_arrays


class LegacyLayout:
    """Reading and migrating the earlier layout."""


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
            fsync_tree(self.path / "diffinfinite")
            fsync_tree(self.path / "labels")
            shutil.rmtree(regions_dir, ignore_errors=True)
            (self.path / "diffinfinite" / "jobs.json").unlink(missing_ok=True)
            (self.path / LEGACY_LOCK_FILE).unlink(missing_ok=True)
        except OSError as e:
            raise _io_error(self.path, e) from None
