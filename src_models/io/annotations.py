"""Polygon annotations in and out: QuPath GeoJSON to label grids, and label grids to GeoJSON.

Reading (:func:`read_geojson`)
    A FeatureCollection, a single Feature, a bare JSON list of Features (QuPath's "Export objects"
    writes either) or a bare Polygon/MultiPolygon geometry.  Polygons and MultiPolygons, holes
    included, are read; points and lines have no area and are skipped (counted in ``skipped``).
    A feature's class name is ``properties.classification.name`` (QuPath), else
    ``properties.classification`` when it is a string, else ``properties.name``; a feature with
    none of these is named ``Unclassified`` (as QuPath shows it).  Coordinates are level-0 pixels
    of the slide (x right, y down, pixel (0, 0) covering [0, 1) x [0, 1)); an annotation made on a
    downsampled image or a crop is brought to level 0 with ``downsample`` and ``offset``:
    ``level0 = coordinate * downsample + offset``.

Class map (:func:`parse_class_map`)
    ``"Tumor=1,Stroma=2,Necrosis=3"``: class names (matched without regard to case) to labels
    0..255.  Names in the file that the map lacks are refused, naming every name found.

Rasterising (:func:`rasterise`)
    A grid pixel takes a polygon's label when its *centre* lies inside the polygon (even-odd rule
    over the polygon's rings, so a hole is not painted and what lies below shows through).
    **Overlaps: later features win** (file order, which is the order QuPath exports its objects);
    ``overlap="class-map"`` paints instead by the class map's order, so classes listed later
    win (the file order decides within one class).  Pixels no feature covers keep ``fill``
    (0, "unknown"); ``covered`` says which pixels some feature covers.

Writing (:func:`mask_to_geojson`)
    Each class of a label grid becomes one QuPath annotation (a MultiPolygon feature with
    ``classification.name`` and ``color``).  Polygons follow pixel edges (one polygon per
    4-connected component, its holes as inner rings), so rasterising the file again at the same
    scale gives the same labels, pixel for pixel.

numpy + scipy only; no torch, napari or Qt.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src_models.errors import DiffInfiniteError
from src_models.io.colours import hex_rgb

UNCLASSIFIED = "Unclassified"
AREA_TYPES = ("Polygon", "MultiPolygon")
OTHER_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString")
OVERLAP_RULES = ("last", "class-map")
MAX_RASTER_PIXELS = 2 * 89_478_485  # one rasterised window at most (as for mask files)
# untrusted vector input, bounded before any work (each limit said in one line when exceeded)
MAX_GEOJSON_BYTES = 1 << 30  # a GeoJSON file
MAX_FEATURES = 1_000_000  # features in one file
MAX_VERTICES = 5_000_000  # vertices of all rings of one file together (80 MB as float64 pairs)
MAX_COORDINATE = 1e9  # |x|, |y| in px: far beyond any slide (a 1e9 px side is 250 m at 0.25 µm/px)
CROSSINGS_PER_BATCH = 1 << 19  # edge-row crossings computed at once: rasterising memory stays bounded


class AnnotationError(DiffInfiniteError, ValueError):
    """Annotations that cannot be used (the message says what and where)."""


@dataclass
class Annotation:
    """One feature: its class name and its polygons, each a list of rings of (x, y) level-0 px
    (the first ring the outline, the others holes), as float64 arrays of shape (n, 2)."""

    name: str
    polygons: list[list[np.ndarray]]
    index: int = 0  # position in the file
    colour: tuple[int, int, int] | None = None  # QuPath's class colour, when the file gives one

    @functools.cached_property
    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) over every ring."""
        pts = np.concatenate([r for poly in self.polygons for r in poly])
        return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


@dataclass
class AnnotationSet:
    features: list[Annotation]
    source: str = ""
    skipped: dict[str, int] = field(default_factory=dict)  # geometry type -> features skipped

    def __len__(self) -> int:
        return len(self.features)

    def names(self) -> dict[str, int]:
        """Class name -> number of features, in order of first appearance."""
        out: dict[str, int] = {}
        for f in self.features:
            out[f.name] = out.get(f.name, 0) + 1
        return out

    def colours(self) -> dict[str, tuple[int, int, int]]:
        out: dict[str, tuple[int, int, int]] = {}
        for f in self.features:
            if f.colour is not None and f.name not in out:
                out[f.name] = f.colour
        return out

    @property
    def bbox(self) -> tuple[float, float, float, float] | None:
        if not self.features:
            return None
        boxes = np.array([f.bbox for f in self.features])
        return float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max())

    def outside(self, width: float, height: float) -> tuple[list[Annotation], list[Annotation]]:
        """(features wholly outside [0, width) x [0, height), features that reach beyond it)."""
        wholly, partly = [], []
        for f in self.features:
            x0, y0, x1, y1 = f.bbox
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                wholly.append(f)
            elif x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                partly.append(f)
        return wholly, partly


# ------------------------------------------------------------------------------------ reading
def _describe(feature_index: int, name: str | None = None) -> str:
    return f"feature {feature_index}" + (f" ({name})" if name else "")


def _class_name(props) -> tuple[str, tuple[int, int, int] | None]:
    if not isinstance(props, dict):
        return UNCLASSIFIED, None
    cls = props.get("classification")
    colour = None
    name = None
    if isinstance(cls, dict):
        name = cls.get("name")
        c = cls.get("color", cls.get("colour"))
        if isinstance(c, (list, tuple)) and len(c) >= 3 and all(isinstance(v, (int, float)) for v in c[:3]):
            colour = tuple(int(max(0, min(255, v))) for v in c[:3])
        elif isinstance(cls.get("colorRGB"), int):  # QuPath 0.2/0.3: packed (A)RGB, signed
            v = cls["colorRGB"] & 0xFFFFFF
            colour = ((v >> 16) & 255, (v >> 8) & 255, v & 255)
    elif isinstance(cls, str):
        name = cls
    if not (isinstance(name, str) and name.strip()):
        name = props.get("name") if isinstance(props.get("name"), str) and props.get("name").strip() else None
    return (name.strip() if name else UNCLASSIFIED), colour


def _ring(coords, where: str) -> np.ndarray:
    try:
        arr = np.asarray(coords, dtype=np.float64)
    except OverflowError:
        raise AnnotationError(f"{where}: a coordinate is beyond {MAX_COORDINATE:g} px") from None
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: coordinates must be [x, y] number pairs") from None
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise AnnotationError(f"{where}: coordinates must be a list of [x, y] pairs, got shape {arr.shape}")
    arr = arr[:, :2]
    if not np.isfinite(arr).all():
        raise AnnotationError(f"{where}: coordinates must be finite numbers")
    if len(arr) and np.abs(arr).max() > MAX_COORDINATE:
        raise AnnotationError(f"{where}: a coordinate is beyond {MAX_COORDINATE:g} px")
    if len(arr) > 1 and np.array_equal(arr[0], arr[-1]):
        arr = arr[:-1]
    if len(arr) < 3:
        raise AnnotationError(f"{where}: a ring needs at least 3 distinct points, got {len(arr)}")
    return arr


def _polygons(geometry, where: str) -> list[list[np.ndarray]] | str:
    """The polygons of a geometry, or the name of a type without area (to be skipped)."""
    if geometry is None:
        return "null geometry"
    if not isinstance(geometry, dict) or not isinstance(geometry.get("type"), str):
        raise AnnotationError(f"{where}: geometry must be an object with a 'type'")
    kind = geometry["type"]
    if kind in OTHER_TYPES:
        return kind
    if kind == "GeometryCollection":
        out: list = []
        for j, g in enumerate(geometry.get("geometries") or []):
            got = _polygons(g, f"{where}, geometry {j}")
            if not isinstance(got, str):
                out.extend(got)
        return out if out else "GeometryCollection without polygons"
    if kind not in AREA_TYPES:
        raise AnnotationError(f"{where}: unknown geometry type {kind!r} (expected Polygon or MultiPolygon)")
    coords = geometry.get("coordinates")
    if not isinstance(coords, list):
        raise AnnotationError(f"{where}: {kind} without a coordinates list")
    polys = [coords] if kind == "Polygon" else coords
    out = []
    for p, rings in enumerate(polys):
        if not isinstance(rings, list) or not rings:
            raise AnnotationError(f"{where}: {kind} polygon {p} has no rings")
        out.append([_ring(r, f"{where}, polygon {p}, ring {k}") for k, r in enumerate(rings)])
    return out


def parse_geojson(data, source: str = "annotations", offset: tuple[float, float] = (0.0, 0.0),
                  downsample: float = 1.0) -> AnnotationSet:
    """Annotations from parsed GeoJSON (see the module docstring); ``offset`` is (x, y)."""
    if not (math.isfinite(downsample) and downsample > 0):
        raise AnnotationError(f"downsample must be a positive number, got {downsample}")
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise AnnotationError(f"{source}: a FeatureCollection needs a 'features' list")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, dict) and data.get("type") in AREA_TYPES + ("GeometryCollection",):
        features = [{"type": "Feature", "geometry": data, "properties": {}}]
    elif isinstance(data, list):
        features = data
    else:
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise AnnotationError(f"{source}: not GeoJSON annotations (top level is {kind!r}; expected a "
                              "FeatureCollection, a Feature or a list of Features)")
    if len(features) > MAX_FEATURES:
        raise AnnotationError(f"{source}: {len(features):,} features, more than the {MAX_FEATURES:,} one file may "
                              "hold; split the annotations into several files")
    out, skipped = [], {}
    vertices = 0
    ox, oy = float(offset[0]), float(offset[1])
    for i, feat in enumerate(features):
        if not isinstance(feat, dict) or feat.get("type", "Feature") != "Feature":
            raise AnnotationError(f"{source}: {_describe(i)} is not a GeoJSON Feature")
        name, colour = _class_name(feat.get("properties"))
        got = _polygons(feat.get("geometry"), f"{source}: {_describe(i, name)}")
        if isinstance(got, str):
            skipped[got] = skipped.get(got, 0) + 1
            continue
        vertices += sum(len(r) for poly in got for r in poly)
        if vertices > MAX_VERTICES:
            raise AnnotationError(f"{source}: more than {MAX_VERTICES:,} vertices (reached at {_describe(i, name)}); "
                                  "simplify the polygons or split the file")
        if downsample != 1.0 or ox or oy:
            got = [[r * downsample + (ox, oy) for r in poly] for poly in got]
        out.append(Annotation(name, got, i, colour))
    return AnnotationSet(out, source, skipped)


def transformed(ann: AnnotationSet, offset: tuple[float, float] = (0.0, 0.0), downsample: float = 1.0) -> AnnotationSet:
    """A copy with every coordinate mapped to ``coordinate * downsample + offset``."""
    if not (math.isfinite(downsample) and downsample > 0):
        raise AnnotationError(f"downsample must be a positive number, got {downsample}")
    if downsample == 1.0 and not offset[0] and not offset[1]:
        return ann
    o = (float(offset[0]), float(offset[1]))
    feats = [Annotation(f.name, [[r * downsample + o for r in poly] for poly in f.polygons], f.index, f.colour)
             for f in ann.features]
    return AnnotationSet(feats, ann.source, dict(ann.skipped))


def read_geojson(path: str | Path, offset: tuple[float, float] = (0.0, 0.0), downsample: float = 1.0,
                 allow_empty: bool = False) -> AnnotationSet:
    """Read a GeoJSON file; every problem is one AnnotationError line.  An empty collection (or
    one without any polygon) is refused unless ``allow_empty``."""
    path = Path(path)
    if not path.exists():
        raise AnnotationError(f"annotation file {path} does not exist")
    if path.is_dir():
        raise AnnotationError(f"annotations {path} is a directory; give a GeoJSON file")
    try:
        size = path.stat().st_size
        if size > MAX_GEOJSON_BYTES:
            raise AnnotationError(f"{path} is {size / 2**20:,.0f} MiB, more than the {MAX_GEOJSON_BYTES >> 20:,} MiB "
                                  "a GeoJSON file may be; split it")
        raw = path.read_bytes()
    except OSError as e:
        raise AnnotationError(f"cannot read {path}: {e.strerror}") from None
    if not raw.strip():
        raise AnnotationError(f"annotation file {path} is empty")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise AnnotationError(f"{path} is not a text file (GeoJSON is UTF-8 JSON)") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise AnnotationError(f"{path} is nested too deeply to be GeoJSON") from None
    except ValueError as e:  # e.g. a number of more digits than Python converts
        raise AnnotationError(f"{path} is not usable JSON ({str(e).splitlines()[0][:80]})") from None
    ann = parse_geojson(data, str(path), offset, downsample)
    if not ann.features and not allow_empty:
        what = ", ".join(f"{n} {k}" for k, n in ann.skipped.items())
        raise AnnotationError(f"{path} holds no polygon annotations" + (f" (skipped: {what})" if what else
                                                                         " (an empty collection)"))
    return ann


# ------------------------------------------------------------------------------------ class map
def parse_class_map(text: str) -> dict[str, int]:
    """``"Tumor=1,Stroma=2"`` -> {"Tumor": 1, "Stroma": 2} (order kept: it is the priority order)."""
    out: dict[str, int] = {}
    seen: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, eq, value = item.rpartition("=")
        name = name.strip()
        if not eq or not name:
            raise AnnotationError(f"--class-map takes NAME=LABEL pairs separated by commas, e.g. "
                                  f"'Tumor=1,Stroma=2'; got {item.strip()!r}")
        try:
            label = int(value)
        except ValueError:
            raise AnnotationError(f"--class-map: label of {name!r} must be an integer 0..255, got {value.strip()!r}") from None
        if not 0 <= label <= 255:
            raise AnnotationError(f"--class-map: label of {name!r} must lie in 0..255, got {label}")
        if name.casefold() in seen:
            raise AnnotationError(f"--class-map names {name!r} twice")
        seen[name.casefold()] = name
        out[name] = label
    if not out:
        raise AnnotationError("--class-map is empty; give NAME=LABEL pairs, e.g. 'Tumor=1,Stroma=2'")
    return out


def labels_for(ann: AnnotationSet, class_map: dict[str, int]) -> list[int]:
    """The label of every feature; names the map lacks are refused, naming all names found."""
    folded = {k.casefold(): v for k, v in class_map.items()}
    names = ann.names()
    missing = [n for n in names if n.casefold() not in folded]
    if missing:
        found = ", ".join(f"{n} ({c})" for n, c in names.items())
        raise AnnotationError(
            f"{ann.source}: class name(s) not in the class map: {', '.join(missing)}; "
            f"names found (features): {found}")
    return [folded[f.name.casefold()] for f in ann.features]


def paint_order(ann: AnnotationSet, class_map: dict[str, int] | None, overlap: str = "last") -> list[int]:
    """Indices into ``ann.features`` in painting order (the last painted wins)."""
    if overlap not in OVERLAP_RULES:
        raise AnnotationError(f"unknown overlap rule {overlap!r} (use {' or '.join(OVERLAP_RULES)})")
    order = list(range(len(ann.features)))
    if overlap == "class-map":
        if class_map is None:
            raise AnnotationError("overlap rule 'class-map' needs a class map")
        rank = {k.casefold(): i for i, k in enumerate(class_map)}
        order.sort(key=lambda i: (rank.get(ann.features[i].name.casefold(), -1), i))
    return order


# ------------------------------------------------------------------------------------ rasterising
def _fill_polygon(rings: list[np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, int, int] | None:
    """Even-odd fill of rings given in grid coordinates (pixel (r, c) centred at (c+.5, r+.5)).
    Returns (inside, r0, c0): a boolean block and its top-left grid pixel, or None when empty."""
    H, W = shape
    pts = np.concatenate(rings)
    r_lo = max(0, int(math.ceil(pts[:, 1].min() - 0.5)))
    r_hi = min(H, int(math.ceil(pts[:, 1].max() - 0.5)))  # exclusive
    if r_hi <= r_lo:
        return None
    c_lo = max(0, int(math.floor(pts[:, 0].min() - 0.5)) + 1)
    c_hi = min(W, int(math.floor(pts[:, 0].max() - 0.5)) + 1)  # exclusive
    if c_hi <= c_lo:
        return None
    x1 = np.concatenate([r[:, 0] for r in rings])
    y1 = np.concatenate([r[:, 1] for r in rings])
    x2 = np.concatenate([np.roll(r[:, 0], -1) for r in rings])
    y2 = np.concatenate([np.roll(r[:, 1], -1) for r in rings])
    keep = y1 != y2
    x1, y1, x2, y2 = x1[keep], y1[keep], x2[keep], y2[keep]
    ylo, yhi = np.minimum(y1, y2), np.maximum(y1, y2)
    # rows whose centre r + 0.5 lies in [ylo, yhi): half-open, so a vertex is counted once
    rs = np.clip(np.ceil(ylo - 0.5).astype(np.int64), r_lo, r_hi)
    re = np.clip(np.ceil(yhi - 0.5).astype(np.int64), r_lo, r_hi)
    n = re - rs
    keep = n > 0
    x1, y1, x2, y2, rs, n = x1[keep], y1[keep], x2[keep], y2[keep], rs[keep], n[keep]
    if not len(n):
        return None
    bh, bw = r_hi - r_lo, c_hi - c_lo
    toggles = np.zeros(bh * (bw + 1), dtype=np.uint8)  # parity of the crossings left of each pixel
    # the crossings in batches of edges, so memory stays bounded by the block, not by edges x rows
    ends = np.cumsum(n)
    first = 0
    while first < len(n):
        base = int(ends[first - 1]) if first else 0
        last = max(first + 1, int(np.searchsorted(ends, base + CROSSINGS_PER_BATCH, side="right")))
        nb = n[first:last]
        total = int(nb.sum())
        e = np.repeat(np.arange(first, last), nb)
        starts = np.repeat(np.cumsum(nb) - nb, nb)
        rows = rs[e] + (np.arange(total) - starts)
        yc = rows + 0.5
        xc = x1[e] + (yc - y1[e]) * (x2[e] - x1[e]) / (y2[e] - y1[e])
        # a crossing at x toggles every pixel whose centre lies right of it: c + 0.5 > x
        cols = np.clip(np.floor(xc - 0.5).astype(np.int64) + 1, c_lo, c_hi) - c_lo
        idx, count = np.unique((rows - r_lo) * (bw + 1) + cols, return_counts=True)
        toggles[idx] ^= (count & 1).astype(np.uint8)
        first = last
    toggles = toggles.reshape(bh, bw + 1)
    inside = (np.cumsum(toggles[:, :bw], axis=1, dtype=np.uint8) & 1).astype(bool)
    return inside, r_lo, c_lo


def rasterise(ann: AnnotationSet, labels: list[int], shape: tuple[int, int], origin: tuple[float, float] = (0.0, 0.0),
              pixel_size: float = 1.0, order: list[int] | None = None, fill: int = 0,
              out: np.ndarray | None = None, covered: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paint the features onto a grid of ``shape`` (rows, cols) whose pixel (0, 0) has its corner
    at level-0 ``origin`` (x, y) and whose pixels are ``pixel_size`` level-0 px wide.

    ``labels[i]`` is feature i's label; ``order`` the painting order (default: file order, the last
    wins).  Returns (labels uint8, covered bool); ``out``/``covered`` are painted in place when given.
    """
    H, W = int(shape[0]), int(shape[1])
    if H * W > MAX_RASTER_PIXELS:
        raise AnnotationError(f"a {W}x{H} grid is too large to rasterise at once; rasterise it in tiles")
    if not (math.isfinite(pixel_size) and pixel_size > 0):
        raise AnnotationError(f"pixel size must be a positive number, got {pixel_size}")
    if out is None:
        out = np.full((H, W), fill, dtype=np.uint8)
    if covered is None:
        covered = np.zeros((H, W), dtype=bool)
    ox, oy = float(origin[0]), float(origin[1])
    gx0, gy0, gx1, gy1 = ox, oy, ox + W * pixel_size, oy + H * pixel_size
    for i in order if order is not None else range(len(ann.features)):
        f = ann.features[i]
        x0, y0, x1, y1 = f.bbox
        if x1 <= gx0 or y1 <= gy0 or x0 >= gx1 or y0 >= gy1:
            continue
        for poly in f.polygons:
            grid = [(r - (ox, oy)) / pixel_size for r in poly]
            got = _fill_polygon(grid, (H, W))
            if got is None:
                continue
            inside, r0, c0 = got
            h, w = inside.shape
            out[r0 : r0 + h, c0 : c0 + w][inside] = labels[i]
            covered[r0 : r0 + h, c0 : c0 + w] |= inside
    return out, covered


def rasterise_file(path, class_map: dict[str, int], shape: tuple[int, int], *, origin=(0.0, 0.0), pixel_size=1.0,
                   offset=(0.0, 0.0), downsample=1.0, overlap: str = "last") -> tuple[np.ndarray, np.ndarray, AnnotationSet]:
    """Read, map and rasterise in one call: (labels, covered, annotations)."""
    ann = read_geojson(path, offset, downsample)
    labels = labels_for(ann, class_map)
    out, cov = rasterise(ann, labels, shape, origin, pixel_size, paint_order(ann, class_map, overlap))
    return out, cov, ann


# ------------------------------------------------------------------------------------ writing
_DX = np.array([1, 0, -1, 0])  # directions: 0 east, 1 south, 2 west, 3 north (y grows downwards)
_DY = np.array([0, 1, 0, -1])


def _trace(binary: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Closed rings along the pixel edges of a boolean image, interior on the right of travel
    (outlines clockwise on screen, holes anticlockwise); at a vertex where two pixels touch only
    diagonally the ring turns right, so such pixels are not joined (4-connectivity).  Each ring
    is an (n, 2) int64 array of its corner vertices (x, y), not closed.  Also returns, per ring,
    the (row, col) of a pixel inside it next to its first edge (all of a ring's pixels lie in one
    4-connected component) and twice its signed area (positive for outlines, negative for holes)."""
    P = np.pad(binary.astype(bool), 1)
    Wv = P.shape[1] + 1  # vertex grid width
    ys, xs = [], []
    starts, dirs, pix = [], [], []
    inner = P[1:-1, 1:-1]
    for d, (dy, dx) in enumerate(((-1, 0), (0, 1), (1, 0), (0, -1))):
        # edge d of a pixel whose neighbour on that side is outside: 0 top (east), 1 right
        # (south), 2 bottom (west), 3 left (north)
        nb = P[1 + dy : P.shape[0] - 1 + dy, 1 + dx : P.shape[1] - 1 + dx]
        r, c = np.nonzero(inner & ~nb)
        r, c = r + 1, c + 1
        sx = c + (1 if d in (1, 2) else 0)
        sy = r + (1 if d in (2, 3) else 0)
        starts.append(sy * Wv + sx)
        dirs.append(np.full(len(r), d, np.int64))
        pix.append(np.stack([r - 1, c - 1], axis=1))
    start = np.concatenate(starts)
    direc = np.concatenate(dirs)
    pixels = np.concatenate(pix)
    if not len(start):
        return [], np.zeros((0, 2), np.int64), np.zeros(0)
    end = start + _DY[direc] * Wv + _DX[direc]
    order = np.argsort(start, kind="stable")
    s_sorted = start[order]
    lo = np.searchsorted(s_sorted, end, side="left")
    hi = np.searchsorted(s_sorted, end, side="right")
    nxt = order[np.minimum(lo, len(order) - 1)]
    two = (hi - lo) == 2
    if two.any():  # diagonal touch: take the right turn
        a, b = order[lo[two]], order[lo[two] + 1]
        want = (direc[two] + 1) % 4
        nxt[two] = np.where(direc[a] == want, a, b)
    # rings: cycles of the permutation nxt, laid out one after the other in seq
    E = len(start)
    nxt_list = nxt.tolist()
    seen = bytearray(E)
    seq = [0] * E
    ring_starts = []
    pos = 0
    for e0 in range(E):
        if seen[e0]:
            continue
        ring_starts.append(pos)
        e = e0
        while not seen[e]:
            seen[e] = 1
            seq[pos] = e
            pos += 1
            e = nxt_list[e]
    seq = np.asarray(seq, dtype=np.int64)
    rs = np.asarray(ring_starts, dtype=np.int64)
    lengths = np.diff(np.append(rs, E))
    ring_of = np.repeat(np.arange(len(rs)), lengths)
    prev = np.arange(E) - 1
    prev[rs] = rs + lengths - 1  # the first edge of a ring follows its last
    d = direc[seq]
    corner = d != d[prev]  # keep only vertices where the direction changes
    v = start[seq][corner]
    verts = np.stack([v % Wv - 1, v // Wv - 1], axis=1)
    counts = np.bincount(ring_of[corner], minlength=len(rs))
    rings = np.split(verts, np.cumsum(counts)[:-1])
    # twice the signed area of each ring (shoelace), positive for outlines
    nxt_v = np.arange(len(verts)) + 1
    cstart = np.cumsum(counts) - counts
    nxt_v[cstart + counts - 1] = cstart
    x, y = verts[:, 0].astype(np.float64), verts[:, 1].astype(np.float64)
    area2 = np.bincount(np.repeat(np.arange(len(rs)), counts), weights=x * y[nxt_v] - x[nxt_v] * y, minlength=len(rs))
    return rings, pixels[seq[rs]], area2


def _area2(ring: np.ndarray) -> float:
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return float((x * np.roll(y, -1) - np.roll(x, -1) * y).sum())


def _inside(point, ring: np.ndarray) -> bool:
    x, y = point
    xs, ys = ring[:, 0], ring[:, 1]
    x2, y2 = np.roll(xs, -1), np.roll(ys, -1)
    cross = (ys > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = xs + (y - ys) * (x2 - xs) / (y2 - ys)
    return bool((cross & (x < xi)).sum() % 2)


def mask_polygons(binary: np.ndarray) -> list[list[np.ndarray]]:
    """Polygons (outline + holes, integer pixel-corner vertices) of a boolean image: one per
    4-connected component, in the order of the components' first pixels (row by row)."""
    from scipy import ndimage

    binary = np.asarray(binary, dtype=bool)
    if not binary.any():
        return []
    comp, n = ndimage.label(binary)
    rings, inside, area = _trace(binary)
    owner = comp[inside[:, 0], inside[:, 1]]
    groups: dict[int, list] = {}
    for k in np.argsort(owner, kind="stable"):
        groups.setdefault(int(owner[k]), []).append(k)
    out = []
    for cid in sorted(groups):
        ks = groups[cid]
        shells = [rings[k] for k in ks if area[k] > 0]
        holes = [rings[k] for k in ks if area[k] < 0]
        if len(shells) == 1:
            out.append([shells[0]] + holes)
            continue
        parts = [[r] for r in sorted(shells, key=lambda r: abs(_area2(r)))]
        for h in holes:  # the smallest outline around a point just beside the hole's first edge
            probe = (h[0] + h[1]) / 2.0 + 0.25 * np.sign(np.array([h[0][1] - h[1][1], h[1][0] - h[0][0]]))
            for g in parts:
                if _inside(probe, g[0]):
                    g.append(h)
                    break
        out.extend(parts)
    return out


def mask_to_geojson(labels: np.ndarray, classes: list[str], colours: list[str] | None = None, *,
                    pixel_size: float = 1.0, origin: tuple[float, float] = (0.0, 0.0),
                    skip: tuple[int, ...] = (0,), only: list[int] | None = None, properties: dict | None = None,
                    progress=None) -> dict:
    """A QuPath-style FeatureCollection of a label grid: one MultiPolygon annotation per class
    present (classes in ``skip`` left out; ``only`` keeps just those labels).  Vertices are the
    grid's pixel corners in level-0 px: ``x * pixel_size + origin[0]``."""
    labels = np.asarray(labels)
    present = [int(v) for v in np.unique(labels)]
    keep = [v for v in present if v not in skip and (only is None or v in only)]
    features = []
    ox, oy = origin
    as_int = float(pixel_size).is_integer() and float(ox).is_integer() and float(oy).is_integer()
    for n, k in enumerate(keep):
        polys = mask_polygons(labels == k)
        coords = []
        for poly in polys:
            rings = []
            for r in poly:
                v = r * pixel_size + (ox, oy)
                v = np.concatenate([v, v[:1]])
                rings.append(v.astype(np.int64).tolist() if as_int else v.tolist())
            coords.append(rings)
        name = classes[k] if k < len(classes) else f"class_{k}"
        cls = {"name": name}
        if colours is not None and k < len(colours):
            cls["color"] = list(hex_rgb(colours[k]))
        features.append({
            "type": "Feature",
            "geometry": {"type": "MultiPolygon", "coordinates": coords},
            "properties": {"objectType": "annotation", "classification": cls, "label": k,
                           "pixels": int((labels == k).sum()), **(properties or {})},
        })
        if progress is not None:
            progress(n + 1, len(keep))
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, collection: dict) -> Path:
    """Write a FeatureCollection (compact JSON, one feature per line), through a temporary file."""
    from src_models.durable import atomic_write

    path = Path(path)
    meta = {k: v for k, v in collection.items() if k != "features"}
    with atomic_write(path) as f:
        head = json.dumps(meta, separators=(",", ":"))[:-1]
        f.write(head + ',"features":[\n')
        for i, feat in enumerate(collection["features"]):
            f.write(("," if i else "") + json.dumps(feat, separators=(",", ":")) + "\n")
        f.write("]}\n")
    return path
